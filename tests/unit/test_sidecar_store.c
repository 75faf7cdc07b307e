/*
 * test_sidecar_store.c — the sidecar's snapshot file (sidecar/
 * snapshot_store.h): an atomic write that loads back the same snapshot,
 * replacement, and clear errors for a missing, corrupt or truncated file.
 */
#include "sidecar/snapshot_store.h"
#include "tests/support/testenv.h"
#include "tests/support/testutil.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIGEST_A                                                               \
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define DIGEST_B                                                               \
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* A snapshot with one Policy resource; strings borrowed. */
static void fill(Polis__V1__Snapshot *s, Polis__V1__Resource *r,
                 Polis__V1__Resource **rp, int64_t rev, const char *digest)
{
    static unsigned char key[] = "0123456789abcdef-key";

    polis__v1__snapshot__init(s);
    polis__v1__resource__init(r);
    r->kind = "Policy";
    r->scope = "global";
    r->name = "p";
    r->document_json = "{\"kind\":\"Policy\"}";
    *rp = r;
    s->revision = rev;
    s->domain = "sales";
    s->digest = (char *)digest;
    s->resources = rp;
    s->n_resources = 1;
    s->masking_key.data = key;
    s->masking_key.len = sizeof(key) - 1;
}

static const char *fresh_dir(const char *tag)
{
    const char *d = testenv_tmpdir(tag);

    CU_ASSERT_FATAL(d != NULL);
    return d;
}

static void write_bytes(const char *dir, const void *p, size_t n)
{
    char path[1024];
    FILE *f;

    snprintf(path, sizeof(path), "%s/" SC_STORE_FILE, dir);
    f = fopen(path, "wb");
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT(fwrite(p, 1, n, f) == n);
    fclose(f);
}

static void test_save_then_load(void)
{
    const char *base = fresh_dir("scstore");
    char dir[1024], tmp[1100];
    Polis__V1__Snapshot s, *got = NULL;
    Polis__V1__Resource r, *rp;
    polis_error err = {0};

    /* The state dir is created on first save. */
    snprintf(dir, sizeof(dir), "%s/state", base);
    fill(&s, &r, &rp, 42, DIGEST_A);
    CU_ASSERT_EQUAL_FATAL(sc_store_save(dir, &s, &err), 0);
    snprintf(tmp, sizeof(tmp), "%s/" SC_STORE_TMP_FILE, dir);
    CU_ASSERT(access(tmp, F_OK) != 0); /* renamed away, not left behind */
    CU_ASSERT_EQUAL_FATAL(sc_store_load(dir, &got, &err), 0);
    CU_ASSERT_EQUAL(got->revision, 42);
    CU_ASSERT_STRING_EQUAL(got->domain, "sales");
    CU_ASSERT_STRING_EQUAL(got->digest, DIGEST_A);
    CU_ASSERT_EQUAL_FATAL(got->n_resources, 1);
    CU_ASSERT_STRING_EQUAL(got->resources[0]->document_json,
                           "{\"kind\":\"Policy\"}");
    CU_ASSERT_EQUAL(got->masking_key.len, s.masking_key.len);
    CU_ASSERT(memcmp(got->masking_key.data, s.masking_key.data,
                     s.masking_key.len) == 0);
    sc_store_free(got);
}

static void test_save_replaces(void)
{
    const char *dir = fresh_dir("scstore");
    Polis__V1__Snapshot s, *got = NULL;
    Polis__V1__Resource r, *rp;
    polis_error err = {0};

    fill(&s, &r, &rp, 7, DIGEST_A);
    CU_ASSERT_EQUAL_FATAL(sc_store_save(dir, &s, &err), 0);
    fill(&s, &r, &rp, 8, DIGEST_B);
    CU_ASSERT_EQUAL_FATAL(sc_store_save(dir, &s, &err), 0);
    CU_ASSERT_EQUAL_FATAL(sc_store_load(dir, &got, &err), 0);
    CU_ASSERT_EQUAL(got->revision, 8);
    CU_ASSERT_STRING_EQUAL(got->digest, DIGEST_B);
    sc_store_free(got);
}

static void test_missing_file(void)
{
    const char *dir = fresh_dir("scstore");
    Polis__V1__Snapshot *got = NULL;
    polis_error err = {0};

    CU_ASSERT_EQUAL(sc_store_load(dir, &got, &err), POLIS_ENOTFOUND);
    CU_ASSERT_PTR_NULL(got);
}

static void test_corrupt_file_rejected(void)
{
    const char *dir = fresh_dir("scstore");
    static const char garbage[] = "\xff\xff\xff\xff this is not protobuf";
    Polis__V1__Snapshot *got = NULL;
    polis_error err = {0};
    char msg[1024];

    write_bytes(dir, garbage, sizeof(garbage) - 1);
    CU_ASSERT_EQUAL(sc_store_load(dir, &got, &err), POLIS_EPARSE);
    CU_ASSERT_PTR_NULL(got);
    polis_error_format(&err, msg, sizeof(msg));
    CU_ASSERT(strstr(msg, "corrupt snapshot file") != NULL);
    CU_ASSERT(strstr(msg, SC_STORE_FILE) != NULL);
}

static void test_truncated_file_rejected(void)
{
    const char *dir = fresh_dir("scstore");
    Polis__V1__Snapshot s, *got = NULL;
    Polis__V1__Resource r, *rp;
    polis_error err = {0};
    unsigned char buf[512];
    size_t n;

    fill(&s, &r, &rp, 9, DIGEST_A);
    n = protobuf_c_message_pack(&s.base, buf);
    CU_ASSERT_FATAL(n > 20 && n < sizeof(buf));
    /* Every cut of the file is refused, never loaded as a snapshot. */
    for (size_t cut = 0; cut < n; cut++) {
        write_bytes(dir, buf, cut);
        if (sc_store_load(dir, &got, &err) != POLIS_EPARSE) {
            fprintf(stderr, "\ncut at %zu of %zu bytes was accepted\n", cut, n);
            CU_FAIL("truncated file accepted");
            sc_store_free(got);
            got = NULL;
        }
    }
    write_bytes(dir, buf, n);
    CU_ASSERT_EQUAL(sc_store_load(dir, &got, &err), 0);
    sc_store_free(got);
}

static void test_unwritable_dir(void)
{
    const char *base = fresh_dir("scstore");
    char dir[1024];
    Polis__V1__Snapshot s;
    Polis__V1__Resource r, *rp;
    polis_error err = {0};
    FILE *f;

    /* A regular file where the directory should be. */
    snprintf(dir, sizeof(dir), "%s/file", base);
    f = fopen(dir, "w");
    CU_ASSERT_FATAL(f != NULL);
    fclose(f);
    fill(&s, &r, &rp, 1, DIGEST_A);
    CU_ASSERT_EQUAL(sc_store_save(dir, &s, &err), POLIS_EIO);
    CU_ASSERT(strstr(err.where, "file") != NULL);
}

static const test_case store_cases[] = {
    {"save_then_load", test_save_then_load},
    {"save_replaces", test_save_replaces},
    {"missing_file", test_missing_file},
    {"corrupt_file_rejected", test_corrupt_file_rejected},
    {"truncated_file_rejected", test_truncated_file_rejected},
    {"unwritable_dir", test_unwritable_dir},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"snapshot_store", NULL, NULL, store_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
