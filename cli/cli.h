/*
 * cli.h — what the pieces of polisctl share: the invocation context (global
 * flags, the lazily opened channel to the control plane), the verb table
 * entry, parsed verb arguments, error reporting with the exit-code
 * convention, and the RPC call that turns gRPC statuses into plain words.
 */
#ifndef POLIS_CLI_H
#define POLIS_CLI_H

#include "common/rpc.h"

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Exit codes: the contract scripts rely on (docs/cli.md). */
#define CLI_EXIT_OK     0
#define CLI_EXIT_ERROR  1 /* the operation failed (local or server side) */
#define CLI_EXIT_USAGE  2 /* the command line is wrong */
#define CLI_EXIT_DENIED 3 /* check --exit-code: the request was denied */

#define CLI_DEFAULT_SERVER     "127.0.0.1:7400"
#define CLI_DEFAULT_TIMEOUT_MS 10000
#define CLI_MAX_ARGS           256 /* flags + positionals in one verb */

typedef enum cli_output {
    CLI_OUTPUT_TABLE,
    CLI_OUTPUT_JSON,
    CLI_OUTPUT_YAML,
} cli_output;

/* One invocation: built from defaults, environment and global flags. */
typedef struct cli_ctx {
    const char *server; /* borrowed: argv or the environment */
    cli_output output;
    int timeout_ms;
    char author[256];     /* user@host, sent as x-polis-author */
    const char *verb;     /* for error messages: "apply" */
    rpc_channel *channel; /* opened on first call, freed by cli_ctx_close */
    FILE *out;
    FILE *err;
} cli_ctx;

/* A flag a verb accepts.  `arg` names the value ("FILE"); NULL: boolean. */
typedef struct cli_flag {
    const char *name; /* long name without dashes: "dry-run" */
    char short_name;  /* 'f', or 0 */
    const char *arg;
    const char *help;
} cli_flag;

/* A verb's command line after parsing: positionals and flags in order.
 * Strings are borrowed from argv. */
typedef struct cli_args {
    const char *pos[CLI_MAX_ARGS];
    size_t n_pos;
    struct {
        const cli_flag *flag;
        const char *value; /* NULL for booleans */
    } flags[CLI_MAX_ARGS];
    size_t n_flags;
} cli_args;

/* The last value of a flag, or NULL when it was not given. */
const char *cli_args_value(const cli_args *a, const char *name);

/* True when the flag was given at least once. */
bool cli_args_has(const cli_args *a, const char *name);

/* The i-th value of a repeatable flag (0-based), or NULL past the end. */
const char *cli_args_nth(const cli_args *a, const char *name, size_t i);

/*
 * A verb.  Later verbs (check, sidecars, access, lineage, audit, rollback)
 * are one more entry in the table in polisctl.c.  `run` returns an exit
 * code; it reports its own errors through cli_fail / cli_call.
 */
typedef struct cli_verb {
    const char *name;
    const char *synopsis;  /* "apply -f FILE|DIR|- [flags]" */
    const char *summary;   /* one line, for `polisctl --help` */
    const char *details;   /* paragraphs and examples for `VERB --help` */
    const cli_flag *flags; /* terminated by {NULL} */
    size_t min_pos, max_pos;
    int (*run)(cli_ctx *ctx, const cli_args *args);
} cli_verb;

/* "polisctl: <verb>: <message>" on ctx->err, one prefixed line per line of
 * the message.  Returns CLI_EXIT_ERROR. */
int cli_fail(cli_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The same for command-line mistakes; adds a pointer to --help and
 * returns CLI_EXIT_USAGE. */
int cli_usage_error(cli_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* What a call is about, for messages ("policy \"x\" not found"); any
 * member may be NULL. */
typedef struct cli_subject {
    const char *kind; /* lower-case kind key: "policy" */
    const char *name;
    const char *scope;
} cli_subject;

/*
 * One unary call on the Governance service with the author metadata and
 * the context's timeout.  Returns 0 with *resp set (caller frees with
 * protobuf_c_message_free_unpacked), or prints the failure in plain words
 * (unreachable server, not found, conflict, timeout, one line per invalid
 * document) and returns CLI_EXIT_ERROR.
 */
int cli_call(cli_ctx *ctx, const char *method, const ProtobufCMessage *req,
             ProtobufCMessage **resp, const cli_subject *what);

/* Free the channel, if one was opened. */
void cli_ctx_close(cli_ctx *ctx);

/* The verbs implemented in cmd_resources.c. */
int cmd_apply(cli_ctx *ctx, const cli_args *args);
int cmd_get(cli_ctx *ctx, const cli_args *args);
int cmd_list(cli_ctx *ctx, const cli_args *args);
int cmd_delete(cli_ctx *ctx, const cli_args *args);
int cmd_history(cli_ctx *ctx, const cli_args *args);

/* cmd_check.c: decide one request and explain it (Governance.Check). */
int cmd_check(cli_ctx *ctx, const cli_args *args);

/* cmd_sidecars.c: the sidecars' sync status (Governance.Sidecars). */
int cmd_sidecars(cli_ctx *ctx, const cli_args *args);

/* cmd_access.c: recent access records (Governance.Access). */
int cmd_access(cli_ctx *ctx, const cli_args *args);

/*
 * Parse a number flag: an integer in [min, max].  On a bad value prints a
 * usage error naming the flag and returns CLI_EXIT_USAGE; 0 on success
 * (also when the flag is absent: *out keeps its value).
 */
int cli_flag_int(cli_ctx *ctx, const cli_args *a, const char *name,
                 long long min, long long max, long long *out);

#endif
