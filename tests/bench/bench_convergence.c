/*
 * bench_convergence.c — how fast a policy change reaches every sidecar:
 * a real etcd and polis-controlplane, N simulated sidecars (Subscribe
 * streams in this process, one small-stack thread each, 20 domains) that
 * ACK every snapshot at once; 20 global Policy changes applied one at a
 * time, each timed from Apply returned to the last stream's ACK sent.
 *
 *   bench_convergence [N[,N...]]     default "100,1000"; e.g. 100,1000,5000
 *
 * Prints `bench: <name> <value> <unit>`: p50/p99/max convergence per N and
 * the control plane's resident memory per 1,000 streams.  Debounce is the
 * control plane's default (20 ms quiet, 250 ms cap), so it is included.
 */
#include "polis/v1/distribution.pb-c.h"
#include "polis/v1/governance.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/procstat.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DOMAINS          20
#define CHANGES          20
#define MAX_STREAMS      20000
#define STREAMS_PER_CHAN 100
#define THREAD_STACK     (128 * 1024)
#define RECV_POLL_MS     500
#define KEEPALIVE_MS     3000 /* well under the control plane's 10 s */
#define CONNECT_WAIT_MS  120000
#define CHANGE_WAIT_MS   30000

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- the simulated sidecars ---- */

typedef struct sim {
    int index;
    rpc_channel *ch; /* borrowed */
    char id[32];
    char domain[16];
    pthread_t thread;
    bool started;
    bool counted; /* reached the current target (under fleet.mu) */
    int64_t acked_rev;
} sim;

static struct fleet {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t target; /* revision every stream must ACK */
    int reached;
    int64_t last_ack_ns;
    atomic_int failed;
    atomic_bool stop;
} fleet = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, false};

static int send_msg(rpc_stream *s, Polis__V1__SidecarMessage *m)
{
    return rpc_stream_send(s, &m->base);
}

static void note_ack(sim *sm, int64_t rev)
{
    pthread_mutex_lock(&fleet.mu);
    sm->acked_rev = rev;
    if (!sm->counted && fleet.target > 0 && rev >= fleet.target) {
        sm->counted = true;
        fleet.reached++;
        fleet.last_ack_ns = mono_ns();
        pthread_cond_signal(&fleet.cv);
    }
    pthread_mutex_unlock(&fleet.mu);
}

static void *sim_main(void *arg)
{
    sim *sm = arg;
    rpc_stream *s = NULL;
    polis_error err = {0};
    Polis__V1__Hello h = POLIS__V1__HELLO__INIT;
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    int64_t last_sent = mono_ns();

    if (rpc_stream_open(sm->ch, &polis__v1__distribution__descriptor,
                        "Subscribe", NULL, 0, 0, &s, &err) != 0)
        goto fail;
    h.sidecar_id = sm->id;
    h.domain = sm->domain;
    h.version = "bench";
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_HELLO;
    m.hello = &h;
    if (send_msg(s, &m) != 0)
        goto fail;
    while (!atomic_load(&fleet.stop)) {
        ProtobufCMessage *msg = NULL;
        int rc = rpc_stream_recv(s, &msg, RECV_POLL_MS);

        if (rc == 1) {
            Polis__V1__ControlMessage *cm = (Polis__V1__ControlMessage *)msg;

            if (cm->msg_case == POLIS__V1__CONTROL_MESSAGE__MSG_SNAPSHOT) {
                Polis__V1__Ack a = POLIS__V1__ACK__INIT;
                int64_t rev = cm->snapshot->revision;

                a.revision = rev;
                a.digest = cm->snapshot->digest;
                m = (Polis__V1__SidecarMessage)POLIS__V1__SIDECAR_MESSAGE__INIT;
                m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_ACK;
                m.ack = &a;
                rc = send_msg(s, &m);
                last_sent = mono_ns();
                protobuf_c_message_free_unpacked(msg, NULL);
                if (rc != 0)
                    goto fail;
                note_ack(sm, rev);
            } else {
                protobuf_c_message_free_unpacked(msg, NULL);
            }
        } else if (rc != POLIS_ETIMEDOUT) {
            goto fail;
        }
        if (mono_ns() - last_sent > KEEPALIVE_MS * 1000000LL) {
            Polis__V1__Keepalive k = POLIS__V1__KEEPALIVE__INIT;

            m = (Polis__V1__SidecarMessage)POLIS__V1__SIDECAR_MESSAGE__INIT;
            m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_KEEPALIVE;
            m.keepalive = &k;
            if (send_msg(s, &m) != 0)
                goto fail;
            last_sent = mono_ns();
        }
    }
    rpc_stream_free(s);
    return NULL;
fail:
    if (!atomic_load(&fleet.stop))
        atomic_fetch_add(&fleet.failed, 1);
    rpc_stream_free(s);
    return NULL;
}

/* Set a new target; count the streams already there.  Under no lock. */
static void fleet_target(sim *sims, int n, int64_t target)
{
    pthread_mutex_lock(&fleet.mu);
    fleet.target = target;
    fleet.reached = 0;
    fleet.last_ack_ns = 0;
    for (int i = 0; i < n; i++) {
        sims[i].counted = sims[i].acked_rev >= target;
        if (sims[i].counted)
            fleet.reached++;
    }
    pthread_mutex_unlock(&fleet.mu);
}

/* Wait until all n reached the target; the time of the last ACK, or -1. */
static int64_t fleet_wait(int n, int timeout_ms)
{
    struct timespec until;
    int64_t at = -1;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    pthread_mutex_lock(&fleet.mu);
    while (fleet.reached < n && atomic_load(&fleet.failed) == 0) {
        if (pthread_cond_timedwait(&fleet.cv, &fleet.mu, &until) != 0)
            break;
    }
    if (fleet.reached >= n)
        at = fleet.last_ack_ns;
    pthread_mutex_unlock(&fleet.mu);
    return at;
}

/* ---- the control plane ---- */

/* Domains d0..d19 with one product each, a few principals, and a global
 * policy: snapshots of a realistic small size. */
static int apply_mesh(rpc_channel *ch)
{
    char *docs[3 * DOMAINS + 1];
    size_t n = 0;
    int rc = 0;

    for (int i = 0; i < DOMAINS; i++) {
        if (asprintf(&docs[n++],
                     "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                     "\"metadata\":{\"name\":\"d%d\"},\"spec\":{\"owners\":"
                     "[\"team-d%d@example.com\"]}}",
                     i, i) < 0 ||
            asprintf(&docs[n++],
                     "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
                     "\"metadata\":{\"name\":\"p\"},\"spec\":{\"domain\":"
                     "\"d%d\",\"ports\":[{\"name\":\"sql\",\"type\":\"query\","
                     "\"engine\":\"sqlite\",\"database\":\"p.db\",\"table\":"
                     "\"p\"}],\"schema\":[{\"name\":\"id\",\"type\":"
                     "\"integer\"},{\"name\":\"email\",\"type\":\"string\","
                     "\"classification\":[\"pii.email\"]},{\"name\":"
                     "\"region\",\"type\":\"string\"}]}}",
                     i) < 0 ||
            asprintf(&docs[n++],
                     "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\","
                     "\"metadata\":{\"name\":\"user%d\"},\"spec\":{\"groups\":"
                     "[\"g%d\"],\"attributes\":{\"region\":\"EU\"}}}",
                     i, i % 4) < 0)
            return -1;
    }
    if (gc_apply_docs(ch, (const char *const *)docs, n, 30000) < 0)
        rc = -1;
    for (size_t i = 0; i < n; i++)
        free(docs[i]);
    return rc;
}

/* Change i of the global policy: a new rule set, so every domain's
 * snapshot changes. */
static int64_t apply_change(rpc_channel *ch, int i)
{
    char *doc = NULL;
    int64_t rev;

    if (asprintf(&doc,
                 "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
                 "\"metadata\":{\"name\":\"bench-council\"},\"spec\":{"
                 "\"scope\":\"global\",\"rules\":[{\"name\":\"read\","
                 "\"effect\":\"allow\",\"subjects\":[\"group:g%d\"],"
                 "\"resources\":[\"*\"]},{\"name\":\"mask\",\"effect\":"
                 "\"mask\",\"subjects\":[\"*\"],\"resources\":[\"*\"],"
                 "\"mask\":{\"method\":\"redact\",\"classifications\":["
                 "\"pii.*\"]}}]}}",
                 i % 4 + (i / 4) * 10) < 0)
        return -1;
    rev = gc_apply_docs(ch, (const char *const *)&doc, 1, 30000);
    free(doc);
    return rev;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[n]. */
static double percentile(const double *v, int n, double p)
{
    int rank = (int)(p / 100.0 * n + 0.999999);

    if (rank < 1)
        rank = 1;
    return v[rank > n ? n - 1 : rank - 1];
}

static int run(int n)
{
    cpenv *cp = cpenv_start(NULL);
    rpc_channel *ctl = NULL, *chans[MAX_STREAMS / STREAMS_PER_CHAN] = {0};
    sim *sims = calloc((size_t)n, sizeof(*sims));
    pthread_attr_t attr;
    double lat[CHANGES];
    long rss_before, rss_after;
    int64_t t0;
    int nchan = (n + STREAMS_PER_CHAN - 1) / STREAMS_PER_CHAN, rc = -1;
    int started = 0;

    atomic_store(&fleet.stop, false);
    atomic_store(&fleet.failed, 0);
    fleet.target = 0;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK);
    if (cp == NULL || sims == NULL || (ctl = cpenv_channel(cp)) == NULL)
        goto out;
    if (apply_mesh(ctl) != 0 || apply_change(ctl, 0) < 0)
        goto out;
    usleep(300 * 1000); /* let the first build settle */
    rss_before = ps_rss_kib(testenv_proc_pid(cp->proc));
    for (int c = 0; c < nchan; c++)
        if ((chans[c] = cpenv_channel(cp)) == NULL)
            goto out;
    fleet_target(sims, 0, 1); /* any snapshot */
    t0 = mono_ns();
    for (int i = 0; i < n; i++) {
        sims[i].index = i;
        sims[i].ch = chans[i / STREAMS_PER_CHAN];
        snprintf(sims[i].id, sizeof(sims[i].id), "bench-%d", i);
        snprintf(sims[i].domain, sizeof(sims[i].domain), "d%d", i % DOMAINS);
        if (pthread_create(&sims[i].thread, &attr, sim_main, &sims[i]) != 0) {
            fprintf(stderr, "bench: cannot start stream thread %d of %d\n", i,
                    n);
            goto out;
        }
        sims[i].started = true;
        started++;
    }
    if (fleet_wait(n, CONNECT_WAIT_MS) < 0) {
        fprintf(stderr,
                "bench: only %d of %d streams got a snapshot (%d "
                "failed)\n",
                fleet.reached, n, atomic_load(&fleet.failed));
        goto out;
    }
    printf("bench: convergence_connect_all_n%d %.0f ms\n", n,
           (double)(mono_ns() - t0) / 1e6);
    usleep(500 * 1000); /* status writes of the connects settle */
    rss_after = ps_rss_kib(testenv_proc_pid(cp->proc));

    for (int i = 0; i < CHANGES; i++) {
        int64_t rev, committed, last;

        rev = apply_change(ctl, i + 1);
        committed = mono_ns();
        if (rev <= 0)
            goto out;
        fleet_target(sims, n, rev);
        last = fleet_wait(n, CHANGE_WAIT_MS);
        if (last < 0) {
            fprintf(stderr,
                    "bench: change %d (revision %lld): %d of %d streams "
                    "acked within %d ms (%d failed)\n",
                    i + 1, (long long)rev, fleet.reached, n, CHANGE_WAIT_MS,
                    atomic_load(&fleet.failed));
            goto out;
        }
        lat[i] = last > committed ? (double)(last - committed) / 1e6 : 0.0;
        usleep(50 * 1000); /* separate changes: no coalescing */
    }
    qsort(lat, CHANGES, sizeof(lat[0]), cmp_double);
    printf("bench: convergence_p50_n%d %.1f ms\n", n,
           percentile(lat, CHANGES, 50));
    printf("bench: convergence_p99_n%d %.1f ms\n", n,
           percentile(lat, CHANGES, 99));
    printf("bench: convergence_max_n%d %.1f ms\n", n, lat[CHANGES - 1]);
    if (rss_before > 0 && rss_after > 0)
        printf("bench: controlplane_rss_per_1000_streams_n%d %.1f MiB\n", n,
               (double)(rss_after - rss_before) / 1024.0 * 1000.0 / n);
    printf("bench: controlplane_rss_n%d %.1f MiB\n", n,
           (double)rss_after / 1024.0);
    fflush(stdout);
    rc = 0;
out:
    if (rc != 0 && cp)
        cpenv_dump_log(cp, 3000);
    atomic_store(&fleet.stop, true);
    for (int i = 0; i < n && sims; i++)
        if (sims[i].started)
            pthread_join(sims[i].thread, NULL);
    (void)started;
    for (int c = 0; c < nchan; c++)
        rpc_channel_free(chans[c]);
    rpc_channel_free(ctl);
    cpenv_stop(cp);
    pthread_attr_destroy(&attr);
    free(sims);
    return rc;
}

int main(int argc, char **argv)
{
    const char *list = argc > 1 ? argv[1] : "100,1000";
    char *copy, *save = NULL;
    int status = 0;

    if (argc > 2 || (argc == 2 && (strcmp(argv[1], "-h") == 0 ||
                                   strcmp(argv[1], "--help") == 0))) {
        fprintf(stderr, "usage: %s [N[,N...]]   (default 100,1000)\n", argv[0]);
        return 2;
    }
    copy = strdup(list);
    for (char *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *end;
        long n = strtol(tok, &end, 10);

        if (*end || n < 1 || n > MAX_STREAMS) {
            fprintf(stderr, "bench: bad stream count \"%s\" (1-%d)\n", tok,
                    MAX_STREAMS);
            free(copy);
            return 2;
        }
        if (run((int)n) != 0) {
            fprintf(stderr, "bench: convergence with %ld streams failed\n", n);
            status = 1;
        }
    }
    free(copy);
    return status;
}
