/*
 * testenv.c — the integration-test environment of testenv.h: temp dirs,
 * ports, child processes and a real etcd, all torn down at exit through one
 * registry that the exit and signal handlers walk.
 */
#include "tests/support/testenv.h"
#include "common/process.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define REG_MAX 64

/* Live children and temp dirs.  The pid slots are read by the signal
 * handler, hence volatile and plain ints; 0 marks a free slot. */
static volatile pid_t reg_pids[REG_MAX];
static char *reg_dirs[REG_MAX];
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

struct testenv_proc {
    pid_t pid;
    int slot;
    char *log_path;
};

/* Async-signal-safe.  waitpid first: a pid that is no longer our child
 * (already reaped elsewhere) may belong to someone else by now. */
static void kill_children(void)
{
    for (int i = 0; i < REG_MAX; i++) {
        pid_t pid = reg_pids[i];
        if (pid > 0 && waitpid(pid, NULL, WNOHANG) == 0)
            kill(pid, SIGKILL);
    }
}

static void on_fatal_signal(int sig)
{
    kill_children();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void at_exit_cleanup(void)
{
    const char *keep = getenv("POLIS_TEST_KEEP");

    kill_children();
    for (int i = 0; i < REG_MAX; i++) {
        pid_t pid = reg_pids[i];
        if (pid > 0) {
            waitpid(pid, NULL, 0);
            reg_pids[i] = 0;
        }
    }
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < REG_MAX; i++) {
        if (reg_dirs[i] == NULL)
            continue;
        if (keep && strcmp(keep, "1") == 0)
            fprintf(stderr, "testenv: kept %s\n", reg_dirs[i]);
        else
            testenv_rmrf(reg_dirs[i]);
        free(reg_dirs[i]);
        reg_dirs[i] = NULL;
    }
    pthread_mutex_unlock(&reg_mu);
}

static void reg_init(void)
{
    struct sigaction sa;
    int sigs[] = {SIGINT, SIGTERM, SIGABRT, SIGHUP};

    curl_global_init(CURL_GLOBAL_DEFAULT);
    atexit(at_exit_cleanup);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaction(sigs[i], &sa, NULL);
}

static int reg_add_pid(pid_t pid)
{
    int slot = -1;

    pthread_once(&reg_once, reg_init);
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < REG_MAX; i++) {
        if (reg_pids[i] == 0) {
            reg_pids[i] = pid;
            slot = i;
            break;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return slot;
}

static void reg_set_pid(int slot, pid_t pid)
{
    if (slot >= 0 && slot < REG_MAX)
        reg_pids[slot] = pid > 0 ? pid : 0;
}

static int rmrf_cb(const char *path, const struct stat *st, int flag,
                   struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int testenv_rmrf(const char *path)
{
    struct stat st;

    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    return nftw(path, rmrf_cb, 32, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

const char *testenv_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    char path[512];
    char *dup;
    int slot = -1;

    pthread_once(&reg_once, reg_init);
    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    snprintf(path, sizeof(path), "%s/polis-%s-XXXXXX", base,
             tag ? tag : "test");
    if (mkdtemp(path) == NULL)
        return NULL;
    dup = strdup(path);
    if (dup == NULL)
        return NULL;
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < REG_MAX; i++) {
        if (reg_dirs[i] == NULL) {
            reg_dirs[i] = dup;
            slot = i;
            break;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    if (slot < 0) {
        testenv_rmrf(dup);
        free(dup);
        return NULL;
    }
    return dup;
}

int testenv_free_port(void)
{
    return proc_free_port(NULL);
}

int testenv_refused_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        close(fd);
        return -1;
    }
    /* The descriptor is left open on purpose until exit: a bound socket
     * that does not listen answers connects with a refusal and keeps the
     * port from being bound by anyone else. */
    return ntohs(sa.sin_port);
}

static char **build_env(const char *const env_add[])
{
    size_t n_env = 0, n_add = 0, n = 0;
    char **envp;

    while (environ[n_env])
        n_env++;
    while (env_add && env_add[n_add])
        n_add++;
    envp = calloc(n_env + n_add + 1, sizeof(*envp));
    if (envp == NULL)
        return NULL;
    for (size_t i = 0; i < n_env; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t name_len = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        bool overridden = false;
        for (size_t j = 0; j < n_add; j++) {
            if (strncmp(env_add[j], environ[i], name_len) == 0 &&
                env_add[j][name_len] == '=')
                overridden = true;
        }
        if (!overridden)
            envp[n++] = environ[i];
    }
    for (size_t j = 0; j < n_add; j++)
        envp[n++] = (char *)env_add[j];
    envp[n] = NULL;
    return envp;
}

testenv_proc *testenv_spawn(const char *const argv[],
                            const char *const env_add[], const char *log_path)
{
    testenv_proc *p;
    char *bin;
    char **envp;
    pid_t parent = getpid(), pid;
    int logfd;

    pthread_once(&reg_once, reg_init);
    if (argv == NULL || argv[0] == NULL)
        return NULL;
    bin = proc_find_on_path(argv[0]);
    if (bin == NULL) {
        fprintf(stderr, "testenv: %s not found on PATH\n", argv[0]);
        return NULL;
    }
    envp = build_env(env_add);
    logfd = log_path ? open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                            0644)
                     : open("/dev/null", O_WRONLY | O_CLOEXEC);
    p = calloc(1, sizeof(*p));
    if (envp == NULL || logfd < 0 || p == NULL) {
        fprintf(stderr, "testenv: cannot spawn %s: %s\n", argv[0],
                logfd < 0 ? strerror(errno) : "out of memory");
        if (logfd >= 0)
            close(logfd);
        free(envp);
        free(bin);
        free(p);
        return NULL;
    }
    pid = fork();
    if (pid == 0) {
        sigset_t none;
        int devnull = open("/dev/null", O_RDONLY);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        signal(SIGPIPE, SIG_DFL);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        /* Everything else the test holds is close-on-exec or closed here. */
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
        execve(bin, (char *const *)argv, envp);
        _exit(127);
    }
    close(logfd);
    free(envp);
    free(bin);
    if (pid < 0) {
        fprintf(stderr, "testenv: fork: %s\n", strerror(errno));
        free(p);
        return NULL;
    }
    p->pid = pid;
    p->slot = reg_add_pid(pid);
    p->log_path = log_path ? strdup(log_path) : NULL;
    return p;
}

testenv_proc *testenv_spawn_listening(const char *what,
                                      const char *const argv[],
                                      const char *const env_add[],
                                      const char *log_path, int port,
                                      int timeout_ms)
{
    testenv_proc *p = testenv_spawn(argv, env_add, log_path);

    if (p && testenv_wait_port("127.0.0.1", port, timeout_ms) == 0)
        return p;
    {
        char *tail = log_path ? testenv_file_tail(log_path, 2000) : NULL;
        fprintf(stderr, "\n%s did not listen on port %d:\n%s\n", what, port,
                tail ? tail : "");
        free(tail);
    }
    testenv_proc_stop(p, 1000);
    return NULL;
}

pid_t testenv_proc_pid(const testenv_proc *p)
{
    return p ? p->pid : -1;
}

const char *testenv_proc_log(const testenv_proc *p)
{
    return p ? p->log_path : NULL;
}

bool testenv_proc_alive(testenv_proc *p)
{
    pid_t r;

    if (p == NULL || p->pid <= 0)
        return false;
    r = waitpid(p->pid, NULL, WNOHANG);
    if (r == p->pid || (r < 0 && errno == ECHILD)) {
        reg_set_pid(p->slot, 0);
        p->pid = -1;
        return false;
    }
    return true;
}

static int64_t mono_ms(void);
static void nap_ms(int ms);

/* true once every thread of pid shows as stopped in /proc. */
static bool all_threads_stopped(pid_t pid)
{
    char path[64], line[512];
    struct dirent *de;
    bool stopped = true;
    int seen = 0;
    DIR *d;

    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    if ((d = opendir(path)) == NULL)
        return true; /* gone: nothing left running */
    while (stopped && (de = readdir(d)) != NULL) {
        FILE *f;
        char *paren;

        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%.20s/stat", (int)pid,
                 de->d_name);
        if ((f = fopen(path, "r")) == NULL)
            continue;
        if (fgets(line, sizeof(line), f) &&
            (paren = strrchr(line, ')')) != NULL)
            stopped = paren[1] == ' ' && (paren[2] == 'T' || paren[2] == 't');
        fclose(f);
        seen++;
    }
    closedir(d);
    return stopped && seen > 0;
}

/* SIGSTOP takes effect when each thread next handles signals, which on a
 * loaded machine can be after it served one more request: wait (bounded)
 * until every thread is stopped, as the caller means "frozen now". */
static void wait_stopped(pid_t pid)
{
    int64_t deadline = mono_ms() + 5000;

    while (!all_threads_stopped(pid) && mono_ms() < deadline)
        nap_ms(1);
}

int testenv_proc_kill(testenv_proc *p, int sig)
{
    if (p == NULL || p->pid <= 0)
        return -1;
    if (kill(p->pid, sig) != 0)
        return -1;
    if (sig == SIGSTOP)
        wait_stopped(p->pid);
    return 0;
}

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

int testenv_proc_stop(testenv_proc *p, int grace_ms)
{
    int status = -1;
    int64_t deadline;

    if (p == NULL)
        return -1;
    if (p->pid > 0) {
        kill(p->pid, SIGTERM);
        deadline = mono_ms() + (grace_ms > 0 ? grace_ms : 5000);
        for (;;) {
            pid_t r = waitpid(p->pid, &status, WNOHANG);
            if (r == p->pid || (r < 0 && errno != EINTR))
                break;
            if (mono_ms() >= deadline) {
                kill(p->pid, SIGKILL);
                while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR)
                    ;
                break;
            }
            nap_ms(10);
        }
        reg_set_pid(p->slot, 0);
    }
    free(p->log_path);
    free(p);
    return status;
}

int testenv_wait_port(const char *host, int port, int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    struct sockaddr_in sa;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host ? host : "127.0.0.1", &sa.sin_addr) != 1)
        return -1;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int ok =
            fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        if (fd >= 0)
            close(fd);
        if (ok)
            return 0;
        if (mono_ms() >= deadline)
            return -1;
        nap_ms(20);
    }
}

static size_t ignore_body(char *p, size_t size, size_t nmemb, void *ud)
{
    (void)p;
    (void)ud;
    return size * nmemb;
}

int testenv_wait_http(const char *url, int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    CURL *h;
    int rc = -1;

    pthread_once(&reg_once, reg_init);
    h = curl_easy_init();
    if (h == NULL)
        return -1;
    for (;;) {
        long status = 0;
        curl_easy_reset(h);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 1000L);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, ignore_body);
        if (curl_easy_perform(h) == CURLE_OK &&
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
            status == 200) {
            rc = 0;
            break;
        }
        if (mono_ms() >= deadline)
            break;
        nap_ms(50);
    }
    curl_easy_cleanup(h);
    return rc;
}

char *testenv_file_tail(const char *path, size_t max_bytes)
{
    char *buf = malloc(max_bytes + 1);
    FILE *f;
    long size;
    size_t n;

    if (buf == NULL)
        return NULL;
    buf[0] = '\0';
    f = path ? fopen(path, "rb") : NULL;
    if (f == NULL)
        return buf;
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    if (size > (long)max_bytes)
        fseek(f, size - (long)max_bytes, SEEK_SET);
    else
        fseek(f, 0, SEEK_SET);
    n = fread(buf, 1, max_bytes, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* ---- etcd ---- */

struct testenv_etcd_priv {
    testenv_etcd pub; /* first: the public pointer is this struct's */
    int slot;
};

static void etcd_sync_registry(struct testenv_etcd_priv *e)
{
    pid_t pid = etcd_server_pid(e->pub.server);

    if (e->slot < 0 && pid > 0)
        e->slot = reg_add_pid(pid);
    else
        reg_set_pid(e->slot, pid);
}

testenv_etcd *testenv_etcd_start(const char *const extra_args[])
{
    const char *args[40];
    size_t n = 0;
    char data_dir[600], buf[1024];
    struct testenv_etcd_priv *e;
    etcd_server_options opts = {0};
    polis_error err = {0};

    pthread_once(&reg_once, reg_init);
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->slot = -1;
    e->pub.dir = testenv_tmpdir("etcd");
    if (e->pub.dir == NULL) {
        fprintf(stderr, "testenv: cannot make a temp dir\n");
        free(e);
        return NULL;
    }
    snprintf(data_dir, sizeof(data_dir), "%s/data", e->pub.dir);
    snprintf(e->pub.log_path, sizeof(e->pub.log_path), "%s/etcd.log",
             e->pub.dir);
    args[n++] = "--experimental-watch-progress-notify-interval=1s";
    for (size_t i = 0; extra_args && extra_args[i] && n < 39; i++)
        args[n++] = extra_args[i];
    args[n] = NULL;
    opts.data_dir = data_dir;
    opts.log_file = e->pub.log_path;
    opts.start_timeout_ms = 15000;
    opts.extra_args = args;
    if (etcd_server_start(&opts, &e->pub.server, &err) != POLIS_OK) {
        fprintf(stderr, "testenv: etcd did not start: %s\n",
                polis_error_format(&err, buf, sizeof(buf)));
        free(e);
        return NULL;
    }
    etcd_sync_registry(e);
    snprintf(e->pub.endpoint, sizeof(e->pub.endpoint), "%s",
             etcd_server_endpoint(e->pub.server));
    return &e->pub;
}

void testenv_etcd_stop(testenv_etcd *pub)
{
    struct testenv_etcd_priv *e = (struct testenv_etcd_priv *)pub;

    if (e == NULL)
        return;
    etcd_server_stop(e->pub.server, 5000, NULL, NULL);
    reg_set_pid(e->slot, 0);
    etcd_server_free(e->pub.server);
    free(e);
}

int testenv_etcd_restart(testenv_etcd *pub)
{
    struct testenv_etcd_priv *e = (struct testenv_etcd_priv *)pub;
    polis_error err = {0};
    char buf[1024];
    int rc;

    if (e == NULL)
        return -1;
    rc = etcd_server_restart(e->pub.server, &err);
    etcd_sync_registry(e);
    if (rc != POLIS_OK) {
        fprintf(stderr, "testenv: etcd did not restart: %s\n",
                polis_error_format(&err, buf, sizeof(buf)));
        return -1;
    }
    return 0;
}

int testenv_etcd_kill(testenv_etcd *pub, int sig)
{
    struct testenv_etcd_priv *e = (struct testenv_etcd_priv *)pub;

    if (e == NULL)
        return -1;
    if (etcd_server_kill(e->pub.server, sig, NULL) != POLIS_OK)
        return -1;
    if (sig == SIGSTOP)
        wait_stopped(etcd_server_pid(e->pub.server));
    return 0;
}
