/*
 * test_check_api.c — policy/api/check.h: Principal documents become the
 * engine's subject (string and list attributes), decisions become
 * CheckResponse messages, with and without the explanation.
 */
#include "policy/api/check.h"
#include "tests/support/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *docs_json =
    "[{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
    "\"metadata\":{\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\","
    "\"schema\":[{\"name\":\"id\",\"type\":\"integer\"},"
    "{\"name\":\"email\",\"type\":\"string\","
    "\"classification\":[\"pii.email\"]}]}},"
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
    "\"metadata\":{\"name\":\"p\"},\"spec\":{\"scope\":\"global\","
    "\"rules\":[{\"name\":\"eu-read\",\"effect\":\"allow\","
    "\"subjects\":[\"*\"],\"resources\":[\"sales/*\"],"
    "\"when\":\"'EU' in subject.regions\"},"
    "{\"name\":\"mask\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
    "\"resources\":[\"sales/*\"],\"mask\":{\"method\":\"email\","
    "\"classifications\":[\"pii.email\"]}}]}}]";

static pol_engine *build(void)
{
    json_t *docs = json_loads(docs_json, 0, NULL);
    pol_engine *e = NULL;
    polis_error err = {0};

    CU_ASSERT_PTR_NOT_NULL_FATAL(docs);
    CU_ASSERT_EQUAL(pol_engine_build(docs, NULL, &e, &err), 0);
    json_decref(docs);
    return e;
}

/* Decide for erin (attributes from `principal_json`) on sales/orders;
 * explain < 0: through check_response_from_decision, else
 * check_response_build with that flag. */
static int decide_explain(pol_engine *e, const char *principal_json,
                          int explain, Polis__V1__CheckResponse *resp)
{
    json_t *pdoc = json_loads(principal_json, 0, NULL);
    check_subject *subject = malloc(sizeof(*subject));
    check_columns *cols = malloc(sizeof(*cols));
    Polis__V1__CheckRequest req = POLIS__V1__CHECK_REQUEST__INIT;
    pol_decision *d = pol_decision_new();
    pol_request preq;
    polis_error err = {0};
    int rc;

    req.principal = "erin";
    req.product = "sales/orders";
    req.port = "query";
    rc = check_subject_from_principal("erin", pdoc, subject, &err);
    if (rc == 0)
        rc = check_request_from_pb(&req, subject, cols, &preq, &err);
    if (rc == 0)
        rc = pol_decide(e, &preq, d, &err);
    if (rc == 0 && explain < 0)
        rc = check_response_from_decision(d, 7, "erin", resp, &err);
    else if (rc == 0)
        rc = check_response_build(d, 7, "erin", explain == 1, resp, &err);
    pol_decision_free(d);
    free(cols);
    free(subject);
    json_decref(pdoc);
    return rc;
}

static int decide_for(pol_engine *e, const char *principal_json,
                      Polis__V1__CheckResponse *resp)
{
    return decide_explain(e, principal_json, -1, resp);
}

/* A list-valued attribute reaches `in`: it used to be dropped, so the
 * allow never matched (and a deny written with `in` failed open). */
static void test_list_attribute(void)
{
    pol_engine *e = build();
    Polis__V1__CheckResponse resp = POLIS__V1__CHECK_RESPONSE__INIT;

    CU_ASSERT_EQUAL_FATAL(
        decide_for(e,
                   "{\"spec\":{\"attributes\":{\"regions\":[\"EEA\",\"EU\"]}}}",
                   &resp),
        0);
    CU_ASSERT_TRUE(resp.allowed);
    CU_ASSERT_STRING_EQUAL(resp.deciding_rule, "global/p/eu-read");
    CU_ASSERT_EQUAL(resp.n_masks, 1);
    CU_ASSERT_STRING_EQUAL(resp.masks[0]->column, "email");
    CU_ASSERT_STRING_EQUAL(resp.masks[0]->method, "email");
    CU_ASSERT_EQUAL(resp.revision, 7);
    check_response_clear(&resp);

    CU_ASSERT_EQUAL_FATAL(
        decide_for(e, "{\"spec\":{\"attributes\":{\"regions\":[\"US\"]}}}",
                   &resp),
        0);
    CU_ASSERT_FALSE(resp.allowed);
    CU_ASSERT_STRING_EQUAL(resp.reason, "default-deny");
    check_response_clear(&resp);
    pol_engine_free(e);
}

static void test_bounds_are_errors(void)
{
    json_t *p = json_object(), *spec = json_object(), *groups = json_array();
    check_subject *s = malloc(sizeof(*s));
    polis_error err = {0};

    for (int i = 0; i < POL_MAX_GROUPS + 1; i++)
        json_array_append_new(groups, json_string("g"));
    json_object_set_new(spec, "groups", groups);
    json_object_set_new(p, "spec", spec);
    CU_ASSERT_EQUAL(check_subject_from_principal("x", p, s, &err),
                    POLIS_ETOOBIG);
    CU_ASSERT_STRING_EQUAL(err.where, "spec.groups");
    json_decref(p);
    free(s);
}

/* Every field but the two explaining ones is the same with and without
 * explain; with it, the explanation and a parseable decision_json come
 * too; without, both are empty, as the Authorizer's default promises. */
static void test_explain_on_and_off(void)
{
    static const char *eu =
        "{\"spec\":{\"attributes\":{\"regions\":[\"EU\"]}}}";
    pol_engine *e = build();
    Polis__V1__CheckResponse on = POLIS__V1__CHECK_RESPONSE__INIT;
    Polis__V1__CheckResponse off = POLIS__V1__CHECK_RESPONSE__INIT;
    json_t *dj;

    CU_ASSERT_EQUAL_FATAL(decide_explain(e, eu, 1, &on), 0);
    CU_ASSERT_EQUAL_FATAL(decide_explain(e, eu, 0, &off), 0);
    CU_ASSERT_TRUE(on.allowed && off.allowed);
    CU_ASSERT_STRING_EQUAL(off.reason, "allowed");
    CU_ASSERT_STRING_EQUAL(off.reason, on.reason);
    CU_ASSERT_STRING_EQUAL(off.deciding_rule, "global/p/eu-read");
    CU_ASSERT_STRING_EQUAL(off.deciding_rule, on.deciding_rule);
    CU_ASSERT_STRING_EQUAL(off.principal, "erin");
    CU_ASSERT_EQUAL(off.revision, 7);
    CU_ASSERT_EQUAL_FATAL(off.n_masks, 1);
    CU_ASSERT_EQUAL_FATAL(on.n_masks, 1);
    CU_ASSERT_STRING_EQUAL(off.masks[0]->column, "email");
    CU_ASSERT_STRING_EQUAL(off.masks[0]->method, "email");
    CU_ASSERT_STRING_EQUAL(off.masks[0]->rule, "global/p/mask");
    CU_ASSERT_STRING_EQUAL(off.masks[0]->classification, "pii.email");
    CU_ASSERT_STRING_EQUAL(on.masks[0]->rule, off.masks[0]->rule);
    CU_ASSERT_EQUAL(off.n_matched_rules, on.n_matched_rules);
    CU_ASSERT_TRUE(off.n_matched_rules >= 2);

    CU_ASSERT_STRING_EQUAL(off.explanation, "");
    CU_ASSERT_STRING_EQUAL(off.decision_json, "");
    CU_ASSERT_PTR_NOT_NULL(strstr(on.explanation, "global/p/eu-read"));
    dj = json_loads(on.decision_json, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL(dj);
    CU_ASSERT_TRUE(json_is_true(json_object_get(dj, "allowed")));
    json_decref(dj);
    check_response_clear(&on);
    check_response_clear(&off);
    pol_engine_free(e);
}

/* A decision with several masks, row filters and matched rules: each lands
 * in its own field, whole, and the response packs and unpacks the same
 * (the response's strings share one block: a layout mistake shows here,
 * and as an overflow under the sanitizers). */
static void test_response_fields_whole(void)
{
    static const char *many =
        "[{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
        "\"metadata\":{\"name\":\"orders\"},\"spec\":{\"domain\":"
        "\"sales\",\"schema\":[{\"name\":\"id\",\"type\":\"integer\"},"
        "{\"name\":\"email\",\"type\":\"string\",\"classification\":"
        "[\"pii.email\"]},{\"name\":\"phone\",\"type\":\"string\","
        "\"classification\":[\"pii.phone\"]},{\"name\":\"region\","
        "\"type\":\"string\"},{\"name\":\"amount\",\"type\":"
        "\"integer\"}]}},"
        "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
        "\"metadata\":{\"name\":\"many\"},\"spec\":{\"scope\":"
        "\"sales\",\"rules\":[{\"name\":\"read\",\"effect\":\"allow\","
        "\"subjects\":[\"*\"],\"resources\":[\"sales/*\"]},"
        "{\"name\":\"m-email\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
        "\"resources\":[\"sales/*\"],\"mask\":{\"method\":\"redact\","
        "\"classifications\":[\"pii.email\"]}},"
        "{\"name\":\"m-phone\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
        "\"resources\":[\"sales/*\"],\"mask\":{\"method\":\"hash\","
        "\"classifications\":[\"pii.phone\"]}},"
        "{\"name\":\"f-region\",\"effect\":\"filter\",\"subjects\":"
        "[\"*\"],\"resources\":[\"sales/*\"],\"filter\":"
        "\"region == subject.region\"},"
        "{\"name\":\"f-amount\",\"effect\":\"filter\",\"subjects\":"
        "[\"*\"],\"resources\":[\"sales/*\"],\"filter\":"
        "\"amount < 100\"}]}}]";
    json_t *docs = json_loads(many, 0, NULL);
    pol_engine *e = NULL;
    polis_error err = {0};

    CU_ASSERT_PTR_NOT_NULL_FATAL(docs);
    if (pol_engine_build(docs, NULL, &e, &err) != 0)
        fprintf(stderr, "build: %s: %s\n", err.where, err.message);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    json_decref(docs);
    for (int explain = 0; explain <= 1; explain++) {
        Polis__V1__CheckResponse r = POLIS__V1__CHECK_RESPONSE__INIT;
        Polis__V1__CheckResponse *back;
        uint8_t *buf;
        size_t len;

        CU_ASSERT_EQUAL_FATAL(
            decide_explain(e,
                           "{\"spec\":{\"attributes\":{\"region\":"
                           "\"EU\"}}}",
                           explain, &r),
            0);
        CU_ASSERT_TRUE(r.allowed);
        CU_ASSERT_STRING_EQUAL(r.deciding_rule, "sales/many/read");
        CU_ASSERT_EQUAL_FATAL(r.n_masks, 2);
        CU_ASSERT_STRING_EQUAL(r.masks[0]->column, "email");
        CU_ASSERT_STRING_EQUAL(r.masks[0]->method, "redact");
        CU_ASSERT_STRING_EQUAL(r.masks[0]->rule, "sales/many/m-email");
        CU_ASSERT_STRING_EQUAL(r.masks[1]->column, "phone");
        CU_ASSERT_STRING_EQUAL(r.masks[1]->method, "hash");
        CU_ASSERT_STRING_EQUAL(r.masks[1]->classification, "pii.phone");
        CU_ASSERT_EQUAL_FATAL(r.n_row_filters, 2);
        CU_ASSERT_TRUE(
            (strcmp(r.row_filters[0], "amount < 100") == 0 &&
             strcmp(r.row_filters[1], "region == subject.region") == 0) ||
            (strcmp(r.row_filters[1], "amount < 100") == 0 &&
             strcmp(r.row_filters[0], "region == subject.region") == 0));
        CU_ASSERT_EQUAL(r.n_matched_rules, 5);
        for (size_t i = 0; i < r.n_matched_rules; i++)
            CU_ASSERT_EQUAL(strncmp(r.matched_rules[i], "sales/many/", 11), 0);
        CU_ASSERT_EQUAL(r.explanation[0] != '\0', explain);

        len = polis__v1__check_response__get_packed_size(&r);
        buf = malloc(len);
        CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
        polis__v1__check_response__pack(&r, buf);
        back = polis__v1__check_response__unpack(NULL, len, buf);
        CU_ASSERT_PTR_NOT_NULL_FATAL(back);
        CU_ASSERT_EQUAL(back->n_masks, 2);
        CU_ASSERT_STRING_EQUAL(back->masks[1]->rule, "sales/many/m-phone");
        CU_ASSERT_STRING_EQUAL(back->principal, "erin");
        CU_ASSERT_STRING_EQUAL(back->decision_json, r.decision_json);
        polis__v1__check_response__free_unpacked(back, NULL);
        free(buf);
        check_response_clear(&r);
        CU_ASSERT_PTR_NULL(r.masks);
        CU_ASSERT_EQUAL(r.n_masks, 0);
        check_response_clear(&r); /* a cleared response clears again */
    }
    pol_engine_free(e);
}

/* Denials before the engine: reason and principal always, the explanation
 * and its JSON only when asked. */
static void test_deny_explain_on_and_off(void)
{
    Polis__V1__CheckResponse r = POLIS__V1__CHECK_RESPONSE__INIT;
    polis_error err = {0};
    json_t *dj;

    CU_ASSERT_EQUAL_FATAL(check_response_deny("unknown principal",
                                              "denied: no principal \"x\"", "x",
                                              9, false, &r, &err),
                          0);
    CU_ASSERT_FALSE(r.allowed);
    CU_ASSERT_STRING_EQUAL(r.reason, "unknown principal");
    CU_ASSERT_STRING_EQUAL(r.principal, "x");
    CU_ASSERT_EQUAL(r.revision, 9);
    CU_ASSERT_STRING_EQUAL(r.explanation, "");
    CU_ASSERT_STRING_EQUAL(r.decision_json, "");
    check_response_clear(&r);

    CU_ASSERT_EQUAL_FATAL(check_response_deny("no snapshot", "denied: none",
                                              NULL, 0, true, &r, &err),
                          0);
    CU_ASSERT_STRING_EQUAL(r.principal, "");
    CU_ASSERT_STRING_EQUAL(r.explanation, "denied: none");
    dj = json_loads(r.decision_json, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL(dj);
    CU_ASSERT_TRUE(json_is_false(json_object_get(dj, "allowed")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(dj, "reason")),
                           "no snapshot");
    json_decref(dj);
    check_response_clear(&r);
}

static const test_case cases[] = {
    {"list_attribute", test_list_attribute},
    {"bounds_are_errors", test_bounds_are_errors},
    {"explain_on_and_off", test_explain_on_and_off},
    {"response_fields_whole", test_response_fields_whole},
    {"deny_explain_on_and_off", test_deny_explain_on_and_off},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"check_api", NULL, NULL, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
