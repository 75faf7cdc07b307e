/*
 * query_pg.c — the PostgreSQL engine of the governed query port
 * (query_pg.h): security-barrier views owned by the owner role apply masks
 * and filters; the consumer's SELECT runs as a role that can read nothing
 * else, inside a read-only transaction, fetched through a cursor.
 * Design and the reasons behind it: docs/internals/query.md, "PostgreSQL".
 */
#include "common/strbuf.h"
#include "sidecar/query_pg.h"
#include "sidecar/query_shape.h"

#include <libpq-fe.h>

#include <sys/random.h>

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define VIEW_CACHE    32
#define VIEW_NAME_MAX 40 /* "v_" + 32 hex */
#define VIEW_SQL_MAX  (1024u * 1024)
#define FETCH_BATCH   1000
/* After a cancel, how long the server gets to answer before we give up on
 * the session. */
#define CANCEL_GRACE_MS 5000

/* Type OIDs of pg_type (stable since PostgreSQL 7). */
#define OID_BOOL   16
#define OID_BYTEA  17
#define OID_INT8   20
#define OID_INT2   21
#define OID_INT4   23
#define OID_OID    26
#define OID_FLOAT4 700
#define OID_FLOAT8 701

struct pgq_conn {
    PGconn *owner, *query;
    char *query_role; /* quoted identifier (PQfreemem) */
    char query_role_name[256];
    char *crypto; /* quoted schema of pgcrypto, NULL when absent */
    int query_pid;
    char views[VIEW_CACHE][VIEW_NAME_MAX]; /* created and granted */
    size_t nviews, next_view;
    char *temp_name; /* quoted name of the session's temp view */
    char temp_target[VIEW_NAME_MAX]; /* the polis view it reads */
    char count_name[48];             /* secret alias of the group-size column */
};

/* ---- small helpers ------------------------------------------------------- */

/* A bounded growable string; rc keeps the first error. */

/* Quote with libpq's own functions: identifiers and literals are never
 * quoted by hand. */
static void sb_ident(strbuf *b, PGconn *c, const char *s)
{
    char *q = PQescapeIdentifier(c, s, strlen(s));
    if (q == NULL) {
        if (!b->rc)
            b->rc = POLIS_ENOMEM;
        return;
    }
    strbuf_puts(b, q);
    PQfreemem(q);
}

static void sb_literal(strbuf *b, PGconn *c, const char *s)
{
    char *q = PQescapeLiteral(c, s, strlen(s));
    if (q == NULL) {
        if (!b->rc)
            b->rc = POLIS_ENOMEM;
        return;
    }
    strbuf_puts(b, q);
    PQfreemem(q);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* libpq's messages end with a newline; error messages here do not. */
static int set_pg_error(polis_error *err, int code, const char *what,
                        const char *msg)
{
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        n--;
    return polis_error_set(err, code, NULL, "%s%s%.*s", what ? what : "",
                           what ? ": " : "", (int)n, msg);
}

/*
 * Whether the server ended the session, going by SQLSTATE rather than by
 * message text: admin shutdown, crash shutdown, cannot connect now
 * (57P01-57P03), any connection exception (class 08), or libpq's own view
 * of the socket.  A FATAL result can arrive before libpq has noticed the
 * closed socket, so the SQLSTATE is checked too.
 */
static bool session_ended(const PGresult *r, const PGconn *c)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    if (c == NULL || PQstatus(c) == CONNECTION_BAD)
        return true;
    if (state == NULL)
        return false;
    return strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 ||
           strcmp(state, "57P03") == 0 || strncmp(state, "08", 2) == 0;
}

/* Run a utility statement (or several, simple protocol) expecting no rows
 * of interest. */
static int exec_simple(PGconn *c, const char *sql, const char *what,
                       polis_error *err)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int rc = 0;

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        rc = set_pg_error(err, session_ended(r, c) ? POLIS_EIO : POLIS_EINVAL,
                          what, PQerrorMessage(c));
    PQclear(r);
    return rc;
}

/* One row, one column of a query with text parameters, into buf. */
static int query_value(PGconn *c, const char *sql, int n,
                       const char *const *values, char *buf, size_t len,
                       polis_error *err)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, values, NULL, NULL, 0);
    int rc = 0;

    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        rc = set_pg_error(err, session_ended(r, c) ? POLIS_EIO : POLIS_EINVAL,
                          "set-up query", PQerrorMessage(c));
    else if (PQgetisnull(r, 0, 0))
        buf[0] = '\0';
    else
        snprintf(buf, len, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return rc;
}

/* ---- opening ------------------------------------------------------------- */

static int connect_one(const char *dsn, const char *which, PGconn **out,
                       polis_error *err)
{
    PGconn *c = PQconnectdb(dsn);
    char what[64];

    *out = c;
    if (c == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    snprintf(what, sizeof(what), "cannot connect the %s session", which);
    if (PQstatus(c) != CONNECTION_OK)
        return set_pg_error(err, POLIS_EIO, what, PQerrorMessage(c));
    if (PQsetClientEncoding(c, "UTF8") != 0)
        return set_pg_error(err, POLIS_EINVAL, what, PQerrorMessage(c));
    return 0;
}

int pgq_open(const char *owner_dsn, const char *query_dsn, pgq_conn **out,
             polis_error *err)
{
    char owner_role[256], query_role[256], buf[256];
    const char *v[2];
    pgq_conn *c;
    int rc;

    if (out)
        *out = NULL;
    if (owner_dsn == NULL || query_dsn == NULL || out == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "NULL argument");
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    if ((rc = connect_one(owner_dsn, "owner", &c->owner, err)) != 0 ||
        (rc = connect_one(query_dsn, "query", &c->query, err)) != 0)
        goto fail;
    /* The views' text is resolved in the owner session: only pg_catalog
     * names, whatever the role's default search_path holds.  The request
     * row needs no durability. */
    if ((rc = exec_simple(c->owner,
                          "SET search_path = pg_catalog; "
                          "SET synchronous_commit = off; "
                          "SET standard_conforming_strings = on",
                          "owner session set-up", err)) != 0)
        goto fail;
    if ((rc = query_value(c->owner, "SELECT current_user", 0, NULL, owner_role,
                          sizeof(owner_role), err)) != 0 ||
        (rc = query_value(c->query, "SELECT current_user", 0, NULL, query_role,
                          sizeof(query_role), err)) != 0)
        goto fail;
    if ((rc = query_value(c->query, "SHOW server_encoding", 0, NULL, buf,
                          sizeof(buf), err)) != 0)
        goto fail;
    if (strcmp(buf, "UTF8") != 0) {
        rc = polis_error_set(err, POLIS_EINVAL, NULL,
                             "the database must be UTF8 (it is %s)", buf);
        goto fail;
    }
    /* RESET ROLE, SET ROLE and set_config('role') act relative to the
     * session user: the query session's login role must be unable to
     * become anything that can read the tables. */
    v[0] = query_role;
    v[1] = owner_role;
    if ((rc = query_value(c->query,
                          "SELECT (r.rolsuper OR r.rolbypassrls "
                          "OR $1 = $2 "
                          "OR pg_has_role($1, $2, 'MEMBER') "
                          "OR EXISTS (SELECT 1 FROM pg_auth_members m "
                          "WHERE m.member = r.oid))::text "
                          "FROM pg_roles r WHERE r.rolname = $1",
                          2, v, buf, sizeof(buf), err)) != 0)
        goto fail;
    if (strcmp(buf, "false") != 0) {
        rc = polis_error_set(
            err, POLIS_EINVAL, NULL,
            "the query role %s must not be the owner role, a superuser, a "
            "member of any role, or bypass row security",
            query_role);
        goto fail;
    }
    snprintf(c->query_role_name, sizeof(c->query_role_name), "%s", query_role);
    c->query_role =
        PQescapeIdentifier(c->owner, query_role, strlen(query_role));
    if (c->query_role == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    if ((rc = query_value(c->owner,
                          "SELECT n.nspname FROM pg_extension e JOIN "
                          "pg_namespace n ON n.oid = e.extnamespace "
                          "WHERE e.extname = 'pgcrypto' UNION ALL "
                          "SELECT NULL LIMIT 1",
                          0, NULL, buf, sizeof(buf), err)) != 0)
        goto fail;
    if (buf[0]) {
        c->crypto = PQescapeIdentifier(c->owner, buf, strlen(buf));
        if (c->crypto == NULL) {
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
            goto fail;
        }
    }
    {
        /* Unknown to the consumer, so no item of theirs can pose as the
         * group-size column. */
        unsigned char rnd[16];
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
            rc = polis_error_set(err, POLIS_EINTERNAL, NULL,
                                 "no random bytes for the group-size column");
            goto fail;
        }
        strcpy(c->count_name, "polis_n_");
        for (size_t i = 0; i < sizeof(rnd); i++)
            snprintf(c->count_name + 8 + 2 * i, 3, "%02x", rnd[i]);
    }
    c->query_pid = PQbackendPID(c->query);
    *out = c;
    return 0;
fail:
    pgq_close(c);
    return rc;
}

void pgq_close(pgq_conn *c)
{
    if (c == NULL)
        return;
    if (c->owner && c->query_pid && PQstatus(c->owner) == CONNECTION_OK) {
        char pid[16];
        const char *v[1] = {pid};
        snprintf(pid, sizeof(pid), "%d", c->query_pid);
        PQclear(PQexecParams(c->owner,
                             "DELETE FROM " PGQ_SCHEMA ".request "
                             "WHERE pid = $1::int",
                             1, NULL, v, NULL, NULL, 0));
    }
    PQfinish(c->query);
    PQfinish(c->owner);
    PQfreemem(c->query_role);
    PQfreemem(c->crypto);
    PQfreemem(c->temp_name);
    free(c);
}

/* ---- masks as SQL -------------------------------------------------------- */

/*
 * Each mask is an expression over X, the column's text form, that gives
 * exactly what pol_mask_apply gives for the same text (tested value by
 * value).  Code points: a UTF8 database holds valid UTF-8 only, where
 * char_length counts what mask.c counts.
 */
static void mask_sql(strbuf *b, PGconn *pc, const pgq_conn *c,
                     const pol_mask *m, const char *col)
{
    char x[300];

    snprintf(x, sizeof(x), "(t.%s)::text", col);
    switch (m->method) {
    case POL_MASK_NONE:
        strbuf_printf(b, "t.%s", col);
        return;
    case POL_MASK_NULLIFY:
        strbuf_puts(b, "NULL::text");
        return;
    case POL_MASK_REDACT:
        if (m->per_char) {
            strbuf_puts(b, "repeat(");
            sb_literal(b, pc, m->fill);
            strbuf_printf(b, ", char_length(%s))", x);
        } else {
            strbuf_printf(b, "CASE WHEN %s IS NULL THEN NULL ELSE ", x);
            sb_literal(b, pc, m->replacement);
            strbuf_puts(b, "::text END");
        }
        return;
    case POL_MASK_SHOW_FIRST:
    case POL_MASK_SHOW_LAST:
        /* A value no longer than n is hidden whole, as in mask.c. */
        strbuf_printf(b, "CASE WHEN char_length(%s) > %u THEN ", x, m->n);
        if (m->method == POL_MASK_SHOW_FIRST)
            strbuf_printf(b, "left(%s, %u) || ", x, m->n);
        strbuf_puts(b, "repeat(");
        sb_literal(b, pc, m->fill);
        strbuf_printf(b, ", char_length(%s) - %u)", x, m->n);
        if (m->method == POL_MASK_SHOW_LAST)
            strbuf_printf(b, " || right(%s, %u)", x, m->n);
        strbuf_puts(b, " ELSE repeat(");
        sb_literal(b, pc, m->fill);
        strbuf_printf(b, ", char_length(%s)) END", x);
        return;
    case POL_MASK_EMAIL:
        /* From the last '@' on, when something follows it. */
        strbuf_printf(b,
                      "CASE WHEN %s IS NULL THEN NULL ELSE '****' || "
                      "coalesce(substring(%s from '@[^@]+$'), '') END",
                      x, x);
        return;
    case POL_MASK_DATE_MONTH:
    case POL_MASK_DATE_YEAR:
        /* The checks of mask.c (YYYY-MM-DD prefix, month 01-12, day 01-31,
         * no calendar), not date_trunc: text that is not a date is NULL
         * in both. */
        strbuf_printf(b,
                      "CASE WHEN %s ~ '^[0-9]{4}-(0[1-9]|1[0-2])-"
                      "(0[1-9]|[12][0-9]|3[01])' THEN left(%s, 5) || ",
                      x, x);
        if (m->method == POL_MASK_DATE_MONTH)
            strbuf_printf(b, "substr(%s, 6, 2) || '-01' END", x);
        else
            strbuf_puts(b, "'01-01' END");
        return;
    case POL_MASK_HASH:
        strbuf_printf(b,
                      "encode(%s.hmac(convert_to(%s, 'UTF8'), r.k, 'sha256'), "
                      "'hex')",
                      c->crypto ? c->crypto : "public", x);
        return;
    case POL_MASK_BUCKET: {
        /*
         * mask.c: strtod of the whole text (leading white space allowed,
         * hexadecimal too), finite, |v| <= 9e15, lo = floor(v / w) * w.
         * float8 input is strtod as well; for decimals, numeric first
         * guards the values float8 input refuses (overflow, underflow to
         * zero), and magnitudes below 1e-300 count as their sign: 0 or -w.
         * Hexadecimal in 63 bytes with a binary exponent of at most two
         * digits cannot overflow or underflow; longer exponents give NULL
         * here (docs).
         */
        long long w = (long long)m->width;
        char lo[200], fmt[600];

        snprintf(lo, sizeof(lo),
                 "(floor(%s::float8 / %lld::float8) * %lld::float8)::bigint", x,
                 w, w);
        if (m->bucket_lower)
            snprintf(fmt, sizeof(fmt), "%s::text", lo);
        else
            snprintf(fmt, sizeof(fmt), "%s::text || '-' || (%s + %lld)::text",
                     lo, lo, w - 1);
        strbuf_printf(b,
                      "CASE WHEN char_length(%s) >= 64 THEN NULL "
                      "WHEN %s ~ '^[ \\t\\n\\v\\f\\r]*[+-]?0[xX]"
                      "([0-9a-fA-F]+\\.?[0-9a-fA-F]*|\\.[0-9a-fA-F]+)"
                      "([pP][+-]?[0-9]{1,2})?$' THEN "
                      "CASE WHEN abs(%s::float8) > 9e15 THEN NULL ELSE ",
                      x, x, x);
        strbuf_puts(b, fmt);
        strbuf_printf(b,
                      " END WHEN %s ~ '^[ \\t\\n\\v\\f\\r]*[+-]?"
                      "([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]{1,4})?$' "
                      "THEN CASE WHEN abs(%s::numeric) > 1e300 THEN NULL ",
                      x, x);
        if (m->bucket_lower)
            strbuf_printf(b,
                          "WHEN abs(%s::numeric) < 1e-300 THEN CASE WHEN "
                          "%s::numeric < 0 THEN '%lld' ELSE '0' END ",
                          x, x, -w);
        else
            strbuf_printf(b,
                          "WHEN abs(%s::numeric) < 1e-300 THEN CASE WHEN "
                          "%s::numeric < 0 THEN '%lld--1' ELSE '0-%lld' END ",
                          x, x, -w, w - 1);
        strbuf_printf(b, "WHEN abs(%s::float8) > 9e15 THEN NULL ELSE ", x);
        strbuf_puts(b, fmt);
        strbuf_puts(b, " END END");
        return;
    }
    }
}

/* Copy the rendered filter, each placeholder $N becoming the request row's
 * N-th value (its cast follows it in the text).  Quoted identifiers and
 * string literals are copied as they are. */
static void filter_sql(strbuf *b, const char *text)
{
    const char *p = text;

    while (*p) {
        if (*p == '"' || *p == '\'') {
            const char *q = p + 1;
            char quote = *p;
            while (*q && !(*q == quote && q[1] != quote))
                q += *q == quote ? 2 : 1;
            if (*q)
                q++;
            strbuf_putn(b, p, (size_t)(q - p));
            p = q;
        } else if (*p == '$' && p[1] >= '0' && p[1] <= '9') {
            const char *q = p + 1;
            while (*q >= '0' && *q <= '9')
                q++;
            strbuf_puts(b, "(r.p[");
            strbuf_putn(b, p + 1, (size_t)(q - p - 1));
            strbuf_puts(b, "])");
            p = q;
        } else {
            strbuf_putn(b, p, 1);
            p++;
        }
    }
}

/* ---- the per-request set-up ---------------------------------------------- */

/* "schema.table" or "table" (schema public), unquoted names. */
static int split_table(const char *table, char *schema, size_t slen, char *name,
                       size_t nlen, polis_error *err)
{
    const char *dot = table ? strchr(table, '.') : NULL;

    if (table == NULL || table[0] == '\0' || strlen(table) >= nlen ||
        (dot && strchr(dot + 1, '.')))
        return polis_error_set(err, POLIS_EINVAL, "product.table",
                               "must be \"table\" or \"schema.table\"");
    if (dot) {
        snprintf(schema, slen, "%.*s", (int)(dot - table), table);
        snprintf(name, nlen, "%s", dot + 1);
    } else {
        snprintf(schema, slen, "public");
        snprintf(name, nlen, "%s", table);
    }
    if (schema[0] == '\0' || name[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, "product.table",
                               "must be \"table\" or \"schema.table\"");
    return 0;
}

/* The view's name: a digest of its text, so one name is one text. */
static void view_name(const char *text, char out[VIEW_NAME_MAX])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[32];
    pol_mask_key k;

    pol_mask_key_init(&k, "polis-view", 10);
    pol_hmac_sha256(&k, text, strlen(text), d);
    out[0] = 'v';
    out[1] = '_';
    for (int i = 0; i < 16; i++) {
        out[2 + 2 * i] = hex[d[i] >> 4];
        out[3 + 2 * i] = hex[d[i] & 15];
    }
    out[34] = '\0';
}

static bool view_known(const pgq_conn *c, const char *name)
{
    for (size_t i = 0; i < c->nviews; i++)
        if (strcmp(c->views[i], name) == 0)
            return true;
    return false;
}

/*
 * Create (if this connection has not already) the owner's view named by
 * its text and grant it to the query role.  Refuses a query role that can
 * read the table directly: masks would then be optional.
 */
static int ensure_view(pgq_conn *c, const char *qtable, const char *name,
                       const char *body, polis_error *err)
{
    strbuf b = STRBUF_INIT(VIEW_SQL_MAX);
    const char *v[2];
    char buf[16];
    int rc;

    if (view_known(c, name))
        return 0;
    v[0] = c->query_role_name;
    v[1] = qtable;
    if ((rc = query_value(c->owner,
                          "SELECT (has_table_privilege($1, $2, 'SELECT') "
                          "OR has_any_column_privilege($1, $2, "
                          "'SELECT'))::text",
                          2, v, buf, sizeof(buf), err)) != 0)
        return rc;
    if (strcmp(buf, "false") != 0)
        return polis_error_set(err, POLIS_EDENIED, NULL,
                               "the query role can read %s directly: revoke "
                               "its privileges on the table",
                               qtable);
    strbuf_printf(&b,
                  "CREATE OR REPLACE VIEW " PGQ_SCHEMA ".%s "
                  "WITH (security_barrier) AS ",
                  name);
    strbuf_puts(&b, body);
    strbuf_printf(&b, "; GRANT SELECT ON " PGQ_SCHEMA ".%s TO %s", name,
                  c->query_role);
    if (b.rc) {
        free(b.p);
        return polis_error_set(err, b.rc, NULL, "governed view too large");
    }
    rc = exec_simple(c->owner, b.p, "cannot set up the governed view", err);
    if (rc != 0 && PQstatus(c->owner) == CONNECTION_OK) {
        /* Another sidecar creating the same view at the same moment
         * ("tuple concurrently updated"): once more. */
        rc = exec_simple(c->owner, b.p, "cannot set up the governed view", err);
    }
    free(b.p);
    if (rc != 0)
        return rc;
    snprintf(c->views[c->next_view], VIEW_NAME_MAX, "%s", name);
    c->next_view = (c->next_view + 1) % VIEW_CACHE;
    if (c->nviews < VIEW_CACHE)
        c->nviews++;
    return 0;
}

/* The query session's temp view `table` over polis.<view>: what the
 * consumer's unqualified name resolves to. */
static int ensure_temp_view(pgq_conn *c, const char *table, const char *view,
                            polis_error *err)
{
    char *ident;
    strbuf b = STRBUF_INIT(VIEW_SQL_MAX);
    int rc;

    ident = PQescapeIdentifier(c->query, table, strlen(table));
    if (ident == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    if (c->temp_name && strcmp(c->temp_name, ident) == 0 &&
        strcmp(c->temp_target, view) == 0) {
        PQfreemem(ident);
        return 0;
    }
    if (c->temp_name)
        strbuf_printf(&b, "DROP VIEW IF EXISTS pg_temp.%s; ", c->temp_name);
    strbuf_printf(&b, "CREATE TEMP VIEW %s AS SELECT * FROM " PGQ_SCHEMA ".%s",
                  ident, view);
    PQfreemem(c->temp_name);
    c->temp_name = NULL;
    c->temp_target[0] = '\0';
    if (b.rc) {
        PQfreemem(ident);
        free(b.p);
        return polis_error_set(err, b.rc, NULL, "out of memory");
    }
    rc = exec_simple(c->query, b.p, "cannot set up the governed view", err);
    free(b.p);
    if (rc != 0) {
        PQfreemem(ident);
        return rc;
    }
    c->temp_name = ident;
    snprintf(c->temp_target, sizeof(c->temp_target), "%s", view);
    return 0;
}

/* Text of one filter parameter, malloc'd; *out NULL for an SQL NULL. */
static int param_text(const pol_expr_value *v, char **out, polis_error *err)
{
    size_t cap;

    *out = NULL;
    if (v->type == POL_EXPR_NULL)
        return 0;
    if (v->type == POL_EXPR_STRING && memchr(v->u.str, '\0', v->len))
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "a filter value holds a NUL byte");
    cap = v->type == POL_EXPR_STRING ? v->len + 1 : 64;
    *out = malloc(cap);
    if (*out == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    if (pol_expr_value_format(v, *out, cap) != 0) {
        free(*out);
        *out = NULL;
        return polis_error_set(err, POLIS_EINTERNAL, NULL,
                               "cannot format a filter value");
    }
    return 0;
}

/*
 * Write this query session's request row: which view it may read, the
 * filter's values, the hash key.  Written by the owner, readable only by
 * the owner: the consumer can neither see nor change it.
 */
static int write_request(pgq_conn *c, const char *view,
                         const pol_expr_sql *fsql, const void *key,
                         size_t keylen, polis_error *err)
{
    size_t n = fsql->nparams, nv = n + 3;
    char **vals = calloc(nv, sizeof(*vals));
    int *lens = calloc(nv, sizeof(*lens)), *fmts = calloc(nv, sizeof(*fmts));
    char pid[16];
    strbuf b = STRBUF_INIT(VIEW_SQL_MAX);
    PGresult *r;
    int rc = 0;

    if (vals == NULL || lens == NULL || fmts == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
        goto out;
    }
    snprintf(pid, sizeof(pid), "%d", c->query_pid);
    strbuf_puts(&b, "INSERT INTO " PGQ_SCHEMA ".request (pid, view, p, k) "
                    "VALUES ($1::int, $2::name, ");
    if (n == 0)
        strbuf_puts(&b, "'{}'::text[]");
    for (size_t i = 0; i < n; i++) {
        strbuf_printf(&b, "%s$%zu::text", i ? ", " : "ARRAY[", i + 4);
        if ((rc = param_text(&fsql->params[i], &vals[i + 3], err)) != 0)
            goto out;
    }
    if (n)
        strbuf_puts(&b, "]::text[]");
    strbuf_puts(&b, ", $3::bytea) ON CONFLICT (pid) DO UPDATE SET "
                    "view = excluded.view, p = excluded.p, k = excluded.k");
    if (b.rc) {
        rc = polis_error_set(err, b.rc, NULL, "filter too large");
        goto out;
    }
    vals[0] = pid;
    vals[1] = (char *)view;
    vals[2] = (char *)key; /* binary: the raw key bytes */
    lens[2] = (int)keylen;
    fmts[2] = 1;
    r = PQexecParams(c->owner, b.p, (int)nv, NULL, (const char *const *)vals,
                     lens, fmts, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = set_pg_error(
            err, session_ended(r, c->owner) ? POLIS_EIO : POLIS_EINVAL,
            "cannot write the request row", PQerrorMessage(c->owner));
    PQclear(r);
out:
    if (vals)
        for (size_t i = 3; i < nv; i++)
            free(vals[i]);
    free(vals);
    free(lens);
    free(fmts);
    free(b.p);
    return rc;
}

static void clear_request(pgq_conn *c)
{
    char pid[16];
    const char *v[1] = {pid};

    snprintf(pid, sizeof(pid), "%d", c->query_pid);
    PQclear(PQexecParams(c->owner,
                         "DELETE FROM " PGQ_SCHEMA ".request "
                         "WHERE pid = $1::int",
                         1, NULL, v, NULL, NULL, 0));
}

/* Build the view body for the decision and filter into b. */
static void view_body(strbuf *b, const pgq_conn *c, const char *qtable,
                      const pol_decision *d, const char *filter_text,
                      const char *name)
{
    size_t n = pol_decision_column_count(d);

    strbuf_puts(b, "SELECT ");
    for (size_t i = 0; i < n; i++) {
        const char *col = pol_decision_column_name(d, i);
        const pol_mask *m = pol_decision_column_mask(d, i);
        char *ident = PQescapeIdentifier(c->owner, col, strlen(col));

        if (ident == NULL) {
            if (!b->rc)
                b->rc = POLIS_ENOMEM;
            return;
        }
        if (i)
            strbuf_puts(b, ", ");
        if (m == NULL)
            strbuf_printf(b, "t.%s", ident);
        else
            mask_sql(b, c->owner, c, m, ident);
        strbuf_printf(b, " AS %s", ident);
        PQfreemem(ident);
    }
    strbuf_printf(b,
                  " FROM %s t CROSS JOIN " PGQ_SCHEMA ".request r "
                  "WHERE r.pid = pg_backend_pid() AND r.view = ",
                  qtable);
    sb_literal(b, c->owner, name);
    strbuf_puts(b, "::name AND (");
    filter_sql(b, filter_text);
    strbuf_puts(b, ")");
}

/* ---- the consumer's statement ------------------------------------------- */

/* The first keyword, for clear messages only: the cursor and the role are
 * what enforce. */
static void first_keyword(const char *sql, char *kw, size_t len)
{
    const char *p = sql;
    size_t n = 0;

    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' ||
               *p == '\f' || *p == '(')
            p++;
        if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            int depth = 1;
            p += 2;
            while (*p && depth > 0) {
                if (p[0] == '/' && p[1] == '*')
                    depth++, p += 2;
                else if (p[0] == '*' && p[1] == '/')
                    depth--, p += 2;
                else
                    p++;
            }
        } else {
            break;
        }
    }
    while (n + 1 < len &&
           ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) {
        kw[n++] = (char)(*p >= 'a' ? *p - 'a' + 'A' : *p);
        p++;
    }
    kw[n] = '\0';
}

static int check_statement(const char *sql, polis_error *err)
{
    char kw[16];

    first_keyword(sql, kw, sizeof(kw));
    if (strcmp(kw, "SELECT") == 0 || strcmp(kw, "WITH") == 0 ||
        strcmp(kw, "VALUES") == 0 || strcmp(kw, "TABLE") == 0)
        return 0;
    if (strcmp(kw, "INSERT") == 0 || strcmp(kw, "UPDATE") == 0 ||
        strcmp(kw, "DELETE") == 0 || strcmp(kw, "MERGE") == 0 ||
        strcmp(kw, "TRUNCATE") == 0 || strcmp(kw, "COPY") == 0)
        return polis_error_set(err, POLIS_EDENIED, NULL,
                               "writes are not allowed (%s)", kw);
    return polis_error_set(err, POLIS_EDENIED, NULL,
                           "only SELECT statements are allowed%s%s%s",
                           kw[0] ? " (" : "", kw, kw[0] ? ")" : "");
}

/* The consumer's parameters as text, malloc'd; NULL entries are NULL. */
static int user_params(const json_t *params, char ***out, int *n,
                       polis_error *err)
{
    size_t i, count;
    char **v;

    *out = NULL;
    *n = 0;
    if (params == NULL || json_is_null(params))
        return 0;
    if (!json_is_array(params))
        return polis_error_set(err, POLIS_EINVAL, "params", "must be an array");
    count = json_array_size(params);
    if (count > SQ_MAX_PARAMS)
        return polis_error_set(err, POLIS_ETOOBIG, "params",
                               "at most %d parameters", SQ_MAX_PARAMS);
    if (count == 0)
        return 0;
    v = calloc(count, sizeof(*v));
    if (v == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    *out = v;
    *n = (int)count;
    for (i = 0; i < count; i++) {
        const json_t *p = json_array_get(params, i);
        char tmp[64];
        const char *s = tmp;

        if (json_is_null(p))
            continue;
        if (json_is_true(p))
            s = "true";
        else if (json_is_false(p))
            s = "false";
        else if (json_is_integer(p))
            snprintf(tmp, sizeof(tmp), "%" PRId64,
                     (int64_t)json_integer_value(p));
        else if (json_is_real(p))
            snprintf(tmp, sizeof(tmp), "%.17g", json_real_value(p));
        else if (json_is_string(p)) {
            if (json_string_length(p) > SQ_MAX_VALUE)
                return polis_error_set(err, POLIS_ETOOBIG, "params",
                                       "parameter %zu is too large", i + 1);
            if (strlen(json_string_value(p)) != json_string_length(p))
                return polis_error_set(err, POLIS_EINVAL, "params",
                                       "parameter %zu holds a NUL byte", i + 1);
            s = json_string_value(p);
        } else
            return polis_error_set(err, POLIS_EINVAL, "params",
                                   "parameter %zu must be null, a boolean, "
                                   "a number or a string",
                                   i + 1);
        if ((v[i] = strdup(s)) == NULL)
            return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    }
    return 0;
}

static void free_params(char **v, int n)
{
    for (int i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* SQLSTATE → code and message for the consumer. */
static int map_error(const PGresult *r, PGconn *c, bool timed_out,
                     polis_error *err)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (msg == NULL)
        msg = PQerrorMessage(c);
    if (session_ended(r, c))
        return set_pg_error(err, POLIS_EIO, "the database session ended", msg);
    if (timed_out || (state && strcmp(state, "57014") == 0))
        return polis_error_set(err, POLIS_ETIMEDOUT, NULL,
                               "the query ran out of time");
    if (state && strcmp(state, "42501") == 0)
        return set_pg_error(err, POLIS_EDENIED, NULL, msg);
    if (state && strcmp(state, "25006") == 0)
        return set_pg_error(err, POLIS_EDENIED, "writes are not allowed", msg);
    if (state && strcmp(state, "42601") == 0 && strstr(msg, "multiple"))
        return polis_error_set(err, POLIS_EDENIED, NULL,
                               "only one statement is allowed");
    if (state && strcmp(state, "54000") == 0)
        return set_pg_error(err, POLIS_ETOOBIG, NULL, msg);
    return set_pg_error(err, POLIS_EINVAL, NULL, msg);
}

/*
 * With a minimum group size, an error raised while rows are read may quote
 * one row's value ("invalid input syntax for type integer: ..."): only
 * its SQLSTATE goes to the consumer.  Errors of DECLARE (parse, plan) see
 * the consumer's text, not the data, and keep their message.
 */
static int withhold_message(const PGresult *r, polis_error *err)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    return polis_error_set(err, POLIS_EINVAL, NULL,
                           "the query failed while reading rows (SQLSTATE "
                           "%s); for aggregate-only products PostgreSQL's "
                           "message is withheld",
                           state ? state : "unknown");
}

/*
 * Send one statement and wait for its single result, cancelling it at the
 * deadline.  Returns the result (caller PQclears; NULL when the session
 * broke) and sets *timed_out when the deadline passed.
 */
static PGresult *run_until(pgq_conn *pc, const char *sql, int n,
                           const char *const *vals, int64_t deadline,
                           bool *timed_out)
{
    PGconn *c = pc->query;
    PGresult *res = NULL, *r;
    bool canceled = false;
    int64_t hard = 0;

    if (!PQsendQueryParams(c, sql, n, NULL, vals, NULL, NULL, 0))
        return NULL;
    for (;;) {
        while (PQisBusy(c)) {
            struct pollfd pfd = {PQsocket(c), POLLIN, 0};
            int64_t now = mono_ms(), wait;

            if (!canceled && now >= deadline) {
                PGcancel *cn = PQgetCancel(c);
                char ebuf[256];
                if (cn) {
                    PQcancel(cn, ebuf, sizeof(ebuf));
                    PQfreeCancel(cn);
                }
                canceled = true;
                *timed_out = true;
                hard = now + CANCEL_GRACE_MS;
            }
            wait = (canceled ? hard : deadline) - now;
            if (canceled && wait <= 0) {
                /* The server does not answer: drop the session (the
                 * caller must reopen). */
                PQclear(res);
                PQfinish(c);
                pc->query = NULL;
                return NULL;
            }
            if (wait > 1000)
                wait = 1000;
            if (poll(&pfd, 1, (int)(wait > 0 ? wait : 0)) < 0 &&
                errno != EINTR) {
                PQclear(res);
                return NULL;
            }
            if (!PQconsumeInput(c)) {
                PQclear(res);
                return NULL;
            }
        }
        r = PQgetResult(c);
        if (r == NULL)
            break;
        if (res == NULL)
            res = r;
        else
            PQclear(r);
    }
    if (mono_ms() >= deadline)
        *timed_out = true;
    return res;
}

/* One value of a result row into the sink's form.  *blob is a buffer to
 * free after the row callback. */
static int convert_value(const PGresult *r, int row, int col, sq_value *v,
                         unsigned char **blob, polis_error *err)
{
    const char *s = PQgetvalue(r, row, col);
    size_t len = (size_t)PQgetlength(r, row, col);

    memset(v, 0, sizeof(*v));
    if (PQgetisnull(r, row, col)) {
        v->type = SQ_NULL;
        return 0;
    }
    if (len > SQ_MAX_VALUE)
        return polis_error_set(err, POLIS_ETOOBIG, NULL,
                               "a value is larger than %d bytes", SQ_MAX_VALUE);
    switch (PQftype(r, col)) {
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
        v->type = SQ_INTEGER;
        v->i = strtoll(s, NULL, 10);
        return 0;
    case OID_BOOL:
        v->type = SQ_INTEGER;
        v->i = s[0] == 't';
        return 0;
    case OID_FLOAT4:
    case OID_FLOAT8:
        v->type = SQ_REAL;
        v->d = strtod(s, NULL);
        return 0;
    case OID_BYTEA: {
        size_t blen = 0;
        *blob = PQunescapeBytea((const unsigned char *)s, &blen);
        if (*blob == NULL)
            return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
        v->type = SQ_BLOB;
        v->p = *blob;
        v->len = blen;
        return 0;
    }
    default:
        v->type = SQ_TEXT;
        v->p = s;
        v->len = len;
        return 0;
    }
}

/* ---- pgq_query ----------------------------------------------------------- */

/*
 * The minimum group size works as in the SQLite engine (docs/internals/
 * query.md, "The minimum group size"): one SELECT over the product's table
 * alone, every result column a GROUP BY key or computed from
 * count/sum/avg/min/max, and an added count(*) under a name only this
 * connection knows.  query_shape.c checks the shape with qs_postgres, which
 * follows PostgreSQL's lexical rules for what the shape allows and refuses
 * the rest (dollar quotes, E'' and U&'' strings, subscripts...).
 */

int pgq_query(pgq_conn *c, const sq_product *product,
              const pol_decision *decision, const void *hash_key,
              size_t hash_key_len, const pol_expr_subject *subject,
              const pol_expr_request *request, const char *sql,
              const json_t *params, const sq_limits *limits,
              const sq_sink *sink, sq_stats *stats, polis_error *err)
{
    static const sq_limits no_limits = {0};
    char schema[256], table[256], name[VIEW_NAME_MAX], sbuf_[256];
    pol_expr_sql_opts opts = {POL_SQL_POSTGRES, "t", 1};
    pol_expr_sql fsql = {0};
    strbuf body = STRBUF_INIT(VIEW_SQL_MAX), decl = STRBUF_INIT(VIEW_SQL_MAX);
    sq_stats st = {0};
    char **uvals = NULL;
    int nuvals = 0, rc = 0;
    int64_t timeout, deadline;
    uint64_t max_rows, max_bytes;
    size_t max_sql;
    bool in_tx = false, timed_out = false, columns_sent = false, done = false;
    char *qtable = NULL;
    int64_t min;
    size_t insert_at = 0, nitems = 0;

    if (stats)
        memset(stats, 0, sizeof(*stats));
    if (c == NULL || product == NULL || decision == NULL || sql == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "NULL argument");
    if (limits == NULL)
        limits = &no_limits;
    timeout =
        limits->timeout_ms > 0 ? limits->timeout_ms : SQ_DEFAULT_TIMEOUT_MS;
    max_rows = limits->max_rows ? limits->max_rows : SQ_DEFAULT_MAX_ROWS;
    max_bytes = limits->max_bytes ? limits->max_bytes : SQ_DEFAULT_MAX_BYTES;
    max_sql = limits->max_sql ? limits->max_sql : SQ_DEFAULT_MAX_SQL;
    if (max_sql > SQ_MAX_SQL)
        max_sql = SQ_MAX_SQL;
    deadline = mono_ms() + timeout;

    if (!pol_decision_allowed(decision))
        return polis_error_set(err, POLIS_EDENIED, NULL,
                               "access denied by policy");
    min = pol_decision_min_group_size(decision);
    for (size_t i = 0; i < pol_decision_column_count(decision); i++) {
        const pol_mask *m = pol_decision_column_mask(decision, i);
        if (m && m->method == POL_MASK_HASH && hash_key == NULL)
            return polis_error_set(err, POLIS_EINVAL, NULL,
                                   "column %s has a hash mask and the "
                                   "sidecar has no hash key",
                                   pol_decision_column_name(decision, i));
        if (m && m->method == POL_MASK_HASH && c->crypto == NULL)
            return polis_error_set(err, POLIS_EINVAL, NULL,
                                   "column %s has a hash mask: the product "
                                   "database needs CREATE EXTENSION pgcrypto",
                                   pol_decision_column_name(decision, i));
    }
    if (hash_key_len > 64 * 1024)
        return polis_error_set(err, POLIS_ETOOBIG, NULL, "hash key too long");
    if (strlen(sql) > max_sql)
        return polis_error_set(err, POLIS_ETOOBIG, "sql",
                               "the SQL text is longer than %zu bytes",
                               max_sql);
    if ((rc = check_statement(sql, err)) != 0)
        return rc;
    if ((rc = split_table(product->table, schema, sizeof(schema), table,
                          sizeof(table), err)) != 0)
        return rc;
    /* The consumer names the table unqualified: the session's temp view. */
    if (min > 0 && (rc = qs_check(&qs_postgres, sql, table, decision, min,
                                  &insert_at, &nitems, err)) != 0)
        return rc;
    if (PQstatus(c->owner) != CONNECTION_OK ||
        PQstatus(c->query) != CONNECTION_OK)
        return polis_error_set(err, POLIS_EIO, NULL,
                               "the database session ended: reopen");
    if ((rc = user_params(params, &uvals, &nuvals, err)) != 0)
        goto out;

    /* The view: masks, then the filter with this request's values kept
     * out of its text. */
    {
        strbuf q = STRBUF_INIT(VIEW_SQL_MAX);
        sb_ident(&q, c->owner, schema);
        strbuf_puts(&q, ".");
        sb_ident(&q, c->owner, table);
        if (q.rc) {
            rc = polis_error_set(err, q.rc, NULL, "out of memory");
            free(q.p);
            goto out;
        }
        qtable = q.p;
    }
    if ((rc = pol_expr_to_sql(pol_decision_filters(decision),
                              pol_decision_filter_count(decision), &opts,
                              subject, request, &fsql, err)) != 0)
        goto out;
    view_body(&body, c, qtable, decision, fsql.text, "");
    if (body.rc) {
        rc = polis_error_set(err, body.rc, NULL, "governed view too large");
        goto out;
    }
    view_name(body.p, name);
    body.len = 0;
    view_body(&body, c, qtable, decision, fsql.text, name);
    if (body.rc) {
        rc = polis_error_set(err, body.rc, NULL, "governed view too large");
        goto out;
    }
    if ((rc = ensure_view(c, qtable, name, body.p, err)) != 0 ||
        (rc = ensure_temp_view(c, table, name, err)) != 0 ||
        (rc = write_request(c, name, &fsql, hash_key, hash_key_len, err)) != 0)
        goto out;

    /* The consumer's statement, as a cursor: DECLARE accepts only a query
     * (no utility statement, no data-modifying WITH), and rows are fetched
     * in batches we can stop at any point. */
    snprintf(sbuf_, sizeof(sbuf_),
             "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
             "SET LOCAL statement_timeout = %" PRId64 "; "
             "SET LOCAL search_path = pg_temp; "
             "SET LOCAL standard_conforming_strings = on",
             timeout);
    if ((rc = exec_simple(c->query, sbuf_, "cannot start the transaction",
                          err)) != 0)
        goto out;
    in_tx = true;
    strbuf_puts(&decl, "DECLARE polis_cursor NO SCROLL CURSOR FOR ");
    if (min > 0) {
        /* The group size, computed by the same statement over the same
         * rows; checked on the first FETCH, stripped before the sink. */
        strbuf_putn(&decl, sql, insert_at);
        strbuf_puts(&decl, ", pg_catalog.count(*) AS \"");
        strbuf_puts(&decl, c->count_name);
        strbuf_puts(&decl, "\"");
        strbuf_puts(&decl, sql + insert_at);
    } else {
        strbuf_puts(&decl, sql);
    }
    if (decl.rc) {
        rc = polis_error_set(err, decl.rc, NULL, "out of memory");
        goto out;
    }
    {
        PGresult *r = run_until(c, decl.p, nuvals, (const char *const *)uvals,
                                deadline, &timed_out);
        if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
            rc = map_error(r, c->query, timed_out && r == NULL, err);
            if (r == NULL && PQstatus(c->query) != CONNECTION_OK)
                rc = set_pg_error(err, POLIS_EIO, "the database session ended",
                                  PQerrorMessage(c->query));
            PQclear(r);
            goto out;
        }
        PQclear(r);
    }
    while (!done) {
        char fetch[64];
        uint64_t want = max_rows - st.rows + 1;
        PGresult *r;
        int nrows, ncols, nout;
        bool last_batch;

        if (want > FETCH_BATCH)
            want = FETCH_BATCH;
        snprintf(fetch, sizeof(fetch), "FETCH %" PRIu64 " FROM polis_cursor",
                 want);
        r = run_until(c, fetch, 0, NULL, deadline, &timed_out);
        if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
            rc = map_error(r, c->query, timed_out, err);
            if (min > 0 && rc == POLIS_EINVAL)
                rc = withhold_message(r, err);
            PQclear(r);
            goto out;
        }
        if (timed_out) {
            PQclear(r);
            rc = polis_error_set(err, POLIS_ETIMEDOUT, NULL,
                                 "the query ran out of time");
            goto out;
        }
        nrows = PQntuples(r);
        ncols = PQnfields(r);
        nout = ncols;
        if (min > 0) {
            /* The group size must be the column we added, nothing else. */
            if ((size_t)ncols != nitems + 1 ||
                strcmp(PQfname(r, ncols - 1), c->count_name) != 0 ||
                PQftype(r, ncols - 1) != OID_INT8) {
                PQclear(r);
                rc = polis_error_set(err, POLIS_EDENIED, NULL,
                                     "the query's shape could not be "
                                     "verified for the minimum group size");
                goto out;
            }
            nout = ncols - 1;
        }
        if (!columns_sent) {
            const char **names = calloc((size_t)ncols + 1, sizeof(*names));
            if (names == NULL) {
                PQclear(r);
                rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
                goto out;
            }
            for (int k = 0; k < nout; k++)
                names[k] = PQfname(r, k);
            rc = sink && sink->columns
                     ? sink->columns(sink->ctx, (size_t)nout, names)
                     : 0;
            free(names);
            columns_sent = true;
            if (rc != 0) {
                PQclear(r);
                goto out;
            }
        }
        last_batch = (uint64_t)nrows < want;
        for (int i = 0; i < nrows; i++) {
            sq_value *vals = calloc((size_t)ncols + 1, sizeof(*vals));
            unsigned char **blobs = calloc((size_t)ncols + 1, sizeof(*blobs));
            uint64_t bytes = 0;

            if (min > 0 &&
                (PQgetisnull(r, i, ncols - 1) ||
                 strtoll(PQgetvalue(r, i, ncols - 1), NULL, 10) < min)) {
                st.suppressed++;
                free(vals);
                free(blobs);
                continue;
            }
            if (st.rows >= max_rows) {
                st.truncated = true;
                done = true;
                free(vals);
                free(blobs);
                break;
            }
            if (vals == NULL || blobs == NULL) {
                rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
            }
            for (int k = 0; rc == 0 && k < nout; k++) {
                rc = convert_value(r, i, k, &vals[k], &blobs[k], err);
                if (vals[k].type == SQ_TEXT || vals[k].type == SQ_BLOB)
                    bytes += vals[k].len;
                else if (vals[k].type != SQ_NULL)
                    bytes += 8;
            }
            if (rc == 0 && st.bytes + bytes > max_bytes) {
                st.truncated = true;
                done = true;
            } else if (rc == 0) {
                rc = sink && sink->row
                         ? sink->row(sink->ctx, (size_t)nout, vals)
                         : 0;
                if (rc == 0) {
                    st.rows++;
                    st.bytes += bytes;
                }
            }
            for (int k = 0; blobs && k < nout; k++)
                PQfreemem(blobs[k]);
            free(vals);
            free(blobs);
            if (rc != 0 || done)
                break;
        }
        PQclear(r);
        if (rc != 0)
            goto out;
        if (last_batch)
            done = true;
    }
out:
    if (in_tx && PQstatus(c->query) == CONNECTION_OK) {
        /* Session advisory locks outlive the transaction; nothing else the
         * consumer could do survives ROLLBACK.  A cancel that came too late
         * to stop its query may hit this instead: then once more. */
        polis_error ignored = {0};
        const char *end =
            "ROLLBACK; SELECT pg_catalog.pg_advisory_unlock_all()";
        if (exec_simple(c->query, end, NULL, &ignored) != 0)
            exec_simple(c->query, end, NULL, &ignored);
    }
    if (PQstatus(c->owner) == CONNECTION_OK)
        clear_request(c);
    free(qtable);
    free(body.p);
    free(decl.p);
    pol_expr_sql_free(&fsql);
    free_params(uvals, nuvals);
    if (stats)
        *stats = st;
    return rc;
}
