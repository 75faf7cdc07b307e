/*
 * cli.c — polisctl's shared plumbing (cli.h): error lines with the
 * "polisctl: <verb>: " prefix, flag lookups, and Governance calls whose
 * gRPC failures are turned into messages a council member can act on.
 */
#include "cli/cli.h"
#include "cli/output.h"
#include "polis/v1/governance.pb-c.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MESSAGE_MAX (RPC_STATUS_MSG_MAX + 512)

/* Print each line of msg with the prefix, so multi-line server messages
 * (one line per invalid document) stay greppable. */
static void print_prefixed(cli_ctx *ctx, const char *msg)
{
    const char *line = msg;

    do {
        const char *nl = strchr(line, '\n');
        int n = nl ? (int)(nl - line) : (int)strlen(line);

        if (ctx->verb)
            fprintf(ctx->err, "polisctl: %s: %.*s\n", ctx->verb, n, line);
        else
            fprintf(ctx->err, "polisctl: %.*s\n", n, line);
        line = nl ? nl + 1 : NULL;
    } while (line && *line);
}

int cli_fail(cli_ctx *ctx, const char *fmt, ...)
{
    char msg[MESSAGE_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    print_prefixed(ctx, msg);
    return CLI_EXIT_ERROR;
}

int cli_usage_error(cli_ctx *ctx, const char *fmt, ...)
{
    char msg[MESSAGE_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    print_prefixed(ctx, msg);
    if (ctx->verb)
        fprintf(ctx->err, "Run 'polisctl %s --help' for usage.\n", ctx->verb);
    else
        fprintf(ctx->err, "Run 'polisctl --help' for usage.\n");
    return CLI_EXIT_USAGE;
}

const char *cli_args_value(const cli_args *a, const char *name)
{
    const char *v = NULL;

    for (size_t i = 0; i < a->n_flags; i++)
        if (strcmp(a->flags[i].flag->name, name) == 0)
            v = a->flags[i].value;
    return v;
}

bool cli_args_has(const cli_args *a, const char *name)
{
    for (size_t i = 0; i < a->n_flags; i++)
        if (strcmp(a->flags[i].flag->name, name) == 0)
            return true;
    return false;
}

const char *cli_args_nth(const cli_args *a, const char *name, size_t n)
{
    for (size_t i = 0; i < a->n_flags; i++)
        if (strcmp(a->flags[i].flag->name, name) == 0 && n-- == 0)
            return a->flags[i].value;
    return NULL;
}

int cli_flag_int(cli_ctx *ctx, const cli_args *a, const char *name,
                 long long min, long long max, long long *out)
{
    const char *v = cli_args_value(a, name);
    char *end;
    long long n;

    if (v == NULL)
        return 0;
    errno = 0;
    n = strtoll(v, &end, 10);
    if (v[0] == '\0' || *end != '\0' || errno == ERANGE || n < min || n > max)
        return cli_usage_error(ctx,
                               "--%s: \"%s\" is not a whole number from "
                               "%lld to %lld",
                               name, v, min, max);
    *out = n;
    return 0;
}

void cli_ctx_close(cli_ctx *ctx)
{
    rpc_channel_free(ctx->channel);
    ctx->channel = NULL;
}

/* Transport failures come from gRPC itself; an UNAVAILABLE the control
 * plane sends on purpose (its etcd is down) names etcd. */
static bool server_side_unavailable(const char *msg)
{
    return strstr(msg, "etcd") != NULL;
}

/* The server says `Policy "x" not found`; users typed `policy`. */
static void not_found_message(const char *msg, const cli_subject *what,
                              char *buf, size_t len)
{
    size_t klen = what && what->kind ? strlen(what->kind) : 0;

    if (klen && strncasecmp(msg, what->kind, klen) == 0 && msg[klen] == ' ')
        snprintf(buf, len, "%s%s", what->kind, msg + klen);
    else if (msg[0])
        snprintf(buf, len, "%s", msg);
    else if (what && what->kind && what->name)
        snprintf(buf, len, "%s \"%s\" not found", what->kind, what->name);
    else
        snprintf(buf, len, "not found");
}

static int report_status(cli_ctx *ctx, const rpc_status *st,
                         const cli_subject *what)
{
    char buf[MESSAGE_MAX];
    const char *msg = st->message;

    switch (st->code) {
    case RPC_UNAVAILABLE:
        if (server_side_unavailable(msg))
            return cli_fail(ctx, "the control plane at %s is unavailable: %s",
                            ctx->server, msg);
        /* Not tied to a verb: nothing reached the server. */
        fprintf(ctx->err,
                "polisctl: cannot reach the control plane at %s: %s\n"
                "polisctl: hint: is polis-controlplane running? Point "
                "polisctl at it with --server ADDR or POLIS_SERVER.\n",
                ctx->server, msg[0] ? msg : "unavailable");
        return CLI_EXIT_ERROR;
    case RPC_DEADLINE_EXCEEDED:
        return cli_fail(ctx,
                        "timed out after %g s waiting for the control plane "
                        "at %s (raise it with --timeout SECONDS)",
                        ctx->timeout_ms / 1000.0, ctx->server);
    case RPC_NOT_FOUND:
        not_found_message(msg, what, buf, sizeof(buf));
        return cli_fail(ctx, "%s", buf);
    case RPC_ABORTED:
        return cli_fail(ctx, "conflict: %s",
                        msg[0] ? msg
                               : "the resource changed since the expected "
                                 "revision; re-read and retry");
    case RPC_INVALID_ARGUMENT:
    case RPC_FAILED_PRECONDITION:
    case RPC_ALREADY_EXISTS:
        return cli_fail(ctx, "%s", msg[0] ? msg : rpc_status_name(st->code));
    case RPC_UNIMPLEMENTED:
        return cli_fail(ctx,
                        "the control plane at %s does not support this "
                        "request (is it an older version?): %s",
                        ctx->server, msg);
    case RPC_RESOURCE_EXHAUSTED:
        return cli_fail(ctx, "too large: %s", msg);
    case RPC_PERMISSION_DENIED:
    case RPC_UNAUTHENTICATED:
        return cli_fail(ctx, "not allowed (%s): %s", rpc_status_name(st->code),
                        msg);
    default:
        return cli_fail(ctx, "control plane error (%s): %s",
                        rpc_status_name(st->code), msg);
    }
}

int cli_call(cli_ctx *ctx, const char *method, const ProtobufCMessage *req,
             ProtobufCMessage **resp, const cli_subject *what)
{
    rpc_metadata md = {"x-polis-author", ctx->author};
    rpc_status st = {0};
    polis_error err = {0};
    char buf[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX];

    *resp = NULL;
    if (ctx->channel == NULL &&
        rpc_channel_new(ctx->server, NULL, &ctx->channel, &err) != 0)
        return cli_fail(ctx, "cannot use server address \"%s\": %s",
                        ctx->server,
                        polis_error_format(&err, buf, sizeof(buf)));
    if (rpc_unary(ctx->channel, &polis__v1__governance__descriptor, method, req,
                  resp, &md, 1, ctx->timeout_ms, &st) == RPC_OK)
        return 0;
    return report_status(ctx, &st, what);
}
