/*
 * expr.c — the Polis expression language (expr.h): lexer and recursive
 * descent parser into a flat node array, type checker, canonical printer,
 * three-valued evaluator and the SQL renderer (SQLite, PostgreSQL).
 * Language reference: docs/expressions.md.
 */
#include "policy/expr.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- internal representation --------------------------------------------- */

enum node_kind {
    N_LITERAL,
    N_COLUMN,
    N_SUBJECT_NAME,
    N_SUBJECT_GROUPS,
    N_SUBJECT_ATTR,
    N_REQUEST_PURPOSE,
    N_REQUEST_PRODUCT,
    N_REQUEST_PORT,
    N_AND,    /* n-ary */
    N_OR,     /* n-ary */
    N_NOT,    /* one child */
    N_CMP,    /* two children, op */
    N_IN,     /* value, then N_LIST or a subject list reference; negated */
    N_LIST,   /* n-ary list literal */
    N_LIKE,   /* value, pattern; negated */
    N_ISNULL, /* one child; negated */
};

enum cmp_op { OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE };

/*
 * One node.  Children are linked through `first`/`next` indices, so the
 * whole tree is one array and freeing is two free() calls.
 */
struct node {
    unsigned char kind;
    unsigned char op;      /* N_CMP: enum cmp_op */
    unsigned char negated; /* N_IN, N_LIKE, N_ISNULL */
    unsigned char as_list; /* N_SUBJECT_ATTR on the right of `in` */
    unsigned char type;    /* pol_expr_type, set by check */
    int pos;               /* 1-based byte offset in the source */
    int first, next;       /* children; -1 when none */
    int nchildren;
    int col;            /* N_COLUMN: index in expr->cols */
    const char *name;   /* N_COLUMN, N_SUBJECT_ATTR: NUL-terminated */
    pol_expr_value lit; /* N_LITERAL */
};

struct column_ref {
    const char *name;
    int pos; /* first occurrence */
    pol_expr_type type;
    int id;
};

struct pol_expr {
    struct node *nodes;
    int nnodes, cap;
    int root;
    char *arena; /* decoded strings and names; never reallocated */
    size_t arena_len, arena_cap;
    struct column_ref *cols;
    size_t ncols;
    bool checked;
};

const char *pol_expr_type_name(pol_expr_type type)
{
    switch (type) {
    case POL_EXPR_NULL:
        return "null";
    case POL_EXPR_STRING:
        return "string";
    case POL_EXPR_INTEGER:
        return "integer";
    case POL_EXPR_DECIMAL:
        return "decimal";
    case POL_EXPR_BOOLEAN:
        return "boolean";
    case POL_EXPR_LIST:
        return "list";
    }
    return "unknown";
}

static int err_at(polis_error *err, int code, int pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int err_at(polis_error *err, int code, int pos, const char *fmt, ...)
{
    char where[32];
    va_list ap;

    if (err == NULL)
        return code;
    snprintf(where, sizeof(where), "col %d", pos);
    polis_error_set(err, code, where, NULL);
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return code;
}

/* ---- dynamic text buffer, bounded ---------------------------------------- */

struct dbuf {
    char *p;
    size_t len, cap, max;
    int rc; /* sticky: first failure */
};

static void dbuf_putn(struct dbuf *b, const char *s, size_t n)
{
    if (b->rc)
        return;
    if (b->len + n + 1 > b->max) {
        b->rc = POLIS_ETOOBIG;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *np;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        np = realloc(b->p, cap);
        if (np == NULL) {
            b->rc = POLIS_ENOMEM;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void dbuf_puts(struct dbuf *b, const char *s)
{
    dbuf_putn(b, s, strlen(s));
}

static void dbuf_printf(struct dbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void dbuf_printf(struct dbuf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        b->rc = b->rc ? b->rc : POLIS_EINTERNAL;
        return;
    }
    dbuf_putn(b, tmp, (size_t)n);
}

/* ---- lexer --------------------------------------------------------------- */

enum tok_kind {
    T_END,
    T_LPAREN,
    T_RPAREN,
    T_COMMA,
    T_DOT,
    T_EQ,
    T_NE,
    T_LT,
    T_LE,
    T_GT,
    T_GE,
    T_STRING,
    T_INTEGER,
    T_DECIMAL,
    T_IDENT,  /* bare */
    T_QIDENT, /* "quoted" */
    T_AND,
    T_OR,
    T_NOT,
    T_IN,
    T_LIKE,
    T_IS,
    T_NULL,
    T_TRUE,
    T_FALSE,
    T_SUBJECT,
    T_REQUEST,
};

struct token {
    enum tok_kind kind;
    size_t start, len; /* in the source */
    int64_t i;
    double d;
};

static const struct {
    const char *word;
    enum tok_kind kind;
} keywords[] = {
    {"and", T_AND},         {"or", T_OR},           {"not", T_NOT},
    {"in", T_IN},           {"like", T_LIKE},       {"is", T_IS},
    {"null", T_NULL},       {"true", T_TRUE},       {"false", T_FALSE},
    {"subject", T_SUBJECT}, {"request", T_REQUEST},
};

static int is_ident_start(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_ident_char(int c)
{
    return is_ident_start(c) || (c >= '0' && c <= '9');
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static enum tok_kind keyword_kind(const char *s, size_t n)
{
    for (size_t k = 0; k < sizeof(keywords) / sizeof(keywords[0]); k++) {
        const char *w = keywords[k].word;
        size_t i;
        if (strlen(w) != n)
            continue;
        for (i = 0; i < n; i++) {
            char c = s[i];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            if (c != w[i])
                break;
        }
        if (i == n)
            return keywords[k].kind;
    }
    return T_IDENT;
}

struct parser {
    const char *src;
    size_t len;
    struct token tok;  /* current */
    size_t prev_start; /* the token consumed last, for messages */
    size_t prev_len;
    int depth;
    pol_expr *e;
    polis_error *err;
};

/* `"text"` of a token for messages, cut to a readable length. */
static const char *tok_desc(const struct parser *p, const struct token *t,
                            char *buf, size_t len)
{
    int n;

    if (t->kind == T_END) {
        snprintf(buf, len, "the end");
        return buf;
    }
    n = t->len > 40 ? 40 : (int)t->len;
    snprintf(buf, len, "\"%.*s%s\"", n, p->src + t->start,
             t->len > 40 ? "..." : "");
    return buf;
}

static int lex_number(struct parser *p, size_t i, struct token *t)
{
    const char *s = p->src;
    size_t j = i;
    bool neg = false, dec = false;

    if (s[j] == '-') {
        neg = true;
        j++;
    }
    while (is_digit((unsigned char)s[j]))
        j++;
    if (s[j] == '.') {
        dec = true;
        j++;
        if (!is_digit((unsigned char)s[j]))
            return err_at(p->err, POLIS_EPARSE, (int)j + 1,
                          "expected digits after \".\"");
        while (is_digit((unsigned char)s[j]))
            j++;
    }
    if (s[j] == 'e' || s[j] == 'E') {
        size_t k = j + 1;
        if (s[k] == '+' || s[k] == '-')
            k++;
        if (!is_digit((unsigned char)s[k]))
            return err_at(p->err, POLIS_EPARSE, (int)k + 1,
                          "expected digits in the exponent");
        while (is_digit((unsigned char)s[k]))
            k++;
        dec = true;
        j = k;
    }
    t->start = i;
    t->len = j - i;
    if (dec) {
        char tmp[POL_EXPR_MAX_LEN + 1];
        memcpy(tmp, s + i, t->len);
        tmp[t->len] = '\0';
        t->kind = T_DECIMAL;
        t->d = strtod(tmp, NULL);
        if (!isfinite(t->d))
            return err_at(p->err, POLIS_EPARSE, (int)i + 1,
                          "decimal out of range");
        return 0;
    }
    /* Accumulate negatively so that INT64_MIN is representable. */
    {
        int64_t v = 0;
        for (size_t k = i + (neg ? 1 : 0); k < j; k++) {
            int dgt = s[k] - '0';
            if (v < (INT64_MIN + dgt) / 10)
                return err_at(p->err, POLIS_EPARSE, (int)i + 1,
                              "integer out of range");
            v = v * 10 - dgt;
        }
        if (!neg) {
            if (v == INT64_MIN)
                return err_at(p->err, POLIS_EPARSE, (int)i + 1,
                              "integer out of range");
            v = -v;
        }
        t->kind = T_INTEGER;
        t->i = v;
    }
    return 0;
}

/* Quoted token ('string' or "identifier") with the quote doubled inside. */
static int lex_quoted(struct parser *p, size_t i, struct token *t)
{
    char q = p->src[i];
    size_t j = i + 1;

    for (;;) {
        if (p->src[j] == '\0')
            return err_at(p->err, POLIS_EPARSE, (int)i + 1,
                          q == '\'' ? "unterminated string (missing ')"
                                    : "unterminated quoted name (missing \")");
        if (p->src[j] == q) {
            if (p->src[j + 1] == q) {
                j += 2;
                continue;
            }
            break;
        }
        j++;
    }
    t->kind = q == '\'' ? T_STRING : T_QIDENT;
    t->start = i;
    t->len = j + 1 - i;
    if (q == '"' && t->len == 2)
        return err_at(p->err, POLIS_EPARSE, (int)i + 1, "empty quoted name");
    return 0;
}

static int lex_next(struct parser *p)
{
    const char *s = p->src;
    size_t i = p->tok.start + p->tok.len;
    struct token *t = &p->tok;
    char c;

    p->prev_start = t->start;
    p->prev_len = t->len;
    while (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')
        i++;
    memset(t, 0, sizeof(*t));
    t->start = i;
    t->len = 1;
    c = s[i];
    switch (c) {
    case '\0':
        t->kind = T_END;
        t->len = 0;
        return 0;
    case '(':
        t->kind = T_LPAREN;
        return 0;
    case ')':
        t->kind = T_RPAREN;
        return 0;
    case ',':
        t->kind = T_COMMA;
        return 0;
    case '.':
        t->kind = T_DOT;
        return 0;
    case '=':
        if (s[i + 1] == '=') {
            t->kind = T_EQ;
            t->len = 2;
            return 0;
        }
        return err_at(p->err, POLIS_EPARSE, (int)i + 1,
                      "unexpected \"=\" (use \"==\")");
    case '!':
        if (s[i + 1] == '=') {
            t->kind = T_NE;
            t->len = 2;
            return 0;
        }
        return err_at(p->err, POLIS_EPARSE, (int)i + 1,
                      "unexpected \"!\" (use \"!=\" or \"not\")");
    case '<':
        if (s[i + 1] == '>')
            return err_at(p->err, POLIS_EPARSE, (int)i + 1,
                          "unexpected \"<>\" (use \"!=\")");
        t->kind = s[i + 1] == '=' ? T_LE : T_LT;
        t->len = s[i + 1] == '=' ? 2 : 1;
        return 0;
    case '>':
        t->kind = s[i + 1] == '=' ? T_GE : T_GT;
        t->len = s[i + 1] == '=' ? 2 : 1;
        return 0;
    case '\'':
    case '"':
        return lex_quoted(p, i, t);
    default:
        break;
    }
    if (is_digit((unsigned char)c) ||
        (c == '-' && is_digit((unsigned char)s[i + 1])))
        return lex_number(p, i, t);
    if (is_ident_start((unsigned char)c)) {
        size_t j = i;
        while (is_ident_char((unsigned char)s[j]))
            j++;
        t->len = j - i;
        t->kind = keyword_kind(s + i, t->len);
        return 0;
    }
    if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f)
        return err_at(p->err, POLIS_EPARSE, (int)i + 1,
                      "unexpected character \"%c\"", c);
    return err_at(p->err, POLIS_EPARSE, (int)i + 1, "unexpected byte 0x%02x",
                  (unsigned char)c);
}

/* ---- parser -------------------------------------------------------------- */

static int new_node(struct parser *p, enum node_kind kind, size_t start,
                    int *out)
{
    pol_expr *e = p->e;
    struct node *n;

    if (e->nnodes == e->cap) {
        int cap = e->cap ? e->cap * 2 : 16;
        struct node *nn;
        if (e->cap >= POL_EXPR_MAX_NODES)
            return err_at(p->err, POLIS_ETOOBIG, (int)start + 1,
                          "more than %d values and operators",
                          POL_EXPR_MAX_NODES);
        if (cap > POL_EXPR_MAX_NODES)
            cap = POL_EXPR_MAX_NODES;
        nn = realloc(e->nodes, (size_t)cap * sizeof(*nn));
        if (nn == NULL)
            return err_at(p->err, POLIS_ENOMEM, (int)start + 1,
                          "out of memory");
        e->nodes = nn;
        e->cap = cap;
    }
    n = &e->nodes[e->nnodes];
    memset(n, 0, sizeof(*n));
    n->kind = (unsigned char)kind;
    n->pos = (int)start + 1;
    n->first = n->next = -1;
    n->col = -1;
    *out = e->nnodes++;
    return 0;
}

/* Link children[0..n) under node `parent`. */
static void set_children(pol_expr *e, int parent, const int *children, int n)
{
    e->nodes[parent].first = n ? children[0] : -1;
    e->nodes[parent].nchildren = n;
    for (int k = 0; k < n; k++)
        e->nodes[children[k]].next = k + 1 < n ? children[k + 1] : -1;
}

/*
 * Copy the text of a quoted token (quotes removed, doubled quotes undone)
 * or a bare word into the arena.  The arena is sized so that it never
 * overflows: every token's decoded form plus NUL fits in twice its length.
 */
static const char *arena_put(pol_expr *e, const char *s, size_t n, char quote,
                             size_t *outlen)
{
    char *d = e->arena + e->arena_len;
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        d[k++] = s[i];
        if (quote && s[i] == quote)
            i++;
    }
    d[k] = '\0';
    e->arena_len += k + 1;
    if (outlen)
        *outlen = k;
    return d;
}

static int parse_or(struct parser *p, int *out);

static int advance(struct parser *p)
{
    return lex_next(p);
}

static bool starts_value(enum tok_kind k)
{
    switch (k) {
    case T_STRING:
    case T_INTEGER:
    case T_DECIMAL:
    case T_IDENT:
    case T_QIDENT:
    case T_NULL:
    case T_TRUE:
    case T_FALSE:
    case T_SUBJECT:
    case T_REQUEST:
    case T_LPAREN:
        return true;
    default:
        return false;
    }
}

static int expected_value(struct parser *p)
{
    char found[64];

    tok_desc(p, &p->tok, found, sizeof(found));
    if (p->prev_len == 0)
        return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                      "expected a value, found %s", found);
    return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                  "expected a value after \"%.*s\", found %s",
                  (int)(p->prev_len > 40 ? 40 : p->prev_len),
                  p->src + p->prev_start, found);
}

/* subject.<attr> or request.<attr>; the current token is the namespace. */
static int parse_reference(struct parser *p, int *out)
{
    bool subject = p->tok.kind == T_SUBJECT;
    size_t start = p->tok.start;
    const char *name;
    size_t nlen;
    char found[64];
    int rc, idx;

    if ((rc = advance(p)))
        return rc;
    if (p->tok.kind != T_DOT)
        return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                      "expected \".\" and an attribute name after \"%s\"",
                      subject ? "subject" : "request");
    if ((rc = advance(p)))
        return rc;
    if (p->tok.kind == T_QIDENT) {
        name = p->src + p->tok.start + 1;
        nlen = p->tok.len - 2;
    } else if (p->tok.kind >= T_IDENT) {
        /* Keywords are fine as attribute names here (subject.in). */
        name = p->src + p->tok.start;
        nlen = p->tok.len;
    } else {
        return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                      "expected an attribute name after \"%s.\", found %s",
                      subject ? "subject" : "request",
                      tok_desc(p, &p->tok, found, sizeof(found)));
    }
    if (nlen > POL_EXPR_MAX_IDENT)
        return err_at(p->err, POLIS_ETOOBIG, (int)p->tok.start + 1,
                      "name longer than %d bytes", POL_EXPR_MAX_IDENT);
    if (subject) {
        enum node_kind k = N_SUBJECT_ATTR;
        if (p->tok.kind != T_QIDENT && nlen == 4 && !memcmp(name, "name", 4))
            k = N_SUBJECT_NAME;
        else if (p->tok.kind != T_QIDENT && nlen == 6 &&
                 !memcmp(name, "groups", 6))
            k = N_SUBJECT_GROUPS;
        if ((rc = new_node(p, k, start, &idx)))
            return rc;
        if (k == N_SUBJECT_ATTR)
            p->e->nodes[idx].name = arena_put(
                p->e, name, nlen, p->tok.kind == T_QIDENT ? '"' : 0, NULL);
    } else {
        enum node_kind k;
        if (nlen == 7 && !memcmp(name, "purpose", 7))
            k = N_REQUEST_PURPOSE;
        else if (nlen == 7 && !memcmp(name, "product", 7))
            k = N_REQUEST_PRODUCT;
        else if (nlen == 4 && !memcmp(name, "port", 4))
            k = N_REQUEST_PORT;
        else
            return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                          "unknown request attribute \"%.*s\" (expected "
                          "purpose, product or port)",
                          (int)nlen, name);
        if ((rc = new_node(p, k, start, &idx)))
            return rc;
    }
    *out = idx;
    return advance(p);
}

/* A literal, column or subject/request reference (no parentheses). */
static int parse_value(struct parser *p, int *out)
{
    struct token t = p->tok;
    struct node *n;
    int rc, idx;

    switch (t.kind) {
    case T_SUBJECT:
    case T_REQUEST:
        return parse_reference(p, out);
    case T_IDENT:
    case T_QIDENT:
        if (t.len - (t.kind == T_QIDENT ? 2 : 0) > POL_EXPR_MAX_IDENT)
            return err_at(p->err, POLIS_ETOOBIG, (int)t.start + 1,
                          "name longer than %d bytes", POL_EXPR_MAX_IDENT);
        if ((rc = new_node(p, N_COLUMN, t.start, &idx)))
            return rc;
        n = &p->e->nodes[idx];
        if (t.kind == T_QIDENT)
            n->name =
                arena_put(p->e, p->src + t.start + 1, t.len - 2, '"', NULL);
        else
            n->name = arena_put(p->e, p->src + t.start, t.len, 0, NULL);
        break;
    case T_STRING:
    case T_INTEGER:
    case T_DECIMAL:
    case T_NULL:
    case T_TRUE:
    case T_FALSE:
        if ((rc = new_node(p, N_LITERAL, t.start, &idx)))
            return rc;
        n = &p->e->nodes[idx];
        if (t.kind == T_STRING) {
            n->lit.type = POL_EXPR_STRING;
            n->lit.u.str = arena_put(p->e, p->src + t.start + 1, t.len - 2,
                                     '\'', &n->lit.len);
        } else if (t.kind == T_INTEGER) {
            n->lit.type = POL_EXPR_INTEGER;
            n->lit.u.i = t.i;
        } else if (t.kind == T_DECIMAL) {
            n->lit.type = POL_EXPR_DECIMAL;
            n->lit.u.d = t.d;
        } else if (t.kind == T_NULL) {
            n->lit.type = POL_EXPR_NULL;
        } else {
            n->lit.type = POL_EXPR_BOOLEAN;
            n->lit.u.b = t.kind == T_TRUE;
        }
        break;
    default:
        return expected_value(p);
    }
    *out = idx;
    return advance(p);
}

/* A value or a parenthesised condition. */
static int parse_primary(struct parser *p, int *out)
{
    size_t open;
    char found[64];
    int rc;

    if (p->tok.kind != T_LPAREN)
        return parse_value(p, out);
    open = p->tok.start;
    if (++p->depth > POL_EXPR_MAX_DEPTH)
        return err_at(p->err, POLIS_ETOOBIG, (int)open + 1,
                      "nesting deeper than %d", POL_EXPR_MAX_DEPTH);
    if ((rc = advance(p)) || (rc = parse_or(p, out)))
        return rc;
    if (p->tok.kind != T_RPAREN)
        return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                      "expected \")\" to close \"(\" at col %d, found %s",
                      (int)open + 1,
                      tok_desc(p, &p->tok, found, sizeof(found)));
    p->depth--;
    return advance(p);
}

static int parse_list(struct parser *p, int *out)
{
    int items[POL_EXPR_MAX_LIST];
    int n = 0, rc, idx;
    size_t open = p->tok.start;
    char found[64];

    if ((rc = advance(p)))
        return rc;
    if (p->tok.kind == T_RPAREN)
        return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                      "empty list (a list needs at least one value)");
    for (;;) {
        if (n == POL_EXPR_MAX_LIST)
            return err_at(p->err, POLIS_ETOOBIG, (int)p->tok.start + 1,
                          "list longer than %d values", POL_EXPR_MAX_LIST);
        if ((rc = parse_value(p, &items[n])))
            return rc;
        n++;
        if (p->tok.kind == T_RPAREN)
            break;
        if (p->tok.kind != T_COMMA)
            return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                          "expected \",\" or \")\" in the list, found %s",
                          tok_desc(p, &p->tok, found, sizeof(found)));
        if ((rc = advance(p)))
            return rc;
    }
    if ((rc = new_node(p, N_LIST, open, &idx)))
        return rc;
    set_children(p->e, idx, items, n);
    *out = idx;
    return advance(p);
}

/* value [ op value | [not] in list | [not] like value | is [not] null ] */
static int parse_comparison(struct parser *p, int *out)
{
    int left, right, idx, rc, kids[2];
    enum node_kind kind;
    unsigned char op = 0, negated = 0;
    size_t opstart;
    char found[64];

    if ((rc = parse_primary(p, &left)))
        return rc;
    opstart = p->tok.start;
    switch (p->tok.kind) {
    case T_EQ:
    case T_NE:
    case T_LT:
    case T_LE:
    case T_GT:
    case T_GE:
        kind = N_CMP;
        op = (unsigned char)(p->tok.kind - T_EQ + OP_EQ);
        if ((rc = advance(p)) || (rc = parse_primary(p, &right)))
            return rc;
        break;
    case T_NOT:
    case T_IN:
    case T_LIKE:
        if (p->tok.kind == T_NOT) {
            negated = 1;
            if ((rc = advance(p)))
                return rc;
            if (p->tok.kind != T_IN && p->tok.kind != T_LIKE)
                return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                              "expected \"in\" or \"like\" after \"not\", "
                              "found %s",
                              tok_desc(p, &p->tok, found, sizeof(found)));
        }
        kind = p->tok.kind == T_IN ? N_IN : N_LIKE;
        if ((rc = advance(p)))
            return rc;
        if (kind == N_LIKE) {
            if ((rc = parse_primary(p, &right)))
                return rc;
        } else if (p->tok.kind == T_LPAREN) {
            if ((rc = parse_list(p, &right)))
                return rc;
        } else if (p->tok.kind == T_SUBJECT || p->tok.kind == T_REQUEST) {
            if ((rc = parse_reference(p, &right)))
                return rc;
        } else {
            return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                          "expected a list ('a', 'b') or subject.<attribute> "
                          "after \"in\", found %s",
                          tok_desc(p, &p->tok, found, sizeof(found)));
        }
        break;
    case T_IS:
        if ((rc = advance(p)))
            return rc;
        if (p->tok.kind == T_NOT) {
            negated = 1;
            if ((rc = advance(p)))
                return rc;
        }
        if (p->tok.kind != T_NULL)
            return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                          "expected \"null\" or \"not null\" after \"is\", "
                          "found %s",
                          tok_desc(p, &p->tok, found, sizeof(found)));
        if ((rc = new_node(p, N_ISNULL, opstart, &idx)))
            return rc;
        p->e->nodes[idx].negated = negated;
        set_children(p->e, idx, &left, 1);
        *out = idx;
        return advance(p);
    default:
        if (starts_value(p->tok.kind))
            return err_at(p->err, POLIS_EPARSE, (int)p->tok.start + 1,
                          "expected an operator (==, !=, <, in, like, is, "
                          "and, or...) before %s",
                          tok_desc(p, &p->tok, found, sizeof(found)));
        *out = left;
        return 0;
    }
    if ((rc = new_node(p, kind, opstart, &idx)))
        return rc;
    p->e->nodes[idx].op = op;
    p->e->nodes[idx].negated = negated;
    kids[0] = left;
    kids[1] = right;
    set_children(p->e, idx, kids, 2);
    *out = idx;
    return 0;
}

static int parse_not(struct parser *p, int *out)
{
    size_t start = p->tok.start;
    int child, idx, rc;

    if (p->tok.kind != T_NOT)
        return parse_comparison(p, out);
    if (++p->depth > POL_EXPR_MAX_DEPTH)
        return err_at(p->err, POLIS_ETOOBIG, (int)start + 1,
                      "nesting deeper than %d", POL_EXPR_MAX_DEPTH);
    if ((rc = advance(p)) || (rc = parse_not(p, &child)))
        return rc;
    p->depth--;
    if ((rc = new_node(p, N_NOT, start, &idx)))
        return rc;
    set_children(p->e, idx, &child, 1);
    *out = idx;
    return 0;
}

/*
 * One level of an n-ary operator.  Operands are collected in a bounded
 * array: every operand is at least one node, so POL_EXPR_MAX_NODES bounds
 * it and the node limit fires first.
 */
static int parse_nary(struct parser *p, enum tok_kind tk, enum node_kind nk,
                      int (*sub)(struct parser *, int *), int *out)
{
    int *items = NULL, n = 0, rc, idx, first;
    size_t start = p->tok.start;

    if ((rc = sub(p, &first)))
        return rc;
    if (p->tok.kind != tk) {
        *out = first;
        return 0;
    }
    items = malloc(sizeof(int) * POL_EXPR_MAX_NODES);
    if (items == NULL)
        return err_at(p->err, POLIS_ENOMEM, (int)start + 1, "out of memory");
    items[n++] = first;
    while (p->tok.kind == tk) {
        if ((rc = advance(p)) || (rc = sub(p, &items[n])))
            goto out;
        if (++n == POL_EXPR_MAX_NODES) {
            rc =
                err_at(p->err, POLIS_ETOOBIG, (int)p->tok.start + 1,
                       "more than %d values and operators", POL_EXPR_MAX_NODES);
            goto out;
        }
    }
    if ((rc = new_node(p, nk, start, &idx)))
        goto out;
    set_children(p->e, idx, items, n);
    *out = idx;
out:
    free(items);
    return rc;
}

static int parse_and(struct parser *p, int *out)
{
    return parse_nary(p, T_AND, N_AND, parse_not, out);
}

static int parse_or(struct parser *p, int *out)
{
    return parse_nary(p, T_OR, N_OR, parse_and, out);
}

/* The distinct columns in order of first appearance (nodes are created in
 * source order for leaves). */
static int collect_columns(pol_expr *e, polis_error *err)
{
    size_t n = 0;

    for (int i = 0; i < e->nnodes; i++)
        if (e->nodes[i].kind == N_COLUMN)
            n++;
    if (n == 0)
        return 0;
    e->cols = calloc(n, sizeof(*e->cols));
    if (e->cols == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    for (int i = 0; i < e->nnodes; i++) {
        struct node *nd = &e->nodes[i];
        size_t k;
        if (nd->kind != N_COLUMN)
            continue;
        for (k = 0; k < e->ncols; k++)
            if (strcmp(e->cols[k].name, nd->name) == 0)
                break;
        if (k == e->ncols) {
            e->cols[k].name = nd->name;
            e->cols[k].pos = nd->pos;
            e->ncols++;
        }
        nd->col = (int)k;
    }
    return 0;
}

int pol_expr_parse(const char *src, pol_expr **out, polis_error *err)
{
    struct parser p;
    pol_expr *e;
    size_t len;
    char found[64];
    int rc;

    if (out)
        *out = NULL;
    if (src == NULL || out == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "no expression given");
    len = strnlen(src, POL_EXPR_MAX_LEN + 1);
    if (len > POL_EXPR_MAX_LEN)
        return err_at(err, POLIS_ETOOBIG, POL_EXPR_MAX_LEN + 1,
                      "expression longer than %d bytes", POL_EXPR_MAX_LEN);
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    e->arena_cap = 2 * len + 2;
    e->arena = malloc(e->arena_cap);
    if (e->arena == NULL) {
        free(e);
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    }
    memset(&p, 0, sizeof(p));
    p.src = src;
    p.len = len;
    p.e = e;
    p.err = err;
    if ((rc = lex_next(&p)))
        goto fail;
    p.prev_len = 0;
    if (p.tok.kind == T_END) {
        rc = err_at(err, POLIS_EPARSE, 1, "empty expression");
        goto fail;
    }
    if ((rc = parse_or(&p, &e->root)))
        goto fail;
    if (p.tok.kind != T_END) {
        tok_desc(&p, &p.tok, found, sizeof(found));
        if (p.tok.kind == T_RPAREN)
            rc = err_at(err, POLIS_EPARSE, (int)p.tok.start + 1,
                        "unexpected \")\" (no \"(\" to close)");
        else
            rc = err_at(err, POLIS_EPARSE, (int)p.tok.start + 1,
                        "expected \"and\", \"or\" or the end, found %s", found);
        goto fail;
    }
    if ((rc = collect_columns(e, err)))
        goto fail;
    *out = e;
    return 0;
fail:
    pol_expr_free(e);
    return rc;
}

void pol_expr_free(pol_expr *expr)
{
    if (expr == NULL)
        return;
    free(expr->nodes);
    free(expr->arena);
    free(expr->cols);
    free(expr);
}

size_t pol_expr_column_count(const pol_expr *expr)
{
    return expr ? expr->ncols : 0;
}

const char *pol_expr_column_name(const pol_expr *expr, size_t i)
{
    return expr && i < expr->ncols ? expr->cols[i].name : NULL;
}

bool pol_expr_uses_columns(const pol_expr *expr)
{
    return expr && expr->ncols > 0;
}

/* ---- type checking ------------------------------------------------------- */

static bool is_numeric(int t)
{
    return t == POL_EXPR_INTEGER || t == POL_EXPR_DECIMAL;
}

static bool is_condition_node(int kind)
{
    return kind == N_AND || kind == N_OR || kind == N_NOT || kind == N_CMP ||
           kind == N_IN || kind == N_LIKE || kind == N_ISNULL;
}

static const char *op_text[] = {"==", "!=", "<", "<=", ">", ">="};

/* Types a and b can be compared with `==` (ordering handled by caller). */
static bool comparable(int a, int b)
{
    if (a == POL_EXPR_NULL || b == POL_EXPR_NULL)
        return true;
    if (is_numeric(a) && is_numeric(b))
        return true;
    return a == b && a != POL_EXPR_LIST;
}

static int check_node(pol_expr *e, int idx, polis_error *err);

static int check_condition(pol_expr *e, int idx, polis_error *err)
{
    int rc = check_node(e, idx, err);
    int t = e->nodes[idx].type;

    if (rc)
        return rc;
    if (t != POL_EXPR_BOOLEAN && t != POL_EXPR_NULL)
        return err_at(err, POLIS_EINVAL, e->nodes[idx].pos,
                      "expected a condition (true or false), found a %s "
                      "value",
                      pol_expr_type_name((pol_expr_type)t));
    return 0;
}

static int check_node(pol_expr *e, int idx, polis_error *err)
{
    struct node *n = &e->nodes[idx];
    struct node *l, *r;
    int rc;

    switch ((enum node_kind)n->kind) {
    case N_LITERAL:
        n->type = (unsigned char)n->lit.type;
        return 0;
    case N_COLUMN:
        n->type = (unsigned char)e->cols[n->col].type;
        return 0;
    case N_SUBJECT_NAME:
    case N_SUBJECT_ATTR:
    case N_REQUEST_PURPOSE:
    case N_REQUEST_PRODUCT:
    case N_REQUEST_PORT:
        n->type = POL_EXPR_STRING;
        return 0;
    case N_SUBJECT_GROUPS:
        n->type = POL_EXPR_LIST;
        return 0;
    case N_AND:
    case N_OR:
    case N_NOT:
        for (int c = n->first; c >= 0; c = e->nodes[c].next)
            if ((rc = check_condition(e, c, err)))
                return rc;
        n->type = POL_EXPR_BOOLEAN;
        return 0;
    case N_LIST:
        return 0; /* elements are checked by N_IN */
    case N_ISNULL:
        if ((rc = check_node(e, n->first, err)))
            return rc;
        /* Presence of an attribute, whether it holds a string or a list. */
        if (e->nodes[n->first].kind == N_SUBJECT_ATTR) {
            e->nodes[n->first].as_list = 1;
            e->nodes[n->first].type = POL_EXPR_LIST;
        }
        n->type = POL_EXPR_BOOLEAN;
        return 0;
    case N_CMP:
    case N_IN:
    case N_LIKE:
        break;
    }
    l = &e->nodes[n->first];
    r = &e->nodes[l->next];
    if ((rc = check_node(e, n->first, err)))
        return rc;
    if (l->type == POL_EXPR_LIST)
        return err_at(err, POLIS_EINVAL, n->pos,
                      "a list cannot be compared (write 'x' in "
                      "subject.groups)");
    n->type = POL_EXPR_BOOLEAN;
    if (n->kind == N_CMP) {
        if ((rc = check_node(e, l->next, err)))
            return rc;
        if (r->type == POL_EXPR_LIST)
            return err_at(err, POLIS_EINVAL, n->pos,
                          "a list cannot be compared (write 'x' in "
                          "subject.groups)");
        if (!comparable(l->type, r->type))
            return err_at(err, POLIS_EINVAL, n->pos,
                          "cannot compare %s with %s",
                          pol_expr_type_name((pol_expr_type)l->type),
                          pol_expr_type_name((pol_expr_type)r->type));
        if (n->op != OP_EQ && n->op != OP_NE &&
            (l->type == POL_EXPR_BOOLEAN || r->type == POL_EXPR_BOOLEAN))
            return err_at(err, POLIS_EINVAL, n->pos,
                          "booleans have no order (\"%s\"); use == or !=",
                          op_text[n->op]);
        return 0;
    }
    if (n->kind == N_LIKE) {
        if ((rc = check_node(e, l->next, err)))
            return rc;
        if (l->type != POL_EXPR_STRING && l->type != POL_EXPR_NULL)
            return err_at(err, POLIS_EINVAL, n->pos,
                          "\"like\" needs a string, found %s",
                          pol_expr_type_name((pol_expr_type)l->type));
        if (r->kind == N_COLUMN || is_condition_node(r->kind))
            return err_at(err, POLIS_EINVAL, r->pos,
                          "the pattern of \"like\" must be a string literal "
                          "or a subject/request value, not a %s",
                          r->kind == N_COLUMN ? "column" : "condition");
        if (r->type != POL_EXPR_STRING && r->type != POL_EXPR_NULL)
            return err_at(err, POLIS_EINVAL, r->pos,
                          "the pattern of \"like\" must be a string, found "
                          "%s",
                          pol_expr_type_name((pol_expr_type)r->type));
        return 0;
    }
    /* N_IN */
    if (r->kind == N_LIST) {
        for (int c = r->first; c >= 0; c = e->nodes[c].next) {
            struct node *item = &e->nodes[c];
            if ((rc = check_node(e, c, err)))
                return rc;
            if (item->type == POL_EXPR_LIST || !comparable(l->type, item->type))
                return err_at(err, POLIS_EINVAL, item->pos,
                              "cannot compare %s with %s in the list",
                              pol_expr_type_name((pol_expr_type)l->type),
                              pol_expr_type_name((pol_expr_type)item->type));
        }
        r->type = POL_EXPR_LIST;
        return 0;
    }
    if (r->kind != N_SUBJECT_GROUPS && r->kind != N_SUBJECT_ATTR)
        return err_at(err, POLIS_EINVAL, r->pos,
                      "\"in\" needs a list ('a', 'b'), subject.groups or a "
                      "list-valued subject attribute");
    r->as_list = 1;
    r->type = POL_EXPR_LIST;
    if (l->type != POL_EXPR_STRING && l->type != POL_EXPR_NULL)
        return err_at(err, POLIS_EINVAL, n->pos,
                      "cannot look for %s in a list of strings",
                      pol_expr_type_name((pol_expr_type)l->type));
    return 0;
}

static int resolve_columns(pol_expr *e, const pol_expr_schema *schema,
                           polis_error *err)
{
    for (size_t k = 0; k < e->ncols; k++) {
        struct column_ref *c = &e->cols[k];
        pol_expr_type type = POL_EXPR_NULL;
        int id = -1, found = 0;

        if (schema == NULL)
            return err_at(err, POLIS_EINVAL, c->pos,
                          "unknown column \"%s\" (this expression cannot "
                          "refer to columns)",
                          c->name);
        if (schema->lookup) {
            found = schema->lookup(schema->ctx, c->name, &type, &id) == 0;
        } else {
            for (size_t i = 0; i < schema->ncolumns; i++) {
                if (schema->columns[i].name &&
                    strcmp(schema->columns[i].name, c->name) == 0) {
                    type = schema->columns[i].type;
                    id = (int)i;
                    found = 1;
                    break;
                }
            }
        }
        if (!found)
            return err_at(err, POLIS_EINVAL, c->pos, "unknown column \"%s\"",
                          c->name);
        if (type != POL_EXPR_STRING && type != POL_EXPR_INTEGER &&
            type != POL_EXPR_DECIMAL && type != POL_EXPR_BOOLEAN)
            return err_at(err, POLIS_EINVAL, c->pos,
                          "column \"%s\" has a type expressions cannot use "
                          "(%s)",
                          c->name, pol_expr_type_name(type));
        c->type = type;
        c->id = id;
    }
    return 0;
}

int pol_expr_check(pol_expr *expr, const pol_expr_schema *schema,
                   polis_error *err)
{
    int rc;

    if (expr == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "no expression");
    expr->checked = false;
    if ((rc = resolve_columns(expr, schema, err)))
        return rc;
    if ((rc = check_condition(expr, expr->root, err)))
        return rc;
    expr->checked = true;
    return 0;
}

int pol_expr_compile(const char *src, const pol_expr_schema *schema,
                     pol_expr **out, polis_error *err)
{
    pol_expr *e = NULL;
    int rc;

    if (out)
        *out = NULL;
    if ((rc = pol_expr_parse(src, &e, err)))
        return rc;
    if ((rc = pol_expr_check(e, schema, err))) {
        pol_expr_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

/* ---- canonical text ------------------------------------------------------ */

static void put_quoted(struct dbuf *b, const char *s, size_t n, char q)
{
    size_t i = 0, from = 0;

    dbuf_putn(b, &q, 1);
    for (; i < n; i++) {
        if (s[i] == q) {
            dbuf_putn(b, s + from, i + 1 - from);
            dbuf_putn(b, &q, 1);
            from = i + 1;
        }
    }
    dbuf_putn(b, s + from, n - from);
    dbuf_putn(b, &q, 1);
}

static void put_name(struct dbuf *b, const char *name)
{
    size_t n = strlen(name);
    bool bare = n > 0 && is_ident_start((unsigned char)name[0]);

    for (size_t i = 0; bare && i < n; i++)
        bare = is_ident_char((unsigned char)name[i]);
    if (bare && keyword_kind(name, n) == T_IDENT)
        dbuf_putn(b, name, n);
    else
        put_quoted(b, name, n, '"');
}

/* Shortest text that reads back to the same double, always with a "." or
 * exponent so that it stays a decimal. */
static void put_decimal(struct dbuf *b, double d)
{
    char tmp[40];

    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    if (strpbrk(tmp, ".eEn") == NULL)
        strcat(tmp, ".0");
    dbuf_puts(b, tmp);
}

static void put_literal(struct dbuf *b, const pol_expr_value *v)
{
    switch (v->type) {
    case POL_EXPR_NULL:
        dbuf_puts(b, "null");
        break;
    case POL_EXPR_STRING:
        put_quoted(b, v->u.str, v->len, '\'');
        break;
    case POL_EXPR_INTEGER:
        dbuf_printf(b, "%lld", (long long)v->u.i);
        break;
    case POL_EXPR_DECIMAL:
        put_decimal(b, v->u.d);
        break;
    case POL_EXPR_BOOLEAN:
        dbuf_puts(b, v->u.b ? "true" : "false");
        break;
    case POL_EXPR_LIST:
        break;
    }
}

/* Precedence levels for printing: 1 or, 2 and, 3 not, 4 comparison,
 * 5 value. */
static int level_of(int kind)
{
    switch (kind) {
    case N_OR:
        return 1;
    case N_AND:
        return 2;
    case N_NOT:
        return 3;
    case N_CMP:
    case N_IN:
    case N_LIKE:
    case N_ISNULL:
        return 4;
    default:
        return 5;
    }
}

static void print_node(const pol_expr *e, int idx, struct dbuf *b);

/* Print child in a context that needs level `min`; parenthesise when it
 * binds looser, or is the same n-ary kind (keeps the tree shape). */
static void print_child(const pol_expr *e, int idx, int min, int parent,
                        struct dbuf *b)
{
    int lv = level_of(e->nodes[idx].kind);
    bool paren = lv < min || (lv <= 2 && e->nodes[idx].kind == parent) ||
                 (parent == N_OR && lv == 2);

    if (paren)
        dbuf_puts(b, "(");
    print_node(e, idx, b);
    if (paren)
        dbuf_puts(b, ")");
}

static void print_node(const pol_expr *e, int idx, struct dbuf *b)
{
    const struct node *n = &e->nodes[idx];
    int c;

    switch ((enum node_kind)n->kind) {
    case N_LITERAL:
        put_literal(b, &n->lit);
        return;
    case N_COLUMN:
        put_name(b, n->name);
        return;
    case N_SUBJECT_NAME:
        dbuf_puts(b, "subject.name");
        return;
    case N_SUBJECT_GROUPS:
        dbuf_puts(b, "subject.groups");
        return;
    case N_SUBJECT_ATTR:
        dbuf_puts(b, "subject.");
        if (strcmp(n->name, "name") == 0 || strcmp(n->name, "groups") == 0)
            put_quoted(b, n->name, strlen(n->name), '"');
        else
            put_name(b, n->name);
        return;
    case N_REQUEST_PURPOSE:
        dbuf_puts(b, "request.purpose");
        return;
    case N_REQUEST_PRODUCT:
        dbuf_puts(b, "request.product");
        return;
    case N_REQUEST_PORT:
        dbuf_puts(b, "request.port");
        return;
    case N_AND:
    case N_OR:
        for (c = n->first; c >= 0; c = e->nodes[c].next) {
            if (c != n->first)
                dbuf_puts(b, n->kind == N_AND ? " and " : " or ");
            print_child(e, c, n->kind == N_AND ? 3 : 2, n->kind, b);
        }
        return;
    case N_NOT:
        dbuf_puts(b, "not ");
        print_child(e, n->first, 3, N_NOT, b);
        return;
    case N_LIST:
        dbuf_puts(b, "(");
        for (c = n->first; c >= 0; c = e->nodes[c].next) {
            if (c != n->first)
                dbuf_puts(b, ", ");
            print_node(e, c, b);
        }
        dbuf_puts(b, ")");
        return;
    case N_ISNULL:
        print_child(e, n->first, 5, N_ISNULL, b);
        dbuf_puts(b, n->negated ? " is not null" : " is null");
        return;
    case N_CMP:
    case N_IN:
    case N_LIKE:
        print_child(e, n->first, 5, n->kind, b);
        if (n->kind == N_CMP) {
            dbuf_puts(b, " ");
            dbuf_puts(b, op_text[n->op]);
            dbuf_puts(b, " ");
        } else {
            dbuf_puts(b, n->negated ? " not " : " ");
            dbuf_puts(b, n->kind == N_IN ? "in " : "like ");
        }
        print_child(e, e->nodes[n->first].next, 5, n->kind, b);
        return;
    }
}

int pol_expr_to_string(const pol_expr *expr, char **out, polis_error *err)
{
    struct dbuf b = {NULL, 0, 0, 4 * POL_EXPR_MAX_LEN + 64, 0};

    if (out)
        *out = NULL;
    if (expr == NULL || out == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "no expression");
    print_node(expr, expr->root, &b);
    if (b.rc == 0 && b.p == NULL)
        dbuf_puts(&b, "");
    if (b.rc) {
        free(b.p);
        return polis_error_set(err, b.rc, NULL, "cannot print expression");
    }
    *out = b.p;
    return 0;
}

/* ---- evaluation ---------------------------------------------------------- */

/* A value during evaluation: a scalar, or a list of strings. */
struct val {
    pol_expr_value v;
    const char *const *items;
    size_t nitems;
};

struct eval_ctx {
    const pol_expr *e;
    pol_expr_row_fn row_fn;
    void *row;
    const pol_expr_subject *subject;
    const pol_expr_request *request;
    polis_error *err;
};

static void set_str(pol_expr_value *v, const char *s)
{
    if (s == NULL) {
        v->type = POL_EXPR_NULL;
        return;
    }
    v->type = POL_EXPR_STRING;
    v->u.str = s;
    v->len = strlen(s);
}

static const pol_expr_attr *find_attr(const pol_expr_subject *s,
                                      const char *name)
{
    if (s == NULL)
        return NULL;
    for (size_t i = 0; i < s->nattrs; i++)
        if (s->attrs[i].name && strcmp(s->attrs[i].name, name) == 0)
            return &s->attrs[i];
    return NULL;
}

/*
 * Subject and request values, shared by the evaluator and the renderer:
 * the same lookup makes both see the same nulls.  For a list, items is
 * NULL when the list is absent (null).
 */
static void lookup_context(const struct node *n,
                           const pol_expr_subject *subject,
                           const pol_expr_request *request, struct val *out)
{
    const pol_expr_attr *a;

    memset(out, 0, sizeof(*out));
    switch (n->kind) {
    case N_SUBJECT_NAME:
        set_str(&out->v, subject ? subject->name : NULL);
        return;
    case N_SUBJECT_GROUPS:
        out->v.type = POL_EXPR_LIST;
        if (subject && subject->groups) {
            out->items = subject->groups;
            out->nitems = subject->ngroups;
        }
        return;
    case N_SUBJECT_ATTR:
        a = find_attr(subject, n->name);
        if (n->as_list) {
            out->v.type = POL_EXPR_LIST;
            if (a && a->is_list && a->values) {
                out->items = a->values;
                out->nitems = a->nvalues;
            } else if (a && !a->is_list && a->value) {
                out->items = &a->value; /* a string is a one-item list */
                out->nitems = 1;
            }
        } else if (a && !a->is_list) {
            set_str(&out->v, a->value);
        }
        return;
    case N_REQUEST_PURPOSE:
        set_str(&out->v, request ? request->purpose : NULL);
        return;
    case N_REQUEST_PRODUCT:
        set_str(&out->v, request ? request->product : NULL);
        return;
    case N_REQUEST_PORT:
        set_str(&out->v, request ? request->port : NULL);
        return;
    default:
        return;
    }
}

static int eval_cond(struct eval_ctx *c, int idx, pol_tri *out);

static int fetch_column(struct eval_ctx *c, const struct node *n,
                        pol_expr_value *v)
{
    const struct column_ref *col = &c->e->cols[n->col];
    int rc;

    if (c->row_fn == NULL)
        return polis_error_set(c->err, POLIS_EINVAL, NULL,
                               "column \"%s\" used without a row", col->name);
    memset(v, 0, sizeof(*v));
    rc = c->row_fn(c->row, col->id, col->name, v);
    if (rc)
        return polis_error_set(c->err, rc < 0 ? rc : POLIS_EINVAL, NULL,
                               "cannot read column \"%s\"", col->name);
    if (v->type == POL_EXPR_NULL || v->type == col->type)
        goto ok;
    if (col->type == POL_EXPR_DECIMAL && v->type == POL_EXPR_INTEGER)
        goto ok;
    if (col->type == POL_EXPR_INTEGER && v->type == POL_EXPR_DECIMAL)
        goto ok;
    if (col->type == POL_EXPR_BOOLEAN && v->type == POL_EXPR_INTEGER) {
        bool b = v->u.i != 0;
        v->type = POL_EXPR_BOOLEAN;
        v->u.b = b;
        return 0;
    }
    return polis_error_set(
        c->err, POLIS_EINVAL, NULL, "column \"%s\": expected %s, got %s",
        col->name, pol_expr_type_name(col->type), pol_expr_type_name(v->type));
ok:
    /* SQL stores NaN as NULL; do the same so both sides agree. */
    if (v->type == POL_EXPR_DECIMAL && isnan(v->u.d))
        v->type = POL_EXPR_NULL;
    if (v->type == POL_EXPR_STRING && v->u.str == NULL)
        v->type = POL_EXPR_NULL;
    return 0;
}

static int eval_value(struct eval_ctx *c, int idx, struct val *out)
{
    const struct node *n = &c->e->nodes[idx];
    pol_tri t;
    int rc;

    switch (n->kind) {
    case N_LITERAL:
        memset(out, 0, sizeof(*out));
        out->v = n->lit;
        return 0;
    case N_COLUMN:
        memset(out, 0, sizeof(*out));
        return fetch_column(c, n, &out->v);
    case N_SUBJECT_NAME:
    case N_SUBJECT_GROUPS:
    case N_SUBJECT_ATTR:
    case N_REQUEST_PURPOSE:
    case N_REQUEST_PRODUCT:
    case N_REQUEST_PORT:
        lookup_context(n, c->subject, c->request, out);
        return 0;
    default:
        if ((rc = eval_cond(c, idx, &t)))
            return rc;
        memset(out, 0, sizeof(*out));
        if (t != POL_UNKNOWN) {
            out->v.type = POL_EXPR_BOOLEAN;
            out->v.u.b = t == POL_TRUE;
        }
        return 0;
    }
}

/* int64 against double, exactly (no rounding of large integers). */
static int cmp_int_double(int64_t i, double d)
{
    int64_t t;
    double frac;

    if (d >= 9223372036854775808.0)
        return -1;
    if (d < -9223372036854775808.0)
        return 1;
    t = (int64_t)d;
    if (i != t)
        return i < t ? -1 : 1;
    frac = d - (double)t;
    return frac > 0 ? -1 : frac < 0 ? 1 : 0;
}

/* Order of two non-null comparable scalars. */
static int cmp_scalar(const pol_expr_value *a, const pol_expr_value *b)
{
    if (a->type == POL_EXPR_STRING) {
        size_t n = a->len < b->len ? a->len : b->len;
        int r = n ? memcmp(a->u.str, b->u.str, n) : 0;
        if (r)
            return r < 0 ? -1 : 1;
        return a->len < b->len ? -1 : a->len > b->len ? 1 : 0;
    }
    if (a->type == POL_EXPR_BOOLEAN)
        return (int)a->u.b - (int)b->u.b;
    if (a->type == POL_EXPR_INTEGER && b->type == POL_EXPR_INTEGER)
        return a->u.i < b->u.i ? -1 : a->u.i > b->u.i ? 1 : 0;
    if (a->type == POL_EXPR_DECIMAL && b->type == POL_EXPR_DECIMAL)
        return a->u.d < b->u.d ? -1 : a->u.d > b->u.d ? 1 : 0;
    if (a->type == POL_EXPR_INTEGER)
        return cmp_int_double(a->u.i, b->u.d);
    return -cmp_int_double(b->u.i, a->u.d);
}

/* Number of bytes of the character at s, the way SQLite's LIKE/GLOB step
 * over characters: a lead byte >= 0xC0 takes all continuation bytes that
 * follow; anything else is one byte. */
static size_t char_len(const unsigned char *s, size_t n)
{
    size_t k = 1;

    if (s[0] < 0xc0)
        return 1;
    while (k < n && (s[k] & 0xc0) == 0x80)
        k++;
    return k;
}

/*
 * `like`: % any run of characters, _ one character, \ makes the next byte
 * literal (a trailing \ is a literal backslash).  Case-sensitive, byte-wise.
 * Backtracks only to the last %, so the cost is O(len(s) * len(p)).
 */
static bool like_match(const unsigned char *s, size_t sn,
                       const unsigned char *p, size_t pn)
{
    size_t si = 0, pi = 0, star_p = 0, star_s = 0;
    bool star = false;

    while (si < sn) {
        if (pi < pn) {
            unsigned char pc = p[pi];
            if (pc == '%') {
                star = true;
                star_p = ++pi;
                star_s = si;
                continue;
            }
            if (pc == '_') {
                si += char_len(s + si, sn - si);
                pi++;
                continue;
            }
            if (pc == '\\' && pi + 1 < pn)
                pc = p[++pi];
            if (pc == s[si]) {
                si++;
                pi++;
                continue;
            }
        }
        if (!star)
            return false;
        star_s += char_len(s + star_s, sn - star_s);
        si = star_s;
        pi = star_p;
    }
    while (pi < pn && p[pi] == '%')
        pi++;
    return pi == pn;
}

static pol_tri tri_not(pol_tri t)
{
    return t == POL_UNKNOWN ? POL_UNKNOWN
           : t == POL_TRUE  ? POL_FALSE
                            : POL_TRUE;
}

static int eval_cond(struct eval_ctx *c, int idx, pol_tri *out)
{
    const struct node *n = &c->e->nodes[idx];
    struct val a, b;
    pol_tri t, acc;
    int rc, k;

    switch (n->kind) {
    case N_AND:
    case N_OR:
        /* Kleene logic: a false (true) operand decides an and (or). */
        acc = n->kind == N_AND ? POL_TRUE : POL_FALSE;
        for (k = n->first; k >= 0; k = c->e->nodes[k].next) {
            if ((rc = eval_cond(c, k, &t)))
                return rc;
            if (t == POL_UNKNOWN)
                acc = POL_UNKNOWN;
            else if ((t == POL_FALSE) == (n->kind == N_AND)) {
                acc = t;
                break;
            }
        }
        *out = acc;
        return 0;
    case N_NOT:
        if ((rc = eval_cond(c, n->first, &t)))
            return rc;
        *out = tri_not(t);
        return 0;
    case N_ISNULL:
        if ((rc = eval_value(c, n->first, &a)))
            return rc;
        t = a.v.type == POL_EXPR_NULL ||
                    (a.v.type == POL_EXPR_LIST && a.items == NULL)
                ? POL_TRUE
                : POL_FALSE;
        *out = n->negated ? tri_not(t) : t;
        return 0;
    case N_CMP:
        if ((rc = eval_value(c, n->first, &a)) ||
            (rc = eval_value(c, c->e->nodes[n->first].next, &b)))
            return rc;
        if (a.v.type == POL_EXPR_NULL || b.v.type == POL_EXPR_NULL) {
            *out = POL_UNKNOWN;
            return 0;
        }
        k = cmp_scalar(&a.v, &b.v);
        switch (n->op) {
        case OP_EQ:
            t = k == 0;
            break;
        case OP_NE:
            t = k != 0;
            break;
        case OP_LT:
            t = k < 0;
            break;
        case OP_LE:
            t = k <= 0;
            break;
        case OP_GT:
            t = k > 0;
            break;
        default:
            t = k >= 0;
            break;
        }
        *out = t;
        return 0;
    case N_LIKE:
        if ((rc = eval_value(c, n->first, &a)) ||
            (rc = eval_value(c, c->e->nodes[n->first].next, &b)))
            return rc;
        if (a.v.type == POL_EXPR_NULL || b.v.type == POL_EXPR_NULL) {
            *out = POL_UNKNOWN;
            return 0;
        }
        t = like_match((const unsigned char *)a.v.u.str, a.v.len,
                       (const unsigned char *)b.v.u.str, b.v.len)
                ? POL_TRUE
                : POL_FALSE;
        *out = n->negated ? tri_not(t) : t;
        return 0;
    case N_IN: {
        const struct node *r = &c->e->nodes[c->e->nodes[n->first].next];
        bool saw_null = false;

        if ((rc = eval_value(c, n->first, &a)))
            return rc;
        t = POL_FALSE;
        if (r->kind == N_LIST) {
            if (a.v.type == POL_EXPR_NULL) {
                *out = POL_UNKNOWN;
                return 0;
            }
            for (k = r->first; k >= 0; k = c->e->nodes[k].next) {
                if ((rc = eval_value(c, k, &b)))
                    return rc;
                if (b.v.type == POL_EXPR_NULL)
                    saw_null = true;
                else if (cmp_scalar(&a.v, &b.v) == 0) {
                    t = POL_TRUE;
                    break;
                }
            }
        } else {
            lookup_context(r, c->subject, c->request, &b);
            if (b.items == NULL) {
                *out = POL_UNKNOWN; /* absent list */
                return 0;
            }
            if (b.nitems == 0) {
                /* SQL: x IN () is false even for a null x. */
                *out = n->negated ? POL_TRUE : POL_FALSE;
                return 0;
            }
            if (a.v.type == POL_EXPR_NULL) {
                *out = POL_UNKNOWN;
                return 0;
            }
            for (size_t i = 0; i < b.nitems; i++) {
                const char *s = b.items[i];
                size_t sl;
                if (s == NULL) {
                    saw_null = true;
                    continue;
                }
                sl = strlen(s);
                if (sl == a.v.len && memcmp(s, a.v.u.str, sl) == 0) {
                    t = POL_TRUE;
                    break;
                }
            }
        }
        if (t == POL_FALSE && saw_null)
            t = POL_UNKNOWN;
        *out = n->negated ? tri_not(t) : t;
        return 0;
    }
    default:
        if ((rc = eval_value(c, idx, &a)))
            return rc;
        if (a.v.type == POL_EXPR_BOOLEAN)
            *out = a.v.u.b ? POL_TRUE : POL_FALSE;
        else
            *out = POL_UNKNOWN;
        return 0;
    }
}

int pol_expr_eval(const pol_expr *expr, pol_expr_row_fn row_fn, void *row,
                  const pol_expr_subject *subject,
                  const pol_expr_request *request, pol_tri *result,
                  polis_error *err)
{
    struct eval_ctx c = {expr, row_fn, row, subject, request, err};

    if (expr == NULL || result == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "no expression");
    if (!expr->checked)
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "expression not type-checked");
    *result = POL_UNKNOWN;
    return eval_cond(&c, expr->root, result);
}

int pol_expr_matches(const pol_expr *const *exprs, size_t n,
                     pol_expr_row_fn row_fn, void *row,
                     const pol_expr_subject *subject,
                     const pol_expr_request *request, bool *matched,
                     polis_error *err)
{
    pol_tri t;
    int rc;

    if (matched == NULL || (n > 0 && exprs == NULL))
        return polis_error_set(err, POLIS_EINVAL, NULL, "no expressions");
    *matched = false;
    for (size_t i = 0; i < n; i++) {
        rc = pol_expr_eval(exprs[i], row_fn, row, subject, request, &t, err);
        if (rc)
            return rc;
        if (t != POL_TRUE)
            return 0;
    }
    *matched = true;
    return 0;
}

/* ---- SQL rendering ------------------------------------------------------- */

struct sql_ctx {
    const pol_expr *e;
    const pol_expr_sql_opts *opts;
    const pol_expr_subject *subject;
    const pol_expr_request *request;
    struct dbuf text;
    struct dbuf extra; /* translated like patterns */
    pol_expr_value *params;
    size_t *extra_off; /* per param: offset in extra, or SIZE_MAX */
    size_t nparams, cap;
    unsigned first;
};

static const char *pg_cast(pol_expr_type t)
{
    switch (t) {
    case POL_EXPR_INTEGER:
        return "::bigint";
    case POL_EXPR_DECIMAL:
        return "::double precision";
    case POL_EXPR_BOOLEAN:
        return "::boolean";
    default:
        return "::text";
    }
}

/* Append a placeholder bound to v; `cast` is the PostgreSQL type of the
 * parameter (v may be null). */
static void sql_param(struct sql_ctx *s, const pol_expr_value *v,
                      pol_expr_type cast, size_t extra_off)
{
    if (s->text.rc)
        return;
    if (s->nparams == POL_EXPR_SQL_MAX_PARAMS) {
        s->text.rc = POLIS_ETOOBIG;
        return;
    }
    if (s->nparams == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        pol_expr_value *np = realloc(s->params, cap * sizeof(*np));
        size_t *no;
        if (np == NULL) {
            s->text.rc = POLIS_ENOMEM;
            return;
        }
        s->params = np;
        no = realloc(s->extra_off, cap * sizeof(*no));
        if (no == NULL) {
            s->text.rc = POLIS_ENOMEM;
            return;
        }
        s->extra_off = no;
        s->cap = cap;
    }
    s->params[s->nparams] = *v;
    s->extra_off[s->nparams] = extra_off;
    if (s->opts->dialect == POL_SQL_POSTGRES) {
        dbuf_printf(&s->text, "$%zu", s->first + s->nparams);
        dbuf_puts(&s->text, pg_cast(cast));
    } else {
        dbuf_printf(&s->text, "?%zu", s->first + s->nparams);
    }
    s->nparams++;
}

static void sql_ident(struct sql_ctx *s, const char *name)
{
    if (s->opts->table_alias) {
        put_quoted(&s->text, s->opts->table_alias, strlen(s->opts->table_alias),
                   '"');
        dbuf_puts(&s->text, ".");
    }
    put_quoted(&s->text, name, strlen(name), '"');
}

static void sql_node(struct sql_ctx *s, int idx);

/* A scalar operand: column, literal (null as the keyword), subject/request
 * value (always a parameter, null or not), or a parenthesised condition. */
static void sql_value(struct sql_ctx *s, int idx)
{
    const struct node *n = &s->e->nodes[idx];
    struct val v;

    switch (n->kind) {
    case N_COLUMN:
        sql_ident(s, n->name);
        return;
    case N_LITERAL:
        if (n->lit.type == POL_EXPR_NULL)
            dbuf_puts(&s->text, "NULL");
        else
            sql_param(s, &n->lit, n->lit.type, SIZE_MAX);
        return;
    case N_SUBJECT_NAME:
    case N_SUBJECT_ATTR:
    case N_REQUEST_PURPOSE:
    case N_REQUEST_PRODUCT:
    case N_REQUEST_PORT:
        lookup_context(n, s->subject, s->request, &v);
        sql_param(s, &v.v, POL_EXPR_STRING, SIZE_MAX);
        return;
    default:
        sql_node(s, idx);
        return;
    }
}

/*
 * The pattern of `like`, known at render time (checking forbids columns),
 * translated so the database matches exactly like like_match(): to a GLOB
 * pattern for SQLite (GLOB is case-sensitive, LIKE is not), and to a LIKE
 * pattern with backslash escapes for PostgreSQL.
 */
static void sql_like(struct sql_ctx *s, const struct node *n)
{
    const struct node *pn = &s->e->nodes[s->e->nodes[n->first].next];
    bool pg = s->opts->dialect == POL_SQL_POSTGRES;
    bool has_escape = false;
    struct val v;
    size_t off;

    dbuf_puts(&s->text, "(");
    sql_value(s, n->first);
    if (pg)
        dbuf_puts(&s->text, n->negated ? " NOT LIKE " : " LIKE ");
    else
        dbuf_puts(&s->text, n->negated ? " NOT GLOB " : " GLOB ");
    if (pn->kind == N_LITERAL)
        v.v = pn->lit;
    else
        lookup_context(pn, s->subject, s->request, &v);
    if (v.v.type != POL_EXPR_STRING) {
        sql_param(s, &v.v, POL_EXPR_STRING, SIZE_MAX); /* null */
        dbuf_puts(&s->text, ")");
        return;
    }
    off = s->extra.len;
    for (size_t i = 0; i < v.v.len; i++) {
        char c = v.v.u.str[i];
        bool literal = false;
        if (c == '\\') {
            literal = true;
            if (i + 1 < v.v.len)
                c = v.v.u.str[++i];
        } else if (c != '%' && c != '_') {
            literal = true;
        }
        if (!literal) {
            dbuf_putn(&s->extra, pg ? &c : c == '%' ? "*" : "?", 1);
        } else if (pg) {
            if (c == '%' || c == '_' || c == '\\') {
                dbuf_puts(&s->extra, "\\");
                has_escape = true;
            }
            dbuf_putn(&s->extra, &c, 1);
        } else if (c == '*' || c == '?' || c == '[') {
            dbuf_puts(&s->extra, c == '*' ? "[*]" : c == '?' ? "[?]" : "[[]");
        } else {
            dbuf_putn(&s->extra, &c, 1);
        }
    }
    /* The NUL dbuf keeps after the text separates patterns in extra. */
    dbuf_putn(&s->extra, "", 1);
    if (s->extra.rc)
        s->text.rc = s->extra.rc;
    v.v.len = s->extra.len - 1 - off;
    sql_param(s, &v.v, POL_EXPR_STRING, off);
    if (pg && has_escape)
        dbuf_puts(&s->text, " ESCAPE '\\'");
    dbuf_puts(&s->text, ")");
}

static void sql_node(struct sql_ctx *s, int idx)
{
    static const char *sql_op[] = {" = ", " <> ", " < ", " <= ", " > ", " >= "};
    const struct node *n = &s->e->nodes[idx];
    bool pg = s->opts->dialect == POL_SQL_POSTGRES;
    int k;

    switch (n->kind) {
    case N_AND:
    case N_OR:
        dbuf_puts(&s->text, "(");
        for (k = n->first; k >= 0; k = s->e->nodes[k].next) {
            if (k != n->first)
                dbuf_puts(&s->text, n->kind == N_AND ? " AND " : " OR ");
            sql_node(s, k);
        }
        dbuf_puts(&s->text, ")");
        return;
    case N_NOT:
        dbuf_puts(&s->text, "(NOT ");
        sql_node(s, n->first);
        dbuf_puts(&s->text, ")");
        return;
    case N_ISNULL:
        if (s->e->nodes[n->first].type == POL_EXPR_LIST) {
            struct val v;
            bool is_null;
            lookup_context(&s->e->nodes[n->first], s->subject, s->request, &v);
            is_null = v.items == NULL;
            dbuf_puts(&s->text,
                      is_null != (bool)n->negated ? "(1 = 1)" : "(1 = 0)");
            return;
        }
        dbuf_puts(&s->text, "(");
        sql_value(s, n->first);
        dbuf_puts(&s->text, n->negated ? " IS NOT NULL)" : " IS NULL)");
        return;
    case N_CMP: {
        const struct node *l = &s->e->nodes[n->first];
        bool collate = pg && n->op >= OP_LT && l->type == POL_EXPR_STRING;
        dbuf_puts(&s->text, "(");
        sql_value(s, n->first);
        dbuf_puts(&s->text, sql_op[n->op]);
        sql_value(s, l->next);
        /* Byte order, like the evaluator and SQLite's BINARY collation. */
        if (collate)
            dbuf_puts(&s->text, " COLLATE \"C\"");
        dbuf_puts(&s->text, ")");
        return;
    }
    case N_LIKE:
        sql_like(s, n);
        return;
    case N_IN: {
        const struct node *r = &s->e->nodes[s->e->nodes[n->first].next];
        if (r->kind == N_LIST) {
            dbuf_puts(&s->text, "(");
            sql_value(s, n->first);
            dbuf_puts(&s->text, n->negated ? " NOT IN (" : " IN (");
            for (k = r->first; k >= 0; k = s->e->nodes[k].next) {
                if (k != r->first)
                    dbuf_puts(&s->text, ", ");
                sql_value(s, k);
            }
            dbuf_puts(&s->text, "))");
        } else {
            struct val v;
            lookup_context(r, s->subject, s->request, &v);
            if (v.items == NULL) {
                dbuf_puts(&s->text, pg ? "CAST(NULL AS BOOLEAN)" : "NULL");
                return;
            }
            if (v.nitems == 0) {
                dbuf_puts(&s->text, n->negated ? "(1 = 1)" : "(1 = 0)");
                return;
            }
            dbuf_puts(&s->text, "(");
            sql_value(s, n->first);
            dbuf_puts(&s->text, n->negated ? " NOT IN (" : " IN (");
            for (size_t i = 0; i < v.nitems; i++) {
                pol_expr_value item;
                if (i)
                    dbuf_puts(&s->text, ", ");
                memset(&item, 0, sizeof(item));
                set_str(&item, v.items[i]);
                sql_param(s, &item, POL_EXPR_STRING, SIZE_MAX);
            }
            dbuf_puts(&s->text, "))");
        }
        return;
    }
    default:
        /* A boolean value used as a condition. */
        if (n->kind == N_LITERAL && n->lit.type == POL_EXPR_NULL) {
            dbuf_puts(&s->text, pg ? "CAST(NULL AS BOOLEAN)" : "NULL");
            return;
        }
        dbuf_puts(&s->text, "(");
        sql_value(s, idx);
        dbuf_puts(&s->text, ")");
        return;
    }
}

int pol_expr_to_sql(const pol_expr *const *exprs, size_t n,
                    const pol_expr_sql_opts *opts,
                    const pol_expr_subject *subject,
                    const pol_expr_request *request, pol_expr_sql *out,
                    polis_error *err)
{
    struct sql_ctx s;
    char *all = NULL;
    int rc;

    if (out)
        memset(out, 0, sizeof(*out));
    if (out == NULL || opts == NULL || (n > 0 && exprs == NULL))
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "missing arguments to render SQL");
    if (opts->dialect != POL_SQL_SQLITE && opts->dialect != POL_SQL_POSTGRES)
        return polis_error_set(err, POLIS_EINVAL, NULL, "unknown dialect %d",
                               (int)opts->dialect);
    for (size_t i = 0; i < n; i++)
        if (exprs[i] == NULL || !exprs[i]->checked)
            return polis_error_set(err, POLIS_EINVAL, NULL,
                                   "expression %zu is not type-checked", i);
    memset(&s, 0, sizeof(s));
    s.opts = opts;
    s.subject = subject;
    s.request = request;
    s.first = opts->first_param ? opts->first_param : 1;
    s.text.max = POL_EXPR_SQL_MAX_LEN;
    s.extra.max = POL_EXPR_SQL_MAX_LEN;
    if (n == 0)
        dbuf_puts(&s.text, "1 = 1");
    for (size_t i = 0; i < n; i++) {
        s.e = exprs[i];
        if (i)
            dbuf_puts(&s.text, " AND ");
        sql_node(&s, exprs[i]->root);
    }
    if ((rc = s.text.rc) == 0 &&
        s.text.len + 1 + s.extra.len > POL_EXPR_SQL_MAX_LEN)
        rc = POLIS_ETOOBIG;
    if (rc == 0) {
        /* One block: the text, its NUL, then the translated patterns the
         * parameters point into. */
        all = malloc(s.text.len + 1 + s.extra.len + 1);
        if (all == NULL)
            rc = POLIS_ENOMEM;
    }
    if (rc) {
        free(s.text.p);
        free(s.extra.p);
        free(s.params);
        free(s.extra_off);
        if (rc == POLIS_ETOOBIG)
            return polis_error_set(err, rc, NULL,
                                   "rendered SQL exceeds %d bytes or %d "
                                   "parameters",
                                   POL_EXPR_SQL_MAX_LEN,
                                   POL_EXPR_SQL_MAX_PARAMS);
        return polis_error_set(err, rc, NULL, "cannot render SQL");
    }
    memcpy(all, s.text.p, s.text.len + 1);
    if (s.extra.len)
        memcpy(all + s.text.len + 1, s.extra.p, s.extra.len);
    all[s.text.len + 1 + s.extra.len] = '\0';
    for (size_t i = 0; i < s.nparams; i++)
        if (s.extra_off[i] != SIZE_MAX)
            s.params[i].u.str = all + s.text.len + 1 + s.extra_off[i];
    free(s.text.p);
    free(s.extra.p);
    free(s.extra_off);
    out->text = all;
    out->params = s.params;
    out->nparams = s.nparams;
    return 0;
}

void pol_expr_sql_free(pol_expr_sql *sql)
{
    if (sql == NULL)
        return;
    free(sql->text);
    free(sql->params);
    memset(sql, 0, sizeof(*sql));
}

int pol_expr_value_format(const pol_expr_value *v, char *buf, size_t len)
{
    int n;

    if (v == NULL || buf == NULL || len == 0)
        return POLIS_EINVAL;
    switch (v->type) {
    case POL_EXPR_STRING:
        if (v->len + 1 > len)
            return POLIS_ETOOBIG;
        memcpy(buf, v->u.str, v->len);
        buf[v->len] = '\0';
        return 0;
    case POL_EXPR_INTEGER:
        n = snprintf(buf, len, "%lld", (long long)v->u.i);
        break;
    case POL_EXPR_DECIMAL:
        n = snprintf(buf, len, "%.17g", v->u.d);
        break;
    case POL_EXPR_BOOLEAN:
        n = snprintf(buf, len, "%s", v->u.b ? "true" : "false");
        break;
    default:
        return POLIS_EINVAL;
    }
    return n < 0 || (size_t)n >= len ? POLIS_ETOOBIG : 0;
}
