/*
 * test_status_replicas.c — two control plane replicas on one etcd, and a
 * sidecar that moves from one to the other: the status record shows where
 * it is connected now, and the old replica, whose stream stays open for a
 * while (pushes to it still succeed) and ends late, overwrites that neither
 * with CONNECTED nor with DISCONNECTED.  Real etcd, real control planes and
 * sidecars.
 */
#include "common/etcd.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"

#include <CUnit/CUnit.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIDECAR_ID "moving-1"
#define FROZEN_ID  "moving-2"

static cpenv *a, *b;
static etcd_client *etcd;

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sidecar id's status record: its state, the replica that wrote it ("" when
 * there is none) and its mod_revision (0: none). */
static int64_t read_status_of(const char *id, char *state, size_t slen,
                              char *replica, size_t rlen)
{
    etcd_range_result rr = {0};
    polis_error err = {0};
    json_t *rec = NULL;
    char key[128];
    int64_t mod = 0;

    snprintf(key, sizeof(key), "/polis/sidecars/%s", id);
    state[0] = replica[0] = '\0';
    if (etcd_range(etcd, key, NULL, &rr, &err) == 0 && rr.n == 1) {
        rec = json_loads(rr.kvs[0].value, 0, NULL);
        mod = rr.kvs[0].mod_revision;
    }
    snprintf(state, slen, "%s",
             rec ? json_string_value(json_object_get(rec, "state")) : "");
    snprintf(replica, rlen, "%s",
             rec ? json_string_value(json_object_get(rec, "controlplane"))
                 : "");
    json_decref(rec);
    etcd_range_result_free(&rr);
    return mod;
}

static void read_status(char *state, size_t slen, char *replica, size_t rlen)
{
    read_status_of(SIDECAR_ID, state, slen, replica, rlen);
}

/* Does the record's replica name end in ":<port of env>"? */
static bool written_by(const char *replica, const cpenv *env)
{
    char tail[16];
    size_t n = strlen(replica), t;

    snprintf(tail, sizeof(tail), ":%d", env->grpc_port);
    t = strlen(tail);
    return n >= t && strcmp(replica + n - t, tail) == 0;
}

/* Wait until id's record is CONNECTED and written by env. */
static bool wait_id_connected_to(const char *id, const cpenv *env,
                                 int timeout_ms)
{
    int64_t until = mono_ms() + timeout_ms;
    char state[32], replica[300];

    do {
        read_status_of(id, state, sizeof(state), replica, sizeof(replica));
        if (strcmp(state, "CONNECTED") == 0 && written_by(replica, env))
            return true;
        usleep(50 * 1000);
    } while (mono_ms() < until);
    fprintf(stderr, "\nstatus of %s: %s by %s\n", id, state, replica);
    return false;
}

static bool wait_connected_to(const cpenv *env, int timeout_ms)
{
    return wait_id_connected_to(SIDECAR_ID, env, timeout_ms);
}

/* A counter or gauge of a replica's /metrics (-1: unknown). */
static double metric_on(const cpenv *env, const char *name)
{
    char url[128], body[65536], pat[128], *line;
    double v = -1;

    snprintf(url, sizeof(url), "%s/metrics", env->admin_url);
    if (cpenv_http_get(url, 5000, body, sizeof(body)) != 200)
        return -1;
    snprintf(pat, sizeof(pat), "\n%s ", name);
    line = strstr(body, pat);
    if (line)
        sscanf(line + strlen(pat), "%lf", &v);
    return v;
}

static double connected_on(const cpenv *env)
{
    return metric_on(env, "polis_distribution_connected_sidecars");
}

/* Read the watch on a record for ms and count the writes that are not
 * "CONNECTED by env" (the last one is described in what). */
static int foreign_writes(etcd_watch *w, const cpenv *env, int ms, char *what,
                          size_t wlen)
{
    int64_t until = mono_ms() + ms;
    int n = 0;

    while (mono_ms() < until) {
        etcd_watch_batch wb = {0};
        polis_error err = {0};
        int64_t left = until - mono_ms();

        if (etcd_watch_next(w, &wb, left > 0 ? (int)left : 1, &err) != 0) {
            snprintf(what, wlen, "the watch failed");
            return n + 1;
        }
        for (size_t i = 0; i < wb.n; i++) {
            const etcd_event *ev = &wb.events[i];
            json_t *rec = ev->type == ETCD_EVENT_PUT
                              ? json_loads(ev->kv.value, 0, NULL)
                              : NULL;
            const char *state =
                json_string_value(json_object_get(rec, "state"));
            const char *cp =
                json_string_value(json_object_get(rec, "controlplane"));

            if (state == NULL || cp == NULL ||
                strcmp(state, "CONNECTED") != 0 || !written_by(cp, env)) {
                snprintf(what, wlen, "%s by %s at revision %" PRId64,
                         state ? state : "(deleted)", cp ? cp : "-",
                         ev->kv.mod_revision);
                n++;
            }
            json_decref(rec);
        }
        etcd_watch_batch_free(&wb);
    }
    return n;
}

static void test_moved_sidecar_stays_connected(void)
{
    sidecarenv_options so = {.domain = "sales", .id = SIDECAR_ID};
    sidecarenv *old, *moved;
    char state[32], replica[300];
    int64_t until;
    bool stayed = true;

    so.controlplane = a->grpc_target;
    old = sidecarenv_start(&so);
    CU_ASSERT_FATAL(old != NULL);
    CU_ASSERT_FATAL(wait_connected_to(a, 15000));
    /* Frozen: replica A keeps its stream open and knows nothing. */
    CU_ASSERT_EQUAL_FATAL(sidecarenv_kill(old, SIGSTOP), 0);
    so.controlplane = b->grpc_target;
    moved = sidecarenv_start(&so);
    CU_ASSERT_FATAL(moved != NULL);
    CU_ASSERT(wait_connected_to(b, 15000));
    /* Now A learns that its stream ended, after B's record. */
    CU_ASSERT_EQUAL(sidecarenv_kill(old, SIGKILL), 0);
    until = mono_ms() + 15000;
    while (connected_on(a) != 0 && mono_ms() < until)
        usleep(50 * 1000);
    CU_ASSERT_EQUAL(connected_on(a), 0);
    /* A writes a status within milliseconds of the end; watch for 2 s. */
    until = mono_ms() + 2000;
    while (mono_ms() < until && stayed) {
        read_status(state, sizeof(state), replica, sizeof(replica));
        stayed = strcmp(state, "CONNECTED") == 0 && written_by(replica, b);
        usleep(20 * 1000);
    }
    if (!stayed)
        fprintf(stderr, "\nthe record became %s by %s\n", state, replica);
    CU_ASSERT(stayed);
    /* The moved sidecar leaves too: B records that. */
    sidecarenv_free(moved);
    until = mono_ms() + 15000;
    do {
        read_status(state, sizeof(state), replica, sizeof(replica));
        usleep(50 * 1000);
    } while (strcmp(state, "DISCONNECTED") != 0 && mono_ms() < until);
    CU_ASSERT_STRING_EQUAL(state, "DISCONNECTED");
    CU_ASSERT(written_by(replica, b));
    sidecarenv_free(old);
}

/*
 * While the frozen sidecar's stream on A is still open (A notices only after
 * three missed keepalives), A pushes a change to it: the push succeeds into
 * the socket buffer and A would write a CONNECTED record over B's.  Every
 * write of A's stream is compared with A's last write, so A leaves the
 * record to B, now and when the stream ends.
 */
static void test_frozen_stream_push_leaves_record(void)
{
    static const char dp[] =
        "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":{"
        "\"name\":\"moving-orders\"},\"spec\":{\"domain\":\"sales\",\"ports\":"
        "[{\"name\":\"sql\",\"type\":\"query\",\"engine\":\"sqlite\","
        "\"database\":\"o.db\",\"table\":\"orders\"}],\"schema\":[{\"name\":"
        "\"order_id\",\"type\":\"integer\"}]}}";
    sidecarenv_options so = {.domain = "sales", .id = FROZEN_ID};
    sidecarenv *old, *moved;
    char state[32], replica[300], what[400] = "";
    etcd_watch_opts wo = {.key = "/polis/sidecars/" FROZEN_ID};
    etcd_watch *w = NULL;
    polis_error err = {0};
    rpc_channel *gov;
    double pushes;
    int64_t until;
    int foreign;

    so.controlplane = a->grpc_target;
    old = sidecarenv_start(&so);
    CU_ASSERT_FATAL(old != NULL);
    CU_ASSERT_FATAL(wait_id_connected_to(FROZEN_ID, a, 15000));
    CU_ASSERT_EQUAL_FATAL(sidecarenv_kill(old, SIGSTOP), 0);
    so.controlplane = b->grpc_target;
    moved = sidecarenv_start(&so);
    CU_ASSERT_FATAL(moved != NULL);
    CU_ASSERT_FATAL(wait_id_connected_to(FROZEN_ID, b, 15000));
    /* From B's record on, every write of the record is watched: one by A
     * may be overwritten by B's next within milliseconds. */
    wo.start_revision = read_status_of(FROZEN_ID, state, sizeof(state), replica,
                                       sizeof(replica)) +
                        1;
    CU_ASSERT_FATAL(wo.start_revision > 1);
    CU_ASSERT_EQUAL_FATAL(etcd_watch_open(etcd, &wo, &w, &err), 0);
    pushes = metric_on(a, "polis_distribution_pushes_total");
    CU_ASSERT(pushes >= 0);
    gov = cpenv_channel(b);
    CU_ASSERT(gov != NULL && gc_apply(gov, dp) > 0);
    rpc_channel_free(gov);
    /* A pushes the change to the frozen stream (its only sidecar)... */
    until = mono_ms() + 15000;
    while (metric_on(a, "polis_distribution_pushes_total") <= pushes &&
           mono_ms() < until)
        usleep(50 * 1000);
    CU_ASSERT(metric_on(a, "polis_distribution_pushes_total") > pushes);
    /* ...and its status thread writes within milliseconds: watch 2 s. */
    foreign = foreign_writes(w, b, 2000, what, sizeof(what));
    if (foreign)
        fprintf(stderr, "\nafter A's push the record became %s\n", what);
    CU_ASSERT_EQUAL(foreign, 0);
    CU_ASSERT(wait_id_connected_to(FROZEN_ID, b, 1000));
    /* The frozen stream ends: A writes no DISCONNECTED either. */
    CU_ASSERT_EQUAL(sidecarenv_kill(old, SIGKILL), 0);
    until = mono_ms() + 15000;
    while (connected_on(a) != 0 && mono_ms() < until)
        usleep(50 * 1000);
    CU_ASSERT_EQUAL(connected_on(a), 0);
    foreign = foreign_writes(w, b, 2000, what, sizeof(what));
    if (foreign)
        fprintf(stderr, "\nafter the end on A the record became %s\n", what);
    CU_ASSERT_EQUAL(foreign, 0);
    read_status_of(FROZEN_ID, state, sizeof(state), replica, sizeof(replica));
    CU_ASSERT_STRING_EQUAL(state, "CONNECTED");
    CU_ASSERT(written_by(replica, b));
    etcd_watch_free(w);
    sidecarenv_free(moved);
    sidecarenv_free(old);
}

static int suite_init(void)
{
    static const char *const args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = args};
    etcd_options eo = {0};
    polis_error err = {0};

    a = cpenv_start(&o);
    if (a == NULL)
        return -1;
    o.etcd_endpoints = a->etcd_endpoints;
    b = cpenv_start(&o);
    if (b == NULL)
        return -1;
    eo.endpoints = a->etcd_endpoints;
    eo.timeout_ms = 5000;
    if (etcd_client_new(&eo, &etcd, &err) != 0)
        return -1;
    {
        rpc_channel *gov = cpenv_channel(a);
        int64_t rev =
            gov ? gc_apply(gov, "{\"apiVersion\":\"polis/v1\",\"kind\":"
                                "\"Domain\",\"metadata\":{\"name\":\"sales\"},"
                                "\"spec\":{\"owners\":[\"s@example.com\"]}}")
                : -1;
        rpc_channel_free(gov);
        if (rev < 0)
            return -1;
    }
    return 0;
}

static int suite_cleanup(void)
{
    etcd_client_free(etcd);
    etcd = NULL;
    cpenv_stop(b);
    b = NULL;
    cpenv_stop(a);
    a = NULL;
    return 0;
}

static const test_case cases[] = {
    {"a moved sidecar stays connected", test_moved_sidecar_stays_connected},
    {"a push to a frozen stream leaves the moved sidecar's record",
     test_frozen_stream_push_leaves_record},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"status across replicas", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
