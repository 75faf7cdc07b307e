/*
 * cmd_resources.c — the resource verbs of polisctl: apply, get, list,
 * delete and history, each one Governance RPC (governance.proto) rendered
 * as a table, JSON or YAML (output.h).
 */
#include "cli/cli.h"
#include "cli/inputs.h"
#include "cli/output.h"
#include "common/document.h"
#include "common/resource.h"
#include "polis/v1/governance.pb-c.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KINDS_EXPECTED "expected domain, dataproduct (dp), policy or principal"

/* KIND as typed ("policies", "dp") → the canonical name; usage error on an
 * unknown one. */
static int kind_arg(cli_ctx *ctx, const char *text, res_kind *out)
{
    *out = res_kind_parse(text);
    if (*out == RES_KIND_UNKNOWN)
        return cli_usage_error(ctx, "unknown kind \"%s\" (%s)", text,
                               KINDS_EXPECTED);
    return 0;
}

static void print_change(cli_ctx *ctx, const char *kind, const char *scope,
                         const char *name, const char *action, bool dry_run)
{
    char k[RES_NAME_MAX];

    fprintf(ctx->out, "%s/%s/%s %s%s\n", out_kind_lower(kind, k, sizeof(k)),
            scope ? scope : "", name ? name : "", action,
            dry_run ? " (dry run)" : "");
}

/* ---- apply ---- */

static int apply_print(cli_ctx *ctx, const Polis__V1__ApplyResponse *resp)
{
    json_t *o, *results;
    int rc;

    if (ctx->output == CLI_OUTPUT_TABLE) {
        for (size_t i = 0; i < resp->n_results; i++) {
            const Polis__V1__ApplyResult *r = resp->results[i];
            print_change(ctx, r->kind, r->scope, r->name, r->action,
                         resp->dry_run);
        }
        return 0;
    }
    results = json_array();
    o = json_pack("{s:I,s:b,s:o}", "revision", (json_int_t)resp->revision,
                  "dryRun", resp->dry_run, "results", results);
    for (size_t i = 0; o && i < resp->n_results; i++) {
        const Polis__V1__ApplyResult *r = resp->results[i];
        json_array_append_new(
            results,
            json_pack("{s:s,s:s,s:s,s:s,s:I}", "kind", r->kind, "scope",
                      r->scope, "name", r->name, "action", r->action,
                      "generation", (json_int_t)r->generation));
    }
    if (o == NULL || json_array_size(results) != resp->n_results) {
        json_decref(o);
        return cli_fail(ctx, "out of memory");
    }
    rc = out_print_value(ctx, o);
    json_decref(o);
    return rc;
}

int cmd_apply(cli_ctx *ctx, const cli_args *args)
{
    Polis__V1__ApplyRequest req = POLIS__V1__APPLY_REQUEST__INIT;
    Polis__V1__ApplyResponse *resp = NULL;
    Polis__V1__Document *docs = NULL, **doc_ptrs = NULL;
    input_set set = {0};
    long long expected = 0;
    const char *path;
    int problems = 0, rc;

    if (cli_args_value(args, "filename") == NULL)
        return cli_usage_error(ctx, "nothing to apply: give -f FILE, -f DIR "
                                    "or -f - (standard input)");
    if ((rc = cli_flag_int(ctx, args, "expected-revision", 1, INT64_MAX,
                           &expected)) != 0)
        return rc;
    for (size_t i = 0; (path = cli_args_nth(args, "filename", i)); i++)
        problems += input_add(ctx, &set, path);
    if (problems) {
        rc = CLI_EXIT_ERROR;
        goto out;
    }
    docs = calloc(set.n, sizeof(*docs));
    doc_ptrs = calloc(set.n, sizeof(*doc_ptrs));
    if (docs == NULL || doc_ptrs == NULL) {
        rc = cli_fail(ctx, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < set.n; i++) {
        polis__v1__document__init(&docs[i]);
        docs[i].source = set.docs[i].source;
        docs[i].json = set.docs[i].json;
        doc_ptrs[i] = &docs[i];
    }
    req.n_documents = set.n;
    req.documents = doc_ptrs;
    req.expected_revision = expected;
    req.dry_run = cli_args_has(args, "dry-run");
    rc = cli_call(ctx, "Apply", &req.base, (ProtobufCMessage **)&resp, NULL);
    if (rc == 0)
        rc = apply_print(ctx, resp);
out:
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    free(doc_ptrs);
    free(docs);
    input_set_clear(&set);
    return rc;
}

/* ---- get ---- */

int cmd_get(cli_ctx *ctx, const cli_args *args)
{
    Polis__V1__GetRequest req = POLIS__V1__GET_REQUEST__INIT;
    Polis__V1__GetResponse *resp = NULL;
    res_kind kind;
    json_t *o = NULL;
    int rc;

    if ((rc = kind_arg(ctx, args->pos[0], &kind)) != 0)
        return rc;
    req.kind = (char *)res_kind_name(kind);
    req.name = (char *)args->pos[1];
    req.scope =
        (char *)(cli_args_value(args, "scope") ? cli_args_value(args, "scope")
                                               : "");
    cli_subject what = {res_kind_key(kind), req.name, req.scope};
    rc = cli_call(ctx, "Get", &req.base, (ProtobufCMessage **)&resp, &what);
    if (rc)
        return rc;
    if (resp->resource == NULL) {
        rc = cli_fail(ctx, "the control plane sent no resource");
        goto out;
    }
    o = out_resource_json(resp->resource, false);
    if (o == NULL) {
        rc = cli_fail(ctx, "out of memory");
        goto out;
    }
    /* Table mode shows just the document: edit it and apply it again. */
    rc = out_print_value(ctx, ctx->output == CLI_OUTPUT_TABLE
                                  ? json_object_get(o, "document")
                                  : o);
out:
    json_decref(o);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

/* ---- list and history ---- */

static int print_resources(cli_ctx *ctx, Polis__V1__Resource **list, size_t n,
                           bool history)
{
    static const char *const list_cols[] = {
        "KIND", "SCOPE", "NAME", "GENERATION", "REVISION", "AUTHOR", "UPDATED"};
    static const char *const history_cols[] = {"REVISION", "GENERATION",
                                               "CHANGE", "AUTHOR", "UPDATED"};
    out_table *t;
    json_t *arr;
    int rc = 0;

    if (ctx->output != CLI_OUTPUT_TABLE) {
        if ((arr = json_array()) == NULL)
            return cli_fail(ctx, "out of memory");
        for (size_t i = 0; i < n; i++)
            if (json_array_append_new(
                    arr, out_resource_json(list[i], history)) != 0) {
                json_decref(arr);
                return cli_fail(ctx, "out of memory");
            }
        rc = out_print_value(ctx, arr);
        json_decref(arr);
        return rc;
    }
    if (n == 0 && !history) {
        fprintf(ctx->err, "No resources found.\n");
        return 0;
    }
    t = history ? out_table_new(history_cols, 5) : out_table_new(list_cols, 7);
    if (t == NULL)
        return cli_fail(ctx, "out of memory");
    for (size_t i = 0; i < n && rc == 0; i++) {
        const Polis__V1__Resource *r = list[i];
        char gen[24], rev[24];

        snprintf(gen, sizeof(gen), "%" PRId64, r->generation);
        snprintf(rev, sizeof(rev), "%" PRId64, r->revision);
        if (history) {
            const char *change = r->deleted           ? "deleted"
                                 : r->generation == 1 ? "created"
                                                      : "updated";
            const char *row[] = {rev, gen, change, r->author, r->updated_at};
            rc = out_table_add(t, row);
        } else {
            const char *row[] = {r->kind, r->scope,  r->name,      gen,
                                 rev,     r->author, r->updated_at};
            rc = out_table_add(t, row);
        }
    }
    if (rc == 0)
        out_table_print(t, ctx->out);
    else
        rc = cli_fail(ctx, "out of memory");
    out_table_free(t);
    return rc;
}

int cmd_list(cli_ctx *ctx, const cli_args *args)
{
    Polis__V1__ListRequest req = POLIS__V1__LIST_REQUEST__INIT;
    Polis__V1__ListResponse *resp = NULL;
    const char *scope = cli_args_value(args, "scope");
    res_kind kind = RES_KIND_UNKNOWN;
    int rc;

    if (args->n_pos == 1 && strcasecmp(args->pos[0], "all") != 0 &&
        (rc = kind_arg(ctx, args->pos[0], &kind)) != 0)
        return rc;
    req.kind = (char *)res_kind_name(kind); /* "" for every kind */
    req.scope = (char *)(scope ? scope : "");
    rc = cli_call(ctx, "List", &req.base, (ProtobufCMessage **)&resp, NULL);
    if (rc)
        return rc;
    rc = print_resources(ctx, resp->resources, resp->n_resources, false);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

int cmd_history(cli_ctx *ctx, const cli_args *args)
{
    Polis__V1__HistoryRequest req = POLIS__V1__HISTORY_REQUEST__INIT;
    Polis__V1__HistoryResponse *resp = NULL;
    const char *scope = cli_args_value(args, "scope");
    long long limit = 0;
    res_kind kind;
    int rc;

    if ((rc = kind_arg(ctx, args->pos[0], &kind)) != 0 ||
        (rc = cli_flag_int(ctx, args, "limit", 1, UINT32_MAX, &limit)) != 0)
        return rc;
    req.kind = (char *)res_kind_name(kind);
    req.name = (char *)args->pos[1];
    req.scope = (char *)(scope ? scope : "");
    req.limit = (uint32_t)limit;
    cli_subject what = {res_kind_key(kind), req.name, req.scope};
    rc = cli_call(ctx, "History", &req.base, (ProtobufCMessage **)&resp, &what);
    if (rc)
        return rc;
    rc = print_resources(ctx, resp->versions, resp->n_versions, true);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}

/* ---- delete ---- */

int cmd_delete(cli_ctx *ctx, const cli_args *args)
{
    Polis__V1__DeleteRequest req = POLIS__V1__DELETE_REQUEST__INIT;
    Polis__V1__DeleteResponse *resp = NULL;
    const char *scope = cli_args_value(args, "scope");
    long long expected = 0;
    json_t *o = NULL;
    res_kind kind;
    int rc;

    if ((rc = kind_arg(ctx, args->pos[0], &kind)) != 0 ||
        (rc = cli_flag_int(ctx, args, "expected-revision", 1, INT64_MAX,
                           &expected)) != 0)
        return rc;
    req.kind = (char *)res_kind_name(kind);
    req.name = (char *)args->pos[1];
    req.scope = (char *)(scope ? scope : "");
    req.expected_revision = expected;
    req.dry_run = cli_args_has(args, "dry-run");
    cli_subject what = {res_kind_key(kind), req.name, req.scope};
    rc = cli_call(ctx, "Delete", &req.base, (ProtobufCMessage **)&resp, &what);
    if (rc)
        return rc;
    if (ctx->output == CLI_OUTPUT_TABLE) {
        const Polis__V1__Resource *d = resp->deleted;
        print_change(ctx, d && d->kind[0] ? d->kind : res_kind_name(kind),
                     d && d->scope[0] ? d->scope : req.scope,
                     d && d->name[0] ? d->name : req.name, "deleted",
                     req.dry_run);
    } else {
        o = json_pack("{s:I,s:b,s:o?}", "revision", (json_int_t)resp->revision,
                      "dryRun", (int)req.dry_run, "deleted",
                      resp->deleted ? out_resource_json(resp->deleted, false)
                                    : NULL);
        rc = o ? out_print_value(ctx, o) : cli_fail(ctx, "out of memory");
        json_decref(o);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}
