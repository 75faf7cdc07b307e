/*
 * testutil.h — the CUnit runner every test program shares: a test file lists
 * its suites as data and calls test_main().  `prog SUITE[/CASE]` runs a part.
 */
#ifndef POLIS_TESTUTIL_H
#define POLIS_TESTUTIL_H

#include <CUnit/CUnit.h>

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

typedef struct test_suite {
    const char *name;
    int (*init)(void);      /* may be NULL; non-zero fails the suite */
    int (*cleanup)(void);   /* may be NULL */
    const test_case *cases; /* terminated by {NULL, NULL} */
} test_suite;

/* Run the suites ({NULL} terminated); returns the process exit code. */
int test_main(int argc, char **argv, const test_suite *suites);

#endif
