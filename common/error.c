/*
 * error.c — codes, names and messages of the Polis error type (error.h).
 */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *polis_strerror(int code)
{
    switch (code) {
    case POLIS_OK:
        return "ok";
#define POLIS_ERR_MSG_(name, value, msg)                                       \
    case POLIS_##name:                                                         \
        return msg;
        POLIS_ERRNO_MAP(POLIS_ERR_MSG_)
#undef POLIS_ERR_MSG_
    }
    return "unknown error";
}

const char *polis_errname(int code)
{
    switch (code) {
    case POLIS_OK:
        return "OK";
#define POLIS_ERR_NAME_(name, value, msg)                                      \
    case POLIS_##name:                                                         \
        return #name;
        POLIS_ERRNO_MAP(POLIS_ERR_NAME_)
#undef POLIS_ERR_NAME_
    }
    return "EUNKNOWN";
}

int polis_error_set(polis_error *err, int code, const char *where,
                    const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    err->code = code;
    snprintf(err->where, sizeof(err->where), "%s", where ? where : "");
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    } else {
        snprintf(err->message, sizeof(err->message), "%s",
                 polis_strerror(code));
    }
    return code;
}

void polis_error_prefix_where(polis_error *err, const char *prefix)
{
    char tmp[POLIS_ERROR_WHERE_MAX];

    if (err == NULL || prefix == NULL || prefix[0] == '\0')
        return;
    if (err->where[0] == '\0')
        snprintf(tmp, sizeof(tmp), "%s", prefix);
    else
        snprintf(tmp, sizeof(tmp), "%s: %s", prefix, err->where);
    memcpy(err->where, tmp, sizeof(tmp));
}

const char *polis_error_format(const polis_error *err, char *buf, size_t len)
{
    const char *msg;

    if (len == 0)
        return buf;
    msg = err->message[0] ? err->message : polis_strerror(err->code);
    if (err->where[0])
        snprintf(buf, len, "%s: %s", err->where, msg);
    else
        snprintf(buf, len, "%s", msg);
    return buf;
}

void polis_error_clear(polis_error *err)
{
    if (err == NULL)
        return;
    err->code = POLIS_OK;
    err->where[0] = '\0';
    err->message[0] = '\0';
}
