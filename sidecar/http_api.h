/*
 * http_api.h — the sidecar's HTTP port (--listen) on libevent's evhttp:
 * POST /v1/check (the Check API as JSON) and the product ports
 * /v1/products/{domain}/{product}/query, .../files/[name], .../events
 * (publish, and subscribe as Server-Sent Events) and .../http/{path}
 * (docs/sidecar.md).  N event loops, one thread each,
 * accept on one listening socket.
 */
#ifndef POLIS_SC_HTTP_API_H
#define POLIS_SC_HTTP_API_H

#include "common/error.h"
#include "common/metrics.h"
#include "sidecar/access_log.h"
#include "sidecar/checker.h"
#include "sidecar/event_port.h"
#include "sidecar/ports.h"
#include "sidecar/query_sqlite.h"
#include "sidecar/snapshot.h"

#include <openssl/ssl.h>

typedef struct sc_http sc_http;

/* Largest request body answered; a larger one is a 400. */
#define SC_HTTP_MAX_BODY (64 * 1024)
/* Largest query body ({"sql", "params"}); a larger one is a 400. */
#define SC_HTTP_MAX_QUERY_BODY (1024 * 1024)
#define SC_HTTP_MAX_WORKERS    64

typedef struct sc_http_options {
    const char *listen;     /* "127.0.0.1:7480"; port 0 picks one */
    int workers;            /* event loops (threads); 0: 4 */
    const char *domain;     /* the sidecar's domain */
    sc_checker *checker;    /* POST /v1/check */
    sc_snapshot_slot *slot; /* the snapshot in force, for the ports */
    sc_ports *ports;        /* the product catalogue */
    sc_access_log *access;  /* one record per product request; may be NULL */
    sq_limits query;        /* limits of one query (0: SQ_DEFAULT_*) */
    int write_timeout_ms;   /* a consumer that reads nothing this long is
                               dropped; 0: 30000 */
    int proxy_timeout_ms;   /* HTTP port: an upstream silent this long is a
                               504; 0: 30000 */
    SSL_CTX *upstream_tls;  /* HTTP port: https upstreams (hp_tls_new);
                               borrowed; NULL: they answer 502 */
    sc_events *events;      /* event ports' logs; NULL: event ports answer
                               503 */
    int max_consumers;      /* event streams open at once, beyond: 503;
                               0: 10000 */
    metrics *metrics;       /* borrowed, may be NULL: event port series
                               (docs/sidecar.md, metrics) */
} sc_http_options;

/*
 * Bind opts->listen and serve.  Everything in `opts` is borrowed and must
 * outlive the server (strings too).  Caller stops and frees with
 * sc_http_free.  POLIS_EIO when the address cannot be bound, POLIS_EINVAL
 * for a missing option.
 */
int sc_http_start(const sc_http_options *opts, sc_http **out, polis_error *err);

/* The bound port. */
int sc_http_port(const sc_http *h);

/* Stop every loop, join the threads, free.  Streams still running are cut.
 * Shuts the event ports' logs down first (sc_events_shutdown), so that
 * publishes waiting for an fsync are answered 503.  NULL is a no-op. */
void sc_http_free(sc_http *h);

#endif
