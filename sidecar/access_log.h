/*
 * access_log.h — the sidecar's access records (DESIGN.md "Components":
 * sidecars report who read what): one record per product request, queued
 * in memory by the ports, taken in batches by the subscriber and sent to
 * the control plane as Distribution AccessReports, spooled to
 * <state_dir>/access/ while no control plane is reachable.
 */
#ifndef POLIS_SC_ACCESS_LOG_H
#define POLIS_SC_ACCESS_LOG_H

#include "common/error.h"
#include "common/metrics.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sc_access_log sc_access_log;

/* One product request as a port saw it.  Strings may be NULL (sent as ""). */
typedef struct sc_access {
    int64_t time_ms; /* wall clock, ms since the epoch; 0: now */
    const char *principal;
    const char *product; /* "domain/product" */
    const char *port;
    const char *purpose;
    const char *decision; /* "allow" | "deny" | "error" */
    const char *rule;     /* the deciding rule, or NULL */
    int http_status;
    int64_t rows;
    int64_t bytes;
    int64_t latency_us;
} sc_access;

typedef struct sc_access_log_options {
    const char *state_dir;    /* spool in <state_dir>/access/; NULL: none */
    size_t max_pending;       /* records held in memory; 0: 10000 */
    uint64_t max_spool_bytes; /* spool files on disk; 0: 64 MiB */
    size_t max_batch;         /* records per batch; 0: 500 (the most) */
    metrics *metrics;         /* borrowed, may be NULL; see below */
} sc_access_log_options;

/*
 * Create a log.  Strings in `opts` are copied.  Spool files left by an
 * earlier run are queued for sending (oldest first).  opts->metrics
 * (borrowed, must outlive the log) gets polis_sidecar_access_records_total,
 * polis_sidecar_access_dropped_total{reason="memory"|"spool"},
 * polis_sidecar_access_pending and polis_sidecar_access_spool_bytes.
 * POLIS_EIO when the spool directory cannot be created.  Caller frees with
 * sc_access_log_free.
 */
int sc_access_log_new(const sc_access_log_options *opts, sc_access_log **out,
                      polis_error *err);

/*
 * Free the log.  Records not yet written to disk are lost: call
 * sc_access_log_spool first to keep them.  NULL is a no-op.
 */
void sc_access_log_free(sc_access_log *log);

/*
 * Queue one record.  Thread-safe; copies the strings (each cut at 256
 * bytes); never does I/O and never waits for the sender.  When
 * max_pending records are already in memory the record is dropped and
 * counted.  log == NULL is a no-op, so ports may run without a log.
 */
void sc_access_log_record(sc_access_log *log, const sc_access *a);

/*
 * The drain side, for the one thread that sends (the subscriber).  A batch
 * has an id that is unique across restarts (spooled batches keep theirs),
 * so a receiver can ignore a batch it has already stored: delivery is
 * at-least-once and deduplicated by (sidecar, batch id).
 */
typedef struct sc_access_batch {
    uint64_t id;
    size_t count;
    const sc_access *records; /* owned by the log; valid until the batch
                                 is acked or requeued, or the log freed */
} sc_access_batch;

/*
 * Take the next batch to send: spooled batches first (oldest first), then
 * batches made of the records in memory (at most `max` records, 0: the
 * log's max_batch).  The batch is in flight until sc_access_log_ack or
 * sc_access_log_requeue.  Returns 0 with out->count == 0 when nothing is
 * waiting.  A spool file that cannot be read is deleted, counted as
 * dropped and skipped.
 */
int sc_access_log_take(sc_access_log *log, size_t max, sc_access_batch *out,
                       polis_error *err);

/* The receiver stored batch `id`: forget it (and delete its spool file).
 * Unknown ids are ignored. */
void sc_access_log_ack(sc_access_log *log, uint64_t id);

/* The stream broke: every batch in flight is to be sent again. */
void sc_access_log_requeue(sc_access_log *log);

/*
 * Write every batch not in flight and every record in memory to spool
 * files and free their memory; then delete the oldest spool files while
 * the spool is larger than max_spool_bytes (counted as dropped).  Called
 * by the sender while disconnected and at shutdown.  A no-op without a
 * state dir.  POLIS_EIO when a file cannot be written (the records stay in
 * memory).
 */
int sc_access_log_spool(sc_access_log *log, polis_error *err);

typedef struct sc_access_log_stats {
    uint64_t recorded;        /* records accepted by sc_access_log_record */
    uint64_t dropped_memory;  /* refused: memory bound reached */
    uint64_t dropped_spool;   /* spooled, then deleted: spool bound or
                                 unreadable file */
    uint64_t acked;           /* records acknowledged by a receiver */
    uint64_t pending;         /* records in memory (incl. in flight) */
    uint64_t spooled_batches; /* batches on disk not yet acked */
    uint64_t spool_bytes;
} sc_access_log_stats;

/* A consistent copy of the counters.  Thread-safe. */
void sc_access_log_stats_get(sc_access_log *log, sc_access_log_stats *out);

#endif
