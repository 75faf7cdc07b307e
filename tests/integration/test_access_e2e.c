/*
 * test_access_e2e.c — access records from a real sidecar's query port to
 * `polisctl access` and /metrics, with real etcd, polis-controlplane and
 * polis-sidecar processes and a real SQLite product: requests made while
 * the control plane is up are listed within seconds; those made while it
 * is down survive a sidecar restart on disk and arrive, once, when it
 * returns, and those spooled before a crash are not lost.
 */
#include "common/rpc.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"

#include <curl/curl.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POLISCTL POLIS_BUILD_DIR "/cli/polisctl"

#define ALICE "alice-token-0123456789" /* analysts, EU: 3 rows */
#define BOB   "bob-token-0123456789"   /* analysts, US: 2 rows */
#define EVE   "eve-token-0123456789"   /* contractors: denied */
#define PROBE "probe-token-0123456789" /* warm-up only, never counted */

/* The subscriber sends every 2 s; listing waits allow a few intervals. */
#define LIST_WAIT_MS 10000
/* Reconnect backoff after the sidecar restart, then the replay. */
#define REPLAY_WAIT_MS 30000
/* The spool is written within a backoff pause (or one 2 s interval) and
 * emptied on the ack; a bound, generous for ASan on a loaded machine. */
#define SPOOL_WAIT_MS 15000

static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;
static const char *root; /* --data-root */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));

    return v ? v : "";
}

/* ---- the consumer: a query with a bearer token and a purpose ---------- */

/* POST a query to sales/orders' query port; the HTTP status, -1: none. */
static long query(const char *token, const char *purpose)
{
    char url[256], line[256];
    const char *hdr[] = {line, NULL};
    gc_response r;

    snprintf(url, sizeof(url), "%s/v1/products/sales/orders/query",
             sc->http_url);
    snprintf(line, sizeof(line), "Polis-Purpose: %s", purpose);
    gc_http(NULL, url, token,
            "{\"sql\":\"SELECT order_id, region FROM orders\"}", hdr, 10000,
            &r);
    gc_response_free(&r);
    return r.status;
}

/* ---- polisctl ---------------------------------------------------------- */

/* `polisctl --server CP access --limit 1000 -o json` as a JSON array
 * (caller decrefs); NULL when it failed. */
static json_t *access_json(void)
{
    const char *argv[] = {POLISCTL, "--server", cp->grpc_target,
                          "access", "--limit",  "1000",
                          "-o",     "json",     NULL};
    char out_path[700];
    pid_t pid;
    int status = -1;
    json_t *arr = NULL;
    json_error_t jerr;

    snprintf(out_path, sizeof(out_path), "%s/polisctl.out", cp->dir);
    pid = fork();
    if (pid == 0) {
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int nul = open("/dev/null", O_RDWR);

        if (out < 0 || nul < 0)
            _exit(127);
        dup2(nul, 0);
        dup2(out, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return NULL;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        arr = json_load_file(out_path, 0, &jerr);
    if (!json_is_array(arr)) {
        fprintf(stderr, "\npolisctl access failed (status %d)\n", status);
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* How many listed records have this purpose. */
static size_t count_purpose(const json_t *arr, const char *purpose)
{
    size_t i, n = 0;
    json_t *r;

    json_array_foreach(arr, i, r) n += strcmp(jstr(r, "purpose"), purpose) == 0;
    return n;
}

/* Poll `polisctl access` until `want` records with `purpose` are listed
 * or timeout_ms passes; the last listing (caller decrefs, may be NULL). */
static json_t *wait_listed(const char *purpose, size_t want, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;
    json_t *arr = NULL;

    for (;;) {
        json_decref(arr);
        arr = access_json();
        if ((arr && count_purpose(arr, purpose) >= want) || now_ms() > until)
            return arr;
        nap_ms(250);
    }
}

/* The record with this purpose and principal; NULL if none, and a failure
 * when there is more than one. */
static json_t *find(const json_t *arr, const char *purpose,
                    const char *principal)
{
    json_t *r, *found = NULL;
    size_t i;

    json_array_foreach(arr, i, r)
    {
        if (strcmp(jstr(r, "purpose"), purpose) != 0 ||
            strcmp(jstr(r, "principal"), principal) != 0)
            continue;
        CU_ASSERT_PTR_NULL(found);
        found = r;
    }
    return found;
}

static void expect_record(const json_t *r, const char *decision,
                          const char *rule, long status, long rows)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(jstr(r, "product"), "sales/orders");
    CU_ASSERT_STRING_EQUAL(jstr(r, "port"), "query");
    CU_ASSERT_STRING_EQUAL(jstr(r, "decision"), decision);
    CU_ASSERT_STRING_EQUAL(jstr(r, "rule"), rule);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "httpStatus")),
                    status);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "rows")), rows);
    CU_ASSERT_STRING_EQUAL(jstr(r, "sidecar"), "sales-e2e-1");
}

/* The listing is newest first, and the outage's records are newer than
 * the connected ones: purposes in the order restarted, offline, online
 * (warm-up last).  Records of the same millisecond may come in any order
 * (the last warm-up and the first online request can share one). */
static void expect_newest_first(const json_t *arr)
{
    static const char *const order[] = {"crash", "restarted", "offline",
                                        "online", "warm-up"};
    size_t i, phase, start = 0, reached = 0;
    const char *prev = NULL;
    json_t *r;

    json_array_foreach(arr, i, r)
    {
        const char *t = jstr(r, "time");

        CU_ASSERT(prev == NULL || strcmp(prev, t) >= 0);
        if (prev == NULL || strcmp(prev, t) != 0)
            start = reached; /* a new instant: no going back */
        prev = t;
        for (phase = start;
             phase < 5 && strcmp(jstr(r, "purpose"), order[phase]) != 0;)
            phase++;
        CU_ASSERT(phase < 5);
        if (phase > reached && phase < 5)
            reached = phase;
    }
}

/* The value of one control-plane /metrics series (exact name{labels}),
 * -1 if absent. */
static double metric(const char *series)
{
    char url[128], *body = malloc(1 << 20), *p;
    size_t n = strlen(series);
    double v = -1;

    if (body == NULL)
        return -1;
    snprintf(url, sizeof(url), "%s/metrics", cp->admin_url);
    if (cpenv_http_get(url, 5000, body, 1 << 20) == 200) {
        for (p = body; (p = strstr(p, series)) != NULL; p += n)
            if ((p == body || p[-1] == '\n') && p[n] == ' ') {
                v = strtod(p + n + 1, NULL);
                break;
            }
    }
    free(body);
    return v;
}

/* Records waiting in the sidecar's spool: the sum of the counts in the
 * names <id>-<records>.pb under <state_dir>/access/. */
static long spooled_records(void)
{
    char dir[700];
    struct dirent *e;
    DIR *d;
    long n = 0;

    snprintf(dir, sizeof(dir), "%s/access", sc->state_dir);
    if ((d = opendir(dir)) == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        const char *dash = strchr(e->d_name, '-');
        size_t len = strlen(e->d_name);

        if (dash && len > 3 && strcmp(e->d_name + len - 3, ".pb") == 0)
            n += strtol(dash + 1, NULL, 10);
    }
    closedir(d);
    return n;
}

/* ---- fixture ----------------------------------------------------------- */

static int make_data(void)
{
    static const char *const sql =
        "CREATE TABLE orders (order_id INTEGER, email TEXT, region TEXT);"
        "INSERT INTO orders VALUES (1, 'ann@example.com', 'EU'),"
        "(2, 'bo@shop.org', 'US'), (3, 'cy@example.com', 'EU'),"
        "(4, 'di@shop.org', 'US'), (5, 'ed@example.com', 'EU');";
    char path[1024];
    sqlite3 *db;
    int rc;

    snprintf(path, sizeof(path), "%s/orders.db", root);
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        sqlite3_close(db);
        return -1;
    }
    rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

static const char *const domain_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":"
    "{\"name\":\"sales\"},\"spec\":{\"owners\":[\"s@example.com\"]}}";

static const char *const product_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":"
    "{\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\",\"ports\":["
    "{\"name\":\"sql\",\"type\":\"query\",\"engine\":\"sqlite\","
    "\"database\":\"orders.db\",\"table\":\"orders\"}],\"schema\":["
    "{\"name\":\"order_id\",\"type\":\"integer\"},"
    "{\"name\":\"email\",\"type\":\"string\",\"classification\":"
    "[\"pii.email\"]},"
    "{\"name\":\"region\",\"type\":\"string\"}]}}";

static const char *const policy_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":"
    "{\"name\":\"pii\"},\"spec\":{\"scope\":\"global\",\"rules\":["
    "{\"name\":\"read-sales\",\"effect\":\"allow\",\"subjects\":"
    "[\"group:analysts\",\"group:contractors\"],\"resources\":[\"sales/*\"],"
    "\"ports\":[\"query\"]},"
    "{\"name\":\"no-pii-for-contractors\",\"effect\":\"deny\",\"subjects\":"
    "[\"group:contractors\"],\"resources\":[\"*\"],\"classifications\":"
    "[\"pii.*\"]},"
    "{\"name\":\"own-region\",\"effect\":\"filter\",\"subjects\":"
    "[\"group:analysts\"],\"resources\":[\"sales/*\"],\"filter\":"
    "\"region == subject.region\"}]}}";

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

static int suite_init(void)
{
    static const char *const cp_args[] = {"--debounce-ms", "20",
                                          "--keepalive-ms", "1000", NULL};
    cpenv_options o = {.extra_args = cp_args};
    sidecarenv_options so = {.domain = "sales",
                             .id = "sales-e2e-1",
                             .keepalive_ms = 1000,
                             .wait_ready = true};
    const char *sc_args[] = {"--data-root", NULL, NULL};
    int64_t until;
    long st = -1;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    root = testenv_tmpdir("access-e2e");
    if (root == NULL || make_data() != 0) {
        fprintf(stderr, "cannot write the test data\n");
        return -1;
    }
    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto fail;
    if (gc_apply(gov, domain_doc) < 0 || gc_apply(gov, product_doc) < 0 ||
        gc_apply_principal(gov, "alice", "analysts", "EU", ALICE) < 0 ||
        gc_apply_principal(gov, "bob", "analysts", "US", BOB) < 0 ||
        gc_apply_principal(gov, "eve", "contractors", "EU", EVE) < 0 ||
        gc_apply_principal(gov, "probe", "analysts", "EU", PROBE) < 0 ||
        gc_apply(gov, policy_doc) < 0)
        goto fail;
    sc_args[1] = root;
    so.controlplane = cp->grpc_target;
    so.extra_args = sc_args;
    if ((sc = sidecarenv_start(&so)) == NULL)
        goto fail;
    /* Until the sidecar enforces all of it; these records have their own
     * purpose, so the cases never count them. */
    for (until = now_ms() + 10000; now_ms() < until; nap_ms(50))
        if ((st = query(PROBE, "warm-up")) == 200)
            return 0;
    fprintf(stderr, "the query port never answered 200 (last %ld)\n", st);
    sidecarenv_dump_log(sc, 4000);
fail:
    suite_cleanup();
    return -1;
}

/* ---- cases ------------------------------------------------------------- */

/* Connected: three requests are listed within seconds, as they were. */
static void test_listed_while_connected(void)
{
    int64_t t0;
    json_t *arr;

    CU_ASSERT_EQUAL_FATAL(query(ALICE, "online"), 200);
    CU_ASSERT_EQUAL_FATAL(query(BOB, "online"), 200);
    CU_ASSERT_EQUAL_FATAL(query(EVE, "online"), 403);
    t0 = now_ms();
    arr = wait_listed("online", 3, LIST_WAIT_MS);
    CU_ASSERT_PTR_NOT_NULL_FATAL(arr);
    fprintf(stderr, "\n  listed %zu online records after %lld ms\n",
            count_purpose(arr, "online"), (long long)(now_ms() - t0));
    CU_ASSERT_EQUAL(count_purpose(arr, "online"), 3);
    if (count_purpose(arr, "online") == 3) {
        expect_record(find(arr, "online", "alice"), "allow",
                      "global/pii/read-sales", 200, 3);
        expect_record(find(arr, "online", "bob"), "allow",
                      "global/pii/read-sales", 200, 2);
        expect_record(find(arr, "online", "eve"), "deny",
                      "global/pii/no-pii-for-contractors", 403, 0);
    } else {
        sidecarenv_dump_log(sc, 3000);
    }
    json_decref(arr);
}

/* Control plane down: the sidecar answers from its snapshot, keeps the
 * records on disk across its own restart, and replays them once the
 * control plane is back: each exactly once, and counted in /metrics. */
static void test_replayed_after_outage(void)
{
    static const struct {
        const char *token, *principal;
        long status;
    } offline[] = {
        {ALICE, "alice", 200}, {BOB, "bob", 200}, {EVE, "eve", 403},
        {ALICE, "alice", 200}, {BOB, "bob", 200},
    };
    size_t allowed = 0, denied = 0, n_offline;
    int64_t t0;
    json_t *arr, *r;
    size_t i;

    CU_ASSERT_EQUAL_FATAL(cpenv_stop_controlplane(cp, 5000), 0);
    for (i = 0; i < 5; i++) {
        CU_ASSERT_EQUAL(query(offline[i].token, "offline"), offline[i].status);
        if (offline[i].status == 200)
            allowed++;
        else
            denied++;
    }

    /* SIGTERM: the sidecar spools what it could not send. */
    CU_ASSERT_EQUAL(sidecarenv_stop(sc, 5000), 0);
    CU_ASSERT_EQUAL(spooled_records(), 5);
    CU_ASSERT_EQUAL_FATAL(sidecarenv_restart(sc, true), 0);
    /* The restarted sidecar, still alone, serves and records too. */
    CU_ASSERT_EQUAL(query(ALICE, "restarted"), 200);
    CU_ASSERT_EQUAL(query(EVE, "restarted"), 403);
    allowed++;
    denied++;
    CU_ASSERT_EQUAL_FATAL(cpenv_restart(cp), 0);

    t0 = now_ms();
    arr = wait_listed("offline", 5, REPLAY_WAIT_MS);
    CU_ASSERT_PTR_NOT_NULL_FATAL(arr);
    if (count_purpose(arr, "restarted") < 2) {
        json_decref(arr);
        arr = wait_listed("restarted", 2, LIST_WAIT_MS);
        CU_ASSERT_PTR_NOT_NULL_FATAL(arr);
    }
    fprintf(stderr, "  listed %zu offline records %lld ms after the restart\n",
            count_purpose(arr, "offline"), (long long)(now_ms() - t0));
    CU_ASSERT_EQUAL(count_purpose(arr, "offline"), 5);
    json_array_foreach(arr, i, r)
    {
        if (strcmp(jstr(r, "purpose"), "offline") != 0)
            continue;
        CU_ASSERT_STRING_EQUAL(jstr(r, "product"), "sales/orders");
        CU_ASSERT_STRING_EQUAL(jstr(r, "port"), "query");
        if (strcmp(jstr(r, "principal"), "eve") == 0) {
            CU_ASSERT_STRING_EQUAL(jstr(r, "decision"), "deny");
            CU_ASSERT_STRING_EQUAL(jstr(r, "rule"),
                                   "global/pii/no-pii-for-contractors");
        } else {
            CU_ASSERT_STRING_EQUAL(jstr(r, "decision"), "allow");
            CU_ASSERT_STRING_EQUAL(jstr(r, "rule"), "global/pii/read-sales");
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "rows")),
                            strcmp(jstr(r, "principal"), "alice") == 0 ? 3 : 2);
        }
    }
    json_decref(arr);

    /* Acked: the spool empties.  Then give a resend two more intervals to
     * show up: it must not. */
    for (t0 = now_ms(); spooled_records() > 0 && now_ms() - t0 < SPOOL_WAIT_MS;)
        nap_ms(100);
    CU_ASSERT_EQUAL(spooled_records(), 0);
    nap_ms(4500);
    arr = access_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(arr);
    n_offline = count_purpose(arr, "offline");
    CU_ASSERT_EQUAL(n_offline, 5);
    CU_ASSERT_EQUAL(count_purpose(arr, "online"), 3);
    CU_ASSERT_EQUAL(count_purpose(arr, "restarted"), 2);
    expect_newest_first(arr);
    json_decref(arr);

    /* A fresh control plane process: its counters hold only the replay. */
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/orders\","
                           "port=\"query\",decision=\"allow\"}"),
                    (double)allowed);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/orders\","
                           "port=\"query\",decision=\"deny\"}"),
                    (double)denied);
    if (n_offline != 5) {
        cpenv_dump_log(cp, 3000);
        sidecarenv_dump_log(sc, 3000);
    }
}

/* A sidecar that crashes after one spool interval without the control
 * plane loses nothing: while disconnected it spools every 2 s. */
static void test_spooled_before_crash(void)
{
    int64_t t0;
    json_t *arr;

    CU_ASSERT_EQUAL_FATAL(cpenv_stop_controlplane(cp, 5000), 0);
    CU_ASSERT_EQUAL(query(BOB, "crash"), 200);
    CU_ASSERT_EQUAL(query(EVE, "crash"), 403);
    for (t0 = now_ms(); spooled_records() < 2 && now_ms() - t0 < SPOOL_WAIT_MS;)
        nap_ms(100);
    CU_ASSERT_EQUAL(spooled_records(), 2);
    CU_ASSERT_EQUAL(sidecarenv_kill(sc, SIGKILL), 0);
    CU_ASSERT_EQUAL_FATAL(sidecarenv_restart(sc, true), 0);
    CU_ASSERT_EQUAL_FATAL(cpenv_restart(cp), 0);

    arr = wait_listed("crash", 2, REPLAY_WAIT_MS);
    CU_ASSERT_PTR_NOT_NULL_FATAL(arr);
    CU_ASSERT_EQUAL(count_purpose(arr, "crash"), 2);
    CU_ASSERT_EQUAL(count_purpose(arr, "offline"), 5);
    expect_newest_first(arr);
    json_decref(arr);
    for (t0 = now_ms(); spooled_records() > 0 && now_ms() - t0 < SPOOL_WAIT_MS;)
        nap_ms(100);
    CU_ASSERT_EQUAL(spooled_records(), 0);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/orders\","
                           "port=\"query\",decision=\"allow\"}"),
                    1);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/orders\","
                           "port=\"query\",decision=\"deny\"}"),
                    1);
}

static const test_case cases[] = {
    {"listed_while_connected", test_listed_while_connected},
    {"replayed_after_outage", test_replayed_after_outage},
    {"spooled_before_crash", test_spooled_before_crash},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"access_e2e", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return test_main(argc, argv, suites);
}
