/*
 * test_query_sqlite.c — the governed SQL engine of the SQLite query port
 * (sidecar/query_sqlite.h) against a real database file and decisions made
 * by the real policy engine: masks and row filters hold against every SQL
 * trick we know, writes and escapes are refused, limits and the minimum
 * group size work.
 */
#include "policy/policy.h"
#include "sidecar/query_sqlite.h"
#include "tests/support/testenv.h"
#include "tests/support/testutil.h"
#include "tests/support/qresult.h"

#include <sqlite3.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- fixture --------------------------------------------------------------
 */

/* JSON with ` for " (expressions keep their single quotes). */
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

/* clang-format off */
static const char *const documents =
    "[{`apiVersion`:`polis/v1`,`kind`:`DataProduct`,"
    "`metadata`:{`name`:`orders`},`spec`:{`domain`:`sales`,"
    "`ports`:[{`name`:`sql`,`type`:`query`,`engine`:`sqlite`,"
    "`database`:`orders.db`,`table`:`orders`}],"
    "`schema`:[{`name`:`order_id`,`type`:`integer`},"
    "{`name`:`customer_email`,`type`:`string`,`classification`:[`pii.email`]},"
    "{`name`:`card_number`,`type`:`string`,`classification`:[`pii.card`]},"
    "{`name`:`region`,`type`:`string`},"
    "{`name`:`amount`,`type`:`decimal`},"
    "{`name`:`order_date`,`type`:`date`}]}},"
    "{`apiVersion`:`polis/v1`,`kind`:`Policy`,`metadata`:{`name`:`sales`},"
    "`spec`:{`scope`:`global`,`rules`:["
    "{`name`:`analysts`,`effect`:`allow`,`subjects`:[`group:analysts`,"
    "`group:auditors`,`group:open`],`resources`:[`sales/orders`]},"
    "{`name`:`emails`,`effect`:`mask`,`subjects`:[`*`],"
    "`resources`:[`*`],`mask`:{`method`:`email`,"
    "`classifications`:[`pii.email`]}},"
    "{`name`:`cards`,`effect`:`mask`,`subjects`:[`*`],`resources`:[`*`],"
    "`mask`:{`method`:`show_last`,`classifications`:[`pii.card`],"
    "`params`:{`n`:4}}},"
    "{`name`:`own-region`,`effect`:`filter`,`subjects`:[`group:analysts`],"
    "`resources`:[`sales/orders`],`filter`:`region == subject.region`},"
    "{`name`:`small-groups`,`effect`:`aggregate`,"
    "`subjects`:[`group:auditors`],`resources`:[`sales/orders`],"
    "`aggregate`:{`minGroupSize`:3}}]}}]";

/*
 * Every raw e-mail has "secret" in its local part and every raw card starts
 * with 4000, so neither may ever show; US rows use the domain corp.test and
 * amounts of 777, so an analyst from the EU must never see either.  EU card
 * A sorts first raw but last masked (9999 > 1111).
 */
static const char *const rows_sql =
    "CREATE TABLE orders(order_id INTEGER PRIMARY KEY, customer_email TEXT,"
    " card_number TEXT, region TEXT, amount REAL, order_date TEXT,"
    " internal_note TEXT);"
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
    "CREATE INDEX orders_amount ON orders(amount);"
    "CREATE TABLE customers(id INTEGER, email TEXT);"
    "INSERT INTO customers VALUES (1, 'zed.secret@corp.test');"
    "CREATE VIEW v_orders AS SELECT * FROM orders;"
    "CREATE VIEW v_notes AS SELECT internal_note FROM orders;";
/* clang-format on */

static const char *const forbidden[] = {
    "secret",
    "corp.test",
    "4000",
    "777",
    "note-hidden",
    /* hex of "secret", "corp.test", "4000" */
    "736563726574",
    "636f72702e74657374",
    "34303030",
    NULL,
};

static char db_path[600];
static pol_engine *engine;

static int suite_init(void)
{
    const char *dir = testenv_tmpdir("query");
    sqlite3 *db = NULL;
    json_t *docs;
    polis_error err = {0};
    int rc;

    if (dir == NULL)
        return 1;
    snprintf(db_path, sizeof(db_path), "%s/orders.db", dir);
    if (sqlite3_open(db_path, &db) != SQLITE_OK)
        return 1;
    rc = sqlite3_exec(db, rows_sql, NULL, NULL, NULL);
    sqlite3_close(db);
    if (rc != SQLITE_OK)
        return 1;
    docs = J(documents);
    if (docs == NULL)
        return 1;
    rc = pol_engine_build(docs, &(pol_engine_options){"test-key", 8}, &engine,
                          &err);
    json_decref(docs);
    if (rc != 0)
        fprintf(stderr, "engine: %s: %s\n", err.where, err.message);
    return rc != 0;
}

static int suite_cleanup(void)
{
    pol_engine_free(engine);
    engine = NULL;
    return 0;
}

/* ---- running queries ------------------------------------------------------
 */

/* The result as text: "col|col\n" then one "v|v\n" per row. */
typedef qr_result result;

typedef struct who {
    const char *name;
    const char *group;
    const char *region;
} who;

static const who analyst = {"ann", "analysts", "EU"};
static const who auditor = {"aud", "auditors", "EU"};

static void run_full(const who *w, const char *sql, const json_t *params,
                     const sq_limits *lim, result *r)
{
    const char *groups[1] = {w->group};
    pol_expr_attr attr = {"region", false, w->region, NULL, 0};
    pol_request req = {0};
    pol_decision *d = pol_decision_new();
    sq_sink sink = qr_sink(r);
    sq_product product = {"orders"};
    pol_expr_request ereq = {NULL, "sales/orders", "query"};
    sq_conn *c = NULL;

    qr_init(r);
    req.subject.name = w->name;
    req.subject.groups = groups;
    req.subject.ngroups = 1;
    req.subject.attrs = &attr;
    req.subject.nattrs = 1;
    req.product = "sales/orders";
    req.port = POL_PORT_QUERY;
    CU_ASSERT_FATAL(d != NULL);
    CU_ASSERT_EQUAL_FATAL(pol_decide(engine, &req, d, &r->err), 0);
    CU_ASSERT_EQUAL_FATAL(sq_open(db_path, &c, &r->err), 0);
    r->rc = sq_query(c, &product, d, pol_engine_mask_key(engine), &req.subject,
                     &ereq, sql, params, lim, &sink, &r->stats, &r->err);
    sq_close(c);
    pol_decision_free(d);
}

static void run(const char *sql, result *r)
{
    run_full(&analyst, sql, NULL, NULL, r);
}

/* Either refused, or answered without a leak; returns the rows (-1 when
 * refused). */
static long trick(const char *sql)
{
    result r;
    long rows;

    run(sql, &r);
    if (r.rc != 0) {
        CU_ASSERT(r.rc == POLIS_EDENIED || r.rc == POLIS_EINVAL);
        rows = -1;
    } else {
        CU_ASSERT_FALSE(qr_leaks(&r, forbidden));
        rows = (long)r.rows;
    }
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
    free(r.text);
}

/* ---- masks and filters ------------------------------------------------------
 */

static void test_select_star_is_masked_and_filtered(void)
{
    result r;

    run("SELECT * FROM orders ORDER BY order_id", &r);
    CU_ASSERT_EQUAL_FATAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(
        r.text, "order_id|customer_email|card_number|region|amount|"
                "order_date\n"
                "1|****@example.com|************9999|EU|10.5|2024-01-05\n"
                "2|****@example.org|************1111|EU|20|2024-02-06\n"
                "3|****@example.com|************5678|EU|30|2024-03-07\n"
                "4|****@example.com|************2468|EU|40|2024-04-08\n");
    CU_ASSERT_EQUAL(r.stats.rows, 4);
    CU_ASSERT_FALSE(r.stats.truncated);
    free(r.text);
}

static void test_aliases_joins_subqueries_ctes(void)
{
    CU_ASSERT_EQUAL(trick("SELECT customer_email AS e, card_number AS c "
                          "FROM orders"),
                    4);
    CU_ASSERT_EQUAL(trick("SELECT o.customer_email, o.card_number "
                          "FROM orders AS o"),
                    4);
    CU_ASSERT_EQUAL(trick("SELECT a.customer_email, b.card_number "
                          "FROM orders a JOIN orders b "
                          "ON a.order_id = b.order_id"),
                    4);
    CU_ASSERT_EQUAL(trick("SELECT a.customer_email, b.card_number "
                          "FROM orders a, orders b"),
                    16);
    CU_ASSERT_EQUAL(trick("SELECT * FROM (SELECT * FROM orders) t"), 4);
    CU_ASSERT_EQUAL(trick("SELECT (SELECT group_concat(card_number) FROM "
                          "orders), (SELECT max(customer_email) FROM "
                          "orders)"),
                    1);
    CU_ASSERT_EQUAL(trick("SELECT * FROM orders WHERE order_id IN "
                          "(SELECT order_id FROM orders)"),
                    4);
    CU_ASSERT_EQUAL(trick("WITH x AS (SELECT * FROM orders) "
                          "SELECT * FROM x"),
                    4);
    CU_ASSERT_EQUAL(trick("WITH RECURSIVE x(n, e) AS (SELECT 1, "
                          "(SELECT min(customer_email) FROM orders) "
                          "UNION ALL SELECT n + 1, e FROM x WHERE n < 3) "
                          "SELECT * FROM x"),
                    3);
    CU_ASSERT_EQUAL(trick("SELECT customer_email FROM orders "
                          "UNION SELECT 'literal'"),
                    3); /* two distinct masked domains + the literal */
    CU_ASSERT_EQUAL(trick("SELECT card_number FROM orders "
                          "UNION ALL SELECT 'literal'"),
                    5);
    CU_ASSERT_EQUAL(trick("SELECT rowid, * FROM orders"), 4);
}

static void test_raw_table_is_unreachable(void)
{
    expect_refused("SELECT * FROM main.orders", POLIS_EDENIED,
                   "main.orders may only be read as orders");
    expect_refused("SELECT * FROM \"main\".\"orders\"", POLIS_EDENIED,
                   "may only be read");
    /* A CTE or a subquery named like the table does not borrow the
     * governed view's right to read it. */
    expect_refused("WITH orders AS (SELECT * FROM main.orders) "
                   "SELECT * FROM orders",
                   POLIS_EDENIED, "may only be read");
    expect_refused("SELECT * FROM (SELECT * FROM main.orders) AS orders",
                   POLIS_EDENIED, "may only be read");
    expect_refused("SELECT internal_note FROM orders", POLIS_EINVAL,
                   "no such column: internal_note");
    expect_refused("SELECT * FROM customers", POLIS_EDENIED,
                   "table main.customers is not part of this product");
    /* Views of the database file would read the table unmasked. */
    CU_ASSERT_EQUAL(trick("SELECT * FROM v_orders"), -1);
    CU_ASSERT_EQUAL(trick("SELECT * FROM v_notes"), -1);
    CU_ASSERT_EQUAL(trick("SELECT * FROM main.v_orders"), -1);
    /* The engine's own functions are not callable. */
    expect_refused("SELECT polis_param(1)", POLIS_EDENIED,
                   "function polis_param is not available");
    expect_refused("SELECT polis_mask(0, customer_email) FROM orders",
                   POLIS_EDENIED, "polis_mask is not available");
}

static void test_schema_and_pragmas_refused(void)
{
    expect_refused("SELECT * FROM sqlite_master", POLIS_EDENIED,
                   "schema (sqlite_master) is not readable");
    expect_refused("SELECT sql FROM sqlite_schema", POLIS_EDENIED,
                   "is not readable");
    expect_refused("SELECT sql FROM sqlite_temp_master", POLIS_EDENIED,
                   "is not readable");
    expect_refused("SELECT sql FROM temp.sqlite_schema", POLIS_EDENIED,
                   "is not readable");
    CU_ASSERT_EQUAL(trick("SELECT * FROM pragma_table_info('orders')"), -1);
    CU_ASSERT_EQUAL(trick("SELECT * FROM pragma_table_list"), -1);
    CU_ASSERT_EQUAL(trick("SELECT * FROM json_each((SELECT "
                          "json_group_array(customer_email) FROM orders))"),
                    -1);
    expect_refused("EXPLAIN SELECT * FROM orders", POLIS_EDENIED,
                   "EXPLAIN is not allowed");
    expect_refused("EXPLAIN QUERY PLAN SELECT * FROM orders", POLIS_EDENIED,
                   "EXPLAIN is not allowed");
}

static void test_functions_see_masked_values(void)
{
    result r;

    CU_ASSERT_EQUAL(trick("SELECT upper(customer_email), "
                          "substr(card_number, 1, 12), hex(customer_email), "
                          "hex(card_number), quote(card_number), "
                          "printf('%s %s', customer_email, card_number), "
                          "json_object('e', customer_email, 'c', "
                          "card_number), unicode(card_number) FROM orders"),
                    4);
    CU_ASSERT_EQUAL(trick("SELECT group_concat(customer_email), "
                          "max(card_number), min(card_number), "
                          "json_group_array(customer_email) FROM orders"),
                    1);
    run("SELECT instr(customer_email, 'secret') AS a, "
        "like('%secret%', customer_email) AS b, "
        "customer_email GLOB '*secret*' AS c FROM orders",
        &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "a|b|c\n0|0|0\n0|0|0\n0|0|0\n0|0|0\n");
    free(r.text);

    /* length() measures the masked value. */
    run("SELECT length(customer_email), length(card_number) FROM orders "
        "WHERE order_id = 1",
        &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "length(customer_email)|"
                                   "length(card_number)\n16|16\n");
    free(r.text);

    /* Conditions compare masked values: the raw e-mail matches nothing. */
    run("SELECT count(*) FROM orders "
        "WHERE customer_email = 'alice.secret@example.com' "
        "OR card_number = '4000000000009999' OR card_number LIKE '4000%'",
        &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "count(*)\n0\n");
    free(r.text);
}

static void test_filter_holds(void)
{
    result r;

    run("SELECT count(*), sum(amount), max(amount) FROM orders", &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text,
                           "count(*)|sum(amount)|max(amount)\n4|100.5|40\n");
    free(r.text);
    CU_ASSERT_EQUAL(trick("SELECT * FROM orders WHERE region <> 'EU'"), 0);
    CU_ASSERT_EQUAL(trick("SELECT * FROM orders WHERE region = 'US' "
                          "OR 1 = 1"),
                    4);
    /*
     * The consumer's conditions never run on filtered-out rows: this one
     * raises an integer overflow on any row with an amount over 500, and
     * only US/APAC rows have one.  Without the view's optimisation fence
     * SQLite would flatten the view, scan the index on amount and test the
     * condition (covered by the index) before the region filter: the error
     * would tell that such rows exist.
     */
    run("SELECT order_id FROM orders WHERE amount > 15 AND CASE WHEN "
        "amount > 500 THEN abs(-9223372036854775807 - 1) ELSE 1 END",
        &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_EQUAL(r.rows, 3);
    free(r.text);
}

static void test_order_by_masked_column(void)
{
    result r;

    /* Raw order would be 1 (4000000000009999) before 2 (...1111); masked
     * values sort by what is visible: 1111 < 2468 < 5678 < 9999. */
    run("SELECT order_id FROM orders ORDER BY card_number", &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "order_id\n2\n4\n3\n1\n");
    free(r.text);
    run("SELECT order_id FROM orders ORDER BY order_id LIMIT 2 OFFSET 1", &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "order_id\n2\n3\n");
    free(r.text);
}

/* ---- refusals ------------------------------------------------------------ */

static void test_writes_and_escapes_refused(void)
{
    expect_refused("INSERT INTO orders(order_id) VALUES (99)", POLIS_EDENIED,
                   "writes are not allowed");
    expect_refused("UPDATE orders SET amount = 0", POLIS_EDENIED,
                   "not allowed");
    expect_refused("DELETE FROM orders", POLIS_EDENIED,
                   "writes are not allowed");
    expect_refused("REPLACE INTO orders(order_id) VALUES (1)", POLIS_EDENIED,
                   "writes are not allowed");
    expect_refused("WITH x AS (SELECT 1) DELETE FROM orders", POLIS_EDENIED,
                   "writes are not allowed");
    expect_refused("ATTACH DATABASE ':memory:' AS other", POLIS_EDENIED,
                   "ATTACH and DETACH are not allowed");
    expect_refused("DETACH DATABASE temp", POLIS_EDENIED, "not allowed");
    expect_refused("PRAGMA table_info(orders)", POLIS_EDENIED,
                   "PRAGMA is not allowed");
    expect_refused("PRAGMA writable_schema = 1", POLIS_EDENIED,
                   "PRAGMA is not allowed");
    expect_refused("CREATE TEMP TABLE t(x)", POLIS_EDENIED,
                   "CREATE is not allowed");
    expect_refused("CREATE TEMP VIEW v AS SELECT * FROM main.orders",
                   POLIS_EDENIED, "CREATE is not allowed");
    expect_refused("DROP VIEW orders", POLIS_EDENIED, "DROP is not allowed");
    expect_refused("ALTER TABLE orders ADD COLUMN x", POLIS_EDENIED,
                   "not allowed");
    expect_refused("SELECT 1; SELECT 2", POLIS_EDENIED,
                   "only one statement is allowed");
    expect_refused("SELECT 1; DROP VIEW orders", POLIS_EDENIED,
                   "only one statement is allowed");
    expect_refused("SELECT load_extension('/tmp/evil.so')", POLIS_EDENIED,
                   "extension loading is not allowed");
    expect_refused("BEGIN", POLIS_EDENIED, "transactions");
    expect_refused("SAVEPOINT a", POLIS_EDENIED, "transactions");
    expect_refused("VACUUM", POLIS_EDENIED, "VACUUM is not allowed");
    expect_refused("/* c */ VACUUM INTO '/tmp/polis-query-copy.db'",
                   POLIS_EDENIED, "VACUUM is not allowed");
    expect_refused("ANALYZE", POLIS_EDENIED, "ANALYZE is not allowed");
    expect_refused("REINDEX", POLIS_EDENIED, "not allowed");
    expect_refused("SELEKT 1", POLIS_EINVAL, "syntax error");
    expect_refused("   ", POLIS_EINVAL, "no SQL statement");
    /* Trailing semicolons and comments are one statement. */
    CU_ASSERT_EQUAL(trick("SELECT order_id FROM orders; -- done\n;"), 4);
}

static void test_denied_decision(void)
{
    static const who stranger = {"sam", "nobody", "EU"};
    result r;

    run_full(&stranger, "SELECT 1", NULL, NULL, &r);
    CU_ASSERT_EQUAL(r.rc, POLIS_EDENIED);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "default deny"));
    free(r.text);
}

/* ---- parameters ---------------------------------------------------------- */

static void test_params_are_bound(void)
{
    json_t *p = json_pack("[s]", "EU' OR '1'='1");
    result r;

    run_full(&analyst, "SELECT order_id FROM orders WHERE region = ?1", p, NULL,
             &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_EQUAL(r.rows, 0);
    free(r.text);
    run_full(&analyst, "SELECT ?1 AS v", p, NULL, &r);
    CU_ASSERT_STRING_EQUAL(r.text, "v\nEU' OR '1'='1\n");
    free(r.text);
    json_decref(p);

    p = json_pack("[i, f, b, n]", 2, 20.0, 1);
    run_full(&analyst,
             "SELECT order_id FROM orders WHERE order_id = ? AND amount = ? "
             "AND ? AND ? IS NULL",
             p, NULL, &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "order_id\n2\n");
    free(r.text);
    json_decref(p);

    p = json_pack("[i]", 1);
    run_full(&analyst, "SELECT ?1, ?2", p, NULL, &r);
    CU_ASSERT_EQUAL(r.rc, POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(r.err.message,
                           "the statement has 2 parameters, 1 given");
    free(r.text);
    json_decref(p);

    p = json_pack("[{}]");
    run_full(&analyst, "SELECT ?1", p, NULL, &r);
    CU_ASSERT_EQUAL(r.rc, POLIS_EINVAL);
    free(r.text);
    json_decref(p);
}

static void test_subject_values_are_bound(void)
{
    /* The filter's subject value is bound, never pasted into the view. */
    static const who sneaky = {"mal", "analysts", "EU' OR region <> 'x"};
    static const who us = {"usa", "analysts", "US"};
    static const who nowhere = {"nob", "analysts", NULL};
    result r;

    run_full(&sneaky, "SELECT count(*) FROM orders", NULL, NULL, &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "count(*)\n0\n");
    free(r.text);
    run_full(&us, "SELECT order_id FROM orders", NULL, NULL, &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "order_id\n5\n6\n");
    free(r.text);
    /* No region attribute: null, which matches nothing. */
    run_full(&nowhere, "SELECT count(*) FROM orders", NULL, NULL, &r);
    CU_ASSERT_STRING_EQUAL(r.text, "count(*)\n0\n");
    free(r.text);
}

static void test_connection_reused_across_subjects(void)
{
    static const who us = {"usa", "analysts", "US"};
    static const who open = {"opal", "open", "EU"};
    const who *seq[] = {&analyst, &us, &open, &analyst, &open};
    const char *want[] = {"4", "2", "7", "4", "7"};
    sq_conn *c = NULL;
    polis_error err = {0};
    size_t k;

    CU_ASSERT_EQUAL_FATAL(sq_open(db_path, &c, &err), 0);
    for (k = 0; k < sizeof(seq) / sizeof(seq[0]); k++) {
        const char *groups[1] = {seq[k]->group};
        pol_expr_attr attr = {"region", false, seq[k]->region, NULL, 0};
        pol_request req = {0};
        pol_decision *d = pol_decision_new();
        result r;
        sq_sink sink = qr_sink(&r);
        sq_product product = {"orders"};
        char expect[16];

        qr_init(&r);
        sink.columns = NULL; /* rows only */
        req.subject = (pol_expr_subject){seq[k]->name, groups, 1, &attr, 1};
        req.product = "sales/orders";
        req.port = POL_PORT_QUERY;
        CU_ASSERT_EQUAL(pol_decide(engine, &req, d, &err), 0);
        CU_ASSERT_EQUAL(sq_query(c, &product, d, pol_engine_mask_key(engine),
                                 &req.subject, NULL,
                                 "SELECT count(*) FROM orders", NULL, NULL,
                                 &sink, NULL, &err),
                        0);
        snprintf(expect, sizeof(expect), "%s\n", want[k]);
        CU_ASSERT_STRING_EQUAL(r.text, expect);
        free(r.text);
        pol_decision_free(d);
    }
    sq_close(c);
}

/* ---- limits -------------------------------------------------------------- */

static void test_timeout(void)
{
    sq_limits lim = {.timeout_ms = 200};
    struct timespec a, b;
    result r;
    double took;

    clock_gettime(CLOCK_MONOTONIC, &a);
    run_full(&analyst,
             "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
             "SELECT count(*) FROM c",
             NULL, &lim, &r);
    clock_gettime(CLOCK_MONOTONIC, &b);
    took =
        (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    if (r.rc != POLIS_ETIMEDOUT)
        fprintf(stderr, "timeout: rc %d %s\n", r.rc, r.err.message);
    CU_ASSERT_EQUAL(r.rc, POLIS_ETIMEDOUT);
    CU_ASSERT(took >= 0.19 && took < 3.0);
    free(r.text);
}

static void test_row_and_byte_limits(void)
{
    sq_limits lim = {.max_rows = 2};
    result r;

    run_full(&analyst, "SELECT order_id FROM orders ORDER BY order_id", NULL,
             &lim, &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "order_id\n1\n2\n");
    CU_ASSERT_TRUE(r.stats.truncated);
    CU_ASSERT_EQUAL(r.stats.rows, 2);
    free(r.text);

    lim = (sq_limits){.max_bytes = 40};
    run_full(&analyst, "SELECT customer_email FROM orders ORDER BY order_id",
             NULL, &lim, &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_EQUAL(r.rows, 2); /* 16 bytes each */
    CU_ASSERT_TRUE(r.stats.truncated);
    CU_ASSERT_EQUAL(r.stats.bytes, 32);
    free(r.text);

    lim = (sq_limits){.max_sql = 20};
    run_full(&analyst, "SELECT order_id FROM orders", NULL, &lim, &r);
    CU_ASSERT_EQUAL(r.rc, POLIS_ETOOBIG);
    free(r.text);

    run("SELECT length(zeroblob(100000000))", &r);
    CU_ASSERT_EQUAL(r.rc, POLIS_ETOOBIG);
    free(r.text);
}

/* ---- minimum group size -------------------------------------------------- */

static void agg(const char *sql, result *r)
{
    run_full(&auditor, sql, NULL, NULL, r);
}

static void test_small_groups_suppressed(void)
{
    result r;

    /* EU has 4 rows, US 2, APAC 1: only EU is released. */
    agg("SELECT region, count(*) AS n, sum(amount) AS total FROM orders "
        "GROUP BY region ORDER BY region",
        &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "region|n|total\nEU|4|100.5\n");
    CU_ASSERT_EQUAL(r.stats.suppressed, 2);
    free(r.text);

    agg("SELECT count(*) FROM orders", &r);
    CU_ASSERT_STRING_EQUAL(r.text, "count(*)\n7\n");
    free(r.text);
    /* One row is a group of one, and no row a group of none. */
    agg("SELECT avg(amount) FROM orders WHERE order_id = 5", &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_EQUAL(r.rows, 0);
    free(r.text);
    agg("SELECT count(*) FROM orders WHERE 0", &r);
    CU_ASSERT_EQUAL(r.rows, 0);
    free(r.text);
    /* Masked grouping keys group masked values (the e-mail domain). */
    agg("SELECT customer_email, count(*) FROM orders "
        "GROUP BY customer_email ORDER BY 2 DESC, 1",
        &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "customer_email|count(*)\n****@corp.test|3\n"
                                   "****@example.com|3\n");
    CU_ASSERT_EQUAL(r.stats.suppressed, 1); /* example.org */
    free(r.text);
    agg("SELECT substr(order_date, 1, 4) AS y, round(avg(amount), 1) "
        "FROM orders GROUP BY substr(order_date, 1, 4) "
        "HAVING count(*) > 1 ORDER BY y",
        &r);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.text, "y|round(avg(amount), 1)\n2024|347.5\n");
    free(r.text);
}

static void expect_agg_refused(const char *sql, const char *msg)
{
    result r;

    agg(sql, &r);
    if (r.rc != POLIS_EDENIED || strstr(r.err.message, msg) == NULL)
        fprintf(stderr, "\n%s\n  -> rc %d, \"%s\"\n", sql, r.rc, r.err.message);
    CU_ASSERT_EQUAL(r.rc, POLIS_EDENIED);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, msg));
    CU_ASSERT_EQUAL(r.rows, 0);
    free(r.text);
}

static void test_group_shape_enforced(void)
{
    const char *col = "every result column must be a GROUP BY key";

    expect_agg_refused("SELECT * FROM orders", col);
    expect_agg_refused("SELECT order_id FROM orders", col);
    expect_agg_refused("SELECT region, customer_email FROM orders "
                       "GROUP BY region",
                       col);
    expect_agg_refused("SELECT region, max(amount), order_id FROM orders "
                       "GROUP BY region",
                       col);
    expect_agg_refused("SELECT region r, count(*) FROM orders "
                       "GROUP BY region",
                       col);
    expect_agg_refused("SELECT region, group_concat(customer_email) "
                       "FROM orders GROUP BY region",
                       col);
    expect_agg_refused("SELECT region, max(amount, 0) FROM orders "
                       "GROUP BY region",
                       col);
    expect_agg_refused("SELECT region, NOT amount FROM orders "
                       "GROUP BY region",
                       col);
    expect_agg_refused("SELECT region, count(*) FROM orders GROUP BY region "
                       "HAVING amount > 10",
                       "HAVING may only use");
    expect_agg_refused("SELECT region, count(*) FROM orders GROUP BY region "
                       "ORDER BY amount",
                       "ORDER BY may only use");
    expect_agg_refused("SELECT count(*) FROM orders a JOIN orders b",
                       "not allowed");
    expect_agg_refused("SELECT count(*) FROM orders a, orders b",
                       "FROM must name the product's table, alone");
    expect_agg_refused("SELECT count(*) FROM (SELECT * FROM orders)",
                       "not allowed");
    expect_agg_refused("SELECT count(*) FROM orders UNION SELECT 99",
                       "not allowed");
    expect_agg_refused("WITH x AS (SELECT 1) SELECT count(*) FROM orders",
                       "the query must be one SELECT");
    expect_agg_refused("SELECT count(*) OVER () FROM orders", "not allowed");
    expect_agg_refused("SELECT count(*) FROM customers",
                       "FROM must name the product's table");
    expect_agg_refused("SELECT count(*) FROM main.orders",
                       "FROM must name the product's table");
    expect_agg_refused("SELECT count(*) FROM orders; SELECT 1",
                       "one statement only");
    expect_agg_refused("SELECT 1", "the query must read FROM the product");
    expect_agg_refused("DELETE FROM orders", "writes are not allowed");
}

/* clang-format off */
static const test_case governed_cases[] = {
    {"select_star_is_masked_and_filtered",
     test_select_star_is_masked_and_filtered},
    {"aliases_joins_subqueries_ctes", test_aliases_joins_subqueries_ctes},
    {"raw_table_is_unreachable", test_raw_table_is_unreachable},
    {"schema_and_pragmas_refused", test_schema_and_pragmas_refused},
    {"functions_see_masked_values", test_functions_see_masked_values},
    {"filter_holds", test_filter_holds},
    {"order_by_masked_column", test_order_by_masked_column},
    {"writes_and_escapes_refused", test_writes_and_escapes_refused},
    {"denied_decision", test_denied_decision},
    {"params_are_bound", test_params_are_bound},
    {"subject_values_are_bound", test_subject_values_are_bound},
    {"connection_reused_across_subjects",
     test_connection_reused_across_subjects},
    {"timeout", test_timeout},
    {"row_and_byte_limits", test_row_and_byte_limits},
    {NULL, NULL},
};

static const test_case group_cases[] = {
    {"small_groups_suppressed", test_small_groups_suppressed},
    {"group_shape_enforced", test_group_shape_enforced},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"governed", suite_init, suite_cleanup, governed_cases},
    {"groups", suite_init, suite_cleanup, group_cases},
    {NULL, NULL, NULL, NULL},
};
/* clang-format on */

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
