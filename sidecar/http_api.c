/*
 * http_api.c — the sidecar's HTTP port (http_api.h): POST /v1/check, and a
 * data product's query and file ports under /v1/products/.  N evhttp
 * loops, one thread each, accept on one listening socket (dup'ed per
 * loop).  A query runs on its loop's thread and writes its result to the
 * socket as it goes; a file streams chunk by chunk from the loop's write
 * callbacks, one reader step each time the previous chunk has gone out.
 * An http port's request is relayed by http_proxy.c on the same loop.
 * Behaviour and error bodies: docs/sidecar.md "Product ports".
 */
#include "sidecar/http_api.h"
#include "common/admin_http.h"
#include "policy/api/check.h"
#include "sidecar/event_port.h"
#include "sidecar/file_port.h"
#include "sidecar/http_proxy.h"
#include "sidecar/query_pg.h"

#include <errno.h>
#include <inttypes.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <event2/thread.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* evhttp itself refuses bodies past this (413, connection closed); between
 * the per-endpoint maximum and this the answer is our own JSON 400. */
#define TRANSPORT_MAX_BODY (2 * 1024 * 1024)
/* A query result is handed to the connection in chunks of this size, and
 * the thread writes to the socket itself while more than HIGH_WATER bytes
 * wait, so a result never sits in memory whole. */
#define QUERY_CHUNK    (64 * 1024)
#define HIGH_WATER     (256 * 1024)
#define IDLE_TIMEOUT_S 30

typedef struct worker {
    struct sc_http *h;
    struct event_base *base;
    struct evhttp *http;
    pthread_t thread;
    int started;
    /* The last PostgreSQL sessions this loop used, kept for the next
     * query to the same database (a connection pair costs two logins and
     * view creation); only this loop's thread touches them. */
    pgq_conn *pg;
    char pg_key[2 * 2048 + 2]; /* owner dsn NUL query dsn */
    /* Event consumers streaming from this loop, and what wakes them. */
    struct consumer *consumers;
    struct event *wake;
    struct event *beat;
    hp_pool *upstreams;        /* HTTP ports' idle upstream connections */
    struct publish *publishes; /* waiting for their fsync */
    /* Batches of event streams as sent, for the next stream of the same
     * view at the same offset ("shared batches" below). */
    struct sse_cached *batches;
    uint64_t batch_clock;
} worker;

struct sc_http {
    sc_http_options o;
    int port;
    int nworkers;
    worker *w;
    atomic_int consumers; /* event streams open, all loops */
    metric_series *m_published, *m_delivered, *m_streams;
};

/* ======================= replies ======================================== */

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

static const char *status_text(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Internal Server Error";
    }
}

/* ======================= POST /v1/check ================================= */

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
        rc = sc_checker_check(h->o.checker, &pb, &resp, &err);
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

/* ======================= product requests: common ======================= */

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * One product request, from the path to the access record.  Heap-allocated
 * because a file stream outlives the callback that started it; it holds
 * a snapshot reference, so the engine, the principal's document and the
 * decision's borrowed rules stay valid for the whole stream.
 */
typedef struct preq {
    sc_http *h;
    worker *w; /* the loop serving it */
    struct evhttp_request *req;
    int64_t start_us;
    pol_port port;
    char product[2 * POL_MAX_NAME + 2]; /* "domain/name" */
    const char *name;                   /* the product part of it */
    char purpose[POL_MAX_NAME + 1];
    bool has_purpose;
    sc_snapshot *snap;
    const char *principal;  /* borrowed from snap; NULL: unauthenticated */
    json_t *doc;            /* the DataProduct (a copy) */
    const json_t *port_doc; /* borrowed from doc */
    pol_decision *decision;
    check_subject subject;
    pol_expr_request expr_req;
    char rule[3 * POL_MAX_NAME + 4]; /* the deciding rule, "" for none */
    bool recorded;
    /* file streams */
    int fd;
    fp_reader *reader;
    fp_column *schema;
    size_t nschema;
    struct evbuffer *out;
    struct evhttp_connection *evcon;
} preq;

static void preq_free(preq *p)
{
    if (p == NULL)
        return;
    fp_reader_free(p->reader);
    if (p->fd >= 0)
        close(p->fd);
    free(p->schema);
    if (p->out)
        evbuffer_free(p->out);
    pol_decision_free(p->decision);
    json_decref(p->doc);
    sc_snapshot_unref(p->snap);
    free(p);
}

/* The access record of this request; once, whatever the outcome. */
static void record(preq *p, const char *decision, int status, uint64_t rows,
                   uint64_t bytes)
{
    sc_access a = {0};

    if (p->recorded)
        return;
    p->recorded = true;
    a.principal = p->principal;
    a.product = p->product;
    a.port = pol_port_name(p->port);
    a.purpose = p->has_purpose ? p->purpose : NULL;
    a.decision = decision;
    a.rule = p->rule[0] ? p->rule : NULL;
    a.http_status = status;
    a.rows = (int64_t)rows;
    a.bytes = (int64_t)bytes;
    a.latency_us = mono_us() - p->start_us;
    sc_access_log_record(p->h->o.access, &a);
}

/* An error answer before any output, recorded.  `decision`: "deny" for
 * 401/403, else "error" (a 404 or 400 decided nothing). */
static void fail(preq *p, int status, const char *error, const char *detail)
{
    reply_error(p->req, status, status_text(status), error, detail);
    record(p, status == 401 || status == 403 ? "deny" : "error", status, 0, 0);
}

static void fail_err(preq *p, int status, const char *error,
                     const polis_error *err)
{
    char detail[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX];

    fail(p, status, error, polis_error_format(err, detail, sizeof(detail)));
}

/*
 * Authenticate, find the product and its port.  0 when the request may go
 * on to a decision (p->principal, p->subject, p->doc and p->port_doc are
 * set); otherwise the answer has been sent and recorded and the caller
 * only frees p.
 */
static int identify(preq *p)
{
    const char *token = bearer_token(p->req);
    const char *purpose = evhttp_find_header(
        evhttp_request_get_input_headers(p->req), "Polis-Purpose");
    const json_t *principal_doc = NULL;
    polis_error err = {0};
    char text[1024];
    int rc;

    if (purpose) {
        if (strlen(purpose) > POL_MAX_NAME) {
            fail(p, 400, "bad request", "Polis-Purpose: longer than 253 bytes");
            return -1;
        }
        snprintf(p->purpose, sizeof(p->purpose), "%s", purpose);
        p->has_purpose = true;
    }
    if (token == NULL) {
        evhttp_add_header(evhttp_request_get_output_headers(p->req),
                          "WWW-Authenticate", "Bearer");
        fail(p, 401, "unauthenticated", "send Authorization: Bearer <token>");
        return -1;
    }
    p->snap = sc_snapshot_slot_get(p->h->o.slot);
    if (p->snap == NULL) {
        fail(p, 503, "no snapshot",
             "no snapshot in force yet: denying every request");
        return -1;
    }
    p->principal = sc_principals_by_token(sc_snapshot_principals(p->snap),
                                          token, strlen(token), &principal_doc);
    if (p->principal == NULL) {
        evhttp_add_header(evhttp_request_get_output_headers(p->req),
                          "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        fail(p, 401, "unauthenticated",
             "the bearer token matches no principal");
        return -1;
    }
    if ((size_t)(p->name - 1 - p->product) != strlen(p->h->o.domain) ||
        strncmp(p->product, p->h->o.domain, strlen(p->h->o.domain)) != 0) {
        snprintf(text, sizeof(text),
                 "no data product %s here: this sidecar serves domain %s",
                 p->product, p->h->o.domain);
        fail(p, 404, "not found", text);
        return -1;
    }
    rc = sc_ports_product(p->h->o.ports, p->snap, p->name, &p->doc, &err);
    if (rc == POLIS_ENOTFOUND) {
        fail_err(p, 404, "not found", &err);
        return -1;
    }
    if (rc != 0) {
        fail_err(p, 503, "unavailable", &err);
        return -1;
    }
    p->port_doc = sc_ports_find(p->doc, pol_port_name(p->port));
    if (p->port_doc == NULL) {
        snprintf(text, sizeof(text), "data product %s has no %s port",
                 p->product, pol_port_name(p->port));
        fail(p, 404, "not found", text);
        return -1;
    }
    rc = check_subject_from_principal(p->principal, principal_doc, &p->subject,
                                      &err);
    if (rc != 0) {
        fail_err(p, 500, "bad principal", &err);
        return -1;
    }
    return 0;
}

/* Decide for an identified request: 0 when the decision allows, else the
 * answer has been sent and recorded. */
static int decide(preq *p)
{
    polis_error err = {0};
    pol_request request = {0};
    char text[1024];
    int rc;

    p->decision = pol_decision_new();
    if (p->decision == NULL) {
        fail(p, 500, "out of memory", "cannot hold a decision");
        return -1;
    }
    request.subject = p->subject.subject;
    request.product = p->product;
    request.port = p->port;
    request.purpose = p->has_purpose ? p->purpose : NULL;
    rc = pol_decide(sc_snapshot_engine(p->snap), &request, p->decision, &err);
    if (rc != 0) {
        fail_err(p, 500, "cannot decide", &err);
        return -1;
    }
    check_rule_id(pol_decision_deciding_rule(p->decision), p->rule,
                  sizeof(p->rule));
    if (!pol_decision_allowed(p->decision)) {
        pol_decision_explain(p->decision, text, sizeof(text));
        reply_json(
            p->req, 403, "Forbidden",
            json_pack("{s:s, s:s, s:s, s:s?}", "error", "denied", "detail",
                      text, "reason",
                      pol_decision_reason(p->decision) == POL_REASON_DENIED
                          ? "denied"
                          : "default-deny",
                      "rule", p->rule[0] ? p->rule : NULL));
        record(p, "deny", 403, 0, 0);
        return -1;
    }
    p->expr_req.purpose = request.purpose;
    p->expr_req.product = p->product;
    p->expr_req.port = pol_port_name(p->port);
    return 0;
}

/* Authenticate, find the product and its port, decide.  0 when the request
 * may go on (p->decision allows). */
static int admit(preq *p)
{
    return identify(p) == 0 && decide(p) == 0 ? 0 : -1;
}

/* ======================= output encodings =============================== */

/* Bytes of a valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/* A JSON string; bytes that are not UTF-8 become U+FFFD. */
static void json_string_out(struct evbuffer *b, const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, run = 0;

    evbuffer_add(b, "\"", 1);
    while (i < n) {
        unsigned char c = s[i];
        size_t len = utf8_len(s + i, n - i);

        if (len == 1 && c >= 0x20 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (len > 1) {
            i += len;
            continue;
        }
        evbuffer_add(b, s + run, i - run);
        if (len == 0)
            evbuffer_add(b, "\\ufffd", 6);
        else if (c == '"' || c == '\\')
            evbuffer_add_printf(b, "\\%c", c);
        else if (c == '\n')
            evbuffer_add(b, "\\n", 2);
        else if (c == '\t')
            evbuffer_add(b, "\\t", 2);
        else if (c == '\r')
            evbuffer_add(b, "\\r", 2);
        else
            evbuffer_add_printf(b, "\\u%04x", c);
        run = ++i;
    }
    evbuffer_add(b, s + run, n - run);
    evbuffer_add(b, "\"", 1);
}

static void base64_out(struct evbuffer *b, const unsigned char *s, size_t n)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char q[4];

    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        q[0] = tab[(v >> 18) & 63];
        q[1] = tab[(v >> 12) & 63];
        q[2] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        q[3] = i + 2 < n ? tab[v & 63] : '=';
        evbuffer_add(b, q, 4);
    }
}

/* The shortest %g spelling that reads back as the same double. */
static void real_out(struct evbuffer *b, double d, bool json)
{
    char s[40];

    if (!isfinite(d)) {
        if (json)
            evbuffer_add(b, "null", 4);
        return;
    }
    snprintf(s, sizeof(s), "%.15g", d);
    if (strtod(s, NULL) != d)
        snprintf(s, sizeof(s), "%.17g", d);
    evbuffer_add(b, s, strlen(s));
}

static void json_value_out(struct evbuffer *b, const sq_value *v)
{
    switch (v->type) {
    case SQ_INTEGER:
        evbuffer_add_printf(b, "%lld", (long long)v->i);
        break;
    case SQ_REAL:
        real_out(b, v->d, true);
        break;
    case SQ_TEXT:
        json_string_out(b, v->p, v->len);
        break;
    case SQ_BLOB:
        evbuffer_add(b, "\"", 1);
        base64_out(b, v->p, v->len);
        evbuffer_add(b, "\"", 1);
        break;
    default:
        evbuffer_add(b, "null", 4);
    }
}

/* RFC 4180 field; NULL is an empty unquoted field, "" a quoted empty one
 * (the file port's convention, docs/internals/file_port.md). */
static void csv_text_out(struct evbuffer *b, const char *s, size_t n)
{
    size_t run = 0;

    if (n > 0 && strcspn(s, ",\"\r\n") >= n) {
        evbuffer_add(b, s, n);
        return;
    }
    evbuffer_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++)
        if (s[i] == '"') {
            evbuffer_add(b, s + run, i + 1 - run);
            evbuffer_add(b, "\"", 1);
            run = i + 1;
        }
    evbuffer_add(b, s + run, n - run);
    evbuffer_add(b, "\"", 1);
}

static void csv_value_out(struct evbuffer *b, const sq_value *v)
{
    switch (v->type) {
    case SQ_INTEGER:
        evbuffer_add_printf(b, "%lld", (long long)v->i);
        break;
    case SQ_REAL:
        real_out(b, v->d, false);
        break;
    case SQ_TEXT:
        csv_text_out(b, v->p, v->len);
        break;
    case SQ_BLOB:
        base64_out(b, v->p, v->len);
        break;
    default:
        break;
    }
}

/* ======================= the query port ================================= */

typedef struct qsink {
    preq *p;
    bool csv;
    bool started; /* the 200 and its headers are on their way */
    bool first_row;
    struct evbuffer *buf; /* output not yet handed to the connection */
    uint64_t bytes;       /* body bytes handed to the connection */
    int timeout_ms;
} qsink;

/* Write the connection's output to the socket ourselves until at most
 * `below` bytes wait: the loop that would do it is this thread, busy in
 * the query.  POLIS_ECANCELED when the consumer is gone or stalled. */
static int drain(qsink *s, size_t below)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(s->p->req);
    struct bufferevent *bev =
        evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    struct evbuffer *out = bev ? bufferevent_get_output(bev) : NULL;
    int fd = bev ? (int)bufferevent_getfd(bev) : -1;

    if (out == NULL || fd < 0)
        return POLIS_ECANCELED;
    while (evbuffer_get_length(out) > below) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int n = poll(&pfd, 1, s->timeout_ms);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)))
            return POLIS_ECANCELED;
        if (evbuffer_write(out, fd) < 0 && errno != EAGAIN && errno != EINTR)
            return POLIS_ECANCELED;
    }
    return 0;
}

static void start_reply(qsink *s)
{
    struct evkeyvalq *hdr = evhttp_request_get_output_headers(s->p->req);

    evhttp_add_header(hdr, "Content-Type",
                      s->csv ? "text/csv; charset=utf-8" : "application/json");
    evhttp_send_reply_start(s->p->req, 200, "OK");
    s->started = true;
}

/* Hand what is buffered to the connection, then drain to a low level if
 * too much waits. */
static int flush_chunk(qsink *s)
{
    size_t n = evbuffer_get_length(s->buf);

    if (!s->started)
        start_reply(s);
    if (n == 0)
        return 0;
    s->bytes += n;
    evhttp_send_reply_chunk(s->p->req, s->buf);
    evbuffer_drain(s->buf, evbuffer_get_length(s->buf));
    {
        struct evhttp_connection *evcon =
            evhttp_request_get_connection(s->p->req);
        struct bufferevent *bev =
            evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
        if (bev == NULL)
            return POLIS_ECANCELED;
        if (evbuffer_get_length(bufferevent_get_output(bev)) > HIGH_WATER)
            return drain(s, QUERY_CHUNK);
    }
    return 0;
}

static int q_columns(void *ctx, size_t n, const char *const *names)
{
    qsink *s = ctx;

    if (!s->csv)
        evbuffer_add(s->buf, "{\"columns\":[", 12);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            evbuffer_add(s->buf, ",", 1);
        if (s->csv)
            csv_text_out(s->buf, names[i], strlen(names[i]));
        else
            json_string_out(s->buf, names[i], strlen(names[i]));
    }
    if (s->csv)
        evbuffer_add(s->buf, "\r\n", 2);
    else
        evbuffer_add(s->buf, "],\"rows\":[", 10);
    s->first_row = true;
    return 0;
}

static int q_row(void *ctx, size_t n, const sq_value *v)
{
    qsink *s = ctx;

    if (!s->csv)
        evbuffer_add(s->buf, s->first_row ? "[" : ",[", s->first_row ? 1 : 2);
    s->first_row = false;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            evbuffer_add(s->buf, ",", 1);
        if (s->csv)
            csv_value_out(s->buf, &v[i]);
        else
            json_value_out(s->buf, &v[i]);
    }
    evbuffer_add(s->buf, s->csv ? "\r\n" : "]", s->csv ? 2 : 1);
    if (evbuffer_get_length(s->buf) >= QUERY_CHUNK)
        return flush_chunk(s);
    return 0;
}

/* Cut the connection so that the consumer sees a failed transfer: the
 * chunked body never gets its last chunk.  Everything already handed to
 * the connection is written first. */
static void abort_stream(preq *p, qsink *s)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(p->req);
    struct bufferevent *bev =
        evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;

    if (s)
        drain(s, 0);
    if (bev)
        shutdown((int)bufferevent_getfd(bev), SHUT_RDWR);
    evhttp_send_reply_end(p->req);
}

static int query_status(int rc, const char **error)
{
    switch (rc) {
    case POLIS_EDENIED:
        *error = "not allowed";
        return 400;
    case POLIS_EINVAL:
        *error = "bad query";
        return 400;
    case POLIS_ETOOBIG:
        *error = "too large";
        return 400;
    case POLIS_ETIMEDOUT:
        *error = "timeout";
        return 504;
    case POLIS_ENOMEM:
        *error = "out of memory";
        return 500;
    default:
        *error = "query failed";
        return 500;
    }
}

/* The body: {"sql": "...", "params": [...]}.  *body owns the strings. */
static int parse_query_body(struct evhttp_request *req, json_t **body,
                            const char **sql, const json_t **params,
                            polis_error *err)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *key;
    json_t *v;
    json_error_t jerr;

    if (len > SC_HTTP_MAX_QUERY_BODY)
        return polis_error_set(err, POLIS_ETOOBIG, NULL,
                               "the request body has %zu bytes, at most %d",
                               len, SC_HTTP_MAX_QUERY_BODY);
    *body = json_loadb((const char *)evbuffer_pullup(in, -1), len,
                       JSON_REJECT_DUPLICATES, &jerr);
    if (*body == NULL)
        return polis_error_set(err, POLIS_EPARSE, NULL,
                               "line %d, column %d: %s", jerr.line, jerr.column,
                               jerr.text);
    if (!json_is_object(*body))
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "the body must be a JSON object "
                               "{\"sql\": ..., \"params\": [...]}");
    json_object_foreach(*body, key, v)
    {
        if (strcmp(key, "sql") != 0 && strcmp(key, "params") != 0)
            return polis_error_set(err, POLIS_EINVAL, key,
                                   "unknown field (sql, params)");
    }
    *sql = json_string_value(json_object_get(*body, "sql"));
    if (*sql == NULL)
        return polis_error_set(err, POLIS_EINVAL, "sql", "required, a string");
    *params = json_object_get(*body, "params");
    if (*params && json_is_null(*params))
        *params = NULL;
    if (*params && !json_is_array(*params))
        return polis_error_set(err, POLIS_EINVAL, "params",
                               "expected a list of values");
    return 0;
}

/*
 * The PostgreSQL sessions for `port` on loop `w`: the loop's cached pair
 * when it is for the same connection strings, else a new pair (the old one
 * is closed: one pair per loop bounds the database connections to two per
 * loop); *reused says which.  The caller hands it back with pg_release.
 */
static int pg_session(worker *w, const json_t *port, pgq_conn **out,
                      bool *reused, polis_error *err)
{
    char owner[2048], query[2048], key[sizeof(w->pg_key)];
    size_t n;
    int rc;

    if ((rc = sc_ports_pg_dsns(port, owner, query, sizeof(owner), err)))
        return rc;
    n = strlen(owner);
    memcpy(key, owner, n + 1);
    memcpy(key + n + 1, query, strlen(query) + 1);
    if (w->pg && memcmp(w->pg_key, key, n + 2 + strlen(query)) == 0) {
        *out = w->pg;
        w->pg = NULL;
        *reused = true;
        return 0;
    }
    *reused = false;
    pgq_close(w->pg);
    w->pg = NULL;
    if ((rc = pgq_open(owner, query, out, err)) != 0)
        return rc;
    memcpy(w->pg_key, key, n + 2 + strlen(query));
    return 0;
}

/*
 * Whether the query's failure ended the sessions: POLIS_EIO, or a FATAL or
 * PANIC error (libpq's "FATAL:  terminating connection due to
 * administrator command"), which the engine may report as POLIS_EINVAL
 * when libpq has not noticed the closed socket yet.  The severity is
 * looked for only at the start of the message or after the engine's
 * "step: " prefix, so SQL text echoed in an ERROR cannot fake it.
 */
static bool pg_session_ended(int rc, const polis_error *err)
{
    const char *m = err->message, *colon = strstr(m, ": ");

    if (rc == POLIS_EIO)
        return true;
    if (rc == 0 || rc == POLIS_ECANCELED)
        return false;
    if (strncmp(m, "FATAL:", 6) == 0 || strncmp(m, "PANIC:", 6) == 0)
        return true;
    return colon && (strncmp(colon + 2, "FATAL:", 6) == 0 ||
                     strncmp(colon + 2, "PANIC:", 6) == 0);
}

/* Keep the sessions for the next query unless the query may have left
 * them unusable (the server went away, the consumer hung up mid-fetch, an
 * unexpected failure): then close them, the next query reconnects. */
static void pg_release(worker *w, pgq_conn *pg, int rc, bool ended)
{
    if (ended)
        pgq_close(pg);
    else if (rc == 0 || rc == POLIS_EDENIED || rc == POLIS_EINVAL ||
             rc == POLIS_ETOOBIG || rc == POLIS_ETIMEDOUT) {
        pgq_close(w->pg);
        w->pg = pg;
    } else {
        pgq_close(pg);
    }
}

static void handle_query(preq *p)
{
    const char *engine =
        json_string_value(json_object_get(p->port_doc, "engine"));
    const char *database =
        json_string_value(json_object_get(p->port_doc, "database"));
    const char *accept =
        evhttp_find_header(evhttp_request_get_input_headers(p->req), "Accept");
    sq_product product = {
        json_string_value(json_object_get(p->port_doc, "table"))};
    sq_sink sink = {q_columns, q_row, NULL};
    qsink s = {.p = p};
    sq_stats stats = {0};
    sq_conn *conn = NULL;
    pgq_conn *pg = NULL;
    polis_error err = {0};
    json_t *body = NULL;
    const json_t *params = NULL;
    const char *sql = NULL, *error;
    char path[4096], detail[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX];
    bool postgres = engine && strcmp(engine, "postgresql") == 0, reused = false,
         ended = false;
    int rc, status;

    if (engine == NULL || (!postgres && strcmp(engine, "sqlite") != 0)) {
        snprintf(detail, sizeof(detail),
                 "the %s engine is not served by this sidecar (sqlite, "
                 "postgresql)",
                 engine ? engine : "(none)");
        fail(p, 501, "not implemented", detail);
        return;
    }
    if (parse_query_body(p->req, &body, &sql, &params, &err) != 0) {
        fail_err(p, 400, err.code == POLIS_EPARSE ? "bad JSON" : "bad request",
                 &err);
        json_decref(body);
        return;
    }
    if (postgres ? product.table == NULL ||
                       pg_session(p->w, p->port_doc, &pg, &reused, &err) != 0
                 : database == NULL || product.table == NULL ||
                       sc_ports_resolve(p->h->o.ports, database, path,
                                        sizeof(path), &err) ||
                       sq_open(path, &conn, &err) != 0) {
        if (err.code == 0)
            polis_error_set(&err, POLIS_EINVAL, NULL,
                            postgres ? "the query port lacks a table"
                                     : "the query port lacks database or "
                                       "table");
        fail_err(p, 503, "unavailable", &err);
        json_decref(body);
        return;
    }
    s.csv = accept && strstr(accept, "text/csv") != NULL;
    s.buf = evbuffer_new();
    s.timeout_ms = p->h->o.write_timeout_ms;
    sink.ctx = &s;
    if (s.buf == NULL)
        rc = polis_error_set(&err, POLIS_ENOMEM, NULL, NULL);
    else if (postgres) {
        size_t key_len;
        const void *key = sc_snapshot_masking_key(p->snap, &key_len);
        rc = pgq_query(pg, &product, p->decision, key, key_len,
                       &p->subject.subject, &p->expr_req, sql, params,
                       &p->h->o.query, &sink, &stats, &err);
        /* Kept sessions the server has ended since (a restart, an idle
         * timeout): once, on a new pair, as long as nothing went out.  The
         * statement is read-only, so running it again is harmless. */
        ended = pg_session_ended(rc, &err);
        if (ended && reused && !s.started) {
            pgq_close(pg);
            pg = NULL;
            evbuffer_drain(s.buf, evbuffer_get_length(s.buf));
            memset(&stats, 0, sizeof(stats));
            memset(&err, 0, sizeof(err));
            rc = pg_session(p->w, p->port_doc, &pg, &reused, &err);
            if (rc == 0)
                rc = pgq_query(pg, &product, p->decision, key, key_len,
                               &p->subject.subject, &p->expr_req, sql, params,
                               &p->h->o.query, &sink, &stats, &err);
            ended = rc != 0 && (pg == NULL || pg_session_ended(rc, &err));
        }
    } else
        rc = sq_query(conn, &product, p->decision,
                      pol_engine_mask_key(sc_snapshot_engine(p->snap)),
                      &p->subject.subject, &p->expr_req, sql, params,
                      &p->h->o.query, &sink, &stats, &err);
    sq_close(conn);
    if (pg)
        pg_release(p->w, pg, rc, ended);
    json_decref(body);
    if (rc == 0) {
        if (!s.csv)
            evbuffer_add_printf(s.buf, "],\"truncated\":%s}\n",
                                stats.truncated ? "true" : "false");
        if (!s.started) {
            /* Small enough to go in one piece, with a Content-Length. */
            evhttp_add_header(
                evhttp_request_get_output_headers(p->req), "Content-Type",
                s.csv ? "text/csv; charset=utf-8" : "application/json");
            s.bytes += evbuffer_get_length(s.buf);
            evhttp_send_reply(p->req, 200, "OK", s.buf);
        } else if (flush_chunk(&s) == 0) {
            evhttp_send_reply_end(p->req);
        } else {
            abort_stream(p, NULL);
        }
        record(p, "allow", 200, stats.rows, s.bytes);
    } else if (rc == POLIS_ECANCELED && s.started) {
        /* The consumer went away or stopped reading. */
        abort_stream(p, NULL);
        record(p, "allow", 200, stats.rows, s.bytes);
    } else if (!s.started) {
        status = query_status(rc, &error);
        if (postgres && ended) {
            /* The server is down or went away, even on new sessions. */
            status = 503;
            error = "unavailable";
        }
        polis_error_format(&err, detail, sizeof(detail));
        reply_error(p->req, status, status_text(status), error, detail);
        record(p, "error", status, 0, 0);
    } else {
        /* Rows went out already: end the body with the error. */
        status = query_status(rc, &error);
        polis_error_format(&err, detail, sizeof(detail));
        if (s.csv) {
            if (flush_chunk(&s) == 0)
                abort_stream(p, &s);
            else
                abort_stream(p, NULL);
        } else {
            evbuffer_add(s.buf,
                         "],\"truncated\":false,\"error\":{\"error\":", 37);
            json_string_out(s.buf, error, strlen(error));
            evbuffer_add(s.buf, ",\"detail\":", 10);
            json_string_out(s.buf, detail, strlen(detail));
            evbuffer_add(s.buf, "}}\n", 3);
            if (flush_chunk(&s) == 0)
                evhttp_send_reply_end(p->req);
            else
                abort_stream(p, NULL);
        }
        record(p, "error", 200, stats.rows, s.bytes);
    }
    evbuffer_free(s.buf);
}

/* ======================= the file port ================================== */

static const char *http_date(int64_t sec, char *buf, size_t len)
{
    time_t t = (time_t)sec;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

static int file_dir(preq *p, char *path, size_t len, fp_format *format)
{
    const char *dir =
        json_string_value(json_object_get(p->port_doc, "directory"));
    const char *fmt = json_string_value(json_object_get(p->port_doc, "format"));
    polis_error err = {0};

    if (fp_format_from_name(fmt ? fmt : "csv", format) != 0) {
        fail(p, 503, "unavailable", "the file port has an unknown format");
        return -1;
    }
    if (dir == NULL || sc_ports_resolve(p->h->o.ports, dir, path, len, &err)) {
        fail(p, 503, "unavailable", "the file port has no usable directory");
        return -1;
    }
    return 0;
}

static void handle_list(preq *p)
{
    fp_listing l = {0};
    polis_error err = {0};
    fp_format format;
    char dir[4096], when[40];
    json_t *files, *body;
    int rc;

    if (file_dir(p, dir, sizeof(dir), &format) != 0)
        return;
    rc = fp_list(dir, &l, &err);
    if (rc != 0) {
        fail_err(p, rc == POLIS_ENOTFOUND ? 503 : 500, "unavailable", &err);
        return;
    }
    files = json_array();
    for (size_t i = 0; files && i < l.count; i++)
        json_array_append_new(
            files,
            json_pack("{s:s, s:I, s:s}", "name", l.files[i].name, "size",
                      (json_int_t)l.files[i].size, "modified",
                      http_date(l.files[i].mtime_sec, when, sizeof(when))));
    body = json_pack("{s:s, s:s, s:o*}", "product", p->product, "format",
                     format == FP_FORMAT_CSV ? "csv" : "jsonl", "files", files);
    reply_json(p->req, 200, "OK", body);
    record(p, "allow", 200, l.count, 0);
    fp_listing_free(&l);
}

static int file_sink(void *ctx, const void *data, size_t len)
{
    preq *p = ctx;

    return evbuffer_add(p->out, data, len) == 0 ? 0 : POLIS_ENOMEM;
}

static void set_timeouts(struct evhttp_connection *evcon, int read_s,
                         int write_s)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    struct timeval r = {read_s, 0}, w = {write_s, 0};

    if (bev)
        bufferevent_set_timeouts(bev, read_s ? &r : NULL, &w);
}

/* Step the reader until it produced output, ended or failed. */
static int file_fill(preq *p, bool *done, polis_error *err)
{
    int rc = 0;

    *done = false;
    while (rc == 0 && !*done && evbuffer_get_length(p->out) == 0)
        rc = fp_reader_step(p->reader, done, err);
    return rc;
}

static void file_finish(preq *p, bool ok)
{
    fp_stats st = {0};

    fp_reader_stats(p->reader, &st);
    if (p->evcon) {
        evhttp_connection_set_closecb(p->evcon, NULL, NULL);
        set_timeouts(p->evcon, IDLE_TIMEOUT_S, IDLE_TIMEOUT_S);
    }
    if (ok) {
        evhttp_send_reply_end(p->req);
        record(p, "allow", 200, st.rows_written, st.bytes_written);
    } else {
        abort_stream(p, NULL);
        record(p, "error", 200, st.rows_written, st.bytes_written);
    }
    preq_free(p);
}

/* The consumer went away mid-stream: evhttp has detached the request (or
 * frees it with the connection); we drop ours. */
static void file_closed(struct evhttp_connection *evcon, void *arg)
{
    preq *p = arg;
    fp_stats st = {0};

    (void)evcon;
    fp_reader_stats(p->reader, &st);
    record(p, "allow", 200, st.rows_written, st.bytes_written);
    if (evhttp_request_get_connection(p->req) == NULL)
        evhttp_send_reply_end(p->req); /* frees the detached request */
    preq_free(p);
}

/* The previous chunk has been written: produce and send the next. */
static void file_continue(struct evhttp_connection *evcon, void *arg)
{
    preq *p = arg;
    polis_error err = {0};
    bool done;
    int rc = file_fill(p, &done, &err);

    (void)evcon;
    if (evbuffer_get_length(p->out) > 0) {
        if (rc == 0 && !done) {
            evhttp_send_reply_chunk_with_cb(p->req, p->out, file_continue, p);
            return;
        }
        evhttp_send_reply_chunk(p->req, p->out);
    }
    file_finish(p, rc == 0);
}

/* Returns true when the stream took `p` over (it frees it when it ends),
 * false when the answer is complete and the caller frees p. */
static bool handle_file(preq *p, const char *raw_name)
{
    struct evkeyvalq *hdr = evhttp_request_get_output_headers(p->req);
    fp_options o = {0};
    polis_error err = {0};
    size_t len = 0;
    char dir[4096];
    char *name = evhttp_uridecode(raw_name, 0, &len);
    bool done;
    int rc;

    if (name == NULL) {
        fail(p, 500, "out of memory", "cannot decode the file name");
        return false;
    }
    if (file_dir(p, dir, sizeof(dir), &o.format) != 0) {
        free(name);
        return false;
    }
    rc = fp_open(dir, name, len, &p->fd, &err);
    free(name);
    if (rc != 0) {
        if (rc == POLIS_EDENIED)
            fail_err(p, 403, "forbidden", &err);
        else if (rc == POLIS_ENOTFOUND)
            fail_err(p, 404, "not found", &err);
        else
            fail_err(p, 500, "cannot open", &err);
        return false;
    }
    rc = fp_schema_from_product(p->doc, &p->schema, &p->nschema, &err);
    if (rc != 0) {
        fail_err(p, 500, "bad contract", &err);
        return false;
    }
    o.schema = p->schema;
    o.nschema = p->nschema;
    o.decision = p->decision;
    o.mask_key = pol_engine_mask_key(sc_snapshot_engine(p->snap));
    o.subject = &p->subject.subject;
    o.request = &p->expr_req;
    o.unknown_columns = FP_UNKNOWN_REFUSE;
    p->out = evbuffer_new();
    if (p->out == NULL) {
        fail(p, 500, "out of memory", "cannot hold the output");
        return false;
    }
    rc = fp_reader_new(p->fd, &o, file_sink, p, &p->reader, &err);
    if (rc == 0)
        rc = file_fill(p, &done, &err);
    if (rc != 0) {
        /* Nothing sent yet: a proper error.  A file that does not match
         * its contract is the producer's fault, not the consumer's. */
        fail_err(p, 500, rc == POLIS_EDENIED ? "denied" : "bad file", &err);
        return false;
    }
    evhttp_add_header(hdr, "Content-Type",
                      o.format == FP_FORMAT_CSV ? "text/csv; charset=utf-8"
                                                : "application/x-ndjson");
    evhttp_send_reply_start(p->req, 200, "OK");
    p->evcon = evhttp_request_get_connection(p->req);
    if (p->evcon == NULL) {
        evhttp_send_reply_end(p->req);
        record(p, "allow", 200, 0, 0);
        return false;
    }
    /* No read timeout while we write: the consumer says nothing during a
     * download.  A consumer that reads nothing for the write timeout is
     * dropped. */
    set_timeouts(p->evcon, 0, (p->h->o.write_timeout_ms + 999) / 1000);
    evhttp_connection_set_closecb(p->evcon, file_closed, p);
    if (done) {
        evhttp_send_reply_chunk(p->req, p->out);
        file_finish(p, true);
        return true;
    }
    evhttp_send_reply_chunk_with_cb(p->req, p->out, file_continue, p);
    return true;
}

/* ======================= event port ===================================== */

/*
 * One Server-Sent Events consumer.  It reads the port's log from its own
 * offset and hands the connection one batch at a time: the next batch is
 * read only when the previous one has gone out to the socket, so a slow
 * consumer costs one batch of memory and holds up nobody (it only falls
 * behind in the log, and is told when it falls past retention).
 */
typedef struct consumer {
    preq *p;
    sc_event_log *log;
    sc_event_view *view;
    uint64_t next;                    /* offset of the next event to read */
    uint64_t sent;                    /* events delivered */
    uint64_t bytes;                   /* bytes handed to the connection */
    char principal[POL_MAX_NAME + 1]; /* for the access record */
    struct evbuffer *out;
    bool inflight; /* a batch is being written */
    bool ended;
    struct consumer *prev, *next_c;
} consumer;

static void consumer_unlink(consumer *c)
{
    worker *w = c->p->w;

    if (c->prev)
        c->prev->next_c = c->next_c;
    else if (w->consumers == c)
        w->consumers = c->next_c;
    if (c->next_c)
        c->next_c->prev = c->prev;
    c->prev = c->next_c = NULL;
}

static void consumer_free(consumer *c)
{
    atomic_fetch_sub(&c->p->h->consumers, 1);
    metric_gauge_add(c->p->h->m_streams, -1);
    consumer_unlink(c);
    record(c->p, "allow", 200, c->sent, c->bytes);
    sc_event_view_free(c->view);
    if (c->out)
        evbuffer_free(c->out);
    preq_free(c->p);
    free(c);
}

/* The consumer went away: evhttp frees the request with the connection. */
static void consumer_closed(struct evhttp_connection *evcon, void *arg)
{
    consumer *c = arg;

    (void)evcon;
    if (evhttp_request_get_connection(c->p->req) == NULL)
        evhttp_send_reply_end(c->p->req); /* frees the detached request */
    consumer_free(c);
}

/* End the stream after a last SSE event `kind` with a JSON body. */
static void consumer_end(consumer *c, const char *kind, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    struct evhttp_connection *evcon = evhttp_request_get_connection(c->p->req);

    json_decref(body);
    evbuffer_add_printf(c->out, "event: %s\ndata: %s\n\n", kind,
                        text ? text : "{}");
    free(text);
    c->bytes += evbuffer_get_length(c->out);
    evhttp_send_reply_chunk(c->p->req, c->out);
    if (evcon) {
        evhttp_connection_set_closecb(evcon, NULL, NULL);
        set_timeouts(evcon, IDLE_TIMEOUT_S, IDLE_TIMEOUT_S);
    }
    evhttp_send_reply_end(c->p->req);
    c->ended = true;
    consumer_free(c);
}

typedef struct sse_batch {
    consumer *c;
    int rc;
    polis_error err;
} sse_batch;

static int sse_record(void *ctx, const sc_event_record *rec)
{
    sse_batch *b = ctx;
    consumer *c = b->c;
    polis_error err = {0};
    const char *json;
    size_t len;
    int rc =
        sc_event_view_apply(c->view, rec->data, rec->len, &json, &len, &err);

    if (rc != 0) {
        /* This event cannot be governed (e.g. a mask that cannot apply):
         * the consumer is told which, and the stream goes on. */
        char detail[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX];
        json_t *e =
            json_pack("{s:I, s:s}", "offset", (json_int_t)rec->offset, "error",
                      polis_error_format(&err, detail, sizeof(detail)));
        char *t = e ? json_dumps(e, JSON_COMPACT) : NULL;
        evbuffer_add_printf(c->out,
                            "event: error\nid: %" PRIu64 "\ndata: %s\n\n",
                            rec->offset, t ? t : "{}");
        free(t);
        json_decref(e);
        return 0;
    }
    if (json == NULL)
        return 0; /* filtered out for this consumer */
    evbuffer_add_printf(c->out, "id: %" PRIu64 "\ndata: ", rec->offset);
    evbuffer_add(c->out, json, len);
    evbuffer_add(c->out, "\n\n", 2);
    c->sent++;
    metric_add(c->p->h->m_delivered, 1);
    return 0;
}

static void consumer_sent(struct evhttp_connection *evcon, void *arg);

/*
 * Shared batches.  Every stream at the tail of a log is woken by the same
 * publish and reads the same records; streams of one principal with one
 * purpose under one snapshot produce the same bytes for them.  So each
 * loop keeps the last few batches it produced, keyed by (log, first
 * offset, snapshot, principal, purpose), and the next stream of the same
 * view copies the bytes instead of reading and governing the records
 * again.
 */
#define SSE_CACHE_SLOTS 8

typedef struct sse_cached {
    const sc_event_log *log; /* NULL: empty slot */
    uint64_t from, next;
    /* The snapshot by digest, not address: a freed snapshot's address may
     * come back for another one. */
    char digest[80];
    char key[2 * POL_MAX_NAME + 2]; /* principal NUL purpose */
    size_t keylen;
    struct evbuffer *bytes;
    uint64_t events; /* delivered in the batch (after filters) */
    uint64_t used;   /* the loop's clock when last used */
} sse_cached;

static size_t view_key(const consumer *c, char *key, size_t cap)
{
    const char *purpose = c->p->has_purpose ? c->p->purpose : "";
    int n = snprintf(key, cap, "%s%c%s", sc_event_view_principal(c->view), '\0',
                     purpose);

    return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

static sse_cached *batch_find(worker *w, const consumer *c, const char *key,
                              size_t keylen)
{
    for (int i = 0; w->batches && i < SSE_CACHE_SLOTS; i++) {
        sse_cached *b = &w->batches[i];
        if (b->log == c->log && b->from == c->next &&
            strcmp(b->digest,
                   sc_snapshot_digest(sc_event_view_snapshot(c->view))) == 0 &&
            b->keylen == keylen && memcmp(b->key, key, keylen) == 0) {
            b->used = ++w->batch_clock;
            return b;
        }
    }
    return NULL;
}

/* Keep the batch just read (all of c->out from `start`). */
static void batch_keep(worker *w, const consumer *c, const char *key,
                       size_t keylen, uint64_t from, uint64_t events,
                       size_t start)
{
    sse_cached *slot = NULL;
    size_t len = evbuffer_get_length(c->out) - start;

    if (keylen == 0 || keylen >= sizeof(slot->key))
        return;
    if (w->batches == NULL &&
        (w->batches = calloc(SSE_CACHE_SLOTS, sizeof(*w->batches))) == NULL)
        return;
    for (int i = 0; i < SSE_CACHE_SLOTS; i++)
        if (slot == NULL || w->batches[i].used < slot->used)
            slot = &w->batches[i]; /* least recently used */
    if (slot->bytes == NULL && (slot->bytes = evbuffer_new()) == NULL)
        return;
    evbuffer_drain(slot->bytes, evbuffer_get_length(slot->bytes));
    slot->log = NULL;
    if (len > 0) {
        unsigned char *data = evbuffer_pullup(c->out, -1);
        if (data == NULL || evbuffer_add(slot->bytes, data + start, len) != 0)
            return;
    }
    slot->log = c->log;
    slot->from = from;
    slot->next = c->next;
    snprintf(slot->digest, sizeof(slot->digest), "%s",
             sc_snapshot_digest(sc_event_view_snapshot(c->view)));
    memcpy(slot->key, key, keylen);
    slot->keylen = keylen;
    slot->events = events;
    slot->used = ++w->batch_clock;
}

static void batches_free(worker *w)
{
    for (int i = 0; w->batches && i < SSE_CACHE_SLOTS; i++)
        if (w->batches[i].bytes)
            evbuffer_free(w->batches[i].bytes);
    free(w->batches);
    w->batches = NULL;
}

/* A policy change applies from the next event: the view follows the
 * snapshot in force.  0, or the stream was ended. */
static int consumer_follow(consumer *c)
{
    sc_snapshot *cur = sc_snapshot_slot_get(c->p->h->o.slot);
    sc_event_view *view = NULL;
    polis_error err = {0};
    char detail[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX];
    int rc;

    if (cur == NULL || cur == sc_event_view_snapshot(c->view)) {
        sc_snapshot_unref(cur);
        return 0;
    }
    rc = sc_event_view_new(
        cur, c->p->h->o.ports, c->p->product, sc_event_view_principal(c->view),
        c->p->has_purpose ? c->p->purpose : NULL, &view, &err);
    sc_snapshot_unref(cur);
    if (rc != 0) {
        polis_error_format(&err, detail, sizeof(detail));
        consumer_end(c, rc == POLIS_EDENIED ? "denied" : "error",
                     json_pack("{s:s, s:s, s:I}", "error",
                               rc == POLIS_EDENIED ? "denied" : "unavailable",
                               "detail", detail, "next", (json_int_t)c->next));
        return -1;
    }
    sc_event_view_free(c->view);
    c->view = view;
    return 0;
}

/* Read and send the next batch, unless one is in flight. */
static void consumer_pump(consumer *c)
{
    sse_batch b = {c, 0, {0}};
    uint64_t next = c->next;
    char detail[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX];
    char key[2 * POL_MAX_NAME + 2];
    size_t keylen;
    int rc = 0;

    if (c->inflight || c->ended || consumer_follow(c) != 0)
        return;
    /* Events the consumer's filters leave out produce nothing: read on
     * (a bounded number of batches per turn, then yield the loop) until
     * something is to be sent or the log is exhausted. */
    keylen = view_key(c, key, sizeof(key));
    for (int turn = 0;; turn++) {
        uint64_t from = c->next, sent = c->sent;
        size_t start = evbuffer_get_length(c->out);
        sse_cached *hit = keylen ? batch_find(c->p->w, c, key, keylen) : NULL;

        if (hit) {
            size_t n = evbuffer_get_length(hit->bytes);
            if (n > 0 &&
                evbuffer_add(c->out, evbuffer_pullup(hit->bytes, -1), n) != 0) {
                rc = polis_error_set(&b.err, POLIS_ENOMEM, NULL,
                                     "out of memory");
                break;
            }
            c->sent += hit->events;
            metric_add(c->p->h->m_delivered, hit->events);
            next = hit->next;
        } else {
            rc = sc_event_log_read(c->log, c->next, 256, 128 * 1024, sse_record,
                                   &b, &next, &b.err);
            if (rc != 0)
                break;
        }
        if (next == from)
            break;
        c->next = next;
        if (!hit)
            batch_keep(c->p->w, c, key, keylen, from, c->sent - sent, start);
        if (evbuffer_get_length(c->out) > 0)
            break;
        if (turn == 16) {
            event_active(c->p->w->wake, 0, 0);
            break;
        }
    }
    if (rc != 0) {
        sc_event_log_stats st;
        sc_event_log_stats_get(c->log, &st);
        polis_error_format(&b.err, detail, sizeof(detail));
        consumer_end(c, rc == POLIS_ENOTFOUND ? "gone" : "error",
                     json_pack("{s:s, s:s, s:I, s:I}", "error",
                               rc == POLIS_ENOTFOUND ? "gone" : "unavailable",
                               "detail", detail, "start",
                               (json_int_t)st.start_offset, "next",
                               (json_int_t)c->next));
        return;
    }
    if (evbuffer_get_length(c->out) == 0)
        return; /* nothing for this consumer yet: wait for a wake */
    c->inflight = true;
    c->bytes += evbuffer_get_length(c->out);
    evhttp_send_reply_chunk_with_cb(c->p->req, c->out, consumer_sent, c);
}

static void consumer_sent(struct evhttp_connection *evcon, void *arg)
{
    consumer *c = arg;

    (void)evcon;
    c->inflight = false;
    consumer_pump(c);
}

/* New events in some log (any thread): every loop looks at its idle
 * consumers. */
static void events_visible(void *arg)
{
    sc_http *h = arg;

    for (int i = 0; i < h->nworkers; i++)
        if (h->w[i].wake)
            event_active(h->w[i].wake, 0, 0);
}

static void worker_wake(evutil_socket_t fd, short what, void *arg)
{
    worker *w = arg;
    consumer *c = w->consumers, *next;

    (void)fd;
    (void)what;
    while (c) {
        next = c->next_c; /* c may end and be freed */
        consumer_pump(c);
        c = next;
    }
}

/* Idle consumers get a comment now and then: proxies keep the stream
 * open, and a consumer that has gone away is noticed. */
static void worker_beat(evutil_socket_t fd, short what, void *arg)
{
    worker *w = arg;

    (void)fd;
    (void)what;
    for (consumer *c = w->consumers; c; c = c->next_c) {
        if (c->inflight)
            continue;
        evbuffer_add(c->out, ":\n\n", 3);
        c->inflight = true;
        evhttp_send_reply_chunk_with_cb(c->p->req, c->out, consumer_sent, c);
    }
}

/* ?from=N|start|end, or Last-Event-ID: N (the last one received, so the
 * stream goes on after it).  -1 with the answer sent when malformed. */
static int subscribe_from(preq *p, const sc_event_log_stats *st, uint64_t *from)
{
    struct evkeyvalq q;
    const char *last = evhttp_find_header(
        evhttp_request_get_input_headers(p->req), "Last-Event-ID");
    const char *v = NULL,
               *query =
                   evhttp_uri_get_query(evhttp_request_get_evhttp_uri(p->req));
    char *end;
    int rc = 0;

    if (evhttp_parse_query_str(query ? query : "", &q) != 0) {
        fail(p, 400, "bad request", "the query string does not parse");
        return -1;
    }
    v = evhttp_find_header(&q, "from");
    *from = st->next_offset;
    if (last && *last) {
        unsigned long long n;
        errno = 0;
        n = strtoull(last, &end, 10);
        if (errno || *end || *last == '-' || n == ULLONG_MAX) {
            fail(p, 400, "bad request", "Last-Event-ID: not an event offset");
            rc = -1;
        } else {
            *from = (uint64_t)n + 1;
        }
    } else if (v == NULL || strcmp(v, "end") == 0) {
        *from = st->next_offset;
    } else if (strcmp(v, "start") == 0) {
        *from = st->start_offset;
    } else {
        unsigned long long n;
        errno = 0;
        n = strtoull(v, &end, 10);
        if (errno || *end || *v == '-' || *v == '\0') {
            fail(p, 400, "bad request",
                 "from: an event offset, \"start\" or \"end\"");
            rc = -1;
        } else {
            *from = (uint64_t)n;
        }
    }
    evhttp_clear_headers(&q);
    return rc;
}

static int event_log_of(preq *p, sc_event_log **log)
{
    polis_error err = {0};

    if (p->h->o.events == NULL) {
        fail(p, 503, "unavailable", "this sidecar serves no event ports");
        return -1;
    }
    if (sc_events_log(p->h->o.events, p->product, p->port_doc,
                      p->snap ? sc_snapshot_revision(p->snap) : 0, log,
                      &err) != 0) {
        fail_err(p, 503, "unavailable", &err);
        return -1;
    }
    return 0;
}

/* GET .../events: returns true when the stream took p over. */
static bool handle_subscribe(preq *p)
{
    struct evkeyvalq *hdr = evhttp_request_get_output_headers(p->req);
    sc_event_log_stats st;
    polis_error err = {0};
    char text[256];
    consumer *c;
    uint64_t from;
    int rc;

    if (atomic_load(&p->h->consumers) >= p->h->o.max_consumers) {
        snprintf(text, sizeof(text),
                 "this sidecar serves at most %d event streams at once "
                 "(--event-max-consumers); retry later",
                 p->h->o.max_consumers);
        evhttp_add_header(hdr, "Retry-After", "5");
        fail(p, 503, "unavailable", text);
        return false;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL || (c->out = evbuffer_new()) == NULL) {
        free(c);
        fail(p, 500, "out of memory", "cannot take the consumer");
        return false;
    }
    c->p = p;
    if (event_log_of(p, &c->log) != 0)
        goto refused;
    sc_event_log_stats_get(c->log, &st);
    if (subscribe_from(p, &st, &from) != 0)
        goto refused;
    if (from < st.start_offset) {
        reply_json(p->req, 410, "Gone",
                   json_pack("{s:s, s:s, s:I, s:I}", "error", "gone", "detail",
                             "the offset is no longer retained", "start",
                             (json_int_t)st.start_offset, "next",
                             (json_int_t)st.next_offset));
        record(p, "allow", 410, 0, 0);
        goto refused;
    }
    if (from > st.next_offset) {
        snprintf(text, sizeof(text),
                 "offset %" PRIu64
                 " is past the end (the next event is %" PRIu64 ")",
                 from, st.next_offset);
        fail(p, 400, "bad request", text);
        goto refused;
    }
    rc = sc_event_view_new(p->snap, p->h->o.ports, p->product, p->principal,
                           p->has_purpose ? p->purpose : NULL, &c->view, &err);
    if (rc != 0) {
        fail_err(p, rc == POLIS_EDENIED ? 403 : 500, "cannot govern", &err);
        goto refused;
    }
    c->next = from;
    /* A stream may live for days: it keeps only its view (which follows
     * the snapshot in force), not the snapshot it was admitted with. */
    snprintf(c->principal, sizeof(c->principal), "%s", p->principal);
    p->principal = c->principal;
    pol_decision_free(p->decision);
    p->decision = NULL;
    sc_snapshot_unref(p->snap);
    p->snap = NULL;
    evhttp_add_header(hdr, "Content-Type", "text/event-stream");
    evhttp_add_header(hdr, "Cache-Control", "no-store");
    evhttp_add_header(hdr, "X-Accel-Buffering", "no");
    evhttp_send_reply_start(p->req, 200, "OK");
    p->evcon = evhttp_request_get_connection(p->req);
    if (p->evcon == NULL) {
        evhttp_send_reply_end(p->req);
        record(p, "allow", 200, 0, 0);
        goto refused;
    }
    set_timeouts(p->evcon, 0, (p->h->o.write_timeout_ms + 999) / 1000);
    evhttp_connection_set_closecb(p->evcon, consumer_closed, c);
    atomic_fetch_add(&p->h->consumers, 1);
    metric_gauge_add(p->h->m_streams, 1);
    c->next_c = p->w->consumers;
    if (c->next_c)
        c->next_c->prev = c;
    p->w->consumers = c;
    /* The first bytes: the consumer knows at once that it is subscribed,
     * and from where. */
    evbuffer_add_printf(c->out, ": %s from %" PRIu64 "\nretry: 1000\n\n",
                        p->product, from);
    c->inflight = true;
    c->bytes += evbuffer_get_length(c->out);
    evhttp_send_reply_chunk_with_cb(p->req, c->out, consumer_sent, c);
    return true;
refused:
    sc_event_view_free(c->view);
    evbuffer_free(c->out);
    free(c);
    return false;
}

/*
 * A publish waiting for its fsync (fsync batch): the log's flusher calls
 * publish_durable, which wakes the loop; the loop answers.  The loop never
 * waits for a disk, and any number of publishes share one fsync.
 */
typedef struct publish {
    preq *p;
    struct event *ev; /* on the serving loop: the answer */
    size_t count, len;
    int rc;
    uint64_t first;
    polis_error err;
    bool gone; /* the publisher hung up meanwhile */
    struct publish *prev, *next;
} publish;

static void publish_unlink(publish *j)
{
    worker *w = j->p->w;

    if (j->prev)
        j->prev->next = j->next;
    else if (w->publishes == j)
        w->publishes = j->next;
    if (j->next)
        j->next->prev = j->prev;
}

static void publish_free(publish *j)
{
    publish_unlink(j);
    if (j->p->evcon && !j->gone)
        evhttp_connection_set_closecb(j->p->evcon, NULL, NULL);
    event_free(j->ev);
    preq_free(j->p);
    free(j);
}

static void publish_answer(preq *p, int rc, uint64_t first, size_t count,
                           size_t len, const polis_error *err)
{
    if (rc != 0) {
        fail_err(p, rc == POLIS_ETOOBIG ? 413 : 503,
                 rc == POLIS_ETOOBIG ? "too large" : "unavailable", err);
        return;
    }
    reply_json(p->req, 200, "OK",
               json_pack("{s:s, s:I, s:I, s:I}", "product", p->product, "first",
                         (json_int_t)first, "count", (json_int_t)count, "next",
                         (json_int_t)(first + count)));
    record(p, "allow", 200, count, len);
    metric_add(p->h->m_published, count);
}

/* On the loop: the fsync came (or failed). */
static void publish_wake(evutil_socket_t fd, short what, void *arg)
{
    publish *j = arg;

    (void)fd;
    (void)what;
    if (j->gone)
        /* Durable or not, nobody is waiting: recorded as the client's
         * hang-up (the events, when durable, are in the log). */
        record(j->p, j->rc == 0 ? "allow" : "error", 499,
               j->rc == 0 ? j->count : 0, j->len);
    else
        publish_answer(j->p, j->rc, j->first, j->count, j->len, &j->err);
    publish_free(j);
}

/* The log's flusher thread: hand the result to the loop. */
static void publish_durable(void *ctx, int rc, uint64_t first,
                            const polis_error *err)
{
    publish *j = ctx;

    j->rc = rc;
    j->first = first;
    if (err)
        j->err = *err;
    event_active(j->ev, 0, 0);
}

static void publish_closed(struct evhttp_connection *evcon, void *arg)
{
    publish *j = arg;

    (void)evcon;
    j->gone = true;
    if (evhttp_request_get_connection(j->p->req) == NULL)
        evhttp_send_reply_end(j->p->req); /* frees the detached request */
}

/* POST .../events: the product's own service publishes.  Returns true
 * when the answer waits for an fsync (the publish took p over). */
static bool handle_publish(preq *p)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(p->req);
    size_t len = evbuffer_get_length(in);
    sc_event_batch batch = {0};
    sc_event_log *log;
    fp_column *schema = NULL;
    size_t nschema = 0;
    polis_error err = {0};
    uint64_t first = 0;
    publish *j = NULL;
    bool pending = false;
    char text[512];
    int rc;

    if (!sc_events_may_publish(p->port_doc, p->principal,
                               &p->subject.subject)) {
        snprintf(text, sizeof(text),
                 "%s is not a publisher of %s (the event port's publishers)",
                 p->principal, p->product);
        fail(p, 403, "forbidden", text);
        return false;
    }
    if (len > SC_EVENTS_MAX_BODY) {
        snprintf(text, sizeof(text),
                 "a publish is at most %d bytes; send fewer events at once",
                 SC_EVENTS_MAX_BODY);
        fail(p, 413, "too large", text);
        return false;
    }
    rc = fp_schema_from_product(p->doc, &schema, &nschema, &err);
    if (rc == 0)
        rc = sc_event_batch_parse((const char *)evbuffer_pullup(in, -1), len,
                                  schema, nschema, &batch, &err);
    free(schema);
    if (rc != 0) {
        fail_err(p, rc == POLIS_ENOMEM ? 500 : 400, "bad events", &err);
        sc_event_batch_free(&batch);
        return false;
    }
    if (event_log_of(p, &log) != 0) {
        sc_event_batch_free(&batch);
        return false;
    }
    if ((j = calloc(1, sizeof(*j))) == NULL ||
        (j->ev = event_new(p->w->base, -1, 0, publish_wake, j)) == NULL) {
        free(j);
        sc_event_batch_free(&batch);
        fail(p, 500, "out of memory", "cannot take the publish");
        return false;
    }
    j->p = p;
    j->count = batch.count;
    j->len = len;
    /* Registered before the append: its callback may run on the flusher
     * at once, and the wake then finds everything in place. */
    p->evcon = evhttp_request_get_connection(p->req);
    rc = sc_event_log_append_async(log, batch.events, batch.count,
                                   publish_durable, j, &first, &pending, &err);
    sc_event_batch_free(&batch);
    if (!pending) {
        size_t count = j->count;
        event_free(j->ev);
        free(j);
        publish_answer(p, rc, first, count, len, &err);
        return false;
    }
    j->next = p->w->publishes;
    if (j->next)
        j->next->prev = j;
    p->w->publishes = j;
    if (p->evcon)
        evhttp_connection_set_closecb(p->evcon, publish_closed, j);
    return true;
}

/* ======================= HTTP port ====================================== */

static void http_done(void *arg, int status, uint64_t bytes, bool ok)
{
    preq *p = arg;

    record(p, ok ? "allow" : "error", status, 0, bytes);
    preq_free(p);
}

/* Whether a raw path segment is "." or ".." (percent-encoded or not):
 * such a segment would climb out of the upstream's base path. */
static bool dot_segment(const char *s, size_t n)
{
    size_t dots = 0;

    for (size_t i = 0; i < n;) {
        if (s[i] == '.')
            i++;
        else if (n - i >= 3 && s[i] == '%' && s[i + 1] == '2' &&
                 (s[i + 2] == 'e' || s[i + 2] == 'E'))
            i += 3;
        else
            return false;
        dots++;
    }
    return dots == 1 || dots == 2;
}

static bool climbs(const char *rest)
{
    while (*rest) {
        size_t n = strcspn(rest, "/");

        if (dot_segment(rest, n))
            return true;
        rest += n;
        if (*rest == '/')
            rest++;
    }
    return false;
}

/* The port's upstream gets the request; http_done records and frees p. */
static void handle_http(preq *p, const char *rest)
{
    const char *upstream =
        json_string_value(json_object_get(p->port_doc, "upstream"));
    hp_identity id = {0};

    if (upstream == NULL) {
        fail(p, 500, "bad port", "the http port has no upstream");
        preq_free(p);
        return;
    }
    id.principal = p->principal;
    id.groups = p->subject.subject.groups;
    id.ngroups = p->subject.subject.ngroups;
    id.purpose = p->has_purpose ? p->purpose : NULL;
    id.rule = p->rule;
    hp_forward(p->w->base, p->w->upstreams, p->req, upstream, rest, &id,
               p->h->o.proxy_timeout_ms, p->h->o.write_timeout_ms, http_done,
               p);
}

/* ======================= routing ======================================== */

/* A name segment [A-Za-z0-9_.-]{1,253} at *s, up to '/' or the end. */
static size_t segment(const char *s)
{
    size_t n = strcspn(s, "/");

    if (n == 0 || n > POL_MAX_NAME)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return n;
}

static void handle_product(worker *w, struct evhttp_request *req,
                           const char *path)
{
    sc_http *h = w->h;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const char *s = path + strlen("/v1/products/"), *rest, *file = NULL;
    const char *http_rest = NULL;
    size_t dn = segment(s), pn;
    preq *p = calloc(1, sizeof(*p));

    if (p == NULL) {
        reply_error(req, 500, "Internal Server Error", "out of memory",
                    "cannot take the request");
        return;
    }
    p->h = h;
    p->w = w;
    p->req = req;
    p->fd = -1;
    p->start_us = mono_us();
    pn = dn && s[dn] == '/' ? segment(s + dn + 1) : 0;
    rest = pn ? s + dn + 1 + pn : "";
    snprintf(p->product, sizeof(p->product), "%.*s", (int)(dn + 1 + pn), s);
    p->name = p->product + dn + 1;
    if (strcmp(rest, "/query") == 0)
        p->port = POL_PORT_QUERY;
    else if (strcmp(rest, "/files") == 0 || strcmp(rest, "/files/") == 0)
        p->port = POL_PORT_FILE;
    else if (strncmp(rest, "/files/", 7) == 0) {
        p->port = POL_PORT_FILE;
        file = rest + 7;
    } else if (strcmp(rest, "/events") == 0) {
        p->port = POL_PORT_EVENT;
    } else if (strcmp(rest, "/http") == 0 || strncmp(rest, "/http/", 6) == 0) {
        p->port = POL_PORT_HTTP;
        http_rest = rest[5] ? rest + 6 : "";
    } else {
        reply_error(req, 404, "Not Found", "not found",
                    "product paths are /v1/products/{domain}/{product}/query, "
                    ".../files/[name], .../events and .../http/[path]");
        preq_free(p);
        return;
    }
    if (p->port == POL_PORT_QUERY && cmd != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          "POST");
        fail(
            p, 405, "method not allowed",
            "the query port takes POST with {\"sql\": ..., \"params\": [...]}");
        preq_free(p);
        return;
    }
    if (p->port == POL_PORT_FILE && cmd != EVHTTP_REQ_GET) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          "GET");
        fail(p, 405, "method not allowed", "the file port takes GET");
        preq_free(p);
        return;
    }
    if (p->port == POL_PORT_EVENT && cmd != EVHTTP_REQ_GET &&
        cmd != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          "GET, POST");
        fail(p, 405, "method not allowed",
             "the event port takes POST (publish) and GET (subscribe)");
        preq_free(p);
        return;
    }
    if (p->port == POL_PORT_EVENT && cmd == EVHTTP_REQ_POST) {
        /* Publishing is the port's own service's, named in the port: no
         * read decision. */
        if (identify(p) != 0 || !handle_publish(p))
            preq_free(p);
        return;
    }
    if (http_rest && climbs(http_rest)) {
        fail(p, 400, "bad request",
             "a \".\" or \"..\" segment in the path of an http port");
        preq_free(p);
        return;
    }
    if (admit(p) != 0) {
        preq_free(p);
        return;
    }
    if (http_rest) {
        handle_http(p, http_rest);
        return;
    }
    /* Another domain's products are not in this domain's catalogue, so
     * they were a 404 above. */
    if (p->port == POL_PORT_QUERY) {
        handle_query(p);
        preq_free(p);
    } else if (p->port == POL_PORT_EVENT) {
        if (!handle_subscribe(p))
            preq_free(p);
    } else if (file == NULL) {
        handle_list(p);
        preq_free(p);
    } else if (!handle_file(p, file)) {
        preq_free(p);
    }
}

static void handle_request(struct evhttp_request *req, void *arg)
{
    worker *w = arg;
    sc_http *h = w->h;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));

    if (path && strncmp(path, "/v1/products/", 13) == 0) {
        handle_product(w, req, path);
        return;
    }
    if (path == NULL || strcmp(path, "/v1/check") != 0) {
        reply_error(req, 404, "Not Found", "not found",
                    "this port serves POST /v1/check and "
                    "/v1/products/{domain}/{product}/...");
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

/* ======================= server ========================================= */

static void *http_thread(void *arg)
{
    worker *w = arg;

    event_base_dispatch(w->base);
    return NULL;
}

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;

static void evthread_setup(void)
{
    evthread_use_pthreads();
}

static int bound_port(evutil_socket_t fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    return ntohs(ss.ss_family == AF_INET6
                     ? ((struct sockaddr_in6 *)&ss)->sin6_port
                     : ((struct sockaddr_in *)&ss)->sin_port);
}

static int worker_init(sc_http *h, worker *w)
{
    struct event_config *cfg = event_config_new();

    w->h = h;
    /* epoll_ctl was a sixth of the HTTP port's CPU (evhttp enables and
     * disables reading and writing around every request): the changelist
     * makes one call of the net change of a loop iteration. */
    if (cfg)
        event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    w->base = cfg ? event_base_new_with_config(cfg) : NULL;
    event_config_free(cfg);
    w->http = w->base ? evhttp_new(w->base) : NULL;
    if (w->http == NULL)
        return -1;
    evhttp_set_max_body_size(w->http, TRANSPORT_MAX_BODY);
    evhttp_set_timeout(w->http, IDLE_TIMEOUT_S);
    evhttp_set_allowed_methods(
        w->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                     EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                     EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(w->http, handle_request, w);
    w->upstreams = hp_pool_new(w->base, h->o.upstream_tls);
    w->wake = event_new(w->base, -1, 0, worker_wake, w);
    w->beat = event_new(w->base, -1, EV_PERSIST, worker_beat, w);
    if (w->wake == NULL || w->beat == NULL || w->upstreams == NULL)
        return -1;
    {
        struct timeval beat = {15, 0};
        event_add(w->beat, &beat);
    }
    return 0;
}

static void worker_free(worker *w)
{
    pgq_close(w->pg);
    w->pg = NULL;
    /* Publishes still waiting (their fsync was cancelled by
     * sc_events_shutdown after the loop stopped): no answer can go out. */
    while (w->publishes)
        publish_free(w->publishes);
    /* Freeing the server closes the consumers' connections, whose close
     * callbacks free the consumers. */
    if (w->http)
        evhttp_free(w->http);
    hp_pool_free(w->upstreams);
    batches_free(w);
    if (w->wake)
        event_free(w->wake);
    if (w->beat)
        event_free(w->beat);
    if (w->base)
        event_base_free(w->base);
}

int sc_http_start(const sc_http_options *opts, sc_http **out, polis_error *err)
{
    struct evhttp_bound_socket *sock;
    evutil_socket_t fd;
    char host[256];
    sc_http *h;
    int port, rc, i;

    if (opts == NULL || opts->listen == NULL || opts->domain == NULL ||
        opts->checker == NULL || opts->slot == NULL || opts->ports == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "listen, checker, slot and ports are "
                               "required");
    if ((rc = admin_split_hostport(opts->listen, host, sizeof(host), &port,
                                   err)))
        return rc;
    pthread_once(&evthread_once, evthread_setup);
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    h->o = *opts;
    if (h->o.write_timeout_ms <= 0)
        h->o.write_timeout_ms = 30000;
    if (h->o.proxy_timeout_ms <= 0)
        h->o.proxy_timeout_ms = 30000;
    if (h->o.max_consumers <= 0)
        h->o.max_consumers = 10000;
    if (opts->metrics) {
        h->m_published = metrics_counter(
            opts->metrics, "polis_sidecar_events_published_total",
            "events acknowledged to publishers on the event ports", NULL);
        h->m_delivered = metrics_counter(
            opts->metrics, "polis_sidecar_events_delivered_total",
            "events sent to event stream consumers (after their filters)",
            NULL);
        h->m_streams =
            metrics_gauge(opts->metrics, "polis_sidecar_event_streams",
                          "event streams (SSE subscribers) open", NULL);
    }
    h->nworkers = opts->workers > 0 ? opts->workers : 4;
    if (h->nworkers > SC_HTTP_MAX_WORKERS)
        h->nworkers = SC_HTTP_MAX_WORKERS;
    h->w = calloc((size_t)h->nworkers, sizeof(*h->w));
    if (h->w == NULL) {
        free(h);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    for (i = 0; i < h->nworkers; i++)
        if (worker_init(h, &h->w[i]) != 0) {
            rc = polis_error_set(err, POLIS_ENOMEM, opts->listen,
                                 "cannot create the HTTP server");
            goto fail;
        }
    sock = evhttp_bind_socket_with_handle(h->w[0].http, host, (uint16_t)port);
    if (sock == NULL) {
        rc = polis_error_set(err, POLIS_EIO, opts->listen,
                             "cannot listen (address in use or not local?)");
        goto fail;
    }
    fd = evhttp_bound_socket_get_fd(sock);
    h->port = bound_port(fd);
    /* Every loop accepts on the same socket (each listener closes its own
     * descriptor, hence the dup): an idle loop takes the next connection
     * while another is busy with a query. */
    for (i = 1; i < h->nworkers; i++) {
        evutil_socket_t d = dup(fd);
        if (d < 0 ||
            evhttp_accept_socket_with_handle(h->w[i].http, d) == NULL) {
            if (d >= 0)
                close(d);
            rc = polis_error_set(err, POLIS_EIO, opts->listen,
                                 "cannot share the listening socket");
            goto fail;
        }
    }
    for (i = 0; i < h->nworkers; i++) {
        if (pthread_create(&h->w[i].thread, NULL, http_thread, &h->w[i]) != 0) {
            rc = polis_error_set(err, POLIS_EINTERNAL, opts->listen,
                                 "cannot start the HTTP threads");
            goto fail;
        }
        h->w[i].started = 1;
    }
    if (h->o.events)
        sc_events_set_listener(h->o.events, events_visible, h);
    *out = h;
    return 0;
fail:
    sc_http_free(h);
    return rc;
}

int sc_http_port(const sc_http *h)
{
    return h->port;
}

void sc_http_free(sc_http *h)
{
    int i;

    if (h == NULL)
        return;
    if (h->o.events) {
        sc_events_set_listener(h->o.events, NULL, NULL);
        /* Resolves every publish waiting for an fsync now, while the
         * loops run (normally done already by the caller): none may call
         * back after the loops are gone. */
        sc_events_shutdown(h->o.events);
    }
    for (i = 0; i < h->nworkers; i++)
        if (h->w[i].started)
            event_base_loopexit(h->w[i].base, NULL);
    for (i = 0; i < h->nworkers; i++)
        if (h->w[i].started)
            pthread_join(h->w[i].thread, NULL);
    for (i = 0; i < h->nworkers; i++)
        worker_free(&h->w[i]);
    free(h->w);
    free(h);
}
