/*
 * etcd_server.h — start and supervise a local single-member etcd process:
 * the control plane's embedded mode and the integration tests use it.
 * fork/exec, wait for /health, stop (SIGTERM then SIGKILL), restart on the
 * same data dir and ports.  The library never logs: etcd's output goes to a
 * log file whose tail is quoted in start errors.
 */
#ifndef POLIS_ETCD_SERVER_H
#define POLIS_ETCD_SERVER_H

#include "common/error.h"

#include <stdbool.h>
#include <sys/types.h>

typedef struct etcd_server etcd_server;

typedef struct etcd_server_options {
    const char *binary;   /* NULL: $POLIS_ETCD_BIN, else "etcd" on PATH */
    const char *data_dir; /* required; created by etcd if missing */
    const char *host;     /* NULL: "127.0.0.1" */
    int client_port;      /* 0: a free loopback port */
    int peer_port;        /* 0: a free loopback port */
    const char *name;     /* member name, NULL: "polis" */
    const char *log_file; /* etcd's stdout+stderr (appended); NULL: none */
    int start_timeout_ms; /* until healthy; 0: 10000 */
    /* More etcd flags, NULL-terminated (may be NULL), e.g.
     * "--experimental-watch-progress-notify-interval=1s",
     * "--auto-compaction-retention=1h". */
    const char *const *extra_args;
} etcd_server_options;

/*
 * Start etcd and wait until GET /health answers {"health":"true"} within
 * start_timeout_ms.  On failure the error carries the tail of the log.
 * The child is in its own process group and gets SIGKILL when the thread
 * that started it exits (PR_SET_PDEATHSIG): start it from a thread that
 * lives as long as you need etcd.  Caller frees with etcd_server_free().
 * Options are copied.
 */
int etcd_server_start(const etcd_server_options *opts, etcd_server **out,
                      polis_error *err);

/* "http://127.0.0.1:PORT"; borrowed, valid until etcd_server_free. */
const char *etcd_server_endpoint(const etcd_server *s);
int etcd_server_client_port(const etcd_server *s);
int etcd_server_peer_port(const etcd_server *s);

/* The running process, or -1 when it is not running. */
pid_t etcd_server_pid(const etcd_server *s);

/*
 * true while the process runs.  Reaps it (waitpid WNOHANG) when it has
 * exited, so a supervisor can poll this and call etcd_server_restart.
 */
bool etcd_server_alive(etcd_server *s);

/*
 * SIGTERM, wait up to grace_ms (<= 0: 5000), then SIGKILL; reaps the
 * process.  Not running is not an error.  exit_status_out (may be NULL)
 * gets the waitpid status, or -1 when nothing was reaped.
 */
int etcd_server_stop(etcd_server *s, int grace_ms, int *exit_status_out,
                     polis_error *err);

/* Send `sig` (tests: SIGKILL, SIGSTOP, SIGCONT...).  Does not reap: call
 * etcd_server_stop, etcd_server_alive or etcd_server_restart after. */
int etcd_server_kill(etcd_server *s, int sig, polis_error *err);

/* Stop if running, then start again on the same data dir and ports and
 * wait until healthy, as etcd_server_start. */
int etcd_server_restart(etcd_server *s, polis_error *err);

/* Stops the process (if running) and frees.  NULL is a no-op. */
void etcd_server_free(etcd_server *s);

#endif
