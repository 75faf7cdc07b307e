/*
 * expr.h — the Polis expression language: row filters and `when` conditions
 * of policy rules.  Parse, type-check against a column schema, evaluate on a
 * row with SQL three-valued logic, and render as parameterised SQL (SQLite or
 * PostgreSQL) with the same semantics.  Language reference:
 * docs/expressions.md.
 */
#ifndef POLIS_POLICY_EXPR_H
#define POLIS_POLICY_EXPR_H

#include "common/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits.  Going past one is POLIS_ETOOBIG with the position. */
#define POL_EXPR_MAX_LEN   4096 /* bytes of source text */
#define POL_EXPR_MAX_DEPTH 64   /* nesting of parentheses and `not` */
#define POL_EXPR_MAX_LIST  256  /* elements of a list literal ('a', 'b') */
#define POL_EXPR_MAX_IDENT 128  /* bytes of a column or attribute name */
#define POL_EXPR_MAX_NODES 2048 /* values and operators in one expression */
/* Rendered SQL: text bytes and bound parameters (all filters together). */
#define POL_EXPR_SQL_MAX_LEN    (256 * 1024)
#define POL_EXPR_SQL_MAX_PARAMS 8192

/*
 * Value types.  Timestamps and dates are strings for now (ISO 8601 compares
 * correctly as text).  LIST (list of string) only exists for subject.groups
 * and list-valued subject attributes; NULL is the type of the `null` literal
 * and, in a pol_expr_value, an SQL NULL / absent value.
 */
typedef enum pol_expr_type {
    POL_EXPR_NULL = 0,
    POL_EXPR_STRING,
    POL_EXPR_INTEGER, /* int64 */
    POL_EXPR_DECIMAL, /* double */
    POL_EXPR_BOOLEAN,
    POL_EXPR_LIST,
} pol_expr_type;

/* "string", "integer", ...; never NULL. */
const char *pol_expr_type_name(pol_expr_type type);

/*
 * A typed scalar value: what a row accessor returns, and what a rendered SQL
 * statement binds.  Strings are (pointer, length), not necessarily
 * NUL-terminated, and always borrowed.
 */
typedef struct pol_expr_value {
    pol_expr_type type; /* NULL, STRING, INTEGER, DECIMAL or BOOLEAN */
    size_t len;         /* STRING: bytes at str */
    union {
        const char *str;
        int64_t i;
        double d;
        bool b;
    } u;
} pol_expr_value;

/* Three-valued result of a condition. */
typedef enum pol_tri {
    POL_FALSE = 0,
    POL_TRUE = 1,
    POL_UNKNOWN = 2, /* SQL NULL: a filter does not match the row */
} pol_tri;

/*
 * A parsed expression.  Immutable once pol_expr_check() has returned, so one
 * checked expression may be evaluated and rendered by many threads at once.
 */
typedef struct pol_expr pol_expr;

/* ---- parsing and checking ---------------------------------------------- */

/*
 * Parse `src` (NUL-terminated, at most POL_EXPR_MAX_LEN bytes).  On success
 * *out is a new expression (caller frees with pol_expr_free) and 0 is
 * returned.  On failure *out is NULL and err says where and what:
 * err->where is "col N" (1-based byte offset in src) and err->message e.g.
 * `expected a value after "=="`; codes POLIS_EPARSE (syntax), POLIS_ETOOBIG
 * (a limit), POLIS_ENOMEM, POLIS_EINVAL (NULL arguments).
 */
int pol_expr_parse(const char *src, pol_expr **out, polis_error *err);

/* Free an expression; NULL is a no-op. */
void pol_expr_free(pol_expr *expr);

/*
 * Column lookup for type checking: return 0 and fill *type (STRING, INTEGER,
 * DECIMAL or BOOLEAN) and *column_id (any int the caller likes; it is handed
 * back to the row accessor) if `name` is a known column, else
 * POLIS_ENOTFOUND.
 */
typedef int (*pol_expr_lookup_fn)(void *ctx, const char *name,
                                  pol_expr_type *type, int *column_id);

/* One column of a schema given as an array. */
typedef struct pol_expr_column {
    const char *name;
    pol_expr_type type; /* STRING, INTEGER, DECIMAL or BOOLEAN */
} pol_expr_column;

/*
 * The columns an expression may refer to: either `lookup` (+ ctx), or, when
 * lookup is NULL, the array `columns` (column_id = index in the array).  A
 * NULL schema means no columns at all (`when` conditions).  Borrowed for the
 * duration of pol_expr_check only.
 */
typedef struct pol_expr_schema {
    const pol_expr_column *columns;
    size_t ncolumns;
    pol_expr_lookup_fn lookup;
    void *ctx;
} pol_expr_schema;

/*
 * Type-check `expr` against `schema` and resolve column references.  The
 * whole expression must be a condition (boolean).  Rules: comparisons need
 * compatible types (integer and decimal mix; boolean allows only == and !=;
 * null compares with anything); `like` needs strings and a pattern that is
 * not a column; `in` needs a list literal or a list-valued subject attribute
 * on the right; subject.<attr> is a string (or a list on the right of `in`),
 * subject.groups a list, subject.name and request.* strings.  Errors
 * (POLIS_EINVAL) carry the position: "col 3" / "cannot compare integer with
 * string", "col 1" / `unknown column "regio"`.
 *
 * Must be called (successfully) before pol_expr_eval / pol_expr_to_sql.  It
 * writes into expr, so call it before sharing expr between threads.  Calling
 * it again with another schema re-resolves.
 */
int pol_expr_check(pol_expr *expr, const pol_expr_schema *schema,
                   polis_error *err);

/* pol_expr_parse + pol_expr_check; *out is NULL on failure. */
int pol_expr_compile(const char *src, const pol_expr_schema *schema,
                     pol_expr **out, polis_error *err);

/* ---- what an expression refers to ---------------------------------------- */

/*
 * The distinct columns the expression refers to, in order of first
 * appearance (works right after parsing).  Names are borrowed from expr.
 */
size_t pol_expr_column_count(const pol_expr *expr);
const char *pol_expr_column_name(const pol_expr *expr, size_t i);

/* True if the expression refers to any column (a row filter rather than a
 * condition on subject/request only). */
bool pol_expr_uses_columns(const pol_expr *expr);

/*
 * Canonical text of the expression (keywords lower case, single spaces,
 * parentheses where needed and around `and` inside `or`), which parses back
 * to the same expression.  *out is malloc'd, caller frees with free().
 */
int pol_expr_to_string(const pol_expr *expr, char **out, polis_error *err);

/* ---- evaluation ---------------------------------------------------------- */

/* A string-or-list subject attribute.  Borrowed. */
typedef struct pol_expr_attr {
    const char *name;
    bool is_list;
    const char *value;         /* !is_list: the string; NULL = null */
    const char *const *values; /* is_list: the strings */
    size_t nvalues;
} pol_expr_attr;

/*
 * Who asks.  Any field may be NULL/0: an absent name or attribute is null,
 * groups == NULL is an absent (null) list and ngroups == 0 with groups !=
 * NULL an empty one.  Borrowed.
 */
typedef struct pol_expr_subject {
    const char *name;
    const char *const *groups;
    size_t ngroups;
    const pol_expr_attr *attrs;
    size_t nattrs;
} pol_expr_subject;

/* What is being asked for; NULL fields are null.  Borrowed. */
typedef struct pol_expr_request {
    const char *purpose;
    const char *product;
    const char *port;
} pol_expr_request;

/*
 * Row accessor: fill *out with the value of the column that check resolved
 * to `column_id` (name given too).  Strings stay borrowed until the
 * evaluation returns.  The type must be the column's (or NULL); an INTEGER
 * is accepted for DECIMAL and BOOLEAN columns (non-zero is true).  Return 0,
 * or a negative POLIS_E* code to abort the evaluation with it.
 */
typedef int (*pol_expr_row_fn)(void *row, int column_id, const char *name,
                               pol_expr_value *out);

/*
 * Evaluate a checked expression with three-valued logic.  `row_fn` may be
 * NULL only if the expression refers to no columns; subject/request may be
 * NULL (everything in them null).  Does not allocate.  Returns 0 and sets
 * *result, or POLIS_EINVAL (unchecked expression, a row value of the wrong
 * type) or the row accessor's code.
 */
int pol_expr_eval(const pol_expr *expr, pol_expr_row_fn row_fn, void *row,
                  const pol_expr_subject *subject,
                  const pol_expr_request *request, pol_tri *result,
                  polis_error *err);

/*
 * Filter semantics over several expressions AND-ed (n may be 0: matches):
 * *matched is true only if every expression is POL_TRUE.
 */
int pol_expr_matches(const pol_expr *const *exprs, size_t n,
                     pol_expr_row_fn row_fn, void *row,
                     const pol_expr_subject *subject,
                     const pol_expr_request *request, bool *matched,
                     polis_error *err);

/* ---- SQL rendering ------------------------------------------------------- */

typedef enum pol_sql_dialect {
    POL_SQL_SQLITE = 0,
    POL_SQL_POSTGRES,
} pol_sql_dialect;

typedef struct pol_expr_sql_opts {
    pol_sql_dialect dialect;
    const char *table_alias; /* NULL: bare "column"; else "alias"."column" */
    unsigned first_param;    /* number of the first placeholder; 0 means 1 */
} pol_expr_sql_opts;

/*
 * A rendered condition: `text` is for a WHERE clause; params[i] binds
 * placeholder first_param + i (?N for SQLite, $N for PostgreSQL).  Strings
 * in params are borrowed from the expressions, subject and request passed
 * to pol_expr_to_sql: keep those alive while binding.
 */
typedef struct pol_expr_sql {
    char *text;
    pol_expr_value *params;
    size_t nparams;
} pol_expr_sql;

/*
 * Render the AND of n checked expressions (n == 0 renders "1 = 1") for
 * `opts->dialect`, with subject and request values substituted as
 * parameters.  Every literal and every subject/request value becomes a
 * bound parameter, never text; identifiers are always double-quoted with
 * embedded quotes doubled.  PostgreSQL placeholders carry a cast
 * ($1::text, ::bigint, ::double precision, ::boolean) so text-format
 * parameters need no declared types.  `like` renders as GLOB with a
 * translated pattern in SQLite (case-sensitive, like the evaluator and
 * PostgreSQL's LIKE).  Rows selected by the SQL are exactly those the
 * evaluator matches.  On success *out owns text and params (free with
 * pol_expr_sql_free); on failure *out is zeroed.  Errors: POLIS_EINVAL
 * (unchecked expression), POLIS_ETOOBIG (POL_EXPR_SQL_MAX_*), POLIS_ENOMEM.
 */
int pol_expr_to_sql(const pol_expr *const *exprs, size_t n,
                    const pol_expr_sql_opts *opts,
                    const pol_expr_subject *subject,
                    const pol_expr_request *request, pol_expr_sql *out,
                    polis_error *err);

/* Free text and params and zero *sql; NULL or zeroed is a no-op. */
void pol_expr_sql_free(pol_expr_sql *sql);

/*
 * Text form of a parameter for text-format drivers (PostgreSQL): integers
 * in decimal, decimals with 17 significant digits, booleans "true"/"false",
 * strings as they are.  Returns 0, POLIS_ETOOBIG if len is too small, or
 * POLIS_EINVAL for NULL (bind a null instead).
 */
int pol_expr_value_format(const pol_expr_value *v, char *buf, size_t len);

#endif
