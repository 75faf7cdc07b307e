/*
 * main.c — polis-controlplane: configuration, the embedded etcd (when no
 * --etcd is given), the Governance gRPC service, the admin HTTP endpoints,
 * signal handling and graceful shutdown.
 */
#include "common/admin_http.h"
#include "common/config.h"
#include "common/daemon.h"
#include "common/etcd.h"
#include "common/etcd_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/rpc.h"
#include "controlplane/distribution.h"
#include "controlplane/governance.h"
#include "controlplane/store.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct cp_config {
    char listen[256];
    char admin_listen[256];
    char etcd[2048];
    char etcd_prefix[256];
    char data_dir[1024];
    char log_level[16];
    char log_format[16];
    int etcd_timeout_ms;
    int workers;
    int shutdown_grace_ms;
    int max_documents;
    int debounce_ms;
    int debounce_max_ms;
    int keepalive_ms;
    int access_ttl_s;
    char masking_key_file[1024];
} cp_config;

#define OPT(...) CONFIG_OPT(cp_config, __VA_ARGS__)

static const config_option cp_options[] = {
    OPT("listen", CONFIG_STRING, listen, "127.0.0.1:7400", 0, 0,
        "gRPC address for polisctl and sidecars"),
    OPT("admin-listen", CONFIG_STRING, admin_listen, "127.0.0.1:7401", 0, 0,
        "HTTP address for /healthz, /readyz and /metrics"),
    OPT("etcd", CONFIG_STRING, etcd, "", 0, 0,
        "etcd endpoints, comma-separated URLs; empty: start a private etcd "
        "in --data-dir"),
    OPT("etcd-prefix", CONFIG_STRING, etcd_prefix, "/polis/", 0, 0,
        "key prefix for everything Polis stores in etcd"),
    OPT("etcd-timeout-ms", CONFIG_INT, etcd_timeout_ms, "5000", 100, 600000,
        "timeout of one etcd request"),
    OPT("data-dir", CONFIG_STRING, data_dir, "./polis-data", 0, 0,
        "state directory (the embedded etcd lives in DATA_DIR/etcd)"),
    OPT("workers", CONFIG_INT, workers, "4", 1, 64, "gRPC worker threads"),
    OPT("max-documents", CONFIG_INT, max_documents, "1000", 1, 100000,
        "documents in one apply"),
    OPT("debounce-ms", CONFIG_INT, debounce_ms, "20", 1, 10000,
        "push after this much quiet following a change"),
    OPT("debounce-max-ms", CONFIG_INT, debounce_max_ms, "250", 1, 60000,
        "push at most this long after the first change of a burst"),
    OPT("keepalive-ms", CONFIG_INT, keepalive_ms, "10000", 100, 600000,
        "keepalive period on sidecar streams (3 missed: disconnected)"),
    OPT("access-ttl-s", CONFIG_INT, access_ttl_s, "3600", 60, 30 * 86400,
        "how long access records stay listable (polisctl access)"),
    OPT("masking-key-file", CONFIG_STRING, masking_key_file, "", 0, 0,
        "key of the hash mask; empty: one kept in etcd, made at first "
        "start"),
    OPT("shutdown-grace-ms", CONFIG_INT, shutdown_grace_ms, "2000", 0, 60000,
        "how long live calls may finish on shutdown"),
    OPT("log-level", CONFIG_STRING, log_level, "info", 0, 0,
        "debug, info, warn or error"),
    OPT("log-format", CONFIG_STRING, log_format, "text", 0, 0,
        "text (logfmt) or json"),
};
#define N_OPTIONS (sizeof(cp_options) / sizeof(cp_options[0]))

static void usage(FILE *out)
{
    fprintf(out,
            "usage: polis-controlplane [flags]\n\n"
            "The Polis governance controller: stores policies, domains, "
            "principals and\ndata-product contracts in etcd and serves the "
            "Governance API.\n\nFlags (also POLIS_<FLAG> in the environment, "
            "e.g. POLIS_ETCD_PREFIX):\n");
    config_print_help(out, cp_options, N_OPTIONS);
}

/* Everything the running process holds, torn down in reverse order. */
typedef struct cp_runtime {
    cp_config conf;
    metrics *m;
    etcd_server *embedded;
    etcd_client *etcd;
    etcd_client *probe; /* readiness checks: short timeout */
    cp_store *store;
    cp_governance *gov;
    cp_dist *dist;
    rpc_server *rpc;
    admin_http *admin;
} cp_runtime;

/* /readyz: etcd answers a linearizable read (so it has a quorum) within
 * the probe client's short timeout, so that a hanging etcd cannot hold up
 * /healthz and /metrics behind it on the admin thread. */
static int readiness(void *ud, char *reason, size_t len)
{
    cp_runtime *rt = ud;
    etcd_range_result rr = {0};
    etcd_range_opts o = {.count_only = true};
    polis_error err = {0};
    char key[300], msg[1024];
    int rc;

    snprintf(key, sizeof(key), "%smeta/last-change",
             cp_store_prefix(rt->store));
    rc = etcd_range(rt->probe, key, &o, &rr, &err);
    etcd_range_result_free(&rr);
    if (rc) {
        snprintf(reason, len, "etcd unreachable: %s",
                 polis_error_format(&err, msg, sizeof(msg)));
        return 1;
    }
    return 0;
}

static int start_embedded_etcd(cp_runtime *rt, polis_error *err)
{
    char dir[PATH_MAX], log_file[PATH_MAX];
    etcd_server_options o = {0};
    /* Applies of many documents are one txn: allow large ones.  Keep the
     * MVCC history bounded; Polis keeps its own history keys. */
    static const char *const extra[] = {
        "--max-txn-ops=4096",
        "--max-request-bytes=16777216",
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=100000",
        "--experimental-watch-progress-notify-interval=5s",
        NULL};
    int rc;

    if (mkdir(rt->conf.data_dir, 0700) != 0 && errno != EEXIST)
        return polis_error_set(err, POLIS_EIO, rt->conf.data_dir,
                               "cannot create the data directory: %s",
                               strerror(errno));
    snprintf(dir, sizeof(dir), "%s/etcd", rt->conf.data_dir);
    snprintf(log_file, sizeof(log_file), "%s/etcd.log", rt->conf.data_dir);
    o.data_dir = dir;
    o.log_file = log_file;
    o.start_timeout_ms = 20000;
    o.extra_args = extra;
    rc = etcd_server_start(&o, &rt->embedded, err);
    if (rc)
        return rc;
    snprintf(rt->conf.etcd, sizeof(rt->conf.etcd), "%s",
             etcd_server_endpoint(rt->embedded));
    log_info("embedded etcd started", "endpoint=%s data_dir=%s log=%s",
             rt->conf.etcd, dir, log_file);
    return 0;
}

static int read_key_file(const char *path, unsigned char *key, size_t cap,
                         size_t *len, polis_error *err)
{
    FILE *f = fopen(path, "rb");

    if (f == NULL)
        return polis_error_set(err, POLIS_EIO, path, "cannot open: %s",
                               strerror(errno));
    *len = fread(key, 1, cap, f);
    fclose(f);
    if (*len < 16)
        return polis_error_set(err, POLIS_EINVAL, path,
                               "a masking key needs at least 16 bytes");
    return 0;
}

static int start_distribution(cp_runtime *rt, polis_error *err)
{
    unsigned char key[256];
    size_t key_len = 0;
    char replica[300];
    cp_dist_options o = {0};
    int rc;

    if (rt->conf.masking_key_file[0])
        rc = read_key_file(rt->conf.masking_key_file, key, sizeof(key),
                           &key_len, err);
    else
        rc = cp_store_masking_key(rt->store, key, sizeof(key), &key_len, err);
    if (rc)
        return rc;
    gethostname(replica, 200);
    replica[200] = '\0';
    snprintf(replica + strlen(replica), sizeof(replica) - strlen(replica),
             "/%s", rt->conf.listen);
    o.debounce_ms = rt->conf.debounce_ms;
    o.debounce_max_ms = rt->conf.debounce_max_ms;
    o.keepalive_ms = rt->conf.keepalive_ms;
    o.access_ttl_s = rt->conf.access_ttl_s;
    o.replica = replica;
    o.masking_key = key;
    o.masking_key_len = key_len;
    if ((rc = cp_dist_new(rt->etcd, rt->store, rt->m, &o, &rt->dist, err)))
        return rc;
    return cp_dist_start(rt->dist, err);
}

static int runtime_start(cp_runtime *rt, polis_error *err)
{
    etcd_options eo = {0};
    rpc_server_options so = {0};
    cp_governance_options go = {0};
    int rc;

    rt->m = metrics_new();
    if (rt->m == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    if (rt->conf.etcd[0] == '\0' && (rc = start_embedded_etcd(rt, err)))
        return rc;
    eo.endpoints = rt->conf.etcd;
    eo.timeout_ms = rt->conf.etcd_timeout_ms;
    if ((rc = etcd_client_new(&eo, &rt->etcd, err)))
        return rc;
    eo.timeout_ms = 800;
    eo.connect_timeout_ms = 300;
    if ((rc = etcd_client_new(&eo, &rt->probe, err)))
        return rc;
    if ((rc = cp_store_new(rt->etcd, rt->conf.etcd_prefix, &rt->store, err)))
        return rc;
    go.max_documents = (size_t)rt->conf.max_documents;
    if ((rc = cp_governance_new(rt->store, rt->m, &go, &rt->gov, err)))
        return rc;
    if ((rc = start_distribution(rt, err)))
        return rc;
    so.listen = rt->conf.listen;
    so.worker_threads = rt->conf.workers;
    /* Snapshots of large policy sets exceed gRPC's default 4 MiB. */
    so.max_message_bytes = 64 * 1024 * 1024;
    if ((rc = rpc_server_new(&so, &rt->rpc, err)))
        return rc;
    if ((rc = cp_governance_register(rt->gov, rt->rpc, err)) ||
        (rc = cp_dist_register(rt->dist, rt->rpc, err)))
        return rc;
    if ((rc = rpc_server_start(rt->rpc, err))) {
        polis_error_prefix_where(err, "--listen");
        return rc;
    }
    if ((rc = admin_http_start(rt->conf.admin_listen, rt->m, readiness, rt,
                               &rt->admin, err))) {
        polis_error_prefix_where(err, "--admin-listen");
        return rc;
    }
    log_info("polis-controlplane serving",
             "version=%s grpc_port=%d "
             "admin_port=%d etcd=%s prefix=%s",
             POLIS_VERSION, rpc_server_port(rt->rpc),
             admin_http_port(rt->admin), rt->conf.etcd,
             cp_store_prefix(rt->store));
    return 0;
}

static void runtime_stop(cp_runtime *rt)
{
    if (rt->rpc)
        rpc_server_shutdown(rt->rpc, rt->conf.shutdown_grace_ms);
    admin_http_free(rt->admin);
    rpc_server_free(rt->rpc);
    cp_dist_free(rt->dist);
    cp_governance_free(rt->gov);
    cp_store_free(rt->store);
    etcd_client_free(rt->probe);
    etcd_client_free(rt->etcd);
    if (rt->embedded) {
        etcd_server_stop(rt->embedded, 5000, NULL, NULL);
        etcd_server_free(rt->embedded);
    }
    metrics_free(rt->m);
}

/* Restart the embedded etcd if it died; the data dir keeps every write. */
static void supervise_embedded(cp_runtime *rt)
{
    polis_error err = {0};
    char msg[1024];

    if (rt->embedded == NULL || etcd_server_alive(rt->embedded))
        return;
    log_warn("embedded etcd exited; restarting", NULL);
    if (etcd_server_restart(rt->embedded, &err) != 0)
        log_error("embedded etcd restart failed", "error=\"%s\"",
                  polis_error_format(&err, msg, sizeof(msg)));
    else
        log_info("embedded etcd restarted", "endpoint=%s",
                 etcd_server_endpoint(rt->embedded));
}

int main(int argc, char **argv)
{
    cp_runtime rt = {0};
    polis_error err = {0};
    char msg[1024];
    int rc, sig;
    sigset_t sigs;
    struct timespec tick = {.tv_sec = 1};

    rc = daemon_parse_args("polis-controlplane", cp_options, N_OPTIONS,
                           &rt.conf, argc, argv, usage);
    if (rc != DAEMON_CONTINUE)
        return rc;
    rc = daemon_setup_logging("polis-controlplane", rt.conf.log_level,
                              rt.conf.log_format);
    if (rc != DAEMON_CONTINUE)
        return rc;

    daemon_block_signals(&sigs);

    if (runtime_start(&rt, &err) != 0) {
        log_error("cannot start", "error=\"%s\"",
                  polis_error_format(&err, msg, sizeof(msg)));
        runtime_stop(&rt);
        return 1;
    }
    for (;;) {
        sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGINT || sig == SIGTERM)
            break;
        supervise_embedded(&rt);
    }
    log_info("shutting down", "signal=%s",
             sig == SIGINT ? "SIGINT" : "SIGTERM");
    runtime_stop(&rt);
    log_info("stopped", NULL);
    return 0;
}
