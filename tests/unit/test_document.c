/*
 * test_document.c — reading YAML and JSON resource documents and writing
 * YAML back (common/document.h).
 */
#include "common/document.h"
#include "tests/support/testutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Parse text that must be valid; returns the array of documents. */
static json_t *parse_ok(const char *text)
{
    polis_error err = {0};
    json_t *docs = NULL;
    int rc = doc_parse("test.yaml", text, strlen(text), 0, &docs, &err);

    if (rc != 0) {
        char buf[1100];
        fprintf(stderr, "unexpected error: %s\n",
                polis_error_format(&err, buf, sizeof(buf)));
    }
    CU_ASSERT_EQUAL(rc, 0);
    return docs;
}

/* Parse bytes that must fail; checks code, place and a message fragment. */
static void parse_fails_n(const char *text, size_t len, int code,
                          const char *where, const char *fragment)
{
    polis_error err = {0};
    json_t *docs = (json_t *)1;
    int rc = doc_parse("orders.yaml", text, len, 0, &docs, &err);

    CU_ASSERT_EQUAL(rc, code);
    CU_ASSERT_EQUAL(err.code, code);
    CU_ASSERT_PTR_NULL(docs);
    CU_ASSERT_STRING_EQUAL(err.where, where);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, fragment));
    if (strcmp(err.where, where) != 0 || !strstr(err.message, fragment))
        fprintf(stderr, "\n  got: %s: %s\n", err.where, err.message);
}

static void parse_fails(const char *text, const char *where,
                        const char *fragment)
{
    parse_fails_n(text, strlen(text), POLIS_EPARSE, where, fragment);
}

/* The JSON text of a value, compact and key-sorted (caller frees). */
static char *dump(const json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

static void assert_json(const json_t *v, const char *expected)
{
    char *s = dump(v);

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_STRING_EQUAL(s, expected);
    if (strcmp(s, expected) != 0)
        fprintf(stderr, "\n  got:      %s\n  expected: %s\n", s, expected);
    free(s);
}

/* ---- reading ----------------------------------------------------------- */

static void test_yaml_multi_document(void)
{
    json_t *docs = parse_ok("# leading comment\n"
                            "kind: Domain\n"
                            "metadata:\n"
                            "  name: sales\n"
                            "---\n"
                            "---\n" /* empty: skipped */
                            "kind: Principal\n"
                            "spec:\n"
                            "  groups: [analysts, \"eu\"]\n"
                            "...\n");

    CU_ASSERT_PTR_NOT_NULL_FATAL(docs);
    CU_ASSERT_EQUAL(json_array_size(docs), 2);
    assert_json(docs,
                "[{\"kind\":\"Domain\",\"metadata\":{\"name\":\"sales\"}},"
                "{\"kind\":\"Principal\",\"spec\":{\"groups\":["
                "\"analysts\",\"eu\"]}}]");
    json_decref(docs);
}

static void test_empty_input_is_no_documents(void)
{
    json_t *docs = parse_ok("");

    CU_ASSERT_EQUAL(json_array_size(docs), 0);
    json_decref(docs);
    docs = parse_ok("# only a comment\n---\n");
    CU_ASSERT_EQUAL(json_array_size(docs), 0);
    json_decref(docs);
}

static void test_json_object(void)
{
    json_t *docs = parse_ok("\xEF\xBB\xBF  \n{\"kind\": \"Domain\", "
                            "\"n\": [1, 2.5, true, null]}");

    CU_ASSERT_EQUAL(json_array_size(docs), 1);
    assert_json(docs, "[{\"kind\":\"Domain\",\"n\":[1,2.5,true,null]}]");
    json_decref(docs);
}

static void test_json_array_is_several_documents(void)
{
    json_t *docs = parse_ok("[{\"kind\": \"Domain\"}, {\"kind\": \"Policy\"}]");

    CU_ASSERT_EQUAL(json_array_size(docs), 2);
    assert_json(docs, "[{\"kind\":\"Domain\"},{\"kind\":\"Policy\"}]");
    json_decref(docs);
}

static void test_json_errors(void)
{
    parse_fails("{\"a\":\n  tru}", "orders.yaml:2:5", "invalid token");
    parse_fails("[{\"a\": 1},\n 2]", "orders.yaml",
                "document 2 is a number, not an object");
    parse_fails("{\"a\": 1, \"a\": 2}", "orders.yaml:1:12",
                "duplicate object key near '\"a\"'");
    parse_fails("{\"a\": 1} trailing", "orders.yaml:1:17",
                "end of file expected");
}

static void test_core_schema_scalars(void)
{
    json_t *docs = parse_ok("nulls: [null, Null, NULL, ~]\n"
                            "empty:\n"
                            "bools: [true, True, FALSE, false]\n"
                            "ints: [0, -5, +7, 007, 9223372036854775807,"
                            " -9223372036854775808]\n"
                            "bigint: 9223372036854775808\n"
                            "floats: [1.5, .5, -2., 1e3, 2.5E-1]\n"
                            "strings: [yes, no, on, 0x1F, 0o17, 1_000, 1.2.3,"
                            " tRue, nULL, '12', \"true\", !!str 42]\n"
                            "true: key is text\n"
                            "12: also text\n");
    json_t *d;

    CU_ASSERT_PTR_NOT_NULL_FATAL(docs);
    d = json_array_get(docs, 0);
    assert_json(json_object_get(d, "nulls"), "[null,null,null,null]");
    CU_ASSERT_TRUE(json_is_null(json_object_get(d, "empty")));
    assert_json(json_object_get(d, "bools"), "[true,true,false,false]");
    assert_json(json_object_get(d, "ints"),
                "[0,-5,7,7,9223372036854775807,-9223372036854775808]");
    assert_json(json_object_get(d, "bigint"), "\"9223372036854775808\"");
    CU_ASSERT_TRUE(
        json_is_real(json_array_get(json_object_get(d, "floats"), 2)));
    assert_json(json_object_get(d, "floats"), "[1.5,0.5,-2.0,1000.0,0.25]");
    assert_json(json_object_get(d, "strings"),
                "[\"yes\",\"no\",\"on\",\"0x1F\",\"0o17\",\"1_000\",\"1.2.3\","
                "\"tRue\",\"nULL\",\"12\",\"true\",\"42\"]");
    assert_json(json_object_get(d, "true"), "\"key is text\"");
    assert_json(json_object_get(d, "12"), "\"also text\"");
    json_decref(docs);
}

static void test_block_scalars_and_unicode(void)
{
    json_t *docs = parse_ok("text: |\n  line one\n  line two\n"
                            "folded: >-\n  a\n  b\n"
                            "city: Zürich 東京 \"\\u00e9\"\n");

    assert_json(json_array_get(docs, 0),
                "{\"city\":\"Zürich 東京 \\\"\\\\u00e9\\\"\","
                "\"folded\":\"a b\",\"text\":\"line one\\nline two\\n\"}");
    json_decref(docs);
}

static void test_yaml_syntax_error_has_place(void)
{
    parse_fails("metadata:\n  name: x\n"
                "spec:\n"
                "  - a\n"
                " b: c\n",
                "orders.yaml:5:2", "did not find expected key");
    parse_fails("a: b: c\n", "orders.yaml:1:5",
                "mapping values are not allowed");
    parse_fails("a: \"unterminated\n", "orders.yaml:2:1",
                "found unexpected end of stream");
    parse_fails("a: b\n\tc: d\n", "orders.yaml:2:1", "tab");
}

static void test_top_level_must_be_mapping(void)
{
    parse_fails("a: 1\n---\n- x\n- y\n", "orders.yaml:3:1",
                "document 2 is a sequence, not a mapping");
    parse_fails("a: 1\n---\njust text\n", "orders.yaml:3:1",
                "document 2 is a string, not a mapping");
    parse_fails("42\n", "orders.yaml:1:1",
                "document 1 is a number, not a mapping");
    parse_fails("{\"a\": 1}\n---\n[1]\n", "orders.yaml:2:1", "");
}

static void test_duplicate_keys(void)
{
    parse_fails("metadata:\n"
                "  name: a\n"
                "  labels: {}\n"
                "  name: b\n",
                "orders.yaml:4:3", "duplicate key \"name\" (first at line 2)");
    parse_fails("a: {x: 1, x: 2}\n", "orders.yaml:1:11", "duplicate key \"x\"");
    /* Same key in different mappings is fine. */
    json_decref(parse_ok("a: {x: 1}\nb: {x: 2}\n"));
}

static void test_anchors_and_aliases_rejected(void)
{
    parse_fails("a: &x [1, 2]\nb: *x\n", "orders.yaml:1:4",
                "anchors and aliases are not allowed");
    parse_fails("a: &lol lol\n", "orders.yaml:1:4",
                "anchors and aliases are not allowed");
    /* The classic billion-laughs shape fails at the first anchor. */
    parse_fails("a: &a [\"lol\",\"lol\"]\nb: &b [*a,*a,*a]\nc: [*b,*b]\n",
                "orders.yaml:1:4", "anchors and aliases");
}

static void test_tags_nul_and_non_finite(void)
{
    parse_fails("a: !!int \"3\"\n", "orders.yaml:1:4",
                "unsupported tag \"!!int\"");
    parse_fails("a: !custom [1]\n", "orders.yaml:1:4",
                "unsupported tag \"!custom\"");
    parse_fails("a: \"x\\0y\"\n", "orders.yaml:1:4",
                "NUL characters are not allowed");
    parse_fails("a: .inf\n", "orders.yaml:1:4", "not a finite number");
    parse_fails("a: 1e999\n", "orders.yaml:1:4", "not a finite number");
    parse_fails("? [a]\n: 1\n", "orders.yaml:1:3",
                "mapping keys must be scalars");
}

static char *nested(const char *open, const char *close, int depth)
{
    size_t lo = strlen(open), lc = strlen(close);
    char *s = malloc((size_t)depth * (lo + lc) + 16);
    char *p = s;

    p += sprintf(p, "a: ");
    for (int i = 0; i < depth; i++)
        p += sprintf(p, "%s", open);
    p += sprintf(p, "1");
    for (int i = 0; i < depth; i++)
        p += sprintf(p, "%s", close);
    return s;
}

static void test_depth_limit(void)
{
    /* The top mapping is level 1: 63 more levels fit, 64 do not. */
    char *ok = nested("[", "]", 63);
    char *deep = nested("[", "]", 64);
    char *json_deep = malloc(300);
    char *p = json_deep;

    json_decref(parse_ok(ok));
    parse_fails(deep, "orders.yaml:1:67", "nesting deeper than 64 levels");
    p += sprintf(p, "{\"a\": ");
    for (int i = 0; i < 64; i++)
        *p++ = '[';
    for (int i = 0; i < 64; i++)
        *p++ = ']';
    *p++ = '}';
    *p = '\0';
    parse_fails(json_deep, "orders.yaml",
                "document 1: nesting deeper than 64 levels");
    free(ok);
    free(deep);
    free(json_deep);
}

/* ---- UTF-8 ------------------------------------------------------------- */

static void test_utf8_validator(void)
{
    size_t off = 99;

    CU_ASSERT_TRUE(doc_utf8_valid("plain ascii", 11, &off));
    CU_ASSERT_TRUE(
        doc_utf8_valid("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", 9, NULL));
    CU_ASSERT_TRUE(doc_utf8_valid("\xF4\x8F\xBF\xBF", 4, NULL)); /* U+10FFFF */
    CU_ASSERT_FALSE(doc_utf8_valid("ab\xC0\xAF", 4, &off));      /* overlong */
    CU_ASSERT_EQUAL(off, 2);
    CU_ASSERT_FALSE(doc_utf8_valid("\xE0\x80\xAF", 3, &off)); /* overlong 3 */
    CU_ASSERT_EQUAL(off, 0);
    CU_ASSERT_FALSE(doc_utf8_valid("x\xED\xA0\x80", 4, &off)); /* surrogate */
    CU_ASSERT_EQUAL(off, 1);
    CU_ASSERT_FALSE(doc_utf8_valid("abc\xE2\x82", 5, &off)); /* truncated */
    CU_ASSERT_EQUAL(off, 3);
    CU_ASSERT_FALSE(doc_utf8_valid("\x80", 1, &off)); /* stray continuation */
    CU_ASSERT_EQUAL(off, 0);
    CU_ASSERT_FALSE(doc_utf8_valid("\xF4\x90\x80\x80", 4, &off)); /* >10FFFF */
    CU_ASSERT_FALSE(doc_utf8_valid("\xE2\x28\xA1", 3, &off)); /* bad cont. */
}

static void test_invalid_utf8_rejected_with_offset(void)
{
    static const char overlong[] = "a: 1\nb: x\xC0\xAFy\n";
    static const char surrogate[] = "a: 1\nbb: 2\nc: \xED\xA0\x80\n";
    static const char truncated[] = "name: caf\xC3";

    parse_fails_n(overlong, sizeof(overlong) - 1, POLIS_EPARSE,
                  "orders.yaml:2:5", "invalid UTF-8 at byte offset 9");
    parse_fails_n(surrogate, sizeof(surrogate) - 1, POLIS_EPARSE,
                  "orders.yaml:3:4", "invalid UTF-8 at byte offset 14");
    parse_fails_n(truncated, sizeof(truncated) - 1, POLIS_EPARSE,
                  "orders.yaml:1:10", "invalid UTF-8 at byte offset 9");
}

/* ---- size limit and files ---------------------------------------------- */

static void test_size_limit(void)
{
    size_t big = 2411724; /* 2.3 MiB */
    char *data = malloc(big);
    polis_error err = {0};
    json_t *docs = NULL;

    memset(data, ' ', big);
    CU_ASSERT_EQUAL(doc_parse("big.yaml", data, big, 0, &docs, &err),
                    POLIS_ETOOBIG);
    CU_ASSERT_STRING_EQUAL(err.where, "big.yaml");
    CU_ASSERT_STRING_EQUAL(err.message,
                           "document is 2.3 MiB, over the 1 MiB limit");
    CU_ASSERT_EQUAL(doc_parse("small.yaml", "a: 12345", 8, 4, &docs, &err),
                    POLIS_ETOOBIG);
    CU_ASSERT_STRING_EQUAL(err.message,
                           "document is 8 bytes, over the 4 bytes limit");
    /* Exactly at the limit is fine. */
    CU_ASSERT_EQUAL(doc_parse("ok.yaml", "a: 12345", 8, 8, &docs, &err), 0);
    json_decref(docs);
    free(data);
}

static void test_parse_file(void)
{
    char path[] = "/tmp/polis-doc-XXXXXX";
    int fd = mkstemp(path);
    polis_error err = {0};
    json_t *docs = NULL;
    static const char text[] = "a: 1\nb: [x]\n";

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(write(fd, text, sizeof(text) - 1),
                    (ssize_t)(sizeof(text) - 1));
    close(fd);
    CU_ASSERT_EQUAL(doc_parse_file(path, 0, &docs, &err), 0);
    assert_json(docs, "[{\"a\":1,\"b\":[\"x\"]}]");
    json_decref(docs);
    docs = NULL;

    CU_ASSERT_EQUAL(doc_parse_file(path, 5, &docs, &err), POLIS_ETOOBIG);
    CU_ASSERT_STRING_EQUAL(err.where, path);
    CU_ASSERT_STRING_EQUAL(err.message,
                           "document is 12 bytes, over the 5 bytes limit");
    CU_ASSERT_PTR_NULL(docs);
    unlink(path);

    CU_ASSERT_EQUAL(doc_parse_file(path, 0, &docs, &err), POLIS_ENOTFOUND);
    CU_ASSERT_STRING_EQUAL(err.where, path);
    CU_ASSERT_STRING_EQUAL(err.message, "No such file or directory");
    CU_ASSERT_EQUAL(doc_parse_file("/tmp", 0, &docs, &err), POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.message, "is a directory");
}

static void test_syntax_error_in_file_names_the_file(void)
{
    char path[] = "/tmp/polis-doc-XXXXXX";
    int fd = mkstemp(path);
    polis_error err = {0};
    json_t *docs = NULL;
    char where[300];
    static const char text[] = "a: 1\nb: [x\n";

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(write(fd, text, sizeof(text) - 1),
                    (ssize_t)(sizeof(text) - 1));
    close(fd);
    CU_ASSERT_EQUAL(doc_parse_file(path, 0, &docs, &err), POLIS_EPARSE);
    snprintf(where, sizeof(where), "%s:3:1", path);
    CU_ASSERT_STRING_EQUAL(err.where, where);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "did not find expected"));
    unlink(path);
}

/* ---- writing ----------------------------------------------------------- */

/* doc_to_yaml, then doc_parse again: the same value must come back. */
static void assert_round_trip(json_t *v)
{
    char *yaml = doc_to_yaml(v);
    json_t *back = NULL;
    polis_error err = {0};
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(yaml);
    rc = doc_parse("round.yaml", yaml, strlen(yaml), 0, &back, &err);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(json_array_size(back), 1);
    CU_ASSERT_TRUE(json_equal(json_array_get(back, 0), v));
    if (rc != 0 || !json_equal(json_array_get(back, 0), v)) {
        char *a = dump(v), *b = back ? dump(back) : NULL;
        fprintf(stderr, "\nyaml:\n%s\nin:  %s\nout: %s (%s)\n", yaml, a,
                b ? b : "-", err.message);
        free(a);
        free(b);
    }
    json_decref(back);
    free(yaml);
}

static void test_to_yaml_block_style(void)
{
    json_t *v = json_pack("{s:s, s:{s:s, s:[s, s]}, s:[{s:s, s:i}], s:{}}",
                          "kind", "Domain", "metadata", "name", "sales", "tags",
                          "a", "b", "spec", "name", "x", "n", 3, "empty");
    char *yaml = doc_to_yaml(v);

    CU_ASSERT_PTR_NOT_NULL_FATAL(yaml);
    CU_ASSERT_STRING_EQUAL(yaml, "kind: Domain\n"
                                 "metadata:\n"
                                 "  name: sales\n"
                                 "  tags:\n"
                                 "  - a\n"
                                 "  - b\n"
                                 "spec:\n"
                                 "- name: x\n"
                                 "  n: 3\n"
                                 "empty: {}\n");
    free(yaml);
    json_decref(v);
}

static void test_to_yaml_quotes_what_would_change_type(void)
{
    json_t *v = json_pack("{s:s, s:s, s:s, s:s, s:s}", "a", "true", "b", "123",
                          "c", "", "d", "null", "e", "yes");
    char *yaml = doc_to_yaml(v);

    CU_ASSERT_PTR_NOT_NULL_FATAL(yaml);
    CU_ASSERT_STRING_EQUAL(yaml, "a: \"true\"\nb: \"123\"\nc: \"\"\n"
                                 "d: \"null\"\ne: \"yes\"\n");
    free(yaml);
    json_decref(v);
}

static void test_round_trip(void)
{
    static const char *const tricky[] = {"true",
                                         "False",
                                         "null",
                                         "~",
                                         "",
                                         " ",
                                         "123",
                                         "-1",
                                         "+1",
                                         "1.5",
                                         ".5",
                                         "1e3",
                                         "0x1F",
                                         "0o17",
                                         "007",
                                         "yes",
                                         "off",
                                         "a: b",
                                         "a:b",
                                         "- x",
                                         "-x",
                                         "#x",
                                         "x #y",
                                         "x#y",
                                         "@x",
                                         "`x",
                                         "!x",
                                         "&x",
                                         "*x",
                                         "%x",
                                         "{x}",
                                         "[x]",
                                         "'q'",
                                         "\"dq\"",
                                         "x\n",
                                         "l1\nl2",
                                         "l1\n\nl2\n\n",
                                         "  leading",
                                         "trailing  ",
                                         "tab\there",
                                         "ctl\x01",
                                         "é ü 東京",
                                         "a,b",
                                         "?",
                                         "? x",
                                         ":",
                                         "- ",
                                         "---",
                                         "...",
                                         "|",
                                         ">",
                                         "\\",
                                         "9223372036854775808",
                                         ".inf",
                                         ".nan",
                                         "1_000",
                                         "x\r\ny",
                                         "\xE2\x80\xA8 line separator",
                                         NULL};
    json_t *arr = json_array();
    json_t *v;

    for (const char *const *s = tricky; *s; s++)
        json_array_append_new(arr, json_string(*s));
    v = json_pack("{s:o, s:[i, i, i, f, f, f, f, f, b, b, n], s:{s:s, s:i}, "
                  "s:[], s:{}, s:[[[s]]]}",
                  "strings", arr, "numbers", 0, (int)-7, (int)2147483647, 1.0,
                  -0.5, 0.1, 1e300, 123456789.125, 1, 0, "keys", "true", "t",
                  "123", 1, "empty_list", "empty_map", "deep", "x");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    json_object_set_new(v, "big", json_integer(INT64_MIN));
    json_object_set_new(v, "", json_string("empty key"));
    json_object_set_new(v, "a: b", json_string("odd key"));
    assert_round_trip(v);
    json_decref(v);
}

static void test_round_trip_of_parsed_document(void)
{
    json_t *docs = parse_ok("apiVersion: polis/v1\n"
                            "kind: DataProduct\n"
                            "metadata: {name: orders, labels: {tier: gold}}\n"
                            "spec:\n"
                            "  description: >\n"
                            "    Orders placed on the web shop: one row per\n"
                            "    order.\n"
                            "  schema:\n"
                            "    - {name: order_id, type: integer}\n"
                            "    - name: email\n"
                            "      classification: [pii.email]\n");

    CU_ASSERT_PTR_NOT_NULL_FATAL(docs);
    assert_round_trip(json_array_get(docs, 0));
    json_decref(docs);
}

/* Untrusted text (RPC metadata, a peer's error) becomes printable UTF-8:
 * bad bytes and control characters turn into '?', cuts keep characters
 * whole. */
static void test_utf8_sanitize(void)
{
    char out[16];

    CU_ASSERT_STRING_EQUAL(
        doc_utf8_sanitize(out, sizeof(out), "eve\xff\xfe\nx@h"), "eve???x@h");
    CU_ASSERT_STRING_EQUAL(doc_utf8_sanitize(out, sizeof(out), "caf\xc3\xa9"),
                           "caf\xc3\xa9");
    /* "\xe2\x82\xac" (euro) does not fit after 5 bytes of 6: cut before. */
    CU_ASSERT_STRING_EQUAL(doc_utf8_sanitize(out, 7, "abcd\xe2\x82\xac"),
                           "abcd");
    CU_ASSERT_STRING_EQUAL(doc_utf8_sanitize(out, sizeof(out), "\xe2\x82"),
                           "??");
    CU_ASSERT_STRING_EQUAL(doc_utf8_sanitize(out, sizeof(out), NULL), "");
}

static const test_case read_cases[] = {
    {"yaml_multi_document", test_yaml_multi_document},
    {"empty_input_is_no_documents", test_empty_input_is_no_documents},
    {"json_object", test_json_object},
    {"json_array_is_several_documents", test_json_array_is_several_documents},
    {"json_errors", test_json_errors},
    {"core_schema_scalars", test_core_schema_scalars},
    {"block_scalars_and_unicode", test_block_scalars_and_unicode},
    {"yaml_syntax_error_has_place", test_yaml_syntax_error_has_place},
    {"top_level_must_be_mapping", test_top_level_must_be_mapping},
    {"duplicate_keys", test_duplicate_keys},
    {"anchors_and_aliases_rejected", test_anchors_and_aliases_rejected},
    {"tags_nul_and_non_finite", test_tags_nul_and_non_finite},
    {"depth_limit", test_depth_limit},
    {"utf8_sanitize", test_utf8_sanitize},
    {NULL, NULL},
};

static const test_case limit_cases[] = {
    {"utf8_validator", test_utf8_validator},
    {"invalid_utf8_rejected_with_offset",
     test_invalid_utf8_rejected_with_offset},
    {"size_limit", test_size_limit},
    {"parse_file", test_parse_file},
    {"syntax_error_in_file_names_the_file",
     test_syntax_error_in_file_names_the_file},
    {NULL, NULL},
};

static const test_case write_cases[] = {
    {"to_yaml_block_style", test_to_yaml_block_style},
    {"to_yaml_quotes_what_would_change_type",
     test_to_yaml_quotes_what_would_change_type},
    {"round_trip", test_round_trip},
    {"round_trip_of_parsed_document", test_round_trip_of_parsed_document},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"read", NULL, NULL, read_cases},
    {"limits", NULL, NULL, limit_cases},
    {"write", NULL, NULL, write_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
