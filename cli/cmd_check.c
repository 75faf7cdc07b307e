/*
 * cmd_check.c — `polisctl check`: ask the control plane how it would decide
 * one access request (Governance.Check, proto/polis/v1/check.proto) and show
 * the decision with the rules behind it, as a table, JSON or YAML.
 */
#include "cli/cli.h"
#include "cli/output.h"
#include "polis/v1/governance.pb-c.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Far above what a product has (the engine takes at most 1024 columns and
 * says so); this only keeps a runaway --columns from eating memory. */
#define CHECK_MAX_COLUMNS 4096
#define LABEL_WIDTH       11 /* "ROW FILTER " */

static const char *const known_ports[] = {"query", "file", "event", "http"};

/* ---- the request ---- */

/* The --columns values (repeatable, each comma-separated) as one list.
 * `buf` receives copies the list points into; caller frees both. */
static int columns_parse(cli_ctx *ctx, const cli_args *args, char ***out,
                         size_t *n_out, char **buf_out)
{
    size_t total = 0, n = 0;
    const char *v;
    char **list = NULL, *buf, *p;

    *out = NULL;
    *n_out = 0;
    *buf_out = NULL;
    for (size_t i = 0; (v = cli_args_nth(args, "columns", i)); i++)
        total += strlen(v) + 1;
    if (total == 0)
        return 0;
    buf = malloc(total);
    if (buf == NULL)
        return cli_fail(ctx, "out of memory");
    p = buf;
    for (size_t i = 0; (v = cli_args_nth(args, "columns", i)); i++) {
        size_t len = strlen(v);

        if (i > 0)
            *p++ = ',';
        memcpy(p, v, len);
        p += len;
    }
    *p = '\0';
    /* Every separator is a comma now: split there. */
    list = calloc(total, sizeof(*list));
    if (list == NULL) {
        free(buf);
        return cli_fail(ctx, "out of memory");
    }
    for (char *name = buf;;) {
        char *comma = strchr(name, ',');

        size_t len;

        if (comma)
            *comma = '\0';
        /* "a, b" is what people type after a comma. */
        while (*name == ' ')
            name++;
        len = strlen(name);
        while (len > 0 && name[len - 1] == ' ')
            name[--len] = '\0';
        if (name[0] == '\0') {
            free(list);
            free(buf);
            return cli_usage_error(ctx, "--columns: empty column name (give "
                                        "names separated by commas: a,b,c)");
        }
        if (n >= CHECK_MAX_COLUMNS) {
            free(list);
            free(buf);
            return cli_usage_error(ctx, "--columns: more than %d columns",
                                   CHECK_MAX_COLUMNS);
        }
        list[n++] = name;
        if (comma == NULL)
            break;
        name = comma + 1;
    }
    *out = list;
    *n_out = n;
    *buf_out = buf;
    return 0;
}

/* What can be told without the server, as usage errors (exit 2). */
static int request_check(cli_ctx *ctx, const char *principal,
                         const char *product, const char *port)
{
    const char *slash;
    bool port_ok = port == NULL;

    if (principal == NULL)
        return cli_usage_error(ctx, "missing --principal NAME (who asks)");
    if (principal[0] == '\0')
        return cli_usage_error(ctx, "--principal: empty name");
    if (product == NULL)
        return cli_usage_error(ctx, "missing --product DOMAIN/PRODUCT (what "
                                    "is asked for)");
    slash = strchr(product, '/');
    if (slash == NULL || slash == product || slash[1] == '\0' ||
        strchr(slash + 1, '/') != NULL)
        return cli_usage_error(ctx,
                               "--product: expected DOMAIN/PRODUCT (e.g. "
                               "sales/orders), got \"%s\"",
                               product);
    for (size_t i = 0;
         !port_ok && i < sizeof(known_ports) / sizeof(*known_ports); i++)
        port_ok = strcmp(port, known_ports[i]) == 0;
    if (!port_ok)
        return cli_usage_error(ctx,
                               "--port: unknown port \"%s\" (expected query, "
                               "file, event or http)",
                               port);
    return 0;
}

/* ---- JSON and YAML ---- */

static json_t *str_array(char **items, size_t n)
{
    json_t *a = json_array();

    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_string(items[i] ? items[i] : "")) !=
            0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* The response with the proto3 JSON names; `decision` is decision_json
 * parsed (its text when it is not JSON, null when empty). */
static json_t *check_json(const Polis__V1__CheckResponse *r)
{
    json_t *masks = json_array(), *decision;
    const char *dj = r->decision_json ? r->decision_json : "";

    decision = dj[0] ? json_loads(dj, 0, NULL) : json_null();
    if (decision == NULL)
        decision = json_string(dj);
    for (size_t i = 0; masks && i < r->n_masks; i++) {
        const Polis__V1__ColumnMask *m = r->masks[i];
        if (json_array_append_new(
                masks, json_pack("{s:s,s:s,s:s,s:s}", "column", m->column,
                                 "method", m->method, "rule", m->rule,
                                 "classification", m->classification)) != 0) {
            json_decref(masks);
            masks = NULL;
        }
    }
    /* "o" steals the references, also when packing fails. */
    return json_pack("{s:b,s:s,s:s,s:s,s:o,s:o,s:I,s:o,s:I,s:s,s:o}", "allowed",
                     r->allowed, "reason", r->reason, "principal", r->principal,
                     "decidingRule", r->deciding_rule, "masks", masks,
                     "rowFilters", str_array(r->row_filters, r->n_row_filters),
                     "minGroupSize", (json_int_t)r->min_group_size,
                     "matchedRules",
                     str_array(r->matched_rules, r->n_matched_rules),
                     "revision", (json_int_t)r->revision, "explanation",
                     r->explanation, "decision", decision);
}

/* ---- table ---- */

static void label(FILE *f, const char *name)
{
    fprintf(f, "%-*s", LABEL_WIDTH, name);
}

static void print_masks(FILE *f, const Polis__V1__CheckResponse *r)
{
    size_t wcol = 0, wmethod = 0;

    label(f, "MASKS");
    if (r->n_masks == 0) {
        fprintf(f, "-\n");
        return;
    }
    for (size_t i = 0; i < r->n_masks; i++) {
        size_t c = strlen(r->masks[i]->column), m = strlen(r->masks[i]->method);
        wcol = c > wcol ? c : wcol;
        wmethod = m > wmethod ? m : wmethod;
    }
    for (size_t i = 0; i < r->n_masks; i++) {
        const Polis__V1__ColumnMask *m = r->masks[i];

        if (i > 0)
            label(f, "");
        fprintf(f, "%-*s  %-*s  %s (%s)\n", (int)wcol, m->column, (int)wmethod,
                m->method, m->rule,
                m->classification[0] ? m->classification : "by column name");
    }
}

/* The filters' rules come only in decision_json ("filters": [{"expression",
 * "rule": {scope, policy, rule}}]), in the order of row_filters. */
static void print_filters(FILE *f, const Polis__V1__CheckResponse *r,
                          const json_t *decision)
{
    const json_t *filters = json_object_get(decision, "filters");
    size_t width = 0;

    label(f, "ROW FILTER");
    if (r->n_row_filters == 0) {
        fprintf(f, "-\n");
        return;
    }
    for (size_t i = 0; i < r->n_row_filters; i++) {
        size_t w = strlen(r->row_filters[i]);
        width = w > width ? w : width;
    }
    for (size_t i = 0; i < r->n_row_filters; i++) {
        const json_t *rule =
            json_object_get(json_array_get(filters, i), "rule");
        const char *scope = json_string_value(json_object_get(rule, "scope"));
        const char *policy = json_string_value(json_object_get(rule, "policy"));
        const char *name = json_string_value(json_object_get(rule, "rule"));

        if (i > 0) {
            label(f, "");
            fprintf(f, "AND ");
        }
        if (scope && policy && name)
            fprintf(f, "%-*s  (%s/%s/%s)\n", (int)width, r->row_filters[i],
                    scope, policy, name);
        else
            fprintf(f, "%s\n", r->row_filters[i]);
    }
}

/* One item per line under the value column. */
static void print_list(FILE *f, const char *name, char **items, size_t n)
{
    label(f, name);
    if (n == 0)
        fprintf(f, "-\n");
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            label(f, "");
        fprintf(f, "%s\n", items[i]);
    }
}

/* The explanation is one line of "; "-separated clauses (decision, then
 * each mask, filter and group size): one clause per line reads better. */
static void print_explanation(FILE *f, const char *text)
{
    const char *p = text, *sep;

    fputc('\n', f);
    while ((sep = strstr(p, "; ")) != NULL) {
        fprintf(f, "%s%.*s;\n", p == text ? "" : "  ", (int)(sep - p), p);
        p = sep + 2;
    }
    fprintf(f, "%s%s\n", p == text ? "" : "  ", p);
}

static void print_table(cli_ctx *ctx, const Polis__V1__CheckResponse *r)
{
    FILE *f = ctx->out;
    json_t *decision = json_loads(r->decision_json, 0, NULL);
    const char *product =
        json_string_value(json_object_get(decision, "product"));
    const char *port = json_string_value(json_object_get(decision, "port"));
    const char *purpose =
        json_string_value(json_object_get(decision, "purpose"));

    label(f, "DECISION");
    if (r->deciding_rule[0])
        fprintf(f, "%s (by %s)\n", r->allowed ? "allowed" : "denied",
                r->deciding_rule);
    else if (strcmp(r->reason, "default-deny") == 0)
        fprintf(f, "denied (default deny: no rule allows)\n");
    else
        fprintf(f, "%s (%s)\n", r->allowed ? "allowed" : "denied", r->reason);
    if (product) {
        label(f, "REQUEST");
        fprintf(f, "%s reads %s", r->principal, product);
        if (port)
            fprintf(f, " via %s", port);
        if (purpose)
            fprintf(f, " for %s", purpose);
        fputc('\n', f);
    }
    print_masks(f, r);
    print_filters(f, r, decision);
    label(f, "MIN GROUP");
    if (r->min_group_size > 0)
        fprintf(f, "%" PRId64 "\n", r->min_group_size);
    else
        fprintf(f, "-\n");
    print_list(f, "MATCHED", r->matched_rules, r->n_matched_rules);
    label(f, "REVISION");
    fprintf(f, "%" PRId64 "\n", r->revision);
    if (r->explanation[0])
        print_explanation(f, r->explanation);
    json_decref(decision);
}

/* ---- the verb ---- */

int cmd_check(cli_ctx *ctx, const cli_args *args)
{
    Polis__V1__CheckRequest req = POLIS__V1__CHECK_REQUEST__INIT;
    Polis__V1__CheckResponse *resp = NULL;
    const char *principal = cli_args_value(args, "principal");
    const char *product = cli_args_value(args, "product");
    const char *port = cli_args_value(args, "port");
    const char *purpose = cli_args_value(args, "purpose");
    char **columns = NULL, *columns_buf = NULL;
    size_t n_columns = 0;
    json_t *o;
    int rc;

    if ((rc = request_check(ctx, principal, product, port)) != 0 ||
        (rc = columns_parse(ctx, args, &columns, &n_columns, &columns_buf)) !=
            0)
        return rc;
    req.principal = (char *)principal;
    req.product = (char *)product;
    req.port = (char *)(port ? port : "");
    req.purpose = (char *)(purpose ? purpose : "");
    req.columns = columns;
    req.n_columns = n_columns;
    /* No kind: the server's `Principal "x" not found ...` says it best. */
    rc = cli_call(ctx, "Check", &req.base, (ProtobufCMessage **)&resp, NULL);
    if (rc)
        goto out;
    if (ctx->output == CLI_OUTPUT_TABLE) {
        print_table(ctx, resp);
    } else {
        o = check_json(resp);
        rc = o ? out_print_value(ctx, o) : cli_fail(ctx, "out of memory");
        json_decref(o);
        if (rc)
            goto out;
    }
    /* A denial is an answer, not a failure, unless the script asked. */
    if (!resp->allowed && cli_args_has(args, "exit-code"))
        rc = CLI_EXIT_DENIED;
out:
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    free(columns);
    free(columns_buf);
    return rc;
}
