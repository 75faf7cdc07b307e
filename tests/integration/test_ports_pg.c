/*
 * test_ports_pg.c — a DataProduct's PostgreSQL query port served over the
 * sidecar's HTTP listener, with a real PostgreSQL (roles and schema as in
 * docs/internals/query.md), etcd, polis-controlplane and polis-sidecar:
 * masks and row filters per principal in JSON and CSV, a hash mask equal
 * to the file port's, writes refused, PostgreSQL's own error messages.
 */
#include "common/rpc.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/pgenv.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ALICE "alice-token-0123456789" /* analysts, region EU */
#define BOB   "bob-token-0123456789"   /* analysts, region US */

static pgenv *pg;
static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;
static const char *root; /* --data-root, for the file port */

/* order_id, email, card, region, amount: the table and the CSV extract. */
static const char *const rows[][5] = {
    {"1", "ann@example.com", "4111111111111111", "EU", "10.5"},
    {"2", "bo@shop.org", "4222222222222222", "US", "20"},
    {"3", "cy@example.com", "4333333333333333", "EU", "30.25"},
    {"4", "di@shop.org", "4444444444444444", "US", "40"},
    {"5", "ed@example.com", "4555555555555555", "EU", "50"},
};
#define NROWS 5

/* ---- HTTP client ------------------------------------------------------- */

/* `post` NULL: GET.  The status (-1: no answer); *r the answer. */
static long http(const char *path, const char *token, const char *accept,
                 const char *post, gc_response *r)
{
    char url[1024], line[256];
    const char *hdr[3] = {"Polis-Purpose: analytics", NULL, NULL};

    snprintf(url, sizeof(url), "%s%s", sc->http_url, path);
    if (accept) {
        snprintf(line, sizeof(line), "Accept: %s", accept);
        hdr[0] = line;
        hdr[1] = "Polis-Purpose: analytics";
    }
    return gc_http(NULL, url, token, post, hdr, 30000, r);
}

/* POST the query; the status, *out the JSON answer (caller decrefs), or
 * *text the raw body when accept is given (caller frees). */
static long query_as(const char *token, const char *sql, const char *accept,
                     json_t **out, char **text)
{
    json_t *j = json_pack("{s:s}", "sql", sql);
    char *post = json_dumps(j, JSON_COMPACT);
    gc_response b = {0};
    long st = http("/v1/products/sales/orders/query", token, accept, post, &b);

    free(post);
    json_decref(j);
    if (text) {
        *text = b.body;
        return st;
    }
    *out = gc_response_json(&b);
    if (*out == NULL)
        fprintf(stderr, "\nquery -> %ld, not JSON: %.300s\n", st,
                b.body ? b.body : "(empty)");
    gc_response_free(&b);
    return st;
}

static long query(const char *token, const char *sql, json_t **out)
{
    return query_as(token, sql, NULL, out, NULL);
}

static const char *jstr_at(const json_t *rows_, size_t r, size_t c)
{
    const char *v =
        json_string_value(json_array_get(json_array_get(rows_, r), c));

    return v ? v : "";
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));

    return v ? v : "";
}

/* ---- fixture ----------------------------------------------------------- */

/* Roles, schema and request table as docs/internals/query.md says; the
 * product table holds a column the contract does not list. */
static const char *const setup_sql =
    "CREATE EXTENSION pgcrypto;"
    "CREATE ROLE polis_owner LOGIN;"
    "CREATE ROLE polis_query LOGIN;"
    "CREATE SCHEMA polis AUTHORIZATION polis_owner;"
    "GRANT USAGE ON SCHEMA polis TO polis_query;"
    "CREATE UNLOGGED TABLE polis.request(pid int PRIMARY KEY,"
    " view name NOT NULL, p text[] NOT NULL, k bytea);"
    "ALTER TABLE polis.request OWNER TO polis_owner;"
    "CREATE TABLE orders(order_id int PRIMARY KEY, email text, card text,"
    " region text, amount numeric, secret text);"
    "GRANT SELECT ON orders TO polis_owner;";

static int make_data(void)
{
    char path[1024], sql[512];
    FILE *f;

    if (pgenv_exec(pg, "postgres", setup_sql) != 0)
        return -1;
    for (int i = 0; i < NROWS; i++) {
        snprintf(sql, sizeof(sql),
                 "INSERT INTO orders VALUES (%s, '%s', '%s', '%s', %s, "
                 "'hidden')",
                 rows[i][0], rows[i][1], rows[i][2], rows[i][3], rows[i][4]);
        if (pgenv_exec(pg, "postgres", sql) != 0)
            return -1;
    }
    snprintf(path, sizeof(path), "%s/files", root);
    if (mkdir(path, 0755) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/files/orders.csv", root);
    f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs("order_id,email,card,region,amount\n", f);
    for (int i = 0; i < NROWS; i++)
        fprintf(f, "%s,%s,%s,%s,%s\n", rows[i][0], rows[i][1], rows[i][2],
                rows[i][3], rows[i][4]);
    return fclose(f);
}

static int suite_cleanup(void)
{
    sidecarenv_free(sc);
    sc = NULL;
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    pgenv_stop(pg);
    pg = NULL;
    curl_global_cleanup();
    return 0;
}

/* The dsn names no user and no password: the roles are the defaults
 * (polis_owner, polis_query), the server trusts loopback. */
static const char *const product_fmt =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":"
    "{\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\",\"ports\":["
    "{\"name\":\"sql\",\"type\":\"query\",\"engine\":\"postgresql\","
    "\"dsn\":\"host=127.0.0.1 port=%d dbname=products\",\"table\":"
    "\"orders\"},"
    "{\"name\":\"extracts\",\"type\":\"file\",\"directory\":\"files\","
    "\"format\":\"csv\"}],\"schema\":["
    "{\"name\":\"order_id\",\"type\":\"integer\"},"
    "{\"name\":\"email\",\"type\":\"string\",\"classification\":"
    "[\"pii.email\"]},"
    "{\"name\":\"card\",\"type\":\"string\",\"classification\":"
    "[\"pii.card\"]},"
    "{\"name\":\"region\",\"type\":\"string\"},"
    "{\"name\":\"amount\",\"type\":\"decimal\"}]}}";

static const char *const policy_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":"
    "{\"name\":\"pii\"},\"spec\":{\"scope\":\"global\",\"rules\":["
    "{\"name\":\"read-sales\",\"effect\":\"allow\",\"subjects\":"
    "[\"group:analysts\"],\"resources\":[\"sales/*\"],"
    "\"ports\":[\"query\",\"file\"]},"
    "{\"name\":\"mask-emails\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"],\"mask\":{\"method\":\"email\","
    "\"classifications\":[\"pii.email\"]}},"
    "{\"name\":\"hash-cards\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"],\"mask\":{\"method\":\"hash\","
    "\"classifications\":[\"pii.card\"]}},"
    "{\"name\":\"own-region\",\"effect\":\"filter\",\"subjects\":"
    "[\"group:analysts\"],\"resources\":[\"sales/*\"],\"filter\":"
    "\"region == subject.region\"}]}}";

/* A query port whose query role is a superuser, and one whose server
 * does not listen: both must be 503, never served. */
static const char *const bad_fmt =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":"
    "{\"name\":\"%s\"},\"spec\":{\"domain\":\"sales\",\"ports\":["
    "{\"name\":\"sql\",\"type\":\"query\",\"engine\":\"postgresql\","
    "\"dsn\":\"host=127.0.0.1 port=%d dbname=products connect_timeout=3\","
    "\"queryUser\":\"%s\",\"table\":\"orders\"}],\"schema\":["
    "{\"name\":\"order_id\",\"type\":\"integer\"},"
    "{\"name\":\"region\",\"type\":\"string\"}]}}";

static int apply_bad(const char *name, int port, const char *query_user)
{
    char doc[1024];

    snprintf(doc, sizeof(doc), bad_fmt, name, port, query_user);
    return gc_apply(gov, doc) > 0 ? 0 : -1;
}

static int suite_init(void)
{
    static const char *const cp_args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = cp_args};
    sidecarenv_options so = {.domain = "sales", .id = "sales-ports-pg-1"};
    const char *sc_args[] = {
        "--data-root", NULL, "--query-max-rows", "20000", "--query-timeout-ms",
        "2000",        NULL};
    char product[2048];
    json_t *ans = NULL;
    int64_t start;
    long st = -1;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    root = testenv_tmpdir("ports-pg");
    pg = pgenv_start("products");
    if (root == NULL || pg == NULL || make_data() != 0) {
        fprintf(stderr, "cannot set up PostgreSQL or the test data\n");
        goto fail;
    }
    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto fail;
    snprintf(product, sizeof(product), product_fmt, pgenv_port(pg));
    if (gc_apply(
            gov,
            "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":"
            "{\"name\":\"sales\"},\"spec\":{\"owners\":[\"s@example.com\"]"
            "}}") < 0 ||
        gc_apply(gov, product) < 0 ||
        gc_apply_principal(gov, "alice", "analysts", "EU", ALICE) <= 0 ||
        gc_apply_principal(gov, "bob", "analysts", "US", BOB) <= 0 ||
        gc_apply(gov, policy_doc) < 0 ||
        apply_bad("unsafe", pgenv_port(pg), "postgres") ||
        apply_bad("down", testenv_refused_port(), "polis_query"))
        goto fail;
    sc_args[1] = root;
    so.controlplane = cp->grpc_target;
    so.extra_args = sc_args;
    sc = sidecarenv_start(&so);
    if (sc == NULL)
        goto fail;
    start = time(NULL);
    while (time(NULL) - start < 15) {
        st = query(ALICE, "SELECT order_id FROM orders", &ans);
        json_decref(ans);
        ans = NULL;
        if (st == 200)
            return 0;
        usleep(100 * 1000);
    }
    fprintf(stderr, "the query port never answered 200 (last %ld)\n", st);
    sidecarenv_dump_log(sc, 4000);
fail:
    suite_cleanup();
    return -1;
}

/* ---- cases ------------------------------------------------------------- */

static bool all_hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* `token` sees exactly the rows of `region`, e-mails masked, cards hashed,
 * amounts as PostgreSQL writes numeric. */
static void expect_region(const char *token, const char *region)
{
    json_t *ans = NULL, *r;
    const json_t *rws;
    size_t i, k = 0;
    long st;

    st = query(token,
               "SELECT order_id, email, card, region, amount FROM orders "
               "ORDER BY order_id",
               &ans);
    if (st != 200)
        fprintf(stderr, "\n%s: %ld %s: %s\n", region, st, jstr(ans, "error"),
                jstr(ans, "detail"));
    CU_ASSERT_EQUAL_FATAL(st, 200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(ans, "columns")), 5);
    CU_ASSERT(json_is_false(json_object_get(ans, "truncated")));
    rws = json_object_get(ans, "rows");
    json_array_foreach(rws, i, r)
    {
        const char *email = json_string_value(json_array_get(r, 1));
        const char *card = json_string_value(json_array_get(r, 2));
        const char *at;

        while (k < NROWS && strcmp(rows[k][3], region) != 0)
            k++;
        CU_ASSERT_FATAL(k < NROWS);
        CU_ASSERT_EQUAL(json_integer_value(json_array_get(r, 0)),
                        atoi(rows[k][0]));
        at = strchr(rows[k][1], '@');
        CU_ASSERT(email && strncmp(email, "****", 4) == 0 &&
                  strcmp(email + 4, at) == 0);
        CU_ASSERT(card && all_hex64(card));
        CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(r, 3)), region);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(r, 4)),
                               rows[k][4]);
        k++;
    }
    while (k < NROWS && strcmp(rows[k][3], region) != 0)
        k++;
    CU_ASSERT_EQUAL(k, NROWS); /* every row of the region came */
    CU_ASSERT(json_array_size(rws) > 0);
    json_decref(ans);
}

static void test_masked_filtered_rows(void)
{
    expect_region(ALICE, "EU");
    expect_region(BOB, "US");
    /* Alternating principals on the same sessions: no leak between. */
    expect_region(ALICE, "EU");
}

static void test_hidden_column_and_raw_table(void)
{
    json_t *ans = NULL;

    CU_ASSERT_EQUAL(query(ALICE, "SELECT secret FROM orders", &ans), 400);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "bad query");
    CU_ASSERT_PTR_NOT_NULL(strstr(jstr(ans, "detail"), "secret"));
    json_decref(ans);
    CU_ASSERT_EQUAL(query(ALICE, "SELECT * FROM public.orders", &ans), 400);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "not allowed");
    CU_ASSERT_PTR_NOT_NULL(strstr(jstr(ans, "detail"), "permission denied"));
    json_decref(ans);
}

static void test_write_refused(void)
{
    json_t *ans = NULL;

    CU_ASSERT_EQUAL(query(ALICE, "DELETE FROM orders", &ans), 400);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "not allowed");
    CU_ASSERT_PTR_NOT_NULL(strstr(jstr(ans, "detail"), "writes are not"));
    json_decref(ans);
    /* The rows are all still there (through the owner's eyes). */
    {
        PGconn *c = pgenv_connect(pg, "postgres");
        PGresult *r = c ? PQexec(c, "SELECT count(*) FROM orders") : NULL;
        CU_ASSERT(r && PQresultStatus(r) == PGRES_TUPLES_OK &&
                  atoi(PQgetvalue(r, 0, 0)) == NROWS);
        PQclear(r);
        PQfinish(c);
    }
}

static void test_unknown_column_message(void)
{
    json_t *ans = NULL;

    CU_ASSERT_EQUAL(query(BOB, "SELECT nosuch FROM orders", &ans), 400);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "bad query");
    if (strstr(jstr(ans, "detail"), "column \"nosuch\" does not exist") ==
        NULL) {
        fprintf(stderr, "\ndetail: %s\n", jstr(ans, "detail"));
        CU_FAIL("PostgreSQL's message");
    }
    json_decref(ans);
    /* The sessions survive an error: the next query works. */
    CU_ASSERT_EQUAL(query(BOB, "SELECT count(*) AS n FROM orders", &ans), 200);
    CU_ASSERT_EQUAL(json_integer_value(json_array_get(
                        json_array_get(json_object_get(ans, "rows"), 0), 0)),
                    2);
    json_decref(ans);
}

static void test_csv(void)
{
    char *text = NULL;

    CU_ASSERT_EQUAL(query_as(BOB,
                             "SELECT order_id, email FROM orders ORDER BY "
                             "order_id",
                             "text/csv", NULL, &text),
                    200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_STRING_EQUAL(text, "order_id,email\r\n"
                                 "2,****@shop.org\r\n"
                                 "4,****@shop.org\r\n");
    free(text);
}

/* PostgreSQL's pgcrypto hash of a card equals the sidecar's own (file
 * port): the raw masking key reached the engine. */
static void test_hash_matches_file_port(void)
{
    json_t *ans = NULL;
    gc_response b = {0};
    const char *pg_card, *line;

    CU_ASSERT_EQUAL_FATAL(
        query(ALICE, "SELECT card FROM orders WHERE order_id = 3", &ans), 200);
    pg_card = json_string_value(
        json_array_get(json_array_get(json_object_get(ans, "rows"), 0), 0));
    CU_ASSERT_FATAL(pg_card && all_hex64(pg_card));
    CU_ASSERT_EQUAL(http("/v1/products/sales/orders/files/orders.csv", ALICE,
                         NULL, NULL, &b),
                    200);
    line = b.body ? strstr(b.body, "\n3,") : NULL;
    CU_ASSERT_PTR_NOT_NULL(line);
    if (line)
        CU_ASSERT_PTR_NOT_NULL(strstr(line, pg_card));
    gc_response_free(&b);
    json_decref(ans);
}

static void expect_unavailable(const char *product, const char *needle)
{
    char path[256];
    gc_response b = {0};
    json_t *ans;
    long st;

    snprintf(path, sizeof(path), "/v1/products/sales/%s/query", product);
    st = http(path, ALICE, NULL, "{\"sql\":\"SELECT order_id FROM orders\"}",
              &b);
    CU_ASSERT_EQUAL(st, 503);
    ans = gc_response_json(&b);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "unavailable");
    if (strstr(jstr(ans, "detail"), needle) == NULL) {
        fprintf(stderr, "\n%s: detail \"%s\" lacks \"%s\"\n", product,
                jstr(ans, "detail"), needle);
        CU_FAIL("detail");
    }
    json_decref(ans);
    gc_response_free(&b);
}

static void test_unsafe_or_down_is_503(void)
{
    expect_unavailable("unsafe", "must not be the owner role, a superuser");
    expect_unavailable("down", "127.0.0.1");
    /* The loop's sessions for the good product come back. */
    expect_region(ALICE, "EU");
}

/* More than 64 KiB: streamed in chunks; cut at --query-max-rows. */
static void test_streamed_truncated(void)
{
    json_t *ans = NULL;
    const json_t *rws;

    CU_ASSERT_EQUAL_FATAL(query(ALICE,
                                "SELECT o.order_id, o.email, g FROM orders o, "
                                "generate_series(1, 10000) g",
                                &ans),
                          200);
    rws = json_object_get(ans, "rows");
    CU_ASSERT_EQUAL(json_array_size(rws), 20000);
    CU_ASSERT(json_is_true(json_object_get(ans, "truncated")));
    CU_ASSERT_PTR_NULL(json_object_get(ans, "error"));
    CU_ASSERT_STRING_EQUAL(jstr_at(rws, 19999, 1), "****@example.com");
    json_decref(ans);
}

static void test_timeout(void)
{
    json_t *ans = NULL;
    time_t t0 = time(NULL);

    CU_ASSERT_EQUAL(query(BOB, "SELECT pg_sleep(20)", &ans), 504);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "timeout");
    CU_ASSERT(time(NULL) - t0 < 10);
    json_decref(ans);
    expect_region(BOB, "US");
}

/* One access record per request, reported to the control plane. */
static void test_access_records(void)
{
    double before = -1, after = -1, cp_allow = -1;
    json_t *ans = NULL;
    time_t t0;

    CU_ASSERT_EQUAL_FATAL(
        sidecarenv_metric(sc, "polis_sidecar_access_records_total", &before),
        0);
    CU_ASSERT_EQUAL(query(ALICE, "SELECT 1 FROM orders", &ans), 200);
    json_decref(ans);
    CU_ASSERT_EQUAL(query(ALICE, "DROP TABLE orders", &ans), 400);
    json_decref(ans);
    CU_ASSERT_EQUAL(
        sidecarenv_metric(sc, "polis_sidecar_access_records_total", &after), 0);
    CU_ASSERT_EQUAL(after - before, 2);
    for (t0 = time(NULL); time(NULL) - t0 < 15; usleep(200 * 1000)) {
        char url[128], *page = malloc(1 << 20), *p;
        const char *series = "polis_access_total{product=\"sales/orders\","
                             "port=\"query\",decision=\"allow\"} ";

        snprintf(url, sizeof(url), "%s/metrics", cp->admin_url);
        if (page && cpenv_http_get(url, 5000, page, 1 << 20) == 200 &&
            (p = strstr(page, series)) != NULL)
            cp_allow = strtod(p + strlen(series), NULL);
        free(page);
        if (cp_allow >= 1)
            break;
    }
    CU_ASSERT(cp_allow >= 1);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sequential small queries, alternating principals (so alternating
 * decisions on the loops' kept sessions); prints the mean. */
static void test_query_latency(void)
{
    int64_t t0 = now_ms();
    json_t *ans = NULL;
    int ok = 0, n = 200;

    for (int i = 0; i < n; i++) {
        ok += query(i % 2 ? BOB : ALICE,
                    "SELECT order_id, email FROM orders WHERE "
                    "order_id = 3",
                    &ans) == 200;
        json_decref(ans);
        ans = NULL;
    }
    printf("(%.2f ms per query, sessions kept per loop) ",
           (double)(now_ms() - t0) / n);
    CU_ASSERT_EQUAL(ok, n);
}

/* The database ends the kept sessions (a restart, an administrator, an
 * idle timeout): the next query reconnects instead of failing. */
static void test_sessions_killed(void)
{
    PGconn *c = pgenv_connect(pg, "postgres");
    PGresult *r;

    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    expect_region(ALICE, "EU");
    r = PQexec(c, "SELECT count(pg_terminate_backend(pid)) FROM "
                  "pg_stat_activity WHERE usename IN ('polis_owner', "
                  "'polis_query')");
    CU_ASSERT(PQresultStatus(r) == PGRES_TUPLES_OK &&
              atoi(PQgetvalue(r, 0, 0)) >= 2);
    PQclear(r);
    PQfinish(c);
    /* Every loop's pair is dead now; each of these may land on any. */
    for (int i = 0; i < 8; i++)
        expect_region(i % 2 ? BOB : ALICE, i % 2 ? "US" : "EU");
}

static const test_case cases[] = {
    {"masked_filtered_rows", test_masked_filtered_rows},
    {"hidden_column_and_raw_table", test_hidden_column_and_raw_table},
    {"write_refused", test_write_refused},
    {"unknown_column_message", test_unknown_column_message},
    {"csv", test_csv},
    {"hash_matches_file_port", test_hash_matches_file_port},
    {"unsafe_or_down_is_503", test_unsafe_or_down_is_503},
    {"streamed_truncated", test_streamed_truncated},
    {"timeout", test_timeout},
    {"access_records", test_access_records},
    {"sessions_killed", test_sessions_killed},
    {"query_latency", test_query_latency},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"ports_pg", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
