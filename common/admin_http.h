/*
 * admin_http.h — the daemons' admin endpoints on libevent's evhttp, served
 * from a thread of their own: GET /healthz (the process is up), GET /readyz
 * (ready to serve, per the owner's callback, with the reason when not) and
 * GET /metrics (Prometheus text).
 */
#ifndef POLIS_ADMIN_HTTP_H
#define POLIS_ADMIN_HTTP_H

#include "common/error.h"
#include "common/metrics.h"

#include <stddef.h>

typedef struct admin_http admin_http;

/* Fill `reason` and return non-zero when not ready.  Called on the admin
 * thread; may block briefly (keep it under a second). */
typedef int (*admin_ready_fn)(void *ud, char *reason, size_t len);

/*
 * Bind `listen` ("127.0.0.1:7401", port 0 picks one) and serve.  `m` and
 * `ud` are borrowed and must outlive the server.  Caller stops and frees
 * with admin_http_free().
 */
int admin_http_start(const char *listen, metrics *m, admin_ready_fn ready,
                     void *ud, admin_http **out, polis_error *err);

/* The bound port. */
int admin_http_port(const admin_http *a);

/* Stop the loop, join the thread, free.  NULL is a no-op. */
void admin_http_free(admin_http *a);

/* Split "host:port" (or "[v6]:port", or ":port" meaning 0.0.0.0); port
 * must be 0-65535.  host gets at most hostlen-1 bytes. */
int admin_split_hostport(const char *addr, char *host, size_t hostlen,
                         int *port, polis_error *err);

#endif
