/*
 * rpc.c — the gRPC core layer (rpc.h) on the gRPC Core C API 1.51: an
 * asynchronous server where every call is a small state machine on one
 * completion queue served by a few worker threads, and a blocking client on
 * per-call pluck queues.  Threading, ownership and pitfalls:
 * docs/internals/rpc.md.
 */
#include "common/rpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RPC_PATH_MAX           512
#define RPC_PEM_MAX            (1024 * 1024)
#define RPC_DEFAULT_WORKERS    2
#define RPC_DEFAULT_SEND_QUEUE 1024
/* Outstanding grpc_server_request_*call per method: calls that arrive while
 * none is outstanding wait in gRPC's bounded pending list, so keep a few. */
#define RPC_REQUESTS_PER_METHOD 4

/* ============================ status mapping ============================ */

int rpc_status_from_polis(int polis_code)
{
    switch (polis_code) {
    case POLIS_OK:
        return RPC_OK;
    case POLIS_EINVAL:
    case POLIS_EPARSE:
        return RPC_INVALID_ARGUMENT;
    case POLIS_ENOTFOUND:
        return RPC_NOT_FOUND;
    case POLIS_ECONFLICT:
        return RPC_ABORTED;
    case POLIS_EEXIST:
        return RPC_ALREADY_EXISTS;
    case POLIS_EUNAVAIL:
        return RPC_UNAVAILABLE;
    case POLIS_ETIMEDOUT:
        return RPC_DEADLINE_EXCEEDED;
    case POLIS_ETOOBIG:
        return RPC_RESOURCE_EXHAUSTED;
    case POLIS_EDENIED:
        return RPC_PERMISSION_DENIED;
    case POLIS_EUNAUTH:
        return RPC_UNAUTHENTICATED;
    case POLIS_ECANCELED:
        return RPC_CANCELLED;
    case POLIS_EUNIMPL:
        return RPC_UNIMPLEMENTED;
    default:
        return RPC_INTERNAL;
    }
}

int rpc_status_to_polis(int status)
{
    switch (status) {
    case RPC_OK:
        return POLIS_OK;
    case RPC_CANCELLED:
        return POLIS_ECANCELED;
    case RPC_INVALID_ARGUMENT:
    case RPC_OUT_OF_RANGE:
        return POLIS_EINVAL;
    case RPC_DEADLINE_EXCEEDED:
        return POLIS_ETIMEDOUT;
    case RPC_NOT_FOUND:
        return POLIS_ENOTFOUND;
    case RPC_ALREADY_EXISTS:
        return POLIS_EEXIST;
    case RPC_PERMISSION_DENIED:
        return POLIS_EDENIED;
    case RPC_RESOURCE_EXHAUSTED:
        return POLIS_ETOOBIG;
    /* Both say "the state is not what the request assumed". */
    case RPC_FAILED_PRECONDITION:
    case RPC_ABORTED:
        return POLIS_ECONFLICT;
    case RPC_UNIMPLEMENTED:
        return POLIS_EUNIMPL;
    case RPC_UNAVAILABLE:
        return POLIS_EUNAVAIL;
    case RPC_UNAUTHENTICATED:
        return POLIS_EUNAUTH;
    case RPC_DATA_LOSS:
        return POLIS_EIO;
    default:
        return POLIS_EINTERNAL;
    }
}

static const char *const status_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *rpc_status_name(int status)
{
    if (status < 0 ||
        (size_t)status >= sizeof(status_names) / sizeof(status_names[0]))
        return "UNKNOWN";
    return status_names[status];
}

/* ================================ helpers =============================== */

static void status_set(rpc_status *st, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void status_set(rpc_status *st, int code, const char *fmt, ...)
{
    va_list ap;

    if (st == NULL)
        return;
    st->code = code;
    va_start(ap, fmt);
    vsnprintf(st->message, sizeof(st->message), fmt, ap);
    va_end(ap);
}

static void copy_slice(char *dst, size_t cap, grpc_slice s)
{
    size_t n = GRPC_SLICE_LENGTH(s);

    if (n >= cap)
        n = cap - 1;
    memcpy(dst, GRPC_SLICE_START_PTR(s), n);
    dst[n] = '\0';
}

static char *slice_to_cstr(grpc_slice s)
{
    size_t n = GRPC_SLICE_LENGTH(s);
    char *p = malloc(n + 1);

    if (p) {
        memcpy(p, GRPC_SLICE_START_PTR(s), n);
        p[n] = '\0';
    }
    return p;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* A pluck/next deadline timeout_ms from now; negative: forever. */
static gpr_timespec wait_deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

/* Pack into a byte buffer; POLIS_ETOOBIG over `max`. */
static int pack_message(const ProtobufCMessage *msg, size_t max,
                        grpc_byte_buffer **out)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice slice;

    *out = NULL;
    if (len > max)
        return POLIS_ETOOBIG;
    slice = grpc_slice_malloc(len);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    *out = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return *out ? 0 : POLIS_ENOMEM;
}

/* Decode (and decompress) a received buffer; NULL when it does not parse. */
static ProtobufCMessage *unpack_message(const ProtobufCMessageDescriptor *d,
                                        grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader reader;
    grpc_slice all;
    ProtobufCMessage *msg;

    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    msg = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(all),
                                    GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    return msg;
}

/* Read a PEM file whole, bounded; caller frees. */
static int read_pem(const char *path, char **out, polis_error *err)
{
    FILE *f;
    char *buf = NULL;
    size_t len = 0, n;
    int rc = 0;

    *out = NULL;
    if (path == NULL)
        return 0;
    f = fopen(path, "rb");
    if (f == NULL)
        return polis_error_set(err, POLIS_EIO, path, "cannot open: %s",
                               strerror(errno));
    buf = malloc(RPC_PEM_MAX + 1);
    if (buf == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, path, NULL);
        goto out;
    }
    while ((n = fread(buf + len, 1, RPC_PEM_MAX + 1 - len, f)) > 0) {
        len += n;
        if (len > RPC_PEM_MAX) {
            rc = polis_error_set(err, POLIS_ETOOBIG, path,
                                 "over %d bytes, not a PEM file", RPC_PEM_MAX);
            goto out;
        }
    }
    if (ferror(f)) {
        rc = polis_error_set(err, POLIS_EIO, path, "read error");
        goto out;
    }
    buf[len] = '\0';
    *out = buf;
    buf = NULL;
out:
    free(buf);
    fclose(f);
    return rc;
}

static bool creds_empty(const rpc_creds *c)
{
    return c->ca_file == NULL && c->cert_file == NULL && c->key_file == NULL;
}

static void fill_msg_args(grpc_arg args[2], size_t max)
{
    int lim = max > INT_MAX ? INT_MAX : (int)max;

    memset(args, 0, 2 * sizeof(args[0]));
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = lim;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = lim;
}

/* ================================ server ================================ */

/*
 * Every completion-queue tag points at one of these kinds as its first
 * member, so the worker can dispatch on it.
 */
enum tag_kind {
    TAG_REQUEST,
    TAG_SHUTDOWN,
    TAG_CALL_CLOSE,
    TAG_CALL_RECV,
    TAG_CALL_SEND,
    TAG_CALL_STATUS,
};

struct call_tag {
    enum tag_kind kind;
    rpc_call *call;
};

struct method_entry {
    char *path; /* "/polis.v1.Governance/Apply" */
    const ProtobufCMethodDescriptor *desc;
    rpc_handler handler;
    void *ud;
    void *registered; /* grpc_server_register_method's handle */
};

/* One outstanding grpc_server_request_(registered_)call. */
struct request {
    enum tag_kind kind;          /* TAG_REQUEST */
    struct method_entry *method; /* NULL: the catch-all for unknown paths */
    grpc_call *gcall;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_call_details details;
};

struct rpc_server {
    char *listen;
    char *ca_file, *cert_file, *key_file;
    size_t max_msg;
    size_t max_queue;
    int n_workers;

    grpc_server *server;
    grpc_completion_queue *cq;
    struct method_entry **methods;
    size_t n_methods;
    pthread_t *workers;
    int n_running;
    int port;

    enum tag_kind shutdown_tag; /* TAG_SHUTDOWN */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool started;
    bool shutting_down; /* no new requests */
    bool shutdown_begun;
    bool shutdown_done; /* the shutdown tag came back */

    /* Held for reading around every grpc_call_start_batch, for writing
     * when the queue is shut down: a batch on a shut-down queue aborts. */
    pthread_rwlock_t cq_lock;
    bool cq_dead;
};

struct rpc_call {
    pthread_mutex_t mu;
    atomic_int refs; /* lifecycle + in-flight batches + application */
    int ops;         /* batches in flight */

    rpc_server *srv;                   /* only touched while !over */
    const struct method_entry *method; /* NULL: answered UNIMPLEMENTED */
    char *method_name;
    grpc_call *gcall;
    size_t max_msg;
    size_t max_queue;

    struct call_tag t_close, t_recv, t_send, t_status;
    int cancelled; /* RECV_CLOSE_ON_SERVER's answer */
    grpc_byte_buffer *recv_bb;
    grpc_byte_buffer *send_bb; /* in flight, destroyed on completion */
    grpc_slice details;        /* kept until the status batch completes */
    bool details_live;

    grpc_byte_buffer **queue; /* ring, grows up to max_queue */
    size_t q_cap, q_head, q_len;

    bool md_sent;
    bool sending; /* a SEND_MESSAGE or SEND_STATUS batch is in flight */
    bool finish_req;
    bool status_started;
    bool broken; /* a batch failed: the call is dying */
    bool over;   /* RECV_CLOSE_ON_SERVER completed */
    bool handler_started;
    bool in_cb;
    bool end_pending;
    bool end_done;
    bool released; /* grpc_call_unref done */
    int finish_code;
    char *finish_msg;
    char *status_msg; /* rpc_call_set_status_message */
    int end_status;

    rpc_metadata *md;
    size_t n_md;
    char *md_block;
    char *peer;
    gpr_timespec deadline;
    void *data;
};

static void server_request(rpc_server *srv, struct method_entry *m);

/* --------------------------- call life cycle --------------------------- */

static void call_destroy(rpc_call *c)
{
    for (size_t i = 0; i < c->q_len; i++)
        grpc_byte_buffer_destroy(c->queue[(c->q_head + i) % c->q_cap]);
    free(c->queue);
    if (c->gcall && !c->released)
        grpc_call_unref(c->gcall);
    free(c->method_name);
    free(c->finish_msg);
    free(c->status_msg);
    free(c->md);
    free(c->md_block);
    free(c->peer);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void rpc_call_ref(rpc_call *call)
{
    atomic_fetch_add(&call->refs, 1);
}

void rpc_call_unref(rpc_call *call)
{
    if (call && atomic_fetch_sub(&call->refs, 1) == 1)
        call_destroy(call);
}

static void queue_drop_locked(rpc_call *c)
{
    while (c->q_len > 0) {
        grpc_byte_buffer_destroy(c->queue[c->q_head]);
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
    }
}

static bool queue_push_locked(rpc_call *c, grpc_byte_buffer *bb)
{
    if (c->q_len == c->q_cap) {
        size_t cap = c->q_cap ? c->q_cap * 2 : 8;
        grpc_byte_buffer **q;

        if (cap > c->max_queue)
            cap = c->max_queue;
        q = malloc(cap * sizeof(*q));
        if (q == NULL)
            return false;
        for (size_t i = 0; i < c->q_len; i++)
            q[i] = c->queue[(c->q_head + i) % c->q_cap];
        free(c->queue);
        c->queue = q;
        c->q_cap = cap;
        c->q_head = 0;
    }
    c->queue[(c->q_head + c->q_len) % c->q_cap] = bb;
    c->q_len++;
    return true;
}

static grpc_byte_buffer *queue_pop_locked(rpc_call *c)
{
    grpc_byte_buffer *bb = c->queue[c->q_head];

    c->q_head = (c->q_head + 1) % c->q_cap;
    c->q_len--;
    return bb;
}

/* Each batch in flight holds a reference and counts in `ops`. */
static bool call_start_batch_locked(rpc_call *c, const grpc_op *ops, size_t n,
                                    struct call_tag *tag)
{
    rpc_server *srv = c->srv;
    bool ok = false;

    pthread_rwlock_rdlock(&srv->cq_lock);
    if (!srv->cq_dead &&
        grpc_call_start_batch(c->gcall, ops, n, tag, NULL) == GRPC_CALL_OK)
        ok = true;
    pthread_rwlock_unlock(&srv->cq_lock);
    if (ok) {
        c->ops++;
        atomic_fetch_add(&c->refs, 1);
    }
    return ok;
}

/* A batch completed: drop its reference, and let go of the gRPC call once
 * the call is over and nothing else is in flight. */
static void call_op_done(rpc_call *c)
{
    grpc_call *release = NULL;

    pthread_mutex_lock(&c->mu);
    c->ops--;
    if (c->over && c->ops == 0 && !c->released) {
        c->released = true;
        release = c->gcall;
    }
    pthread_mutex_unlock(&c->mu);
    if (release)
        grpc_call_unref(release);
    rpc_call_unref(c);
}

/*
 * Start the next send batch if none is in flight: the next queued message,
 * or, once the queue is empty and a finish was asked for, the status.
 * Initial metadata rides with whichever goes first.
 */
static void call_pump_locked(rpc_call *c)
{
    grpc_op ops[3];
    size_t n = 0;

    if (c->sending || c->over || c->status_started || c->broken)
        return;
    if (c->q_len == 0 && !c->finish_req)
        return;
    /* A unary handler's answer waits until the handler returns its
     * status, so message and status go out in one batch: one completion
     * and one wake-up fewer per call (measured: ~13 us of CPU per Check). */
    if (c->in_cb && !c->finish_req && c->method &&
        c->method->handler.kind == RPC_KIND_UNARY)
        return;
    memset(ops, 0, sizeof(ops));
    if (!c->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    if (c->q_len > 0) {
        grpc_byte_buffer *bb = queue_pop_locked(c);

        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = bb;
        n++;
        if (c->q_len == 0 && c->finish_req) {
            c->details = grpc_slice_from_copied_string(
                c->finish_msg ? c->finish_msg : "");
            c->details_live = true;
            ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
            ops[n].data.send_status_from_server.status =
                (grpc_status_code)c->finish_code;
            ops[n].data.send_status_from_server.status_details =
                GRPC_SLICE_LENGTH(c->details) ? &c->details : NULL;
            n++;
            if (call_start_batch_locked(c, ops, n, &c->t_status)) {
                c->send_bb = bb;
                c->sending = true;
                c->status_started = true;
                c->md_sent = true;
            } else {
                grpc_byte_buffer_destroy(bb);
                grpc_slice_unref(c->details);
                c->details_live = false;
                c->broken = true;
            }
            return;
        }
        if (call_start_batch_locked(c, ops, n, &c->t_send)) {
            c->send_bb = bb;
            c->sending = true;
            c->md_sent = true;
        } else {
            grpc_byte_buffer_destroy(bb);
            c->broken = true;
            queue_drop_locked(c);
        }
        return;
    }
    c->details =
        grpc_slice_from_copied_string(c->finish_msg ? c->finish_msg : "");
    c->details_live = true;
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status =
        (grpc_status_code)c->finish_code;
    ops[n].data.send_status_from_server.status_details =
        GRPC_SLICE_LENGTH(c->details) ? &c->details : NULL;
    n++;
    if (call_start_batch_locked(c, ops, n, &c->t_status)) {
        c->sending = true;
        c->status_started = true;
        c->md_sent = true;
    } else {
        grpc_slice_unref(c->details);
        c->details_live = false;
        c->broken = true;
    }
}

static void call_finish_locked(rpc_call *c, int status, const char *message)
{
    if (c->over || c->finish_req)
        return;
    if (status < RPC_OK || status > RPC_UNAUTHENTICATED)
        status = RPC_UNKNOWN;
    c->finish_req = true;
    c->finish_code = status;
    c->finish_msg = dup_or_null(message);
    call_pump_locked(c);
}

void rpc_call_finish(rpc_call *call, int status, const char *message)
{
    pthread_mutex_lock(&call->mu);
    call_finish_locked(call, status, message);
    pthread_mutex_unlock(&call->mu);
}

/* A callback returned: finish with its status, or keep going. */
static void call_apply_result(rpc_call *c, int rc)
{
    if (rc < 0)
        return;
    pthread_mutex_lock(&c->mu);
    call_finish_locked(c, rc, c->status_msg);
    pthread_mutex_unlock(&c->mu);
}

static void call_start_recv(rpc_call *c)
{
    grpc_op op;

    pthread_mutex_lock(&c->mu);
    if (!c->over && !c->finish_req && !c->broken) {
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &c->recv_bb;
        if (!call_start_batch_locked(c, &op, 1, &c->t_recv))
            c->broken = true;
    }
    pthread_mutex_unlock(&c->mu);
}

static void call_deliver_end(rpc_call *c)
{
    const struct method_entry *m = c->method;

    if (m && c->handler_started && m->handler.on_end)
        m->handler.on_end(c, c->end_status, m->ud);
    rpc_call_unref(c); /* the life-cycle reference */
}

/*
 * Callbacks of one call are serialised: the receive chain runs one at a
 * time by construction, and only on_end (from RECV_CLOSE_ON_SERVER) can
 * race with it; when it does, it is left to the running callback's thread.
 */
static bool call_cb_enter(rpc_call *c)
{
    bool ok;

    pthread_mutex_lock(&c->mu);
    ok = !c->over;
    if (ok)
        c->in_cb = true;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

static void call_cb_leave(rpc_call *c)
{
    bool deliver = false;

    pthread_mutex_lock(&c->mu);
    c->in_cb = false;
    if (c->end_pending && !c->end_done) {
        c->end_done = true;
        deliver = true;
    }
    pthread_mutex_unlock(&c->mu);
    if (deliver)
        call_deliver_end(c);
}

static void on_call_close(rpc_call *c, int success)
{
    bool deliver = false;

    pthread_mutex_lock(&c->mu);
    c->over = true;
    if (success && !c->cancelled && c->status_started)
        c->end_status = c->finish_code;
    else
        c->end_status = RPC_CANCELLED;
    queue_drop_locked(c);
    if (c->in_cb) {
        c->end_pending = true;
    } else if (!c->end_done) {
        c->end_done = true;
        deliver = true;
    }
    pthread_mutex_unlock(&c->mu);
    if (deliver)
        call_deliver_end(c);
    call_op_done(c);
}

static void on_call_send(rpc_call *c, int success)
{
    pthread_mutex_lock(&c->mu);
    grpc_byte_buffer_destroy(c->send_bb);
    c->send_bb = NULL;
    c->sending = false;
    if (success) {
        call_pump_locked(c);
    } else {
        c->broken = true;
        queue_drop_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
    call_op_done(c);
}

static void on_call_status(rpc_call *c, int success)
{
    pthread_mutex_lock(&c->mu);
    c->sending = false;
    if (c->send_bb) {
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
    }
    if (c->details_live) {
        grpc_slice_unref(c->details);
        c->details_live = false;
    }
    pthread_mutex_unlock(&c->mu);
    call_op_done(c);
}

static void on_call_recv(rpc_call *c, int success)
{
    const struct method_entry *m = c->method;
    grpc_byte_buffer *bb;
    int rc = RPC_CONTINUE;

    pthread_mutex_lock(&c->mu);
    bb = c->recv_bb;
    c->recv_bb = NULL;
    pthread_mutex_unlock(&c->mu);
    if (!success) {
        /* The call is going away; RECV_CLOSE_ON_SERVER will say so. */
        if (bb)
            grpc_byte_buffer_destroy(bb);
    } else if (bb == NULL) {
        if (m->handler.on_half_close && call_cb_enter(c)) {
            rc = m->handler.on_half_close(c, m->ud);
            call_cb_leave(c);
        }
        call_apply_result(c, rc);
    } else {
        ProtobufCMessage *msg = unpack_message(m->desc->input, bb);

        grpc_byte_buffer_destroy(bb);
        if (msg == NULL) {
            rpc_call_finish(c, RPC_INVALID_ARGUMENT,
                            "cannot parse the request message");
        } else {
            if (m->handler.on_message && call_cb_enter(c)) {
                rc = m->handler.on_message(c, msg, m->ud);
                call_cb_leave(c);
            }
            protobuf_c_message_free_unpacked(msg, NULL);
            if (rc == RPC_CONTINUE)
                call_start_recv(c);
            else
                call_apply_result(c, rc);
        }
    }
    call_op_done(c);
}

/* Copy the request metadata into one block owned by the call. */
static int call_copy_metadata(rpc_call *c, const grpc_metadata_array *md)
{
    size_t total = 0;
    char *p;

    if (md->count == 0)
        return 0;
    for (size_t i = 0; i < md->count; i++)
        total += GRPC_SLICE_LENGTH(md->metadata[i].key) +
                 GRPC_SLICE_LENGTH(md->metadata[i].value) + 2;
    c->md = calloc(md->count, sizeof(*c->md));
    c->md_block = malloc(total);
    if (c->md == NULL || c->md_block == NULL)
        return POLIS_ENOMEM;
    p = c->md_block;
    for (size_t i = 0; i < md->count; i++) {
        size_t kl = GRPC_SLICE_LENGTH(md->metadata[i].key);
        size_t vl = GRPC_SLICE_LENGTH(md->metadata[i].value);

        memcpy(p, GRPC_SLICE_START_PTR(md->metadata[i].key), kl);
        p[kl] = '\0';
        c->md[i].key = p;
        p += kl + 1;
        memcpy(p, GRPC_SLICE_START_PTR(md->metadata[i].value), vl);
        p[vl] = '\0';
        c->md[i].value = p;
        p += vl + 1;
    }
    c->n_md = md->count;
    return 0;
}

static rpc_call *call_new(rpc_server *srv, struct request *rq)
{
    rpc_call *c = calloc(1, sizeof(*c));
    char *peer;

    if (c == NULL)
        return NULL;
    pthread_mutex_init(&c->mu, NULL);
    atomic_init(&c->refs, 1); /* the life-cycle reference */
    c->srv = srv;
    c->method = rq->method;
    c->gcall = rq->gcall;
    c->max_msg = srv->max_msg;
    c->max_queue = srv->max_queue;
    c->t_close = (struct call_tag){TAG_CALL_CLOSE, c};
    c->t_recv = (struct call_tag){TAG_CALL_RECV, c};
    c->t_send = (struct call_tag){TAG_CALL_SEND, c};
    c->t_status = (struct call_tag){TAG_CALL_STATUS, c};
    if (rq->method) {
        c->method_name = strdup(rq->method->desc->name);
        c->deadline = rq->deadline;
    } else {
        /* "/pkg.Service/Method" → "Method" */
        char *path = slice_to_cstr(rq->details.method);
        char *slash = path ? strrchr(path, '/') : NULL;

        c->method_name = strdup(slash ? slash + 1 : "");
        free(path);
        c->deadline = rq->details.deadline;
    }
    peer = grpc_call_get_peer(c->gcall);
    c->peer = strdup(peer ? peer : "");
    gpr_free(peer);
    if (c->method_name == NULL || c->peer == NULL ||
        call_copy_metadata(c, &rq->md) != 0) {
        c->gcall = NULL; /* still the request's */
        call_destroy(c);
        return NULL;
    }
    rq->gcall = NULL;
    return c;
}

/* A call arrived: watch for its end, then hand it to its handler. */
static void call_begin(rpc_call *c, grpc_byte_buffer *payload)
{
    const struct method_entry *m = c->method;
    grpc_op op;
    bool watching;
    int rc = RPC_CONTINUE;

    rpc_call_ref(c); /* keep it while this function runs */
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    pthread_mutex_lock(&c->mu);
    watching = call_start_batch_locked(c, &op, 1, &c->t_close);
    if (!watching) {
        c->over = true;
        c->end_done = true;
    }
    pthread_mutex_unlock(&c->mu);
    if (!watching) {
        grpc_call_cancel(c->gcall, NULL);
        rpc_call_unref(c); /* the life-cycle reference */
        goto out;
    }
    if (m == NULL) {
        char msg[RPC_PATH_MAX + 64];

        snprintf(msg, sizeof(msg), "method %s is not implemented",
                 c->method_name);
        rpc_call_finish(c, RPC_UNIMPLEMENTED, msg);
        goto out;
    }
    if (m->handler.kind == RPC_KIND_UNARY ||
        m->handler.kind == RPC_KIND_SERVER_STREAMING) {
        ProtobufCMessage *req =
            payload ? unpack_message(m->desc->input, payload) : NULL;

        if (req == NULL) {
            rpc_call_finish(c, RPC_INVALID_ARGUMENT,
                            payload ? "cannot parse the request message"
                                    : "no request message");
            goto out;
        }
        c->handler_started = true;
        if (call_cb_enter(c)) {
            rc = m->handler.on_start(c, req, m->ud);
            call_cb_leave(c);
        }
        protobuf_c_message_free_unpacked(req, NULL);
        call_apply_result(c, rc);
        goto out;
    }
    c->handler_started = true;
    if (m->handler.on_start && call_cb_enter(c)) {
        rc = m->handler.on_start(c, NULL, m->ud);
        call_cb_leave(c);
    }
    if (rc == RPC_CONTINUE)
        call_start_recv(c);
    else
        call_apply_result(c, rc);
out:
    rpc_call_unref(c);
}

static void request_free(struct request *rq)
{
    if (rq->gcall)
        grpc_call_unref(rq->gcall);
    if (rq->payload)
        grpc_byte_buffer_destroy(rq->payload);
    grpc_metadata_array_destroy(&rq->md);
    if (rq->method == NULL)
        grpc_call_details_destroy(&rq->details);
    free(rq);
}

static void on_request(rpc_server *srv, struct request *rq, int success)
{
    rpc_call *c;

    if (!success) { /* shutdown */
        request_free(rq);
        return;
    }
    server_request(srv, rq->method);
    c = call_new(srv, rq);
    if (c == NULL) {
        grpc_call_cancel(rq->gcall, NULL);
    } else {
        call_begin(c, rq->payload);
    }
    request_free(rq);
}

static void server_request(rpc_server *srv, struct method_entry *m)
{
    struct request *rq = calloc(1, sizeof(*rq));
    grpc_call_error e;

    if (rq == NULL)
        return;
    rq->kind = TAG_REQUEST;
    rq->method = m;
    grpc_metadata_array_init(&rq->md);
    if (m == NULL)
        grpc_call_details_init(&rq->details);
    pthread_mutex_lock(&srv->mu);
    if (srv->shutting_down) {
        e = GRPC_CALL_ERROR;
    } else if (m) {
        bool payload = m->handler.kind == RPC_KIND_UNARY ||
                       m->handler.kind == RPC_KIND_SERVER_STREAMING;

        e = grpc_server_request_registered_call(
            srv->server, m->registered, &rq->gcall, &rq->deadline, &rq->md,
            payload ? &rq->payload : NULL, srv->cq, srv->cq, rq);
    } else {
        e = grpc_server_request_call(srv->server, &rq->gcall, &rq->details,
                                     &rq->md, srv->cq, srv->cq, rq);
    }
    pthread_mutex_unlock(&srv->mu);
    if (e != GRPC_CALL_OK)
        request_free(rq);
}

static void *server_worker(void *arg)
{
    rpc_server *srv = arg;

    for (;;) {
        grpc_event ev = grpc_completion_queue_next(
            srv->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        enum tag_kind kind;

        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        kind = *(enum tag_kind *)ev.tag;
        switch (kind) {
        case TAG_REQUEST:
            on_request(srv, ev.tag, ev.success);
            break;
        case TAG_SHUTDOWN:
            pthread_mutex_lock(&srv->mu);
            srv->shutdown_done = true;
            pthread_cond_broadcast(&srv->cond);
            pthread_mutex_unlock(&srv->mu);
            break;
        case TAG_CALL_CLOSE:
            on_call_close(((struct call_tag *)ev.tag)->call, ev.success);
            break;
        case TAG_CALL_RECV:
            on_call_recv(((struct call_tag *)ev.tag)->call, ev.success);
            break;
        case TAG_CALL_SEND:
            on_call_send(((struct call_tag *)ev.tag)->call, ev.success);
            break;
        case TAG_CALL_STATUS:
            on_call_status(((struct call_tag *)ev.tag)->call, ev.success);
            break;
        }
    }
    return NULL;
}

int rpc_server_new(const rpc_server_options *opts, rpc_server **out,
                   polis_error *err)
{
    rpc_server *srv;
    grpc_arg args[2];
    grpc_channel_args cargs;

    *out = NULL;
    if (opts == NULL || opts->listen == NULL || opts->listen[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, "rpc server",
                               "no listen address");
    if (opts->worker_threads < 0)
        return polis_error_set(err, POLIS_EINVAL, "rpc server",
                               "worker_threads must be >= 0");
    srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return polis_error_set(err, POLIS_ENOMEM, "rpc server", NULL);
    grpc_init();
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cond, NULL);
    pthread_rwlock_init(&srv->cq_lock, NULL);
    srv->shutdown_tag = TAG_SHUTDOWN;
    srv->max_msg = opts->max_message_bytes ? opts->max_message_bytes
                                           : RPC_DEFAULT_MAX_MESSAGE;
    srv->max_queue =
        opts->max_send_queue ? opts->max_send_queue : RPC_DEFAULT_SEND_QUEUE;
    srv->n_workers =
        opts->worker_threads ? opts->worker_threads : RPC_DEFAULT_WORKERS;
    srv->listen = strdup(opts->listen);
    srv->ca_file = dup_or_null(opts->creds.ca_file);
    srv->cert_file = dup_or_null(opts->creds.cert_file);
    srv->key_file = dup_or_null(opts->creds.key_file);
    if (srv->listen == NULL || (opts->creds.ca_file && !srv->ca_file) ||
        (opts->creds.cert_file && !srv->cert_file) ||
        (opts->creds.key_file && !srv->key_file)) {
        rpc_server_free(srv);
        return polis_error_set(err, POLIS_ENOMEM, "rpc server", NULL);
    }
    fill_msg_args(args, srv->max_msg);
    cargs.num_args = 2;
    cargs.args = args;
    srv->server = grpc_server_create(&cargs, NULL);
    srv->cq = grpc_completion_queue_create_for_next(NULL);
    if (srv->server == NULL || srv->cq == NULL) {
        rpc_server_free(srv);
        return polis_error_set(err, POLIS_EINTERNAL, "rpc server",
                               "cannot create the gRPC server");
    }
    grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
    *out = srv;
    return 0;
}

int rpc_server_add_service(rpc_server *srv,
                           const ProtobufCServiceDescriptor *service,
                           const rpc_handler *handlers, size_t n_handlers,
                           void *ud, polis_error *err)
{
    struct method_entry **grown;

    if (srv->started)
        return polis_error_set(err, POLIS_EINVAL, service->name,
                               "services are added before the server starts");
    for (size_t i = 0; i < n_handlers; i++) {
        const rpc_handler *h = &handlers[i];

        if (h->method == NULL ||
            protobuf_c_service_descriptor_get_method_by_name(service,
                                                             h->method) == NULL)
            return polis_error_set(err, POLIS_EINVAL, service->name,
                                   "no method \"%s\" in the service",
                                   h->method ? h->method : "(null)");
        if (h->kind < RPC_KIND_UNARY || h->kind > RPC_KIND_BIDI)
            return polis_error_set(err, POLIS_EINVAL, service->name,
                                   "%s: unknown kind %d", h->method,
                                   (int)h->kind);
        if ((h->kind == RPC_KIND_UNARY ||
             h->kind == RPC_KIND_SERVER_STREAMING) &&
            h->on_start == NULL)
            return polis_error_set(err, POLIS_EINVAL, service->name,
                                   "%s: on_start is required", h->method);
    }
    grown =
        realloc(srv->methods, (srv->n_methods + n_handlers) * sizeof(*grown));
    if (grown == NULL && srv->n_methods + n_handlers > 0)
        return polis_error_set(err, POLIS_ENOMEM, service->name, NULL);
    srv->methods = grown;
    for (size_t i = 0; i < n_handlers; i++) {
        const rpc_handler *h = &handlers[i];
        struct method_entry *m = calloc(1, sizeof(*m));
        size_t len = strlen(service->name) + strlen(h->method) + 3;
        bool payload =
            h->kind == RPC_KIND_UNARY || h->kind == RPC_KIND_SERVER_STREAMING;

        if (m == NULL || (m->path = malloc(len)) == NULL) {
            free(m);
            return polis_error_set(err, POLIS_ENOMEM, service->name, NULL);
        }
        snprintf(m->path, len, "/%s/%s", service->name, h->method);
        for (size_t j = 0; j < srv->n_methods; j++) {
            if (strcmp(srv->methods[j]->path, m->path) == 0) {
                polis_error_set(err, POLIS_EEXIST, m->path,
                                "method registered twice");
                free(m->path);
                free(m);
                return POLIS_EEXIST;
            }
        }
        m->desc = protobuf_c_service_descriptor_get_method_by_name(service,
                                                                   h->method);
        m->handler = *h;
        m->ud = ud;
        m->registered = grpc_server_register_method(
            srv->server, m->path, NULL,
            payload ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER
                    : GRPC_SRM_PAYLOAD_NONE,
            0);
        if (m->registered == NULL) {
            polis_error_set(err, POLIS_EINTERNAL, m->path,
                            "gRPC refused to register the method");
            free(m->path);
            free(m);
            return POLIS_EINTERNAL;
        }
        srv->methods[srv->n_methods++] = m;
    }
    return 0;
}

static int server_credentials(rpc_server *srv, grpc_server_credentials **out,
                              polis_error *err)
{
    char *ca = NULL, *cert = NULL, *key = NULL;
    grpc_ssl_pem_key_cert_pair pair;
    int rc;

    *out = NULL;
    if (srv->ca_file == NULL && srv->cert_file == NULL &&
        srv->key_file == NULL) {
        *out = grpc_insecure_server_credentials_create();
        return 0;
    }
    if (srv->cert_file == NULL || srv->key_file == NULL)
        return polis_error_set(err, POLIS_EINVAL, "rpc server TLS",
                               "a server needs both cert_file and key_file");
    if ((rc = read_pem(srv->ca_file, &ca, err)) != 0 ||
        (rc = read_pem(srv->cert_file, &cert, err)) != 0 ||
        (rc = read_pem(srv->key_file, &key, err)) != 0)
        goto out;
    pair.private_key = key;
    pair.cert_chain = cert;
    *out = grpc_ssl_server_credentials_create_ex(
        ca, &pair, 1,
        ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
           : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
    if (*out == NULL)
        rc = polis_error_set(err, POLIS_EINVAL, srv->cert_file,
                             "gRPC rejected the TLS credentials");
out:
    free(ca);
    free(cert);
    free(key);
    return rc;
}

int rpc_server_start(rpc_server *srv, polis_error *err)
{
    grpc_server_credentials *creds;
    int rc;

    if (srv->started)
        return polis_error_set(err, POLIS_EINVAL, srv->listen,
                               "already started");
    rc = server_credentials(srv, &creds, err);
    if (rc != 0)
        return rc;
    srv->port = grpc_server_add_http2_port(srv->server, srv->listen, creds);
    grpc_server_credentials_release(creds);
    if (srv->port == 0)
        return polis_error_set(err, POLIS_EUNAVAIL, srv->listen,
                               "cannot listen (address in use or invalid?)");
    srv->workers = calloc((size_t)srv->n_workers, sizeof(*srv->workers));
    if (srv->workers == NULL)
        return polis_error_set(err, POLIS_ENOMEM, srv->listen, NULL);
    /* Workers first: with none, nothing could drain the queue. */
    for (int i = 0; i < srv->n_workers; i++) {
        if (pthread_create(&srv->workers[i], NULL, server_worker, srv) != 0)
            break;
        srv->n_running++;
    }
    if (srv->n_running == 0)
        return polis_error_set(err, POLIS_EINTERNAL, srv->listen,
                               "cannot start worker threads");
    grpc_server_start(srv->server);
    pthread_mutex_lock(&srv->mu);
    srv->started = true;
    pthread_mutex_unlock(&srv->mu);
    for (size_t i = 0; i < srv->n_methods; i++)
        for (int k = 0; k < RPC_REQUESTS_PER_METHOD; k++)
            server_request(srv, srv->methods[i]);
    for (int k = 0; k < RPC_REQUESTS_PER_METHOD; k++)
        server_request(srv, NULL);
    return 0;
}

int rpc_server_port(const rpc_server *srv)
{
    return srv->port;
}

static void wait_shutdown_tag(rpc_server *srv, int grace_ms)
{
    struct timespec until;
    bool done;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += grace_ms / 1000;
    until.tv_nsec += (long)(grace_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&srv->mu);
    while (!srv->shutdown_done && grace_ms > 0)
        if (pthread_cond_timedwait(&srv->cond, &srv->mu, &until) == ETIMEDOUT)
            break;
    done = srv->shutdown_done;
    pthread_mutex_unlock(&srv->mu);
    if (done)
        return;
    /* Without this, shutdown waits for every live stream to end. */
    grpc_server_cancel_all_calls(srv->server);
    pthread_mutex_lock(&srv->mu);
    while (!srv->shutdown_done)
        pthread_cond_wait(&srv->cond, &srv->mu);
    pthread_mutex_unlock(&srv->mu);
}

void rpc_server_shutdown(rpc_server *srv, int grace_ms)
{
    bool started;

    if (srv == NULL)
        return;
    pthread_mutex_lock(&srv->mu);
    if (srv->shutdown_begun) {
        pthread_mutex_unlock(&srv->mu);
        return;
    }
    srv->shutdown_begun = true;
    srv->shutting_down = true;
    started = srv->started;
    pthread_mutex_unlock(&srv->mu);
    if (!started)
        return;
    grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
    wait_shutdown_tag(srv, grace_ms);
    grpc_server_destroy(srv->server);
    srv->server = NULL;
    pthread_rwlock_wrlock(&srv->cq_lock);
    srv->cq_dead = true;
    pthread_rwlock_unlock(&srv->cq_lock);
    grpc_completion_queue_shutdown(srv->cq);
    for (int i = 0; i < srv->n_running; i++)
        pthread_join(srv->workers[i], NULL);
    srv->n_running = 0;
    grpc_completion_queue_destroy(srv->cq);
    srv->cq = NULL;
}

void rpc_server_free(rpc_server *srv)
{
    if (srv == NULL)
        return;
    rpc_server_shutdown(srv, 0);
    if (srv->server) /* never started */
        grpc_server_destroy(srv->server);
    if (srv->cq) {
        grpc_completion_queue_shutdown(srv->cq);
        while (grpc_completion_queue_next(
                   srv->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
                   .type != GRPC_QUEUE_SHUTDOWN)
            ;
        grpc_completion_queue_destroy(srv->cq);
    }
    for (size_t i = 0; i < srv->n_methods; i++) {
        free(srv->methods[i]->path);
        free(srv->methods[i]);
    }
    free(srv->methods);
    free(srv->workers);
    free(srv->listen);
    free(srv->ca_file);
    free(srv->cert_file);
    free(srv->key_file);
    pthread_rwlock_destroy(&srv->cq_lock);
    pthread_cond_destroy(&srv->cond);
    pthread_mutex_destroy(&srv->mu);
    free(srv);
    grpc_shutdown();
}

/* --------------------------- call accessors ---------------------------- */

int rpc_call_send(rpc_call *call, const ProtobufCMessage *msg)
{
    grpc_byte_buffer *bb;
    int rc;

    rc = pack_message(msg, call->max_msg, &bb);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&call->mu);
    if (call->over || call->finish_req || call->broken)
        rc = POLIS_ECANCELED;
    else if (call->q_len >= call->max_queue)
        rc = POLIS_EAGAIN;
    else if (!queue_push_locked(call, bb))
        rc = POLIS_ENOMEM;
    else
        bb = NULL;
    if (rc == 0)
        call_pump_locked(call);
    pthread_mutex_unlock(&call->mu);
    if (bb)
        grpc_byte_buffer_destroy(bb);
    return rc;
}

size_t rpc_call_send_queue_len(rpc_call *call)
{
    size_t n;

    pthread_mutex_lock(&call->mu);
    n = call->q_len + (call->send_bb ? 1 : 0);
    pthread_mutex_unlock(&call->mu);
    return n;
}

void rpc_call_set_status_message(rpc_call *call, const char *fmt, ...)
{
    va_list ap;
    char *msg = malloc(RPC_STATUS_MSG_MAX);

    if (msg == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, RPC_STATUS_MSG_MAX, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&call->mu);
    free(call->status_msg);
    call->status_msg = msg;
    pthread_mutex_unlock(&call->mu);
}

const char *rpc_call_metadata(const rpc_call *call, const char *key)
{
    for (size_t i = 0; i < call->n_md; i++)
        if (strcmp(call->md[i].key, key) == 0)
            return call->md[i].value;
    return NULL;
}

const char *rpc_call_peer(const rpc_call *call)
{
    return call->peer;
}

int64_t rpc_call_deadline_left_ms(const rpc_call *call)
{
    gpr_timespec d, left;
    int64_t ms;

    if (call->deadline.tv_sec == INT64_MAX)
        return INT64_MAX;
    d = gpr_convert_clock_type(call->deadline, GPR_CLOCK_MONOTONIC);
    left = gpr_time_sub(d, gpr_now(GPR_CLOCK_MONOTONIC));
    ms = left.tv_sec * 1000 + left.tv_nsec / 1000000;
    return ms < 0 ? 0 : ms;
}

bool rpc_call_is_over(const rpc_call *call)
{
    rpc_call *c = (rpc_call *)call; /* the mutex is not part of the value */
    bool over;

    pthread_mutex_lock(&c->mu);
    over = c->over || c->broken || rpc_call_deadline_left_ms(c) == 0;
    pthread_mutex_unlock(&c->mu);
    return over;
}

const char *rpc_call_method(const rpc_call *call)
{
    return call->method_name;
}

void rpc_call_set_data(rpc_call *call, void *data)
{
    call->data = data;
}

void *rpc_call_data(const rpc_call *call)
{
    return call->data;
}

/* ================================ client ================================ */

struct rpc_channel {
    grpc_channel *ch;
    size_t max_msg;
};

int rpc_channel_new(const char *target, const rpc_channel_options *opts,
                    rpc_channel **out, polis_error *err)
{
    static const rpc_channel_options defaults;
    grpc_channel_credentials *creds = NULL;
    grpc_ssl_pem_key_cert_pair pair;
    char *ca = NULL, *cert = NULL, *key = NULL;
    grpc_arg args[2];
    grpc_channel_args cargs;
    rpc_channel *ch;
    int rc = 0;

    *out = NULL;
    if (opts == NULL)
        opts = &defaults;
    if (target == NULL || target[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, "rpc channel",
                               "no target address");
    if ((opts->creds.cert_file == NULL) != (opts->creds.key_file == NULL))
        return polis_error_set(err, POLIS_EINVAL, target,
                               "a client certificate needs both cert_file "
                               "and key_file");
    ch = calloc(1, sizeof(*ch));
    if (ch == NULL)
        return polis_error_set(err, POLIS_ENOMEM, target, NULL);
    grpc_init();
    ch->max_msg = opts->max_message_bytes ? opts->max_message_bytes
                                          : RPC_DEFAULT_MAX_MESSAGE;
    if (creds_empty(&opts->creds)) {
        creds = grpc_insecure_credentials_create();
    } else {
        if ((rc = read_pem(opts->creds.ca_file, &ca, err)) != 0 ||
            (rc = read_pem(opts->creds.cert_file, &cert, err)) != 0 ||
            (rc = read_pem(opts->creds.key_file, &key, err)) != 0)
            goto out;
        pair.private_key = key;
        pair.cert_chain = cert;
        creds =
            grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
    }
    if (creds == NULL) {
        rc = polis_error_set(err, POLIS_EINVAL, target,
                             "gRPC rejected the credentials");
        goto out;
    }
    fill_msg_args(args, ch->max_msg);
    cargs.num_args = 2;
    cargs.args = args;
    ch->ch = grpc_channel_create(target, creds, &cargs);
    if (ch->ch == NULL)
        rc = polis_error_set(err, POLIS_EINVAL, target,
                             "cannot create a channel");
out:
    if (creds)
        grpc_channel_credentials_release(creds);
    free(ca);
    free(cert);
    free(key);
    if (rc != 0) {
        free(ch);
        grpc_shutdown();
        return rc;
    }
    *out = ch;
    return 0;
}

void rpc_channel_free(rpc_channel *ch)
{
    if (ch == NULL)
        return;
    grpc_channel_destroy(ch->ch);
    free(ch);
    grpc_shutdown();
}

/* Path of a method; NULL descriptor when the service has no such method. */
static const ProtobufCMethodDescriptor *
method_path(const ProtobufCServiceDescriptor *service, const char *method,
            char *path, size_t cap)
{
    const ProtobufCMethodDescriptor *d;
    int n;

    if (service == NULL || method == NULL)
        return NULL;
    d = protobuf_c_service_descriptor_get_method_by_name(service, method);
    if (d == NULL)
        return NULL;
    n = snprintf(path, cap, "/%s/%s", service->name, method);
    return n > 0 && (size_t)n < cap ? d : NULL;
}

static grpc_metadata *metadata_new(const rpc_metadata *md, size_t n)
{
    grpc_metadata *g;

    if (n == 0)
        return NULL;
    g = calloc(n, sizeof(*g));
    if (g == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        g[i].key = grpc_slice_from_copied_string(md[i].key);
        g[i].value = grpc_slice_from_copied_string(md[i].value);
    }
    return g;
}

static void metadata_free(grpc_metadata *g, size_t n)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        grpc_slice_unref(g[i].key);
        grpc_slice_unref(g[i].value);
    }
    free(g);
}

static gpr_timespec call_deadline(int timeout_ms)
{
    return timeout_ms <= 0 ? gpr_inf_future(GPR_CLOCK_MONOTONIC)
                           : wait_deadline(timeout_ms);
}

int rpc_unary(rpc_channel *ch, const ProtobufCServiceDescriptor *service,
              const char *method, const ProtobufCMessage *req,
              ProtobufCMessage **resp, const rpc_metadata *md, size_t n_md,
              int timeout_ms, rpc_status *status)
{
    char path[RPC_PATH_MAX];
    const ProtobufCMethodDescriptor *d;
    grpc_byte_buffer *send_bb = NULL, *recv_bb = NULL;
    grpc_metadata *gmd = NULL;
    grpc_metadata_array init_md, trail_md;
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_completion_queue *cq = NULL;
    grpc_call *call = NULL;
    grpc_slice path_slice;
    grpc_op ops[6];
    grpc_event ev;
    int rc;

    *resp = NULL;
    status_set(status, RPC_OK, "%s", "");
    d = method_path(service, method, path, sizeof(path));
    if (d == NULL) {
        status_set(status, RPC_UNIMPLEMENTED, "no method %s in %s",
                   method ? method : "(null)",
                   service ? service->name : "(null)");
        return RPC_UNIMPLEMENTED;
    }
    rc = pack_message(req, ch->max_msg, &send_bb);
    if (rc != 0) {
        int c = rc == POLIS_ETOOBIG ? RPC_RESOURCE_EXHAUSTED : RPC_INTERNAL;

        status_set(status, c, "request of %zu bytes is over the maximum %zu",
                   protobuf_c_message_get_packed_size(req), ch->max_msg);
        return c;
    }
    gmd = metadata_new(md, n_md);
    if (n_md && gmd == NULL) {
        grpc_byte_buffer_destroy(send_bb);
        status_set(status, RPC_INTERNAL, "out of memory");
        return RPC_INTERNAL;
    }
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    cq = grpc_completion_queue_create_for_pluck(NULL);
    path_slice = grpc_slice_from_copied_string(path);
    call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                    path_slice, NULL, call_deadline(timeout_ms),
                                    NULL);
    grpc_slice_unref(path_slice);
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = n_md;
    ops[0].data.send_initial_metadata.metadata = gmd;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &details;
    if (call == NULL ||
        grpc_call_start_batch(call, ops, 6, ops, NULL) != GRPC_CALL_OK) {
        rc = call ? RPC_INVALID_ARGUMENT : RPC_INTERNAL;
        status_set(status, rc, "cannot start the call (invalid metadata?)");
        goto out;
    }
    ev = grpc_completion_queue_pluck(cq, ops,
                                     gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type != GRPC_OP_COMPLETE || !ev.success) {
        rc = RPC_INTERNAL;
        status_set(status, rc, "the call failed locally");
        goto out;
    }
    rc = (int)code;
    if (status) {
        status->code = rc;
        copy_slice(status->message, sizeof(status->message), details);
    }
    if (rc == RPC_OK) {
        *resp = recv_bb ? unpack_message(d->output, recv_bb) : NULL;
        if (*resp == NULL) {
            rc = RPC_INTERNAL;
            status_set(status, rc, "%s",
                       recv_bb ? "cannot parse the response"
                               : "the server sent no response");
        }
    }
out:
    if (call)
        grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    metadata_free(gmd, n_md);
    grpc_byte_buffer_destroy(send_bb);
    if (recv_bb)
        grpc_byte_buffer_destroy(recv_bb);
    return rc;
}

/*
 * A client stream: one pluck queue, one tag per direction plus the status,
 * so that a sender, a receiver and a status waiter can block at once.
 */
struct rpc_stream {
    grpc_completion_queue *cq;
    grpc_call *call;
    const ProtobufCMethodDescriptor *desc;
    size_t max_msg;
    char tag_send, tag_recv, tag_status; /* distinct addresses */

    pthread_mutex_t send_mu;
    bool send_closed;
    bool send_dead;

    pthread_mutex_t recv_mu;
    bool recv_pending; /* kept across timeouts */
    bool got_initial_md;
    bool recv_eos;
    grpc_byte_buffer *recv_bb;
    grpc_metadata_array init_md;

    pthread_mutex_t status_mu;
    bool status_done;
    grpc_status_code code;
    grpc_slice details;
    grpc_metadata_array trail_md;
    rpc_status status;
};

int rpc_stream_open(rpc_channel *ch, const ProtobufCServiceDescriptor *service,
                    const char *method, const rpc_metadata *md, size_t n_md,
                    int timeout_ms, rpc_stream **out, polis_error *err)
{
    char path[RPC_PATH_MAX];
    const ProtobufCMethodDescriptor *d;
    grpc_metadata *gmd;
    grpc_slice path_slice;
    rpc_stream *s;
    grpc_op op;
    grpc_event ev;
    int rc = 0;

    *out = NULL;
    d = method_path(service, method, path, sizeof(path));
    if (d == NULL)
        return polis_error_set(err, POLIS_EINVAL,
                               service ? service->name : "rpc stream",
                               "no method %s", method ? method : "(null)");
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return polis_error_set(err, POLIS_ENOMEM, path, NULL);
    gmd = metadata_new(md, n_md);
    if (n_md && gmd == NULL) {
        free(s);
        return polis_error_set(err, POLIS_ENOMEM, path, NULL);
    }
    grpc_init(); /* a stream may outlive nothing, but keep gRPC up for it */
    s->desc = d;
    s->max_msg = ch->max_msg;
    s->details = grpc_empty_slice();
    pthread_mutex_init(&s->send_mu, NULL);
    pthread_mutex_init(&s->recv_mu, NULL);
    pthread_mutex_init(&s->status_mu, NULL);
    grpc_metadata_array_init(&s->init_md);
    grpc_metadata_array_init(&s->trail_md);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    path_slice = grpc_slice_from_copied_string(path);
    s->call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS,
                                       s->cq, path_slice, NULL,
                                       call_deadline(timeout_ms), NULL);
    grpc_slice_unref(path_slice);
    if (s->call == NULL) {
        rc = polis_error_set(err, POLIS_EINTERNAL, path,
                             "cannot create the call");
        goto out;
    }
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    op.data.send_initial_metadata.count = n_md;
    op.data.send_initial_metadata.metadata = gmd;
    if (grpc_call_start_batch(s->call, &op, 1, &s->tag_send, NULL) !=
        GRPC_CALL_OK) {
        rc = polis_error_set(err, POLIS_EINVAL, path,
                             "invalid metadata (keys are lower-case)");
        goto out;
    }
    /* Metadata slices must live until the batch completes. */
    ev = grpc_completion_queue_pluck(s->cq, &s->tag_send,
                                     gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (!ev.success)
        s->send_dead = true; /* recv / status will tell why */
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &s->trail_md;
    op.data.recv_status_on_client.status = &s->code;
    op.data.recv_status_on_client.status_details = &s->details;
    if (grpc_call_start_batch(s->call, &op, 1, &s->tag_status, NULL) !=
        GRPC_CALL_OK) {
        rc = polis_error_set(err, POLIS_EINTERNAL, path,
                             "cannot wait for the status");
        goto out;
    }
out:
    metadata_free(gmd, n_md);
    if (rc != 0) {
        s->status_done = true; /* nothing to wait for */
        rpc_stream_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* One blocking batch on the send side. */
static int stream_send_op(rpc_stream *s, grpc_op *op)
{
    grpc_event ev;

    if (s->send_closed || s->send_dead)
        return POLIS_ECANCELED;
    if (grpc_call_start_batch(s->call, op, 1, &s->tag_send, NULL) !=
        GRPC_CALL_OK) {
        s->send_dead = true;
        return POLIS_ECANCELED;
    }
    ev = grpc_completion_queue_pluck(s->cq, &s->tag_send,
                                     gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (!ev.success) {
        s->send_dead = true;
        return POLIS_ECANCELED;
    }
    return 0;
}

int rpc_stream_send(rpc_stream *s, const ProtobufCMessage *msg)
{
    grpc_byte_buffer *bb;
    grpc_op op;
    int rc;

    rc = pack_message(msg, s->max_msg, &bb);
    if (rc != 0)
        return rc;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = bb;
    pthread_mutex_lock(&s->send_mu);
    rc = stream_send_op(s, &op);
    pthread_mutex_unlock(&s->send_mu);
    grpc_byte_buffer_destroy(bb);
    return rc;
}

int rpc_stream_close_send(rpc_stream *s)
{
    grpc_op op;
    int rc;

    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    pthread_mutex_lock(&s->send_mu);
    rc = stream_send_op(s, &op);
    s->send_closed = true;
    pthread_mutex_unlock(&s->send_mu);
    return rc;
}

int rpc_stream_recv(rpc_stream *s, ProtobufCMessage **msg, int timeout_ms)
{
    grpc_byte_buffer *bb;
    grpc_event ev;

    *msg = NULL;
    pthread_mutex_lock(&s->recv_mu);
    if (s->recv_eos) {
        pthread_mutex_unlock(&s->recv_mu);
        return 0;
    }
    if (!s->recv_pending) {
        grpc_op ops[2];
        size_t n = 0;

        memset(ops, 0, sizeof(ops));
        if (!s->got_initial_md) {
            ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
            ops[n].data.recv_initial_metadata.recv_initial_metadata =
                &s->init_md;
            n++;
        }
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n].data.recv_message.recv_message = &s->recv_bb;
        n++;
        if (grpc_call_start_batch(s->call, ops, n, &s->tag_recv, NULL) !=
            GRPC_CALL_OK) {
            s->recv_eos = true;
            pthread_mutex_unlock(&s->recv_mu);
            return POLIS_ECANCELED;
        }
        s->got_initial_md = true;
        s->recv_pending = true;
    }
    ev = grpc_completion_queue_pluck(s->cq, &s->tag_recv,
                                     wait_deadline(timeout_ms), NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
        pthread_mutex_unlock(&s->recv_mu);
        return POLIS_ETIMEDOUT;
    }
    s->recv_pending = false;
    bb = s->recv_bb;
    s->recv_bb = NULL;
    if (ev.type != GRPC_OP_COMPLETE || !ev.success || bb == NULL) {
        s->recv_eos = true;
        pthread_mutex_unlock(&s->recv_mu);
        if (bb)
            grpc_byte_buffer_destroy(bb);
        return 0;
    }
    pthread_mutex_unlock(&s->recv_mu);
    *msg = unpack_message(s->desc->output, bb);
    grpc_byte_buffer_destroy(bb);
    return *msg ? 1 : POLIS_EPARSE;
}

int rpc_stream_status(rpc_stream *s, rpc_status *status)
{
    int code;

    pthread_mutex_lock(&s->status_mu);
    if (!s->status_done) {
        grpc_event ev = grpc_completion_queue_pluck(
            s->cq, &s->tag_status, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);

        s->status_done = true;
        if (ev.type == GRPC_OP_COMPLETE && ev.success) {
            s->status.code = (int)s->code;
            copy_slice(s->status.message, sizeof(s->status.message),
                       s->details);
        } else {
            status_set(&s->status, RPC_INTERNAL, "no status received");
        }
    }
    if (status)
        *status = s->status;
    code = s->status.code;
    pthread_mutex_unlock(&s->status_mu);
    return code;
}

void rpc_stream_cancel(rpc_stream *s)
{
    if (s && s->call)
        grpc_call_cancel(s->call, NULL);
}

void rpc_stream_free(rpc_stream *s)
{
    if (s == NULL)
        return;
    if (s->call) {
        grpc_call_cancel(s->call, NULL); /* no-op once the status is in */
        /* Every batch must complete before the queue goes away. */
        if (s->recv_pending)
            grpc_completion_queue_pluck(
                s->cq, &s->tag_recv, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        rpc_stream_status(s, NULL);
        grpc_call_unref(s->call);
    }
    if (s->recv_bb)
        grpc_byte_buffer_destroy(s->recv_bb);
    grpc_completion_queue_shutdown(s->cq);
    grpc_completion_queue_destroy(s->cq);
    grpc_metadata_array_destroy(&s->init_md);
    grpc_metadata_array_destroy(&s->trail_md);
    grpc_slice_unref(s->details);
    pthread_mutex_destroy(&s->send_mu);
    pthread_mutex_destroy(&s->recv_mu);
    pthread_mutex_destroy(&s->status_mu);
    free(s);
    grpc_shutdown();
}
