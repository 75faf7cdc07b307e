/*
 * test_strbuf.c — bounded growable strings: appends, printf past the small
 * buffer, and the sticky error at the maximum.
 */
#include "common/error.h"
#include "common/strbuf.h"
#include "tests/support/testutil.h"

#include <string.h>

static void test_appends_and_grows(void)
{
    strbuf b = STRBUF_INIT(1 << 20);
    char big[2000];

    strbuf_puts(&b, "SELECT ");
    strbuf_printf(&b, "%d, '%s'", 42, "x");
    CU_ASSERT_STRING_EQUAL(b.p, "SELECT 42, 'x'");
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    strbuf_printf(&b, "%s", big); /* longer than the internal buffer */
    CU_ASSERT_EQUAL(b.len, strlen("SELECT 42, 'x'") + sizeof(big) - 1);
    CU_ASSERT_EQUAL(b.rc, 0);
    strbuf_free(&b);
    CU_ASSERT_PTR_NULL(b.p);
}

static void test_maximum_is_sticky(void)
{
    strbuf b = STRBUF_INIT(8); /* 7 bytes + NUL */

    strbuf_puts(&b, "1234567");
    CU_ASSERT_EQUAL(b.rc, 0);
    strbuf_puts(&b, "8");
    CU_ASSERT_EQUAL(b.rc, POLIS_ETOOBIG);
    strbuf_puts(&b, ""); /* later appends change nothing */
    CU_ASSERT_STRING_EQUAL(b.p, "1234567");
    strbuf_free(&b);
}

static const test_case cases[] = {
    {"appends_and_grows", test_appends_and_grows},
    {"maximum_is_sticky", test_maximum_is_sticky},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"strbuf", NULL, NULL, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
