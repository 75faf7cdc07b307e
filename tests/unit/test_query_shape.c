/*
 * test_query_shape.c — the restricted query shape of a minimum group size
 * (sidecar/query_shape.h) in both dialects: one table of statements, each
 * accepted or refused with the message a consumer would read, including
 * where SQLite and PostgreSQL differ.  Column names come from a decision of
 * the real policy engine.
 */
#include "policy/policy.h"
#include "sidecar/query_shape.h"
#include "tests/support/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixture ------------------------------------------------------------- */

/* The product has a column called like a keyword ("first"). */
static const char *const documents =
    "[{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
    "\"metadata\":{\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\","
    "\"ports\":[{\"name\":\"sql\",\"type\":\"query\",\"engine\":\"sqlite\","
    "\"database\":\"orders.db\",\"table\":\"orders\"}],"
    "\"schema\":[{\"name\":\"region\",\"type\":\"string\"},"
    "{\"name\":\"amount\",\"type\":\"decimal\"},"
    "{\"name\":\"first\",\"type\":\"string\"}]}},"
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
    "\"metadata\":{\"name\":\"sales\"},\"spec\":{\"scope\":\"global\","
    "\"rules\":[{\"name\":\"all\",\"effect\":\"allow\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"]},"
    "{\"name\":\"small-groups\",\"effect\":\"aggregate\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"],\"aggregate\":{\"minGroupSize\":3}}]}}]";

static pol_engine *engine;
static pol_decision *decision;

static int suite_init(void)
{
    json_error_t jerr;
    json_t *docs = json_loads(documents, 0, &jerr);
    pol_request req = {0};
    polis_error err = {0};
    int rc;

    if (docs == NULL) {
        fprintf(stderr, "fixture JSON: %s\n", jerr.text);
        return 1;
    }
    rc = pol_engine_build(docs, &(pol_engine_options){"test-key", 8}, &engine,
                          &err);
    json_decref(docs);
    if (rc == 0 && (decision = pol_decision_new()) == NULL)
        rc = POLIS_ENOMEM;
    if (rc == 0) {
        req.subject.name = "aud";
        req.product = "sales/orders";
        req.port = POL_PORT_QUERY;
        rc = pol_decide(engine, &req, decision, &err);
    }
    if (rc != 0) {
        fprintf(stderr, "engine: %s: %s\n", err.where, err.message);
        return 1;
    }
    /* The shape only matters under a minimum group size. */
    if (pol_decision_min_group_size(decision) != 3 ||
        pol_decision_column_count(decision) != 3) {
        fprintf(stderr, "fixture decision: min %lld, %zu columns\n",
                (long long)pol_decision_min_group_size(decision),
                pol_decision_column_count(decision));
        return 1;
    }
    return 0;
}

static int suite_cleanup(void)
{
    pol_decision_free(decision);
    pol_engine_free(engine);
    decision = NULL;
    engine = NULL;
    return 0;
}

/* ---- the table ----------------------------------------------------------- */

enum { SQ = 1, PG = 2, BOTH = SQ | PG };

typedef struct shape_case {
    int dialects;
    const char *sql;
    /* Accepted: NULL, and the number of result columns and the text at
     * the insertion point (NULL: " FROM"). */
    const char *refused;
    size_t nitems;
    const char *at;
} shape_case;

#define COL_SQ                                                                 \
    "every result column must be a GROUP BY key or computed from count, "      \
    "sum, avg, total, min or max (aliases need AS)"
#define COL_PG                                                                 \
    "every result column must be a GROUP BY key or computed from count, "      \
    "sum, avg, min or max (aliases need AS)"
#define PLAIN_SQ "with a minimum group size the query may only use plain SQL "
#define PLAIN_PG                                                               \
    "this product releases only aggregates over at least 3 rows: the query "   \
    "may only use plain SQL "
#define REFUSED "this product releases only aggregates over at least 3 rows: "

/* clang-format off */
static const shape_case cases[] = {
    /* The shape, in both dialects. */
    {BOTH, "SELECT region, count(*) FROM orders GROUP BY region", NULL, 2,
     NULL},
    {BOTH, "SELECT region, sum(amount) AS s FROM orders o WHERE amount > 1 "
           "GROUP BY region HAVING count(*) > 2 ORDER BY s DESC LIMIT 10",
     NULL, 2, NULL},
    {BOTH, "SELECT count(*) FILTER (WHERE amount > 1) FROM orders;", NULL, 1,
     NULL},
    {BOTH, "select Count(*) from ORDERS as x", NULL, 1, " from"},
    {BOTH, "SELECT DISTINCT region FROM orders GROUP BY region", NULL, 1, NULL},
    {BOTH, "SELECT region, max(amount) - min(amount) FROM orders "
           "GROUP BY region ORDER BY region NULLS LAST", NULL, 2, NULL},
    {BOTH, "SELECT count(*)--x\nFROM orders", NULL, 1, "--x"},
    {SQ, "SELECT * FROM orders", REFUSED COL_SQ " (\"*\" at byte 8)", 0,
     NULL},
    {PG, "SELECT * FROM orders", REFUSED COL_PG " (\"*\" at byte 8)", 0,
     NULL},
    {BOTH, "SELECT region, amount FROM orders GROUP BY region",
     "(\"amount\" at byte 16)", 0, NULL},
    {BOTH, "SELECT region r, count(*) FROM orders GROUP BY region",
     "must be a GROUP BY key", 0, NULL},
    {BOTH, "SELECT max(amount, 0) FROM orders",
     "must be a GROUP BY key", 0, NULL},
    {BOTH, "SELECT region, count(*) FROM orders GROUP BY region "
           "HAVING amount > 10",
     REFUSED "HAVING may only use GROUP BY keys and aggregates (\"amount\" at "
     "byte 60)", 0, NULL},
    {BOTH, "SELECT region, count(*) FROM orders GROUP BY region "
           "ORDER BY amount",
     REFUSED "ORDER BY may only use GROUP BY keys, aggregates and result "
     "aliases (\"amount\" at byte 62)", 0, NULL},
    /* A column called like a keyword is the column. */
    {BOTH, "SELECT count(*) FROM orders HAVING first > 1",
     "HAVING may only use GROUP BY keys and aggregates (\"first\" at byte 36)",
     0, NULL},
    {BOTH, "SELECT count(*) FROM orders a JOIN orders b",
     "are not allowed (\"JOIN\" at byte 31)", 0, NULL},
    {BOTH, "SELECT count(*) FROM (SELECT * FROM orders)",
     "are not allowed (\"SELECT\" at byte 23)", 0, NULL},
    {BOTH, "SELECT count(*) FROM orders a, orders b",
     REFUSED "FROM must name the product's table, alone (\",\" at byte 30)",
     0, NULL},
    {BOTH, "SELECT count(*) FROM customers",
     "FROM must name the product's table, alone (\"customers\"", 0, NULL},
    {BOTH, "SELECT count(*) FROM main.orders",
     "FROM must name the product's table, alone (\"main\"", 0, NULL},
    {BOTH, "SELECT count(*) FROM orders; SELECT 1",
     REFUSED "one statement only (\";\" at byte 28)", 0, NULL},
    {BOTH, "WITH x AS (SELECT 1) SELECT count(*) FROM orders",
     REFUSED "the query must be one SELECT", 0, NULL},
    {BOTH, "SELECT 1", REFUSED "the query must read FROM the product", 0,
     NULL},
    {BOTH, "SELECT count(*) FROM", REFUSED "FROM must name the product's table",
     0, NULL},
    {BOTH, "SELECT FROM orders", REFUSED "empty select list", 0, NULL},
    {BOTH, "SELECT count(*) FROM orders GROUP region",
     "GROUP without BY (\"GROUP\" at byte 29)", 0, NULL},

    /* Where the dialects differ: parameters. */
    {SQ, "SELECT count(*) FROM orders WHERE amount > ?1", NULL, 1, NULL},
    {SQ, "SELECT count(*) FROM orders WHERE amount > :min", NULL, 1, NULL},
    {SQ, "SELECT count(*) FROM orders WHERE amount > $1",
     PLAIN_SQ "(unexpected text at byte 44)", 0, NULL},
    {PG, "SELECT count(*) FROM orders WHERE amount > $1", NULL, 1, NULL},
    {PG, "SELECT count(*) FROM orders WHERE amount > :min",
     PLAIN_PG "(an unexpected character at byte 44)", 0, NULL},
    {PG, "SELECT count(*) FROM orders WHERE region = $$x$$",
     PLAIN_PG "(a dollar quote at byte 44)", 0, NULL},
    /* Quoting. */
    {SQ, "SELECT count(*) FROM [orders]", NULL, 1, NULL},
    {SQ, "SELECT count(*) FROM `Orders`", NULL, 1, NULL},
    {SQ, "SELECT count(*) FROM \"Orders\"", NULL, 1, NULL},
    {PG, "SELECT count(*) FROM \"orders\"", NULL, 1, NULL},
    {PG, "SELECT count(*) FROM \"Orders\"",
     "FROM must name the product's table, alone (\"\"Orders\"\" at byte 22)",
     0, NULL},
    {PG, "SELECT count(*) FROM [orders]",
     PLAIN_PG "(an unexpected character at byte 22)", 0, NULL},
    {SQ, "SELECT count(*) FROM orders WHERE region = 'EU",
     PLAIN_SQ "(unexpected text at byte 44)", 0, NULL},
    {PG, "SELECT count(*) FROM orders WHERE region = 'EU",
     PLAIN_PG "(unterminated quote at byte 44)", 0, NULL},
    /* Strings, blobs, numbers, casts, comments. */
    {SQ, "SELECT count(*) FROM orders WHERE region = X'4555'", NULL, 1, NULL},
    {PG, "SELECT count(*) FROM orders WHERE region = E'EU'",
     PLAIN_PG "(a prefixed string at byte 44)", 0, NULL},
    {PG, "SELECT count(*) FROM orders LIMIT 1abc",
     PLAIN_PG "(text after a number at byte 35)", 0, NULL},
    {PG, "SELECT region, sum(amount)::numeric FROM orders GROUP BY region",
     NULL, 2, NULL},
    {SQ, "SELECT region, sum(amount)::numeric FROM orders GROUP BY region",
     PLAIN_SQ "(unexpected text at byte 27)", 0, NULL},
    {PG, "SELECT count(*) FROM orders HAVING count(*) > int8 '2'", NULL, 1,
     NULL},
    {SQ, "SELECT count(*) FROM orders HAVING count(*) > int8 '2'",
     "HAVING may only use GROUP BY keys and aggregates (\"int8\"", 0, NULL},
    /* PostgreSQL's comments nest; SQLite's end at the first close. */
    {PG, "SELECT count(*) /* a /* b */ region */ FROM orders", NULL, 1,
     " /* a"},
    {SQ, "SELECT count(*) /* a /* b */ region */ FROM orders",
     REFUSED COL_SQ " (\"region\" at byte 30)", 0, NULL},
    {PG, "SELECT count(*) /* a /* b */ FROM orders",
     PLAIN_PG "(unterminated comment at byte 17)", 0, NULL},
    /* Aggregates. */
    {SQ, "SELECT total(amount) FROM orders", NULL, 1, NULL},
    {PG, "SELECT total(amount) FROM orders",
     REFUSED COL_PG " (\"amount\" at byte 14)", 0, NULL},
    {SQ, "SELECT x.sum(amount) FROM orders", NULL, 1, NULL},
    {PG, "SELECT public.sum(amount) FROM orders",
     REFUSED COL_PG " (\"amount\" at byte 19)", 0, NULL},
    /* Refused words and clauses. */
    {SQ, "SELECT count(*) FROM orders INDEXED BY i",
     REFUSED "subqueries, compounds, joins, CTEs and window functions are "
     "not allowed (\"INDEXED\" at byte 29)", 0, NULL},
    {PG, "SELECT count(*) FROM orders FOR UPDATE",
     REFUSED "subqueries, compounds, joins, CTEs, window functions and row "
     "locks are not allowed (\"FOR\" at byte 29)", 0, NULL},
    {SQ, "SELECT count(*) FROM orders FOR UPDATE",
     "FROM must name the product's table, alone (\"UPDATE\" at byte 33)", 0,
     NULL},
    {PG, "SELECT count(*) FROM orders OFFSET 1", NULL, 1, NULL},
    {SQ, "SELECT count(*) FROM orders OFFSET 1",
     "FROM must name the product's table, alone (\"1\" at byte 36)", 0, NULL},
    /* DISTINCT ON's list is checked like a function's arguments. */
    {PG, "SELECT DISTINCT ON (amount) region FROM orders GROUP BY region",
     COL_PG " (\"amount\" at byte 21)", 0, NULL},
    {PG, "SELECT , count(*) FROM orders", COL_PG " (\",\" at byte 8)", 0, NULL},
    {PG, "SELECT count(*) FROM orders ORDER count(*)",
     "ORDER BY may only use GROUP BY keys, aggregates and result aliases "
     "(\"ORDER\" at byte 29)", 0, NULL},
};
/* clang-format on */

static void run_case(const shape_case *c, const qs_dialect *d)
{
    polis_error err = {0};
    size_t insert_at = 0, nitems = 0;
    const char *at = c->at ? c->at : " FROM";
    int rc =
        qs_check(d, c->sql, "orders", decision, 3, &insert_at, &nitems, &err);
    bool ok = c->refused == NULL
                  ? rc == 0 && nitems == c->nitems &&
                        strncmp(c->sql + insert_at, at, strlen(at)) == 0
                  : rc == POLIS_EDENIED && err.code == POLIS_EDENIED &&
                        strstr(err.message, c->refused) != NULL;

    if (!ok)
        fprintf(stderr,
                "\n[%s] %s\n  -> rc %d, %zu items, at \"%.8s\", \"%s\"\n",
                d->name, c->sql, rc, nitems, rc == 0 ? c->sql + insert_at : "",
                err.message);
    CU_ASSERT(ok);
}

static void test_statement_table(void)
{
    size_t n[2] = {0, 0};

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (cases[i].dialects & SQ)
            run_case(&cases[i], &qs_sqlite), n[0]++;
        if (cases[i].dialects & PG)
            run_case(&cases[i], &qs_postgres), n[1]++;
    }
    CU_ASSERT(n[0] > 40 && n[1] > 40);
}

/* "SELECT count(*) FROM orders WHERE 1" (9 tokens) and `pairs` times "+1". */
static char *long_where(size_t pairs)
{
    char *sql = malloc(64 + 2 * pairs);

    if (sql == NULL)
        return NULL;
    strcpy(sql, "SELECT count(*) FROM orders WHERE 1");
    for (size_t i = 0, n = strlen(sql); i < pairs; i++, n += 2)
        memcpy(sql + n, "+1", 3);
    return sql;
}

static void test_token_limit(void)
{
    static const qs_dialect *const dialects[] = {&qs_sqlite, &qs_postgres};

    for (size_t k = 0; k < 2; k++) {
        polis_error err = {0};
        size_t insert_at, nitems;
        char *fits = long_where((QS_MAX_TOKENS - 9) / 2); /* 4095 */
        char *over = long_where((QS_MAX_TOKENS - 9) / 2 + 1);

        CU_ASSERT_FATAL(fits != NULL && over != NULL);
        CU_ASSERT_EQUAL(qs_check(dialects[k], fits, "orders", decision, 3,
                                 &insert_at, &nitems, &err),
                        0);
        CU_ASSERT_EQUAL(qs_check(dialects[k], over, "orders", decision, 3,
                                 &insert_at, &nitems, &err),
                        POLIS_ETOOBIG);
        CU_ASSERT_STRING_EQUAL(err.message,
                               "the query is too long for a minimum group "
                               "size (4096 tokens)");
        free(fits);
        free(over);
    }
}

static void test_group_key_limit(void)
{
    static const qs_dialect *const dialects[] = {&qs_sqlite, &qs_postgres};
    char sql[2048];
    size_t len;

    for (size_t keys = QS_MAX_KEYS; keys <= QS_MAX_KEYS + 1; keys++) {
        len = (size_t)snprintf(sql, sizeof(sql),
                               "SELECT count(*) FROM orders GROUP BY region");
        for (size_t i = 1; i < keys; i++)
            len += (size_t)snprintf(sql + len, sizeof(sql) - len, ", %zu", i);
        for (size_t k = 0; k < 2; k++) {
            polis_error err = {0};
            size_t insert_at, nitems;
            int rc = qs_check(dialects[k], sql, "orders", decision, 3,
                              &insert_at, &nitems, &err);
            if (keys == QS_MAX_KEYS) {
                CU_ASSERT_EQUAL(rc, 0);
            } else {
                CU_ASSERT_EQUAL(rc, POLIS_EDENIED);
                CU_ASSERT_STRING_EQUAL(err.message,
                                       REFUSED "too many GROUP BY keys");
            }
        }
    }
}

/* clang-format off */
static const test_case shape_cases[] = {
    {"statement_table", test_statement_table},
    {"token_limit", test_token_limit},
    {"group_key_limit", test_group_key_limit},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"shape", suite_init, suite_cleanup, shape_cases},
    {NULL, NULL, NULL, NULL},
};
/* clang-format on */

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
