/*
 * fuzz_policy_doc.c — libFuzzer target for the policy compiler: bytes ->
 * JSON -> pol_policy_validate / pol_engine_build -> a few fixed decisions,
 * explained and rendered as JSON -> free.  Nothing may crash or leak.
 */
#include "policy/policy.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decide_some(const pol_engine *e, const uint8_t *data, size_t size)
{
    static const char *const groups[] = {"analysts", "sales"};
    static const char *const tags[] = {"pii.email"};
    pol_expr_attr attr = {"region", false, "EU", NULL, 0};
    pol_column_request cols[2] = {{"email", tags, 1}, {"region", NULL, 0}};
    static const char *const products[] = {"sales/orders", "hr/x", "a/b"};
    pol_decision *d = pol_decision_new();
    char buf[512];
    size_t i;

    if (d == NULL)
        return;
    for (i = 0; i < 6; i++) {
        pol_request req = {{i % 2 ? "alice" : NULL, groups, 2, &attr, 1},
                           products[i % 3],
                           (pol_port)(i % POL_PORT_COUNT),
                           i % 2 ? "analytics" : NULL,
                           i < 3 ? NULL : cols,
                           i < 3 ? 0 : (i == 3 ? 1 : 2)};
        json_t *j;
        size_t k;

        pol_decide(e, &req, d, NULL);
        pol_decision_explain(d, buf, sizeof(buf));
        j = pol_decision_to_json(d);
        json_decref(j);
        for (k = 0; k < pol_decision_column_count(d); k++) {
            const pol_mask *m = pol_decision_column_mask(d, k);
            char out[256];
            size_t len;
            bool is_null;

            /* The fuzz bytes themselves as a value: odd UTF-8 and all. */
            if (m)
                pol_mask_apply(m, pol_engine_mask_key(e), (const char *)data,
                               size < 48 ? size : 48, out, sizeof(out), &len,
                               &is_null);
        }
    }
    pol_decision_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *doc = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    pol_engine_options opts = {"fuzz", 4};
    pol_engine *e = NULL;
    polis_error err = {0};

    if (doc == NULL)
        return 0;
    if (json_is_object(doc)) {
        pol_policy_validate(doc, &err);
        json_t *arr = json_array();

        json_array_append(arr, doc);
        json_decref(doc);
        doc = arr;
    }
    if (pol_engine_build(doc, &opts, &e, &err) == 0) {
        decide_some(e, data, size);
        pol_engine_free(e);
    }
    json_decref(doc);
    return 0;
}
