/*
 * log.c — logfmt / JSON lines on stderr (log.h).  One fprintf per event, so
 * lines from different threads never interleave (stdio locks the stream).
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static enum log_level log_min_level = LOG_LEVEL_INFO;
static enum log_format log_out_format = LOG_FORMAT_TEXT;

static const char *const level_names[] = {"debug", "info", "warn", "error",
                                          "off"};

void log_setup(enum log_level level, enum log_format format)
{
    log_min_level = level;
    log_out_format = format;
}

int log_level_parse(const char *name)
{
    for (int i = 0; i <= LOG_LEVEL_OFF; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    if (strcasecmp(name, "warning") == 0)
        return LOG_LEVEL_WARN;
    return -1;
}

bool log_enabled(enum log_level level)
{
    return level >= log_min_level && log_min_level != LOG_LEVEL_OFF;
}

static void log_timestamp(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

/* Append s to out as the inside of a JSON/logfmt string. */
static size_t quote_into(char *out, size_t cap, size_t n, const char *s)
{
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

/*
 * The pairs are "k=v k2=\"quoted value\"" as the caller formatted them;
 * values may hold anything (a peer's error text), so a quoted value runs to
 * its closing quote, with \" and \\ inside it unescaped here.
 */
static const char *next_pair(const char *p, char *key, size_t klen, char *val,
                             size_t vlen)
{
    size_t k = 0, v = 0;

    while (*p == ' ')
        p++;
    if (*p == '\0')
        return NULL;
    while (*p && *p != '=' && *p != ' ') {
        if (k + 1 < klen)
            key[k++] = *p;
        p++;
    }
    key[k] = '\0';
    if (*p != '=') {
        val[0] = '\0';
        return p;
    }
    p++;
    if (*p == '"') {
        for (p++; *p && *p != '"'; p++) {
            if (*p == '\\' && p[1])
                p++;
            if (v + 1 < vlen)
                val[v++] = *p;
        }
        if (*p == '"')
            p++;
    } else {
        while (*p && *p != ' ') {
            if (v + 1 < vlen)
                val[v++] = *p;
            p++;
        }
    }
    val[v] = '\0';
    return p;
}

static size_t json_pairs(char *out, size_t cap, size_t n, const char *pairs)
{
    char key[128], val[2048];
    const char *p = pairs;

    while ((p = next_pair(p, key, sizeof(key), val, sizeof(val))) != NULL &&
           n + 8 < cap) {
        if (key[0] == '\0')
            continue;
        n += (size_t)snprintf(out + n, cap - n, ",\"");
        n = quote_into(out, cap, n, key);
        n += (size_t)snprintf(out + n, cap - n, "\":\"");
        n = quote_into(out, cap, n, val);
        n += (size_t)snprintf(out + n, cap - n, "\"");
    }
    return n;
}

/* In text lines, a value must not end the line or forge another pair:
 * control characters become escapes (the quotes the caller put stay). */
static void text_pairs(char *dst, size_t cap, const char *pairs)
{
    size_t n = 0;

    for (const unsigned char *p = (const unsigned char *)pairs;
         *p && n + 7 < cap; p++) {
        if (*p < 0x20 || *p == 0x7F)
            n += (size_t)snprintf(dst + n, cap - n, "\\x%02x", *p);
        else
            dst[n++] = (char)*p;
    }
    dst[n] = '\0';
}

void log_write(enum log_level level, const char *msg, const char *fmt, ...)
{
    char ts[40], pairs[2048] = "", line[4096];
    size_t n = 0;
    va_list ap;

    if (!log_enabled(level))
        return;
    log_timestamp(ts, sizeof(ts));
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(pairs, sizeof(pairs), fmt, ap);
        va_end(ap);
    }
    if (log_out_format == LOG_FORMAT_JSON) {
        n = (size_t)snprintf(line, sizeof(line),
                             "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
                             level_names[level]);
        n = quote_into(line, sizeof(line), n, msg);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\"");
        n = json_pairs(line, sizeof(line), n, pairs);
        snprintf(line + n, sizeof(line) - n, "}");
    } else {
        char safe[2048];
        text_pairs(safe, sizeof(safe), pairs);
        n = (size_t)snprintf(line, sizeof(line), "ts=%s level=%s msg=\"", ts,
                             level_names[level]);
        n = quote_into(line, sizeof(line), n, msg);
        snprintf(line + n, sizeof(line) - n, "\"%s%s", safe[0] ? " " : "",
                 safe);
    }
    fprintf(stderr, "%s\n", line);
}
