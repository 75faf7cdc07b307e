/*
 * access_log.c — access records queued in memory, batched for the
 * subscriber and spooled to <state_dir>/access/ (access_log.h).  Spool
 * files hold one polis.v1.AccessReport each (distribution.proto), named
 * <batch id, 20 digits>-<records>.pb so that a restart knows their order
 * and size without reading them.  Design: docs/internals/access.md.
 */
#include "sidecar/access_log.h"
#include "polis/v1/distribution.pb-c.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_PENDING 10000
#define DEFAULT_MAX_SPOOL   (64ull * 1024 * 1024)
#define MAX_BATCH           500 /* also the control plane's limit */
#define FIELD_MAX           256 /* bytes kept of each string */
#define FILE_MAX            (4 * 1024 * 1024) /* larger: not ours */
#define PATH_MAX_LEN        1400

/* A batch is owned by the drain thread alone; record() never touches one,
 * so file I/O on batches happens without the lock that record() takes. */
typedef struct batch {
    uint64_t id;
    size_t count;
    sc_access *recs; /* NULL while only on disk */
    bool counted;    /* recs count against max_pending (not yet on disk) */
    bool on_disk;
    uint64_t file_bytes;
    bool in_flight;
    struct batch *next;
} batch;

struct sc_access_log {
    char dir[1024]; /* "" without a state dir */
    size_t max_pending, max_batch;
    uint64_t max_spool;

    pthread_mutex_t lock; /* pending[], counters, next_id */
    sc_access *pending;
    size_t npending;
    size_t mem_records; /* pending + counted batch records */
    uint64_t next_id;
    sc_access_log_stats st;

    batch *head, *tail; /* drain thread only; ascending ids */

    metric_series *m_records, *m_drop_mem, *m_drop_spool, *m_pending,
        *m_spool_bytes;
};

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Ids grow with the wall clock (4096 per ms) and never repeat within a
 * run, so a restarted sidecar does not reuse the ids of batches the
 * control plane has already stored (unless its clock went back). */
static uint64_t next_batch_id(sc_access_log *log)
{
    uint64_t id, clock_id = (uint64_t)wall_ms() << 12;

    pthread_mutex_lock(&log->lock);
    if (log->next_id < clock_id)
        log->next_id = clock_id;
    id = log->next_id++;
    pthread_mutex_unlock(&log->lock);
    return id;
}

/* Length of s cut at `max` bytes, backing off to a UTF-8 boundary. */
static size_t cut_len(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);

    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/*
 * The strings of a stored record live in one block that starts with the
 * principal, so freeing `principal` frees them all.
 */
static int copy_record(sc_access *dst, const sc_access *src)
{
    const char *in[6] = {src->principal, src->product,  src->port,
                         src->purpose,   src->decision, src->rule};
    size_t len[6], total = 0;
    const char **out[6];
    char *block, *p;

    for (int i = 0; i < 6; i++) {
        len[i] = in[i] ? cut_len(in[i], FIELD_MAX) : 0;
        total += len[i] + 1;
    }
    if ((block = malloc(total)) == NULL)
        return POLIS_ENOMEM;
    *dst = *src;
    out[0] = &dst->principal;
    out[1] = &dst->product;
    out[2] = &dst->port;
    out[3] = &dst->purpose;
    out[4] = &dst->decision;
    out[5] = &dst->rule;
    p = block;
    for (int i = 0; i < 6; i++) {
        if (len[i])
            memcpy(p, in[i], len[i]);
        p[len[i]] = '\0';
        *out[i] = p;
        p += len[i] + 1;
    }
    if (dst->time_ms == 0)
        dst->time_ms = wall_ms();
    return 0;
}

static void free_records(sc_access *recs, size_t n)
{
    if (recs == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free((char *)recs[i].principal);
    free(recs);
}

static void publish_gauges(sc_access_log *log)
{
    metric_set(log->m_pending, (int64_t)log->mem_records);
    metric_set(log->m_spool_bytes, (int64_t)log->st.spool_bytes);
}

static void batch_path(const sc_access_log *log, const batch *b, char *buf,
                       size_t len)
{
    snprintf(buf, len, "%s/%020" PRIu64 "-%zu.pb", log->dir, b->id, b->count);
}

static void batch_free(sc_access_log *log, batch *b)
{
    if (b->recs && b->counted) {
        pthread_mutex_lock(&log->lock);
        log->mem_records -= b->count;
        publish_gauges(log);
        pthread_mutex_unlock(&log->lock);
    }
    free_records(b->recs, b->count);
    free(b);
}

/* Unlink b from the queue (prev: its predecessor or NULL). */
static void batch_unlink(sc_access_log *log, batch *prev, batch *b)
{
    if (prev)
        prev->next = b->next;
    else
        log->head = b->next;
    if (log->tail == b)
        log->tail = prev;
}

/* Keep ascending ids: spooled files found at start may sort anywhere. */
static void batch_insert(sc_access_log *log, batch *b)
{
    batch *prev = NULL, *cur = log->head;

    if (log->tail && log->tail->id < b->id) {
        b->next = NULL;
        log->tail->next = b;
        log->tail = b;
        return;
    }
    while (cur && cur->id < b->id) {
        prev = cur;
        cur = cur->next;
    }
    b->next = cur;
    if (prev)
        prev->next = b;
    else
        log->head = b;
    if (cur == NULL)
        log->tail = b;
}

/* Delete b's spool file and account for it. */
static void unspool(sc_access_log *log, batch *b)
{
    char path[PATH_MAX_LEN];

    if (!b->on_disk)
        return;
    batch_path(log, b, path, sizeof(path));
    unlink(path);
    b->on_disk = false;
    pthread_mutex_lock(&log->lock);
    log->st.spool_bytes -= b->file_bytes;
    log->st.spooled_batches--;
    publish_gauges(log);
    pthread_mutex_unlock(&log->lock);
}

static void count_spool_drop(sc_access_log *log, size_t n)
{
    pthread_mutex_lock(&log->lock);
    log->st.dropped_spool += n;
    pthread_mutex_unlock(&log->lock);
    metric_add(log->m_drop_spool, n);
}

static int make_dir(const char *path, polis_error *err)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return polis_error_set(err, POLIS_EIO, path, "cannot create: %s",
                               strerror(errno));
    return 0;
}

/* Queue the spool files an earlier run left behind. */
static int scan_spool(sc_access_log *log, polis_error *err)
{
    DIR *d = opendir(log->dir);
    struct dirent *de;

    if (d == NULL)
        return polis_error_set(err, POLIS_EIO, log->dir, "cannot open: %s",
                               strerror(errno));
    while ((de = readdir(d)) != NULL) {
        char path[PATH_MAX_LEN], tail[8];
        uint64_t id;
        size_t count;
        struct stat sb;
        batch *b;

        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", log->dir, de->d_name);
        /* A .tmp is a write cut short by a crash: never renamed, never
         * complete. */
        if (strstr(de->d_name, ".tmp")) {
            unlink(path);
            continue;
        }
        if (sscanf(de->d_name, "%20" SCNu64 "-%zu%7s", &id, &count, tail) !=
                3 ||
            strcmp(tail, ".pb") != 0 || count == 0 || count > MAX_BATCH ||
            stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if ((b = calloc(1, sizeof(*b))) == NULL) {
            closedir(d);
            return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        }
        b->id = id;
        b->count = count;
        b->on_disk = true;
        b->file_bytes = (uint64_t)sb.st_size;
        batch_insert(log, b);
        log->st.spooled_batches++;
        log->st.spool_bytes += b->file_bytes;
        if (id >= log->next_id)
            log->next_id = id + 1;
    }
    closedir(d);
    return 0;
}

int sc_access_log_new(const sc_access_log_options *o, sc_access_log **out,
                      polis_error *err)
{
    sc_access_log *log = calloc(1, sizeof(*log));
    metrics *m = o ? o->metrics : NULL;
    int rc;

    *out = NULL;
    if (log == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    log->max_pending =
        o && o->max_pending ? o->max_pending : DEFAULT_MAX_PENDING;
    log->max_spool =
        o && o->max_spool_bytes ? o->max_spool_bytes : DEFAULT_MAX_SPOOL;
    log->max_batch = o && o->max_batch && o->max_batch < MAX_BATCH
                         ? o->max_batch
                         : MAX_BATCH;
    pthread_mutex_init(&log->lock, NULL);
    /* Sized once at the bound, so record() never reallocates. */
    log->pending = malloc(log->max_pending * sizeof(sc_access));
    if (log->pending == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL,
                             "%zu pending access records", log->max_pending);
        goto fail;
    }
    if (o && o->state_dir && o->state_dir[0]) {
        if ((size_t)snprintf(log->dir, sizeof(log->dir), "%s/access",
                             o->state_dir) >= sizeof(log->dir)) {
            rc = polis_error_set(err, POLIS_EINVAL, "state_dir", "too long");
            goto fail;
        }
        if ((rc = make_dir(o->state_dir, err)) != 0 ||
            (rc = make_dir(log->dir, err)) != 0 ||
            (rc = scan_spool(log, err)) != 0)
            goto fail;
    }
    if (m) {
        log->m_records = metrics_counter(
            m, "polis_sidecar_access_records_total",
            "Access records accepted (one per product request)", NULL);
        log->m_drop_mem = metrics_counter(
            m, "polis_sidecar_access_dropped_total",
            "Access records lost: memory bound reached, or spool bound "
            "reached / unreadable spool file",
            "reason=\"memory\"");
        log->m_drop_spool = metrics_counter(
            m, "polis_sidecar_access_dropped_total",
            "Access records lost: memory bound reached, or spool bound "
            "reached / unreadable spool file",
            "reason=\"spool\"");
        log->m_pending =
            metrics_gauge(m, "polis_sidecar_access_pending",
                          "Access records held in memory, not yet on disk "
                          "or acknowledged",
                          NULL);
        log->m_spool_bytes =
            metrics_gauge(m, "polis_sidecar_access_spool_bytes",
                          "Bytes of access records spooled to disk", NULL);
        publish_gauges(log);
    }
    *out = log;
    return 0;
fail:
    sc_access_log_free(log);
    return rc;
}

void sc_access_log_free(sc_access_log *log)
{
    batch *b, *next;

    if (log == NULL)
        return;
    for (b = log->head; b; b = next) {
        next = b->next;
        free_records(b->recs, b->count);
        free(b);
    }
    free_records(log->pending, log->npending);
    pthread_mutex_destroy(&log->lock);
    free(log);
}

void sc_access_log_record(sc_access_log *log, const sc_access *a)
{
    sc_access rec;
    bool kept = false;

    if (log == NULL || a == NULL)
        return;
    /* Copy before taking the lock: the ports are many, the lock is one. */
    if (copy_record(&rec, a) != 0) {
        pthread_mutex_lock(&log->lock);
        log->st.dropped_memory++;
        pthread_mutex_unlock(&log->lock);
        metric_add(log->m_drop_mem, 1);
        return;
    }
    pthread_mutex_lock(&log->lock);
    if (log->mem_records < log->max_pending) {
        log->pending[log->npending++] = rec;
        log->mem_records++;
        log->st.recorded++;
        publish_gauges(log);
        kept = true;
    } else {
        log->st.dropped_memory++;
    }
    pthread_mutex_unlock(&log->lock);
    if (kept) {
        metric_add(log->m_records, 1);
    } else {
        free((char *)rec.principal);
        metric_add(log->m_drop_mem, 1);
    }
}

/*
 * Move up to `max` pending records (0: all of them) into new batches at the
 * end of the queue; returns the first new batch, or NULL with *rc set when
 * out of memory (the records then stay pending).  Only the drain thread
 * takes records out of pending[], so the count seen first can only grow.
 */
static batch *seal_pending(sc_access_log *log, size_t max, int *rc)
{
    batch *first = NULL;
    size_t budget = max ? max : SIZE_MAX;

    *rc = 0;
    while (budget > 0) {
        batch *b;
        sc_access *recs;
        size_t k;

        pthread_mutex_lock(&log->lock);
        k = log->npending;
        pthread_mutex_unlock(&log->lock);
        if (k > log->max_batch)
            k = log->max_batch;
        if (k > budget)
            k = budget;
        if (k == 0)
            break;
        b = calloc(1, sizeof(*b));
        recs = malloc(k * sizeof(*recs));
        if (b == NULL || recs == NULL) {
            free(b);
            free(recs);
            *rc = POLIS_ENOMEM;
            break;
        }
        pthread_mutex_lock(&log->lock);
        memcpy(recs, log->pending, k * sizeof(*recs));
        memmove(log->pending, log->pending + k,
                (log->npending - k) * sizeof(*recs));
        log->npending -= k;
        pthread_mutex_unlock(&log->lock);
        b->id = next_batch_id(log);
        b->count = k;
        b->recs = recs;
        b->counted = true;
        batch_insert(log, b);
        if (first == NULL)
            first = b;
        budget -= k;
    }
    return first;
}

/* Decode a spool file into b->recs. */
static int load_batch(sc_access_log *log, batch *b, polis_error *err)
{
    char path[PATH_MAX_LEN];
    Polis__V1__AccessReport *rep = NULL;
    uint8_t *buf = NULL;
    struct stat sb;
    size_t got = 0;
    int fd, rc = 0;

    batch_path(log, b, path, sizeof(path));
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return polis_error_set(err, POLIS_EIO, path, "cannot open: %s",
                               strerror(errno));
    if (fstat(fd, &sb) != 0 || sb.st_size <= 0 || sb.st_size > FILE_MAX) {
        rc = polis_error_set(err, POLIS_EIO, path, "bad size");
        goto out;
    }
    if ((buf = malloc((size_t)sb.st_size)) == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto out;
    }
    while (got < (size_t)sb.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
        if (r <= 0) {
            rc = polis_error_set(err, POLIS_EIO, path, "cannot read");
            goto out;
        }
        got += (size_t)r;
    }
    rep = polis__v1__access_report__unpack(NULL, got, buf);
    if (rep == NULL || rep->batch != b->id || rep->n_records != b->count) {
        rc = polis_error_set(err, POLIS_EPARSE, path,
                             "not the access report its name says");
        goto out;
    }
    if ((b->recs = calloc(b->count, sizeof(*b->recs))) == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto out;
    }
    for (size_t i = 0; i < b->count; i++) {
        const Polis__V1__AccessRecord *r = rep->records[i];
        sc_access a = {0};

        a.time_ms = r->time_unix_ms;
        a.principal = r->principal;
        a.product = r->product;
        a.port = r->port;
        a.purpose = r->purpose;
        a.decision = r->decision;
        a.rule = r->rule;
        a.http_status = r->http_status;
        a.rows = r->rows;
        a.bytes = r->bytes;
        a.latency_us = r->latency_us;
        if (copy_record(&b->recs[i], &a) != 0) {
            free_records(b->recs, i);
            b->recs = NULL;
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
            goto out;
        }
    }
    b->counted = false;
out:
    if (rep)
        polis__v1__access_report__free_unpacked(rep, NULL);
    free(buf);
    close(fd);
    return rc;
}

int sc_access_log_take(sc_access_log *log, size_t max, sc_access_batch *out,
                       polis_error *err)
{
    batch *prev = NULL, *b;
    int rc;

    memset(out, 0, sizeof(*out));
    if (log == NULL)
        return 0;
    if (max == 0 || max > log->max_batch)
        max = log->max_batch;
    b = log->head;
    while (b) {
        if (b->in_flight) {
            prev = b;
            b = b->next;
            continue;
        }
        if (b->recs == NULL) {
            polis_error lerr = {0};

            if (load_batch(log, b, &lerr) != 0) {
                batch *next = b->next;

                if (lerr.code == POLIS_ENOMEM)
                    return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
                /* Unreadable: keeping it would wedge the queue. */
                unspool(log, b);
                count_spool_drop(log, b->count);
                batch_unlink(log, prev, b);
                batch_free(log, b);
                b = next;
                continue;
            }
        }
        break;
    }
    if (b == NULL) {
        b = seal_pending(log, max, &rc);
        if (b == NULL)
            return rc ? polis_error_set(err, rc, NULL, NULL) : 0;
    }
    b->in_flight = true;
    out->id = b->id;
    out->count = b->count;
    out->records = b->recs;
    return 0;
}

void sc_access_log_ack(sc_access_log *log, uint64_t id)
{
    batch *prev = NULL, *b;

    if (log == NULL)
        return;
    for (b = log->head; b && b->id != id; b = b->next)
        prev = b;
    if (b == NULL)
        return;
    unspool(log, b);
    batch_unlink(log, prev, b);
    pthread_mutex_lock(&log->lock);
    log->st.acked += b->count;
    pthread_mutex_unlock(&log->lock);
    batch_free(log, b);
}

void sc_access_log_requeue(sc_access_log *log)
{
    if (log == NULL)
        return;
    for (batch *b = log->head; b; b = b->next)
        b->in_flight = false;
}

/* Write b as one AccessReport: temp file, fsync, rename. */
static int write_batch(sc_access_log *log, batch *b, polis_error *err)
{
    Polis__V1__AccessReport rep = POLIS__V1__ACCESS_REPORT__INIT;
    Polis__V1__AccessRecord *rows = NULL, **ptrs = NULL;
    char path[PATH_MAX_LEN], tmp[PATH_MAX_LEN + 8];
    uint8_t *buf = NULL;
    size_t len, done = 0;
    int fd = -1, rc = 0;

    rows = calloc(b->count, sizeof(*rows));
    ptrs = calloc(b->count, sizeof(*ptrs));
    if (rows == NULL || ptrs == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto out;
    }
    for (size_t i = 0; i < b->count; i++) {
        const sc_access *a = &b->recs[i];
        Polis__V1__AccessRecord *r = &rows[i];

        polis__v1__access_record__init(r);
        r->time_unix_ms = a->time_ms;
        r->principal = (char *)a->principal;
        r->product = (char *)a->product;
        r->port = (char *)a->port;
        r->purpose = (char *)a->purpose;
        r->decision = (char *)a->decision;
        r->rule = (char *)a->rule;
        r->http_status = a->http_status;
        r->rows = a->rows;
        r->bytes = a->bytes;
        r->latency_us = a->latency_us;
        ptrs[i] = r;
    }
    rep.records = ptrs;
    rep.n_records = b->count;
    rep.batch = b->id;
    len = polis__v1__access_report__get_packed_size(&rep);
    if ((buf = malloc(len ? len : 1)) == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto out;
    }
    polis__v1__access_report__pack(&rep, buf);
    batch_path(log, b, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
        rc = polis_error_set(err, POLIS_EIO, tmp, "cannot create: %s",
                             strerror(errno));
        goto out;
    }
    while (done < len) {
        ssize_t w = write(fd, buf + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = polis_error_set(err, POLIS_EIO, tmp, "cannot write: %s",
                                 strerror(errno));
            goto out;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0) {
        rc = polis_error_set(err, POLIS_EIO, tmp, "cannot sync: %s",
                             strerror(errno));
        goto out;
    }
    rc = close(fd);
    fd = -1;
    if (rc != 0) {
        rc = polis_error_set(err, POLIS_EIO, tmp, "cannot close: %s",
                             strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        rc = polis_error_set(err, POLIS_EIO, path, "cannot rename: %s",
                             strerror(errno));
        goto out;
    }
    b->on_disk = true;
    b->file_bytes = len;
    pthread_mutex_lock(&log->lock);
    log->st.spool_bytes += len;
    log->st.spooled_batches++;
    publish_gauges(log);
    pthread_mutex_unlock(&log->lock);
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    } else if (rc) {
        unlink(tmp);
    }
    free(buf);
    free(ptrs);
    free(rows);
    return rc;
}

int sc_access_log_spool(sc_access_log *log, polis_error *err)
{
    batch *prev, *b;
    int rc = 0, first_rc = 0;

    if (log == NULL || log->dir[0] == '\0')
        return 0;
    seal_pending(log, 0, &rc);
    if (rc)
        first_rc = polis_error_set(err, rc, NULL, "cannot batch records");
    for (b = log->head; b; b = b->next) {
        if (b->in_flight || b->on_disk || b->recs == NULL)
            continue;
        if ((rc = write_batch(log, b, err)) != 0) {
            if (!first_rc)
                first_rc = rc;
            break; /* the disk is full or gone: the next ones fail too */
        }
        if (b->counted) {
            pthread_mutex_lock(&log->lock);
            log->mem_records -= b->count;
            publish_gauges(log);
            pthread_mutex_unlock(&log->lock);
        }
        free_records(b->recs, b->count);
        b->recs = NULL;
        b->counted = false;
    }
    /* Oldest out first: the newest records say most about now. */
    prev = NULL;
    b = log->head;
    while (b) {
        uint64_t bytes;
        batch *next = b->next;

        pthread_mutex_lock(&log->lock);
        bytes = log->st.spool_bytes;
        pthread_mutex_unlock(&log->lock);
        if (bytes <= log->max_spool)
            break;
        if (b->on_disk && !b->in_flight) {
            unspool(log, b);
            count_spool_drop(log, b->count);
            batch_unlink(log, prev, b);
            batch_free(log, b);
        } else {
            prev = b;
        }
        b = next;
    }
    return first_rc;
}

void sc_access_log_stats_get(sc_access_log *log, sc_access_log_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (log == NULL)
        return;
    pthread_mutex_lock(&log->lock);
    *out = log->st;
    out->pending = log->mem_records;
    pthread_mutex_unlock(&log->lock);
}
