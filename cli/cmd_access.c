/*
 * cmd_access.c — `polisctl access`: the recent product requests the
 * sidecars reported (Governance.Access, proto/polis/v1/governance.proto),
 * newest first, as a table, JSON or YAML.
 */
#include "cli/cli.h"
#include "cli/output.h"
#include "polis/v1/governance.pb-c.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* "2026-11-24T14:48:42.492Z", UTC. */
static void time_format(int64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;

    if (ms <= 0 || gmtime_r(&t, &tm) == NULL) {
        snprintf(buf, len, "-");
        return;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ms % 1000));
}

/* 850µs, 12.3ms, 2.05s: what a person reads at a glance. */
static void latency_format(int64_t us, char *buf, size_t len)
{
    if (us < 1000)
        snprintf(buf, len, "%" PRId64 "us", us < 0 ? 0 : us);
    else if (us < 1000000)
        snprintf(buf, len, "%.1fms", (double)us / 1e3);
    else
        snprintf(buf, len, "%.2fs", (double)us / 1e6);
}

static json_t *record_json(const Polis__V1__AccessRecord *r)
{
    char t[40];

    time_format(r->time_unix_ms, t, sizeof(t));
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:I,s:I,s:I,s:s}",
                     "time", t, "principal", r->principal, "product",
                     r->product, "port", r->port, "purpose", r->purpose,
                     "decision", r->decision, "rule", r->rule, "httpStatus",
                     (int)r->http_status, "rows", (json_int_t)r->rows, "bytes",
                     (json_int_t)r->bytes, "latencyUs",
                     (json_int_t)r->latency_us, "sidecar", r->sidecar_id);
}

static const char *cell(const char *s)
{
    return s && s[0] ? s : "-";
}

static int print_access(cli_ctx *ctx, const Polis__V1__AccessResponse *r)
{
    static const char *const cols[] = {
        "TIME",     "PRINCIPAL", "PRODUCT", "PORT",  "PURPOSE",
        "DECISION", "RULE",      "ROWS",    "BYTES", "LATENCY"};
    out_table *t;
    json_t *arr;
    int rc = 0;

    if (ctx->output != CLI_OUTPUT_TABLE) {
        if ((arr = json_array()) == NULL)
            return cli_fail(ctx, "out of memory");
        for (size_t i = 0; i < r->n_records; i++)
            if (json_array_append_new(arr, record_json(r->records[i])) != 0) {
                json_decref(arr);
                return cli_fail(ctx, "out of memory");
            }
        rc = out_print_value(ctx, arr);
        json_decref(arr);
        return rc;
    }
    if (r->n_records == 0) {
        fprintf(ctx->err, "No access records found.\n");
        return 0;
    }
    if ((t = out_table_new(cols, sizeof(cols) / sizeof(*cols))) == NULL)
        return cli_fail(ctx, "out of memory");
    for (size_t i = 0; i < r->n_records && rc == 0; i++) {
        const Polis__V1__AccessRecord *a = r->records[i];
        char when[40], rows[24], bytes[24], latency[24];
        const char *row[10];

        time_format(a->time_unix_ms, when, sizeof(when));
        snprintf(rows, sizeof(rows), "%" PRId64, a->rows);
        snprintf(bytes, sizeof(bytes), "%" PRId64, a->bytes);
        latency_format(a->latency_us, latency, sizeof(latency));
        row[0] = when;
        row[1] = cell(a->principal);
        row[2] = cell(a->product);
        row[3] = cell(a->port);
        row[4] = cell(a->purpose);
        row[5] = cell(a->decision);
        row[6] = cell(a->rule);
        row[7] = rows;
        row[8] = bytes;
        row[9] = latency;
        rc = out_table_add(t, row);
    }
    if (rc == 0)
        out_table_print(t, ctx->out);
    else
        rc = cli_fail(ctx, "out of memory");
    out_table_free(t);
    if (rc == 0 && r->truncated)
        fprintf(ctx->err,
                "(older records may match too: raise --limit to see more)\n");
    return rc;
}

int cmd_access(cli_ctx *ctx, const cli_args *args)
{
    Polis__V1__AccessRequest req = POLIS__V1__ACCESS_REQUEST__INIT;
    Polis__V1__AccessResponse *resp = NULL;
    const char *product = cli_args_value(args, "product");
    const char *principal = cli_args_value(args, "principal");
    long long limit = 50;
    int rc;

    if (product && (product[0] == '\0' || strchr(product, '/') == NULL))
        return cli_usage_error(ctx,
                               "--product: expected DOMAIN/PRODUCT, got "
                               "\"%s\"",
                               product);
    if (principal && principal[0] == '\0')
        return cli_usage_error(ctx, "--principal: empty name");
    if ((rc = cli_flag_int(ctx, args, "limit", 1, 10000, &limit)) != 0)
        return rc;
    req.product = (char *)(product ? product : "");
    req.principal = (char *)(principal ? principal : "");
    req.limit = (uint32_t)limit;
    rc = cli_call(ctx, "Access", &req.base, (ProtobufCMessage **)&resp, NULL);
    if (rc)
        return rc;
    rc = print_access(ctx, resp);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}
