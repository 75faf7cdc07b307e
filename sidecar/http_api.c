/*
 * http_api.c — POST /v1/check on evhttp (http_api.h).  The JSON body maps
 * field by field onto polis.v1.CheckRequest (strings borrowed from the
 * parsed body), the answer is the CheckResponse in camelCase JSON.  A
 * denial is a normal 200 answer; only a malformed request is a 400.
 */
#include "sidecar/http_api.h"
#include "common/admin_http.h"
#include "policy/api/check.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* evhttp itself refuses bodies past this (413, connection closed); between
 * SC_HTTP_MAX_BODY and this the answer is our own JSON 400. */
#define TRANSPORT_MAX_BODY (1024 * 1024)

struct sc_http {
    struct event_base *base;
    struct evhttp *http;
    pthread_t thread;
    int port;
    sc_checker *checker;
};

static void reply_json(struct evhttp_request *req, int code, const char *why,
                       json_t *body)
{
    struct evbuffer *buf = evbuffer_new();
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;

    json_decref(body);
    if (buf == NULL || text == NULL) {
        evbuffer_free(buf);
        free(text);
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evbuffer_add(buf, text, strlen(text));
    evbuffer_add(buf, "\n", 1);
    evhttp_send_reply(req, code, why, buf);
    evbuffer_free(buf);
    free(text);
}

static void reply_error(struct evhttp_request *req, int code, const char *why,
                        const char *error, const char *detail)
{
    reply_json(req, code, why,
               json_pack("{s:s, s:s}", "error", error, "detail", detail));
}

static json_t *string_array(char **v, size_t n)
{
    json_t *a = json_array();

    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_string(v[i] ? v[i] : ""));
    return a;
}

static json_t *response_json(const Polis__V1__CheckResponse *r)
{
    json_t *masks = json_array();

    for (size_t i = 0; masks && i < r->n_masks; i++) {
        const Polis__V1__ColumnMask *m = r->masks[i];
        json_array_append_new(
            masks, json_pack("{s:s, s:s, s:s, s:s}", "column", m->column,
                             "method", m->method, "rule", m->rule,
                             "classification", m->classification));
    }
    return json_pack(
        "{s:b, s:s, s:s, s:o*, s:o*, s:I, s:o*, s:s, s:I, s:s}", "allowed",
        (int)r->allowed, "reason", r->reason, "decidingRule", r->deciding_rule,
        "masks", masks, "rowFilters",
        string_array(r->row_filters, r->n_row_filters), "minGroupSize",
        (json_int_t)r->min_group_size, "matchedRules",
        string_array(r->matched_rules, r->n_matched_rules), "explanation",
        r->explanation, "revision", (json_int_t)r->revision, "principal",
        r->principal);
}

/* A string member, or NULL when absent or null; -1 for another type. */
static int opt_string(const json_t *body, const char *key, const char **out)
{
    const json_t *v = json_object_get(body, key);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    *out = json_string_value(v);
    return 0;
}

/* Fill `pb` from the body; strings borrowed from it, `cols` from the
 * caller.  0, or an error naming the field. */
static int request_from_json(const json_t *body, Polis__V1__CheckRequest *pb,
                             char **cols, const char *bearer, polis_error *err)
{
    static const char *const fields[] = {"principal", "token",   "product",
                                         "port",      "purpose", NULL};
    const char **slots[] = {
        (const char **)&pb->principal, (const char **)&pb->token,
        (const char **)&pb->product, (const char **)&pb->port,
        (const char **)&pb->purpose};
    const json_t *columns = json_object_get(body, "columns"), *v;
    const char *key;
    json_t *value;
    size_t i;

    if (!json_is_object(body))
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "the body must be a JSON object");
    json_object_foreach((json_t *)body, key, value)
    {
        bool known = strcmp(key, "columns") == 0;
        for (i = 0; fields[i] && !known; i++)
            known = strcmp(key, fields[i]) == 0;
        if (!known)
            return polis_error_set(err, POLIS_EINVAL, key,
                                   "unknown field (principal, token, "
                                   "product, port, purpose, columns)");
    }
    for (i = 0; fields[i]; i++)
        if (opt_string(body, fields[i], slots[i]) != 0)
            return polis_error_set(err, POLIS_EINVAL, fields[i],
                                   "expected a string");
    if (pb->token == NULL && pb->principal == NULL && bearer)
        pb->token = (char *)bearer;
    if (columns && !json_is_null(columns)) {
        if (!json_is_array(columns))
            return polis_error_set(err, POLIS_EINVAL, "columns",
                                   "expected a list of column names");
        if (json_array_size(columns) > POL_MAX_COLUMNS)
            return polis_error_set(err, POLIS_ETOOBIG, "columns",
                                   "%zu columns, at most %d",
                                   json_array_size(columns), POL_MAX_COLUMNS);
        json_array_foreach(columns, i, v)
        {
            if (!json_is_string(v)) {
                char where[32];
                snprintf(where, sizeof(where), "columns[%zu]", i);
                return polis_error_set(err, POLIS_EINVAL, where,
                                       "expected a string");
            }
            cols[i] = (char *)json_string_value(v);
        }
        pb->columns = cols;
        pb->n_columns = json_array_size(columns);
    }
    return 0;
}

/* "Bearer <token>" from the Authorization header, or NULL. */
static const char *bearer_token(struct evhttp_request *req)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req),
                                       "Authorization");

    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

static void handle_check(sc_http *h, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    Polis__V1__CheckRequest pb = POLIS__V1__CHECK_REQUEST__INIT;
    Polis__V1__CheckResponse resp = POLIS__V1__CHECK_RESPONSE__INIT;
    char **cols = NULL, detail[1100];
    polis_error err = {0};
    json_error_t jerr;
    json_t *body;
    int rc;

    if (len > SC_HTTP_MAX_BODY) {
        snprintf(detail, sizeof(detail),
                 "the request body has %zu bytes, at most %d", len,
                 SC_HTTP_MAX_BODY);
        reply_error(req, 400, "Bad Request", "body too large", detail);
        return;
    }
    body = json_loadb((const char *)evbuffer_pullup(in, -1), len,
                      JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL) {
        snprintf(detail, sizeof(detail), "line %d, column %d: %s", jerr.line,
                 jerr.column, jerr.text);
        reply_error(req, 400, "Bad Request", "bad JSON", detail);
        return;
    }
    if (json_is_array(json_object_get(body, "columns"))) {
        size_t n = json_array_size(json_object_get(body, "columns"));
        cols = calloc(n ? n : 1, sizeof(*cols));
        if (cols == NULL) {
            json_decref(body);
            reply_error(req, 500, "Internal Server Error", "out of memory",
                        "cannot hold the columns");
            return;
        }
    }
    rc = request_from_json(body, &pb, cols, bearer_token(req), &err);
    if (rc == 0)
        rc = sc_checker_check(h->checker, &pb, &resp, &err);
    if (rc == 0)
        reply_json(req, 200, "OK", response_json(&resp));
    else if (rc == POLIS_ENOMEM)
        reply_error(req, 500, "Internal Server Error", "out of memory",
                    polis_error_format(&err, detail, sizeof(detail)));
    else
        reply_error(req, 400, "Bad Request", "bad request",
                    polis_error_format(&err, detail, sizeof(detail)));
    check_response_clear(&resp);
    free(cols);
    json_decref(body);
}

static void handle_request(struct evhttp_request *req, void *arg)
{
    sc_http *h = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));

    if (path == NULL || strcmp(path, "/v1/check") != 0) {
        reply_error(req, 404, "Not Found", "not found",
                    "this port serves POST /v1/check");
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          "POST");
        reply_error(req, 405, "Method Not Allowed", "method not allowed",
                    "/v1/check takes POST with a JSON body");
        return;
    }
    handle_check(h, req);
}

static void *http_thread(void *arg)
{
    sc_http *h = arg;

    event_base_dispatch(h->base);
    return NULL;
}

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;

static void evthread_setup(void)
{
    evthread_use_pthreads();
}

static int bound_port(struct evhttp_bound_socket *sock)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss,
                    &sl) != 0)
        return -1;
    return ntohs(ss.ss_family == AF_INET6
                     ? ((struct sockaddr_in6 *)&ss)->sin6_port
                     : ((struct sockaddr_in *)&ss)->sin_port);
}

int sc_http_start(const char *listen, sc_checker *c, sc_http **out,
                  polis_error *err)
{
    struct evhttp_bound_socket *sock;
    char host[256];
    sc_http *h;
    int port, rc;

    if ((rc = admin_split_hostport(listen, host, sizeof(host), &port, err)))
        return rc;
    pthread_once(&evthread_once, evthread_setup);
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    h->checker = c;
    h->base = event_base_new();
    h->http = h->base ? evhttp_new(h->base) : NULL;
    if (h->http == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, listen,
                             "cannot create the HTTP server");
        goto fail;
    }
    evhttp_set_max_body_size(h->http, TRANSPORT_MAX_BODY);
    evhttp_set_timeout(h->http, 30);
    evhttp_set_allowed_methods(
        h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                     EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                     EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(h->http, handle_request, h);
    sock = evhttp_bind_socket_with_handle(h->http, host, (uint16_t)port);
    if (sock == NULL) {
        rc = polis_error_set(err, POLIS_EIO, listen,
                             "cannot listen (address in use or not local?)");
        goto fail;
    }
    h->port = bound_port(sock);
    if (pthread_create(&h->thread, NULL, http_thread, h) != 0) {
        rc = polis_error_set(err, POLIS_EINTERNAL, listen,
                             "cannot start the HTTP thread");
        goto fail;
    }
    *out = h;
    return 0;
fail:
    if (h->http)
        evhttp_free(h->http);
    if (h->base)
        event_base_free(h->base);
    free(h);
    return rc;
}

int sc_http_port(const sc_http *h)
{
    return h->port;
}

void sc_http_free(sc_http *h)
{
    if (h == NULL)
        return;
    event_base_loopexit(h->base, NULL);
    pthread_join(h->thread, NULL);
    evhttp_free(h->http);
    event_base_free(h->base);
    free(h);
}
