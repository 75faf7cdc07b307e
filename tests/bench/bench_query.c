/*
 * bench_query.c — cost of governance on the SQLite query port: the same
 * SELECT over a generated 1,000,000-row orders table, run directly with
 * sqlite3 (no masks, the filter written into the SQL) and through sq_query
 * (two masked columns, a row filter from the policy), every value touched.
 * Prints `bench: <name> <value> <unit>` lines.  BENCH_ROWS overrides the
 * row count, BENCH_RUNS the runs per variant (best one counts).
 */
#include "policy/policy.h"
#include "sidecar/query_sqlite.h"
#include "tests/support/testenv.h"

#include <sqlite3.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* clang-format off */
static const char *const documents =
    "[{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
    "\"metadata\":{\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\","
    "\"schema\":[{\"name\":\"order_id\",\"type\":\"integer\"},"
    "{\"name\":\"customer_email\",\"type\":\"string\","
    "\"classification\":[\"pii.email\"]},"
    "{\"name\":\"card_number\",\"type\":\"string\","
    "\"classification\":[\"pii.card\"]},"
    "{\"name\":\"region\",\"type\":\"string\"},"
    "{\"name\":\"amount\",\"type\":\"decimal\"},"
    "{\"name\":\"order_date\",\"type\":\"date\"}]}},"
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
    "\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":["
    "{\"name\":\"allow\",\"effect\":\"allow\","
    "\"subjects\":[\"group:analysts\"],\"resources\":[\"sales/orders\"]},"
    "{\"name\":\"emails\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"],\"mask\":{\"method\":\"email\","
    "\"classifications\":[\"pii.email\"]}},"
    "{\"name\":\"cards\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"],\"mask\":{\"method\":\"show_last\","
    "\"classifications\":[\"pii.card\"],\"params\":{\"n\":4}}},"
    "{\"name\":\"region\",\"effect\":\"filter\","
    "\"subjects\":[\"group:analysts\"],\"resources\":[\"sales/orders\"],"
    "\"filter\":\"region == subject.region\"}]}}]";
/* clang-format on */

#define SELECT_COLUMNS                                                         \
    "SELECT order_id, customer_email, card_number, region, amount, "           \
    "order_date FROM orders"

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long env_long(const char *name, long def)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : def;
}

static int generate(const char *path, long rows)
{
    static const char *const regions[] = {"EU", "US", "APAC", "LATAM"};
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char email[64], card[32], date[16];
    long i;
    int rc;

    if (sqlite3_open(path, &db) != SQLITE_OK)
        return -1;
    rc = sqlite3_exec(db,
                      "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                      "CREATE TABLE orders(order_id INTEGER PRIMARY KEY,"
                      " customer_email TEXT, card_number TEXT, region TEXT,"
                      " amount REAL, order_date TEXT); BEGIN",
                      NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db,
                                "INSERT INTO orders VALUES (?1, ?2, ?3, ?4, "
                                "?5, ?6)",
                                -1, &st, NULL);
    for (i = 1; rc == SQLITE_OK && i <= rows; i++) {
        snprintf(email, sizeof(email), "customer%ld@example%ld.com", i, i % 97);
        snprintf(card, sizeof(card), "4%015ld", i * 7919 % 1000000000000000L);
        snprintf(date, sizeof(date), "2024-%02ld-%02ld", 1 + i % 12,
                 1 + i % 28);
        sqlite3_bind_int64(st, 1, i);
        sqlite3_bind_text(st, 2, email, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, card, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, regions[i % 4], -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 5, (double)(i % 100000) / 100.0);
        sqlite3_bind_text(st, 6, date, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

/* What a serializer would do: look at every value. */
typedef struct touch {
    uint64_t rows, sum;
} touch;

static void touch_value(touch *t, int type, int64_t i, double d,
                        const unsigned char *p, size_t len)
{
    switch (type) {
    case SQ_INTEGER:
        t->sum += (uint64_t)i;
        break;
    case SQ_REAL:
        t->sum += (uint64_t)d;
        break;
    case SQ_TEXT:
    case SQ_BLOB:
        t->sum += len + (len ? p[len - 1] : 0);
        break;
    default:
        break;
    }
}

static int on_row(void *ctx, size_t n, const sq_value *v)
{
    touch *t = ctx;
    size_t k;

    for (k = 0; k < n; k++)
        touch_value(t, (int)v[k].type, v[k].i, v[k].d, v[k].p, v[k].len);
    t->rows++;
    return 0;
}

static int run_direct(const char *path, touch *t)
{
    static const int map[] = {SQ_NULL, SQ_INTEGER, SQ_REAL,
                              SQ_TEXT, SQ_BLOB,    SQ_NULL};
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc, n, k;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        return -1;
    rc = sqlite3_prepare_v2(db, SELECT_COLUMNS " WHERE region = 'EU'", -1, &st,
                            NULL);
    n = sqlite3_column_count(st);
    while (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        for (k = 0; k < n; k++) {
            int type = sqlite3_column_type(st, k);
            const unsigned char *p = NULL;
            size_t len = 0;
            if (type == SQLITE_TEXT) {
                p = sqlite3_column_text(st, k);
                len = (size_t)sqlite3_column_bytes(st, k);
            }
            touch_value(t, map[type], sqlite3_column_int64(st, k),
                        sqlite3_column_double(st, k), p, len);
        }
        t->rows++;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

int main(void)
{
    long rows = env_long("BENCH_ROWS", 1000000);
    long runs = env_long("BENCH_RUNS", 3), r;
    const char *dir = testenv_tmpdir("bench-query");
    const char *groups[] = {"analysts"};
    pol_expr_attr attr = {"region", false, "EU", NULL, 0};
    pol_request req = {0};
    pol_engine_options eopts = {"bench-key", 9};
    pol_engine *engine = NULL;
    pol_decision *d = pol_decision_new();
    sq_conn *conn = NULL;
    sq_product product = {"orders"};
    sq_limits lim = {
        .timeout_ms = 600000, .max_rows = UINT64_MAX, .max_bytes = UINT64_MAX};
    polis_error err = {0};
    char path[600];
    double t0, best_direct = 1e30, best_gov = 1e30;
    uint64_t direct_rows = 0, gov_rows = 0;
    json_t *docs;

    if (dir == NULL || d == NULL)
        return 1;
    snprintf(path, sizeof(path), "%s/orders.db", dir);
    t0 = now_s();
    if (generate(path, rows) != 0) {
        fprintf(stderr, "bench_query: cannot generate %s\n", path);
        return 1;
    }
    printf("bench: query_generate_rows_per_s %.0f rows/s\n",
           (double)rows / (now_s() - t0));

    docs = json_loads(documents, 0, NULL);
    if (docs == NULL || pol_engine_build(docs, &eopts, &engine, &err) != 0) {
        fprintf(stderr, "bench_query: engine: %s\n", err.message);
        return 1;
    }
    json_decref(docs);
    req.subject = (pol_expr_subject){"ann", groups, 1, &attr, 1};
    req.product = "sales/orders";
    req.port = POL_PORT_QUERY;
    if (pol_decide(engine, &req, d, &err) != 0 || !pol_decision_allowed(d) ||
        sq_open(path, &conn, &err) != 0) {
        fprintf(stderr, "bench_query: %s\n", err.message);
        return 1;
    }

    /* Alternate the variants so that both see the same page cache. */
    for (r = 0; r < runs; r++) {
        touch t = {0};
        sq_sink sink = {NULL, on_row, &t};
        double took;

        t0 = now_s();
        if (run_direct(path, &t) != 0)
            return 1;
        took = now_s() - t0;
        direct_rows = t.rows;
        if (took < best_direct)
            best_direct = took;

        memset(&t, 0, sizeof(t));
        t0 = now_s();
        if (sq_query(conn, &product, d, pol_engine_mask_key(engine),
                     &req.subject, NULL, SELECT_COLUMNS, NULL, &lim, &sink,
                     NULL, &err) != 0) {
            fprintf(stderr, "bench_query: sq_query: %s\n", err.message);
            return 1;
        }
        took = now_s() - t0;
        gov_rows = t.rows;
        if (took < best_gov)
            best_gov = took;
    }
    if (direct_rows != gov_rows) {
        fprintf(stderr, "bench_query: %llu rows direct, %llu governed\n",
                (unsigned long long)direct_rows, (unsigned long long)gov_rows);
        return 1;
    }
    printf("bench: query_table_rows %ld rows\n", rows);
    printf("bench: query_result_rows %llu rows\n",
           (unsigned long long)gov_rows);
    printf("bench: query_direct_rows_per_s %.0f rows/s\n",
           (double)direct_rows / best_direct);
    printf("bench: query_governed_rows_per_s %.0f rows/s\n",
           (double)gov_rows / best_gov);
    printf("bench: query_governed_vs_direct_ratio %.2f x\n",
           best_gov / best_direct);
    sq_close(conn);
    pol_decision_free(d);
    pol_engine_free(engine);
    return 0;
}
