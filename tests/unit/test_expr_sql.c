/*
 * test_expr_sql.c — the row evaluator and the SQL rendering of expressions
 * (policy/expr.h) agree: thousands of random well-typed expressions run
 * against a real in-memory SQLite table and through pol_expr_eval must select
 * the same rows.  Also: values are bound, never pasted; PostgreSQL text.
 */
#include "policy/expr.h"
#include "tests/support/testutil.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NROWS  200
#define NEXPRS 4000

/* ---- the table ----------------------------------------------------------- */

enum { C_S, C_NAME, C_N, C_D, C_FLAG, C_WEIRD, NCOLS };

static const pol_expr_column cols[NCOLS] = {
    {"s", POL_EXPR_STRING},     {"name", POL_EXPR_STRING},
    {"n", POL_EXPR_INTEGER},    {"d", POL_EXPR_DECIMAL},
    {"flag", POL_EXPR_BOOLEAN}, {"we\"ird col", POL_EXPR_STRING},
};
static const pol_expr_schema schema = {cols, NCOLS, NULL, NULL};

/* Strings chosen to trip the renderer: quotes, LIKE and GLOB wildcards,
 * case, backslashes, multi-byte characters.  NULL is SQL NULL. */
static const char *const str_pool[] = {
    "EU",
    "eu",
    "US",
    "",
    "a%b",
    "a_b",
    "axb",
    "O'Brien",
    "Ann",
    "ANN",
    "ann",
    "x[y]",
    "a*b",
    "q?",
    "100%",
    "back\\slash",
    "\xc3\xbc",
    "\xc3\xbc"
    "b",
    "analysts",
    "'; DROP TABLE t; --",
    NULL,
};
#define NSTR (sizeof(str_pool) / sizeof(str_pool[0]))

/* LIKE patterns in the language's own syntax (\ escapes). */
static const char *const pattern_pool[] = {
    "%",      "a%",         "%b", "_",    "a_b", "a\\%b", "a\\_b", "A%",
    "%n%",    "%\xc3\xbc%", "_b", "x[y]", "%[%", "%*%",   "q?",    "%\\\\%",
    "100\\%", "",           "__", "%'%",  "e_",  "a%b%",  "%%",    "O''%",
};
#define NPAT (sizeof(pattern_pool) / sizeof(pattern_pool[0]))

struct row {
    int64_t id;
    pol_expr_value v[NCOLS];
};

static struct row rows[NROWS];
static sqlite3 *db;

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: deterministic for a given seed */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static unsigned pick(unsigned n)
{
    return (unsigned)(rnd() % n);
}

static void set_string(pol_expr_value *v, const char *s)
{
    memset(v, 0, sizeof(*v));
    if (s == NULL)
        return;
    v->type = POL_EXPR_STRING;
    v->u.str = s;
    v->len = strlen(s);
}

static void bind_value(sqlite3_stmt *st, int i, const pol_expr_value *v)
{
    switch (v->type) {
    case POL_EXPR_STRING:
        sqlite3_bind_text(st, i, v->u.str, (int)v->len, SQLITE_TRANSIENT);
        break;
    case POL_EXPR_INTEGER:
        sqlite3_bind_int64(st, i, v->u.i);
        break;
    case POL_EXPR_DECIMAL:
        sqlite3_bind_double(st, i, v->u.d);
        break;
    case POL_EXPR_BOOLEAN:
        sqlite3_bind_int(st, i, v->u.b ? 1 : 0);
        break;
    default:
        sqlite3_bind_null(st, i);
        break;
    }
}

static int setup(void)
{
    static const double dec_pool[] = {-2.5, 0.0, 0.5, 1.0, 3.0, 1e10, -0.25};
    sqlite3_stmt *st = NULL;
    int rc;

    rng_state = 0x5eed1234abcdULL;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK)
        return 1;
    rc = sqlite3_exec(db,
                      "CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, "
                      "name TEXT, n INTEGER, d REAL, flag INTEGER, "
                      "\"we\"\"ird col\" TEXT)",
                      NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return 1;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5, "
                           "?6, ?7)",
                           -1, &st, NULL) != SQLITE_OK)
        return 1;
    for (int i = 0; i < NROWS; i++) {
        struct row *r = &rows[i];
        r->id = i + 1;
        set_string(&r->v[C_S], str_pool[pick(NSTR)]);
        set_string(&r->v[C_NAME], str_pool[pick(NSTR)]);
        set_string(&r->v[C_WEIRD], str_pool[pick(NSTR)]);
        if (pick(8)) {
            r->v[C_N].type = POL_EXPR_INTEGER;
            r->v[C_N].u.i = (int64_t)pick(7) - 3;
            if (pick(20) == 0)
                r->v[C_N].u.i = INT64_C(9007199254740993);
        }
        if (pick(8)) {
            r->v[C_D].type = POL_EXPR_DECIMAL;
            r->v[C_D].u.d = dec_pool[pick(7)];
        }
        if (pick(6)) {
            r->v[C_FLAG].type = POL_EXPR_BOOLEAN;
            r->v[C_FLAG].u.b = pick(2);
        }
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, r->id);
        for (int c = 0; c < NCOLS; c++)
            bind_value(st, c + 2, &r->v[c]);
        if (sqlite3_step(st) != SQLITE_DONE) {
            sqlite3_finalize(st);
            return 1;
        }
    }
    sqlite3_finalize(st);
    return 0;
}

static int teardown(void)
{
    sqlite3_close(db);
    return 0;
}

static int get_row(void *ctx, int id, const char *name, pol_expr_value *out)
{
    const struct row *r = ctx;
    (void)name;
    if (id < 0 || id >= NCOLS)
        return POLIS_ENOTFOUND;
    *out = r->v[id];
    return 0;
}

/* ---- subjects and request ------------------------------------------------ */

static const char *const groups_full[] = {"EU", "analysts", "O'Brien", "a%b"};
static const char *const clearance[] = {"a%b", "US", "ann"};
static const pol_expr_attr attrs_full[] = {
    {"region", false, "EU", NULL, 0},
    {"team", false, NULL, NULL, 0},
    {"clearance", true, NULL, clearance, 3},
    {"evil", false, "'; DROP TABLE t; --", NULL, 0},
    {"pat", false, "a%", NULL, 0},
};
static const pol_expr_subject subject_full = {"ann", groups_full, 4, attrs_full,
                                              5};
static const char *const no_groups[1] = {NULL};
static const pol_expr_subject subject_sparse = {NULL, no_groups, 0, NULL, 0};
static const pol_expr_request request = {"analytics", "orders", "query"};

/* ---- random expressions -------------------------------------------------- */

struct gen {
    char buf[4096];
    size_t len;
};

static void put(struct gen *g, const char *s)
{
    size_t n = strlen(s);
    if (g->len + n < sizeof(g->buf)) {
        memcpy(g->buf + g->len, s, n);
        g->len += n;
        g->buf[g->len] = '\0';
    }
}

static void put_string_literal(struct gen *g, const char *s)
{
    put(g, "'");
    for (; *s; s++) {
        char c[2] = {*s, 0};
        put(g, *s == '\'' ? "''" : c);
    }
    put(g, "'");
}

static void gen_cond(struct gen *g, int depth);

static void gen_string_value(struct gen *g)
{
    static const char *const refs[] = {
        "s",
        "name",
        "\"we\"\"ird col\"",
        "subject.region",
        "subject.team",
        "subject.missing",
        "subject.name",
        "request.purpose",
        "subject.evil",
        "subject.clearance",
    };
    unsigned k = pick(10);
    if (k < 4) {
        const char *s = str_pool[pick(NSTR)];
        if (s)
            put_string_literal(g, s);
        else
            put(g, "null");
    } else {
        put(g, refs[pick(sizeof(refs) / sizeof(refs[0]))]);
    }
}

static void gen_number_value(struct gen *g)
{
    static const char *const lits[] = {"0",
                                       "1",
                                       "-3",
                                       "3",
                                       "0.5",
                                       "1.0",
                                       "-2.5",
                                       "1e10",
                                       "2.75",
                                       "9007199254740992.0",
                                       "9007199254740993",
                                       "null"};
    unsigned k = pick(6);
    if (k == 0)
        put(g, "n");
    else if (k == 1)
        put(g, "d");
    else if (k == 2)
        put(g, pick(2) ? "n" : "d");
    else
        put(g, lits[pick(sizeof(lits) / sizeof(lits[0]))]);
}

static void gen_bool_value(struct gen *g, int depth)
{
    unsigned k = pick(depth > 0 ? 5 : 3);
    if (k == 0)
        put(g, "flag");
    else if (k == 1)
        put(g, pick(2) ? "true" : "false");
    else if (k == 2)
        put(g, pick(4) ? "flag" : "null");
    else {
        put(g, "(");
        gen_cond(g, depth - 1);
        put(g, ")");
    }
}

static const char *const cmp_ops[] = {"==", "!=", "<", "<=", ">", ">="};

static void gen_comparison(struct gen *g, int depth)
{
    unsigned kind = pick(3);
    const char *op = cmp_ops[pick(6)];

    if (kind == 0) {
        gen_string_value(g);
        put(g, " ");
        put(g, op);
        put(g, " ");
        gen_string_value(g);
    } else if (kind == 1) {
        gen_number_value(g);
        put(g, " ");
        put(g, op);
        put(g, " ");
        gen_number_value(g);
    } else {
        gen_bool_value(g, depth);
        put(g, pick(2) ? " == " : " != ");
        gen_bool_value(g, depth);
    }
}

static void gen_in(struct gen *g)
{
    unsigned kind = pick(3), n = 1 + pick(4);
    bool neg = pick(3) == 0;

    if (kind == 0) {
        gen_string_value(g);
        put(g, neg ? " not in (" : " in (");
        for (unsigned i = 0; i < n; i++) {
            if (i)
                put(g, ", ");
            gen_string_value(g);
        }
        put(g, ")");
    } else if (kind == 1) {
        gen_number_value(g);
        put(g, neg ? " not in (" : " in (");
        for (unsigned i = 0; i < n; i++) {
            if (i)
                put(g, ", ");
            gen_number_value(g);
        }
        put(g, ")");
    } else {
        static const char *const lists[] = {
            "subject.groups", "subject.clearance", "subject.region",
            "subject.missing"};
        gen_string_value(g);
        put(g, neg ? " not in " : " in ");
        put(g, lists[pick(4)]);
    }
}

static void gen_like(struct gen *g)
{
    gen_string_value(g);
    put(g, pick(3) ? " like " : " not like ");
    if (pick(6) == 0)
        put(g, pick(2) ? "subject.pat" : "subject.missing");
    else
        put_string_literal(g, pattern_pool[pick(NPAT)]);
}

static void gen_cond(struct gen *g, int depth)
{
    unsigned k = pick(depth > 0 ? 9 : 5);

    switch (k) {
    case 0:
        gen_comparison(g, depth);
        break;
    case 1:
        gen_in(g);
        break;
    case 2:
        gen_like(g);
        break;
    case 3: {
        unsigned t = pick(3);
        if (t == 0)
            gen_string_value(g);
        else if (t == 1)
            gen_number_value(g);
        else
            gen_bool_value(g, depth);
        put(g, pick(2) ? " is null" : " is not null");
        break;
    }
    case 4:
        gen_bool_value(g, depth);
        break;
    case 5:
        put(g, "not ");
        gen_cond(g, depth - 1);
        break;
    default: {
        unsigned n = 2 + pick(2);
        const char *op = pick(2) ? " and " : " or ";
        put(g, "(");
        for (unsigned i = 0; i < n; i++) {
            if (i)
                put(g, op);
            gen_cond(g, depth - 1);
        }
        put(g, ")");
        break;
    }
    }
}

/* ---- running both sides -------------------------------------------------- */

/* ids selected by SQLite; returns the count or -1 (message in *why). */
static int sql_ids(const char *where, const pol_expr_sql *sql,
                   const char *prefix_param, int64_t *ids, char *why,
                   size_t whylen)
{
    char q[POL_EXPR_SQL_MAX_LEN + 128];
    sqlite3_stmt *st = NULL;
    int n = 0, rc, first = prefix_param ? 2 : 1;

    snprintf(q, sizeof(q), "SELECT id FROM t AS \"x\" WHERE %s%s ORDER BY id",
             prefix_param ? prefix_param : "", where);
    if (sqlite3_prepare_v2(db, q, -1, &st, NULL) != SQLITE_OK) {
        snprintf(why, whylen, "prepare: %s: %s", sqlite3_errmsg(db), q);
        return -1;
    }
    if (prefix_param)
        sqlite3_bind_int64(st, 1, 0);
    for (size_t i = 0; i < sql->nparams; i++)
        bind_value(st, (int)i + first, &sql->params[i]);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ids[n++] = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        snprintf(why, whylen, "step: %s", sqlite3_errmsg(db));
        return -1;
    }
    return n;
}

static void test_evaluator_and_sqlite_agree(void)
{
    static int64_t got[NROWS], want[NROWS];
    polis_error err = {0};
    char why[512], ebuf[1024];
    int failures = 0, tested = 0, nonempty = 0, notall = 0;

    rng_state = 0x0123456789abcdefULL;
    for (int k = 0; k < NEXPRS && failures < 3; k++) {
        const pol_expr_subject *subj =
            k % 4 == 3 ? &subject_sparse : &subject_full;
        pol_expr_sql_opts opts = {POL_SQL_SQLITE, NULL, 0};
        pol_expr_sql sql;
        struct gen g = {{0}, 0};
        pol_expr *e = NULL;
        const pol_expr *list[1];
        int nwant = 0, ngot;

        gen_cond(&g, 3);
        if (pol_expr_compile(g.buf, &schema, &e, &err) != 0) {
            fprintf(stderr, "\ngenerated expression rejected: %s\n  %s\n",
                    g.buf, polis_error_format(&err, ebuf, sizeof(ebuf)));
            CU_FAIL("generator produced an ill-typed expression");
            failures++;
            continue;
        }
        for (int i = 0; i < NROWS; i++) {
            pol_tri t;
            if (pol_expr_eval(e, get_row, &rows[i], subj, &request, &t, &err) !=
                0) {
                CU_FAIL("eval failed");
                break;
            }
            if (t == POL_TRUE)
                want[nwant++] = rows[i].id;
        }
        if (k % 2)
            opts.table_alias = "x";
        list[0] = e;
        if (pol_expr_to_sql(list, 1, &opts, subj, &request, &sql, &err)) {
            CU_FAIL("render failed");
            pol_expr_free(e);
            failures++;
            continue;
        }
        ngot = sql_ids(sql.text, &sql, NULL, got, why, sizeof(why));
        if (ngot < 0 || ngot != nwant ||
            memcmp(got, want, sizeof(int64_t) * (size_t)nwant) != 0) {
            int i = 0;
            while (ngot >= 0 && i < nwant && i < ngot && got[i] == want[i])
                i++;
            fprintf(stderr,
                    "\nMISMATCH for: %s\n  sql: %s\n  evaluator %d rows, "
                    "sqlite %d rows; first difference near row id %lld\n"
                    "  %s\n",
                    g.buf, sql.text, nwant, ngot,
                    (long long)(i < nwant ? want[i] : (i < ngot ? got[i] : -1)),
                    ngot < 0 ? why : "");
            CU_FAIL("evaluator and SQLite disagree");
            failures++;
        }
        tested++;
        nonempty += nwant > 0;
        notall += nwant < NROWS;
        pol_expr_sql_free(&sql);
        pol_expr_free(e);
    }
    /* The generator must produce expressions that discriminate rows. */
    CU_ASSERT_EQUAL(tested, NEXPRS);
    CU_ASSERT(nonempty > NEXPRS / 5);
    CU_ASSERT(notall > NEXPRS / 2);
}

static void test_and_of_several_with_offset(void)
{
    static const char *const srcs[] = {
        "s in subject.groups or name like 'a%'",
        "n >= 0 and flag is not null",
        "\"we\"\"ird col\" != subject.region",
    };
    static int64_t got[NROWS];
    pol_expr *e[3] = {NULL, NULL, NULL};
    polis_error err = {0};
    pol_expr_sql_opts opts = {POL_SQL_SQLITE, "x", 2};
    pol_expr_sql sql;
    char why[256];
    int nwant = 0, ngot;

    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL_FATAL(pol_expr_compile(srcs[i], &schema, &e[i], &err),
                              0);
    for (int i = 0; i < NROWS; i++) {
        bool m;
        CU_ASSERT_EQUAL(pol_expr_matches((const pol_expr *const *)e, 3, get_row,
                                         &rows[i], &subject_full, &request, &m,
                                         &err),
                        0);
        if (m)
            got[nwant++] = rows[i].id; /* reuse as "want" */
    }
    CU_ASSERT_EQUAL_FATAL(pol_expr_to_sql((const pol_expr *const *)e, 3, &opts,
                                          &subject_full, &request, &sql, &err),
                          0);
    CU_ASSERT_PTR_NOT_NULL(strstr(sql.text, "?2"));
    CU_ASSERT_PTR_NULL(strstr(sql.text, "?1"));
    {
        static int64_t ids[NROWS];
        ngot = sql_ids(sql.text, &sql, "id > ?1 AND ", ids, why, sizeof(why));
        CU_ASSERT_EQUAL(ngot, nwant);
        CU_ASSERT(nwant > 0 && nwant < NROWS);
        if (ngot == nwant)
            CU_ASSERT_EQUAL(memcmp(ids, got, sizeof(int64_t) * (size_t)nwant),
                            0);
    }
    pol_expr_sql_free(&sql);
    CU_ASSERT_PTR_NULL(sql.text);

    /* No filters: everything. */
    CU_ASSERT_EQUAL(pol_expr_to_sql(NULL, 0, &opts, NULL, NULL, &sql, &err), 0);
    CU_ASSERT_STRING_EQUAL(sql.text, "1 = 1");
    CU_ASSERT_EQUAL(sql.nparams, 0);
    pol_expr_sql_free(&sql);
    for (int i = 0; i < 3; i++)
        pol_expr_free(e[i]);
}

/*
 * Compile and render one expression.  The parameters borrow strings from
 * the expression, so it lives on in *keep until the caller frees it.
 */
static void render(const char *src, pol_sql_dialect d, const char *alias,
                   const pol_expr_subject *subj, pol_expr_sql *out,
                   pol_expr **keep)
{
    polis_error err = {0};
    pol_expr *e = NULL;
    pol_expr_sql_opts opts = {d, alias, 0};
    const pol_expr *list[1];

    memset(out, 0, sizeof(*out));
    *keep = NULL;
    CU_ASSERT_EQUAL_FATAL(pol_expr_compile(src, &schema, &e, &err), 0);
    list[0] = e;
    CU_ASSERT_EQUAL(pol_expr_to_sql(list, 1, &opts, subj, &request, out, &err),
                    0);
    *keep = e;
}

static void test_values_are_bound_not_pasted(void)
{
    static const char *const srcs[] = {
        "s == '''; DROP TABLE t; --'",
        "s == subject.evil or name in ('x'' OR 1=1 --', subject.evil)",
        "s like '%''; DROP TABLE t; --%'",
        "subject.evil in subject.groups",
    };
    static int64_t ids[NROWS];
    char why[256];

    for (size_t k = 0; k < sizeof(srcs) / sizeof(srcs[0]); k++) {
        for (int d = 0; d < 2; d++) {
            pol_expr_sql sql;
            pol_expr *e;
            bool bound = false;
            render(srcs[k], d ? POL_SQL_POSTGRES : POL_SQL_SQLITE, NULL,
                   &subject_full, &sql, &e);
            CU_ASSERT_PTR_NOT_NULL_FATAL(sql.text);
            CU_ASSERT_PTR_NULL(strstr(sql.text, "DROP"));
            CU_ASSERT_PTR_NULL(strstr(sql.text, "OR 1=1"));
            CU_ASSERT_PTR_NULL(strchr(sql.text, '\''));
            for (size_t i = 0; i < sql.nparams; i++)
                if (sql.params[i].type == POL_EXPR_STRING &&
                    memmem(sql.params[i].u.str, sql.params[i].len, "DROP", 4))
                    bound = true;
            CU_ASSERT_TRUE(bound || k == 3);
            if (!d) {
                int n = sql_ids(sql.text, &sql, NULL, ids, why, sizeof(why));
                CU_ASSERT(n >= 0);
                /* the row holding the evil string is found, nothing more */
                if (k == 0)
                    CU_ASSERT(n > 0 && n < NROWS);
            }
            pol_expr_sql_free(&sql);
            pol_expr_free(e);
        }
    }
    /* The table is still there. */
    CU_ASSERT_EQUAL(
        sqlite3_exec(db, "SELECT count(*) FROM t", NULL, NULL, NULL),
        SQLITE_OK);
}

static void expect_pg(const char *src, const char *alias, const char *text,
                      size_t nparams)
{
    pol_expr_sql sql;
    pol_expr *e;

    render(src, POL_SQL_POSTGRES, alias, &subject_full, &sql, &e);
    if (sql.text == NULL || strcmp(sql.text, text) != 0)
        fprintf(stderr, "\n%s\n  got  %s\n  want %s\n", src,
                sql.text ? sql.text : "(null)", text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sql.text);
    CU_ASSERT_STRING_EQUAL(sql.text, text);
    CU_ASSERT_EQUAL(sql.nparams, nparams);
    pol_expr_sql_free(&sql);
    pol_expr_free(e);
}

static void test_postgres_text(void)
{
    pol_expr_sql sql;
    pol_expr *e;

    expect_pg("s == 'EU' and n > 1", "o",
              "((\"o\".\"s\" = $1::text) AND (\"o\".\"n\" > $2::bigint))", 2);
    expect_pg("d <= 2.5 or flag == true or not flag", NULL,
              "((\"d\" <= $1::double precision) OR (\"flag\" = $2::boolean) "
              "OR (NOT (\"flag\")))",
              2);
    expect_pg("s < subject.region", NULL, "(\"s\" < $1::text COLLATE \"C\")",
              1);
    expect_pg("\"we\"\"ird col\" is not null", "we\"ird",
              "(\"we\"\"ird\".\"we\"\"ird col\" IS NOT NULL)", 0);
    expect_pg("s in ('a', null, subject.name)", NULL,
              "(\"s\" IN ($1::text, NULL, $2::text))", 2);
    expect_pg("s not in subject.groups", NULL,
              "(\"s\" NOT IN ($1::text, $2::text, $3::text, $4::text))", 4);
    expect_pg("s in subject.missing", NULL, "CAST(NULL AS BOOLEAN)", 0);
    expect_pg("name like 'A%'", NULL, "(\"name\" LIKE $1::text)", 1);
    expect_pg("name not like '100\\%'", NULL,
              "(\"name\" NOT LIKE $1::text ESCAPE '\\')", 1);
    expect_pg("s == null", NULL, "(\"s\" = NULL)", 0);

    /* The like pattern handed to PostgreSQL keeps the language's escapes
     * and makes a trailing backslash literal. */
    render("s like 'a\\%b\\'", POL_SQL_POSTGRES, NULL, &subject_full, &sql, &e);
    CU_ASSERT_EQUAL_FATAL(sql.nparams, 1);
    CU_ASSERT_EQUAL(sql.params[0].len, strlen("a\\%b\\\\"));
    CU_ASSERT_EQUAL(memcmp(sql.params[0].u.str, "a\\%b\\\\", 6), 0);
    pol_expr_sql_free(&sql);
    pol_expr_free(e);

    /* SQLite gets a GLOB pattern instead: case-sensitive like ours. */
    render("s like 'a%_[*?'", POL_SQL_SQLITE, NULL, &subject_full, &sql, &e);
    CU_ASSERT_STRING_EQUAL(sql.text, "(\"s\" GLOB ?1)");
    CU_ASSERT_EQUAL_FATAL(sql.nparams, 1);
    CU_ASSERT_EQUAL(sql.params[0].len, strlen("a*?[[][*][?]"));
    CU_ASSERT_EQUAL(memcmp(sql.params[0].u.str, "a*?[[][*][?]", 12), 0);
    pol_expr_sql_free(&sql);
    pol_expr_free(e);

    /* A subject with an empty group list. */
    render("s in subject.groups", POL_SQL_POSTGRES, NULL, &subject_sparse, &sql,
           &e);
    CU_ASSERT_STRING_EQUAL(sql.text, "(1 = 0)");
    pol_expr_sql_free(&sql);
    pol_expr_free(e);
}

static void test_render_refuses_unchecked(void)
{
    polis_error err = {0};
    pol_expr *e = NULL;
    pol_expr_sql sql;
    pol_expr_sql_opts opts = {POL_SQL_SQLITE, NULL, 0};
    const pol_expr *list[1];

    CU_ASSERT_EQUAL_FATAL(pol_expr_parse("s == 'x'", &e, &err), 0);
    list[0] = e;
    CU_ASSERT_EQUAL(pol_expr_to_sql(list, 1, &opts, NULL, NULL, &sql, &err),
                    POLIS_EINVAL);
    CU_ASSERT_PTR_NULL(sql.text);
    pol_expr_free(e);
}

static const test_case sql_cases[] = {
    {"evaluator_and_sqlite_agree", test_evaluator_and_sqlite_agree},
    {"and_of_several_with_offset", test_and_of_several_with_offset},
    {"values_are_bound_not_pasted", test_values_are_bound_not_pasted},
    {"postgres_text", test_postgres_text},
    {"render_refuses_unchecked", test_render_refuses_unchecked},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"expr_sql", setup, teardown, sql_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
