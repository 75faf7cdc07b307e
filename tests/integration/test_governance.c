/*
 * test_governance.c — the Governance API (proto/polis/v1/governance.proto)
 * of a real polis-controlplane over loopback gRPC, on a real etcd that the
 * tests also read directly: CRUD, history and audit, bad input with no
 * partial write, etcd outages, optimistic concurrency, the embedded etcd,
 * flags and shutdown.
 */
#include "common/etcd.h"
#include "common/rpc.h"
#include "echo.pb-c.h"
#include "polis/v1/governance.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/testenv.h"
#include "tests/support/testutil.h"

#include <ctype.h>
#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#define CALL_TIMEOUT_MS 15000
#define ETCD_TIMEOUT_MS 2000 /* the control plane's --etcd-timeout-ms */
#define AUTHOR          "alice@example.com"

static const char *const cp_flags[] = {"--etcd-timeout-ms", "2000", NULL};

/* The suite's control plane, channel and direct etcd client. */
static cpenv *env;
static rpc_channel *chan;
static etcd_client *etcd;

/* ---------------------------------------------------------------- utils */

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

static bool contains(const char *hay, const char *needle)
{
    return hay && needle && strstr(hay, needle) != NULL;
}

/* Assert a status and that its message names every fragment (NULL-ended);
 * prints the message when it does not, so a failure says why. */
static void expect_status(const rpc_status *st, int code, ...)
{
    va_list ap;
    const char *frag;

    CU_ASSERT_EQUAL(st->code, code);
    if (st->code != code)
        fprintf(stderr, "expected %s, got %s: %s\n", rpc_status_name(code),
                rpc_status_name(st->code), st->message);
    va_start(ap, code);
    while ((frag = va_arg(ap, const char *)) != NULL) {
        CU_ASSERT_PTR_NOT_NULL(strstr(st->message, frag));
        if (strstr(st->message, frag) == NULL)
            fprintf(stderr, "status message lacks \"%s\": %s\n", frag,
                    st->message);
    }
    va_end(ap);
}

static etcd_client *etcd_for(const char *endpoints)
{
    etcd_options o = {0};
    etcd_client *c = NULL;
    polis_error err = {0};

    o.endpoints = endpoints;
    o.timeout_ms = 5000;
    return etcd_client_new(&o, &c, &err) == 0 ? c : NULL;
}

static int suite_start(const cpenv_options *o)
{
    cpenv_options def = {.extra_args = cp_flags};

    env = cpenv_start(o ? o : &def);
    if (env == NULL)
        return 1;
    chan = cpenv_channel(env);
    etcd = etcd_for(env->etcd_endpoints);
    return chan && etcd ? 0 : 1;
}

static int suite_init(void)
{
    return suite_start(NULL);
}

static int suite_cleanup(void)
{
    int rc;

    rpc_channel_free(chan);
    etcd_client_free(etcd);
    chan = NULL;
    etcd = NULL;
    rc = cpenv_stop(env);
    env = NULL;
    return rc == 0 ? 0 : 1;
}

/* ------------------------------------------------------------ documents */

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));

/* A malloc'ed string; the tests free what they build. */
static char *fmt(const char *f, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, f);
    if (vasprintf(&s, f, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static char *domain_doc(const char *name, const char *owner)
{
    return fmt("{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
               "\"metadata\":{\"name\":\"%s\"},"
               "\"spec\":{\"owners\":[\"%s\"]}}",
               name, owner);
}

static char *product_doc(const char *name, const char *domain)
{
    return fmt("{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
               "\"metadata\":{\"name\":\"%s\"},"
               "\"spec\":{\"domain\":\"%s\",\"schema\":[{\"name\":\"id\","
               "\"type\":\"integer\"}]}}",
               name, domain);
}

static char *policy_doc(const char *name, const char *scope)
{
    return fmt("{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
               "\"metadata\":{\"name\":\"%s\"},"
               "\"spec\":{\"scope\":\"%s\",\"rules\":[{\"name\":\"analysts\","
               "\"effect\":\"allow\",\"subjects\":[\"group:analysts\"],"
               "\"resources\":[\"%s/*\"]}]}}",
               name, scope, strcmp(scope, "global") ? scope : "*");
}

/* ------------------------------------------------------------ API calls */

typedef struct doc {
    const char *source;
    const char *json;
} doc;

static int apply_on(rpc_channel *ch, const doc *docs, size_t n,
                    int64_t expected, bool dry_run, const char *author,
                    Polis__V1__ApplyResponse **out, rpc_status *st)
{
    Polis__V1__ApplyRequest req = POLIS__V1__APPLY_REQUEST__INIT;
    Polis__V1__Document *d = calloc(n ? n : 1, sizeof(*d));
    Polis__V1__Document **dp = calloc(n ? n : 1, sizeof(*dp));
    rpc_metadata md[1] = {{"x-polis-author", author}};
    ProtobufCMessage *resp = NULL;
    int code;

    if (out)
        *out = NULL;
    if (d == NULL || dp == NULL) {
        free(d);
        free(dp);
        st->code = RPC_RESOURCE_EXHAUSTED;
        return st->code;
    }
    for (size_t i = 0; i < n; i++) {
        polis__v1__document__init(&d[i]);
        d[i].source = (char *)(docs[i].source ? docs[i].source : "");
        d[i].json = (char *)docs[i].json;
        dp[i] = &d[i];
    }
    req.n_documents = n;
    req.documents = dp;
    req.expected_revision = expected;
    req.dry_run = dry_run;
    code = rpc_unary(ch, &polis__v1__governance__descriptor, "Apply", &req.base,
                     &resp, author ? md : NULL, author ? 1 : 0, CALL_TIMEOUT_MS,
                     st);
    if (out)
        *out = (Polis__V1__ApplyResponse *)resp;
    else if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    free(d);
    free(dp);
    return code;
}

static int apply(const doc *docs, size_t n, Polis__V1__ApplyResponse **out,
                 rpc_status *st)
{
    return apply_on(chan, docs, n, 0, false, AUTHOR, out, st);
}

/* Apply one document; RPC_OK expected (printed otherwise). */
static int apply_one(const char *source, const char *json,
                     Polis__V1__ApplyResponse **out)
{
    doc d = {source, json};
    rpc_status st = {0};
    int code = apply(&d, 1, out, &st);

    if (code != RPC_OK)
        fprintf(stderr, "apply %s: %s: %s\n", source, rpc_status_name(code),
                st.message);
    return code;
}

static void free_msg(void *m)
{
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

static int get_res(const char *kind, const char *scope, const char *name,
                   Polis__V1__GetResponse **out, rpc_status *st)
{
    Polis__V1__GetRequest req = POLIS__V1__GET_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code;

    req.kind = (char *)kind;
    req.scope = (char *)(scope ? scope : "");
    req.name = (char *)name;
    code = rpc_unary(chan, &polis__v1__governance__descriptor, "Get", &req.base,
                     &resp, NULL, 0, CALL_TIMEOUT_MS, st);
    if (out)
        *out = (Polis__V1__GetResponse *)resp;
    else
        free_msg(resp);
    return code;
}

static int list_res(const char *kind, const char *scope,
                    Polis__V1__ListResponse **out, rpc_status *st)
{
    Polis__V1__ListRequest req = POLIS__V1__LIST_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code;

    req.kind = (char *)(kind ? kind : "");
    req.scope = (char *)(scope ? scope : "");
    code = rpc_unary(chan, &polis__v1__governance__descriptor, "List",
                     &req.base, &resp, NULL, 0, CALL_TIMEOUT_MS, st);
    *out = (Polis__V1__ListResponse *)resp;
    return code;
}

static int delete_res(const char *kind, const char *scope, const char *name,
                      bool dry_run, Polis__V1__DeleteResponse **out,
                      rpc_status *st)
{
    Polis__V1__DeleteRequest req = POLIS__V1__DELETE_REQUEST__INIT;
    rpc_metadata md[1] = {{"x-polis-author", AUTHOR}};
    ProtobufCMessage *resp = NULL;
    int code;

    req.kind = (char *)kind;
    req.scope = (char *)(scope ? scope : "");
    req.name = (char *)name;
    req.dry_run = dry_run;
    code = rpc_unary(chan, &polis__v1__governance__descriptor, "Delete",
                     &req.base, &resp, md, 1, CALL_TIMEOUT_MS, st);
    if (out)
        *out = (Polis__V1__DeleteResponse *)resp;
    else
        free_msg(resp);
    return code;
}

static int history_res(const char *kind, const char *scope, const char *name,
                       Polis__V1__HistoryResponse **out, rpc_status *st)
{
    Polis__V1__HistoryRequest req = POLIS__V1__HISTORY_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code;

    req.kind = (char *)kind;
    req.scope = (char *)(scope ? scope : "");
    req.name = (char *)name;
    code = rpc_unary(chan, &polis__v1__governance__descriptor, "History",
                     &req.base, &resp, NULL, 0, CALL_TIMEOUT_MS, st);
    *out = (Polis__V1__HistoryResponse *)resp;
    return code;
}

/* Is there a resource named `name` in a List answer? */
static const Polis__V1__Resource *find_in(const Polis__V1__ListResponse *l,
                                          const char *kind, const char *name)
{
    for (size_t i = 0; l && i < l->n_resources; i++)
        if (strcmp(l->resources[i]->kind, kind) == 0 &&
            strcmp(l->resources[i]->name, name) == 0)
            return l->resources[i];
    return NULL;
}

/* ------------------------------------------------------ etcd, directly */

/* What the store holds, read from etcd itself: the store revision and the
 * number of keys under each part of the layout. */
typedef struct etcd_state {
    int64_t revision;
    int64_t resources, history, audit, meta;
} etcd_state;

static int64_t count_prefix(const char *part, int64_t *revision)
{
    etcd_range_result rr = {0};
    etcd_range_opts o = {.prefix = true, .count_only = true};
    polis_error err = {0};
    char key[128];
    int64_t n = -1;

    snprintf(key, sizeof(key), "/polis/%s", part);
    if (etcd_range(etcd, key, &o, &rr, &err) == 0) {
        n = rr.count;
        if (revision)
            *revision = rr.revision;
    }
    etcd_range_result_free(&rr);
    return n;
}

static etcd_state etcd_snapshot(void)
{
    etcd_state s = {0};

    s.resources = count_prefix("resources/", &s.revision);
    s.history = count_prefix("history/", NULL);
    s.audit = count_prefix("audit/", NULL);
    s.meta = count_prefix("meta/", NULL);
    return s;
}

/* Nothing at all was written: no key added anywhere and no new etcd
 * revision (every etcd write, even of an unchanged value, bumps it). */
static void expect_nothing_written(const etcd_state *before)
{
    etcd_state now = etcd_snapshot();

    CU_ASSERT(before->revision > 0);
    CU_ASSERT_EQUAL(now.revision, before->revision);
    CU_ASSERT_EQUAL(now.resources, before->resources);
    CU_ASSERT_EQUAL(now.history, before->history);
    CU_ASSERT_EQUAL(now.audit, before->audit);
    CU_ASSERT_EQUAL(now.meta, before->meta);
    if (now.revision != before->revision)
        fprintf(stderr,
                "etcd changed: revision %lld -> %lld, resources %lld -> "
                "%lld, history %lld -> %lld, audit %lld -> %lld\n",
                (long long)before->revision, (long long)now.revision,
                (long long)before->resources, (long long)now.resources,
                (long long)before->history, (long long)now.history,
                (long long)before->audit, (long long)now.audit);
}

/* The audit entries (parsed JSON, oldest first) whose changes name `name`;
 * caller decrefs the array. */
static json_t *audit_entries_for(const char *kind, const char *name)
{
    etcd_range_result rr = {0};
    etcd_range_opts o = {.prefix = true};
    polis_error err = {0};
    json_t *out = json_array();

    if (etcd_range(etcd, "/polis/audit/", &o, &rr, &err) != 0) {
        fprintf(stderr, "audit range failed: %s\n", err.message);
        return out;
    }
    for (size_t i = 0; i < rr.n; i++) {
        json_t *a = json_loadb(rr.kvs[i].value, rr.kvs[i].value_len, 0, NULL);
        json_t *changes = json_object_get(a, "changes"), *c;
        size_t j;
        bool match = false;

        json_array_foreach(changes, j, c)
        {
            const char *k = json_string_value(json_object_get(c, "kind"));
            const char *nm = json_string_value(json_object_get(c, "name"));
            if (k && nm && strcmp(k, kind) == 0 && strcmp(nm, name) == 0)
                match = true;
        }
        if (match)
            json_array_append(out, a);
        json_decref(a);
    }
    etcd_range_result_free(&rr);
    return out;
}

/* The change for kind/name inside one audit entry. */
static json_t *audit_change(json_t *entry, const char *name)
{
    json_t *c;
    size_t j;

    json_array_foreach(json_object_get(entry, "changes"), j, c)
    {
        const char *nm = json_string_value(json_object_get(c, "name"));
        if (nm && strcmp(nm, name) == 0)
            return c;
    }
    return NULL;
}

/* ============================================================= CRUD */

static void test_apply_create_unchanged_update(void)
{
    char *v1 = domain_doc("crud-sales", "sales@example.com");
    char *v1_reordered =
        fmt("{\"spec\":{\"owners\":[\"sales@example.com\"]},\"kind\":"
            "\"Domain\",\"metadata\":{\"name\":\"crud-sales\"},"
            "\"apiVersion\":\"polis/v1\"}");
    char *v2 = domain_doc("crud-sales", "sales-team@example.com");
    Polis__V1__ApplyResponse *r = NULL;
    Polis__V1__GetResponse *g = NULL;
    rpc_status st = {0};
    etcd_state before;

    CU_ASSERT_EQUAL_FATAL(apply_one("sales.json", v1, &r), RPC_OK);
    CU_ASSERT_EQUAL_FATAL(r->n_results, 1);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "created");
    CU_ASSERT_STRING_EQUAL(r->results[0]->kind, "Domain");
    CU_ASSERT_STRING_EQUAL(r->results[0]->scope, "global");
    CU_ASSERT_STRING_EQUAL(r->results[0]->name, "crud-sales");
    CU_ASSERT_EQUAL(r->results[0]->generation, 1);
    CU_ASSERT(r->revision > 0);
    CU_ASSERT_FALSE(r->dry_run);
    free_msg(r);

    /* The same document, keys in another order: nothing is written. */
    before = etcd_snapshot();
    CU_ASSERT_EQUAL_FATAL(apply_one("sales.json", v1_reordered, &r), RPC_OK);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "unchanged");
    CU_ASSERT_EQUAL(r->results[0]->generation, 1);
    CU_ASSERT_EQUAL(r->revision, 0);
    free_msg(r);
    expect_nothing_written(&before);

    CU_ASSERT_EQUAL_FATAL(apply_one("sales.json", v2, &r), RPC_OK);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "updated");
    CU_ASSERT_EQUAL(r->results[0]->generation, 2);
    CU_ASSERT(r->revision > before.revision);
    free_msg(r);

    CU_ASSERT_EQUAL_FATAL(get_res("Domain", "global", "crud-sales", &g, &st),
                          RPC_OK);
    CU_ASSERT_EQUAL(g->resource->generation, 2);
    CU_ASSERT_STRING_EQUAL(g->resource->author, AUTHOR);
    CU_ASSERT(contains(g->resource->document_json, "sales-team@example.com"));
    CU_ASSERT(strlen(g->resource->updated_at) >= 20); /* RFC 3339 */
    CU_ASSERT(contains(g->resource->updated_at, "T"));
    free_msg(g);
    free(v1);
    free(v1_reordered);
    free(v2);
}

static void test_get_and_list(void)
{
    char *dom = domain_doc("gl-shop", "shop@example.com");
    char *dom2 = domain_doc("gl-crm", "crm@example.com");
    char *prod = product_doc("orders", "gl-shop");
    char *prod2 = product_doc("orders", "gl-crm"); /* same name, other scope */
    char *pol = policy_doc("gl-shop-readers", "gl-shop");
    doc set[] = {{"mesh.yaml#1", dom},
                 {"mesh.yaml#2", dom2},
                 {"mesh.yaml#3", prod},
                 {"mesh.yaml#4", pol}};
    Polis__V1__ApplyResponse *r = NULL;
    Polis__V1__GetResponse *g = NULL;
    Polis__V1__ListResponse *l = NULL;
    rpc_status st = {0};

    /* Domain, product and policy together: references resolve in the set. */
    CU_ASSERT_EQUAL(apply(set, 4, &r, &st), RPC_OK);
    if (st.code != RPC_OK)
        fprintf(stderr, "apply mesh: %s\n", st.message);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(r->n_results, 4);
    free_msg(r);

    /* By kind+scope+name, and by kind+name alone while the name is
     * unique. */
    CU_ASSERT_EQUAL_FATAL(get_res("DataProduct", "gl-shop", "orders", &g, &st),
                          RPC_OK);
    CU_ASSERT_STRING_EQUAL(g->resource->scope, "gl-shop");
    CU_ASSERT_STRING_EQUAL(g->resource->kind, "DataProduct");
    CU_ASSERT(contains(g->resource->document_json, "\"domain\":\"gl-shop\""));
    free_msg(g);
    CU_ASSERT_EQUAL_FATAL(get_res("Domain", NULL, "gl-shop", &g, &st), RPC_OK);
    CU_ASSERT_STRING_EQUAL(g->resource->scope, "global");
    free_msg(g);
    CU_ASSERT_EQUAL_FATAL(get_res("Policy", NULL, "gl-shop-readers", &g, &st),
                          RPC_OK);
    CU_ASSERT_STRING_EQUAL(g->resource->scope, "gl-shop");
    free_msg(g);
    /* A user types kinds in lower case and plural on the command line. */
    CU_ASSERT_EQUAL(get_res("products", "gl-shop", "orders", NULL, &st),
                    RPC_OK);

    /* Once the name is in two scopes, a Get without scope must say so. */
    CU_ASSERT_EQUAL_FATAL(apply_one("crm-orders.json", prod2, NULL), RPC_OK);
    CU_ASSERT_NOT_EQUAL(get_res("DataProduct", NULL, "orders", NULL, &st),
                        RPC_OK);
    CU_ASSERT(contains(st.message, "gl-shop") &&
              contains(st.message, "gl-crm"));
    CU_ASSERT_EQUAL(get_res("DataProduct", "gl-crm", "orders", NULL, &st),
                    RPC_OK);

    CU_ASSERT_EQUAL(get_res("Domain", NULL, "gl-nowhere", NULL, &st),
                    RPC_NOT_FOUND);
    CU_ASSERT(contains(st.message, "gl-nowhere"));
    expect_status(&st, RPC_NOT_FOUND, "gl-nowhere", NULL);
    get_res("Dommain", NULL, "gl-shop", NULL, &st);
    expect_status(&st, RPC_INVALID_ARGUMENT, "Dommain", NULL);

    /* List by kind. */
    CU_ASSERT_EQUAL_FATAL(list_res("Domain", NULL, &l, &st), RPC_OK);
    CU_ASSERT_PTR_NOT_NULL(find_in(l, "Domain", "gl-shop"));
    CU_ASSERT_PTR_NOT_NULL(find_in(l, "Domain", "gl-crm"));
    CU_ASSERT_PTR_NULL(find_in(l, "DataProduct", "orders"));
    CU_ASSERT(l->revision > 0);
    free_msg(l);

    /* List by scope, any kind: the shop's product and policy only. */
    CU_ASSERT_EQUAL_FATAL(list_res(NULL, "gl-shop", &l, &st), RPC_OK);
    CU_ASSERT_EQUAL(l->n_resources, 2);
    CU_ASSERT_PTR_NOT_NULL(find_in(l, "DataProduct", "orders"));
    CU_ASSERT_PTR_NOT_NULL(find_in(l, "Policy", "gl-shop-readers"));
    for (size_t i = 0; i < l->n_resources; i++)
        CU_ASSERT_STRING_EQUAL(l->resources[i]->scope, "gl-shop");
    free_msg(l);

    /* By kind and scope. */
    CU_ASSERT_EQUAL_FATAL(list_res("DataProduct", "gl-crm", &l, &st), RPC_OK);
    CU_ASSERT_EQUAL(l->n_resources, 1);
    CU_ASSERT_PTR_NOT_NULL(find_in(l, "DataProduct", "orders"));
    free_msg(l);

    /* Everything. */
    CU_ASSERT_EQUAL_FATAL(list_res(NULL, NULL, &l, &st), RPC_OK);
    CU_ASSERT(l->n_resources >= 5);
    CU_ASSERT_PTR_NOT_NULL(find_in(l, "Policy", "gl-shop-readers"));
    free_msg(l);

    free(dom);
    free(dom2);
    free(prod);
    free(prod2);
    free(pol);
}

static void test_delete_history_audit(void)
{
    char *v1 = domain_doc("hist-ops", "ops@example.com");
    char *v2 = domain_doc("hist-ops", "ops-team@example.com");
    Polis__V1__ApplyResponse *r = NULL;
    Polis__V1__DeleteResponse *d = NULL;
    Polis__V1__HistoryResponse *h = NULL;
    rpc_status st = {0};
    int64_t rev_create, rev_update, rev_delete;
    json_t *audit;

    CU_ASSERT_EQUAL_FATAL(apply_one("ops.json", v1, &r), RPC_OK);
    rev_create = r->revision;
    free_msg(r);
    CU_ASSERT_EQUAL_FATAL(apply_one("ops.json", v1, NULL), RPC_OK);
    CU_ASSERT_EQUAL_FATAL(apply_one("ops.json", v2, &r), RPC_OK);
    rev_update = r->revision;
    free_msg(r);

    CU_ASSERT_EQUAL_FATAL(
        delete_res("Domain", NULL, "hist-ops", false, &d, &st), RPC_OK);
    rev_delete = d->revision;
    CU_ASSERT(rev_delete > rev_update);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d->deleted);
    CU_ASSERT_STRING_EQUAL(d->deleted->name, "hist-ops");
    CU_ASSERT_EQUAL(d->deleted->generation, 2);
    free_msg(d);

    CU_ASSERT_EQUAL(get_res("Domain", "global", "hist-ops", NULL, &st),
                    RPC_NOT_FOUND);
    CU_ASSERT_EQUAL(get_res("Domain", NULL, "hist-ops", NULL, &st),
                    RPC_NOT_FOUND);
    CU_ASSERT_EQUAL(delete_res("Domain", NULL, "hist-ops", false, NULL, &st),
                    RPC_NOT_FOUND);

    /* create, update, delete: the unchanged re-apply left no version. */
    CU_ASSERT_EQUAL_FATAL(history_res("Domain", "global", "hist-ops", &h, &st),
                          RPC_OK);
    CU_ASSERT_EQUAL_FATAL(h->n_versions, 3);
    CU_ASSERT_TRUE(h->versions[0]->deleted);
    CU_ASSERT_EQUAL(h->versions[0]->revision, rev_delete);
    CU_ASSERT_FALSE(h->versions[1]->deleted);
    CU_ASSERT_EQUAL(h->versions[1]->generation, 2);
    CU_ASSERT_EQUAL(h->versions[1]->revision, rev_update);
    CU_ASSERT(contains(h->versions[1]->document_json, "ops-team@example.com"));
    CU_ASSERT_EQUAL(h->versions[2]->generation, 1);
    CU_ASSERT_EQUAL(h->versions[2]->revision, rev_create);
    CU_ASSERT(contains(h->versions[2]->document_json, "\"ops@example.com\""));
    for (size_t i = 0; i < h->n_versions; i++) {
        CU_ASSERT_STRING_EQUAL(h->versions[i]->author, AUTHOR);
        CU_ASSERT_STRING_EQUAL(h->versions[i]->name, "hist-ops");
    }
    free_msg(h);

    /* The audit trail, read from etcd itself. */
    audit = audit_entries_for("Domain", "hist-ops");
    CU_ASSERT_EQUAL(json_array_size(audit), 3);
    if (json_array_size(audit) == 3) {
        const char *acts[] = {"apply", "apply", "delete"};
        const char *changes[] = {"created", "updated", "deleted"};
        for (size_t i = 0; i < 3; i++) {
            json_t *a = json_array_get(audit, i);
            json_t *c = audit_change(a, "hist-ops");
            CU_ASSERT_STRING_EQUAL(
                json_string_value(json_object_get(a, "action")), acts[i]);
            CU_ASSERT_STRING_EQUAL(
                json_string_value(json_object_get(a, "author")), AUTHOR);
            CU_ASSERT_PTR_NOT_NULL(json_object_get(a, "time"));
            CU_ASSERT_STRING_EQUAL(
                json_string_value(json_object_get(c, "action")), changes[i]);
        }
    }
    json_decref(audit);
    free(v1);
    free(v2);
}

static void test_author_defaults_to_peer(void)
{
    char *v = domain_doc("anon-dom", "anon@example.com");
    doc d = {"anon.json", v};
    Polis__V1__GetResponse *g = NULL;
    rpc_status st = {0};

    CU_ASSERT_EQUAL_FATAL(apply_on(chan, &d, 1, 0, false, NULL, NULL, &st),
                          RPC_OK);
    CU_ASSERT_EQUAL_FATAL(get_res("Domain", NULL, "anon-dom", &g, &st), RPC_OK);
    /* Without x-polis-author the record still says who: the peer. */
    CU_ASSERT(contains(g->resource->author, "127.0.0.1"));
    free_msg(g);
    free(v);
}

static void test_dry_run_writes_nothing(void)
{
    char *v1 = domain_doc("dry-dom", "dry@example.com");
    char *v2 = domain_doc("dry-dom", "wet@example.com");
    doc d1 = {"dry.json", v1}, d2 = {"dry.json", v2};
    Polis__V1__ApplyResponse *r = NULL;
    Polis__V1__DeleteResponse *del = NULL;
    rpc_status st = {0};
    etcd_state before = etcd_snapshot();

    /* A dry-run create says what would happen and writes nothing. */
    CU_ASSERT_EQUAL_FATAL(apply_on(chan, &d1, 1, 0, true, AUTHOR, &r, &st),
                          RPC_OK);
    CU_ASSERT_TRUE(r->dry_run);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "created");
    CU_ASSERT_EQUAL(r->results[0]->generation, 1);
    CU_ASSERT_EQUAL(r->revision, 0);
    free_msg(r);
    expect_nothing_written(&before);
    CU_ASSERT_EQUAL(get_res("Domain", NULL, "dry-dom", NULL, &st),
                    RPC_NOT_FOUND);

    /* Same for an update and a delete of a stored resource. */
    CU_ASSERT_EQUAL_FATAL(apply_one("dry.json", v1, NULL), RPC_OK);
    before = etcd_snapshot();
    CU_ASSERT_EQUAL_FATAL(apply_on(chan, &d2, 1, 0, true, AUTHOR, &r, &st),
                          RPC_OK);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "updated");
    CU_ASSERT_EQUAL(r->results[0]->generation, 2);
    free_msg(r);
    CU_ASSERT_EQUAL_FATAL(
        delete_res("Domain", NULL, "dry-dom", true, &del, &st), RPC_OK);
    CU_ASSERT_EQUAL(del->revision, 0);
    free_msg(del);
    expect_nothing_written(&before);
    CU_ASSERT_EQUAL(get_res("Domain", NULL, "dry-dom", NULL, &st), RPC_OK);
    free(v1);
    free(v2);
}

static void test_policy_scope_default_is_stored(void)
{
    /* docs/resources.md: a Policy without spec.scope is stored with
     * "scope": "global" written in, so what is stored says where it
     * applies. */
    const char *json = "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
                       "\"metadata\":{\"name\":\"dflt-scope\"},"
                       "\"spec\":{\"rules\":[{\"name\":\"all\",\"effect\":"
                       "\"allow\",\"subjects\":[\"*\"],"
                       "\"resources\":[\"*/*\"]}]}}";
    Polis__V1__GetResponse *g = NULL;
    rpc_status st = {0};

    CU_ASSERT_EQUAL_FATAL(apply_one("dflt.json", json, NULL), RPC_OK);
    CU_ASSERT_EQUAL_FATAL(get_res("Policy", "global", "dflt-scope", &g, &st),
                          RPC_OK);
    CU_ASSERT(contains(g->resource->document_json, "\"scope\":\"global\""));
    if (!contains(g->resource->document_json, "\"scope\":\"global\""))
        fprintf(stderr, "stored policy lacks spec.scope: %s\n",
                g->resource->document_json);
    free_msg(g);
}

/* ========================================================= bad input */

/* Apply a set that must be refused with INVALID_ARGUMENT naming every
 * fragment, and check that etcd did not change at all. */
static void expect_refused_st(const doc *docs, size_t n, const char *frag1,
                              const char *frag2, const char *frag3,
                              rpc_status *out)
{
    etcd_state before = etcd_snapshot();
    rpc_status st = {0};
    Polis__V1__ApplyResponse *r = NULL;

    CU_ASSERT_EQUAL(apply(docs, n, &r, &st), RPC_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(r);
    free_msg(r);
    expect_status(&st, RPC_INVALID_ARGUMENT, frag1, frag2, frag3, NULL);
    expect_nothing_written(&before);
    if (out)
        *out = st;
}

static void expect_refused(const doc *docs, size_t n, const char *frag1,
                           const char *frag2, const char *frag3)
{
    expect_refused_st(docs, n, frag1, frag2, frag3, NULL);
}

static void test_bad_malformed_json(void)
{
    doc d = {"broken.json",
             "{\"apiVersion\": \"polis/v1\", \"kind\": \"Domain\","};
    doc arr = {"array.json", "[1, 2]"};

    expect_refused(&d, 1, "broken.json", "JSON", "line 1");
    expect_refused(&arr, 1, "array.json", "object", NULL);
}

static void test_bad_unknown_kind(void)
{
    doc d = {"kind.json", "{\"apiVersion\":\"polis/v1\",\"kind\":\"Dommain\","
                          "\"metadata\":{\"name\":\"x\"},"
                          "\"spec\":{\"owners\":[\"a@example.com\"]}}"};

    expect_refused(&d, 1, "kind.json: kind", "unknown kind", "Dommain");
}

static void test_bad_missing_fields(void)
{
    doc no_owners = {"owners.json",
                     "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                     "\"metadata\":{\"name\":\"no-owners\"},\"spec\":{}}"};
    doc no_domain = {"product.json",
                     "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
                     "\"metadata\":{\"name\":\"p\"},\"spec\":{\"schema\":[]}}"};
    doc no_name = {"noname.json",
                   "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                   "\"metadata\":{},\"spec\":{\"owners\":[\"a@b.c\"]}}"};
    doc no_version = {"version.json",
                      "{\"kind\":\"Domain\",\"metadata\":{\"name\":\"v\"},"
                      "\"spec\":{\"owners\":[\"a@b.c\"]}}"};

    expect_refused(&no_owners, 1, "owners.json: spec.owners", "required", NULL);
    expect_refused(&no_domain, 1, "product.json: spec.domain", "required",
                   NULL);
    expect_refused(&no_name, 1, "noname.json: metadata.name", "required", NULL);
    expect_refused(&no_version, 1, "version.json: apiVersion", "required",
                   NULL);
}

static void test_bad_duplicate_in_one_apply(void)
{
    char *a = domain_doc("dup-dom", "a@example.com");
    char *b = domain_doc("dup-dom", "b@example.com");
    doc set[] = {{"a.json", a}, {"b.json", b}};

    expect_refused(set, 2, "b.json: metadata.name", "dup-dom", "a.json");
    CU_ASSERT_EQUAL(get_res("Domain", NULL, "dup-dom", NULL, &(rpc_status){0}),
                    RPC_NOT_FOUND);
    free(a);
    free(b);
}

static void test_bad_over_size_limit(void)
{
    /* A valid-looking document of 1 MiB + a bit: refused for its size,
     * before anything else is looked at. */
    size_t pad = 1024 * 1024 + 100;
    char *big = malloc(pad + 256);
    int len;
    doc d = {"big.json", big};

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    len = snprintf(big, 256,
                   "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                   "\"metadata\":{\"name\":\"big\",\"description\":\"");
    memset(big + len, 'x', pad);
    strcpy(big + len + pad, "\"},\"spec\":{\"owners\":[\"a@b.c\"]}}");
    expect_refused(&d, 1, "big.json", "limit", NULL);
    free(big);
}

static void test_bad_invalid_utf8(void)
{
    doc d = {"latin1.json",
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
             "\"metadata\":{\"name\":\"utf\",\"description\":\"caf\xe9\"},"
             "\"spec\":{\"owners\":[\"a@b.c\"]}}"};

    expect_refused(&d, 1, "latin1.json", "UTF-8", "byte");
}

static void test_bad_missing_domain(void)
{
    char *p = product_doc("lost", "no-such-domain");
    doc d = {"lost.json", p};

    expect_refused(&d, 1, "lost.json: spec.domain", "no-such-domain",
                   "does not exist");
    free(p);
}

static void test_bad_last_of_set_invalid_writes_none(void)
{
    char *a = domain_doc("aon-one", "a@example.com");
    char *b = domain_doc("aon-two", "b@example.com");
    char *c = product_doc("aon-prod", "aon-one");
    doc set[] = {{"set.yaml#1", a},
                 {"set.yaml#2", b},
                 {"set.yaml#3", c},
                 {"set.yaml#4", "{\"apiVersion\":\"polis/v1\",\"kind\":"
                                "\"Domain\",\"metadata\":{\"name\":\"Bad_"
                                "Name\"},\"spec\":{\"owners\":[\"a@b.c\"]}}"}};
    rpc_status st = {0};

    expect_refused_st(set, 4, "set.yaml#4: metadata.name", "Bad_Name", NULL,
                      &st);
    /* The message names only the bad one. */
    CU_ASSERT_FALSE(contains(st.message, "set.yaml#1"));
    CU_ASSERT_EQUAL(get_res("Domain", NULL, "aon-one", NULL, &st),
                    RPC_NOT_FOUND);
    CU_ASSERT_EQUAL(get_res("DataProduct", NULL, "aon-prod", NULL, &st),
                    RPC_NOT_FOUND);
    free(a);
    free(b);
    free(c);
}

static void test_bad_every_problem_reported(void)
{
    char *ok = domain_doc("every-ok", "a@example.com");
    doc set[] = {{"one.json",
                  "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                  "\"metadata\":{\"name\":\"every-one\"},\"spec\":{}}"},
                 {"two.json", ok},
                 {"three.json", "not json"}};

    expect_refused(set, 3, "one.json: spec.owners", "three.json", NULL);
    free(ok);
}

static void test_bad_empty_apply(void)
{
    etcd_state before = etcd_snapshot();
    rpc_status st = {0};

    CU_ASSERT_EQUAL(apply(NULL, 0, NULL, &st), RPC_INVALID_ARGUMENT);
    expect_status(&st, RPC_INVALID_ARGUMENT, "no documents", NULL);
    expect_nothing_written(&before);
}

/* expected_revision also guards against a deletion after the read. */
static void test_expected_revision_sees_delete(void)
{
    char *v = domain_doc("gone-later", "a@example.com");
    doc d = {"gone.json", v};
    Polis__V1__ApplyResponse *r = NULL;
    Polis__V1__DeleteRequest dreq = POLIS__V1__DELETE_REQUEST__INIT;
    ProtobufCMessage *dresp = NULL;
    rpc_status st = {0};
    int64_t read_at;

    CU_ASSERT_EQUAL_FATAL(apply_on(chan, &d, 1, 0, false, AUTHOR, &r, &st),
                          RPC_OK);
    read_at = r->revision;
    free_msg(r);
    dreq.kind = "Domain";
    dreq.name = "gone-later";
    CU_ASSERT_EQUAL_FATAL(rpc_unary(chan, &polis__v1__governance__descriptor,
                                    "Delete", &dreq.base, &dresp, NULL, 0,
                                    CALL_TIMEOUT_MS, &st),
                          RPC_OK);
    free_msg(dresp);
    CU_ASSERT_EQUAL(apply_on(chan, &d, 1, read_at, false, AUTHOR, NULL, &st),
                    RPC_ABORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(st.message, "deleted at revision"));
    free(v);
}

/* A record written around the control plane (etcdctl) that is not a Polis
 * record does not break List; names that cannot exist are refused. */
static void test_foreign_record_and_bad_names(void)
{
    char key[256];
    Polis__V1__ListResponse *l = NULL;
    rpc_status st = {0};

    snprintf(key, sizeof(key), "/polis/resources/domain/global/zz-foreign");
    CU_ASSERT_EQUAL_FATAL(etcd_put(etcd, key, "not json", 8, 0, NULL, NULL), 0);
    CU_ASSERT_EQUAL(list_res("Domain", NULL, &l, &st), RPC_OK);
    for (size_t i = 0; l && i < l->n_resources; i++)
        CU_ASSERT_STRING_NOT_EQUAL(l->resources[i]->name, "zz-foreign");
    free_msg(l);
    CU_ASSERT_EQUAL(
        get_res("Domain", NULL, "../../meta/masking-key", NULL, &st),
        RPC_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(st.message, "not a valid name"));
    CU_ASSERT_EQUAL(etcd_delete(etcd, key, false, NULL, NULL, NULL), 0);
}

/* ====================================================== concurrency */

typedef struct racer {
    pthread_barrier_t *start;
    const char *json;
    int64_t expected;
    int code;
    rpc_status st;
} racer;

static void *race_apply(void *arg)
{
    racer *r = arg;
    doc d = {"race.json", r->json};

    pthread_barrier_wait(r->start);
    r->code = apply_on(chan, &d, 1, r->expected, false, AUTHOR, NULL, &r->st);
    return NULL;
}

static void test_expected_revision_one_winner(void)
{
    char *v1 = domain_doc("race-dom", "v1@example.com");
    char *va = domain_doc("race-dom", "a@example.com");
    char *vb = domain_doc("race-dom", "b@example.com");
    Polis__V1__ApplyResponse *r = NULL;
    Polis__V1__GetResponse *g = NULL;
    Polis__V1__HistoryResponse *h = NULL;
    pthread_barrier_t barrier;
    racer ra = {0}, rb = {0};
    pthread_t ta, tb;
    rpc_status st = {0};
    int64_t rev;

    CU_ASSERT_EQUAL_FATAL(apply_one("race.json", v1, &r), RPC_OK);
    rev = r->revision;
    free_msg(r);

    pthread_barrier_init(&barrier, NULL, 2);
    ra = (racer){&barrier, va, rev, -1, {0}};
    rb = (racer){&barrier, vb, rev, -1, {0}};
    pthread_create(&ta, NULL, race_apply, &ra);
    pthread_create(&tb, NULL, race_apply, &rb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&barrier);

    CU_ASSERT((ra.code == RPC_OK) != (rb.code == RPC_OK));
    {
        racer *loser = ra.code == RPC_OK ? &rb : &ra;
        expect_status(&loser->st, RPC_ABORTED, "expected revision", NULL);
    }
    /* The winner's version is the one stored, at generation 2. */
    CU_ASSERT_EQUAL_FATAL(get_res("Domain", NULL, "race-dom", &g, &st), RPC_OK);
    CU_ASSERT_EQUAL(g->resource->generation, 2);
    CU_ASSERT(contains(g->resource->document_json,
                       ra.code == RPC_OK ? "a@example.com" : "b@example.com"));
    free_msg(g);
    CU_ASSERT_EQUAL_FATAL(history_res("Domain", NULL, "race-dom", &h, &st),
                          RPC_OK);
    CU_ASSERT_EQUAL(h->n_versions, 2);
    free_msg(h);

    /* An apply against a stale revision is refused even without a race. */
    {
        doc d = {"race.json", v1};
        CU_ASSERT_EQUAL(apply_on(chan, &d, 1, rev, false, AUTHOR, NULL, &st),
                        RPC_ABORTED);
        expect_status(&st, RPC_ABORTED, "expected revision", NULL);
    }
    free(v1);
    free(va);
    free(vb);
}

#define BURST_THREADS 16
#define BURST_EACH    25

typedef struct burster {
    int id;
    int ok;
    char last_error[256];
} burster;

static void *burst_apply(void *arg)
{
    burster *b = arg;

    for (int i = 0; i < BURST_EACH; i++) {
        char name[64];
        char *json;
        doc d;
        rpc_status st = {0};

        snprintf(name, sizeof(name), "burst-%d-%d", b->id, i);
        json = domain_doc(name, "burst@example.com");
        d = (doc){name, json};
        if (apply_on(chan, &d, 1, 0, false, AUTHOR, NULL, &st) == RPC_OK)
            b->ok++;
        else
            snprintf(b->last_error, sizeof(b->last_error), "%s: %s",
                     rpc_status_name(st.code), st.message);
        free(json);
    }
    return NULL;
}

static void test_concurrent_burst_all_succeed(void)
{
    pthread_t t[BURST_THREADS];
    burster b[BURST_THREADS];
    Polis__V1__ListResponse *l = NULL;
    rpc_status st = {0};
    etcd_state before = etcd_snapshot(), after;
    int total = 0, listed = 0;

    memset(b, 0, sizeof(b));
    for (int i = 0; i < BURST_THREADS; i++) {
        b[i].id = i;
        pthread_create(&t[i], NULL, burst_apply, &b[i]);
    }
    for (int i = 0; i < BURST_THREADS; i++) {
        pthread_join(t[i], NULL);
        total += b[i].ok;
        if (b[i].ok != BURST_EACH)
            fprintf(stderr, "burst thread %d: %d/%d ok, last: %s\n", i, b[i].ok,
                    BURST_EACH, b[i].last_error);
    }
    CU_ASSERT_EQUAL(total, BURST_THREADS * BURST_EACH);

    CU_ASSERT_EQUAL_FATAL(list_res("Domain", NULL, &l, &st), RPC_OK);
    for (size_t i = 0; i < l->n_resources; i++)
        if (strncmp(l->resources[i]->name, "burst-", 6) == 0)
            listed++;
    CU_ASSERT_EQUAL(listed, BURST_THREADS * BURST_EACH);
    free_msg(l);

    /* One resource, one history entry and one audit entry per apply. */
    after = etcd_snapshot();
    CU_ASSERT_EQUAL(after.resources - before.resources, total);
    CU_ASSERT_EQUAL(after.history - before.history, total);
    CU_ASSERT_EQUAL(after.audit - before.audit, total);
}

/*
 * Sustained contention: 16 clients applying distinct Domains for 3 s on a
 * control plane with 16 workers.  No two applies touch the same resource,
 * so every one must succeed, however long the store has to retry.
 */
#define SUSTAIN_THREADS 16
#define SUSTAIN_MS      3000

typedef struct sustainer {
    int id;
    int64_t until;
    rpc_channel *ch;
    int ok, failed;
    char last_error[256];
} sustainer;

static void *sustain_apply(void *arg)
{
    sustainer *s = arg;

    for (int i = 0; mono_ms() < s->until; i++) {
        char name[64], *json;
        doc d;
        rpc_status st = {0};

        snprintf(name, sizeof(name), "sus-%d-%d", s->id, i);
        json = domain_doc(name, "sus@example.com");
        d = (doc){name, json};
        if (apply_on(s->ch, &d, 1, 0, false, AUTHOR, NULL, &st) == RPC_OK)
            s->ok++;
        else {
            s->failed++;
            snprintf(s->last_error, sizeof(s->last_error), "%s: %s",
                     rpc_status_name(st.code), st.message);
        }
        free(json);
    }
    return NULL;
}

static void test_sustained_contention_all_succeed(void)
{
    static const char *const flags[] = {"--etcd-timeout-ms", "2000",
                                        "--workers", "16", NULL};
    cpenv_options o = {.extra_args = flags};
    cpenv *e = cpenv_start(&o);
    pthread_t t[SUSTAIN_THREADS];
    sustainer s[SUSTAIN_THREADS];
    int ok = 0, failed = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    memset(s, 0, sizeof(s));
    for (int i = 0; i < SUSTAIN_THREADS; i++) {
        s[i].id = i;
        s[i].until = mono_ms() + SUSTAIN_MS;
        s[i].ch = cpenv_channel(e);
        pthread_create(&t[i], NULL, sustain_apply, &s[i]);
    }
    for (int i = 0; i < SUSTAIN_THREADS; i++) {
        pthread_join(t[i], NULL);
        rpc_channel_free(s[i].ch);
        ok += s[i].ok;
        failed += s[i].failed;
        if (s[i].failed)
            fprintf(stderr, "contention client %d: %d failed, last: %s\n", i,
                    s[i].failed, s[i].last_error);
    }
    CU_ASSERT(ok > 0);
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(cpenv_stop(e), 0);
}

static void test_delete_domain_in_use(void)
{
    char *dom = domain_doc("inuse", "inuse@example.com");
    char *prod = product_doc("things", "inuse");
    doc set[] = {{"inuse.json", dom}, {"things.json", prod}};
    rpc_status st = {0};
    etcd_state before;

    CU_ASSERT_EQUAL_FATAL(apply(set, 2, NULL, &st), RPC_OK);
    before = etcd_snapshot();
    CU_ASSERT_EQUAL(delete_res("Domain", NULL, "inuse", false, NULL, &st),
                    RPC_FAILED_PRECONDITION);
    expect_status(&st, RPC_FAILED_PRECONDITION, "inuse", "data product", NULL);
    expect_nothing_written(&before);
    CU_ASSERT_EQUAL(get_res("Domain", NULL, "inuse", NULL, &st), RPC_OK);

    /* Products first, then the domain goes. */
    CU_ASSERT_EQUAL(
        delete_res("DataProduct", "inuse", "things", false, NULL, &st), RPC_OK);
    CU_ASSERT_EQUAL(delete_res("Domain", NULL, "inuse", false, NULL, &st),
                    RPC_OK);
    free(dom);
    free(prod);
}

static void test_unknown_method(void)
{
    Polis__Test__EchoRequest req = POLIS__TEST__ECHO_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    rpc_status st = {0};

    /* A service the control plane does not serve at all. */
    req.text = (char *)"hello";
    CU_ASSERT_EQUAL(rpc_unary(chan, &polis__test__echo__descriptor, "Unary",
                              &req.base, &resp, NULL, 0, CALL_TIMEOUT_MS, &st),
                    RPC_UNIMPLEMENTED);
    CU_ASSERT_PTR_NULL(resp);
    free_msg(resp);
    /* The server keeps serving afterwards. */
    CU_ASSERT_EQUAL(get_res("Domain", NULL, "inuse-never", NULL, &st),
                    RPC_NOT_FOUND);
}

/* ======================================================= etcd outage */

static void test_etcd_down_then_back(void)
{
    char *a = domain_doc("outage-a", "a@example.com");
    char *b = domain_doc("outage-b", "b@example.com");
    char *c = domain_doc("outage-c", "c@example.com");
    doc db = {"b.json", b};
    rpc_status st = {0};
    polis_error err = {0};
    int64_t t0, took;
    long ready = -1;

    CU_ASSERT_EQUAL_FATAL(apply_one("a.json", a, NULL), RPC_OK);
    CU_ASSERT_EQUAL(cpenv_readyz(env, 5000), 200);

    /* etcd stopped: the apply fails as unavailable within the etcd
     * timeout, and the control plane keeps running. */
    CU_ASSERT_EQUAL_FATAL(etcd_server_stop(env->etcd->server, 5000, NULL, &err),
                          0);
    t0 = mono_ms();
    apply(&db, 1, NULL, &st);
    took = mono_ms() - t0;
    CU_ASSERT(st.code == RPC_UNAVAILABLE || st.code == RPC_DEADLINE_EXCEEDED);
    if (!(st.code == RPC_UNAVAILABLE || st.code == RPC_DEADLINE_EXCEEDED))
        fprintf(stderr, "apply with etcd down: %s: %s\n",
                rpc_status_name(st.code), st.message);
    CU_ASSERT(contains(st.message, "etcd"));
    CU_ASSERT(took <= ETCD_TIMEOUT_MS + 1000);
    CU_ASSERT_EQUAL(cpenv_readyz(env, 5000), 503);
    CU_ASSERT_TRUE(testenv_proc_alive(env->proc));
    get_res("Domain", NULL, "outage-a", NULL, &st);
    CU_ASSERT(st.code == RPC_UNAVAILABLE || st.code == RPC_DEADLINE_EXCEEDED);

    /* Back: ready again, and the next apply succeeds. */
    CU_ASSERT_EQUAL_FATAL(testenv_etcd_restart(env->etcd), 0);
    t0 = mono_ms();
    while (mono_ms() - t0 < 10000 && (ready = cpenv_readyz(env, 5000)) != 200)
        nap_ms(100);
    CU_ASSERT_EQUAL(ready, 200);
    CU_ASSERT_EQUAL(apply_one("b.json", b, NULL), RPC_OK);
    CU_ASSERT_EQUAL(get_res("Domain", NULL, "outage-a", NULL, &st), RPC_OK);

    /* etcd frozen (accepts connections, never answers): the apply gives
     * up after the control plane's etcd timeout, not the client's. */
    {
        doc dc = {"c.json", c};
        CU_ASSERT_EQUAL_FATAL(testenv_etcd_kill(env->etcd, SIGSTOP), 0);
        t0 = mono_ms();
        apply(&dc, 1, NULL, &st);
        took = mono_ms() - t0;
        testenv_etcd_kill(env->etcd, SIGCONT);
        CU_ASSERT(st.code == RPC_UNAVAILABLE ||
                  st.code == RPC_DEADLINE_EXCEEDED);
        CU_ASSERT(took >= ETCD_TIMEOUT_MS - 100);
        CU_ASSERT(took <= ETCD_TIMEOUT_MS + 1500);
        if (took > ETCD_TIMEOUT_MS + 1500)
            fprintf(stderr, "apply with etcd frozen took %lld ms: %s\n",
                    (long long)took, st.message);
        CU_ASSERT_EQUAL(apply_one("c.json", c, NULL), RPC_OK);
    }
    CU_ASSERT_TRUE(testenv_proc_alive(env->proc));
    free(a);
    free(b);
    free(c);
}

/* ========================================================= processes */

/* Children of `parent` whose command name is `comm`, from /proc. */
static int children_named(pid_t parent, const char *comm, pid_t *out, int max)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int n = 0;

    if (d == NULL)
        return 0;
    while ((de = readdir(d)) != NULL && n < max) {
        char path[300], buf[512], name[64];
        int ppid = 0;
        FILE *f;
        char *lp, *rp;

        if (!isdigit((unsigned char)de->d_name[0]))
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        if (fgets(buf, sizeof(buf), f) == NULL) {
            fclose(f);
            continue;
        }
        fclose(f);
        /* "pid (comm) state ppid ..."; comm may hold spaces. */
        lp = strchr(buf, '(');
        rp = strrchr(buf, ')');
        if (lp == NULL || rp == NULL || rp < lp)
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(rp - lp - 1), lp + 1);
        if (sscanf(rp + 2, "%*c %d", &ppid) != 1)
            continue;
        if (ppid == parent && strcmp(name, comm) == 0)
            out[n++] = (pid_t)atoi(de->d_name);
    }
    closedir(d);
    return n;
}

/* Running means present and not a zombie. */
static bool pid_running(pid_t pid)
{
    char path[64], buf[512];
    FILE *f;
    char *rp;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return false;
    if (fgets(buf, sizeof(buf), f) == NULL) {
        fclose(f);
        return false;
    }
    fclose(f);
    rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

static void test_embedded_etcd(void)
{
    cpenv_options o = {.embedded_etcd = true};
    cpenv *e = cpenv_start(&o);
    rpc_channel *ch;
    char *v = domain_doc("embedded-dom", "e@example.com");
    doc d = {"embedded.json", v};
    Polis__V1__ApplyResponse *r = NULL;
    rpc_status st = {0};
    pid_t kids[4];
    int n_kids;
    char *log;
    int64_t t0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_STRING_EQUAL(e->etcd_endpoints, "");
    ch = cpenv_channel(e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ch);
    CU_ASSERT_EQUAL(apply_on(ch, &d, 1, 0, false, AUTHOR, &r, &st), RPC_OK);
    if (r)
        CU_ASSERT_STRING_EQUAL(r->results[0]->action, "created");
    free_msg(r);
    {
        Polis__V1__GetRequest req = POLIS__V1__GET_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        req.kind = (char *)"Domain";
        req.name = (char *)"embedded-dom";
        CU_ASSERT_EQUAL(rpc_unary(ch, &polis__v1__governance__descriptor, "Get",
                                  &req.base, &resp, NULL, 0, CALL_TIMEOUT_MS,
                                  &st),
                        RPC_OK);
        free_msg(resp);
    }
    rpc_channel_free(ch);

    n_kids = children_named(testenv_proc_pid(e->proc), "etcd", kids, 4);
    CU_ASSERT_EQUAL(n_kids, 1);
    log = testenv_file_tail(e->log_path, 8000);
    CU_ASSERT(contains(log, "embedded etcd started"));
    free(log);

    t0 = mono_ms();
    CU_ASSERT_EQUAL(cpenv_stop_controlplane(e, 8000), 0);
    CU_ASSERT(mono_ms() - t0 < 8000);
    for (int i = 0; i < n_kids; i++) {
        CU_ASSERT_FALSE(pid_running(kids[i]));
        if (pid_running(kids[i]))
            kill(kids[i], SIGKILL); /* do not leak it past the test */
    }
    /* Stopped, not killed: etcd logged its own orderly shutdown. */
    {
        char path[700];
        snprintf(path, sizeof(path), "%s/etcd.log", e->data_dir);
        log = testenv_file_tail(path, 4000);
        CU_ASSERT(contains(log, "shutting down"));
        free(log);
    }
    /* The data stays in --data-dir/etcd for the next start. */
    CU_ASSERT_EQUAL(cpenv_restart(e), 0);
    if (e->proc) {
        ch = cpenv_channel(e);
        Polis__V1__GetRequest req = POLIS__V1__GET_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        req.kind = (char *)"Domain";
        req.name = (char *)"embedded-dom";
        CU_ASSERT_EQUAL(rpc_unary(ch, &polis__v1__governance__descriptor, "Get",
                                  &req.base, &resp, NULL, 0, CALL_TIMEOUT_MS,
                                  &st),
                        RPC_OK);
        free_msg(resp);
        rpc_channel_free(ch);
    }
    CU_ASSERT_EQUAL(cpenv_stop(e), 0);
    free(v);
}

static void test_sigterm_clean_and_quick(void)
{
    cpenv *e = cpenv_start(NULL);
    rpc_channel *ch;
    char *v = domain_doc("term-dom", "t@example.com");
    doc d = {"term.json", v};
    rpc_status st = {0};
    int64_t t0;
    char *log;

    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    ch = cpenv_channel(e);
    CU_ASSERT_EQUAL(apply_on(ch, &d, 1, 0, false, AUTHOR, NULL, &st), RPC_OK);
    rpc_channel_free(ch);
    t0 = mono_ms();
    CU_ASSERT_EQUAL(cpenv_stop_controlplane(e, 5000), 0);
    CU_ASSERT(mono_ms() - t0 < 3000);
    log = testenv_file_tail(e->log_path, 4000);
    CU_ASSERT(contains(log, "SIGTERM"));
    free(log);
    /* The ports are free again: a restart binds the same ones. */
    CU_ASSERT_EQUAL(cpenv_restart(e), 0);
    CU_ASSERT_EQUAL(cpenv_stop(e), 0);
    free(v);
}

/* Run the binary with one argument; its exit code and output (stdout and
 * stderr) into out. */
static int run_binary(const char *arg, char *out, size_t len)
{
    char cmd[1024];
    FILE *p;
    size_t used = 0, n;
    int status;

    snprintf(cmd, sizeof(cmd),
             "'%s/controlplane/polis-controlplane' %s 2>&1 </dev/null",
             POLIS_BUILD_DIR, arg);
    p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    while (used + 1 < len && (n = fread(out + used, 1, len - 1 - used, p)) > 0)
        used += n;
    out[used] = '\0';
    status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_help_and_bad_flag(void)
{
    static char out[16384];
    const char *flags[] = {
        "--listen",   "--admin-listen",    "--etcd", "--etcd-prefix",
        "--data-dir", "--etcd-timeout-ms", "--help"};

    CU_ASSERT_EQUAL(run_binary("--help", out, sizeof(out)), 0);
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        CU_ASSERT(contains(out, flags[i]));
        if (!contains(out, flags[i]))
            fprintf(stderr, "--help lacks %s\n", flags[i]);
    }
    CU_ASSERT_EQUAL(run_binary("--no-such-flag", out, sizeof(out)), 2);
    CU_ASSERT(contains(out, "--no-such-flag"));
    CU_ASSERT_EQUAL(run_binary("--etcd-timeout-ms=abc", out, sizeof(out)), 2);
    CU_ASSERT(contains(out, "etcd-timeout-ms"));
}

/* ============================================================= suites */

/*
 * Two replicas on one etcd: each caches what it last wrote, so the second
 * replica's write makes the first one's cache stale.  The stale write must
 * fail its compare, re-read and land as the next version, never overwrite
 * blindly or report "unchanged" for a document that changed elsewhere.
 */
static void test_two_replicas_stale_cache(void)
{
    cpenv_options o = {.etcd_endpoints = env->etcd_endpoints};
    cpenv *other = cpenv_start(&o);
    rpc_channel *chan2;
    Polis__V1__ApplyResponse *r = NULL;
    rpc_status st = {0};
    char *v1 = domain_doc("replicated", "a@example.com");
    char *v2 = domain_doc("replicated", "b@example.com");
    doc d1 = {"r1.json", v1}, d2 = {"r2.json", v2};

    CU_ASSERT_PTR_NOT_NULL_FATAL(other);
    chan2 = cpenv_channel(other);
    CU_ASSERT_EQUAL(apply_on(chan, &d1, 1, 0, false, AUTHOR, &r, &st), RPC_OK);
    free_msg(r);
    /* Replica 2 changes it; replica 1 still caches v1. */
    CU_ASSERT_EQUAL(apply_on(chan2, &d2, 1, 0, false, AUTHOR, &r, &st), RPC_OK);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "updated");
    free_msg(r);
    /* Replica 1 writes v1 again: it must see v2 and update (gen 3). */
    CU_ASSERT_EQUAL_FATAL(apply_on(chan, &d1, 1, 0, false, AUTHOR, &r, &st),
                          RPC_OK);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "updated");
    CU_ASSERT_EQUAL(r->results[0]->generation, 3);
    free_msg(r);
    /* And v1 once more is unchanged on both replicas. */
    CU_ASSERT_EQUAL(apply_on(chan2, &d1, 1, 0, false, AUTHOR, &r, &st), RPC_OK);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "unchanged");
    free_msg(r);
    /* Deleted on replica 2 and re-created on replica 1 (whose cache
     * still holds the resource): the history numbering continues. */
    {
        Polis__V1__DeleteRequest dreq = POLIS__V1__DELETE_REQUEST__INIT;
        ProtobufCMessage *dresp = NULL;
        dreq.kind = "Domain";
        dreq.name = "replicated";
        CU_ASSERT_EQUAL(rpc_unary(chan2, &polis__v1__governance__descriptor,
                                  "Delete", &dreq.base, &dresp, NULL, 0,
                                  CALL_TIMEOUT_MS, &st),
                        RPC_OK);
        free_msg(dresp);
    }
    CU_ASSERT_EQUAL_FATAL(apply_on(chan, &d2, 1, 0, false, AUTHOR, &r, &st),
                          RPC_OK);
    CU_ASSERT_STRING_EQUAL(r->results[0]->action, "created");
    CU_ASSERT_EQUAL(r->results[0]->generation, 5);
    free_msg(r);
    rpc_channel_free(chan2);
    CU_ASSERT_EQUAL(cpenv_stop(other), 0);
    free(v1);
    free(v2);
}

static const test_case crud_cases[] = {
    {"apply_create_unchanged_update", test_apply_create_unchanged_update},
    {"get_and_list", test_get_and_list},
    {"delete_history_audit", test_delete_history_audit},
    {"author_defaults_to_peer", test_author_defaults_to_peer},
    {"dry_run_writes_nothing", test_dry_run_writes_nothing},
    {"policy_scope_default_is_stored", test_policy_scope_default_is_stored},
    {NULL, NULL}};

static const test_case bad_cases[] = {
    {"malformed_json", test_bad_malformed_json},
    {"unknown_kind", test_bad_unknown_kind},
    {"missing_fields", test_bad_missing_fields},
    {"duplicate_in_one_apply", test_bad_duplicate_in_one_apply},
    {"over_size_limit", test_bad_over_size_limit},
    {"invalid_utf8", test_bad_invalid_utf8},
    {"missing_domain", test_bad_missing_domain},
    {"last_of_set_invalid_writes_none",
     test_bad_last_of_set_invalid_writes_none},
    {"every_problem_reported", test_bad_every_problem_reported},
    {"empty_apply", test_bad_empty_apply},
    {"expected_revision_sees_delete", test_expected_revision_sees_delete},
    {"foreign_record_and_bad_names", test_foreign_record_and_bad_names},
    {NULL, NULL}};

static const test_case concurrency_cases[] = {
    {"expected_revision_one_winner", test_expected_revision_one_winner},
    {"two_replicas_stale_cache", test_two_replicas_stale_cache},
    {"concurrent_burst_all_succeed", test_concurrent_burst_all_succeed},
    {"sustained_contention_all_succeed", test_sustained_contention_all_succeed},
    {"delete_domain_in_use", test_delete_domain_in_use},
    {"unknown_method", test_unknown_method},
    {NULL, NULL}};

static const test_case outage_cases[] = {
    {"etcd_down_then_back", test_etcd_down_then_back}, {NULL, NULL}};

static const test_case process_cases[] = {
    {"help_and_bad_flag", test_help_and_bad_flag},
    {"sigterm_clean_and_quick", test_sigterm_clean_and_quick},
    {"embedded_etcd", test_embedded_etcd},
    {NULL, NULL}};

static const test_suite suites[] = {
    {"crud", suite_init, suite_cleanup, crud_cases},
    {"bad_input", suite_init, suite_cleanup, bad_cases},
    {"concurrency", suite_init, suite_cleanup, concurrency_cases},
    {"etcd_outage", suite_init, suite_cleanup, outage_cases},
    {"process", NULL, NULL, process_cases},
    {NULL, NULL, NULL, NULL}};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
