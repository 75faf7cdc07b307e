/*
 * strbuf.c — bounded growable strings (strbuf.h).
 */
#include "common/strbuf.h"
#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_putn(strbuf *b, const char *s, size_t n)
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

void strbuf_puts(strbuf *b, const char *s)
{
    strbuf_putn(b, s, strlen(s));
}

void strbuf_printf(strbuf *b, const char *fmt, ...)
{
    char tmp[512], *big;
    va_list ap;
    int n;

    if (b->rc)
        return;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->rc = POLIS_EINTERNAL;
        return;
    }
    if ((size_t)n < sizeof(tmp)) {
        strbuf_putn(b, tmp, (size_t)n);
        return;
    }
    if (b->len + (size_t)n + 1 > b->max) {
        b->rc = POLIS_ETOOBIG;
        return;
    }
    big = malloc((size_t)n + 1);
    if (big == NULL) {
        b->rc = POLIS_ENOMEM;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    strbuf_putn(b, big, (size_t)n);
    free(big);
}

void strbuf_free(strbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->rc = 0;
}
