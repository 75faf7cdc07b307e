/*
 * test_cli.c — polisctl as a user runs it: the real binary as a subprocess
 * (stdout, stderr, exit code), against a real polis-controlplane on a real
 * etcd, on free loopback ports in temp dirs.  Usage errors, --help, apply
 * from files, directories and stdin, get/list/history/delete in every
 * output format, local file errors, all-or-nothing applies, conflicts and
 * unreachable or silent servers.
 */
#include "common/document.h"
#include "tests/support/testenv.h"
#include "tests/support/ctlrun.h"
#include "tests/support/testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONTROLPLANE POLIS_BUILD_DIR "/controlplane/polis-controlplane"
#define TEST_USER    "council-test"

/* ------------------------------------------------------------------------ */
/* running polisctl                                                         */

typedef ctl_result run_result;

static const char *workdir;  /* temp dir for this program's files */
static char server_addr[64]; /* the control plane, once started */
static bool server_skipped;  /* no control-plane binary: SKIP */
static testenv_etcd *etcd;
static testenv_proc *controlplane;

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

static void run_result_clear(run_result *r)
{
    ctl_result_clear(r);
}

/*
 * Run polisctl with argv (NULL-terminated after the binary), stdin from
 * `input` (NULL: /dev/null), USER=council-test and no POLIS_SERVER.
 */
static void run_argv(run_result *r, const char *input, const char *const *args)
{
    ctl_run(r, workdir, input, TEST_USER, args);
    /* Under the sanitizer build a leak or UB in polisctl fails the test
     * even where a non-zero exit is the expected outcome. */
    CU_ASSERT(strstr(r->err, "Sanitizer") == NULL);
    CU_ASSERT(strstr(r->err, "runtime error:") == NULL);
}

#define RUN(r, input, ...)                                                     \
    do {                                                                       \
        const char *const args_[] = {__VA_ARGS__, NULL};                       \
        run_argv((r), (input), args_);                                         \
    } while (0)

/* Against the test's control plane: --server first, so a later --server in
 * the arguments still wins (global flags may come anywhere). */
#define CTL(r, input, ...) RUN(r, input, "--server", server_addr, __VA_ARGS__)

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
        fprintf(stderr, "\nnot JSON (%s) :\n%s\n", jerr.text, text);
    return v;
}

/* A JSON string's value, never NULL (CUnit's string asserts would crash on
 * NULL instead of failing). */
static const char *jstr(const json_t *v)
{
    const char *s = json_string_value(v);

    return s ? s : "(not a string)";
}

/* The author polisctl records for USER=council-test on this host. */
static void expected_author(char *buf, size_t len)
{
    char host[256] = "";

    gethostname(host, sizeof(host) - 1);
    snprintf(buf, len, "%s@%s", TEST_USER, host[0] ? host : "localhost");
}

/* ------------------------------------------------------------------------ */
/* documents                                                                */

static const char domain_sales[] = "apiVersion: polis/v1\n"
                                   "kind: Domain\n"
                                   "metadata:\n"
                                   "  name: sales\n"
                                   "spec:\n"
                                   "  owners: [alice@example.com]\n"
                                   "  description: Everything we sell\n";

static const char product_orders[] = "apiVersion: polis/v1\n"
                                     "kind: DataProduct\n"
                                     "metadata:\n"
                                     "  name: orders\n"
                                     "spec:\n"
                                     "  domain: sales\n"
                                     "  description: One row per order\n"
                                     "  schema:\n"
                                     "    - name: id\n"
                                     "      type: integer\n"
                                     "    - name: email\n"
                                     "      type: string\n"
                                     "      classification: [pii.email]\n";

/* A global masking policy whose rule is named `rule` (the tests change the
 * name to make a new version). */
#define PII_POLICY(rule)                                                       \
    "apiVersion: polis/v1\n"                                                   \
    "kind: Policy\n"                                                           \
    "metadata:\n"                                                              \
    "  name: pii-masking\n"                                                    \
    "spec:\n"                                                                  \
    "  scope: global\n"                                                        \
    "  rules:\n"                                                               \
    "    - name: " rule "\n"                                                   \
    "      effect: mask\n"                                                     \
    "      subjects: ['*']\n"                                                  \
    "      resources: ['*/*']\n"                                               \
    "      mask: {method: email, classifications: [pii.email]}\n"

/* Two documents in one file. */
static const char policies_yaml[] =
    PII_POLICY("mask-email") "---\n"
                             "apiVersion: polis/v1\n"
                             "kind: Policy\n"
                             "metadata:\n"
                             "  name: sales-readers\n"
                             "spec:\n"
                             "  scope: sales\n"
                             "  rules:\n"
                             "    - name: analysts-read\n"
                             "      effect: allow\n"
                             "      subjects: ['group:analysts']\n"
                             "      resources: ['sales/*']\n";

static const char principal_json[] =
    "{\"apiVersion\": \"polis/v1\", \"kind\": \"Principal\",\n"
    " \"metadata\": {\"name\": \"ana\"},\n"
    " \"spec\": {\"groups\": [\"analysts\"]}}\n";

/* A fresh directory under the work dir. */
static const char *mkdir_in(const char *name)
{
    static char path[512];

    snprintf(path, sizeof(path), "%s/%s", workdir, name);
    testenv_rmrf(path);
    CU_ASSERT_FATAL(mkdir(path, 0700) == 0);
    return path;
}

static void write_in(const char *dir, const char *name, const char *text)
{
    char path[512];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    write_file(path, text);
}

/* The mesh the examples describe: dir/domain.yaml, dir/products/orders.yml,
 * dir/policies/all.yaml (two documents), dir/principals/ana.json, and a
 * README.md that apply must ignore. */
static void write_mesh(const char *dir)
{
    char sub[512];

    write_in(dir, "domain.yaml", domain_sales);
    write_in(dir, "README.md", "not a document: {{{\n");
    snprintf(sub, sizeof(sub), "%s/products", dir);
    mkdir(sub, 0700);
    write_in(sub, "orders.yml", product_orders);
    snprintf(sub, sizeof(sub), "%s/policies", dir);
    mkdir(sub, 0700);
    write_in(sub, "all.yaml", policies_yaml);
    snprintf(sub, sizeof(sub), "%s/principals", dir);
    mkdir(sub, 0700);
    write_in(sub, "ana.json", principal_json);
}

/* ------------------------------------------------------------------------ */
/* usage: no server needed                                                  */

static void test_no_arguments_is_a_usage_error(void)
{
    run_result r;

    RUN(&r, NULL, "--timeout", "1"); /* flags but no verb */
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "Usage: polisctl"));
    CU_ASSERT_STRING_EQUAL(r.out, "");
    run_result_clear(&r);
}

static void test_unknown_verb_and_flags(void)
{
    run_result r;

    RUN(&r, NULL, "frobnicate");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "polisctl: unknown verb \"frobnicate\""));
    CU_ASSERT(contains(r.err, "polisctl --help"));
    run_result_clear(&r);

    RUN(&r, NULL, "list", "--colour");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "polisctl: list: unknown flag \"--colour\""));
    run_result_clear(&r);

    RUN(&r, NULL, "--bogus", "list");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "unknown flag \"--bogus\""));
    run_result_clear(&r);

    /* A verb's flag is not a global one. */
    RUN(&r, NULL, "get", "--dry-run", "policy", "x");
    CU_ASSERT_EQUAL(r.code, 2);
    run_result_clear(&r);
}

static void test_missing_and_bad_arguments(void)
{
    run_result r;

    RUN(&r, NULL, "get", "policy");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "polisctl: get: missing argument"));
    run_result_clear(&r);

    RUN(&r, NULL, "get", "policy", "a", "b");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "unexpected argument \"b\""));
    run_result_clear(&r);

    RUN(&r, NULL, "apply");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "polisctl: apply: nothing to apply"));
    run_result_clear(&r);

    RUN(&r, NULL, "apply", "-f");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "-f needs a value"));
    run_result_clear(&r);

    RUN(&r, NULL, "list", "-o", "xml");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "unknown output format \"xml\""));
    run_result_clear(&r);

    RUN(&r, NULL, "get", "widget", "x");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "unknown kind \"widget\""));
    run_result_clear(&r);

    RUN(&r, NULL, "history", "policy", "x", "--limit", "-3");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "--limit"));
    run_result_clear(&r);

    RUN(&r, NULL, "--timeout", "soon", "list");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "--timeout"));
    run_result_clear(&r);

    RUN(&r, NULL, "delete", "policy", "x", "--expected-revision", "abc");
    CU_ASSERT_EQUAL(r.code, 2);
    CU_ASSERT(contains(r.err, "--expected-revision"));
    run_result_clear(&r);
}

static void test_help_on_every_verb(void)
{
    static const char *const verbs[] = {"apply",   "get",     "list", "delete",
                                        "history", "version", "help", NULL};
    run_result r;
    char usage[64];

    RUN(&r, NULL, "--help");
    CU_ASSERT_EQUAL(r.code, 0);
    for (size_t i = 0; verbs[i]; i++)
        CU_ASSERT(contains(r.out, verbs[i]));
    CU_ASSERT(contains(r.out, "POLIS_SERVER"));
    run_result_clear(&r);

    for (size_t i = 0; verbs[i]; i++) {
        snprintf(usage, sizeof(usage), "Usage: polisctl %s", verbs[i]);
        RUN(&r, NULL, verbs[i], "--help");
        CU_ASSERT_EQUAL(r.code, 0);
        CU_ASSERT(contains(r.out, usage));
        CU_ASSERT(contains(r.out, "Examples:"));
        run_result_clear(&r);

        RUN(&r, NULL, "help", verbs[i]);
        CU_ASSERT_EQUAL(r.code, 0);
        CU_ASSERT(contains(r.out, usage));
        run_result_clear(&r);

        RUN(&r, NULL, verbs[i], "-h");
        CU_ASSERT_EQUAL(r.code, 0);
        CU_ASSERT(contains(r.out, usage));
        run_result_clear(&r);
    }
    /* Flags of the verb are listed in its help. */
    RUN(&r, NULL, "apply", "--help");
    CU_ASSERT(contains(r.out, "--dry-run"));
    CU_ASSERT(contains(r.out, "--expected-revision"));
    CU_ASSERT(contains(r.out, "-f, --filename"));
    run_result_clear(&r);

    RUN(&r, NULL, "help", "nope");
    CU_ASSERT_EQUAL(r.code, 2);
    run_result_clear(&r);
}

static void test_version(void)
{
    run_result r;

    RUN(&r, NULL, "version");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "polisctl " POLIS_VERSION));
    run_result_clear(&r);
    RUN(&r, NULL, "--version");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "polisctl " POLIS_VERSION));
    run_result_clear(&r);
}

/* A port nothing listens on: connection refused. */
static void refused_addr(char *buf, size_t len)
{
    snprintf(buf, len, "127.0.0.1:%d", testenv_refused_port());
}

/*
 * Local file problems are reported before any RPC: the server address is
 * unreachable, so a message about it would mean polisctl tried to call.
 */
static void test_local_file_errors_before_any_rpc(void)
{
    char addr[64], big_path[512], *big;
    const char *dir = mkdir_in("local-errors"), *empty;
    run_result r;
    FILE *f;

    refused_addr(addr, sizeof(addr));
    write_in(dir, "bad.yaml",
             "apiVersion: polis/v1\nkind: Policy\nmetadata:\n"
             "  name: [unclosed\n");
    write_in(dir, "good.yaml", domain_sales);

    RUN(&r, NULL, "--server", addr, "apply", "-f", dir);
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: apply: "));
    CU_ASSERT(contains(r.err, "/local-errors/bad.yaml:5:1: "));
    CU_ASSERT(strstr(r.err, "cannot reach") == NULL);
    CU_ASSERT_STRING_EQUAL(r.out, "");
    run_result_clear(&r);

    /* A missing file and an unreadable one are both named. */
    RUN(&r, NULL, "--server", addr, "apply", "-f", "/nonexistent/x.yaml", "-f",
        "-", "-f", "-");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "/nonexistent/x.yaml: No such file"));
    CU_ASSERT(contains(r.err, "standard input can be read only once"));
    CU_ASSERT(strstr(r.err, "cannot reach") == NULL);
    run_result_clear(&r);

    /* Over 1 MiB. */
    snprintf(big_path, sizeof(big_path), "%s/big.yaml", dir);
    big = malloc(DOC_DEFAULT_MAX_BYTES + 100);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, '#', DOC_DEFAULT_MAX_BYTES + 99);
    big[DOC_DEFAULT_MAX_BYTES + 99] = '\0';
    f = fopen(big_path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(big, f);
    fclose(f);
    free(big);
    RUN(&r, NULL, "--server", addr, "apply", "-f", big_path);
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "big.yaml: "));
    CU_ASSERT(contains(r.err, "limit"));
    CU_ASSERT(strstr(r.err, "cannot reach") == NULL);
    run_result_clear(&r);

    /* Over the document limit of one apply: said once, before any RPC. */
    {
        size_t cap = 1100 * 80, used = 0;
        char *many = malloc(cap), *first;
        CU_ASSERT_PTR_NOT_NULL_FATAL(many);
        for (int i = 1; i <= 1001; i++)
            used += (size_t)snprintf(many + used, cap - used,
                                     "kind: Principal\nmetadata: {name: "
                                     "p%d}\n---\n",
                                     i);
        RUN(&r, many, "--server", addr, "apply", "-f", "-", "-f", dir);
        free(many);
        CU_ASSERT_EQUAL(r.code, 1);
        first = strstr(r.err, "stdin#1001: more than 1000 documents");
        CU_ASSERT(contains(r.err, "stdin#1001: more than 1000 documents"));
        CU_ASSERT(first && strstr(first + 20, "more than 1000") == NULL);
        CU_ASSERT(strstr(r.err, "cannot reach") == NULL);
        run_result_clear(&r);
    }

    /* A directory without documents. */
    empty = mkdir_in("empty");
    RUN(&r, NULL, "--server", addr, "apply", "-f", empty);
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "no *.yaml, *.yml or *.json files"));
    run_result_clear(&r);

    /* YAML syntax error on stdin names "stdin" and the place. */
    RUN(&r, "kind: Policy\nmetadata: {name: x\n", "--server", addr, "apply",
        "-f", "-");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: apply: stdin:"));
    run_result_clear(&r);
}

static void test_unreachable_server(void)
{
    char addr[64], expect[128];
    run_result r;

    refused_addr(addr, sizeof(addr));
    RUN(&r, NULL, "--server", addr, "--timeout", "5", "list");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(r.seconds < 5.5);
    snprintf(expect, sizeof(expect),
             "polisctl: cannot reach the control plane at %s: ", addr);
    CU_ASSERT(contains(r.err, expect));
    CU_ASSERT(contains(r.err, "POLIS_SERVER"));
    CU_ASSERT_STRING_EQUAL(r.out, "");
    run_result_clear(&r);
}

/* A server that accepts TCP connections and never answers: polisctl gives
 * up after --timeout and says so. */
static void test_silent_server_times_out(void)
{
    struct sockaddr_in sa = {0};
    socklen_t len = sizeof(sa);
    char addr[64];
    run_result r;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    CU_ASSERT_FATAL(fd >= 0);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_FATAL(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CU_ASSERT_FATAL(listen(fd, 16) == 0);
    CU_ASSERT_FATAL(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(sa.sin_port));

    RUN(&r, NULL, "--server", addr, "--timeout", "1", "get", "policy", "x");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(r.seconds >= 0.9 && r.seconds < 4.0);
    CU_ASSERT(contains(r.err, "polisctl: get: timed out after 1 s"));
    run_result_clear(&r);
    close(fd);
}

/* ------------------------------------------------------------------------ */
/* against a real control plane                                            */

static int server_init(void)
{
    char grpc[64], admin[64], log_path[512], url[128];
    int grpc_port, admin_port;

    if (access(CONTROLPLANE, X_OK) != 0) {
        fprintf(stderr,
                "\nSKIP: server tests: %s is not built (%s); only the "
                "usage tests ran\n",
                CONTROLPLANE, strerror(errno));
        server_skipped = true;
        return 0;
    }
    etcd = testenv_etcd_start(NULL);
    if (etcd == NULL)
        return 1;
    grpc_port = testenv_free_port();
    admin_port = testenv_free_port();
    /* Two calls may return the same port when nothing bound in between. */
    for (int i = 0; i < 20 && admin_port == grpc_port; i++)
        admin_port = testenv_free_port();
    if (grpc_port < 0 || admin_port < 0 || admin_port == grpc_port)
        return 1;
    snprintf(grpc, sizeof(grpc), "127.0.0.1:%d", grpc_port);
    snprintf(admin, sizeof(admin), "127.0.0.1:%d", admin_port);
    snprintf(log_path, sizeof(log_path), "%s/controlplane.log", workdir);
    {
        const char *const argv[] = {
            CONTROLPLANE,   "--listen",       grpc,  "--etcd",
            etcd->endpoint, "--admin-listen", admin, NULL};
        controlplane = testenv_spawn(argv, NULL, log_path);
    }
    snprintf(url, sizeof(url), "http://%s/readyz", admin);
    if (controlplane == NULL ||
        testenv_wait_port("127.0.0.1", grpc_port, 10000) != 0 ||
        testenv_wait_http(url, 10000) != 0) {
        char *tail = testenv_file_tail(log_path, 4000);
        fprintf(stderr, "polis-controlplane did not start:\n%s\n", tail);
        free(tail);
        return 1;
    }
    snprintf(server_addr, sizeof(server_addr), "%s", grpc);
    return 0;
}

static int server_cleanup(void)
{
    testenv_proc_stop(controlplane, 5000);
    controlplane = NULL;
    testenv_etcd_stop(etcd);
    etcd = NULL;
    return 0;
}

#define NEED_SERVER()                                                          \
    do {                                                                       \
        if (server_skipped) {                                                  \
            fprintf(stderr, " SKIP (no polis-controlplane binary) ");          \
            return;                                                            \
        }                                                                      \
    } while (0)

static size_t list_count(const char *kind)
{
    run_result r;
    json_t *v;
    size_t n = (size_t)-1;

    if (kind)
        CTL(&r, NULL, "list", kind, "-o", "json");
    else
        CTL(&r, NULL, "list", "-o", "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT(json_is_array(v));
    if (json_is_array(v))
        n = json_array_size(v);
    json_decref(v);
    run_result_clear(&r);
    return n;
}

/* Runs first, on the empty store: a syntax error anywhere means nothing of
 * the invocation is written, not even the valid files. */
static void test_syntax_error_writes_nothing(void)
{
    const char *dir;
    run_result r;

    NEED_SERVER();
    CU_ASSERT_EQUAL(list_count(NULL), 0);
    dir = mkdir_in("syntax");
    write_in(dir, "a-domain.yaml", domain_sales);
    write_in(dir, "b-broken.yaml",
             "apiVersion: polis/v1\nkind: Domain\nmetadata:\n  name: x\n"
             "spec:\n  owners: [a, b\n");
    CTL(&r, NULL, "apply", "-f", dir);
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: apply: "));
    CU_ASSERT(contains(r.err, "/syntax/b-broken.yaml:"));
    run_result_clear(&r);
    CU_ASSERT_EQUAL(list_count(NULL), 0);

    /* The table says so on stderr, and prints nothing on stdout. */
    CTL(&r, NULL, "list");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(r.out, "");
    CU_ASSERT(contains(r.err, "No resources found"));
    run_result_clear(&r);
}

/* Invalid documents found by the server: every one on its own prefixed
 * line, and the valid ones in the same apply are not written either. */
static void test_invalid_documents_all_or_nothing(void)
{
    const char *dir;
    run_result r;

    NEED_SERVER();
    dir = mkdir_in("invalid");
    write_in(dir, "1-domain.yaml", domain_sales);
    write_in(dir, "2-orders.yaml",
             "apiVersion: polis/v1\nkind: DataProduct\nmetadata:\n"
             "  name: orders\nspec:\n  domain: sales\n  schema:\n"
             "    - {name: id, type: integer}\n"
             "    - {name: email, type: strng}\n");
    write_in(dir, "3-policy.yaml",
             "apiVersion: polis/v1\nkind: Policy\nmetadata:\n  name: p\n"
             "spec:\n  rules: []\n");
    CTL(&r, NULL, "apply", "-f", dir);
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "2-orders.yaml: spec.schema[1].type: unknown "
                              "type \"strng\""));
    CU_ASSERT(contains(r.err, "polisctl: apply: "));
    CU_ASSERT(contains(r.err, "3-policy.yaml: spec.rules"));
    /* Each problem line carries the prefix. */
    {
        char *copy = strdup(r.err), *save = NULL;
        for (char *line = strtok_r(copy, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save))
            CU_ASSERT(strncmp(line, "polisctl: apply: ", 17) == 0);
        free(copy);
    }
    CU_ASSERT_STRING_EQUAL(r.out, "");
    run_result_clear(&r);
    CU_ASSERT_EQUAL(list_count(NULL), 0);
}

static void test_apply_directory_and_read_back(void)
{
    const char *dir;
    char author[300];
    run_result r;
    json_t *v, *doc;

    NEED_SERVER();
    expected_author(author, sizeof(author));
    dir = mkdir_in("mesh");
    write_mesh(dir);

    /* A dry run writes nothing. */
    CTL(&r, NULL, "apply", "-f", dir, "--dry-run");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "domain/global/sales created (dry run)\n"));
    run_result_clear(&r);
    CU_ASSERT_EQUAL(list_count(NULL), 0);

    CTL(&r, NULL, "apply", "-f", dir);
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "domain/global/sales created\n"));
    CU_ASSERT(contains(r.out, "dataproduct/sales/orders created\n"));
    CU_ASSERT(contains(r.out, "policy/global/pii-masking created\n"));
    CU_ASSERT(contains(r.out, "policy/sales/sales-readers created\n"));
    CU_ASSERT(contains(r.out, "principal/global/ana created\n"));
    CU_ASSERT_STRING_EQUAL(r.err, "");
    run_result_clear(&r);

    /* Applying the same again changes nothing. */
    CTL(&r, NULL, "apply", "-f", dir);
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "policy/global/pii-masking unchanged\n"));
    run_result_clear(&r);

    /* list: table. */
    CTL(&r, NULL, "list");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(strncmp(r.out, "KIND", 4) == 0);
    CU_ASSERT(contains(r.out, "SCOPE"));
    CU_ASSERT(contains(r.out, "GENERATION"));
    CU_ASSERT(contains(r.out, "REVISION"));
    CU_ASSERT(contains(r.out, "AUTHOR"));
    CU_ASSERT(contains(r.out, "UPDATED"));
    CU_ASSERT(contains(r.out, "pii-masking"));
    CU_ASSERT(contains(r.out, author));
    {
        /* header + 5 rows, columns aligned: NAME starts at the same
         * offset on every line. */
        size_t lines = 0, name_col = 0;
        char *copy = strdup(r.out), *save = NULL;
        for (char *line = strtok_r(copy, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save), lines++) {
            if (lines == 0) {
                const char *at = strstr(line, "NAME");
                CU_ASSERT_PTR_NOT_NULL_FATAL(at);
                name_col = (size_t)(at - line);
                continue;
            }
            CU_ASSERT(name_col > 0 && strlen(line) > name_col &&
                      line[name_col - 1] == ' ' && line[name_col] != ' ');
        }
        CU_ASSERT_EQUAL(lines, 6);
        free(copy);
    }
    run_result_clear(&r);

    /* list: JSON with metadata and the document. */
    CTL(&r, NULL, "list", "policies", "-o", "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT_FATAL(json_is_array(v));
    CU_ASSERT_EQUAL(json_array_size(v), 2);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *it = json_array_get(v, i);
        CU_ASSERT_STRING_EQUAL(jstr(json_object_get(it, "kind")), "Policy");
        CU_ASSERT(json_integer_value(json_object_get(it, "revision")) > 0);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(it, "generation")),
                        1);
        CU_ASSERT_STRING_EQUAL(jstr(json_object_get(it, "author")), author);
        CU_ASSERT(json_is_string(json_object_get(it, "updatedAt")));
        CU_ASSERT(json_is_object(json_object_get(it, "document")));
    }
    json_decref(v);
    run_result_clear(&r);

    CU_ASSERT_EQUAL(list_count("dp"), 1);
    CU_ASSERT_EQUAL(list_count("all"), 5);
    CTL(&r, NULL, "list", "policy", "--scope", "sales", "-o", "json");
    v = parse_json(r.out);
    CU_ASSERT_EQUAL(json_array_size(v), 1);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(json_array_get(v, 0), "name")),
                           "sales-readers");
    json_decref(v);
    run_result_clear(&r);

    /* get -o json. */
    CTL(&r, NULL, "get", "policy", "pii-masking", "-o", "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT_FATAL(json_is_object(v));
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "scope")), "global");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "name")), "pii-masking");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "author")), author);
    doc = json_object_get(v, "document");
    CU_ASSERT_STRING_EQUAL(
        jstr(json_object_get(
            json_array_get(
                json_object_get(json_object_get(doc, "spec"), "rules"), 0),
            "name")),
        "mask-email");
    json_decref(v);
    run_result_clear(&r);

    /* get -o yaml: the same object, as YAML. */
    CTL(&r, NULL, "get", "dataproducts", "orders", "--scope", "sales", "-o",
        "yaml");
    CU_ASSERT_EQUAL(r.code, 0);
    {
        polis_error err = {0};
        json_t *docs = NULL;
        CU_ASSERT_EQUAL_FATAL(
            doc_parse("out", r.out, strlen(r.out), 0, &docs, &err), 0);
        v = json_array_get(docs, 0);
        CU_ASSERT_STRING_EQUAL(jstr(json_object_get(v, "kind")), "DataProduct");
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(v, "generation")),
                        1);
        doc = json_object_get(v, "document");
        CU_ASSERT_STRING_EQUAL(
            jstr(json_object_get(json_object_get(doc, "spec"), "domain")),
            "sales");
        json_decref(docs);
    }
    run_result_clear(&r);

    /* get in table mode: the bare document, which applies again as is. */
    CTL(&r, NULL, "get", "domain", "sales");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(strncmp(r.out, "apiVersion: polis/v1\nkind: Domain\n", 34) == 0);
    CU_ASSERT(strstr(r.out, "revision") == NULL);
    {
        run_result again;
        char *yaml = strdup(r.out);
        CTL(&again, yaml, "apply", "-f", "-");
        CU_ASSERT_EQUAL(again.code, 0);
        CU_ASSERT(contains(again.out, "domain/global/sales unchanged"));
        run_result_clear(&again);
        free(yaml);
    }
    run_result_clear(&r);
}

static void test_update_history_and_conflict(void)
{
    char path[512], rev[32];
    const char *dir;
    run_result r;
    json_t *v;
    long long first_rev;

    NEED_SERVER();
    dir = mkdir_in("update");
    snprintf(path, sizeof(path), "%s/pii.yaml", dir);
    write_file(path, PII_POLICY("mask-email-v2"));

    CTL(&r, NULL, "get", "policy", "pii-masking", "-o", "json");
    v = parse_json(r.out);
    first_rev = json_integer_value(json_object_get(v, "revision"));
    CU_ASSERT(first_rev > 0);
    json_decref(v);
    run_result_clear(&r);

    /* Dry run: says "updated (dry run)" and leaves it alone. */
    CTL(&r, NULL, "apply", "-f", path, "--dry-run");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "policy/global/pii-masking updated (dry run)"));
    run_result_clear(&r);

    snprintf(rev, sizeof(rev), "%lld", first_rev);
    CTL(&r, NULL, "apply", "-f", path, "--expected-revision", rev, "-o",
        "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT_FATAL(json_is_object(v));
    CU_ASSERT(json_integer_value(json_object_get(v, "revision")) > first_rev);
    CU_ASSERT_STRING_EQUAL(
        jstr(json_object_get(json_array_get(json_object_get(v, "results"), 0),
                             "action")),
        "updated");
    CU_ASSERT_EQUAL(
        json_integer_value(json_object_get(
            json_array_get(json_object_get(v, "results"), 0), "generation")),
        2);
    json_decref(v);
    run_result_clear(&r);

    /* The same expected revision is now stale: a conflict, exit 1. */
    write_file(path, PII_POLICY("mask-email-v3"));
    CTL(&r, NULL, "apply", "-f", path, "--expected-revision", rev);
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: apply: conflict: "));
    CU_ASSERT(contains(r.err, "retry"));
    run_result_clear(&r);

    /* History: newest first, in every format. */
    CTL(&r, NULL, "history", "policy", "pii-masking", "-o", "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT_FATAL(json_is_array(v));
    CU_ASSERT_EQUAL(json_array_size(v), 2);
    CU_ASSERT_EQUAL(
        json_integer_value(json_object_get(json_array_get(v, 0), "generation")),
        2);
    CU_ASSERT_EQUAL(
        json_integer_value(json_object_get(json_array_get(v, 1), "generation")),
        1);
    CU_ASSERT(
        json_integer_value(json_object_get(json_array_get(v, 0), "revision")) >
        json_integer_value(json_object_get(json_array_get(v, 1), "revision")));
    CU_ASSERT(json_is_false(json_object_get(json_array_get(v, 0), "deleted")));
    json_decref(v);
    run_result_clear(&r);

    CTL(&r, NULL, "history", "policy", "pii-masking");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(strncmp(r.out, "REVISION", 8) == 0);
    CU_ASSERT(contains(r.out, "updated"));
    CU_ASSERT(contains(r.out, "created"));
    CU_ASSERT(strstr(r.out, "updated") < strstr(r.out, "created"));
    run_result_clear(&r);

    CTL(&r, NULL, "history", "policy", "pii-masking", "--limit", "1", "-o",
        "yaml");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "- kind: Policy\n"));
    CU_ASSERT(contains(r.out, "generation: 2\n"));
    CU_ASSERT(strstr(r.out, "generation: 1\n") == NULL);
    run_result_clear(&r);
}

static void test_apply_from_stdin(void)
{
    run_result r;

    NEED_SERVER();
    CTL(&r,
        "apiVersion: polis/v1\nkind: Principal\nmetadata:\n  name: bob\n"
        "spec:\n  groups: [auditors]\n---\n"
        "apiVersion: polis/v1\nkind: Principal\nmetadata:\n  name: cy\n"
        "spec:\n  groups: [auditors]\n",
        "apply", "-f", "-");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "principal/global/bob created\n"));
    CU_ASSERT(contains(r.out, "principal/global/cy created\n"));
    run_result_clear(&r);

    /* Errors in stdin documents are named stdin#N. */
    CTL(&r,
        "apiVersion: polis/v1\nkind: Principal\nmetadata:\n  name: ok\n"
        "spec: {}\n---\n"
        "apiVersion: polis/v1\nkind: Principal\nmetadata:\n  name: Bad Name\n"
        "spec: {}\n",
        "apply", "-f", "-");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: apply: stdin#2: metadata.name"));
    run_result_clear(&r);
}

/* The repository's example mesh applies as documented (dry run: the
 * other cases own the store's contents). */
static void test_examples_apply(void)
{
    run_result r;

    NEED_SERVER();
    CTL(&r, NULL, "apply", "--dry-run", "-f",
        POLIS_SOURCE_DIR "/examples/mesh/");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT(contains(r.out, "dataproduct/marketing/campaign-performance "));
    CU_ASSERT(contains(r.out, "dataproduct/crm/customers "));
    CU_ASSERT(contains(r.out, "principal/global/alice "));
    CU_ASSERT(contains(r.out, "domain/global/marketing created (dry run)"));
    {
        char *copy = strdup(r.out), *save = NULL;
        for (char *line = strtok_r(copy, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save))
            CU_ASSERT(strstr(line, " (dry run)") != NULL);
        free(copy);
    }
    run_result_clear(&r);
}

static void test_not_found(void)
{
    run_result r;

    NEED_SERVER();
    CTL(&r, NULL, "get", "policy", "no-such-policy");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(
        contains(r.err, "polisctl: get: policy \"no-such-policy\" not found"));
    CU_ASSERT_STRING_EQUAL(r.out, "");
    run_result_clear(&r);

    CTL(&r, NULL, "delete", "dp", "ghost", "--scope", "sales");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: delete: dataproduct \"ghost\" not "
                              "found"));
    run_result_clear(&r);

    CTL(&r, NULL, "history", "principal", "nobody");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: history: principal \"nobody\""));
    run_result_clear(&r);
}

static void test_delete(void)
{
    run_result r;
    json_t *v;

    NEED_SERVER();
    /* A domain that still owns resources cannot go. */
    CTL(&r, NULL, "delete", "domain", "sales");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "polisctl: delete: "));
    run_result_clear(&r);

    CTL(&r, NULL, "delete", "policy", "sales-readers", "--dry-run");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(r.out,
                           "policy/sales/sales-readers deleted (dry run)\n");
    run_result_clear(&r);
    CTL(&r, NULL, "get", "policy", "sales-readers");
    CU_ASSERT_EQUAL(r.code, 0);
    run_result_clear(&r);

    CTL(&r, NULL, "delete", "policy", "sales-readers");
    CU_ASSERT_EQUAL(r.code, 0);
    CU_ASSERT_STRING_EQUAL(r.out, "policy/sales/sales-readers deleted\n");
    run_result_clear(&r);

    CTL(&r, NULL, "get", "policy", "sales-readers");
    CU_ASSERT_EQUAL(r.code, 1);
    CU_ASSERT(contains(r.err, "not found"));
    run_result_clear(&r);

    /* The delete is the newest version in the history. */
    CTL(&r, NULL, "history", "policy", "sales-readers", "--scope", "sales",
        "-o", "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT(json_array_size(v) >= 2);
    CU_ASSERT(json_is_true(json_object_get(json_array_get(v, 0), "deleted")));
    json_decref(v);
    run_result_clear(&r);

    CTL(&r, NULL, "delete", "dp", "orders", "-o", "json");
    CU_ASSERT_EQUAL(r.code, 0);
    v = parse_json(r.out);
    CU_ASSERT(json_integer_value(json_object_get(v, "revision")) > 0);
    CU_ASSERT(json_is_false(json_object_get(v, "dryRun")));
    CU_ASSERT_STRING_EQUAL(
        jstr(json_object_get(json_object_get(v, "deleted"), "name")), "orders");
    json_decref(v);
    run_result_clear(&r);
}

/* ------------------------------------------------------------------------ */

static int usage_init(void)
{
    workdir = testenv_tmpdir("cli");
    if (workdir == NULL || access(CTLRUN_POLISCTL, X_OK) != 0) {
        fprintf(stderr, "%s is not built\n", CTLRUN_POLISCTL);
        return 1;
    }
    return 0;
}

static int server_suite_init(void)
{
    if (workdir == NULL && usage_init() != 0)
        return 1;
    return server_init();
}

static const test_case usage_cases[] = {
    {"no_arguments", test_no_arguments_is_a_usage_error},
    {"unknown_verb_and_flags", test_unknown_verb_and_flags},
    {"missing_and_bad_arguments", test_missing_and_bad_arguments},
    {"help_on_every_verb", test_help_on_every_verb},
    {"version", test_version},
    {"local_file_errors", test_local_file_errors_before_any_rpc},
    {"unreachable_server", test_unreachable_server},
    {"silent_server_times_out", test_silent_server_times_out},
    {NULL, NULL},
};

/* In order: the first case needs the empty store. */
static const test_case server_cases[] = {
    {"syntax_error_writes_nothing", test_syntax_error_writes_nothing},
    {"invalid_documents_all_or_nothing", test_invalid_documents_all_or_nothing},
    {"apply_directory_and_read_back", test_apply_directory_and_read_back},
    {"update_history_and_conflict", test_update_history_and_conflict},
    {"apply_from_stdin", test_apply_from_stdin},
    {"examples_apply", test_examples_apply},
    {"not_found", test_not_found},
    {"delete", test_delete},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"usage", usage_init, NULL, usage_cases},
    {"server", server_suite_init, server_cleanup, server_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
