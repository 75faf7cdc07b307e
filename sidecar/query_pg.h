/*
 * query_pg.h — the governed SQL engine of a DataProduct's query port on
 * PostgreSQL (libpq): runs one consumer SELECT as an unprivileged role that
 * can read only security-barrier views applying the decision's masks and
 * row filters, streaming the result through the same sink as the SQLite
 * engine (query_sqlite.h).  Design, required roles and grants, limits:
 * docs/internals/query.md, "PostgreSQL".
 */
#ifndef POLIS_SIDECAR_QUERY_PG_H
#define POLIS_SIDECAR_QUERY_PG_H

#include "sidecar/query_sqlite.h" /* sq_product, sq_limits, sq_sink... */

/* The schema holding the governed views and the request table. */
#define PGQ_SCHEMA "polis"

/*
 * Two sessions to one product database: the owner session (the role that
 * owns schema polis and may SELECT the product tables) creates the views
 * and writes one request row per query; the query session (a role that owns
 * nothing and may only SELECT the polis views) runs the consumer's SQL.
 * Not thread-safe: one per thread, or a pool handing each to one request
 * at a time.
 */
typedef struct pgq_conn pgq_conn;

/*
 * Connect both sessions (libpq connection strings; keep passwords in a
 * passfile, not in the strings) and check the roles: the database is UTF8,
 * the query role is not the owner role, not a superuser, not a member of
 * the owner role.  On success *out is the connection (caller frees with
 * pgq_close).  Errors: POLIS_EINVAL (NULL arguments, a role set-up that
 * would not hold; err says which), POLIS_EIO (cannot connect; libpq's
 * message), POLIS_ENOMEM.
 */
int pgq_open(const char *owner_dsn, const char *query_dsn, pgq_conn **out,
             polis_error *err);

/* Close both sessions (removing this session's request row); NULL is a
 * no-op. */
void pgq_close(pgq_conn *conn);

/*
 * Run `sql` (one SELECT, WITH, VALUES or TABLE statement; placeholders $1,
 * $2...) with `params` (a JSON array of null/boolean/number/string, or
 * NULL) for the request that `decision` answered, against
 * `product->table` ("table" in schema public, or "schema.table"), and
 * stream the result to `sink`.  The consumer names the table by its bare
 * name.  `hash_key` (hash_key_len bytes) is the raw key of the hash mask,
 * the one the engine's pol_mask_key was prepared from; NULL: a hash mask is
 * refused.  Everything passed is borrowed for the call.
 *
 * Values reach the sink as SQ_INTEGER (int2/int4/int8/oid, and boolean as
 * 0/1), SQ_REAL (float4/float8), SQ_BLOB (bytea) or SQ_TEXT (everything
 * else, numeric included, in PostgreSQL's text form); masked columns are
 * text.
 *
 * With a minimum group size N, only a restricted aggregate query shape is
 * run and groups of fewer than N rows are suppressed (stats->suppressed);
 * other shapes are refused with POLIS_EDENIED (docs/internals/query.md).
 *
 * Returns 0 (stats filled; rows may have been truncated), or POLIS_EDENIED
 * (a deny, a write, a table or function the query role may not use, more
 * than one statement...; err->message says what), POLIS_EINVAL (SQL errors
 * with PostgreSQL's message, wrong parameters, a product table that does
 * not have the contract's columns, pgcrypto missing for a hash mask),
 * POLIS_ETIMEDOUT, POLIS_ETOOBIG, POLIS_EIO (the server went away),
 * POLIS_ENOMEM, or the sink's code.  Rows delivered before an error stay
 * delivered.  `stats` may be NULL.
 */
int pgq_query(pgq_conn *conn, const sq_product *product,
              const pol_decision *decision, const void *hash_key,
              size_t hash_key_len, const pol_expr_subject *subject,
              const pol_expr_request *request, const char *sql,
              const json_t *params, const sq_limits *limits,
              const sq_sink *sink, sq_stats *stats, polis_error *err);

#endif
