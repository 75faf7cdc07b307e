/*
 * sidecarenv.h — a real polis-sidecar for integration tests and benchmarks:
 * the binary from the build tree on free loopback ports (HTTP check port,
 * gRPC Authorizer port, admin port) with a state dir, started, waited for,
 * restarted on the same ports and dir, stopped.  Processes and temp dirs go
 * through testenv, so they die with the test program even when it fails.
 */
#ifndef POLIS_SIDECARENV_H
#define POLIS_SIDECARENV_H

#include "tests/support/testenv.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct sidecarenv_options {
    const char *domain;       /* --domain (required) */
    const char *controlplane; /* --controlplane ADDR[,ADDR...] (required) */
    const char *id;           /* --id; NULL: "<domain>-sidecar-<n>" */
    const char *state_dir;    /* NULL: <temp dir>/state */
    int keepalive_ms;         /* --keepalive-ms; 0: not given */
    /* More flags, NULL-terminated (may be NULL). */
    const char *const *extra_args;
    /* NULL: $POLIS_SIDECAR_BIN, else POLIS_BUILD_DIR/sidecar/polis-sidecar */
    const char *binary;
    /* Also wait until /readyz answers 200 (a snapshot is in force). */
    bool wait_ready;
    int start_timeout_ms; /* 0: 20000 */
} sidecarenv_options;

/* A running (or stopped) sidecar.  Fields are read-only for tests. */
typedef struct sidecarenv {
    testenv_proc *proc; /* NULL while stopped */
    char id[128];
    char domain[64];
    char dir[512];       /* temp dir: the log, state/ unless given */
    char state_dir[600]; /* --state-dir */
    char log_path[600];
    int http_port, grpc_port, admin_port;
    char http_url[64];    /* "http://127.0.0.1:PORT" (no trailing /) */
    char grpc_target[64]; /* "127.0.0.1:PORT", Authorizer.Check */
    char admin_url[64];
    /* private */
    char *argv_store[48];
    char binary[1024];
    int start_timeout_ms;
} sidecarenv;

/* The binary sidecarenv_start runs when options give none (borrowed). */
const char *sidecarenv_binary(void);

/*
 * Start polis-sidecar with --domain, --controlplane, --id, --state-dir,
 * --listen, --grpc-listen and --admin-listen on free loopback ports, plus
 * --keepalive-ms and extra_args; wait until /healthz answers 200 (and
 * /readyz when wait_ready).  On failure prints why (with the log tail) to
 * stderr, cleans up and returns NULL.  Caller frees with sidecarenv_free().
 */
sidecarenv *sidecarenv_start(const sidecarenv_options *opts);

/* Stop the process (SIGTERM, SIGKILL after grace_ms; <= 0: 5000) and keep
 * the ports and state dir for a restart.  Returns the waitpid status, -1
 * when it was not running. */
int sidecarenv_stop(sidecarenv *s, int grace_ms);

/* Send a signal to the running sidecar (SIGKILL, SIGSTOP...); 0 or -1. */
int sidecarenv_kill(sidecarenv *s, int sig);

/* Start again with the same flags, ports and state dir (stops it first if
 * running); waits as sidecarenv_start, for /readyz too when wait_ready. 0
 * or -1 (reason and log tail on stderr). */
int sidecarenv_restart(sidecarenv *s, bool wait_ready);

/* Stop if running and free.  NULL is a no-op. */
void sidecarenv_free(sidecarenv *s);

/* GET <admin>/readyz: 200, 503, or -1 when there is no answer. */
long sidecarenv_readyz(const sidecarenv *s, int timeout_ms);

/* Wait until /readyz answers 200; 0, or -1 after timeout_ms. */
int sidecarenv_wait_ready(const sidecarenv *s, int timeout_ms);

/*
 * POST <http>/v1/check with the JSON request `req` (e.g.
 * {"principal":"alice","product":"sales/orders","port":"query"}).
 * Returns the HTTP status (-1: no answer); *answer (may be NULL) receives
 * the parsed JSON body (NULL when it is not JSON); caller decrefs.
 */
long sidecarenv_check(const sidecarenv *s, const char *req, json_t **answer,
                      int timeout_ms);

/*
 * The value of a metric in <admin>/metrics: the first sample whose name
 * (labels included, as written) equals `series`, e.g.
 * "polis_sidecar_snapshots_applied_total".  0, or -1 when the page or the
 * sample is missing.
 */
int sidecarenv_metric(const sidecarenv *s, const char *series, double *value);

/* Print the last max_bytes of the sidecar's log to stderr under a header. */
void sidecarenv_dump_log(const sidecarenv *s, size_t max_bytes);

/* How often `needle` occurs in the sidecar's log (its last 4 MiB),
 * ignoring case. */
int sidecarenv_log_count(const sidecarenv *s, const char *needle);

/* Wait up to timeout_ms until the log holds `needle` more than `before`
 * times: 0, or -1 with the log's tail on stderr. */
int sidecarenv_wait_logged(const sidecarenv *s, const char *needle, int before,
                           int timeout_ms);

#endif
