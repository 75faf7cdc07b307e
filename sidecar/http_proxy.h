/*
 * http_proxy.h — the HTTP port's reverse proxy: one admitted request on
 * the sidecar's evhttp listener forwarded to the product's upstream with
 * libevent's evhttp client on the same event loop, the answer streamed
 * back chunk by chunk (docs/sidecar.md "HTTP port").
 */
#ifndef POLIS_SC_HTTP_PROXY_H
#define POLIS_SC_HTTP_PROXY_H

#include "common/error.h"

#include <event2/event.h>
#include <event2/http.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Who is calling, as the upstream is told (Polis-* request headers).
 * Everything is borrowed for the duration of hp_forward only. */
typedef struct hp_identity {
    const char *principal;
    const char *const *groups;
    size_t ngroups;
    const char *purpose; /* NULL: none */
    const char *rule;    /* the allowing rule, NULL or "": none */
} hp_identity;

/* How a proxied request ended, for the access record: the status sent to
 * the client (502/504 included), the response body bytes handed to it,
 * and whether the transfer completed. */
typedef void (*hp_done_fn)(void *arg, int status, uint64_t bytes, bool ok);

/*
 * The TLS client context of https upstreams: certificates verified against
 * ca_file (PEM; NULL or "": OpenSSL's default paths, i.e. the system bundle,
 * or $SSL_CERT_FILE / $SSL_CERT_DIR), TLS 1.2 or newer.  One per process,
 * shared by every loop; free with SSL_CTX_free.  POLIS_EINVAL when the CA
 * file cannot be loaded.
 */
int hp_tls_new(const char *ca_file, SSL_CTX **out, polis_error *err);

/*
 * What one event loop (one thread) keeps for its upstream connections:
 * idle keep-alive connections (a connection whose exchange completed is
 * kept, at most 64, each for 30 s, and serves the next request to the same
 * scheme, host and port, which spares a connect, and for https a TLS
 * handshake, per request), an asynchronous DNS resolver so that host names
 * never block the loop, and `tls` (borrowed; NULL: https upstreams answer
 * 502).  NULL on failure.  hp_pool_free closes the connections.
 */
typedef struct hp_pool hp_pool;

hp_pool *hp_pool_new(struct event_base *base, SSL_CTX *tls);
void hp_pool_free(hp_pool *p);

/*
 * Forward `req` (the client's request, served by `base`, using `pool` of
 * that loop, which may be NULL for a connection of its own, plain http and
 * a blocking name lookup) to `upstream`
 * ("http[s]://host[:port][/base]") + "/" + `rest` (raw, already checked by
 * the caller to hold no "." or ".." segment) + the request's query
 * string.  Always answers the client: 502 {"error":"bad gateway"} when
 * the upstream cannot be reached, resets or answers garbage (with a
 * "detail" when its TLS certificate does not verify), 504 when it
 * says nothing for timeout_ms; a client that takes nothing of the answer
 * for write_timeout_ms is cut off (<= 0: 30000); a failure after the answer
 * started cuts the client connection so the transfer is visibly broken.  `done`
 * is called exactly once, possibly before hp_forward returns, after the answer
 * is finished or abandoned; `req` must not be touched by the caller after it.
 */
void hp_forward(struct event_base *base, hp_pool *pool,
                struct evhttp_request *req, const char *upstream,
                const char *rest, const hp_identity *id, int timeout_ms,
                int write_timeout_ms, hp_done_fn done, void *arg);

/* A hop-by-hop header (RFC 9110 7.6.1 and the Proxy-* family), by name. */
bool hp_hop_by_hop(const char *name);

#endif
