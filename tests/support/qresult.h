/*
 * qresult.h — a query port's result as text, for the SQLite and
 * PostgreSQL query tests: an sq_sink that renders "col|col\n" and then one
 * "v|v\n" per row (NULL as NULL, blobs in hex), and a check that none of
 * a list of forbidden strings (values the caller may not see) is in it.
 */
#ifndef POLIS_TESTS_QRESULT_H
#define POLIS_TESTS_QRESULT_H

#include "common/error.h"
#include "sidecar/query_sqlite.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct qr_result {
    char *text; /* NUL-terminated after qr_init */
    size_t len, cap;
    size_t rows;
    polis_error err;
    int rc;
    sq_stats stats;
} qr_result;

/* Empty the result (text ""). */
void qr_init(qr_result *r);

/* A sink writing into r. */
sq_sink qr_sink(qr_result *r);

/* Whether any of `forbidden` (NULL-terminated, lower case) is in the text,
 * case-insensitively; each found is printed to stderr with the result. */
bool qr_leaks(const qr_result *r, const char *const *forbidden);

void qr_free(qr_result *r);

#endif
