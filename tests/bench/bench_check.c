/*
 * bench_check.c — decisions per second of one polis-sidecar's Authorizer.Check
 * over loopback gRPC, with a generated 10,000-rule snapshot: etcd, the
 * control plane and the sidecar are real processes; a load generator in
 * this process keeps BENCH_THREADS calls in flight for a fixed time.
 *
 *   bench_check                      8 calls in flight, 5 s, 10,000 rules
 *   BENCH_THREADS=4 BENCH_SECONDS=10 BENCH_RULES=20000 bench_check
 *   BENCH_CLIENT=unary               a thread per call, blocking rpc_unary
 *   BENCH_CLIENT_THREADS=2           async client threads (default 1)
 *   BENCH_EXPLAIN=1                  ask for explanation and decision JSON
 *   BENCH_SIDECAR_WORKERS=2          the sidecar's --grpc-workers
 *
 * Prints `bench: <name> <value> <unit>`: decisions/s, p50 and p99 latency,
 * CPU used by the sidecar, by this load generator and by the whole machine
 * (others' load shows there), CPU per decision, the share of requests
 * allowed (a sanity figure: the mix must exercise both outcomes) and the
 * sidecar's resident memory.
 */
#include "polis/v1/authorizer.pb-c.h"
#include "polis/v1/check.pb-c.h"
#include "polis/v1/governance.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/procstat.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DOMAIN           "bench"
#define PRODUCTS         100
#define PRINCIPALS       200
#define GROUPS           200
#define RULES_PER_POLICY 100
/* Documents per Apply: each costs a few etcd txn operations, and an etcd
 * with default settings takes 128 operations and 1.5 MiB per txn. */
#define DOCS_PER_CALL     30
#define POLICIES_PER_CALL 10
#define MAX_SAMPLES       (2 * 1024 * 1024) /* per thread */
#define MAX_THREADS       64
#define SYNC_WAIT_MS      60000

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    long n;

    if (v == NULL || *v == '\0')
        return def;
    n = strtol(v, NULL, 10);
    return n < lo ? lo : n > hi ? hi : (int)n;
}

/* ---- the generated mesh ---- */

static void free_docs(char **docs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(docs[i]);
}

/* Apply docs[0..n) DOCS_PER_CALL at a time and free them; the last
 * revision or -1. */
static int64_t apply_chunked(rpc_channel *ch, char **docs, size_t n)
{
    int64_t rev = -1;

    for (size_t i = 0; i < n; i += DOCS_PER_CALL) {
        size_t k = n - i < DOCS_PER_CALL ? n - i : DOCS_PER_CALL;

        rev = gc_apply_docs(ch, (const char *const *)docs + i, k, 60000);
        if (rev < 0)
            break;
    }
    free_docs(docs, n);
    return rev;
}

/* The domain, its products and the principals. */
static int64_t apply_base(rpc_channel *ch)
{
    char *docs[1 + PRODUCTS + PRINCIPALS];
    size_t n = 0;

    if (asprintf(&docs[n++], "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                             "\"metadata\":{\"name\":\"" DOMAIN "\"},\"spec\":{"
                             "\"owners\":[\"bench@example.com\"]}}") < 0)
        return -1;
    for (int p = 0; p < PRODUCTS; p++)
        if (asprintf(&docs[n++],
                     "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
                     "\"metadata\":{\"name\":\"p%03d\"},\"spec\":{\"domain\":"
                     "\"" DOMAIN "\",\"ports\":[{\"name\":\"sql\",\"type\":"
                     "\"query\",\"engine\":\"sqlite\",\"database\":\"p.db\","
                     "\"table\":\"t%03d\"}],\"schema\":[{\"name\":\"id\","
                     "\"type\":\"integer\"},{\"name\":\"email\",\"type\":"
                     "\"string\",\"classification\":[\"pii.email\"]},{"
                     "\"name\":\"region\",\"type\":\"string\"},{\"name\":"
                     "\"amount\",\"type\":\"decimal\"}],\"purposes\":["
                     "\"analytics\",\"marketing\"]}}",
                     p, p) < 0)
            return -1;
    for (int u = 0; u < PRINCIPALS; u++)
        if (asprintf(&docs[n++],
                     "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\","
                     "\"metadata\":{\"name\":\"user%03d\"},\"spec\":{"
                     "\"groups\":[\"g%03d\",\"g%03d\"],\"attributes\":{"
                     "\"region\":\"%s\"}}}",
                     u, u % GROUPS, (u * 7 + 3) % GROUPS,
                     u % 3 == 0   ? "EU"
                     : u % 3 == 1 ? "US"
                                  : "APAC") < 0)
            return -1;
    return apply_chunked(ch, docs, n);
}

/* Rule r of the generated set: mostly allows, with denies, masks and row
 * filters mixed in, spread over products and groups. */
static int rule_json(int r, char *buf, size_t len)
{
    int prod = (r * 13) % PRODUCTS, grp = (r / 7) % GROUPS, kind = r % 10;

    if (kind < 7)
        return snprintf(buf, len,
                        "{\"name\":\"r%05d\",\"effect\":\"allow\","
                        "\"subjects\":[\"group:g%03d\"],\"resources\":["
                        "\"" DOMAIN "/p%03d\"],\"ports\":[\"query\"]}",
                        r, grp, prod);
    if (kind == 7)
        return snprintf(buf, len,
                        "{\"name\":\"r%05d\",\"effect\":\"deny\","
                        "\"subjects\":[\"user%03d\"],\"resources\":[\"" DOMAIN
                        "/p%03d\"],\"purposes\":[\"marketing\"]}",
                        r, r % PRINCIPALS, prod);
    if (kind == 8)
        return snprintf(buf, len,
                        "{\"name\":\"r%05d\",\"effect\":\"mask\","
                        "\"subjects\":[\"group:g%03d\"],\"resources\":["
                        "\"" DOMAIN "/p%03d\"],\"mask\":{\"method\":"
                        "\"redact\",\"classifications\":[\"pii.email\"]}}",
                        r, grp, prod);
    return snprintf(buf, len,
                    "{\"name\":\"r%05d\",\"effect\":\"filter\","
                    "\"subjects\":[\"group:g%03d\"],\"resources\":[\"" DOMAIN
                    "/p%03d\"],\"filter\":\"region == subject.region\"}",
                    r, grp, prod);
}

/* Policies of RULES_PER_POLICY rules, alternately global and domain
 * scoped, applied POLICIES_PER_CALL at a time; the last revision or -1. */
static int64_t apply_rules(rpc_channel *ch, int rules)
{
    int policies = (rules + RULES_PER_POLICY - 1) / RULES_PER_POLICY;
    char *docs[POLICIES_PER_CALL];
    int64_t rev = -1;
    size_t n = 0;

    for (int p = 0; p < policies; p++) {
        size_t cap = 256 + (size_t)RULES_PER_POLICY * 256, used;
        char *doc = malloc(cap);

        if (doc == NULL)
            return -1;
        used = (size_t)snprintf(
            doc, cap,
            "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":{"
            "\"name\":\"gen%03d\"},\"spec\":{\"scope\":\"%s\",\"rules\":[",
            p, p % 2 ? DOMAIN : "global");
        for (int i = 0; i < RULES_PER_POLICY; i++) {
            int r = p * RULES_PER_POLICY + i;

            if (r >= rules)
                break;
            if (i)
                doc[used++] = ',';
            used += (size_t)rule_json(r, doc + used, cap - used);
        }
        snprintf(doc + used, cap - used, "]}}");
        docs[n++] = doc;
        if (n == POLICIES_PER_CALL || p == policies - 1) {
            rev = gc_apply_docs(ch, (const char *const *)docs, n, 60000);
            free_docs(docs, n);
            n = 0;
            if (rev < 0)
                return -1;
        }
    }
    return rev;
}

/* Wait until the sidecar is SYNCED at >= rev. */
static int wait_synced(rpc_channel *ch, const char *id, int64_t rev)
{
    int64_t until = mono_ns() + (int64_t)SYNC_WAIT_MS * 1000000;
    char last[640] = "(not listed)";

    while (mono_ns() < until) {
        Polis__V1__SidecarsRequest req = POLIS__V1__SIDECARS_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        int ok = 0;

        if (rpc_unary(ch, &polis__v1__governance__descriptor, "Sidecars",
                      &req.base, &resp, NULL, 0, 5000, NULL) == RPC_OK) {
            Polis__V1__SidecarsResponse *r =
                (Polis__V1__SidecarsResponse *)resp;
            for (size_t i = 0; i < r->n_sidecars; i++) {
                Polis__V1__SidecarStatus *s = r->sidecars[i];
                if (strcmp(s->id, id) != 0)
                    continue;
                snprintf(last, sizeof(last), "%s applied=%lld error=%.500s",
                         s->state, (long long)s->applied_revision,
                         s->last_error);
                ok = strcmp(s->state, "SYNCED") == 0 &&
                     s->applied_revision >= rev;
            }
            protobuf_c_message_free_unpacked(resp, NULL);
        }
        if (ok)
            return 0;
        usleep(100 * 1000);
    }
    fprintf(stderr, "bench: sidecar %s not SYNCED at %lld within %d ms: %s\n",
            id, (long long)rev, SYNC_WAIT_MS, last);
    return -1;
}

/* ---- the load ---- */

typedef struct worker {
    const char *target;
    bool explain;
    int index;
    int calls; /* kept in flight at once (async client) */
    int64_t until_ns;
    pthread_t thread;
    double *lat_ms;
    size_t n;
    long allowed, errors;
} worker;

/* The next request of a worker's mix: principals, products and purposes
 * drawn at random so that decisions differ. */
typedef struct request_mix {
    unsigned seed;
    char principal[16], product[32];
} request_mix;

static void next_request(request_mix *m, bool explain,
                         Polis__V1__CheckRequest *req)
{
    polis__v1__check_request__init(req);
    snprintf(m->principal, sizeof(m->principal), "user%03d",
             rand_r(&m->seed) % PRINCIPALS);
    snprintf(m->product, sizeof(m->product), DOMAIN "/p%03d",
             rand_r(&m->seed) % PRODUCTS);
    req->principal = m->principal;
    req->product = m->product;
    req->port = "query";
    req->purpose = rand_r(&m->seed) % 4 ? "analytics" : "marketing";
    req->explain = explain;
}

/* One blocking rpc_unary after another (common/rpc.h, what polisctl and
 * the tests use): a pluck queue and a call per decision. */
static void *unary_worker_main(void *arg)
{
    worker *w = arg;
    rpc_channel *ch = NULL;
    polis_error err = {0};
    request_mix mix = {.seed = 12345u + (unsigned)w->index * 7919u};

    if (rpc_channel_new(w->target, NULL, &ch, &err) != 0) {
        w->errors++;
        return NULL;
    }
    while (mono_ns() < w->until_ns && w->n < MAX_SAMPLES) {
        Polis__V1__CheckRequest req;
        ProtobufCMessage *resp = NULL;
        int64_t t0;
        int rc;

        next_request(&mix, w->explain, &req);
        t0 = mono_ns();
        rc = rpc_unary(ch, &polis__v1__authorizer__descriptor, "Check",
                       &req.base, &resp, NULL, 0, 5000, NULL);
        w->lat_ms[w->n++] = (double)(mono_ns() - t0) / 1e6;
        if (rc != RPC_OK) {
            w->errors++;
            continue;
        }
        if (((Polis__V1__CheckResponse *)resp)->allowed)
            w->allowed++;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    rpc_channel_free(ch);
    return NULL;
}

/* ---- the asynchronous client ---- */

/* One call in flight of an async worker. */
typedef struct slot {
    grpc_call *call;
    grpc_byte_buffer *send_bb, *recv_bb;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code code;
    grpc_slice details;
    int64_t t0;
} slot;

static const char check_path[] = "/polis.v1.Authorizer/Check";

static int slot_start(worker *w, grpc_channel *ch, grpc_completion_queue *cq,
                      slot *s, request_mix *mix)
{
    Polis__V1__CheckRequest req;
    uint8_t buf[512];
    size_t len;
    grpc_slice payload, path = grpc_slice_from_static_string(check_path);
    grpc_op ops[6];

    next_request(mix, w->explain, &req);
    len = polis__v1__check_request__get_packed_size(&req);
    if (len > sizeof(buf))
        return -1;
    polis__v1__check_request__pack(&req, buf);
    payload = grpc_slice_from_copied_buffer((const char *)buf, len);
    s->send_bb = grpc_raw_byte_buffer_create(&payload, 1);
    grpc_slice_unref(payload);
    s->recv_bb = NULL;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->init_md);
    grpc_metadata_array_init(&s->trail_md);
    s->t0 = mono_ns();
    s->call = grpc_channel_create_call(
        ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path, NULL,
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_millis(5000, GPR_TIMESPAN)),
        NULL);
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->send_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &s->recv_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &s->trail_md;
    ops[5].data.recv_status_on_client.status = &s->code;
    ops[5].data.recv_status_on_client.status_details = &s->details;
    if (s->call == NULL ||
        grpc_call_start_batch(s->call, ops, 6, s, NULL) != GRPC_CALL_OK)
        return -1;
    return 0;
}

/* The call in `s` completed: count it and release it. */
static void slot_finish(worker *w, slot *s, bool success)
{
    w->lat_ms[w->n++] = (double)(mono_ns() - s->t0) / 1e6;
    if (success && s->code == GRPC_STATUS_OK && s->recv_bb) {
        grpc_byte_buffer_reader r;
        grpc_slice all;
        Polis__V1__CheckResponse *resp = NULL;

        if (grpc_byte_buffer_reader_init(&r, s->recv_bb)) {
            all = grpc_byte_buffer_reader_readall(&r);
            resp = polis__v1__check_response__unpack(
                NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
            grpc_slice_unref(all);
            grpc_byte_buffer_reader_destroy(&r);
        }
        if (resp == NULL)
            w->errors++;
        else if (resp->allowed)
            w->allowed++;
        if (resp)
            polis__v1__check_response__free_unpacked(resp, NULL);
    } else {
        w->errors++;
    }
    grpc_call_unref(s->call);
    s->call = NULL;
    grpc_byte_buffer_destroy(s->send_bb);
    if (s->recv_bb)
        grpc_byte_buffer_destroy(s->recv_bb);
    grpc_slice_unref(s->details);
    grpc_metadata_array_destroy(&s->init_md);
    grpc_metadata_array_destroy(&s->trail_md);
}

/*
 * `calls` calls in flight on one completion queue and one connection of
 * its own: as soon as one answers, the next starts.  Each decision's
 * latency is still from its start to its answer as this thread saw it,
 * waits behind the other answers included.
 */
static void *async_worker_main(void *arg)
{
    worker *w = arg;
    request_mix mix = {.seed = 12345u + (unsigned)w->index * 7919u};
    grpc_arg a;
    grpc_channel_args args = {.num_args = 1, .args = &a};
    grpc_channel_credentials *creds;
    grpc_channel *ch;
    grpc_completion_queue *cq;
    slot *slots = calloc((size_t)w->calls, sizeof(*slots));
    int in_flight = 0;
    bool stopping = false;

    grpc_init(); /* gRPC directly, beside common/rpc.c's own use */
    /* Each client thread on a connection of its own, as separate client
     * processes would be; gRPC otherwise shares one per target. */
    a = (grpc_arg){.type = GRPC_ARG_INTEGER,
                   .key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL,
                   .value.integer = 1};
    creds = grpc_insecure_credentials_create();
    ch = grpc_channel_create(w->target, creds, &args);
    grpc_channel_credentials_release(creds);
    cq = grpc_completion_queue_create_for_next(NULL);
    for (int i = 0; slots && i < w->calls; i++) {
        if (slot_start(w, ch, cq, &slots[i], &mix) != 0) {
            w->errors++;
            break;
        }
        in_flight++;
    }
    while (in_flight > 0) {
        grpc_event ev = grpc_completion_queue_next(
            cq,
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                         gpr_time_from_millis(10000, GPR_TIMESPAN)),
            NULL);
        slot *s = ev.tag;

        if (ev.type != GRPC_OP_COMPLETE) {
            /* Nothing for 10 s, past the calls' 5 s deadline: cancel what
             * is left (each then completes) and stop. */
            w->errors++;
            stopping = true;
            for (int i = 0; i < w->calls; i++)
                if (slots[i].call)
                    grpc_call_cancel(slots[i].call, NULL);
            continue;
        }
        in_flight--;
        slot_finish(w, s, ev.success);
        if (!stopping && mono_ns() < w->until_ns &&
            w->n + (size_t)w->calls < MAX_SAMPLES) {
            if (slot_start(w, ch, cq, s, &mix) != 0)
                w->errors++;
            else
                in_flight++;
        }
    }
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                      NULL)
               .type != GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
    grpc_channel_destroy(ch);
    free(slots);
    grpc_shutdown();
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int threads = env_int("BENCH_THREADS", 8, 1, MAX_THREADS);
    int seconds = env_int("BENCH_SECONDS", 5, 1, 120);
    int rules = env_int("BENCH_RULES", 10000, 1, 100000);
    /* 0: the sidecar's default --grpc-workers */
    int sidecar_workers = env_int("BENCH_SIDECAR_WORKERS", 0, 0, 64);
    /* 1: ask for the explanation and decision JSON (people's path) */
    bool explain = env_int("BENCH_EXPLAIN", 0, 0, 1) == 1;
    /* The load generator: "async" (default), `threads` calls in flight on
     * BENCH_CLIENT_THREADS threads with completion queues; or "unary",
     * one thread per call in flight, each blocking in rpc_unary. */
    const char *client = getenv("BENCH_CLIENT");
    bool async = client == NULL || strcmp(client, "unary") != 0;
    int nworkers =
        async ? env_int("BENCH_CLIENT_THREADS", 1, 1, threads) : threads;
    cpenv *cp = NULL;
    sidecarenv *sc = NULL;
    rpc_channel *gov = NULL;
    worker w[MAX_THREADS];
    double *all = NULL;
    size_t total = 0, k = 0;
    long allowed = 0, errors = 0;
    int64_t rev, t0, elapsed;
    double sc_cpu0, me_cpu0, all_cpu0, sc_cpu, me_cpu, secs;
    char workers_arg[32];
    const char *extra[3] = {NULL};
    int rc = 1;
    sidecarenv_options so = {.domain = DOMAIN, .id = "bench-sidecar"};

    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "usage: [BENCH_THREADS=8] [BENCH_SECONDS=5] "
                        "[BENCH_RULES=10000] [BENCH_CLIENT=async|unary] "
                        "[BENCH_CLIENT_THREADS=1] [BENCH_EXPLAIN=0|1] "
                        "[BENCH_SIDECAR_WORKERS=n] bench_check\n");
        return 2;
    }
    memset(w, 0, sizeof(w));
    cp = cpenv_start(NULL);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto out;
    t0 = mono_ns();
    if (apply_base(gov) < 0 || (rev = apply_rules(gov, rules)) < 0)
        goto out;
    printf("bench: check_apply_%d_rules %.0f ms\n", rules,
           (double)(mono_ns() - t0) / 1e6);
    so.controlplane = cp->grpc_target;
    so.wait_ready = true;
    if (sidecar_workers > 0) {
        snprintf(workers_arg, sizeof(workers_arg), "%d", sidecar_workers);
        extra[0] = "--grpc-workers";
        extra[1] = workers_arg;
        so.extra_args = extra;
    }
    t0 = mono_ns();
    sc = sidecarenv_start(&so);
    if (sc == NULL || wait_synced(gov, so.id, rev) != 0)
        goto out;
    printf("bench: check_sidecar_start_to_synced %.0f ms\n",
           (double)(mono_ns() - t0) / 1e6);

    sc_cpu0 = ps_cpu_seconds(testenv_proc_pid(sc->proc));
    me_cpu0 = ps_cpu_seconds(getpid());
    all_cpu0 = ps_machine_busy_seconds();
    t0 = mono_ns();
    for (int i = 0; i < nworkers; i++) {
        w[i].target = sc->grpc_target;
        w[i].explain = explain;
        w[i].index = i;
        /* `threads` calls in flight in all, spread over the workers */
        w[i].calls = threads / nworkers + (i < threads % nworkers);
        w[i].until_ns = t0 + (int64_t)seconds * 1000000000LL;
        w[i].lat_ms = malloc(MAX_SAMPLES * sizeof(double));
        if (w[i].lat_ms == NULL ||
            pthread_create(&w[i].thread, NULL,
                           async ? async_worker_main : unary_worker_main,
                           &w[i]) != 0) {
            fprintf(stderr, "bench: cannot start client thread %d\n", i);
            for (int j = 0; j < i; j++)
                pthread_join(w[j].thread, NULL);
            goto out;
        }
    }
    for (int i = 0; i < nworkers; i++) {
        pthread_join(w[i].thread, NULL);
        total += w[i].n;
        allowed += w[i].allowed;
        errors += w[i].errors;
    }
    elapsed = mono_ns() - t0;
    secs = (double)elapsed / 1e9;
    sc_cpu = ps_cpu_seconds(testenv_proc_pid(sc->proc)) - sc_cpu0;
    me_cpu = ps_cpu_seconds(getpid()) - me_cpu0;
    /* Where the cores went: the sidecar, or this load generator. */
    printf("bench: check_sidecar_cpu %.2f cores\n", sc_cpu / secs);
    printf("bench: check_client_cpu %.2f cores\n", me_cpu / secs);
    /* Everything busy, other processes included: a figure near the core
     * count means the run was CPU-bound, and what the sidecar and client
     * do not account for is somebody else's load. */
    printf("bench: check_machine_cpu %.2f cores of %ld\n",
           (ps_machine_busy_seconds() - all_cpu0) / secs,
           sysconf(_SC_NPROCESSORS_ONLN));
    /* CPU per decision: unlike decisions/s, it holds steady when other
     * work shares the machine. */
    if (total > 0) {
        printf("bench: check_sidecar_cpu_per_decision %.1f us\n",
               sc_cpu * 1e6 / (double)total);
        printf("bench: check_client_cpu_per_decision %.1f us\n",
               me_cpu * 1e6 / (double)total);
    }
    all = malloc((total ? total : 1) * sizeof(double));
    if (all == NULL || total == 0) {
        fprintf(stderr, "bench: no decisions measured\n");
        goto out;
    }
    for (int i = 0; i < nworkers; i++) {
        memcpy(all + k, w[i].lat_ms, w[i].n * sizeof(double));
        k += w[i].n;
    }
    qsort(all, total, sizeof(double), cmp_double);
    printf("bench: check_decisions_per_s_t%d %.0f decisions/s\n", threads,
           (double)(total - (size_t)errors) / ((double)elapsed / 1e9));
    printf("bench: check_p50_t%d %.3f ms\n", threads, all[total / 2]);
    printf("bench: check_p99_t%d %.3f ms\n", threads,
           all[(size_t)((double)total * 0.99)]);
    printf("bench: check_allowed_share %.2f fraction\n",
           (double)allowed / (double)total);
    printf("bench: check_errors %ld requests\n", errors);
    printf("bench: sidecar_rss_%d_rules %.1f MiB\n", rules,
           (double)ps_rss_kib(testenv_proc_pid(sc->proc)) / 1024.0);
    rc = errors == 0 && allowed > 0 && (size_t)allowed < total ? 0 : 1;
    if (rc)
        fprintf(stderr, "bench: errors, or every decision was the same\n");
out:
    if (rc && sc)
        sidecarenv_dump_log(sc, 3000);
    if (rc && cp)
        cpenv_dump_log(cp, 3000);
    for (int i = 0; i < MAX_THREADS; i++)
        free(w[i].lat_ms);
    free(all);
    sidecarenv_free(sc);
    rpc_channel_free(gov);
    cpenv_stop(cp);
    return rc;
}
