/*
 * test_event_port.c — a data product's event port with real etcd,
 * polis-controlplane and polis-sidecar processes: publishing (who may, what
 * is refused and why), two consumers with different policies receiving
 * differently masked and filtered streams of the same events, resuming
 * from an offset and from Last-Event-ID with nothing lost or repeated, a
 * policy change applied from the next event, a slow consumer that holds
 * nobody up and is told when it falls past retention, and kill -9 in the
 * middle of a publish burst losing no acknowledged event.
 */
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ALICE   "alice-token-0123456789"   /* analysts, EU: masked, EU only */
#define BOB     "bob-token-0123456789"     /* analysts, US: masked, US only */
#define AUDRA   "audra-token-0123456789"   /* auditors: everything */
#define EVE     "eve-token-0123456789"     /* contractors: nothing */
#define SERVICE "service-token-0123456789" /* orders-service: publishes */

#define ORDERS "/v1/products/sales/orders/events"
#define BULK   "/v1/products/sales/bulk/events"

static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- publishing -------------------------------------------------------- */

static long post(const char *path, const char *token, const char *body,
                 json_t **answer)
{
    char url[512];
    gc_response r;
    long st;

    snprintf(url, sizeof(url), "%s%s", sc->http_url, path);

    st = gc_http(NULL, url, token, body, NULL, 30000, &r);
    if (answer)
        *answer = gc_response_json(&r);
    gc_response_free(&r);
    return st;
}

/* One order event as published. */
static char *order(int id, const char *region, double amount)
{
    char *s = NULL;

    if (asprintf(&s,
                 "{\"order_id\":%d,\"email\":\"user%d@example.com\","
                 "\"card\":\"41111111111%05d\",\"region\":\"%s\","
                 "\"amount\":%.2f}",
                 id, id, id, region, amount) < 0)
        return NULL;
    return s;
}

/* Publish `n` orders with ids from `first_id`, alternating EU and US;
 * the offset of the first, or -1. */
static int64_t publish_orders(int first_id, int n)
{
    size_t cap = (size_t)n * 160 + 8, len = 0;
    char *body = malloc(cap);
    json_t *ans = NULL;
    int64_t first = -1;
    long st;

    len += (size_t)snprintf(body, cap, "[");
    for (int i = 0; i < n; i++) {
        char *o = order(first_id + i, (first_id + i) % 2 ? "US" : "EU",
                        10.0 * (first_id + i));
        len += (size_t)snprintf(body + len, cap - len, "%s%s", i ? "," : "", o);
        free(o);
    }
    snprintf(body + len, cap - len, "]");
    st = post(ORDERS, SERVICE, body, &ans);
    if (st == 200 && json_integer_value(json_object_get(ans, "count")) == n)
        first = json_integer_value(json_object_get(ans, "first"));
    else
        fprintf(stderr, "\npublish -> %ld %s\n", st,
                ans ? json_string_value(json_object_get(ans, "detail")) : "");
    json_decref(ans);
    free(body);
    return first;
}

/* ---- a Server-Sent Events consumer on a plain socket ------------------- */

/* HTTP/1.0, so the stream is not chunked: what arrives is SSE as is. */
typedef struct sse {
    int fd;
    int status;
    char buf[1 << 16];
    size_t off, len; /* unread bytes: buf[off .. len) */
} sse;

typedef struct sse_event {
    long long id; /* -1: none */
    char kind[32];
    char data[8192];
} sse_event;

static void sse_close(sse *s)
{
    if (s == NULL)
        return;
    if (s->fd >= 0)
        close(s->fd);
    free(s);
}

/*
 * Wait until the sidecar holds no event stream.  It learns of a hang-up
 * only when it reads EOF, a moment after close(); a test that ends its
 * streams calls this so the next one starts with every place free (the
 * sidecar here allows only 3).
 */
static void streams_settle(void)
{
    int64_t until = mono_ms() + 15000;
    double streams = -1;

    while (sidecarenv_metric(sc, "polis_sidecar_event_streams", &streams) ==
               0 &&
           streams > 0 && mono_ms() < until)
        usleep(10 * 1000);
    CU_ASSERT_EQUAL(streams, 0);
}

/* Read more into the buffer: 1, 0 on timeout, -1 at the end. */
static int sse_fill(sse *s, int timeout_ms)
{
    struct pollfd p = {.fd = s->fd, .events = POLLIN};
    ssize_t n;

    if (s->off > 0) {
        memmove(s->buf, s->buf + s->off, s->len - s->off);
        s->len -= s->off;
        s->off = 0;
    }
    if (s->len == sizeof(s->buf))
        return -1;
    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    n = recv(s->fd, s->buf + s->len, sizeof(s->buf) - s->len, 0);
    if (n <= 0)
        return -1;
    s->len += (size_t)n;
    return 1;
}

/*
 * Connect and subscribe; NULL when no answer came.  s->status is the
 * HTTP status; with 200 the stream is positioned after the headers.
 * rcvbuf > 0 sets a small receive buffer (a slow consumer).
 */
static sse *sse_open(const char *path, const char *token, const char *last_id,
                     int rcvbuf)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    sse *s = calloc(1, sizeof(*s));
    char req[1024];
    int64_t until = mono_ms() + 10000;
    char *end;

    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf > 0)
        setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    a.sin_port = htons((uint16_t)sc->http_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s->fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        sse_close(s);
        return NULL;
    }
    snprintf(req, sizeof(req),
             "GET %s HTTP/1.0\r\nHost: test\r\nAuthorization: Bearer %s\r\n"
             "%s%s%s\r\n",
             path, token, last_id ? "Last-Event-ID: " : "",
             last_id ? last_id : "", last_id ? "\r\n" : "");
    if (send(s->fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req)) {
        sse_close(s);
        return NULL;
    }
    while ((end = memmem(s->buf, s->len, "\r\n\r\n", 4)) == NULL) {
        if (mono_ms() > until || sse_fill(s, 200) < 0) {
            sse_close(s);
            return NULL;
        }
    }
    sscanf(s->buf, "HTTP/1.%*d %d", &s->status);
    end += 4;
    s->len -= (size_t)(end - s->buf);
    memmove(s->buf, end, s->len);
    return s;
}

/*
 * The next event (comment-only blocks are skipped): 1, 0 when none came
 * within timeout_ms, -1 when the stream ended.
 */
static int sse_next(sse *s, int timeout_ms, sse_event *ev)
{
    int64_t until = mono_ms() + timeout_ms;

    for (;;) {
        char *at = s->buf + s->off;
        char *end = memmem(at, s->len - s->off, "\n\n", 2);
        if (end != NULL) {
            size_t blen = (size_t)(end - at) + 2;
            char *line = at, *stop = end;
            bool any = false;

            ev->id = -1;
            snprintf(ev->kind, sizeof(ev->kind), "message");
            ev->data[0] = '\0';
            *end = '\0';
            while (line < stop) {
                char *nl = strchr(line, '\n');
                if (nl)
                    *nl = '\0';
                if (strncmp(line, "id: ", 4) == 0) {
                    ev->id = atoll(line + 4);
                } else if (strncmp(line, "event: ", 7) == 0) {
                    snprintf(ev->kind, sizeof(ev->kind), "%s", line + 7);
                    any = true;
                } else if (strncmp(line, "data: ", 6) == 0) {
                    snprintf(ev->data, sizeof(ev->data), "%s", line + 6);
                    any = true;
                }
                line = nl ? nl + 1 : stop;
            }
            s->off += blen;
            if (any)
                return 1;
            continue;
        }
        {
            int64_t left = until - mono_ms();
            int rc = left > 0 ? sse_fill(s, (int)left) : 0;
            if (rc < 0)
                return -1;
            if (rc == 0 && mono_ms() >= until)
                return 0;
        }
    }
}

/* ---- fixture ----------------------------------------------------------- */

static const char *const orders_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":"
    "{\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\",\"ports\":["
    "{\"name\":\"changes\",\"type\":\"event\",\"fsync\":\"batch\","
    "\"publishers\":[\"orders-service\"]}],\"schema\":["
    "{\"name\":\"order_id\",\"type\":\"integer\"},"
    "{\"name\":\"email\",\"type\":\"string\",\"classification\":"
    "[\"pii.email\"]},"
    "{\"name\":\"card\",\"type\":\"string\",\"classification\":"
    "[\"pii.card\"]},"
    "{\"name\":\"region\",\"type\":\"string\"},"
    "{\"name\":\"amount\",\"type\":\"decimal\"}]}}";

/* 1 MiB retention (64 KiB segments): a few MiB of events push the oldest
 * out. */
static const char *const bulk_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":"
    "{\"name\":\"bulk\"},\"spec\":{\"domain\":\"sales\",\"ports\":["
    "{\"name\":\"feed\",\"type\":\"event\",\"fsync\":\"never\","
    "\"retentionBytes\":1048576,\"publishers\":[\"group:services\"]}],"
    "\"schema\":[{\"name\":\"id\",\"type\":\"integer\"},"
    "{\"name\":\"pad\",\"type\":\"string\"}]}}";

#define POLICY_HEAD                                                            \
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":"           \
    "{\"name\":\"events\"},\"spec\":{\"scope\":\"global\",\"rules\":["         \
    "{\"name\":\"read-events\",\"effect\":\"allow\",\"subjects\":"             \
    "[\"group:analysts\",\"group:auditors\"],\"resources\":[\"sales/*\"],"     \
    "\"ports\":[\"event\"]},"                                                  \
    "{\"name\":\"mask-emails\",\"effect\":\"mask\",\"subjects\":"              \
    "[\"group:analysts\"],\"resources\":[\"*\"],\"mask\":{\"method\":"         \
    "\"email\",\"classifications\":[\"pii.email\"]}},"                         \
    "{\"name\":\"mask-cards\",\"effect\":\"mask\",\"subjects\":"               \
    "[\"group:analysts\"],\"resources\":[\"*\"],\"mask\":{\"method\":"         \
    "\"show_last\",\"classifications\":[\"pii.card\"],\"params\":{\"n\":4}}}," \
    "{\"name\":\"own-region\",\"effect\":\"filter\",\"subjects\":"             \
    "[\"group:analysts\"],\"resources\":[\"sales/orders\"],\"filter\":"        \
    "\"region == subject.region\"}"

static const char *const policy_doc = POLICY_HEAD "]}}";

/* The same, and the auditors' view of cards redacted. */
static const char *const policy_redact_doc =
    POLICY_HEAD ",{\"name\":\"redact-cards\",\"effect\":\"mask\","
                "\"subjects\":[\"group:auditors\"],\"resources\":[\"*\"],"
                "\"mask\":{\"method\":\"redact\",\"classifications\":"
                "[\"pii.card\"]}}]}}";

/* The same, and alice (EU) denied. */
static const char *const policy_deny_doc =
    POLICY_HEAD ",{\"name\":\"no-eu\",\"effect\":\"deny\",\"subjects\":"
                "[\"*\"],\"resources\":[\"sales/orders\"],\"when\":"
                "\"subject.region == 'EU'\"}]}}";

/* Wait until the sidecar enforces revision `rev`. */
static int wait_revision(int64_t rev)
{
    int64_t until = mono_ms() + 15000;

    while (mono_ms() < until) {
        json_t *ans = NULL;
        long st = sidecarenv_check(sc,
                                   "{\"principal\":\"audra\",\"product\":"
                                   "\"sales/orders\",\"port\":\"event\"}",
                                   &ans, 2000);
        json_int_t r = json_integer_value(json_object_get(ans, "revision"));
        json_decref(ans);
        if (st == 200 && r >= rev)
            return 0;
        usleep(50 * 1000);
    }
    fprintf(stderr, "\nthe sidecar never reached revision %lld\n",
            (long long)rev);
    return -1;
}

static int suite_cleanup(void)
{
    sidecarenv_free(sc);
    sc = NULL;
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    curl_global_cleanup();
    return 0;
}

static int suite_init(void)
{
    static const char *const cp_args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = cp_args};
    sidecarenv_options so = {.domain = "sales", .id = "sales-events-1"};
    /* No case needs more than three streams at once. */
    static const char *const sc_args[] = {"--event-max-consumers", "3", NULL};
    int64_t rev;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto fail;
    if (gc_apply(gov, "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                      "\"metadata\":{\"name\":\"sales\"},\"spec\":{\"owners\":"
                      "[\"s@example.com\"]}}") < 0 ||
        gc_apply(gov, orders_doc) < 0 || gc_apply(gov, bulk_doc) < 0 ||
        gc_apply_principal(gov, "alice", "analysts", "EU", ALICE) < 0 ||
        gc_apply_principal(gov, "bob", "analysts", "US", BOB) < 0 ||
        gc_apply_principal(gov, "audra", "auditors", NULL, AUDRA) < 0 ||
        gc_apply_principal(gov, "eve", "contractors", "EU", EVE) < 0 ||
        gc_apply_principal(gov, "orders-service", "services", NULL, SERVICE) <
            0 ||
        (rev = gc_apply(gov, policy_doc)) < 0)
        goto fail;
    so.controlplane = cp->grpc_target;
    so.extra_args = sc_args;
    so.wait_ready = true;
    sc = sidecarenv_start(&so);
    if (sc == NULL || wait_revision(rev) != 0)
        goto fail;
    return 0;
fail:
    if (sc)
        sidecarenv_dump_log(sc, 4000);
    suite_cleanup();
    return -1;
}

/* ---- cases ------------------------------------------------------------- */

static void expect(const char *method, const char *path, const char *token,
                   const char *body, const char *const *headers, long status,
                   const char *needle)
{
    char url[512];
    gc_response r;
    json_t *ans;
    const char *detail;

    snprintf(url, sizeof(url), "%s%s", sc->http_url, path);
    gc_http(method, url, token, body, headers, 10000, &r);
    ans = gc_response_json(&r);
    detail = json_string_value(json_object_get(ans, "detail"));
    CU_ASSERT_EQUAL(r.status, status);
    if (r.status != status || detail == NULL || strstr(detail, needle) == NULL)
        fprintf(stderr, "\n%s %s -> %ld %.300s (wanted %ld, \"%s\")\n",
                method ? method : "GET", path, r.status, r.body ? r.body : "",
                status, needle);
    CU_ASSERT(detail && strstr(detail, needle));
    json_decref(ans);
    gc_response_free(&r);
}

static void test_publish_refusals(void)
{
    static const char *const from_end[] = {"Last-Event-ID: x", NULL};
    json_t *ans = NULL;
    char *o = order(1, "EU", 1);

    expect(NULL, ORDERS, NULL, o, NULL, 401, "Authorization");
    expect(NULL, ORDERS, "nobody", o, NULL, 401, "no principal");
    /* Readers are not publishers, and a publisher is named in the port. */
    expect(NULL, ORDERS, AUDRA, o, NULL, 403, "not a publisher");
    expect(NULL, BULK, ALICE, "{\"id\":1}", NULL, 403, "not a publisher");
    expect(NULL, ORDERS, SERVICE, "{\"order_id\":", NULL, 400, "body");
    expect(NULL, ORDERS, SERVICE, "[]", NULL, 400, "1 to 10000 events");
    expect(NULL, ORDERS, SERVICE, "[{\"order_id\":1},{\"nope\":2}]", NULL, 400,
           "\"nope\" is not a column");
    expect(NULL, ORDERS, SERVICE, "[{\"order_id\":1},{\"order_id\":\"2\"}]",
           NULL, 400, "events[1]: order_id: expected an integer");
    expect(NULL, ORDERS, SERVICE, "[{\"order_id\":1},7]", NULL, 400,
           "events[1]: an event is a JSON object");
    expect(NULL, ORDERS, SERVICE, "{\"amount\":1,\"Amount\":2}", NULL, 400,
           "name the same column");
    expect("PUT", ORDERS, SERVICE, o, NULL, 405, "POST (publish)");
    expect(NULL, "/v1/products/sales/nothing/events", SERVICE, o, NULL, 404,
           "no data product");
    /* Consumers: who may not read, and offsets that make no sense. */
    expect(NULL, ORDERS, EVE, NULL, NULL, 403, "");
    expect(NULL, ORDERS "?from=banana", AUDRA, NULL, NULL, 400, "from:");
    expect(NULL, ORDERS "?from=999999999", AUDRA, NULL, NULL, 400,
           "past the end");
    expect(NULL, ORDERS, AUDRA, NULL, from_end, 400, "Last-Event-ID");
    /* Nothing refused was stored: the next publish starts where the
     * earlier ones ended. */
    CU_ASSERT_EQUAL(post(ORDERS, SERVICE, o, &ans), 200);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(ans, "count")), 1);
    json_decref(ans);
    free(o);
}

/* Read events until `n` arrived or none came for 5 s. */
static int read_n(sse *s, sse_event *evs, int n)
{
    int got = 0;

    while (got < n && sse_next(s, 5000, &evs[got]) == 1)
        got++;
    return got;
}

static void test_two_consumers(void)
{
    sse *alice = sse_open(ORDERS, ALICE, NULL, 0);
    sse *bob = sse_open(ORDERS, BOB, NULL, 0);
    sse *audra = sse_open(ORDERS, AUDRA, NULL, 0);
    sse_event a[8], b[8], all[8], extra;
    int64_t first;

    CU_ASSERT_FATAL(alice && bob && audra);
    CU_ASSERT_EQUAL(alice->status, 200);
    CU_ASSERT_EQUAL(bob->status, 200);
    /* Ids 100..107: even ids are EU, odd are US. */
    first = publish_orders(100, 8);
    CU_ASSERT_FATAL(first >= 0);
    CU_ASSERT_EQUAL(read_n(audra, all, 8), 8);
    CU_ASSERT_EQUAL(read_n(alice, a, 4), 4);
    CU_ASSERT_EQUAL(read_n(bob, b, 4), 4);
    for (int i = 0; i < 8; i++) {
        /* The auditor sees every event, as published, with its offset. */
        char *o = order(100 + i, i % 2 ? "US" : "EU", 10.0 * (100 + i));
        json_t *want = json_loads(o, 0, NULL), *got;
        got = json_loads(all[i].data, 0, NULL);
        CU_ASSERT_EQUAL(all[i].id, first + i);
        CU_ASSERT(json_equal(want, got));
        json_decref(want);
        json_decref(got);
        free(o);
    }
    for (int i = 0; i < 4; i++) {
        json_t *ja = json_loads(a[i].data, 0, NULL);
        json_t *jb = json_loads(b[i].data, 0, NULL);
        char want[64];

        /* alice: the EU events (even ids), e-mail and card masked. */
        CU_ASSERT_EQUAL(a[i].id, first + 2 * i);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(ja, "order_id")),
                        100 + 2 * i);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ja, "region")),
                               "EU");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ja, "email")),
                               "****@example.com");
        snprintf(want, sizeof(want), "************%04d", 100 + 2 * i);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ja, "card")),
                               want);
        /* bob: the US events (odd ids), masked the same way. */
        CU_ASSERT_EQUAL(b[i].id, first + 2 * i + 1);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(jb, "region")),
                               "US");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(jb, "email")),
                               "****@example.com");
        json_decref(ja);
        json_decref(jb);
    }
    /* Nothing more for anybody. */
    CU_ASSERT_EQUAL(sse_next(alice, 300, &extra), 0);
    CU_ASSERT_EQUAL(sse_next(bob, 300, &extra), 0);
    /* What /metrics says of it. */
    {
        double streams = -1, published = -1, delivered = -1, fsyncs = -1;
        CU_ASSERT_EQUAL(
            sidecarenv_metric(sc, "polis_sidecar_event_streams", &streams), 0);
        CU_ASSERT_EQUAL(
            sidecarenv_metric(sc, "polis_sidecar_events_published_total",
                              &published),
            0);
        CU_ASSERT_EQUAL(
            sidecarenv_metric(sc, "polis_sidecar_events_delivered_total",
                              &delivered),
            0);
        CU_ASSERT_EQUAL(
            sidecarenv_metric(sc, "polis_sidecar_event_fsyncs_total", &fsyncs),
            0);
        CU_ASSERT_EQUAL(streams, 3);
        CU_ASSERT(published >= 9);  /* 1 earlier + these 8 */
        CU_ASSERT(delivered >= 16); /* 8 + 4 + 4 */
        CU_ASSERT(fsyncs >= 1);
    }
    sse_close(alice);
    sse_close(bob);
    sse_close(audra);
    streams_settle();
}

/* A long run of events a consumer's filters leave out does not hold back
 * the next one it may see. */
static void test_filtered_run(void)
{
    sse *alice = sse_open(ORDERS, ALICE, NULL, 0);
    size_t cap = 700 * 160, len = 0;
    char *body = malloc(cap);
    sse_event ev;

    CU_ASSERT_FATAL(alice && alice->status == 200 && body);
    len += (size_t)snprintf(body, cap, "[");
    for (int i = 0; i < 600; i++) { /* US: not alice's */
        char *o = order(7000 + i, "US", 1);
        len += (size_t)snprintf(body + len, cap - len, "%s%s", i ? "," : "", o);
        free(o);
    }
    {
        char *o = order(7600, "EU", 1);
        snprintf(body + len, cap - len, ",%s]", o);
        free(o);
    }
    CU_ASSERT_EQUAL(post(ORDERS, SERVICE, body, NULL), 200);
    CU_ASSERT_EQUAL(sse_next(alice, 5000, &ev), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(ev.data, "\"order_id\":7600"));
    free(body);
    sse_close(alice);
    streams_settle();
}

static void test_resume(void)
{
    sse_event evs[30], rest[30], extra;
    int64_t first = publish_orders(200, 20);
    char path[256], last[32];
    sse *s;

    CU_ASSERT_FATAL(first >= 0);
    /* Read the first 7, then go away. */
    snprintf(path, sizeof(path), ORDERS "?from=%lld", (long long)first);
    s = sse_open(path, AUDRA, NULL, 0);
    CU_ASSERT_FATAL(s && s->status == 200);
    CU_ASSERT_EQUAL(read_n(s, evs, 7), 7);
    sse_close(s);
    /* Back with Last-Event-ID (what an EventSource sends): the other 13,
     * in order, none twice. */
    snprintf(last, sizeof(last), "%lld", evs[6].id);
    s = sse_open(ORDERS, AUDRA, last, 0);
    CU_ASSERT_FATAL(s && s->status == 200);
    CU_ASSERT_EQUAL(read_n(s, rest, 13), 13);
    for (int i = 0; i < 13; i++) {
        json_t *j = json_loads(rest[i].data, 0, NULL);
        CU_ASSERT_EQUAL(rest[i].id, first + 7 + i);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "order_id")),
                        207 + i);
        json_decref(j);
    }
    CU_ASSERT_EQUAL(sse_next(s, 300, &extra), 0);
    sse_close(s);
    /* ?from= an offset in the middle: exactly the remaining ones. */
    snprintf(path, sizeof(path), ORDERS "?from=%lld", (long long)first + 15);
    s = sse_open(path, AUDRA, NULL, 0);
    CU_ASSERT_FATAL(s && s->status == 200);
    CU_ASSERT_EQUAL(read_n(s, rest, 5), 5);
    CU_ASSERT_EQUAL(rest[0].id, first + 15);
    CU_ASSERT_EQUAL(rest[4].id, first + 19);
    CU_ASSERT_EQUAL(sse_next(s, 300, &extra), 0);
    sse_close(s);
    streams_settle();
}

static void test_policy_change(void)
{
    sse *audra = sse_open(ORDERS, AUDRA, NULL, 0);
    sse *alice = sse_open(ORDERS, ALICE, NULL, 0);
    /* A second stream of the same principal: streams of one view share
     * the batches they read, and must still follow the new policy. */
    sse *audra2 = sse_open(ORDERS, AUDRA, NULL, 0);
    sse_event ev, ev2;
    int64_t rev;
    json_t *j;

    CU_ASSERT_FATAL(audra && alice && audra2);
    CU_ASSERT_FATAL(publish_orders(300, 1) >= 0);
    CU_ASSERT_EQUAL_FATAL(sse_next(audra2, 5000, &ev2), 1);
    CU_ASSERT_EQUAL_FATAL(sse_next(audra, 5000, &ev), 1);
    CU_ASSERT_STRING_EQUAL(ev.data, ev2.data);
    CU_ASSERT_EQUAL(ev.id, ev2.id);
    j = json_loads(ev.data, 0, NULL);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "card")),
                           "4111111111100300");
    json_decref(j);
    /* Cards redacted for auditors: the next event, same connection. */
    rev = gc_apply(gov, policy_redact_doc);
    CU_ASSERT_FATAL(rev > 0 && wait_revision(rev) == 0);
    CU_ASSERT_FATAL(publish_orders(302, 1) >= 0);
    CU_ASSERT_EQUAL_FATAL(sse_next(audra, 5000, &ev), 1);
    j = json_loads(ev.data, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL(j);
    CU_ASSERT(json_is_null(json_object_get(j, "card")) ||
              strcmp(json_string_value(json_object_get(j, "card")),
                     "4111111111100302") != 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "order_id")), 302);
    json_decref(j);
    CU_ASSERT_EQUAL_FATAL(sse_next(audra2, 5000, &ev2), 1);
    CU_ASSERT_STRING_EQUAL(ev.data, ev2.data);
    /* alice got the EU event 300 before; 302 is EU too. */
    CU_ASSERT_EQUAL(sse_next(alice, 5000, &ev), 1);
    CU_ASSERT_EQUAL(sse_next(alice, 5000, &ev), 1);
    /* alice loses access: she is told, and her stream ends. */
    rev = gc_apply(gov, policy_deny_doc);
    CU_ASSERT_FATAL(rev > 0 && wait_revision(rev) == 0);
    CU_ASSERT_FATAL(publish_orders(304, 1) >= 0);
    CU_ASSERT_EQUAL(sse_next(alice, 5000, &ev), 1);
    CU_ASSERT_STRING_EQUAL(ev.kind, "denied");
    CU_ASSERT_PTR_NOT_NULL(strstr(ev.data, "no-eu"));
    CU_ASSERT_EQUAL(sse_next(alice, 5000, &ev), -1);
    CU_ASSERT_EQUAL(sse_next(audra, 5000, &ev), 1);
    sse_close(alice);
    sse_close(audra);
    sse_close(audra2);
    rev = gc_apply(gov, policy_doc);
    CU_ASSERT(rev > 0 && wait_revision(rev) == 0);
    streams_settle();
}

/* ~1 KiB events for the bulk port. */
static char *bulk_body(int first_id, int n)
{
    char pad[1001];
    size_t cap = (size_t)n * 1100 + 8, len = 0;
    char *b = malloc(cap);

    memset(pad, 'x', 1000);
    pad[1000] = '\0';
    len += (size_t)snprintf(b, cap, "[");
    for (int i = 0; i < n; i++)
        len +=
            (size_t)snprintf(b + len, cap - len, "%s{\"id\":%d,\"pad\":\"%s\"}",
                             i ? "," : "", first_id + i, pad);
    snprintf(b + len, cap - len, "]");
    return b;
}

#define BULK_PUBLISHES 24
#define BULK_BATCH     500

typedef struct reader {
    sse *s;
    int want;
    atomic_int got;
    bool in_order;
    bool gone;
} reader;

/* A consumer that keeps up: reads until it has `want` events. */
static void *read_all(void *arg)
{
    reader *r = arg;
    long long last = -1;
    sse_event ev;

    r->in_order = true;
    while (r->got < r->want) {
        int rc = sse_next(r->s, 10000, &ev);
        if (rc != 1) {
            fprintf(stderr, "\nthe consumer stopped after %d events: %s\n",
                    (int)r->got,
                    rc == 0 ? "nothing for 10 s" : "end of stream");
            break;
        }
        if (strcmp(ev.kind, "message") != 0)
            fprintf(stderr, "\nevent: %s %.300s\n", ev.kind, ev.data);
        if (strcmp(ev.kind, "gone") == 0) {
            r->gone = true;
            break;
        }
        r->in_order &= ev.id == last + 1;
        last = ev.id;
        r->got++;
    }
    return NULL;
}

static void test_slow_consumer(void)
{
    /* A consumer that reads nothing (a small receive window), and one that
     * keeps up. */
    sse *slow = sse_open(BULK "?from=start", AUDRA, NULL, 4096);
    reader fast = {.s = sse_open(BULK "?from=start", AUDRA, NULL, 0),
                   .want = BULK_PUBLISHES * BULK_BATCH};
    int64_t start = mono_ms(), took;
    int published = 0, slow_got = 0;
    long long last_id = -1;
    bool gone = false;
    pthread_t t;
    sse_event ev;

    CU_ASSERT_FATAL(slow && fast.s && slow->status == 200);
    pthread_create(&t, NULL, read_all, &fast);
    /* 12 MiB, far past the 1 MiB retention. */
    for (int k = 0; k < BULK_PUBLISHES; k++) {
        char *b = bulk_body(k * BULK_BATCH, BULK_BATCH);
        long st = post(BULK, SERVICE, b, NULL);
        free(b);
        CU_ASSERT_EQUAL(st, 200);
        if (st != 200)
            break;
        published += BULK_BATCH;
        /* At the pace of the consumer that keeps up (a batch behind at
         * most), which the stalled one does not slow down. */
        for (int64_t until = mono_ms() + 10000;
             fast.got < published - BULK_BATCH && mono_ms() < until;)
            usleep(1000);
    }
    took = mono_ms() - start;
    printf("\n    published %d events (12 MiB) in %lld ms past a stalled "
           "consumer\n",
           published, (long long)took);
    /* Nobody waited for the stalled consumer. */
    CU_ASSERT(took < 20000);
    pthread_join(t, NULL);
    CU_ASSERT(!fast.gone);
    CU_ASSERT(fast.in_order);
    CU_ASSERT_EQUAL(fast.got, published);
    /* The stalled one now reads: what it was sent, then it is told it fell
     * past retention, then the end. */
    for (;;) {
        int rc = sse_next(slow, 10000, &ev);
        if (rc != 1)
            break;
        if (strcmp(ev.kind, "gone") == 0) {
            gone = true;
            CU_ASSERT_PTR_NOT_NULL(strstr(ev.data, "\"start\":"));
            break;
        }
        CU_ASSERT(ev.id == last_id + 1);
        last_id = ev.id;
        slow_got++;
    }
    CU_ASSERT(gone);
    CU_ASSERT(slow_got < published);
    CU_ASSERT_EQUAL(sse_next(slow, 5000, &ev), -1);
    /* Connecting at a dropped offset is a 410 naming the first kept one. */
    expect(NULL, BULK "?from=0", AUDRA, NULL, NULL, 410, "no longer retained");
    sse_close(slow);
    sse_close(fast.s);
    streams_settle();
}

/* ---- kill -9 mid publish burst ------------------------------------------ */

#define BURST_THREADS 4
#define BURST_BATCH   10

typedef struct acked {
    int64_t first;
    int id0; /* order ids id0 .. id0+BURST_BATCH-1 */
} acked;

typedef struct burster {
    pthread_t t;
    int no;
    acked acks[4096];
    int nacks;
} burster;

static atomic_bool burst_stop;
static atomic_int burst_acked; /* acknowledged publishes, all threads */

static void *burst(void *arg)
{
    burster *b = arg;
    char url[512];

    snprintf(url, sizeof(url), "%s%s", sc->http_url, ORDERS);
    for (int k = 0; !burst_stop && b->nacks < 4096; k++) {
        int id0 = 1000000 + b->no * 100000 + k * BURST_BATCH;
        char body[BURST_BATCH * 160 + 8];
        size_t len = 0;
        gc_response r;
        json_t *ans;

        len += (size_t)snprintf(body, sizeof(body), "[");
        for (int i = 0; i < BURST_BATCH; i++) {
            char *o = order(id0 + i, "EU", 1.0 * i);
            len += (size_t)snprintf(body + len, sizeof(body) - len, "%s%s",
                                    i ? "," : "", o);
            free(o);
        }
        snprintf(body + len, sizeof(body) - len, "]");
        long st = gc_http(NULL, url, SERVICE, body, NULL, 5000, &r);

        ans = gc_response_json(&r);
        if (st == 200) {
            /* Acknowledged: it must survive. */
            b->acks[b->nacks].first =
                json_integer_value(json_object_get(ans, "first"));
            b->acks[b->nacks++].id0 = id0;
            atomic_fetch_add(&burst_acked, 1);
        }
        json_decref(ans);
        gc_response_free(&r);
        if (st != 200)
            break; /* the sidecar is gone */
    }
    return NULL;
}

typedef struct stored {
    long long order_id;
} stored;

static void test_kill9_mid_burst(void)
{
    static burster b[BURST_THREADS];
    stored *log = NULL;
    size_t nlog = 0, cap = 0;
    long long expect_id = -1;
    int total = 0, lost = 0;
    sse_event ev;
    sse *s;

    burst_stop = false;
    atomic_store(&burst_acked, 0);
    for (int i = 0; i < BURST_THREADS; i++) {
        b[i].no = i;
        b[i].nacks = 0;
        pthread_create(&b[i].t, NULL, burst, &b[i]);
    }
    /* Mid burst: once publishes are being acknowledged (however slowly
     * the machine goes), and a moment later. */
    {
        int64_t until = mono_ms() + 15000;
        while (atomic_load(&burst_acked) < 20 && mono_ms() < until)
            usleep(10 * 1000);
    }
    usleep(100 * 1000);
    CU_ASSERT_EQUAL_FATAL(sidecarenv_kill(sc, SIGKILL), 0);
    for (int i = 0; i < BURST_THREADS; i++) {
        pthread_join(b[i].t, NULL);
        total += b[i].nacks;
    }
    printf("\n    %d publishes of %d events acknowledged before kill -9\n",
           total, BURST_BATCH);
    CU_ASSERT(total > 0);
    CU_ASSERT_EQUAL_FATAL(sidecarenv_restart(sc, true), 0);
    /* Everything from the start, as the auditor sees it. */
    s = sse_open(ORDERS "?from=start", AUDRA, NULL, 0);
    CU_ASSERT_FATAL(s && s->status == 200);
    while (sse_next(s, 3000, &ev) == 1) {
        json_t *j = json_loads(ev.data, 0, NULL);
        if (nlog == cap) {
            cap = cap ? 2 * cap : 4096;
            log = realloc(log, cap * sizeof(*log));
        }
        /* Offsets start at 0 and have no gaps. */
        CU_ASSERT_EQUAL(ev.id, (long long)nlog);
        log[nlog++].order_id =
            json_integer_value(json_object_get(j, "order_id"));
        json_decref(j);
    }
    sse_close(s);
    /* Every acknowledged publish is there, whole, at its offsets. */
    for (int i = 0; i < BURST_THREADS; i++)
        for (int k = 0; k < b[i].nacks; k++)
            for (int e = 0; e < BURST_BATCH; e++) {
                size_t off = (size_t)b[i].acks[k].first + (size_t)e;
                if (off >= nlog || log[off].order_id != b[i].acks[k].id0 + e) {
                    if (lost++ < 5)
                        fprintf(stderr,
                                "\nacknowledged event %lld at offset %zu "
                                "missing\n",
                                (long long)b[i].acks[k].id0 + e, off);
                }
            }
    CU_ASSERT_EQUAL(lost, 0);
    /* And each publisher's events are in its publishing order. */
    for (int i = 0; i < BURST_THREADS; i++) {
        expect_id = -1;
        for (size_t k = 0; k < nlog; k++) {
            long long id = log[k].order_id;
            if (id < 1000000 + i * 100000 || id >= 1000000 + (i + 1) * 100000)
                continue;
            CU_ASSERT(id > expect_id);
            expect_id = id;
        }
    }
    free(log);
    /* The restarted sidecar takes publishes again. */
    CU_ASSERT(publish_orders(5000, 2) >= 0);
    streams_settle();
}

/* Streams are bounded: one more is a 503 with Retry-After, and a stream
 * that ends frees its place. */
static void test_consumer_bound(void)
{
    sse *s[3], *extra = NULL;
    int64_t until;

    for (int i = 0; i < 3; i++) {
        s[i] = sse_open(ORDERS, AUDRA, NULL, 0);
        CU_ASSERT_FATAL(s[i] && s[i]->status == 200);
    }
    expect(NULL, ORDERS, AUDRA, NULL, NULL, 503, "at most 3 event streams");
    sse_close(s[0]);
    /* The sidecar notices the hang-up when it reads EOF. */
    until = mono_ms() + 15000;
    do {
        sse_close(extra);
        usleep(20 * 1000);
        extra = sse_open(ORDERS, AUDRA, NULL, 0);
    } while (extra && extra->status == 503 && mono_ms() < until);
    CU_ASSERT(extra && extra->status == 200);
    sse_close(extra);
    sse_close(s[1]);
    sse_close(s[2]);
    streams_settle();
}

/* `doc` with its first `from` replaced by `to` (malloc'd). */
static char *doc_with(const char *doc, const char *from, const char *to)
{
    const char *at = strstr(doc, from);
    size_t n = strlen(doc) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);

    if (at == NULL || out == NULL) {
        free(out);
        return NULL;
    }
    snprintf(out, n, "%.*s%s%s", (int)(at - doc), doc, to, at + strlen(from));
    return out;
}

static double fsyncs_now(void)
{
    double v = -1;

    sidecarenv_metric(sc, "polis_sidecar_event_fsyncs_total", &v);
    return v;
}

/* Where the bulk log starts, from the 410 of ?from=0 (-1: not a 410). */
static long long bulk_start(void)
{
    char url[512];
    gc_response r;
    json_t *ans;
    long long start = -1;

    snprintf(url, sizeof(url), "%s" BULK "?from=0", sc->http_url);
    if (gc_http(NULL, url, AUDRA, NULL, NULL, 10000, &r) == 410 &&
        (ans = gc_response_json(&r)) != NULL) {
        start = json_integer_value(json_object_get(ans, "start"));
        json_decref(ans);
    }
    gc_response_free(&r);
    return start;
}

static void apply_and_wait(const char *doc)
{
    int64_t rev = doc ? gc_apply(gov, doc) : -1;

    CU_ASSERT_FATAL(rev > 0 && wait_revision(rev) == 0);
}

/* A port's fsync and retention changed by the council apply to the open
 * log with its next publish, without a restart. */
static void test_port_settings_change(void)
{
    char *never = doc_with(orders_doc, "\"batch\"", "\"never\"");
    char *always = doc_with(orders_doc, "\"batch\"", "\"always\"");
    char *small = doc_with(bulk_doc, "1048576", "131072");
    char *body = bulk_body(900000, 1);
    double f0, f1;
    long long start0, start1;

    CU_ASSERT_FATAL(never && always && small && body);
    apply_and_wait(never);
    f0 = fsyncs_now();
    for (int i = 0; i < 3; i++)
        CU_ASSERT(publish_orders(8000 + i, 1) >= 0);
    CU_ASSERT_EQUAL(fsyncs_now(), f0); /* never: no fsync at all */
    apply_and_wait(always);
    f1 = fsyncs_now();
    for (int i = 0; i < 2; i++)
        CU_ASSERT(publish_orders(8010 + i, 1) >= 0);
    CU_ASSERT_EQUAL(fsyncs_now(), f1 + 2); /* always: one per publish */
    apply_and_wait(orders_doc);

    /* bulk keeps ~1 MiB; at 128 KiB the oldest segments go at once. */
    start0 = bulk_start();
    CU_ASSERT(start0 > 0);
    apply_and_wait(small);
    CU_ASSERT_EQUAL(post(BULK, SERVICE, body, NULL), 200);
    start1 = bulk_start();
    printf("\n    bulk log start %lld -> %lld at 1 MiB -> 128 KiB retention\n",
           start0, start1);
    /* ~1 KiB events: about 900 fewer kept. */
    CU_ASSERT(start1 > start0 + 700);
    apply_and_wait(bulk_doc);
    free(never);
    free(always);
    free(small);
    free(body);
}

/* SIGTERM with consumers connected: a clean exit (status 0; under the
 * sanitizers, no leak and no error either). */
static void test_clean_stop(void)
{
    sse *a = sse_open(ORDERS, AUDRA, NULL, 0);
    sse *b = sse_open(BULK "?from=start", AUDRA, NULL, 4096);
    sse_event ev;
    int status;

    CU_ASSERT_FATAL(a && b);
    CU_ASSERT(publish_orders(6000, 3) >= 0);
    CU_ASSERT_EQUAL(sse_next(a, 5000, &ev), 1);
    status = sidecarenv_stop(sc, 10000);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        sidecarenv_dump_log(sc, 6000);
    sse_close(a);
    sse_close(b);
}

static const test_case cases[] = {
    {"publish refusals", test_publish_refusals},
    {"two consumers, two views", test_two_consumers},
    {"a long filtered run", test_filtered_run},
    {"resume from an offset", test_resume},
    {"policy change applies to the next event", test_policy_change},
    {"slow consumer", test_slow_consumer},
    {"kill -9 mid publish burst", test_kill9_mid_burst},
    {"at most --event-max-consumers streams", test_consumer_bound},
    {"port settings change without a restart", test_port_settings_change},
    {"clean stop with consumers connected", test_clean_stop},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"event port", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
