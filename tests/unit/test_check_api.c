/*
 * test_check_api.c — policy/api/check.h: Principal documents become the
 * engine's subject (string and list attributes), decisions become
 * CheckResponse messages.
 */
#include "policy/api/check.h"
#include "tests/support/testutil.h"

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

static int decide_for(pol_engine *e, const char *principal_json,
                      Polis__V1__CheckResponse *resp)
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
    if (rc == 0)
        rc = check_response_from_decision(d, 7, "erin", resp, &err);
    pol_decision_free(d);
    free(cols);
    free(subject);
    json_decref(pdoc);
    return rc;
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

static const test_case cases[] = {
    {"list_attribute", test_list_attribute},
    {"bounds_are_errors", test_bounds_are_errors},
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
