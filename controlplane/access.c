/*
 * access.c — access records from the sidecars (access.h): validation and
 * sanitizing on the rpc workers, one etcd txn per batch on a writer thread
 * (create-if-absent, so a resent batch is stored and counted once), and
 * newest-first listing by scanning time windows backwards.  Design notes:
 * docs/internals/access.md.
 */
#include "controlplane/access.h"
#include "common/document.h"
#include "common/log.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FIELD_MAX       257    /* 256 bytes of text, as the sidecar cuts */
#define MAX_SERIES      512    /* polis_access_total label sets */
#define FUTURE_SLACK_MS 300000 /* clocks ahead by more are clamped */
#define LIST_DEFAULT    100
#define LIST_MAX        10000
#define LIST_PAGE       200  /* batches per etcd range */
#define LIST_MAX_SCAN   5000 /* batches read per listing */
#define RETRY_MS        500

typedef struct job {
    uint64_t token, batch;
    char *key, *value;
    json_t *counts; /* label set -> records */
    struct job *next;
} job;

struct cp_access {
    etcd_client *etcd;
    char prefix[256];
    metrics *m;
    int ttl_s;
    size_t queue_max;
    cp_access_stored_fn stored;
    void *stored_ud;

    pthread_mutex_t lock; /* queue, seen, stop */
    pthread_cond_t cond;
    job *head, *tail;
    size_t queued;
    json_t *seen; /* label sets in use, to bound the series */
    bool stop;
    pthread_t thread;
    bool started;

    int64_t lease;   /* writer thread only */
    double lease_at; /* monotonic seconds it was granted */
    metric_series *m_stored, *m_duplicate, *m_invalid, *m_overloaded, *m_failed;
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

static void job_free(job *j)
{
    if (j == NULL)
        return;
    free(j->key);
    free(j->value);
    json_decref(j->counts);
    free(j);
}

/* ---- labels ---- */

static bool label_safe(const char *s, size_t max)
{
    size_t n = strlen(s);

    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
              c == '/'))
            return false;
    }
    return true;
}

static const char *one_of(const char *s, const char *const *allowed)
{
    for (size_t i = 0; allowed[i]; i++)
        if (strcmp(s, allowed[i]) == 0)
            return allowed[i];
    return "other";
}

/*
 * The label set of one record.  Only a bounded vocabulary reaches the
 * registry: ports and decisions are known words, products are names; past
 * MAX_SERIES label sets, new products count as "_other".
 */
static void record_labels(cp_access *a, const char *product, const char *port,
                          const char *decision, char *buf, size_t len)
{
    static const char *const ports[] = {"query", "file", "event", "http", NULL};
    static const char *const decisions[] = {"allow", "deny", "error", NULL};
    const char *prod = label_safe(product, 129) ? product : "invalid";

    snprintf(buf, len, "product=\"%s\",port=\"%s\",decision=\"%s\"", prod,
             one_of(port, ports), one_of(decision, decisions));
    pthread_mutex_lock(&a->lock);
    if (json_object_get(a->seen, buf) == NULL) {
        if (json_object_size(a->seen) < MAX_SERIES)
            json_object_set_new(a->seen, buf, json_true());
        else
            snprintf(buf, len, "product=\"_other\",port=\"%s\",decision=\"%s\"",
                     one_of(port, ports), one_of(decision, decisions));
    }
    pthread_mutex_unlock(&a->lock);
}

/* ---- submitting ---- */

int cp_access_submit(cp_access *a, const char *sidecar_id, uint64_t token,
                     const Polis__V1__AccessReport *rep, polis_error *err)
{
    json_t *records = NULL, *value = NULL, *counts = NULL;
    int64_t now = wall_ms(), key_time = 0;
    job *j = NULL;
    char *text = NULL;
    int rc;

    if (rep->batch == 0) {
        metric_add(a->m_invalid, 1);
        return polis_error_set(err, POLIS_EINVAL, "access.batch",
                               "missing batch id");
    }
    if (rep->n_records == 0 || rep->n_records > CP_ACCESS_MAX_BATCH) {
        metric_add(a->m_invalid, 1);
        return polis_error_set(err, POLIS_EINVAL, "access.records",
                               "%zu records (1 to %d per batch)",
                               rep->n_records, CP_ACCESS_MAX_BATCH);
    }
    records = json_array();
    counts = json_object();
    if (records == NULL || counts == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto out;
    }
    for (size_t i = 0; i < rep->n_records; i++) {
        const Polis__V1__AccessRecord *r = rep->records[i];
        char principal[FIELD_MAX], product[FIELD_MAX], port[FIELD_MAX],
            purpose[FIELD_MAX], decision[FIELD_MAX], rule[FIELD_MAX];
        char labels[512];
        int64_t t = r->time_unix_ms > 0 ? r->time_unix_ms : now;
        json_t *rec;

        doc_utf8_sanitize(principal, sizeof(principal), r->principal);
        doc_utf8_sanitize(product, sizeof(product), r->product);
        doc_utf8_sanitize(port, sizeof(port), r->port);
        doc_utf8_sanitize(purpose, sizeof(purpose), r->purpose);
        doc_utf8_sanitize(decision, sizeof(decision), r->decision);
        doc_utf8_sanitize(rule, sizeof(rule), r->rule);
        if (t > now + FUTURE_SLACK_MS)
            t = now + FUTURE_SLACK_MS;
        if (t > key_time)
            key_time = t;
        rec = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:I, "
                        "s:I}",
                        "time", (json_int_t)t, "principal", principal,
                        "product", product, "port", port, "purpose", purpose,
                        "decision", decision, "rule", rule, "status",
                        (int)r->http_status, "rows", (json_int_t)r->rows,
                        "bytes", (json_int_t)r->bytes, "latencyUs",
                        (json_int_t)r->latency_us);
        if (rec == NULL || json_array_append_new(records, rec) != 0) {
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
            goto out;
        }
        record_labels(a, product, port, decision, labels, sizeof(labels));
        json_object_set_new(
            counts, labels,
            json_integer(json_integer_value(json_object_get(counts, labels)) +
                         1));
    }
    value = json_pack("{s:s, s:s, s:O, s:I}", "sidecar", sidecar_id, "batch",
                      "", "records", records, "receivedMs", (json_int_t)now);
    j = calloc(1, sizeof(*j));
    if (value == NULL || j == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto out;
    }
    {
        char batch[24];
        snprintf(batch, sizeof(batch), "%" PRIu64, rep->batch);
        json_object_set_new(value, "batch", json_string(batch));
    }
    text = json_dumps(value, JSON_COMPACT);
    if (text == NULL ||
        asprintf(&j->key, "%saccess/%013" PRId64 "-%s-%020" PRIu64, a->prefix,
                 key_time, sidecar_id, rep->batch) < 0) {
        j->key = NULL;
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto out;
    }
    j->value = text;
    text = NULL;
    j->counts = counts;
    counts = NULL;
    j->token = token;
    j->batch = rep->batch;
    pthread_mutex_lock(&a->lock);
    if (a->queued >= a->queue_max || a->stop) {
        pthread_mutex_unlock(&a->lock);
        metric_add(a->m_overloaded, 1);
        rc = polis_error_set(err, POLIS_EAGAIN, NULL,
                             "%zu access batches already wait for etcd",
                             a->queued);
        goto out;
    }
    if (a->tail)
        a->tail->next = j;
    else
        a->head = j;
    a->tail = j;
    a->queued++;
    j = NULL;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
    rc = 0;
out:
    job_free(j);
    free(text);
    json_decref(value);
    json_decref(records);
    json_decref(counts);
    return rc;
}

/* ---- the writer ---- */

/*
 * Leases are granted for ttl + ttl/12 and replaced every ttl/12, never
 * kept alive: a record lives between ttl and ttl + ttl/12, and at most 13
 * leases are alive at once.
 */
static int ensure_lease(cp_access *a, polis_error *err)
{
    int rotate = a->ttl_s / 12 > 0 ? a->ttl_s / 12 : 1;
    int rc;

    if (a->lease && mono_now() - a->lease_at < rotate)
        return 0;
    rc = etcd_lease_grant(a->etcd, a->ttl_s + rotate, &a->lease, err);
    if (rc) {
        a->lease = 0;
        return rc;
    }
    a->lease_at = mono_now();
    return 0;
}

static int write_job(cp_access *a, job *j, bool *created, polis_error *err)
{
    etcd_compare cmp = {.key = j->key,
                        .target = ETCD_CMP_CREATE,
                        .op = ETCD_CMP_EQUAL,
                        .number = 0};
    etcd_op put = {.type = ETCD_OP_PUT,
                   .key = j->key,
                   .value = j->value,
                   .value_len = strlen(j->value)};
    etcd_txn_result tr = {0};
    int rc = ensure_lease(a, err);

    if (rc)
        return rc;
    put.lease = a->lease;
    rc = etcd_txn(a->etcd, &cmp, 1, &put, 1, NULL, 0, &tr, err);
    *created = tr.succeeded;
    etcd_txn_result_free(&tr);
    if (rc)
        a->lease = 0; /* it may be the lease that etcd refused */
    return rc;
}

static void count_job(cp_access *a, const job *j)
{
    const char *labels;
    json_t *n;

    json_object_foreach(j->counts, labels, n)
    {
        metric_add(metrics_counter(a->m, "polis_access_total",
                                   "Product requests served by the sidecars, "
                                   "by product, port and decision",
                                   labels),
                   (uint64_t)json_integer_value(n));
    }
}

static void *writer_thread(void *arg)
{
    cp_access *a = arg;
    char msg[1024];

    pthread_mutex_lock(&a->lock);
    while (!a->stop) {
        job *j = a->head;
        polis_error err = {0};
        bool created = false;
        int rc;

        if (j == NULL) {
            pthread_cond_wait(&a->cond, &a->lock);
            continue;
        }
        pthread_mutex_unlock(&a->lock);
        rc = write_job(a, j, &created, &err);
        if (rc == 0) {
            if (created)
                count_job(a, j);
            metric_add(created ? a->m_stored : a->m_duplicate, 1);
            if (a->stored)
                a->stored(a->stored_ud, j->token, j->batch);
        } else {
            metric_add(a->m_failed, 1);
            log_warn("cannot store access records; retrying",
                     "key=%s error=\"%s\"", j->key,
                     polis_error_format(&err, msg, sizeof(msg)));
        }
        pthread_mutex_lock(&a->lock);
        if (rc == 0) {
            a->head = j->next;
            if (a->head == NULL)
                a->tail = NULL;
            a->queued--;
            job_free(j);
        } else if (!a->stop) {
            struct timespec until;

            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += RETRY_MS * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&a->cond, &a->lock, &until);
        }
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

int cp_access_new(etcd_client *etcd, const char *prefix, metrics *m,
                  const cp_access_options *o, cp_access **out, polis_error *err)
{
    cp_access *a = calloc(1, sizeof(*a));
    static const char *batches_help =
        "Access report batches from sidecars, by what became of them";

    *out = NULL;
    if (a == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    a->etcd = etcd;
    a->m = m;
    snprintf(a->prefix, sizeof(a->prefix), "%s", prefix ? prefix : "");
    a->ttl_s = o && o->ttl_s > 0 ? o->ttl_s : 3600;
    a->queue_max = o && o->queue_max ? o->queue_max : 256;
    a->stored = o ? o->stored : NULL;
    a->stored_ud = o ? o->stored_ud : NULL;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
    a->seen = json_object();
    if (a->seen == NULL) {
        cp_access_free(a);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    a->m_stored = metrics_counter(m, "polis_access_batches_total", batches_help,
                                  "result=\"stored\"");
    a->m_duplicate = metrics_counter(m, "polis_access_batches_total",
                                     batches_help, "result=\"duplicate\"");
    a->m_invalid = metrics_counter(m, "polis_access_batches_total",
                                   batches_help, "result=\"invalid\"");
    a->m_overloaded = metrics_counter(m, "polis_access_batches_total",
                                      batches_help, "result=\"overloaded\"");
    a->m_failed = metrics_counter(m, "polis_access_store_errors_total",
                                  "Failed etcd writes of access batches "
                                  "(retried)",
                                  NULL);
    if (pthread_create(&a->thread, NULL, writer_thread, a) != 0) {
        cp_access_free(a);
        return polis_error_set(err, POLIS_EINTERNAL, NULL,
                               "cannot start the access writer thread");
    }
    a->started = true;
    *out = a;
    return 0;
}

void cp_access_free(cp_access *a)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->lock);
    a->stop = true;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    if (a->started)
        pthread_join(a->thread, NULL);
    while (a->head) {
        job *j = a->head;
        a->head = j->next;
        job_free(j);
    }
    json_decref(a->seen);
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->cond);
    free(a);
}

/* ---- listing ---- */

static char *jdup(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return strdup(v ? v : "");
}

static void record_free(Polis__V1__AccessRecord *r)
{
    if (r == NULL)
        return;
    free(r->principal);
    free(r->product);
    free(r->port);
    free(r->purpose);
    free(r->decision);
    free(r->rule);
    free(r->sidecar_id);
    free(r);
}

void cp_access_response_free(Polis__V1__AccessResponse *out)
{
    for (size_t i = 0; i < out->n_records; i++)
        record_free(out->records[i]);
    free(out->records);
    out->records = NULL;
    out->n_records = 0;
}

static int newest_first(const void *x, const void *y)
{
    const Polis__V1__AccessRecord *a = *(Polis__V1__AccessRecord *const *)x;
    const Polis__V1__AccessRecord *b = *(Polis__V1__AccessRecord *const *)y;

    if (a->time_unix_ms != b->time_unix_ms)
        return a->time_unix_ms < b->time_unix_ms ? 1 : -1;
    return strcmp(a->sidecar_id, b->sidecar_id);
}

typedef struct collected {
    Polis__V1__AccessRecord **v;
    size_t n, cap;
    bool dropped; /* a match was cut by the limit */
} collected;

/* Add the matching records of one stored batch. */
static int collect_batch(collected *c, const etcd_kv *kv,
                         const Polis__V1__AccessRequest *req)
{
    json_t *doc = json_loadb(kv->value, kv->value_len, 0, NULL);
    json_t *rec;
    size_t i;
    int rc = 0;

    if (doc == NULL)
        return 0; /* not ours to judge: skip what does not parse */
    json_array_foreach(json_object_get(doc, "records"), i, rec)
    {
        const char *product =
            json_string_value(json_object_get(rec, "product"));
        const char *principal =
            json_string_value(json_object_get(rec, "principal"));
        Polis__V1__AccessRecord *r;

        if (req->product && req->product[0] &&
            (product == NULL || strcmp(product, req->product) != 0))
            continue;
        if (req->principal && req->principal[0] &&
            (principal == NULL || strcmp(principal, req->principal) != 0))
            continue;
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 256;
            Polis__V1__AccessRecord **v = realloc(c->v, cap * sizeof(*v));
            if (v == NULL) {
                rc = POLIS_ENOMEM;
                break;
            }
            c->v = v;
            c->cap = cap;
        }
        if ((r = calloc(1, sizeof(*r))) == NULL) {
            rc = POLIS_ENOMEM;
            break;
        }
        polis__v1__access_record__init(r);
        r->time_unix_ms = json_integer_value(json_object_get(rec, "time"));
        r->principal = jdup(rec, "principal");
        r->product = jdup(rec, "product");
        r->port = jdup(rec, "port");
        r->purpose = jdup(rec, "purpose");
        r->decision = jdup(rec, "decision");
        r->rule = jdup(rec, "rule");
        r->sidecar_id = jdup(doc, "sidecar");
        r->http_status =
            (int32_t)json_integer_value(json_object_get(rec, "status"));
        r->rows = json_integer_value(json_object_get(rec, "rows"));
        r->bytes = json_integer_value(json_object_get(rec, "bytes"));
        r->latency_us = json_integer_value(json_object_get(rec, "latencyUs"));
        c->v[c->n++] = r;
        if (!r->principal || !r->product || !r->port || !r->purpose ||
            !r->decision || !r->rule || !r->sidecar_id) {
            rc = POLIS_ENOMEM;
            break;
        }
    }
    json_decref(doc);
    return rc;
}

static void sort_and_trim(collected *c, size_t limit)
{
    if (c->n > 1) /* qsort(NULL, 0) is undefined */
        qsort(c->v, c->n, sizeof(*c->v), newest_first);
    while (c->n > limit) {
        record_free(c->v[--c->n]);
        c->dropped = true;
    }
}

/* The time in an access key ("<prefix>access/<13 digits>-..."), or -1. */
static int64_t key_time(const char *key, size_t prefix_len)
{
    const char *p = key + prefix_len;
    int64_t t = 0;

    for (int i = 0; i < 13; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        t = t * 10 + (p[i] - '0');
    }
    return t;
}

/*
 * A stored batch's key carries its newest record's time, so every record
 * of the batches below a window's start is older than that start: once
 * `limit` matches are at least as new as the window's start, no older
 * window can change the answer.  Windows start at 10 s and double; a
 * window with more than a page of batches is halved instead.
 */
int cp_access_list(etcd_client *etcd, const char *prefix,
                   const Polis__V1__AccessRequest *req,
                   Polis__V1__AccessResponse *out, polis_error *err)
{
    char base[300], lo_key[340], hi_key[340];
    size_t limit = req->limit ? req->limit : LIST_DEFAULT, scanned = 0;
    etcd_range_opts first = {.prefix = true, .limit = 1, .keys_only = true};
    etcd_range_result rr = {0};
    collected c = {0};
    int64_t lo_bound, hi, w = 10000;
    size_t base_len;
    int rc;

    if (limit > LIST_MAX)
        limit = LIST_MAX;
    snprintf(base, sizeof(base), "%saccess/", prefix);
    base_len = strlen(base);
    rc = etcd_range(etcd, base, &first, &rr, err);
    if (rc)
        return rc;
    if (rr.n == 0) {
        etcd_range_result_free(&rr);
        return 0;
    }
    lo_bound = key_time(rr.kvs[0].key, base_len);
    etcd_range_result_free(&rr);
    if (lo_bound < 0)
        lo_bound = 0;
    hi = wall_ms() + FUTURE_SLACK_MS + 1;
    while (hi > lo_bound) {
        int64_t lo = hi - w < lo_bound ? lo_bound : hi - w;
        etcd_range_opts o = {.range_end = hi_key, .limit = LIST_PAGE};

        snprintf(lo_key, sizeof(lo_key), "%s%013" PRId64, base, lo);
        snprintf(hi_key, sizeof(hi_key), "%s%013" PRId64, base, hi);
        memset(&rr, 0, sizeof(rr));
        if ((rc = etcd_range(etcd, lo_key, &o, &rr, err)) != 0)
            goto fail;
        if (rr.more && hi - lo > 1) {
            etcd_range_result_free(&rr);
            w = (hi - lo) / 2;
            continue;
        }
        if (rr.more)
            out->truncated = true; /* > a page in one ms: keep a page */
        for (size_t i = 0; i < rr.n && rc == 0; i++)
            rc = collect_batch(&c, &rr.kvs[i], req);
        scanned += rr.n;
        etcd_range_result_free(&rr);
        if (rc) {
            rc = polis_error_set(err, rc, NULL, NULL);
            goto fail;
        }
        sort_and_trim(&c, limit);
        if (c.n == limit && c.v[limit - 1]->time_unix_ms >= lo) {
            if (lo > lo_bound)
                out->truncated = true;
            break;
        }
        if (scanned >= LIST_MAX_SCAN) {
            out->truncated = true;
            break;
        }
        hi = lo;
        if (w < 3600000)
            w *= 2;
    }
    out->truncated = out->truncated || c.dropped;
    out->records = c.v;
    out->n_records = c.n;
    return 0;
fail:
    for (size_t i = 0; i < c.n; i++)
        record_free(c.v[i]);
    free(c.v);
    return rc;
}
