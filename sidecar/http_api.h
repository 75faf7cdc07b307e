/*
 * http_api.h — the sidecar's HTTP port (--listen): POST /v1/check, the
 * Check API as JSON (docs/sidecar.md), on libevent's evhttp from a thread
 * of its own.  Later the product ports (query, file, event, http) join it.
 */
#ifndef POLIS_SC_HTTP_API_H
#define POLIS_SC_HTTP_API_H

#include "common/error.h"
#include "sidecar/checker.h"

typedef struct sc_http sc_http;

/* Largest request body answered; a larger one is a 400. */
#define SC_HTTP_MAX_BODY (64 * 1024)

/*
 * Bind `listen` ("127.0.0.1:7480"; port 0 picks one) and serve.  `c` is
 * borrowed and must outlive the server.  Caller stops and frees with
 * sc_http_free.  POLIS_EIO when the address cannot be bound.
 */
int sc_http_start(const char *listen, sc_checker *c, sc_http **out,
                  polis_error *err);

/* The bound port. */
int sc_http_port(const sc_http *h);

/* Stop the loop, join the thread, free.  NULL is a no-op. */
void sc_http_free(sc_http *h);

#endif
