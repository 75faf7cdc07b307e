/*
 * strbuf.h — a growable string with a maximum size (curl's dynbuf idea):
 * appends past the maximum, or a failed allocation, set a sticky error
 * instead of growing without bound, so a builder can append freely and
 * check once at the end.
 */
#ifndef POLIS_STRBUF_H
#define POLIS_STRBUF_H

#include <stddef.h>

typedef struct strbuf {
    char *p;    /* NUL-terminated once anything was appended; may be NULL */
    size_t len; /* bytes in p, without the NUL */
    size_t cap;
    size_t max; /* most bytes it may hold, NUL included */
    int rc;     /* first failure (POLIS_ETOOBIG, POLIS_ENOMEM), sticky */
} strbuf;

#define STRBUF_INIT(max_bytes)                                                 \
    {                                                                          \
        NULL, 0, 0, (max_bytes), 0                                             \
    }

void strbuf_putn(strbuf *b, const char *s, size_t n);
void strbuf_puts(strbuf *b, const char *s);
void strbuf_printf(strbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Free the contents and reset to empty (the maximum stays). */
void strbuf_free(strbuf *b);

#endif
