/*
 * cpenv.c — start, wait for and stop a real polis-controlplane for tests
 * (cpenv.h).  Processes and temp dirs go through testenv, so they are
 * cleaned up at exit even when a test fails half-way.
 */
#include "tests/support/cpenv.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_START_TIMEOUT_MS 20000
#define DEFAULT_STOP_GRACE_MS    5000
#define LOG_TAIL_BYTES           4000

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cpenv_dump_log(const cpenv *env, size_t max_bytes)
{
    char *tail;

    if (env == NULL)
        return;
    tail = testenv_file_tail(env->log_path, max_bytes);
    fprintf(stderr, "---- %s (tail) ----\n%s---- end ----\n", env->log_path,
            tail ? tail : "");
    free(tail);
}

typedef struct body_buf {
    char *buf;
    size_t len, used;
} body_buf;

static size_t body_write(char *p, size_t size, size_t nmemb, void *ud)
{
    body_buf *b = ud;
    size_t n = size * nmemb;

    if (b->buf && b->used + 1 < b->len) {
        size_t take = n < b->len - 1 - b->used ? n : b->len - 1 - b->used;
        memcpy(b->buf + b->used, p, take);
        b->used += take;
        b->buf[b->used] = '\0';
    }
    return n;
}

long cpenv_http_get(const char *url, int timeout_ms, char *body,
                    size_t body_len)
{
    CURL *h = curl_easy_init();
    body_buf b = {body, body_len, 0};
    long status = -1;

    if (body && body_len)
        body[0] = '\0';
    if (h == NULL)
        return -1;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, (void *)&b);
    if (curl_easy_perform(h) != CURLE_OK ||
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
        status = -1;
    curl_easy_cleanup(h);
    return status;
}

long cpenv_readyz(const cpenv *env, int timeout_ms)
{
    char url[96];

    snprintf(url, sizeof(url), "%s/readyz", env->admin_url);
    return cpenv_http_get(url, timeout_ms, NULL, 0);
}

rpc_channel *cpenv_channel(const cpenv *env)
{
    rpc_channel *ch = NULL;
    polis_error err = {0};
    char buf[1024];

    if (rpc_channel_new(env->grpc_target, NULL, &ch, &err) != 0) {
        fprintf(stderr, "cpenv: channel to %s: %s\n", env->grpc_target,
                polis_error_format(&err, buf, sizeof(buf)));
        return NULL;
    }
    return ch;
}

/* Spawn with the stored argv and wait until both ports answer. */
static int spawn_and_wait(cpenv *env)
{
    int64_t deadline = mono_ms() + env->start_timeout_ms;
    char url[96];
    int left;

    env->proc = testenv_spawn((const char *const *)env->argv_store,
                              env->env_store, env->log_path);
    if (env->proc == NULL)
        return -1;
    left = (int)(deadline - mono_ms());
    if (testenv_wait_port("127.0.0.1", env->grpc_port, left) != 0) {
        fprintf(stderr,
                "cpenv: the control plane's gRPC port %d did not open "
                "within %d ms%s\n",
                env->grpc_port, env->start_timeout_ms,
                testenv_proc_alive(env->proc) ? "" : " (it exited)");
        goto fail;
    }
    snprintf(url, sizeof(url), "%s/readyz", env->admin_url);
    left = (int)(deadline - mono_ms());
    if (testenv_wait_http(url, left > 0 ? left : 1) != 0) {
        fprintf(stderr, "cpenv: %s did not answer 200 within %d ms\n", url,
                env->start_timeout_ms);
        goto fail;
    }
    return 0;
fail:
    cpenv_dump_log(env, LOG_TAIL_BYTES);
    testenv_proc_stop(env->proc, 1000);
    env->proc = NULL;
    return -1;
}

static void free_argv(cpenv *env)
{
    for (size_t i = 0; i < sizeof(env->argv_store) / sizeof(env->argv_store[0]);
         i++) {
        free(env->argv_store[i]);
        env->argv_store[i] = NULL;
    }
}

/* Build argv into env->argv_store (owned copies); -1 when too many. */
static int build_argv(cpenv *env, const cpenv_options *o)
{
    const size_t max = sizeof(env->argv_store) / sizeof(env->argv_store[0]);
    char flag[1200];
    size_t n = 0;

#define ARG(s)                                                                 \
    do {                                                                       \
        if (n + 1 >= max || (env->argv_store[n++] = strdup(s)) == NULL)        \
            return -1;                                                         \
    } while (0)
    ARG(env->binary);
    snprintf(flag, sizeof(flag), "--listen=127.0.0.1:%d", env->grpc_port);
    ARG(flag);
    snprintf(flag, sizeof(flag), "--admin-listen=127.0.0.1:%d",
             env->admin_port);
    ARG(flag);
    if (env->etcd_endpoints[0]) {
        snprintf(flag, sizeof(flag), "--etcd=%s", env->etcd_endpoints);
        ARG(flag);
    }
    snprintf(flag, sizeof(flag), "--data-dir=%s", env->data_dir);
    ARG(flag);
    for (size_t i = 0; o && o->extra_args && o->extra_args[i]; i++)
        ARG(o->extra_args[i]);
#undef ARG
    env->argv_store[n] = NULL;
    return 0;
}

cpenv *cpenv_start(const cpenv_options *opts)
{
    cpenv_options none = {0};
    const cpenv_options *o = opts ? opts : &none;
    const size_t max_env =
        sizeof(((cpenv *)0)->env_store) / sizeof(((cpenv *)0)->env_store[0]);
    cpenv *env = calloc(1, sizeof(*env));
    const char *dir;
    size_t n_env = 0;

    if (env == NULL)
        return NULL;
    dir = testenv_tmpdir("cp");
    if (dir == NULL) {
        fprintf(stderr, "cpenv: cannot make a temp dir\n");
        free(env);
        return NULL;
    }
    snprintf(env->dir, sizeof(env->dir), "%s", dir);
    snprintf(env->data_dir, sizeof(env->data_dir), "%s/data", dir);
    snprintf(env->log_path, sizeof(env->log_path), "%s/controlplane.log", dir);
    snprintf(env->binary, sizeof(env->binary), "%s",
             o->binary ? o->binary
                       : POLIS_BUILD_DIR "/controlplane/polis-controlplane");
    env->start_timeout_ms = o->start_timeout_ms > 0 ? o->start_timeout_ms
                                                    : DEFAULT_START_TIMEOUT_MS;
    for (size_t i = 0; o->env_add && o->env_add[i] && n_env + 1 < max_env; i++)
        env->env_store[n_env++] = o->env_add[i];
    env->env_store[n_env] = NULL;

    if (!o->embedded_etcd) {
        if (o->etcd_endpoints == NULL) {
            env->etcd = testenv_etcd_start(NULL);
            if (env->etcd == NULL)
                goto fail;
        }
        snprintf(env->etcd_endpoints, sizeof(env->etcd_endpoints), "%s",
                 o->etcd_endpoints ? o->etcd_endpoints : env->etcd->endpoint);
    }
    env->grpc_port = testenv_free_port();
    env->admin_port = testenv_free_port();
    /* Two calls may return the same port when nothing bound in between. */
    for (int i = 0; i < 20 && env->admin_port == env->grpc_port; i++)
        env->admin_port = testenv_free_port();
    if (env->grpc_port <= 0 || env->admin_port <= 0 ||
        env->grpc_port == env->admin_port) {
        fprintf(stderr, "cpenv: no free loopback ports\n");
        goto fail;
    }
    snprintf(env->grpc_target, sizeof(env->grpc_target), "127.0.0.1:%d",
             env->grpc_port);
    snprintf(env->admin_url, sizeof(env->admin_url), "http://127.0.0.1:%d",
             env->admin_port);
    if (access(env->binary, X_OK) != 0) {
        fprintf(stderr,
                "cpenv: %s is missing or not executable (build the "
                "polis-controlplane target first)\n",
                env->binary);
        goto fail;
    }
    if (build_argv(env, o) != 0) {
        fprintf(stderr, "cpenv: too many arguments\n");
        goto fail;
    }
    if (spawn_and_wait(env) != 0)
        goto fail;
    return env;
fail:
    testenv_etcd_stop(env->etcd);
    free_argv(env);
    free(env);
    return NULL;
}

int cpenv_stop_controlplane(cpenv *env, int grace_ms)
{
    int64_t started = mono_ms();
    int status, waited;

    if (env == NULL || env->proc == NULL) {
        fprintf(stderr, "cpenv: the control plane is not running\n");
        return -1;
    }
    if (!testenv_proc_alive(env->proc)) {
        fprintf(stderr, "cpenv: the control plane had already exited\n");
        cpenv_dump_log(env, LOG_TAIL_BYTES);
        testenv_proc_stop(env->proc, 0);
        env->proc = NULL;
        return -1;
    }
    if (grace_ms <= 0)
        grace_ms = DEFAULT_STOP_GRACE_MS;
    /* testenv SIGKILLs after the grace; the elapsed time tells us whether
     * the exit was the control plane's own. */
    status = testenv_proc_stop(env->proc, grace_ms);
    env->proc = NULL;
    waited = (int)(mono_ms() - started);
    if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        fprintf(stderr,
                "cpenv: the control plane did not exit within %d ms of "
                "SIGTERM (killed after %d ms)\n",
                grace_ms, waited);
    else if (status != -1 && WIFEXITED(status))
        fprintf(stderr, "cpenv: the control plane exited with status %d\n",
                WEXITSTATUS(status));
    else if (status != -1 && WIFSIGNALED(status))
        fprintf(stderr, "cpenv: the control plane died of signal %d\n",
                WTERMSIG(status));
    else
        fprintf(stderr, "cpenv: the control plane's exit status is unknown\n");
    cpenv_dump_log(env, LOG_TAIL_BYTES);
    return -1;
}

int cpenv_restart(cpenv *env)
{
    if (env == NULL)
        return -1;
    if (env->proc)
        cpenv_stop_controlplane(env, 0);
    return spawn_and_wait(env);
}

int cpenv_stop(cpenv *env)
{
    int rc = 0;

    if (env == NULL)
        return 0;
    if (env->proc)
        rc = cpenv_stop_controlplane(env, DEFAULT_STOP_GRACE_MS);
    testenv_etcd_stop(env->etcd);
    free_argv(env);
    free(env);
    return rc;
}
