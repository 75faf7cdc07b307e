/*
 * test_cli_check.c — `polisctl check` and `polisctl sidecars` as a user runs
 * them: the real binary as a subprocess against a real polis-controlplane
 * and etcd (cpenv) holding the example mesh and a policy with allow, deny,
 * mask, filter and aggregate rules; the sidecar is a real Distribution
 * stream the test drives itself (hello, snapshot, ACK, NACK, hang-up).
 */
#include "common/document.h"
#include "common/etcd.h"
#include "common/rpc.h"
#include "polis/v1/distribution.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/testenv.h"
#include "tests/support/ctlrun.h"
#include "tests/support/testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONTROLPLANE   POLIS_BUILD_DIR "/controlplane/polis-controlplane"
#define STATUS_WAIT_MS 15000 /* sidecar status reaches etcd within this */

#define SIDECAR_ID "sales-sidecar-test-1"

/* ------------------------------------------------------------------------ */
/* running polisctl                                                         */

typedef ctl_result run_result;

static const char *workdir;
static cpenv *cp;
static bool server_skipped;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run_result_clear(run_result *r)
{
    ctl_result_clear(r);
}

/* Run polisctl with args; no CUnit assertions: suite set-up uses it too. */
static void run_capture(run_result *r, const char *const *args)
{
    ctl_run(r, workdir, NULL, NULL, args);
}

static void run_argv(run_result *r, const char *const *args)
{
    run_capture(r, args);
    /* Under the sanitizer build a leak or UB in polisctl fails the test,
     * also where a non-zero exit is the expected outcome. */
    CU_ASSERT(strstr(r->err, "Sanitizer") == NULL);
    CU_ASSERT(strstr(r->err, "runtime error:") == NULL);
}

#define RUN(r, ...)                                                            \
    do {                                                                       \
        const char *const args_[] = {__VA_ARGS__, NULL};                       \
        run_argv((r), args_);                                                  \
    } while (0)

/* Against the test's control plane. */
#define CTL(r, ...) RUN(r, "--server", cp->grpc_target, __VA_ARGS__)

#define NEED_SERVER()                                                          \
    do {                                                                       \
        if (server_skipped) {                                                  \
            fprintf(stderr, " SKIP (no polis-controlplane binary) ");          \
            return;                                                            \
        }                                                                      \
        CU_ASSERT_PTR_NOT_NULL_FATAL(cp);                                      \
    } while (0)

static bool contains(const char *haystack, const char *needle)
{
    bool found = haystack && strstr(haystack, needle) != NULL;

    if (!found)
        fprintf(stderr, "\nexpected to find \"%s\" in:\n%s\n", needle,
                haystack ? haystack : "(null)");
    return found;
}

static json_t *parse_json(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);

    if (v == NULL)
        fprintf(stderr, "\nnot JSON (%s):\n%s\n", jerr.text, text);
    return v;
}

/* A JSON string's value, never NULL (CUnit's string asserts crash on NULL
 * instead of failing). */
static const char *jstr(const json_t *v)
{
    const char *s = json_string_value(v);

    return s ? s : "(not a string)";
}

/* The line of `text` that starts with `prefix`, copied into buf ("" when
 * there is none). */
static const char *line_starting(const char *text, const char *prefix,
                                 char *buf, size_t len)
{
    size_t plen = strlen(prefix);

    buf[0] = '\0';
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);

        if (n >= plen && strncmp(p, prefix, plen) == 0) {
            snprintf(buf, len, "%.*s", (int)n, p);
            break;
        }
        p = nl ? nl + 1 : NULL;
    }
    if (buf[0] == '\0')
        fprintf(stderr, "\nno line starting with \"%s\" in:\n%s\n", prefix,
                text ? text : "(null)");
    return buf;
}

/* ------------------------------------------------------------------------ */
/* the governance set-up                                                    */

/* Analysts may read sales; the privacy group may not touch sales/orders;
 * e-mail addresses and card numbers are masked by classification;
 * analysts see their own region's rows, in groups of at least 10. */
static const char policies_yaml[] =
    "apiVersion: polis/v1\n"
    "kind: Policy\n"
    "metadata:\n"
    "  name: pii-protection\n"
    "spec:\n"
    "  scope: global\n"
    "  rules:\n"
    "    - name: analysts-read-sales\n"
    "      effect: allow\n"
    "      subjects: ['group:analysts']\n"
    "      resources: ['sales/*']\n"
    "    - name: privacy-not-on-orders\n"
    "      effect: deny\n"
    "      subjects: ['group:privacy']\n"
    "      resources: ['sales/orders']\n"
    "    - name: mask-emails\n"
    "      effect: mask\n"
    "      subjects: ['*']\n"
    "      resources: ['*/*']\n"
    "      mask: {method: email, classifications: [pii.email]}\n"
    "    - name: hide-cards\n"
    "      effect: mask\n"
    "      subjects: ['*']\n"
    "      resources: ['*/*']\n"
    "      mask: {method: show_last, classifications: [pii.card],\n"
    "             params: {n: 4}}\n"
    "---\n"
    "apiVersion: polis/v1\n"
    "kind: Policy\n"
    "metadata:\n"
    "  name: sales-regions\n"
    "spec:\n"
    "  scope: sales\n"
    "  rules:\n"
    "    - name: own-region\n"
    "      effect: filter\n"
    "      subjects: ['group:analysts']\n"
    "      resources: ['sales/orders']\n"
    "      filter: region == subject.region\n"
    "    - name: small-groups\n"
    "      effect: aggregate\n"
    "      subjects: ['group:analysts']\n"
    "      resources: ['sales/orders']\n"
    "      aggregate: {minGroupSize: 10}\n";

/* A further sales policy: a new sales snapshot for the sidecar. */
static const char sales_extra_yaml[] = "apiVersion: polis/v1\n"
                                       "kind: Policy\n"
                                       "metadata:\n"
                                       "  name: sales-extra\n"
                                       "spec:\n"
                                       "  scope: sales\n"
                                       "  rules:\n"
                                       "    - name: no-interns\n"
                                       "      effect: deny\n"
                                       "      subjects: ['group:interns']\n"
                                       "      resources: ['sales/*']\n";

static char policies_path[600], sales_extra_path[600];

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");

    if (f == NULL)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static int usage_init(void)
{
    if (workdir == NULL)
        workdir = testenv_tmpdir("cli-check");
    if (workdir == NULL || access(CTLRUN_POLISCTL, X_OK) != 0) {
        fprintf(stderr, "%s is not built\n", CTLRUN_POLISCTL);
        return 1;
    }
    return 0;
}

/* Run polisctl against the control plane during set-up; true on exit 0
 * (else prints what it said).  out (may be NULL) receives its stdout. */
static bool setup_ctl(const char *const *args, char **out)
{
    const char *argv[CTLRUN_MAX_ARGV];
    run_result r;
    size_t n = 0;
    bool ok;

    argv[n++] = "--server";
    argv[n++] = cp->grpc_target;
    for (size_t i = 0; args[i] && n + 1 < CTLRUN_MAX_ARGV; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    run_capture(&r, argv);
    ok = r.code == 0;
    if (!ok)
        fprintf(stderr, "set-up: polisctl %s failed (%d):\n%s%s", args[0],
                r.code, r.out, r.err);
    if (out) {
        *out = r.out;
        r.out = NULL;
    }
    run_result_clear(&r);
    return ok;
}

/*
 * The example mesh's domains, products and principals, with this test's
 * policies only: the examples' own policies (which change as the examples
 * grow) are deleted, so every decision below follows from policies_yaml.
 */
static bool setup_store(void)
{
    const char *const apply_mesh[] = {"apply", "-f",
                                      POLIS_SOURCE_DIR "/examples/mesh", NULL};
    const char *const list[] = {"list", "policies", "-o", "json", NULL};
    const char *const apply_ours[] = {"apply", "-f", policies_path, NULL};
    char *out = NULL;
    json_t *v, *item;
    size_t i;
    bool ok;

    if (!setup_ctl(apply_mesh, NULL) || !setup_ctl(list, &out))
        return false;
    v = json_loads(out, 0, NULL);
    free(out);
    ok = json_is_array(v);
    json_array_foreach(v, i, item)
    {
        const char *const del[] = {
            "delete",
            "policy",
            json_string_value(json_object_get(item, "name")),
            "--scope",
            json_string_value(json_object_get(item, "scope")),
            NULL};
        ok = ok && del[2] && del[4] && setup_ctl(del, NULL);
    }
    json_decref(v);
    return ok && setup_ctl(apply_ours, NULL);
}

static int server_init(void)
{
    if (usage_init() != 0)
        return 1;
    if (access(CONTROLPLANE, X_OK) != 0) {
        fprintf(stderr, "\nSKIP: server tests: %s is not built\n",
                CONTROLPLANE);
        server_skipped = true;
        return 0;
    }
    snprintf(policies_path, sizeof(policies_path), "%s/policies.yaml", workdir);
    snprintf(sales_extra_path, sizeof(sales_extra_path), "%s/extra.yaml",
             workdir);
    if (write_file(policies_path, policies_yaml) != 0 ||
        write_file(sales_extra_path, sales_extra_yaml) != 0)
        return 1;
    cp = cpenv_start(NULL);
    if (cp == NULL)
        return 1;
    return setup_store() ? 0 : 1;
}

static int server_cleanup(void)
{
    cpenv_stop(cp);
    cp = NULL;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* check: usage                                                             */

static void test_check_usage_errors(void)
{
    static const struct {
        const char *args[8];
        const char *message;
    } cases[] = {
        {{"check", NULL}, "polisctl: check: missing --principal NAME"},
        {{"check", "--product", "sales/orders", NULL},
         "polisctl: check: missing --principal NAME"},
        {{"check", "--principal", "alice", NULL},
         "polisctl: check: missing --product DOMAIN/PRODUCT"},
        {{"check", "--principal", "alice", "--product", "orders", NULL},
         "--product: expected DOMAIN/PRODUCT (e.g. sales/orders), got "
         "\"orders\""},
        {{"check", "--principal", "alice", "--product", "sales/", NULL},
         "--product: expected DOMAIN/PRODUCT"},
        {{"check", "--principal", "alice", "--product", "sales/orders",
          "--port", "ftp", NULL},
         "polisctl: check: --port: unknown port \"ftp\" (expected query, "
         "file, event or http)"},
        {{"check", "--principal", "alice", "--product", "sales/orders",
          "--columns", "a,,b", NULL},
         "--columns: empty column name"},
        {{"check", "--principal", "", "--product", "sales/orders", NULL},
         "--principal: empty name"},
        {{"check", "--principal", "alice", "--product", "sales/orders", "extra",
          NULL},
         "unexpected argument \"extra\""},
        {{"check", "--principal", NULL}, "--principal needs a value"},
        {{"check", "--exit-code=yes", NULL}, "--exit-code takes no value"},
        {{"sidecars", "--domain", "", NULL}, "--domain: empty name"},
        {{"sidecars", "sales", NULL}, "unexpected argument \"sales\""},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_result r;

        /* No server runs here: usage errors come before any call. */
        run_argv(&r, cases[i].args);
        CU_ASSERT_EQUAL(r.code, 2);
        CU_ASSERT(contains(r.err, cases[i].message));
        CU_ASSERT(contains(r.err, "--help"));
        CU_ASSERT_STRING_EQUAL(r.out, "");
        run_result_clear(&r);
    }
}

static void test_help(void)
{
    run_result r;

    RUN(&r, "check", "--help");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "Usage: polisctl check --principal NAME "
                              "--product DOMAIN/PRODUCT"));
    CU_ASSERT(contains(r.out, "--exit-code"));
    CU_ASSERT(contains(r.out, "exit 3"));
    CU_ASSERT(contains(r.out, "--columns A,B,..."));
    CU_ASSERT_STRING_EQUAL(r.err, "");
    run_result_clear(&r);

    RUN(&r, "help", "sidecars");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "Usage: polisctl sidecars [--domain DOMAIN]"));
    CU_ASSERT(contains(r.out, "NACKED"));
    run_result_clear(&r);

    RUN(&r, "--help");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "  check "));
    CU_ASSERT(contains(r.out, "  sidecars "));
    CU_ASSERT(contains(r.out, "3 denied"));
    run_result_clear(&r);
}

/* ------------------------------------------------------------------------ */
/* check: decisions                                                         */

static const json_t *mask_of(const json_t *masks, const char *column)
{
    size_t i;
    json_t *m;

    json_array_foreach(masks, i, m)
    {
        if (strcmp(jstr(json_object_get(m, "column")), column) == 0)
            return m;
    }
    return NULL;
}

static void test_check_allowed_json(void)
{
    run_result r;
    json_t *v, *masks, *filters;
    const json_t *m;

    NEED_SERVER();
    CTL(&r, "check", "--principal", "alice", "--product", "sales/orders", "-o",
        "json");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(r.err, "");
    v = parse_json(r.out);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    CU_ASSERT(json_is_true(json_object_get(v, "allowed")));
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "reason")), "allowed");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "principal")), "alice");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "decidingRule")),
                           "global/pii-protection/analysts-read-sales");
    masks = json_object_get(v, "masks");
    CU_ASSERT_EQUAL(json_array_size(masks), 2);
    m = mask_of(masks, "customer_email");
    CU_ASSERT_PTR_NOT_NULL(m);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(m, "method")), "email");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(m, "rule")),
                           "global/pii-protection/mask-emails");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(m, "classification")),
                           "pii.email");
    m = mask_of(masks, "card_number");
    CU_ASSERT_PTR_NOT_NULL(m);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(m, "method")), "show_last");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(m, "classification")),
                           "pii.card");
    CU_ASSERT_PTR_NULL(mask_of(masks, "order_id"));
    filters = json_object_get(v, "rowFilters");
    CU_ASSERT_EQUAL(json_array_size(filters), 1);
    CU_ASSERT_STRING_EQUAL(jstr(json_array_get(filters, 0)),
                           "region == subject.region");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(v, "minGroupSize")), 10);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(v, "matchedRules")), 5);
    CU_ASSERT(json_integer_value(json_object_get(v, "revision")) > 0);
    CU_ASSERT(contains(jstr(json_object_get(v, "explanation")),
                       "allowed by global/pii-protection/analysts-read-sales"));
    /* decision_json arrives parsed, not as a string. */
    {
        const json_t *d = json_object_get(v, "decision");
        const json_t *f = json_array_get(json_object_get(d, "filters"), 0);

        CU_ASSERT(json_is_object(d));
        CU_ASSERT_STRING_EQUAL(jstr(json_object_get(d, "product")),
                               "sales/orders");
        CU_ASSERT_STRING_EQUAL(jstr(json_object_get(d, "port")), "query");
        CU_ASSERT_STRING_EQUAL(
            jstr(json_object_get(json_object_get(f, "rule"), "rule")),
            "own-region");
    }
    json_decref(v);
    run_result_clear(&r);
}

static void test_check_allowed_table(void)
{
    run_result r;
    char line[512];

    NEED_SERVER();
    CTL(&r, "check", "--principal", "alice", "--product", "sales/orders");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(
        line_starting(r.out, "DECISION", line, sizeof(line)),
        "DECISION   allowed (by global/pii-protection/analysts-read-sales)");
    line_starting(r.out, "MASKS", line, sizeof(line));
    CU_ASSERT(contains(line, "customer_email"));
    CU_ASSERT(contains(line, "global/pii-protection/mask-emails (pii.email)"));
    line_starting(r.out, "           card_number", line, sizeof(line));
    CU_ASSERT(contains(line, "show_last"));
    CU_ASSERT(contains(line, "global/pii-protection/hide-cards (pii.card)"));
    line_starting(r.out, "ROW FILTER", line, sizeof(line));
    CU_ASSERT(contains(line, "region == subject.region"));
    CU_ASSERT(contains(line, "(sales/sales-regions/own-region)"));
    CU_ASSERT_STRING_EQUAL(
        line_starting(r.out, "MIN GROUP", line, sizeof(line)), "MIN GROUP  10");
    line_starting(r.out, "MATCHED", line, sizeof(line));
    CU_ASSERT(contains(line, "global/pii-protection/analysts-read-sales"));
    CU_ASSERT(
        contains(r.out, "\n           sales/sales-regions/small-groups\n"));
    CU_ASSERT(contains(r.out, "\nREVISION   "));
    /* The explanation, one clause a line. */
    CU_ASSERT(contains(r.out, "\nallowed by global/pii-protection/"
                              "analysts-read-sales"));
    CU_ASSERT(contains(r.out, "\n  minimum group size 10 by "
                              "sales/sales-regions/small-groups\n"));
    run_result_clear(&r);
}

/* --columns, --purpose and --port reach the decision; -o yaml is the same
 * value as -o json. */
static void test_check_columns_purpose_port_yaml(void)
{
    run_result r;
    json_t *docs = NULL, *v, *masks;
    polis_error err = {0};

    NEED_SERVER();
    CTL(&r, "check", "--principal", "alice", "--product", "sales/orders",
        "--columns", "order_id, customer_email", "--columns", "region",
        "--purpose", "analytics", "--port", "file", "-o", "yaml");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_EQUAL_FATAL(
        doc_parse("stdout", r.out, strlen(r.out), 0, &docs, &err), 0);
    v = json_array_get(docs, 0);
    CU_ASSERT(json_is_true(json_object_get(v, "allowed")));
    masks = json_object_get(v, "masks");
    CU_ASSERT_EQUAL(json_array_size(masks), 1);
    CU_ASSERT_PTR_NOT_NULL(mask_of(masks, "customer_email"));
    CU_ASSERT_PTR_NULL(mask_of(masks, "card_number"));
    {
        const json_t *d = json_object_get(v, "decision");
        CU_ASSERT_STRING_EQUAL(jstr(json_object_get(d, "purpose")),
                               "analytics");
        CU_ASSERT_STRING_EQUAL(jstr(json_object_get(d, "port")), "file");
        CU_ASSERT_EQUAL(json_array_size(json_object_get(d, "columns")), 3);
    }
    json_decref(docs);
    run_result_clear(&r);

    /* A column the product does not have: the server says which. */
    CTL(&r, "check", "--principal", "alice", "--product", "sales/orders",
        "--columns", "order_id,no_such_column");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: check: "));
    CU_ASSERT(contains(r.err, "no_such_column"));
    CU_ASSERT_STRING_EQUAL(r.out, "");
    run_result_clear(&r);
}

static void test_check_denied_by_default(void)
{
    run_result r;
    json_t *v;
    char line[512];
    const char *formats[] = {"table", "json"};

    NEED_SERVER();
    /* bob is a manager: no rule allows him. */
    CTL(&r, "check", "--principal", "bob", "--product", "sales/orders", "-o",
        "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    CU_ASSERT(json_is_false(json_object_get(v, "allowed")));
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "reason")), "default-deny");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "decidingRule")), "");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(v, "masks")), 0);
    CU_ASSERT(
        contains(jstr(json_object_get(v, "explanation")), "default deny"));
    json_decref(v);
    run_result_clear(&r);

    CTL(&r, "check", "--principal", "bob", "--product", "sales/orders");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(line_starting(r.out, "DECISION", line, sizeof(line)),
                           "DECISION   denied (default deny: no rule allows)");
    CU_ASSERT_STRING_EQUAL(line_starting(r.out, "MASKS", line, sizeof(line)),
                           "MASKS      -");
    run_result_clear(&r);

    /* --exit-code: the same answer, exit 3, in every format. */
    for (size_t i = 0; i < 2; i++) {
        CTL(&r, "check", "--principal", "bob", "--product", "sales/orders",
            "--exit-code", "-o", formats[i]);
        CU_ASSERT_EQUAL(r.code, 3);
        CU_ASSERT(contains(r.out, "denied"));
        CU_ASSERT_STRING_EQUAL(r.err, "");
        run_result_clear(&r);
    }
    /* ... and an allowed request still exits 0 with it. */
    CTL(&r, "check", "--principal", "alice", "--product", "sales/orders",
        "--exit-code");
    CU_ASSERT_EQUAL(r.code, 0);
    run_result_clear(&r);
}

static void test_check_denied_by_rule(void)
{
    run_result r;
    json_t *v;
    char line[512];

    NEED_SERVER();
    /* carol is in privacy: a deny rule wins. */
    CTL(&r, "check", "--principal", "carol", "--product", "sales/orders", "-o",
        "json", "--exit-code");
    CU_ASSERT_EQUAL(r.code, 3);
    v = parse_json(r.out);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    CU_ASSERT(json_is_false(json_object_get(v, "allowed")));
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "reason")), "denied");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "decidingRule")),
                           "global/pii-protection/privacy-not-on-orders");
    json_decref(v);
    run_result_clear(&r);

    CTL(&r, "check", "--principal", "carol", "--product", "sales/orders");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(
        line_starting(r.out, "DECISION", line, sizeof(line)),
        "DECISION   denied (by global/pii-protection/privacy-not-on-orders)");
    run_result_clear(&r);
}

static void test_check_unknown_principal(void)
{
    run_result r;

    NEED_SERVER();
    CTL(&r, "check", "--principal", "nobody", "--product", "sales/orders");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: check: Principal \"nobody\" not "
                              "found"));
    CU_ASSERT_STRING_EQUAL(r.out, "");
    run_result_clear(&r);

    /* --exit-code does not turn an error into a denial. */
    CTL(&r, "check", "--principal", "nobody", "--product", "sales/orders",
        "--exit-code", "-o", "json");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT_STRING_EQUAL(r.out, "");
    run_result_clear(&r);
}

static void test_check_unreachable_server(void)
{
    run_result r;
    int port = testenv_refused_port();
    char addr[64];

    CU_ASSERT_FATAL(port > 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    RUN(&r, "--server", addr, "--timeout", "5", "check", "--principal", "alice",
        "--product", "sales/orders");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "cannot reach the control plane"));
    run_result_clear(&r);

    RUN(&r, "--server", addr, "--timeout", "5", "sidecars");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "cannot reach the control plane"));
    run_result_clear(&r);
}

/* ------------------------------------------------------------------------ */
/* sidecars                                                                 */

static void test_sidecars_none(void)
{
    run_result r;

    NEED_SERVER();
    CTL(&r, "sidecars");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(r.out, "");
    CU_ASSERT_STRING_EQUAL(r.err, "No sidecars found.\n");
    run_result_clear(&r);

    CTL(&r, "sidecars", "-o", "json");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(r.out, "[]\n");
    run_result_clear(&r);
}

/* A fake sidecar: a Distribution.Subscribe stream driven by the test. */
typedef struct fake_sidecar {
    rpc_channel *ch;
    rpc_stream *stream;
} fake_sidecar;

static int sidecar_send(fake_sidecar *s, Polis__V1__SidecarMessage *m)
{
    return rpc_stream_send(s->stream, &m->base);
}

static int sidecar_hello(fake_sidecar *s)
{
    Polis__V1__Hello h = POLIS__V1__HELLO__INIT;
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    polis_error err = {0};

    s->ch = cpenv_channel(cp);
    if (s->ch == NULL ||
        rpc_stream_open(s->ch, &polis__v1__distribution__descriptor,
                        "Subscribe", NULL, 0, 120000, &s->stream, &err) != 0)
        return -1;
    h.sidecar_id = SIDECAR_ID;
    h.domain = "sales";
    h.version = "test";
    h.address = "127.0.0.1:1";
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_HELLO;
    m.hello = &h;
    return sidecar_send(s, &m);
}

static void sidecar_keepalive(fake_sidecar *s)
{
    Polis__V1__Keepalive k = POLIS__V1__KEEPALIVE__INIT;
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;

    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_KEEPALIVE;
    m.keepalive = &k;
    sidecar_send(s, &m);
}

/* The next snapshot (keepalives skipped), or NULL after timeout_ms.  Caller
 * frees with protobuf_c_message_free_unpacked. */
static Polis__V1__ControlMessage *sidecar_snapshot(fake_sidecar *s,
                                                   int timeout_ms)
{
    double until = now_s() + timeout_ms / 1000.0;

    while (now_s() < until) {
        ProtobufCMessage *msg = NULL;
        Polis__V1__ControlMessage *cm;
        int rc = rpc_stream_recv(s->stream, &msg, 500);

        if (rc == POLIS_ETIMEDOUT)
            continue;
        if (rc != 1)
            return NULL;
        cm = (Polis__V1__ControlMessage *)msg;
        if (cm->msg_case == POLIS__V1__CONTROL_MESSAGE__MSG_SNAPSHOT)
            return cm;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    return NULL;
}

static void sidecar_close(fake_sidecar *s)
{
    rpc_stream_free(s->stream);
    rpc_channel_free(s->ch);
    s->stream = NULL;
    s->ch = NULL;
}

/* `polisctl sidecars -o json` until our sidecar shows `state`; its record
 * (a new reference) or NULL after STATUS_WAIT_MS.  The fake sidecar keeps
 * its stream alive meanwhile. */
static json_t *wait_state(fake_sidecar *s, const char *state)
{
    double until = now_s() + STATUS_WAIT_MS / 1000.0;
    const char *last = "(none)";
    char seen[32] = "(none)";

    while (now_s() < until) {
        run_result r;
        json_t *v, *rec = NULL, *item;
        size_t i;

        CTL(&r, "sidecars", "-o", "json");
        CU_ASSERT_EQUAL(r.code, 0);
        v = json_loads(r.out, 0, NULL);
        json_array_foreach(v, i, item)
        {
            if (strcmp(jstr(json_object_get(item, "id")), SIDECAR_ID) == 0)
                rec = item;
        }
        if (rec) {
            last = jstr(json_object_get(rec, "state"));
            snprintf(seen, sizeof(seen), "%s", last);
        }
        if (rec && strcmp(last, state) == 0) {
            json_incref(rec);
            json_decref(v);
            run_result_clear(&r);
            return rec;
        }
        json_decref(v);
        run_result_clear(&r);
        if (s && s->stream)
            sidecar_keepalive(s);
        usleep(100 * 1000);
    }
    fprintf(stderr, "\nsidecar %s never reached %s (last: %s)\n", SIDECAR_ID,
            state, seen);
    return NULL;
}

/* The table row of sidecar `id`, split on runs of spaces into cells. */
static size_t table_row(const char *out, const char *id, char cells[][128],
                        size_t max)
{
    char line[1024];
    size_t n = 0;

    line_starting(out, id, line, sizeof(line));
    /* ERROR may hold single spaces: cells are separated by 3 or more. */
    for (char *p = line; *p && n < max;) {
        char *gap = strstr(p, "   ");
        size_t len = gap ? (size_t)(gap - p) : strlen(p);

        snprintf(cells[n++], 128, "%.*s", (int)len, p);
        if (gap == NULL)
            break;
        p = gap;
        while (*p == ' ')
            p++;
    }
    return n;
}

static void test_sidecars_synced_nacked_disconnected(void)
{
    static const char nack_error[] =
        "sales-extra.spec.rules[0]: this sidecar cannot compile the rule "
        "because it is an old version; upgrade it to 0.2 or newer";
    fake_sidecar s = {0};
    Polis__V1__ControlMessage *snap1 = NULL, *snap2 = NULL;
    json_t *rec = NULL;
    run_result r;
    char cells[10][128], rev1[24], rev2[24];
    size_t n;

    NEED_SERVER();
    CU_ASSERT_EQUAL_FATAL(sidecar_hello(&s), 0);
    snap1 = sidecar_snapshot(&s, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(snap1);
    CU_ASSERT(snap1->snapshot->revision > 0);
    CU_ASSERT_STRING_EQUAL(snap1->snapshot->domain, "sales");
    snprintf(rev1, sizeof(rev1), "%lld", (long long)snap1->snapshot->revision);
    {
        Polis__V1__Ack a = POLIS__V1__ACK__INIT;
        Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;

        a.revision = snap1->snapshot->revision;
        a.digest = snap1->snapshot->digest;
        m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_ACK;
        m.ack = &a;
        CU_ASSERT_EQUAL(sidecar_send(&s, &m), 0);
    }

    /* ACKed: SYNCED at the snapshot's revision. */
    rec = wait_state(&s, "SYNCED");
    CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(rec, "domain")), "sales");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(rec, "appliedRevision")),
                    snap1->snapshot->revision);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(rec, "latestRevision")),
                    snap1->snapshot->revision);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(rec, "address")),
                           "127.0.0.1:1");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(rec, "version")), "test");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(rec, "lastError")), "");
    CU_ASSERT(strlen(jstr(json_object_get(rec, "controlPlane"))) > 0);
    CU_ASSERT(strlen(jstr(json_object_get(rec, "lastSeen"))) > 0);
    json_decref(rec);

    CTL(&r, "sidecars");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "ID "));
    CU_ASSERT(contains(r.out, "CONTROL PLANE"));
    n = table_row(r.out, SIDECAR_ID, cells, 10);
    CU_ASSERT_EQUAL(n, 8);
    if (n == 8) {
        size_t age_len = strlen(cells[5]);

        CU_ASSERT_STRING_EQUAL(cells[1], "sales");
        CU_ASSERT_STRING_EQUAL(cells[2], "SYNCED");
        CU_ASSERT_STRING_EQUAL(cells[3], rev1);
        CU_ASSERT_STRING_EQUAL(cells[4], rev1);
        /* Seen within the last minute: "Ns". */
        CU_ASSERT(age_len >= 2 && cells[5][age_len - 1] == 's');
        CU_ASSERT_STRING_EQUAL(cells[7], "-");
    }
    run_result_clear(&r);

    /* --domain filters. */
    CTL(&r, "sidecars", "--domain", "crm");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(r.err, "No sidecars found.\n");
    run_result_clear(&r);
    CTL(&r, "sidecars", "--domain", "sales");
    CU_ASSERT(contains(r.out, SIDECAR_ID));
    run_result_clear(&r);

    /* A change to sales: a new snapshot, which this sidecar rejects. */
    CTL(&r, "apply", "-f", sales_extra_path);
    CU_ASSERT_EQUAL(r.code, 0);
    run_result_clear(&r);
    snap2 = sidecar_snapshot(&s, 10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(snap2);
    CU_ASSERT(snap2->snapshot->revision > snap1->snapshot->revision);
    snprintf(rev2, sizeof(rev2), "%lld", (long long)snap2->snapshot->revision);
    {
        Polis__V1__Nack k = POLIS__V1__NACK__INIT;
        Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;

        k.revision = snap2->snapshot->revision;
        k.digest = snap2->snapshot->digest;
        k.error = (char *)nack_error;
        m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_NACK;
        m.nack = &k;
        CU_ASSERT_EQUAL(sidecar_send(&s, &m), 0);
    }
    rec = wait_state(&s, "NACKED");
    CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(rec, "lastError")), nack_error);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(rec, "appliedRevision")),
                    snap1->snapshot->revision);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(rec, "latestRevision")),
                    snap2->snapshot->revision);
    json_decref(rec);

    CTL(&r, "sidecars");
    CU_ASSERT_EQUAL(r.code, 0);
    n = table_row(r.out, SIDECAR_ID, cells, 10);
    CU_ASSERT_EQUAL(n, 8);
    if (n == 8) {
        CU_ASSERT_STRING_EQUAL(cells[2], "NACKED");
        CU_ASSERT_STRING_EQUAL(cells[3], rev1);
        CU_ASSERT_STRING_EQUAL(cells[4], rev2);
        /* The error, cut to 60 characters in the table. */
        CU_ASSERT_EQUAL(strlen(cells[7]), 60);
        CU_ASSERT(strncmp(cells[7], nack_error, 57) == 0);
        CU_ASSERT(strcmp(cells[7] + 57, "...") == 0);
    }
    CU_ASSERT(strstr(r.out, nack_error) == NULL);
    run_result_clear(&r);

    /* -o yaml has the whole error too. */
    CTL(&r, "sidecars", "-o", "yaml");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "state: NACKED"));
    CU_ASSERT(contains(r.out, "upgrade it to 0.2 or newer"));
    run_result_clear(&r);

    /* The sidecar hangs up: DISCONNECTED. */
    sidecar_close(&s);
    rec = wait_state(NULL, "DISCONNECTED");
    CU_ASSERT_PTR_NOT_NULL(rec);
    json_decref(rec);

    protobuf_c_message_free_unpacked(&snap1->base, NULL);
    if (snap2)
        protobuf_c_message_free_unpacked(&snap2->base, NULL);
}

/* An RFC 3339 UTC time `ago_s` seconds back, as the control plane writes
 * lastSeen. */
static void time_ago(double ago_s, char *buf, size_t len)
{
    time_t t = time(NULL) - (time_t)ago_s;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
}

/*
 * Older sidecars than a test can wait for: status records written to etcd
 * as the control plane writes them (DESIGN.md: <prefix>sidecars/<id>), seen
 * 5 minutes, 2 hours and 3 days ago, one of them stuck on a push nobody
 * answered (STALE).  AGE shows the largest whole unit.
 */
static void test_sidecars_age_and_states(void)
{
    static const struct {
        const char *id, *state;
        double ago_s;
        long long applied, latest, pushed_ago_ms;
        const char *age, *shown_state;
    } recs[] = {
        {"age-test-minutes", "CONNECTED", 5 * 60 + 30, 3, 3, 0, "5m", "SYNCED"},
        {"age-test-hours", "CONNECTED", 2 * 3600 + 300, 3, 7, 60000, "2h",
         "STALE"},
        {"age-test-days", "DISCONNECTED", 3 * 86400 + 10, 0, 7, 0, "3d",
         "DISCONNECTED"},
    };
    etcd_options eo = {.endpoints = cp->etcd_endpoints};
    etcd_client *etcd = NULL;
    polis_error err = {0};
    run_result r;
    json_t *v;

    NEED_SERVER();
    CU_ASSERT_EQUAL_FATAL(etcd_client_new(&eo, &etcd, &err), 0);
    for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
        char key[128], seen[40], *text;
        json_t *rec;

        time_ago(recs[i].ago_s, seen, sizeof(seen));
        rec = json_pack(
            "{s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:s}", "id",
            recs[i].id, "domain", "marketing", "address", "", "controlplane",
            "cp-elsewhere", "version", "0.1.0", "state", recs[i].state,
            "appliedRevision", (json_int_t)recs[i].applied, "latestRevision",
            (json_int_t)recs[i].latest, "pushedAtMs",
            (json_int_t)((double)time(NULL) * 1000 - recs[i].pushed_ago_ms),
            "lastError", "", "lastSeen", seen, "connectedSince", seen);
        text = json_dumps(rec, JSON_COMPACT);
        snprintf(key, sizeof(key), "/polis/sidecars/%s", recs[i].id);
        CU_ASSERT_EQUAL(etcd_put(etcd, key, text, strlen(text), 0, NULL, &err),
                        0);
        free(text);
        json_decref(rec);
    }

    CTL(&r, "sidecars", "--domain", "marketing");
    CU_ASSERT_EQUAL(r.code, 0);
    for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
        char cells[10][128];

        if (table_row(r.out, recs[i].id, cells, 10) != 8) {
            CU_FAIL("the row does not have 8 cells");
            continue;
        }
        CU_ASSERT_STRING_EQUAL(cells[2], recs[i].shown_state);
        CU_ASSERT_STRING_EQUAL(cells[5], recs[i].age);
        CU_ASSERT_STRING_EQUAL(cells[6], "cp-elsewhere");
    }
    /* No revision applied shows as "-". */
    CU_ASSERT(contains(r.out, "DISCONNECTED   -         7 "));
    run_result_clear(&r);

    CTL(&r, "sidecars", "--domain", "marketing", "-o", "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT_EQUAL(json_array_size(v), 3);
    json_decref(v);
    run_result_clear(&r);

    for (size_t i = 0; i < sizeof(recs) / sizeof(recs[0]); i++) {
        char key[128];
        snprintf(key, sizeof(key), "/polis/sidecars/%s", recs[i].id);
        etcd_delete(etcd, key, false, NULL, NULL, &err);
    }
    etcd_client_free(etcd);
}

/* ------------------------------------------------------------------------ */

static const test_case usage_cases[] = {
    {"check_usage_errors", test_check_usage_errors},
    {"help", test_help},
    {"unreachable_server", test_check_unreachable_server},
    {NULL, NULL},
};

/* In order: the sidecar case changes the sales policies last. */
static const test_case server_cases[] = {
    {"check_allowed_json", test_check_allowed_json},
    {"check_allowed_table", test_check_allowed_table},
    {"check_columns_purpose_port_yaml", test_check_columns_purpose_port_yaml},
    {"check_denied_by_default", test_check_denied_by_default},
    {"check_denied_by_rule", test_check_denied_by_rule},
    {"check_unknown_principal", test_check_unknown_principal},
    {"sidecars_none", test_sidecars_none},
    {"sidecars_age_and_states", test_sidecars_age_and_states},
    {"sidecars_synced_nacked_disconnected",
     test_sidecars_synced_nacked_disconnected},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"usage", usage_init, NULL, usage_cases},
    {"server", server_init, server_cleanup, server_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
