/*
 * fuzz_document.c — libFuzzer target: arbitrary bytes through doc_parse,
 * each document through res_validate, the set through res_validate_set,
 * and every parsed document back through doc_to_yaml, which must read back
 * to the same value.
 */
#include "common/document.h"
#include "common/resource.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static res_errors errs; /* too big for the stack of every iteration */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    polis_error err = {0};
    json_t *docs = NULL, *doc;
    size_t i;

    if (doc_parse("fuzz.yaml", (const char *)data, size, 64 * 1024, &docs,
                  &err) != 0) {
        /* A failure must say where. */
        if (err.where[0] == '\0' || err.message[0] == '\0')
            abort();
        return 0;
    }
    json_array_foreach(docs, i, doc)
    {
        res_info info;
        char *yaml, *canon;
        json_t *back = NULL;

        polis_error_clear(&err);
        if (res_validate(doc, "fuzz.yaml", &info, &err) == 0) {
            if (info.kind == RES_KIND_UNKNOWN || info.name[0] == '\0' ||
                info.scope[0] == '\0')
                abort();
        } else if (err.message[0] == '\0') {
            abort();
        }
        canon = res_canonical_json(doc);
        free(canon);
        yaml = doc_to_yaml(doc);
        if (yaml == NULL)
            abort();
        if (doc_parse("back.yaml", yaml, strlen(yaml), 0, &back, &err) != 0 ||
            json_array_size(back) != 1 ||
            !json_equal(json_array_get(back, 0), doc))
            abort();
        json_decref(back);
        free(yaml);
    }
    res_validate_set(docs, NULL, NULL, NULL, NULL, &errs);
    json_decref(docs);
    return 0;
}
