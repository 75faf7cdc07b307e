/*
 * test_error.c — the Polis error type (common/error.h).
 */
#include "common/error.h"
#include "tests/support/testutil.h"

#include <string.h>

static void test_set_returns_code_and_formats(void)
{
    polis_error err = {0};
    char buf[256];

    CU_ASSERT_EQUAL(polis_error_set(&err, POLIS_EINVAL, "spec.schema[3].type",
                                    "unknown type \"%s\"", "strng"),
                    POLIS_EINVAL);
    polis_error_prefix_where(&err, "orders.yaml");
    CU_ASSERT_STRING_EQUAL(
        polis_error_format(&err, buf, sizeof(buf)),
        "orders.yaml: spec.schema[3].type: unknown type \"strng\"");
}

static void test_names_and_messages(void)
{
    CU_ASSERT_STRING_EQUAL(polis_errname(POLIS_ECONFLICT), "ECONFLICT");
    CU_ASSERT_STRING_EQUAL(polis_strerror(POLIS_ENOTFOUND), "not found");
    CU_ASSERT_STRING_EQUAL(polis_strerror(12345), "unknown error");
    CU_ASSERT_EQUAL(polis_error_set(NULL, POLIS_EIO, NULL, NULL), POLIS_EIO);
}

static void test_message_defaults_to_strerror(void)
{
    polis_error err = {0};
    char buf[64];

    polis_error_set(&err, POLIS_ETIMEDOUT, NULL, NULL);
    CU_ASSERT_STRING_EQUAL(polis_error_format(&err, buf, sizeof(buf)),
                           "timed out");
    polis_error_clear(&err);
    CU_ASSERT_EQUAL(err.code, POLIS_OK);
}

static const test_case error_cases[] = {
    {"set_returns_code_and_formats", test_set_returns_code_and_formats},
    {"names_and_messages", test_names_and_messages},
    {"message_defaults_to_strerror", test_message_defaults_to_strerror},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"error", NULL, NULL, error_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
