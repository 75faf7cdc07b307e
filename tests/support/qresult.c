/*
 * qresult.c — query results as text for the query tests (qresult.h).
 */
#include "tests/support/qresult.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put(qr_result *r, const char *s, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        size_t cap = (r->len + n + 1) * 2;
        char *p = realloc(r->text, cap);
        if (p == NULL)
            return; /* the text comes out short: the test's check fails */
        r->text = p;
        r->cap = cap;
    }
    memcpy(r->text + r->len, s, n);
    r->len += n;
    r->text[r->len] = '\0';
}

void qr_init(qr_result *r)
{
    memset(r, 0, sizeof(*r));
    put(r, "", 0);
}

static int on_columns(void *ctx, size_t n, const char *const *names)
{
    qr_result *r = ctx;

    for (size_t i = 0; i < n; i++) {
        if (i)
            put(r, "|", 1);
        put(r, names[i], strlen(names[i]));
    }
    put(r, "\n", 1);
    return 0;
}

static int on_row(void *ctx, size_t n, const sq_value *v)
{
    qr_result *r = ctx;
    char num[64];

    for (size_t i = 0; i < n; i++) {
        if (i)
            put(r, "|", 1);
        switch (v[i].type) {
        case SQ_INTEGER:
            snprintf(num, sizeof(num), "%lld", (long long)v[i].i);
            put(r, num, strlen(num));
            break;
        case SQ_REAL:
            snprintf(num, sizeof(num), "%g", v[i].d);
            put(r, num, strlen(num));
            break;
        case SQ_TEXT:
            put(r, v[i].p, v[i].len);
            break;
        case SQ_BLOB:
            for (size_t k = 0; k < v[i].len; k++) {
                snprintf(num, sizeof(num), "%02x",
                         ((const unsigned char *)v[i].p)[k]);
                put(r, num, 2);
            }
            break;
        default:
            put(r, "NULL", 4);
        }
    }
    put(r, "\n", 1);
    r->rows++;
    return 0;
}

sq_sink qr_sink(qr_result *r)
{
    sq_sink s = {on_columns, on_row, r};

    return s;
}

bool qr_leaks(const qr_result *r, const char *const *forbidden)
{
    char *copy = strdup(r->text ? r->text : "");
    bool found = false;

    for (char *p = copy; p && *p; p++)
        *p = (char)tolower((unsigned char)*p);
    for (int i = 0; copy && forbidden[i]; i++)
        if (strstr(copy, forbidden[i]) != NULL) {
            fprintf(stderr, "\nLEAK of \"%s\" in:\n%s\n", forbidden[i],
                    r->text);
            found = true;
        }
    free(copy);
    return found;
}

void qr_free(qr_result *r)
{
    free(r->text);
    r->text = NULL;
    r->len = r->cap = 0;
}
