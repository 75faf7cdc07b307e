/*
 * nginxenv.h — a real nginx for tests and benchmarks: one foreground
 * process (no master, one event loop) owned by testenv, so it dies with
 * the test program, with its prefix, logs and temp paths in a directory
 * of the caller's.  The caller writes what goes in the http block.
 */
#ifndef POLIS_NGINXENV_H
#define POLIS_NGINXENV_H

#include "tests/support/testenv.h"

#include <stddef.h>

#define NGINXENV_BIN "/usr/sbin/nginx"

typedef struct nginxenv {
    testenv_proc *proc; /* NULL once stopped */
    char prefix[520];   /* <dir>/<name> */
    char conf[600], log[600], error_log[600];
} nginxenv;

/*
 * Start nginx with prefix <dir>/<name> (created) and `http` (server
 * blocks, settings) inside its http block, and wait until every port in
 * ports[0..nports) accepts on 127.0.0.1.  0, or -1 with the reason and
 * nginx's logs on stderr (nothing left running).
 */
int nginxenv_start(nginxenv *n, const char *dir, const char *name,
                   const char *http, const int *ports, size_t nports);

/* Print the ends of its output and error log to stderr, under headers. */
void nginxenv_print_logs(const nginxenv *n);

/* SIGTERM (SIGKILL after grace_ms); safe on a stopped or zeroed one. */
void nginxenv_stop(nginxenv *n, int grace_ms);

#endif
