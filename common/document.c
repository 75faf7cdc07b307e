/*
 * document.c — read resource documents (document.h): YAML through libyaml's
 * event parser, resolved with the YAML 1.2 core schema, or JSON through
 * Jansson, into Jansson values; and write Jansson values back as block YAML
 * that reads back to the same values.
 */
#include "common/document.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* Deep enough for any sane resource, shallow enough that nobody's recursive
 * walk of a document can run out of stack. */
#define DOC_MAX_DEPTH 64

#define YAML_TAG_STR "tag:yaml.org,2002:str"
#define YAML_TAG_MAP "tag:yaml.org,2002:map"
#define YAML_TAG_SEQ "tag:yaml.org,2002:seq"

/* ---- sizes and positions ---------------------------------------------- */

/* "512 bytes", "3.5 KiB", "2.3 MiB", "1 MiB". */
static void human_size(size_t n, char *buf, size_t len)
{
    const char *unit = "MiB";
    double v;
    int prec;

    if (n < 1024) {
        snprintf(buf, len, "%zu bytes", n);
        return;
    }
    if (n < 1024 * 1024) {
        v = (double)n / 1024.0;
        unit = "KiB";
    } else {
        v = (double)n / (1024.0 * 1024.0);
    }
    prec = (v == floor(v)) ? 0 : 1;
    snprintf(buf, len, "%.*f %s", prec, v, unit);
}

static int too_big(polis_error *err, const char *source, size_t have,
                   size_t max, bool at_least)
{
    char h[32], m[32];

    human_size(have, h, sizeof(h));
    human_size(max, m, sizeof(m));
    return polis_error_set(err, POLIS_ETOOBIG, source,
                           "document is %s%s, over the %s limit",
                           at_least ? "more than " : "", h, m);
}

/* 1-based line and column (in characters) of a byte offset. */
static void offset_to_linecol(const char *data, size_t len, size_t off,
                              size_t *line, size_t *col)
{
    size_t l = 1, c = 1;

    for (size_t i = 0; i < off && i < len; i++) {
        unsigned char b = (unsigned char)data[i];
        if (b == '\n') {
            l++;
            c = 1;
        } else if ((b & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

static int error_at(polis_error *err, int code, const char *source, size_t line,
                    size_t col, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static int error_at(polis_error *err, int code, const char *source, size_t line,
                    size_t col, const char *fmt, ...)
{
    char where[POLIS_ERROR_WHERE_MAX];
    char msg[POLIS_ERROR_MSG_MAX];
    va_list ap;

    snprintf(where, sizeof(where), "%s:%zu:%zu", source, line, col);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return polis_error_set(err, code, where, "%s", msg);
}

/* ---- UTF-8 ------------------------------------------------------------- */

int doc_utf8_valid(const char *data, size_t len, size_t *bad_offset)
{
    const unsigned char *s = (const unsigned char *)data;
    size_t i = 0;

    while (i < len) {
        unsigned char b = s[i];
        size_t need;
        uint32_t cp, min;

        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xC2 && b <= 0xDF) {
            need = 1;
            cp = b & 0x1F;
            min = 0x80;
        } else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            cp = b & 0x0F;
            min = 0x800;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            cp = b & 0x07;
            min = 0x10000;
        } else {
            goto bad; /* continuation byte, C0/C1 overlong lead, > U+10FFFF */
        }
        if (len - i <= need)
            goto bad; /* truncated sequence */
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                goto bad;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto bad;
        i += need + 1;
    }
    return 1;
bad:
    if (bad_offset)
        *bad_offset = i;
    return 0;
}

char *doc_utf8_sanitize(char *dst, size_t cap, const char *src)
{
    const unsigned char *s = (const unsigned char *)(src ? src : "");
    size_t o = 0;

    if (cap == 0)
        return dst;
    while (*s) {
        unsigned char b = *s;
        size_t len = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
        size_t have = 1;

        while (have < len && s[have])
            have++;
        if (b < 0x80 || have < len ||
            !doc_utf8_valid((const char *)s, len, NULL))
            len = 1; /* one byte: ASCII, or replaced below */
        if (o + len >= cap)
            break;
        if (len == 1 && (b < 0x20 || b == 0x7F || b >= 0x80))
            dst[o] = '?';
        else
            memcpy(dst + o, s, len);
        o += len;
        s += len;
    }
    dst[o] = '\0';
    return dst;
}

/* ---- YAML 1.2 core schema ---------------------------------------------- */

enum scalar_type { SC_STRING, SC_NULL, SC_BOOL, SC_INT, SC_FLOAT, SC_NONFIN };

static bool is_one_of(const char *s, const char *const *words)
{
    for (; *words; words++)
        if (strcmp(s, *words) == 0)
            return true;
    return false;
}

static bool all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* [-+]? ( \.[0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )? */
static bool looks_float(const char *s)
{
    size_t n = 0;
    bool mant = false;

    if (*s == '-' || *s == '+')
        s++;
    while (isdigit((unsigned char)s[n]))
        n++;
    mant = n > 0;
    s += n;
    if (*s == '.') {
        s++;
        n = 0;
        while (isdigit((unsigned char)s[n]))
            n++;
        if (!mant && n == 0)
            return false;
        s += n;
    } else if (!mant) {
        return false;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '-' || *s == '+')
            s++;
        n = 0;
        while (isdigit((unsigned char)s[n]))
            n++;
        if (n == 0)
            return false;
        s += n;
    }
    return *s == '\0';
}

/*
 * How a plain scalar resolves.  Integers are decimal and must fit int64
 * (others stay strings, so no silent wrap-around); hex and octal stay
 * strings too, which keeps things like "0x1F" or ids intact.
 */
static enum scalar_type resolve_plain(const char *s, long long *iv, double *dv)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    static const char *const infs[] = {
        ".inf",  ".Inf",  ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
        "-.Inf", "-.INF", ".nan", ".NaN",  ".NAN",  NULL};
    const char *d = s;

    if (is_one_of(s, nulls))
        return SC_NULL;
    if (is_one_of(s, trues)) {
        *iv = 1;
        return SC_BOOL;
    }
    if (is_one_of(s, falses)) {
        *iv = 0;
        return SC_BOOL;
    }
    if (is_one_of(s, infs))
        return SC_NONFIN;
    if (*d == '-' || *d == '+')
        d++;
    if (all_digits(d, strlen(d))) {
        char *end;
        errno = 0;
        *iv = strtoll(s, &end, 10);
        if (errno == ERANGE || *end != '\0')
            return SC_STRING;
        return SC_INT;
    }
    if (looks_float(s)) {
        char *end;
        errno = 0;
        *dv = strtod(s, &end);
        if (*end != '\0')
            return SC_STRING;
        if (!isfinite(*dv))
            return SC_NONFIN;
        return SC_FLOAT;
    }
    return SC_STRING;
}

/* ---- YAML → JSON ------------------------------------------------------- */

typedef struct frame {
    json_t *node;    /* object or array being filled (owned) */
    json_t *lines;   /* objects: key -> line of its first occurrence */
    char *key;       /* objects: key waiting for its value (owned) */
    size_t key_line; /* where `key` was */
    size_t key_col;
} frame;

typedef struct yaml_reader {
    const char *source;
    polis_error *err;
    frame stack[DOC_MAX_DEPTH + 1];
    int depth;
    size_t docno;
    json_t *root; /* finished document root (owned) */
} yaml_reader;

static size_t mline(const yaml_mark_t *m)
{
    return m->line + 1;
}

static size_t mcol(const yaml_mark_t *m)
{
    return m->column + 1;
}

/* "tag:yaml.org,2002:int" -> "!!int", as the user wrote it. */
static const char *short_tag(const char *tag, char *buf, size_t len)
{
    static const char prefix[] = "tag:yaml.org,2002:";

    if (strncmp(tag, prefix, sizeof(prefix) - 1) != 0)
        return tag;
    snprintf(buf, len, "!!%s", tag + sizeof(prefix) - 1);
    return buf;
}

static void frame_clear(frame *f)
{
    json_decref(f->node);
    json_decref(f->lines);
    free(f->key);
    memset(f, 0, sizeof(*f));
}

static const char *node_kind_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "a mapping";
    case JSON_ARRAY:
        return "a sequence";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "a value";
}

/* Hand a finished value (reference stolen) to the enclosing collection, or
 * make it the document root. */
static int attach(yaml_reader *r, json_t *v, const yaml_event_t *ev)
{
    frame *f;

    if (r->depth == 0) {
        if (!json_is_object(v)) {
            int rc = error_at(r->err, POLIS_EPARSE, r->source,
                              mline(&ev->start_mark), mcol(&ev->start_mark),
                              "document %zu is %s, not a mapping", r->docno,
                              node_kind_name(v));
            json_decref(v);
            return rc;
        }
        r->root = v;
        return 0;
    }
    f = &r->stack[r->depth - 1];
    if (json_is_array(f->node)) {
        if (json_array_append_new(f->node, v) != 0)
            return polis_error_set(r->err, POLIS_ENOMEM, r->source, NULL);
        return 0;
    }
    if (f->key == NULL) {
        /* this value is a key */
        const char *k;
        json_t *first;

        if (!json_is_string(v)) {
            json_decref(v);
            return error_at(r->err, POLIS_EPARSE, r->source,
                            mline(&ev->start_mark), mcol(&ev->start_mark),
                            "mapping keys must be scalars");
        }
        k = json_string_value(v);
        first = json_object_get(f->lines, k);
        if (first) {
            int rc = error_at(
                r->err, POLIS_EPARSE, r->source, mline(&ev->start_mark),
                mcol(&ev->start_mark),
                "duplicate key \"%s\" (first at line %" JSON_INTEGER_FORMAT ")",
                k, json_integer_value(first));
            json_decref(v);
            return rc;
        }
        f->key = strdup(k);
        json_decref(v);
        if (f->key == NULL ||
            json_object_set_new(
                f->lines, f->key,
                json_integer((json_int_t)mline(&ev->start_mark))) != 0)
            return polis_error_set(r->err, POLIS_ENOMEM, r->source, NULL);
        return 0;
    }
    if (json_object_set_new(f->node, f->key, v) != 0)
        return polis_error_set(r->err, POLIS_ENOMEM, r->source, NULL);
    free(f->key);
    f->key = NULL;
    return 0;
}

/* Keys are taken verbatim as strings (a key `true` is the string "true");
 * values resolve by the core schema unless quoted or tagged !!str. */
static int scalar_event(yaml_reader *r, const yaml_event_t *ev)
{
    const char *text = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    char tagbuf[64];
    bool is_key = r->depth > 0 && json_is_object(r->stack[r->depth - 1].node) &&
                  r->stack[r->depth - 1].key == NULL;
    json_t *v = NULL;
    long long iv = 0;
    double dv = 0;

    if (memchr(text, '\0', n))
        return error_at(r->err, POLIS_EPARSE, r->source, mline(&ev->start_mark),
                        mcol(&ev->start_mark),
                        "NUL characters are not allowed");
    if (tag && strcmp(tag, YAML_TAG_STR) != 0)
        return error_at(r->err, POLIS_EPARSE, r->source, mline(&ev->start_mark),
                        mcol(&ev->start_mark),
                        "unsupported tag \"%s\" (only !!str is allowed)",
                        short_tag(tag, tagbuf, sizeof(tagbuf)));
    if (is_key || tag || ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
        v = json_stringn(text, n);
    } else {
        switch (resolve_plain(text, &iv, &dv)) {
        case SC_NULL:
            v = json_null();
            break;
        case SC_BOOL:
            v = json_boolean(iv);
            break;
        case SC_INT:
            v = json_integer((json_int_t)iv);
            break;
        case SC_FLOAT:
            v = json_real(dv);
            break;
        case SC_NONFIN:
            return error_at(r->err, POLIS_EPARSE, r->source,
                            mline(&ev->start_mark), mcol(&ev->start_mark),
                            "\"%s\" is not a finite number (quote it to "
                            "use it as a string)",
                            text);
        case SC_STRING:
            v = json_stringn(text, n);
            break;
        }
    }
    if (v == NULL)
        return polis_error_set(r->err, POLIS_ENOMEM, r->source, NULL);
    return attach(r, v, ev);
}

static int start_collection(yaml_reader *r, const yaml_event_t *ev, bool is_map)
{
    const char *tag = (const char *)(is_map ? ev->data.mapping_start.tag
                                            : ev->data.sequence_start.tag);
    char tagbuf[64];
    frame *f;

    if (r->depth > 0 && json_is_object(r->stack[r->depth - 1].node) &&
        r->stack[r->depth - 1].key == NULL)
        return error_at(r->err, POLIS_EPARSE, r->source, mline(&ev->start_mark),
                        mcol(&ev->start_mark), "mapping keys must be scalars");
    if (tag && strcmp(tag, is_map ? YAML_TAG_MAP : YAML_TAG_SEQ) != 0)
        return error_at(r->err, POLIS_EPARSE, r->source, mline(&ev->start_mark),
                        mcol(&ev->start_mark), "unsupported tag \"%s\"",
                        short_tag(tag, tagbuf, sizeof(tagbuf)));
    if (r->depth >= DOC_MAX_DEPTH)
        return error_at(r->err, POLIS_EPARSE, r->source, mline(&ev->start_mark),
                        mcol(&ev->start_mark), "nesting deeper than %d levels",
                        DOC_MAX_DEPTH);
    if (r->depth == 0 && !is_map)
        return error_at(r->err, POLIS_EPARSE, r->source, mline(&ev->start_mark),
                        mcol(&ev->start_mark),
                        "document %zu is a sequence, not a mapping", r->docno);
    f = &r->stack[r->depth++];
    memset(f, 0, sizeof(*f));
    f->node = is_map ? json_object() : json_array();
    f->lines = is_map ? json_object() : NULL;
    if (f->node == NULL || (is_map && f->lines == NULL))
        return polis_error_set(r->err, POLIS_ENOMEM, r->source, NULL);
    return 0;
}

static int end_collection(yaml_reader *r, const yaml_event_t *ev)
{
    frame *f = &r->stack[--r->depth];
    json_t *v = f->node;

    f->node = NULL;
    frame_clear(f);
    return attach(r, v, ev);
}

static const char *anchor_of(const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return (const char *)ev->data.scalar.anchor;
    case YAML_MAPPING_START_EVENT:
        return (const char *)ev->data.mapping_start.anchor;
    case YAML_SEQUENCE_START_EVENT:
        return (const char *)ev->data.sequence_start.anchor;
    default:
        return NULL;
    }
}

static int yaml_syntax_error(yaml_reader *r, const yaml_parser_t *p,
                             const char *data, size_t len)
{
    size_t line, col;
    const char *problem = p->problem ? p->problem : "invalid YAML";

    if (p->error == YAML_READER_ERROR) {
        offset_to_linecol(data, len, p->problem_offset, &line, &col);
        return error_at(r->err, POLIS_EPARSE, r->source, line, col, "%s",
                        problem);
    }
    if (p->error == YAML_MEMORY_ERROR)
        return polis_error_set(r->err, POLIS_ENOMEM, r->source, NULL);
    if (p->context)
        return error_at(r->err, POLIS_EPARSE, r->source,
                        mline(&p->problem_mark), mcol(&p->problem_mark),
                        "%s (%s at line %zu)", problem, p->context,
                        mline(&p->context_mark));
    return error_at(r->err, POLIS_EPARSE, r->source, mline(&p->problem_mark),
                    mcol(&p->problem_mark), "%s", problem);
}

static int parse_yaml(const char *source, const char *data, size_t len,
                      json_t *docs, polis_error *err)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    yaml_reader r;
    int rc = 0;
    bool done = false;

    memset(&r, 0, sizeof(r));
    r.source = source;
    r.err = err;
    if (!yaml_parser_initialize(&parser))
        return polis_error_set(err, POLIS_ENOMEM, source, NULL);
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);

    while (!done && rc == 0) {
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = yaml_syntax_error(&r, &parser, data, len);
            break;
        }
        if (anchor_of(&ev) || ev.type == YAML_ALIAS_EVENT) {
            rc = error_at(err, POLIS_EPARSE, source, mline(&ev.start_mark),
                          mcol(&ev.start_mark),
                          "anchors and aliases are not allowed");
            yaml_event_delete(&ev);
            break;
        }
        switch (ev.type) {
        case YAML_DOCUMENT_START_EVENT:
            r.docno++;
            break;
        case YAML_DOCUMENT_END_EVENT:
            if (r.root) {
                if (json_array_append_new(docs, r.root) != 0)
                    rc = polis_error_set(err, POLIS_ENOMEM, source, NULL);
                r.root = NULL;
            }
            break;
        case YAML_SCALAR_EVENT:
            /* An empty document is a lone empty plain scalar: skip it. */
            if (r.depth == 0 && ev.data.scalar.length == 0 &&
                ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                ev.data.scalar.tag == NULL)
                break;
            rc = scalar_event(&r, &ev);
            break;
        case YAML_MAPPING_START_EVENT:
            rc = start_collection(&r, &ev, true);
            break;
        case YAML_SEQUENCE_START_EVENT:
            rc = start_collection(&r, &ev, false);
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            rc = end_collection(&r, &ev);
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    while (r.depth > 0)
        frame_clear(&r.stack[--r.depth]);
    json_decref(r.root);
    yaml_parser_delete(&parser);
    return rc;
}

/* ---- JSON -------------------------------------------------------------- */

static int json_depth_ok(const json_t *v, int depth)
{
    const char *k;
    json_t *child;
    size_t i;

    if (depth > DOC_MAX_DEPTH)
        return 0;
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, k, child)
        {
            if (!json_depth_ok(child, depth + 1))
                return 0;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, child)
        {
            if (!json_depth_ok(child, depth + 1))
                return 0;
        }
    }
    return 1;
}

static int parse_json(const char *source, const char *data, size_t len,
                      json_t *docs, polis_error *err)
{
    json_error_t jerr;
    json_t *v;
    size_t i;
    json_t *item;

    /* Jansson bounds its own recursion (2048 levels) while parsing; ours
     * is checked on the result. */
    v = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (v == NULL)
        return error_at(
            err, POLIS_EPARSE, source, jerr.line > 0 ? (size_t)jerr.line : 1,
            jerr.column > 0 ? (size_t)jerr.column : 1, "%s", jerr.text);
    if (json_is_object(v)) {
        if (!json_depth_ok(v, 1)) {
            json_decref(v);
            return polis_error_set(err, POLIS_EPARSE, source,
                                   "document 1: nesting deeper than %d "
                                   "levels",
                                   DOC_MAX_DEPTH);
        }
        json_array_append_new(docs, v);
        return 0;
    }
    if (!json_is_array(v)) {
        polis_error_set(err, POLIS_EPARSE, source,
                        "expected a JSON object or an array of objects, "
                        "found %s",
                        node_kind_name(v));
        json_decref(v);
        return POLIS_EPARSE;
    }
    json_array_foreach(v, i, item)
    {
        if (!json_is_object(item)) {
            polis_error_set(err, POLIS_EPARSE, source,
                            "document %zu is %s, not an object", i + 1,
                            node_kind_name(item));
            json_decref(v);
            return POLIS_EPARSE;
        }
        if (!json_depth_ok(item, 2)) {
            json_decref(v);
            return polis_error_set(err, POLIS_EPARSE, source,
                                   "document %zu: nesting deeper than %d "
                                   "levels",
                                   i + 1, DOC_MAX_DEPTH);
        }
        if (json_array_append(docs, item) != 0) {
            json_decref(v);
            return polis_error_set(err, POLIS_ENOMEM, source, NULL);
        }
    }
    json_decref(v);
    return 0;
}

/* ---- entry points ------------------------------------------------------ */

int doc_parse(const char *source, const char *data, size_t len,
              size_t max_bytes, json_t **out, polis_error *err)
{
    json_t *docs;
    size_t bad, line, col, i = 0;
    int rc;

    if (source == NULL)
        source = "<input>";
    if (out == NULL || (data == NULL && len > 0))
        return polis_error_set(err, POLIS_EINVAL, source, "no output");
    *out = NULL;
    if (max_bytes == 0)
        max_bytes = DOC_DEFAULT_MAX_BYTES;
    if (len > max_bytes)
        return too_big(err, source, len, max_bytes, false);
    if (!doc_utf8_valid(data, len, &bad)) {
        offset_to_linecol(data, len, bad, &line, &col);
        return error_at(err, POLIS_EPARSE, source, line, col,
                        "invalid UTF-8 at byte offset %zu", bad);
    }
    docs = json_array();
    if (docs == NULL)
        return polis_error_set(err, POLIS_ENOMEM, source, NULL);
    /* A UTF-8 byte order mark is harmless; Jansson does not accept one. */
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0)
        i = 3;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' ||
                       data[i] == '\n'))
        i++;
    if (i < len && (data[i] == '{' || data[i] == '['))
        rc = parse_json(source, data + i, len - i, docs, err);
    else
        rc = parse_yaml(source, data, len, docs, err);
    if (rc != 0) {
        json_decref(docs);
        return rc;
    }
    *out = docs;
    return 0;
}

int doc_parse_file(const char *path, size_t max_bytes, json_t **out,
                   polis_error *err)
{
    struct stat st;
    char *buf = NULL;
    size_t used = 0, cap;
    int fd, rc;
    bool is_stdin = path && strcmp(path, "-") == 0;

    if (path == NULL || out == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "no path");
    *out = NULL;
    if (max_bytes == 0)
        max_bytes = DOC_DEFAULT_MAX_BYTES;
    fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return polis_error_set(err,
                               errno == ENOENT ? POLIS_ENOTFOUND : POLIS_EIO,
                               path, "%s", strerror(errno));
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        rc = polis_error_set(err, POLIS_EINVAL, path, "is a directory");
        goto out;
    }
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (uintmax_t)st.st_size > (uintmax_t)max_bytes) {
        rc = too_big(err, path, (size_t)st.st_size, max_bytes, false);
        goto out;
    }
    /* Read at most max_bytes + 1: pipes have no size to check up front. */
    cap = max_bytes + 1;
    buf = malloc(cap);
    if (buf == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, path, NULL);
        goto out;
    }
    while (used < cap) {
        ssize_t n = read(fd, buf + used, cap - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = polis_error_set(err, POLIS_EIO, path, "%s", strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    if (used > max_bytes) {
        rc = too_big(err, path, max_bytes, max_bytes, true);
        goto out;
    }
    rc = doc_parse(path, buf, used, max_bytes, out, err);
out:
    free(buf);
    if (!is_stdin)
        close(fd);
    return rc;
}

/* ---- JSON → YAML ------------------------------------------------------- */

typedef struct out_buf {
    char *data;
    size_t len, cap;
    bool failed;
} out_buf;

static int write_cb(void *ctx, unsigned char *bytes, size_t size)
{
    out_buf *b = ctx;

    if (b->len + size + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;
        while (cap < b->len + size + 1)
            cap *= 2;
        p = realloc(b->data, cap);
        if (p == NULL) {
            b->failed = true;
            return 0;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, size);
    b->len += size;
    b->data[b->len] = '\0';
    return 1;
}

/*
 * Would this string, written plain, read back as something else — here, or
 * in a YAML 1.1 reader (yes/no/on/off, 0x1F, 0o17)?  Then quote it.
 */
static bool needs_quotes(const char *s, size_t n)
{
    static const char *const yaml11[] = {"yes", "Yes", "YES", "no", "No",
                                         "NO",  "on",  "On",  "ON", "off",
                                         "Off", "OFF", NULL};
    long long iv;
    double dv;

    if (n == 0 || strlen(s) != n)
        return true;
    if (resolve_plain(s, &iv, &dv) != SC_STRING || is_one_of(s, yaml11))
        return true;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'o' || s[1] == 'X'))
        return true;
    /* Numbers-with-extras (1_000, 1e5x) and anything starting like a
     * number: cheap to quote, saves every reader a guess. */
    return isdigit((unsigned char)s[0]) ||
           ((s[0] == '-' || s[0] == '+' || s[0] == '.') &&
            isdigit((unsigned char)s[1]));
}

static int emit_scalar(yaml_emitter_t *em, const char *text, size_t n,
                       yaml_scalar_style_t style)
{
    yaml_event_t ev;

    if (!yaml_scalar_event_initialize(&ev, NULL, NULL,
                                      (yaml_char_t *)(uintptr_t)text, (int)n, 1,
                                      1, style))
        return 0;
    return yaml_emitter_emit(em, &ev);
}

static int emit_string(yaml_emitter_t *em, const char *s, size_t n)
{
    yaml_scalar_style_t style = YAML_ANY_SCALAR_STYLE;

    if (needs_quotes(s, n))
        style = YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    else if (memchr(s, '\n', n))
        style = YAML_LITERAL_SCALAR_STYLE; /* libyaml falls back if unfit */
    return emit_scalar(em, s, n, style);
}

/* Shortest of %.15g..%.17g that reads back exactly, always with a '.',
 * 'e' so that it reads back as a float rather than an integer. */
static void format_real(double d, char *buf, size_t len)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (strpbrk(buf, ".eEn") == NULL && strlen(buf) + 3 <= len)
        strcat(buf, ".0");
}

static int emit_value(yaml_emitter_t *em, const json_t *v)
{
    yaml_event_t ev;
    char num[64];
    const char *k;
    json_t *child;
    size_t i;

    switch (json_typeof(v)) {
    case JSON_OBJECT:
        if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1,
                                                 YAML_BLOCK_MAPPING_STYLE) ||
            !yaml_emitter_emit(em, &ev))
            return 0;
        json_object_foreach((json_t *)v, k, child)
        {
            if (!emit_string(em, k, strlen(k)) || !emit_value(em, child))
                return 0;
        }
        return yaml_mapping_end_event_initialize(&ev) &&
               yaml_emitter_emit(em, &ev);
    case JSON_ARRAY:
        if (!yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1,
                                                  YAML_BLOCK_SEQUENCE_STYLE) ||
            !yaml_emitter_emit(em, &ev))
            return 0;
        json_array_foreach(v, i, child)
        {
            if (!emit_value(em, child))
                return 0;
        }
        return yaml_sequence_end_event_initialize(&ev) &&
               yaml_emitter_emit(em, &ev);
    case JSON_STRING:
        return emit_string(em, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
                 json_integer_value(v));
        return emit_scalar(em, num, strlen(num), YAML_PLAIN_SCALAR_STYLE);
    case JSON_REAL:
        format_real(json_real_value(v), num, sizeof(num));
        return emit_scalar(em, num, strlen(num), YAML_PLAIN_SCALAR_STYLE);
    case JSON_TRUE:
        return emit_scalar(em, "true", 4, YAML_PLAIN_SCALAR_STYLE);
    case JSON_FALSE:
        return emit_scalar(em, "false", 5, YAML_PLAIN_SCALAR_STYLE);
    case JSON_NULL:
        return emit_scalar(em, "null", 4, YAML_PLAIN_SCALAR_STYLE);
    }
    return 0;
}

/* Nesting is bounded by the caller's value; documents from doc_parse are at
 * most DOC_MAX_DEPTH deep. */
char *doc_to_yaml(const json_t *value)
{
    yaml_emitter_t em;
    yaml_event_t ev;
    out_buf b = {0};
    int ok;

    if (value == NULL || !yaml_emitter_initialize(&em))
        return NULL;
    yaml_emitter_set_output(&em, write_cb, &b);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, -1);
    yaml_emitter_set_indent(&em, 2);
    ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) &&
         yaml_emitter_emit(&em, &ev) &&
         yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) &&
         yaml_emitter_emit(&em, &ev) && emit_value(&em, value) &&
         yaml_document_end_event_initialize(&ev, 1) &&
         yaml_emitter_emit(&em, &ev) && yaml_stream_end_event_initialize(&ev) &&
         yaml_emitter_emit(&em, &ev) && yaml_emitter_flush(&em);
    yaml_emitter_delete(&em);
    if (!ok || b.failed) {
        free(b.data);
        return NULL;
    }
    if (b.data == NULL)
        b.data = strdup("");
    return b.data;
}
