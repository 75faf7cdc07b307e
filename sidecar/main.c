/*
 * main.c — polis-sidecar: configuration, the snapshot restored from the
 * state dir, the subscriber thread (Distribution.Subscribe), the Check API
 * on HTTP (--listen) and gRPC (--grpc-listen), the admin endpoints, signal
 * handling and graceful shutdown.  docs/sidecar.md is the user's guide.
 */
#include "common/admin_http.h"
#include "common/config.h"
#include "common/daemon.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/rpc.h"
#include "sidecar/access_log.h"
#include "sidecar/authorizer.h"
#include "sidecar/checker.h"
#include "sidecar/event_port.h"
#include "sidecar/http_api.h"
#include "sidecar/http_proxy.h"
#include "sidecar/mqtt_bridge.h"
#include "sidecar/ports.h"
#include "sidecar/snapshot.h"
#include "sidecar/subscriber.h"

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct sc_config {
    char domain[64];
    char controlplane[2048];
    char id[256];
    char state_dir[1024];
    char listen[256];
    char grpc_listen[256];
    char admin_listen[256];
    int keepalive_ms;
    int grpc_workers;
    int http_workers;
    char data_root[1024];
    int query_timeout_ms;
    int query_max_rows;
    int query_max_mb;
    int write_timeout_ms;
    int proxy_timeout_ms;
    char upstream_ca_file[1024];
    int event_retention_hours;
    int event_retention_mb;
    int event_fsync_interval_ms;
    int mqtt_reconnect_max_ms;
    char mqtt_ca_file[1024];
    char mqtt_cert_file[1024];
    char mqtt_key_file[1024];
    char mqtt_credentials_dir[1024];
    int event_max_consumers;
    int shutdown_grace_ms;
    char log_level[16];
    char log_format[16];
} sc_config;

#define OPT(...) CONFIG_OPT(sc_config, __VA_ARGS__)

static const config_option sc_options[] = {
    OPT("domain", CONFIG_STRING, domain, "", 0, 0,
        "the domain this sidecar serves (required)"),
    OPT("controlplane", CONFIG_STRING, controlplane, "127.0.0.1:7400", 0, 0,
        "control-plane gRPC addresses, comma-separated, tried in turn"),
    OPT("id", CONFIG_STRING, id, "", 0, 0,
        "sidecar id reported to the control plane; empty: "
        "<hostname>-<domain>"),
    OPT("state-dir", CONFIG_STRING, state_dir, "", 0, 0,
        "where the last good snapshot is kept; empty: "
        "./polis-sidecar-<domain>"),
    OPT("listen", CONFIG_STRING, listen, "127.0.0.1:7480", 0, 0,
        "HTTP address of the Check API (POST /v1/check) and the product "
        "ports (/v1/products/...)"),
    OPT("grpc-listen", CONFIG_STRING, grpc_listen, "127.0.0.1:7482", 0, 0,
        "gRPC address of polis.v1.Authorizer/Check"),
    OPT("admin-listen", CONFIG_STRING, admin_listen, "127.0.0.1:7481", 0, 0,
        "HTTP address for /healthz, /readyz and /metrics"),
    OPT("keepalive-ms", CONFIG_INT, keepalive_ms, "10000", 100, 600000,
        "keepalive period on the control-plane stream (3 missed: "
        "reconnect)"),
    OPT("grpc-workers", CONFIG_INT, grpc_workers, "1", 1, 64,
        "gRPC worker threads answering Authorizer.Check"),
    OPT("http-workers", CONFIG_INT, http_workers, "4", 1, SC_HTTP_MAX_WORKERS,
        "HTTP event loops (threads) on --listen; a query occupies one "
        "while it runs"),
    OPT("data-root", CONFIG_STRING, data_root, "", 0, 0,
        "where relative port paths (database, directory) start; empty: "
        "the working directory"),
    OPT("query-timeout-ms", CONFIG_INT, query_timeout_ms, "10000", 10, 3600000,
        "wall-clock limit of one query, result streaming included"),
    OPT("query-max-rows", CONFIG_INT, query_max_rows, "100000", 1, 100000000,
        "rows of one query result; more: truncated"),
    OPT("query-max-mb", CONFIG_INT, query_max_mb, "64", 1, 65536,
        "MiB of values in one query result; more: truncated"),
    OPT("write-timeout-ms", CONFIG_INT, write_timeout_ms, "30000", 100, 3600000,
        "a consumer that takes nothing of a result for this long is cut "
        "off"),
    OPT("proxy-timeout-ms", CONFIG_INT, proxy_timeout_ms, "30000", 10, 3600000,
        "HTTP ports: an upstream that says nothing this long (connect, "
        "between reads) is a 504"),
    OPT("upstream-ca-file", CONFIG_STRING, upstream_ca_file, "", 0, 0,
        "HTTP ports: CA bundle (PEM) that verifies https upstreams; empty: "
        "the system's (or $SSL_CERT_FILE)"),
    OPT("event-retention-hours", CONFIG_INT, event_retention_hours, "168", 1,
        87600, "event ports without retentionHours keep events this long"),
    OPT("event-retention-mb", CONFIG_INT, event_retention_mb, "1024", 1,
        1048576, "event ports without retentionBytes keep this many MiB"),
    OPT("event-fsync-interval-ms", CONFIG_INT, event_fsync_interval_ms, "0", 0,
        10000,
        "event ports with fsync batch: at most one fsync per interval (0: "
        "as soon as events wait; more: fewer fsyncs, slower acks)"),
    OPT("event-max-consumers", CONFIG_INT, event_max_consumers, "10000", 1,
        1000000,
        "event streams (SSE subscribers) served at once; more: 503 "
        "(each costs ~10 KiB and a descriptor)"),
    OPT("mqtt-reconnect-max-ms", CONFIG_INT, mqtt_reconnect_max_ms, "10000",
        100, 600000,
        "event ports' MQTT bridges: the longest wait between reconnects "
        "(the backoff doubles from 250 ms up to this)"),
    OPT("mqtt-ca-file", CONFIG_STRING, mqtt_ca_file, "", 0, 0,
        "CA bundle (PEM) that verifies mqtts:// brokers; empty: OpenSSL's "
        "default ($SSL_CERT_FILE, else the system bundle)"),
    OPT("mqtt-cert-file", CONFIG_STRING, mqtt_cert_file, "", 0, 0,
        "client certificate (PEM) for mqtts:// brokers that require one "
        "(mutual TLS; with --mqtt-key-file)"),
    OPT("mqtt-key-file", CONFIG_STRING, mqtt_key_file, "", 0, 0,
        "the client certificate's private key (PEM, unencrypted)"),
    OPT("mqtt-credentials-dir", CONFIG_STRING, mqtt_credentials_dir, "", 0, 0,
        "directory of MQTT logins: an mqtt setting's `credentials: NAME` "
        "is the file DIR/NAME holding username:password, read at every "
        "connect"),
    OPT("shutdown-grace-ms", CONFIG_INT, shutdown_grace_ms, "2000", 0, 60000,
        "how long live calls may finish on shutdown"),
    OPT("log-level", CONFIG_STRING, log_level, "info", 0, 0,
        "debug, info, warn or error"),
    OPT("log-format", CONFIG_STRING, log_format, "text", 0, 0,
        "text (logfmt) or json"),
};
#define N_OPTIONS (sizeof(sc_options) / sizeof(sc_options[0]))

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: polis-sidecar --domain DOMAIN [flags]\n\n"
        "The Polis sidecar: subscribes to its domain's snapshot from the "
        "control plane,\nkeeps the last good one on disk and answers "
        "access checks (HTTP POST /v1/check,\ngRPC "
        "polis.v1.Authorizer/Check) and serves its data products' query, "
        "file,\nevent and HTTP ports (HTTP /v1/products/...).\n\nFlags (also "
        "POLIS_<FLAG> in the "
        "environment, e.g. POLIS_DOMAIN):\n");
    config_print_help(out, sc_options, N_OPTIONS);
}

/* Everything the running process holds, torn down in reverse order. */
typedef struct sc_runtime {
    sc_config conf;
    metrics *m;
    sc_snapshot_slot *slot;
    sc_checker *checker;
    sc_ports *ports;
    sc_access_log *access;
    sc_events *events;
    sc_bridges *bridges;
    sc_subscriber *sub;
    rpc_server *rpc;
    sc_http *http;
    SSL_CTX *upstream_tls; /* the HTTP ports' https upstreams */
    admin_http *admin;
} sc_runtime;

/* /readyz: a snapshot is in force (connected or not: it still enforces). */
static int readiness(void *ud, char *reason, size_t len)
{
    sc_runtime *rt = ud;
    sc_snapshot *s = sc_snapshot_slot_get(rt->slot);

    if (s == NULL) {
        snprintf(reason, len, "no snapshot yet: denying every request");
        return 1;
    }
    sc_snapshot_unref(s);
    return 0;
}

static void on_report(void *ud, const sc_subscriber_report *r)
{
    (void)ud;
    switch (r->event) {
    case SC_SUB_CONNECTED:
        log_info("connected to the control plane", "endpoint=%s", r->endpoint);
        break;
    case SC_SUB_DISCONNECTED:
        log_warn("control-plane stream lost; enforcing the snapshot in force",
                 "endpoint=%s reason=\"%s\"", r->endpoint, r->detail);
        break;
    case SC_SUB_APPLIED:
        log_info("snapshot applied",
                 "revision=%" PRId64 " digest=%.12s endpoint=%s", r->revision,
                 r->digest, r->endpoint);
        break;
    case SC_SUB_REJECTED:
        log_error("snapshot rejected (NACK); keeping the previous one",
                  "revision=%" PRId64 " digest=%.12s error=\"%s\"", r->revision,
                  r->digest, r->detail);
        break;
    case SC_SUB_SAVE_FAILED:
        log_error("snapshot in force but not saved to disk",
                  "revision=%" PRId64 " error=\"%s\"", r->revision, r->detail);
        break;
    }
}

static void restore(sc_runtime *rt)
{
    polis_error err = {0};
    char msg[1024];
    sc_snapshot *s;

    if (sc_subscriber_restore(rt->sub, &err) != 0) {
        if (err.code == POLIS_ENOTFOUND)
            log_info("no saved snapshot; denying every request until the "
                     "control plane sends one",
                     "state_dir=%s", rt->conf.state_dir);
        else
            log_error("saved snapshot ignored", "state_dir=%s error=\"%s\"",
                      rt->conf.state_dir,
                      polis_error_format(&err, msg, sizeof(msg)));
        return;
    }
    s = sc_snapshot_slot_get(rt->slot);
    log_info("saved snapshot restored",
             "revision=%" PRId64 " digest=%.12s resources=%zu",
             sc_snapshot_revision(s), sc_snapshot_digest(s),
             sc_snapshot_resource_count(s));
    sc_snapshot_unref(s);
}

static int runtime_start(sc_runtime *rt, polis_error *err)
{
    sc_subscriber_options so = {0};
    sc_access_log_options ao = {0};
    sc_http_options ho = {0};
    sc_events_options eo = {0};
    sc_bridges_options bo = {0};
    rpc_server_options ro = {0};
    char events_dir[sizeof(rt->conf.state_dir) + 8];
    int rc;

    rt->m = metrics_new();
    rt->slot = sc_snapshot_slot_new();
    if (rt->m == NULL || rt->slot == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    if ((rc = sc_checker_new(rt->conf.domain, rt->slot, rt->m, &rt->checker,
                             err)))
        return rc;
    so.endpoints = rt->conf.controlplane;
    so.id = rt->conf.id;
    so.domain = rt->conf.domain;
    so.address = rt->conf.listen;
    so.state_dir = rt->conf.state_dir;
    so.keepalive_ms = rt->conf.keepalive_ms;
    so.report = on_report;
    ao.state_dir = rt->conf.state_dir;
    ao.metrics = rt->m;
    if ((rc = sc_access_log_new(&ao, &rt->access, err)) ||
        (rc = sc_ports_new(rt->conf.domain, rt->conf.state_dir,
                           rt->conf.data_root, &rt->ports, err)))
        return rc;
    so.access_log = rt->access;
    snprintf(events_dir, sizeof(events_dir), "%s/events", rt->conf.state_dir);
    eo.dir = events_dir;
    eo.retention_bytes = (uint64_t)rt->conf.event_retention_mb * 1024 * 1024;
    eo.retention_ms = (int64_t)rt->conf.event_retention_hours * 3600 * 1000;
    eo.batch_interval_ms = (unsigned)rt->conf.event_fsync_interval_ms;
    eo.metrics = rt->m;
    if ((rc = sc_events_new(&eo, &rt->events, err)))
        return rc;
    if ((rc = sc_subscriber_new(&so, rt->slot, rt->m, &rt->sub, err)))
        return rc;
    restore(rt);

    ro.listen = rt->conf.grpc_listen;
    ro.worker_threads = rt->conf.grpc_workers;
    if ((rc = rpc_server_new(&ro, &rt->rpc, err)) ||
        (rc = sc_authorizer_register(rt->rpc, rt->checker, err)))
        return rc;
    if ((rc = rpc_server_start(rt->rpc, err))) {
        polis_error_prefix_where(err, "--grpc-listen");
        return rc;
    }
    ho.listen = rt->conf.listen;
    ho.workers = rt->conf.http_workers;
    ho.domain = rt->conf.domain;
    ho.checker = rt->checker;
    ho.slot = rt->slot;
    ho.ports = rt->ports;
    ho.access = rt->access;
    ho.query.timeout_ms = rt->conf.query_timeout_ms;
    ho.query.max_rows = (uint64_t)rt->conf.query_max_rows;
    ho.query.max_bytes = (uint64_t)rt->conf.query_max_mb * 1024 * 1024;
    ho.write_timeout_ms = rt->conf.write_timeout_ms;
    ho.proxy_timeout_ms = rt->conf.proxy_timeout_ms;
    if ((rc = hp_tls_new(rt->conf.upstream_ca_file, &rt->upstream_tls, err))) {
        polis_error_prefix_where(err, "--upstream-ca-file");
        return rc;
    }
    ho.upstream_tls = rt->upstream_tls;
    ho.events = rt->events;
    ho.max_consumers = rt->conf.event_max_consumers;
    ho.metrics = rt->m;
    if ((rc = sc_http_start(&ho, &rt->http, err))) {
        polis_error_prefix_where(err, "--listen");
        return rc;
    }
    if ((rc = admin_http_start(rt->conf.admin_listen, rt->m, readiness, rt,
                               &rt->admin, err))) {
        polis_error_prefix_where(err, "--admin-listen");
        return rc;
    }
    bo.domain = rt->conf.domain;
    bo.id = rt->conf.id;
    bo.state_dir = rt->conf.state_dir;
    bo.slot = rt->slot;
    bo.ports = rt->ports;
    bo.events = rt->events;
    bo.reconnect_max_ms = rt->conf.mqtt_reconnect_max_ms;
    bo.ca_file = rt->conf.mqtt_ca_file;
    bo.cert_file = rt->conf.mqtt_cert_file;
    bo.key_file = rt->conf.mqtt_key_file;
    bo.credentials_dir = rt->conf.mqtt_credentials_dir;
    if ((rc = sc_bridges_start(&bo, &rt->bridges, err)))
        return rc;
    if ((rc = sc_subscriber_start(rt->sub, err)))
        return rc;
    log_info("polis-sidecar serving",
             "version=%s id=%s domain=%s controlplane=%s http_port=%d "
             "grpc_port=%d admin_port=%d state_dir=%s",
             POLIS_VERSION, rt->conf.id, rt->conf.domain, rt->conf.controlplane,
             sc_http_port(rt->http), rpc_server_port(rt->rpc),
             admin_http_port(rt->admin), rt->conf.state_dir);
    return 0;
}

static void runtime_stop(sc_runtime *rt)
{
    /* Stop taking work first, then the threads that feed the checker. */
    if (rt->rpc)
        rpc_server_shutdown(rt->rpc, rt->conf.shutdown_grace_ms);
    /* Wakes publishers waiting for an fsync and the bridges' readers. */
    sc_events_shutdown(rt->events);
    /* The bridges read the logs and the catalogue: before both go. */
    sc_bridges_free(rt->bridges);
    sc_http_free(rt->http);
    SSL_CTX_free(rt->upstream_tls);
    sc_events_free(rt->events);
    /* After the ports (no more records), before the log it drains. */
    sc_subscriber_free(rt->sub);
    sc_access_log_free(rt->access);
    sc_ports_free(rt->ports);
    admin_http_free(rt->admin);
    rpc_server_free(rt->rpc);
    sc_checker_free(rt->checker);
    sc_snapshot_slot_free(rt->slot);
    metrics_free(rt->m);
}

/* Defaults that depend on other options. */
static int finish_config(sc_config *c)
{
    char host[200];

    if (c->domain[0] == '\0') {
        fprintf(stderr, "polis-sidecar: --domain is required (or "
                        "POLIS_DOMAIN)\nTry 'polis-sidecar --help'.\n");
        return -1;
    }
    if (c->id[0] == '\0') {
        if (gethostname(host, sizeof(host)) != 0)
            snprintf(host, sizeof(host), "sidecar");
        host[sizeof(host) - 1] = '\0';
        snprintf(c->id, sizeof(c->id), "%s-%s", host, c->domain);
    }
    if (c->state_dir[0] == '\0')
        snprintf(c->state_dir, sizeof(c->state_dir), "./polis-sidecar-%s",
                 c->domain);
    return 0;
}

int main(int argc, char **argv)
{
    sc_runtime rt = {0};
    polis_error err = {0};
    char msg[1024];
    int rc, sig;
    sigset_t sigs;

    rc = daemon_parse_args("polis-sidecar", sc_options, N_OPTIONS, &rt.conf,
                           argc, argv, usage);
    if (rc != DAEMON_CONTINUE)
        return rc;
    if (finish_config(&rt.conf) != 0)
        return 2;
    rc = daemon_setup_logging("polis-sidecar", rt.conf.log_level,
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
    do
        sig = sigwaitinfo(&sigs, NULL);
    while (sig != SIGINT && sig != SIGTERM);
    log_info("shutting down", "signal=%s",
             sig == SIGINT ? "SIGINT" : "SIGTERM");
    runtime_stop(&rt);
    log_info("stopped", NULL);
    return 0;
}
