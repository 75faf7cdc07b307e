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

static size_t json_pairs(char *out, size_t cap, size_t n, char *pairs)
{
    char *save = NULL;
    for (char *tok = strtok_r(pairs, " ", &save); tok && n + 8 < cap;
         tok = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(tok, '=');
        if (eq == NULL)
            continue;
        *eq = '\0';
        char *val = eq + 1;
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
            val[vl - 1] = '\0';
            val++;
        }
        n += (size_t)snprintf(out + n, cap - n, ",\"");
        n = quote_into(out, cap, n, tok);
        n += (size_t)snprintf(out + n, cap - n, "\":\"");
        n = quote_into(out, cap, n, val);
        n += (size_t)snprintf(out + n, cap - n, "\"");
    }
    return n;
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
        n = (size_t)snprintf(line, sizeof(line), "ts=%s level=%s msg=\"", ts,
                             level_names[level]);
        n = quote_into(line, sizeof(line), n, msg);
        snprintf(line + n, sizeof(line) - n, "\"%s%s", pairs[0] ? " " : "",
                 pairs);
    }
    fprintf(stderr, "%s\n", line);
}
