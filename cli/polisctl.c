/*
 * polisctl.c — the control CLI's entry point: global flags (defaults, then
 * POLIS_SERVER, then flags), the verb table, the command-line parser and
 * --help for every verb.  Verbs themselves live in cmd_*.c.
 */
#include "cli/cli.h"

#include <ctype.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef POLIS_VERSION
#define POLIS_VERSION "dev"
#endif

/* ---- flags ---- */

static const cli_flag global_flags[] = {
    {"server", 0, "ADDR",
     "control plane gRPC address (default: $POLIS_SERVER, "
     "else " CLI_DEFAULT_SERVER ")"},
    {"output", 'o', "FORMAT", "table (default), json or yaml"},
    {"timeout", 0, "SECONDS",
     "give up on the control plane after this "
     "long (default 10)"},
    {"help", 'h', NULL, "show help (also: polisctl help VERB)"},
    {"version", 0, NULL, "print the polisctl version"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag apply_flags[] = {
    {"filename", 'f', "FILE",
     "a YAML/JSON file, a directory (every *.yaml, *.yml and *.json in it, "
     "recursively), or - for standard input; repeatable"},
    {"dry-run", 0, NULL, "validate and show what would change; write nothing"},
    {"expected-revision", 0, "N",
     "fail with a conflict if any document changed after revision N"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag get_flags[] = {
    {"scope", 0, "SCOPE",
     "global or a domain (default: any, when the name "
     "is unique)"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag list_flags[] = {
    {"scope", 0, "SCOPE", "only this scope: global or a domain"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag delete_flags[] = {
    {"scope", 0, "SCOPE",
     "global or a domain (default: any, when the name "
     "is unique)"},
    {"dry-run", 0, NULL, "check that it can be deleted; delete nothing"},
    {"expected-revision", 0, "N",
     "fail with a conflict if it changed after revision N"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag history_flags[] = {
    {"scope", 0, "SCOPE",
     "global or a domain (default: any, when the name "
     "is unique)"},
    {"limit", 0, "N", "show at most N versions (default: all kept)"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag check_flags[] = {
    {"principal", 0, "NAME", "who asks: a Principal's name (required)"},
    {"product", 0, "DOMAIN/PRODUCT",
     "what is asked for, e.g. sales/orders (required)"},
    {"port", 0, "PORT", "query (default), file, event or http"},
    {"purpose", 0, "PURPOSE", "why, e.g. analytics (default: none given)"},
    {"columns", 0, "A,B,...",
     "only these columns (default: every column of the product); "
     "repeatable"},
    {"exit-code", 0, NULL, "exit 3 when the request is denied"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag sidecars_flags[] = {
    {"domain", 0, "DOMAIN", "only this domain's sidecars"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag access_flags[] = {
    {"product", 0, "DOMAIN/PRODUCT", "only requests for this product"},
    {"principal", 0, "NAME", "only requests by this principal"},
    {"limit", 0, "N",
     "at most N records, newest first (default 50, at most 10000)"},
    {NULL, 0, NULL, NULL},
};

static const cli_flag no_flags[] = {
    {NULL, 0, NULL, NULL},
};

static int cmd_version(cli_ctx *ctx, const cli_args *args);
static int cmd_help(cli_ctx *ctx, const cli_args *args);

#define KINDS_HELP                                                             \
    "KIND is domain, dataproduct (product, dp), policy or principal; "         \
    "plurals and\nany letter case are accepted.\n"

/* Later issues add access, lineage, audit and rollback here: one entry
 * each, with their run function in a cmd_*.c file. */
static const cli_verb verbs[] = {
    {"apply",
     "apply -f FILE|DIR|- [-f ...] [--dry-run] "
     "[--expected-revision N]",
     "create or update resources from YAML or JSON documents",
     "All documents of one invocation are applied together: either every one "
     "is\nwritten, or none is (the first invalid document stops the whole "
     "apply, and\nevery problem is listed).  Files are read and checked "
     "locally before\nanything is sent.\n\n"
     "Examples:\n"
     "  polisctl apply -f policies/pii-masking.yaml\n"
     "  polisctl apply -f mesh/                 # every *.yaml, *.yml, *.json\n"
     "  polisctl apply -f domain.yaml -f products/ --dry-run\n"
     "  cat orders.yaml | polisctl apply -f -\n"
     "  polisctl apply -f p.yaml --expected-revision 42\n",
     apply_flags, 0, 0, cmd_apply},
    {"get", "get KIND NAME [--scope SCOPE]", "show one resource",
     KINDS_HELP
     "\nIn table mode the document is printed as YAML, ready to edit and "
     "apply again;\n-o json and -o yaml add the metadata (revision, "
     "generation, author, updatedAt).\n\n"
     "Examples:\n"
     "  polisctl get policy pii-masking\n"
     "  polisctl get dp orders --scope sales -o json\n",
     get_flags, 2, 2, cmd_get},
    {"list", "list [KIND|all] [--scope SCOPE]", "list resources",
     KINDS_HELP "KIND all, or no KIND, lists every kind.\n\n"
                "Examples:\n"
                "  polisctl list\n"
                "  polisctl list policies --scope global\n"
                "  polisctl list dataproducts -o json\n",
     list_flags, 0, 1, cmd_list},
    {"delete",
     "delete KIND NAME [--scope SCOPE] [--dry-run] "
     "[--expected-revision N]",
     "delete a resource",
     KINDS_HELP "\nA domain can only be deleted once it owns no data products "
                "or policies.\nThe deleted version stays in the history.\n\n"
                "Examples:\n"
                "  polisctl delete policy pii-masking\n"
                "  polisctl delete dp orders --scope sales --dry-run\n",
     delete_flags, 2, 2, cmd_delete},
    {"history", "history KIND NAME [--scope SCOPE] [--limit N]",
     "show the versions of a resource, newest first",
     KINDS_HELP "\nEvery apply that changed the resource, and its delete, is "
                "one version.\n\n"
                "Examples:\n"
                "  polisctl history policy pii-masking\n"
                "  polisctl history domain sales --limit 5 -o yaml\n",
     history_flags, 2, 2, cmd_history},
    {"check",
     "check --principal NAME --product DOMAIN/PRODUCT [--port PORT]\n"
     "                [--purpose PURPOSE] [--columns A,B,...] [--exit-code]",
     "decide an access request against the stored policies and explain it",
     "The control plane decides as a sidecar would, with the policies and "
     "data\nproducts stored now: allowed or denied, by which rule, which "
     "columns are\nmasked and how, the row filters, the minimum group size, "
     "every rule that\nmatched, and the revision the decision used.\n\n"
     "A denial is an answer: polisctl exits 0 either way, unless --exit-code "
     "is\ngiven (then a denial exits 3).\n\n"
     "Examples:\n"
     "  polisctl check --principal alice --product sales/orders\n"
     "  polisctl check --principal bob --product crm/customers --port file "
     "\\\n      --purpose analytics --columns email,region -o json\n"
     "  polisctl check --principal ci-bot --product sales/orders --exit-code "
     "\\\n      || echo denied\n",
     check_flags, 0, 0, cmd_check},
    {"sidecars", "sidecars [--domain DOMAIN]",
     "show the sidecars and whether they enforce the newest policies",
     "STATE is SYNCED (applied the newest snapshot), SYNCING (one was sent, "
     "no\nanswer yet), STALE (sent over 5 s ago, still no answer), NACKED "
     "(rejected\nthe newest snapshot: see ERROR; it keeps enforcing the "
     "previous one) or\nDISCONNECTED (kept up to 5 minutes after the stream "
     "ended).  APPLIED and\nLATEST are snapshot revisions; AGE is the time "
     "since the control plane last\nrecorded the sidecar's status.\n\n"
     "Examples:\n"
     "  polisctl sidecars\n"
     "  polisctl sidecars --domain sales -o json\n",
     sidecars_flags, 0, 0, cmd_sidecars},
    {"access",
     "access [--product DOMAIN/PRODUCT] [--principal NAME] [--limit N]",
     "show recent product requests the sidecars served or refused",
     "Every request a sidecar's product ports answer is reported to the "
     "control\nplane within a few seconds (kept on the sidecar's disk while "
     "the control\nplane is away) and kept for an hour.  DECISION is allow, "
     "deny or error;\nRULE is the rule that decided; LATENCY is the time the "
     "sidecar took.\nNewest first.\n\n"
     "Examples:\n"
     "  polisctl access\n"
     "  polisctl access --product sales/orders --limit 20\n"
     "  polisctl access --principal alice -o json\n",
     access_flags, 0, 0, cmd_access},
    {"version", "version", "print the polisctl version",
     "Examples:\n  polisctl version\n", no_flags, 0, 0, cmd_version},
    {"help", "help [VERB]", "show help for polisctl or one verb",
     "Examples:\n  polisctl help apply\n", no_flags, 0, 1, cmd_help},
};
#define N_VERBS (sizeof(verbs) / sizeof(verbs[0]))

static const cli_verb *verb_find(const char *name)
{
    for (size_t i = 0; i < N_VERBS; i++)
        if (strcmp(verbs[i].name, name) == 0)
            return &verbs[i];
    return NULL;
}

/* ---- help ---- */

/* Help text wrapped to 80 columns beside a 31-column flag name. */
static void print_flags(FILE *f, const cli_flag *flags)
{
    enum { LEFT = 31, WIDTH = 80 };

    for (const cli_flag *fl = flags; fl->name; fl++) {
        const char *h = fl->help;
        char left[64];

        snprintf(
            left, sizeof(left), "%c%c%c --%s%s%s", fl->short_name ? '-' : ' ',
            fl->short_name ? fl->short_name : ' ', fl->short_name ? ',' : ' ',
            fl->name, fl->arg ? " " : "", fl->arg ? fl->arg : "");
        fprintf(f, "  %-*s", LEFT - 2, left);
        if (strlen(left) > LEFT - 3)
            fprintf(f, "\n%*s", LEFT, "");
        while (*h) {
            size_t n = strlen(h), room = WIDTH - LEFT;

            if (n > room) {
                n = room;
                while (n > 0 && h[n] != ' ')
                    n--;
                if (n == 0)
                    n = room;
            }
            fprintf(f, "%.*s\n", (int)n, h);
            h += n;
            while (*h == ' ')
                h++;
            if (*h)
                fprintf(f, "%*s", LEFT, "");
        }
    }
}

static void print_main_help(FILE *f)
{
    fprintf(f, "Usage: polisctl [global flags] VERB [args]\n\n"
               "polisctl manages Polis governance resources (domains, data "
               "products,\npolicies, principals) through the control plane.\n\n"
               "Verbs:\n");
    for (size_t i = 0; i < N_VERBS; i++)
        fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].summary);
    fprintf(f, "\nGlobal flags (before or after the verb):\n");
    print_flags(f, global_flags);
    fprintf(f,
            "\nEnvironment:\n"
            "  POLIS_SERVER   control plane address when --server is not "
            "given\n"
            "  USER           the author recorded with every change "
            "(user@host)\n\n"
            "Exit status: 0 success, 1 error, 2 usage error, 3 denied "
            "(check --exit-code).\n\n"
            "Examples:\n"
            "  polisctl apply -f mesh/\n"
            "  polisctl list policies\n"
            "  polisctl --server cp.example:7400 get domain sales -o yaml\n\n"
            "Run 'polisctl help VERB' (or 'polisctl VERB --help') for a "
            "verb's flags.\n");
}

static void print_verb_help(FILE *f, const cli_verb *v)
{
    fprintf(f, "Usage: polisctl %s\n\n%c%s.\n", v->synopsis,
            toupper((unsigned char)v->summary[0]), v->summary + 1);
    if (v->details[0])
        fprintf(f, "\n%s", v->details);
    if (v->flags[0].name) {
        fprintf(f, "\nFlags:\n");
        print_flags(f, v->flags);
    }
    fprintf(f, "\nGlobal flags:\n");
    print_flags(f, global_flags);
}

static int cmd_help(cli_ctx *ctx, const cli_args *args)
{
    const cli_verb *v;

    if (args->n_pos == 0) {
        print_main_help(ctx->out);
        return CLI_EXIT_OK;
    }
    v = verb_find(args->pos[0]);
    if (v == NULL)
        return cli_usage_error(ctx, "unknown verb \"%s\"", args->pos[0]);
    print_verb_help(ctx->out, v);
    return CLI_EXIT_OK;
}

static int cmd_version(cli_ctx *ctx, const cli_args *args)
{
    fprintf(ctx->out, "polisctl %s\n", POLIS_VERSION);
    return CLI_EXIT_OK;
}

/* ---- command line ---- */

typedef struct global_state {
    bool help;
    bool version;
} global_state;

/* Apply a global flag to the context; a usage error on a bad value. */
static int apply_global(cli_ctx *ctx, global_state *gs, const cli_flag *fl,
                        const char *value)
{
    if (strcmp(fl->name, "server") == 0) {
        if (value[0] == '\0')
            return cli_usage_error(ctx, "--server: empty address");
        ctx->server = value;
    } else if (strcmp(fl->name, "output") == 0) {
        if (strcmp(value, "table") == 0)
            ctx->output = CLI_OUTPUT_TABLE;
        else if (strcmp(value, "json") == 0)
            ctx->output = CLI_OUTPUT_JSON;
        else if (strcmp(value, "yaml") == 0)
            ctx->output = CLI_OUTPUT_YAML;
        else
            return cli_usage_error(ctx,
                                   "-o: unknown output format \"%s\" "
                                   "(expected table, json or yaml)",
                                   value);
    } else if (strcmp(fl->name, "timeout") == 0) {
        char *end;
        double s = strtod(value, &end);

        if (value[0] == '\0' || *end != '\0' || !(s > 0) || s > 3600)
            return cli_usage_error(ctx,
                                   "--timeout: \"%s\" is not a number of "
                                   "seconds between 0 and 3600",
                                   value);
        ctx->timeout_ms = (int)(s * 1000 + 0.5);
        if (ctx->timeout_ms < 1)
            ctx->timeout_ms = 1;
    } else if (strcmp(fl->name, "help") == 0) {
        gs->help = true;
    } else if (strcmp(fl->name, "version") == 0) {
        gs->version = true;
    }
    return 0;
}

static const cli_flag *flag_match(const cli_flag *flags, const char *name,
                                  size_t name_len, char short_name)
{
    for (const cli_flag *fl = flags; fl && fl->name; fl++) {
        if (short_name && fl->short_name == short_name)
            return fl;
        if (!short_name && strlen(fl->name) == name_len &&
            strncmp(fl->name, name, name_len) == 0)
            return fl;
    }
    return NULL;
}

/*
 * Parse argv[*i..argc) into `out` (flags of `v` and global flags; global
 * ones are applied to ctx at once).  With v NULL, only global flags are
 * accepted and parsing stops at the first positional (the verb).
 * Returns 0 or CLI_EXIT_USAGE (after printing why).
 */
static int parse(cli_ctx *ctx, global_state *gs, const cli_verb *v, int argc,
                 char **argv, int *i, cli_args *out)
{
    bool flags_done = false;

    for (; *i < argc; (*i)++) {
        const char *arg = argv[*i], *value = NULL, *eq;
        const cli_flag *fl = NULL;
        bool is_global = false;
        char shown[80];

        if (flags_done || arg[0] != '-' || arg[1] == '\0') {
            if (v == NULL)
                return 0; /* the verb */
            if (out->n_pos >= CLI_MAX_ARGS)
                return cli_usage_error(ctx, "too many arguments");
            out->pos[out->n_pos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            flags_done = true;
            if (v == NULL) {
                (*i)++;
                return 0;
            }
            continue;
        }
        if (arg[1] == '-') {
            const char *name = arg + 2;
            size_t len;

            eq = strchr(name, '=');
            len = eq ? (size_t)(eq - name) : strlen(name);
            snprintf(shown, sizeof(shown), "--%.*s", (int)len, name);
            fl = v ? flag_match(v->flags, name, len, 0) : NULL;
            if (fl == NULL) {
                fl = flag_match(global_flags, name, len, 0);
                is_global = fl != NULL;
            }
            if (fl && eq)
                value = eq + 1;
            if (fl && eq && fl->arg == NULL)
                return cli_usage_error(ctx, "%s takes no value", shown);
        } else {
            snprintf(shown, sizeof(shown), "-%c", arg[1]);
            fl = v ? flag_match(v->flags, NULL, 0, arg[1]) : NULL;
            if (fl == NULL) {
                fl = flag_match(global_flags, NULL, 0, arg[1]);
                is_global = fl != NULL;
            }
            if (fl && arg[2] != '\0') {
                if (fl->arg == NULL)
                    return cli_usage_error(ctx, "unknown flag \"%s\"", arg);
                value = arg + 2; /* -ojson */
            }
        }
        if (fl == NULL)
            return cli_usage_error(ctx, "unknown flag \"%s\"", shown);
        if (fl->arg && value == NULL) {
            if (*i + 1 >= argc)
                return cli_usage_error(ctx, "%s needs a value (%s)", shown,
                                       fl->arg);
            value = argv[++(*i)];
        }
        if (is_global) {
            int rc = apply_global(ctx, gs, fl, value ? value : "");
            if (rc)
                return rc;
            continue;
        }
        if (out->n_flags >= CLI_MAX_ARGS)
            return cli_usage_error(ctx, "too many flags");
        out->flags[out->n_flags].flag = fl;
        out->flags[out->n_flags].value = value;
        out->n_flags++;
    }
    return 0;
}

static void author_init(cli_ctx *ctx)
{
    const char *user = getenv("USER");
    char host[256] = "";

    if (user == NULL || user[0] == '\0') {
        struct passwd *pw = getpwuid(getuid());
        user = pw && pw->pw_name ? pw->pw_name : "unknown";
    }
    if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "localhost");
    snprintf(ctx->author, sizeof(ctx->author), "%.120s@%.120s", user, host);
}

static int run(cli_ctx *ctx, int argc, char **argv)
{
    static cli_args args; /* ~6 KB: keep it off the stack */
    global_state gs = {false, false};
    const cli_verb *v;
    int i = 1, rc;

    if ((rc = parse(ctx, &gs, NULL, argc, argv, &i, &args)) != 0)
        return rc;
    if (i >= argc) {
        if (gs.version)
            return cmd_version(ctx, &args);
        if (gs.help) {
            print_main_help(ctx->out);
            return CLI_EXIT_OK;
        }
        print_main_help(ctx->err);
        return CLI_EXIT_USAGE;
    }
    v = verb_find(argv[i]);
    if (v == NULL)
        return cli_usage_error(ctx, "unknown verb \"%s\"", argv[i]);
    ctx->verb = v->name;
    i++;
    if ((rc = parse(ctx, &gs, v, argc, argv, &i, &args)) != 0)
        return rc;
    if (gs.help) {
        print_verb_help(ctx->out, v);
        return CLI_EXIT_OK;
    }
    if (gs.version)
        return cmd_version(ctx, &args);
    if (args.n_pos < v->min_pos)
        return cli_usage_error(ctx, "missing argument: usage: polisctl %s",
                               v->synopsis);
    if (args.n_pos > v->max_pos)
        return cli_usage_error(ctx, "unexpected argument \"%s\"",
                               args.pos[v->max_pos]);
    return v->run(ctx, &args);
}

int main(int argc, char **argv)
{
    cli_ctx ctx = {0};
    const char *env = getenv("POLIS_SERVER");
    int rc;

    ctx.server = env && env[0] ? env : CLI_DEFAULT_SERVER;
    ctx.output = CLI_OUTPUT_TABLE;
    ctx.timeout_ms = CLI_DEFAULT_TIMEOUT_MS;
    ctx.out = stdout;
    ctx.err = stderr;
    author_init(&ctx);
    rc = run(&ctx, argc, argv);
    cli_ctx_close(&ctx);
    if (fflush(stdout) != 0 && rc == CLI_EXIT_OK)
        rc = CLI_EXIT_ERROR; /* e.g. a full disk under `> file` */
    return rc;
}
