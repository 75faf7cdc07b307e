/*
 * sidecarenv.c — start, wait for, query and stop a real polis-sidecar for
 * tests (sidecarenv.h).  The HTTP calls use libcurl with a timeout each, so
 * a hung sidecar fails a test instead of hanging it.
 */
#include "tests/support/sidecarenv.h"

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_START_TIMEOUT_MS 20000
#define DEFAULT_STOP_GRACE_MS    5000
#define LOG_TAIL_BYTES           4000
#define BODY_MAX                 (1024 * 1024)

static atomic_int sidecar_count;

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

const char *sidecarenv_binary(void)
{
    const char *bin = getenv("POLIS_SIDECAR_BIN");

    return bin && bin[0] ? bin : POLIS_BUILD_DIR "/sidecar/polis-sidecar";
}

void sidecarenv_dump_log(const sidecarenv *s, size_t max_bytes)
{
    char *tail;

    if (s == NULL)
        return;
    tail = testenv_file_tail(s->log_path, max_bytes);
    fprintf(stderr, "---- %s (tail) ----\n%s---- end ----\n", s->log_path,
            tail ? tail : "");
    free(tail);
}

int sidecarenv_log_count(const sidecarenv *s, const char *needle)
{
    char *log = testenv_file_tail(s->log_path, 4 << 20);
    int n = 0;

    for (const char *p = log; p && (p = strcasestr(p, needle)); p++)
        n++;
    free(log);
    return n;
}

int sidecarenv_wait_logged(const sidecarenv *s, const char *needle, int before,
                           int timeout_ms)
{
    struct timespec t0, t;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        if (sidecarenv_log_count(s, needle) > before)
            return 0;
        usleep(20 * 1000);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 +
                 (t.tv_nsec - t0.tv_nsec) / 1000000 <
             timeout_ms);
    fprintf(stderr, "\nthe sidecar never logged \"%s\"\n", needle);
    sidecarenv_dump_log(s, 3000);
    return -1;
}

/* ---- HTTP ---- */

typedef struct body_buf {
    char *buf;
    size_t used;
} body_buf;

static size_t body_write(char *p, size_t size, size_t nmemb, void *ud)
{
    body_buf *b = ud;
    size_t n = size * nmemb;
    char *grown;

    if (b->used + n + 1 > BODY_MAX)
        return 0; /* curl fails the transfer: a bounded body */
    grown = realloc(b->buf, b->used + n + 1);
    if (grown == NULL)
        return 0;
    b->buf = grown;
    memcpy(b->buf + b->used, p, n);
    b->used += n;
    b->buf[b->used] = '\0';
    return n;
}

/* GET (post_body NULL) or POST JSON; the status or -1; *body owned by the
 * caller (may be NULL on return). */
static long http_call(const char *url, const char *post_body, int timeout_ms,
                      char **body)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    body_buf b = {NULL, 0};
    long status = -1;

    *body = NULL;
    if (h == NULL)
        return -1;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, (void *)&b);
    if (post_body) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, post_body);
    }
    if (curl_easy_perform(h) != CURLE_OK ||
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
        status = -1;
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    *body = b.buf;
    return status;
}

long sidecarenv_readyz(const sidecarenv *s, int timeout_ms)
{
    char url[96], *body = NULL;
    long st;

    snprintf(url, sizeof(url), "%s/readyz", s->admin_url);
    st = http_call(url, NULL, timeout_ms, &body);
    free(body);
    return st;
}

int sidecarenv_wait_ready(const sidecarenv *s, int timeout_ms)
{
    int64_t until = mono_ms() + timeout_ms;

    do {
        if (sidecarenv_readyz(s, 1000) == 200)
            return 0;
        nap_ms(50);
    } while (mono_ms() < until);
    return -1;
}

long sidecarenv_check(const sidecarenv *s, const char *req, json_t **answer,
                      int timeout_ms)
{
    char url[96], *body = NULL;
    long st;

    if (answer)
        *answer = NULL;
    snprintf(url, sizeof(url), "%s/v1/check", s->http_url);
    st = http_call(url, req, timeout_ms, &body);
    if (answer && body)
        *answer = json_loads(body, 0, NULL);
    free(body);
    return st;
}

int sidecarenv_metric(const sidecarenv *s, const char *series, double *value)
{
    char url[96], *body = NULL;
    size_t len = strlen(series);
    int rc = -1;

    snprintf(url, sizeof(url), "%s/metrics", s->admin_url);
    if (http_call(url, NULL, 2000, &body) != 200 || body == NULL) {
        free(body);
        return -1;
    }
    for (char *line = body; line && *line;) {
        char *nl = strchr(line, '\n');

        if (nl)
            *nl = '\0';
        if (line[0] != '#' && strncmp(line, series, len) == 0 &&
            line[len] == ' ') {
            *value = strtod(line + len + 1, NULL);
            rc = 0;
            break;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(body);
    return rc;
}

/* ---- processes ---- */

static void free_argv(sidecarenv *s)
{
    for (size_t i = 0; i < sizeof(s->argv_store) / sizeof(s->argv_store[0]);
         i++) {
        free(s->argv_store[i]);
        s->argv_store[i] = NULL;
    }
}

static int build_argv(sidecarenv *s, const sidecarenv_options *o)
{
    const size_t max = sizeof(s->argv_store) / sizeof(s->argv_store[0]);
    char flag[1400];
    size_t n = 0;

#define ARG(...)                                                               \
    do {                                                                       \
        snprintf(flag, sizeof(flag), __VA_ARGS__);                             \
        if (n + 1 >= max || (s->argv_store[n++] = strdup(flag)) == NULL)       \
            return -1;                                                         \
    } while (0)
    ARG("%s", s->binary);
    ARG("--domain=%s", s->domain);
    ARG("--controlplane=%s", o->controlplane);
    ARG("--id=%s", s->id);
    ARG("--state-dir=%s", s->state_dir);
    ARG("--listen=127.0.0.1:%d", s->http_port);
    ARG("--grpc-listen=127.0.0.1:%d", s->grpc_port);
    ARG("--admin-listen=127.0.0.1:%d", s->admin_port);
    if (o->keepalive_ms > 0)
        ARG("--keepalive-ms=%d", o->keepalive_ms);
    for (size_t i = 0; o->extra_args && o->extra_args[i]; i++)
        ARG("%s", o->extra_args[i]);
#undef ARG
    s->argv_store[n] = NULL;
    return 0;
}

static int spawn_and_wait(sidecarenv *s, bool wait_ready)
{
    int64_t deadline = mono_ms() + s->start_timeout_ms;
    char url[96];
    int left;

    s->proc =
        testenv_spawn((const char *const *)s->argv_store, NULL, s->log_path);
    if (s->proc == NULL)
        return -1;
    snprintf(url, sizeof(url), "%s/healthz", s->admin_url);
    if (testenv_wait_http(url, s->start_timeout_ms) != 0) {
        fprintf(stderr, "sidecarenv: %s did not answer 200 within %d ms%s\n",
                url, s->start_timeout_ms,
                testenv_proc_alive(s->proc) ? "" : " (it exited)");
        goto fail;
    }
    left = (int)(deadline - mono_ms());
    if (wait_ready && sidecarenv_wait_ready(s, left > 0 ? left : 1) != 0) {
        fprintf(stderr,
                "sidecarenv: sidecar %s was not ready (/readyz 200) within "
                "%d ms\n",
                s->id, s->start_timeout_ms);
        goto fail;
    }
    return 0;
fail:
    sidecarenv_dump_log(s, LOG_TAIL_BYTES);
    testenv_proc_stop(s->proc, 1000);
    s->proc = NULL;
    return -1;
}

static int distinct_ports(int out[3])
{
    for (int i = 0; i < 3; i++) {
        int tries = 0;

        do {
            out[i] = testenv_free_port();
        } while (out[i] > 0 && ++tries < 20 &&
                 ((i > 0 && out[i] == out[0]) || (i > 1 && out[i] == out[1])));
        if (out[i] <= 0 || (i > 0 && out[i] == out[0]) ||
            (i > 1 && out[i] == out[1]))
            return -1;
    }
    return 0;
}

sidecarenv *sidecarenv_start(const sidecarenv_options *o)
{
    sidecarenv *s;
    const char *dir;
    int ports[3];

    if (o == NULL || o->domain == NULL || o->controlplane == NULL) {
        fprintf(stderr, "sidecarenv: domain and controlplane are required\n");
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    dir = testenv_tmpdir("sidecar");
    if (dir == NULL) {
        fprintf(stderr, "sidecarenv: cannot make a temp dir\n");
        free(s);
        return NULL;
    }
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    snprintf(s->domain, sizeof(s->domain), "%s", o->domain);
    if (o->id)
        snprintf(s->id, sizeof(s->id), "%s", o->id);
    else
        snprintf(s->id, sizeof(s->id), "%s-sidecar-%d", o->domain,
                 atomic_fetch_add(&sidecar_count, 1) + 1);
    snprintf(s->state_dir, sizeof(s->state_dir), "%s",
             o->state_dir ? o->state_dir : "");
    if (o->state_dir == NULL)
        snprintf(s->state_dir, sizeof(s->state_dir), "%s/state", dir);
    snprintf(s->log_path, sizeof(s->log_path), "%s/sidecar.log", dir);
    snprintf(s->binary, sizeof(s->binary), "%s",
             o->binary ? o->binary : sidecarenv_binary());
    s->start_timeout_ms = o->start_timeout_ms > 0 ? o->start_timeout_ms
                                                  : DEFAULT_START_TIMEOUT_MS;
    if (access(s->binary, X_OK) != 0) {
        fprintf(stderr,
                "sidecarenv: %s is missing or not executable (build the "
                "polis-sidecar target first)\n",
                s->binary);
        goto fail;
    }
    if (distinct_ports(ports) != 0) {
        fprintf(stderr, "sidecarenv: no free loopback ports\n");
        goto fail;
    }
    s->http_port = ports[0];
    s->grpc_port = ports[1];
    s->admin_port = ports[2];
    snprintf(s->http_url, sizeof(s->http_url), "http://127.0.0.1:%d",
             s->http_port);
    snprintf(s->grpc_target, sizeof(s->grpc_target), "127.0.0.1:%d",
             s->grpc_port);
    snprintf(s->admin_url, sizeof(s->admin_url), "http://127.0.0.1:%d",
             s->admin_port);
    if (build_argv(s, o) != 0) {
        fprintf(stderr, "sidecarenv: too many arguments\n");
        goto fail;
    }
    if (spawn_and_wait(s, o->wait_ready) != 0)
        goto fail;
    return s;
fail:
    free_argv(s);
    free(s);
    return NULL;
}

int sidecarenv_stop(sidecarenv *s, int grace_ms)
{
    int status;

    if (s == NULL || s->proc == NULL)
        return -1;
    status = testenv_proc_stop(s->proc,
                               grace_ms > 0 ? grace_ms : DEFAULT_STOP_GRACE_MS);
    s->proc = NULL;
    return status;
}

int sidecarenv_kill(sidecarenv *s, int sig)
{
    if (s == NULL || s->proc == NULL)
        return -1;
    return testenv_proc_kill(s->proc, sig);
}

int sidecarenv_restart(sidecarenv *s, bool wait_ready)
{
    if (s == NULL)
        return -1;
    if (s->proc)
        sidecarenv_stop(s, 0);
    return spawn_and_wait(s, wait_ready);
}

void sidecarenv_free(sidecarenv *s)
{
    if (s == NULL)
        return;
    if (s->proc)
        sidecarenv_stop(s, 0);
    free_argv(s);
    free(s);
}
