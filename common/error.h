/*
 * error.h — the one error type of Polis: a negative code from one X-macro
 * table, a message, and where it happened (a document field path, a
 * file:line, an etcd endpoint...).  Libraries return the code and fill a
 * caller-provided struct; they never print.
 */
#ifndef POLIS_ERROR_H
#define POLIS_ERROR_H

#include <stddef.h>

/* Append-only: codes are part of the wire protocol (sent in RPC errors). */
#define POLIS_ERRNO_MAP(X)                                                     \
    X(EINVAL, -1, "invalid argument")                                          \
    X(ENOMEM, -2, "out of memory")                                             \
    X(ENOTFOUND, -3, "not found")                                              \
    X(ECONFLICT, -4, "conflict")                                               \
    X(EUNAVAIL, -5, "unavailable")                                             \
    X(ETIMEDOUT, -6, "timed out")                                              \
    X(ETOOBIG, -7, "too large")                                                \
    X(EPARSE, -8, "parse error")                                               \
    X(EIO, -9, "I/O error")                                                    \
    X(EINTERNAL, -10, "internal error")                                        \
    X(EDENIED, -11, "permission denied")                                       \
    X(EUNAUTH, -12, "unauthenticated")                                         \
    X(ECANCELED, -13, "canceled")                                              \
    X(EEXIST, -14, "already exists")                                           \
    X(ECOMPACTED, -15, "revision compacted")                                   \
    X(EPROTO, -16, "protocol error")                                           \
    X(EAGAIN, -17, "try again")                                                \
    X(EUNIMPL, -18, "unimplemented")

enum polis_code {
    POLIS_OK = 0,
#define POLIS_ERR_ENUM_(name, value, msg) POLIS_##name = (value),
    POLIS_ERRNO_MAP(POLIS_ERR_ENUM_)
#undef POLIS_ERR_ENUM_
};

#define POLIS_ERROR_WHERE_MAX 256
#define POLIS_ERROR_MSG_MAX   768

/*
 * What went wrong.  `where` says the place ("orders.yaml: spec.schema[3].type",
 * "etcd http://127.0.0.1:2379"), `message` the reason.  Zero-initialise
 * (`polis_error err = {0};`) before use.
 */
typedef struct polis_error {
    int code;
    char where[POLIS_ERROR_WHERE_MAX];
    char message[POLIS_ERROR_MSG_MAX];
} polis_error;

/* Short message for a code ("not found"); never NULL. */
const char *polis_strerror(int code);

/* The code's name ("ENOTFOUND"); never NULL. */
const char *polis_errname(int code);

/*
 * Fill `err` (if not NULL) with code, place and a printf-style message, and
 * return `code`, so that `return polis_error_set(err, POLIS_EINVAL, ...)`
 * reads naturally.  `where` may be NULL.
 */
int polis_error_set(polis_error *err, int code, const char *where,
                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Prefix err->where with `prefix` and ": " (e.g. the file name). */
void polis_error_prefix_where(polis_error *err, const char *prefix);

/*
 * "where: message" (or just the message when there is no place, or the
 * code's strerror when there is no message) into buf; returns buf.
 */
const char *polis_error_format(const polis_error *err, char *buf, size_t len);

/* Clear an error back to POLIS_OK. */
void polis_error_clear(polis_error *err);

#endif
