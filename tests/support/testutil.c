/*
 * testutil.c — register test_suite tables with CUnit and run them with the
 * basic interface, which prints CUnit's run summary.
 */
#include "tests/support/testutil.h"

#include <CUnit/Basic.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static int matches(const char *filter, const char *suite, const char *name)
{
    size_t sl;

    if (filter == NULL)
        return 1;
    sl = strlen(suite);
    if (strncmp(filter, suite, sl) != 0)
        return 0;
    if (filter[sl] == '\0')
        return 1;
    return filter[sl] == '/' && name && strcmp(filter + sl + 1, name) == 0;
}

int test_main(int argc, char **argv, const test_suite *suites)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    unsigned failures;

    signal(SIGPIPE, SIG_IGN);
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    for (const test_suite *s = suites; s->name; s++) {
        CU_pSuite cs = NULL;
        for (const test_case *c = s->cases; c->name; c++) {
            if (!matches(filter, s->name, c->name))
                continue;
            if (cs == NULL)
                cs = CU_add_suite(s->name, s->init, s->cleanup);
            if (cs == NULL || CU_add_test(cs, c->name, c->fn) == NULL) {
                fprintf(stderr, "cannot register %s/%s\n", s->name, c->name);
                CU_cleanup_registry();
                return 2;
            }
        }
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failures = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    if (CU_get_number_of_tests_run() == 0 && filter == NULL)
        failures++;
    CU_cleanup_registry();
    return failures ? 1 : 0;
}
