/*
 * output.c — text tables, and resources rendered as JSON or YAML for
 * polisctl (see output.h and docs/cli.md for the formats).
 */
#include "cli/output.h"
#include "common/document.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define COLUMN_GAP 3

struct out_table {
    const char *headers[OUT_TABLE_MAX_COLS];
    size_t n_cols;
    char **cells; /* n_rows * n_cols, row-major */
    size_t n_rows, cap_rows;
};

out_table *out_table_new(const char *const *headers, size_t n_cols)
{
    out_table *t;

    if (n_cols == 0 || n_cols > OUT_TABLE_MAX_COLS)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    for (size_t i = 0; i < n_cols; i++)
        t->headers[i] = headers[i];
    t->n_cols = n_cols;
    return t;
}

int out_table_add(out_table *t, const char *const *cells)
{
    if (t->n_rows >= OUT_TABLE_MAX_ROWS)
        return -1;
    if (t->n_rows == t->cap_rows) {
        size_t cap = t->cap_rows ? t->cap_rows * 2 : 16;
        char **grown = realloc(t->cells, cap * t->n_cols * sizeof(*grown));
        if (grown == NULL)
            return -1;
        t->cells = grown;
        t->cap_rows = cap;
    }
    for (size_t c = 0; c < t->n_cols; c++) {
        char *copy = strdup(cells[c] ? cells[c] : "");
        if (copy == NULL) {
            for (size_t k = 0; k < c; k++)
                free(t->cells[t->n_rows * t->n_cols + k]);
            return -1;
        }
        t->cells[t->n_rows * t->n_cols + c] = copy;
    }
    t->n_rows++;
    return 0;
}

/* Cells are shown on one line: a newline in a value would break the
 * columns, so control characters print as '?'. */
static void print_cell(FILE *f, const char *s, size_t width, bool last)
{
    size_t n = 0;

    for (; *s; s++, n++)
        fputc(iscntrl((unsigned char)*s) ? '?' : *s, f);
    if (!last)
        for (; n < width + COLUMN_GAP; n++)
            fputc(' ', f);
}

void out_table_print(const out_table *t, FILE *f)
{
    size_t width[OUT_TABLE_MAX_COLS];

    for (size_t c = 0; c < t->n_cols; c++) {
        width[c] = strlen(t->headers[c]);
        for (size_t r = 0; r < t->n_rows; r++) {
            size_t w = strlen(t->cells[r * t->n_cols + c]);
            if (w > width[c])
                width[c] = w;
        }
    }
    for (size_t c = 0; c < t->n_cols; c++)
        print_cell(f, t->headers[c], width[c], c + 1 == t->n_cols);
    fputc('\n', f);
    for (size_t r = 0; r < t->n_rows; r++) {
        for (size_t c = 0; c < t->n_cols; c++)
            print_cell(f, t->cells[r * t->n_cols + c], width[c],
                       c + 1 == t->n_cols);
        fputc('\n', f);
    }
}

void out_table_free(out_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n_rows * t->n_cols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* The store keeps documents with sorted keys; show them in the order
 * people write them (apiVersion, kind, metadata, spec, then the rest). */
static json_t *document_order(json_t *doc)
{
    static const char *const first[] = {"apiVersion", "kind", "metadata",
                                        "spec"};
    json_t *o, *v;
    const char *key;

    if (!json_is_object(doc) || (o = json_object()) == NULL)
        return doc;
    for (size_t i = 0; i < sizeof(first) / sizeof(first[0]); i++)
        if ((v = json_object_get(doc, first[i])) != NULL)
            json_object_set(o, first[i], v);
    json_object_foreach(doc, key, v)
    {
        if (json_object_get(o, key) == NULL)
            json_object_set(o, key, v);
    }
    if (json_object_size(o) != json_object_size(doc)) {
        json_decref(o); /* out of memory: the sorted one will do */
        return doc;
    }
    json_decref(doc);
    return o;
}

json_t *out_resource_json(const Polis__V1__Resource *r, bool with_deleted)
{
    json_t *o = json_object(), *doc;
    const char *text = r->document_json ? r->document_json : "";
    int bad = 0;

    if (o == NULL)
        return NULL;
    doc = text[0] ? json_loads(text, JSON_DECODE_ANY, NULL) : json_null();
    /* A document the server stored but we cannot parse is still shown. */
    if (doc == NULL)
        doc = json_string(text);
    else
        doc = document_order(doc);
    bad |= json_object_set_new(o, "kind", json_string(r->kind ? r->kind : ""));
    bad |=
        json_object_set_new(o, "scope", json_string(r->scope ? r->scope : ""));
    bad |= json_object_set_new(o, "name", json_string(r->name ? r->name : ""));
    bad |= json_object_set_new(o, "revision", json_integer(r->revision));
    bad |= json_object_set_new(o, "generation", json_integer(r->generation));
    bad |= json_object_set_new(o, "author",
                               json_string(r->author ? r->author : ""));
    bad |= json_object_set_new(o, "updatedAt",
                               json_string(r->updated_at ? r->updated_at : ""));
    if (with_deleted)
        bad |= json_object_set_new(o, "deleted", json_boolean(r->deleted));
    bad |= json_object_set_new(o, "document", doc);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int out_print_value(cli_ctx *ctx, const json_t *value)
{
    char *text;

    if (ctx->output == CLI_OUTPUT_JSON)
        text = json_dumps(value, JSON_INDENT(2) | JSON_ENCODE_ANY);
    else
        text = doc_to_yaml(value);
    if (text == NULL)
        return cli_fail(ctx, "out of memory while formatting the output");
    fputs(text, ctx->out);
    if (text[0] && text[strlen(text) - 1] != '\n')
        fputc('\n', ctx->out);
    free(text);
    return 0;
}

const char *out_kind_lower(const char *kind, char *buf, size_t len)
{
    size_t i = 0;

    if (len == 0)
        return buf;
    for (; kind && kind[i] && i + 1 < len; i++)
        buf[i] = (char)tolower((unsigned char)kind[i]);
    buf[i] = '\0';
    return buf;
}
