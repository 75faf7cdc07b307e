/*
 * testenv.h — what integration tests need around the processes they test:
 * temp dirs removed at exit, free loopback ports, child processes with logs,
 * readiness waits, and a real etcd.  Everything started here is killed when
 * the test program exits, even when a test fails or the program is
 * interrupted (SIGINT, SIGTERM, SIGABRT).
 */
#ifndef POLIS_TESTENV_H
#define POLIS_TESTENV_H

#include "common/etcd_server.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/*
 * A fresh directory under $TMPDIR (or /tmp) named polis-<tag>-XXXXXX,
 * removed recursively at exit (kept when POLIS_TEST_KEEP=1, for
 * debugging).  Borrowed string, valid until exit; NULL on failure.
 */
const char *testenv_tmpdir(const char *tag);

/* rm -rf; 0 on success (a missing path is success). */
int testenv_rmrf(const char *path);

/* A TCP port that was free on 127.0.0.1 a moment ago; -1 on failure. */
int testenv_free_port(void);

/*
 * A TCP port on 127.0.0.1 where a connection is refused, for as long as the
 * test program runs: the port stays bound (never listening) by a socket
 * held until exit, so that no test running beside this one can be handed
 * it as a free port and start listening there.  -1 on failure.
 */
int testenv_refused_port(void);

typedef struct testenv_proc testenv_proc;

/*
 * Start argv[0] (looked up on PATH) with argv, the environment plus
 * `env_add` ("NAME=value", NULL-terminated, may be NULL), stdin from
 * /dev/null and stdout+stderr appended to log_path (NULL: /dev/null).
 * The child dies with the test (PR_SET_PDEATHSIG and the exit registry).
 * NULL on failure.  Caller stops it with testenv_proc_stop().
 */
testenv_proc *testenv_spawn(const char *const argv[],
                            const char *const env_add[], const char *log_path);

/*
 * testenv_spawn, then wait up to timeout_ms until 127.0.0.1:port accepts.
 * NULL when it did not start or listen in time: `what` and the tail of its
 * log are printed to stderr and the process is stopped.
 */
testenv_proc *testenv_spawn_listening(const char *what,
                                      const char *const argv[],
                                      const char *const env_add[],
                                      const char *log_path, int port,
                                      int timeout_ms);

pid_t testenv_proc_pid(const testenv_proc *p);
/* Borrowed; NULL when the output goes to /dev/null. */
const char *testenv_proc_log(const testenv_proc *p);
/* true while it runs (reaps it when it has exited). */
bool testenv_proc_alive(testenv_proc *p);
/* Send a signal without reaping.  For SIGSTOP, returns once every thread
 * is stopped (bounded at 5 s): the process serves nothing after it. */
int testenv_proc_kill(testenv_proc *p, int sig);

/*
 * SIGTERM, wait up to grace_ms, then SIGKILL; reap and free.  Returns the
 * waitpid status (-1 when unknown).  NULL is a no-op returning -1.
 */
int testenv_proc_stop(testenv_proc *p, int grace_ms);

/* 0 once host:port accepts a TCP connection, -1 after timeout_ms. */
int testenv_wait_port(const char *host, int port, int timeout_ms);

/* 0 once GET url answers 200, -1 after timeout_ms. */
int testenv_wait_http(const char *url, int timeout_ms);

/* The last max_bytes of a file, NUL-terminated ("" when unreadable);
 * caller frees.  For printing a failing process's log. */
char *testenv_file_tail(const char *path, size_t max_bytes);

/* ---- etcd ---- */

typedef struct testenv_etcd {
    etcd_server *server;
    const char *dir; /* temp dir holding data/ and etcd.log */
    char log_path[512];
    char endpoint[128]; /* "http://127.0.0.1:PORT" */
} testenv_etcd;

/*
 * A single etcd member on free loopback ports in a fresh temp dir, with
 * progress notifications every second plus `extra_args` (NULL-terminated,
 * may be NULL).  On failure prints the error (with the log tail) to stderr
 * and returns NULL.  Free with testenv_etcd_stop().
 */
testenv_etcd *testenv_etcd_start(const char *const extra_args[]);

/* Stop (SIGTERM, then SIGKILL after 5 s) and free; NULL is a no-op.  The
 * temp dir goes at exit. */
void testenv_etcd_stop(testenv_etcd *e);

/* Stop if running and start again on the same dir and ports; 0 or -1
 * (error printed to stderr). */
int testenv_etcd_restart(testenv_etcd *e);

/* Send a signal to etcd (SIGKILL, SIGSTOP...); 0 or -1.  For SIGSTOP,
 * returns once every etcd thread is stopped (bounded at 5 s). */
int testenv_etcd_kill(testenv_etcd *e, int sig);

#endif
