/*
 * fuzz_expr.c — libFuzzer target for the expression language
 * (policy/expr.h): parse, check, evaluate, render for both SQL dialects and
 * print arbitrary input; the canonical text must parse back to itself.
 */
#include "policy/expr.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const pol_expr_column cols[] = {
    {"region", POL_EXPR_STRING},    {"price", POL_EXPR_DECIMAL},
    {"qty", POL_EXPR_INTEGER},      {"active", POL_EXPR_BOOLEAN},
    {"weird col", POL_EXPR_STRING}, {"a", POL_EXPR_STRING},
    {"b", POL_EXPR_BOOLEAN},        {"n", POL_EXPR_INTEGER},
};

static int get_col(void *ctx, int id, const char *name, pol_expr_value *out)
{
    (void)ctx;
    (void)name;
    switch (id) {
    case 0:
    case 4:
    case 5:
        out->type = POL_EXPR_STRING;
        out->u.str = id == 5 ? "a%b_\xc3\xbc" : "EU";
        out->len = strlen(out->u.str);
        return 0;
    case 1:
        out->type = POL_EXPR_DECIMAL;
        out->u.d = 2.5;
        return 0;
    case 2:
    case 7:
        out->type = POL_EXPR_INTEGER;
        out->u.i = id == 2 ? 3 : INT64_MIN;
        return 0;
    case 3:
    case 6:
        out->type = id == 3 ? POL_EXPR_BOOLEAN : POL_EXPR_NULL;
        out->u.b = true;
        return 0;
    }
    return POLIS_ENOTFOUND;
}

/* The only quote the renderer writes itself is ESCAPE '\' (PostgreSQL):
 * any other would mean a value was pasted into the text. */
static bool only_escape_quotes(const char *sql)
{
    static const char esc[] = "ESCAPE '\\'";
    const char *q;

    if (sql == NULL)
        return false;
    while ((q = strchr(sql, '\'')) != NULL) {
        if (q - sql < 7 || strncmp(q - 7, esc, sizeof(esc) - 1) != 0)
            return false;
        sql = q + 3;
    }
    return true;
}

static void same_text_after_reparse(const char *text)
{
    polis_error err = {0};
    pol_expr *again = NULL;
    char *text2 = NULL;

    /* Printed text may exceed the source limit (long inputs grow when
     * quoted names are re-quoted); only check what fits. */
    if (strlen(text) > POL_EXPR_MAX_LEN)
        return;
    if (pol_expr_parse(text, &again, &err) != 0)
        __builtin_trap(); /* canonical text must parse */
    if (pol_expr_to_string(again, &text2, &err) != 0 ||
        strcmp(text, text2) != 0)
        __builtin_trap(); /* and be a fixed point */
    free(text2);
    pol_expr_free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const groups[] = {"EU", NULL, "a"};
    static const char *const list[] = {"x", "y"};
    static const pol_expr_attr attrs[] = {
        {"region", false, "EU", NULL, 0},
        {"l", true, NULL, list, 2},
        {"nul", false, NULL, NULL, 0},
    };
    static const pol_expr_subject subject = {"ann", groups, 3, attrs, 3};
    static const pol_expr_request request = {"p", NULL, "query"};
    pol_expr_schema schema = {cols, sizeof(cols) / sizeof(cols[0]), NULL, NULL};
    polis_error err = {0};
    pol_expr *e = NULL;
    char *src, *text = NULL;

    if (size > POL_EXPR_MAX_LEN + 16)
        return 0;
    src = malloc(size + 1);
    if (src == NULL)
        return 0;
    memcpy(src, data, size);
    src[size] = '\0';

    if (pol_expr_parse(src, &e, &err) == 0) {
        for (size_t i = 0; i < pol_expr_column_count(e); i++)
            if (pol_expr_column_name(e, i) == NULL)
                __builtin_trap();
        if (pol_expr_to_string(e, &text, &err) == 0) {
            same_text_after_reparse(text);
            free(text);
        }
        if (pol_expr_check(e, &schema, &err) == 0) {
            const pol_expr *one[2] = {e, e};
            pol_tri t;
            bool m;
            for (int d = 0; d < 2; d++) {
                pol_expr_sql_opts opts = {d ? POL_SQL_POSTGRES : POL_SQL_SQLITE,
                                          d ? "t\"x" : NULL, (unsigned)d * 7};
                pol_expr_sql sql;
                if (pol_expr_to_sql(one, 2, &opts, &subject, &request, &sql,
                                    &err) == 0) {
                    if (!only_escape_quotes(sql.text))
                        __builtin_trap(); /* values are never pasted */
                    pol_expr_sql_free(&sql);
                }
            }
            pol_expr_eval(e, get_col, NULL, &subject, &request, &t, &err);
            pol_expr_eval(e, get_col, NULL, NULL, NULL, &t, &err);
            pol_expr_matches(one, 2, get_col, NULL, &subject, &request, &m,
                             &err);
        }
        pol_expr_free(e);
    }
    free(src);
    return 0;
}
