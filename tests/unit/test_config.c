/*
 * test_config.c — option tables: defaults → file → environment → flags, and
 * the errors that name the option and where its value came from.
 */
#include "common/config.h"
#include "tests/support/testutil.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct conf {
    char listen[32];
    int workers;
    int verbose;
} conf;

static const config_option table[] = {
    CONFIG_OPT(conf, "listen", CONFIG_STRING, listen, "127.0.0.1:7400", 0, 0,
               "address"),
    {"workers", CONFIG_INT, offsetof(conf, workers), 0, "4", 1, 64, "threads"},
    {"verbose", CONFIG_BOOL, offsetof(conf, verbose), 0, "false", 0, 0,
     "chatty"},
};
#define N (sizeof(table) / sizeof(table[0]))

static int load(conf *c, int argc, char **argv, polis_error *err)
{
    int help, version;
    memset(c, 0, sizeof(*c));
    return config_load(table, N, c, argc, argv, "PTEST_", &help, &version, err);
}

static void test_defaults(void)
{
    conf c;
    char *argv[] = {"prog", NULL};
    polis_error err = {0};

    unsetenv("PTEST_WORKERS");
    CU_ASSERT_EQUAL(load(&c, 1, argv, &err), 0);
    CU_ASSERT_STRING_EQUAL(c.listen, "127.0.0.1:7400");
    CU_ASSERT_EQUAL(c.workers, 4);
    CU_ASSERT_EQUAL(c.verbose, 0);
}

static void test_precedence_file_env_flags(void)
{
    char path[] = "/tmp/polis-config-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    conf c;
    polis_error err = {0};
    char *argv[] = {"prog", "--config",  path, "--workers",
                    "9",    "--verbose", NULL};

    fprintf(f, "listen: 0.0.0.0:1\nworkers: 2\n");
    fclose(f);
    setenv("PTEST_LISTEN", "10.0.0.1:5", 1);
    CU_ASSERT_EQUAL(load(&c, 6, argv, &err), 0);
    CU_ASSERT_STRING_EQUAL(c.listen, "10.0.0.1:5"); /* env over file */
    CU_ASSERT_EQUAL(c.workers, 9);                  /* flag over file */
    CU_ASSERT_EQUAL(c.verbose, 1);                  /* bare bool flag */
    unsetenv("PTEST_LISTEN");
    unlink(path);
}

static void test_errors_name_the_option(void)
{
    conf c;
    polis_error err = {0};
    char buf[512];
    char *bad_int[] = {"prog", "--workers=100", NULL};
    char *unknown[] = {"prog", "--wrokers", "2", NULL};
    char *missing[] = {"prog", "--listen", NULL};
    char *toolong[] = {"prog", "--listen",
                       "0123456789012345678901234567890123456789", NULL};

    CU_ASSERT_EQUAL(load(&c, 2, bad_int, &err), POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(polis_error_format(&err, buf, sizeof(buf)),
                           "--workers: 100 is out of range [1, 64]");
    CU_ASSERT_EQUAL(load(&c, 3, unknown, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(polis_error_format(&err, buf, sizeof(buf)),
                                  "--wrokers: unknown flag"));
    CU_ASSERT_EQUAL(load(&c, 2, missing, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "missing value"));
    CU_ASSERT_EQUAL(load(&c, 3, toolong, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "at most 31"));
    setenv("PTEST_VERBOSE", "maybe", 1);
    {
        char *argv[] = {"prog", NULL};
        CU_ASSERT_EQUAL(load(&c, 1, argv, &err), POLIS_EINVAL);
        CU_ASSERT_STRING_EQUAL(err.where, "environment PTEST_VERBOSE");
    }
    unsetenv("PTEST_VERBOSE");
}

static void test_file_errors(void)
{
    char path[] = "/tmp/polis-config-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    conf c;
    polis_error err = {0};
    char *argv[] = {"prog", "--config", path, NULL};

    fprintf(f, "listen: a\nthreads: 3\n");
    fclose(f);
    CU_ASSERT_EQUAL(load(&c, 3, argv, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, ": threads"));
    CU_ASSERT_STRING_EQUAL(err.message, "unknown option");
    unlink(path);
    CU_ASSERT_NOT_EQUAL(load(&c, 3, argv, &err), 0); /* file is gone */
}

static void test_help_short_circuits(void)
{
    conf c;
    int help = 0, version = 0;
    polis_error err = {0};
    char *argv[] = {"prog", "--bogus", "--help", NULL};

    /* --help wins even with other bad flags present. */
    CU_ASSERT_EQUAL(
        config_load(table, N, &c, 3, argv, "PTEST_", &help, &version, &err), 0);
    CU_ASSERT_EQUAL(help, 1);
}

static const test_case cases[] = {
    {"defaults", test_defaults},
    {"precedence_file_env_flags", test_precedence_file_env_flags},
    {"errors_name_the_option", test_errors_name_the_option},
    {"file_errors", test_file_errors},
    {"help_short_circuits", test_help_short_circuits},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"config", NULL, NULL, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
