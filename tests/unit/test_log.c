/*
 * test_log.c — log lines: JSON keeps quoted values whole, text lines cannot
 * be split or forged by a value with a newline.
 */
#include "common/log.h"
#include "tests/support/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Run one log_write with stderr captured; returns the text (static). */
static const char *capture(enum log_format format, const char *msg,
                           const char *pairs_value)
{
    static char buf[8192];
    char path[] = "/tmp/polis-log-XXXXXX";
    int fd = mkstemp(path), saved = dup(2);
    FILE *f;
    size_t n;

    log_setup(LOG_LEVEL_DEBUG, format);
    fflush(stderr);
    dup2(fd, 2);
    log_write(LOG_LEVEL_ERROR, msg, "error=\"%s\" id=%s", pairs_value, "sc1");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    f = fdopen(fd, "r");
    rewind(f);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(path);
    log_setup(LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    return buf;
}

static void test_json_keeps_quoted_values(void)
{
    const char *out = capture(LOG_FORMAT_JSON, "cannot start",
                              "etcd http://x: unavailable: refused");

    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "\"error\":\"etcd http://x: unavailable: refused\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"id\":\"sc1\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"msg\":\"cannot start\""));
}

static void test_text_cannot_be_forged(void)
{
    const char *out = capture(LOG_FORMAT_TEXT, "nack",
                              "bad\nlevel=error msg=\"forged line\"");

    /* One line only: the newline became an escape. */
    CU_ASSERT_PTR_NOT_NULL(strchr(out, '\n'));
    CU_ASSERT_EQUAL(strchr(out, '\n')[1], '\0');
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bad\\x0alevel=error"));
}

static void test_level_filter(void)
{
    log_setup(LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
    CU_ASSERT_FALSE(log_enabled(LOG_LEVEL_INFO));
    CU_ASSERT_TRUE(log_enabled(LOG_LEVEL_ERROR));
    CU_ASSERT_EQUAL(log_level_parse("WARNING"), LOG_LEVEL_WARN);
    CU_ASSERT_EQUAL(log_level_parse("loud"), -1);
    log_setup(LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
}

static const test_case cases[] = {
    {"json_keeps_quoted_values", test_json_keeps_quoted_values},
    {"text_cannot_be_forged", test_text_cannot_be_forged},
    {"level_filter", test_level_filter},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"log", NULL, NULL, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
