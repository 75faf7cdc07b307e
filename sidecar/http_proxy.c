/*
 * http_proxy.c — the HTTP port's reverse proxy (http_proxy.h): evhttp
 * client connections on the serving loop (TLS through libevent's OpenSSL
 * bufferevents, names through evdns), kept alive in a per-loop pool
 * between requests, end-to-end headers copied, the caller's identity
 * added, the response relayed chunk by chunk with upstream reads paused
 * while the client lags.
 */
#include "sidecar/http_proxy.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/http_struct.h> /* the answer's HTTP version */
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>
#include <sys/socket.h>
#include <time.h>

/* Above this many bytes waiting for the client, upstream reads pause. */
#define HP_HIGH_WATER (1024 * 1024)
/* Timeouts of the client's keep-alive connection once we are done. */
#define HP_IDLE_TIMEOUT_S 30
#define HP_MAX_TARGET     8192

/* Idle upstream connections kept per loop, and for how long. */
#define HP_POOL_MAX    64
#define HP_POOL_IDLE_S 30

typedef struct hp_idle {
    char host[256];
    int port;
    bool tls;
    struct evhttp_connection *evcon;
    time_t since;
} hp_idle;

struct hp_pool {
    hp_idle idle[HP_POOL_MAX];
    size_t n;
    struct evdns_base *dns;
    SSL_CTX *tls; /* borrowed */
};

typedef struct hp_ctx {
    struct event_base *base;
    hp_pool *pool;
    char host[256];
    int port;
    bool tls;      /* https */
    bool reusable; /* the exchange completed: uevcon may serve another */
    struct evhttp_request *req;       /* the client's */
    struct evhttp_connection *cevcon; /* the client's connection */
    struct evhttp_connection *uevcon; /* ours to the upstream */
    struct event *pause_ev;           /* deferred: pause upstream reads */
    struct event *reap_ev;            /* deferred: free uevcon and us */
    hp_done_fn done;
    void *arg;
    int timeout_ms;
    int write_timeout_ms;
    struct timespec t0;
    enum evhttp_request_error uerr;
    bool failed, started, finished, paused;
    int status;
    uint64_t bytes;
    /* A pooled connection the upstream closed while it sat idle fails the
     * next request before any answer: such a request, when it is safe to
     * send twice (idempotent, no body), is sent again once on a new
     * connection.  What it takes to send it again: */
    bool pooled;   /* uevcon came from the pool */
    bool no_reuse; /* the upstream said Connection: close */
    bool retried;
    enum evhttp_cmd_type cmd;
    char *target;                    /* NULL: not retryable */
    struct evkeyvalq *hdrs;          /* the request headers as sent */
    struct evhttp_connection *stale; /* the failed pooled connection */
} hp_ctx;

static const char *const hop_headers[] = {
    "Connection", "Keep-Alive",      "TE", "Trailer", "Transfer-Encoding",
    "Upgrade",    "Proxy-Connection"};

bool hp_hop_by_hop(const char *name)
{
    if (strncasecmp(name, "Proxy-", 6) == 0)
        return true;
    for (size_t i = 0; i < sizeof(hop_headers) / sizeof(hop_headers[0]); i++)
        if (strcasecmp(name, hop_headers[i]) == 0)
            return true;
    return false;
}

/* Whether `name` is one of the comma-separated tokens of the Connection
 * headers in `hdrs` (those are hop-by-hop too). */
static bool connection_names(struct evkeyvalq *hdrs, const char *name)
{
    size_t n = strlen(name);
    struct evkeyval *kv;

    TAILQ_FOREACH(kv, hdrs, next)
    {
        const char *s = kv->value;

        if (strcasecmp(kv->key, "Connection") != 0)
            continue;
        while (*s) {
            size_t len;

            while (*s == ' ' || *s == '\t' || *s == ',')
                s++;
            len = strcspn(s, ", \t");
            if (len == n && strncasecmp(s, name, n) == 0)
                return true;
            s += len;
        }
    }
    return false;
}

static bool end_to_end(struct evkeyvalq *hdrs, const char *name)
{
    return !hp_hop_by_hop(name) && !connection_names(hdrs, name);
}

static void set_client_timeouts(hp_ctx *c, int read_ms, int write_ms)
{
    struct bufferevent *bev =
        c->cevcon ? evhttp_connection_get_bufferevent(c->cevcon) : NULL;
    struct timeval r = {read_ms / 1000, (read_ms % 1000) * 1000};
    struct timeval w = {write_ms / 1000, (write_ms % 1000) * 1000};

    if (bev)
        bufferevent_set_timeouts(bev, read_ms ? &r : NULL,
                                 write_ms ? &w : NULL);
}

/* detail: NULL, or a short text of ours (no quotes or backslashes). */
static void reply_gateway(struct evhttp_request *req, int code,
                          const char *detail)
{
    struct evbuffer *b = evbuffer_new();

    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    if (b && detail)
        evbuffer_add_printf(b, "{\"error\":\"%s\",\"detail\":\"%s\"}\n",
                            code == 504 ? "gateway timeout" : "bad gateway",
                            detail);
    else if (b)
        evbuffer_add_printf(b, "{\"error\":\"%s\"}\n",
                            code == 504 ? "gateway timeout" : "bad gateway");
    evhttp_send_reply(req, code,
                      code == 504 ? "Gateway Timeout" : "Bad Gateway", b);
    if (b)
        evbuffer_free(b);
}

int hp_tls_new(const char *ca_file, SSL_CTX **out, polis_error *err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int ok;

    *out = NULL;
    if (ctx == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL,
                               "cannot make a TLS context");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A server that closes without close_notify: OpenSSL 3 makes that an
     * error, which libevent 2.1 does not map to EOF, so a close-delimited
     * answer would be cut.  Bodies framed by a length or chunks still
     * notice a truncation. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file && *ca_file)
        ok = SSL_CTX_load_verify_locations(ctx, ca_file, NULL);
    else
        ok = SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char why[256];
        ERR_error_string_n(ERR_get_error(), why, sizeof(why));
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return polis_error_set(err, POLIS_EINVAL,
                               ca_file && *ca_file ? ca_file : "default CAs",
                               "cannot load the CA certificates: %s", why);
    }
    *out = ctx;
    return 0;
}

hp_pool *hp_pool_new(struct event_base *base, SSL_CTX *tls)
{
    hp_pool *p = calloc(1, sizeof(hp_pool));

    if (p == NULL)
        return NULL;
    /* resolv.conf (its nameservers, search list and ndots) and the hosts
     * file, as the system resolver would.  A missing resolv.conf, or one
     * without a nameserver (a container without DNS), is no error: evdns
     * then asks 127.0.0.1, and names in /etc/hosts resolve anyway.
     * (EVDNS_BASE_INITIALIZE_NAMESERVERS would fail the whole base.) */
    p->dns = evdns_base_new(base, 0);
    if (p->dns == NULL) {
        free(p);
        return NULL;
    }
    (void)evdns_base_resolv_conf_parse(p->dns, DNS_OPTIONS_ALL,
                                       "/etc/resolv.conf");
    if (evdns_base_count_nameservers(p->dns) == 0)
        evdns_base_nameserver_ip_add(p->dns, "127.0.0.1");
    p->tls = tls;
    return p;
}

void hp_pool_free(hp_pool *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n; i++)
        evhttp_connection_free(p->idle[i].evcon);
    /* Lookups still running fail (their connections are gone already). */
    evdns_base_free(p->dns, 1);
    free(p);
}

/* A new connection to the context's upstream: a TLS one for https, the
 * server's certificate checked against its host name (or IP address) and
 * the host name sent as SNI. */
static struct evhttp_connection *connect_upstream(hp_ctx *c)
{
    struct bufferevent *bev = NULL;
    unsigned char ip[16];
    bool literal = inet_pton(AF_INET, c->host, ip) == 1 ||
                   inet_pton(AF_INET6, c->host, ip) == 1;

    if (c->tls) {
        SSL *ssl = c->pool && c->pool->tls ? SSL_new(c->pool->tls) : NULL;
        if (ssl == NULL)
            return NULL;
        if (literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl),
                                                    c->host) != 1
                    : SSL_set_tlsext_host_name(ssl, c->host) != 1 ||
                          SSL_set1_host(ssl, c->host) != 1) {
            SSL_free(ssl);
            return NULL;
        }
        /* Owns ssl from here (freed with the bufferevent). */
        bev = bufferevent_openssl_socket_new(
            c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
            BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (bev == NULL)
            return NULL;
        /* A close-delimited body ends at EOF; many servers close without
         * a TLS close_notify. */
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    }
    return evhttp_connection_base_bufferevent_new(
        c->base, c->pool ? c->pool->dns : NULL, bev, c->host,
        (uint16_t)c->port);
}

/* Why a TLS connection failed, for the 502's detail: the certificate
 * check's verdict, else the library's reason; NULL when nothing is known
 * (a refused or reset connection). */
static const char *tls_failure(hp_ctx *c, char *buf, size_t len)
{
    struct bufferevent *bev =
        c->uevcon ? evhttp_connection_get_bufferevent(c->uevcon) : NULL;
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    unsigned long e, first = 0;
    long v;

    if (ssl == NULL)
        return NULL;
    while ((e = bufferevent_get_openssl_error(bev)) != 0)
        if (first == 0)
            first = e;
    v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) {
        snprintf(buf, len, "TLS: the upstream's certificate: %s",
                 X509_verify_cert_error_string(v));
        return buf;
    }
    if (first && ERR_reason_error_string(first)) {
        snprintf(buf, len, "TLS: %s", ERR_reason_error_string(first));
        return buf;
    }
    return NULL;
}

/* Drop entries idle too long (the upstream has likely closed them). */
static void pool_expire(hp_pool *p, time_t now)
{
    for (size_t i = 0; i < p->n;) {
        if (now - p->idle[i].since > HP_POOL_IDLE_S) {
            evhttp_connection_free(p->idle[i].evcon);
            p->idle[i] = p->idle[--p->n];
        } else {
            i++;
        }
    }
}

/* An idle connection to host:port (the most recently used), or NULL. */
static struct evhttp_connection *pool_get(hp_pool *p, const char *host,
                                          int port, bool tls)
{
    struct evhttp_connection *evcon;

    if (p == NULL)
        return NULL;
    pool_expire(p, time(NULL));
    for (size_t i = p->n; i-- > 0;) {
        if (p->idle[i].port != port || p->idle[i].tls != tls ||
            strcmp(p->idle[i].host, host) != 0)
            continue;
        evcon = p->idle[i].evcon;
        memmove(&p->idle[i], &p->idle[i + 1],
                (p->n - i - 1) * sizeof(p->idle[0]));
        p->n--;
        /* evhttp reconnects a plain connection the upstream closed, but
         * cannot start a TLS session over again on it: drop it. */
        if (tls &&
            bufferevent_getfd(evhttp_connection_get_bufferevent(evcon)) < 0) {
            evhttp_connection_free(evcon);
            continue;
        }
        return evcon;
    }
    return NULL;
}

/* Keep a connection whose exchange completed; a full pool drops its
 * oldest. */
static void pool_put(hp_pool *p, const char *host, int port, bool tls,
                     struct evhttp_connection *evcon)
{
    if (p->n == HP_POOL_MAX) {
        evhttp_connection_free(p->idle[0].evcon);
        memmove(&p->idle[0], &p->idle[1], (p->n - 1) * sizeof(p->idle[0]));
        p->n--;
    }
    snprintf(p->idle[p->n].host, sizeof(p->idle[0].host), "%s", host);
    p->idle[p->n].port = port;
    p->idle[p->n].tls = tls;
    p->idle[p->n].evcon = evcon;
    p->idle[p->n].since = time(NULL);
    p->n++;
}

static void ctx_free(hp_ctx *c)
{
    /* A connection is pooled only after a complete exchange: evhttp keeps
     * it open when the upstream allows keep-alive and reconnects on the
     * next request when it closed. */
    if (c->uevcon && c->pool && c->reusable && !c->no_reuse)
        pool_put(c->pool, c->host, c->port, c->tls, c->uevcon);
    else if (c->uevcon)
        evhttp_connection_free(c->uevcon);
    if (c->stale)
        evhttp_connection_free(c->stale);
    if (c->hdrs) {
        evhttp_clear_headers(c->hdrs);
        free(c->hdrs);
    }
    free(c->target);
    if (c->pause_ev)
        event_free(c->pause_ev);
    if (c->reap_ev)
        event_free(c->reap_ev);
    free(c);
}

/* Freeing the upstream connection from inside one of its own callbacks
 * is unsafe: it is done from a deferred event instead. */
static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ctx_free(arg);
}

static void finish(hp_ctx *c, bool ok)
{
    c->finished = true;
    if (c->cevcon) {
        evhttp_connection_set_closecb(c->cevcon, NULL, NULL);
        set_client_timeouts(c, HP_IDLE_TIMEOUT_S * 1000,
                            HP_IDLE_TIMEOUT_S * 1000);
    }
    c->done(c->arg, c->status, c->bytes, ok);
    event_active(c->reap_ev, EV_TIMEOUT, 0);
}

static int64_t elapsed_ms(const hp_ctx *c)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)(t.tv_sec - c->t0.tv_sec) * 1000 +
           (t.tv_nsec - c->t0.tv_nsec) / 1000000;
}

/* The client hung up: drop the upstream exchange and our state now (we
 * are in the client connection's callback, not the upstream's). */
static void on_client_closed(struct evhttp_connection *evcon, void *arg)
{
    hp_ctx *c = arg;

    (void)evcon;
    c->cevcon = NULL;
    c->finished = true;
    if (evhttp_request_get_connection(c->req) == NULL)
        evhttp_send_reply_end(c->req); /* frees the detached request */
    c->done(c->arg, c->status ? c->status : 499, c->bytes, false);
    ctx_free(c);
}

static void on_sent(struct evhttp_connection *evcon, void *arg)
{
    hp_ctx *c = arg;
    struct bufferevent *ubev =
        c->uevcon ? evhttp_connection_get_bufferevent(c->uevcon) : NULL;

    (void)evcon;
    if (c->paused && ubev) {
        c->paused = false;
        bufferevent_enable(ubev, EV_READ);
    }
}

/* Run after evhttp's read handler returned (it re-enables reading). */
static void on_pause(evutil_socket_t fd, short what, void *arg)
{
    hp_ctx *c = arg;
    struct bufferevent *cbev =
        c->cevcon ? evhttp_connection_get_bufferevent(c->cevcon) : NULL;
    struct bufferevent *ubev =
        c->uevcon ? evhttp_connection_get_bufferevent(c->uevcon) : NULL;

    (void)fd;
    (void)what;
    if (c->finished || cbev == NULL || ubev == NULL)
        return;
    if (evbuffer_get_length(bufferevent_get_output(cbev)) > HP_HIGH_WATER) {
        c->paused = true;
        bufferevent_disable(ubev, EV_READ);
    }
}

/* An answer that has no body whatever its headers say (RFC 9112 6.3). */
static bool bodyless(enum evhttp_cmd_type cmd, int status)
{
    return cmd == EVHTTP_REQ_HEAD || (status >= 100 && status < 200) ||
           status == 204 || status == 304;
}

static int on_headers(struct evhttp_request *ureq, void *arg)
{
    hp_ctx *c = arg;
    struct evkeyvalq *in = evhttp_request_get_input_headers(ureq);
    struct evkeyvalq *out = evhttp_request_get_output_headers(c->req);
    const char *line = evhttp_request_get_response_code_line(ureq);
    struct evkeyval *kv;

    if (c->finished)
        return -1;
    c->status = evhttp_request_get_response_code(ureq);
    /* evhttp itself only recognises "Connection: close" exactly.  An
     * HTTP/1.0 answer ends the connection unless it says keep-alive, and
     * one with neither a length nor chunks ends where the connection does:
     * neither is pooled (a TLS one could not be reopened anyway). */
    if (connection_names(in, "close") ||
        (ureq->major == 1 && ureq->minor == 0 &&
         !connection_names(in, "keep-alive")) ||
        (evhttp_find_header(in, "Content-Length") == NULL &&
         evhttp_find_header(in, "Transfer-Encoding") == NULL &&
         !bodyless(c->cmd, c->status)))
        c->no_reuse = true;
    TAILQ_FOREACH(kv, in, next)
    if (end_to_end(in, kv->key))
        evhttp_add_header(out, kv->key, kv->value);
    evhttp_send_reply_start(c->req, c->status, line && *line ? line : "-");
    c->started = true;
    return 0;
}

static void on_chunk(struct evhttp_request *ureq, void *arg)
{
    hp_ctx *c = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(ureq);
    struct bufferevent *cbev =
        c->cevcon ? evhttp_connection_get_bufferevent(c->cevcon) : NULL;

    if (c->finished || !c->started)
        return;
    c->bytes += evbuffer_get_length(in);
    evhttp_send_reply_chunk_with_cb(c->req, in, on_sent, c);
    if (cbev &&
        evbuffer_get_length(bufferevent_get_output(cbev)) > HP_HIGH_WATER)
        event_active(c->pause_ev, EV_TIMEOUT, 0);
}

static void on_error(enum evhttp_request_error e, void *arg)
{
    hp_ctx *c = arg;

    c->failed = true;
    c->uerr = e;
}

static void on_done(struct evhttp_request *ureq, void *arg);

/* A request of ours on c->uevcon (a new connection when it has none),
 * with the exchange's callbacks and timeout; NULL when out of memory. */
static struct evhttp_request *upstream_request(hp_ctx *c)
{
    struct timeval tv = {c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000};
    struct evhttp_request *ureq;

    if (c->uevcon == NULL)
        c->uevcon = connect_upstream(c);
    ureq = c->uevcon ? evhttp_request_new(on_done, c) : NULL;
    if (ureq == NULL)
        return NULL;
    evhttp_connection_set_timeout_tv(c->uevcon, &tv);
    evhttp_connection_set_retries(c->uevcon, 0);
    evhttp_request_set_header_cb(ureq, on_headers);
    evhttp_request_set_chunked_cb(ureq, on_chunk);
    evhttp_request_set_error_cb(ureq, on_error);
    return ureq;
}

/* Send the saved request again on a new connection; false when it could
 * not be sent (the caller answers 502). */
static bool send_again(hp_ctx *c)
{
    struct evhttp_request *ureq;
    struct evkeyval *kv;

    c->retried = true;
    c->stale = c->uevcon; /* we are in its callback: freed with c */
    c->pooled = false;
    c->uevcon = NULL;
    if ((ureq = upstream_request(c)) == NULL)
        return false;
    TAILQ_FOREACH(kv, c->hdrs, next)
    evhttp_add_header(evhttp_request_get_output_headers(ureq), kv->key,
                      kv->value);
    c->failed = false;
    c->uerr = 0;
    /* On failure evhttp_make_request frees ureq itself. */
    return evhttp_make_request(c->uevcon, ureq, c->cmd, c->target) == 0;
}

static void on_done(struct evhttp_request *ureq, void *arg)
{
    hp_ctx *c = arg;
    bool failed = c->failed || ureq == NULL ||
                  evhttp_request_get_response_code(ureq) == 0;

    if (c->finished)
        return;
    if (!failed) {
        if (!c->started)
            on_headers(ureq, c);
        c->reusable = true;
        finish(c, true);
        evhttp_send_reply_end(c->req);
        return;
    }
    if (!c->started && c->pooled && !c->retried && c->target && send_again(c))
        return;
    if (!c->started) {
        /* libevent reports a refused connect as a timeout too: only a
         * failure that took the whole timeout is one. */
        bool timeout = (c->uerr == EVREQ_HTTP_TIMEOUT || c->uerr == 0) &&
                       elapsed_ms(c) >= c->timeout_ms - c->timeout_ms / 10;
        char why[256];
        const char *detail = c->tls ? tls_failure(c, why, sizeof(why)) : NULL;

        c->status = timeout ? 504 : 502;
        finish(c, false);
        reply_gateway(c->req, c->status, timeout ? NULL : detail);
        return;
    }
    /* Mid-body: cut the client's connection so that the transfer is
     * visibly incomplete (no last chunk, or fewer bytes than announced). */
    {
        struct bufferevent *cbev =
            c->cevcon ? evhttp_connection_get_bufferevent(c->cevcon) : NULL;
        struct evhttp_request *req = c->req;

        finish(c, false);
        if (cbev)
            shutdown((int)bufferevent_getfd(cbev), SHUT_RDWR);
        evhttp_send_reply_end(req);
    }
}

/* The request target at the upstream: its base path, "/", rest, query. */
static int build_target(const struct evhttp_uri *up, const char *rest,
                        const char *query, char *buf, size_t len)
{
    const char *base = evhttp_uri_get_path(up);
    size_t bl = base ? strlen(base) : 0;
    int n;

    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    n = snprintf(buf, len, "%.*s/%s%s%s", (int)bl, base ? base : "", rest,
                 query ? "?" : "", query ? query : "");
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

static bool polis_header(const char *name)
{
    return strncasecmp(name, "Polis-", 6) == 0;
}

static void copy_request_headers(hp_ctx *c, struct evhttp_request *ureq,
                                 const struct evhttp_uri *up, const char *host,
                                 int port, const hp_identity *id)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(c->req);
    struct evkeyvalq *out = evhttp_request_get_output_headers(ureq);
    const char *xff = evhttp_find_header(in, "X-Forwarded-For");
    char line[4096], *peer = NULL;
    ev_uint16_t peer_port = 0;
    struct evkeyval *kv;
    size_t used = 0;

    (void)up;
    TAILQ_FOREACH(kv, in, next)
    {
        if (!end_to_end(in, kv->key) || polis_header(kv->key) ||
            strcasecmp(kv->key, "Authorization") == 0 ||
            strcasecmp(kv->key, "Host") == 0 ||
            strcasecmp(kv->key, "Content-Length") == 0 ||
            strcasecmp(kv->key, "Expect") == 0 ||
            strcasecmp(kv->key, "X-Forwarded-For") == 0)
            continue;
        evhttp_add_header(out, kv->key, kv->value);
    }
    if (port == (c->tls ? 443 : 80))
        snprintf(line, sizeof(line), "%s", host);
    else
        snprintf(line, sizeof(line), "%s:%d", host, port);
    evhttp_add_header(out, "Host", line);
    evhttp_add_header(out, "Polis-Principal", id->principal);
    line[0] = '\0';
    for (size_t i = 0; i < id->ngroups; i++) {
        int n = snprintf(line + used, sizeof(line) - used, "%s%s", i ? "," : "",
                         id->groups[i]);
        if (n < 0 || (size_t)n >= sizeof(line) - used)
            break;
        used += (size_t)n;
    }
    line[used] = '\0';
    evhttp_add_header(out, "Polis-Groups", line);
    if (id->purpose)
        evhttp_add_header(out, "Polis-Purpose", id->purpose);
    if (id->rule && *id->rule)
        evhttp_add_header(out, "Polis-Decision-Rule", id->rule);
    if (c->cevcon)
        evhttp_connection_get_peer(c->cevcon, &peer, &peer_port);
    if (peer) {
        if (xff && *xff)
            snprintf(line, sizeof(line), "%s, %s", xff, peer);
        else
            snprintf(line, sizeof(line), "%s", peer);
        evhttp_add_header(out, "X-Forwarded-For", line);
    }
}

/* Keep what send_again needs (nothing is kept when memory is short: the
 * request is then not retried). */
static void save_for_retry(hp_ctx *c, struct evhttp_request *ureq,
                           const char *target)
{
    struct evkeyval *kv;

    c->hdrs = calloc(1, sizeof(*c->hdrs));
    c->target = strdup(target);
    if (c->hdrs == NULL || c->target == NULL) {
        free(c->hdrs);
        free(c->target);
        c->hdrs = NULL;
        c->target = NULL;
        return;
    }
    TAILQ_INIT(c->hdrs);
    TAILQ_FOREACH(kv, evhttp_request_get_output_headers(ureq), next)
    evhttp_add_header(c->hdrs, kv->key, kv->value);
}

void hp_forward(struct event_base *base, hp_pool *pool,
                struct evhttp_request *req, const char *upstream,
                const char *rest, const hp_identity *id, int timeout_ms,
                int write_timeout_ms, hp_done_fn done, void *arg)
{
    struct evhttp_uri *up = evhttp_uri_parse(upstream);
    const char *query =
        evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    struct evhttp_request *ureq = NULL;
    const char *host = up ? evhttp_uri_get_host(up) : NULL;
    const char *scheme = up ? evhttp_uri_get_scheme(up) : NULL;
    int port = up ? evhttp_uri_get_port(up) : -1;
    char target[HP_MAX_TARGET];
    hp_ctx *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        if (up)
            evhttp_uri_free(up);
        reply_gateway(req, 502, NULL);
        done(arg, 502, 0, false);
        return;
    }
    c->base = base;
    c->req = req;
    c->cevcon = evhttp_request_get_connection(req);
    c->done = done;
    c->arg = arg;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    c->write_timeout_ms = write_timeout_ms > 0 ? write_timeout_ms : 30000;
    clock_gettime(CLOCK_MONOTONIC, &c->t0);
    c->pause_ev = event_new(base, -1, 0, on_pause, c);
    c->reap_ev = event_new(base, -1, 0, on_reap, c);
    c->tls = scheme && strcasecmp(scheme, "https") == 0;
    if (port < 0)
        port = c->tls ? 443 : 80;
    if (c->pause_ev == NULL || c->reap_ev == NULL || host == NULL ||
        scheme == NULL || (!c->tls && strcasecmp(scheme, "http") != 0) ||
        build_target(up, rest, query, target, sizeof(target)) != 0)
        goto fail;
    if (c->tls && (pool == NULL || pool->tls == NULL)) {
        evhttp_uri_free(up);
        c->status = 502;
        reply_gateway(req, 502, "https upstreams are not set up here");
        c->finished = true;
        done(arg, 502, 0, false);
        ctx_free(c);
        return;
    }
    c->pool = pool;
    /* "[::1]" names the address ::1: connect to, and verify, that. */
    if (host[0] == '[' && host[strlen(host) - 1] == ']')
        snprintf(c->host, sizeof(c->host), "%.*s", (int)strlen(host) - 2,
                 host + 1);
    else
        snprintf(c->host, sizeof(c->host), "%s", host);
    c->port = port;
    c->uevcon = pool_get(pool, c->host, port, c->tls);
    c->pooled = c->uevcon != NULL;
    if ((ureq = upstream_request(c)) == NULL)
        goto fail;
    copy_request_headers(c, ureq, up, host, port, id);
    if (evbuffer_get_length(body) > 0 || cmd == EVHTTP_REQ_POST ||
        cmd == EVHTTP_REQ_PUT || cmd == EVHTTP_REQ_PATCH) {
        char n[32];
        snprintf(n, sizeof(n), "%zu", evbuffer_get_length(body));
        evhttp_add_header(evhttp_request_get_output_headers(ureq),
                          "Content-Length", n);
        evbuffer_add_buffer(evhttp_request_get_output_buffer(ureq), body);
    }
    c->cmd = cmd;
    if (c->pooled &&
        evbuffer_get_length(evhttp_request_get_output_buffer(ureq)) == 0 &&
        (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD ||
         cmd == EVHTTP_REQ_OPTIONS || cmd == EVHTTP_REQ_DELETE ||
         cmd == EVHTTP_REQ_TRACE))
        save_for_retry(c, ureq, target);
    evhttp_uri_free(up);
    up = NULL;
    /* While we wait for the upstream, the client's connection must not
     * time out on reads (it sends nothing more); writes keep a bound. */
    set_client_timeouts(c, 0, c->write_timeout_ms);
    if (c->cevcon)
        evhttp_connection_set_closecb(c->cevcon, on_client_closed, c);
    /* On failure evhttp_make_request frees ureq itself. */
    if (evhttp_make_request(c->uevcon, ureq, cmd, target) != 0) {
        if (c->cevcon)
            evhttp_connection_set_closecb(c->cevcon, NULL, NULL);
        goto fail;
    }
    return;
fail:
    if (up)
        evhttp_uri_free(up);
    c->status = 502;
    reply_gateway(req, 502, NULL);
    c->finished = true;
    done(arg, 502, 0, false);
    ctx_free(c);
}
