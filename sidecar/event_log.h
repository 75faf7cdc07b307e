/*
 * event_log.h — the storage of the sidecar's event ports: a durable,
 * segmented, append-only log of opaque records in one directory, with
 * offsets, retention by size and age, crash recovery (a torn or corrupt tail
 * is cut at open) and fsync policies.  Design: docs/internals/event_log.md.
 */
#ifndef POLIS_SC_EVENT_LOG_H
#define POLIS_SC_EVENT_LOG_H

#include "common/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sc_event_log sc_event_log;

/* When an append is acknowledged (returns). */
typedef enum sc_event_fsync {
    SC_EVENT_FSYNC_ALWAYS = 0, /* fsync by the appender before it returns */
    SC_EVENT_FSYNC_BATCH,      /* group commit: a flusher thread fsyncs, the
                                  appenders wait for the fsync that covers
                                  their records */
    SC_EVENT_FSYNC_NEVER,      /* written to the page cache only */
} sc_event_fsync;

/* Hard limits; options above them are EINVAL. */
#define SC_EVENT_LOG_RECORD_MAX  (16u * 1024 * 1024) /* payload bytes */
#define SC_EVENT_LOG_BATCH_MAX   (64u * 1024 * 1024) /* bytes in one append */
#define SC_EVENT_LOG_HEADER_SIZE 24u                 /* bytes per record */

typedef struct sc_event_log_options {
    const char *dir;            /* created (one level) if missing; copied */
    sc_event_fsync fsync;       /* default ALWAYS */
    unsigned batch_interval_ms; /* BATCH: at most one fsync per interval;
                                   0: fsync as soon as records wait */
    uint64_t segment_bytes;     /* roll above this; 0: 64 MiB */
    uint64_t retention_bytes;   /* keep at most this much; 0: no bound */
    int64_t retention_ms;       /* drop segments older; 0: no bound */
    size_t max_record_bytes;    /* payload bound; 0: 1 MiB */
    /* Clock for record times and age retention (ms since the epoch); NULL:
       the wall clock.  Tests inject one. */
    int64_t (*clock_ms)(void *ctx);
    void *clock_ctx;
    /* Called (from the appending or flushing thread, no lock held) each time
       records become visible to readers, with the new next offset: the hook
       for an event loop (e.g. event_active on a libevent event).  Calls
       from different threads may arrive out of order: treat the value as a
       hint and read from the consumer's own offset.  May be NULL.  Must not
       call back into the log. */
    void (*on_visible)(void *ctx, uint64_t next_offset);
    void *on_visible_ctx;
    /* Called after every successful fsync of a segment, before the records it
       covers are acknowledged, with the offset it makes durable (one past the
       last).  For tests and metrics; may be NULL; must not call the log. */
    void (*on_fsync)(void *ctx, uint64_t durable_next);
    void *on_fsync_ctx;
} sc_event_log_options;

/* One event to append: borrowed bytes. */
typedef struct sc_event {
    const void *data;
    size_t len;
} sc_event;

/* One record as read back; `data` is borrowed for the callback only. */
typedef struct sc_event_record {
    uint64_t offset;
    int64_t time_ms; /* when it was appended (the log's clock) */
    const void *data;
    size_t len;
} sc_event_record;

typedef struct sc_event_log_stats {
    uint64_t start_offset; /* first offset still kept */
    uint64_t next_offset;  /* offset of the next append; readers see up to
                              here (acknowledged records only) */
    size_t segments;
    uint64_t bytes;            /* on disk, all segments */
    uint64_t fsyncs;           /* since open */
    uint64_t truncated_bytes;  /* cut from a torn/corrupt tail at open */
    uint64_t segments_retired; /* deleted by retention since open */
} sc_event_log_stats;

/*
 * Open (or create) the log in opts->dir: the last segment is verified record
 * by record (length, CRC-32C, offset) and cut (ftruncate + fsync) at the
 * first bad record, so appends continue after the last intact one.  The
 * directory is locked (flock) for this handle: a second open is
 * POLIS_ECONFLICT.  POLIS_EINVAL for bad options, POLIS_EIO for file errors.
 * Caller frees with sc_event_log_free.
 */
int sc_event_log_open(const sc_event_log_options *opts, sc_event_log **out,
                      polis_error *err);

/*
 * Stop the flusher (after a last fsync in BATCH mode), close the files and
 * free.  No other call may be in progress or start (call
 * sc_event_log_shutdown and let waiters return first).  NULL is a no-op.
 */
void sc_event_log_free(sc_event_log *log);

/*
 * Refuse further appends (POLIS_ECANCELED), wake every sc_event_log_wait,
 * which returns POLIS_ECANCELED, and end every asynchronous append still
 * waiting for its fsync (its callback gets POLIS_ECANCELED); once this
 * returns no append callback runs any more.  Idempotent.
 */
void sc_event_log_shutdown(sc_event_log *log);

/*
 * Append `n` events (1 or more) as consecutive records, and return once they
 * are durable per the fsync policy (the acknowledgement).  *first_offset
 * (may be NULL) gets the offset of the first.  All or nothing: on error no
 * record of the call is visible.  POLIS_ETOOBIG for an event above
 * max_record_bytes or a call above SC_EVENT_LOG_BATCH_MAX, POLIS_EIO when
 * writing or fsync fails (a failed fsync makes every later append fail too:
 * the page cache can no longer be trusted), POLIS_ECANCELED after shutdown.
 * Thread-safe.
 */
int sc_event_log_append(sc_event_log *log, const sc_event *events, size_t n,
                        uint64_t *first_offset, polis_error *err);

/*
 * How an asynchronous append ended: rc 0 (durable; `first` is the offset
 * of its first event) or POLIS_EIO (the fsync failed) / POLIS_ECANCELED
 * (shutdown) with `err`.  Called from the flusher thread (or the one
 * calling sc_event_log_shutdown / _free), with no lock held; must not call
 * back into the log and should be quick (hand the result to the caller's
 * own thread).
 */
typedef void (*sc_event_done_fn)(void *ctx, int rc, uint64_t first,
                                 const polis_error *err);

/*
 * Append as sc_event_log_append, without waiting for the fsync: for a
 * caller that must not block (an event loop).  With BATCH the records are
 * written and, when 0 is returned with *pending set, `done` is called
 * exactly once when they are durable (or the log failed or shut down),
 * possibly on another thread before this call returns; any number of
 * appends then share one fsync.  With ALWAYS and NEVER the
 * records are durable on return (0, *pending false, `done` never called;
 * ALWAYS fsyncs in the call).  An error return means nothing was appended
 * and `done` is not called.  *first_offset (may be NULL) gets the offset of
 * the first event.  Thread-safe.
 */
int sc_event_log_append_async(sc_event_log *log, const sc_event *events,
                              size_t n, sc_event_done_fn done, void *ctx,
                              uint64_t *first_offset, bool *pending,
                              polis_error *err);

/*
 * Called by sc_event_log_read for each record, in offset order.  Return 0 to
 * go on, non-zero to stop (that record counts as read).
 */
typedef int (*sc_event_read_fn)(void *ctx, const sc_event_record *rec);

/*
 * Read acknowledged records from `from`: at most max_records (0: 1000) and
 * about max_bytes of payload (0: 1 MiB; the first record is always given
 * whole, so a large record cannot block a reader).  *next_offset (may be
 * NULL) gets the offset to read from next.  Reading at the end gives no
 * records and 0.  POLIS_ENOTFOUND when `from` is before the retention start
 * (the consumer fell behind; the message names the start), POLIS_EINVAL
 * when it is past the end, POLIS_EIO for a damaged record.  The callback
 * runs without the log's lock held.  Thread-safe.
 */
int sc_event_log_read(sc_event_log *log, uint64_t from, size_t max_records,
                      size_t max_bytes, sc_event_read_fn fn, void *ctx,
                      uint64_t *next_offset, polis_error *err);

/*
 * Wait until the record at `offset` is readable (next_offset > offset):
 * 0 then, POLIS_ETIMEDOUT after timeout_ms (negative: no timeout),
 * POLIS_ECANCELED after sc_event_log_shutdown.  Thread-safe.
 */
int sc_event_log_wait(sc_event_log *log, uint64_t offset, int timeout_ms,
                      polis_error *err);

/*
 * Apply retention now (it also runs at every segment roll): delete whole
 * oldest segments while the log is above retention_bytes or their newest
 * record is older than retention_ms; the active segment is never deleted.
 * *removed (may be NULL) gets how many were deleted.  Thread-safe.
 */
int sc_event_log_retain(sc_event_log *log, size_t *removed, polis_error *err);

/*
 * Change an open log's fsync, segment_bytes, retention_bytes and
 * retention_ms to those of opts (its other fields are ignored), then apply
 * retention at once: a port's settings change while it is in use.  Appends
 * already waiting for a BATCH fsync are still answered after a switch to
 * ALWAYS or NEVER; a new segment size applies from the next roll.
 * POLIS_EINVAL for bad values, POLIS_EINTERNAL when the flusher thread a
 * switch to BATCH needs cannot start (nothing changed then), POLIS_EIO
 * from retention.  Thread-safe.
 */
int sc_event_log_configure(sc_event_log *log, const sc_event_log_options *opts,
                           polis_error *err);

/* Current figures.  Thread-safe. */
void sc_event_log_stats_get(sc_event_log *log, sc_event_log_stats *out);

#endif
