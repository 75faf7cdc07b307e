/*
 * bench_http_proxy.c — the sidecar's HTTP port (sidecar/http_proxy.c) as a
 * reverse proxy against nginx as a reverse proxy, both in front of the same
 * upstream (a second nginx answering a fixed 200-byte body), driven by wrk
 * over loopback keep-alive connections (issue 6, "Benchmarks").
 *
 *   bench_http_proxy                 32 connections, 10 s per target
 *   BENCH_SECONDS=20 BENCH_CONNS=64 bench_http_proxy
 *   BENCH_ROUNDS=2                   rounds of direct, nginx, sidecar runs
 *   BENCH_SIDECAR_WORKERS=1          the sidecar's --http-workers
 *   BENCH_NGINX_ACCESS_LOG=1         the nginx proxy writes an access log
 *   BENCH_NGINX_KEEPALIVE=64         nginx's upstream pool; 0: a connection
 *                                    per request, as the sidecar does
 *
 * Set-up, stated in the output too: etcd, the control plane, polis-sidecar
 * and both nginx are real processes on loopback.  Each nginx runs as one
 * process and one event loop (`master_process off; worker_processes 1`, so
 * it dies with the bench), with keepalive_requests raised so that no side
 * closes client connections; the proxy keeps an upstream keep-alive pool
 * (`keepalive 64`, proxy_http_version 1.1, Connection "") and, unless
 * BENCH_NGINX_ACCESS_LOG=0, writes an access log line per request (the
 * sidecar records every request too).  The sidecar runs --http-workers 1,
 * one event loop like nginx.  wrk runs `-t1 -cN --latency` for
 * BENCH_SECONDS/BENCH_ROUNDS seconds per run, rounds of direct (straight
 * at the upstream), nginx, sidecar, so that machine noise hits all three;
 * requests/s come from the sums over the rounds, p50/p99 are the means of
 * the rounds'.  Every response must be a 2xx: a non-2xx, or more than
 * 0.1% socket errors, makes the run invalid (exit 1).
 *
 * Prints `bench: <name> <value> <unit>`: requests/s of each, the
 * sidecar/nginx ratio (the aim is >= 0.8), p50/p99 latencies, p99 added
 * by each proxy over direct and by the sidecar over nginx, CPU per request
 * of each proxy (steadier than requests/s on a shared machine), and the
 * control plane's CPU while the sidecar ran (it receives the sidecar's
 * access records).
 *
 * Figures (2 shared cores, defaults; scripts/bench.sh http_proxy).  First
 * run: 0.18-0.24 of nginx's requests/s, the sidecar opening and closing an
 * upstream connection per request (~40% of its CPU, and the upstream's
 * accept/close), access records dropped above ~5k requests/s.  Since the
 * per-loop upstream pool, the epoll changelist, no per-request zeroing of a
 * decision or copy of the product, and access records sent as soon as a
 * batch is full: 0.35-0.39 of nginx (nginx 50-57k/s, sidecar 17.5-20k/s),
 * sidecar CPU 34-40 us per request against nginx's 17-19 us, added p99
 * 3.8-4.7 ms over nginx, no access record dropped.  The aim (0.8) is
 * missed: strace shows evhttp making 6 epoll_ctl calls and two extra loop
 * turns per proxied request (it enables and disables reading and writing
 * around each request and writes only after EPOLLOUT), where nginx writes
 * at once and keeps edge-triggered registrations; closing the gap needs
 * HTTP/1.1 handled without evhttp on this path.
 */
#include "common/rpc.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/nginxenv.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/procstat.h"

#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WRK_BIN     "/usr/bin/wrk"
#define TOKEN       "bench-token-0123456789abcdef"
#define DOMAIN      "bench"
#define PRODUCT     "api"
#define REQ_PATH    "/items"
#define MAX_ROUNDS  10
#define START_MS    20000
#define WRK_SLACK_S 20 /* beyond -d before a wrk run counts as hung */

/* The upstream's answer: 200 bytes, the size of a small JSON API reply. */
#define BODY_200                                                               \
    "{\"items\":[{\"id\":1,\"name\":\"alpha\",\"price\":10.5},{\"id\":2,"      \
    "\"name\":\"beta\",\"price\":20.25},{\"id\":3,\"name\":\"gamma\","         \
    "\"price\":30.0}],\"next\":null,\"total\":3,\"note\":\"bench upstream "    \
    "answer padded to two hundred bytes.....\"}"

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    long n;

    if (v == NULL || *v == '\0')
        return def;
    n = strtol(v, NULL, 10);
    return n < lo ? lo : n > hi ? hi : (int)n;
}

static void print_tail(const char *what, const char *path)
{
    char *t = testenv_file_tail(path, 2000);

    fprintf(stderr, "--- %s (%s) ---\n%s\n---\n", what, path, t ? t : "");
    free(t);
}

/* ---- nginx ------------------------------------------------------------- */

/*
 * nginx (nginxenv) serving `server` (the body of a server block) on
 * 127.0.0.1:port, with `http_extra` in the http block and keep-alive
 * raised so that no side closes client connections.  0 once the port
 * accepts, -1 (reason on stderr).
 */
static int nginx_start(nginxenv *n, const char *tmp, const char *name, int port,
                       const char *http_extra, const char *server)
{
    char text[4096];

    snprintf(text, sizeof(text),
             "  keepalive_requests 100000000;\n"
             "  keepalive_timeout 120s;\n"
             "%s"
             "  server {\n"
             "    listen 127.0.0.1:%d;\n"
             "%s"
             "  }\n",
             http_extra, port, server);
    return nginxenv_start(n, tmp, name, text, &port, 1);
}

/* ---- polis ------------------------------------------------------------- */

/* The domain, a product whose http port leads to the upstream, a principal
 * holding TOKEN and a policy letting it call the port. */
static int apply_mesh(rpc_channel *gov, int upstream_port)
{
    char doc[1024];

    if (gc_apply(gov, "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                      "\"metadata\":{\"name\":\"" DOMAIN "\"},\"spec\":{"
                      "\"owners\":[\"bench@example.com\"]}}") < 0)
        return -1;
    snprintf(doc, sizeof(doc),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
             "\"metadata\":{\"name\":\"" PRODUCT "\"},\"spec\":{\"domain\":"
             "\"" DOMAIN "\",\"ports\":[{\"name\":\"api\",\"type\":\"http\","
             "\"upstream\":\"http://127.0.0.1:%d\"}],\"schema\":[{\"name\":"
             "\"id\",\"type\":\"integer\"}]}}",
             upstream_port);
    if (gc_apply(gov, doc) < 0)
        return -1;
    if (gc_apply_principal(gov, "loadgen", "benchers", NULL, TOKEN) < 0)
        return -1;
    if (gc_apply(gov,
                 "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
                 "\"metadata\":{\"name\":\"bench-http\"},\"spec\":{\"scope\":"
                 "\"global\",\"rules\":[{\"name\":\"call\",\"effect\":"
                 "\"allow\",\"subjects\":[\"group:benchers\"],\"resources\":"
                 "[\"" DOMAIN "/*\"],\"ports\":[\"http\"]}]}}") < 0)
        return -1;
    return 0;
}

/* GET url with the bench's token: the status, -1 when no answer. */
static long get_with_token(const char *url)
{
    gc_response r;

    gc_http(NULL, url, TOKEN, NULL, NULL, 3000, &r);
    gc_response_free(&r);
    return r.status;
}

/* ---- wrk --------------------------------------------------------------- */

typedef struct run {
    double rps;            /* wrk's Requests/sec */
    long requests;         /* "N requests in T" */
    double seconds;        /* T */
    double p50_ms, p99_ms; /* latency distribution */
    long non2xx;           /* "Non-2xx or 3xx responses" */
    long sock_errors;      /* connect + read + write + timeout */
    double proxy_cpu_s;    /* the proxy process during the run */
    double upstream_cpu_s; /* the upstream nginx during the run */
    double cp_cpu_s;       /* the control plane during the run */
    double machine_cpu_s;  /* every process on the machine */
} run;

/* "123.45us", "1.20ms", "2.00s", "1.00m" as milliseconds; -1 if none. */
static double to_ms(const char *s)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s)
        return -1;
    if (strncmp(end, "us", 2) == 0)
        return v / 1000.0;
    if (strncmp(end, "ms", 2) == 0)
        return v;
    if (*end == 's')
        return v * 1000.0;
    if (*end == 'm')
        return v * 60000.0;
    if (*end == 'h')
        return v * 3600000.0;
    return -1;
}

/* wrk's --latency report into `r`; 0, or -1 when a figure is missing. */
static int parse_wrk(const char *path, run *r)
{
    FILE *f = fopen(path, "r");
    char line[512], dur[64];
    bool have_rps = false, have_req = false;
    long c, rd, wr, to;

    if (f == NULL)
        return -1;
    r->p50_ms = r->p99_ms = -1;
    while (fgets(line, sizeof(line), f)) {
        char *p = line + strspn(line, " \t");

        if (strncmp(p, "50%", 3) == 0)
            r->p50_ms = to_ms(p + 3 + strspn(p + 3, " \t"));
        else if (strncmp(p, "99%", 3) == 0)
            r->p99_ms = to_ms(p + 3 + strspn(p + 3, " \t"));
        else if (sscanf(p, "Requests/sec: %lf", &r->rps) == 1)
            have_rps = true;
        else if (sscanf(p, "%ld requests in %63[^,]", &r->requests, dur) == 2)
            have_req = (r->seconds = to_ms(dur) / 1000.0) > 0;
        else if (sscanf(p, "Non-2xx or 3xx responses: %ld", &r->non2xx) == 1)
            ;
        else if (sscanf(p,
                        "Socket errors: connect %ld, read %ld, write %ld, "
                        "timeout %ld",
                        &c, &rd, &wr, &to) == 4)
            r->sock_errors = c + rd + wr + to;
    }
    fclose(f);
    return have_rps && have_req && r->p50_ms >= 0 && r->p99_ms >= 0 ? 0 : -1;
}

typedef struct target {
    const char *name; /* "direct", "nginx", "sidecar" */
    char url[256];
    bool token;
    pid_t proxy_pid; /* whose CPU is the proxy's (0: none) */
    run sum;         /* requests, seconds, CPU summed; p50/p99 summed */
    int runs;
} target;

typedef struct bench {
    const char *tmp;
    int conns;
    pid_t upstream_pid, cp_pid;
    int seq;
} bench;

/*
 * One wrk run against t for `seconds`: output to a file of its own,
 * parsed into *r.  Killed when it outlives seconds + WRK_SLACK_S.  0, or
 * -1 (reason and wrk's output on stderr).
 */
static int wrk_run(bench *b, const target *t, int seconds, run *r)
{
    char out[600], conns[32], dur[32];
    const char *argv[16];
    int n = 0;
    double pcpu0, ucpu0, ccpu0, mcpu0;
    testenv_proc *p;
    int64_t deadline;

    memset(r, 0, sizeof(*r));
    snprintf(out, sizeof(out), "%s/wrk-%02d-%s.out", b->tmp, ++b->seq, t->name);
    snprintf(conns, sizeof(conns), "-c%d", b->conns);
    snprintf(dur, sizeof(dur), "-d%ds", seconds);
    argv[n++] = WRK_BIN;
    argv[n++] = "-t1";
    argv[n++] = conns;
    argv[n++] = dur;
    argv[n++] = "--latency";
    argv[n++] = "--timeout";
    argv[n++] = "5s";
    if (t->token) {
        argv[n++] = "-H";
        argv[n++] = "Authorization: Bearer " TOKEN;
    }
    argv[n++] = t->url;
    argv[n] = NULL;
    pcpu0 = ps_cpu_seconds(t->proxy_pid);
    ucpu0 = ps_cpu_seconds(b->upstream_pid);
    ccpu0 = ps_cpu_seconds(b->cp_pid);
    mcpu0 = ps_machine_busy_seconds();
    p = testenv_spawn(argv, NULL, out);
    if (p == NULL)
        return -1;
    deadline = mono_ms() + (int64_t)(seconds + WRK_SLACK_S) * 1000;
    while (testenv_proc_alive(p) && mono_ms() < deadline)
        sleep_ms(50);
    if (testenv_proc_alive(p)) {
        testenv_proc_stop(p, 1000);
        fprintf(stderr, "bench: wrk against %s hung past %d s\n", t->name,
                seconds + WRK_SLACK_S);
        print_tail("wrk output", out);
        return -1;
    }
    testenv_proc_stop(p, 1000);
    if (t->proxy_pid > 0)
        r->proxy_cpu_s = ps_cpu_seconds(t->proxy_pid) - pcpu0;
    r->upstream_cpu_s = ps_cpu_seconds(b->upstream_pid) - ucpu0;
    r->cp_cpu_s = ps_cpu_seconds(b->cp_pid) - ccpu0;
    r->machine_cpu_s = ps_machine_busy_seconds() - mcpu0;
    if (parse_wrk(out, r) != 0) {
        fprintf(stderr, "bench: cannot read wrk's report against %s\n",
                t->name);
        print_tail("wrk output", out);
        return -1;
    }
    return 0;
}

/* A measured run: printed and added to the target's sums.  -1 when the
 * run is invalid (error responses, socket errors, nothing measured). */
static int measure(bench *b, target *t, int seconds, int round)
{
    run r;

    if (wrk_run(b, t, seconds, &r) != 0)
        return -1;
    printf("  round %d %-7s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms  "
           "proxy cpu %5.1f us/req  non-2xx %ld  socket errors %ld\n",
           round, t->name, r.rps, r.p50_ms, r.p99_ms,
           r.requests ? r.proxy_cpu_s * 1e6 / (double)r.requests : 0.0,
           r.non2xx, r.sock_errors);
    fflush(stdout);
    if (r.requests == 0 || r.non2xx > 0 ||
        (double)r.sock_errors > 0.001 * (double)r.requests) {
        fprintf(stderr,
                "bench: INVALID run against %s: %ld requests, %ld non-2xx "
                "responses, %ld socket errors\n",
                t->name, r.requests, r.non2xx, r.sock_errors);
        return -1;
    }
    t->sum.requests += r.requests;
    t->sum.seconds += r.seconds;
    t->sum.p50_ms += r.p50_ms;
    t->sum.p99_ms += r.p99_ms;
    t->sum.non2xx += r.non2xx;
    t->sum.sock_errors += r.sock_errors;
    t->sum.proxy_cpu_s += r.proxy_cpu_s;
    t->sum.upstream_cpu_s += r.upstream_cpu_s;
    t->sum.cp_cpu_s += r.cp_cpu_s;
    t->sum.machine_cpu_s += r.machine_cpu_s;
    t->runs++;
    return 0;
}

static double rps(const target *t)
{
    return t->sum.seconds > 0 ? (double)t->sum.requests / t->sum.seconds : 0;
}

static double p50(const target *t)
{
    return t->runs ? t->sum.p50_ms / t->runs : 0;
}

static double p99(const target *t)
{
    return t->runs ? t->sum.p99_ms / t->runs : 0;
}

static double per_req_us(const target *t, double cpu_s)
{
    return t->sum.requests ? cpu_s * 1e6 / (double)t->sum.requests : 0;
}

int main(int argc, char **argv)
{
    int seconds = env_int("BENCH_SECONDS", 10, 1, 600);
    int conns = env_int("BENCH_CONNS", 32, 1, 10000);
    int rounds = env_int("BENCH_ROUNDS", 2, 1, MAX_ROUNDS);
    int workers = env_int("BENCH_SIDECAR_WORKERS", 1, 1, 64);
    bool nginx_log = env_int("BENCH_NGINX_ACCESS_LOG", 1, 0, 1) == 1;
    int pool = env_int("BENCH_NGINX_KEEPALIVE", 64, 0, 10000);
    int segment = seconds / rounds > 0 ? seconds / rounds : 1;
    const char *tmp;
    nginxenv up = {0}, px = {0};
    int up_port = testenv_free_port(), px_port = testenv_free_port();
    cpenv *cp = NULL;
    rpc_channel *gov = NULL;
    sidecarenv *sc = NULL;
    sidecarenv_options so = {.domain = DOMAIN, .id = "bench-http-sidecar"};
    char workers_arg[16], http_extra[700], server[512], pool_line[64] = "";
    const char *sc_args[] = {"--http-workers", workers_arg, NULL};
    target direct = {.name = "direct"}, ngx = {.name = "nginx"},
           side = {.name = "sidecar", .token = true};
    bench b = {0};
    int64_t until;
    long st = -1;
    double drop = 0, recs = 0;
    int rc = 1;

    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "usage: [BENCH_SECONDS=10] [BENCH_CONNS=32] "
                        "[BENCH_ROUNDS=2] [BENCH_SIDECAR_WORKERS=1] "
                        "[BENCH_NGINX_ACCESS_LOG=0|1] bench_http_proxy\n");
        return 2;
    }
    if (access(NGINXENV_BIN, X_OK) != 0 || access(WRK_BIN, X_OK) != 0) {
        fprintf(stderr,
                "bench: needs %s and %s (scripts/setup.sh installs "
                "nginx-light and wrk)\n",
                NGINXENV_BIN, WRK_BIN);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    tmp = testenv_tmpdir("bench-http");
    if (tmp == NULL) {
        fprintf(stderr, "bench: no temp dir\n");
        goto out;
    }
    b.tmp = tmp;
    b.conns = conns;

    /* 1. The upstream: nginx answering a fixed body, no access log. */
    snprintf(server, sizeof(server),
             "    access_log off;\n"
             "    location / { default_type application/json; "
             "return 200 '%s'; }\n",
             BODY_200);
    if (nginx_start(&up, tmp, "upstream", up_port, "", server) != 0)
        goto out;
    b.upstream_pid = testenv_proc_pid(up.proc);

    /* 2. nginx as the reverse proxy, with an upstream keep-alive pool. */
    if (pool > 0)
        snprintf(pool_line, sizeof(pool_line), "    keepalive %d;\n", pool);
    snprintf(http_extra, sizeof(http_extra),
             "  upstream app {\n"
             "    server 127.0.0.1:%d;\n"
             "%s"
             "    keepalive_requests 100000000;\n"
             "  }\n"
             "  access_log %s%s;\n",
             up_port, pool_line, nginx_log ? tmp : "off",
             nginx_log ? "/access.log" : "");
    if (nginx_start(&px, tmp, "proxy", px_port, http_extra,
                    "    location / {\n"
                    "      proxy_pass http://app;\n"
                    "      proxy_http_version 1.1;\n"
                    "      proxy_set_header Connection \"\";\n"
                    "    }\n") != 0)
        goto out;

    /* 3. etcd, the control plane and the sidecar with the http port. */
    cp = cpenv_start(NULL);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL) {
        fprintf(stderr, "bench: the control plane did not start\n");
        goto out;
    }
    b.cp_pid = testenv_proc_pid(cp->proc);
    if (apply_mesh(gov, up_port) != 0)
        goto out;
    snprintf(workers_arg, sizeof(workers_arg), "%d", workers);
    so.controlplane = cp->grpc_target;
    so.extra_args = sc_args;
    so.wait_ready = true;
    sc = sidecarenv_start(&so);
    if (sc == NULL) {
        fprintf(stderr, "bench: the sidecar did not start\n");
        goto out;
    }

    snprintf(direct.url, sizeof(direct.url), "http://127.0.0.1:%d" REQ_PATH,
             up_port);
    snprintf(ngx.url, sizeof(ngx.url),
             "http://127.0.0.1:%d/v1/products/" DOMAIN "/" PRODUCT
             "/http" REQ_PATH,
             px_port);
    snprintf(side.url, sizeof(side.url),
             "%s/v1/products/" DOMAIN "/" PRODUCT "/http" REQ_PATH,
             sc->http_url);
    ngx.proxy_pid = testenv_proc_pid(px.proc);
    side.proxy_pid = testenv_proc_pid(sc->proc);
    if (testenv_wait_http(direct.url, 5000) != 0 ||
        testenv_wait_http(ngx.url, 5000) != 0) {
        fprintf(stderr, "bench: nginx does not answer 200 (%s, %s)\n",
                direct.url, ngx.url);
        nginxenv_print_logs(&up);
        nginxenv_print_logs(&px);
        goto out;
    }
    /* The product, principal and policy reach the sidecar in a snapshot. */
    until = mono_ms() + START_MS;
    while (mono_ms() < until && (st = get_with_token(side.url)) != 200)
        sleep_ms(100);
    if (st != 200) {
        fprintf(stderr,
                "bench: the sidecar's http port answers %ld, not "
                "200, after %d ms\n",
                st, START_MS);
        goto out;
    }

    printf("settings: wrk -t1 -c%d, %d rounds of %d s per "
           "target; nginx master_process off, worker_processes 1, "
           "proxy upstream keepalive %d, proxy access_log %s; sidecar "
           "--http-workers %d, access records on; upstream nginx return 200 "
           "(%zu-byte body)\n",
           conns, rounds, segment, pool, nginx_log ? "on" : "off", workers,
           strlen(BODY_200));
    fflush(stdout);

    /* Warm-up, not counted: connections, caches, the first allocations. */
    {
        run r;
        if (wrk_run(&b, &ngx, 1, &r) != 0 || wrk_run(&b, &side, 1, &r) != 0)
            goto out;
    }
    for (int i = 1; i <= rounds; i++)
        if (measure(&b, &direct, segment, i) != 0 ||
            measure(&b, &ngx, segment, i) != 0 ||
            measure(&b, &side, segment, i) != 0)
            goto out;

    printf("bench: http_direct_rps %.0f req/s\n", rps(&direct));
    printf("bench: http_nginx_rps %.0f req/s\n", rps(&ngx));
    printf("bench: http_sidecar_rps %.0f req/s\n", rps(&side));
    printf("bench: http_sidecar_vs_nginx_ratio %.3f fraction (aim >= 0.8)\n",
           rps(&side) / rps(&ngx));
    printf("bench: http_direct_p50_ms %.3f ms\n", p50(&direct));
    printf("bench: http_direct_p99_ms %.3f ms\n", p99(&direct));
    printf("bench: http_nginx_p50_ms %.3f ms\n", p50(&ngx));
    printf("bench: http_nginx_p99_ms %.3f ms\n", p99(&ngx));
    printf("bench: http_sidecar_p50_ms %.3f ms\n", p50(&side));
    printf("bench: http_sidecar_p99_ms %.3f ms\n", p99(&side));
    printf("bench: http_added_p99_ms %.3f ms (sidecar - nginx)\n",
           p99(&side) - p99(&ngx));
    printf("bench: http_nginx_added_p99_vs_direct_ms %.3f ms\n",
           p99(&ngx) - p99(&direct));
    printf("bench: http_sidecar_added_p99_vs_direct_ms %.3f ms\n",
           p99(&side) - p99(&direct));
    printf("bench: http_nginx_non2xx %ld responses\n", ngx.sum.non2xx);
    printf("bench: http_sidecar_non2xx %ld responses\n", side.sum.non2xx);
    /* CPU per request holds steadier than req/s when others share the
     * machine, and says where the cores went. */
    printf("bench: http_nginx_cpu_per_req %.1f us\n",
           per_req_us(&ngx, ngx.sum.proxy_cpu_s));
    printf("bench: http_sidecar_cpu_per_req %.1f us\n",
           per_req_us(&side, side.sum.proxy_cpu_s));
    printf("bench: http_upstream_cpu_per_req_via_nginx %.1f us\n",
           per_req_us(&ngx, ngx.sum.upstream_cpu_s));
    printf("bench: http_upstream_cpu_per_req_via_sidecar %.1f us\n",
           per_req_us(&side, side.sum.upstream_cpu_s));
    /* The control plane receives the sidecar's access records. */
    printf("bench: http_controlplane_cpu_during_sidecar %.2f cores\n",
           side.sum.cp_cpu_s / side.sum.seconds);
    printf("bench: http_machine_cpu_during_nginx %.2f cores of %ld\n",
           ngx.sum.machine_cpu_s / ngx.sum.seconds,
           sysconf(_SC_NPROCESSORS_ONLN));
    printf("bench: http_machine_cpu_during_sidecar %.2f cores of %ld\n",
           side.sum.machine_cpu_s / side.sum.seconds,
           sysconf(_SC_NPROCESSORS_ONLN));
    if (sidecarenv_metric(sc, "polis_sidecar_access_records_total", &recs) ==
            0 &&
        sidecarenv_metric(sc,
                          "polis_sidecar_access_dropped_total{reason="
                          "\"memory\"}",
                          &drop) == 0) {
        /* Every run and the warm-up included.  Dropped ones are lost to
         * the audit trail: a cost a user would see. */
        printf("bench: http_sidecar_access_records %.0f records\n", recs);
        printf("bench: http_sidecar_access_dropped %.0f records\n", drop);
    }
    rc = 0;
out:
    if (rc != 0 && sc)
        sidecarenv_dump_log(sc, 3000);
    sidecarenv_free(sc);
    rpc_channel_free(gov);
    cpenv_stop(cp);
    nginxenv_stop(&px, 3000);
    nginxenv_stop(&up, 3000);
    curl_global_cleanup();
    if (rc != 0)
        fprintf(stderr, "bench: http_proxy: no valid measurement\n");
    return rc;
}
