/*
 * test_rpc.c — the gRPC core layer (common/rpc.h) over real gRPC on
 * loopback, with the Echo test service (tests/proto/echo.proto): every call
 * shape, deadlines, cancellation, limits, shutdown and concurrency.
 */
#include "common/rpc.h"
#include "tests/support/testutil.h"

#include "echo.pb-c.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------ fixture ------------------------------ */

/* What the handlers saw; shared with the test thread under `mu`. */
struct seen {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int ends;
    int end_by_status[RPC_UNAUTHENTICATED + 1];
    char peer[128];
    rpc_call *held; /* a ServerStream "hold" call, referenced */
    int flood_rc;
    size_t flood_qlen_max;
    int flood_sent;
    int bidi_messages;
    pthread_t threads[8];
    int n_threads;
};

static struct seen seen;
static rpc_server *srv;
static rpc_channel *chan;

static const ProtobufCServiceDescriptor *echo = &polis__test__echo__descriptor;

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void seen_reset(void)
{
    pthread_mutex_lock(&seen.mu);
    seen.ends = 0;
    memset(seen.end_by_status, 0, sizeof(seen.end_by_status));
    seen.peer[0] = '\0';
    seen.held = NULL;
    seen.flood_rc = 0;
    seen.flood_qlen_max = 0;
    seen.flood_sent = 0;
    seen.bidi_messages = 0;
    seen.n_threads = 0;
    pthread_mutex_unlock(&seen.mu);
}

/* Wait until `n` calls ended on the server; false on timeout. */
static bool wait_ends(int n, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;
    bool ok;

    pthread_mutex_lock(&seen.mu);
    while (seen.ends < n && now_ms() < until) {
        pthread_mutex_unlock(&seen.mu);
        usleep(2000);
        pthread_mutex_lock(&seen.mu);
    }
    ok = seen.ends >= n;
    pthread_mutex_unlock(&seen.mu);
    return ok;
}

static int ends_with(int status)
{
    int n;

    pthread_mutex_lock(&seen.mu);
    n = seen.end_by_status[status];
    pthread_mutex_unlock(&seen.mu);
    return n;
}

static void note_thread(void)
{
    pthread_t self = pthread_self();

    pthread_mutex_lock(&seen.mu);
    for (int i = 0; i < seen.n_threads; i++) {
        if (pthread_equal(seen.threads[i], self)) {
            pthread_mutex_unlock(&seen.mu);
            return;
        }
    }
    if (seen.n_threads < 8)
        seen.threads[seen.n_threads++] = self;
    pthread_mutex_unlock(&seen.mu);
}

static int send_text(rpc_call *call, const char *text, int seq)
{
    Polis__Test__EchoReply r = POLIS__TEST__ECHO_REPLY__INIT;

    r.text = (char *)text;
    r.seq = seq;
    return rpc_call_send(call, &r.base);
}

/* Send, waiting while the call's queue is full (the client reads slowly). */
static int send_patiently(rpc_call *call, const ProtobufCMessage *m)
{
    int rc;

    while ((rc = rpc_call_send(call, m)) == POLIS_EAGAIN)
        usleep(200);
    return rc;
}

static void on_end(rpc_call *call, int status, void *ud)
{
    pthread_mutex_lock(&seen.mu);
    seen.ends++;
    if (status >= 0 && status <= RPC_UNAUTHENTICATED)
        seen.end_by_status[status]++;
    pthread_mutex_unlock(&seen.mu);
    free(rpc_call_data(call));
}

static int unary_start(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    const Polis__Test__EchoRequest *req = (const void *)msg;
    Polis__Test__EchoReply r = POLIS__TEST__ECHO_REPLY__INIT;
    int rc;

    if (strcmp(req->text, "fail") == 0) {
        rpc_call_set_status_message(call, "bad input: %s", req->text);
        return RPC_INVALID_ARGUMENT;
    }
    if (strcmp(req->text, "hang") == 0)
        return RPC_CONTINUE; /* never answered: the deadline ends it */
    if (strcmp(req->text, "md") == 0) {
        const char *user = rpc_call_metadata(call, "x-polis-user");

        pthread_mutex_lock(&seen.mu);
        snprintf(seen.peer, sizeof(seen.peer), "%s", rpc_call_peer(call));
        pthread_mutex_unlock(&seen.mu);
        r.text = (char *)(user ? user : "(none)");
        r.seq = rpc_call_deadline_left_ms(call) == INT64_MAX ? -1 : 1;
        rpc_call_send(call, &r.base);
        return RPC_OK;
    }
    if (strcmp(req->text, "big") == 0) {
        static uint8_t blob[8192];

        r.blob.data = blob;
        r.blob.len = sizeof(blob);
        rc = rpc_call_send(call, &r.base);
        if (rc != 0) {
            rpc_call_set_status_message(call, "reply: %s", polis_strerror(rc));
            return rpc_status_from_polis(rc);
        }
        return RPC_OK;
    }
    r.text = req->text;
    rpc_call_send(call, &r.base);
    return RPC_OK;
}

static int sstream_start(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    const Polis__Test__EchoRequest *req = (const void *)msg;
    Polis__Test__EchoReply r = POLIS__TEST__ECHO_REPLY__INIT;

    if (strcmp(req->text, "hold") == 0) {
        rpc_call_ref(call);
        pthread_mutex_lock(&seen.mu);
        seen.held = call;
        pthread_mutex_unlock(&seen.mu);
        return RPC_CONTINUE;
    }
    for (int i = 0; i < req->count; i++) {
        r.seq = i;
        if (send_patiently(call, &r.base) != 0)
            return RPC_CANCELLED; /* the client went away */
    }
    return RPC_OK;
}

struct sum {
    int64_t sum;
    int count;
};

static int cstream_start(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    rpc_call_set_data(call, calloc(1, sizeof(struct sum)));
    return rpc_call_data(call) ? RPC_CONTINUE : RPC_INTERNAL;
}

static int cstream_message(rpc_call *call, const ProtobufCMessage *msg,
                           void *ud)
{
    const Polis__Test__EchoRequest *req = (const void *)msg;
    struct sum *s = rpc_call_data(call);

    s->sum += req->value;
    s->count++;
    return RPC_CONTINUE;
}

static int cstream_half_close(rpc_call *call, void *ud)
{
    struct sum *s = rpc_call_data(call);
    Polis__Test__EchoReply r = POLIS__TEST__ECHO_REPLY__INIT;

    r.sum = s->sum;
    r.count = s->count;
    rpc_call_send(call, &r.base);
    return RPC_OK;
}

static int bidi_message(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    const Polis__Test__EchoRequest *req = (const void *)msg;

    note_thread();
    pthread_mutex_lock(&seen.mu);
    seen.bidi_messages++;
    pthread_mutex_unlock(&seen.mu);
    if (strcmp(req->text, "flood") == 0) {
        static uint8_t blob[64 * 1024];
        Polis__Test__EchoReply r = POLIS__TEST__ECHO_REPLY__INIT;
        size_t qmax = 0;
        int rc = 0, sent = 0;

        r.blob.data = blob;
        r.blob.len = sizeof(blob);
        for (int i = 0; i < 10000 && rc == 0; i++) {
            rc = rpc_call_send(call, &r.base);
            if (rc == 0)
                sent++;
            if (rpc_call_send_queue_len(call) > qmax)
                qmax = rpc_call_send_queue_len(call);
        }
        pthread_mutex_lock(&seen.mu);
        seen.flood_rc = rc;
        seen.flood_qlen_max = qmax;
        seen.flood_sent = sent;
        pthread_mutex_unlock(&seen.mu);
        return RPC_CONTINUE;
    }
    if (strcmp(req->text, "finish") == 0) {
        rpc_call_set_status_message(call, "finished on request");
        return RPC_FAILED_PRECONDITION;
    }
    send_text(call, req->text, 0);
    return RPC_CONTINUE;
}

static int bidi_half_close(rpc_call *call, void *ud)
{
    return RPC_OK;
}

static const rpc_handler echo_handlers[] = {
    {.method = "Unary",
     .kind = RPC_KIND_UNARY,
     .on_start = unary_start,
     .on_end = on_end},
    {.method = "ServerStream",
     .kind = RPC_KIND_SERVER_STREAMING,
     .on_start = sstream_start,
     .on_end = on_end},
    {.method = "ClientStream",
     .kind = RPC_KIND_CLIENT_STREAMING,
     .on_start = cstream_start,
     .on_message = cstream_message,
     .on_half_close = cstream_half_close,
     .on_end = on_end},
    {.method = "Bidi",
     .kind = RPC_KIND_BIDI,
     .on_message = bidi_message,
     .on_half_close = bidi_half_close,
     .on_end = on_end},
    /* NoHandler: deliberately absent. */
};

static void start_server(size_t max_message, size_t max_queue)
{
    rpc_server_options o = {.listen = "127.0.0.1:0",
                            .max_message_bytes = max_message,
                            .max_send_queue = max_queue,
                            .worker_threads = 2};
    polis_error err = {0};
    char target[64];

    seen_reset();
    CU_ASSERT_EQUAL_FATAL(rpc_server_new(&o, &srv, &err), 0);
    CU_ASSERT_EQUAL_FATAL(
        rpc_server_add_service(srv, echo, echo_handlers,
                               sizeof(echo_handlers) / sizeof(echo_handlers[0]),
                               NULL, &err),
        0);
    CU_ASSERT_EQUAL_FATAL(rpc_server_start(srv, &err), 0);
    CU_ASSERT_FATAL(rpc_server_port(srv) > 0);
    snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(srv));
    CU_ASSERT_EQUAL_FATAL(rpc_channel_new(target, NULL, &chan, &err), 0);
}

static void stop_server(void)
{
    rpc_channel_free(chan);
    chan = NULL;
    rpc_server_free(srv);
    srv = NULL;
}

static int unary_text(const char *text, int timeout_ms, rpc_status *st,
                      char *out, size_t cap)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code;

    req.text = (char *)text;
    code = rpc_unary(chan, echo, "Unary", &req.base, &resp, NULL, 0, timeout_ms,
                     st);
    if (resp) {
        if (out)
            snprintf(out, cap, "%s", ((Polis__Test__EchoReply *)resp)->text);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return code;
}

static rpc_stream *open_stream(const char *method, int timeout_ms)
{
    rpc_stream *s = NULL;
    polis_error err = {0};

    CU_ASSERT_EQUAL(
        rpc_stream_open(chan, echo, method, NULL, 0, timeout_ms, &s, &err), 0);
    return s;
}

static int stream_send_text(rpc_stream *s, const char *text, int64_t value)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;

    req.text = (char *)text;
    req.value = value;
    return rpc_stream_send(s, &req.base);
}

/* Next reply; 1 with a copy of its text, or what rpc_stream_recv said. */
static int stream_recv_text(rpc_stream *s, char *out, size_t cap,
                            int timeout_ms)
{
    ProtobufCMessage *m = NULL;
    int rc = rpc_stream_recv(s, &m, timeout_ms);

    if (rc == 1) {
        snprintf(out, cap, "%s", ((Polis__Test__EchoReply *)m)->text);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    return rc;
}

/* ------------------------------- tests -------------------------------- */

static void test_status_mapping(void)
{
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_OK), RPC_OK);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_EINVAL), RPC_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_EPARSE), RPC_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_ENOTFOUND), RPC_NOT_FOUND);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_ECONFLICT), RPC_ABORTED);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_EEXIST), RPC_ALREADY_EXISTS);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_EUNAVAIL), RPC_UNAVAILABLE);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_ETIMEDOUT),
                    RPC_DEADLINE_EXCEEDED);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_ETOOBIG),
                    RPC_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_EDENIED),
                    RPC_PERMISSION_DENIED);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_EUNAUTH), RPC_UNAUTHENTICATED);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_ECANCELED), RPC_CANCELLED);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_EUNIMPL), RPC_UNIMPLEMENTED);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_EIO), RPC_INTERNAL);
    CU_ASSERT_EQUAL(rpc_status_from_polis(POLIS_ENOMEM), RPC_INTERNAL);
    /* Codes with a single meaning survive the round trip. */
    const int back[] = {POLIS_OK,        POLIS_ENOTFOUND, POLIS_ECONFLICT,
                        POLIS_EEXIST,    POLIS_EUNAVAIL,  POLIS_ETIMEDOUT,
                        POLIS_ETOOBIG,   POLIS_EDENIED,   POLIS_EUNAUTH,
                        POLIS_ECANCELED, POLIS_EUNIMPL,   POLIS_EINVAL};
    for (size_t i = 0; i < sizeof(back) / sizeof(back[0]); i++)
        CU_ASSERT_EQUAL(rpc_status_to_polis(rpc_status_from_polis(back[i])),
                        back[i]);
    CU_ASSERT_EQUAL(rpc_status_to_polis(RPC_INTERNAL), POLIS_EINTERNAL);
    CU_ASSERT_STRING_EQUAL(rpc_status_name(RPC_INVALID_ARGUMENT),
                           "INVALID_ARGUMENT");
    CU_ASSERT_STRING_EQUAL(rpc_status_name(99), "UNKNOWN");
}

static void test_unary_echo(void)
{
    rpc_status st;
    char out[64] = "";

    start_server(0, 0);
    CU_ASSERT_EQUAL(unary_text("hello", 5000, &st, out, sizeof(out)), RPC_OK);
    CU_ASSERT_STRING_EQUAL(out, "hello");
    CU_ASSERT_EQUAL(st.code, RPC_OK);
    CU_ASSERT_TRUE(wait_ends(1, 2000));
    CU_ASSERT_EQUAL(ends_with(RPC_OK), 1);
    stop_server();
}

static void test_status_message_reaches_client(void)
{
    rpc_status st;

    start_server(0, 0);
    CU_ASSERT_EQUAL(unary_text("fail", 5000, &st, NULL, 0),
                    RPC_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(st.code, RPC_INVALID_ARGUMENT);
    CU_ASSERT_STRING_EQUAL(st.message, "bad input: fail");
    CU_ASSERT_TRUE(wait_ends(1, 2000));
    CU_ASSERT_EQUAL(ends_with(RPC_INVALID_ARGUMENT), 1);
    stop_server();
}

static void test_metadata_reaches_handler(void)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;
    const rpc_metadata md[] = {{"x-polis-user", "alice"}, {"x-other", "1"}};
    ProtobufCMessage *resp = NULL;
    rpc_status st;

    start_server(0, 0);
    req.text = "md";
    CU_ASSERT_EQUAL(
        rpc_unary(chan, echo, "Unary", &req.base, &resp, md, 2, 5000, &st),
        RPC_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
    CU_ASSERT_STRING_EQUAL(((Polis__Test__EchoReply *)resp)->text, "alice");
    /* The 5 s deadline reached the server. */
    CU_ASSERT_EQUAL(((Polis__Test__EchoReply *)resp)->seq, 1);
    protobuf_c_message_free_unpacked(resp, NULL);
    pthread_mutex_lock(&seen.mu);
    CU_ASSERT_EQUAL(strncmp(seen.peer, "ipv4:127.0.0.1:", 15), 0);
    pthread_mutex_unlock(&seen.mu);
    stop_server();
}

static void test_server_stream_10000_in_order(void)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;
    rpc_stream *s;
    ProtobufCMessage *m;
    int n = 0, in_order = 1, rc;

    start_server(0, 0);
    s = open_stream("ServerStream", 30000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    req.count = 10000;
    CU_ASSERT_EQUAL(rpc_stream_send(s, &req.base), 0);
    CU_ASSERT_EQUAL(rpc_stream_close_send(s), 0);
    while ((rc = rpc_stream_recv(s, &m, 10000)) == 1) {
        if (((Polis__Test__EchoReply *)m)->seq != n)
            in_order = 0;
        n++;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(n, 10000);
    CU_ASSERT_TRUE(in_order);
    CU_ASSERT_EQUAL(rpc_stream_status(s, NULL), RPC_OK);
    rpc_stream_free(s);
    CU_ASSERT_TRUE(wait_ends(1, 2000));
    CU_ASSERT_EQUAL(ends_with(RPC_OK), 1);
    stop_server();
}

static void test_client_stream_sum(void)
{
    rpc_stream *s;
    ProtobufCMessage *m = NULL;

    start_server(0, 0);
    s = open_stream("ClientStream", 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    for (int i = 1; i <= 100; i++)
        CU_ASSERT_EQUAL(stream_send_text(s, "", i), 0);
    CU_ASSERT_EQUAL(rpc_stream_close_send(s), 0);
    CU_ASSERT_EQUAL_FATAL(rpc_stream_recv(s, &m, 5000), 1);
    CU_ASSERT_EQUAL(((Polis__Test__EchoReply *)m)->sum, 5050);
    CU_ASSERT_EQUAL(((Polis__Test__EchoReply *)m)->count, 100);
    protobuf_c_message_free_unpacked(m, NULL);
    CU_ASSERT_EQUAL(rpc_stream_recv(s, &m, 5000), 0);
    CU_ASSERT_EQUAL(rpc_stream_status(s, NULL), RPC_OK);
    rpc_stream_free(s);
    stop_server();
}

static void test_bidi_echo_and_recv_timeout(void)
{
    rpc_stream *s;
    char text[32], out[32];
    rpc_status st;

    start_server(0, 0);
    s = open_stream("Bidi", 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    /* Nothing sent yet: the receive times out and the stream stays usable. */
    CU_ASSERT_EQUAL(stream_recv_text(s, out, sizeof(out), 50), POLIS_ETIMEDOUT);
    for (int i = 0; i < 50; i++) {
        snprintf(text, sizeof(text), "m%d", i);
        CU_ASSERT_EQUAL(stream_send_text(s, text, 0), 0);
        CU_ASSERT_EQUAL(stream_recv_text(s, out, sizeof(out), 5000), 1);
        CU_ASSERT_STRING_EQUAL(out, text);
    }
    CU_ASSERT_EQUAL(stream_send_text(s, "finish", 0), 0);
    CU_ASSERT_EQUAL(stream_recv_text(s, out, sizeof(out), 5000), 0);
    CU_ASSERT_EQUAL(rpc_stream_status(s, &st), RPC_FAILED_PRECONDITION);
    CU_ASSERT_STRING_EQUAL(st.message, "finished on request");
    /* The stream is over: sending fails cleanly. */
    CU_ASSERT_EQUAL(stream_send_text(s, "late", 0), POLIS_ECANCELED);
    rpc_stream_free(s);
    CU_ASSERT_TRUE(wait_ends(1, 2000));
    CU_ASSERT_EQUAL(ends_with(RPC_FAILED_PRECONDITION), 1);
    stop_server();
}

static void test_client_cancel_mid_stream(void)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;
    rpc_stream *s;
    ProtobufCMessage *m;
    int64_t t0;

    start_server(0, 0);
    s = open_stream("ServerStream", 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    req.count = 100000000; /* far more than will ever be read */
    CU_ASSERT_EQUAL(rpc_stream_send(s, &req.base), 0);
    for (int i = 0; i < 10; i++) {
        CU_ASSERT_EQUAL_FATAL(rpc_stream_recv(s, &m, 5000), 1);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    t0 = now_ms();
    rpc_stream_cancel(s);
    CU_ASSERT_TRUE(wait_ends(1, 2000));
    CU_ASSERT(now_ms() - t0 < 1000);
    CU_ASSERT_EQUAL(ends_with(RPC_CANCELLED), 1);
    CU_ASSERT_EQUAL(rpc_stream_status(s, NULL), RPC_CANCELLED);
    rpc_stream_free(s);
    stop_server();
}

static void test_deadline_expires(void)
{
    rpc_status st;
    rpc_stream *s;
    char out[16];
    int64_t t0 = now_ms();

    start_server(0, 0);
    CU_ASSERT_EQUAL(unary_text("hang", 200, &st, NULL, 0),
                    RPC_DEADLINE_EXCEEDED);
    CU_ASSERT(now_ms() - t0 < 2000);
    CU_ASSERT_TRUE(wait_ends(1, 2000));
    CU_ASSERT_EQUAL(ends_with(RPC_CANCELLED), 1);

    /* A stream's deadline covers the whole stream. */
    s = open_stream("Bidi", 200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stream_recv_text(s, out, sizeof(out), -1), 0);
    CU_ASSERT_EQUAL(rpc_stream_status(s, NULL), RPC_DEADLINE_EXCEEDED);
    rpc_stream_free(s);
    CU_ASSERT_TRUE(wait_ends(2, 2000));
    stop_server();
}

static void test_shutdown_with_open_streams(void)
{
    rpc_stream *s[5];
    char out[16];
    int64_t t0, took;

    start_server(0, 0);
    for (int i = 0; i < 5; i++) {
        s[i] = open_stream("Bidi", 0);
        CU_ASSERT_PTR_NOT_NULL_FATAL(s[i]);
        CU_ASSERT_EQUAL(stream_send_text(s[i], "hi", 0), 0);
        CU_ASSERT_EQUAL(stream_recv_text(s[i], out, sizeof(out), 5000), 1);
    }
    t0 = now_ms();
    rpc_server_shutdown(srv, 100);
    took = now_ms() - t0;
    CU_ASSERT(took < 1000); /* a hang check: 0.1 s grace + cancellation */
    CU_ASSERT_EQUAL(ends_with(RPC_CANCELLED), 5);
    rpc_server_shutdown(srv, 100); /* idempotent */
    for (int i = 0; i < 5; i++) {
        int code = rpc_stream_status(s[i], NULL);

        CU_ASSERT(code == RPC_CANCELLED || code == RPC_UNAVAILABLE);
        rpc_stream_free(s[i]);
    }
    stop_server();
}

static void test_unimplemented(void)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;
    ProtobufCServiceDescriptor other = polis__test__echo__descriptor;
    ProtobufCMessage *resp = NULL;
    rpc_status st;

    start_server(0, 0);
    CU_ASSERT_EQUAL(rpc_unary(chan, echo, "NoHandler", &req.base, &resp, NULL,
                              0, 5000, &st),
                    RPC_UNIMPLEMENTED);
    CU_ASSERT_PTR_NULL(resp);
    CU_ASSERT_PTR_NOT_NULL(strstr(st.message, "NoHandler"));
    /* A service the server does not have at all. */
    other.name = "polis.test.Missing";
    CU_ASSERT_EQUAL(
        rpc_unary(chan, &other, "Unary", &req.base, &resp, NULL, 0, 5000, &st),
        RPC_UNIMPLEMENTED);
    CU_ASSERT_PTR_NULL(resp);
    /* A method the descriptor does not have: refused locally. */
    CU_ASSERT_EQUAL(
        rpc_unary(chan, echo, "Nope", &req.base, &resp, NULL, 0, 5000, &st),
        RPC_UNIMPLEMENTED);
    /* The server keeps serving. */
    CU_ASSERT_EQUAL(unary_text("still here", 5000, &st, NULL, 0), RPC_OK);
    stop_server();
}

static void test_max_message_size(void)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;
    rpc_channel_options big = {.max_message_bytes = 1 << 20};
    static uint8_t blob[4096];
    ProtobufCMessage *resp = NULL;
    rpc_channel *wide;
    polis_error err = {0};
    char target[64];
    rpc_status st;

    start_server(1024, 0);
    req.blob.data = blob;
    req.blob.len = sizeof(blob);
    /* The client allows it, the server does not. */
    snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(srv));
    CU_ASSERT_EQUAL_FATAL(rpc_channel_new(target, &big, &wide, &err), 0);
    CU_ASSERT_EQUAL(
        rpc_unary(wide, echo, "Unary", &req.base, &resp, NULL, 0, 5000, &st),
        RPC_RESOURCE_EXHAUSTED);
    rpc_channel_free(wide);
    /* The server's reply is over its own limit. */
    CU_ASSERT_EQUAL(unary_text("big", 5000, &st, NULL, 0),
                    RPC_RESOURCE_EXHAUSTED);
    CU_ASSERT_STRING_EQUAL(st.message, "reply: too large");
    stop_server();

    /* Over the client's own limit: refused before sending. */
    start_server(0, 0);
    rpc_channel_options small = {.max_message_bytes = 1024};
    CU_ASSERT_EQUAL_FATAL(rpc_channel_new("127.0.0.1:1", &small, &wide, &err),
                          0);
    CU_ASSERT_EQUAL(
        rpc_unary(wide, echo, "Unary", &req.base, &resp, NULL, 0, 5000, &st),
        RPC_RESOURCE_EXHAUSTED);
    rpc_channel_free(wide);
    stop_server();
}

struct pusher_arg {
    rpc_call *call;
    int sent;
};

static void *pusher(void *p)
{
    struct pusher_arg *a = p;

    for (int i = 0; i < 5; i++)
        if (send_text(a->call, "pushed", i) == 0)
            a->sent++;
    rpc_call_finish(a->call, RPC_OK, NULL);
    return NULL;
}

static void test_send_from_another_thread(void)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;
    struct pusher_arg a = {0};
    pthread_t t;
    rpc_stream *s;
    char out[32];
    int n = 0, rc;

    start_server(0, 0);
    s = open_stream("ServerStream", 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    req.text = "hold";
    CU_ASSERT_EQUAL(rpc_stream_send(s, &req.base), 0);
    for (int i = 0; i < 1000 && a.call == NULL; i++) {
        pthread_mutex_lock(&seen.mu);
        a.call = seen.held;
        pthread_mutex_unlock(&seen.mu);
        usleep(2000);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(a.call);
    CU_ASSERT_STRING_EQUAL(rpc_call_method(a.call), "ServerStream");
    CU_ASSERT_FALSE(rpc_call_is_over(a.call));
    pthread_create(&t, NULL, pusher, &a);
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(a.sent, 5);
    while ((rc = stream_recv_text(s, out, sizeof(out), 5000)) == 1) {
        CU_ASSERT_STRING_EQUAL(out, "pushed");
        n++;
    }
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_EQUAL(rpc_stream_status(s, NULL), RPC_OK);
    CU_ASSERT_TRUE(wait_ends(1, 2000));
    /* Held past on_end: still readable, sending refused. */
    CU_ASSERT_TRUE(rpc_call_is_over(a.call));
    CU_ASSERT_EQUAL(send_text(a.call, "late", 0), POLIS_ECANCELED);
    rpc_stream_free(s);
    stop_server();
    /* The reference may outlive the server. */
    CU_ASSERT_STRING_EQUAL(rpc_call_method(a.call), "ServerStream");
    rpc_call_unref(a.call);
}

static void test_send_queue_full(void)
{
    rpc_stream *s;
    int rc, sent;
    size_t qmax;

    start_server(0, 4);
    s = open_stream("Bidi", 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    /* The client never reads: flow control stops the writes and the
     * call's queue fills up. */
    CU_ASSERT_EQUAL(stream_send_text(s, "flood", 0), 0);
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&seen.mu);
        rc = seen.flood_rc;
        pthread_mutex_unlock(&seen.mu);
        if (rc != 0)
            break;
        usleep(2000);
    }
    pthread_mutex_lock(&seen.mu);
    rc = seen.flood_rc;
    qmax = seen.flood_qlen_max;
    sent = seen.flood_sent;
    pthread_mutex_unlock(&seen.mu);
    CU_ASSERT_EQUAL(rc, POLIS_EAGAIN);
    CU_ASSERT(qmax <= 5); /* 4 queued + 1 being written */
    CU_ASSERT(sent >= 4);
    rpc_stream_cancel(s);
    rpc_stream_free(s);
    CU_ASSERT_TRUE(wait_ends(1, 2000));
    stop_server();
}

#define MANY 200

static void test_many_concurrent_streams(void)
{
    rpc_stream **s = calloc(MANY, sizeof(*s));
    char text[32], out[32];
    int ok = 0, n_threads;

    start_server(0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    for (int i = 0; i < MANY; i++) {
        s[i] = open_stream("Bidi", 30000);
        snprintf(text, sizeof(text), "s%d", i);
        if (s[i])
            CU_ASSERT_EQUAL(stream_send_text(s[i], text, 0), 0);
    }
    /* All are open at once; each gets its own answer. */
    for (int i = 0; i < MANY; i++) {
        snprintf(text, sizeof(text), "s%d", i);
        if (s[i] && stream_recv_text(s[i], out, sizeof(out), 10000) == 1 &&
            strcmp(out, text) == 0)
            ok++;
    }
    CU_ASSERT_EQUAL(ok, MANY);
    for (int i = 0; i < MANY; i++) {
        if (s[i] == NULL)
            continue;
        CU_ASSERT_EQUAL(rpc_stream_close_send(s[i]), 0);
        CU_ASSERT_EQUAL(stream_recv_text(s[i], out, sizeof(out), 10000), 0);
        CU_ASSERT_EQUAL(rpc_stream_status(s[i], NULL), RPC_OK);
        rpc_stream_free(s[i]);
    }
    free(s);
    CU_ASSERT_TRUE(wait_ends(MANY, 5000));
    CU_ASSERT_EQUAL(ends_with(RPC_OK), MANY);
    pthread_mutex_lock(&seen.mu);
    n_threads = seen.n_threads;
    CU_ASSERT_EQUAL(seen.bidi_messages, MANY);
    pthread_mutex_unlock(&seen.mu);
    CU_ASSERT(n_threads >= 1 && n_threads <= 2);
    stop_server();
}

/* Self-signed certificates made with the openssl tool in a temp dir. */
static bool make_cert(const char *dir, const char *name)
{
    char cmd[1024];

    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 "
             "-keyout %s/%s.key -out %s/%s.crt -subj /CN=localhost "
             "-addext subjectAltName=IP:127.0.0.1,DNS:localhost "
             ">/dev/null 2>&1",
             dir, name, dir, name);
    return system(cmd) == 0;
}

static void test_tls_and_mutual_tls(void)
{
    char dir[] = "/tmp/polis-rpc-tls-XXXXXX";
    char srv_crt[128], srv_key[128], cli_crt[128], cli_key[128], cmd[256];
    char target[64], out[32] = "";
    rpc_server_options o = {.listen = "127.0.0.1:0"};
    polis_error err = {0};
    rpc_channel *c = NULL;
    rpc_status st;

    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(srv_crt, sizeof(srv_crt), "%s/server.crt", dir);
    snprintf(srv_key, sizeof(srv_key), "%s/server.key", dir);
    snprintf(cli_crt, sizeof(cli_crt), "%s/client.crt", dir);
    snprintf(cli_key, sizeof(cli_key), "%s/client.key", dir);
    if (!make_cert(dir, "server") || !make_cert(dir, "client")) {
        CU_FAIL("cannot make certificates with the openssl tool");
        goto out;
    }
    /* The server requires a client certificate signed by client.crt. */
    o.creds = (rpc_creds){cli_crt, srv_crt, srv_key};
    seen_reset();
    CU_ASSERT_EQUAL_FATAL(rpc_server_new(&o, &srv, &err), 0);
    CU_ASSERT_EQUAL_FATAL(
        rpc_server_add_service(srv, echo, echo_handlers, 1, NULL, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rpc_server_start(srv, &err), 0);
    snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(srv));

    /* Mutual TLS: served. */
    rpc_channel_options mtls = {.creds = {srv_crt, cli_crt, cli_key}};
    CU_ASSERT_EQUAL_FATAL(rpc_channel_new(target, &mtls, &chan, &err), 0);
    CU_ASSERT_EQUAL(unary_text("over tls", 5000, &st, out, sizeof(out)),
                    RPC_OK);
    CU_ASSERT_STRING_EQUAL(out, "over tls");
    rpc_channel_free(chan);

    /* TLS without a client certificate, and plaintext: refused. */
    rpc_channel_options tls = {.creds = {.ca_file = srv_crt}};
    CU_ASSERT_EQUAL_FATAL(rpc_channel_new(target, &tls, &chan, &err), 0);
    CU_ASSERT_EQUAL(unary_text("x", 5000, &st, NULL, 0), RPC_UNAVAILABLE);
    rpc_channel_free(chan);
    CU_ASSERT_EQUAL_FATAL(rpc_channel_new(target, NULL, &chan, &err), 0);
    CU_ASSERT_EQUAL(unary_text("x", 5000, &st, NULL, 0), RPC_UNAVAILABLE);
    rpc_channel_free(chan);
    chan = NULL;

    /* A missing file is a clear error, not a crash. */
    rpc_channel_options missing = {.creds = {.ca_file = "/nonexistent.pem"}};
    CU_ASSERT_EQUAL(rpc_channel_new(target, &missing, &c, &err), POLIS_EIO);
    CU_ASSERT_STRING_EQUAL(err.where, "/nonexistent.pem");
    rpc_server_free(srv);
    srv = NULL;
out:
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

static void test_bad_setup_is_refused(void)
{
    rpc_server_options o = {.listen = "127.0.0.1:0"};
    rpc_handler typo = {
        .method = "Unery", .kind = RPC_KIND_UNARY, .on_start = unary_start};
    rpc_server *s = NULL;
    polis_error err = {0};

    CU_ASSERT_EQUAL(rpc_server_new(&(rpc_server_options){0}, &s, &err),
                    POLIS_EINVAL);
    CU_ASSERT_EQUAL_FATAL(rpc_server_new(&o, &s, &err), 0);
    CU_ASSERT_EQUAL(rpc_server_add_service(s, echo, &typo, 1, NULL, &err),
                    POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "Unery"));
    rpc_server_free(s); /* never started */
    rpc_server_free(NULL);
    rpc_channel_free(NULL);
    rpc_stream_free(NULL);
}

static int suite_init(void)
{
    pthread_mutex_init(&seen.mu, NULL);
    pthread_cond_init(&seen.cond, NULL);
    return 0;
}

static const test_case rpc_cases[] = {
    {"status_mapping", test_status_mapping},
    {"unary_echo", test_unary_echo},
    {"status_message_reaches_client", test_status_message_reaches_client},
    {"metadata_reaches_handler", test_metadata_reaches_handler},
    {"server_stream_10000_in_order", test_server_stream_10000_in_order},
    {"client_stream_sum", test_client_stream_sum},
    {"bidi_echo_and_recv_timeout", test_bidi_echo_and_recv_timeout},
    {"client_cancel_mid_stream", test_client_cancel_mid_stream},
    {"deadline_expires", test_deadline_expires},
    {"shutdown_with_open_streams", test_shutdown_with_open_streams},
    {"unimplemented", test_unimplemented},
    {"max_message_size", test_max_message_size},
    {"send_from_another_thread", test_send_from_another_thread},
    {"send_queue_full", test_send_queue_full},
    {"many_concurrent_streams", test_many_concurrent_streams},
    {"bad_setup_is_refused", test_bad_setup_is_refused},
    {"tls_and_mutual_tls", test_tls_and_mutual_tls},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"rpc", suite_init, NULL, rpc_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
