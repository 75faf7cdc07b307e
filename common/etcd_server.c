/*
 * etcd_server.c — a local etcd member as a child process (etcd_server.h):
 * fork/exec with descriptor hygiene, readiness through GET /health, stop
 * with SIGTERM then SIGKILL, restart on the same data dir and ports.
 */
#include "common/etcd_server.h"
#include "common/process.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SERVER_MAX_EXTRA_ARGS 32
#define SERVER_MAX_ARGS       (SERVER_MAX_EXTRA_ARGS + 24)
#define SERVER_LOG_TAIL       1536
/* A port picked free may be taken before etcd binds it. */
#define SERVER_PORT_ATTEMPTS 3

struct etcd_server {
    char *binary; /* resolved path */
    char *data_dir;
    char *host;
    char *name;
    char *log_file;
    char *extra[SERVER_MAX_EXTRA_ARGS];
    size_t n_extra;
    int client_port;
    int peer_port;
    bool client_auto; /* picked by us: may be re-picked on a lost race */
    bool peer_auto;
    int start_timeout_ms;
    char endpoint[128];
    pid_t pid;
};

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

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/*
 * fork/exec etcd.  Everything the child needs is prepared before fork, so
 * that the child only calls async-signal-safe functions (the parent may be
 * multi-threaded).  Exec failures come back through a close-on-exec pipe.
 */
static int spawn(etcd_server *s, polis_error *err)
{
    char client_url[160], peer_url[160], cluster[320];
    const char *argv[SERVER_MAX_ARGS];
    size_t argc = 0;
    int pipefd[2];
    pid_t parent = getpid(), pid;
    int child_errno = 0;
    ssize_t n;
    sigset_t all;

    snprintf(client_url, sizeof(client_url), "http://%s:%d", s->host,
             s->client_port);
    snprintf(peer_url, sizeof(peer_url), "http://%s:%d", s->host, s->peer_port);
    snprintf(cluster, sizeof(cluster), "%s=%s", s->name, peer_url);
    argv[argc++] = s->binary;
    argv[argc++] = "--name";
    argv[argc++] = s->name;
    argv[argc++] = "--data-dir";
    argv[argc++] = s->data_dir;
    argv[argc++] = "--listen-client-urls";
    argv[argc++] = client_url;
    argv[argc++] = "--advertise-client-urls";
    argv[argc++] = client_url;
    argv[argc++] = "--listen-peer-urls";
    argv[argc++] = peer_url;
    argv[argc++] = "--initial-advertise-peer-urls";
    argv[argc++] = peer_url;
    argv[argc++] = "--initial-cluster";
    argv[argc++] = cluster;
    for (size_t i = 0; i < s->n_extra; i++)
        argv[argc++] = s->extra[i];
    argv[argc] = NULL;

    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return polis_error_set(err, POLIS_EIO, "etcd server", "pipe: %s",
                               strerror(errno));
    sigfillset(&all);
    pid = fork();
    if (pid < 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        return polis_error_set(err, POLIS_EIO, "etcd server", "fork: %s",
                               strerror(errno));
    }
    if (pid == 0) {
        int fd;
        /* Own process group: a Ctrl-C meant for the parent does not stop
         * etcd behind its back; the parent decides. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        fd = open("/dev/null", O_RDONLY);
        if (fd >= 0 && fd != 0) {
            dup2(fd, 0);
            close(fd);
        }
        fd = s->log_file
                 ? open(s->log_file, O_WRONLY | O_CREAT | O_APPEND, 0644)
                 : open("/dev/null", O_WRONLY);
        if (fd < 0) {
            child_errno = errno;
            n = write(pipefd[1], &child_errno, sizeof(child_errno));
            _exit(126);
        }
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
            close(fd);
        proc_close_fds_from(3, pipefd[1]);
        execv(s->binary, (char *const *)argv);
        child_errno = errno;
        n = write(pipefd[1], &child_errno, sizeof(child_errno));
        (void)n;
        _exit(127);
    }
    close(pipefd[1]);
    do {
        n = read(pipefd[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == (ssize_t)sizeof(child_errno)) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return polis_error_set(err, POLIS_EIO, "etcd server",
                               "cannot run %s (log %s): %s", s->binary,
                               s->log_file ? s->log_file : "none",
                               strerror(child_errno));
    }
    s->pid = pid;
    return POLIS_OK;
}

static size_t discard_body(char *p, size_t size, size_t nmemb, void *ud)
{
    char *buf = ud;
    size_t n = size * nmemb, have = strlen(buf);

    if (have + 1 < 256) {
        size_t take = n < 255 - have ? n : 255 - have;
        memcpy(buf + have, p, take);
        buf[have + take] = '\0';
    }
    return n;
}

/* true when GET /health says {"health":"true"}. */
static bool healthy(CURL *h, const char *endpoint)
{
    char url[200], body[256] = "";
    long status = 0;

    curl_easy_reset(h);
    snprintf(url, sizeof(url), "%s/health", endpoint);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 500L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, (void *)body);
    if (curl_easy_perform(h) != CURLE_OK)
        return false;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    return status == 200 && strstr(body, "\"health\":\"true\"") != NULL;
}

static int reap(etcd_server *s, int options, int *status)
{
    pid_t r;

    do {
        r = waitpid(s->pid, status, options);
    } while (r < 0 && errno == EINTR);
    if (r == s->pid || (r < 0 && errno == ECHILD)) {
        s->pid = -1;
        return 1;
    }
    return 0;
}

static void describe_status(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "ended (status 0x%x)", status);
}

/* Start once and wait for health.  *retry is set when the failure looks
 * like a lost race for an auto-picked port. */
static int start_once(etcd_server *s, bool *retry, polis_error *err)
{
    char tail[SERVER_LOG_TAIL], what[64];
    int64_t deadline;
    CURL *h;
    int rc, status = 0;

    *retry = false;
    snprintf(s->endpoint, sizeof(s->endpoint), "http://%s:%d", s->host,
             s->client_port);
    h = curl_easy_init();
    if (h == NULL)
        return polis_error_set(err, POLIS_ENOMEM, "etcd server",
                               "curl_easy_init failed");
    rc = spawn(s, err);
    if (rc != POLIS_OK) {
        curl_easy_cleanup(h);
        return rc;
    }
    deadline = now_ms() + s->start_timeout_ms;
    for (;;) {
        if (healthy(h, s->endpoint)) {
            curl_easy_cleanup(h);
            return POLIS_OK;
        }
        if (reap(s, WNOHANG, &status)) {
            proc_file_tail(s->log_file, tail, sizeof(tail));
            describe_status(status, what, sizeof(what));
            *retry = (s->client_auto || s->peer_auto) &&
                     strstr(tail, "address already in use");
            curl_easy_cleanup(h);
            return polis_error_set(err, POLIS_EIO, s->endpoint,
                                   "etcd %s before it was ready; log %s "
                                   "ends:\n%s",
                                   what, s->log_file ? s->log_file : "none",
                                   tail);
        }
        if (now_ms() >= deadline)
            break;
        sleep_ms(50);
    }
    curl_easy_cleanup(h);
    etcd_server_stop(s, 1000, NULL, NULL);
    proc_file_tail(s->log_file, tail, sizeof(tail));
    return polis_error_set(err, POLIS_ETIMEDOUT, s->endpoint,
                           "etcd not healthy within %d ms; log %s ends:\n%s",
                           s->start_timeout_ms,
                           s->log_file ? s->log_file : "none", tail);
}

static int start_with_retries(etcd_server *s, bool new_ports, polis_error *err)
{
    int rc = POLIS_OK;
    bool retry = false;

    for (int attempt = 0; attempt < SERVER_PORT_ATTEMPTS; attempt++) {
        if (new_ports) {
            /* Both picked while bound would be distinct; picked one after
             * the other they can coincide, hence the loop. */
            for (int i = 0; i < 8; i++) {
                if (s->client_auto)
                    s->client_port = proc_free_port(s->host);
                if (s->peer_auto)
                    s->peer_port = proc_free_port(s->host);
                if (s->client_port != s->peer_port)
                    break;
            }
            if (s->client_port <= 0 || s->peer_port <= 0 ||
                s->client_port == s->peer_port)
                return polis_error_set(err, POLIS_EIO, "etcd server",
                                       "cannot find free ports on %s", s->host);
        }
        rc = start_once(s, &retry, err);
        /* After a restart the ports are the ones clients know: keep them. */
        if (rc == POLIS_OK || !retry || !new_ports)
            return rc;
    }
    return rc;
}

void etcd_server_free(etcd_server *s)
{
    if (s == NULL)
        return;
    etcd_server_stop(s, 5000, NULL, NULL);
    free(s->binary);
    free(s->data_dir);
    free(s->host);
    free(s->name);
    free(s->log_file);
    for (size_t i = 0; i < s->n_extra; i++)
        free(s->extra[i]);
    free(s);
}

int etcd_server_start(const etcd_server_options *opts, etcd_server **out,
                      polis_error *err)
{
    etcd_server *s;
    const char *bin;
    int rc;

    if (out == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd server", "out is NULL");
    *out = NULL;
    if (opts == NULL || opts->data_dir == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd server",
                               "a data dir is required");
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_result != CURLE_OK)
        return polis_error_set(err, POLIS_EINTERNAL, "etcd server",
                               "curl_global_init failed");
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return polis_error_set(err, POLIS_ENOMEM, "etcd server", NULL);
    s->pid = -1;
    bin = opts->binary ? opts->binary : getenv("POLIS_ETCD_BIN");
    if (bin == NULL || bin[0] == '\0')
        bin = "etcd";
    s->binary = proc_find_on_path(bin);
    if (s->binary == NULL) {
        free(s);
        return polis_error_set(err, POLIS_ENOTFOUND, "etcd server",
                               "\"%s\" not found on PATH (set POLIS_ETCD_BIN)",
                               bin);
    }
    s->data_dir = strdup(opts->data_dir);
    s->host = strdup(opts->host ? opts->host : "127.0.0.1");
    s->name = strdup(opts->name ? opts->name : "polis");
    s->log_file = opts->log_file ? strdup(opts->log_file) : NULL;
    s->client_port = opts->client_port;
    s->peer_port = opts->peer_port;
    s->client_auto = opts->client_port <= 0;
    s->peer_auto = opts->peer_port <= 0;
    s->start_timeout_ms =
        opts->start_timeout_ms > 0 ? opts->start_timeout_ms : 10000;
    if (s->data_dir == NULL || s->host == NULL || s->name == NULL ||
        (opts->log_file && s->log_file == NULL)) {
        etcd_server_free(s);
        return polis_error_set(err, POLIS_ENOMEM, "etcd server", NULL);
    }
    for (size_t i = 0; opts->extra_args && opts->extra_args[i]; i++) {
        if (i == SERVER_MAX_EXTRA_ARGS) {
            etcd_server_free(s);
            return polis_error_set(err, POLIS_EINVAL, "etcd server",
                                   "more than %d extra arguments",
                                   SERVER_MAX_EXTRA_ARGS);
        }
        s->extra[i] = strdup(opts->extra_args[i]);
        if (s->extra[i] == NULL) {
            etcd_server_free(s);
            return polis_error_set(err, POLIS_ENOMEM, "etcd server", NULL);
        }
        s->n_extra = i + 1;
    }
    rc = start_with_retries(s, true, err);
    if (rc != POLIS_OK) {
        etcd_server_free(s);
        return rc;
    }
    *out = s;
    return POLIS_OK;
}

const char *etcd_server_endpoint(const etcd_server *s)
{
    return s ? s->endpoint : NULL;
}

int etcd_server_client_port(const etcd_server *s)
{
    return s ? s->client_port : -1;
}

int etcd_server_peer_port(const etcd_server *s)
{
    return s ? s->peer_port : -1;
}

pid_t etcd_server_pid(const etcd_server *s)
{
    return s ? s->pid : -1;
}

bool etcd_server_alive(etcd_server *s)
{
    if (s == NULL || s->pid <= 0)
        return false;
    return !reap(s, WNOHANG, NULL);
}

int etcd_server_stop(etcd_server *s, int grace_ms, int *exit_status_out,
                     polis_error *err)
{
    int64_t deadline;
    int status = -1;

    if (exit_status_out)
        *exit_status_out = -1;
    if (s == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd server",
                               "server is NULL");
    if (s->pid <= 0)
        return POLIS_OK;
    if (grace_ms <= 0)
        grace_ms = 5000;
    kill(s->pid, SIGTERM);
    deadline = now_ms() + grace_ms;
    while (!reap(s, WNOHANG, &status)) {
        if (now_ms() >= deadline) {
            kill(s->pid, SIGKILL);
            reap(s, 0, &status);
            break;
        }
        sleep_ms(10);
    }
    if (exit_status_out)
        *exit_status_out = status;
    return POLIS_OK;
}

int etcd_server_kill(etcd_server *s, int sig, polis_error *err)
{
    if (s == NULL || s->pid <= 0)
        return polis_error_set(err, POLIS_ENOTFOUND, "etcd server",
                               "etcd is not running");
    if (kill(s->pid, sig) != 0)
        return polis_error_set(err, POLIS_EIO, s->endpoint, "kill %d: %s", sig,
                               strerror(errno));
    return POLIS_OK;
}

int etcd_server_restart(etcd_server *s, polis_error *err)
{
    if (s == NULL)
        return polis_error_set(err, POLIS_EINVAL, "etcd server",
                               "server is NULL");
    etcd_server_stop(s, 5000, NULL, NULL);
    return start_with_retries(s, false, err);
}
