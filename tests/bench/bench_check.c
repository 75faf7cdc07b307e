/*
 * bench_check.c — decisions per second of one polis-sidecar's Authorizer.Check
 * over loopback gRPC, with a generated 10,000-rule snapshot: etcd, the
 * control plane and the sidecar are real processes; C client threads in
 * this process call Check back to back for a fixed time.
 *
 *   bench_check                      8 threads, 5 s, 10,000 rules
 *   BENCH_THREADS=4 BENCH_SECONDS=10 BENCH_RULES=20000 bench_check
 *
 * Prints `bench: <name> <value> <unit>`: decisions/s, p50 and p99 latency,
 * the share of requests allowed (a sanity figure: the mix must exercise
 * both outcomes) and the sidecar's resident memory.
 */
#include "polis/v1/authorizer.pb-c.h"
#include "polis/v1/check.pb-c.h"
#include "polis/v1/governance.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/sidecarenv.h"

#include <pthread.h>
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

static long vmrss_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* CPU seconds (user + system) a process has used; -1 when unknown. */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long ut = 0, st = 0;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the ")" closing the command name: state is 3rd, utime
     * the 14th and stime the 15th field of the whole line. */
    p = strrchr(buf, ')');
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
               &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- the generated mesh ---- */

/* Apply documents; the revision written or -1. */
static int64_t apply_docs(rpc_channel *ch, char **docs, size_t n)
{
    Polis__V1__ApplyRequest req = POLIS__V1__APPLY_REQUEST__INIT;
    Polis__V1__Document *d = calloc(n, sizeof(*d));
    Polis__V1__Document **dp = calloc(n, sizeof(*dp));
    ProtobufCMessage *resp = NULL;
    rpc_status st = {0};
    int64_t rev = -1;

    if (d == NULL || dp == NULL)
        goto out;
    for (size_t i = 0; i < n; i++) {
        polis__v1__document__init(&d[i]);
        d[i].source = "bench";
        d[i].json = docs[i];
        dp[i] = &d[i];
    }
    req.documents = dp;
    req.n_documents = n;
    if (rpc_unary(ch, &polis__v1__governance__descriptor, "Apply", &req.base,
                  &resp, NULL, 0, 60000, &st) != RPC_OK) {
        fprintf(stderr, "bench: apply failed: %s %.300s\n",
                rpc_status_name(st.code), st.message);
        goto out;
    }
    rev = ((Polis__V1__ApplyResponse *)resp)->revision;
    protobuf_c_message_free_unpacked(resp, NULL);
out:
    free(d);
    free(dp);
    return rev;
}

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

        rev = apply_docs(ch, docs + i, k);
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
            rev = apply_docs(ch, docs, n);
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
    int index;
    int64_t until_ns;
    pthread_t thread;
    double *lat_ms;
    size_t n;
    long allowed, errors;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    rpc_channel *ch = NULL;
    polis_error err = {0};
    unsigned seed = 12345u + (unsigned)w->index * 7919u;
    char principal[16], product[32];

    if (rpc_channel_new(w->target, NULL, &ch, &err) != 0) {
        w->errors++;
        return NULL;
    }
    while (mono_ns() < w->until_ns && w->n < MAX_SAMPLES) {
        Polis__V1__CheckRequest req = POLIS__V1__CHECK_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        int64_t t0;
        int rc;

        snprintf(principal, sizeof(principal), "user%03d",
                 rand_r(&seed) % PRINCIPALS);
        snprintf(product, sizeof(product), DOMAIN "/p%03d",
                 rand_r(&seed) % PRODUCTS);
        req.principal = principal;
        req.product = product;
        req.port = "query";
        req.purpose = rand_r(&seed) % 4 ? "analytics" : "marketing";
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
    cpenv *cp = NULL;
    sidecarenv *sc = NULL;
    rpc_channel *gov = NULL;
    worker w[MAX_THREADS];
    double *all = NULL;
    size_t total = 0, k = 0;
    long allowed = 0, errors = 0;
    int64_t rev, t0, elapsed;
    double sc_cpu0, me_cpu0;
    int rc = 1;
    sidecarenv_options so = {.domain = DOMAIN, .id = "bench-sidecar"};

    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "usage: [BENCH_THREADS=8] [BENCH_SECONDS=5] "
                        "[BENCH_RULES=10000] bench_check\n");
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
    t0 = mono_ns();
    sc = sidecarenv_start(&so);
    if (sc == NULL || wait_synced(gov, so.id, rev) != 0)
        goto out;
    printf("bench: check_sidecar_start_to_synced %.0f ms\n",
           (double)(mono_ns() - t0) / 1e6);

    sc_cpu0 = cpu_seconds(testenv_proc_pid(sc->proc));
    me_cpu0 = cpu_seconds(getpid());
    t0 = mono_ns();
    for (int i = 0; i < threads; i++) {
        w[i].target = sc->grpc_target;
        w[i].index = i;
        w[i].until_ns = t0 + (int64_t)seconds * 1000000000LL;
        w[i].lat_ms = malloc(MAX_SAMPLES * sizeof(double));
        if (w[i].lat_ms == NULL ||
            pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0) {
            fprintf(stderr, "bench: cannot start client thread %d\n", i);
            for (int j = 0; j < i; j++)
                pthread_join(w[j].thread, NULL);
            goto out;
        }
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].thread, NULL);
        total += w[i].n;
        allowed += w[i].allowed;
        errors += w[i].errors;
    }
    elapsed = mono_ns() - t0;
    /* Where the 2 cores went: the sidecar, or this load generator. */
    printf("bench: check_sidecar_cpu %.2f cores\n",
           (cpu_seconds(testenv_proc_pid(sc->proc)) - sc_cpu0) /
               ((double)elapsed / 1e9));
    printf("bench: check_client_cpu %.2f cores\n",
           (cpu_seconds(getpid()) - me_cpu0) / ((double)elapsed / 1e9));
    all = malloc((total ? total : 1) * sizeof(double));
    if (all == NULL || total == 0) {
        fprintf(stderr, "bench: no decisions measured\n");
        goto out;
    }
    for (int i = 0; i < threads; i++) {
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
           (double)vmrss_kib(testenv_proc_pid(sc->proc)) / 1024.0);
    rc = errors == 0 && allowed > 0 && (size_t)allowed < total ? 0 : 1;
    if (rc)
        fprintf(stderr, "bench: errors, or every decision was the same\n");
out:
    if (rc && sc)
        sidecarenv_dump_log(sc, 3000);
    if (rc && cp)
        cpenv_dump_log(cp, 3000);
    for (int i = 0; i < threads; i++)
        free(w[i].lat_ms);
    free(all);
    sidecarenv_free(sc);
    rpc_channel_free(gov);
    cpenv_stop(cp);
    return rc;
}
