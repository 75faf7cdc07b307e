/*
 * etcd.c — the etcd v3 client of etcd.h: JSON over the etcd 3.4 gRPC
 * gateway (POST /v3/kv/..., /v3/lease/..., streaming /v3/watch) with libcurl
 * and Jansson.
 * Unary calls borrow an easy handle from a small pool; each watch runs its
 * own thread on a curl multi handle.  Design notes: docs/internals/etcd.md.
 */
#include "common/etcd.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ETCD_MAX_ENDPOINTS 16
#define ETCD_POOL_MAX      8
/* Bigger than any sane etcd answer (default request limit is 1.5 MiB, a
 * range can return many); a runaway answer must not exhaust memory. */
#define ETCD_MAX_RESPONSE ((size_t)64 << 20)
/* Batches queued between the watch thread and etcd_watch_next; past it the
 * thread stops reading and TCP flow control holds etcd back. */
#define WATCH_QUEUE_MAX      128
#define WATCH_BACKOFF_MIN_MS 50
#define WATCH_BACKOFF_MAX_MS 2000

struct etcd_client {
    char *endpoints[ETCD_MAX_ENDPOINTS];
    size_t n_endpoints;
    int timeout_ms;
    int connect_timeout_ms;
    char *ca_file;
    char *cert_file;
    char *key_file;
    struct curl_slist *headers;

    pthread_mutex_t mu; /* guards current and pool */
    size_t current;     /* endpoint that answered last */
    CURL *pool[ETCD_POOL_MAX];
    size_t n_pool;
};

/* ---- process-wide libcurl initialisation ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_ts(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static int cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    int rc;

    if (pthread_condattr_init(&attr) != 0)
        return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

/* ---- base64 (the gateway's encoding of bytes fields) ---- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const unsigned char *in, size_t len)
{
    size_t out_len = 4 * ((len + 2) / 3);
    char *out = malloc(out_len + 1);
    size_t o = 0;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = b64_alphabet[(v >> 18) & 63];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64_alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

static int b64_value(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+' || ch == '-')
        return 62;
    if (ch == '/' || ch == '_')
        return 63;
    return -1;
}

/* Decodes into a NUL-terminated buffer; -1 on bad input or no memory. */
static int b64_decode(const char *in, char **out, size_t *out_len)
{
    size_t len = strlen(in);
    char *buf = malloc(len / 4 * 3 + 4);
    unsigned acc = 0;
    int bits = 0;
    size_t o = 0;

    if (buf == NULL)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v;
        if (in[i] == '=')
            break;
        v = b64_value(in[i]);
        if (v < 0) {
            free(buf);
            return -1;
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    buf[o] = '\0';
    *out = buf;
    *out_len = o;
    return 0;
}

/* ---- JSON helpers ---- */

/* int64 fields arrive as strings ("42"); accept numbers too.  Missing
 * means the default, 0. */
static int64_t j_int64(const json_t *obj, const char *name)
{
    const json_t *v = json_object_get(obj, name);

    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v))
        return (int64_t)strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static bool j_bool(const json_t *obj, const char *name)
{
    return json_is_true(json_object_get(obj, name));
}

static int64_t j_header_revision(const json_t *obj)
{
    return j_int64(json_object_get(obj, "header"), "revision");
}

/* Sets obj[name] to base64(bytes); 0 or -1 on no memory. */
static int j_set_b64(json_t *obj, const char *name, const char *bytes,
                     size_t len)
{
    char *enc = b64_encode((const unsigned char *)bytes, len);
    int rc;

    if (enc == NULL)
        return -1;
    rc = json_object_set_new(obj, name, json_string(enc));
    free(enc);
    return rc;
}

static int j_set_int(json_t *obj, const char *name, int64_t v)
{
    return json_object_set_new(obj, name, json_integer((json_int_t)v));
}

/* Missing or empty bytes fields are omitted by the gateway: decode to "". */
static int j_get_b64(const json_t *obj, const char *name, char **out,
                     size_t *len)
{
    const json_t *v = json_object_get(obj, name);

    if (v == NULL)
        return b64_decode("", out, len);
    if (!json_is_string(v))
        return -1;
    return b64_decode(json_string_value(v), out, len);
}

/*
 * The end of the range of keys starting with `key`: the key with its last
 * byte below 0xff incremented and the rest dropped; "\0" (every key from
 * `key` on) when there is no such byte.  Caller frees.
 */
static char *prefix_end(const char *key, size_t len, size_t *end_len)
{
    char *end = malloc(len + 1);

    if (end == NULL)
        return NULL;
    memcpy(end, key, len);
    for (size_t i = len; i > 0; i--) {
        if ((unsigned char)end[i - 1] < 0xff) {
            end[i - 1]++;
            *end_len = i;
            return end;
        }
    }
    end[0] = '\0';
    *end_len = 1;
    return end;
}

/* Sets "key" and "range_end" for a single key, a prefix or [key, end). An
 * empty prefix means every key, which etcd spells key "\0" end "\0". */
static int j_set_range(json_t *obj, const char *key, bool prefix,
                       const char *range_end)
{
    size_t len = strlen(key);

    if (range_end != NULL) {
        if (j_set_b64(obj, "key", key, len) < 0 ||
            j_set_b64(obj, "range_end", range_end, strlen(range_end)) < 0)
            return -1;
        return 0;
    }
    if (prefix && len == 0) {
        if (j_set_b64(obj, "key", "", 1) < 0 ||
            j_set_b64(obj, "range_end", "", 1) < 0)
            return -1;
        return 0;
    }
    if (j_set_b64(obj, "key", key, len) < 0)
        return -1;
    if (prefix) {
        size_t end_len;
        char *end = prefix_end(key, len, &end_len);
        int rc;
        if (end == NULL)
            return -1;
        rc = j_set_b64(obj, "range_end", end, end_len);
        free(end);
        return rc;
    }
    return 0;
}

/* ---- client ---- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int add_endpoint(etcd_client *c, const char *start, size_t len,
                        polis_error *err)
{
    char *ep;

    while (len > 0 && (*start == ' ' || *start == '\t')) {
        start++;
        len--;
    }
    while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t' ||
                       start[len - 1] == '/'))
        len--;
    if (len == 0)
        return POLIS_OK;
    if (c->n_endpoints == ETCD_MAX_ENDPOINTS)
        return polis_error_set(err, POLIS_EINVAL, "etcd endpoints",
                               "more than %d endpoints", ETCD_MAX_ENDPOINTS);
    /* A bare host:port means plain HTTP, as etcdctl reads it. */
    if (memchr(start, ':', len) == NULL ||
        (strncmp(start, "http://", 7) != 0 &&
         strncmp(start, "https://", 8) != 0)) {
        ep = malloc(len + 8);
        if (ep != NULL)
            snprintf(ep, len + 8, "http://%.*s", (int)len, start);
    } else {
        ep = strndup(start, len);
    }
    if (ep == NULL)
        return polis_error_set(err, POLIS_ENOMEM, "etcd endpoints", NULL);
    c->endpoints[c->n_endpoints++] = ep;
    return POLIS_OK;
}

int etcd_client_new(const etcd_options *opts, etcd_client **out,
                    polis_error *err)
{
    etcd_client *c;
    const char *p;
    int rc;

    if (out == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd", "out is NULL");
    *out = NULL;
    if (opts == NULL || opts->endpoints == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd endpoints",
                               "no endpoints given");
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_result != CURLE_OK)
        return polis_error_set(err, POLIS_EINTERNAL, "etcd",
                               "curl_global_init: %s",
                               curl_easy_strerror(curl_init_result));
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return polis_error_set(err, POLIS_ENOMEM, "etcd", NULL);
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return polis_error_set(err, POLIS_EINTERNAL, "etcd", "mutex init");
    }
    p = opts->endpoints;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        rc = add_endpoint(c, p, len, err);
        if (rc < 0)
            goto fail;
        p += len;
        if (*p == ',')
            p++;
    }
    if (c->n_endpoints == 0) {
        rc = polis_error_set(err, POLIS_EINVAL, "etcd endpoints",
                             "no endpoints in \"%s\"", opts->endpoints);
        goto fail;
    }
    c->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 5000;
    c->connect_timeout_ms =
        opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 1000;
    c->ca_file = dup_or_null(opts->ca_file);
    c->cert_file = dup_or_null(opts->cert_file);
    c->key_file = dup_or_null(opts->key_file);
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (c->headers)
        c->headers = curl_slist_append(c->headers, "Expect:");
    if ((opts->ca_file && !c->ca_file) || (opts->cert_file && !c->cert_file) ||
        (opts->key_file && !c->key_file) || c->headers == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, "etcd", NULL);
        goto fail;
    }
    *out = c;
    return POLIS_OK;
fail:
    etcd_client_free(c);
    return rc;
}

void etcd_client_free(etcd_client *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n_pool; i++)
        curl_easy_cleanup(c->pool[i]);
    for (size_t i = 0; i < c->n_endpoints; i++)
        free(c->endpoints[i]);
    curl_slist_free_all(c->headers);
    free(c->ca_file);
    free(c->cert_file);
    free(c->key_file);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static size_t client_current(etcd_client *c)
{
    size_t cur;

    pthread_mutex_lock(&c->mu);
    cur = c->current;
    pthread_mutex_unlock(&c->mu);
    return cur;
}

static void client_set_current(etcd_client *c, size_t idx)
{
    pthread_mutex_lock(&c->mu);
    c->current = idx;
    pthread_mutex_unlock(&c->mu);
}

static CURL *pool_get(etcd_client *c)
{
    CURL *h = NULL;

    pthread_mutex_lock(&c->mu);
    if (c->n_pool > 0)
        h = c->pool[--c->n_pool];
    pthread_mutex_unlock(&c->mu);
    return h ? h : curl_easy_init();
}

/* Keeps the handle (and its live connections) for the next call. */
static void pool_put(etcd_client *c, CURL *h)
{
    curl_easy_reset(h);
    pthread_mutex_lock(&c->mu);
    if (c->n_pool < ETCD_POOL_MAX) {
        c->pool[c->n_pool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    if (h)
        curl_easy_cleanup(h);
}

static void set_common_opts(etcd_client *c, CURL *h, const char *url,
                            int connect_ms)
{
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (c->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    if (c->cert_file)
        curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert_file);
    if (c->key_file)
        curl_easy_setopt(h, CURLOPT_SSLKEY, c->key_file);
}

/* ---- error mapping ---- */

/* gRPC status codes as the gateway reports them in "code". */
enum {
    GRPC_CANCELED = 1,
    GRPC_INVALID_ARGUMENT = 3,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_NOT_FOUND = 5,
    GRPC_ALREADY_EXISTS = 6,
    GRPC_PERMISSION_DENIED = 7,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_FAILED_PRECONDITION = 9,
    GRPC_ABORTED = 10,
    GRPC_OUT_OF_RANGE = 11,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_UNAVAILABLE = 14,
    GRPC_UNAUTHENTICATED = 16,
};

/* etcd's message is more precise than its gRPC code: "request timed out"
 * and "no leader" are both Unavailable, a compacted revision OutOfRange. */
static int map_etcd_error(long http_status, int grpc_code, const char *msg)
{
    if (strstr(msg, "compacted"))
        return POLIS_ECOMPACTED;
    if (strstr(msg, "timed out") || strstr(msg, "deadline exceeded"))
        return POLIS_ETIMEDOUT;
    if (strstr(msg, "no leader") || strstr(msg, "leader changed") ||
        strstr(msg, "not capable"))
        return POLIS_EUNAVAIL;
    switch (grpc_code) {
    case GRPC_CANCELED:
        return POLIS_ECANCELED;
    case GRPC_INVALID_ARGUMENT:
    case GRPC_OUT_OF_RANGE:
        return POLIS_EINVAL;
    case GRPC_DEADLINE_EXCEEDED:
        return POLIS_ETIMEDOUT;
    case GRPC_NOT_FOUND:
        return POLIS_ENOTFOUND;
    case GRPC_ALREADY_EXISTS:
        return POLIS_EEXIST;
    case GRPC_PERMISSION_DENIED:
        return POLIS_EDENIED;
    case GRPC_RESOURCE_EXHAUSTED:
        return strstr(msg, "too many") ? POLIS_EAGAIN : POLIS_ETOOBIG;
    case GRPC_FAILED_PRECONDITION:
    case GRPC_ABORTED:
        return POLIS_ECONFLICT;
    case GRPC_UNIMPLEMENTED:
        return POLIS_EUNIMPL;
    case GRPC_UNAVAILABLE:
        return POLIS_EUNAVAIL;
    case GRPC_UNAUTHENTICATED:
        return POLIS_EUNAUTH;
    default:
        break;
    }
    switch (http_status) {
    case 400:
        return POLIS_EINVAL;
    case 401:
        return POLIS_EUNAUTH;
    case 403:
        return POLIS_EDENIED;
    case 404:
        return POLIS_ENOTFOUND;
    case 409:
        return POLIS_ECONFLICT;
    case 503:
        return POLIS_EUNAVAIL;
    case 504:
        return POLIS_ETIMEDOUT;
    default:
        return POLIS_EINTERNAL;
    }
}

/*
 * Reads an error answer: unary errors are {"error","message","code"},
 * errors inside a stream {"error":{"grpc_code","http_code","message"}}.
 * Returns 1 and fills code/msg when `root` is an error, else 0.
 */
static int parse_error_body(const json_t *root, long http_status, int *code,
                            const char **msg)
{
    const json_t *e = json_object_get(root, "error");
    int grpc;

    if (e == NULL)
        return 0;
    if (json_is_object(e)) {
        grpc = (int)j_int64(e, "grpc_code");
        if (j_int64(e, "http_code") > 0)
            http_status = (long)j_int64(e, "http_code");
        *msg = json_string_value(json_object_get(e, "message"));
    } else {
        grpc = (int)j_int64(root, "code");
        *msg = json_string_value(json_object_get(root, "message"));
        if (*msg == NULL)
            *msg = json_string_value(e);
    }
    if (*msg == NULL)
        *msg = "";
    *code = map_etcd_error(http_status, grpc, *msg);
    return 1;
}

/* ---- unary requests ---- */

typedef struct http_buf {
    char *data;
    size_t len;
    size_t cap;
    bool too_big;
} http_buf;

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    http_buf *b = ud;
    size_t n = size * nmemb;

    if (n > ETCD_MAX_RESPONSE - b->len) {
        b->too_big = true;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;
        while (cap < b->len + n + 1)
            cap *= 2;
        p = realloc(b->data, cap);
        if (p == NULL)
            return 0;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

typedef enum attempt_outcome {
    ATTEMPT_ANSWERED, /* an HTTP answer arrived */
    ATTEMPT_NOT_SENT, /* no connection: safe to try elsewhere */
    ATTEMPT_LOST,     /* connection broke; the request may have run */
    ATTEMPT_TIMEOUT,  /* no answer within the time left */
    ATTEMPT_FATAL,    /* too big, no memory... */
} attempt_outcome;

static attempt_outcome attempt(etcd_client *c, size_t idx, const char *path,
                               const char *body, int64_t time_left,
                               long *status, http_buf *buf, polis_error *err,
                               const char *where)
{
    char url[1024];
    CURL *h = pool_get(c);
    CURLcode res;
    curl_off_t connect_us = 0;
    attempt_outcome out;
    int connect_ms = c->connect_timeout_ms;

    if (h == NULL) {
        polis_error_set(err, POLIS_ENOMEM, where, "curl_easy_init failed");
        return ATTEMPT_FATAL;
    }
    if (connect_ms > time_left)
        connect_ms = (int)time_left;
    snprintf(url, sizeof(url), "%s%s", c->endpoints[idx], path);
    set_common_opts(c, h, url, connect_ms);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, buf);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)time_left);
    res = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connect_us);
    *status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    pool_put(c, h);

    switch (res) {
    case CURLE_OK:
        return ATTEMPT_ANSWERED;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
        out = ATTEMPT_NOT_SENT;
        break;
    case CURLE_OPERATION_TIMEDOUT:
        out = connect_us == 0 ? ATTEMPT_NOT_SENT : ATTEMPT_TIMEOUT;
        break;
    case CURLE_WRITE_ERROR:
        if (buf->too_big) {
            polis_error_set(err, POLIS_ETOOBIG, where,
                            "answer larger than %zu bytes", ETCD_MAX_RESPONSE);
            return ATTEMPT_FATAL;
        }
        polis_error_set(err, POLIS_ENOMEM, where, "reading the answer");
        return ATTEMPT_FATAL;
    case CURLE_OUT_OF_MEMORY:
        polis_error_set(err, POLIS_ENOMEM, where, NULL);
        return ATTEMPT_FATAL;
    default:
        out = ATTEMPT_LOST;
        break;
    }
    if (out == ATTEMPT_TIMEOUT)
        polis_error_set(err, POLIS_ETIMEDOUT, where, "no answer within %lld ms",
                        (long long)time_left);
    else
        polis_error_set(err, POLIS_EUNAVAIL, where, "%s",
                        curl_easy_strerror(res));
    return out;
}

/*
 * POST `req` to `path` on the endpoints, starting with the one that
 * answered last.  A refused connection or a 503 (other than a timeout)
 * moves on to the next endpoint; a broken connection does so only when
 * `idempotent`, because a write may already have been applied.  The whole
 * call, failover included, stays within the client's timeout.  On success
 * *resp holds the answer (streaming answers unwrapped from "result").
 */
static int etcd_call(etcd_client *c, const char *path, json_t *req,
                     bool idempotent, json_t **resp, polis_error *err_out)
{
    polis_error local = {0};
    polis_error *err = err_out ? err_out : &local;
    char *body = json_dumps(req, JSON_COMPACT);
    int64_t deadline = now_ms() + c->timeout_ms;
    size_t start = client_current(c);
    http_buf buf = {0};
    char where[POLIS_ERROR_WHERE_MAX];
    int rc = POLIS_EUNAVAIL;

    *resp = NULL;
    if (body == NULL)
        return polis_error_set(err, POLIS_ENOMEM, "etcd", "encoding request");
    for (size_t i = 0; i < c->n_endpoints; i++) {
        size_t idx = (start + i) % c->n_endpoints;
        int64_t left = deadline - now_ms();
        long status = 0;
        attempt_outcome out;
        json_t *root;
        json_error_t jerr;
        const char *msg;
        int code;

        snprintf(where, sizeof(where), "etcd %s%s", c->endpoints[idx], path);
        if (left <= 0) {
            rc = polis_error_set(err, POLIS_ETIMEDOUT, where,
                                 "no answer within %d ms", c->timeout_ms);
            break;
        }
        buf.len = 0;
        buf.too_big = false;
        out = attempt(c, idx, path, body, left, &status, &buf, err, where);
        if (out == ATTEMPT_FATAL || out == ATTEMPT_TIMEOUT) {
            rc = err->code;
            break;
        }
        if (out == ATTEMPT_NOT_SENT) {
            rc = POLIS_EUNAVAIL;
            continue;
        }
        if (out == ATTEMPT_LOST) {
            rc = POLIS_EUNAVAIL;
            if (idempotent)
                continue;
            snprintf(err->message + strlen(err->message),
                     sizeof(err->message) - strlen(err->message),
                     " (the write may or may not have been applied)");
            break;
        }
        root = json_loadb(buf.data ? buf.data : "", buf.len, 0, &jerr);
        if (root == NULL) {
            if (status == 503) {
                rc = polis_error_set(err, POLIS_EUNAVAIL, where,
                                     "HTTP 503 from etcd");
                continue;
            }
            rc = polis_error_set(err, POLIS_EPROTO, where,
                                 "HTTP %ld, answer is not JSON: %s", status,
                                 jerr.text);
            break;
        }
        if (parse_error_body(root, status, &code, &msg) || status != 200) {
            if (status != 200 && !json_object_get(root, "error")) {
                code = map_etcd_error(status, 0, "");
                msg = "";
            }
            rc = polis_error_set(err, code, where, "%s (HTTP %ld)",
                                 msg[0] ? msg : polis_strerror(code), status);
            json_decref(root);
            /* etcd refused without running the request (no leader,
             * stopping): another member may serve it. */
            if (code == POLIS_EUNAVAIL)
                continue;
            break;
        }
        client_set_current(c, idx);
        if (json_is_object(json_object_get(root, "result"))) {
            *resp = json_incref(json_object_get(root, "result"));
            json_decref(root);
        } else {
            *resp = root;
        }
        rc = POLIS_OK;
        break;
    }
    free(buf.data);
    free(body);
    return rc;
}

/* ---- key-values ---- */

static void kv_free(etcd_kv *kv)
{
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof(*kv));
}

static int kv_from_json(const json_t *j, etcd_kv *kv)
{
    memset(kv, 0, sizeof(*kv));
    if (!json_is_object(j))
        return -1;
    if (j_get_b64(j, "key", &kv->key, &kv->key_len) < 0 ||
        j_get_b64(j, "value", &kv->value, &kv->value_len) < 0) {
        kv_free(kv);
        return -1;
    }
    kv->create_revision = j_int64(j, "create_revision");
    kv->mod_revision = j_int64(j, "mod_revision");
    kv->version = j_int64(j, "version");
    kv->lease = j_int64(j, "lease");
    return 0;
}

void etcd_range_result_free(etcd_range_result *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        kv_free(&r->kvs[i]);
    free(r->kvs);
    memset(r, 0, sizeof(*r));
}

static int range_from_json(const json_t *j, etcd_range_result *out,
                           polis_error *err, const char *where)
{
    const json_t *kvs = json_object_get(j, "kvs");
    size_t n = json_array_size(kvs);

    memset(out, 0, sizeof(*out));
    out->count = j_int64(j, "count");
    out->more = j_bool(j, "more");
    out->revision = j_header_revision(j);
    if (n == 0)
        return POLIS_OK;
    out->kvs = calloc(n, sizeof(*out->kvs));
    if (out->kvs == NULL)
        return polis_error_set(err, POLIS_ENOMEM, where, NULL);
    for (size_t i = 0; i < n; i++) {
        if (kv_from_json(json_array_get(kvs, i), &out->kvs[i]) < 0) {
            etcd_range_result_free(out);
            return polis_error_set(err, POLIS_EPROTO, where,
                                   "bad key-value at kvs[%zu]", i);
        }
        out->n = i + 1;
    }
    return POLIS_OK;
}

int etcd_range(etcd_client *c, const char *key, const etcd_range_opts *opts,
               etcd_range_result *out, polis_error *err)
{
    static const etcd_range_opts defaults = {0};
    json_t *req, *resp = NULL;
    int rc;

    if (out)
        memset(out, 0, sizeof(*out));
    if (c == NULL || key == NULL || out == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd range",
                               "client, key and out are required");
    if (opts == NULL)
        opts = &defaults;
    req = json_object();
    if (req == NULL ||
        j_set_range(req, key, opts->prefix, opts->range_end) < 0 ||
        (opts->limit > 0 && j_set_int(req, "limit", opts->limit) < 0) ||
        (opts->revision > 0 &&
         j_set_int(req, "revision", opts->revision) < 0) ||
        (opts->keys_only &&
         json_object_set_new(req, "keys_only", json_true()) < 0) ||
        (opts->count_only &&
         json_object_set_new(req, "count_only", json_true()) < 0) ||
        (opts->serializable &&
         json_object_set_new(req, "serializable", json_true()) < 0)) {
        json_decref(req);
        return polis_error_set(err, POLIS_ENOMEM, "etcd range", NULL);
    }
    rc = etcd_call(c, "/v3/kv/range", req, true, &resp, err);
    json_decref(req);
    if (rc == POLIS_OK)
        rc = range_from_json(resp, out, err, "etcd /v3/kv/range");
    json_decref(resp);
    return rc;
}

int etcd_put(etcd_client *c, const char *key, const char *value,
             size_t value_len, int64_t lease, int64_t *revision_out,
             polis_error *err)
{
    json_t *req, *resp = NULL;
    int rc;

    if (c == NULL || key == NULL || (value == NULL && value_len > 0))
        return polis_error_set(err, POLIS_EINVAL, "etcd put",
                               "client and key are required");
    req = json_object();
    if (req == NULL || j_set_b64(req, "key", key, strlen(key)) < 0 ||
        j_set_b64(req, "value", value ? value : "", value_len) < 0 ||
        (lease != 0 && j_set_int(req, "lease", lease) < 0)) {
        json_decref(req);
        return polis_error_set(err, POLIS_ENOMEM, "etcd put", NULL);
    }
    rc = etcd_call(c, "/v3/kv/put", req, false, &resp, err);
    json_decref(req);
    if (rc == POLIS_OK && revision_out)
        *revision_out = j_header_revision(resp);
    json_decref(resp);
    return rc;
}

int etcd_delete(etcd_client *c, const char *key, bool prefix,
                int64_t *deleted_out, int64_t *revision_out, polis_error *err)
{
    json_t *req, *resp = NULL;
    int rc;

    if (c == NULL || key == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd delete",
                               "client and key are required");
    req = json_object();
    if (req == NULL || j_set_range(req, key, prefix, NULL) < 0) {
        json_decref(req);
        return polis_error_set(err, POLIS_ENOMEM, "etcd delete", NULL);
    }
    rc = etcd_call(c, "/v3/kv/deleterange", req, false, &resp, err);
    json_decref(req);
    if (rc == POLIS_OK) {
        if (deleted_out)
            *deleted_out = j_int64(resp, "deleted");
        if (revision_out)
            *revision_out = j_header_revision(resp);
    }
    json_decref(resp);
    return rc;
}

/* ---- transactions ---- */

void etcd_txn_result_free(etcd_txn_result *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n_responses; i++)
        etcd_range_result_free(&r->responses[i]);
    free(r->responses);
    memset(r, 0, sizeof(*r));
}

static json_t *compare_to_json(const etcd_compare *cmp)
{
    static const char *const targets[] = {"VALUE", "MOD", "CREATE", "VERSION"};
    static const char *const results[] = {"EQUAL", "NOT_EQUAL", "LESS",
                                          "GREATER"};
    json_t *j;
    int rc = 0;

    if (cmp->key == NULL || (unsigned)cmp->target > ETCD_CMP_VERSION ||
        (unsigned)cmp->op > ETCD_CMP_GREATER ||
        (cmp->target == ETCD_CMP_VALUE && cmp->value == NULL &&
         cmp->value_len > 0))
        return NULL;
    j = json_object();
    if (j == NULL)
        return NULL;
    rc |= j_set_range(j, cmp->key, cmp->prefix, NULL);
    rc |= json_object_set_new(j, "target", json_string(targets[cmp->target]));
    rc |= json_object_set_new(j, "result", json_string(results[cmp->op]));
    switch (cmp->target) {
    case ETCD_CMP_VALUE:
        rc |=
            j_set_b64(j, "value", cmp->value ? cmp->value : "", cmp->value_len);
        break;
    case ETCD_CMP_MOD:
        rc |= j_set_int(j, "mod_revision", cmp->number);
        break;
    case ETCD_CMP_CREATE:
        rc |= j_set_int(j, "create_revision", cmp->number);
        break;
    case ETCD_CMP_VERSION:
        rc |= j_set_int(j, "version", cmp->number);
        break;
    }
    if (rc != 0) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *op_to_json(const etcd_op *op)
{
    json_t *inner, *outer;
    const char *name;
    int rc = 0;

    if (op->key == NULL ||
        (op->type == ETCD_OP_PUT && op->value == NULL && op->value_len > 0))
        return NULL;
    inner = json_object();
    if (inner == NULL)
        return NULL;
    switch (op->type) {
    case ETCD_OP_PUT:
        name = "request_put";
        rc |= j_set_b64(inner, "key", op->key, strlen(op->key));
        rc |= j_set_b64(inner, "value", op->value ? op->value : "",
                        op->value_len);
        if (op->lease != 0)
            rc |= j_set_int(inner, "lease", op->lease);
        break;
    case ETCD_OP_DELETE:
        name = "request_delete_range";
        rc |= j_set_range(inner, op->key, op->prefix, NULL);
        break;
    case ETCD_OP_RANGE:
        name = "request_range";
        rc |= j_set_range(inner, op->key, op->prefix, NULL);
        if (op->count_only)
            rc |= json_object_set_new(inner, "count_only", json_true());
        if (op->keys_only)
            rc |= json_object_set_new(inner, "keys_only", json_true());
        break;
    default:
        json_decref(inner);
        return NULL;
    }
    outer = json_object();
    if (rc != 0 || outer == NULL ||
        json_object_set_new(outer, name, inner) < 0) {
        json_decref(outer);
        json_decref(inner);
        return NULL;
    }
    return outer;
}

static int ops_to_json(json_t *req, const char *name, const etcd_op *ops,
                       size_t n)
{
    json_t *arr = json_array();

    if (arr == NULL || json_object_set_new(req, name, arr) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        json_t *j = op_to_json(&ops[i]);
        if (j == NULL || json_array_append_new(arr, j) < 0)
            return -1;
    }
    return 0;
}

int etcd_txn(etcd_client *c, const etcd_compare *cmp, size_t n_cmp,
             const etcd_op *success, size_t n_success, const etcd_op *failure,
             size_t n_failure, etcd_txn_result *out, polis_error *err)
{
    static const char *const where = "etcd /v3/kv/txn";
    json_t *req, *arr, *resp = NULL, *responses;
    int rc;

    if (out)
        memset(out, 0, sizeof(*out));
    if (c == NULL || out == NULL || (n_cmp && cmp == NULL) ||
        (n_success && success == NULL) || (n_failure && failure == NULL))
        return polis_error_set(err, POLIS_EINVAL, where,
                               "client, out and the arrays are required");
    req = json_object();
    arr = json_array();
    if (req == NULL || arr == NULL ||
        json_object_set_new(req, "compare", arr) < 0) {
        json_decref(req);
        return polis_error_set(err, POLIS_ENOMEM, where, NULL);
    }
    for (size_t i = 0; i < n_cmp; i++) {
        json_t *j = compare_to_json(&cmp[i]);
        if (j == NULL || json_array_append_new(arr, j) < 0) {
            json_decref(req);
            return polis_error_set(err, POLIS_EINVAL, where, "bad compare[%zu]",
                                   i);
        }
    }
    if (ops_to_json(req, "success", success, n_success) < 0 ||
        ops_to_json(req, "failure", failure, n_failure) < 0) {
        json_decref(req);
        return polis_error_set(err, POLIS_EINVAL, where,
                               "bad operation (key missing or unknown type)");
    }
    rc = etcd_call(c, "/v3/kv/txn", req, false, &resp, err);
    json_decref(req);
    if (rc != POLIS_OK)
        return rc;
    out->succeeded = j_bool(resp, "succeeded");
    out->revision = j_header_revision(resp);
    responses = json_object_get(resp, "responses");
    if (json_array_size(responses) > 0) {
        size_t n = json_array_size(responses);
        out->responses = calloc(n, sizeof(*out->responses));
        if (out->responses == NULL) {
            json_decref(resp);
            return polis_error_set(err, POLIS_ENOMEM, where, NULL);
        }
        out->n_responses = n;
        for (size_t i = 0; i < n; i++) {
            const json_t *r =
                json_object_get(json_array_get(responses, i), "response_range");
            if (r == NULL)
                continue;
            rc = range_from_json(r, &out->responses[i], err, where);
            if (rc != POLIS_OK) {
                etcd_txn_result_free(out);
                break;
            }
        }
    }
    json_decref(resp);
    return rc;
}

/* ---- leases ---- */

int etcd_lease_grant(etcd_client *c, int64_t ttl_s, int64_t *id_out,
                     polis_error *err)
{
    static const char *const where = "etcd /v3/lease/grant";
    json_t *req, *resp = NULL;
    const char *lease_err;
    int rc;

    if (c == NULL || id_out == NULL || ttl_s <= 0)
        return polis_error_set(err, POLIS_EINVAL, where,
                               "client, id_out and a positive TTL required");
    req = json_object();
    if (req == NULL || j_set_int(req, "TTL", ttl_s) < 0) {
        json_decref(req);
        return polis_error_set(err, POLIS_ENOMEM, where, NULL);
    }
    rc = etcd_call(c, "/v3/lease/grant", req, false, &resp, err);
    json_decref(req);
    if (rc != POLIS_OK)
        return rc;
    lease_err = json_string_value(json_object_get(resp, "error"));
    *id_out = j_int64(resp, "ID");
    if (lease_err && lease_err[0])
        rc = polis_error_set(err, POLIS_EINTERNAL, where, "%s", lease_err);
    else if (*id_out == 0)
        rc = polis_error_set(err, POLIS_EPROTO, where, "answer has no ID");
    json_decref(resp);
    return rc;
}

int etcd_lease_keepalive(etcd_client *c, int64_t id, int64_t *ttl_out,
                         polis_error *err)
{
    static const char *const where = "etcd /v3/lease/keepalive";
    json_t *req, *resp = NULL;
    int64_t ttl;
    int rc;

    if (c == NULL)
        return polis_error_set(err, POLIS_EINVAL, where, "client required");
    req = json_object();
    if (req == NULL || j_set_int(req, "ID", id) < 0) {
        json_decref(req);
        return polis_error_set(err, POLIS_ENOMEM, where, NULL);
    }
    rc = etcd_call(c, "/v3/lease/keepalive", req, true, &resp, err);
    json_decref(req);
    if (rc != POLIS_OK)
        return rc;
    /* An unknown or expired lease is not an error to the gateway: the
     * answer simply has no TTL (the default, 0, is omitted). */
    ttl = j_int64(resp, "TTL");
    json_decref(resp);
    if (ttl <= 0)
        return polis_error_set(err, POLIS_ENOTFOUND, where,
                               "lease %lld not found or expired",
                               (long long)id);
    if (ttl_out)
        *ttl_out = ttl;
    return POLIS_OK;
}

int etcd_lease_revoke(etcd_client *c, int64_t id, polis_error *err)
{
    json_t *req, *resp = NULL;
    int rc;

    if (c == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd /v3/lease/revoke",
                               "client required");
    req = json_object();
    if (req == NULL || j_set_int(req, "ID", id) < 0) {
        json_decref(req);
        return polis_error_set(err, POLIS_ENOMEM, "etcd /v3/lease/revoke",
                               NULL);
    }
    rc = etcd_call(c, "/v3/lease/revoke", req, false, &resp, err);
    json_decref(req);
    json_decref(resp);
    return rc;
}

/* ---- watch ---- */

struct etcd_watch {
    etcd_client *c; /* borrowed: must outlive the watch */
    char *key;      /* raw bytes of the watched range */
    size_t key_len;
    char *range_end; /* NULL: single key */
    size_t range_end_len;
    bool prev_kv;
    bool progress_notify;

    CURLM *multi; /* woken by etcd_watch_cancel */
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t not_empty; /* batch queued, done, canceled */
    pthread_cond_t not_full;  /* batch taken, canceled */
    etcd_watch_batch queue[WATCH_QUEUE_MAX];
    size_t q_head;
    size_t q_len;
    bool canceled;
    bool established; /* etcd confirmed the first create request */
    bool done;        /* the thread has stopped; final_* say why */
    int final_code;
    int64_t final_compact_revision;
    polis_error final_err;

    /* Watch-thread only. */
    int64_t next_rev; /* where the next (re)connection starts; 0: now */
    char *line;       /* unparsed tail of the stream */
    size_t line_len;
    size_t line_cap;
    bool stream_end;  /* stop reading this connection */
    bool got_created; /* this connection was accepted by etcd */
    char where[POLIS_ERROR_WHERE_MAX];
    polis_error stream_err; /* why the last connection failed */
};

void etcd_watch_batch_free(etcd_watch_batch *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n; i++) {
        kv_free(&b->events[i].kv);
        kv_free(&b->events[i].prev_kv);
    }
    free(b->events);
    memset(b, 0, sizeof(*b));
}

/* Records why the watch ended (first reason wins) and wakes the reader. */
static void watch_finish(etcd_watch *w, int code, int64_t compact_rev,
                         const polis_error *why)
{
    pthread_mutex_lock(&w->mu);
    if (!w->done) {
        w->done = true;
        w->final_code = code;
        w->final_compact_revision = compact_rev;
        if (why)
            w->final_err = *why;
    }
    pthread_cond_broadcast(&w->not_empty);
    pthread_mutex_unlock(&w->mu);
}

/* Blocks while the queue is full; false when canceled meanwhile (the batch
 * is then freed). */
static bool watch_push(etcd_watch *w, etcd_watch_batch *b)
{
    pthread_mutex_lock(&w->mu);
    while (w->q_len == WATCH_QUEUE_MAX && !w->canceled)
        pthread_cond_wait(&w->not_full, &w->mu);
    if (w->canceled) {
        pthread_mutex_unlock(&w->mu);
        etcd_watch_batch_free(b);
        return false;
    }
    w->queue[(w->q_head + w->q_len) % WATCH_QUEUE_MAX] = *b;
    w->q_len++;
    pthread_cond_signal(&w->not_empty);
    pthread_mutex_unlock(&w->mu);
    memset(b, 0, sizeof(*b));
    return true;
}

static int event_from_json(const json_t *j, etcd_event *ev)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    const json_t *prev = json_object_get(j, "prev_kv");

    memset(ev, 0, sizeof(*ev));
    ev->type = type && strcmp(type, "DELETE") == 0 ? ETCD_EVENT_DELETE
                                                   : ETCD_EVENT_PUT;
    if (kv_from_json(json_object_get(j, "kv"), &ev->kv) < 0)
        return -1;
    if (prev != NULL) {
        if (kv_from_json(prev, &ev->prev_kv) < 0) {
            kv_free(&ev->kv);
            return -1;
        }
        ev->has_prev = true;
    }
    return 0;
}

/* Turns one "result" with events into a batch, dropping events already
 * delivered (a resumed watch must not repeat any). */
static int watch_events_batch(etcd_watch *w, const json_t *events,
                              etcd_watch_batch *b)
{
    size_t n = json_array_size(events);

    memset(b, 0, sizeof(*b));
    b->events = calloc(n, sizeof(*b->events));
    if (b->events == NULL)
        return POLIS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        etcd_event *ev = &b->events[b->n];
        if (event_from_json(json_array_get(events, i), ev) < 0) {
            etcd_watch_batch_free(b);
            return POLIS_EPROTO;
        }
        if (ev->kv.mod_revision < w->next_rev) {
            kv_free(&ev->kv);
            kv_free(&ev->prev_kv);
            continue;
        }
        b->n++;
    }
    return POLIS_OK;
}

/* Handles one JSON line of the stream.  Returns false to stop reading. */
static bool watch_handle_line(etcd_watch *w, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(line, len, 0, &jerr);
    const json_t *result, *events;
    int64_t hdr_rev;
    const char *msg;
    int code;
    bool keep = true;

    if (root == NULL) {
        polis_error_set(&w->stream_err, POLIS_EPROTO, w->where,
                        "watch stream is not JSON: %s", jerr.text);
        return false;
    }
    if (parse_error_body(root, 200, &code, &msg)) {
        /* etcd ends the stream on errors such as "no leader"; a bad
         * request would fail the same way on every retry. */
        polis_error_set(&w->stream_err, code, w->where, "%s", msg);
        if (code == POLIS_EINVAL || code == POLIS_EDENIED ||
            code == POLIS_EUNAUTH)
            watch_finish(w, code, 0, &w->stream_err);
        json_decref(root);
        return false;
    }
    result = json_object_get(root, "result");
    hdr_rev = j_header_revision(result);
    events = json_object_get(result, "events");
    if (!json_is_object(result)) {
        /* unknown message: ignore it, as the gateway ignores fields */
    } else if (j_bool(result, "canceled")) {
        int64_t compact = j_int64(result, "compact_revision");
        polis_error why = {0};
        const char *reason =
            json_string_value(json_object_get(result, "cancel_reason"));
        if (compact > 0)
            polis_error_set(&why, POLIS_ECOMPACTED, w->where,
                            "revision %lld was compacted (compact revision "
                            "%lld): resync",
                            (long long)w->next_rev, (long long)compact);
        else
            polis_error_set(&why, POLIS_EPROTO, w->where,
                            "etcd canceled the watch: %s",
                            reason && reason[0] ? reason : "no reason given");
        watch_finish(w, why.code, compact, &why);
        /* etcd keeps the response open after a cancel: close it. */
        keep = false;
    } else if (j_bool(result, "created")) {
        w->got_created = true;
        if (w->next_rev == 0)
            w->next_rev = hdr_rev + 1;
        pthread_mutex_lock(&w->mu);
        w->established = true;
        pthread_cond_broadcast(&w->not_empty);
        pthread_mutex_unlock(&w->mu);
    } else if (json_array_size(events) > 0) {
        etcd_watch_batch b;
        code = watch_events_batch(w, events, &b);
        if (code != POLIS_OK) {
            polis_error why = {0};
            polis_error_set(&why, code, w->where, "bad watch event");
            watch_finish(w, code, 0, &why);
            keep = false;
        } else if (b.n == 0) {
            etcd_watch_batch_free(&b);
        } else {
            /* Revisions are never split across responses, so everything
             * up to the last event's revision has been seen. */
            int64_t last = b.events[b.n - 1].kv.mod_revision;
            b.revision = last;
            w->next_rev = last + 1;
            keep = watch_push(w, &b);
        }
    } else if (hdr_rev > 0) {
        /* Progress notification: etcd sends them only to watchers that
         * have caught up, so nothing below hdr_rev is still pending. */
        etcd_watch_batch b = {0};
        b.revision = hdr_rev;
        if (hdr_rev + 1 > w->next_rev)
            w->next_rev = hdr_rev + 1;
        keep = watch_push(w, &b);
    }
    json_decref(root);
    return keep;
}

static size_t watch_on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    etcd_watch *w = ud;
    size_t n = size * nmemb;
    size_t start = 0;

    if (w->stream_end)
        return 0;
    if (n > ETCD_MAX_RESPONSE - w->line_len) {
        polis_error why = {0};
        polis_error_set(&why, POLIS_ETOOBIG, w->where,
                        "watch message larger than %zu bytes",
                        ETCD_MAX_RESPONSE);
        watch_finish(w, POLIS_ETOOBIG, 0, &why);
        w->stream_end = true;
        return 0;
    }
    if (w->line_len + n > w->line_cap) {
        size_t cap = w->line_cap ? w->line_cap : 16384;
        char *p;
        while (cap < w->line_len + n)
            cap *= 2;
        p = realloc(w->line, cap);
        if (p == NULL) {
            polis_error_set(&w->stream_err, POLIS_ENOMEM, w->where, NULL);
            w->stream_end = true;
            return 0;
        }
        w->line = p;
        w->line_cap = cap;
    }
    memcpy(w->line + w->line_len, ptr, n);
    w->line_len += n;
    for (size_t i = 0; i < w->line_len; i++) {
        if (w->line[i] != '\n')
            continue;
        if (i > start && !watch_handle_line(w, w->line + start, i - start)) {
            w->stream_end = true;
            return 0;
        }
        start = i + 1;
    }
    memmove(w->line, w->line + start, w->line_len - start);
    w->line_len -= start;
    return n;
}

static bool watch_canceled(etcd_watch *w)
{
    bool c;

    pthread_mutex_lock(&w->mu);
    c = w->canceled || w->done;
    pthread_mutex_unlock(&w->mu);
    return c;
}

static char *watch_request_body(etcd_watch *w)
{
    json_t *req = json_object(), *create = json_object();
    char *body = NULL;
    int rc = 0;

    if (req == NULL || create == NULL) {
        json_decref(req);
        json_decref(create);
        return NULL;
    }
    rc |= json_object_set_new(req, "create_request", create);
    rc |= j_set_b64(create, "key", w->key, w->key_len);
    if (w->range_end)
        rc |= j_set_b64(create, "range_end", w->range_end, w->range_end_len);
    if (w->next_rev > 0)
        rc |= j_set_int(create, "start_revision", w->next_rev);
    if (w->prev_kv)
        rc |= json_object_set_new(create, "prev_kv", json_true());
    if (w->progress_notify)
        rc |= json_object_set_new(create, "progress_notify", json_true());
    if (rc == 0)
        body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    return body;
}

/* One connection: runs until etcd closes it, it breaks, or the watch is
 * canceled or finished. */
static void watch_stream_once(etcd_watch *w, size_t idx)
{
    etcd_client *c = w->c;
    char url[1024];
    char *body = watch_request_body(w);
    CURL *h = curl_easy_init();
    CURLMsg *msg;
    int running = 1, left;
    CURLcode res = CURLE_OK;
    long status = 0;

    snprintf(w->where, sizeof(w->where), "etcd %s/v3/watch", c->endpoints[idx]);
    polis_error_clear(&w->stream_err);
    w->stream_end = false;
    w->got_created = false;
    w->line_len = 0;
    if (body == NULL || h == NULL) {
        polis_error_set(&w->stream_err, POLIS_ENOMEM, w->where, NULL);
        goto out;
    }
    snprintf(url, sizeof(url), "%s/v3/watch", c->endpoints[idx]);
    set_common_opts(c, h, url, c->connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, watch_on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, w);
    /* An idle watch is normal; a dead peer is found by TCP keepalive. */
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 10L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 5L);
    if (curl_multi_add_handle(w->multi, h) != CURLM_OK) {
        polis_error_set(&w->stream_err, POLIS_EINTERNAL, w->where,
                        "curl_multi_add_handle failed");
        goto out;
    }
    while (running && !w->stream_end && !watch_canceled(w)) {
        if (curl_multi_perform(w->multi, &running) != CURLM_OK)
            break;
        if (!running || w->stream_end)
            break;
        curl_multi_poll(w->multi, NULL, 0, 1000, NULL);
    }
    while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE)
            res = msg->data.result;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(w->multi, h);
    if (w->stream_err.code == POLIS_OK) {
        if (res != CURLE_OK && res != CURLE_WRITE_ERROR)
            polis_error_set(&w->stream_err, POLIS_EUNAVAIL, w->where, "%s",
                            curl_easy_strerror(res));
        else if (status != 0 && status != 200)
            polis_error_set(&w->stream_err, POLIS_EUNAVAIL, w->where,
                            "HTTP %ld", status);
        else
            polis_error_set(&w->stream_err, POLIS_EUNAVAIL, w->where,
                            "watch stream closed by etcd");
    }
out:
    if (h)
        curl_easy_cleanup(h);
    free(body);
}

/* Sleeps ms unless canceled first. */
static void watch_sleep(etcd_watch *w, int ms)
{
    struct timespec ts;

    deadline_ts(&ts, ms);
    pthread_mutex_lock(&w->mu);
    while (!w->canceled) {
        if (pthread_cond_timedwait(&w->not_full, &w->mu, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&w->mu);
}

static void *watch_main(void *arg)
{
    etcd_watch *w = arg;
    size_t n = w->c->n_endpoints;
    size_t idx = client_current(w->c);
    size_t open_failures = 0;
    int backoff = WATCH_BACKOFF_MIN_MS;

    while (!watch_canceled(w)) {
        watch_stream_once(w, idx);
        if (watch_canceled(w))
            break;
        idx = (idx + 1) % n;
        pthread_mutex_lock(&w->mu);
        bool established = w->established;
        pthread_mutex_unlock(&w->mu);
        if (!established) {
            /* Opening: one round over the endpoints, then report. */
            if (++open_failures >= n) {
                watch_finish(w, w->stream_err.code, 0, &w->stream_err);
                break;
            }
            continue;
        }
        if (w->got_created)
            backoff = WATCH_BACKOFF_MIN_MS;
        watch_sleep(w, backoff);
        backoff = backoff * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS
                                                     : backoff * 2;
    }
    return NULL;
}

static void watch_destroy(etcd_watch *w)
{
    while (w->q_len > 0) {
        etcd_watch_batch_free(&w->queue[w->q_head]);
        w->q_head = (w->q_head + 1) % WATCH_QUEUE_MAX;
        w->q_len--;
    }
    if (w->multi)
        curl_multi_cleanup(w->multi);
    pthread_cond_destroy(&w->not_empty);
    pthread_cond_destroy(&w->not_full);
    pthread_mutex_destroy(&w->mu);
    free(w->line);
    free(w->key);
    free(w->range_end);
    free(w);
}

int etcd_watch_open(etcd_client *c, const etcd_watch_opts *opts,
                    etcd_watch **out, polis_error *err)
{
    static const char *const where = "etcd /v3/watch";
    etcd_watch *w;
    struct timespec ts;
    size_t len;
    int rc = POLIS_OK;

    if (out)
        *out = NULL;
    if (c == NULL || opts == NULL || opts->key == NULL || out == NULL)
        return polis_error_set(err, POLIS_EINVAL, where,
                               "client, options with a key and out required");
    w = calloc(1, sizeof(*w));
    if (w == NULL)
        return polis_error_set(err, POLIS_ENOMEM, where, NULL);
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        return polis_error_set(err, POLIS_EINTERNAL, where, "mutex init");
    }
    if (cond_init_monotonic(&w->not_empty) < 0) {
        pthread_mutex_destroy(&w->mu);
        free(w);
        return polis_error_set(err, POLIS_EINTERNAL, where, "cond init");
    }
    if (cond_init_monotonic(&w->not_full) < 0) {
        pthread_cond_destroy(&w->not_empty);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return polis_error_set(err, POLIS_EINTERNAL, where, "cond init");
    }
    w->c = c;
    w->prev_kv = opts->prev_kv;
    w->progress_notify = opts->progress_notify;
    w->next_rev = opts->start_revision > 0 ? opts->start_revision : 0;
    len = strlen(opts->key);
    if (opts->prefix && len == 0) {
        w->key = calloc(1, 1);
        w->key_len = 1;
        w->range_end = calloc(1, 1);
        w->range_end_len = 1;
    } else {
        w->key = strdup(opts->key);
        w->key_len = len;
        if (opts->prefix)
            w->range_end = prefix_end(opts->key, len, &w->range_end_len);
    }
    w->multi = curl_multi_init();
    if (w->key == NULL || (opts->prefix && w->range_end == NULL) ||
        w->multi == NULL) {
        watch_destroy(w);
        return polis_error_set(err, POLIS_ENOMEM, where, NULL);
    }
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        watch_destroy(w);
        return polis_error_set(err, POLIS_EINTERNAL, where,
                               "cannot start the watch thread");
    }
    w->thread_started = true;

    /* Wait for etcd to accept the watch so that, for a watch "from now",
     * every write after etcd_watch_open returns is seen. */
    deadline_ts(&ts, c->timeout_ms);
    pthread_mutex_lock(&w->mu);
    while (!w->established && !w->done) {
        if (pthread_cond_timedwait(&w->not_empty, &w->mu, &ts) == ETIMEDOUT)
            break;
    }
    if (!w->established) {
        if (w->done) {
            rc = w->final_code ? w->final_code : POLIS_EUNAVAIL;
            if (err)
                *err = w->final_err;
            if (err && err->code == POLIS_OK)
                polis_error_set(err, rc, where, NULL);
        } else {
            rc = polis_error_set(err, POLIS_ETIMEDOUT, where,
                                 "etcd did not accept the watch within %d ms",
                                 c->timeout_ms);
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (rc != POLIS_OK) {
        etcd_watch_free(w);
        return rc;
    }
    *out = w;
    return POLIS_OK;
}

int etcd_watch_next(etcd_watch *w, etcd_watch_batch *out, int timeout_ms,
                    polis_error *err)
{
    struct timespec ts;
    int rc = POLIS_OK;

    if (out)
        memset(out, 0, sizeof(*out));
    if (w == NULL || out == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd watch",
                               "watch and out required");
    if (timeout_ms > 0)
        deadline_ts(&ts, timeout_ms);
    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (w->canceled) {
            rc = polis_error_set(err, POLIS_ECANCELED, "etcd watch",
                                 "watch canceled");
            break;
        }
        if (w->q_len > 0) {
            *out = w->queue[w->q_head];
            memset(&w->queue[w->q_head], 0, sizeof(w->queue[0]));
            w->q_head = (w->q_head + 1) % WATCH_QUEUE_MAX;
            w->q_len--;
            pthread_cond_signal(&w->not_full);
            break;
        }
        if (w->done) {
            rc = w->final_code ? w->final_code : POLIS_EINTERNAL;
            out->compact_revision = w->final_compact_revision;
            if (err)
                *err = w->final_err;
            break;
        }
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0) {
            pthread_cond_wait(&w->not_empty, &w->mu);
        } else if (pthread_cond_timedwait(&w->not_empty, &w->mu, &ts) ==
                   ETIMEDOUT) {
            timeout_ms = 0; /* one last look, then report the timeout */
        }
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void etcd_watch_cancel(etcd_watch *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->canceled = true;
    pthread_cond_broadcast(&w->not_empty);
    pthread_cond_broadcast(&w->not_full);
    pthread_mutex_unlock(&w->mu);
    curl_multi_wakeup(w->multi);
}

void etcd_watch_free(etcd_watch *w)
{
    if (w == NULL)
        return;
    etcd_watch_cancel(w);
    if (w->thread_started)
        pthread_join(w->thread, NULL);
    watch_destroy(w);
}
