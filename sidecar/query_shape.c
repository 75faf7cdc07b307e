/*
 * query_shape.c — the restricted query shape of a minimum group size
 * (query_shape.h): a tokenizer that follows each dialect's lexical rules
 * for what the shape allows and refuses the rest, and the shape checker
 * both query ports run.  Design: docs/internals/query.md.
 */
#include "sidecar/query_shape.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- the dialects -------------------------------------------------------- */

static const char *const sqlite_keywords[] = {
    "case",
    "when",
    "then",
    "else",
    "end",
    "and",
    "or",
    "not",
    "null",
    "is",
    "in",
    "between",
    "like",
    "glob",
    "escape",
    "true",
    "false",
    "distinct",
    "isnull",
    "notnull",
    "cast",
    "asc",
    "desc",
    "nulls",
    "first",
    "last",
    "current_date",
    "current_time",
    "current_timestamp",
};

static const char *const sqlite_aggregates[] = {"count", "sum", "avg", "total"};

static const char *const sqlite_banned[] = {
    "select", "union", "intersect", "except",  "values",  "join",
    "with",   "over",  "window",    "natural", "indexed",
};

static const char *const sqlite_tail[] = {"limit"};

const qs_dialect qs_sqlite = {
    .name = "sqlite",
    .spaces = " \t\n\r\f",
    .nested_comments = false,
    .ident_quotes = "\"`[",
    .blob_literals = true,
    .refuse_prefixed = false,
    .strict_numbers = false,
    .params = QS_PARAM_QMARK | QS_PARAM_NAMED,
    .cast_operator = false,
    .op_chars = "+-/%<>=!|&~",
    .op_follow = "<>=|",
    .lex_errors = QS_LEX_ERRORS_PLAIN,
    .keywords = sqlite_keywords,
    .nkeywords = COUNT(sqlite_keywords),
    .aggregates = sqlite_aggregates,
    .naggregates = COUNT(sqlite_aggregates),
    .qualified_not_aggregate = false,
    .typed_literals = false,
    .banned = sqlite_banned,
    .nbanned = COUNT(sqlite_banned),
    .banned_msg = "subqueries, compounds, joins, CTEs and window functions "
                  "are not allowed",
    .tail_clauses = sqlite_tail,
    .ntail_clauses = COUNT(sqlite_tail),
    .quoted_table_exact = false,
    .distinct_on = false,
    /* SQLite's own parser refuses these; the shape lets them through. */
    .refuse_empty_item = false,
    .order_needs_by = false,
    .result_column_msg = "every result column must be a GROUP BY key or "
                         "computed from count, sum, avg, total, min or max "
                         "(aliases need AS)",
};

/* All reserved or type-like in PostgreSQL. */
static const char *const pg_keywords[] = {
    "case",     "when",   "then",    "else",    "end",       "and",
    "or",       "not",    "null",    "is",      "in",        "between",
    "like",     "ilike",  "similar", "escape",  "true",      "false",
    "cast",     "asc",    "desc",    "nulls",   "first",     "last",
    "distinct", "isnull", "notnull", "unknown", "symmetric",
};

static const char *const pg_aggregates[] = {"count", "sum", "avg"};

static const char *const pg_banned[] = {
    "select", "union", "intersect", "except",  "values",  "join",
    "with",   "over",  "window",    "natural", "lateral", "table",
    "into",   "for",   "fetch",     "only",
};

static const char *const pg_tail[] = {"limit", "offset"};

const qs_dialect qs_postgres = {
    .name = "postgres",
    .spaces = " \t\n\r\f\v",
    .nested_comments = true,
    .ident_quotes = "\"",
    .blob_literals = false,
    .refuse_prefixed = true,
    .strict_numbers = true,
    .params = QS_PARAM_DOLLAR,
    .cast_operator = true,
    .op_chars = "+-/<>=~!@#%^&|?",
    .op_follow = NULL,
    .lex_errors = QS_LEX_ERRORS_DETAILED,
    .keywords = pg_keywords,
    .nkeywords = COUNT(pg_keywords),
    .aggregates = pg_aggregates,
    .naggregates = COUNT(pg_aggregates),
    /* Unqualified functions never resolve in pg_temp, so these are
     * pg_catalog's aggregates; a qualified name may be anything. */
    .qualified_not_aggregate = true,
    .typed_literals = true,
    .banned = pg_banned,
    .nbanned = COUNT(pg_banned),
    .banned_msg = "subqueries, compounds, joins, CTEs, window functions and "
                  "row locks are not allowed",
    .tail_clauses = pg_tail,
    .ntail_clauses = COUNT(pg_tail),
    .quoted_table_exact = true,
    .distinct_on = true,
    .refuse_empty_item = true,
    .order_needs_by = true,
    .result_column_msg = "every result column must be a GROUP BY key or "
                         "computed from count, sum, avg, min or max "
                         "(aliases need AS)",
};

/* ---- tokens -------------------------------------------------------------- */

typedef enum tok_kind {
    T_WORD,   /* bare identifier or keyword */
    T_QUOTED, /* a quoted identifier */
    T_STRING,
    T_NUMBER,
    T_BLOB,
    T_PARAM,
    T_LP,
    T_RP,
    T_COMMA,
    T_DOT,
    T_STAR,
    T_SEMI,
    T_CAST, /* :: */
    T_OP,
} tok_kind;

typedef struct tok {
    tok_kind kind;
    size_t off, len;
} tok;

/* ASCII only: neither engine folds or classifies other bytes. */
static bool ascii_alpha(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static bool ascii_digit(unsigned char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool word_start(unsigned char ch)
{
    return ascii_alpha(ch) || ch == '_' || ch >= 0x80;
}

static bool word_char(unsigned char ch)
{
    return word_start(ch) || ascii_digit(ch) || ch == '$';
}

/* Both engines fold unquoted names in ASCII only. */
static bool ascii_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y - 'A' + 'a');
        if (x != y)
            return false;
    }
    return true;
}

/* ch is never NUL here (the scan stops at strlen), so strchr's match of
 * the terminator cannot fire. */
static bool in_set(const char *set, char ch)
{
    return ch != '\0' && strchr(set, ch) != NULL;
}

static int lex_error(const qs_dialect *d, polis_error *err, int64_t min,
                     size_t at, const char *what)
{
    if (d->lex_errors == QS_LEX_ERRORS_PLAIN)
        return polis_error_set(err, POLIS_EDENIED, NULL,
                               "with a minimum group size the query may only "
                               "use plain SQL (unexpected text at byte %zu)",
                               at + 1);
    return polis_error_set(err, POLIS_EDENIED, NULL,
                           "this product releases only aggregates over at "
                           "least %" PRId64 " rows: the query may only use "
                           "plain SQL (%s at byte %zu)",
                           min, what, at + 1);
}

/* End of the number starting at i (*bad: text follows that the dialect
 * refuses). */
static size_t lex_number(const qs_dialect *d, const char *sql, size_t i,
                         size_t len, bool *bad)
{
    *bad = false;
    if (!d->strict_numbers) {
        while (i < len) {
            unsigned char ch = (unsigned char)sql[i];
            if (ascii_alpha(ch) || ascii_digit(ch) || ch == '.' || ch == '_')
                i++;
            else if ((ch == '+' || ch == '-') &&
                     (sql[i - 1] == 'e' || sql[i - 1] == 'E'))
                i++;
            else
                break;
        }
        return i;
    }
    while (ascii_digit((unsigned char)sql[i]))
        i++;
    if (sql[i] == '.' && sql[i + 1] != '.')
        i++;
    while (ascii_digit((unsigned char)sql[i]))
        i++;
    if ((sql[i] == 'e' || sql[i] == 'E') &&
        (ascii_digit((unsigned char)sql[i + 1]) ||
         ((sql[i + 1] == '+' || sql[i + 1] == '-') &&
          ascii_digit((unsigned char)sql[i + 2])))) {
        i += 2;
        while (ascii_digit((unsigned char)sql[i]))
            i++;
    }
    /* "1abc" is lexed differently by different versions. */
    *bad = word_char((unsigned char)sql[i]) || sql[i] == '.';
    return i;
}

/*
 * Split sql into tokens the way the dialect's own tokenizer does for
 * everything the restricted shape allows; anything unusual is refused,
 * never guessed.  Trailing semicolons are dropped: both engines ignore
 * them.
 */
static int tokenize(const qs_dialect *d, const char *sql, int64_t min,
                    tok *toks, size_t *ntoks, polis_error *err)
{
    size_t i = 0, n = 0, len = strlen(sql);

    while (i < len) {
        unsigned char ch = (unsigned char)sql[i];
        size_t start = i;
        tok_kind kind;
        bool bad;

        if (in_set(d->spaces, (char)ch)) {
            i++;
            continue;
        }
        if (ch == '-' && sql[i + 1] == '-') {
            while (i < len && sql[i] != '\n')
                i++;
            continue;
        }
        if (ch == '/' && sql[i + 1] == '*' && !d->nested_comments) {
            const char *e = strstr(sql + i + 2, "*/");
            i = e ? (size_t)(e - sql) + 2 : len;
            continue;
        }
        if (ch == '/' && sql[i + 1] == '*') {
            int depth = 1;
            i += 2;
            while (i < len && depth > 0) {
                if (sql[i] == '/' && sql[i + 1] == '*')
                    depth++, i += 2;
                else if (sql[i] == '*' && sql[i + 1] == '/')
                    depth--, i += 2;
                else
                    i++;
            }
            if (depth > 0)
                return lex_error(d, err, min, start, "unterminated comment");
            continue;
        }
        if (d->blob_literals && (ch == 'x' || ch == 'X') &&
            sql[i + 1] == '\'') {
            i += 2;
            while (i < len && sql[i] != '\'')
                i++;
            if (i >= len)
                return lex_error(d, err, min, start, "unterminated quote");
            i++;
            kind = T_BLOB;
        } else if (word_start(ch)) {
            while (i < len && word_char((unsigned char)sql[i]))
                i++;
            /* E'..', B'..', X'..', N'..', U&'..': other lexical rules. */
            if (d->refuse_prefixed &&
                (sql[i] == '\'' ||
                 (sql[i] == '&' && i - start == 1 && (ch == 'u' || ch == 'U'))))
                return lex_error(d, err, min, start, "a prefixed string");
            kind = T_WORD;
        } else if (ch == '\'' || in_set(d->ident_quotes, (char)ch)) {
            char close = ch == '[' ? ']' : (char)ch;
            i++;
            for (;;) {
                if (i >= len)
                    return lex_error(d, err, min, start, "unterminated quote");
                if (sql[i] == close) {
                    if (close != ']' && sql[i + 1] == close) {
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                i++;
            }
            kind = ch == '\'' ? T_STRING : T_QUOTED;
        } else if (ascii_digit(ch) ||
                   (ch == '.' && ascii_digit((unsigned char)sql[i + 1]))) {
            i = lex_number(d, sql, i, len, &bad);
            if (bad)
                return lex_error(d, err, min, start, "text after a number");
            kind = T_NUMBER;
        } else if ((d->params & QS_PARAM_QMARK) && ch == '?') {
            i++;
            while (i < len && ascii_digit((unsigned char)sql[i]))
                i++;
            kind = T_PARAM;
        } else if ((d->params & QS_PARAM_DOLLAR) && ch == '$') {
            i++;
            while (ascii_digit((unsigned char)sql[i]))
                i++;
            if (i == start + 1 || word_char((unsigned char)sql[i]))
                return lex_error(d, err, min, start, "a dollar quote");
            kind = T_PARAM;
        } else if (d->cast_operator && ch == ':' && sql[i + 1] == ':') {
            i += 2, kind = T_CAST;
        } else if ((d->params & QS_PARAM_NAMED) && (ch == ':' || ch == '@')) {
            i++;
            while (i < len && word_char((unsigned char)sql[i]) && sql[i] != '$')
                i++;
            if (i == start + 1)
                return lex_error(d, err, min, start, "a nameless parameter");
            kind = T_PARAM;
        } else if (ch == '(') {
            i++, kind = T_LP;
        } else if (ch == ')') {
            i++, kind = T_RP;
        } else if (ch == ',') {
            i++, kind = T_COMMA;
        } else if (ch == '.') {
            i++, kind = T_DOT;
        } else if (ch == '*') {
            i++, kind = T_STAR;
        } else if (ch == ';') {
            i++, kind = T_SEMI;
        } else if (in_set(d->op_chars, (char)ch) && d->op_follow != NULL) {
            i++;
            if (i < len && in_set(d->op_follow, sql[i]))
                i++;
            kind = T_OP;
        } else if (in_set(d->op_chars, (char)ch)) {
            while (i < len && in_set(d->op_chars, sql[i]) &&
                   !(sql[i] == '-' && sql[i + 1] == '-') &&
                   !(sql[i] == '/' && sql[i + 1] == '*'))
                i++;
            kind = T_OP;
        } else {
            return lex_error(d, err, min, start, "an unexpected character");
        }
        if (n == QS_MAX_TOKENS)
            return polis_error_set(err, POLIS_ETOOBIG, NULL,
                                   "the query is too long for a minimum "
                                   "group size (%d tokens)",
                                   QS_MAX_TOKENS);
        toks[n].kind = kind;
        toks[n].off = start;
        toks[n].len = i - start;
        n++;
    }
    while (n > 0 && toks[n - 1].kind == T_SEMI)
        n--;
    *ntoks = n;
    return 0;
}

/* ---- the shape ----------------------------------------------------------- */

typedef struct shape {
    const qs_dialect *d;
    const char *sql;
    const tok *t;
    size_t n;
    const pol_decision *decision;
    int64_t min;
    /* GROUP BY keys: token ranges [start, end). */
    size_t key_start[QS_MAX_KEYS], key_end[QS_MAX_KEYS], nkeys;
    /* Aliases of the select list (AS name), for HAVING and ORDER BY. */
    size_t alias[QS_MAX_ALIASES], naliases;
} shape;

static bool tok_is(const shape *s, size_t i, const char *word)
{
    return i < s->n && s->t[i].kind == T_WORD && s->t[i].len == strlen(word) &&
           ascii_ieq(s->sql + s->t[i].off, word, s->t[i].len);
}

static bool tok_is_one_of(const shape *s, size_t i, const char *const *words,
                          size_t nwords)
{
    for (size_t w = 0; w < nwords; w++)
        if (tok_is(s, i, words[w]))
            return true;
    return false;
}

static bool tok_eq(const shape *s, size_t a, size_t b)
{
    const tok *x = &s->t[a], *y = &s->t[b];

    if (x->kind != y->kind || x->len != y->len)
        return false;
    if (x->kind == T_WORD)
        return ascii_ieq(s->sql + x->off, s->sql + y->off, x->len);
    return memcmp(s->sql + x->off, s->sql + y->off, x->len) == 0;
}

static bool range_eq(const shape *s, size_t a, size_t ae, size_t b, size_t be)
{
    if (ae - a != be - b)
        return false;
    for (size_t i = 0; i < ae - a; i++)
        if (!tok_eq(s, a + i, b + i))
            return false;
    return true;
}

/* A word that is SQL, not a column reference; a column called like a
 * keyword is resolved as the column. */
static bool is_keyword(const shape *s, size_t i)
{
    if (!tok_is_one_of(s, i, s->d->keywords, s->d->nkeywords))
        return false;
    for (size_t c = 0; c < pol_decision_column_count(s->decision); c++) {
        const char *name = pol_decision_column_name(s->decision, c);
        if (strlen(name) == s->t[i].len &&
            ascii_ieq(name, s->sql + s->t[i].off, s->t[i].len))
            return false;
    }
    return true;
}

/* Index of the token closing the parenthesis opened at i (or s->n). */
static size_t close_paren(const shape *s, size_t i, size_t *nargs)
{
    int depth = 0;
    size_t args = 1;

    for (; i < s->n; i++) {
        if (s->t[i].kind == T_LP)
            depth++;
        else if (s->t[i].kind == T_RP && --depth == 0)
            break;
        else if (s->t[i].kind == T_COMMA && depth == 1)
            args++;
    }
    if (nargs)
        *nargs = args;
    return i;
}

static bool is_aggregate(const shape *s, size_t i, size_t nargs)
{
    if (s->d->qualified_not_aggregate && i > 0 && s->t[i - 1].kind == T_DOT)
        return false;
    if (tok_is_one_of(s, i, s->d->aggregates, s->d->naggregates))
        return true;
    /* min/max with several arguments are the scalar functions. */
    return (tok_is(s, i, "min") || tok_is(s, i, "max")) && nargs == 1;
}

static bool is_key_word(const shape *s, size_t i)
{
    for (size_t k = 0; k < s->nkeys; k++)
        if (s->key_end[k] - s->key_start[k] == 1 &&
            tok_eq(s, s->key_start[k], i))
            return true;
    return false;
}

static bool is_alias_word(const shape *s, size_t i)
{
    for (size_t k = 0; k < s->naliases; k++)
        if (tok_eq(s, s->alias[k], i))
            return true;
    return false;
}

/*
 * True if every column reference in tokens [a, e) is inside an aggregate
 * call, or is a single-word GROUP BY key (or, with aliases, an alias of
 * the select list).  *first_bad is the offending token.
 */
static bool only_aggregates(const shape *s, size_t a, size_t e, bool aliases,
                            size_t *first_bad)
{
    size_t nargs, close;

    for (size_t i = a; i < e; i++) {
        const tok *t = &s->t[i];
        bool word = t->kind == T_WORD || t->kind == T_QUOTED;

        if (t->kind == T_STAR) {
            /* "*" alone or after "." is all columns, else multiplication. */
            if (i == a || s->t[i - 1].kind == T_DOT ||
                s->t[i - 1].kind == T_COMMA || s->t[i - 1].kind == T_LP) {
                *first_bad = i;
                return false;
            }
            continue;
        }
        if (!word)
            continue;
        if (i + 1 < e && s->t[i + 1].kind == T_LP) {
            close = close_paren(s, i + 1, &nargs);
            if (t->kind == T_WORD && is_aggregate(s, i, nargs)) {
                i = close;
                if (tok_is(s, i + 1, "filter") && i + 2 < e &&
                    s->t[i + 2].kind == T_LP)
                    i = close_paren(s, i + 2, NULL);
                continue;
            }
            continue; /* a scalar function: its arguments are checked */
        }
        if (i + 1 < e && s->t[i + 1].kind == T_DOT)
            continue; /* a qualifier */
        if (i > a && (s->t[i - 1].kind == T_CAST || tok_is(s, i - 1, "as") ||
                      tok_is(s, i - 1, "collate")))
            continue; /* a type name, a collation */
        if (s->d->typed_literals && i + 1 < e && s->t[i + 1].kind == T_STRING)
            continue; /* the type of a literal: date '2024-01-31' */
        if (t->kind == T_WORD && is_keyword(s, i))
            continue;
        if (is_key_word(s, i) || (aliases && is_alias_word(s, i)))
            continue;
        *first_bad = i;
        return false;
    }
    return true;
}

/* The first of words at parenthesis depth 0 from `from` on (or s->n). */
static size_t find_top(const shape *s, size_t from, const char *const *words,
                       size_t nwords)
{
    int depth = 0;

    for (size_t i = from; i < s->n; i++) {
        if (s->t[i].kind == T_LP)
            depth++;
        else if (s->t[i].kind == T_RP)
            depth--;
        else if (depth == 0 && tok_is_one_of(s, i, words, nwords))
            return i;
    }
    return s->n;
}

static int refuse(const shape *s, polis_error *err, const char *what)
{
    return polis_error_set(err, POLIS_EDENIED, NULL,
                           "this product releases only aggregates over at "
                           "least %" PRId64 " rows: %s",
                           s->min, what);
}

static int refuse_tok(const shape *s, polis_error *err, size_t i,
                      const char *what)
{
    char buf[300];

    snprintf(buf, sizeof(buf), "%s (\"%.*s\" at byte %zu)", what,
             (int)(s->t[i].len > 64 ? 64 : s->t[i].len), s->sql + s->t[i].off,
             s->t[i].off + 1);
    return refuse(s, err, buf);
}

/* The clause words that may follow a clause: `first` of
 * {where, group, having, order} and then the dialect's tail clauses. */
typedef struct clause_set {
    const char *w[12];
    size_t n;
} clause_set;

static void clauses_from(const qs_dialect *d, size_t first, clause_set *out)
{
    static const char *const order[] = {"where", "group", "having", "order"};

    out->n = 0;
    for (size_t k = first; k < COUNT(order); k++)
        out->w[out->n++] = order[k];
    for (size_t k = 0; k < d->ntail_clauses && out->n < COUNT(out->w); k++)
        out->w[out->n++] = d->tail_clauses[k];
}

/* FROM <table> [[AS] alias], nothing else; *end is the token after it. */
static int check_from(const shape *s, size_t from, const char *table,
                      const clause_set *after_from, size_t *end,
                      polis_error *err)
{
    const tok *t = s->t;
    size_t i = from + 1;
    const char *name;
    size_t len;
    bool same;

    if (i >= s->n || !(t[i].kind == T_WORD || t[i].kind == T_QUOTED))
        return refuse(s, err, "FROM must name the product's table");
    name = s->sql + t[i].off;
    len = t[i].len;
    if (t[i].kind == T_QUOTED) {
        name++, len -= 2;
        same = len == strlen(table) &&
               (s->d->quoted_table_exact ? memcmp(name, table, len) == 0
                                         : ascii_ieq(name, table, len));
    } else {
        same = len == strlen(table) && ascii_ieq(name, table, len);
    }
    if (!same)
        return refuse_tok(s, err, i,
                          "FROM must name the product's table, alone");
    i++;
    if (tok_is(s, i, "as"))
        i++;
    if (i < s->n && (t[i].kind == T_WORD || t[i].kind == T_QUOTED) &&
        !tok_is_one_of(s, i, after_from->w, after_from->n))
        i++; /* the alias */
    if (i < s->n && !tok_is_one_of(s, i, after_from->w, after_from->n))
        return refuse_tok(s, err, i,
                          "FROM must name the product's table, alone");
    *end = i;
    return 0;
}

int qs_check(const qs_dialect *dialect, const char *sql, const char *table,
             const pol_decision *decision, int64_t min, size_t *insert_at,
             size_t *nitems, polis_error *err)
{
    static const char *const from_w[] = {"from"};
    clause_set after_from, after_where, having_w, after_having, limit_w;
    tok *toks = malloc(QS_MAX_TOKENS * sizeof(*toks));
    shape *s = calloc(1, sizeof(*s));
    size_t i, from, item, end = 0, bad = 0;
    int rc;

    if (toks == NULL || s == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
        goto out;
    }
    clauses_from(dialect, 0, &after_from);
    clauses_from(dialect, 1, &after_where);
    clauses_from(dialect, 2, &having_w);
    clauses_from(dialect, 3, &after_having);
    clauses_from(dialect, 4, &limit_w);
    if ((rc = tokenize(dialect, sql, min, toks, &s->n, err)) != 0)
        goto out;
    s->d = dialect;
    s->sql = sql;
    s->t = toks;
    s->decision = decision;
    s->min = min;
    rc = POLIS_EDENIED;
    if (!tok_is(s, 0, "select")) {
        rc = refuse(s, err, "the query must be one SELECT");
        goto out;
    }
    for (i = 1; i < s->n; i++) {
        if (tok_is_one_of(s, i, dialect->banned, dialect->nbanned)) {
            refuse_tok(s, err, i, dialect->banned_msg);
            goto out;
        }
        if (toks[i].kind == T_SEMI) {
            refuse_tok(s, err, i, "one statement only");
            goto out;
        }
    }
    from = find_top(s, 1, from_w, 1);
    if (from == s->n) {
        refuse(s, err, "the query must read FROM the product");
        goto out;
    }
    if (check_from(s, from, table, &after_from, &end, err) != 0)
        goto out;

    /* GROUP BY keys. */
    i = find_top(s, end, after_where.w, after_where.n);
    if (tok_is(s, i, "group")) {
        size_t kend, k;
        if (!tok_is(s, i + 1, "by")) {
            refuse_tok(s, err, i, "GROUP without BY");
            goto out;
        }
        kend = find_top(s, i + 2, having_w.w, having_w.n);
        k = i + 2;
        while (k < kend) {
            size_t e = k;
            int depth = 0;
            while (e < kend && !(depth == 0 && toks[e].kind == T_COMMA)) {
                depth += toks[e].kind == T_LP;
                depth -= toks[e].kind == T_RP;
                e++;
            }
            if (s->nkeys == QS_MAX_KEYS) {
                refuse(s, err, "too many GROUP BY keys");
                goto out;
            }
            s->key_start[s->nkeys] = k;
            s->key_end[s->nkeys] = e;
            s->nkeys++;
            k = e + 1;
        }
    }

    /* The select list. */
    item = 1;
    if (tok_is(s, item, "all"))
        item++;
    else if (tok_is(s, item, "distinct") &&
             !(dialect->distinct_on && tok_is(s, item + 1, "on")))
        item++;
    *nitems = 0;
    while (item < from) {
        size_t e = item, body_end, k;
        int depth = 0;
        bool is_key = false, empty;
        while (e < from && !(depth == 0 && toks[e].kind == T_COMMA)) {
            depth += toks[e].kind == T_LP;
            depth -= toks[e].kind == T_RP;
            e++;
        }
        body_end = e;
        if (e - item >= 3 && tok_is(s, e - 2, "as")) {
            body_end = e - 2;
            if (s->naliases < QS_MAX_ALIASES)
                s->alias[s->naliases++] = e - 1;
        }
        for (k = 0; k < s->nkeys && !is_key; k++)
            is_key =
                range_eq(s, item, body_end, s->key_start[k], s->key_end[k]);
        empty = dialect->refuse_empty_item && item == e;
        if (empty ||
            (!is_key && !only_aggregates(s, item, body_end, false, &bad))) {
            refuse_tok(s, err, empty ? item : bad, dialect->result_column_msg);
            goto out;
        }
        (*nitems)++;
        item = e + 1;
    }
    if (*nitems == 0) {
        refuse(s, err, "empty select list");
        goto out;
    }
    *insert_at = toks[from - 1].off + toks[from - 1].len;

    /* HAVING and ORDER BY see groups: aggregates, keys and aliases only. */
    i = find_top(s, end, having_w.w, having_w.n);
    if (tok_is(s, i, "having")) {
        size_t e = find_top(s, i + 1, after_having.w, after_having.n);
        if (!only_aggregates(s, i + 1, e, true, &bad)) {
            refuse_tok(s, err, bad,
                       "HAVING may only use GROUP BY keys and aggregates");
            goto out;
        }
    }
    i = find_top(s, end, after_having.w, after_having.n);
    if (tok_is(s, i, "order")) {
        size_t e = find_top(s, i + 1, limit_w.w, limit_w.n);
        bool by = !dialect->order_needs_by || tok_is(s, i + 1, "by");
        if (!by || !only_aggregates(s, i + 2, e, true, &bad)) {
            refuse_tok(s, err, by ? bad : i,
                       "ORDER BY may only use GROUP BY keys, aggregates and "
                       "result aliases");
            goto out;
        }
    }
    rc = 0;
out:
    free(toks);
    free(s);
    return rc;
}
