/*
 * governance.c — the Governance service (governance.proto): unary handlers
 * that validate requests, call the store and map Polis errors to gRPC
 * statuses with messages that say what and where.
 */
#include "controlplane/governance.h"
#include "common/document.h"
#include "common/resource.h"
#include "controlplane/access.h"
#include "controlplane/checker.h"
#include "controlplane/distribution.h"
#include "policy/api/check.h"
#include "policy/policy.h"
#include "polis/v1/governance.pb-c.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MAX_DOCUMENTS      1000
#define DEFAULT_MAX_DOCUMENT_BYTES (1024 * 1024)
#define STATUS_MSG_MAX             3800 /* below RPC_STATUS_MSG_MAX */

struct cp_governance {
    cp_store *store;
    cp_checker *checker;
    metrics *m;
    size_t max_documents;
    size_t max_document_bytes;
};

int cp_governance_new(cp_store *store, metrics *m,
                      const cp_governance_options *opts, cp_governance **out,
                      polis_error *err)
{
    cp_governance *g = calloc(1, sizeof(*g));

    if (g == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    g->store = store;
    g->m = m;
    if (cp_checker_new(store, &g->checker, err) != 0) {
        free(g);
        return err ? err->code : POLIS_ENOMEM;
    }
    g->max_documents = opts && opts->max_documents ? opts->max_documents
                                                   : DEFAULT_MAX_DOCUMENTS;
    g->max_document_bytes = opts && opts->max_document_bytes
                                ? opts->max_document_bytes
                                : DEFAULT_MAX_DOCUMENT_BYTES;
    *out = g;
    return 0;
}

void cp_governance_free(cp_governance *g)
{
    if (g == NULL)
        return;
    cp_checker_free(g->checker);
    free(g);
}

/* ---- helpers ---- */

/* Who is asking: polisctl sends x-polis-author; else the peer address. */
static void request_author(rpc_call *call, char *buf, size_t len)
{
    const char *a = rpc_call_metadata(call, "x-polis-author");
    char raw[256];

    /* Metadata is the caller's bytes: keep printable UTF-8 only, since it
     * goes into JSON records and logs. */
    if (a && a[0])
        snprintf(raw, sizeof(raw), "%s", a);
    else
        snprintf(raw, sizeof(raw), "unknown@%s", rpc_call_peer(call));
    doc_utf8_sanitize(buf, len < 201 ? len : 201, raw);
}

/* Finish with the Polis error mapped to a gRPC status. */
static int fail(rpc_call *call, const polis_error *err)
{
    char msg[STATUS_MSG_MAX];

    rpc_call_set_status_message(call, "%s",
                                polis_error_format(err, msg, sizeof(msg)));
    return rpc_status_from_polis(err->code);
}

static int fail_msg(rpc_call *call, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_msg(rpc_call *call, int status, const char *fmt, ...)
{
    char msg[STATUS_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rpc_call_set_status_message(call, "%s", msg);
    return status;
}

/* Names and scopes in requests follow the resource naming rules
 * (docs/resources.md): 1-63 of a-z, 0-9 and '-'.  Anything else cannot
 * exist, and must not be pasted into an etcd key. */
static int check_request_name(rpc_call *call, const char *field,
                              const char *value, bool required)
{
    size_t n = value ? strlen(value) : 0;

    if (n == 0)
        return required
                   ? fail_msg(call, RPC_INVALID_ARGUMENT, "%s: required", field)
                   : RPC_OK;
    for (size_t i = 0; i < n; i++) {
        char c = value[i];
        if (n > 63 ||
            !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return fail_msg(call, RPC_INVALID_ARGUMENT,
                            "%s: \"%.70s\" is not a valid name (1-63 of "
                            "a-z, 0-9 and '-')",
                            field, value);
    }
    return RPC_OK;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void observe(cp_governance *g, const char *method, int status,
                    double started)
{
    char labels[128];

    snprintf(labels, sizeof(labels), "method=\"%s\",code=\"%s\"", method,
             rpc_status_name(status));
    metric_add(metrics_counter(g->m, "polis_governance_requests_total",
                               "Governance API calls by method and status",
                               labels),
               1);
    snprintf(labels, sizeof(labels), "method=\"%s\"", method);
    metric_observe(metrics_histogram(g->m, "polis_governance_request_seconds",
                                     "Governance API latency", labels,
                                     metrics_latency_buckets,
                                     metrics_latency_buckets_n),
                   now_seconds() - started);
}

/* A kind as the user wrote it ("policy", "Policies") or "" for any. */
static int parse_kind(rpc_call *call, const char *text, bool allow_empty,
                      res_kind *out)
{
    if ((text == NULL || text[0] == '\0') && allow_empty) {
        *out = RES_KIND_UNKNOWN;
        return RPC_OK;
    }
    *out = res_kind_parse(text ? text : "");
    if (*out == RES_KIND_UNKNOWN)
        return fail_msg(call, RPC_INVALID_ARGUMENT,
                        "kind: unknown kind \"%s\" (expected Domain, "
                        "DataProduct, Policy or Principal)",
                        text ? text : "");
    return RPC_OK;
}

/* Resources of fixed scope may be named without one. */
static const char *default_scope(res_kind kind, const char *scope)
{
    if (scope && scope[0])
        return scope;
    if (kind == RES_DOMAIN || kind == RES_PRINCIPAL)
        return RES_SCOPE_GLOBAL;
    return "";
}

static Polis__V1__Resource *resource_to_pb(const cp_resource *r)
{
    Polis__V1__Resource *pb = calloc(1, sizeof(*pb));

    if (pb == NULL)
        return NULL;
    polis__v1__resource__init(pb);
    pb->kind = (char *)r->kind;
    pb->scope = (char *)r->scope;
    pb->name = (char *)r->name;
    pb->document_json = r->doc_json ? r->doc_json : (char *)"";
    pb->revision = r->revision;
    pb->generation = r->generation;
    pb->author = (char *)r->author;
    pb->updated_at = (char *)r->updated_at;
    pb->deleted = r->deleted;
    return pb;
}

static void resources_pb_free(Polis__V1__Resource **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* ---- Apply ---- */

/* A stored resource the set refers to: a guard of the write. */
typedef struct stored_ref {
    char scope[CP_NAME_MAX], name[CP_NAME_MAX];
    res_kind kind;
} stored_ref;

typedef struct lookup_ctx {
    cp_store *store;
    stored_ref *refs; /* distinct, found stored */
    size_t n, cap;
} lookup_ctx;

static int remember_ref(lookup_ctx *lc, res_kind kind, const char *scope,
                        const char *name, polis_error *err)
{
    stored_ref *r;

    for (size_t i = 0; i < lc->n; i++)
        if (lc->refs[i].kind == kind && strcmp(lc->refs[i].scope, scope) == 0 &&
            strcmp(lc->refs[i].name, name) == 0)
            return 0;
    if (lc->n == lc->cap) {
        size_t cap = lc->cap ? 2 * lc->cap : 8;
        stored_ref *grown = realloc(lc->refs, cap * sizeof(*grown));
        if (grown == NULL)
            return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        lc->refs = grown;
        lc->cap = cap;
    }
    r = &lc->refs[lc->n++];
    r->kind = kind;
    snprintf(r->scope, sizeof(r->scope), "%s", scope);
    snprintf(r->name, sizeof(r->name), "%s", name);
    return 0;
}

/* References outside the set are looked up now and guarded at the write
 * (cp_guard): a domain deleted in between fails the apply. */
static int lookup_stored(void *ctx, res_kind kind, const char *scope,
                         const char *name, bool *exists, polis_error *err)
{
    lookup_ctx *lc = ctx;
    int rc = cp_store_exists(lc->store, res_kind_name(kind), scope, name,
                             exists, err);

    if (rc == 0 && *exists)
        rc = remember_ref(lc, kind, scope, name, err);
    return rc;
}

static void errors_add(res_errors *errs, const polis_error *e)
{
    if (errs->count < RES_MAX_ERRORS)
        errs->items[errs->count++] = *e;
    else
        errs->omitted++;
}

/* One parsed document on its own: structure, defaults, and for a Policy
 * the compiler's verdict on its rules. */
static void check_document(json_t *doc, const char *where, polis_error *e)
{
    res_info info;

    if (res_validate(doc, where, &info, e) != 0)
        return;
    if (res_apply_defaults(doc) != 0) {
        polis_error_set(e, POLIS_ENOMEM, where, NULL);
        return;
    }
    if (info.kind == RES_POLICY && pol_policy_validate(doc, e) != 0)
        polis_error_prefix_where(e, where);
}

/*
 * Parse each wire document and check it on its own; every problem goes into
 * errs, in document order, so one reply lists them all.  Set-level checks
 * (duplicates, references) run only on a set whose documents are all valid.
 */
static int parse_documents(cp_governance *g, const Polis__V1__ApplyRequest *req,
                           json_t *docs, const char **sources, res_errors *errs)
{
    for (size_t i = 0; i < req->n_documents; i++) {
        const Polis__V1__Document *d = req->documents[i];
        const char *src = d->source && d->source[0] ? d->source : NULL;
        size_t len = strlen(d->json), bad;
        json_error_t jerr;
        json_t *doc = NULL;
        polis_error e = {0};
        char where[POLIS_ERROR_WHERE_MAX];

        if (src)
            snprintf(where, sizeof(where), "%s", src);
        else
            snprintf(where, sizeof(where), "document %zu", i + 1);
        sources[i] = src;
        if (len > g->max_document_bytes)
            polis_error_set(&e, POLIS_ETOOBIG, where,
                            "document is %zu bytes, over the %zu-byte limit",
                            len, g->max_document_bytes);
        else if (!doc_utf8_valid(d->json, len, &bad))
            polis_error_set(&e, POLIS_EINVAL, where,
                            "invalid UTF-8 at byte %zu", bad);
        else if ((doc = json_loadb(d->json, len, JSON_REJECT_DUPLICATES,
                                   &jerr)) == NULL)
            polis_error_set(&e, POLIS_EPARSE, where,
                            "invalid JSON at line %d column %d: %s", jerr.line,
                            jerr.column, jerr.text);
        else if (!json_is_object(doc))
            polis_error_set(&e, POLIS_EINVAL, where,
                            "a document must be an object");
        else
            check_document(doc, where, &e);
        if (e.code)
            errors_add(errs, &e);
        /* Keep positions aligned with sources, valid or not. */
        json_array_append_new(docs,
                              doc && json_is_object(doc) ? doc : json_object());
        if (doc && !json_is_object(doc))
            json_decref(doc);
    }
    return errs->count || errs->omitted ? POLIS_EINVAL : 0;
}

/* All problems, one per line, for the status message. */
static void errors_message(const res_errors *errs, char *buf, size_t len)
{
    size_t used = 0;
    char line[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX + 4];

    size_t shown = 0;

    buf[0] = '\0';
    /* Keep room for the closing count, so the reader always learns that
     * problems were left out. */
    for (; shown < errs->count; shown++) {
        size_t ll;
        polis_error_format(&errs->items[shown], line, sizeof(line));
        ll = strlen(line) + 1;
        if (used + ll + 64 >= len)
            break;
        used += (size_t)snprintf(buf + used, len - used, "%s%s",
                                 shown ? "\n" : "", line);
    }
    if (errs->omitted + (errs->count - shown) > 0)
        snprintf(buf + used, len - used, "\n... and %zu more problems",
                 errs->omitted + (errs->count - shown));
}

static int apply_on_start(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    cp_governance *g = ud;
    const Polis__V1__ApplyRequest *req = (const Polis__V1__ApplyRequest *)msg;
    Polis__V1__ApplyResponse resp = POLIS__V1__APPLY_RESPONSE__INIT;
    Polis__V1__ApplyResult *results = NULL, **result_ptrs = NULL;
    res_errors *errs = calloc(1, sizeof(*errs));
    res_info *infos = NULL;
    const char **sources = NULL;
    cp_change *changes = NULL;
    cp_apply_result *applied = NULL;
    cp_guard *guards = NULL;
    char **canon = NULL, author[256], text[STATUS_MSG_MAX];
    json_t *docs = json_array();
    lookup_ctx lc = {.store = g->store};
    polis_error err = {0};
    double started = now_seconds();
    int64_t revision = 0;
    size_t n = req->n_documents;
    int status = RPC_OK, rc;

    if (errs == NULL || docs == NULL) {
        status = fail_msg(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    if (n == 0) {
        status =
            fail_msg(call, RPC_INVALID_ARGUMENT, "apply: no documents given");
        goto out;
    }
    if (n > g->max_documents) {
        status = fail_msg(call, RPC_INVALID_ARGUMENT,
                          "apply: %zu documents, at most %zu in one apply "
                          "(split them)",
                          n, g->max_documents);
        goto out;
    }
    infos = calloc(n, sizeof(*infos));
    sources = calloc(n, sizeof(*sources));
    changes = calloc(n, sizeof(*changes));
    applied = calloc(n, sizeof(*applied));
    canon = calloc(n, sizeof(*canon));
    results = calloc(n, sizeof(*results));
    result_ptrs = calloc(n, sizeof(*result_ptrs));
    if (!infos || !sources || !changes || !applied || !canon || !results ||
        !result_ptrs) {
        status = fail_msg(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    rc = parse_documents(g, req, docs, sources, errs);
    if (rc == 0)
        rc = res_validate_set(docs, sources, lookup_stored, &lc, infos, errs);
    if (rc == POLIS_EINVAL) {
        errors_message(errs, text, sizeof(text));
        status = fail_msg(call, RPC_INVALID_ARGUMENT, "%s", text);
        goto out;
    }
    if (rc) {
        /* A lookup failed (etcd): its error is the last one kept. */
        status = fail(call, &errs->items[errs->count ? errs->count - 1 : 0]);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        canon[i] = res_canonical_json(json_array_get(docs, i));
        if (canon[i] == NULL) {
            status = fail_msg(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
        changes[i] = (cp_change){.kind = res_kind_name(infos[i].kind),
                                 .scope = infos[i].scope,
                                 .name = infos[i].name,
                                 .doc_json = canon[i]};
    }
    guards = calloc(lc.n ? lc.n : 1, sizeof(*guards));
    if (guards == NULL) {
        status = fail_msg(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < lc.n; i++)
        guards[i] = (cp_guard){.kind = res_kind_name(lc.refs[i].kind),
                               .scope = lc.refs[i].scope,
                               .name = lc.refs[i].name};
    request_author(call, author, sizeof(author));
    rc = cp_store_apply(g->store, changes, n, guards, lc.n,
                        req->expected_revision, req->dry_run, author, applied,
                        &revision, &err);
    if (rc) {
        status = fail(call, &err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        polis__v1__apply_result__init(&results[i]);
        results[i].kind = (char *)changes[i].kind;
        results[i].scope = (char *)changes[i].scope;
        results[i].name = (char *)changes[i].name;
        results[i].action = (char *)applied[i].action;
        results[i].generation = applied[i].generation;
        result_ptrs[i] = &results[i];
        if (!req->dry_run && strcmp(applied[i].action, "unchanged") != 0) {
            char labels[96];
            snprintf(labels, sizeof(labels), "kind=\"%s\",action=\"%s\"",
                     changes[i].kind, applied[i].action);
            metric_add(metrics_counter(g->m, "polis_resources_written_total",
                                       "Resources created or updated", labels),
                       1);
        }
    }
    resp.n_results = n;
    resp.results = result_ptrs;
    resp.revision = revision;
    resp.dry_run = req->dry_run;
    if (rpc_call_send(call, &resp.base) != 0)
        status = fail_msg(call, RPC_INTERNAL, "cannot send the response");
out:
    observe(g, "Apply", status, started);
    if (canon)
        for (size_t i = 0; i < n; i++)
            free(canon[i]);
    free(canon);
    free(results);
    free(result_ptrs);
    free(applied);
    free(changes);
    free(sources);
    free(infos);
    free(errs);
    free(guards);
    free(lc.refs);
    json_decref(docs);
    return status;
}

/* ---- Get, List, Delete, History ---- */

/* The kind, name and scope naming one resource (Get, Delete, History):
 * RPC_OK, or the status already answered. */
static int check_resource_key(rpc_call *call, const char *kind_name,
                              const char *name, const char *scope,
                              res_kind *kind)
{
    int status = parse_kind(call, kind_name, false, kind);

    if (status == RPC_OK)
        status = check_request_name(call, "name", name, true);
    if (status == RPC_OK)
        status = check_request_name(call, "scope", scope, false);
    return status;
}

static int get_on_start(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    cp_governance *g = ud;
    const Polis__V1__GetRequest *req = (const Polis__V1__GetRequest *)msg;
    Polis__V1__GetResponse resp = POLIS__V1__GET_RESPONSE__INIT;
    cp_resource r = {0};
    polis_error err = {0};
    double started = now_seconds();
    res_kind kind;
    int status;

    status = check_resource_key(call, req->kind, req->name, req->scope, &kind);
    if (status == RPC_OK &&
        cp_store_get(g->store, res_kind_name(kind),
                     default_scope(kind, req->scope), req->name, &r, &err) != 0)
        status = fail(call, &err);
    if (status == RPC_OK) {
        resp.resource = resource_to_pb(&r);
        if (resp.resource == NULL || rpc_call_send(call, &resp.base) != 0)
            status = fail_msg(call, RPC_INTERNAL, "cannot send the response");
        free(resp.resource);
    }
    cp_resource_clear(&r);
    observe(g, "Get", status, started);
    return status;
}

static int send_resources(rpc_call *call, const cp_resource *list, size_t n,
                          ProtobufCMessage *resp, size_t *n_field,
                          Polis__V1__Resource ***field)
{
    Polis__V1__Resource **pbs = calloc(n ? n : 1, sizeof(*pbs));
    int status = RPC_OK;

    for (size_t i = 0; pbs && i < n; i++)
        if ((pbs[i] = resource_to_pb(&list[i])) == NULL) {
            resources_pb_free(pbs, i);
            pbs = NULL;
        }
    if (pbs == NULL)
        return fail_msg(call, RPC_RESOURCE_EXHAUSTED, "out of memory");
    *n_field = n;
    *field = pbs;
    if (rpc_call_send(call, resp) != 0)
        status = fail_msg(call, RPC_RESOURCE_EXHAUSTED,
                          "the answer is over the message size limit; "
                          "narrow it with a kind or scope");
    resources_pb_free(pbs, n);
    *field = NULL;
    *n_field = 0;
    return status;
}

static int list_on_start(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    cp_governance *g = ud;
    const Polis__V1__ListRequest *req = (const Polis__V1__ListRequest *)msg;
    Polis__V1__ListResponse resp = POLIS__V1__LIST_RESPONSE__INIT;
    cp_resource *list = NULL;
    size_t n = 0;
    polis_error err = {0};
    double started = now_seconds();
    res_kind kind;
    int status;

    status = parse_kind(call, req->kind, true, &kind);
    if (status == RPC_OK &&
        cp_store_list(g->store, res_kind_name(kind), req->scope, &list, &n,
                      &resp.revision, &err) != 0)
        status = fail(call, &err);
    if (status == RPC_OK)
        status = send_resources(call, list, n, &resp.base, &resp.n_resources,
                                &resp.resources);
    cp_resources_free(list, n);
    observe(g, "List", status, started);
    return status;
}

static int delete_on_start(rpc_call *call, const ProtobufCMessage *msg,
                           void *ud)
{
    cp_governance *g = ud;
    const Polis__V1__DeleteRequest *req = (const Polis__V1__DeleteRequest *)msg;
    Polis__V1__DeleteResponse resp = POLIS__V1__DELETE_RESPONSE__INIT;
    cp_resource gone = {0};
    polis_error err = {0};
    double started = now_seconds();
    char author[256];
    res_kind kind;
    int64_t owned = 0, policies = 0;
    cp_guard orphans[2];
    int status;

    status = check_resource_key(call, req->kind, req->name, req->scope, &kind);
    /* A domain goes last: its products and policies refer to it. */
    if (status == RPC_OK && kind == RES_DOMAIN) {
        if (cp_store_count(g->store, "DataProduct", req->name, &owned, &err) !=
                0 ||
            cp_store_count(g->store, "Policy", req->name, &policies, &err) != 0)
            status = fail(call, &err);
        else if (owned + policies > 0)
            status = fail_msg(call, RPC_FAILED_PRECONDITION,
                              "domain \"%s\" still has %" PRId64
                              " data products and %" PRId64
                              " policies; delete them first",
                              req->name, owned, policies);
    }
    request_author(call, author, sizeof(author));
    /* ...and none may appear between that count and the delete. */
    if (kind == RES_DOMAIN) {
        orphans[0] = (cp_guard){"DataProduct", req->name, NULL};
        orphans[1] = (cp_guard){"Policy", req->name, NULL};
    }
    if (status == RPC_OK &&
        cp_store_delete(g->store, res_kind_name(kind),
                        default_scope(kind, req->scope), req->name, orphans,
                        kind == RES_DOMAIN ? 2 : 0, req->expected_revision,
                        req->dry_run, author, &gone, &resp.revision, &err) != 0)
        status = fail(call, &err);
    if (status == RPC_OK) {
        resp.deleted = resource_to_pb(&gone);
        if (resp.deleted == NULL || rpc_call_send(call, &resp.base) != 0)
            status = fail_msg(call, RPC_INTERNAL, "cannot send the response");
        free(resp.deleted);
    }
    cp_resource_clear(&gone);
    observe(g, "Delete", status, started);
    return status;
}

static int history_on_start(rpc_call *call, const ProtobufCMessage *msg,
                            void *ud)
{
    cp_governance *g = ud;
    const Polis__V1__HistoryRequest *req =
        (const Polis__V1__HistoryRequest *)msg;
    Polis__V1__HistoryResponse resp = POLIS__V1__HISTORY_RESPONSE__INIT;
    cp_resource *list = NULL;
    size_t n = 0;
    polis_error err = {0};
    double started = now_seconds();
    res_kind kind;
    int status;

    status = check_resource_key(call, req->kind, req->name, req->scope, &kind);
    if (status == RPC_OK &&
        cp_store_history(g->store, res_kind_name(kind),
                         default_scope(kind, req->scope), req->name, req->limit,
                         &list, &n, &err) != 0)
        status = fail(call, &err);
    if (status == RPC_OK)
        status = send_resources(call, list, n, &resp.base, &resp.n_versions,
                                &resp.versions);
    cp_resources_free(list, n);
    observe(g, "History", status, started);
    return status;
}

static int check_on_start(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    cp_governance *g = ud;
    const Polis__V1__CheckRequest *req = (const Polis__V1__CheckRequest *)msg;
    Polis__V1__CheckResponse resp = POLIS__V1__CHECK_RESPONSE__INIT;
    polis_error err = {0};
    double started = now_seconds();
    int status = RPC_OK;

    if (cp_checker_check(g->checker, req, &resp, &err) != 0)
        status = fail(call, &err);
    else if (rpc_call_send(call, &resp.base) != 0)
        status = fail_msg(call, RPC_INTERNAL, "cannot send the response");
    check_response_clear(&resp);
    observe(g, "Check", status, started);
    return status;
}

static int sidecars_on_start(rpc_call *call, const ProtobufCMessage *msg,
                             void *ud)
{
    cp_governance *g = ud;
    const Polis__V1__SidecarsRequest *req =
        (const Polis__V1__SidecarsRequest *)msg;
    Polis__V1__SidecarsResponse resp = POLIS__V1__SIDECARS_RESPONSE__INIT;
    Polis__V1__SidecarStatus **list = NULL;
    size_t n = 0;
    polis_error err = {0};
    double started = now_seconds();
    int status = RPC_OK;

    if (cp_sidecars_list(cp_store_etcd(g->store), cp_store_prefix(g->store),
                         req->domain, &list, &n, &err) != 0) {
        status = fail(call, &err);
    } else {
        resp.sidecars = list;
        resp.n_sidecars = n;
        if (rpc_call_send(call, &resp.base) != 0)
            status = fail_msg(call, RPC_RESOURCE_EXHAUSTED,
                              "the answer is over the message size limit");
    }
    cp_sidecars_free(list, n);
    observe(g, "Sidecars", status, started);
    return status;
}

static int access_on_start(rpc_call *call, const ProtobufCMessage *msg,
                           void *ud)
{
    cp_governance *g = ud;
    const Polis__V1__AccessRequest *req = (const Polis__V1__AccessRequest *)msg;
    Polis__V1__AccessResponse resp = POLIS__V1__ACCESS_RESPONSE__INIT;
    polis_error err = {0};
    double started = now_seconds();
    int status = RPC_OK;

    if (cp_access_list(cp_store_etcd(g->store), cp_store_prefix(g->store), req,
                       &resp, &err) != 0) {
        status = fail(call, &err);
    } else if (rpc_call_send(call, &resp.base) != 0) {
        status = fail_msg(call, RPC_RESOURCE_EXHAUSTED,
                          "the answer is over the message size limit "
                          "(ask for fewer with --limit)");
    }
    cp_access_response_free(&resp);
    observe(g, "Access", status, started);
    return status;
}

static const rpc_handler governance_handlers[] = {
    {"Apply", RPC_KIND_UNARY, apply_on_start, NULL, NULL, NULL},
    {"Get", RPC_KIND_UNARY, get_on_start, NULL, NULL, NULL},
    {"List", RPC_KIND_UNARY, list_on_start, NULL, NULL, NULL},
    {"Delete", RPC_KIND_UNARY, delete_on_start, NULL, NULL, NULL},
    {"History", RPC_KIND_UNARY, history_on_start, NULL, NULL, NULL},
    {"Check", RPC_KIND_UNARY, check_on_start, NULL, NULL, NULL},
    {"Sidecars", RPC_KIND_UNARY, sidecars_on_start, NULL, NULL, NULL},
    {"Access", RPC_KIND_UNARY, access_on_start, NULL, NULL, NULL},
};

int cp_governance_register(cp_governance *g, rpc_server *srv, polis_error *err)
{
    return rpc_server_add_service(
        srv, &polis__v1__governance__descriptor, governance_handlers,
        sizeof(governance_handlers) / sizeof(governance_handlers[0]), g, err);
}
