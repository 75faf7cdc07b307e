/*
 * process.h — small helpers for starting and watching child processes,
 * shared by the embedded-etcd supervisor (etcd_server.c) and the test
 * environment: PATH look-up, a free loopback port, the tail of a log file,
 * closing inherited descriptors in a child.
 */
#ifndef POLIS_PROCESS_H
#define POLIS_PROCESS_H

#include <stddef.h>

/* `name` as is when it has a slash, else the first executable of that name
 * on $PATH; NULL when none.  Caller frees. */
char *proc_find_on_path(const char *name);

/* A TCP port free on `host` (an IPv4 address; NULL or unparsable:
 * 127.0.0.1) at the time of the call, or -1. */
int proc_free_port(const char *host);

/* The last len - 1 bytes of the file into buf ("" when unreadable). */
void proc_file_tail(const char *path, char *buf, size_t len);

/* Close every descriptor from lowfd up, except `keep` (-1: none).  For a
 * child between fork and exec: async-signal-safe. */
void proc_close_fds_from(int lowfd, int keep);

#endif
