/*
 * test_http_port.c — a data product's HTTP port: polis-sidecar as a reverse
 * proxy in front of a small HTTP server run by this test (a thread per
 * connection answering canned responses), with real etcd, control plane and
 * sidecar processes: identity and decisions, headers in both directions,
 * 502 and 504, an upstream dying mid-body, a large slow body streamed
 * through without the sidecar holding it.
 */
#include "common/rpc.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"
#include "tests/support/procstat.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ALICE "alice-token-0123456789" /* analysts: allowed */
#define EVE   "eve-token-0123456789"   /* contractors: denied by a rule */

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

#define PROXY_TIMEOUT_MS 1500
#define BIG_BYTES        (10L * 1024 * 1024)

static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;
static bool short_timeout; /* the sidecar took --proxy-timeout-ms */

/* ---- the upstream ------------------------------------------------------ */

static int up_fd = -1, up_port;
static pthread_t up_thread;
static atomic_bool up_stop;
static atomic_int up_live; /* connection threads running */
static pthread_mutex_t up_mu = PTHREAD_MUTEX_INITIALIZER;
static char up_last[8192]; /* head of the last request seen */
static char up_last_body[256];

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}

static void *up_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char req[8192];
    size_t len = 0;
    char *end = NULL, *cl, path[256] = "";
    long body_len = 0;

    while (!end && len < sizeof(req) - 1) {
        ssize_t r = recv(fd, req + len, sizeof(req) - 1 - len, 0);
        if (r <= 0)
            goto out;
        len += (size_t)r;
        req[len] = '\0';
        end = strstr(req, "\r\n\r\n");
    }
    if (!end)
        goto out;
    cl = strcasestr(req, "\r\nContent-Length:");
    if (cl && cl < end)
        body_len = strtol(cl + 17, NULL, 10);
    while ((long)(len - (size_t)(end + 4 - req)) < body_len &&
           len < sizeof(req) - 1) {
        ssize_t r = recv(fd, req + len, sizeof(req) - 1 - len, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
        req[len] = '\0';
    }
    pthread_mutex_lock(&up_mu);
    snprintf(up_last, sizeof(up_last), "%.*s", (int)(end + 4 - req), req);
    snprintf(up_last_body, sizeof(up_last_body), "%s", end + 4);
    pthread_mutex_unlock(&up_mu);
    sscanf(req, "%*s %255s", path);

    if (strncmp(path, "/base/hang", 10) == 0) {
        while (!atomic_load(&up_stop)) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            char c;
            if (poll(&p, 1, 100) > 0 && recv(fd, &c, 1, 0) <= 0)
                break;
        }
    } else if (strncmp(path, "/base/stall", 11) == 0) {
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: "
                                   "100000\r\nContent-Type: text/plain\r\n\r\n";
        char part[1000];
        memset(part, 's', sizeof(part));
        send_all(fd, head, strlen(head));
        send_all(fd, part, sizeof(part));
        while (!atomic_load(&up_stop)) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            char c;
            if (poll(&p, 1, 100) > 0 && recv(fd, &c, 1, 0) <= 0)
                break;
        }
    } else if (strncmp(path, "/base/die", 9) == 0) {
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: "
                                   "100000\r\nContent-Type: text/plain\r\n\r\n";
        char part[1000];
        memset(part, 'd', sizeof(part));
        send_all(fd, head, strlen(head));
        send_all(fd, part, sizeof(part));
        sleep_ms(100);
    } else if (strncmp(path, "/base/silent-close", 18) == 0) {
        /* Keep-alive as far as the headers say, but the next request on
         * the connection is never answered: it is closed 100 ms later,
         * as an upstream's idle timeout closes a pooled connection. */
        static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                   "Content-Type: text/plain\r\n\r\nok";
        send_all(fd, resp, strlen(resp));
        sleep_ms(100);
    } else if (strncmp(path, "/base/garbage", 13) == 0) {
        send_all(fd, "SPEAKING NONSENSE\r\n\r\n", 21);
        sleep_ms(50);
    } else if (strncmp(path, "/base/big", 9) == 0) {
        /* 10 MB chunked, 64 KiB at a time with pauses: ~1.5 s. */
        static char chunk[64 * 1024];
        static const char head[] =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/octet-stream\r\n\r\n";
        char line[32];
        memset(chunk, 'b', sizeof(chunk));
        if (send_all(fd, head, strlen(head)) != 0)
            goto out;
        for (long sent = 0; sent < BIG_BYTES && !atomic_load(&up_stop);
             sent += (long)sizeof(chunk)) {
            snprintf(line, sizeof(line), "%zx\r\n", sizeof(chunk));
            if (send_all(fd, line, strlen(line)) ||
                send_all(fd, chunk, sizeof(chunk)) || send_all(fd, "\r\n", 2))
                goto out;
            if ((sent / (long)sizeof(chunk)) % 8 == 0)
                sleep_ms(10);
        }
        send_all(fd, "0\r\n\r\n", 5);
    } else {
        /* Echo the method, target and body; with hop-by-hop headers that
         * must not reach the client. */
        char body[1024], resp[2048];
        char method[16] = "";
        sscanf(req, "%15s", method);
        snprintf(body, sizeof(body), "%s %s %s", method, path, end + 4);
        snprintf(resp, sizeof(resp),
                 "HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\n"
                 "Content-Length: %zu\r\nConnection: close, X-Hop\r\n"
                 "X-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
                 "X-End: kept\r\n\r\n%s",
                 strlen(body), body);
        send_all(fd, resp, strlen(resp));
    }
out:
    close(fd);
    atomic_fetch_sub(&up_live, 1);
    return NULL;
}

static void *up_accept(void *arg)
{
    (void)arg;
    while (!atomic_load(&up_stop)) {
        struct pollfd p = {.fd = up_fd, .events = POLLIN};
        pthread_t t;
        int fd;

        if (poll(&p, 1, 100) <= 0)
            continue;
        fd = accept(up_fd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&up_live, 1);
        if (pthread_create(&t, NULL, up_conn, (void *)(intptr_t)fd) != 0) {
            close(fd);
            atomic_fetch_sub(&up_live, 1);
            continue;
        }
        pthread_detach(t);
    }
    return NULL;
}

static int up_start(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t sl = sizeof(a);
    int one = 1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    up_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (up_fd < 0)
        return -1;
    setsockopt(up_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(up_fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(up_fd, 64) != 0 ||
        getsockname(up_fd, (struct sockaddr *)&a, &sl) != 0)
        return -1;
    up_port = ntohs(a.sin_port);
    return pthread_create(&up_thread, NULL, up_accept, NULL) == 0 ? 0 : -1;
}

static void up_stop_all(void)
{
    if (up_fd < 0)
        return;
    atomic_store(&up_stop, true);
    pthread_join(up_thread, NULL);
    for (int i = 0; i < 50 && atomic_load(&up_live) > 0; i++)
        sleep_ms(20);
    close(up_fd);
    up_fd = -1;
}

static void up_seen(char *head, size_t n, char *body, size_t bn)
{
    pthread_mutex_lock(&up_mu);
    snprintf(head, n, "%s", up_last);
    snprintf(body, bn, "%s", up_last_body);
    pthread_mutex_unlock(&up_mu);
}

/* ---- HTTP client ------------------------------------------------------- */

typedef struct body {
    char *data;
    size_t len;
    bool count_only;
    uint64_t bytes;
    pid_t pid;
    long max_recv_speed; /* bytes/s, 0: unlimited */
    uint64_t stop_after; /* count_only: hang up after this many bytes */
    long timeout_ms;     /* 0: 45000 */
    uint64_t next_sample;
    long rss_max_kb;
    char headers[4096];
    size_t hlen;
} body;

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    body *b = ud;
    size_t len = size * n;

    if (b->count_only) {
        if (b->stop_after && b->bytes >= b->stop_after)
            return 0; /* hang up mid-body */
        b->bytes += len;
        if (b->bytes >= b->next_sample) {
            long kb = ps_rss_kib(b->pid);
            if (kb > b->rss_max_kb)
                b->rss_max_kb = kb;
            b->next_sample += 1024 * 1024;
        }
        return len;
    }
    b->data = realloc(b->data, b->len + len + 1);
    if (b->data == NULL)
        return 0;
    memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    body *b = ud;
    size_t len = size * n;

    if (b->hlen + len < sizeof(b->headers)) {
        memcpy(b->headers + b->hlen, p, len);
        b->hlen += len;
        b->headers[b->hlen] = '\0';
    }
    return len;
}

/* The status, or -1 when the transfer failed (*curl_rc says how). */
static long http(const char *method, const char *path, const char *token,
                 const char *post, body *b, CURLcode *curl_rc)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = NULL;
    char url[1024], line[256];
    long status = -1;
    CURLcode rc;

    snprintf(url, sizeof(url), "%s%s", sc->http_url, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
                     b->timeout_ms ? b->timeout_ms : 45000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, b);
    if (token) {
        snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
        hdr = curl_slist_append(hdr, line);
    }
    hdr = curl_slist_append(hdr, "Polis-Purpose: analytics");
    /* Spoofed identity and hop-by-hop headers the upstream must not see. */
    hdr = curl_slist_append(hdr, "Polis-Principal: mallory");
    hdr = curl_slist_append(hdr, "Connection: keep-alive, X-Secret-Hop");
    hdr = curl_slist_append(hdr, "X-Secret-Hop: 1");
    hdr = curl_slist_append(hdr, "Proxy-Authorization: Basic Zm9v");
    hdr = curl_slist_append(hdr, "X-Custom: passed");
    if (post)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, post);
    if (b->max_recv_speed)
        curl_easy_setopt(h, CURLOPT_MAX_RECV_SPEED_LARGE,
                         (curl_off_t)b->max_recv_speed);
    if (method)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    rc = curl_easy_perform(h);
    if (curl_rc)
        *curl_rc = rc;
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return status;
}

static long get_json(const char *path, const char *token, json_t **out)
{
    body b = {0};
    long st = http(NULL, path, token, NULL, &b, NULL);

    *out = b.data ? json_loads(b.data, 0, NULL) : NULL;
    free(b.data);
    return st;
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));

    return v ? v : "";
}

/* ---- fixture ----------------------------------------------------------- */

static int apply_principal(const char *name, const char *group,
                           const char *token)
{
    char hex[65], doc[1024];

    gc_token_sha256(token, hex);
    snprintf(doc, sizeof(doc),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\",\"metadata\":"
             "{\"name\":\"%s\"},\"spec\":{\"groups\":[\"%s\",\"staff\"],"
             "\"credentials\":{\"tokenSha256\":[\"%s\"]}}}",
             name, group, hex);
    return gc_apply(gov, doc) < 0 ? -1 : 0;
}

static int apply_product(const char *name, const char *port_json)
{
    char doc[1024];

    snprintf(doc, sizeof(doc),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
             "\"metadata\":{\"name\":\"%s\"},\"spec\":{\"domain\":\"sales\","
             "\"ports\":[%s],\"schema\":[{\"name\":\"id\",\"type\":"
             "\"integer\"}]}}",
             name, port_json);
    return gc_apply(gov, doc) < 0 ? -1 : 0;
}

static const char *const policy_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":"
    "{\"name\":\"api\"},\"spec\":{\"scope\":\"global\",\"rules\":["
    "{\"name\":\"call-sales\",\"effect\":\"allow\",\"subjects\":"
    "[\"group:analysts\",\"group:contractors\"],\"resources\":[\"sales/*\"],"
    "\"ports\":[\"http\"]},"
    "{\"name\":\"no-contractors\",\"effect\":\"deny\",\"subjects\":"
    "[\"group:contractors\"],\"resources\":[\"sales/*\"],\"ports\":"
    "[\"http\"]}]}}";

static bool sidecar_knows_flag(void)
{
    char cmd[1200], line[512];
    bool found = false;
    FILE *f;

    snprintf(cmd, sizeof(cmd), "'%s' --help 2>&1", sidecarenv_binary());
    f = popen(cmd, "r");
    if (f == NULL)
        return false;
    while (fgets(line, sizeof(line), f))
        found |= strstr(line, "proxy-timeout-ms") != NULL;
    pclose(f);
    return found;
}

static int suite_cleanup(void)
{
    sidecarenv_free(sc);
    sc = NULL;
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    up_stop_all();
    curl_global_cleanup();
    return 0;
}

static int suite_init(void)
{
    static const char *const cp_args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = cp_args};
    sidecarenv_options so = {.domain = "sales", .id = "sales-http-1"};
    char timeout[32], port[256], asan[512];
    const char *sc_args[] = {"--proxy-timeout-ms", timeout, NULL};
    int64_t start;
    json_t *ans = NULL;
    long st = -1;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (UNDER_ASAN) {
        /* ASan's quarantine keeps freed memory resident; keep it small so
         * that the sidecar's RSS measures what it holds. */
        const char *cur = getenv("ASAN_OPTIONS");
        snprintf(asan, sizeof(asan), "%s%squarantine_size_mb=1", cur ? cur : "",
                 cur && *cur ? ":" : "");
        setenv("ASAN_OPTIONS", asan, 1);
    }
    if (up_start() != 0) {
        fprintf(stderr, "cannot start the upstream\n");
        return -1;
    }
    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto fail;
    snprintf(port, sizeof(port),
             "{\"name\":\"api\",\"type\":\"http\",\"upstream\":"
             "\"http://127.0.0.1:%d/base/\"}",
             up_port);
    if (gc_apply(
            gov,
            "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":"
            "{\"name\":\"sales\"},\"spec\":{\"owners\":[\"s@example.com\"]"
            "}}") < 0 ||
        apply_product("api", port))
        goto fail;
    /* Nothing listens there. */
    snprintf(port, sizeof(port),
             "{\"name\":\"api\",\"type\":\"http\",\"upstream\":"
             "\"http://127.0.0.1:%d\"}",
             testenv_refused_port());
    if (apply_product("down", port) ||
        apply_product("noapi", "{\"name\":\"f\",\"type\":\"file\","
                               "\"directory\":\"files\",\"format\":\"csv\"}") ||
        apply_principal("alice", "analysts", ALICE) ||
        apply_principal("eve", "contractors", EVE) ||
        gc_apply(gov, policy_doc) < 0)
        goto fail;
    short_timeout = sidecar_knows_flag();
    snprintf(timeout, sizeof(timeout), "%d", PROXY_TIMEOUT_MS);
    so.controlplane = cp->grpc_target;
    so.extra_args = short_timeout ? sc_args : NULL;
    if (!short_timeout)
        fprintf(stderr, "\n(polis-sidecar has no --proxy-timeout-ms: the "
                        "timeout case waits for the 30 s default)\n");
    sc = sidecarenv_start(&so);
    if (sc == NULL)
        goto fail;
    /* Counted from here: starting etcd, the control plane and the sidecar
     * may take most of any budget on a loaded machine. */
    start = now_ms();
    while (now_ms() - start < 15000) {
        st = get_json("/v1/products/sales/api/http/ping", ALICE, &ans);
        json_decref(ans);
        ans = NULL;
        if (st == 201)
            return 0;
        sleep_ms(50);
    }
    fprintf(stderr, "the http port never answered 201 (last %ld)\n", st);
    sidecarenv_dump_log(sc, 4000);
fail:
    suite_cleanup();
    return -1;
}

/* ---- cases ------------------------------------------------------------- */

static bool has_header(const char *head, const char *name)
{
    char needle[128];

    snprintf(needle, sizeof(needle), "\r\n%s:", name);
    return strcasestr(head, needle) != NULL;
}

static void test_allowed_call_passes(void)
{
    body b = {0};
    char head[8192], ubody[256];
    long st = http("POST", "/v1/products/sales/api/http/v2/items?x=1&y=a%20b",
                   ALICE, "{\"n\":42}", &b, NULL);

    CU_ASSERT_EQUAL(st, 201);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b.data);
    CU_ASSERT_STRING_EQUAL(b.data,
                           "POST /base/v2/items?x=1&y=a%20b {\"n\":42}");
    /* The response's end-to-end headers pass, its hop-by-hop ones do not. */
    CU_ASSERT(has_header(b.headers, "X-End"));
    CU_ASSERT(!has_header(b.headers, "X-Hop"));
    CU_ASSERT(!has_header(b.headers, "Keep-Alive"));

    up_seen(head, sizeof(head), ubody, sizeof(ubody));
    CU_ASSERT(strstr(head, "POST /base/v2/items?x=1&y=a%20b HTTP/1.1\r\n") ==
              head);
    CU_ASSERT(strcasestr(head, "\r\nPolis-Principal: alice\r\n") != NULL);
    CU_ASSERT(strcasestr(head, "mallory") == NULL);
    CU_ASSERT(strcasestr(head, "\r\nPolis-Groups: analysts,staff\r\n") != NULL);
    CU_ASSERT(strcasestr(head, "\r\nPolis-Purpose: analytics\r\n") != NULL);
    CU_ASSERT(strcasestr(head, "\r\nPolis-Decision-Rule: ") != NULL);
    CU_ASSERT(strstr(head, "call-sales") != NULL);
    CU_ASSERT(strcasestr(head, "\r\nX-Forwarded-For: 127.0.0.1\r\n") != NULL);
    CU_ASSERT(strcasestr(head, "\r\nX-Custom: passed\r\n") != NULL);
    CU_ASSERT(!has_header(head, "Authorization"));
    CU_ASSERT(strstr(head, ALICE) == NULL);
    CU_ASSERT(!has_header(head, "Proxy-Authorization"));
    CU_ASSERT(!has_header(head, "X-Secret-Hop"));
    CU_ASSERT(!has_header(head, "Keep-Alive"));
    CU_ASSERT(strcasestr(head, "\r\nConnection: keep-alive") == NULL);
    CU_ASSERT_STRING_EQUAL(ubody, "{\"n\":42}");
    if (strcasestr(head, "\r\nPolis-Principal: alice\r\n") == NULL)
        fprintf(stderr, "\nupstream saw:\n%s\n", head);
    free(b.data);
}

static void test_denied(void)
{
    json_t *ans = NULL;

    CU_ASSERT_EQUAL(get_json("/v1/products/sales/api/http/ping", EVE, &ans),
                    403);
    CU_ASSERT(strstr(jstr(ans, "rule"), "no-contractors") != NULL);
    json_decref(ans);
}

static void test_unauthenticated(void)
{
    json_t *ans = NULL;

    CU_ASSERT_EQUAL(get_json("/v1/products/sales/api/http/ping", NULL, &ans),
                    401);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "unauthenticated");
    json_decref(ans);
    CU_ASSERT_EQUAL(
        get_json("/v1/products/sales/api/http/ping", "wrong-token", &ans), 401);
    json_decref(ans);
}

static void test_not_found(void)
{
    json_t *ans = NULL;

    CU_ASSERT_EQUAL(get_json("/v1/products/sales/nothing/http/x", ALICE, &ans),
                    404);
    json_decref(ans);
    /* A product without an http port. */
    CU_ASSERT_EQUAL(get_json("/v1/products/sales/noapi/http/x", ALICE, &ans),
                    404);
    CU_ASSERT(strstr(jstr(ans, "detail"), "no http port") != NULL);
    json_decref(ans);
    /* Climbing out of the upstream's base path. */
    CU_ASSERT_EQUAL(
        get_json("/v1/products/sales/api/http/a/../../admin", ALICE, &ans),
        400);
    json_decref(ans);
    CU_ASSERT_EQUAL(
        get_json("/v1/products/sales/api/http/%2e%2E/admin", ALICE, &ans), 400);
    json_decref(ans);
}

static void test_upstream_down(void)
{
    json_t *ans = NULL;

    long st = get_json("/v1/products/sales/down/http/x", ALICE, &ans);

    CU_ASSERT_EQUAL(st, 502);
    if (st != 502) {
        char *t = ans ? json_dumps(ans, 0) : NULL;
        fprintf(stderr, "\ndown -> %ld %s\n", st, t ? t : "(not JSON)");
        free(t);
    }
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "bad gateway");
    json_decref(ans);
}

static void test_upstream_hangs(void)
{
    json_t *ans = NULL;
    int64_t t0 = now_ms(), took;
    long want = short_timeout ? PROXY_TIMEOUT_MS : 30000;

    CU_ASSERT_EQUAL(get_json("/v1/products/sales/api/http/hang", ALICE, &ans),
                    504);
    took = now_ms() - t0;
    printf("(504 after %lld ms) ", (long long)took);
    CU_ASSERT(took >= want - 100);
    CU_ASSERT(took < want + 3000);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "gateway timeout");
    json_decref(ans);
}

static void test_upstream_dies_mid_body(void)
{
    body b = {0};
    CURLcode rc = CURLE_OK;
    json_t *ans = NULL;

    CU_ASSERT_EQUAL(
        http(NULL, "/v1/products/sales/api/http/die", ALICE, NULL, &b, &rc),
        -1);
    CU_ASSERT(rc != CURLE_OK);
    CU_ASSERT(b.len >= 1000 && b.len < 100000);
    free(b.data);
    CU_ASSERT(testenv_proc_alive(sc->proc));
    CU_ASSERT_EQUAL(get_json("/v1/products/sales/api/http/next", ALICE, &ans),
                    201);
    json_decref(ans);
}

static void test_big_body_streamed(void)
{
    body b = {.count_only = true};
    long before;
    int64_t t0 = now_ms();

    b.pid = testenv_proc_pid(sc->proc);
    before = ps_rss_kib(b.pid);
    b.rss_max_kb = before;
    b.next_sample = 1024 * 1024;
    /* A client slower than the upstream: without back-pressure the
     * sidecar would hold what the client has not taken yet. */
    b.max_recv_speed = 8L << 20;
    CU_ASSERT_EQUAL(
        http(NULL, "/v1/products/sales/api/http/big", ALICE, NULL, &b, NULL),
        200);
    printf("(%.1f MB in %lld ms, sidecar RSS %ld -> max %ld kB) ",
           b.bytes / 1e6, (long long)(now_ms() - t0), before, b.rss_max_kb);
    CU_ASSERT_EQUAL(b.bytes, (uint64_t)BIG_BYTES);
    CU_ASSERT(before > 0);
    CU_ASSERT(b.rss_max_kb - before < (UNDER_ASAN ? 4 : 3) * 1024);
}

/* `polisctl access --product P -o json` (caller decrefs), NULL on failure. */
static json_t *access_records(const char *product)
{
    char cmd[1024], *out = NULL;
    size_t len = 0, r;
    char chunk[4096];
    FILE *f, *m;
    json_t *arr;

    snprintf(cmd, sizeof(cmd),
             "'%s/cli/polisctl' --server %s access --product %s --limit 1000 "
             "-o json 2>/dev/null",
             POLIS_BUILD_DIR, cp->grpc_target, product);
    f = popen(cmd, "r");
    if (f == NULL)
        return NULL;
    m = open_memstream(&out, &len);
    while (m && (r = fread(chunk, 1, sizeof(chunk), f)) > 0)
        fwrite(chunk, 1, r, m);
    if (m)
        fclose(m);
    pclose(f);
    arr = out ? json_loads(out, 0, NULL) : NULL;
    free(out);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The first record of `arr` with this status and decision (borrowed), or
 * NULL. */
static json_t *record_with(json_t *arr, long status, const char *decision)
{
    size_t i;
    json_t *r;

    json_array_foreach(arr, i, r)
    {
        if (json_integer_value(json_object_get(r, "httpStatus")) == status &&
            strcmp(jstr(r, "decision"), decision) == 0)
            return r;
    }
    return NULL;
}

/* Every proxied request left an access record: the big body with its byte
 * count, the 502 and the 504 as errors. */
static void test_access_records(void)
{
    int64_t until = now_ms() + 10000;
    json_t *api = NULL, *down = NULL, *big, *r;

    for (;;) {
        json_decref(api);
        json_decref(down);
        api = access_records("sales/api");
        down = access_records("sales/down");
        if ((api && down && record_with(down, 502, "error") &&
             record_with(api, 504, "error") && record_with(api, 200, "allow") &&
             record_with(api, 200, "error")) ||
            now_ms() > until)
            break;
        sleep_ms(250);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(api);
    CU_ASSERT_PTR_NOT_NULL_FATAL(down);
    big = record_with(api, 200, "allow");
    CU_ASSERT_PTR_NOT_NULL(big);
    if (big) {
        CU_ASSERT_STRING_EQUAL(jstr(big, "port"), "http");
        CU_ASSERT_STRING_EQUAL(jstr(big, "principal"), "alice");
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(big, "bytes")),
                        BIG_BYTES);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(big, "rows")), 0);
    }
    CU_ASSERT_PTR_NOT_NULL(record_with(api, 504, "error"));
    CU_ASSERT_PTR_NOT_NULL(record_with(down, 502, "error"));
    r = record_with(api, 403, "deny");
    CU_ASSERT(r && strcmp(jstr(r, "principal"), "eve") == 0);
    /* The body cut mid-way: what got out before. */
    r = record_with(api, 200, "error");
    CU_ASSERT(r && json_integer_value(json_object_get(r, "bytes")) >= 1000 &&
              json_integer_value(json_object_get(r, "bytes")) < 100000);
    json_decref(api);
    json_decref(down);
}

/* An upstream that goes silent after its status line: the timeout cuts the
 * client's transfer.  Needs a sidecar with --proxy-timeout-ms (with the
 * 30 s default the suite would take too long). */
static void test_upstream_stalls_mid_body(void)
{
    body b = {0};
    int64_t t0 = now_ms(), took;
    json_t *ans = NULL;

    if (!short_timeout) {
        printf("(skipped: no --proxy-timeout-ms) ");
        return;
    }
    CU_ASSERT_EQUAL(
        http(NULL, "/v1/products/sales/api/http/stall", ALICE, NULL, &b, NULL),
        -1);
    took = now_ms() - t0;
    CU_ASSERT_EQUAL(b.len, 1000);
    CU_ASSERT(took >= PROXY_TIMEOUT_MS - 100 && took < PROXY_TIMEOUT_MS + 3000);
    free(b.data);
    CU_ASSERT_EQUAL(get_json("/v1/products/sales/api/http/next", ALICE, &ans),
                    201);
    json_decref(ans);
}

/* Garbage from the upstream is a 502; a request body over the bound is a
 * 413 from the sidecar itself. */
static void test_bad_upstream_and_big_request(void)
{
    json_t *ans = NULL;
    body b = {0};
    size_t n = 3 * 1024 * 1024;
    char *big = malloc(n + 1);

    CU_ASSERT_EQUAL(
        get_json("/v1/products/sales/api/http/garbage", ALICE, &ans), 502);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "error"), "bad gateway");
    json_decref(ans);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'x', n);
    big[n] = '\0';
    CU_ASSERT_EQUAL(
        http("POST", "/v1/products/sales/api/http/echo", ALICE, big, &b, NULL),
        413);
    free(b.data);
    free(big);
}

/* Two requests on one client connection: the proxied answer leaves the
 * keep-alive connection usable (the upstream's "Connection: close" is not
 * passed on). */
static void test_keep_alive(void)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdr =
        curl_slist_append(NULL, "Authorization: Bearer " ALICE);
    body b = {0};
    char url[256];
    long status = 0, connects = -1;

    snprintf(url, sizeof(url), "%s/v1/products/sales/api/http/ka",
             sc->http_url);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(curl_easy_perform(h), CURLE_OK);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        CU_ASSERT_EQUAL(status, 201);
        curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &connects);
        CU_ASSERT_EQUAL(connects, i == 0 ? 1 : 0);
    }
    free(b.data);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
}

/* An upstream that closes connections the sidecar keeps for the next
 * request: a request that fails on such a connection before any answer is
 * sent again on a new one when that is safe (GET), so the client never sees
 * the stale connection. */
static void test_stale_pooled_connection(void)
{
    body b = {0};
    int ok = 0;

    for (int i = 0; i < 10; i++) {
        long st = http(NULL, "/v1/products/sales/api/http/silent-close", ALICE,
                       NULL, &b, NULL);
        ok += st == 200;
        if (st != 200)
            fprintf(stderr, "\nrequest %d: %ld\n", i, st);
        free(b.data);
        memset(&b, 0, sizeof(b));
    }
    CU_ASSERT_EQUAL(ok, 10);
}

/* Clients that go away — mid-body, or while the upstream is still silent —
 * end the upstream exchange; the sidecar serves on (and clean_exit checks
 * that nothing leaked). */
static void test_client_hangs_up(void)
{
    body big = {.count_only = true, .stop_after = 1024 * 1024};
    body hang = {.timeout_ms = 300};
    json_t *ans = NULL;

    big.next_sample = UINT64_MAX;
    CU_ASSERT_EQUAL(
        http(NULL, "/v1/products/sales/api/http/big", ALICE, NULL, &big, NULL),
        -1);
    CU_ASSERT(big.bytes >= 1024 * 1024 && big.bytes < (uint64_t)BIG_BYTES);
    CU_ASSERT_EQUAL(http(NULL, "/v1/products/sales/api/http/hang", ALICE, NULL,
                         &hang, NULL),
                    -1);
    free(hang.data);
    sleep_ms(200);
    CU_ASSERT(testenv_proc_alive(sc->proc));
    CU_ASSERT_EQUAL(get_json("/v1/products/sales/api/http/after", ALICE, &ans),
                    201);
    json_decref(ans);
}

/* Last: the sidecar stops cleanly after all of the above (no sanitizer
 * report, no leak: the upstream connections and contexts were freed). */
static void test_clean_exit(void)
{
    char line[1024];
    bool dirty = false;
    int status = sidecarenv_stop(sc, 5000);
    FILE *f = fopen(sc->log_path, "r");

    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    while (fgets(line, sizeof(line), f))
        dirty |= strstr(line, "Sanitizer") != NULL ||
                 strstr(line, "runtime error") != NULL;
    fclose(f);
    CU_ASSERT(!dirty);
    if (dirty || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "\nsidecar exit status %d\n", status);
        sidecarenv_dump_log(sc, 6000);
    }
}

static const test_case cases[] = {
    {"allowed_call_passes", test_allowed_call_passes},
    {"denied", test_denied},
    {"unauthenticated", test_unauthenticated},
    {"not_found", test_not_found},
    {"upstream_down", test_upstream_down},
    {"upstream_hangs", test_upstream_hangs},
    {"upstream_dies_mid_body", test_upstream_dies_mid_body},
    {"big_body_streamed", test_big_body_streamed},
    {"access_records", test_access_records},
    {"bad_upstream_and_big_request", test_bad_upstream_and_big_request},
    {"keep_alive", test_keep_alive},
    {"stale_pooled_connection", test_stale_pooled_connection},
    {"upstream_stalls_mid_body", test_upstream_stalls_mid_body},
    {"client_hangs_up", test_client_hangs_up},
    {"clean_exit", test_clean_exit},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"http_port", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
