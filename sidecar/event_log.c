/*
 * event_log.c — segmented append-only event log (event_log.h): segment
 * files named by their first offset, records framed with a length and a
 * CRC-32C, recovery of a torn tail at open, fsync policies with group commit,
 * retention by bytes and age.  Design notes: docs/internals/event_log.md.
 */
#include "sidecar/event_log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EL_NAME_DIGITS      20
#define EL_INDEX_INTERVAL   4096u /* bytes between sparse index entries */
#define EL_READ_RECORDS_MAX 100000u
#define EL_READ_BYTES_MAX   (64u * 1024 * 1024)

typedef struct el_index_entry {
    uint64_t offset;
    uint64_t pos;
} el_index_entry;

typedef struct el_segment {
    uint64_t base; /* first offset, the file's name */
    uint64_t next; /* one past its last record */
    uint64_t size; /* bytes of intact records */
    int64_t max_time_ms;
    int fd;
    el_index_entry *index; /* sparse: one entry per EL_INDEX_INTERVAL bytes */
    size_t nindex, capindex;
} el_segment;

struct sc_event_log {
    sc_event_log_options opts;
    char *dir;
    int dirfd;
    pthread_mutex_t mu;
    pthread_cond_t durable_cv; /* durable_next moved, or failure/shutdown */
    pthread_cond_t dirty_cv;   /* records wait for the flusher */
    el_segment *segs;          /* oldest first; the last is active */
    size_t nsegs, capsegs;
    uint64_t written_next; /* one past the last record written */
    uint64_t durable_next; /* one past the last acknowledged record */
    uint64_t total_bytes;
    uint64_t fsyncs, truncated_bytes, segments_retired;
    int64_t last_fsync_mono_ms;
    bool failed; /* sticky after a failed fsync or a failed undo */
    bool closing;
    bool stop_flusher;
    bool has_flusher;
    pthread_t flusher;
    /* Asynchronous appends (BATCH) waiting for their fsync, in append
     * order (so in order of `end`). */
    struct el_waiter *waiters, *waiters_tail;
    int resolving; /* the flusher is calling waiters' callbacks */
};

typedef struct el_waiter {
    uint64_t first, end;
    sc_event_done_fn done;
    void *ctx;
    struct el_waiter *next;
} el_waiter;

/* ---- CRC-32C (Castagnoli), table driven ---- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- little-endian framing ---- */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/*
 * Header: [u32 payload length][u32 CRC-32C][u64 offset][i64 time_ms].  The
 * CRC covers offset, time and payload, so a header pointing at the wrong
 * place is caught as surely as a damaged payload.
 */
static uint32_t record_crc(const unsigned char *hdr, const void *payload,
                           size_t len)
{
    uint32_t c = crc32c_update(0, hdr + 8, 16);
    return crc32c_update(c, payload, len);
}

/* ---- time ---- */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t log_now(const sc_event_log *log)
{
    return log->opts.clock_ms ? log->opts.clock_ms(log->opts.clock_ctx)
                              : wall_ms();
}

static struct timespec mono_deadline(int64_t ms_from_now)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms_from_now / 1000;
    ts.tv_nsec += (ms_from_now % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/* ---- segments ---- */

static void segment_name(char *buf, size_t len, uint64_t base)
{
    snprintf(buf, len, "%020" PRIu64 ".log", base);
}

static int io_error(polis_error *err, const sc_event_log *log, const char *what,
                    uint64_t base)
{
    char name[64];
    int e = errno;
    segment_name(name, sizeof(name), base);
    return polis_error_set(err, POLIS_EIO, log->dir, "%s %s: %s", what, name,
                           strerror(e));
}

static int index_add(el_segment *s, uint64_t offset, uint64_t pos)
{
    if (s->nindex > 0 && pos - s->index[s->nindex - 1].pos < EL_INDEX_INTERVAL)
        return 0;
    if (s->nindex == s->capindex) {
        size_t cap = s->capindex ? s->capindex * 2 : 16;
        el_index_entry *p = realloc(s->index, cap * sizeof(*p));
        if (!p)
            return POLIS_ENOMEM;
        s->index = p;
        s->capindex = cap;
    }
    s->index[s->nindex].offset = offset;
    s->index[s->nindex].pos = pos;
    s->nindex++;
    return 0;
}

static void segment_close(el_segment *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    free(s->index);
    s->index = NULL;
    s->nindex = s->capindex = 0;
}

static int segs_push(sc_event_log *log, const el_segment *s)
{
    if (log->nsegs == log->capsegs) {
        size_t cap = log->capsegs ? log->capsegs * 2 : 8;
        el_segment *p = realloc(log->segs, cap * sizeof(*p));
        if (!p)
            return POLIS_ENOMEM;
        log->segs = p;
        log->capsegs = cap;
    }
    log->segs[log->nsegs++] = *s;
    return 0;
}

static int fsync_dir(sc_event_log *log, polis_error *err)
{
    if (log->opts.fsync == SC_EVENT_FSYNC_NEVER)
        return 0;
    if (fsync(log->dirfd) != 0)
        return polis_error_set(err, POLIS_EIO, log->dir, "fsync: %s",
                               strerror(errno));
    return 0;
}

/*
 * Walk a segment's records from the start, building its sparse index, last
 * time and end.  With `verify`, payloads are read and their CRC checked (the
 * active segment at open); otherwise only the headers are (sealed segments
 * were fsynced when they were rolled).  Sets s->size to the end of the last
 * intact record.
 */
static int segment_scan(sc_event_log *log, el_segment *s, bool verify,
                        polis_error *err)
{
    struct stat st;
    unsigned char hdr[SC_EVENT_LOG_HEADER_SIZE];
    unsigned char *buf = NULL;
    size_t cap = 0;
    uint64_t pos = 0, expect = s->base;
    int rc = 0;

    if (fstat(s->fd, &st) != 0)
        return io_error(err, log, "stat", s->base);
    s->max_time_ms = INT64_MIN;
    while (pos + SC_EVENT_LOG_HEADER_SIZE <= (uint64_t)st.st_size) {
        ssize_t r = pread(s->fd, hdr, sizeof(hdr), (off_t)pos);
        if (r != (ssize_t)sizeof(hdr)) {
            rc = io_error(err, log, "read", s->base);
            goto out;
        }
        uint32_t len = get_u32(hdr);
        if (len > SC_EVENT_LOG_RECORD_MAX || get_u64(hdr + 8) != expect ||
            pos + SC_EVENT_LOG_HEADER_SIZE + len > (uint64_t)st.st_size)
            break;
        if (verify) {
            if (len > cap) {
                unsigned char *p = realloc(buf, len);
                if (!p) {
                    rc = polis_error_set(err, POLIS_ENOMEM, log->dir,
                                         "no memory to verify a record");
                    goto out;
                }
                buf = p;
                cap = len;
            }
            if (len > 0 && pread(s->fd, buf, len,
                                 (off_t)(pos + SC_EVENT_LOG_HEADER_SIZE)) !=
                               (ssize_t)len) {
                rc = io_error(err, log, "read", s->base);
                goto out;
            }
            if (record_crc(hdr, buf, len) != get_u32(hdr + 4))
                break;
        }
        if (index_add(s, expect, pos) != 0) {
            rc = polis_error_set(err, POLIS_ENOMEM, log->dir, "no memory");
            goto out;
        }
        int64_t t = (int64_t)get_u64(hdr + 16);
        if (t > s->max_time_ms)
            s->max_time_ms = t;
        pos += SC_EVENT_LOG_HEADER_SIZE + len;
        expect++;
    }
    s->size = pos;
    s->next = expect;
out:
    free(buf);
    return rc;
}

static int name_to_base(const char *name, uint64_t *base)
{
    if (strlen(name) != EL_NAME_DIGITS + 4 ||
        strcmp(name + EL_NAME_DIGITS, ".log") != 0)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < EL_NAME_DIGITS; i++) {
        if (name[i] < '0' || name[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(name[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *base = v;
    return 0;
}

static int cmp_seg(const void *a, const void *b)
{
    const el_segment *x = a, *y = b;
    return x->base < y->base ? -1 : x->base > y->base;
}

static int segment_create(sc_event_log *log, uint64_t base, polis_error *err)
{
    char name[64];
    el_segment s = {.base = base, .next = base, .max_time_ms = INT64_MIN};

    segment_name(name, sizeof(name), base);
    s.fd =
        openat(log->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (s.fd < 0)
        return io_error(err, log, "create", base);
    if (segs_push(log, &s) != 0) {
        close(s.fd);
        unlinkat(log->dirfd, name, 0);
        return polis_error_set(err, POLIS_ENOMEM, log->dir, "no memory");
    }
    return fsync_dir(log, err);
}

/* Load every segment, verify the active one and cut its bad tail. */
static int load_segments(sc_event_log *log, polis_error *err)
{
    int dfd = dup(log->dirfd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    struct dirent *de;
    int rc = 0;

    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return polis_error_set(err, POLIS_EIO, log->dir, "opendir: %s",
                               strerror(errno));
    }
    while ((de = readdir(d)) != NULL) {
        el_segment s = {.fd = -1};
        if (name_to_base(de->d_name, &s.base) != 0)
            continue;
        if (segs_push(log, &s) != 0) {
            closedir(d);
            return polis_error_set(err, POLIS_ENOMEM, log->dir, "no memory");
        }
    }
    closedir(d);
    if (log->nsegs == 0)
        return segment_create(log, 0, err);
    qsort(log->segs, log->nsegs, sizeof(*log->segs), cmp_seg);

    for (size_t i = 0; i < log->nsegs; i++) {
        el_segment *s = &log->segs[i];
        bool active = i + 1 == log->nsegs;
        char name[64];
        struct stat st;

        segment_name(name, sizeof(name), s->base);
        s->fd =
            openat(log->dirfd, name, (active ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        if (s->fd < 0)
            return io_error(err, log, "open", s->base);
        rc = segment_scan(log, s, active, err);
        if (rc)
            return rc;
        if (fstat(s->fd, &st) != 0)
            return io_error(err, log, "stat", s->base);
        if (active && (uint64_t)st.st_size > s->size) {
            /* A torn or corrupt tail: nothing after it was acknowledged
               (acknowledged records are fsynced, in order), so cut it. */
            if (ftruncate(s->fd, (off_t)s->size) != 0 ||
                (log->opts.fsync != SC_EVENT_FSYNC_NEVER && fsync(s->fd) != 0))
                return io_error(err, log, "truncate", s->base);
            log->truncated_bytes += (uint64_t)st.st_size - s->size;
        }
        log->total_bytes += s->size;
    }
    log->written_next = log->durable_next = log->segs[log->nsegs - 1].next;
    return 0;
}

/* ---- retention ---- */

/* Lock held.  Delete the oldest sealed segment. */
static int retire_oldest(sc_event_log *log, polis_error *err)
{
    el_segment *s = &log->segs[0];
    char name[64];

    segment_name(name, sizeof(name), s->base);
    if (unlinkat(log->dirfd, name, 0) != 0 && errno != ENOENT)
        return io_error(err, log, "delete", s->base);
    log->total_bytes -= s->size;
    segment_close(s);
    memmove(log->segs, log->segs + 1, (log->nsegs - 1) * sizeof(*log->segs));
    log->nsegs--;
    log->segments_retired++;
    return 0;
}

static int retain_locked(sc_event_log *log, size_t *removed, polis_error *err)
{
    size_t n = 0;
    int rc = 0;
    int64_t cutoff = log->opts.retention_ms > 0
                         ? log_now(log) - log->opts.retention_ms
                         : INT64_MIN;

    while (log->nsegs > 1) {
        bool too_big = log->opts.retention_bytes > 0 &&
                       log->total_bytes > log->opts.retention_bytes;
        bool too_old = log->segs[0].max_time_ms < cutoff;
        if (!too_big && !too_old)
            break;
        rc = retire_oldest(log, err);
        if (rc)
            break;
        n++;
    }
    if (n > 0 && rc == 0)
        rc = fsync_dir(log, err);
    if (removed)
        *removed = n;
    return rc;
}

int sc_event_log_retain(sc_event_log *log, size_t *removed, polis_error *err)
{
    pthread_mutex_lock(&log->mu);
    int rc = retain_locked(log, removed, err);
    pthread_mutex_unlock(&log->mu);
    return rc;
}

/* Defined with the flusher below. */
static void *flusher_main(void *arg);

int sc_event_log_configure(sc_event_log *log, const sc_event_log_options *opts,
                           polis_error *err)
{
    int rc = 0;

    if (opts->fsync > SC_EVENT_FSYNC_NEVER || opts->retention_ms < 0)
        return polis_error_set(err, POLIS_EINVAL, log->dir,
                               "bad event log options (fsync %d, retention "
                               "%" PRId64 " ms)",
                               (int)opts->fsync, opts->retention_ms);
    pthread_mutex_lock(&log->mu);
    if (opts->fsync == SC_EVENT_FSYNC_BATCH && !log->has_flusher) {
        if (pthread_create(&log->flusher, NULL, flusher_main, log) != 0) {
            rc = polis_error_set(err, POLIS_EINTERNAL, log->dir,
                                 "cannot start the flusher thread");
            goto out;
        }
        log->has_flusher = true;
    }
    /* Leaving BATCH, the flusher stays: it still fsyncs and answers the
     * asynchronous appends already waiting. */
    log->opts.fsync = opts->fsync;
    log->opts.segment_bytes =
        opts->segment_bytes ? opts->segment_bytes : 64u * 1024 * 1024;
    log->opts.retention_bytes = opts->retention_bytes;
    log->opts.retention_ms = opts->retention_ms;
    if (!log->closing)
        rc = retain_locked(log, NULL, err);
out:
    pthread_mutex_unlock(&log->mu);
    return rc;
}

/* ---- fsync ---- */

/* Lock held: the log can no longer be trusted.  Wake synchronous appenders
 * (durable_cv) and the flusher, which fails the asynchronous ones. */
static void fail_locked(sc_event_log *log)
{
    log->failed = true;
    pthread_cond_broadcast(&log->durable_cv);
    pthread_cond_signal(&log->dirty_cv);
}

/* Lock held: the fsync itself is cheap to serialise in ALWAYS mode. */
static int fsync_active_locked(sc_event_log *log, polis_error *err)
{
    el_segment *s = &log->segs[log->nsegs - 1];
    if (fsync(s->fd) != 0) {
        fail_locked(log);
        return io_error(err, log, "fsync", s->base);
    }
    log->fsyncs++;
    if (log->opts.on_fsync)
        log->opts.on_fsync(log->opts.on_fsync_ctx, log->written_next);
    return 0;
}

/* Lock held: detach the waiters whose records are durable (all of them
 * when `all`).  Their callbacks run after the lock is released. */
static el_waiter *take_waiters(sc_event_log *log, bool all)
{
    el_waiter *head = log->waiters, *last = NULL, *w = head;

    while (w && (all || w->end <= log->durable_next)) {
        last = w;
        w = w->next;
    }
    if (last == NULL)
        return NULL;
    last->next = NULL;
    log->waiters = w;
    if (w == NULL)
        log->waiters_tail = NULL;
    return head;
}

/* No lock held: tell each waiter how its append ended. */
static void resolve_waiters(sc_event_log *log, el_waiter *w, int code,
                            const char *why)
{
    while (w) {
        el_waiter *next = w->next;
        polis_error err = {0};

        if (code != 0)
            polis_error_set(&err, code, log->dir, "%s", why);
        w->done(w->ctx, code, w->first, code ? &err : NULL);
        free(w);
        w = next;
    }
}

static void *flusher_main(void *arg)
{
    sc_event_log *log = arg;

    pthread_mutex_lock(&log->mu);
    for (;;) {
        /* Waiters with nothing left to write: appended in BATCH mode before
         * a switch to ALWAYS or NEVER made later records durable at once.
         * They still take one fsync (cheap) before they are told. */
        bool dirty = !log->failed && (log->written_next > log->durable_next ||
                                      log->waiters != NULL);
        if (log->failed && log->waiters) {
            /* Failed outside the flusher (a roll or an ALWAYS append). */
            el_waiter *all = take_waiters(log, true);
            log->resolving++;
            pthread_mutex_unlock(&log->mu);
            resolve_waiters(log, all, POLIS_EIO,
                            "fsync failed; the events may be lost");
            pthread_mutex_lock(&log->mu);
            log->resolving--;
            pthread_cond_broadcast(&log->durable_cv);
            continue;
        }
        if (!dirty) {
            if (log->stop_flusher)
                break;
            pthread_cond_wait(&log->dirty_cv, &log->mu);
            continue;
        }
        int64_t wait = log->last_fsync_mono_ms +
                       (int64_t)log->opts.batch_interval_ms - mono_ms();
        if (wait > 0 && !log->stop_flusher) {
            struct timespec ts = mono_deadline(wait);
            pthread_cond_timedwait(&log->dirty_cv, &log->mu, &ts);
            continue;
        }
        /* fsync a duplicate outside the lock so that appenders keep writing
           meanwhile (their records ride on the next fsync); the duplicate
           stays valid even if the segment rolls or is deleted. */
        uint64_t target = log->written_next;
        int fd = dup(log->segs[log->nsegs - 1].fd);
        pthread_mutex_unlock(&log->mu);
        int rc = fd >= 0 ? fsync(fd) : -1;
        if (fd >= 0)
            close(fd);
        if (rc == 0 && log->opts.on_fsync)
            log->opts.on_fsync(log->opts.on_fsync_ctx, target);
        pthread_mutex_lock(&log->mu);
        log->last_fsync_mono_ms = mono_ms();
        if (rc != 0) {
            log->failed = true;
        } else {
            log->fsyncs++;
            if (target > log->durable_next)
                log->durable_next = target;
        }
        pthread_cond_broadcast(&log->durable_cv);
        {
            el_waiter *ready = take_waiters(log, rc != 0);
            if (ready || (rc == 0 && log->opts.on_visible)) {
                log->resolving++;
                pthread_mutex_unlock(&log->mu);
                /* Readers first: a publisher told "durable" may expect its
                 * consumers to be woken already. */
                if (rc == 0 && log->opts.on_visible)
                    log->opts.on_visible(log->opts.on_visible_ctx, target);
                resolve_waiters(log, ready, rc ? POLIS_EIO : 0,
                                "fsync failed; the events may be lost");
                pthread_mutex_lock(&log->mu);
                log->resolving--;
                pthread_cond_broadcast(&log->durable_cv);
            }
        }
    }
    pthread_mutex_unlock(&log->mu);
    return NULL;
}

/* ---- open / free ---- */

/* A new log's directory entry must reach the disk before its records do. */
static int fsync_parent(sc_event_log *log, polis_error *err)
{
    char *copy, *slash;
    int fd, rc = 0;

    if (log->opts.fsync == SC_EVENT_FSYNC_NEVER)
        return 0;
    copy = strdup(log->dir);
    if (!copy)
        return polis_error_set(err, POLIS_ENOMEM, log->dir, "no memory");
    while ((slash = strrchr(copy, '/')) != NULL && slash[1] == '\0' &&
           slash != copy)
        *slash = '\0'; /* "a/b/" is "a/b" */
    slash = strrchr(copy, '/');
    const char *parent = !slash ? "." : slash == copy ? "/" : copy;
    if (slash && slash != copy)
        *slash = '\0';
    fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
        rc = polis_error_set(err, POLIS_EIO, parent, "fsync: %s",
                             strerror(errno));
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

int sc_event_log_open(const sc_event_log_options *opts, sc_event_log **out,
                      polis_error *err)
{
    sc_event_log *log = NULL;
    pthread_condattr_t ca;
    int rc = 0;

    *out = NULL;
    if (!opts || !opts->dir || !*opts->dir)
        return polis_error_set(err, POLIS_EINVAL, "event log",
                               "no directory given");
    if (opts->fsync > SC_EVENT_FSYNC_NEVER ||
        opts->max_record_bytes > SC_EVENT_LOG_RECORD_MAX ||
        opts->retention_ms < 0)
        return polis_error_set(err, POLIS_EINVAL, opts->dir,
                               "bad event log options (fsync %d, record max "
                               "%zu, retention %" PRId64 " ms)",
                               (int)opts->fsync, opts->max_record_bytes,
                               opts->retention_ms);
    pthread_once(&crc_once, crc_init);

    log = calloc(1, sizeof(*log));
    if (!log)
        return polis_error_set(err, POLIS_ENOMEM, opts->dir, "no memory");
    log->opts = *opts;
    log->dirfd = -1;
    if (!log->opts.segment_bytes)
        log->opts.segment_bytes = 64u * 1024 * 1024;
    if (!log->opts.max_record_bytes)
        log->opts.max_record_bytes = 1024u * 1024;
    log->dir = strdup(opts->dir);
    log->opts.dir = log->dir;
    pthread_mutex_init(&log->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&log->durable_cv, &ca);
    pthread_cond_init(&log->dirty_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!log->dir) {
        rc = polis_error_set(err, POLIS_ENOMEM, opts->dir, "no memory");
        goto out;
    }
    if (mkdir(log->dir, 0755) == 0) {
        rc = fsync_parent(log, err);
        if (rc)
            goto out;
    } else if (errno != EEXIST) {
        rc = polis_error_set(err, POLIS_EIO, log->dir, "mkdir: %s",
                             strerror(errno));
        goto out;
    }
    log->dirfd = open(log->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (log->dirfd < 0) {
        rc = polis_error_set(err, POLIS_EIO, log->dir, "open: %s",
                             strerror(errno));
        goto out;
    }
    if (flock(log->dirfd, LOCK_EX | LOCK_NB) != 0) {
        rc = polis_error_set(
            err, errno == EWOULDBLOCK ? POLIS_ECONFLICT : POLIS_EIO, log->dir,
            "the event log is in use: %s", strerror(errno));
        goto out;
    }
    rc = load_segments(log, err);
    if (rc)
        goto out;
    if (log->opts.fsync == SC_EVENT_FSYNC_BATCH) {
        if (pthread_create(&log->flusher, NULL, flusher_main, log) != 0) {
            rc = polis_error_set(err, POLIS_EINTERNAL, log->dir,
                                 "cannot start the flusher thread");
            goto out;
        }
        log->has_flusher = true;
    }
    *out = log;
    return 0;
out:
    sc_event_log_free(log);
    return rc;
}

void sc_event_log_shutdown(sc_event_log *log)
{
    if (!log)
        return;
    el_waiter *w;

    pthread_mutex_lock(&log->mu);
    log->closing = true;
    pthread_cond_broadcast(&log->durable_cv);
    w = take_waiters(log, true);
    /* After this returns no callback runs any more: the caller may free
     * what the callbacks touch. */
    while (log->resolving > 0)
        pthread_cond_wait(&log->durable_cv, &log->mu);
    pthread_mutex_unlock(&log->mu);
    resolve_waiters(log, w, POLIS_ECANCELED,
                    "the event log shut down before the events were synced");
}

void sc_event_log_free(sc_event_log *log)
{
    if (!log)
        return;
    if (log->has_flusher) {
        pthread_mutex_lock(&log->mu);
        log->stop_flusher = true;
        pthread_cond_signal(&log->dirty_cv);
        pthread_mutex_unlock(&log->mu);
        pthread_join(log->flusher, NULL);
    }
    resolve_waiters(log, take_waiters(log, true), POLIS_ECANCELED,
                    "the event log was closed before the events were "
                    "synced");
    for (size_t i = 0; i < log->nsegs; i++)
        segment_close(&log->segs[i]);
    free(log->segs);
    if (log->dirfd >= 0)
        close(log->dirfd); /* releases the flock */
    pthread_cond_destroy(&log->dirty_cv);
    pthread_cond_destroy(&log->durable_cv);
    pthread_mutex_destroy(&log->mu);
    free(log->dir);
    free(log);
}

/* ---- append ---- */

/* Lock held.  Seal the active segment and start one at written_next. */
static int roll_locked(sc_event_log *log, polis_error *err)
{
    el_segment *s = &log->segs[log->nsegs - 1];
    int rc;

    /* In NEVER mode too while records of BATCH appends wait for their
       fsync (the mode was changed under them). */
    if (log->opts.fsync != SC_EVENT_FSYNC_NEVER ||
        log->durable_next < log->written_next) {
        /* Sealed segments are trusted at open without their CRCs being
           checked, so they must be whole on disk before a newer one
           exists. */
        if (fsync(s->fd) != 0) {
            fail_locked(log);
            return io_error(err, log, "fsync", s->base);
        }
        log->fsyncs++;
        if (log->opts.on_fsync)
            log->opts.on_fsync(log->opts.on_fsync_ctx, log->written_next);
        if (log->written_next > log->durable_next) {
            log->durable_next = log->written_next;
            pthread_cond_broadcast(&log->durable_cv);
        }
    }
    rc = segment_create(log, log->written_next, err);
    if (rc)
        return rc;
    polis_error ignored = {0};
    /* Retention failing (a file that will not go) must not fail a publish;
       the next roll or sc_event_log_retain retries. */
    retain_locked(log, NULL, &ignored);
    return 0;
}

/*
 * Both appends: write the records, then per the fsync policy wait for
 * their fsync (`wait`, BATCH), or hand `waiter` to the flusher (BATCH,
 * *queued set), or make them durable now (ALWAYS, NEVER).
 */
static int append(sc_event_log *log, const sc_event *events, size_t n,
                  uint64_t *first_offset, el_waiter *waiter, bool *queued,
                  polis_error *err)
{
    unsigned char *buf = NULL;
    uint64_t total = 0, first = 0, end = 0;
    bool notify = false;
    int rc = 0;

    if (n == 0 || !events)
        return polis_error_set(err, POLIS_EINVAL, log->dir,
                               "no events to append");
    for (size_t i = 0; i < n; i++) {
        if (events[i].len > log->opts.max_record_bytes)
            return polis_error_set(err, POLIS_ETOOBIG, log->dir,
                                   "event %zu is %zu bytes, above the limit "
                                   "of %zu",
                                   i, events[i].len,
                                   log->opts.max_record_bytes);
        if (events[i].len > 0 && !events[i].data)
            return polis_error_set(err, POLIS_EINVAL, log->dir,
                                   "event %zu has no data", i);
        total += SC_EVENT_LOG_HEADER_SIZE + events[i].len;
        if (total > SC_EVENT_LOG_BATCH_MAX)
            return polis_error_set(err, POLIS_ETOOBIG, log->dir,
                                   "one append is limited to %u bytes",
                                   SC_EVENT_LOG_BATCH_MAX);
    }
    buf = malloc(total);
    if (!buf)
        return polis_error_set(err, POLIS_ENOMEM, log->dir, "no memory");

    pthread_mutex_lock(&log->mu);
    if (log->closing) {
        rc = polis_error_set(err, POLIS_ECANCELED, log->dir,
                             "the event log is shutting down");
        goto out;
    }
    if (log->failed) {
        rc = polis_error_set(err, POLIS_EIO, log->dir,
                             "the event log failed to sync earlier and "
                             "refuses appends until it is reopened");
        goto out;
    }
    if (queued && !waiter && log->opts.fsync == SC_EVENT_FSYNC_BATCH) {
        rc = polis_error_set(err, POLIS_EINVAL, log->dir,
                             "an asynchronous append needs a callback");
        goto out;
    }
    el_segment *s = &log->segs[log->nsegs - 1];
    if (s->size > 0 && s->size + total > log->opts.segment_bytes) {
        rc = roll_locked(log, err);
        if (rc)
            goto out;
        s = &log->segs[log->nsegs - 1];
    }

    /* Records before ours that a BATCH append still waits on: a switch to
     * NEVER must not make them "durable" without their fsync. */
    bool behind = log->durable_next < log->written_next;
    int64_t now = log_now(log);
    uint64_t pos = 0, old_size = s->size, old_nindex = s->nindex;
    first = log->written_next;
    for (size_t i = 0; i < n; i++) {
        unsigned char *h = buf + pos;
        put_u32(h, (uint32_t)events[i].len);
        put_u64(h + 8, first + i);
        put_u64(h + 16, (uint64_t)now);
        if (events[i].len)
            memcpy(h + SC_EVENT_LOG_HEADER_SIZE, events[i].data, events[i].len);
        put_u32(h + 4,
                record_crc(h, h + SC_EVENT_LOG_HEADER_SIZE, events[i].len));
        if (index_add(s, first + i, old_size + pos) != 0) {
            s->nindex = old_nindex;
            rc = polis_error_set(err, POLIS_ENOMEM, log->dir, "no memory");
            goto out;
        }
        pos += SC_EVENT_LOG_HEADER_SIZE + events[i].len;
    }
    uint64_t done = 0;
    while (done < total) {
        ssize_t w =
            pwrite(s->fd, buf + done, total - done, (off_t)(old_size + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            rc = io_error(err, log, "write", s->base);
            s->nindex = old_nindex;
            /* Undo the partial write so that the next record lands where
               readers and recovery expect it. */
            if (ftruncate(s->fd, (off_t)old_size) != 0)
                fail_locked(log);
            goto out;
        }
        done += (uint64_t)w;
    }
    s->size += total;
    s->next = first + n;
    if (now > s->max_time_ms)
        s->max_time_ms = now;
    log->total_bytes += total;
    log->written_next = end = first + n;

    switch (log->opts.fsync) {
    case SC_EVENT_FSYNC_ALWAYS:
    case SC_EVENT_FSYNC_NEVER:
        if (log->opts.fsync == SC_EVENT_FSYNC_ALWAYS || behind) {
            rc = fsync_active_locked(log, err);
            if (rc)
                goto out;
        }
        log->durable_next = end;
        pthread_cond_broadcast(&log->durable_cv);
        notify = true;
        break;
    case SC_EVENT_FSYNC_BATCH:
        pthread_cond_signal(&log->dirty_cv);
        if (waiter) {
            waiter->first = first;
            waiter->end = end;
            waiter->next = NULL;
            if (log->waiters_tail)
                log->waiters_tail->next = waiter;
            else
                log->waiters = waiter;
            log->waiters_tail = waiter;
            *queued = true;
            break;
        }
        while (log->durable_next < end && !log->failed)
            pthread_cond_wait(&log->durable_cv, &log->mu);
        if (log->durable_next < end)
            rc = polis_error_set(err, POLIS_EIO, log->dir,
                                 "fsync failed; the events may be lost");
        break;
    }
out:
    pthread_mutex_unlock(&log->mu);
    free(buf);
    if (rc == 0 && first_offset)
        *first_offset = first;
    if (notify && log->opts.on_visible)
        log->opts.on_visible(log->opts.on_visible_ctx, end);
    return rc;
}

int sc_event_log_append(sc_event_log *log, const sc_event *events, size_t n,
                        uint64_t *first_offset, polis_error *err)
{
    return append(log, events, n, first_offset, NULL, NULL, err);
}

int sc_event_log_append_async(sc_event_log *log, const sc_event *events,
                              size_t n, sc_event_done_fn done, void *ctx,
                              uint64_t *first_offset, bool *pending,
                              polis_error *err)
{
    el_waiter *w = NULL;
    bool queued = false;
    int rc;

    *pending = false;
    /* The fsync mode may change under us (sc_event_log_configure): append
     * decides, under the lock, whether the waiter is needed. */
    if (done != NULL) {
        if ((w = calloc(1, sizeof(*w))) == NULL)
            return polis_error_set(err, POLIS_ENOMEM, log->dir, "no memory");
        w->done = done;
        w->ctx = ctx;
    }
    rc = append(log, events, n, first_offset, w, &queued, err);
    if (!queued)
        free(w);
    *pending = queued;
    return rc;
}

/* ---- read ---- */

/* Lock held: the segment holding `offset` (which is within the log). */
static size_t find_segment(const sc_event_log *log, uint64_t offset)
{
    size_t lo = 0, hi = log->nsegs; /* last with base <= offset */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (log->segs[mid].base <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Lock held: file position of the nearest indexed record at or before. */
static const el_index_entry *find_index(const el_segment *s, uint64_t offset)
{
    size_t lo = 0, hi = s->nindex;
    if (hi == 0 || s->index[0].offset > offset)
        return NULL;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->index[mid].offset <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return &s->index[lo];
}

typedef struct read_buf {
    unsigned char *p;
    size_t len, cap;
} read_buf;

static int rb_reserve(read_buf *b, size_t more)
{
    if (b->cap - b->len >= more)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < more)
        cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int corrupt(polis_error *err, const sc_event_log *log,
                   const el_segment *s, uint64_t offset, const char *why)
{
    char name[64];
    segment_name(name, sizeof(name), s->base);
    return polis_error_set(err, POLIS_EIO, log->dir,
                           "%s: record %" PRIu64 " is damaged (%s)", name,
                           offset, why);
}

/*
 * Lock held.  Copy whole records (header + payload) from `from` on into
 * `out`; stops at the acknowledged end, max_records, or once max_bytes of
 * payload are taken.
 */
static int read_locked(sc_event_log *log, uint64_t from, size_t max_records,
                       size_t max_bytes, read_buf *out, size_t *count,
                       polis_error *err)
{
    uint64_t off = from, payload = 0;
    size_t si = find_segment(log, from);

    *count = 0;
    while (off < log->durable_next && *count < max_records) {
        el_segment *s = &log->segs[si];
        if (off >= s->next) {
            if (++si >= log->nsegs)
                break;
            /* A gap: the tail of a sealed segment that did not reach the
               disk (fsync=never and a machine crash).  Those records are
               gone; skip them rather than wedge every consumer here. */
            if (off < log->segs[si].base)
                off = log->segs[si].base;
            continue;
        }
        const el_index_entry *ie = find_index(s, off);
        if (!ie)
            return corrupt(err, log, s, off, "not indexed");
        uint64_t pos = ie->pos, at = ie->offset;
        unsigned char hdr[SC_EVENT_LOG_HEADER_SIZE];
        /* Skip forward from the index entry to `off`, then copy. */
        while (at < s->next && *count < max_records && at < log->durable_next) {
            if (pread(s->fd, hdr, sizeof(hdr), (off_t)pos) !=
                (ssize_t)sizeof(hdr))
                return io_error(err, log, "read", s->base);
            uint32_t len = get_u32(hdr);
            if (len > SC_EVENT_LOG_RECORD_MAX || get_u64(hdr + 8) != at ||
                pos + SC_EVENT_LOG_HEADER_SIZE + len > s->size)
                return corrupt(err, log, s, at, "bad header");
            if (at < off) {
                pos += SC_EVENT_LOG_HEADER_SIZE + len;
                at++;
                continue;
            }
            if (*count > 0 && payload + len > max_bytes)
                return 0;
            if (rb_reserve(out, SC_EVENT_LOG_HEADER_SIZE + len) != 0)
                return polis_error_set(err, POLIS_ENOMEM, log->dir,
                                       "no memory to read %u bytes", len);
            unsigned char *rec = out->p + out->len;
            memcpy(rec, hdr, sizeof(hdr));
            if (len > 0 &&
                pread(s->fd, rec + SC_EVENT_LOG_HEADER_SIZE, len,
                      (off_t)(pos + SC_EVENT_LOG_HEADER_SIZE)) != (ssize_t)len)
                return io_error(err, log, "read", s->base);
            if (record_crc(rec, rec + SC_EVENT_LOG_HEADER_SIZE, len) !=
                get_u32(rec + 4))
                return corrupt(err, log, s, at, "CRC mismatch");
            out->len += SC_EVENT_LOG_HEADER_SIZE + len;
            payload += len;
            (*count)++;
            pos += SC_EVENT_LOG_HEADER_SIZE + len;
            at++;
            off = at;
            if (payload >= max_bytes)
                return 0;
        }
        off = at;
    }
    return 0;
}

int sc_event_log_read(sc_event_log *log, uint64_t from, size_t max_records,
                      size_t max_bytes, sc_event_read_fn fn, void *ctx,
                      uint64_t *next_offset, polis_error *err)
{
    read_buf b = {0};
    size_t count = 0;
    int rc = 0;

    if (!fn)
        return polis_error_set(err, POLIS_EINVAL, log->dir, "no callback");
    if (max_records == 0)
        max_records = 1000;
    if (max_records > EL_READ_RECORDS_MAX)
        max_records = EL_READ_RECORDS_MAX;
    if (max_bytes == 0)
        max_bytes = 1024u * 1024;
    if (max_bytes > EL_READ_BYTES_MAX)
        max_bytes = EL_READ_BYTES_MAX;
    if (next_offset)
        *next_offset = from;

    pthread_mutex_lock(&log->mu);
    uint64_t start = log->segs[0].base, end = log->durable_next;
    if (from < start)
        rc = polis_error_set(err, POLIS_ENOTFOUND, log->dir,
                             "offset %" PRIu64
                             " is before the retention start %" PRIu64,
                             from, start);
    else if (from > end)
        rc = polis_error_set(err, POLIS_EINVAL, log->dir,
                             "offset %" PRIu64
                             " is past the end (next is %" PRIu64 ")",
                             from, end);
    else
        rc = read_locked(log, from, max_records, max_bytes, &b, &count, err);
    pthread_mutex_unlock(&log->mu);
    if (rc)
        goto out;

    size_t pos = 0;
    for (size_t i = 0; i < count; i++) {
        const unsigned char *h = b.p + pos;
        sc_event_record r = {
            .offset = get_u64(h + 8),
            .time_ms = (int64_t)get_u64(h + 16),
            .data = h + SC_EVENT_LOG_HEADER_SIZE,
            .len = get_u32(h),
        };
        pos += SC_EVENT_LOG_HEADER_SIZE + r.len;
        if (next_offset)
            *next_offset = r.offset + 1;
        if (fn(ctx, &r) != 0)
            break;
    }
out:
    free(b.p);
    return rc;
}

int sc_event_log_wait(sc_event_log *log, uint64_t offset, int timeout_ms,
                      polis_error *err)
{
    struct timespec ts = mono_deadline(timeout_ms > 0 ? timeout_ms : 0);
    int rc = 0;

    pthread_mutex_lock(&log->mu);
    while (log->durable_next <= offset && !log->closing) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&log->durable_cv, &log->mu);
        } else if (pthread_cond_timedwait(&log->durable_cv, &log->mu, &ts) ==
                   ETIMEDOUT) {
            if (log->durable_next <= offset && !log->closing)
                rc = polis_error_set(err, POLIS_ETIMEDOUT, log->dir,
                                     "no record %" PRIu64 " after %d ms",
                                     offset, timeout_ms);
            break;
        }
    }
    if (rc == 0 && log->durable_next <= offset)
        rc = polis_error_set(err, POLIS_ECANCELED, log->dir,
                             "the event log is shutting down");
    pthread_mutex_unlock(&log->mu);
    return rc;
}

void sc_event_log_stats_get(sc_event_log *log, sc_event_log_stats *out)
{
    pthread_mutex_lock(&log->mu);
    out->start_offset = log->segs[0].base;
    out->next_offset = log->durable_next;
    out->segments = log->nsegs;
    out->bytes = log->total_bytes;
    out->fsyncs = log->fsyncs;
    out->truncated_bytes = log->truncated_bytes;
    out->segments_retired = log->segments_retired;
    pthread_mutex_unlock(&log->mu);
}
