/*
 * file_port.h — the governed file port: list a data product's files and
 * stream one of them (CSV per RFC 4180, or JSON Lines) with a policy
 * decision's column selection, masks and row filters applied on the fly, in
 * constant memory.  Design, NULL conventions and limits:
 * docs/internals/file_port.md.
 */
#ifndef POLIS_SIDECAR_FILE_PORT_H
#define POLIS_SIDECAR_FILE_PORT_H

#include "common/error.h"
#include "policy/policy.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- limits -------------------------------------------------------------- */

#define FP_CHUNK_SIZE         (64 * 1024)   /* bytes read per read(2) */
#define FP_OUT_CHUNK_SIZE     (64 * 1024)   /* bytes handed to the sink */
#define FP_DEFAULT_MAX_RECORD (1024 * 1024) /* one CSV record / JSON line */
#define FP_MAX_RECORD_LIMIT   (64 * 1024 * 1024) /* largest max_record */
#define FP_MAX_FIELDS         POL_MAX_COLUMNS    /* fields of one record */
#define FP_MAX_LIST_FILES     100000             /* files fp_list returns */
#define FP_MAX_NAME           255                /* bytes of a file name */

/* ---- listing ------------------------------------------------------------- */

typedef struct fp_file {
    char *name;        /* owned by the listing */
    uint64_t size;     /* bytes */
    int64_t mtime_sec; /* seconds since the epoch, UTC */
} fp_file;

typedef struct fp_listing {
    fp_file *files; /* sorted by name (bytewise) */
    size_t count;
} fp_listing;

/*
 * List the files of `dir` that fp_open would serve: regular files whose
 * name fp_name_check accepts, and symbolic links that resolve to a regular
 * file inside `dir` (size and mtime are the target's).  Skipped silently:
 * dotfiles, directories, devices, FIFOs, sockets, links that lead outside
 * or nowhere.  On success *out owns the list (free with fp_listing_free);
 * on failure *out is empty.  Errors: POLIS_ENOTFOUND (no such directory),
 * POLIS_EIO, POLIS_ETOOBIG (more than FP_MAX_LIST_FILES), POLIS_ENOMEM.
 */
int fp_list(const char *dir, fp_listing *out, polis_error *err);

/* Free the names and the array and zero *l; NULL or zeroed is a no-op. */
void fp_listing_free(fp_listing *l);

/*
 * Check a requested file name (len bytes, need not be NUL-terminated, so
 * that a decoded "%00" is seen): 1..FP_MAX_NAME bytes, no '/', no NUL, no
 * control character, no "..", not starting with '.'.  POLIS_EDENIED with
 * the reason otherwise.
 */
int fp_name_check(const char *name, size_t len, polis_error *err);

/*
 * Open file `name` (len bytes) of directory `dir` for reading, refusing
 * anything outside `dir`: the name is checked with fp_name_check, then
 * opened relative to the directory without following a link out of it
 * (openat2 RESOLVE_BENEATH, or a realpath check where the kernel lacks
 * it).  On success *fd is a read-only descriptor of a regular file (caller
 * closes it).  Errors: POLIS_EDENIED (a refused name, a link leading
 * outside, not a regular file, no permission), POLIS_ENOTFOUND (no such
 * file or directory), POLIS_EIO.
 */
int fp_open(const char *dir, const char *name, size_t len, int *fd,
            polis_error *err);

/* ---- streaming ----------------------------------------------------------- */

typedef enum fp_format {
    FP_FORMAT_CSV = 0,
    FP_FORMAT_JSONL,
} fp_format;

/* "csv" / "jsonl" to the format; POLIS_ENOTFOUND otherwise. */
int fp_format_from_name(const char *name, fp_format *out);

/* What to do with a column the product's schema does not know. */
typedef enum fp_unknown_policy {
    FP_UNKNOWN_REFUSE = 0, /* error: the file does not match its contract */
    FP_UNKNOWN_DROP,       /* leave the column out of the output */
} fp_unknown_policy;

/* One column of the product's schema.  Borrowed. */
typedef struct fp_column {
    const char *name;
    pol_expr_type type; /* STRING (also date, timestamp), INTEGER, DECIMAL,
                           BOOLEAN */
} fp_column;

/*
 * Receives the governed output, in order, in pieces of at most
 * FP_OUT_CHUNK_SIZE bytes (except when one record is larger).  Return 0,
 * or a negative POLIS_E* code to stop the stream with that code.
 */
typedef int (*fp_sink_fn)(void *ctx, const void *data, size_t len);

/* Everything is borrowed for the life of the stream. */
typedef struct fp_options {
    fp_format format;
    const fp_column *schema; /* the product's spec.schema */
    size_t nschema;
    /* An allowed decision for this product and the file port: its columns
     * are the ones served (with their masks), its filters select rows.  A
     * denied decision is refused with POLIS_EDENIED. */
    const pol_decision *decision;
    const pol_mask_key *mask_key;    /* NULL: a hash mask fails the stream */
    const pol_expr_subject *subject; /* for filters; may be NULL */
    const pol_expr_request *request; /* for filters; may be NULL */
    fp_unknown_policy unknown_columns;
    size_t max_record; /* 0: FP_DEFAULT_MAX_RECORD */
} fp_options;

typedef struct fp_stats {
    uint64_t bytes_read;    /* input bytes */
    uint64_t rows_read;     /* data rows (CSV: not the header) */
    uint64_t rows_written;  /* rows that passed the filters */
    uint64_t bytes_written; /* bytes handed to the sink */
} fp_stats;

/*
 * A stream over one open file.  Opaque; one thread at a time.  Its memory
 * does not depend on the file's size: about 2 * max_record + 200 KiB, plus
 * a mask output buffer sized to the largest masked value (at most
 * 4 * max_record + 4 KiB).
 */
typedef struct fp_reader fp_reader;

/*
 * Start streaming `fd` (borrowed: the caller closes it after
 * fp_reader_free) with `opts`.  Nothing is read yet.  Errors: POLIS_EINVAL
 * (bad options; a hash mask without opts->mask_key), POLIS_EDENIED (the
 * decision denies), POLIS_ENOMEM.  Free with fp_reader_free.
 */
int fp_reader_new(int fd, const fp_options *opts, fp_sink_fn sink,
                  void *sink_ctx, fp_reader **out, polis_error *err);

/*
 * Read one chunk and write the output of every record it completes (the
 * CSV header comes with the first chunk).  *done is set at the end of the
 * file, after everything was written.  So a caller with back-pressure
 * (an event loop) calls it when its output queue has room.  Errors stop
 * the stream for good (later calls repeat the error): POLIS_EPARSE (bad
 * CSV or JSON; err->where is "line N"), POLIS_ETOOBIG (a record over
 * max_record, more than FP_MAX_FIELDS fields), POLIS_EINVAL (a column not
 * in the schema with FP_UNKNOWN_REFUSE, a row whose field count differs
 * from the header's, a duplicated column), POLIS_EIO, or the sink's
 * code.  Output already handed to the sink stays (whole records only).
 */
int fp_reader_step(fp_reader *r, bool *done, polis_error *err);

/*
 * A reader of JSON objects handed to it one at a time (an event port's
 * events) instead of read from a file: opts->format must be
 * FP_FORMAT_JSONL.  Same options, decision checks and errors as
 * fp_reader_new.  Its memory is about 4 KiB plus the mask buffer.
 */
int fp_reader_new_records(const fp_options *opts, fp_sink_fn sink,
                          void *sink_ctx, fp_reader **out, polis_error *err);

/*
 * Govern one JSON object (`json`, n bytes, need not be NUL-terminated): when
 * it passes the decision's filters, its served columns, masked, go to the
 * sink as one line "{...}\n" and *written is set.  Errors are those of a
 * JSON Lines record (err->where "event") and end nothing: the next record
 * may be given.  Nothing of a failed record reaches the sink.
 */
int fp_reader_record(fp_reader *r, const char *json, size_t n, bool *written,
                     polis_error *err);

/* Counters so far. */
void fp_reader_stats(const fp_reader *r, fp_stats *out);

/* Free the reader (not the fd); NULL is a no-op. */
void fp_reader_free(fp_reader *r);

/*
 * The whole file: fp_reader_new, fp_reader_step until done, stats into
 * *stats (may be NULL; filled on error too), fp_reader_free.
 */
int fp_stream(int fd, const fp_options *opts, fp_sink_fn sink, void *sink_ctx,
              fp_stats *stats, polis_error *err);

/*
 * The file's bytes as they are, through the same chunked reader (for an
 * owner's raw download and as the benchmark's baseline).  stats counts
 * bytes only.
 */
int fp_stream_raw(int fd, fp_sink_fn sink, void *sink_ctx, fp_stats *stats,
                  polis_error *err);

/*
 * The schema of a DataProduct document (`doc`, borrowed): its
 * spec.schema[] names and types (date and timestamp are strings).  *cols
 * is malloc'd (caller frees with free()); names are borrowed from doc.
 * POLIS_EINVAL for a missing name or an unknown type.
 */
int fp_schema_from_product(const json_t *doc, fp_column **cols, size_t *n,
                           polis_error *err);

#endif
