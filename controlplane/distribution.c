/*
 * distribution.c — push snapshots to sidecars (distribution.h).
 *
 * Threads: rpc workers run the stream callbacks (hello, ack, nack, end);
 * the distribution thread reads the etcd watch, debounces, rebuilds the
 * dirty domains' snapshots and pushes them; the status thread writes
 * sidecar status to etcd in batched txns, so etcd latency never delays a
 * push.  One mutex (d->lock) guards the shared state; rpc_call_send only
 * queues, so it is safe to call under it.
 */
#include "controlplane/distribution.h"
#include "common/document.h"
#include "controlplane/access.h"
#include "common/log.h"
#include "common/resource.h"
#include "polis/v1/distribution.pb-c.h"

#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ID_MAX             128
#define DISCONNECTED_TTL_S 300
#define STATUS_BATCH       100 /* puts per txn: under etcd's default 128 */
#define STALE_AFTER_MS     5000
#define STATUS_REFRESH_S   30.0

/* ---- snapshots ---- */

typedef struct snapshot {
    atomic_int refs;
    int64_t revision;
    char digest[SHA256_DIGEST_LENGTH * 2 + 1];
    double changed_at; /* monotonic time of the change it carries; 0: none */
    Polis__V1__Snapshot msg;
    Polis__V1__ControlMessage cm;
    Polis__V1__Resource *res; /* msg.resources points into this */
    char **texts;             /* canonical JSON of each resource */
} snapshot;

static void snapshot_unref(snapshot *s)
{
    if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    for (size_t i = 0; i < s->msg.n_resources; i++) {
        free(s->texts[i]);
        free(s->res[i].scope);
        free(s->res[i].name);
    }
    free(s->texts);
    free(s->res);
    free(s->msg.resources);
    free(s->msg.masking_key.data);
    free(s->msg.domain);
    free(s);
}

static snapshot *snapshot_ref(snapshot *s)
{
    if (s)
        atomic_fetch_add(&s->refs, 1);
    return s;
}

/* ---- state ---- */

typedef struct stream stream;
typedef struct domain_state domain_state;

struct stream {
    cp_dist *d;
    rpc_call *call;
    char id[ID_MAX + 1];
    char domain[RES_NAME_MAX];
    char address[256];
    char version[64];
    char connected_since[40];
    bool hello;
    domain_state *dom;
    snapshot *pending; /* newest, not yet sent */
    snapshot *sent;    /* sent, waiting for its ACK */
    int64_t applied_revision;
    int64_t latest_revision; /* newest pushed */
    int64_t pushed_at_ms;    /* wall clock, for STALE */
    char last_error[512];
    double last_seen, last_keepalive;
    double last_status_write;
    /* Another replica wrote the status record after this stream's last
     * write (the sidecar moved there): this stream writes it no more. */
    bool status_lost;
    uint64_t serial; /* names the stream to the access and status writers */
    stream *next;
};

struct domain_state {
    char name[RES_NAME_MAX];
    stream *streams;
    snapshot *current;
    bool dirty;
    double changed_at;
    domain_state *next;
};

struct cp_dist {
    etcd_client *etcd;
    cp_store *store;
    metrics *m;
    int debounce_ms, debounce_max_ms, keepalive_ms, status_lease_s;
    char replica[256];
    unsigned char *key;
    size_t key_len;

    pthread_mutex_t lock;
    json_t *resources; /* "Kind/scope/name" -> document */
    int64_t revision;
    domain_state *domains;
    stream *newcomers; /* streams that have not said hello yet */
    bool change_pending;
    double first_change, last_change;
    etcd_watch *watch;
    pthread_t thread;
    bool thread_started;
    atomic_bool stop;

    /* status writer */
    pthread_t status_thread;
    bool status_started;
    pthread_cond_t status_cond;
    /* id -> {"record":..., "connected":bool, "claim":STATUS_*,
     * "serial":the stream's} */
    json_t *status_pending;
    /* id -> the etcd revision of this replica's last write of the record
     * of a sidecar connected here (status thread only) */
    json_t *status_written;
    double status_keepalive_at; /* status thread only */
    int64_t lease, disc_lease;
    double disc_lease_at;

    metric_series *m_pushes, *m_acks, *m_nacks, *m_connected, *m_builds,
        *m_convergence, *m_skipped;

    cp_access *access;
    uint64_t next_serial; /* under lock */
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void rfc3339_ms(int64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ms % 1000));
}

/* ---- building snapshots ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Does resource `key` ("Kind/scope/name") belong in domain `dom`'s
 * snapshot?  `upstream` lists "domain/product" ids its products derive
 * from. */
static bool snapshot_wants(const char *key, const char *dom,
                           const json_t *upstream)
{
    char kind[32], scope[RES_NAME_MAX], name[RES_NAME_MAX], id[160];

    if (sscanf(key, "%31[^/]/%63[^/]/%63s", kind, scope, name) != 3)
        return false;
    if (strcmp(kind, "Principal") == 0)
        return true;
    if (strcmp(kind, "Policy") == 0)
        return strcmp(scope, RES_SCOPE_GLOBAL) == 0 || strcmp(scope, dom) == 0;
    if (strcmp(kind, "Domain") == 0)
        return strcmp(name, dom) == 0;
    if (strcmp(kind, "DataProduct") == 0) {
        if (strcmp(scope, dom) == 0)
            return true;
        snprintf(id, sizeof(id), "%s/%s", scope, name);
        return json_object_get(upstream, id) != NULL;
    }
    return false;
}

/* Build domain `dom`'s snapshot from the resources at d->revision. */
static snapshot *snapshot_build(cp_dist *d, const char *dom)
{
    snapshot *s = calloc(1, sizeof(*s));
    json_t *upstream = json_object();
    const char **keys = NULL;
    size_t nkeys = 0, n = 0, total = json_object_size(d->resources);
    const char *key;
    json_t *doc, *v;
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    unsigned char md[SHA256_DIGEST_LENGTH];

    if (s == NULL || upstream == NULL || sha == NULL)
        goto fail;
    atomic_init(&s->refs, 1);
    /* Upstream products of this domain's products (spec.derivedFrom). */
    json_object_foreach(d->resources, key, doc)
    {
        char prefix[RES_NAME_MAX + 16];
        size_t i;
        snprintf(prefix, sizeof(prefix), "DataProduct/%s/", dom);
        if (strncmp(key, prefix, strlen(prefix)) != 0)
            continue;
        json_array_foreach(
            json_object_get(json_object_get(doc, "spec"), "derivedFrom"), i, v)
        {
            if (json_is_string(v))
                json_object_set_new(upstream, json_string_value(v),
                                    json_true());
        }
    }
    keys = calloc(total ? total : 1, sizeof(*keys));
    if (keys == NULL)
        goto fail;
    json_object_foreach(d->resources, key, doc)
    {
        if (snapshot_wants(key, dom, upstream))
            keys[nkeys++] = key;
    }
    qsort(keys, nkeys, sizeof(*keys), cmp_str);
    polis__v1__snapshot__init(&s->msg);
    s->res = calloc(nkeys ? nkeys : 1, sizeof(*s->res));
    s->texts = calloc(nkeys ? nkeys : 1, sizeof(*s->texts));
    s->msg.resources = calloc(nkeys ? nkeys : 1, sizeof(*s->msg.resources));
    if (s->res == NULL || s->texts == NULL || s->msg.resources == NULL)
        goto fail;
    EVP_DigestInit_ex(sha, EVP_sha256(), NULL);
    for (size_t i = 0; i < nkeys; i++) {
        char kind[32], scope[RES_NAME_MAX], name[RES_NAME_MAX];
        Polis__V1__Resource *r = &s->res[n];

        doc = json_object_get(d->resources, keys[i]);
        s->texts[n] = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
        if (s->texts[n] == NULL ||
            sscanf(keys[i], "%31[^/]/%63[^/]/%63s", kind, scope, name) != 3)
            goto fail;
        polis__v1__resource__init(r);
        /* The document carries kind and name; scope is derived. */
        r->kind = (char *)res_kind_name(res_kind_parse(kind));
        r->document_json = s->texts[n];
        /* Owned copies: the map's documents may be replaced while the
         * snapshot is still queued for a stream. */
        r->scope = strdup(scope);
        r->name = strdup(name);
        if (r->scope == NULL || r->name == NULL) {
            n++;
            goto fail;
        }
        EVP_DigestUpdate(sha, keys[i], strlen(keys[i]) + 1);
        EVP_DigestUpdate(sha, s->texts[n], strlen(s->texts[n]) + 1);
        n++;
    }
    EVP_DigestUpdate(sha, d->key, d->key_len);
    EVP_DigestFinal_ex(sha, md, NULL);
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(s->digest + 2 * i, 3, "%02x", md[i]);
    for (size_t i = 0; i < n; i++)
        s->msg.resources[i] = &s->res[i];
    s->msg.n_resources = n;
    s->msg.revision = d->revision;
    s->revision = d->revision;
    s->msg.domain = strdup(dom);
    s->msg.digest = s->digest;
    s->msg.masking_key.data = malloc(d->key_len ? d->key_len : 1);
    if (s->msg.domain == NULL || s->msg.masking_key.data == NULL)
        goto fail;
    memcpy(s->msg.masking_key.data, d->key, d->key_len);
    s->msg.masking_key.len = d->key_len;
    polis__v1__control_message__init(&s->cm);
    s->cm.msg_case = POLIS__V1__CONTROL_MESSAGE__MSG_SNAPSHOT;
    s->cm.snapshot = &s->msg;
    free(keys);
    json_decref(upstream);
    EVP_MD_CTX_free(sha);
    metric_add(d->m_builds, 1);
    return s;
fail:
    if (s) {
        s->msg.n_resources = n;
        snapshot_unref(s);
    }
    free(keys);
    json_decref(upstream);
    EVP_MD_CTX_free(sha);
    return NULL;
}

/* ---- status records ---- */

static const char *stream_state(const stream *st)
{
    if (st->last_error[0] && st->applied_revision < st->latest_revision)
        return "NACKED";
    return "CONNECTED";
}

/*
 * How a pending record may be written.  A record is this replica's to write
 * only while nobody else wrote it since its own last write (compared on the
 * record's mod_revision): a sidecar that moved to another replica keeps that
 * replica's record even if this one's old stream is still open.  The first
 * write after a hello claims the record: that stream is the live
 * connection.  After the status lease expired, the records are gone; they
 * are written again only where no record is (the sidecar may have moved
 * meanwhile).  Values are ordered: merging two items keeps the larger.
 */
enum { STATUS_GUARDED = 0, STATUS_RECLAIM = 1, STATUS_CLAIM = 2 };

static int item_claim(const json_t *item)
{
    return (int)json_integer_value(json_object_get(item, "claim"));
}

/* Put item (stolen) in the pending map, replacing id's older one but
 * keeping the stronger claim of the two (under d->lock). */
static void status_pending_set_locked(cp_dist *d, const char *id, json_t *item)
{
    json_t *old = json_object_get(d->status_pending, id);

    if (item == NULL)
        return;
    if (old && item_claim(old) > item_claim(item))
        json_object_set_new(item, "claim", json_integer(item_claim(old)));
    json_object_set_new(d->status_pending, id, item);
}

/* Queue the stream's status for the status thread (under d->lock). */
static void status_queue(cp_dist *d, stream *st, bool connected, int claim)
{
    char seen[40];
    json_t *rec;

    if (!st->hello || st->status_lost)
        return;
    rfc3339_ms(wall_ms(), seen, sizeof(seen));
    rec =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:s, "
                  "s:s, s:I, s:s}",
                  "id", st->id, "domain", st->domain, "address", st->address,
                  "controlplane", d->replica, "version", st->version, "state",
                  connected ? stream_state(st) : "DISCONNECTED",
                  "appliedRevision", (json_int_t)st->applied_revision,
                  "latestRevision", (json_int_t)st->latest_revision,
                  "pushedAtMs", (json_int_t)st->pushed_at_ms, "lastError",
                  st->last_error, "lastSeen", seen, "lastSeenMs",
                  (json_int_t)wall_ms(), "connectedSince", st->connected_since);
    if (rec == NULL)
        return;
    st->last_status_write = mono_now();
    status_pending_set_locked(d, st->id,
                              json_pack("{s:o, s:b, s:i, s:I}", "record", rec,
                                        "connected", connected, "claim", claim,
                                        "serial", (json_int_t)st->serial));
    pthread_cond_signal(&d->status_cond);
}

static void requeue_all_locked(cp_dist *d)
{
    for (domain_state *dom = d->domains; dom; dom = dom->next)
        for (stream *st = dom->streams; st; st = st->next)
            status_queue(d, st, true, STATUS_RECLAIM);
}

static int ensure_leases(cp_dist *d, polis_error *err)
{
    int rc = 0;
    double now = mono_now();

    if (d->lease == 0)
        rc = etcd_lease_grant(d->etcd, d->status_lease_s, &d->lease, err);
    if (rc == 0 && (d->disc_lease == 0 ||
                    now - d->disc_lease_at > DISCONNECTED_TTL_S / 2)) {
        rc = etcd_lease_grant(d->etcd, DISCONNECTED_TTL_S, &d->disc_lease, err);
        d->disc_lease_at = now;
    }
    return rc;
}

/*
 * Keep the status lease alive when it is due.  Called between txns, so
 * that writing thousands of records never lets it lapse.  If it expired
 * (etcd was away), its records are gone: every stream is queued again and
 * POLIS_ENOTFOUND tells the caller to stop using the old lease.
 */
static int status_keepalive(cp_dist *d, polis_error *err)
{
    int rc;

    if (d->lease == 0 ||
        mono_now() - d->status_keepalive_at < d->status_lease_s / 3.0)
        return 0;
    rc = etcd_lease_keepalive(d->etcd, d->lease, NULL, err);
    d->status_keepalive_at = mono_now();
    if (rc == POLIS_ENOTFOUND) {
        d->lease = 0;
        pthread_mutex_lock(&d->lock);
        requeue_all_locked(d);
        pthread_mutex_unlock(&d->lock);
    }
    return rc;
}

/* One record of a batch being written. */
typedef struct status_put {
    const char *id; /* the batch's key */
    char *key, *val;
    bool connected;
    int claim;
    int64_t mine; /* this replica's last write of it; 0: none known */
    uint64_t serial;
} status_put;

/* The compare that guards p's write in the batch txn; false: none. */
static bool status_compare(const status_put *p, etcd_compare *cmp)
{
    if (p->claim == STATUS_CLAIM && p->connected)
        return false;
    *cmp = (etcd_compare){.key = p->key,
                          .target = ETCD_CMP_MOD,
                          .op = ETCD_CMP_EQUAL,
                          .number = p->claim == STATUS_GUARDED ? p->mine : 0};
    if (cmp->number == 0)
        cmp->target = ETCD_CMP_CREATE; /* only where no record is */
    return true;
}

static etcd_op status_op(const cp_dist *d, const status_put *p)
{
    return (etcd_op){.type = ETCD_OP_PUT,
                     .key = p->key,
                     .value = p->val,
                     .value_len = strlen(p->val),
                     .lease = p->connected ? d->lease : d->disc_lease};
}

/* p was written at revision rev. */
static void status_done(cp_dist *d, const status_put *p, int64_t rev)
{
    if (p->connected)
        json_object_set_new(d->status_written, p->id, json_integer(rev));
    else
        json_object_del(d->status_written, p->id);
}

/*
 * Write p alone: with its compare, then, if the record is not the one this
 * replica wrote last, only where no record is (its lease expired).  *won
 * is false when another replica holds the record.
 */
static int status_write_one(cp_dist *d, const status_put *p, bool *won,
                            polis_error *err)
{
    etcd_compare cmp;
    etcd_op op = status_op(d, p);
    bool guarded = status_compare(p, &cmp);
    etcd_txn_result tr = {0};
    int rc =
        etcd_txn(d->etcd, &cmp, guarded ? 1 : 0, &op, 1, NULL, 0, &tr, err);

    if (rc == 0 && !tr.succeeded && cmp.target == ETCD_CMP_MOD) {
        etcd_txn_result_free(&tr);
        cmp.target = ETCD_CMP_CREATE;
        cmp.number = 0;
        rc = etcd_txn(d->etcd, &cmp, 1, &op, 1, NULL, 0, &tr, err);
    }
    if (rc == 0) {
        *won = tr.succeeded;
        if (tr.succeeded)
            status_done(d, p, tr.revision);
        else
            json_object_del(d->status_written, p->id);
    }
    etcd_txn_result_free(&tr);
    return rc;
}

/* The streams that lost their records write them no more. */
static void status_mark_lost(cp_dist *d, const uint64_t *serials, size_t n)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&d->lock);
    for (domain_state *dom = d->domains; dom; dom = dom->next)
        for (stream *st = dom->streams; st; st = st->next)
            for (size_t i = 0; i < n; i++)
                if (st->serial == serials[i]) {
                    st->status_lost = true;
                    log_info("sidecar status written by another replica; "
                             "this stream leaves it alone",
                             "id=%s domain=%s", st->id, st->domain);
                }
    pthread_mutex_unlock(&d->lock);
}

/*
 * Write up to STATUS_BATCH records of the batch, taking out what is done
 * (written, or left to another replica).  Normally one txn, whose compares
 * guard every record; if one fails, nothing was written and each record
 * is written in its own txn to find out which.
 */
static int status_write(cp_dist *d, json_t *batch, polis_error *err)
{
    status_put puts[STATUS_BATCH];
    etcd_compare cmps[STATUS_BATCH];
    etcd_op ops[STATUS_BATCH];
    uint64_t lost[STATUS_BATCH];
    size_t n = 0, n_cmp = 0, n_lost = 0;
    const char *id;
    json_t *item, *tmp;
    etcd_txn_result tr = {0};
    int rc;

    rc = status_keepalive(d, err);
    if (rc == 0)
        rc = ensure_leases(d, err);
    if (rc)
        return rc;
    json_object_foreach_safe(batch, tmp, id, item)
    {
        status_put *p;
        json_t *mine;

        if (n == STATUS_BATCH)
            break;
        p = &puts[n];
        mine = json_object_get(d->status_written, id);
        *p = (status_put){
            .id = id,
            .connected = json_is_true(json_object_get(item, "connected")),
            .claim = item_claim(item),
            .mine = mine ? json_integer_value(mine) : 0,
            .serial =
                (uint64_t)json_integer_value(json_object_get(item, "serial"))};
        if (p->connected && p->claim == STATUS_GUARDED && p->mine == 0) {
            /* Its stream lost the record: nothing to compare with. */
            json_object_del(batch, id);
            continue;
        }
        p->val = json_dumps(json_object_get(item, "record"), JSON_COMPACT);
        if (asprintf(&p->key, "%ssidecars/%s", cp_store_prefix(d->store), id) <
            0)
            p->key = NULL;
        if (p->key == NULL || p->val == NULL) {
            free(p->key);
            free(p->val);
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
            goto out;
        }
        ops[n] = status_op(d, p);
        if (status_compare(p, &cmps[n_cmp]))
            n_cmp++;
        n++;
    }
    if (n == 0)
        return 0;
    rc = etcd_txn(d->etcd, cmps, n_cmp, ops, n, NULL, 0, &tr, err);
    if (rc == 0 && tr.succeeded) {
        for (size_t i = 0; i < n; i++) {
            status_done(d, &puts[i], tr.revision);
            json_object_del(batch, puts[i].id);
        }
        goto out;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        bool won = false;

        /* A keepalive may be due: mass disconnects come in thousands. */
        rc = status_keepalive(d, err);
        if (rc == 0)
            rc = status_write_one(d, &puts[i], &won, err);
        if (rc)
            break;
        if (!won)
            lost[n_lost++] = puts[i].serial;
        json_object_del(batch, puts[i].id);
    }
out:
    etcd_txn_result_free(&tr);
    status_mark_lost(d, lost, n_lost);
    for (size_t i = 0; i < n; i++) {
        free(puts[i].key);
        free(puts[i].val);
    }
    return rc;
}

static void *status_thread(void *arg)
{
    cp_dist *d = arg;
    char msg[1024];

    d->status_keepalive_at = mono_now();
    pthread_mutex_lock(&d->lock);
    while (!atomic_load(&d->stop)) {
        struct timespec until;
        json_t *batch;
        polis_error err = {0};
        int rc = 0;

        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        if (json_object_size(d->status_pending) == 0)
            pthread_cond_timedwait(&d->status_cond, &d->lock, &until);
        batch = d->status_pending;
        d->status_pending = json_object();
        pthread_mutex_unlock(&d->lock);

        rc = status_keepalive(d, &err);
        while (json_object_size(batch) > 0 && rc == 0)
            rc = status_write(d, batch, &err);
        if (rc && rc != POLIS_ENOTFOUND)
            log_warn("cannot write sidecar status", "error=\"%s\"",
                     polis_error_format(&err, msg, sizeof(msg)));

        pthread_mutex_lock(&d->lock);
        /* Keep what failed, unless something newer came meanwhile (which
         * keeps the stronger claim of the two). */
        {
            const char *id;
            json_t *item, *newer;
            json_object_foreach(batch, id, item)
            {
                newer = json_object_get(d->status_pending, id);
                if (newer == NULL)
                    json_object_set(d->status_pending, id, item);
                else if (item_claim(item) > item_claim(newer))
                    json_object_set_new(newer, "claim",
                                        json_integer(item_claim(item)));
            }
        }
        json_decref(batch);
        if (rc) {
            pthread_mutex_unlock(&d->lock);
            struct timespec pause = {0, 200 * 1000 * 1000};
            nanosleep(&pause, NULL);
            pthread_mutex_lock(&d->lock);
        }
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

/* ---- pushing ---- */

/* Send what the stream should have next, if its queue is free. */
static void stream_service_locked(cp_dist *d, stream *st, double now)
{
    if (st->pending && rpc_call_send_queue_len(st->call) == 0) {
        int rc = rpc_call_send(st->call, &st->pending->cm.base);
        if (rc == 0) {
            snapshot_unref(st->sent);
            st->sent = st->pending;
            st->pending = NULL;
            st->latest_revision = st->sent->revision;
            st->pushed_at_ms = wall_ms();
            st->last_keepalive = now;
            metric_add(d->m_pushes, 1);
            status_queue(d, st, true, STATUS_GUARDED);
        } else if (rc == POLIS_ETOOBIG) {
            /* It would never fit: say so instead of retrying forever. */
            snprintf(st->last_error, sizeof(st->last_error),
                     "snapshot at revision %" PRId64 " (%zu resources) is "
                     "over the gRPC message limit; not sent",
                     st->pending->revision, st->pending->msg.n_resources);
            log_error("snapshot too large to push",
                      "id=%s domain=%s "
                      "revision=%" PRId64,
                      st->id, st->domain, st->pending->revision);
            st->latest_revision = st->pending->revision;
            snapshot_unref(st->pending);
            st->pending = NULL;
            status_queue(d, st, true, STATUS_GUARDED);
        }
    }
    if (now - st->last_keepalive >= d->keepalive_ms / 1000.0 &&
        rpc_call_send_queue_len(st->call) == 0) {
        Polis__V1__Keepalive ka = POLIS__V1__KEEPALIVE__INIT;
        Polis__V1__ControlMessage cm = POLIS__V1__CONTROL_MESSAGE__INIT;
        ka.time_unix_ms = wall_ms();
        cm.msg_case = POLIS__V1__CONTROL_MESSAGE__MSG_KEEPALIVE;
        cm.keepalive = &ka;
        rpc_call_send(st->call, &cm.base);
        st->last_keepalive = now;
    }
    /* A sidecar silent for three keepalive periods is gone. */
    if (now - st->last_seen > 3.0 * d->keepalive_ms / 1000.0)
        rpc_call_finish(st->call, RPC_UNAVAILABLE,
                        "no message from the sidecar for three keepalive "
                        "periods");
}

/* Service every stream: pushes, keepalives, silence; and streams that
 * never said hello get three keepalive periods to do so. */
static void service_streams_locked(cp_dist *d, double now)
{
    for (domain_state *dom = d->domains; dom; dom = dom->next)
        for (stream *st = dom->streams; st; st = st->next)
            stream_service_locked(d, st, now);
    for (stream *st = d->newcomers; st; st = st->next)
        if (now - st->last_seen > 3.0 * d->keepalive_ms / 1000.0)
            rpc_call_finish(st->call, RPC_DEADLINE_EXCEEDED,
                            "no hello within three keepalive periods");
}

/* Take st out of the list it is in (a domain's, or the newcomers'). */
static void stream_unlink_locked(cp_dist *d, stream *st)
{
    stream **head = st->dom ? &st->dom->streams : &d->newcomers;

    for (stream **p = head; *p; p = &(*p)->next)
        if (*p == st) {
            *p = st->next;
            break;
        }
    st->next = NULL;
}

/* Is another live stream of this replica speaking for sidecar `id` (one
 * that has not lost its record to another replica)? */
static bool id_connected_locked(cp_dist *d, const stream *except,
                                const char *id)
{
    for (domain_state *dom = d->domains; dom; dom = dom->next)
        for (stream *st = dom->streams; st; st = st->next)
            if (st != except && !st->status_lost && strcmp(st->id, id) == 0)
                return true;
    return false;
}

/* A domain nobody listens to is forgotten (its snapshot is rebuilt on the
 * next hello), so unknown names sent in hellos cannot pile up. */
static void domain_drop_if_idle_locked(cp_dist *d, domain_state *dom)
{
    if (dom->streams)
        return;
    for (domain_state **p = &d->domains; *p; p = &(*p)->next)
        if (*p == dom) {
            *p = dom->next;
            break;
        }
    snapshot_unref(dom->current);
    free(dom);
}

/* Offer `snap` to the stream: coalesces to the newest. */
static void stream_offer_locked(stream *st, snapshot *snap)
{
    snapshot_unref(st->pending);
    st->pending = snapshot_ref(snap);
}

static void rebuild_locked(cp_dist *d, bool all)
{
    for (domain_state *dom = d->domains; dom; dom = dom->next) {
        snapshot *s;

        if (!all && !dom->dirty)
            continue;
        dom->dirty = false;
        if (dom->streams == NULL) {
            /* Nobody listens: drop it, build again on the next hello. */
            snapshot_unref(dom->current);
            dom->current = NULL;
            continue;
        }
        s = snapshot_build(d, dom->name);
        if (s == NULL) {
            log_error("cannot build a snapshot", "domain=%s", dom->name);
            continue;
        }
        s->changed_at = dom->changed_at;
        if (dom->current && strcmp(dom->current->digest, s->digest) == 0) {
            /* Same content: an unchanged snapshot is never pushed. */
            metric_add(d->m_skipped, 1);
            snapshot_unref(s);
            continue;
        }
        snapshot_unref(dom->current);
        dom->current = s;
        for (stream *st = dom->streams; st; st = st->next)
            stream_offer_locked(st, s);
    }
}

static domain_state *domain_get_locked(cp_dist *d, const char *name)
{
    domain_state *dom;

    for (dom = d->domains; dom; dom = dom->next)
        if (strcmp(dom->name, name) == 0)
            return dom;
    dom = calloc(1, sizeof(*dom));
    if (dom == NULL)
        return NULL;
    snprintf(dom->name, sizeof(dom->name), "%s", name);
    dom->next = d->domains;
    d->domains = dom;
    return dom;
}

/* A changed resource dirties the domains whose snapshots may hold it. */
static void mark_dirty_locked(cp_dist *d, const res_info *info, double now)
{
    for (domain_state *dom = d->domains; dom; dom = dom->next) {
        bool hit =
            info->kind == RES_PRINCIPAL ||
            info->kind == RES_DATAPRODUCT || /* may be upstream */
            strcmp(info->scope, dom->name) == 0 ||
            (info->kind == RES_POLICY &&
             strcmp(info->scope, RES_SCOPE_GLOBAL) == 0) ||
            (info->kind == RES_DOMAIN && strcmp(info->name, dom->name) == 0);
        if (hit && !dom->dirty) {
            dom->dirty = true;
            dom->changed_at = now;
        }
    }
}

/* ---- loading and watching ---- */

static void resource_map_key(const char *kind, const char *scope,
                             const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s/%s", kind, scope, name);
}

static int load_all(cp_dist *d, polis_error *err)
{
    cp_resource *list = NULL;
    size_t n = 0;
    int64_t revision = 0;
    json_t *map = json_object();
    int rc;

    if (map == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    rc = cp_store_list(d->store, NULL, NULL, &list, &n, &revision, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char key[256];
        json_t *doc = json_loads(list[i].doc_json, 0, NULL);
        if (doc == NULL)
            continue;
        resource_map_key(list[i].kind, list[i].scope, list[i].name, key,
                         sizeof(key));
        json_object_set_new(map, key, doc);
    }
    cp_resources_free(list, n);
    if (rc) {
        json_decref(map);
        return rc;
    }
    pthread_mutex_lock(&d->lock);
    json_decref(d->resources);
    d->resources = map;
    d->revision = revision;
    pthread_mutex_unlock(&d->lock);
    return 0;
}

/*
 * Open a watch from d->revision + 1 and swap it in under the lock (so that
 * cp_dist_free always cancels the current one); the old one, if any, is
 * freed only once the new one is open.
 */
static int open_watch(cp_dist *d, polis_error *err)
{
    char prefix[300];
    etcd_watch_opts o = {0};
    etcd_watch *w = NULL, *old;
    int rc;

    snprintf(prefix, sizeof(prefix), "%sresources/", cp_store_prefix(d->store));
    o.key = prefix;
    o.prefix = true;
    o.start_revision = d->revision + 1;
    o.progress_notify = true;
    rc = etcd_watch_open(d->etcd, &o, &w, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&d->lock);
    old = d->watch;
    d->watch = w;
    pthread_mutex_unlock(&d->lock);
    etcd_watch_free(old);
    return 0;
}

static void apply_events_locked(cp_dist *d, const etcd_watch_batch *b,
                                double now)
{
    const char *prefix = cp_store_prefix(d->store);

    for (size_t i = 0; i < b->n; i++) {
        const etcd_event *ev = &b->events[i];
        res_info info;
        char key[256];

        if (res_etcd_key_parse(prefix, ev->kv.key, &info) != 0)
            continue;
        resource_map_key(res_kind_name(info.kind), info.scope, info.name, key,
                         sizeof(key));
        if (ev->type == ETCD_EVENT_DELETE) {
            json_object_del(d->resources, key);
        } else {
            json_t *rec = json_loadb(ev->kv.value, ev->kv.value_len, 0, NULL);
            json_t *doc = json_object_get(rec, "document");
            if (json_is_object(doc))
                json_object_set(d->resources, key, doc);
            json_decref(rec);
        }
        mark_dirty_locked(d, &info, now);
        if (!d->change_pending) {
            d->change_pending = true;
            d->first_change = now;
        }
        d->last_change = now;
    }
    if (b->revision > d->revision)
        d->revision = b->revision;
}

/* Full resync: reload every resource, watch again from there, rebuild. */
static void resync(cp_dist *d, const char *why)
{
    polis_error err = {0};
    char msg[1024];

    log_warn("resyncing with etcd", "reason=\"%s\"", why);
    if (load_all(d, &err) == 0 && open_watch(d, &err) == 0) {
        pthread_mutex_lock(&d->lock);
        rebuild_locked(d, true);
        pthread_mutex_unlock(&d->lock);
        return;
    }
    log_error("resync failed; retrying", "error=\"%s\"",
              polis_error_format(&err, msg, sizeof(msg)));
    struct timespec pause = {0, 500 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

static void *dist_thread(void *arg)
{
    cp_dist *d = arg;
    char msg[1024];
    int failures = 0; /* consecutive watch errors */

    while (!atomic_load(&d->stop)) {
        etcd_watch_batch b = {0};
        polis_error err = {0};
        double now = mono_now();
        int timeout = 50, rc;

        pthread_mutex_lock(&d->lock);
        if (d->change_pending) {
            double due = d->last_change + d->debounce_ms / 1000.0;
            double cap = d->first_change + d->debounce_max_ms / 1000.0;
            double at = due < cap ? due : cap;
            timeout = at > now ? (int)((at - now) * 1000) + 1 : 0;
        }
        pthread_mutex_unlock(&d->lock);
        /* Pending sends and keepalives want servicing soon too. */
        if (timeout > 50)
            timeout = 50;
        rc = etcd_watch_next(d->watch, &b, timeout, &err);
        if (rc == POLIS_ECANCELED && atomic_load(&d->stop))
            break;
        if (rc == POLIS_ECOMPACTED) {
            etcd_watch_batch_free(&b);
            resync(d, "the watch fell behind a compaction");
            failures = 0;
            continue;
        }
        now = mono_now();
        pthread_mutex_lock(&d->lock);
        if (rc == 0)
            apply_events_locked(d, &b, now);
        if (d->change_pending &&
            (now - d->last_change >= d->debounce_ms / 1000.0 ||
             now - d->first_change >= d->debounce_max_ms / 1000.0)) {
            d->change_pending = false;
            rebuild_locked(d, false);
        }
        service_streams_locked(d, now);
        pthread_mutex_unlock(&d->lock);
        etcd_watch_batch_free(&b);
        if (rc == 0 || rc == POLIS_ETIMEDOUT) {
            failures = 0;
            continue;
        }
        /* The watch retries broken connections itself; an error here is
         * final for this watch (etcd refused it): start over. */
        log_warn("watch error", "error=\"%s\"",
                 polis_error_format(&err, msg, sizeof(msg)));
        if (++failures >= 3) {
            resync(d, msg);
            failures = 0;
        } else {
            struct timespec pause = {0, 100 * 1000 * 1000};
            nanosleep(&pause, NULL);
        }
    }
    return NULL;
}

/* ---- the Subscribe stream ---- */

static bool valid_name(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '.' || c == '_' || (c >= 'A' && c <= 'Z')))
            return false;
    }
    return true;
}

static int subscribe_start(rpc_call *call, const ProtobufCMessage *req,
                           void *ud)
{
    cp_dist *d = ud;
    stream *st = calloc(1, sizeof(*st));

    if (st == NULL) {
        rpc_call_set_status_message(call, "out of memory");
        return RPC_RESOURCE_EXHAUSTED;
    }
    st->d = d;
    st->call = call;
    st->last_seen = st->last_keepalive = mono_now();
    rpc_call_set_data(call, st);
    pthread_mutex_lock(&d->lock);
    st->serial = ++d->next_serial;
    st->next = d->newcomers;
    d->newcomers = st;
    pthread_mutex_unlock(&d->lock);
    return RPC_CONTINUE;
}

static int on_hello(cp_dist *d, stream *st, const Polis__V1__Hello *h)
{
    domain_state *dom;
    char key[RES_NAME_MAX + 32];

    if (st->hello) {
        rpc_call_set_status_message(st->call, "hello: sent twice");
        return RPC_INVALID_ARGUMENT;
    }
    if (!valid_name(h->sidecar_id, ID_MAX)) {
        rpc_call_set_status_message(
            st->call,
            "hello.sidecar_id: \"%.64s\" is not a valid id "
            "(1-128 of A-Z a-z 0-9 . _ -)",
            h->sidecar_id);
        return RPC_INVALID_ARGUMENT;
    }
    if (!valid_name(h->domain, RES_NAME_MAX - 1)) {
        rpc_call_set_status_message(st->call,
                                    "hello.domain: \"%.64s\" is not a valid "
                                    "domain name",
                                    h->domain);
        return RPC_INVALID_ARGUMENT;
    }
    pthread_mutex_lock(&d->lock);
    /* A snapshot carries the principals and the masking key: only a
     * domain the council created gets one. */
    snprintf(key, sizeof(key), "Domain/%s/%s", RES_SCOPE_GLOBAL, h->domain);
    if (json_object_get(d->resources, key) == NULL) {
        pthread_mutex_unlock(&d->lock);
        rpc_call_set_status_message(st->call,
                                    "hello.domain: domain \"%s\" does not "
                                    "exist (apply its Domain first)",
                                    h->domain);
        return RPC_FAILED_PRECONDITION;
    }
    dom = domain_get_locked(d, h->domain);
    if (dom == NULL) {
        pthread_mutex_unlock(&d->lock);
        rpc_call_set_status_message(st->call, "out of memory");
        return RPC_RESOURCE_EXHAUSTED;
    }
    snprintf(st->id, sizeof(st->id), "%s", h->sidecar_id);
    snprintf(st->domain, sizeof(st->domain), "%s", h->domain);
    doc_utf8_sanitize(st->address, sizeof(st->address), h->address);
    doc_utf8_sanitize(st->version, sizeof(st->version), h->version);
    rfc3339_ms(wall_ms(), st->connected_since, sizeof(st->connected_since));
    stream_unlink_locked(d, st); /* from the newcomers */
    st->hello = true;
    st->dom = dom;
    st->next = dom->streams;
    dom->streams = st;
    if (dom->current == NULL) {
        dom->current = snapshot_build(d, dom->name);
        dom->dirty = false;
    }
    if (dom->current) {
        st->latest_revision = dom->current->revision;
        /* Its own revision counts only with the same content (digest):
         * another replica may number a snapshot differently. */
        if (strcmp(h->applied_digest, dom->current->digest) == 0)
            st->applied_revision = st->latest_revision;
        else if (h->applied_revision <= dom->current->revision)
            stream_offer_locked(st, dom->current);
        else
            st->applied_revision = h->applied_revision;
        /* else: it enforces something newer than this replica has seen
         * (it came from a replica further ahead); pushing ours would roll
         * it back.  Our watch catches up and the next build is offered. */
        stream_service_locked(d, st, mono_now());
    }
    metric_gauge_add(d->m_connected, 1);
    /* This stream is the sidecar's live connection: its record. */
    status_queue(d, st, true, STATUS_CLAIM);
    pthread_mutex_unlock(&d->lock);
    log_info("sidecar connected", "id=%s domain=%s peer=%s", st->id, st->domain,
             rpc_call_peer(st->call));
    return RPC_CONTINUE;
}

static void send_access_ack(rpc_call *call, uint64_t batch)
{
    Polis__V1__AccessAck ack = POLIS__V1__ACCESS_ACK__INIT;
    Polis__V1__ControlMessage cm = POLIS__V1__CONTROL_MESSAGE__INIT;

    ack.batch = batch;
    cm.msg_case = POLIS__V1__CONTROL_MESSAGE__MSG_ACCESS_ACK;
    cm.access_ack = &ack;
    /* A full send queue loses the ack: the sidecar sends the batch again
     * and the store recognises it. */
    rpc_call_send(call, &cm.base);
}

/* The access writer stored a batch: ack it on its stream, if still up.
 * Streams are found by serial under the lock, so a stream that ended (and
 * whose memory may be reused) is never written to. */
static void on_access_stored(void *ud, uint64_t token, uint64_t batch)
{
    cp_dist *d = ud;

    pthread_mutex_lock(&d->lock);
    for (domain_state *dom = d->domains; dom; dom = dom->next)
        for (stream *st = dom->streams; st; st = st->next)
            if (st->serial == token) {
                send_access_ack(st->call, batch);
                goto out;
            }
out:
    pthread_mutex_unlock(&d->lock);
}

static void on_access_report(cp_dist *d, stream *st,
                             const Polis__V1__AccessReport *rep)
{
    polis_error err = {0};
    char msg[1024];
    int rc = cp_access_submit(d->access, st->id, st->serial, rep, &err);

    if (rc == POLIS_EINVAL) {
        /* It would be refused every time: ack it so it is not resent. */
        log_warn("access report refused",
                 "id=%s batch=%" PRIu64 " error=\"%s\"", st->id, rep->batch,
                 polis_error_format(&err, msg, sizeof(msg)));
        send_access_ack(st->call, rep->batch);
    }
}

static int subscribe_message(rpc_call *call, const ProtobufCMessage *msg,
                             void *ud)
{
    cp_dist *d = ud;
    stream *st = rpc_call_data(call);
    const Polis__V1__SidecarMessage *m = (const Polis__V1__SidecarMessage *)msg;
    double now = mono_now();

    pthread_mutex_lock(&d->lock);
    st->last_seen = now;
    pthread_mutex_unlock(&d->lock);
    if (m->msg_case == POLIS__V1__SIDECAR_MESSAGE__MSG_HELLO)
        return on_hello(d, st, m->hello);
    if (!st->hello) {
        rpc_call_set_status_message(call, "the first message must be hello");
        return RPC_FAILED_PRECONDITION;
    }
    if (m->msg_case == POLIS__V1__SIDECAR_MESSAGE__MSG_ACCESS) {
        /* Outside the lock: validating 500 records is not free. */
        if (m->access)
            on_access_report(d, st, m->access);
        return RPC_CONTINUE;
    }
    pthread_mutex_lock(&d->lock);
    switch (m->msg_case) {
    case POLIS__V1__SIDECAR_MESSAGE__MSG_ACK:
        if (st->sent && m->ack->revision == st->sent->revision) {
            st->applied_revision = m->ack->revision;
            st->last_error[0] = '\0';
            metric_add(d->m_acks, 1);
            if (st->sent->changed_at > 0)
                metric_observe(d->m_convergence, now - st->sent->changed_at);
            status_queue(d, st, true, STATUS_GUARDED);
        }
        break;
    case POLIS__V1__SIDECAR_MESSAGE__MSG_NACK:
        /* Only a NACK of the newest push says what is in force now. */
        if (st->sent == NULL || m->nack->revision != st->sent->revision)
            break;
        doc_utf8_sanitize(st->last_error, sizeof(st->last_error),
                          m->nack->error);
        metric_add(d->m_nacks, 1);
        status_queue(d, st, true, STATUS_GUARDED);
        log_warn("sidecar rejected a snapshot",
                 "id=%s domain=%s revision=%" PRId64 " error=\"%.200s\"",
                 st->id, st->domain, m->nack->revision, st->last_error);
        break;
    default:
        /* Keepalive: refresh the stored lastSeen now and then, so that
         * `polisctl sidecars` shows a live sidecar as recently seen. */
        if (now - st->last_status_write >= STATUS_REFRESH_S)
            status_queue(d, st, true, STATUS_GUARDED);
        break;
    }
    pthread_mutex_unlock(&d->lock);
    return RPC_CONTINUE;
}

static void subscribe_end(rpc_call *call, int status, void *ud)
{
    cp_dist *d = ud;
    stream *st = rpc_call_data(call);

    if (st == NULL)
        return;
    pthread_mutex_lock(&d->lock);
    stream_unlink_locked(d, st);
    if (st->dom) {
        metric_gauge_add(d->m_connected, -1);
        /* A sidecar that already reconnected here stays connected. */
        if (!id_connected_locked(d, st, st->id))
            status_queue(d, st, false, STATUS_GUARDED);
        domain_drop_if_idle_locked(d, st->dom);
    }
    snapshot_unref(st->pending);
    snapshot_unref(st->sent);
    pthread_mutex_unlock(&d->lock);
    if (st->hello)
        log_info("sidecar disconnected", "id=%s domain=%s status=%s", st->id,
                 st->domain, rpc_status_name(status));
    rpc_call_set_data(call, NULL);
    free(st);
}

static const rpc_handler dist_handlers[] = {
    {"Subscribe", RPC_KIND_BIDI, subscribe_start, subscribe_message, NULL,
     subscribe_end},
};

/* ---- life cycle ---- */

int cp_dist_new(etcd_client *etcd, cp_store *store, metrics *m,
                const cp_dist_options *opts, cp_dist **out, polis_error *err)
{
    cp_dist *d = calloc(1, sizeof(*d));

    if (d == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->status_cond, NULL);
    d->etcd = etcd;
    d->store = store;
    d->m = m;
    d->debounce_ms = opts && opts->debounce_ms ? opts->debounce_ms : 20;
    d->debounce_max_ms =
        opts && opts->debounce_max_ms ? opts->debounce_max_ms : 250;
    d->keepalive_ms = opts && opts->keepalive_ms ? opts->keepalive_ms : 10000;
    d->status_lease_s =
        opts && opts->status_lease_s ? opts->status_lease_s : 15;
    snprintf(d->replica, sizeof(d->replica), "%s",
             opts && opts->replica ? opts->replica : "");
    d->key_len = opts ? opts->masking_key_len : 0;
    d->key = malloc(d->key_len ? d->key_len : 1);
    d->resources = json_object();
    d->status_pending = json_object();
    d->status_written = json_object();
    if (d->key == NULL || d->resources == NULL || d->status_pending == NULL ||
        d->status_written == NULL) {
        cp_dist_free(d);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    if (d->key_len)
        memcpy(d->key, opts->masking_key, d->key_len);
    d->m_pushes = metrics_counter(m, "polis_distribution_pushes_total",
                                  "Snapshots pushed to sidecars", NULL);
    d->m_acks = metrics_counter(m, "polis_distribution_acks_total",
                                "Snapshots acknowledged", NULL);
    d->m_nacks = metrics_counter(m, "polis_distribution_nacks_total",
                                 "Snapshots rejected by sidecars", NULL);
    d->m_builds = metrics_counter(m, "polis_distribution_builds_total",
                                  "Snapshots built", NULL);
    d->m_skipped = metrics_counter(
        m, "polis_distribution_unchanged_total",
        "Snapshots rebuilt with unchanged content, not pushed", NULL);
    d->m_connected = metrics_gauge(m, "polis_distribution_connected_sidecars",
                                   "Sidecars connected to this replica", NULL);
    d->m_convergence = metrics_histogram(
        m, "polis_distribution_convergence_seconds",
        "From a change seen in etcd to the sidecar's ACK", NULL,
        metrics_latency_buckets, metrics_latency_buckets_n);
    {
        cp_access_options ao = {0};
        int rc;

        ao.ttl_s = opts ? opts->access_ttl_s : 0;
        ao.stored = on_access_stored;
        ao.stored_ud = d;
        rc = cp_access_new(etcd, cp_store_prefix(store), m, &ao, &d->access,
                           err);
        if (rc) {
            cp_dist_free(d);
            return rc;
        }
    }
    *out = d;
    return 0;
}

int cp_dist_register(cp_dist *d, rpc_server *srv, polis_error *err)
{
    return rpc_server_add_service(srv, &polis__v1__distribution__descriptor,
                                  dist_handlers, 1, d, err);
}

int cp_dist_start(cp_dist *d, polis_error *err)
{
    int rc = load_all(d, err);

    if (rc == 0)
        rc = open_watch(d, err);
    if (rc)
        return rc;
    if (pthread_create(&d->thread, NULL, dist_thread, d) != 0)
        return polis_error_set(err, POLIS_EINTERNAL, NULL,
                               "cannot start the distribution thread");
    d->thread_started = true;
    if (pthread_create(&d->status_thread, NULL, status_thread, d) != 0)
        return polis_error_set(err, POLIS_EINTERNAL, NULL,
                               "cannot start the status thread");
    d->status_started = true;
    return 0;
}

void cp_dist_free(cp_dist *d)
{
    if (d == NULL)
        return;
    /* First: its thread calls back into d. */
    cp_access_free(d->access);
    d->access = NULL;
    atomic_store(&d->stop, true);
    pthread_mutex_lock(&d->lock);
    if (d->watch)
        etcd_watch_cancel(d->watch);
    pthread_mutex_unlock(&d->lock);
    if (d->thread_started)
        pthread_join(d->thread, NULL);
    if (d->status_started) {
        pthread_mutex_lock(&d->lock);
        pthread_cond_signal(&d->status_cond);
        pthread_mutex_unlock(&d->lock);
        pthread_join(d->status_thread, NULL);
    }
    etcd_watch_free(d->watch);
    while (d->domains) {
        domain_state *dom = d->domains;
        d->domains = dom->next;
        snapshot_unref(dom->current);
        free(dom);
    }
    if (d->lease)
        etcd_lease_revoke(d->etcd, d->lease, NULL);
    json_decref(d->resources);
    json_decref(d->status_pending);
    json_decref(d->status_written);
    free(d->key);
    pthread_mutex_destroy(&d->lock);
    pthread_cond_destroy(&d->status_cond);
    free(d);
}

/* ---- listing ---- */

void cp_sidecars_free(Polis__V1__SidecarStatus **list, size_t n)
{
    for (size_t i = 0; list && i < n; i++) {
        Polis__V1__SidecarStatus *s = list[i];
        free(s->id);
        free(s->domain);
        free(s->address);
        free(s->controlplane);
        free(s->state);
        free(s->last_error);
        free(s->last_seen);
        free(s->connected_since);
        free(s->version);
        free(s);
    }
    free(list);
}

static char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return strdup(v ? v : "");
}

static const char *derive_state(const json_t *rec)
{
    const char *stored = json_string_value(json_object_get(rec, "state"));
    int64_t applied =
        json_integer_value(json_object_get(rec, "appliedRevision"));
    int64_t latest = json_integer_value(json_object_get(rec, "latestRevision"));
    int64_t pushed = json_integer_value(json_object_get(rec, "pushedAtMs"));

    if (stored && strcmp(stored, "DISCONNECTED") == 0)
        return "DISCONNECTED";
    if (stored && strcmp(stored, "NACKED") == 0)
        return "NACKED";
    if (applied >= latest)
        return "SYNCED";
    return wall_ms() - pushed > STALE_AFTER_MS ? "STALE" : "SYNCING";
}

int cp_sidecars_list(etcd_client *etcd, const char *prefix, const char *domain,
                     Polis__V1__SidecarStatus ***out, size_t *n_out,
                     polis_error *err)
{
    char key[300];
    etcd_range_opts o = {.prefix = true};
    etcd_range_result rr = {0};
    Polis__V1__SidecarStatus **list;
    size_t n = 0;
    int rc;

    *out = NULL;
    *n_out = 0;
    snprintf(key, sizeof(key), "%ssidecars/", prefix);
    rc = etcd_range(etcd, key, &o, &rr, err);
    if (rc)
        return rc;
    list = calloc(rr.n ? rr.n : 1, sizeof(*list));
    if (list == NULL) {
        etcd_range_result_free(&rr);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    for (size_t i = 0; i < rr.n; i++) {
        json_t *rec = json_loadb(rr.kvs[i].value, rr.kvs[i].value_len, 0, NULL);
        Polis__V1__SidecarStatus *s;
        const char *dom = json_string_value(json_object_get(rec, "domain"));

        if (rec == NULL ||
            (domain && domain[0] && dom && strcmp(dom, domain) != 0)) {
            json_decref(rec);
            continue;
        }
        s = calloc(1, sizeof(*s));
        if (s == NULL) {
            json_decref(rec);
            break;
        }
        polis__v1__sidecar_status__init(s);
        s->id = jstr(rec, "id");
        s->domain = jstr(rec, "domain");
        s->address = jstr(rec, "address");
        s->controlplane = jstr(rec, "controlplane");
        s->state = strdup(derive_state(rec));
        s->applied_revision =
            json_integer_value(json_object_get(rec, "appliedRevision"));
        s->latest_revision =
            json_integer_value(json_object_get(rec, "latestRevision"));
        s->last_error = jstr(rec, "lastError");
        s->last_seen = jstr(rec, "lastSeen");
        s->connected_since = jstr(rec, "connectedSince");
        s->version = jstr(rec, "version");
        list[n++] = s;
        json_decref(rec);
    }
    etcd_range_result_free(&rr);
    *out = list;
    *n_out = n;
    return 0;
}
