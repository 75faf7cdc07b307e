/*
 * bench_governance.c — throughput and latency of the Governance API of a
 * real polis-controlplane on a real etcd (both on loopback, via cpenv),
 * against raw etcd txns shaped like one apply.  One line per figure:
 * `bench: <name> <value> <unit>`; lines starting with '#' are context.
 *
 * Usage: build/tests/bench_governance   (or scripts/bench.sh for all)
 *   BENCH_THREADS=8      concurrent clients in the throughput phases
 *   BENCH_SECONDS=5      length of each throughput phase
 *   BENCH_GETS=5000      measured Gets (after 500 warm-up Gets)
 * The whole run is bounded: about 2 * BENCH_SECONDS + a few seconds.
 * Aims: apply throughput >= 50% of raw etcd txn throughput; Get p50 <= 1 ms.
 */
#include "common/etcd.h"
#include "common/rpc.h"
#include "polis/v1/governance.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/testenv.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS     64
#define WARMUP_GETS     500
#define CALL_TIMEOUT_MS 10000
#define GET_PHASE_MAX_S 20 /* the Get phase stops here whatever BENCH_GETS */

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int env_int(const char *name, int def, int min, int max)
{
    const char *v = getenv(name);
    int n = v ? atoi(v) : def;

    return n < min ? min : n > max ? max : n;
}

/* ------------------------------------------------------- raw etcd txns */

/* A stored record of about the size the control plane writes for a small
 * Domain: the document plus metadata. */
static const char record[] =
    "{\"author\":\"bench@example.com\",\"document\":{\"apiVersion\":"
    "\"polis/v1\",\"kind\":\"Domain\",\"metadata\":{\"name\":"
    "\"bench-00-000000\"},\"spec\":{\"owners\":[\"bench@example.com\"]}},"
    "\"generation\":1,\"scope\":\"global\",\"seq\":1,"
    "\"updatedAt\":\"2026-01-01T00:00:00.000Z\"}";

typedef struct worker {
    int id;
    int64_t deadline_us;
    etcd_client *etcd;  /* raw phase: shared client */
    const char *target; /* apply phase: control plane */
    int64_t ok, failed;
    char last_error[512];
} worker;

/*
 * One create as the store does it, minus the shared sequence number:
 * compare the resource key absent, put the resource, its history entry and
 * an audit entry.
 */
static void *raw_txn_worker(void *arg)
{
    worker *w = arg;

    for (int64_t i = 0; mono_us() < w->deadline_us; i++) {
        char key[128], hkey[160], akey[128];
        etcd_compare cmp = {0};
        etcd_op ops[3];
        etcd_txn_result tr = {0};
        polis_error err = {0};

        snprintf(key, sizeof(key),
                 "/bench/resources/domain/global/b-%d-%" PRId64, w->id, i);
        snprintf(hkey, sizeof(hkey),
                 "/bench/history/domain/global/b-%d-%" PRId64 "/%020" PRId64,
                 w->id, i, i);
        snprintf(akey, sizeof(akey), "/bench/audit/%d-%020" PRId64, w->id, i);
        cmp.key = key;
        cmp.target = ETCD_CMP_MOD;
        cmp.op = ETCD_CMP_EQUAL;
        cmp.number = 0;
        memset(ops, 0, sizeof(ops));
        ops[0] = (etcd_op){.type = ETCD_OP_PUT,
                           .key = key,
                           .value = record,
                           .value_len = sizeof(record) - 1};
        ops[1] = (etcd_op){.type = ETCD_OP_PUT,
                           .key = hkey,
                           .value = record,
                           .value_len = sizeof(record) - 1};
        ops[2] = (etcd_op){.type = ETCD_OP_PUT,
                           .key = akey,
                           .value = record,
                           .value_len = sizeof(record) - 1};
        if (etcd_txn(w->etcd, &cmp, 1, ops, 3, NULL, 0, &tr, &err) == 0 &&
            tr.succeeded) {
            w->ok++;
        } else {
            w->failed++;
            polis_error_format(&err, w->last_error, sizeof(w->last_error));
        }
        etcd_txn_result_free(&tr);
    }
    return NULL;
}

/* ----------------------------------------------------- Governance API */

static void *apply_worker(void *arg)
{
    worker *w = arg;
    rpc_channel *ch = NULL;
    polis_error err = {0};
    rpc_metadata md[1] = {{"x-polis-author", "bench@example.com"}};

    if (rpc_channel_new(w->target, NULL, &ch, &err) != 0) {
        polis_error_format(&err, w->last_error, sizeof(w->last_error));
        w->failed++;
        return NULL;
    }
    for (int64_t i = 0; mono_us() < w->deadline_us; i++) {
        Polis__V1__ApplyRequest req = POLIS__V1__APPLY_REQUEST__INIT;
        Polis__V1__Document d = POLIS__V1__DOCUMENT__INIT, *dp = &d;
        ProtobufCMessage *resp = NULL;
        rpc_status st = {0};
        char json[512], source[64];

        snprintf(json, sizeof(json),
                 "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                 "\"metadata\":{\"name\":\"bench-%d-%" PRId64 "\"},"
                 "\"spec\":{\"owners\":[\"bench@example.com\"]}}",
                 w->id, i);
        snprintf(source, sizeof(source), "bench-%d-%" PRId64 ".json", w->id, i);
        d.source = source;
        d.json = json;
        req.n_documents = 1;
        req.documents = &dp;
        if (rpc_unary(ch, &polis__v1__governance__descriptor, "Apply",
                      &req.base, &resp, md, 1, CALL_TIMEOUT_MS,
                      &st) == RPC_OK) {
            w->ok++;
        } else {
            w->failed++;
            snprintf(w->last_error, sizeof(w->last_error), "%s: %s",
                     rpc_status_name(st.code), st.message);
        }
        if (resp)
            protobuf_c_message_free_unpacked(resp, NULL);
    }
    rpc_channel_free(ch);
    return NULL;
}

/* Run n workers until the deadline; the rate of successes per second. */
static double run_phase(const char *name, void *(*fn)(void *), worker *ws,
                        int n, int seconds)
{
    pthread_t t[MAX_THREADS];
    int64_t start = mono_us(), ok = 0, failed = 0, elapsed;

    for (int i = 0; i < n; i++) {
        ws[i].deadline_us = start + (int64_t)seconds * 1000000;
        ws[i].ok = ws[i].failed = 0;
        ws[i].last_error[0] = '\0';
        pthread_create(&t[i], NULL, fn, &ws[i]);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        ok += ws[i].ok;
        failed += ws[i].failed;
    }
    elapsed = mono_us() - start;
    if (failed) {
        for (int i = 0; i < n; i++)
            if (ws[i].last_error[0]) {
                printf("# %s: %" PRId64 " failed, e.g. %s\n", name, failed,
                       ws[i].last_error);
                break;
            }
    }
    return elapsed > 0 ? (double)ok * 1e6 / (double)elapsed : 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return x < y ? -1 : x > y;
}

/* Get latency of one client; p50/p99 in ms, or -1 on failure. */
static int get_latency(const char *target, int n, double *p50, double *p99,
                       int *measured)
{
    rpc_channel *ch = NULL;
    polis_error err = {0};
    int64_t *lat = calloc((size_t)n, sizeof(*lat));
    int64_t stop_at = mono_us() + (int64_t)GET_PHASE_MAX_S * 1000000;
    int done = 0, rc = 0;

    if (lat == NULL || rpc_channel_new(target, NULL, &ch, &err) != 0) {
        free(lat);
        return -1;
    }
    for (int i = 0; i < WARMUP_GETS + n && mono_us() < stop_at; i++) {
        Polis__V1__GetRequest req = POLIS__V1__GET_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        rpc_status st = {0};
        int64_t t0 = mono_us();

        req.kind = (char *)"Domain";
        req.scope = (char *)"global";
        req.name = (char *)"bench-0-0";
        if (rpc_unary(ch, &polis__v1__governance__descriptor, "Get", &req.base,
                      &resp, NULL, 0, CALL_TIMEOUT_MS, &st) != RPC_OK) {
            printf("# get failed: %s: %s\n", rpc_status_name(st.code),
                   st.message);
            rc = -1;
            break;
        }
        protobuf_c_message_free_unpacked(resp, NULL);
        if (i >= WARMUP_GETS)
            lat[done++] = mono_us() - t0;
    }
    rpc_channel_free(ch);
    if (rc == 0 && done > 0) {
        qsort(lat, (size_t)done, sizeof(*lat), cmp_i64);
        *p50 = (double)lat[done / 2] / 1000.0;
        *p99 = (double)lat[(size_t)((double)done * 0.99) < (size_t)done
                               ? (size_t)((double)done * 0.99)
                               : (size_t)done - 1] /
               1000.0;
    } else {
        rc = -1;
    }
    *measured = done;
    free(lat);
    return rc;
}

int main(void)
{
    int threads = env_int("BENCH_THREADS", 8, 1, MAX_THREADS);
    int seconds = env_int("BENCH_SECONDS", 5, 1, 20);
    int gets = env_int("BENCH_GETS", 5000, 100, 1000000);
    char workers_flag[32];
    const char *flags[] = {workers_flag, NULL};
    cpenv_options o = {.extra_args = flags};
    worker ws[MAX_THREADS];
    etcd_options eo = {0};
    etcd_client *etcd = NULL;
    polis_error err = {0};
    double raw, applies, p50 = 0, p99 = 0;
    int measured = 0, status = 0;
    cpenv *env;

    /* As many server workers as clients, so that the API is not measured
     * queueing behind a smaller pool. */
    snprintf(workers_flag, sizeof(workers_flag), "--workers=%d", threads);
    env = cpenv_start(&o);
    if (env == NULL) {
        fprintf(stderr, "bench_governance: cannot start the control plane\n");
        return 1;
    }
    eo.endpoints = env->etcd_endpoints;
    eo.timeout_ms = 5000;
    if (etcd_client_new(&eo, &etcd, &err) != 0) {
        fprintf(stderr, "bench_governance: etcd client: %s\n", err.message);
        cpenv_stop(env);
        return 1;
    }
    printf("# governance: %d clients, %d s per throughput phase, %d Gets; "
           "control plane %s --workers=%d, etcd %s\n",
           threads, seconds, gets, env->grpc_target, threads,
           env->etcd_endpoints);
    fflush(stdout);

    memset(ws, 0, sizeof(ws));
    for (int i = 0; i < threads; i++) {
        ws[i].id = i;
        ws[i].etcd = etcd;
        ws[i].target = env->grpc_target;
    }
    raw = run_phase("raw etcd txn", raw_txn_worker, ws, threads, seconds);
    printf("bench: etcd_raw_txn_throughput %.0f txn/s\n", raw);
    fflush(stdout);

    applies = run_phase("apply", apply_worker, ws, threads, seconds);
    printf("bench: governance_apply_throughput %.0f applies/s\n", applies);
    printf("bench: governance_apply_vs_raw_ratio %.2f ratio\n",
           raw > 0 ? applies / raw : 0);
    fflush(stdout);

    if (get_latency(env->grpc_target, gets, &p50, &p99, &measured) == 0) {
        printf("bench: governance_get_latency_p50 %.3f ms\n", p50);
        printf("bench: governance_get_latency_p99 %.3f ms\n", p99);
        if (measured < gets)
            printf("# get: only %d of %d Gets within %d s\n", measured, gets,
                   GET_PHASE_MAX_S);
    } else {
        status = 1;
    }
    printf("# aims: apply >= 50%% of raw: %s; Get p50 <= 1 ms: %s\n",
           raw > 0 && applies >= 0.5 * raw ? "met" : "NOT met",
           status == 0 && p50 <= 1.0 ? "met" : "NOT met");
    etcd_client_free(etcd);
    if (cpenv_stop(env) != 0)
        status = 1;
    return status;
}
