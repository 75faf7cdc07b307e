/*
 * mqtt_bridge.c — the MQTT bridges of the event ports (mqtt_bridge.h): a
 * manager thread follows the snapshot in force and keeps one bridge thread
 * per bridged port; each bridge drives its own libmosquitto client (no
 * library thread), reads the port's log from its acknowledged offset and
 * publishes the audience's governed view; TLS and the login are set up
 * afresh for every connection.  docs/internals/mqtt_bridge.md.
 */
#include "sidecar/mqtt_bridge.h"

#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <mosquitto.h>
#include <openssl/x509.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* Messages published and not yet acknowledged, and their payload bytes (at
 * least one message always goes, whatever its size). */
#define WINDOW_MAX       256
#define WINDOW_BYTES_MAX (8u * 1024 * 1024)
/* Bridges one sidecar runs at most (a domain has a handful of ports). */
#define BRIDGES_MAX 64
/* How often the manager looks at the snapshot in force. */
#define MANAGER_TICK_MS 300
/* The acknowledged offset is saved at most this often, or every SAVE_ACKS
 * records, and when the bridge stops. */
#define SAVE_INTERVAL_MS 100
#define SAVE_ACKS        256
/* A connection not accepted (CONNACK) in this time is dropped and retried. */
#define CONNECT_TIMEOUT_MS 10000
#define KEEPALIVE_S        30
/* First reconnect delay; doubles per failed attempt up to the cap. */
#define BACKOFF_MIN_MS 250
/* On stop, wait this long for the acknowledgements of what is in flight. */
#define FLUSH_MS 500
/* A credentials file is one short line; anything longer is not one. */
#define CREDENTIALS_MAX 1024
/* The envelope around a governed event:
 * {"offset":N,"product":"domain/name","event":...} */
#define ENVELOPE_EXTRA (64 + 2 * 64)

typedef struct inflight {
    uint64_t offset;
    int mid;    /* QoS 1: the message id the PUBACK names */
    bool done;  /* acknowledged, filtered out or skipped */
    size_t len; /* payload bytes */
} inflight;

typedef enum view_state {
    VIEW_NONE = 0, /* no snapshot, or the view could not be built: wait */
    VIEW_OK,       /* events are governed and published */
    VIEW_DENIED,   /* the audience may not read: events are skipped */
} view_state;

typedef struct bridge {
    sc_bridges *set;
    /* What it bridges; fixed for the bridge's life. */
    char key[200];     /* "domain/product/port", for logs */
    char product[140]; /* "domain/product" */
    char port_name[64];
    json_t *port_doc; /* owned copy */
    char *settings;   /* the mqtt setting, compact with sorted keys */
    char broker[300]; /* as written, for logs */
    char host[256];
    int port;
    bool tls;             /* mqtts:// */
    char credentials[64]; /* the credentials file's name; "": none */
    char topic[300];
    char audience[64];
    int qos;
    char client_id[256];
    char offset_path[4096];

    pthread_t thread;
    bool started;
    atomic_bool stop;
    pthread_mutex_t mu; /* only for naps that stop ends early */
    pthread_cond_t cv;

    /* Everything below belongs to the bridge thread. */
    sc_event_log *log;
    sc_snapshot *decided_on; /* the snapshot view_state was decided on */
    sc_event_view *view;
    view_state vstate;
    char vreason[POLIS_ERROR_MSG_MAX];

    struct mosquitto *mosq;
    bool connected;
    bool conn_failed; /* CONNACK refused or the connection dropped */
    char conn_reason[200];
    char tls_error[200]; /* the library's first error of this connection */
    int64_t connect_started, next_attempt;
    unsigned attempts;
    bool logged_down;     /* "unreachable" said once per outage... */
    char logged_why[400]; /* ...unless the reason changes */

    bool have_offset;   /* a saved offset (or a start point) is known */
    uint64_t read_next; /* next offset to read from the log */
    uint64_t saved;     /* what the offsets file holds */
    bool saved_valid;
    int64_t saved_at;
    inflight win[WINDOW_MAX];
    size_t head, count;
    size_t win_bytes;

    char *env; /* the envelope being published */
    size_t env_cap;
    bool warned_skip, warned_refused;
    int pump_stop_rc; /* set by the read callback to stop the read */
    unsigned seed;    /* backoff jitter */
} bridge;

struct sc_bridges {
    char *domain, *id, *state_dir;
    sc_snapshot_slot *slot;
    sc_ports *ports;
    sc_events *events;
    int reconnect_max_ms;
    const char *ca_file, *cert_file, *key_file, *credentials_dir;

    pthread_t manager;
    bool manager_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;

    sc_snapshot *last; /* the snapshot the bridges were last set up for */
    int64_t last_failed_rev;
    bridge *bridges[BRIDGES_MAX];
    size_t n;
};

/* ---- small helpers ------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_in(struct timespec *at, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, at);
    at->tv_sec += ms / 1000;
    at->tv_nsec += (long)(ms % 1000) * 1000000;
    if (at->tv_nsec >= 1000000000) {
        at->tv_sec++;
        at->tv_nsec -= 1000000000;
    }
}

static void cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t a;

    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static bool stopping(bridge *b)
{
    return atomic_load(&b->stop);
}

/* Sleep up to ms, less when the bridge is told to stop. */
static void nap(bridge *b, int ms)
{
    struct timespec at;

    if (ms <= 0)
        return;
    deadline_in(&at, ms);
    pthread_mutex_lock(&b->mu);
    while (!stopping(b) &&
           pthread_cond_timedwait(&b->cv, &b->mu, &at) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&b->mu);
}

/* mqtt://host[:port] or mqtts://host[:port] (checked by common/resource.c)
 * into host, port and whether it is TLS. */
static int parse_broker(const char *url, char *host, size_t hlen, int *port,
                        bool *tls)
{
    const char *h, *colon;
    size_t n;

    if (strncmp(url, "mqtt://", 7) == 0) {
        h = url + 7;
        *tls = false;
        *port = 1883;
    } else if (strncmp(url, "mqtts://", 8) == 0) {
        h = url + 8;
        *tls = true;
        *port = 8883;
    } else {
        return -1;
    }
    colon = strchr(h, ':');
    n = colon ? (size_t)(colon - h) : strlen(h);
    if (n == 0 || n >= hlen)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    if (colon) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if (*end != '\0' || p < 1 || p > 65535)
            return -1;
        *port = (int)p;
    }
    return 0;
}

/* ---- the offsets file ---------------------------------------------------- */

static int load_offset(bridge *b, uint64_t *out)
{
    char text[64], *end;
    ssize_t n;
    int fd = open(b->offset_path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    text[n] = '\0';
    errno = 0;
    *out = strtoull(text, &end, 10);
    if (errno != 0 || end == text || (*end != '\n' && *end != '\0'))
        return -1;
    return 0;
}

/* Write the acknowledged offset: tmp, fsync, rename, so that the file
 * always holds a whole number (a lost update only means resending). */
static int store_offset(bridge *b, uint64_t offset)
{
    char tmp[sizeof(b->offset_path) + 8], text[32];
    int fd, n, ok;

    snprintf(tmp, sizeof(tmp), "%s.tmp", b->offset_path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    n = snprintf(text, sizeof(text), "%" PRIu64 "\n", offset);
    ok = write(fd, text, (size_t)n) == n && fsync(fd) == 0;
    if (close(fd) != 0)
        ok = 0;
    if (!ok || rename(tmp, b->offset_path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ---- the in-flight window ------------------------------------------------ */

/* Where reading resumes after a disconnect: the oldest message not yet
 * acknowledged, or the read position when none is in flight. */
static uint64_t acked_offset(const bridge *b)
{
    return b->count ? b->win[b->head].offset : b->read_next;
}

static void window_advance(bridge *b)
{
    while (b->count && b->win[b->head].done) {
        b->win_bytes -= b->win[b->head].len;
        b->head = (b->head + 1) % WINDOW_MAX;
        b->count--;
    }
}

static inflight *window_push(bridge *b, uint64_t offset)
{
    inflight *f = &b->win[(b->head + b->count) % WINDOW_MAX];

    memset(f, 0, sizeof(*f));
    f->offset = offset;
    b->count++;
    return f;
}

static void window_reset(bridge *b)
{
    b->read_next = acked_offset(b);
    b->head = b->count = 0;
    b->win_bytes = 0;
}

static bool window_has_room(const bridge *b)
{
    return b->count < WINDOW_MAX &&
           (b->count == 0 || b->win_bytes < WINDOW_BYTES_MAX);
}

static void maybe_save(bridge *b, bool force)
{
    uint64_t acked;
    int64_t now;

    if (!b->have_offset)
        return;
    acked = acked_offset(b);
    if (b->saved_valid && acked == b->saved)
        return;
    now = now_ms();
    if (!force && b->saved_valid && now - b->saved_at < SAVE_INTERVAL_MS &&
        acked - b->saved < SAVE_ACKS)
        return;
    if (store_offset(b, acked) == 0) {
        b->saved = acked;
        b->saved_valid = true;
    } else if (!b->saved_valid || now - b->saved_at >= 60000) {
        log_warn("mqtt bridge cannot save its offset", "port=%s file=%s err=%s",
                 b->key, b->offset_path, strerror(errno));
    }
    b->saved_at = now;
}

/* ---- the connection ------------------------------------------------------ */

static void on_connect(struct mosquitto *m, void *ctx, int rc, int flags,
                       const mosquitto_property *props)
{
    bridge *b = ctx;

    (void)m;
    (void)flags;
    (void)props;
    if (rc == 0) {
        b->connected = true;
        return;
    }
    b->conn_failed = true;
    /* Say which login was refused (its file, never its content). */
    if (rc == MQTT_RC_BAD_USERNAME_OR_PASSWORD || rc == MQTT_RC_NOT_AUTHORIZED)
        snprintf(b->conn_reason, sizeof(b->conn_reason),
                 "broker refused: %s (%s%s)", mosquitto_reason_string(rc),
                 b->credentials[0] ? "the login of credentials "
                                   : "no login: the setting names no "
                                     "credentials",
                 b->credentials);
    else
        snprintf(b->conn_reason, sizeof(b->conn_reason), "broker refused: %s",
                 mosquitto_reason_string(rc));
}

static void on_disconnect(struct mosquitto *m, void *ctx, int rc,
                          const mosquitto_property *props)
{
    bridge *b = ctx;

    (void)m;
    (void)props;
    if (!b->conn_failed)
        snprintf(b->conn_reason, sizeof(b->conn_reason), "%s",
                 rc == 0 ? "disconnected" : mosquitto_strerror(rc));
    b->conn_failed = true;
}

static void on_publish(struct mosquitto *m, void *ctx, int mid, int reason,
                       const mosquitto_property *props)
{
    bridge *b = ctx;

    (void)m;
    (void)props;
    if (b->qos == 0)
        return; /* acknowledged when handed over, see pump_record */
    for (size_t i = 0; i < b->count; i++) {
        inflight *f = &b->win[(b->head + i) % WINDOW_MAX];
        if (!f->done && f->mid == mid) {
            f->done = true;
            /* A refusal (MQTT 5 reason >= 0x80: not authorized, quota,
             * payload format...) is the broker's final word on this
             * message: resending it would stall the port forever. */
            if (reason >= 0x80 && !b->warned_refused) {
                b->warned_refused = true;
                log_warn("mqtt bridge: the broker refused a message; "
                         "skipped",
                         "port=%s offset=%" PRIu64 " reason=\"%s\"", b->key,
                         f->offset, mosquitto_reason_string(reason));
            }
            break;
        }
    }
    window_advance(b);
}

static void backoff(bridge *b)
{
    int64_t cap = b->set->reconnect_max_ms, delay = BACKOFF_MIN_MS;

    for (unsigned i = 0; i < b->attempts && delay < cap; i++)
        delay *= 2;
    if (delay > cap)
        delay = cap;
    /* Jitter over the upper half, so that the bridges of many sidecars do
     * not hit a restarted broker in step. */
    delay = delay / 2 + (int64_t)(rand_r(&b->seed) % (unsigned)(delay / 2 + 1));
    b->attempts++;
    b->next_attempt = now_ms() + delay;
}

/* Drop the connection (or the attempt) and plan the next one.  `setup`:
 * the sidecar's own configuration is wrong (credentials, TLS files), an
 * error for the operator rather than a broker to wait for. */
static void drop_connection_as(bridge *b, const char *reason, bool setup)
{
    char why[sizeof(b->logged_why)];

    /* The library's TLS error says what "a TLS error occurred" was. */
    if (b->tls_error[0] && strstr(reason, b->tls_error) == NULL)
        snprintf(why, sizeof(why), "%s (%s)", reason, b->tls_error);
    else
        snprintf(why, sizeof(why), "%s", reason);
    if (b->connected)
        log_warn("mqtt bridge disconnected", "port=%s broker=%s reason=\"%s\"",
                 b->key, b->broker, why);
    else if (!b->logged_down || strcmp(why, b->logged_why) != 0) {
        if (setup)
            log_error("mqtt bridge cannot connect; retrying",
                      "port=%s broker=%s reason=\"%s\"", b->key, b->broker,
                      why);
        else
            log_warn("mqtt bridge cannot connect; retrying",
                     "port=%s broker=%s reason=\"%s\"", b->key, b->broker, why);
    }
    b->logged_down = true;
    snprintf(b->logged_why, sizeof(b->logged_why), "%s", why);
    if (b->mosq)
        mosquitto_destroy(b->mosq);
    b->mosq = NULL;
    b->connected = false;
    b->conn_failed = false;
    /* A new client per connection: the library forgets what it had in
     * flight, and the bridge resends from the log instead (the only copy
     * that also survives a sidecar restart). */
    window_reset(b);
    backoff(b);
}

static void drop_connection(bridge *b, const char *reason)
{
    drop_connection_as(b, reason, false);
}

/* The library reports TLS failures (certificate verify failed, no
 * matching host name...) only in its log: keep the first error of the
 * connection for the bridge's own log line.  Nothing it logs carries the
 * password. */
static void on_log(struct mosquitto *m, void *ctx, int level, const char *msg)
{
    bridge *b = ctx;

    (void)m;
    if ((level & MOSQ_LOG_ERR) && b->tls_error[0] == '\0')
        snprintf(b->tls_error, sizeof(b->tls_error), "%s", msg);
}

/* An encrypted client key is refused rather than OpenSSL's default of
 * prompting on the terminal, from a bridge thread. */
static int no_key_passphrase(char *buf, int size, int rwflag, void *ctx)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)ctx;
    return 0;
}

/* Set up TLS on the new client: verify the broker's certificate against
 * the CA bundle and its name against the host, TLS 1.2 or later.  0, or
 * -1 with `reason` set. */
/* The CA bundle OpenSSL trusts by default: $SSL_CERT_FILE, else the file
 * it was built with (Debian: /usr/lib/ssl/cert.pem, the system bundle;
 * other distributions have their own), so no path is hard-wired here.
 * libmosquitto 2.0 wants a file even with MOSQ_OPT_TLS_USE_OS_CERTS. */
static const char *default_ca(void)
{
    const char *env = getenv(X509_get_default_cert_file_env());

    return env && *env ? env : X509_get_default_cert_file();
}

static int tls_setup(bridge *b, char *reason, size_t len)
{
    sc_bridges *s = b->set;
    const char *ca = s->ca_file ? s->ca_file : default_ca();
    int rc;

    if (access(ca, R_OK) != 0) {
        snprintf(reason, len, "TLS: cannot read the CA file %s: %s", ca,
                 strerror(errno));
        return -1;
    }
    rc = mosquitto_tls_set(b->mosq, ca, NULL, s->cert_file, s->key_file,
                           no_key_passphrase);
    if (rc == MOSQ_ERR_SUCCESS)
        /* 1: SSL_VERIFY_PEER; "tlsv1.2" means 1.2 and later. */
        rc = mosquitto_tls_opts_set(b->mosq, 1, "tlsv1.2", NULL);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_tls_insecure_set(b->mosq, false);
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(reason, len,
                 "TLS: cannot use the CA file %s or the client certificate "
                 "%s / key %s: %s",
                 ca, s->cert_file ? s->cert_file : "(none)",
                 s->key_file ? s->key_file : "(none)", mosquitto_strerror(rc));
        return -1;
    }
    return 0;
}

/* Read <credentials_dir>/<name> ("username:password", one line, an
 * optional line end) and hand the login to the client.  0, or -1 with
 * `reason` set: it names the file, never what the file holds. */
static int login_setup(bridge *b, char *reason, size_t len)
{
    const char *dir = b->set->credentials_dir;
    char path[4096], text[CREDENTIALS_MAX + 2], *colon;
    ssize_t n = 0, got;
    int fd, rc;

    if (dir == NULL) {
        snprintf(reason, len,
                 "the setting names credentials \"%s\" but the sidecar "
                 "has no credentials directory (--mqtt-credentials-dir)",
                 b->credentials);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/%s", dir, b->credentials);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        snprintf(reason, len, "credentials file %s: %s", path, strerror(errno));
        return -1;
    }
    while (n < (ssize_t)sizeof(text) - 1 &&
           (got = read(fd, text + n, sizeof(text) - 1 - (size_t)n)) != 0) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            snprintf(reason, len, "credentials file %s: %s", path,
                     strerror(errno));
            close(fd);
            explicit_bzero(text, sizeof(text));
            return -1;
        }
        n += got;
    }
    close(fd);
    text[n] = '\0';
    if (n > 0 && text[n - 1] == '\n')
        text[--n] = '\0';
    if (n > 0 && text[n - 1] == '\r')
        text[--n] = '\0';
    colon = strchr(text, ':');
    if (n > CREDENTIALS_MAX || strlen(text) != (size_t)n ||
        strpbrk(text, "\r\n") != NULL || colon == NULL || colon == text ||
        colon[1] == '\0') {
        snprintf(reason, len,
                 "credentials file %s is badly formed: expected one line "
                 "username:password",
                 path);
        explicit_bzero(text, sizeof(text));
        return -1;
    }
    *colon = '\0';
    /* The library keeps its own copies. */
    rc = mosquitto_username_pw_set(b->mosq, text, colon + 1);
    explicit_bzero(text, sizeof(text));
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(reason, len, "credentials file %s: %s", path,
                 mosquitto_strerror(rc));
        return -1;
    }
    return 0;
}

static void connect_start(bridge *b)
{
    char setup_reason[sizeof(b->logged_why)];
    int rc;

    b->mosq = mosquitto_new(b->client_id, true, b);
    if (b->mosq == NULL) {
        drop_connection(b, "out of memory");
        return;
    }
    /* MQTT 5: the broker's maximum packet size is known (an oversized
     * message is refused locally instead of the broker dropping the
     * connection over it again and again), and PUBACKs carry reasons. */
    mosquitto_int_option(b->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_connect_v5_callback_set(b->mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(b->mosq, on_disconnect);
    mosquitto_publish_v5_callback_set(b->mosq, on_publish);
    mosquitto_log_callback_set(b->mosq, on_log);
    b->connected = false;
    b->conn_failed = false;
    b->tls_error[0] = '\0';
    b->connect_started = now_ms();
    /* Both read their files now, for every connection: a renewed
     * certificate or a rotated password applies at the next reconnect. */
    if ((b->tls && tls_setup(b, setup_reason, sizeof(setup_reason)) != 0) ||
        (b->credentials[0] &&
         login_setup(b, setup_reason, sizeof(setup_reason)) != 0)) {
        drop_connection_as(b, setup_reason, true);
        return;
    }
    /* Non-blocking connect driven by mosquitto_loop below, so that a
     * broker that never answers cannot hold up stopping. */
    rc = mosquitto_connect_async(b->mosq, b->host, b->port, KEEPALIVE_S);
    if (rc != MOSQ_ERR_SUCCESS) {
        char reason[160];
        snprintf(reason, sizeof(reason), "%s",
                 rc == MOSQ_ERR_ERRNO ? strerror(errno)
                                      : mosquitto_strerror(rc));
        drop_connection(b, reason);
    }
}

/* ---- the governed view --------------------------------------------------- */

/* Rebuild the view when the snapshot in force changed. */
static void refresh_view(bridge *b)
{
    sc_snapshot *cur = sc_snapshot_slot_get(b->set->slot);
    view_state was = b->vstate;
    polis_error err = {0};
    char text[POLIS_ERROR_MSG_MAX + POLIS_ERROR_WHERE_MAX];
    int rc;

    if (cur == b->decided_on) {
        sc_snapshot_unref(cur);
        return;
    }
    sc_event_view_free(b->view);
    b->view = NULL;
    sc_snapshot_unref(b->decided_on);
    b->decided_on = cur; /* takes the reference */
    if (cur == NULL) {
        b->vstate = VIEW_NONE;
        return;
    }
    rc = sc_event_view_new(cur, b->set->ports, b->product, b->audience, NULL,
                           &b->view, &err);
    if (rc == 0) {
        b->vstate = VIEW_OK;
        if (was == VIEW_DENIED)
            log_info("mqtt bridge: the audience may read again; forwarding",
                     "port=%s audience=%s revision=%" PRId64, b->key,
                     b->audience, sc_snapshot_revision(cur));
        return;
    }
    polis_error_format(&err, text, sizeof(text));
    if (rc == POLIS_EDENIED || rc == POLIS_ENOTFOUND) {
        b->vstate = VIEW_DENIED;
        if (was != VIEW_DENIED || strcmp(b->vreason, text) != 0)
            log_warn("mqtt bridge: the audience may not read the product; "
                     "its events are skipped",
                     "port=%s audience=%s revision=%" PRId64 " reason=\"%s\"",
                     b->key, b->audience, sc_snapshot_revision(cur), text);
    } else {
        /* Unreadable documents or a bad contract: wait for the next
         * snapshot rather than skip events. */
        b->vstate = VIEW_NONE;
        if (strcmp(b->vreason, text) != 0)
            log_warn("mqtt bridge: cannot govern events; waiting for the "
                     "next snapshot",
                     "port=%s reason=\"%s\"", b->key, text);
    }
    snprintf(b->vreason, sizeof(b->vreason), "%s", text);
}

/* ---- reading and publishing ---------------------------------------------- */

static int envelope(bridge *b, uint64_t offset, const char *ev, size_t len)
{
    size_t need = len + ENVELOPE_EXTRA + strlen(b->product);
    int n;

    if (need > b->env_cap) {
        char *p = realloc(b->env, need);
        if (p == NULL)
            return -1;
        b->env = p;
        b->env_cap = need;
    }
    n = snprintf(b->env, b->env_cap,
                 "{\"offset\":%" PRIu64 ",\"product\":\"%s\",\"event\":",
                 offset, b->product);
    memcpy(b->env + n, ev, len);
    b->env[n + len] = '}';
    return n + (int)len + 1;
}

static void skip_warn(bridge *b, uint64_t offset, const char *why)
{
    if (b->warned_skip)
        return;
    b->warned_skip = true;
    log_warn("mqtt bridge: an event cannot be forwarded; skipped (further "
             "skips are not logged)",
             "port=%s offset=%" PRIu64 " reason=\"%s\"", b->key, offset, why);
}

/* sc_event_log_read callback: govern and publish one record. */
static int pump_record(void *ctx, const sc_event_record *rec)
{
    bridge *b = ctx;
    polis_error err = {0};
    const char *ev = NULL;
    size_t len = 0;
    inflight *f;
    int n, rc, mid = 0;

    if (b->vstate == VIEW_DENIED) {
        window_push(b, rec->offset)->done = true;
        goto next;
    }
    rc = sc_event_view_apply(b->view, rec->data, rec->len, &ev, &len, &err);
    if (rc != 0) {
        char text[POLIS_ERROR_MSG_MAX + POLIS_ERROR_WHERE_MAX];
        skip_warn(b, rec->offset, polis_error_format(&err, text, sizeof(text)));
        window_push(b, rec->offset)->done = true;
        goto next;
    }
    if (ev == NULL) { /* filtered out: nothing to send, nothing to wait for */
        window_push(b, rec->offset)->done = true;
        goto next;
    }
    if ((n = envelope(b, rec->offset, ev, len)) < 0) {
        b->pump_stop_rc = MOSQ_ERR_NOMEM;
        return 1;
    }
    rc = mosquitto_publish(b->mosq, &mid, b->topic, n, b->env, b->qos, false);
    if (rc == MOSQ_ERR_OVERSIZE_PACKET || rc == MOSQ_ERR_PAYLOAD_SIZE) {
        skip_warn(b, rec->offset, mosquitto_strerror(rc));
        window_push(b, rec->offset)->done = true;
        goto next;
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        /* Not sent: this record is read again after the reconnect. */
        b->pump_stop_rc = rc;
        return 1;
    }
    f = window_push(b, rec->offset);
    f->mid = mid;
    f->len = (size_t)n;
    f->done = b->qos == 0;
    b->win_bytes += (size_t)n;
next:
    b->read_next = rec->offset + 1;
    window_advance(b);
    return window_has_room(b) ? 0 : 1;
}

/* Where to start when the log and the saved offset disagree. */
static void place_reader(bridge *b, bool have_saved, uint64_t saved)
{
    sc_event_log_stats st;

    sc_event_log_stats_get(b->log, &st);
    if (!have_saved) {
        /* First start: from the start of retention, so that nothing
         * published before the broker was first reachable is lost. */
        b->read_next = st.start_offset;
    } else if (saved < st.start_offset) {
        log_warn("mqtt bridge fell behind retention; events were never "
                 "forwarded",
                 "port=%s from=%" PRIu64 " to=%" PRIu64, b->key, saved,
                 st.start_offset);
        b->read_next = st.start_offset;
    } else if (saved > st.next_offset) {
        log_warn("mqtt bridge: saved offset past the log's end (log "
                 "recreated?); resending what is retained",
                 "port=%s saved=%" PRIu64 " end=%" PRIu64, b->key, saved,
                 st.next_offset);
        b->read_next = st.start_offset;
    } else {
        b->read_next = saved;
    }
    b->head = b->count = 0;
    b->win_bytes = 0;
    b->have_offset = true;
}

/*
 * Read and publish what fits in the window.  Returns 1 when records were
 * handled, 0 when there was nothing to read, -1 when the connection must
 * be dropped (b->conn_reason says why).
 */
static int pump(bridge *b)
{
    polis_error err = {0};
    uint64_t next = 0;
    size_t room = WINDOW_MAX - b->count;
    uint64_t before = b->read_next;
    int rc;

    if (!window_has_room(b))
        return 0;
    b->pump_stop_rc = 0;
    rc = sc_event_log_read(b->log, b->read_next, room, 1024 * 1024, pump_record,
                           b, &next, &err);
    if (rc == POLIS_ENOTFOUND || rc == POLIS_EINVAL) {
        /* Retention passed the reader (a long outage) or the log is not
         * the one the offset was for: restart from what is there. */
        window_reset(b);
        place_reader(b, true, b->read_next);
        return 1;
    }
    if (rc != 0) {
        char text[POLIS_ERROR_MSG_MAX + POLIS_ERROR_WHERE_MAX];
        log_warn("mqtt bridge cannot read the log", "port=%s reason=\"%s\"",
                 b->key, polis_error_format(&err, text, sizeof(text)));
        return 0;
    }
    if (b->pump_stop_rc != 0) {
        snprintf(b->conn_reason, sizeof(b->conn_reason), "publish: %s",
                 b->pump_stop_rc == MOSQ_ERR_ERRNO
                     ? strerror(errno)
                     : mosquitto_strerror(b->pump_stop_rc));
        return -1;
    }
    /* A read that stopped only because the window filled has read_next
     * right; one that went to the end may also skip a hole in the log. */
    if (next > b->read_next && window_has_room(b))
        b->read_next = next;
    return b->read_next != before ? 1 : 0;
}

static int open_log(bridge *b)
{
    polis_error err = {0};
    uint64_t saved = 0;
    bool have_saved;
    int rc;

    /* Revision 0: its copy of the port may be older than the snapshot in
     * force; the HTTP routes carry settings changes to an open log. */
    rc = sc_events_log(b->set->events, b->product, b->port_doc, 0, &b->log,
                       &err);
    if (rc != 0) {
        char text[POLIS_ERROR_MSG_MAX + POLIS_ERROR_WHERE_MAX];
        if (rc != POLIS_ECANCELED)
            log_warn("mqtt bridge cannot open the port's log",
                     "port=%s reason=\"%s\"", b->key,
                     polis_error_format(&err, text, sizeof(text)));
        return rc;
    }
    have_saved = load_offset(b, &saved) == 0;
    place_reader(b, have_saved, saved);
    if (have_saved) {
        b->saved = saved;
        b->saved_valid = true;
    }
    return 0;
}

/* Stopping: wait a little for the acknowledgements of what is in flight,
 * save, and say goodbye to the broker. */
static void finish(bridge *b)
{
    int64_t until = now_ms() + FLUSH_MS;

    while (b->mosq && b->connected && !b->conn_failed && b->count > 0 &&
           now_ms() < until)
        if (mosquitto_loop(b->mosq, 50, 1) != MOSQ_ERR_SUCCESS)
            break;
    maybe_save(b, true);
    if (b->mosq) {
        if (b->connected) {
            mosquitto_disconnect(b->mosq);
            mosquitto_loop(b->mosq, 0, 1);
        }
        mosquitto_destroy(b->mosq);
        b->mosq = NULL;
    }
    if (b->connected)
        log_info("mqtt bridge stopped", "port=%s broker=%s", b->key, b->broker);
}

static void *bridge_main(void *arg)
{
    bridge *b = arg;

    while (!stopping(b)) {
        bool busy = false;
        int rc;

        if (b->log == NULL) {
            if (open_log(b) != 0) {
                nap(b, 1000);
                continue;
            }
        }
        refresh_view(b);

        if (b->mosq == NULL && now_ms() >= b->next_attempt)
            connect_start(b);

        if (b->vstate == VIEW_DENIED ||
            (b->vstate == VIEW_OK && b->mosq && b->connected)) {
            rc = pump(b);
            if (rc < 0) {
                drop_connection(b, b->conn_reason);
                continue;
            }
            busy = rc > 0;
        }

        if (b->mosq) {
            bool was_connected = b->connected;
            int timeout = busy ? 0 : window_has_room(b) ? 10 : 50;

            rc = mosquitto_loop(b->mosq, b->connected ? timeout : 20, 1);
            if (!was_connected && b->connected) {
                log_info("mqtt bridge connected",
                         "port=%s broker=%s topic=%s client_id=%s "
                         "resume_offset=%" PRIu64,
                         b->key, b->broker, b->topic, b->client_id,
                         b->read_next);
                b->attempts = 0;
                b->logged_down = false;
                b->warned_refused = false;
            }
            if (b->conn_failed || rc != MOSQ_ERR_SUCCESS) {
                if (!b->conn_failed)
                    snprintf(b->conn_reason, sizeof(b->conn_reason), "%s",
                             rc == MOSQ_ERR_ERRNO ? strerror(errno)
                                                  : mosquitto_strerror(rc));
                drop_connection(b, b->conn_reason);
                continue;
            }
            if (!b->connected) {
                if (now_ms() - b->connect_started > CONNECT_TIMEOUT_MS) {
                    drop_connection(b, "no CONNACK in time");
                    continue;
                }
                /* mosquitto_loop returns at once while a TCP connect is
                 * pending: do not spin. */
                nap(b, 10);
            }
        }
        maybe_save(b, false);

        if (!busy) {
            bool can_read = b->vstate == VIEW_DENIED ||
                            (b->vstate == VIEW_OK && b->mosq && b->connected);
            if (b->mosq && b->connected && !window_has_room(b))
                continue; /* waiting for acknowledgements: the loop waits */
            if (b->mosq && !b->connected)
                continue;
            if (can_read) {
                /* Caught up: wait for the next event (briefly, so that
                 * the connection and stop are looked after). */
                rc = sc_event_log_wait(b->log, b->read_next, 40, NULL);
                if (rc == POLIS_ECANCELED)
                    nap(b, 50);
            } else if (b->mosq) {
                nap(b, 40); /* connected, no view yet */
            } else {
                int64_t left = b->next_attempt - now_ms();
                nap(b, left > 50 ? 50 : left < 1 ? 1 : (int)left);
            }
        }
    }
    finish(b);
    return NULL;
}

/* ---- one bridge ---------------------------------------------------------- */

static void bridge_free(bridge *b)
{
    if (b == NULL)
        return;
    if (b->started) {
        pthread_mutex_lock(&b->mu);
        atomic_store(&b->stop, true);
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        pthread_join(b->thread, NULL);
    }
    if (b->mosq)
        mosquitto_destroy(b->mosq);
    sc_event_view_free(b->view);
    sc_snapshot_unref(b->decided_on);
    json_decref(b->port_doc);
    free(b->settings);
    free(b->env);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

/* Ask a bridge to stop without waiting (sc_bridges_free stops them all in
 * parallel). */
static void bridge_signal_stop(bridge *b)
{
    pthread_mutex_lock(&b->mu);
    atomic_store(&b->stop, true);
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static int bridge_new(sc_bridges *s, const char *name, const json_t *port_doc,
                      const char *settings, bridge **out)
{
    const json_t *m = json_object_get(port_doc, "mqtt");
    const char *broker = json_string_value(json_object_get(m, "broker"));
    const char *topic = json_string_value(json_object_get(m, "topic"));
    const char *audience = json_string_value(json_object_get(m, "audience"));
    const char *cred = json_string_value(json_object_get(m, "credentials"));
    const char *pname = json_string_value(json_object_get(port_doc, "name"));
    const json_t *qos = json_object_get(m, "qos");
    bridge *b;

    *out = NULL;
    if (broker == NULL || topic == NULL || audience == NULL || pname == NULL)
        return -1;
    if ((b = calloc(1, sizeof(*b))) == NULL)
        return -1;
    pthread_mutex_init(&b->mu, NULL);
    cond_init_monotonic(&b->cv);
    atomic_init(&b->stop, false);
    b->set = s;
    snprintf(b->product, sizeof(b->product), "%s/%s", s->domain, name);
    snprintf(b->port_name, sizeof(b->port_name), "%s", pname);
    snprintf(b->key, sizeof(b->key), "%s/%s", b->product, pname);
    snprintf(b->broker, sizeof(b->broker), "%s", broker);
    snprintf(b->topic, sizeof(b->topic), "%s", topic);
    snprintf(b->audience, sizeof(b->audience), "%s", audience);
    /* A name (checked by common/resource.c), never a path: it must stay
     * inside the credentials directory. */
    if (cred != NULL &&
        (cred[0] == '\0' || cred[0] == '.' || strchr(cred, '/') != NULL ||
         strlen(cred) >= sizeof(b->credentials))) {
        bridge_free(b);
        return -1;
    }
    snprintf(b->credentials, sizeof(b->credentials), "%s", cred ? cred : "");
    b->qos = json_is_integer(qos) ? (int)json_integer_value(qos) : 1;
    if (b->qos != 0)
        b->qos = 1;
    /* One client id per bridged port: two bridges of one sidecar sharing
     * an id would take each other's session away on every connect. */
    snprintf(b->client_id, sizeof(b->client_id), "%s-%s-%s", s->id, name,
             pname);
    snprintf(b->offset_path, sizeof(b->offset_path),
             "%s/bridges/%s.%s.%s.offset", s->state_dir, s->domain, name,
             pname);
    b->seed = (unsigned)now_ms() ^ (unsigned)(uintptr_t)b;
    if (parse_broker(broker, b->host, sizeof(b->host), &b->port, &b->tls) !=
            0 ||
        (b->port_doc = json_deep_copy(port_doc)) == NULL ||
        (b->settings = strdup(settings)) == NULL) {
        bridge_free(b);
        return -1;
    }
    if (pthread_create(&b->thread, NULL, bridge_main, b) != 0) {
        bridge_free(b);
        return -1;
    }
    b->started = true;
    *out = b;
    return 0;
}

/* ---- the manager --------------------------------------------------------- */

typedef struct wanted {
    const char *name;
    const json_t *port;
    char *settings;
    char key[200];
} wanted;

static void stop_bridge_at(sc_bridges *s, size_t i, const char *why)
{
    bridge *b = s->bridges[i];

    log_info("mqtt bridge stopping", "port=%s reason=\"%s\"", b->key, why);
    bridge_free(b);
    s->bridges[i] = s->bridges[--s->n];
}

/* Make the running bridges those that snapshot `snap` asks for. */
static int reconcile(sc_bridges *s, sc_snapshot *snap)
{
    wanted want[BRIDGES_MAX];
    size_t nwant = 0;
    polis_error err = {0};
    json_t *all = NULL, *doc;
    const char *name;
    int rc;

    rc = sc_ports_products(s->ports, snap, &all, &err);
    if (rc != 0) {
        if (s->last_failed_rev != sc_snapshot_revision(snap)) {
            char text[POLIS_ERROR_MSG_MAX + POLIS_ERROR_WHERE_MAX];
            s->last_failed_rev = sc_snapshot_revision(snap);
            log_warn("mqtt bridges: cannot read the data products; "
                     "retrying",
                     "revision=%" PRId64 " reason=\"%s\"",
                     sc_snapshot_revision(snap),
                     polis_error_format(&err, text, sizeof(text)));
        }
        return rc;
    }
    json_object_foreach(all, name, doc)
    {
        const json_t *ports =
            json_object_get(json_object_get(doc, "spec"), "ports");
        const json_t *port;
        size_t i;

        json_array_foreach(ports, i, port)
        {
            const char *t = json_string_value(json_object_get(port, "type"));
            const char *pn = json_string_value(json_object_get(port, "name"));
            const json_t *m = json_object_get(port, "mqtt");
            if (t == NULL || strcmp(t, "event") != 0 || !json_is_object(m) ||
                pn == NULL)
                continue;
            if (nwant == BRIDGES_MAX) {
                log_warn("mqtt bridges: too many bridged ports; ignored",
                         "product=%s port=%s max=%d", name, pn, BRIDGES_MAX);
                continue;
            }
            want[nwant].name = name;
            want[nwant].port = port;
            want[nwant].settings = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);
            snprintf(want[nwant].key, sizeof(want[nwant].key), "%s/%s/%s",
                     s->domain, name, pn);
            if (want[nwant].settings)
                nwant++;
        }
    }
    /* Stop what is gone or changed (before starting its replacement, so
     * that two clients never share an id). */
    for (size_t i = s->n; i-- > 0;) {
        bridge *b = s->bridges[i];
        size_t j;
        for (j = 0; j < nwant; j++)
            if (strcmp(want[j].key, b->key) == 0)
                break;
        if (j == nwant)
            stop_bridge_at(s, i, "no longer bridged");
        else if (strcmp(want[j].settings, b->settings) != 0)
            stop_bridge_at(s, i, "mqtt setting changed");
    }
    for (size_t j = 0; j < nwant; j++) {
        bridge *b = NULL;
        bool running = false;
        for (size_t i = 0; i < s->n; i++)
            running = running || strcmp(s->bridges[i]->key, want[j].key) == 0;
        if (!running) {
            if (bridge_new(s, want[j].name, want[j].port, want[j].settings,
                           &b) != 0) {
                log_error("mqtt bridge cannot start", "port=%s", want[j].key);
            } else {
                s->bridges[s->n++] = b;
                log_info("mqtt bridge started",
                         "port=%s broker=%s topic=%s audience=%s qos=%d "
                         "tls=%s credentials=%s",
                         b->key, b->broker, b->topic, b->audience, b->qos,
                         b->tls ? "yes" : "no",
                         b->credentials[0] ? b->credentials : "(none)");
                if (b->credentials[0] && !b->tls)
                    log_warn("mqtt bridge: its login crosses the network in "
                             "clear text; use an mqtts:// broker",
                             "port=%s credentials=%s", b->key, b->credentials);
            }
        }
        free(want[j].settings);
    }
    json_decref(all);
    return 0;
}

static void *manager_main(void *arg)
{
    sc_bridges *s = arg;
    struct timespec at;

    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        sc_snapshot *snap;

        pthread_mutex_unlock(&s->mu);
        snap = sc_snapshot_slot_get(s->slot);
        /* Holding a reference to the last one keeps its address from
         * being reused, so comparing pointers is enough. */
        if (snap != NULL && snap != s->last && reconcile(s, snap) == 0) {
            sc_snapshot_unref(s->last);
            s->last = snap;
        } else {
            sc_snapshot_unref(snap);
        }
        pthread_mutex_lock(&s->mu);
        deadline_in(&at, MANAGER_TICK_MS);
        while (!s->stopping &&
               pthread_cond_timedwait(&s->cv, &s->mu, &at) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- public -------------------------------------------------------------- */

static const char *given(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* Files are checked at start, so that a typo in a flag is an error then
 * rather than a bridge that never connects. */
static int check_files(const sc_bridges_options *o, polis_error *err)
{
    const char *files[3] = {given(o->ca_file), given(o->cert_file),
                            given(o->key_file)};
    static const char *const what[3] = {
        "the CA file (--mqtt-ca-file)",
        "the client certificate (--mqtt-cert-file)",
        "the client key (--mqtt-key-file)"};
    struct stat st;

    if ((files[1] == NULL) != (files[2] == NULL))
        return polis_error_set(err, POLIS_EINVAL,
                               files[1] ? files[1] : files[2],
                               "a client certificate needs its key and a "
                               "key its certificate: give both "
                               "--mqtt-cert-file and --mqtt-key-file, or "
                               "neither");
    for (int i = 0; i < 3; i++)
        if (files[i] != NULL && access(files[i], R_OK) != 0)
            return polis_error_set(err, POLIS_EINVAL, files[i],
                                   "cannot read %s: %s", what[i],
                                   strerror(errno));
    if (given(o->credentials_dir) == NULL)
        return 0;
    if (stat(o->credentials_dir, &st) != 0)
        return polis_error_set(err, POLIS_EINVAL, o->credentials_dir,
                               "cannot use the credentials directory "
                               "(--mqtt-credentials-dir): %s",
                               strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return polis_error_set(err, POLIS_EINVAL, o->credentials_dir,
                               "the credentials directory "
                               "(--mqtt-credentials-dir) is not a directory");
    return 0;
}

int sc_bridges_start(const sc_bridges_options *o, sc_bridges **out,
                     polis_error *err)
{
    sc_bridges *s;
    char dir[4096];
    int rc;

    *out = NULL;
    if (o == NULL || o->domain == NULL || o->id == NULL ||
        o->state_dir == NULL || o->slot == NULL || o->ports == NULL ||
        o->events == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "the MQTT bridges need a domain, an id, a "
                               "state dir, the snapshot slot, the ports and "
                               "the event ports");
    if ((rc = check_files(o, err)) != 0)
        return rc;
    if ((size_t)snprintf(dir, sizeof(dir), "%s/bridges", o->state_dir) >=
        sizeof(dir))
        return polis_error_set(err, POLIS_ETOOBIG, o->state_dir,
                               "state dir path too long");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return polis_error_set(err, POLIS_EIO, dir, "cannot create: %s",
                               strerror(errno));
    if ((s = calloc(1, sizeof(*s))) == NULL ||
        (s->domain = strdup(o->domain)) == NULL ||
        (s->id = strdup(o->id)) == NULL ||
        (s->state_dir = strdup(o->state_dir)) == NULL) {
        if (s) {
            free(s->domain);
            free(s->id);
        }
        free(s);
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    }
    s->slot = o->slot;
    s->ports = o->ports;
    s->events = o->events;
    s->reconnect_max_ms = o->reconnect_max_ms > 0 ? o->reconnect_max_ms : 10000;
    if (s->reconnect_max_ms < BACKOFF_MIN_MS)
        s->reconnect_max_ms = BACKOFF_MIN_MS;
    s->ca_file = given(o->ca_file);
    s->cert_file = given(o->cert_file);
    s->key_file = given(o->key_file);
    s->credentials_dir = given(o->credentials_dir);
    s->last_failed_rev = -1;
    pthread_mutex_init(&s->mu, NULL);
    cond_init_monotonic(&s->cv);
    /* Not thread-safe, hence here, at start-up, before any bridge runs. */
    mosquitto_lib_init();
    if (pthread_create(&s->manager, NULL, manager_main, s) != 0) {
        sc_bridges_free(s);
        return polis_error_set(err, POLIS_ENOMEM, NULL,
                               "cannot start the MQTT bridge manager");
    }
    s->manager_started = true;
    *out = s;
    return 0;
}

void sc_bridges_free(sc_bridges *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->manager_started)
        pthread_join(s->manager, NULL);
    /* All at once, so that stopping takes one flush, not one per bridge. */
    for (size_t i = 0; i < s->n; i++)
        bridge_signal_stop(s->bridges[i]);
    for (size_t i = 0; i < s->n; i++)
        bridge_free(s->bridges[i]);
    sc_snapshot_unref(s->last);
    mosquitto_lib_cleanup();
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->domain);
    free(s->id);
    free(s->state_dir);
    free(s);
}
