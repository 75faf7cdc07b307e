/*
 * test_sidecar_principals.c — the sidecar's principal index (sidecar/
 * principals.h): bearer tokens resolve to the principal whose
 * spec.credentials.tokenSha256 lists their SHA-256, unknown tokens and
 * names resolve to nothing, bad digests and ambiguous tokens are refused.
 */
#include "sidecar/principals.h"
#include "tests/support/testutil.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

static void sha_hex(const char *token, char hex[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)token, strlen(token), md);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static json_t *principal(const char *name, const char *const *tokens)
{
    json_t *list = json_array();
    char hex[65];

    for (size_t i = 0; tokens && tokens[i]; i++) {
        sha_hex(tokens[i], hex);
        json_array_append_new(list, json_string(hex));
    }
    return json_pack("{s:s, s:s, s:{s:s}, s:{s:[s], s:{s:o}}}", "apiVersion",
                     "polis/v1", "kind", "Principal", "metadata", "name", name,
                     "spec", "groups", "analysts", "credentials", "tokenSha256",
                     list);
}

static json_t *mesh(void)
{
    static const char *const alice[] = {"alice-1", "alice-2", NULL};
    static const char *const bob[] = {"bob-1", NULL};
    json_t *docs = json_array();

    json_array_append_new(docs, principal("alice", alice));
    json_array_append_new(docs, principal("bob", bob));
    json_array_append_new(docs, principal("carol", NULL));
    /* Not a principal: ignored even though it looks like one. */
    json_array_append_new(docs, json_pack("{s:s, s:{s:s}}", "kind", "Policy",
                                          "metadata", "name", "alice"));
    return docs;
}

static void test_token_resolves_principal(void)
{
    json_t *docs = mesh();
    sc_principals *p = NULL;
    polis_error err = {0};
    const json_t *doc = NULL;

    CU_ASSERT_EQUAL_FATAL(sc_principals_build(docs, &p, &err), 0);
    CU_ASSERT_EQUAL(sc_principals_count(p), 3);
    CU_ASSERT_EQUAL(sc_principals_token_count(p), 3);
    CU_ASSERT_STRING_EQUAL(sc_principals_by_token(p, "alice-1", 7, &doc),
                           "alice");
    CU_ASSERT_PTR_EQUAL(doc, json_array_get(docs, 0));
    CU_ASSERT_STRING_EQUAL(sc_principals_by_token(p, "alice-2", 7, NULL),
                           "alice");
    CU_ASSERT_STRING_EQUAL(sc_principals_by_token(p, "bob-1", 5, &doc), "bob");
    CU_ASSERT_PTR_EQUAL(doc, json_array_get(docs, 1));
    sc_principals_free(p);
    json_decref(docs);
}

static void test_unknown_token(void)
{
    json_t *docs = mesh();
    sc_principals *p = NULL;
    polis_error err = {0};
    const json_t *doc = json_array_get(docs, 0);

    CU_ASSERT_EQUAL_FATAL(sc_principals_build(docs, &p, &err), 0);
    CU_ASSERT_PTR_NULL(sc_principals_by_token(p, "alice-3", 7, &doc));
    CU_ASSERT_PTR_NULL(doc);
    /* A prefix of a real token, and the empty token, match nothing. */
    CU_ASSERT_PTR_NULL(sc_principals_by_token(p, "alice-1", 6, NULL));
    CU_ASSERT_PTR_NULL(sc_principals_by_token(p, "", 0, NULL));
    /* The digest itself is not a token. */
    {
        char hex[65];
        sha_hex("bob-1", hex);
        CU_ASSERT_PTR_NULL(sc_principals_by_token(p, hex, 64, NULL));
    }
    CU_ASSERT_PTR_NULL(sc_principals_by_token(NULL, "bob-1", 5, NULL));
    sc_principals_free(p);
    json_decref(docs);
}

static void test_by_name(void)
{
    json_t *docs = mesh();
    sc_principals *p = NULL;
    polis_error err = {0};

    CU_ASSERT_EQUAL_FATAL(sc_principals_build(docs, &p, &err), 0);
    CU_ASSERT_PTR_EQUAL(sc_principals_by_name(p, "carol"),
                        json_array_get(docs, 2));
    CU_ASSERT_PTR_NULL(sc_principals_by_name(p, "mallory"));
    CU_ASSERT_PTR_NULL(sc_principals_by_name(p, "Alice"));
    sc_principals_free(p);
    json_decref(docs);
}

static void test_many_principals(void)
{
    json_t *docs = json_array();
    sc_principals *p = NULL;
    polis_error err = {0};
    char name[32], token[32];
    const char *tokens[2] = {token, NULL};
    int misses = 0;

    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "user-%d", i);
        snprintf(token, sizeof(token), "tok-%d", i);
        json_array_append_new(docs, principal(name, tokens));
    }
    CU_ASSERT_EQUAL_FATAL(sc_principals_build(docs, &p, &err), 0);
    for (int i = 0; i < 5000; i++) {
        const char *got;
        snprintf(name, sizeof(name), "user-%d", i);
        snprintf(token, sizeof(token), "tok-%d", i);
        got = sc_principals_by_token(p, token, strlen(token), NULL);
        misses += got == NULL || strcmp(got, name) != 0;
    }
    CU_ASSERT_EQUAL(misses, 0);
    sc_principals_free(p);
    json_decref(docs);
}

static void test_bad_digest_refused(void)
{
    json_t *docs = mesh();
    json_t *creds = json_object_get(
        json_object_get(json_object_get(json_array_get(docs, 1), "spec"),
                        "credentials"),
        "tokenSha256");
    sc_principals *p = NULL;
    polis_error err = {0};

    json_array_append_new(creds, json_string("ABCDEF")); /* not a digest */
    CU_ASSERT_EQUAL(sc_principals_build(docs, &p, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_STRING_EQUAL(
        err.where, "principal \"bob\": spec.credentials.tokenSha256[1]");
    json_decref(docs);
}

static void test_shared_token_and_duplicate_name_refused(void)
{
    static const char *const shared[] = {"bob-1", NULL};
    json_t *docs = mesh();
    sc_principals *p = NULL;
    polis_error err = {0};

    json_array_append_new(docs, principal("dave", shared));
    CU_ASSERT_EQUAL(sc_principals_build(docs, &p, &err), POLIS_ECONFLICT);
    CU_ASSERT(strstr(err.message, "\"bob\"") &&
              strstr(err.message, "\"dave\""));
    json_decref(docs);

    docs = mesh();
    json_array_append_new(docs, principal("carol", NULL));
    CU_ASSERT_EQUAL(sc_principals_build(docs, &p, &err), POLIS_ECONFLICT);
    CU_ASSERT(strstr(err.message, "carol") != NULL);
    json_decref(docs);
}

static const test_case principal_cases[] = {
    {"token_resolves_principal", test_token_resolves_principal},
    {"unknown_token", test_unknown_token},
    {"by_name", test_by_name},
    {"many_principals", test_many_principals},
    {"bad_digest_refused", test_bad_digest_refused},
    {"shared_token_and_duplicate_name_refused",
     test_shared_token_and_duplicate_name_refused},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"principals", NULL, NULL, principal_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
