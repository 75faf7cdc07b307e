/*
 * query_sqlite.c — the governed SQL engine of the query port on SQLite
 * (query_sqlite.h).  Masks and row filters live in TEMP views that shadow
 * the product's table; an authorizer lets the real table be read only
 * through them and refuses everything that is not a plain SELECT.  The
 * minimum group size is enforced on a restricted query shape
 * (query_shape.c).  Design: docs/internals/query.md.
 */
#include "common/strbuf.h"
#include "sidecar/query_shape.h"
#include "sidecar/query_sqlite.h"

#include <sqlite3.h>

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Virtual machine steps between two looks at the clock. */
#define SQ_PROGRESS_STEPS 1000
/* Longest SQL the connection accepts (our own view definitions included:
 * rendered filters reach POL_EXPR_SQL_MAX_LEN). */
#define SQ_SQLITE_SQL_LIMIT (4 * 1024 * 1024)

/* ---- a small growable string with a maximum ----------------------------- */

/* An identifier in double quotes, embedded quotes doubled. */
static void sb_ident(strbuf *b, const char *name)
{
    const char *q;

    strbuf_puts(b, "\"");
    while ((q = strchr(name, '"')) != NULL) {
        strbuf_putn(b, name, (size_t)(q - name) + 1);
        strbuf_puts(b, "\"");
        name = q + 1;
    }
    strbuf_puts(b, name);
    strbuf_puts(b, "\"");
}

/* ---- the connection ------------------------------------------------------ */

struct sq_conn {
    sqlite3 *db;
    char view_name[48];  /* "polis_<32 hex>": the masked, filtered view */
    char count_name[48]; /* alias of the group-size column */
    char *view_sql;      /* definition installed now (NULL: none) */
    char *view_table;    /* the product table it shadows */

    /* The request being run (borrowed during sq_query). */
    const pol_decision *decision;
    const pol_mask_key *key;
    pol_expr_sql filter;

    /* Masking scratch. */
    char *maskbuf;
    size_t maskcap;

    /* Authorizer state: tables and views of main, read at each request,
     * to tell an unqualified table from a CTE when SQLite names neither's
     * schema. */
    char **main_names;
    size_t nmain, main_cap;
    bool auth_denied;
    char denied[POLIS_ERROR_MSG_MAX];

    /* Deadline of the running statement. */
    struct timespec deadline;
    bool timed_out;
};

static bool ieq(const char *a, const char *b)
{
    return a != NULL && b != NULL && sqlite3_stricmp(a, b) == 0;
}

/* polis_mask(i, value): column i's mask of the current decision. */
static void fn_mask(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    sq_conn *c = sqlite3_user_data(ctx);
    const pol_mask *mask;
    const char *in;
    size_t inlen, need, outlen;
    bool is_null;
    int64_t i;
    int rc;

    (void)argc;
    i = sqlite3_value_int64(argv[0]);
    if (c->decision == NULL || i < 0 ||
        (size_t)i >= pol_decision_column_count(c->decision)) {
        sqlite3_result_error(ctx, "polis_mask: no such column", -1);
        return;
    }
    mask = pol_decision_column_mask(c->decision, (size_t)i);
    if (sqlite3_value_type(argv[1]) == SQLITE_NULL) {
        sqlite3_result_null(ctx);
        return;
    }
    if (mask == NULL) { /* not reached: unmasked columns are not wrapped */
        sqlite3_result_value(ctx, argv[1]);
        return;
    }
    if (sqlite3_value_type(argv[1]) == SQLITE_BLOB) {
        in = sqlite3_value_blob(argv[1]);
    } else {
        in = (const char *)sqlite3_value_text(argv[1]);
    }
    inlen = (size_t)sqlite3_value_bytes(argv[1]);
    if (in == NULL)
        in = "";
    need = pol_mask_output_max(mask, inlen);
    if (need > c->maskcap) {
        char *nb = realloc(c->maskbuf, need);
        if (nb == NULL) {
            sqlite3_result_error_nomem(ctx);
            return;
        }
        c->maskbuf = nb;
        c->maskcap = need;
    }
    rc = pol_mask_apply(mask, c->key, in, inlen, c->maskbuf, c->maskcap,
                        &outlen, &is_null);
    if (rc != 0) {
        sqlite3_result_error(ctx, "polis_mask: the value cannot be masked", -1);
        return;
    }
    if (is_null)
        sqlite3_result_null(ctx);
    else
        sqlite3_result_text(ctx, c->maskbuf, (int)outlen, SQLITE_TRANSIENT);
}

/* polis_param(n): the n-th (1-based) value of the rendered row filter. */
static void fn_param(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    sq_conn *c = sqlite3_user_data(ctx);
    const pol_expr_value *v;
    int64_t n;

    (void)argc;
    n = sqlite3_value_int64(argv[0]);
    if (n < 1 || (uint64_t)n > c->filter.nparams) {
        sqlite3_result_error(ctx, "polis_param: no such parameter", -1);
        return;
    }
    v = &c->filter.params[n - 1];
    switch (v->type) {
    case POL_EXPR_STRING:
        sqlite3_result_text64(ctx, v->u.str, v->len, SQLITE_TRANSIENT,
                              SQLITE_UTF8);
        break;
    case POL_EXPR_INTEGER:
        sqlite3_result_int64(ctx, v->u.i);
        break;
    case POL_EXPR_DECIMAL:
        sqlite3_result_double(ctx, v->u.d);
        break;
    case POL_EXPR_BOOLEAN:
        sqlite3_result_int(ctx, v->u.b ? 1 : 0);
        break;
    default:
        sqlite3_result_null(ctx);
        break;
    }
}

/* Remember the first refusal: SQLite itself only says "not authorized". */
static int deny(sq_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int deny(sq_conn *c, const char *fmt, ...)
{
    va_list ap;

    if (!c->auth_denied) {
        c->auth_denied = true;
        va_start(ap, fmt);
        vsnprintf(c->denied, sizeof(c->denied), fmt, ap);
        va_end(ap);
    }
    return SQLITE_DENY;
}

static bool is_schema_table(const char *t)
{
    return ieq(t, "sqlite_master") || ieq(t, "sqlite_schema") ||
           ieq(t, "sqlite_temp_master") || ieq(t, "sqlite_temp_schema");
}

/*
 * The authorizer, installed only while the consumer's statement is
 * prepared.  `inner` is the innermost view being expanded when SQLite asks:
 * the real table may only be read from inside the view whose name is a
 * per-connection secret, so neither `main.orders` nor a CTE called
 * `orders` reaches the raw rows.
 */
static int authorize(void *ctx, int action, const char *a1, const char *a2,
                     const char *dbname, const char *inner)
{
    sq_conn *c = ctx;
    bool in_view = ieq(inner, c->view_name);

    switch (action) {
    case SQLITE_SELECT:
    case SQLITE_RECURSIVE:
        return SQLITE_OK;
    case SQLITE_READ:
        if (is_schema_table(a1))
            return deny(c,
                        "the database schema (%s) is not readable through "
                        "the query port",
                        a1);
        if (ieq(dbname, "temp") &&
            (ieq(a1, c->view_name) || ieq(a1, c->view_table)))
            return SQLITE_OK;
        if (ieq(dbname, "main") && ieq(a1, c->view_table)) {
            if (in_view)
                return SQLITE_OK;
            return deny(c,
                        "table main.%s may only be read as %s (the "
                        "governed view of this product)",
                        a1, a1);
        }
        if (dbname == NULL) {
            /* A CTE or a subquery read without columns (count(*)), or a
             * table so read: only the latter has a name in main. */
            size_t k;
            for (k = 0; k < c->nmain; k++)
                if (ieq(a1, c->main_names[k]) && !ieq(a1, c->view_table))
                    return deny(c, "table main.%s is not part of this product",
                                a1);
            return SQLITE_OK;
        }
        if (a1 != NULL && sqlite3_strnicmp(a1, "pragma_", 7) == 0)
            return deny(c, "PRAGMA is not allowed (%s)", a1);
        return deny(c, "table %s.%s is not part of this product",
                    dbname ? dbname : "?", a1);
    case SQLITE_FUNCTION:
        if (a2 != NULL && sqlite3_strnicmp(a2, "polis_", 6) == 0)
            return in_view ? SQLITE_OK
                           : deny(c, "function %s is not available", a2);
        if (ieq(a2, "load_extension"))
            return deny(c, "extension loading is not allowed");
        if (ieq(a2, "fts3_tokenizer"))
            return deny(c, "function %s is not allowed", a2);
        return SQLITE_OK;
    case SQLITE_PRAGMA:
        return deny(c, "PRAGMA is not allowed (%s)", a1);
    case SQLITE_ATTACH:
    case SQLITE_DETACH:
        return deny(c, "ATTACH and DETACH are not allowed");
    case SQLITE_TRANSACTION:
    case SQLITE_SAVEPOINT:
        return deny(c, "transactions and savepoints are not allowed");
    case SQLITE_INSERT:
    case SQLITE_DELETE:
        return deny(c, "writes are not allowed");
    case SQLITE_UPDATE:
        if (is_schema_table(a1))
            return deny(c, "table-valued functions (json_each, pragma_...) and "
                           "schema changes are not allowed");
        return deny(c, "writes are not allowed");
    case SQLITE_ANALYZE:
        return deny(c, "ANALYZE is not allowed");
    case SQLITE_REINDEX:
        return deny(c, "REINDEX is not allowed");
    case SQLITE_ALTER_TABLE:
        return deny(c, "ALTER is not allowed");
    case SQLITE_CREATE_TEMP_TABLE:
    case SQLITE_CREATE_TEMP_VIEW:
    case SQLITE_CREATE_TEMP_INDEX:
    case SQLITE_CREATE_TEMP_TRIGGER:
    case SQLITE_CREATE_TABLE:
    case SQLITE_CREATE_VIEW:
    case SQLITE_CREATE_INDEX:
    case SQLITE_CREATE_TRIGGER:
    case SQLITE_CREATE_VTABLE:
        return deny(c, "CREATE is not allowed");
    case SQLITE_DROP_TEMP_TABLE:
    case SQLITE_DROP_TEMP_VIEW:
    case SQLITE_DROP_TEMP_INDEX:
    case SQLITE_DROP_TEMP_TRIGGER:
    case SQLITE_DROP_TABLE:
    case SQLITE_DROP_VIEW:
    case SQLITE_DROP_INDEX:
    case SQLITE_DROP_TRIGGER:
    case SQLITE_DROP_VTABLE:
        return deny(c, "DROP is not allowed");
    default:
        return deny(c, "only SELECT statements are allowed");
    }
}

static int on_progress(void *ctx)
{
    sq_conn *c = ctx;
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec > c->deadline.tv_sec ||
        (now.tv_sec == c->deadline.tv_sec &&
         now.tv_nsec >= c->deadline.tv_nsec)) {
        c->timed_out = true;
        return 1;
    }
    return 0;
}

/* "file:" URI of a path, mode=ro; characters with a meaning in URIs are
 * percent-encoded. */
static char *ro_uri(const char *path)
{
    size_t n = strlen(path), i, o = 0;
    char *u = malloc(n * 3 + 16);

    if (u == NULL)
        return NULL;
    o += (size_t)sprintf(u, "file:");
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)path[i];
        if (isalnum(ch) || strchr("/._-~", ch) != NULL)
            u[o++] = (char)ch;
        else
            o += (size_t)sprintf(u + o, "%%%02X", ch);
    }
    strcpy(u + o, "?mode=ro");
    return u;
}

int sq_open(const char *db_path, sq_conn **out, polis_error *err)
{
    static const int off[] = {
        SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION,
        SQLITE_DBCONFIG_ENABLE_TRIGGER,
        SQLITE_DBCONFIG_TRUSTED_SCHEMA,
        SQLITE_DBCONFIG_DQS_DML,
        SQLITE_DBCONFIG_DQS_DDL,
        SQLITE_DBCONFIG_ENABLE_VIEW, /* views of the file: TEMP ones work */
    };
    unsigned char rnd[16];
    sq_conn *c = NULL;
    char *uri = NULL;
    size_t i;
    int rc;

    if (out == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "no output");
    *out = NULL;
    if (db_path == NULL || db_path[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, NULL, "no database path");
    c = calloc(1, sizeof(*c));
    uri = ro_uri(db_path);
    if (c == NULL || uri == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, db_path, "out of memory");
        goto out;
    }
    if (sqlite3_open_v2(uri, &c->db,
                        SQLITE_OPEN_READONLY | SQLITE_OPEN_URI |
                            SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_PRIVATECACHE,
                        NULL) != SQLITE_OK) {
        rc = polis_error_set(err, POLIS_EIO, db_path, "%s",
                             c->db ? sqlite3_errmsg(c->db) : "out of memory");
        goto out;
    }
    for (i = 0; i < sizeof(off) / sizeof(off[0]); i++)
        sqlite3_db_config(c->db, off[i], 0, (int *)NULL);
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_limit(c->db, SQLITE_LIMIT_ATTACHED, 0);
    sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, SQ_MAX_VALUE);
    sqlite3_limit(c->db, SQLITE_LIMIT_SQL_LENGTH, SQ_SQLITE_SQL_LIMIT);
    sqlite3_limit(c->db, SQLITE_LIMIT_VARIABLE_NUMBER, SQ_MAX_PARAMS);

    /* The names only this connection knows (see authorize()). */
    sqlite3_randomness(sizeof(rnd), rnd);
    strcpy(c->view_name, "polis_");
    for (i = 0; i < sizeof(rnd); i++)
        sprintf(c->view_name + 6 + 2 * i, "%02x", rnd[i]);
    snprintf(c->count_name, sizeof(c->count_name), "polis_n_%s",
             c->view_name + 6);

    if (sqlite3_create_function_v2(c->db, "polis_mask", 2,
                                   SQLITE_UTF8 | SQLITE_DETERMINISTIC |
                                       SQLITE_INNOCUOUS,
                                   c, fn_mask, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_create_function_v2(
            c->db, "polis_param", 1,
            SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, c, fn_param,
            NULL, NULL, NULL) != SQLITE_OK) {
        rc = polis_error_set(err, POLIS_EINTERNAL, db_path, "%s",
                             sqlite3_errmsg(c->db));
        goto out;
    }
    *out = c;
    c = NULL;
    rc = 0;
out:
    free(uri);
    sq_close(c);
    return rc;
}

static void clear_main_names(sq_conn *c)
{
    size_t i;

    for (i = 0; i < c->nmain; i++)
        sqlite3_free(c->main_names[i]);
    c->nmain = 0;
}

/* Names of main's tables and views, for the authorizer. */
static int read_main_names(sq_conn *c, polis_error *err)
{
    sqlite3_stmt *st = NULL;
    int rc;

    clear_main_names(c);
    if (sqlite3_prepare_v2(c->db,
                           "SELECT name FROM main.sqlite_schema "
                           "WHERE type IN ('table', 'view')",
                           -1, &st, NULL) != SQLITE_OK)
        return polis_error_set(err, POLIS_EIO, NULL, "%s",
                               sqlite3_errmsg(c->db));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char *name;
        if (c->nmain == c->main_cap) {
            size_t cap = c->main_cap ? c->main_cap * 2 : 16;
            char **nn = realloc(c->main_names, cap * sizeof(*nn));
            if (nn == NULL)
                break;
            c->main_names = nn;
            c->main_cap = cap;
        }
        name = sqlite3_mprintf("%s", sqlite3_column_text(st, 0));
        if (name == NULL)
            break;
        c->main_names[c->nmain++] = name;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return polis_error_set(err, rc == SQLITE_ROW ? POLIS_ENOMEM : POLIS_EIO,
                               NULL, "cannot list the database's tables: %s",
                               sqlite3_errstr(rc));
    return 0;
}

void sq_close(sq_conn *c)
{
    if (c == NULL)
        return;
    clear_main_names(c);
    free(c->main_names);
    sqlite3_close_v2(c->db);
    pol_expr_sql_free(&c->filter);
    free(c->view_sql);
    free(c->view_table);
    free(c->maskbuf);
    free(c);
}

/* ---- the governed views -------------------------------------------------- */

/*
 * Append the rendered filter with every "?N" placeholder replaced by
 * polis_param(N): a view cannot hold parameters, and values never become
 * SQL text.  The renderer quotes identifiers in "..." and turns every
 * literal into a parameter, so '?' outside double quotes is a placeholder.
 */
static void put_filter(strbuf *b, const char *text)
{
    const char *p = text;

    while (*p) {
        if (*p == '"') {
            const char *q = p + 1;
            while (*q && !(*q == '"' && q[1] != '"')) {
                q += (*q == '"') ? 2 : 1;
            }
            if (*q)
                q++;
            strbuf_putn(b, p, (size_t)(q - p));
            p = q;
        } else if (*p == '?') {
            const char *q = p + 1;
            while (isdigit((unsigned char)*q))
                q++;
            strbuf_puts(b, "polis_param(");
            strbuf_putn(b, p + 1, (size_t)(q - p - 1));
            strbuf_puts(b, ")");
            p = q;
        } else {
            strbuf_putn(b, p, 1);
            p++;
        }
    }
}

/* Check that `table` is an ordinary table of main (not a view: a view of
 * the file would give its own name as the authorizer's context). */
static int check_table(sq_conn *c, const char *table, polis_error *err)
{
    sqlite3_stmt *st = NULL;
    int rc;

    if (sqlite3_prepare_v2(c->db,
                           "SELECT type FROM main.sqlite_schema "
                           "WHERE name = ?1 COLLATE NOCASE",
                           -1, &st, NULL) != SQLITE_OK)
        return polis_error_set(err, POLIS_EIO, NULL, "%s",
                               sqlite3_errmsg(c->db));
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW &&
        strcmp((const char *)sqlite3_column_text(st, 0), "table") == 0) {
        rc = 0;
    } else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        rc = polis_error_set(err, POLIS_EINVAL, table,
                             "the product's table \"%s\" is not a table of "
                             "the database",
                             table);
    } else {
        rc = polis_error_set(err, POLIS_EIO, NULL, "%s", sqlite3_errmsg(c->db));
    }
    sqlite3_finalize(st);
    return rc;
}

static int exec_setup(sq_conn *c, const char *sql, polis_error *err)
{
    char *msg = NULL;

    if (sqlite3_exec(c->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        int rc = polis_error_set(err, POLIS_EINVAL, NULL,
                                 "cannot set up the governed view: %s",
                                 msg ? msg : sqlite3_errmsg(c->db));
        sqlite3_free(msg);
        return rc;
    }
    return 0;
}

/*
 * Make the TEMP views of this request exist: the masked, filtered view
 * (secret name) and the view named like the product's table over it.  The
 * definition depends only on which columns are masked and on the filter's
 * shape, so consecutive requests usually reuse the installed one.
 */
static int install_views(sq_conn *c, const char *table, polis_error *err)
{
    const pol_decision *d = c->decision;
    size_t i, n = pol_decision_column_count(d);
    strbuf v = STRBUF_INIT(SQ_SQLITE_SQL_LIMIT),
           s = STRBUF_INIT(SQ_SQLITE_SQL_LIMIT);
    char num[48];
    int rc = 0;

    strbuf_puts(&v, "CREATE TEMP VIEW ");
    sb_ident(&v, c->view_name);
    strbuf_puts(&v, " AS SELECT ");
    for (i = 0; i < n; i++) {
        const char *col = pol_decision_column_name(d, i);
        if (i > 0)
            strbuf_puts(&v, ", ");
        if (pol_decision_column_mask(d, i) != NULL) {
            snprintf(num, sizeof(num), "polis_mask(%zu, ", i);
            strbuf_puts(&v, num);
            sb_ident(&v, col);
            strbuf_puts(&v, ") AS ");
        }
        sb_ident(&v, col);
    }
    strbuf_puts(&v, " FROM main.");
    sb_ident(&v, table);
    strbuf_puts(&v, " WHERE ");
    put_filter(&v, c->filter.text);
    /* An optimisation fence: SQLite neither flattens a subquery with an
     * OFFSET nor pushes outer WHERE terms into one with a LIMIT, so the
     * consumer's conditions only ever run on rows the filter let through. */
    strbuf_puts(&v, " LIMIT -1 OFFSET 0");
    if (v.rc) {
        rc = polis_error_set(err, v.rc, NULL, "the governed view is too large");
        goto out;
    }
    if (c->view_sql != NULL && strcmp(c->view_sql, v.p) == 0 &&
        c->view_table != NULL && strcmp(c->view_table, table) == 0)
        goto out;

    if (c->view_sql != NULL) {
        strbuf_puts(&s, "DROP VIEW IF EXISTS temp.");
        sb_ident(&s, c->view_table);
        strbuf_puts(&s, "; DROP VIEW IF EXISTS temp.");
        sb_ident(&s, c->view_name);
        if (s.rc == 0 && (rc = exec_setup(c, s.p, err)) != 0)
            goto out;
        free(c->view_sql);
        free(c->view_table);
        c->view_sql = c->view_table = NULL;
        s.len = 0;
    }
    if ((rc = check_table(c, table, err)) != 0)
        goto out;
    if ((rc = exec_setup(c, v.p, err)) != 0)
        goto out;
    strbuf_puts(&s, "CREATE TEMP VIEW ");
    sb_ident(&s, table);
    strbuf_puts(&s, " AS SELECT * FROM temp.");
    sb_ident(&s, c->view_name);
    if (s.rc) {
        rc = polis_error_set(err, s.rc, NULL, "out of memory");
        goto out;
    }
    if ((rc = exec_setup(c, s.p, err)) != 0) {
        s.len = 0;
        strbuf_puts(&s, "DROP VIEW IF EXISTS temp.");
        sb_ident(&s, c->view_name);
        if (s.rc == 0)
            sqlite3_exec(c->db, s.p, NULL, NULL, NULL);
        goto out;
    }
    c->view_sql = v.p;
    c->view_table = strdup(table);
    v.p = NULL;
    if (c->view_table == NULL) {
        free(c->view_sql);
        c->view_sql = NULL;
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    }
out:
    free(v.p);
    free(s.p);
    return rc;
}

/* ---- running a query ----------------------------------------------------- */

static int bind_params(sqlite3_stmt *st, const json_t *params, polis_error *err)
{
    int want = sqlite3_bind_parameter_count(st);
    size_t n = 0, i;

    if (params != NULL && !json_is_null(params)) {
        if (!json_is_array(params))
            return polis_error_set(err, POLIS_EINVAL, "params",
                                   "params must be an array");
        n = json_array_size(params);
    }
    if (n != (size_t)want)
        return polis_error_set(err, POLIS_EINVAL, "params",
                               "the statement has %d parameter%s, %zu "
                               "given",
                               want, want == 1 ? "" : "s", n);
    for (i = 0; i < n; i++) {
        const json_t *v = json_array_get(params, i);
        int idx = (int)i + 1, rc;

        if (json_is_null(v))
            rc = sqlite3_bind_null(st, idx);
        else if (json_is_boolean(v))
            rc = sqlite3_bind_int(st, idx, json_is_true(v));
        else if (json_is_integer(v))
            rc = sqlite3_bind_int64(st, idx, json_integer_value(v));
        else if (json_is_real(v))
            rc = sqlite3_bind_double(st, idx, json_real_value(v));
        else if (json_is_string(v))
            rc = sqlite3_bind_text64(st, idx, json_string_value(v),
                                     json_string_length(v), SQLITE_TRANSIENT,
                                     SQLITE_UTF8);
        else
            return polis_error_set(err, POLIS_EINVAL, "params",
                                   "params[%zu]: only null, booleans, "
                                   "numbers and strings can be bound",
                                   i);
        if (rc != SQLITE_OK)
            return polis_error_set(
                err, rc == SQLITE_TOOBIG ? POLIS_ETOOBIG : POLIS_EINVAL,
                "params", "params[%zu]: %s", i, sqlite3_errstr(rc));
    }
    return 0;
}

/* True if only whitespace, comments and semicolons remain. */
static bool tail_empty(const char *p)
{
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' ||
               *p == '\f' || *p == ';')
            p++;
        if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            if (e == NULL)
                return true;
            p = e + 2;
        } else {
            return *p == '\0';
        }
    }
}

/*
 * Refuse by its first keyword a statement that is not a query, with a
 * message that says what, before SQLite reports something less clear
 * ("cannot modify orders because it is a view").  The authorizer and the
 * checks after prepare are what enforce; this only explains.
 */
static int refuse_by_keyword(const char *sql, polis_error *err)
{
    static const struct {
        const char *word, *msg;
    } kinds[] = {
        {"insert", "writes are not allowed"},
        {"update", "writes are not allowed"},
        {"delete", "writes are not allowed"},
        {"replace", "writes are not allowed"},
        {"attach", "ATTACH and DETACH are not allowed"},
        {"detach", "ATTACH and DETACH are not allowed"},
        {"pragma", "PRAGMA is not allowed"},
        {"create", "CREATE is not allowed"},
        {"drop", "DROP is not allowed"},
        {"alter", "ALTER is not allowed"},
        {"begin", "transactions and savepoints are not allowed"},
        {"commit", "transactions and savepoints are not allowed"},
        {"end", "transactions and savepoints are not allowed"},
        {"rollback", "transactions and savepoints are not allowed"},
        {"savepoint", "transactions and savepoints are not allowed"},
        {"release", "transactions and savepoints are not allowed"},
        {"vacuum", "VACUUM is not allowed"},
        {"analyze", "ANALYZE is not allowed"},
        {"reindex", "REINDEX is not allowed"},
        {"explain", "EXPLAIN is not allowed"},
    };
    const char *p = sql;
    size_t n = 0, k;

    for (;;) {
        while (isspace((unsigned char)*p))
            p++;
        if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
        } else if (p[0] == '/' && p[1] == '*') {
            const char *e = strstr(p + 2, "*/");
            p = e ? e + 2 : p + strlen(p);
        } else {
            break;
        }
    }
    while (isalpha((unsigned char)p[n]))
        n++;
    for (k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        if (n == strlen(kinds[k].word) &&
            sqlite3_strnicmp(p, kinds[k].word, (int)n) == 0)
            return polis_error_set(err, POLIS_EDENIED, "sql", "%s",
                                   kinds[k].msg);
    return 0;
}

static int sqlite_error(sq_conn *c, int rc, polis_error *err)
{
    const char *msg = sqlite3_errmsg(c->db);

    if (c->auth_denied)
        return polis_error_set(err, POLIS_EDENIED, NULL, "%s", c->denied);
    if ((rc & 0xff) == SQLITE_INTERRUPT && c->timed_out)
        return polis_error_set(err, POLIS_ETIMEDOUT, NULL,
                               "the query ran past its time limit");
    if ((rc & 0xff) == SQLITE_TOOBIG)
        return polis_error_set(err, POLIS_ETOOBIG, NULL, "%s", msg);
    if ((rc & 0xff) == SQLITE_NOMEM)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "%s", msg);
    if (strncmp(msg, "cannot modify", 13) == 0)
        return polis_error_set(err, POLIS_EDENIED, NULL,
                               "writes are not allowed");
    if (strncmp(msg, "access to view", 14) == 0)
        return polis_error_set(err, POLIS_EDENIED, NULL,
                               "%s: views of the database file are not "
                               "part of the product",
                               msg);
    return polis_error_set(err, POLIS_EINVAL, NULL, "%s", msg);
}

static void set_deadline(sq_conn *c, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, &c->deadline);
    c->deadline.tv_sec += (time_t)(ms / 1000);
    c->deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (c->deadline.tv_nsec >= 1000000000L) {
        c->deadline.tv_sec++;
        c->deadline.tv_nsec -= 1000000000L;
    }
    c->timed_out = false;
}

/* Step through the result and hand it to the sink.  `ncols` result columns
 * are delivered; with min > 0 column ncols holds the group size. */
static int stream(sq_conn *c, sqlite3_stmt *st, int ncols, int64_t min,
                  const sq_limits *lim, const sq_sink *sink, sq_stats *stats,
                  polis_error *err)
{
    const char **names = NULL;
    sq_value *vals = NULL;
    int i, rc = 0, src;

    names = calloc((size_t)ncols, sizeof(*names));
    vals = calloc((size_t)ncols, sizeof(*vals));
    if (names == NULL || vals == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
        goto out;
    }
    for (i = 0; i < ncols; i++) {
        names[i] = sqlite3_column_name(st, i);
        if (names[i] == NULL) {
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
            goto out;
        }
    }
    if (sink && sink->columns &&
        (rc = sink->columns(sink->ctx, (size_t)ncols, names)) != 0) {
        polis_error_set(err, rc, NULL, "the output stopped");
        goto out;
    }
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t bytes = 0;

        if (min > 0 && sqlite3_column_int64(st, ncols) < min) {
            stats->suppressed++;
            continue;
        }
        if (stats->rows >= lim->max_rows) {
            stats->truncated = true;
            break;
        }
        for (i = 0; i < ncols; i++) {
            sq_value *v = &vals[i];
            switch (sqlite3_column_type(st, i)) {
            case SQLITE_INTEGER:
                v->type = SQ_INTEGER;
                v->i = sqlite3_column_int64(st, i);
                bytes += 8;
                break;
            case SQLITE_FLOAT:
                v->type = SQ_REAL;
                v->d = sqlite3_column_double(st, i);
                bytes += 8;
                break;
            case SQLITE_TEXT:
                v->type = SQ_TEXT;
                v->p = sqlite3_column_text(st, i);
                v->len = (size_t)sqlite3_column_bytes(st, i);
                if (v->p == NULL) {
                    rc = polis_error_set(err, POLIS_ENOMEM, NULL,
                                         "out of memory");
                    goto out;
                }
                bytes += v->len;
                break;
            case SQLITE_BLOB:
                v->type = SQ_BLOB;
                v->p = sqlite3_column_blob(st, i);
                v->len = (size_t)sqlite3_column_bytes(st, i);
                bytes += v->len;
                break;
            default:
                v->type = SQ_NULL;
                v->p = NULL;
                v->len = 0;
                break;
            }
        }
        if (stats->bytes + bytes > lim->max_bytes) {
            stats->truncated = true;
            break;
        }
        if (sink && sink->row &&
            (rc = sink->row(sink->ctx, (size_t)ncols, vals)) != 0) {
            polis_error_set(err, rc, NULL, "the output stopped");
            goto out;
        }
        stats->rows++;
        stats->bytes += bytes;
    }
    if (src != SQLITE_ROW && src != SQLITE_DONE)
        rc = sqlite_error(c, src, err);
out:
    free(names);
    free(vals);
    return rc;
}

int sq_query(sq_conn *c, const sq_product *product,
             const pol_decision *decision, const pol_mask_key *key,
             const pol_expr_subject *subject, const pol_expr_request *request,
             const char *sql, const json_t *params, const sq_limits *limits,
             const sq_sink *sink, sq_stats *stats, polis_error *err)
{
    static const sq_limits no_limits = {0};
    pol_expr_sql_opts opts = {POL_SQL_SQLITE, NULL, 1};
    sq_stats local_stats;
    sq_limits lim = limits ? *limits : no_limits;
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    char *run_sql = NULL;
    size_t i, sql_len, insert_at = 0, nitems = 0;
    int64_t min;
    int rc, ncols;

    if (stats == NULL)
        stats = &local_stats;
    memset(stats, 0, sizeof(*stats));
    if (c == NULL || product == NULL || product->table == NULL ||
        decision == NULL || sql == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "missing argument");
    if (lim.timeout_ms <= 0)
        lim.timeout_ms = SQ_DEFAULT_TIMEOUT_MS;
    if (lim.max_rows == 0)
        lim.max_rows = SQ_DEFAULT_MAX_ROWS;
    if (lim.max_bytes == 0)
        lim.max_bytes = SQ_DEFAULT_MAX_BYTES;
    if (lim.max_sql == 0 || lim.max_sql > SQ_MAX_SQL)
        lim.max_sql = lim.max_sql ? SQ_MAX_SQL : SQ_DEFAULT_MAX_SQL;

    if (!pol_decision_allowed(decision)) {
        char why[256];
        pol_decision_explain(decision, why, sizeof(why));
        return polis_error_set(err, POLIS_EDENIED, NULL, "%s", why);
    }
    sql_len = strlen(sql);
    if (sql_len > lim.max_sql)
        return polis_error_set(err, POLIS_ETOOBIG, "sql",
                               "the SQL text is %zu bytes, at most %zu "
                               "allowed",
                               sql_len, lim.max_sql);
    if ((rc = refuse_by_keyword(sql, err)) != 0)
        return rc;
    if (pol_decision_column_count(decision) == 0)
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "the product's contract has no columns to "
                               "serve");
    for (i = 0; i < pol_decision_column_count(decision); i++) {
        const pol_mask *m = pol_decision_column_mask(decision, i);
        if (m != NULL && m->method == POL_MASK_HASH && key == NULL)
            return polis_error_set(
                err, POLIS_EINVAL, pol_decision_column_name(decision, i),
                "the hash mask needs the deployment's key, which is not "
                "configured");
    }

    /* Setup runs with no authorizer and the request's state in place. */
    sqlite3_set_authorizer(c->db, NULL, NULL);
    c->decision = decision;
    c->key = key;
    c->auth_denied = false;
    c->denied[0] = '\0';
    pol_expr_sql_free(&c->filter);
    rc = pol_expr_to_sql(pol_decision_filters(decision),
                         pol_decision_filter_count(decision), &opts, subject,
                         request, &c->filter, err);
    if (rc != 0)
        goto out;
    if ((rc = install_views(c, product->table, err)) != 0)
        goto out;
    if ((rc = read_main_names(c, err)) != 0)
        goto out;

    min = pol_decision_min_group_size(decision);
    if (min > 0) {
        strbuf b = STRBUF_INIT(SQ_SQLITE_SQL_LIMIT);
        rc = qs_check(&qs_sqlite, sql, product->table, decision, min,
                      &insert_at, &nitems, err);
        if (rc != 0)
            goto out;
        strbuf_putn(&b, sql, insert_at);
        strbuf_puts(&b, ", count(*) AS ");
        sb_ident(&b, c->count_name);
        strbuf_puts(&b, " ");
        strbuf_puts(&b, sql + insert_at);
        if (b.rc) {
            free(b.p);
            rc = polis_error_set(err, b.rc, "sql", "the SQL is too long");
            goto out;
        }
        run_sql = b.p;
    }

    set_deadline(c, lim.timeout_ms);
    sqlite3_set_authorizer(c->db, authorize, c);
    sqlite3_progress_handler(c->db, SQ_PROGRESS_STEPS, on_progress, c);
    sqlite3_busy_timeout(
        c->db, (int)(lim.timeout_ms > 60000 ? 60000 : lim.timeout_ms));

    rc = sqlite3_prepare_v3(c->db, run_sql ? run_sql : sql, -1, 0, &st, &tail);
    if (rc != SQLITE_OK) {
        rc = sqlite_error(c, rc, err);
        goto out;
    }
    if (st == NULL) {
        rc = polis_error_set(err, POLIS_EINVAL, "sql", "no SQL statement");
        goto out;
    }
    if (tail != NULL && !tail_empty(tail)) {
        rc = polis_error_set(err, POLIS_EDENIED, "sql",
                             "only one statement is allowed");
        goto out;
    }
    if (sqlite3_stmt_isexplain(st)) {
        rc = polis_error_set(err, POLIS_EDENIED, "sql",
                             "EXPLAIN is not allowed");
        goto out;
    }
    ncols = sqlite3_column_count(st);
    if (!sqlite3_stmt_readonly(st) || ncols == 0) {
        rc = polis_error_set(err, POLIS_EDENIED, "sql",
                             "only SELECT statements are allowed");
        goto out;
    }
    if (min > 0) {
        /* The group size must be the column we added, nothing else. */
        const char *last = sqlite3_column_name(st, ncols - 1);
        if ((size_t)ncols != nitems + 1 || last == NULL ||
            strcmp(last, c->count_name) != 0) {
            rc = polis_error_set(err, POLIS_EDENIED, "sql",
                                 "the query's shape could not be verified "
                                 "for the minimum group size");
            goto out;
        }
        ncols--;
    }
    if ((rc = bind_params(st, params, err)) != 0)
        goto out;
    rc = stream(c, st, ncols, min, &lim, sink, stats, err);
out:
    sqlite3_finalize(st);
    sqlite3_progress_handler(c->db, 0, NULL, NULL);
    sqlite3_set_authorizer(c->db, NULL, NULL);
    c->decision = NULL;
    c->key = NULL;
    free(run_sql);
    return rc;
}
