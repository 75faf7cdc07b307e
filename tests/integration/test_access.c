/*
 * test_access.c — access records end to end with real processes on
 * loopback: etcd and polis-controlplane.  Suite "stream" sends
 * AccessReports by hand as a fake sidecar and checks what a user sees in
 * `polisctl access` and /metrics (dedup of a resent batch, refused batches,
 * hostile strings, --limit); suite "subscriber" runs the sidecar's own
 * access log and subscriber in this process: records flow while connected,
 * are spooled while the control plane is down (and across a sidecar
 * restart), arrive after it returns, and are flushed at shutdown.
 */
#include "common/rpc.h"
#include "polis/v1/distribution.pb-c.h"
#include "sidecar/access_log.h"
#include "sidecar/subscriber.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POLISCTL     POLIS_BUILD_DIR "/cli/polisctl"
#define ACK_WAIT_MS  5000
#define LIST_WAIT_MS 8000
#define RECOVER_MS   15000
/* Spooled after a failed send, deleted on the ack: bounds for ASan on a
 * loaded machine, not expected times. */
#define SPOOL_WAIT_MS 15000

static cpenv *cp;
static rpc_channel *gov;

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

/* ---- the control plane ---- */

static const char *const mesh_docs[] = {
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":{\"name\":"
    "\"sales\"},\"spec\":{\"owners\":[\"sales@example.com\"]}}",
};

static int apply_mesh(void)
{
    return gc_apply(gov, mesh_docs[0]) < 0 ? -1 : 0;
}

static int stop_controlplane(void)
{
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    return 0;
}

static int wait_domain_served(void);

static int start_controlplane(void)
{
    static const char *const args[] = {"--keepalive-ms", "1000", NULL};
    cpenv_options o = {.extra_args = args};

    cp = cpenv_start(&o);
    if (cp && (gov = cpenv_channel(cp)) != NULL && apply_mesh() == 0 &&
        wait_domain_served() == 0)
        return 0;
    stop_controlplane();
    return -1;
}

/* ---- polisctl ---- */

/* Run polisctl against the control plane; its stdout (caller frees) and
 * exit code in *code. */
static char *polisctl(int *code, const char *const *args)
{
    const char *argv[24];
    char out_path[700];
    size_t n = 0;
    pid_t pid;
    int status = -1;
    FILE *f;
    char *buf = NULL;
    size_t len = 0;

    argv[n++] = POLISCTL;
    argv[n++] = "--server";
    argv[n++] = cp->grpc_target;
    for (size_t i = 0; args[i] && n < 22; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
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
        status = -1;
    *code = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    f = fopen(out_path, "rb");
    if (f) {
        FILE *m = open_memstream(&buf, &len);
        char chunk[4096];
        size_t r;

        while (m && (r = fread(chunk, 1, sizeof(chunk), f)) > 0)
            fwrite(chunk, 1, r, m);
        if (m)
            fclose(m);
        fclose(f);
    }
    return buf ? buf : strdup("");
}

/* `polisctl access ARGS -o json` as a JSON array (caller decrefs); NULL
 * when it failed. */
static json_t *access_json(const char *const *args)
{
    const char *argv[16];
    size_t n = 0;
    int code;
    char *out;
    json_t *arr;

    argv[n++] = "access";
    for (size_t i = 0; args && args[i] && n < 13; i++)
        argv[n++] = args[i];
    argv[n++] = "-o";
    argv[n++] = "json";
    argv[n] = NULL;
    out = polisctl(&code, argv);
    arr = code == 0 ? json_loads(out, 0, NULL) : NULL;
    if (!json_is_array(arr)) {
        fprintf(stderr, "\npolisctl access -> %d: %s\n", code, out);
        json_decref(arr);
        arr = NULL;
    }
    free(out);
    return arr;
}

/* Wait until `polisctl access --principal P` lists `want` records. */
static json_t *wait_listed(const char *principal, size_t want, int timeout_ms)
{
    const char *args[] = {"--principal", principal, "--limit", "1000", NULL};
    int64_t until = now_ms() + timeout_ms;
    json_t *arr = NULL;

    for (;;) {
        json_decref(arr);
        arr = access_json(args);
        if ((arr && json_array_size(arr) >= want) || now_ms() > until)
            return arr;
        nap_ms(200);
    }
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));

    return v ? v : "";
}

/* The value of one /metrics series (exact name{labels}), -1 if absent. */
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

/* ============================ suite "stream" ============================ */

typedef struct fake {
    rpc_channel *ch;
    rpc_stream *s;
} fake;

static void fake_close(fake *f)
{
    rpc_stream_free(f->s);
    rpc_channel_free(f->ch);
    memset(f, 0, sizeof(*f));
}

static int fake_open(fake *f, const char *id)
{
    Polis__V1__Hello h = POLIS__V1__HELLO__INIT;
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    polis_error err = {0};

    memset(f, 0, sizeof(*f));
    f->ch = cpenv_channel(cp);
    if (f->ch == NULL ||
        rpc_stream_open(f->ch, &polis__v1__distribution__descriptor,
                        "Subscribe", NULL, 0, 0, &f->s, &err) != 0) {
        fake_close(f);
        return -1;
    }
    h.sidecar_id = (char *)id;
    h.domain = "sales";
    h.version = "test";
    h.applied_digest = "";
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_HELLO;
    m.hello = &h;
    if (rpc_stream_send(f->s, &m.base) != 0) {
        fake_close(f);
        return -1;
    }
    return 0;
}

typedef struct rec {
    const char *principal, *product, *port, *decision, *rule;
    int64_t rows;
} rec;

static int fake_report(fake *f, uint64_t batch, const rec *recs, size_t n,
                       int64_t t0)
{
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    Polis__V1__AccessReport rep = POLIS__V1__ACCESS_REPORT__INIT;
    Polis__V1__AccessRecord *r = calloc(n, sizeof(*r));
    Polis__V1__AccessRecord **rp = calloc(n, sizeof(*rp));
    int rc;

    if (r == NULL || rp == NULL) {
        free(r);
        free(rp);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        polis__v1__access_record__init(&r[i]);
        r[i].time_unix_ms = t0 + (int64_t)i;
        r[i].principal = (char *)recs[i].principal;
        r[i].product = (char *)recs[i].product;
        r[i].port = (char *)recs[i].port;
        r[i].purpose = "analytics";
        r[i].decision = (char *)recs[i].decision;
        r[i].rule = (char *)recs[i].rule;
        r[i].http_status = strcmp(recs[i].decision, "allow") ? 403 : 200;
        r[i].rows = recs[i].rows;
        r[i].bytes = recs[i].rows * 100;
        r[i].latency_us = 1500;
        rp[i] = &r[i];
    }
    rep.records = rp;
    rep.n_records = n;
    rep.batch = batch;
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_ACCESS;
    m.access = &rep;
    rc = rpc_stream_send(f->s, &m.base);
    free(rp);
    free(r);
    return rc;
}

/*
 * Apply returns once etcd has the Domain; the control plane learns it
 * through its watch, and refuses a hello for a domain it does not know
 * yet.  A real sidecar retries; the fake streams here do not, so wait until
 * a probe stream gets a snapshot.
 */
static int wait_domain_served(void)
{
    int64_t until = now_ms() + 15000;

    while (now_ms() < until) {
        fake f;
        bool served = false;

        if (fake_open(&f, "fake-acc-probe") == 0) {
            for (int i = 0; i < 10 && !served; i++) {
                ProtobufCMessage *msg = NULL;
                int rc = rpc_stream_recv(f.s, &msg, 200);

                if (rc == POLIS_ETIMEDOUT)
                    continue;
                if (rc != 1)
                    break;
                served = ((Polis__V1__ControlMessage *)msg)->msg_case ==
                         POLIS__V1__CONTROL_MESSAGE__MSG_SNAPSHOT;
                protobuf_c_message_free_unpacked(msg, NULL);
            }
        }
        fake_close(&f);
        if (served)
            return 0;
        nap_ms(100);
    }
    fprintf(stderr, "the control plane never served domain sales\n");
    return -1;
}

/* Wait for AccessAck(batch), skipping snapshots and keepalives. */
static bool fake_wait_ack(fake *f, uint64_t batch, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;

    while (now_ms() < until) {
        ProtobufCMessage *msg = NULL;
        int rc = rpc_stream_recv(f->s, &msg, 200);
        bool hit;

        if (rc == POLIS_ETIMEDOUT)
            continue;
        if (rc != 1)
            return false;
        hit = ((Polis__V1__ControlMessage *)msg)->msg_case ==
                  POLIS__V1__CONTROL_MESSAGE__MSG_ACCESS_ACK &&
              ((Polis__V1__ControlMessage *)msg)->access_ack->batch == batch;
        protobuf_c_message_free_unpacked(msg, NULL);
        if (hit)
            return true;
    }
    return false;
}

static void test_reported_records_listed_and_counted(void)
{
    static const rec recs[] = {
        {"alice", "sales/orders", "query", "allow", "analysts-read", 10},
        {"bob", "sales/orders", "file", "deny", "no-contractors", 0},
        {"alice", "sales/invoices", "query", "allow", "analysts-read", 3},
    };
    const char *by_product[] = {"--product", "sales/orders", NULL};
    const char *by_bob[] = {"--principal", "bob", NULL};
    int64_t t0 = wall_ms();
    json_t *arr, *r;
    fake f;
    char *table;
    int code;

    CU_ASSERT_FATAL(fake_open(&f, "fake-acc-1") == 0);
    CU_ASSERT_EQUAL(fake_report(&f, 1001, recs, 3, t0), 0);
    CU_ASSERT(fake_wait_ack(&f, 1001, ACK_WAIT_MS));

    arr = wait_listed("alice", 2, LIST_WAIT_MS);
    CU_ASSERT_EQUAL_FATAL(json_array_size(arr), 2);
    /* Newest first. */
    CU_ASSERT_STRING_EQUAL(jstr(json_array_get(arr, 0), "product"),
                           "sales/invoices");
    CU_ASSERT_STRING_EQUAL(jstr(json_array_get(arr, 1), "product"),
                           "sales/orders");
    json_decref(arr);

    arr = access_json(by_product);
    CU_ASSERT_EQUAL(json_array_size(arr), 2);
    json_decref(arr);
    arr = access_json(by_bob);
    CU_ASSERT_EQUAL_FATAL(json_array_size(arr), 1);
    r = json_array_get(arr, 0);
    CU_ASSERT_STRING_EQUAL(jstr(r, "decision"), "deny");
    CU_ASSERT_STRING_EQUAL(jstr(r, "rule"), "no-contractors");
    CU_ASSERT_STRING_EQUAL(jstr(r, "port"), "file");
    CU_ASSERT_STRING_EQUAL(jstr(r, "purpose"), "analytics");
    CU_ASSERT_STRING_EQUAL(jstr(r, "sidecar"), "fake-acc-1");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "httpStatus")), 403);
    json_decref(arr);

    {
        const char *args[] = {"access", "--principal", "bob", NULL};
        table = polisctl(&code, args);
    }
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT(strstr(table, "TIME") && strstr(table, "PRINCIPAL") &&
              strstr(table, "PRODUCT") && strstr(table, "PORT") &&
              strstr(table, "PURPOSE") && strstr(table, "DECISION") &&
              strstr(table, "RULE") && strstr(table, "ROWS") &&
              strstr(table, "BYTES") && strstr(table, "LATENCY"));
    CU_ASSERT(strstr(table, "no-contractors") != NULL);
    CU_ASSERT(strstr(table, "1.5ms") != NULL);
    free(table);

    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/orders\","
                           "port=\"query\",decision=\"allow\"}"),
                    1);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/orders\","
                           "port=\"file\",decision=\"deny\"}"),
                    1);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/invoices\","
                           "port=\"query\",decision=\"allow\"}"),
                    1);

    /* The same batch again (its ack was lost, say): acked, stored and
     * counted once. */
    CU_ASSERT_EQUAL(fake_report(&f, 1001, recs, 3, t0), 0);
    CU_ASSERT(fake_wait_ack(&f, 1001, ACK_WAIT_MS));
    fake_close(&f);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/orders\","
                           "port=\"query\",decision=\"allow\"}"),
                    1);
    CU_ASSERT_EQUAL(metric("polis_access_batches_total{result=\"duplicate\"}"),
                    1);
}

static void test_resent_batch_stored_once(void)
{
    static const rec recs[] = {
        {"carl", "sales/returns", "event", "allow", "r", 1},
    };
    int64_t t0 = wall_ms();
    json_t *arr;
    fake f;

    CU_ASSERT_FATAL(fake_open(&f, "fake-acc-2") == 0);
    CU_ASSERT_EQUAL(fake_report(&f, 77, recs, 1, t0), 0);
    CU_ASSERT(fake_wait_ack(&f, 77, ACK_WAIT_MS));
    /* Reconnect, as after a broken stream, and send it again. */
    fake_close(&f);
    CU_ASSERT_FATAL(fake_open(&f, "fake-acc-2") == 0);
    CU_ASSERT_EQUAL(fake_report(&f, 77, recs, 1, t0), 0);
    CU_ASSERT(fake_wait_ack(&f, 77, ACK_WAIT_MS));
    fake_close(&f);
    arr = wait_listed("carl", 1, LIST_WAIT_MS);
    nap_ms(300);
    json_decref(arr);
    arr = wait_listed("carl", 2, 500); /* must not reach 2 */
    CU_ASSERT_EQUAL(json_array_size(arr), 1);
    json_decref(arr);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/returns\","
                           "port=\"event\",decision=\"allow\"}"),
                    1);
    CU_ASSERT(metric("polis_access_batches_total{result=\"duplicate\"}") >= 1);
}

static void test_refused_and_hostile_reports(void)
{
    rec many[501];
    static const rec hostile[] = {
        {"eve\x01\xff\"}", "not a product!", "carrier-pigeon", "maybe", "x", 1},
    };
    json_t *arr;
    fake f;
    double invalid_before =
        metric("polis_access_batches_total{result=\"invalid\"}");

    for (size_t i = 0; i < 501; i++)
        many[i] = (rec){"mallory", "sales/orders", "query", "allow", "r", 1};
    CU_ASSERT_FATAL(fake_open(&f, "fake-acc-3") == 0);
    /* Too many records: refused, but acked so that it is not resent. */
    CU_ASSERT_EQUAL(fake_report(&f, 5, many, 501, wall_ms()), 0);
    CU_ASSERT(fake_wait_ack(&f, 5, ACK_WAIT_MS));
    CU_ASSERT_EQUAL(metric("polis_access_batches_total{result=\"invalid\"}"),
                    invalid_before + 1);
    /* Hostile strings: stored sanitized, counted under bounded labels. */
    CU_ASSERT_EQUAL(fake_report(&f, 6, hostile, 1, wall_ms()), 0);
    CU_ASSERT(fake_wait_ack(&f, 6, ACK_WAIT_MS));
    fake_close(&f);
    arr = wait_listed("mallory", 1, 500);
    CU_ASSERT_EQUAL(json_array_size(arr), 0);
    json_decref(arr);
    arr = wait_listed("eve??\"}", 1, LIST_WAIT_MS);
    CU_ASSERT_EQUAL(json_array_size(arr), 1);
    json_decref(arr);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"invalid\","
                           "port=\"other\",decision=\"other\"}"),
                    1);
}

static void test_limit_newest_first(void)
{
    rec recs[30];
    const char *args[] = {"--principal", "lim", "--limit", "5", NULL};
    int64_t t0 = wall_ms() - 60000;
    json_t *arr;
    fake f;

    for (int i = 0; i < 30; i++)
        recs[i] = (rec){"lim", "sales/orders", "query", "allow", "r", i};
    CU_ASSERT_FATAL(fake_open(&f, "fake-acc-4") == 0);
    /* Two batches; the older records in the later batch. */
    CU_ASSERT_EQUAL(fake_report(&f, 901, recs + 15, 15, t0 + 15), 0);
    CU_ASSERT(fake_wait_ack(&f, 901, ACK_WAIT_MS));
    CU_ASSERT_EQUAL(fake_report(&f, 902, recs, 15, t0), 0);
    CU_ASSERT(fake_wait_ack(&f, 902, ACK_WAIT_MS));
    fake_close(&f);
    json_decref(wait_listed("lim", 30, LIST_WAIT_MS));
    arr = access_json(args);
    CU_ASSERT_EQUAL_FATAL(json_array_size(arr), 5);
    for (size_t i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(
            json_integer_value(json_object_get(json_array_get(arr, i), "rows")),
            29 - (int)i);
    json_decref(arr);
}

/* ========================== suite "subscriber" ========================== */

typedef struct sidecar {
    sc_access_log *log;
    sc_subscriber *sub;
    sc_snapshot_slot *slot;
} sidecar;

static const char *state_dir;

static int sidecar_start(sidecar *s, int interval_ms)
{
    sc_access_log_options ao = {0};
    sc_subscriber_options so = {0};
    polis_error err = {0};

    memset(s, 0, sizeof(*s));
    ao.state_dir = state_dir;
    so.endpoints = cp->grpc_target;
    so.id = "inproc-1";
    so.domain = "sales";
    so.address = "127.0.0.1:1";
    so.state_dir = state_dir;
    so.keepalive_ms = 1000;
    so.backoff_max_ms = 300;
    so.access_interval_ms = interval_ms;
    if ((s->slot = sc_snapshot_slot_new()) == NULL ||
        sc_access_log_new(&ao, &s->log, &err) != 0)
        return -1;
    so.access_log = s->log;
    if (sc_subscriber_new(&so, s->slot, NULL, &s->sub, &err) != 0 ||
        sc_subscriber_start(s->sub, &err) != 0) {
        fprintf(stderr, "\nsubscriber: %s\n", err.message);
        return -1;
    }
    return 0;
}

static void sidecar_stop(sidecar *s)
{
    sc_subscriber_free(s->sub);
    sc_access_log_free(s->log);
    sc_snapshot_slot_free(s->slot);
    memset(s, 0, sizeof(*s));
}

static void record_as(sidecar *s, const char *principal, int n)
{
    for (int i = 0; i < n; i++) {
        sc_access a = {0};

        a.principal = principal;
        a.product = "sales/orders";
        a.port = "query";
        a.purpose = "analytics";
        a.decision = "allow";
        a.rule = "analysts-read";
        a.http_status = 200;
        a.rows = i;
        sc_access_log_record(s->log, &a);
    }
}

static size_t spool_files(void)
{
    char path[1024];
    DIR *d;
    struct dirent *de;
    size_t n = 0;

    snprintf(path, sizeof(path), "%s/access", state_dir);
    if ((d = opendir(path)) == NULL)
        return 0;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".pb") && !strstr(de->d_name, ".tmp"))
            n++;
    closedir(d);
    return n;
}

static int subscriber_init(void)
{
    state_dir = testenv_tmpdir("access-sc");
    return state_dir && start_controlplane() == 0 ? 0 : -1;
}

static void test_records_survive_controlplane_outage(void)
{
    sidecar s;
    sc_access_log_stats st;
    json_t *arr;
    int64_t until;

    CU_ASSERT_FATAL(sidecar_start(&s, 200) == 0);
    record_as(&s, "carol", 5);
    arr = wait_listed("carol", 5, LIST_WAIT_MS);
    CU_ASSERT_EQUAL(json_array_size(arr), 5);
    json_decref(arr);

    /* Control plane down: records go to disk. */
    CU_ASSERT_EQUAL_FATAL(cpenv_stop_controlplane(cp, 5000), 0);
    record_as(&s, "dave", 7);
    until = now_ms() + SPOOL_WAIT_MS;
    do {
        nap_ms(100);
        sc_access_log_stats_get(s.log, &st);
    } while ((st.pending > 0 || st.spooled_batches == 0) && now_ms() < until);
    CU_ASSERT_EQUAL(st.pending, 0);
    CU_ASSERT(st.spooled_batches >= 1);
    CU_ASSERT(spool_files() >= 1);

    /* The sidecar restarts too, before the control plane is back. */
    sidecar_stop(&s);
    CU_ASSERT(spool_files() >= 1);
    CU_ASSERT_FATAL(cpenv_restart(cp) == 0);
    rpc_channel_free(gov);
    gov = cpenv_channel(cp);
    /* A long interval: the replay on connect and the flush at shutdown
     * are what delivers here, not the timer. */
    CU_ASSERT_FATAL(sidecar_start(&s, 600000) == 0);
    arr = wait_listed("dave", 7, RECOVER_MS);
    CU_ASSERT_EQUAL(json_array_size(arr), 7);
    json_decref(arr);
    until = now_ms() + SPOOL_WAIT_MS;
    while (spool_files() > 0 && now_ms() < until)
        nap_ms(100);
    CU_ASSERT_EQUAL(spool_files(), 0);

    /* Shutdown sends what is still in memory. */
    record_as(&s, "erin", 3);
    sidecar_stop(&s);
    arr = wait_listed("erin", 3, LIST_WAIT_MS);
    CU_ASSERT_EQUAL(json_array_size(arr), 3);
    json_decref(arr);
    CU_ASSERT_EQUAL(spool_files(), 0);
    CU_ASSERT_EQUAL(metric("polis_access_total{product=\"sales/orders\","
                           "port=\"query\",decision=\"allow\"}"),
                    10); /* this control plane saw dave's and erin's */
}

static const test_case stream_cases[] = {
    {"reported_records_listed_and_counted",
     test_reported_records_listed_and_counted},
    {"resent_batch_stored_once", test_resent_batch_stored_once},
    {"refused_and_hostile_reports", test_refused_and_hostile_reports},
    {"limit_newest_first", test_limit_newest_first},
    {NULL, NULL},
};

static const test_case subscriber_cases[] = {
    {"records_survive_controlplane_outage",
     test_records_survive_controlplane_outage},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"stream", start_controlplane, stop_controlplane, stream_cases},
    {"subscriber", subscriber_init, stop_controlplane, subscriber_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return test_main(argc, argv, suites);
}
