/*
 * log.h — the daemons' and the CLI's logging: levels, one line per event in
 * logfmt (ts=... level=... msg="..." key=value...) or JSON, on stderr.
 * Libraries (common/ apart from this module, policy/) never log.
 */
#ifndef POLIS_LOG_H
#define POLIS_LOG_H

#include <stdbool.h>

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO = 1,
    LOG_LEVEL_WARN = 2,
    LOG_LEVEL_ERROR = 3,
    LOG_LEVEL_OFF = 4,
};

enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };

/*
 * Set once at start-up, before any thread starts (the process-wide part of
 * the configuration, like the config struct).
 */
void log_setup(enum log_level level, enum log_format format);

/* Parse "debug|info|warn|error|off"; returns -1 when unknown. */
int log_level_parse(const char *name);

bool log_enabled(enum log_level level);

/*
 * Write one event: `msg` is a short human text, `fmt` the key=value pairs
 * (printf-style, may be NULL), e.g.
 *   log_write(LOG_LEVEL_INFO, "listening", "addr=%s", addr);
 * In JSON format, the pairs are split on spaces and emitted as fields.
 */
void log_write(enum log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The level is checked before any argument is formatted. */
#define log_debug(...)                                                         \
    do {                                                                       \
        if (log_enabled(LOG_LEVEL_DEBUG))                                      \
            log_write(LOG_LEVEL_DEBUG, __VA_ARGS__);                           \
    } while (0)
#define log_info(...)                                                          \
    do {                                                                       \
        if (log_enabled(LOG_LEVEL_INFO))                                       \
            log_write(LOG_LEVEL_INFO, __VA_ARGS__);                            \
    } while (0)
#define log_warn(...)                                                          \
    do {                                                                       \
        if (log_enabled(LOG_LEVEL_WARN))                                       \
            log_write(LOG_LEVEL_WARN, __VA_ARGS__);                            \
    } while (0)
#define log_error(...)                                                         \
    do {                                                                       \
        if (log_enabled(LOG_LEVEL_ERROR))                                      \
            log_write(LOG_LEVEL_ERROR, __VA_ARGS__);                           \
    } while (0)

#endif
