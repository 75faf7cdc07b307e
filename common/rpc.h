/*
 * rpc.h — a gRPC server and client on the gRPC Core C API (1.51), driven by
 * protoc-c service descriptors.  Unary, server-streaming, client-streaming
 * and bidirectional calls; deadlines; cancellation; status codes with
 * messages; request metadata; a maximum message size; UNIMPLEMENTED for
 * unknown methods; a graceful shutdown that does not hang on live streams.
 * Transport credentials are chosen by rpc_creds, never by handlers.
 * Design notes: docs/internals/rpc.md.
 */
#ifndef POLIS_RPC_H
#define POLIS_RPC_H

#include "common/error.h"

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* gRPC status codes (the same numbers as grpc_status_code). */
enum rpc_status_code {
    RPC_OK = 0,
    RPC_CANCELLED = 1,
    RPC_UNKNOWN = 2,
    RPC_INVALID_ARGUMENT = 3,
    RPC_DEADLINE_EXCEEDED = 4,
    RPC_NOT_FOUND = 5,
    RPC_ALREADY_EXISTS = 6,
    RPC_PERMISSION_DENIED = 7,
    RPC_RESOURCE_EXHAUSTED = 8,
    RPC_FAILED_PRECONDITION = 9,
    RPC_ABORTED = 10,
    RPC_OUT_OF_RANGE = 11,
    RPC_UNIMPLEMENTED = 12,
    RPC_INTERNAL = 13,
    RPC_UNAVAILABLE = 14,
    RPC_DATA_LOSS = 15,
    RPC_UNAUTHENTICATED = 16,
};

/* Map between Polis error codes and gRPC status codes (both ways). */
int rpc_status_from_polis(int polis_code);
int rpc_status_to_polis(int status);
const char *rpc_status_name(int status); /* "INVALID_ARGUMENT" */

#define RPC_STATUS_MSG_MAX 4096

typedef struct rpc_status {
    int code;                         /* enum rpc_status_code */
    char message[RPC_STATUS_MSG_MAX]; /* the peer's status details */
} rpc_status;

/* Transport credentials: insecure when every file is NULL, TLS otherwise. */
typedef struct rpc_creds {
    const char *ca_file;   /* client: roots to trust; server: client CA */
    const char *cert_file; /* server cert, or client cert for mTLS */
    const char *key_file;
} rpc_creds;

typedef struct rpc_metadata {
    const char *key; /* lower-case */
    const char *value;
} rpc_metadata;

#define RPC_DEFAULT_MAX_MESSAGE (4 * 1024 * 1024)

/* ================================ server ================================ */

typedef struct rpc_server rpc_server;
typedef struct rpc_call rpc_call;

typedef enum rpc_kind {
    RPC_KIND_UNARY,
    RPC_KIND_SERVER_STREAMING,
    RPC_KIND_CLIENT_STREAMING,
    RPC_KIND_BIDI,
} rpc_kind;

/* Returned by handler callbacks that keep the call open. */
#define RPC_CONTINUE (-1)

/*
 * A method's handler.  Callbacks run on the server's worker threads; a
 * callback may block (e.g. on etcd), which holds that worker.  Callbacks
 * for one call never run concurrently.  A callback returning a status code
 * (>= 0) finishes the call with it (message: rpc_call_set_status_message);
 * RPC_CONTINUE keeps it open.
 */
typedef struct rpc_handler {
    const char *method; /* the method's name in the service ("Apply") */
    rpc_kind kind;
    /* The call started.  Unary and server streaming: `req` is the request;
     * a unary handler sends its one response with rpc_call_send and
     * returns RPC_OK (or an error status).  Streaming kinds: `req` is
     * NULL. */
    int (*on_start)(rpc_call *call, const ProtobufCMessage *req, void *ud);
    /* Client and bidi streaming: one message arrived (borrowed for the
     * duration of the callback).  The next one is read after it returns. */
    int (*on_message)(rpc_call *call, const ProtobufCMessage *msg, void *ud);
    /* The client has finished sending (may be NULL). */
    int (*on_half_close)(rpc_call *call, void *ud);
    /* The call is over: finished with `status`, cancelled by the client,
     * past its deadline, or cut by shutdown (RPC_CANCELLED).  Always called
     * exactly once per started call (may be NULL).  The call is freed after
     * it returns unless the application holds a reference. */
    void (*on_end)(rpc_call *call, int status, void *ud);
} rpc_handler;

typedef struct rpc_server_options {
    const char *listen;       /* "127.0.0.1:7400"; port 0 picks a free one */
    rpc_creds creds;          /* zeroed: insecure */
    size_t max_message_bytes; /* 0: RPC_DEFAULT_MAX_MESSAGE; larger → the
                                 call fails with RESOURCE_EXHAUSTED */
    int worker_threads;       /* 0: 2 */
    size_t max_send_queue;    /* per call, messages; 0: 1024 */
} rpc_server_options;

/* Caller frees with rpc_server_free(). */
int rpc_server_new(const rpc_server_options *opts, rpc_server **out,
                   polis_error *err);

/*
 * Serve a service: one handler per implemented method (looked up by name in
 * the descriptor; a method without a handler answers UNIMPLEMENTED, like an
 * unknown one).  `ud` is passed to every callback.  Before rpc_server_start.
 */
int rpc_server_add_service(rpc_server *srv,
                           const ProtobufCServiceDescriptor *service,
                           const rpc_handler *handlers, size_t n_handlers,
                           void *ud, polis_error *err);

/* Bind and start the worker threads. */
int rpc_server_start(rpc_server *srv, polis_error *err);

/* The bound port (after rpc_server_start). */
int rpc_server_port(const rpc_server *srv);

/*
 * Stop accepting calls, give live calls up to grace_ms to finish, cancel
 * the rest (their on_end runs with RPC_CANCELLED) and join the workers.
 * Idempotent.
 */
void rpc_server_shutdown(rpc_server *srv, int grace_ms);

/* Shuts down (grace 0) if needed, then frees.  NULL is a no-op. */
void rpc_server_free(rpc_server *srv);

/* --- on a call (server side) --- */

/*
 * Queue a message to the client; the message is packed before this returns,
 * so the caller keeps ownership of `msg`.  Thread-safe: any thread may send
 * on a call it holds a reference to.  Returns POLIS_EAGAIN when the call's
 * send queue is full, POLIS_ECANCELED when the call is over,
 * POLIS_ETOOBIG when the message is over the maximum size.
 */
int rpc_call_send(rpc_call *call, const ProtobufCMessage *msg);

/* Messages queued and not yet written to the transport. */
size_t rpc_call_send_queue_len(rpc_call *call);

/*
 * Finish the call with a status, after the queued messages are sent.
 * Thread-safe; a second finish is ignored.  `message` may be NULL.
 */
void rpc_call_finish(rpc_call *call, int status, const char *message);

/* The status message a callback's returned status is sent with. */
void rpc_call_set_status_message(rpc_call *call, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Request metadata value for a lower-case key, or NULL.  Borrowed, valid
 * for the call's life. */
const char *rpc_call_metadata(const rpc_call *call, const char *key);

/* The peer's address ("ipv4:127.0.0.1:51234").  Borrowed. */
const char *rpc_call_peer(const rpc_call *call);

/* Milliseconds left before the client's deadline; INT64_MAX when none. */
int64_t rpc_call_deadline_left_ms(const rpc_call *call);

/* True once the client cancelled, the deadline passed or the call ended. */
bool rpc_call_is_over(const rpc_call *call);

/* The method's name ("Subscribe"). Borrowed. */
const char *rpc_call_method(const rpc_call *call);

/* Application data attached to the call. */
void rpc_call_set_data(rpc_call *call, void *data);
void *rpc_call_data(const rpc_call *call);

/* Hold the call beyond on_end / release it.  Thread-safe. */
void rpc_call_ref(rpc_call *call);
void rpc_call_unref(rpc_call *call);

/* ================================ client ================================ */

typedef struct rpc_channel rpc_channel;

typedef struct rpc_channel_options {
    rpc_creds creds;          /* zeroed: insecure */
    size_t max_message_bytes; /* 0: RPC_DEFAULT_MAX_MESSAGE */
} rpc_channel_options;

/* target: "host:port".  opts may be NULL.  Does not connect yet.  Caller
 * frees with rpc_channel_free(). */
int rpc_channel_new(const char *target, const rpc_channel_options *opts,
                    rpc_channel **out, polis_error *err);
void rpc_channel_free(rpc_channel *ch);

/*
 * A blocking unary call.  On RPC_OK, *resp is the unpacked response (free
 * with protobuf_c_message_free_unpacked(*resp, NULL)); otherwise *resp is
 * NULL.  Returns the status code; `status` (may be NULL) receives code and
 * message.  timeout_ms <= 0: no deadline.  Thread-safe on one channel.
 */
int rpc_unary(rpc_channel *ch, const ProtobufCServiceDescriptor *service,
              const char *method, const ProtobufCMessage *req,
              ProtobufCMessage **resp, const rpc_metadata *md, size_t n_md,
              int timeout_ms, rpc_status *status);

/*
 * A client stream (server-, client- or bidi-streaming).  One thread may send
 * while another receives.  Caller frees with rpc_stream_free().
 */
typedef struct rpc_stream rpc_stream;

int rpc_stream_open(rpc_channel *ch, const ProtobufCServiceDescriptor *service,
                    const char *method, const rpc_metadata *md, size_t n_md,
                    int timeout_ms, rpc_stream **out, polis_error *err);

/* Send one message (blocks until handed to the transport).
 * POLIS_ECANCELED when the stream is over. */
int rpc_stream_send(rpc_stream *s, const ProtobufCMessage *msg);

/* No more messages from this side. */
int rpc_stream_close_send(rpc_stream *s);

/*
 * Receive the next message, waiting up to timeout_ms (-1: forever).
 * Returns 1 with *msg set (free with protobuf_c_message_free_unpacked),
 * 0 at the end of the stream (the status is then final: rpc_stream_status),
 * POLIS_ETIMEDOUT when nothing arrived in time (the stream stays usable),
 * or another negative error.
 */
int rpc_stream_recv(rpc_stream *s, ProtobufCMessage **msg, int timeout_ms);

/* Wait for and return the final status code; `status` may be NULL. */
int rpc_stream_status(rpc_stream *s, rpc_status *status);

/* Cancel the stream (the server sees the call cancelled).  Thread-safe. */
void rpc_stream_cancel(rpc_stream *s);

/* Cancels if still open, then frees.  NULL is a no-op. */
void rpc_stream_free(rpc_stream *s);

#endif
