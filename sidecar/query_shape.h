/*
 * query_shape.h — the restricted query shape a minimum group size allows,
 * shared by the SQLite and PostgreSQL query ports: one tokenizer and one
 * checker, told apart by a const dialect description.  Design:
 * docs/internals/query.md, "The minimum group size".
 */
#ifndef POLIS_SIDECAR_QUERY_SHAPE_H
#define POLIS_SIDECAR_QUERY_SHAPE_H

#include "common/error.h"
#include "policy/policy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most tokens a checked query may have (more: POLIS_ETOOBIG). */
#define QS_MAX_TOKENS 4096
/* Most GROUP BY keys (more: refused). */
#define QS_MAX_KEYS 64
/* Select-list aliases remembered for HAVING and ORDER BY (more: ignored,
 * so a later alias is refused as a column). */
#define QS_MAX_ALIASES 256

/* Parameter forms a dialect lexes (bit set). */
enum {
    QS_PARAM_QMARK = 1 << 0,  /* ?, ?NNN */
    QS_PARAM_NAMED = 1 << 1,  /* :name, @name */
    QS_PARAM_DOLLAR = 1 << 2, /* $N */
};

/* How tokenizer refusals read. */
typedef enum qs_lex_errors {
    /* "with a minimum group size the query may only use plain SQL
     * (unexpected text at byte N)" */
    QS_LEX_ERRORS_PLAIN,
    /* "this product releases only aggregates over at least MIN rows: the
     * query may only use plain SQL (<reason> at byte N)" */
    QS_LEX_ERRORS_DETAILED,
} qs_lex_errors;

/*
 * What differs between two SQL dialects as far as the shape is concerned.
 * Word lists are lower case; words compare ASCII case-insensitively.  Use
 * qs_sqlite or qs_postgres; the fields are public so a reader can compare
 * the two side by side in query_shape.c.
 */
typedef struct qs_dialect {
    const char *name;

    /* ---- lexical rules ---- */
    const char *spaces;       /* characters that separate tokens */
    bool nested_comments;     /* true: / * nests, unterminated refused;
                                 false: the first * / closes, an
                                 unterminated comment runs to the end */
    const char *ident_quotes; /* openers of quoted identifiers; '[' closes
                                 with ']' (no doubling), others double */
    bool blob_literals;       /* X'..' is one token */
    bool refuse_prefixed;     /* a word directly followed by a quote
                                 (E'', B'', U&'') is refused */
    bool strict_numbers;      /* true: digits[.digits][e[+-]digits], text
                                 right after is refused; false: any run of
                                 alphanumerics, '.', '_' and e+/e- */
    unsigned params;          /* QS_PARAM_* */
    bool cast_operator;       /* "::" is a cast token */
    const char *op_chars;     /* characters of operators */
    const char *op_follow;    /* NULL: operators are maximal runs of
                                 op_chars (stopping at a comment); else an
                                 operator is one op_char, optionally followed
                                 by one of op_follow */
    qs_lex_errors lex_errors;

    /* ---- the shape ---- */
    const char *const *keywords; /* SQL words in expressions, not columns
                                    (a product column of the name wins) */
    size_t nkeywords;
    const char *const *aggregates; /* aggregates besides one-argument
                                      min and max */
    size_t naggregates;
    bool qualified_not_aggregate; /* x.count(..) is some other function */
    bool typed_literals;          /* word 'string' (date '2024-01-31'):
                                     the word is a type */
    const char *const *banned;    /* words refused anywhere after SELECT */
    size_t nbanned;
    const char *banned_msg;
    const char *const *tail_clauses; /* clauses after ORDER BY: "limit"... */
    size_t ntail_clauses;
    bool quoted_table_exact; /* "Orders" must match the table's case */
    bool distinct_on;        /* DISTINCT ON (..) is not plain DISTINCT */
    bool refuse_empty_item;  /* "SELECT , x" refused by the shape */
    bool order_needs_by;     /* ORDER without BY refused by the shape */
    const char *result_column_msg;
} qs_dialect;

/* SQLite's and PostgreSQL's dialects. */
extern const qs_dialect qs_sqlite;
extern const qs_dialect qs_postgres;

/*
 * Check that sql has the shape
 *   SELECT item, ... FROM <table> [[AS] alias] [WHERE ...]
 *   [GROUP BY key, ...] [HAVING ...] [ORDER BY ...] [LIMIT ...]
 * with no subquery, compound, join or window, where every item, HAVING and
 * ORDER BY term is a GROUP BY key or computed from aggregates only.  table
 * is the unqualified name the query must read; decision's column names
 * (borrowed for the call) tell a column from a keyword of the same name.
 * min is only quoted in messages.
 *
 * Returns 0 with *insert_at the byte offset just after the select list
 * (where the group-size column goes) and *nitems the number of result
 * columns; POLIS_EDENIED (another shape, or text the tokenizer does not
 * know), POLIS_ETOOBIG (more than QS_MAX_TOKENS tokens) or POLIS_ENOMEM,
 * with err filled.
 */
int qs_check(const qs_dialect *dialect, const char *sql, const char *table,
             const pol_decision *decision, int64_t min, size_t *insert_at,
             size_t *nitems, polis_error *err);

#endif
