/*
 * query_sqlite.h — the governed SQL engine of a DataProduct's query port on
 * SQLite: runs one consumer SELECT against the product's database file with
 * the decision's masks, row filters and minimum group size enforced inside
 * SQLite (shadowing TEMP views, SQL functions, an authorizer), streaming the
 * result through a callback.  Design and limits: docs/internals/query.md.
 */
#ifndef POLIS_SIDECAR_QUERY_SQLITE_H
#define POLIS_SIDECAR_QUERY_SQLITE_H

#include "common/error.h"
#include "policy/expr.h"
#include "policy/policy.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Defaults used when a field of sq_limits is 0. */
#define SQ_DEFAULT_TIMEOUT_MS 10000
#define SQ_DEFAULT_MAX_ROWS   100000
#define SQ_DEFAULT_MAX_BYTES  (64u * 1024 * 1024)
#define SQ_DEFAULT_MAX_SQL    (64u * 1024)
/* Hard ceilings, whatever the caller asks for. */
#define SQ_MAX_SQL    (1024u * 1024)
#define SQ_MAX_PARAMS 1000
#define SQ_MAX_VALUE  (16 * 1024 * 1024) /* one string or blob, bytes */

/*
 * One open, read-only database: not thread-safe, use one per thread (or a
 * pool handing each to one request at a time).  It keeps the governed views
 * of the last request and reuses them when the next request needs the
 * same ones.
 */
typedef struct sq_conn sq_conn;

/*
 * Open `db_path` read-only (URI mode=ro, extension loading off, defensive
 * mode, no ATTACH).  The file must exist.  On success *out is the connection
 * (caller frees with sq_close).  Errors: POLIS_EINVAL (NULL arguments),
 * POLIS_EIO (SQLite could not open it; err says why), POLIS_ENOMEM.
 */
int sq_open(const char *db_path, sq_conn **out, polis_error *err);

/* Close a connection; NULL is a no-op. */
void sq_close(sq_conn *conn);

/* The product's table as its query port names it (`table`), borrowed.  It
 * must be an ordinary table of the database's main schema. */
typedef struct sq_product {
    const char *table;
} sq_product;

/* Limits of one query; 0 in a field means its SQ_DEFAULT_*. */
typedef struct sq_limits {
    int64_t timeout_ms; /* wall clock, prepare to last row */
    uint64_t max_rows;  /* rows delivered; more: stop, stats->truncated */
    uint64_t max_bytes; /* text/blob bytes + 8 per number delivered */
    size_t max_sql;     /* bytes of the SQL text (at most SQ_MAX_SQL) */
} sq_limits;

typedef enum sq_type {
    SQ_NULL = 0,
    SQ_INTEGER,
    SQ_REAL,
    SQ_TEXT,
    SQ_BLOB,
} sq_type;

/* One value of a result row.  text/blob bytes are borrowed and valid only
 * during the row callback; text is UTF-8 and NUL-terminated. */
typedef struct sq_value {
    sq_type type;
    int64_t i;
    double d;
    const void *p; /* SQ_TEXT, SQ_BLOB */
    size_t len;    /* bytes at p */
} sq_value;

/*
 * Where the result goes.  `columns` is called once, before any row, with
 * the result's column names; `row` once per row.  Both may be NULL.
 * Everything passed is borrowed for the duration of the call.  A callback
 * returning non-zero (a negative POLIS_E* code, e.g. POLIS_ECANCELED when
 * the client went away) stops the query and sq_query returns that code.
 */
typedef struct sq_sink {
    int (*columns)(void *ctx, size_t n, const char *const *names);
    int (*row)(void *ctx, size_t n, const sq_value *values);
    void *ctx;
} sq_sink;

typedef struct sq_stats {
    uint64_t rows;       /* delivered to the sink */
    uint64_t bytes;      /* as counted for max_bytes */
    uint64_t suppressed; /* groups dropped by the minimum group size */
    bool truncated;      /* stopped at max_rows or max_bytes */
} sq_stats;

/*
 * Run `sql` (one SELECT, at most limits->max_sql bytes) with `params` (a
 * JSON array of null/boolean/number/string bound to ?1, ?2..., or NULL for
 * none) for the request that `decision` answered, against `product` in
 * `conn`, and stream the result to `sink`.
 *
 * Enforcement: the query only sees the decision's columns, masked as the
 * decision says (pol_mask_apply with `key`; NULL key: a hash mask is
 * refused), and only rows matching every row filter, rendered with
 * `subject` and `request` (both may be NULL: every value null).  With a
 * minimum group size N > 0 the query must be a grouped aggregate over the
 * product alone and groups of fewer than N rows are dropped
 * (docs/internals/query.md).  Everything passed is borrowed for the call.
 *
 * Returns 0 (stats filled; rows may have been truncated), or:
 * POLIS_EDENIED (the decision is a deny, or the SQL does something not
 * allowed: a write, PRAGMA, ATTACH, another table, a second statement...;
 * err->message says what), POLIS_EINVAL (SQL error with SQLite's message,
 * wrong parameters, a product table that is not a table), POLIS_ETIMEDOUT,
 * POLIS_ETOOBIG (SQL text, a value too large), POLIS_ENOMEM, or the sink's
 * code.  Rows delivered before an error stay delivered: a streaming caller
 * must be able to end its output with an error.  `stats` may be NULL.
 */
int sq_query(sq_conn *conn, const sq_product *product,
             const pol_decision *decision, const pol_mask_key *key,
             const pol_expr_subject *subject, const pol_expr_request *request,
             const char *sql, const json_t *params, const sq_limits *limits,
             const sq_sink *sink, sq_stats *stats, polis_error *err);

#endif
