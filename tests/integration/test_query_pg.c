/*
 * test_query_pg.c — the PostgreSQL engine of the query port
 * (sidecar/query_pg.h) against a private PostgreSQL server and decisions of
 * the real policy engine: masks equal pol_mask_apply's for every method,
 * row filters hold against SQL tricks, the query role cannot reach the
 * tables, the request table or the owner role, limits work.
 */
#include "policy/policy.h"
#include "sidecar/query_pg.h"
#include "tests/support/pgenv.h"
#include "tests/support/testenv.h"
#include "tests/support/testutil.h"
#include "tests/support/qresult.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- fixture ------------------------------------------------------------ */

static json_t *J(const char *text)
{
    char *s = strdup(text), *p;
    json_error_t jerr;
    json_t *v;

    for (p = s; *p; p++)
        if (*p == '`')
            *p = '"';
    v = json_loads(s, 0, &jerr);
    if (v == NULL)
        fprintf(stderr, "fixture JSON: %s at %d:%d\n", jerr.text, jerr.line,
                jerr.column);
    free(s);
    return v;
}

#define MASKED_COL(name, tag)                                                  \
    "{`name`:`" name "`,`type`:`string`,`classification`:[`" tag "`]}"
#define MASK_RULE(tag, method, params)                                         \
    "{`name`:`m-" tag "`,`effect`:`mask`,`subjects`:[`*`],`resources`:[`*`],"  \
    "`mask`:{`method`:`" method "`,`classifications`:[`" tag "`]" params "}},"

/* clang-format off */
static const char *const documents =
    "[{`apiVersion`:`polis/v1`,`kind`:`DataProduct`,"
    "`metadata`:{`name`:`orders`},`spec`:{`domain`:`sales`,"
    "`ports`:[{`name`:`sql`,`type`:`query`}],"
    "`schema`:[{`name`:`order_id`,`type`:`integer`},"
    "{`name`:`customer_email`,`type`:`string`,`classification`:[`pii.email`]},"
    "{`name`:`card_number`,`type`:`string`,`classification`:[`pii.card`]},"
    "{`name`:`region`,`type`:`string`},"
    "{`name`:`amount`,`type`:`decimal`},"
    "{`name`:`order_date`,`type`:`date`}]}},"
    "{`apiVersion`:`polis/v1`,`kind`:`DataProduct`,"
    "`metadata`:{`name`:`cases`},`spec`:{`domain`:`sales`,"
    "`ports`:[{`name`:`sql`,`type`:`query`}],"
    "`schema`:[{`name`:`id`,`type`:`integer`},"
    MASKED_COL("c_email", "t.email") ","
    MASKED_COL("c_first", "t.first") ","
    MASKED_COL("c_last", "t.last") ","
    MASKED_COL("c_redact", "t.redact") ","
    MASKED_COL("c_redact_char", "t.redact_char") ","
    MASKED_COL("c_nullify", "t.nullify") ","
    MASKED_COL("c_month", "t.month") ","
    MASKED_COL("c_year", "t.year") ","
    MASKED_COL("c_bucket", "t.bucket") ","
    MASKED_COL("c_bucket_lower", "t.bucket_lower") ","
    MASKED_COL("c_hash", "t.hash") "]}},"
    "{`apiVersion`:`polis/v1`,`kind`:`Policy`,`metadata`:{`name`:`sales`},"
    "`spec`:{`scope`:`global`,`rules`:["
    "{`name`:`analysts`,`effect`:`allow`,`subjects`:[`group:analysts`,"
    "`group:auditors`,`group:open`],`resources`:[`sales/orders`,"
    "`sales/cases`]},"
    "{`name`:`emails`,`effect`:`mask`,`subjects`:[`group:analysts`,"
    "`group:auditors`],`resources`:[`sales/orders`],`mask`:{`method`:`email`,"
    "`classifications`:[`pii.email`]}},"
    "{`name`:`cards`,`effect`:`mask`,`subjects`:[`group:analysts`,"
    "`group:auditors`],`resources`:[`sales/orders`],"
    "`mask`:{`method`:`show_last`,`classifications`:[`pii.card`],"
    "`params`:{`n`:4}}},"
    MASK_RULE("t.email", "email", "")
    MASK_RULE("t.first", "show_first", ",`params`:{`n`:2,`char`:`#`}")
    MASK_RULE("t.last", "show_last", ",`params`:{`n`:3}")
    MASK_RULE("t.redact", "redact", ",`params`:{`replacement`:`[it's hidden]`}")
    MASK_RULE("t.redact_char", "redact", ",`params`:{`char`:`\xe2\x80\xa2`}")
    MASK_RULE("t.nullify", "nullify", "")
    MASK_RULE("t.month", "date_month", "")
    MASK_RULE("t.year", "date_year", "")
    MASK_RULE("t.bucket", "bucket", ",`params`:{`width`:10}")
    MASK_RULE("t.bucket_lower", "bucket", ",`params`:{`width`:7,`format`:`lower`}")
    MASK_RULE("t.hash", "hash", "")
    "{`name`:`own-region`,`effect`:`filter`,`subjects`:[`group:analysts`],"
    "`resources`:[`sales/orders`],`filter`:`region == subject.region`},"
    "{`name`:`small-groups`,`effect`:`aggregate`,"
    "`subjects`:[`group:auditors`],`resources`:[`sales/orders`],"
    "`aggregate`:{`minGroupSize`:3}}]}}]";

/* Same markers as the SQLite test: "secret" in every raw e-mail, 4000 at
 * the start of every card, 777 in every non-EU amount. */
static const char *const setup_sql =
    "CREATE EXTENSION pgcrypto;"
    "CREATE ROLE polis_owner LOGIN;"
    "CREATE ROLE polis_query LOGIN;"
    "CREATE SCHEMA polis AUTHORIZATION polis_owner;"
    "GRANT USAGE ON SCHEMA polis TO polis_query;"
    "CREATE UNLOGGED TABLE polis.request(pid int PRIMARY KEY,"
    " view name NOT NULL, p text[] NOT NULL, k bytea);"
    "ALTER TABLE polis.request OWNER TO polis_owner;"
    "CREATE TABLE orders(order_id int PRIMARY KEY, customer_email text,"
    " card_number text, region text, amount numeric, order_date date,"
    " internal_note text);"
    "INSERT INTO orders VALUES"
    " (1, 'alice.secret@example.com', '4000000000009999', 'EU', 10.5,"
    "  '2024-01-05', 'note-hidden'),"
    " (2, 'bob.secret@example.org', '4000111100001111', 'EU', 20.0,"
    "  '2024-02-06', 'note-hidden'),"
    " (3, 'carla.secret@example.com', '4000222200005678', 'EU', 30.0,"
    "  '2024-03-07', 'note-hidden'),"
    " (4, 'dan.secret@example.com', '4000333300002468', 'EU', 40.0,"
    "  '2024-04-08', 'note-hidden'),"
    " (5, 'eve.secret@corp.test', '4000444400001357', 'US', 777.0,"
    "  '2024-05-09', 'note-hidden'),"
    " (6, 'fred.secret@corp.test', '4000555500003690', 'US', 777.5,"
    "  '2024-06-10', 'note-hidden'),"
    " (7, 'gus.secret@corp.test', '4000666600008642', 'APAC', 777.25,"
    "  '2024-07-11', 'note-hidden');"
    "CREATE TABLE customers(id int, email text);"
    "INSERT INTO customers VALUES (1, 'zed.secret@corp.test');"
    "CREATE TABLE cases(id int, v text);"
    "GRANT SELECT ON orders, cases TO polis_owner;"
    "ANALYZE orders;";
/* clang-format on */

/* Values every mask is checked on: ordinary, edge and malformed ones. */
static const char *const case_values[] = {
    "alice@example.com",
    "a@b@c",
    "abc@",
    "@x",
    "",
    "x",
    "ab",
    "abc",
    "h\xc3\xa9llo w\xc3\xb6rld",
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
    "2024-05-17",
    "2024-05-17 10:11:12+00",
    "2024-13-01",
    "2024-02-31",
    "2024-00-10",
    "24-05-17",
    "42",
    "-42",
    "3.7",
    "-3.7",
    " 12",
    "12 ",
    "+5",
    ".5",
    "5.",
    "1e3",
    "-1e-3",
    "-0",
    "9e15",
    "9.0000000000000001e15",
    "9.1e15",
    "-9e15",
    "1e400",
    "1e-400",
    "-1e-310",
    "0x10",
    " -0X1.8",
    "0x",
    "0x1p3",
    "-0x1.8P-2",
    "inf",
    "nan",
    "1e",
    "12345678901234567890",
    "\t7",
    "it's",
    "line\nbreak",
    NULL,
};
#define NCASES (sizeof(case_values) / sizeof(case_values[0]))

static pgenv *pg;
static pol_engine *engine;
static char owner_dsn[256], query_dsn[256];
static const char hash_key[] = "test-key";

static int suite_init(void)
{
    json_t *docs;
    polis_error err = {0};
    PGconn *c;
    int rc;

    pg = pgenv_start("products");
    if (pg == NULL)
        return 1;
    if (pgenv_exec(pg, "postgres", setup_sql) != 0)
        return 1;
    c = pgenv_connect(pg, "postgres");
    if (c == NULL)
        return 1;
    for (size_t i = 0; i < NCASES; i++) {
        char id[16];
        const char *v[2] = {id, case_values[i]};
        PGresult *r;
        snprintf(id, sizeof(id), "%zu", i);
        r = PQexecParams(c, "INSERT INTO cases VALUES ($1::int, $2)", 2, NULL,
                         v, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            fprintf(stderr, "insert case: %s", PQerrorMessage(c));
        PQclear(r);
    }
    PQfinish(c);
    /* The product "cases" has one column per mask, all holding v. */
    if (pgenv_exec(pg, "postgres",
                   "CREATE VIEW cases_wide AS SELECT id, v AS c_email, v AS "
                   "c_first, v AS c_last, v AS c_redact, v AS c_redact_char, "
                   "v AS c_nullify, v AS c_month, v AS c_year, v AS c_bucket, "
                   "v AS c_bucket_lower, v AS c_hash FROM cases;"
                   "GRANT SELECT ON cases_wide TO polis_owner") != 0)
        return 1;
    pgenv_dsn(pg, "polis_owner", owner_dsn, sizeof(owner_dsn));
    pgenv_dsn(pg, "polis_query", query_dsn, sizeof(query_dsn));
    docs = J(documents);
    if (docs == NULL)
        return 1;
    rc = pol_engine_build(docs,
                          &(pol_engine_options){hash_key, sizeof(hash_key) - 1},
                          &engine, &err);
    json_decref(docs);
    if (rc != 0)
        fprintf(stderr, "engine: %s: %s\n", err.where, err.message);
    return rc != 0;
}

static int suite_cleanup(void)
{
    pol_engine_free(engine);
    engine = NULL;
    pgenv_stop(pg);
    pg = NULL;
    return 0;
}

/* ---- running queries ---------------------------------------------------- */

typedef qr_result result;

typedef struct who {
    const char *name;
    const char *group;
    const char *region;
} who;

static const who analyst = {"ann", "analysts", "EU"};
static const who auditor = {"aud", "auditors", "EU"};
static const who opener = {"olga", "open", "EU"};

/* Decide for w on product, then run sql through a fresh connection. */
static void run_on(const who *w, const char *product, const char *table,
                   const char *sql, const json_t *params, const sq_limits *lim,
                   result *r, pgq_conn *reuse)
{
    const char *groups[1] = {w->group};
    pol_expr_attr attr = {"region", false, w->region, NULL, 0};
    pol_request req = {0};
    pol_decision *d = pol_decision_new();
    sq_sink sink = qr_sink(r);
    sq_product prod = {table};
    pol_expr_request ereq = {NULL, product, "query"};
    pgq_conn *c = reuse;

    qr_init(r);
    req.subject.name = w->name;
    req.subject.groups = groups;
    req.subject.ngroups = 1;
    req.subject.attrs = &attr;
    req.subject.nattrs = 1;
    req.product = product;
    req.port = POL_PORT_QUERY;
    CU_ASSERT_FATAL(d != NULL);
    CU_ASSERT_EQUAL_FATAL(pol_decide(engine, &req, d, &r->err), 0);
    if (c == NULL) {
        int rc = pgq_open(owner_dsn, query_dsn, &c, &r->err);
        if (rc != 0)
            fprintf(stderr, "pgq_open: %s\n", r->err.message);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
    }
    r->rc = pgq_query(c, &prod, d, hash_key, sizeof(hash_key) - 1, &req.subject,
                      &ereq, sql, params, lim, &sink, &r->stats, &r->err);
    if (reuse == NULL)
        pgq_close(c);
    pol_decision_free(d);
}

static void run(const char *sql, result *r)
{
    run_on(&analyst, "sales/orders", "orders", sql, NULL, NULL, r, NULL);
}

static const char *const forbidden[] = {
    "secret", "corp.test", "4000", "777", "note-hidden", "us|", "apac", NULL,
};

/* Answered, without a leak; returns the rows. */
static long answered(const char *sql)
{
    result r;
    long rows;

    run(sql, &r);
    if (r.rc != 0)
        fprintf(stderr, "\n%s\n  -> rc %d: %s\n", sql, r.rc, r.err.message);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_FALSE(qr_leaks(&r, forbidden));
    rows = r.rc == 0 ? (long)r.rows : -1;
    free(r.text);
    return rows;
}

static void expect_refused(const char *sql, int code, const char *msg)
{
    result r;

    run(sql, &r);
    if (r.rc != code || strstr(r.err.message, msg) == NULL)
        fprintf(stderr, "\n%s\n  -> rc %d, \"%s\" (want %d, \"%s\")\n", sql,
                r.rc, r.err.message, code, msg);
    CU_ASSERT_EQUAL(r.rc, code);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, msg));
    CU_ASSERT_EQUAL(r.rows, 0);
    CU_ASSERT_FALSE(qr_leaks(&r, forbidden));
    free(r.text);
}

static void expect_text(const result *r, const char *want)
{
    if (r->rc != 0 || strcmp(r->text, want) != 0)
        fprintf(stderr, "\nrc %d (%s), got:\n%s\nwant:\n%s\n", r->rc,
                r->err.message, r->text, want);
    CU_ASSERT_EQUAL(r->rc, 0);
    CU_ASSERT_STRING_EQUAL(r->text, want);
}

/* ---- masks -------------------------------------------------------------- */

static void test_masked_filtered_rows(void)
{
    result r;

    run("SELECT order_id, customer_email, card_number, region FROM orders "
        "ORDER BY order_id",
        &r);
    expect_text(&r, "order_id|customer_email|card_number|region\n"
                    "1|****@example.com|************9999|EU\n"
                    "2|****@example.org|************1111|EU\n"
                    "3|****@example.com|************5678|EU\n"
                    "4|****@example.com|************2468|EU\n");
    CU_ASSERT_EQUAL(r.stats.rows, 4);
    free(r.text);
    /* Without the filter (group open), every row, masks still on. */
    run_on(&opener, "sales/orders", "orders",
           "SELECT count(*), count(DISTINCT region) FROM orders", NULL, NULL,
           &r, NULL);
    expect_text(&r, "count|count\n7|3\n");
    free(r.text);
}

/* Every method, every case value: the view's output is pol_mask_apply's. */
static void test_masks_equal_pol_mask_apply(void)
{
    const char *groups[1] = {"open"};
    pol_request req = {0};
    pol_decision *d = pol_decision_new();
    pol_mask_key key;
    result r;
    char *line;
    size_t checked = 0, ncols;

    pol_mask_key_init(&key, hash_key, sizeof(hash_key) - 1);
    req.subject.name = "olga";
    req.subject.groups = groups;
    req.subject.ngroups = 1;
    req.product = "sales/cases";
    req.port = POL_PORT_QUERY;
    CU_ASSERT_FATAL(pol_decide(engine, &req, d, &r.err) == 0);
    ncols = pol_decision_column_count(d);
    CU_ASSERT_EQUAL_FATAL(ncols, 12);
    run_on(&opener, "sales/cases", "cases_wide",
           "SELECT * FROM cases_wide ORDER BY id", NULL, NULL, &r, NULL);
    if (r.rc != 0)
        fprintf(stderr, "cases: %s\n", r.err.message);
    CU_ASSERT_EQUAL_FATAL(r.rc, 0);
    CU_ASSERT_EQUAL(r.rows, NCASES);
    /* Rows are "|"-separated; no case value holds "|". */
    line = strchr(r.text, '\n') + 1;
    for (size_t row = 0; row < NCASES && *line; row++) {
        char *end = strchr(line, '\n');
        /* a value with a newline spans lines: rebuild by column count */
        char *fields[16];
        size_t nf = 0;
        char *p = line;

        fields[nf++] = p;
        while (nf < ncols) {
            p = strchr(p, '|');
            if (p == NULL)
                break;
            *p++ = '\0';
            fields[nf++] = p;
        }
        CU_ASSERT_EQUAL_FATAL(nf, ncols);
        end = strchr(fields[ncols - 1], '\n');
        CU_ASSERT_PTR_NOT_NULL_FATAL(end);
        *end = '\0';
        for (size_t k = 1; k < ncols; k++) {
            const pol_mask *m = pol_decision_column_mask(d, k);
            const char *in = case_values[row];
            char out[512];
            size_t outlen;
            bool isnull;
            int rc;

            CU_ASSERT_PTR_NOT_NULL_FATAL(m);
            rc = pol_mask_apply(m, &key, in, in ? strlen(in) : 0, out,
                                sizeof(out), &outlen, &isnull);
            CU_ASSERT_EQUAL(rc, 0);
            if (isnull)
                strcpy(out, "NULL");
            if (strcmp(out, fields[k]) != 0)
                fprintf(stderr, "\nmask %s on \"%s\": C \"%s\", SQL \"%s\"\n",
                        pol_mask_method_name(m->method), in ? in : "(null)",
                        out, fields[k]);
            CU_ASSERT_STRING_EQUAL(out, fields[k]);
            checked++;
        }
        line = end + 1;
    }
    CU_ASSERT_EQUAL(checked, NCASES * (ncols - 1));
    if (checked != NCASES * (ncols - 1))
        fprintf(stderr, "\n%s (%s)\n", r.text, r.err.message);
    free(r.text);
    pol_decision_free(d);
}

/* ---- SQL tricks --------------------------------------------------------- */

static void test_tricks_see_masked_filtered_rows(void)
{
    CU_ASSERT_EQUAL(answered("SELECT * FROM orders"), 4);
    CU_ASSERT_EQUAL(answered("SELECT o.customer_email AS e, o.card_number c "
                             "FROM orders AS o"),
                    4);
    CU_ASSERT_EQUAL(answered("SELECT a.customer_email, b.card_number FROM "
                             "orders a JOIN orders b ON a.order_id = "
                             "b.order_id"),
                    4);
    CU_ASSERT_EQUAL(answered("SELECT * FROM (SELECT * FROM orders) s"), 4);
    CU_ASSERT_EQUAL(answered("WITH o AS (SELECT * FROM orders) SELECT * "
                             "FROM o"),
                    4);
    CU_ASSERT_EQUAL(answered("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                             "SELECT i + 1 FROM n WHERE i < 3) SELECT "
                             "o.customer_email FROM orders o, n"),
                    12);
    /* UNION folds the three masked example.com addresses into one. */
    CU_ASSERT_EQUAL(answered("SELECT customer_email FROM orders UNION "
                             "SELECT 'literal@example.com'"),
                    3);
    CU_ASSERT_EQUAL(answered("SELECT customer_email FROM orders UNION ALL "
                             "SELECT 'literal@example.com'"),
                    5);
    CU_ASSERT_EQUAL(answered("SELECT upper(customer_email), "
                             "length(card_number), substr(card_number, 1, "
                             "4), md5(customer_email) FROM orders"),
                    4);
    CU_ASSERT_EQUAL(answered("SELECT string_agg(customer_email, ','), "
                             "max(card_number), min(amount), sum(amount) "
                             "FROM orders"),
                    1);
    CU_ASSERT_EQUAL(answered("SELECT * FROM orders WHERE customer_email = "
                             "'alice.secret@example.com'"),
                    0);
    CU_ASSERT_EQUAL(answered("SELECT * FROM orders WHERE region <> 'EU' OR "
                             "amount > 100"),
                    0);
    CU_ASSERT_EQUAL(answered("SELECT * FROM pg_temp.orders"), 4);
    CU_ASSERT_EQUAL(answered("TABLE orders"), 4);
    /* An error on a hidden row would tell that it exists: the security
     * barrier keeps the consumer's condition above the filter. */
    CU_ASSERT_EQUAL(answered("SELECT * FROM orders WHERE 1 / (amount - "
                             "777) <> 0"),
                    4);
}

static void test_tables_and_catalogs(void)
{
    result r;

    expect_refused("SELECT * FROM public.orders", POLIS_EDENIED,
                   "permission denied");
    expect_refused("SELECT * FROM customers", POLIS_EINVAL, "does not exist");
    expect_refused("SELECT * FROM public.customers", POLIS_EDENIED,
                   "permission denied");
    expect_refused("SELECT * FROM polis.request", POLIS_EDENIED,
                   "permission denied");
    expect_refused("SELECT query_to_xml('SELECT * FROM public.orders', "
                   "true, false, '')",
                   POLIS_EDENIED, "permission denied");
    expect_refused("SELECT pg_read_file('/etc/passwd')", POLIS_EDENIED,
                   "permission denied");
    expect_refused("SELECT * FROM pg_ls_dir('.')", POLIS_EDENIED,
                   "permission denied");
    expect_refused("SELECT lo_import('/etc/passwd')", POLIS_EDENIED, "");
    /* Column statistics (most common values) of the table stay hidden;
     * the owner sees them, so the check can fail. */
    CU_ASSERT_EQUAL(answered("SELECT * FROM pg_stats WHERE tablename = "
                             "'orders'"),
                    0);
    {
        PGconn *c = pgenv_connect(pg, "polis_owner");
        PGresult *res = PQexec(c, "SELECT most_common_vals::text FROM "
                                  "pg_stats WHERE tablename = 'orders' AND "
                                  "attname = 'region'");
        CU_ASSERT_EQUAL(PQntuples(res), 1);
        CU_ASSERT_PTR_NOT_NULL(strstr(PQgetvalue(res, 0, 0), "US"));
        PQclear(res);
        PQfinish(c);
    }
    /* The catalogs show structure, not data; the view's text holds no
     * subject value. */
    run("SELECT string_agg(pg_get_viewdef(c.oid), ' ') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'polis'",
        &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_PTR_NULL(strstr(r.text, "'EU'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.text, "r.p[1]"));
    free(r.text);
}

/* A view made for a consumer with weaker masks is in schema polis and
 * granted to the query role, but this session's request row names only
 * the view of its own decision. */
static void test_other_views_are_empty(void)
{
    result r;
    char sql[256];
    PGconn *c;
    PGresult *res;
    pgq_conn *conn = NULL;

    run_on(&opener, "sales/orders", "orders", "SELECT 1", NULL, NULL, &r, NULL);
    CU_ASSERT_EQUAL(r.rc, 0);
    free(r.text);
    c = pgenv_connect(pg, "postgres");
    res = PQexec(c, "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON "
                    "n.oid = c.relnamespace WHERE n.nspname = 'polis' AND "
                    "c.relkind = 'v' AND pg_get_viewdef(c.oid) NOT LIKE "
                    "'%****%'");
    CU_ASSERT_FATAL(PQntuples(res) >= 1);
    snprintf(sql, sizeof(sql), "SELECT * FROM polis.%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(c);
    CU_ASSERT_EQUAL_FATAL(pgq_open(owner_dsn, query_dsn, &conn, &r.err), 0);
    run_on(&analyst, "sales/orders", "orders", sql, NULL, NULL, &r, conn);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_EQUAL(r.rows, 0);
    free(r.text);
    /* ... and the same connection still answers its own view. */
    run_on(&analyst, "sales/orders", "orders", "SELECT * FROM orders", NULL,
           NULL, &r, conn);
    CU_ASSERT_EQUAL(r.rows, 4);
    CU_ASSERT_FALSE(qr_leaks(&r, forbidden));
    free(r.text);
    pgq_close(conn);
}

static void test_roles_cannot_be_changed(void)
{
    /* RESET ROLE returns to the session user, which is the query role
     * itself: nothing gained. */
    expect_refused("SELECT set_config('role', 'none', false), "
                   "query_to_xml('SELECT * FROM public.orders', true, false, "
                   "'')",
                   POLIS_EDENIED, "permission denied");
    expect_refused("SELECT set_config('role', 'polis_owner', false)",
                   POLIS_EDENIED, "permission denied");
    expect_refused("SELECT set_config('session_authorization', "
                   "'postgres', false)",
                   POLIS_EDENIED, "permission denied");
    expect_refused("SET ROLE polis_owner", POLIS_EDENIED,
                   "only SELECT statements");
    expect_refused("RESET ROLE", POLIS_EDENIED, "only SELECT statements");
}

static void test_writes_and_statements_refused(void)
{
    expect_refused("INSERT INTO orders VALUES (99)", POLIS_EDENIED,
                   "writes are not allowed");
    expect_refused("UPDATE orders SET region = 'US'", POLIS_EDENIED,
                   "writes are not allowed");
    expect_refused("DELETE FROM orders", POLIS_EDENIED,
                   "writes are not allowed");
    expect_refused("WITH d AS (DELETE FROM public.orders RETURNING *) "
                   "SELECT * FROM d",
                   POLIS_EINVAL, "data-modifying");
    expect_refused("CREATE TABLE x(a int)", POLIS_EDENIED,
                   "only SELECT statements");
    expect_refused("DROP VIEW orders", POLIS_EDENIED, "only SELECT statements");
    expect_refused("COPY orders TO STDOUT", POLIS_EDENIED,
                   "writes are not allowed");
    expect_refused("EXPLAIN ANALYZE SELECT * FROM orders", POLIS_EDENIED,
                   "only SELECT statements");
    expect_refused("SELECT 1; DROP VIEW orders", POLIS_EDENIED,
                   "only one statement");
    expect_refused("SELECT 1; SELECT * FROM public.orders", POLIS_EDENIED,
                   "only one statement");
    expect_refused("SELECT * FROM orders FOR UPDATE", POLIS_EDENIED, "");
    expect_refused("SELECT nextval('x')", POLIS_EINVAL, "");
    expect_refused("SELECT * INTO TEMP t FROM orders", POLIS_EINVAL, "INTO");
    /* The views are still there and answer. */
    CU_ASSERT_EQUAL(answered("SELECT * FROM orders"), 4);
}

/* ---- decisions, parameters, limits -------------------------------------- */

static void test_subject_values_are_not_sql(void)
{
    static const who evil = {"eve", "analysts", "EU' OR region <> 'x"};
    result r;

    run_on(&evil, "sales/orders", "orders", "SELECT * FROM orders", NULL, NULL,
           &r, NULL);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_EQUAL(r.rows, 0);
    free(r.text);
}

static void test_params_bound(void)
{
    json_t *p = json_pack("[i, s]", 2, "x' OR 1=1 --");
    result r;

    run_on(&analyst, "sales/orders", "orders",
           "SELECT order_id FROM orders WHERE order_id = $1 OR region = $2", p,
           NULL, &r, NULL);
    expect_text(&r, "order_id\n2\n");
    free(r.text);
    json_decref(p);
}

static void test_deny(void)
{
    static const who nobody = {"nob", "nobody", "EU"};
    result r;

    run_on(&nobody, "sales/orders", "orders", "SELECT 1", NULL, NULL, &r, NULL);
    CU_ASSERT_EQUAL(r.rc, POLIS_EDENIED);
    free(r.text);
}

/* ---- minimum group size (auditors: 3; EU 4 rows, US 2, APAC 1) ---------- */

static void run_aud(const char *sql, const json_t *params, result *r)
{
    run_on(&auditor, "sales/orders", "orders", sql, params, NULL, r, NULL);
}

static void expect_groups(const char *sql, const char *want,
                          uint64_t suppressed)
{
    result r;

    run_aud(sql, NULL, &r);
    expect_text(&r, want);
    if (r.stats.suppressed != suppressed)
        fprintf(stderr, "\n%s\n  -> suppressed %llu, want %llu\n", sql,
                (unsigned long long)r.stats.suppressed,
                (unsigned long long)suppressed);
    CU_ASSERT_EQUAL(r.stats.suppressed, suppressed);
    /* The group-size column never reaches the sink: every row has the
     * header's width, and no column the consumer did not name is there. */
    {
        const char *line = r.text;
        int header = -1;
        while (*line) {
            const char *nl = strchr(line, '\n');
            int bars = 0;
            for (const char *q = line; q < nl; q++)
                bars += *q == '|';
            if (header < 0)
                header = bars;
            CU_ASSERT_EQUAL(bars, header);
            line = nl + 1;
        }
    }
    if (strstr(sql, "polis_n_") == NULL)
        CU_ASSERT_PTR_NULL(strstr(r.text, "polis_n_"));
    free(r.text);
}

static void test_min_group_size_suppresses_small_groups(void)
{
    json_t *p = json_pack("[s]", "EU");
    result r;

    expect_groups("SELECT region, count(*) AS n FROM orders GROUP BY region "
                  "ORDER BY region",
                  "region|n\nEU|4\n", 2);
    expect_groups("SELECT region, sum(amount) AS total, min(order_date) "
                  "FROM orders AS o WHERE amount > 0 GROUP BY region "
                  "HAVING count(*) > 0 ORDER BY total DESC LIMIT 5",
                  "region|total|min\nEU|100.5|2024-01-05\n", 2);
    expect_groups("SELECT o.region, count(*) FROM orders o GROUP BY o.region",
                  "region|count\nEU|4\n", 2);
    /* One group: the whole filtered table, or nothing. */
    expect_groups("SELECT count(*), avg(amount)::int FROM orders",
                  "count|avg\n7|347\n", 0);
    expect_groups("SELECT count(*) FROM orders WHERE region = 'US'", "count\n",
                  1);
    expect_groups("SELECT count(*) FROM orders WHERE false", "count\n", 1);
    expect_groups("SELECT region, count(*) FROM orders GROUP BY region "
                  "HAVING count(*) < 3",
                  "region|count\n", 2);
    /* Comments nest in PostgreSQL: the customer_email is commented out. */
    expect_groups("SELECT count(*) /* a /* b */ , customer_email */ "
                  "FROM orders -- trailing\n;",
                  "count\n7\n", 0);
    /* A consumer's own column may be called like ours. */
    expect_groups("SELECT count(*) AS polis_n_0 FROM orders", "polis_n_0\n7\n",
                  0);
    expect_groups("SELECT region, count(*) FROM orders GROUP BY region "
                  "ORDER BY 2 DESC LIMIT 2 OFFSET 0",
                  "region|count\nEU|4\n", 1);
    run_aud("SELECT count(*) AS n FROM orders WHERE region = $1", p, &r);
    expect_text(&r, "n\n4\n");
    free(r.text);
    json_decref(p);
}

static void test_min_group_size_refuses_other_shapes(void)
{
    static const char *const refused[] = {
        "SELECT * FROM orders",
        "SELECT customer_email FROM orders",
        "SELECT region, customer_email FROM orders GROUP BY region",
        "SELECT region, count(*) FROM orders GROUP BY region "
        "UNION ALL SELECT 'x', 1",
        "SELECT count(*) FROM orders WHERE amount > "
        "(SELECT avg(amount) FROM orders)",
        "SELECT count(*) FROM orders JOIN orders o2 ON true",
        "SELECT count(*) FROM orders, orders o2",
        "WITH x AS (SELECT * FROM orders) SELECT count(*) FROM x",
        "SELECT region, count(*) OVER () FROM orders GROUP BY region",
        "SELECT region, string_agg(customer_email, ',') FROM orders "
        "GROUP BY region",
        "SELECT region, json_agg(t) FROM orders t GROUP BY region",
        "SELECT region, count(*) FROM orders GROUP BY region "
        "HAVING customer_email = 'x'",
        "SELECT region, count(*) FROM orders GROUP BY region ORDER BY amount",
        "SELECT count(*) FROM orders WHERE region = $$EU$$",
        "SELECT count(*) FROM orders WHERE region = E'EU'",
        "SELECT count(*) FROM orders; SELECT 1",
        "SELECT count(*) FROM customers",
        "SELECT count(*) FROM public.orders",
        "SELECT count(*) FROM orders FOR UPDATE",
        "TABLE orders",
        "SELECT public.sum(amount) FROM orders",
        "SELECT max(customer_email, 'x') FROM orders",
        "SELECT count(*) FROM orders o(a, b)",
        "SELECT count(*) FROM orders /* unterminated",
        "SELECT count(*), lateral FROM orders",
        NULL,
    };
    result r;

    for (int i = 0; refused[i]; i++) {
        run_aud(refused[i], NULL, &r);
        if (r.rc != POLIS_EDENIED || !strstr(r.err.message, "at least 3") ||
            r.rows != 0)
            fprintf(stderr, "\n%s\n  -> rc %d, \"%s\"\n", refused[i], r.rc,
                    r.err.message);
        CU_ASSERT_EQUAL(r.rc, POLIS_EDENIED);
        CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "at least 3"));
        CU_ASSERT_EQUAL(r.rows, 0);
        CU_ASSERT_FALSE(qr_leaks(&r, forbidden));
        free(r.text);
    }
}

/* An error raised while reading rows could quote one row's value: only
 * its SQLSTATE is told (a parse error keeps PostgreSQL's message). */
static void test_min_group_size_withholds_row_errors(void)
{
    result r;

    run_on(&opener, "sales/orders", "orders",
           "SELECT count(*) FROM orders WHERE region::int = 1", NULL, NULL, &r,
           NULL);
    CU_ASSERT_EQUAL(r.rc, POLIS_EINVAL);
    /* Without a minimum group size the message names the value. */
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "\"EU\""));
    free(r.text);
    run_aud("SELECT count(*) FROM orders WHERE region::int = 1", NULL, &r);
    CU_ASSERT_EQUAL(r.rc, POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "SQLSTATE 22P02"));
    CU_ASSERT_PTR_NULL(strstr(r.err.message, "EU"));
    CU_ASSERT_PTR_NULL(strstr(r.err.message, "US"));
    CU_ASSERT_PTR_NULL(strstr(r.err.message, "APAC"));
    free(r.text);
    run_aud("SELECT count(*) FROM orders WHERE nosuchcol = 1", NULL, &r);
    CU_ASSERT_EQUAL(r.rc, POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "nosuchcol"));
    free(r.text);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_limits(void)
{
    sq_limits lim = {0};
    result r;
    int64_t t0;

    lim.max_rows = 2;
    run_on(&analyst, "sales/orders", "orders",
           "SELECT order_id FROM orders ORDER BY order_id", NULL, &lim, &r,
           NULL);
    expect_text(&r, "order_id\n1\n2\n");
    CU_ASSERT_TRUE(r.stats.truncated);
    free(r.text);

    lim.max_rows = 0;
    lim.timeout_ms = 300;
    t0 = now_ms();
    run_on(&analyst, "sales/orders", "orders", "SELECT pg_sleep(5)", NULL, &lim,
           &r, NULL);
    CU_ASSERT_EQUAL(r.rc, POLIS_ETIMEDOUT);
    CU_ASSERT(now_ms() - t0 < 3000);
    free(r.text);
    /* Turning the server's timeout off from inside does not help. */
    t0 = now_ms();
    run_on(&analyst, "sales/orders", "orders",
           "SELECT set_config('statement_timeout', '0', true), pg_sleep(5)",
           NULL, &lim, &r, NULL);
    CU_ASSERT_EQUAL(r.rc, POLIS_ETIMEDOUT);
    CU_ASSERT(now_ms() - t0 < 3000);
    free(r.text);

    lim.timeout_ms = 0;
    lim.max_sql = 10;
    run_on(&analyst, "sales/orders", "orders", "SELECT * FROM orders", NULL,
           &lim, &r, NULL);
    CU_ASSERT_EQUAL(r.rc, POLIS_ETOOBIG);
    free(r.text);
}

/* One connection, many requests: a timed-out or refused query leaves it
 * usable, and session state set by a consumer does not reach the next. */
static void test_connection_reuse(void)
{
    sq_limits lim = {0};
    pgq_conn *c = NULL;
    polis_error err = {0};
    result r;

    CU_ASSERT_EQUAL_FATAL(pgq_open(owner_dsn, query_dsn, &c, &err), 0);
    lim.timeout_ms = 200;
    run_on(&analyst, "sales/orders", "orders", "SELECT pg_sleep(3)", NULL, &lim,
           &r, c);
    CU_ASSERT_EQUAL(r.rc, POLIS_ETIMEDOUT);
    free(r.text);
    run_on(&analyst, "sales/orders", "orders",
           "SELECT set_config('search_path', 'public', false), "
           "pg_advisory_lock(42)",
           NULL, NULL, &r, c);
    CU_ASSERT_EQUAL(r.rc, 0);
    free(r.text);
    run_on(&analyst, "sales/orders", "orders",
           "SELECT current_setting('search_path'), (SELECT count(*) FROM "
           "pg_locks WHERE locktype = 'advisory' AND pid = "
           "pg_backend_pid())",
           NULL, NULL, &r, c);
    expect_text(&r, "current_setting|count\npg_temp|0\n");
    free(r.text);
    run_on(&opener, "sales/cases", "cases_wide",
           "SELECT count(*) FROM cases_wide", NULL, NULL, &r, c);
    CU_ASSERT_EQUAL(r.rc, 0);
    free(r.text);
    run_on(&analyst, "sales/orders", "orders", "SELECT * FROM orders", NULL,
           NULL, &r, c);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_EQUAL(r.rows, 4);
    CU_ASSERT_FALSE(qr_leaks(&r, forbidden));
    free(r.text);
    pgq_close(c);
}

/* A session the server ends is POLIS_EIO whatever libpq's message says:
 * the HTTP layer retries on the code alone. */
static void test_session_ended_is_eio(void)
{
    pgq_conn *c = NULL;
    polis_error err = {0};
    PGconn *su;
    PGresult *res;
    result r;

    /* The query role may signal its own backend: the server ends the
     * session mid-statement with 57P01. */
    CU_ASSERT_EQUAL_FATAL(pgq_open(owner_dsn, query_dsn, &c, &err), 0);
    run_on(&analyst, "sales/orders", "orders",
           "SELECT pg_terminate_backend(pg_backend_pid())", NULL, NULL, &r, c);
    if (r.rc != POLIS_EIO)
        fprintf(stderr, "\nself-terminate: rc %d (%s)\n", r.rc, r.err.message);
    CU_ASSERT_EQUAL(r.rc, POLIS_EIO);
    free(r.text);
    /* The next query on the same pair says so too, without I/O. */
    run_on(&analyst, "sales/orders", "orders", "SELECT 1", NULL, NULL, &r, c);
    CU_ASSERT_EQUAL(r.rc, POLIS_EIO);
    free(r.text);
    pgq_close(c);

    /* An idle session ended by an administrator between two queries. */
    c = NULL;
    CU_ASSERT_EQUAL_FATAL(pgq_open(owner_dsn, query_dsn, &c, &err), 0);
    run_on(&analyst, "sales/orders", "orders", "SELECT 1", NULL, NULL, &r, c);
    CU_ASSERT_EQUAL(r.rc, 0);
    free(r.text);
    su = pgenv_connect(pg, "postgres");
    CU_ASSERT_PTR_NOT_NULL_FATAL(su);
    res = PQexec(su, "SELECT count(pg_terminate_backend(pid, 5000)) FROM "
                     "pg_stat_activity WHERE usename = 'polis_query'");
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_TUPLES_OK);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(res, 0, 0), "1");
    PQclear(res);
    PQfinish(su);
    run_on(&analyst, "sales/orders", "orders", "SELECT 1", NULL, NULL, &r, c);
    if (r.rc != POLIS_EIO)
        fprintf(stderr, "\nterminated idle: rc %d (%s)\n", r.rc, r.err.message);
    CU_ASSERT_EQUAL(r.rc, POLIS_EIO);
    free(r.text);
    pgq_close(c);
}

static void test_open_refuses_privileged_query_role(void)
{
    pgq_conn *c = NULL;
    polis_error err = {0};
    char dsn[256];

    pgenv_dsn(pg, "polis_owner", dsn, sizeof(dsn));
    CU_ASSERT_EQUAL(pgq_open(owner_dsn, dsn, &c, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NULL(c);
    pgenv_dsn(pg, "postgres", dsn, sizeof(dsn));
    CU_ASSERT_EQUAL(pgq_open(owner_dsn, dsn, &c, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NULL(c);
}

/* ---- registration ------------------------------------------------------- */

static const test_case cases[] = {
    {"masked_filtered_rows", test_masked_filtered_rows},
    {"masks_equal_pol_mask_apply", test_masks_equal_pol_mask_apply},
    {"tricks_see_masked_filtered_rows", test_tricks_see_masked_filtered_rows},
    {"tables_and_catalogs", test_tables_and_catalogs},
    {"other_views_are_empty", test_other_views_are_empty},
    {"roles_cannot_be_changed", test_roles_cannot_be_changed},
    {"writes_and_statements_refused", test_writes_and_statements_refused},
    {"subject_values_are_not_sql", test_subject_values_are_not_sql},
    {"params_bound", test_params_bound},
    {"deny", test_deny},
    {"min_group_size_suppresses_small_groups",
     test_min_group_size_suppresses_small_groups},
    {"min_group_size_refuses_other_shapes",
     test_min_group_size_refuses_other_shapes},
    {"min_group_size_withholds_row_errors",
     test_min_group_size_withholds_row_errors},
    {"limits", test_limits},
    {"connection_reuse", test_connection_reuse},
    {"session_ended_is_eio", test_session_ended_is_eio},
    {"open_refuses_privileged_query_role",
     test_open_refuses_privileged_query_role},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"query_pg", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
