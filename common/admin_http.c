/*
 * admin_http.c — /healthz, /readyz, /metrics on evhttp (admin_http.h).  The
 * event loop runs on its own thread; stopping uses event_base_loopexit,
 * which is thread-safe once evthread_use_pthreads() has been called.
 */
#include "common/admin_http.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct admin_http {
    struct event_base *base;
    struct evhttp *http;
    pthread_t thread;
    int port;
    metrics *m;
    admin_ready_fn ready;
    void *ud;
};

int admin_split_hostport(const char *addr, char *host, size_t hostlen,
                         int *port, polis_error *err)
{
    const char *colon, *h = addr;
    size_t hl;
    char *end;
    long p;

    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':')
            return polis_error_set(err, POLIS_EINVAL, addr,
                                   "expected [ipv6]:port");
        h = addr + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL)
            return polis_error_set(err, POLIS_EINVAL, addr,
                                   "expected host:port");
        hl = (size_t)(colon - addr);
    }
    p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || p < 0 || p > 65535)
        return polis_error_set(err, POLIS_EINVAL, addr,
                               "port must be a number from 0 to 65535");
    if (hl == 0) {
        h = "0.0.0.0";
        hl = strlen(h);
    }
    if (hl >= hostlen)
        return polis_error_set(err, POLIS_EINVAL, addr, "host too long");
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

static void reply_text(struct evhttp_request *req, int code, const char *reason,
                       const char *ctype, const char *body)
{
    struct evbuffer *buf = evbuffer_new();

    if (buf == NULL) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      ctype);
    evbuffer_add(buf, body, strlen(body));
    evhttp_send_reply(req, code, reason, buf);
    evbuffer_free(buf);
}

static void handle_request(struct evhttp_request *req, void *arg)
{
    admin_http *a = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    char reason[512], body[600];

    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        reply_text(req, 405, "Method Not Allowed", "text/plain",
                   "only GET is served here\n");
        return;
    }
    if (path == NULL)
        path = "/";
    if (strcmp(path, "/healthz") == 0) {
        reply_text(req, 200, "OK", "text/plain", "ok\n");
    } else if (strcmp(path, "/readyz") == 0) {
        reason[0] = '\0';
        if (a->ready && a->ready(a->ud, reason, sizeof(reason)) != 0) {
            snprintf(body, sizeof(body), "not ready: %s\n", reason);
            reply_text(req, 503, "Service Unavailable", "text/plain", body);
        } else {
            reply_text(req, 200, "OK", "text/plain", "ready\n");
        }
    } else if (strcmp(path, "/metrics") == 0) {
        char *text = metrics_render(a->m);
        if (text == NULL) {
            reply_text(req, 500, "Internal Server Error", "text/plain",
                       "out of memory\n");
            return;
        }
        reply_text(req, 200, "OK", "text/plain; version=0.0.4", text);
        free(text);
    } else {
        reply_text(req, 404, "Not Found", "text/plain",
                   "not found; try /healthz, /readyz or /metrics\n");
    }
}

static void *admin_thread(void *arg)
{
    admin_http *a = arg;
    event_base_dispatch(a->base);
    return NULL;
}

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;

static void evthread_setup(void)
{
    evthread_use_pthreads();
}

int admin_http_start(const char *listen, metrics *m, admin_ready_fn ready,
                     void *ud, admin_http **out, polis_error *err)
{
    admin_http *a;
    struct evhttp_bound_socket *sock;
    char host[256];
    int port, rc;

    rc = admin_split_hostport(listen, host, sizeof(host), &port, err);
    if (rc)
        return rc;
    pthread_once(&evthread_once, evthread_setup);
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    a->m = m;
    a->ready = ready;
    a->ud = ud;
    a->base = event_base_new();
    a->http = a->base ? evhttp_new(a->base) : NULL;
    if (a->http == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, listen,
                             "cannot create the HTTP server");
        goto fail;
    }
    evhttp_set_max_body_size(a->http, 4096);
    evhttp_set_timeout(a->http, 10);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_POST);
    evhttp_set_gencb(a->http, handle_request, a);
    sock = evhttp_bind_socket_with_handle(a->http, host, (uint16_t)port);
    if (sock == NULL) {
        rc = polis_error_set(err, POLIS_EIO, listen,
                             "cannot listen (address in use or not local?)");
        goto fail;
    }
    {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        evutil_socket_t fd = evhttp_bound_socket_get_fd(sock);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
            a->port = ntohs(ss.ss_family == AF_INET6
                                ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                : ((struct sockaddr_in *)&ss)->sin_port);
    }
    if (pthread_create(&a->thread, NULL, admin_thread, a) != 0) {
        rc = polis_error_set(err, POLIS_EINTERNAL, listen,
                             "cannot start the admin thread");
        goto fail;
    }
    *out = a;
    return 0;
fail:
    if (a->http)
        evhttp_free(a->http);
    if (a->base)
        event_base_free(a->base);
    free(a);
    return rc;
}

int admin_http_port(const admin_http *a)
{
    return a->port;
}

void admin_http_free(admin_http *a)
{
    if (a == NULL)
        return;
    event_base_loopexit(a->base, NULL);
    pthread_join(a->thread, NULL);
    evhttp_free(a->http);
    event_base_free(a->base);
    free(a);
}
