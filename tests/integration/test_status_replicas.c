/*
 * test_status_replicas.c — two control plane replicas on one etcd, and a
 * sidecar that moves from one to the other: the status record shows where
 * it is connected now, and the old replica, learning late that its stream
 * ended, does not overwrite that with DISCONNECTED.  Real etcd, real
 * control planes and sidecars.
 */
#include "common/etcd.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIDECAR_ID "moving-1"

static cpenv *a, *b;
static etcd_client *etcd;

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The sidecar's status record: its state and the replica that wrote it
 * ("" when there is none). */
static void read_status(char *state, size_t slen, char *replica, size_t rlen)
{
    etcd_range_result rr = {0};
    polis_error err = {0};
    json_t *rec = NULL;

    state[0] = replica[0] = '\0';
    if (etcd_range(etcd, "/polis/sidecars/" SIDECAR_ID, NULL, &rr, &err) == 0 &&
        rr.n == 1)
        rec = json_loads(rr.kvs[0].value, 0, NULL);
    snprintf(state, slen, "%s",
             rec ? json_string_value(json_object_get(rec, "state")) : "");
    snprintf(replica, rlen, "%s",
             rec ? json_string_value(json_object_get(rec, "controlplane"))
                 : "");
    json_decref(rec);
    etcd_range_result_free(&rr);
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

/* Wait until the record is CONNECTED and written by env. */
static bool wait_connected_to(const cpenv *env, int timeout_ms)
{
    int64_t until = mono_ms() + timeout_ms;
    char state[32], replica[300];

    do {
        read_status(state, sizeof(state), replica, sizeof(replica));
        if (strcmp(state, "CONNECTED") == 0 && written_by(replica, env))
            return true;
        usleep(50 * 1000);
    } while (mono_ms() < until);
    fprintf(stderr, "\nstatus: %s by %s\n", state, replica);
    return false;
}

/* polis_distribution_connected_sidecars of a replica (-1: unknown). */
static double connected_on(const cpenv *env)
{
    char url[128], body[65536], *line;
    double v = -1;

    snprintf(url, sizeof(url), "%s/metrics", env->admin_url);
    if (cpenv_http_get(url, 5000, body, sizeof(body)) != 200)
        return -1;
    line = strstr(body, "\npolis_distribution_connected_sidecars ");
    if (line)
        sscanf(line + 1, "polis_distribution_connected_sidecars %lf", &v);
    return v;
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
