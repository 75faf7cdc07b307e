/*
 * subscriber.c — Distribution.Subscribe, client side (subscriber.h).
 *
 * One thread owns the stream: it receives with a timeout no longer than a
 * keepalive period, so it can send its own keepalives and notice a silent
 * control plane (three periods without a message: the stream is dead)
 * without a second thread.  sc_subscriber_free cancels the stream under
 * the lock that publishes it, which wakes the receive at once; with an
 * access log it first lets the thread send what is left (the receive then
 * waits at most RECV_SLICE_MS, so the thread notices the stop quickly).
 * The thread is the access log's one drain thread: it sends batches on a
 * timer, a few in flight at a time, and spools them while disconnected.
 */
#include "sidecar/subscriber.h"
#include "common/rpc.h"
#include "polis/v1/distribution.pb-c.h"
#include "sidecar/snapshot_store.h"

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_ENDPOINTS     16
#define ENDPOINT_MAX      256
#define SNAPSHOT_MAX_MB   64 /* the control plane's own send limit */
#define ACCESS_WINDOW     4  /* access batches sent and not yet acked */
#define STOP_FLUSH_MS     1500
#define RECV_SLICE_MS     100
#define ACCESS_FULL_BATCH 500   /* records: sc_access_log's default batch */
#define ACK_TIMEOUT_MS    30000 /* then the batches in flight are resent */

struct sc_subscriber {
    char endpoints[MAX_ENDPOINTS][ENDPOINT_MAX];
    size_t nendpoints;
    char id[256], domain[256], address[256], state_dir[1024];
    int keepalive_ms, backoff_min_ms, backoff_max_ms;
    sc_subscriber_report_fn report;
    void *report_ud;
    sc_snapshot_slot *slot;
    unsigned seed; /* jitter; touched by the thread only */

    pthread_t thread;
    bool started;
    pthread_mutex_t lock; /* guards stream, stopping; cond waits on it */
    pthread_cond_t cond;
    rpc_stream *stream;
    bool stopping;
    atomic_int connected;

    metric_series *m_revision, *m_connected, *m_applied, *m_rejected;

    sc_access_log *alog;
    int access_interval_ms;
    bool thread_done; /* under lock */
    metric_series *m_access_sent, *m_spool_errors;
};

static int64_t mono_ms(void)
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

static void report(sc_subscriber *s, sc_subscriber_event ev,
                   const char *endpoint, int64_t revision, const char *digest,
                   const char *detail)
{
    sc_subscriber_report r = {ev, endpoint, revision, digest, detail};

    if (s->report)
        s->report(s->report_ud, &r);
}

static int split_endpoints(sc_subscriber *s, const char *list, polis_error *err)
{
    const char *p = list;

    while (p && *p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);

        while (n > 0 && (*p == ' ')) {
            p++;
            n--;
        }
        while (n > 0 && p[n - 1] == ' ')
            n--;
        if (n > 0) {
            if (s->nendpoints == MAX_ENDPOINTS)
                return polis_error_set(err, POLIS_EINVAL, "--controlplane",
                                       "more than %d endpoints", MAX_ENDPOINTS);
            if (n >= ENDPOINT_MAX)
                return polis_error_set(err, POLIS_EINVAL, "--controlplane",
                                       "endpoint too long");
            memcpy(s->endpoints[s->nendpoints], p, n);
            s->endpoints[s->nendpoints++][n] = '\0';
        }
        p = comma ? comma + 1 : NULL;
    }
    if (s->nendpoints == 0)
        return polis_error_set(err, POLIS_EINVAL, "--controlplane",
                               "no control-plane address (host:port)");
    return 0;
}

int sc_subscriber_new(const sc_subscriber_options *o, sc_snapshot_slot *slot,
                      metrics *m, sc_subscriber **out, polis_error *err)
{
    sc_subscriber *s = calloc(1, sizeof(*s));
    int rc;

    if (s == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    if ((rc = split_endpoints(s, o->endpoints, err)) != 0) {
        free(s);
        return rc;
    }
    snprintf(s->id, sizeof(s->id), "%s", o->id ? o->id : "");
    snprintf(s->domain, sizeof(s->domain), "%s", o->domain ? o->domain : "");
    snprintf(s->address, sizeof(s->address), "%s",
             o->address ? o->address : "");
    snprintf(s->state_dir, sizeof(s->state_dir), "%s",
             o->state_dir ? o->state_dir : ".");
    s->keepalive_ms = o->keepalive_ms > 0 ? o->keepalive_ms : 10000;
    s->backoff_min_ms = o->backoff_min_ms > 0 ? o->backoff_min_ms : 100;
    s->backoff_max_ms = o->backoff_max_ms > 0 ? o->backoff_max_ms : 10000;
    if (s->backoff_max_ms < s->backoff_min_ms)
        s->backoff_max_ms = s->backoff_min_ms;
    s->report = o->report;
    s->report_ud = o->report_ud;
    s->alog = o->access_log;
    s->access_interval_ms =
        o->access_interval_ms > 0 ? o->access_interval_ms : 2000;
    s->slot = slot;
    s->seed = (unsigned)(wall_ms() ^ ((int64_t)getpid() << 16));
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    atomic_init(&s->connected, 0);
    if (m) {
        s->m_revision =
            metrics_gauge(m, "polis_sidecar_snapshot_revision",
                          "Revision of the snapshot in force (0: none)", NULL);
        s->m_connected =
            metrics_gauge(m, "polis_sidecar_connected",
                          "1 while a stream to a control plane is up", NULL);
        s->m_applied =
            metrics_counter(m, "polis_sidecar_snapshots_applied_total",
                            "Snapshots put in force (ACKed)", NULL);
        s->m_rejected =
            metrics_counter(m, "polis_sidecar_snapshots_rejected_total",
                            "Snapshots rejected (NACKed)", NULL);
        metric_set(s->m_revision, 0);
        metric_set(s->m_connected, 0);
        if (s->alog) {
            s->m_access_sent = metrics_counter(
                m, "polis_sidecar_access_reported_total",
                "Access records acknowledged by the control plane", NULL);
            s->m_spool_errors = metrics_counter(
                m, "polis_sidecar_access_spool_errors_total",
                "Failed writes of access records to the spool directory", NULL);
        }
    }
    *out = s;
    return 0;
}

int sc_subscriber_restore(sc_subscriber *s, polis_error *err)
{
    Polis__V1__Snapshot *pb = NULL;
    sc_snapshot *snap = NULL;
    int rc = sc_store_load(s->state_dir, &pb, err);

    if (rc)
        return rc;
    rc = sc_snapshot_compile(pb, s->domain, &snap, err);
    if (rc) {
        polis_error_prefix_where(err, SC_STORE_FILE);
        sc_store_free(pb);
        return rc;
    }
    sc_store_free(pb);
    metric_set(s->m_revision, sc_snapshot_revision(snap));
    sc_snapshot_slot_set(s->slot, snap);
    malloc_trim(0);
    return 0;
}

/* ---- one stream ---- */

static int send_msg(rpc_stream *st, Polis__V1__SidecarMessage *m)
{
    return rpc_stream_send(st, &m->base);
}

static int send_hello(sc_subscriber *s, rpc_stream *st)
{
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    Polis__V1__Hello h = POLIS__V1__HELLO__INIT;
    sc_snapshot *cur = sc_snapshot_slot_get(s->slot);
    char digest[80] = "";
    int rc;

    h.sidecar_id = s->id;
    h.domain = s->domain;
    h.version = (char *)POLIS_VERSION;
    h.address = s->address;
    if (cur) {
        h.applied_revision = sc_snapshot_revision(cur);
        snprintf(digest, sizeof(digest), "%s", sc_snapshot_digest(cur));
    }
    h.applied_digest = digest;
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_HELLO;
    m.hello = &h;
    rc = send_msg(st, &m);
    sc_snapshot_unref(cur);
    return rc;
}

static int send_keepalive(rpc_stream *st)
{
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    Polis__V1__Keepalive k = POLIS__V1__KEEPALIVE__INIT;

    k.time_unix_ms = wall_ms();
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_KEEPALIVE;
    m.keepalive = &k;
    return send_msg(st, &m);
}

/* Compile, save, swap, ACK; or NACK and keep what is in force. */
static int apply_snapshot(sc_subscriber *s, rpc_stream *st,
                          const char *endpoint, const Polis__V1__Snapshot *pb)
{
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    Polis__V1__Ack ack = POLIS__V1__ACK__INIT;
    Polis__V1__Nack nack = POLIS__V1__NACK__INIT;
    const char *digest = pb->digest ? pb->digest : "";
    polis_error err = {0};
    sc_snapshot *snap = NULL;
    char text[1100];

    if (sc_snapshot_compile(pb, s->domain, &snap, &err) != 0) {
        polis_error_format(&err, text, sizeof(text));
        metric_add(s->m_rejected, 1);
        report(s, SC_SUB_REJECTED, endpoint, pb->revision, digest, text);
        nack.revision = pb->revision;
        nack.digest = (char *)digest;
        nack.error = text;
        m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_NACK;
        m.nack = &nack;
        return send_msg(st, &m);
    }
    /* Disk before force: an ACKed snapshot must survive a restart.  A
     * failed write still puts it in force (enforcing the newest rules
     * matters more than the disk copy) and is reported loudly. */
    if (sc_store_save(s->state_dir, pb, &err) != 0)
        report(s, SC_SUB_SAVE_FAILED, endpoint, pb->revision, digest,
               polis_error_format(&err, text, sizeof(text)));
    sc_snapshot_slot_set(s->slot, snap);
    /* The compile's parse trees are freed by now: hand the pages back, or
     * a large snapshot's transient peak stays in the resident size. */
    malloc_trim(0);
    metric_set(s->m_revision, pb->revision);
    metric_add(s->m_applied, 1);
    report(s, SC_SUB_APPLIED, endpoint, pb->revision, digest, NULL);
    ack.revision = pb->revision;
    ack.digest = (char *)digest;
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_ACK;
    m.ack = &ack;
    return send_msg(st, &m);
}

/* Access batches of one stream. */
typedef struct access_flow {
    size_t inflight;     /* sent, not yet acked */
    bool backlog;        /* the window filled: more may be waiting */
    int64_t progress_ms; /* last send into an empty window, or last ack */
} access_flow;

static int send_access_batch(rpc_stream *st, const sc_access_batch *b)
{
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    Polis__V1__AccessReport rep = POLIS__V1__ACCESS_REPORT__INIT;
    Polis__V1__AccessRecord *rows = calloc(b->count, sizeof(*rows));
    Polis__V1__AccessRecord **ptrs = calloc(b->count, sizeof(*ptrs));
    int rc;

    if (rows == NULL || ptrs == NULL) {
        free(rows);
        free(ptrs);
        return POLIS_ENOMEM;
    }
    for (size_t i = 0; i < b->count; i++) {
        const sc_access *a = &b->records[i];
        Polis__V1__AccessRecord *r = &rows[i];

        polis__v1__access_record__init(r);
        r->time_unix_ms = a->time_ms;
        r->principal = (char *)a->principal;
        r->product = (char *)a->product;
        r->port = (char *)a->port;
        r->purpose = (char *)a->purpose;
        r->decision = (char *)a->decision;
        r->rule = (char *)a->rule;
        r->http_status = a->http_status;
        r->rows = a->rows;
        r->bytes = a->bytes;
        r->latency_us = a->latency_us;
        ptrs[i] = r;
    }
    rep.records = ptrs;
    rep.n_records = b->count;
    rep.batch = b->id;
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_ACCESS;
    m.access = &rep;
    rc = send_msg(st, &m);
    free(ptrs);
    free(rows);
    return rc;
}

/* Send batches until the window is full or nothing is waiting. */
static int send_access(sc_subscriber *s, rpc_stream *st, access_flow *f)
{
    while (f->inflight < ACCESS_WINDOW) {
        sc_access_batch b;
        polis_error err = {0};

        if (sc_access_log_take(s->alog, 0, &b, &err) != 0 || b.count == 0) {
            f->backlog = false;
            return 0;
        }
        if (send_access_batch(st, &b) != 0)
            return -1;
        if (f->inflight++ == 0)
            f->progress_ms = mono_ms();
    }
    f->backlog = true;
    return 0;
}

/* An AccessAck: forget the batch, and keep a backlog moving without
 * waiting for the next tick. */
static int on_access_ack(sc_subscriber *s, rpc_stream *st, access_flow *f,
                         uint64_t batch)
{
    sc_access_log_stats before, after;

    sc_access_log_stats_get(s->alog, &before);
    sc_access_log_ack(s->alog, batch);
    sc_access_log_stats_get(s->alog, &after);
    if (after.acked == before.acked)
        return 0; /* not one of ours in flight */
    metric_add(s->m_access_sent, after.acked - before.acked);
    if (f->inflight > 0)
        f->inflight--;
    f->progress_ms = mono_ms();
    return f->backlog ? send_access(s, st, f) : 0;
}

/* Whether a whole batch waits beyond those in flight: at thousands of
 * requests a second the memory bound would be reached before the next
 * tick, so the records go as soon as a batch is full. */
static bool access_batch_waiting(sc_subscriber *s, const access_flow *f)
{
    sc_access_log_stats st;

    sc_access_log_stats_get(s->alog, &st);
    return st.pending >= (uint64_t)(f->inflight + 1) * ACCESS_FULL_BATCH;
}

/* Disconnected: what was in flight goes back, everything goes to disk. */
static void spool_access(sc_subscriber *s)
{
    polis_error err = {0};

    if (s->alog == NULL)
        return;
    sc_access_log_requeue(s->alog);
    if (sc_access_log_spool(s->alog, &err) != 0)
        metric_add(s->m_spool_errors, 1);
}

static bool stopping(sc_subscriber *s)
{
    bool stop;

    pthread_mutex_lock(&s->lock);
    stop = s->stopping;
    pthread_mutex_unlock(&s->lock);
    return stop;
}

static void set_connected(sc_subscriber *s, int up)
{
    atomic_store(&s->connected, up);
    metric_set(s->m_connected, up);
}

/* Run one stream until it ends; *heard is set once the control plane
 * answered anything (then the backoff starts over). */
static void session(sc_subscriber *s, const char *endpoint, bool *heard)
{
    rpc_channel_options co = {0};
    rpc_channel *ch = NULL;
    rpc_stream *st = NULL;
    polis_error err = {0};
    char why[RPC_STATUS_MSG_MAX + 300] = "";
    int64_t last_heard, last_sent, now, next_flush, stop_by = 0;
    access_flow flow = {0};
    int rc;

    co.max_message_bytes = (size_t)SNAPSHOT_MAX_MB * 1024 * 1024;
    if (rpc_channel_new(endpoint, &co, &ch, &err) != 0 ||
        rpc_stream_open(ch, &polis__v1__distribution__descriptor, "Subscribe",
                        NULL, 0, 0, &st, &err) != 0) {
        polis_error_format(&err, why, sizeof(why));
        goto out;
    }
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        goto out;
    }
    s->stream = st;
    pthread_mutex_unlock(&s->lock);

    if (send_hello(s, st) != 0) {
        snprintf(why, sizeof(why), "cannot send hello");
        goto ended;
    }
    set_connected(s, 1);
    report(s, SC_SUB_CONNECTED, endpoint, 0, NULL, NULL);
    last_heard = last_sent = mono_ms();
    next_flush = last_sent; /* replay what waited at once */
    for (;;) {
        ProtobufCMessage *msg = NULL;
        int64_t wait = last_sent + s->keepalive_ms - mono_ms();

        if (s->alog) {
            int64_t to_flush = next_flush - mono_ms();

            if (wait > to_flush)
                wait = to_flush;
            if (wait > RECV_SLICE_MS)
                wait = RECV_SLICE_MS;
        }
        if (wait < 10)
            wait = 10;
        rc = rpc_stream_recv(st, &msg, (int)wait);
        now = mono_ms();
        if (rc == 1) {
            const Polis__V1__ControlMessage *cm =
                (const Polis__V1__ControlMessage *)msg;

            last_heard = now;
            *heard = true;
            if (cm->msg_case == POLIS__V1__CONTROL_MESSAGE__MSG_SNAPSHOT &&
                cm->snapshot && apply_snapshot(s, st, endpoint, cm->snapshot))
                snprintf(why, sizeof(why), "cannot send ACK/NACK");
            if (cm->msg_case == POLIS__V1__CONTROL_MESSAGE__MSG_ACCESS_ACK &&
                cm->access_ack && s->alog &&
                on_access_ack(s, st, &flow, cm->access_ack->batch) != 0)
                snprintf(why, sizeof(why), "cannot send access records");
            protobuf_c_message_free_unpacked(msg, NULL);
            if (why[0])
                break;
            now = mono_ms();
        } else if (rc == 0) {
            rpc_status status = {0};
            rpc_stream_status(st, &status);
            snprintf(why, sizeof(why), "stream ended: %s%s%s",
                     rpc_status_name(status.code),
                     status.message[0] ? ": " : "", status.message);
            break;
        } else if (rc != POLIS_ETIMEDOUT) {
            snprintf(why, sizeof(why), "receive failed: %s",
                     polis_strerror(rc));
            break;
        }
        if (stopping(s)) {
            /* Hand over what is in memory before going; the rest is
             * spooled by the caller. */
            if (s->alog && stop_by == 0) {
                stop_by = now + STOP_FLUSH_MS;
                if (send_access(s, st, &flow) != 0)
                    stop_by = now;
            }
            if (s->alog == NULL || now >= stop_by ||
                (flow.inflight == 0 && !flow.backlog)) {
                snprintf(why, sizeof(why), "shutting down");
                break;
            }
            continue;
        }
        if (s->alog && flow.inflight > 0 &&
            now - flow.progress_ms > ACK_TIMEOUT_MS) {
            /* The control plane could not store them (etcd away, queue
             * full) and said nothing: send them again; it dedups. */
            sc_access_log_requeue(s->alog);
            flow.inflight = 0;
            flow.backlog = false;
        }
        if (s->alog && now < next_flush && !flow.backlog &&
            flow.inflight < ACCESS_WINDOW && access_batch_waiting(s, &flow))
            next_flush = now; /* a busy port: do not wait for the tick */
        if (s->alog && now >= next_flush) {
            if (send_access(s, st, &flow) != 0) {
                snprintf(why, sizeof(why), "cannot send access records");
                break;
            }
            next_flush = now + s->access_interval_ms;
        }
        if (now - last_heard > 3 * (int64_t)s->keepalive_ms) {
            snprintf(why, sizeof(why),
                     "no message from the control plane for three keepalive "
                     "periods (%d ms each)",
                     s->keepalive_ms);
            break;
        }
        if (now - last_sent >= s->keepalive_ms) {
            if (send_keepalive(st) != 0) {
                snprintf(why, sizeof(why), "cannot send a keepalive");
                break;
            }
            last_sent = now;
        }
    }
ended:
    set_connected(s, 0);
out:
    pthread_mutex_lock(&s->lock);
    s->stream = NULL;
    pthread_mutex_unlock(&s->lock);
    if (st)
        rpc_stream_cancel(st);
    rpc_stream_free(st);
    rpc_channel_free(ch);
    if (!stopping(s))
        report(s, SC_SUB_DISCONNECTED, endpoint, 0, NULL,
               why[0] ? why : "stream ended");
}

/* backoff +/- 20%. */
static int jittered(sc_subscriber *s, int backoff_ms)
{
    double f = 0.8 + 0.4 * ((double)rand_r(&s->seed) / RAND_MAX);

    return (int)(backoff_ms * f);
}

/* Sleep up to ms unless stopping; true when stopping. */
static bool pause_ms(sc_subscriber *s, int ms)
{
    struct timespec until;
    bool stop;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    while (!s->stopping &&
           pthread_cond_timedwait(&s->cond, &s->lock, &until) == 0)
        ;
    stop = s->stopping;
    pthread_mutex_unlock(&s->lock);
    return stop;
}

/* The backoff, spooling access records every access interval. */
static bool pause_spooling(sc_subscriber *s, int ms)
{
    while (ms > 0) {
        int slice =
            s->alog && ms > s->access_interval_ms ? s->access_interval_ms : ms;

        if (pause_ms(s, slice))
            return true;
        spool_access(s);
        ms -= slice;
    }
    return false;
}

static void *subscriber_thread(void *arg)
{
    sc_subscriber *s = arg;
    int backoff = s->backoff_min_ms;
    size_t next = 0;

    while (!stopping(s)) {
        bool heard = false;

        session(s, s->endpoints[next], &heard);
        spool_access(s);
        next = (next + 1) % s->nendpoints;
        if (heard)
            backoff = s->backoff_min_ms;
        if (pause_spooling(s, jittered(s, backoff)))
            break;
        backoff =
            backoff * 2 > s->backoff_max_ms ? s->backoff_max_ms : backoff * 2;
    }
    spool_access(s);
    pthread_mutex_lock(&s->lock);
    s->thread_done = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int sc_subscriber_start(sc_subscriber *s, polis_error *err)
{
    if (pthread_create(&s->thread, NULL, subscriber_thread, s) != 0)
        return polis_error_set(err, POLIS_EINTERNAL, NULL,
                               "cannot start the subscriber thread");
    s->started = true;
    return 0;
}

int sc_subscriber_connected(const sc_subscriber *s)
{
    return atomic_load(&((sc_subscriber *)s)->connected);
}

void sc_subscriber_free(sc_subscriber *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->cond);
    if (s->started && s->alog && atomic_load(&s->connected)) {
        /* Let the thread send the last access records (bounded). */
        struct timespec until;

        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (STOP_FLUSH_MS + 1000) / 1000;
        until.tv_nsec += (long)((STOP_FLUSH_MS + 1000) % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!s->thread_done &&
               pthread_cond_timedwait(&s->cond, &s->lock, &until) == 0)
            ;
    }
    if (s->stream)
        rpc_stream_cancel(s->stream);
    pthread_mutex_unlock(&s->lock);
    if (s->started)
        pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}
