/*
 * cpenv.h — a real polis-controlplane for integration tests and benchmarks:
 * the binary from the build tree on free loopback ports, with its own etcd
 * (a testenv etcd, a given one, or the control plane's embedded one) and a
 * temp data dir; started, waited for (gRPC port + /readyz 200) and stopped.
 * Everything it starts dies with the test program (testenv's registry).
 */
#ifndef POLIS_CPENV_H
#define POLIS_CPENV_H

#include "common/rpc.h"
#include "tests/support/testenv.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct cpenv_options {
    /* Which etcd the control plane uses:
     *  - embedded_etcd: no --etcd flag, so the control plane starts its own
     *    etcd in DATA_DIR/etcd;
     *  - else etcd_endpoints: --etcd with these URLs (a shared etcd, e.g.
     *    several replicas on one testenv_etcd);
     *  - else a private testenv_etcd that cpenv starts, owns and stops
     *    (env->etcd, so that a test can kill and restart it). */
    bool embedded_etcd;
    const char *etcd_endpoints;
    /* More flags, NULL-terminated (may be NULL): "--etcd-timeout-ms",
     * "2000", "--etcd-prefix=/other/"... */
    const char *const *extra_args;
    /* "NAME=value" added to its environment, NULL-terminated (may be
     * NULL). */
    const char *const *env_add;
    const char *binary;   /* NULL: POLIS_BUILD_DIR/controlplane/... */
    int start_timeout_ms; /* until /readyz is 200; 0: 20000 */
} cpenv_options;

/* A running (or stopped) control plane.  Fields are read-only for tests. */
typedef struct cpenv {
    testenv_etcd *etcd;        /* the private etcd; NULL when not cpenv's */
    testenv_proc *proc;        /* NULL once stopped */
    char etcd_endpoints[1024]; /* what --etcd got; "" when embedded */
    char dir[512];             /* temp dir: data/ and controlplane.log */
    char data_dir[600];        /* --data-dir */
    char log_path[600];        /* the control plane's stdout+stderr */
    int grpc_port;
    int admin_port;
    char grpc_target[64]; /* "127.0.0.1:PORT", for rpc_channel_new */
    char admin_url[64];   /* "http://127.0.0.1:PORT" (no trailing /) */
    /* private: what cpenv_restart runs again */
    char *argv_store[64];
    const char *env_store[32];
    char binary[1024];
    int start_timeout_ms;
} cpenv;

/*
 * Start etcd (unless given or embedded) and the control plane with
 * --listen 127.0.0.1:<free> --admin-listen 127.0.0.1:<free> --etcd <url>
 * --data-dir <tmp>/data plus opts->extra_args, and wait until the gRPC port
 * accepts and GET /readyz answers 200.  opts may be NULL.  On failure prints
 * why (with the log tail) to stderr, cleans up and returns NULL.  Caller
 * stops with cpenv_stop().
 */
cpenv *cpenv_start(const cpenv_options *opts);

/*
 * SIGTERM the control plane and wait up to grace_ms (<= 0: 5000) for it to
 * exit.  Returns 0 when it exited by itself with status 0 in time; -1 when
 * it had to be killed, exited non-zero, or was not running (the reason and
 * the log tail go to stderr).  env->proc is NULL afterwards; etcd is left
 * running.
 */
int cpenv_stop_controlplane(cpenv *env, int grace_ms);

/* Start the control plane again (same ports, data dir and flags) and wait
 * until ready, as cpenv_start.  Stops it first if running.  0 or -1. */
int cpenv_restart(cpenv *env);

/*
 * Stop the control plane (as cpenv_stop_controlplane, 5 s grace), then
 * the private etcd if cpenv started it, and free.  Returns the control
 * plane's stop result (0: clean exit in time), so a test can assert a
 * clean shutdown.  NULL is a no-op returning 0.  The temp dir goes at exit.
 */
int cpenv_stop(cpenv *env);

/* A channel to the control plane's gRPC port; NULL on failure.  Caller
 * frees with rpc_channel_free(). */
rpc_channel *cpenv_channel(const cpenv *env);

/*
 * GET url with a timeout.  Returns the HTTP status (e.g. 200, 503) or -1
 * when there was no answer.  body (may be NULL) receives up to body_len-1
 * bytes of the response, NUL-terminated.
 */
long cpenv_http_get(const char *url, int timeout_ms, char *body,
                    size_t body_len);

/* GET <admin_url>/readyz: the HTTP status (200 ready, 503 not) or -1.
 * Give a timeout longer than the control plane's --etcd-timeout-ms: the
 * probe waits for an etcd read. */
long cpenv_readyz(const cpenv *env, int timeout_ms);

/* Print the last max_bytes of the control plane's log to stderr under a
 * header; for failing tests. */
void cpenv_dump_log(const cpenv *env, size_t max_bytes);

#endif
