/*
 * test_ports.c — a data product's query and file ports on polis-sidecar's
 * HTTP listener, with real etcd, polis-controlplane and polis-sidecar
 * processes, a real SQLite database and CSV files: identity (401), denials
 * naming the rule (403), 404s, 400s, masks and row filters per principal
 * in JSON and CSV, the file port agreeing with the query port, path
 * escapes refused, a large file streamed in constant memory, and a long
 * query not holding up other requests.
 */
#include "common/rpc.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"
#include "tests/support/procstat.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

#define ALICE "alice-token-0123456789" /* analysts, region EU */
#define BOB   "bob-token-0123456789"   /* analysts, region US */
#define EVE   "eve-token-0123456789"   /* contractors: denied */

static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;
static const char *root; /* --data-root */
static long big_eu_rows;

static const char *const small_rows[][5] = {
    {"1", "ann@example.com", "4111111111111111", "EU", "10.5"},
    {"2", "bo@shop.org", "4222222222222222", "US", "20"},
    {"3", "cy@example.com", "4333333333333333", "EU", "30.25"},
    {"4", "di@shop.org", "4444444444444444", "US", "40"},
    {"5", "ed@example.com", "4555555555555555", "EU", "50"},
};
#define N_SMALL 5

/* ---- HTTP client ------------------------------------------------------- */

typedef struct body {
    char *data;
    size_t len;
    /* streaming mode (data == NULL): count bytes and lines, sample RSS */
    bool count_only;
    uint64_t stop_after; /* count_only: hang up after this many bytes */
    uint64_t bytes, lines;
    pid_t pid;
    uint64_t next_sample;
    long rss_max_kb;
} body;

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    body *b = ud;
    size_t len = size * n;

    if (b->count_only) {
        if (b->stop_after && b->bytes >= b->stop_after)
            return 0; /* hang up mid-stream */
        b->bytes += len;
        for (size_t i = 0; i < len; i++)
            b->lines += p[i] == '\n';
        if (b->bytes >= b->next_sample) {
            long kb = ps_rss_kib(b->pid);
            if (kb > b->rss_max_kb)
                b->rss_max_kb = kb;
            b->next_sample += 2 * 1024 * 1024;
        }
        return len;
    }
    if (b->len + len > 16 * 1024 * 1024)
        return 0;
    b->data = realloc(b->data, b->len + len + 1);
    if (b->data == NULL)
        return 0;
    memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
    return len;
}

typedef struct call {
    const char *method; /* NULL: GET, or POST when post is set */
    const char *path;   /* after http_url */
    const char *token;  /* NULL: no Authorization */
    const char *accept;
    const char *post;
    long max_recv_speed; /* bytes/s, 0: unlimited */
} call;

/* The status (-1: no answer, or a transfer that failed); *b the body. */
static long http(const call *c, body *b)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = NULL;
    char url[1024], line[256];
    long status = -1;
    CURLcode rc;

    snprintf(url, sizeof(url), "%s%s", sc->http_url, c->path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    if (c->token) {
        snprintf(line, sizeof(line), "Authorization: Bearer %s", c->token);
        hdr = curl_slist_append(hdr, line);
    }
    if (c->accept) {
        snprintf(line, sizeof(line), "Accept: %s", c->accept);
        hdr = curl_slist_append(hdr, line);
    }
    hdr = curl_slist_append(hdr, "Polis-Purpose: analytics");
    if (c->post) {
        hdr = curl_slist_append(hdr, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->post);
    }
    if (c->method)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, c->method);
    if (c->max_recv_speed)
        curl_easy_setopt(h, CURLOPT_MAX_RECV_SPEED_LARGE,
                         (curl_off_t)c->max_recv_speed);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    rc = curl_easy_perform(h);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return status;
}

/* A request whose answer is JSON: status, parsed body (caller decrefs). */
static long http_json(const call *c, json_t **out)
{
    body b = {0};
    long st = http(c, &b);

    *out = b.data ? json_loads(b.data, 0, NULL) : NULL;
    if (*out == NULL)
        fprintf(stderr, "\n%s -> %ld, not JSON: %.300s\n", c->path, st,
                b.data ? b.data : "(empty)");
    free(b.data);
    return st;
}

static long query(const char *token, const char *sql, json_t **out)
{
    char post[2048];
    json_t *j = json_pack("{s:s}", "sql", sql);
    char *text = json_dumps(j, JSON_COMPACT);
    call c = {.path = "/v1/products/sales/orders/query",
              .token = token,
              .post = post};

    snprintf(post, sizeof(post), "%s", text);
    free(text);
    json_decref(j);
    return http_json(&c, out);
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));

    return v ? v : "";
}

/* ---- fixture ----------------------------------------------------------- */

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (f == NULL)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static int make_data(void)
{
    char path[1024], sql[512];
    sqlite3 *db;
    FILE *f;
    int rc = 0;

    snprintf(path, sizeof(path), "%s/orders.db", root);
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return -1;
    rc |= sqlite3_exec(db,
                       "CREATE TABLE orders (order_id INTEGER, email TEXT, "
                       "card TEXT, region TEXT, amount REAL, secret TEXT)",
                       NULL, NULL, NULL);
    for (int i = 0; i < N_SMALL; i++) {
        snprintf(sql, sizeof(sql),
                 "INSERT INTO orders VALUES (%s, '%s', '%s', '%s', %s, 'x')",
                 small_rows[i][0], small_rows[i][1], small_rows[i][2],
                 small_rows[i][3], small_rows[i][4]);
        rc |= sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
    sqlite3_close(db);

    snprintf(path, sizeof(path), "%s/files", root);
    if (rc != 0 || mkdir(path, 0755) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/files/orders.csv", root);
    f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs("order_id,email,card,region,amount\n", f);
    for (int i = 0; i < N_SMALL; i++)
        fprintf(f, "%s,%s,%s,%s,%s\n", small_rows[i][0], small_rows[i][1],
                small_rows[i][2], small_rows[i][3], small_rows[i][4]);
    fclose(f);

    /* ~50 MB (20 MB under ASan): every other row is EU. */
    snprintf(path, sizeof(path), "%s/files/big.csv", root);
    f = fopen(path, "w");
    if (f == NULL)
        return -1;
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    fputs("order_id,email,card,region,amount\n", f);
    {
        long target = UNDER_ASAN ? 20L << 20 : 50L << 20, written = 0;
        for (long i = 0; written < target; i++) {
            int n =
                fprintf(f, "%ld,customer%ld@example.com,4%015ld,%s,%ld.%02ld\n",
                        i, i, i, i % 2 ? "US" : "EU", i % 1000, i % 100);
            written += n;
            big_eu_rows += i % 2 == 0;
        }
    }
    if (fclose(f) != 0)
        return -1;

    snprintf(path, sizeof(path), "%s/secret.csv", root);
    if (write_text(path, "order_id,email\n1,raw@secret.com\n") != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/files/escape.csv", root);
    return symlink("../secret.csv", path);
}

static int suite_cleanup(void)
{
    sidecarenv_free(sc);
    sc = NULL;
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    curl_global_cleanup();
    return 0;
}

static const char *const product_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":"
    "{\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\",\"ports\":["
    "{\"name\":\"sql\",\"type\":\"query\",\"engine\":\"sqlite\","
    "\"database\":\"orders.db\",\"table\":\"orders\"},"
    "{\"name\":\"extracts\",\"type\":\"file\",\"directory\":\"files\","
    "\"format\":\"csv\"}],\"schema\":["
    "{\"name\":\"order_id\",\"type\":\"integer\"},"
    "{\"name\":\"email\",\"type\":\"string\",\"classification\":"
    "[\"pii.email\"]},"
    "{\"name\":\"card\",\"type\":\"string\",\"classification\":"
    "[\"pii.card\"]},"
    "{\"name\":\"region\",\"type\":\"string\"},"
    "{\"name\":\"amount\",\"type\":\"decimal\"}]}}";

static const char *const noport_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":"
    "{\"name\":\"sqlonly\"},\"spec\":{\"domain\":\"sales\",\"ports\":["
    "{\"name\":\"sql\",\"type\":\"query\",\"engine\":\"sqlite\","
    "\"database\":\"orders.db\",\"table\":\"orders\"}],\"schema\":["
    "{\"name\":\"order_id\",\"type\":\"integer\"},"
    "{\"name\":\"region\",\"type\":\"string\"}]}}";

static const char *const policy_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":"
    "{\"name\":\"pii\"},\"spec\":{\"scope\":\"global\",\"rules\":["
    "{\"name\":\"read-sales\",\"effect\":\"allow\",\"subjects\":"
    "[\"group:analysts\",\"group:contractors\"],\"resources\":[\"sales/*\"],"
    "\"ports\":[\"query\",\"file\"]},"
    "{\"name\":\"no-pii-for-contractors\",\"effect\":\"deny\",\"subjects\":"
    "[\"group:contractors\"],\"resources\":[\"*\"],\"classifications\":"
    "[\"pii.*\"]},"
    "{\"name\":\"mask-emails\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"],\"mask\":{\"method\":\"email\","
    "\"classifications\":[\"pii.email\"]}},"
    "{\"name\":\"mask-cards\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"],\"mask\":{\"method\":\"show_last\","
    "\"classifications\":[\"pii.card\"],\"params\":{\"n\":4}}},"
    "{\"name\":\"own-region\",\"effect\":\"filter\",\"subjects\":"
    "[\"group:analysts\"],\"resources\":[\"sales/*\"],\"filter\":"
    "\"region == subject.region\"}]}}";

static int suite_init(void)
{
    static const char *const cp_args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = cp_args};
    sidecarenv_options so = {.domain = "sales", .id = "sales-ports-1"};
    const char *sc_args[] = {"--data-root", NULL, NULL};
    char asan[512];
    json_t *ans = NULL;
    int64_t start;
    long st = -1;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    root = testenv_tmpdir("ports");
    if (root == NULL || make_data() != 0) {
        fprintf(stderr, "cannot write the test data\n");
        return -1;
    }
    if (UNDER_ASAN) {
        /* ASan's quarantine keeps freed memory resident; keep it small so
         * that the sidecar's RSS measures what it holds. */
        const char *cur = getenv("ASAN_OPTIONS");
        snprintf(asan, sizeof(asan), "%s%squarantine_size_mb=1", cur ? cur : "",
                 cur && *cur ? ":" : "");
        setenv("ASAN_OPTIONS", asan, 1);
    }
    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto fail;
    if (gc_apply(
            gov,
            "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":"
            "{\"name\":\"sales\"},\"spec\":{\"owners\":[\"s@example.com\"]"
            "}}") < 0 ||
        gc_apply(gov, product_doc) < 0 || gc_apply(gov, noport_doc) < 0 ||
        gc_apply_principal(gov, "alice", "analysts", "EU", ALICE) <= 0 ||
        gc_apply_principal(gov, "bob", "analysts", "US", BOB) <= 0 ||
        gc_apply_principal(gov, "eve", "contractors", "EU", EVE) <= 0 ||
        gc_apply(gov, policy_doc) < 0)
        goto fail;
    sc_args[1] = root;
    so.controlplane = cp->grpc_target;
    so.extra_args = sc_args;
    sc = sidecarenv_start(&so);
    if (sc == NULL)
        goto fail;
    /* Wait until the sidecar enforces all of it: counted from here, as
     * starting etcd, the control plane and the sidecar may take most of
     * any budget on a loaded machine. */
    start = time(NULL);
    while (time(NULL) - start < 15) {
        st = query(ALICE, "SELECT order_id FROM orders", &ans);
        json_decref(ans);
        ans = NULL;
        if (st == 200)
            return 0;
        usleep(50 * 1000);
    }
    fprintf(stderr, "the query port never answered 200 (last %ld)\n", st);
    sidecarenv_dump_log(sc, 4000);
fail:
    suite_cleanup();
    return -1;
}

/* ---- cases ------------------------------------------------------------- */

static void expect_error(const call *c, long status, const char *needle)
{
    json_t *ans = NULL;
    long st = http_json(c, &ans);

    CU_ASSERT_EQUAL(st, status);
    CU_ASSERT(ans && json_is_string(json_object_get(ans, "error")));
    if (ans == NULL || strstr(jstr(ans, "detail"), needle) == NULL) {
        fprintf(stderr, "\n%s -> %ld, detail \"%s\" lacks \"%s\"\n", c->path,
                st, jstr(ans, "detail"), needle);
        CU_FAIL("detail");
    }
    json_decref(ans);
}

static void test_unauthenticated(void)
{
    call q = {.path = "/v1/products/sales/orders/query",
              .post = "{\"sql\":\"SELECT 1\"}"};
    call f = {.path = "/v1/products/sales/orders/files/orders.csv"};

    expect_error(&q, 401, "Authorization");
    expect_error(&f, 401, "Authorization");
    q.token = "not-a-token";
    f.token = "not-a-token";
    expect_error(&q, 401, "matches no principal");
    expect_error(&f, 401, "matches no principal");
    /* Before anything else: an unknown product is a 401 too. */
    f.path = "/v1/products/sales/nothing/files/";
    expect_error(&f, 401, "matches no principal");
}

static void test_denied_names_rule(void)
{
    call f = {.path = "/v1/products/sales/orders/files/orders.csv",
              .token = EVE};
    json_t *ans = NULL;

    CU_ASSERT_EQUAL(query(EVE, "SELECT order_id FROM orders", &ans), 403);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "denied");
    CU_ASSERT_STRING_EQUAL(jstr(ans, "rule"),
                           "global/pii/no-pii-for-contractors");
    CU_ASSERT_STRING_EQUAL(jstr(ans, "reason"), "denied");
    json_decref(ans);
    CU_ASSERT_EQUAL(http_json(&f, &ans), 403);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "rule"),
                           "global/pii/no-pii-for-contractors");
    json_decref(ans);
}

static void test_not_found(void)
{
    call c = {.token = ALICE};

    c.path = "/v1/products/sales/nothing/files/";
    expect_error(&c, 404, "no data product sales/nothing");
    c.path = "/v1/products/crm/orders/files/";
    expect_error(&c, 404, "no data product");
    c.path = "/v1/products/sales/sqlonly/files/";
    expect_error(&c, 404, "has no file port");
    c.path = "/v1/products/sales/orders/files/nope.csv";
    expect_error(&c, 404, "nope.csv");
    c.path = "/v1/products/sales/orders/tables";
    expect_error(&c, 404, "product paths");
}

static void test_bad_requests(void)
{
    call c = {.path = "/v1/products/sales/orders/query", .token = ALICE};
    json_t *ans = NULL;

    c.post = "{\"sql\": ";
    expect_error(&c, 400, "line 1");
    c.post = "{\"sql\": \"SELECT 1\", \"colour\": 1}";
    expect_error(&c, 400, "colour");
    c.post = "{\"params\": []}";
    expect_error(&c, 400, "sql");
    CU_ASSERT_EQUAL(query(ALICE, "SELECT nope FROM orders", &ans), 400);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "bad query");
    CU_ASSERT(strstr(jstr(ans, "detail"), "no such column: nope") != NULL);
    json_decref(ans);
    /* A column of the table that the contract lacks does not exist. */
    CU_ASSERT_EQUAL(query(ALICE, "SELECT secret FROM orders", &ans), 400);
    json_decref(ans);
    CU_ASSERT_EQUAL(query(ALICE, "DELETE FROM orders", &ans), 400);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "not allowed");
    CU_ASSERT(strstr(jstr(ans, "detail"), "not allowed") != NULL);
    json_decref(ans);
    CU_ASSERT_EQUAL(query(ALICE, "PRAGMA table_info(orders)", &ans), 400);
    CU_ASSERT(strstr(jstr(ans, "detail"), "PRAGMA") != NULL);
    json_decref(ans);
    c.post = NULL;
    c.method = "GET";
    expect_error(&c, 405, "POST");
}

/* The masked value the policy promises for row i. */
static void masked(int i, char *email, char *card)
{
    const char *at = strchr(small_rows[i][1], '@');

    sprintf(email, "****%s", at);
    sprintf(card, "************%s", small_rows[i][2] + 12);
}

/* JSON rows of SELECT order_id, email, card, region: the rows of `region`,
 * masked. */
static void check_json_rows(const char *token, const char *region)
{
    json_t *ans = NULL, *rows, *row;
    char email[64], card[64];
    size_t k = 0, i;

    CU_ASSERT_EQUAL_FATAL(
        query(token,
              "SELECT order_id, email, card, region FROM orders ORDER BY 1",
              &ans),
        200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(ans, "columns")), 4);
    CU_ASSERT_STRING_EQUAL(
        json_string_value(json_array_get(json_object_get(ans, "columns"), 1)),
        "email");
    CU_ASSERT(json_is_false(json_object_get(ans, "truncated")));
    rows = json_object_get(ans, "rows");
    for (int r = 0; r < N_SMALL; r++) {
        if (strcmp(small_rows[r][3], region) != 0)
            continue;
        row = json_array_get(rows, k++);
        masked(r, email, card);
        CU_ASSERT_EQUAL(json_integer_value(json_array_get(row, 0)),
                        atoi(small_rows[r][0]));
        CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(row, 1)),
                               email);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(row, 2)), card);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(row, 3)),
                               region);
    }
    CU_ASSERT_EQUAL(json_array_size(rows), k);
    json_array_foreach(rows, i, row)
    {
        char *text = json_dumps(row, 0);
        CU_ASSERT(text && strstr(text, "4111111111111111") == NULL);
        free(text);
    }
    json_decref(ans);
}

static void test_query_json_two_principals(void)
{
    check_json_rows(ALICE, "EU");
    check_json_rows(BOB, "US");
}

/* Lines of a CSV body, \r stripped; caller frees lines[0] and lines. */
static size_t split_lines(char *text, char ***out)
{
    size_t n = 0, cap = 16;
    char **lines = malloc(cap * sizeof(*lines)), *save = NULL;

    for (char *l = strtok_r(text, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        size_t len = strlen(l);
        if (len && l[len - 1] == '\r')
            l[len - 1] = '\0';
        if (n == cap)
            lines = realloc(lines, (cap *= 2) * sizeof(*lines));
        lines[n++] = l;
    }
    *out = lines;
    return n;
}

/* "order_id,email,card,region" lines expected for a region. */
static size_t expected_csv(const char *region, char out[][128])
{
    char email[64], card[64];
    size_t k = 0;

    for (int r = 0; r < N_SMALL; r++) {
        if (strcmp(small_rows[r][3], region) != 0)
            continue;
        masked(r, email, card);
        snprintf(out[k++], 128, "%s,%s,%s,%s", small_rows[r][0], email, card,
                 region);
    }
    return k;
}

static void test_query_csv(void)
{
    call c = {.path = "/v1/products/sales/orders/query",
              .token = BOB,
              .accept = "text/csv",
              .post = "{\"sql\":\"SELECT order_id, email, card, region FROM "
                      "orders ORDER BY order_id\"}"};
    char want[N_SMALL][128], **lines;
    body b = {0};
    size_t n, k;

    CU_ASSERT_EQUAL_FATAL(http(&c, &b), 200);
    CU_ASSERT_FATAL(b.data != NULL);
    n = split_lines(b.data, &lines);
    k = expected_csv("US", want);
    CU_ASSERT_EQUAL_FATAL(n, k + 1);
    CU_ASSERT_STRING_EQUAL(lines[0], "order_id,email,card,region");
    for (size_t i = 0; i < k; i++)
        CU_ASSERT_STRING_EQUAL(lines[i + 1], want[i]);
    free(lines);
    free(b.data);
}

/* The file port serves what the query port serves, for the same person. */
static void test_file_matches_query(void)
{
    call c = {.path = "/v1/products/sales/orders/files/orders.csv",
              .token = ALICE};
    char want[N_SMALL][128], **lines, got[128];
    json_t *ans = NULL, *row;
    body b = {0};
    size_t n, k, i;

    CU_ASSERT_EQUAL_FATAL(http(&c, &b), 200);
    CU_ASSERT_FATAL(b.data != NULL);
    n = split_lines(b.data, &lines);
    k = expected_csv("EU", want);
    CU_ASSERT_EQUAL_FATAL(n, k + 1);
    CU_ASSERT_STRING_EQUAL(lines[0], "order_id,email,card,region,amount");
    CU_ASSERT_EQUAL_FATAL(
        query(ALICE,
              "SELECT order_id, email, card, region FROM orders ORDER BY 1",
              &ans),
        200);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(ans, "rows")), n - 1);
    json_array_foreach(json_object_get(ans, "rows"), i, row)
    {
        if (i + 1 >= n)
            break;
        snprintf(got, sizeof(got), "%lld,%s,%s,%s",
                 (long long)json_integer_value(json_array_get(row, 0)),
                 json_string_value(json_array_get(row, 1)),
                 json_string_value(json_array_get(row, 2)),
                 json_string_value(json_array_get(row, 3)));
        /* The file's line is the same four fields plus the amount. */
        CU_ASSERT(strncmp(lines[i + 1], got, strlen(got)) == 0);
        CU_ASSERT_STRING_EQUAL(got, want[i]);
    }
    json_decref(ans);
    free(lines);
    free(b.data);
}

static void test_file_listing(void)
{
    call c = {.path = "/v1/products/sales/orders/files/", .token = BOB};
    json_t *ans = NULL, *f;
    size_t i;
    int seen = 0;

    CU_ASSERT_EQUAL_FATAL(http_json(&c, &ans), 200);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "format"), "csv");
    json_array_foreach(json_object_get(ans, "files"), i, f)
    {
        if (strcmp(jstr(f, "name"), "orders.csv") == 0) {
            seen++;
            CU_ASSERT(json_integer_value(json_object_get(f, "size")) > 100);
        }
        CU_ASSERT(strcmp(jstr(f, "name"), "escape.csv") != 0);
    }
    CU_ASSERT_EQUAL(seen, 1);
    json_decref(ans);
}

static void test_path_escapes(void)
{
    call c = {.token = ALICE};

    c.path = "/v1/products/sales/orders/files/..%2Fsecret.csv";
    expect_error(&c, 403, "");
    c.path = "/v1/products/sales/orders/files/%2e%2e";
    expect_error(&c, 403, "");
    c.path = "/v1/products/sales/orders/files/escape.csv";
    expect_error(&c, 403, "outside");
    c.path = "/v1/products/sales/orders/files/.hidden";
    expect_error(&c, 403, "");
    c.path = "/v1/products/sales/orders/files/orders.csv%00.txt";
    expect_error(&c, 403, "");
}

static void test_big_file_constant_memory(void)
{
    call c = {.path = "/v1/products/sales/orders/files/big.csv",
              .token = ALICE,
              /* Slower than the sidecar produces, so that without
               * back-pressure its buffers would grow. */
              .max_recv_speed = UNDER_ASAN ? 4L << 20 : 10L << 20};
    body b = {.count_only = true};
    long before;
    int64_t t0 = time(NULL);

    b.pid = testenv_proc_pid(sc->proc);
    before = ps_rss_kib(b.pid);
    b.rss_max_kb = before;
    b.next_sample = 1 << 20;
    CU_ASSERT_EQUAL(http(&c, &b), 200);
    printf("(%.1f MB out in %lld s, sidecar RSS %ld -> max %ld kB) ",
           b.bytes / 1e6, (long long)(time(NULL) - t0), before, b.rss_max_kb);
    CU_ASSERT_EQUAL(b.lines, (uint64_t)big_eu_rows + 1);
    CU_ASSERT(before > 0);
    CU_ASSERT(b.rss_max_kb - before < 6 * 1024);
}

/* Consumers that hang up mid-stream: the sidecar drops the streams and
 * keeps serving. */
static void test_consumer_hangs_up(void)
{
    call f = {.path = "/v1/products/sales/orders/files/big.csv", .token = BOB};
    char sql[256], post[400];
    call q = {
        .path = "/v1/products/sales/orders/query", .token = BOB, .post = post};
    json_t *ans = NULL;

    for (int i = 0; i < 3; i++) {
        body b = {.count_only = true, .stop_after = 512 * 1024};
        b.pid = testenv_proc_pid(sc->proc);
        b.next_sample = UINT64_MAX;
        CU_ASSERT_EQUAL(http(&f, &b), -1);
    }
    snprintf(sql, sizeof(sql),
             "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
             "WHERE x < 90000) SELECT x, 'row ' || x FROM c");
    snprintf(post, sizeof(post), "{\"sql\":\"%s\"}", sql);
    {
        body b = {.count_only = true, .stop_after = 100 * 1024};
        b.next_sample = UINT64_MAX;
        CU_ASSERT_EQUAL(http(&q, &b), -1);
    }
    CU_ASSERT_EQUAL(query(BOB, "SELECT count(*) FROM orders", &ans), 200);
    json_decref(ans);
    CU_ASSERT(testenv_proc_alive(sc->proc));
}

typedef struct slow_arg {
    long status;
    int64_t took_ms;
} slow_arg;

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *slow_query(void *arg)
{
    slow_arg *a = arg;
    json_t *ans = NULL;
    int64_t t = now_ms();

    a->status = query(ALICE,
                      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
                      "FROM c WHERE x < 6000000) SELECT count(*) FROM c",
                      &ans);
    a->took_ms = now_ms() - t;
    json_decref(ans);
    return NULL;
}

static void test_long_query_does_not_block(void)
{
    slow_arg a = {0};
    pthread_t t;
    json_t *ans = NULL;
    int64_t t0, took;

    CU_ASSERT_FATAL(pthread_create(&t, NULL, slow_query, &a) == 0);
    usleep(100 * 1000);
    t0 = now_ms();
    CU_ASSERT_EQUAL(query(BOB, "SELECT count(*) FROM orders", &ans), 200);
    took = now_ms() - t0;
    json_decref(ans);
    pthread_join(t, NULL);
    printf("(long query %lld ms, short one beside it %lld ms) ",
           (long long)a.took_ms, (long long)took);
    CU_ASSERT_EQUAL(a.status, 200);
    if (a.took_ms > 400)
        CU_ASSERT(took < a.took_ms / 2);
}

/* A result larger than a chunk goes out streamed: truncated at the row
 * limit; an error after rows went out ends the JSON with "error", and cuts
 * a CSV transfer (the client sees it fail). */
static void test_streamed_results(void)
{
    const char *gen = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x "
                      "+ 1 FROM c WHERE x < %s) SELECT %s FROM c";
    char sql[512], post[600];
    json_t *ans = NULL, *err;
    call c = {.path = "/v1/products/sales/orders/query",
              .token = ALICE,
              .accept = "text/csv",
              .post = post};
    body b = {0};

    snprintf(sql, sizeof(sql), gen, "150000", "x, 'row ' || x");
    CU_ASSERT_EQUAL_FATAL(query(ALICE, sql, &ans), 200);
    CU_ASSERT(json_is_true(json_object_get(ans, "truncated")));
    CU_ASSERT_EQUAL(json_array_size(json_object_get(ans, "rows")), 100000);
    CU_ASSERT_EQUAL(
        json_integer_value(json_array_get(
            json_array_get(json_object_get(ans, "rows"), 99999), 0)),
        100000);
    CU_ASSERT(json_object_get(ans, "error") == NULL);
    json_decref(ans);

    snprintf(sql, sizeof(sql), gen, "90000",
             "CASE WHEN x < 60000 THEN x ELSE abs(-9223372036854775807 - 1) "
             "END");
    CU_ASSERT_EQUAL_FATAL(query(ALICE, sql, &ans), 200);
    err = json_object_get(ans, "error");
    CU_ASSERT(json_array_size(json_object_get(ans, "rows")) > 0);
    CU_ASSERT(strstr(json_string_value(json_object_get(err, "detail"))
                         ? json_string_value(json_object_get(err, "detail"))
                         : "",
                     "integer overflow") != NULL);
    json_decref(ans);

    snprintf(post, sizeof(post), "{\"sql\":\"%s\"}", sql);
    CU_ASSERT_EQUAL(http(&c, &b), -1);
    CU_ASSERT(b.len > 64 * 1024);
    free(b.data);
}

/* Each query opens the database (sq_open) and builds its governed views:
 * the figure shows what that costs end to end. */
static void test_query_latency(void)
{
    int64_t t0 = now_ms();
    json_t *ans = NULL;
    int ok = 0, n = 200;

    for (int i = 0; i < n; i++) {
        ok += query(ALICE,
                    "SELECT order_id, email FROM orders WHERE "
                    "order_id = 3",
                    &ans) == 200;
        json_decref(ans);
        ans = NULL;
    }
    printf("(%.2f ms per query, connection and database opened per "
           "request) ",
           (double)(now_ms() - t0) / n);
    CU_ASSERT_EQUAL(ok, n);
}

static const test_case cases[] = {
    {"unauthenticated", test_unauthenticated},
    {"denied_names_rule", test_denied_names_rule},
    {"not_found", test_not_found},
    {"bad_requests", test_bad_requests},
    {"query_json_two_principals", test_query_json_two_principals},
    {"query_csv", test_query_csv},
    {"file_matches_query", test_file_matches_query},
    {"file_listing", test_file_listing},
    {"path_escapes", test_path_escapes},
    {"big_file_constant_memory", test_big_file_constant_memory},
    {"long_query_does_not_block", test_long_query_does_not_block},
    {"streamed_results", test_streamed_results},
    {"consumer_hangs_up", test_consumer_hangs_up},
    {"query_latency", test_query_latency},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"ports", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
