/*
 * test_mask.c — masking methods of the policy engine (policy/policy.h):
 * every method incl. UTF-8, empty and NULL values, strength order,
 * parameter errors, and HMAC-SHA256 against RFC 4231 and OpenSSL.
 */
#include "policy/policy.h"
#include "tests/support/testutil.h"

#include <openssl/hmac.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

static pol_mask mk(const char *method, const char *params_json)
{
    pol_mask m;
    polis_error err = {0};
    json_t *params = params_json ? json_loads(params_json, 0, NULL) : NULL;

    CU_ASSERT_EQUAL_FATAL(pol_mask_parse(method, params, &m, &err), 0);
    json_decref(params);
    return m;
}

/* Mask `in` (NUL-terminated, or NULL) and return a static copy of the
 * result, "<null>" for NULL. */
static const char *apply(const pol_mask *m, const pol_mask_key *key,
                         const char *in)
{
    static char out[1024];
    size_t len = 0;
    bool is_null = true;
    int rc = pol_mask_apply(m, key, in, in ? strlen(in) : 0, out, sizeof(out),
                            &len, &is_null);

    CU_ASSERT_EQUAL(rc, 0);
    if (rc != 0)
        return "<error>";
    if (is_null)
        return "<null>";
    CU_ASSERT_EQUAL(strlen(out), len);
    return out;
}

static void test_redact(void)
{
    pol_mask m = mk("redact", NULL);

    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "secret"), "****");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, ""), "****");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, NULL), "<null>");
    m = mk("redact", "{\"replacement\": \"[hidden]\"}");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "secret"), "[hidden]");
    m = mk("redact", "{\"char\": \"X\"}");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "héllo"), "XXXXX");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, ""), "");
    m = mk("redact", "{\"char\": \"●\"}");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "ab日"), "●●●");
}

static void test_show_last_first(void)
{
    pol_mask m = mk("show_last", NULL); /* n defaults to 4 */

    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "4111111111111111"),
                           "************1111");
    /* Code points, not bytes: the 2-byte letters count once. */
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "ÄÖÜßabcd"), "****abcd");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "ÄÖÜßabçd"), "****abçd");
    /* A value no longer than n is hidden entirely. */
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "abc"), "***");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "abcd"), "****");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, ""), "");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, NULL), "<null>");

    m = mk("show_first", "{\"n\": 2, \"char\": \"x\"}");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "日本語テキスト"), "日本xxxxx");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "ab"), "xx");
    m = mk("show_first", "{\"n\": 0}");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "abc"), "***");
}

static void test_invalid_utf8_is_masked_per_byte(void)
{
    pol_mask m = mk("show_last", "{\"n\": 1}");
    /* A lone continuation byte and a truncated 3-byte sequence. */
    const char in[] = {'a', (char)0x80, (char)0xe6, (char)0x97, 'z', 0};

    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, in), "****z");
}

static void test_hash_stable_and_keyed(void)
{
    pol_mask m = mk("hash", NULL);
    pol_mask_key k1, k2;
    char a[80], b[80], c[80];
    size_t len;
    bool is_null;

    pol_mask_key_init(&k1, "key-one", 7);
    pol_mask_key_init(&k2, "key-two", 7);
    strcpy(a, apply(&m, &k1, "alice@example.com"));
    strcpy(b, apply(&m, &k1, "alice@example.com"));
    strcpy(c, apply(&m, &k2, "alice@example.com"));
    CU_ASSERT_EQUAL(strlen(a), 64);
    CU_ASSERT_EQUAL(strspn(a, "0123456789abcdef"), 64);
    CU_ASSERT_STRING_EQUAL(a, b); /* stable: masked columns still join */
    CU_ASSERT_STRING_NOT_EQUAL(a, c);
    CU_ASSERT_STRING_NOT_EQUAL(apply(&m, &k1, ""), a);
    CU_ASSERT_STRING_EQUAL(apply(&m, &k1, NULL), "<null>");
    /* No key: refused rather than an unkeyed (guessable) hash. */
    CU_ASSERT_EQUAL(
        pol_mask_apply(&m, NULL, "x", 1, a, sizeof(a), &len, &is_null),
        POLIS_EINVAL);
    /* RFC 4231 test case 2 through the mask: key "Jefe". */
    pol_mask_key_init(&k1, "Jefe", 4);
    CU_ASSERT_STRING_EQUAL(
        apply(&m, &k1, "what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void hex(const unsigned char *d, size_t n, char *out)
{
    size_t i;

    for (i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_hmac_rfc4231_vectors(void)
{
    unsigned char key[131], digest[32];
    char text[65];
    pol_mask_key k;
    const char *data6 =
        "Test Using Larger Than Block-Size Key - Hash Key First";

    memset(key, 0x0b, 20);
    pol_mask_key_init(&k, key, 20);
    pol_hmac_sha256(&k, "Hi There", 8, digest);
    hex(digest, 32, text);
    CU_ASSERT_STRING_EQUAL(
        text,
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    memset(key, 0xaa, 131); /* longer than a block: hashed first */
    pol_mask_key_init(&k, key, 131);
    pol_hmac_sha256(&k, data6, strlen(data6), digest);
    hex(digest, 32, text);
    CU_ASSERT_STRING_EQUAL(
        text,
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

/* Every length around the padding boundaries, against OpenSSL. */
static void test_hmac_matches_openssl(void)
{
    unsigned char data[300], ours[32], theirs[32];
    unsigned int tlen = 0;
    size_t len, klen;
    pol_mask_key k;

    for (len = 0; len < sizeof(data); len++)
        data[len] = (unsigned char)(len * 7 + 3);
    for (klen = 0; klen < 140; klen += 13) {
        pol_mask_key_init(&k, data, klen);
        for (len = 0; len < sizeof(data); len++) {
            pol_hmac_sha256(&k, data, len, ours);
            HMAC(EVP_sha256(), data, (int)klen, data, len, theirs, &tlen);
            CU_ASSERT_EQUAL(tlen, 32);
            if (memcmp(ours, theirs, 32) != 0) {
                CU_FAIL("HMAC differs from OpenSSL");
                return;
            }
        }
    }
}

static void test_nullify(void)
{
    pol_mask m = mk("nullify", NULL);

    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "x"), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, ""), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, NULL), "<null>");
}

static void test_dates(void)
{
    pol_mask y = mk("date_year", NULL), mo = mk("date_month", NULL);

    CU_ASSERT_STRING_EQUAL(apply(&y, NULL, "2024-05-17"), "2024-01-01");
    CU_ASSERT_STRING_EQUAL(apply(&y, NULL, "2024-05-17T10:00:00Z"),
                           "2024-01-01");
    CU_ASSERT_STRING_EQUAL(apply(&mo, NULL, "2024-05-17 10:00:00"),
                           "2024-05-01");
    /* Not an ISO date: fail closed to NULL. */
    CU_ASSERT_STRING_EQUAL(apply(&y, NULL, "17/05/2024"), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&mo, NULL, "2024-13-01"), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&mo, NULL, "2024-05"), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&mo, NULL, ""), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&mo, NULL, NULL), "<null>");
}

static void test_email(void)
{
    pol_mask m = mk("email", NULL);

    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "john.doe@example.com"),
                           "****@example.com");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "jöhn@bücher.de"), "****@bücher.de");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "\"a@b\"@c.com"), "****@c.com");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "no-at-sign"), "****");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "x@"), "****");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, ""), "****");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, NULL), "<null>");
}

static void test_bucket(void)
{
    pol_mask m = mk("bucket", "{\"width\": 10}");

    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "37"), "30-39");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "30"), "30-39");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "37.9"), "30-39");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "0"), "0-9");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "-5"), "-10--1");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "abc"), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "12abc"), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, ""), "<null>");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "nan"), "<null>");
    m = mk("bucket", "{\"width\": 1000, \"format\": \"lower\"}");
    CU_ASSERT_STRING_EQUAL(apply(&m, NULL, "52345"), "52000");
}

static void test_output_too_small(void)
{
    pol_mask m = mk("show_last", NULL), h = mk("hash", NULL);
    pol_mask_key k;
    char out[8];
    size_t len = 0;
    bool is_null;

    pol_mask_key_init(&k, "k", 1);
    CU_ASSERT_EQUAL(pol_mask_apply(&m, NULL, "4111111111111111", 16, out,
                                   sizeof(out), &len, &is_null),
                    POLIS_ETOOBIG);
    CU_ASSERT_EQUAL(len, 17);
    CU_ASSERT_EQUAL(
        pol_mask_apply(&h, &k, "x", 1, out, sizeof(out), &len, &is_null),
        POLIS_ETOOBIG);
    CU_ASSERT_EQUAL(len, 65);
    CU_ASSERT(pol_mask_output_max(&m, 16) >= 17);
    CU_ASSERT(pol_mask_output_max(&h, 1) >= 65);
}

static void test_strength_order(void)
{
    static const char *const order[] = {"email",  "show_last",  "show_first",
                                        "bucket", "date_month", "date_year",
                                        "hash",   "redact",     "nullify"};
    pol_mask a, b;
    size_t i;

    for (i = 0; i + 1 < sizeof(order) / sizeof(order[0]); i++) {
        a = mk(order[i], strcmp(order[i], "bucket") ? NULL : "{\"width\": 5}");
        b = mk(order[i + 1],
               strcmp(order[i + 1], "bucket") ? NULL : "{\"width\": 5}");
        CU_ASSERT(pol_mask_compare(&b, &a) > 0);
        CU_ASSERT(pol_mask_compare(&a, &b) < 0);
    }
    a = mk("show_last", "{\"n\": 2}");
    b = mk("show_last", "{\"n\": 4}");
    CU_ASSERT(pol_mask_compare(&a, &b) > 0); /* shows less */
    a = mk("bucket", "{\"width\": 100}");
    b = mk("bucket", "{\"width\": 10}");
    CU_ASSERT(pol_mask_compare(&a, &b) > 0);
    a = mk("redact", NULL);
    b = mk("redact", "{\"char\": \"x\"}");
    CU_ASSERT(pol_mask_compare(&a, &b) > 0); /* hides the length too */
    CU_ASSERT_EQUAL(pol_mask_compare(&a, &a), 0);
}

static void expect_parse_error(const char *method, const char *params,
                               const char *where, const char *message)
{
    pol_mask m;
    polis_error err = {0};
    json_t *p = params ? json_loads(params, 0, NULL) : NULL;

    CU_ASSERT_EQUAL(pol_mask_parse(method, p, &m, &err), POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where, where);
    CU_ASSERT_STRING_EQUAL(err.message, message);
    json_decref(p);
}

static void test_parse_errors(void)
{
    expect_parse_error("sha1", NULL, "method", "unknown method \"sha1\"");
    expect_parse_error("none", NULL, "method", "unknown method \"none\"");
    expect_parse_error("show_last", "{\"n\": -1}", "params.n",
                       "must be an integer from 0 to 1024");
    expect_parse_error("show_last", "{\"char\": \"ab\"}", "params.char",
                       "must be a string of one character");
    expect_parse_error("bucket", NULL, "params.width",
                       "is required for method \"bucket\"");
    expect_parse_error("bucket", "{\"width\": 10, \"format\": \"mid\"}",
                       "params.format", "must be \"range\" or \"lower\"");
    expect_parse_error("hash", "{\"salt\": \"x\"}", "params.salt",
                       "unknown parameter for method \"hash\"");
    expect_parse_error("redact", "{\"char\": \"x\", \"replacement\": \"y\"}",
                       "params.replacement",
                       "give either replacement or char, not both");
}

static const test_case mask_cases[] = {
    {"redact", test_redact},
    {"show_last_first", test_show_last_first},
    {"invalid_utf8_is_masked_per_byte", test_invalid_utf8_is_masked_per_byte},
    {"hash_stable_and_keyed", test_hash_stable_and_keyed},
    {"hmac_rfc4231_vectors", test_hmac_rfc4231_vectors},
    {"hmac_matches_openssl", test_hmac_matches_openssl},
    {"nullify", test_nullify},
    {"dates", test_dates},
    {"email", test_email},
    {"bucket", test_bucket},
    {"output_too_small", test_output_too_small},
    {"strength_order", test_strength_order},
    {"parse_errors", test_parse_errors},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"mask", NULL, NULL, mask_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
