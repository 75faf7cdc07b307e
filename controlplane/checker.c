/*
 * checker.c — Governance.Check against the stored policies (checker.h).
 * The engine is rebuilt lazily: each check reads meta/last-change (one etcd
 * range) and rebuilds only when a write happened since the last build.
 */
#include "controlplane/checker.h"
#include "policy/api/check.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cp_checker {
    cp_store *store;
    pthread_mutex_t lock; /* guards everything below */
    pol_engine *engine;
    int64_t built_seq; /* change revision it was built at; -1: never */
    int64_t built_revision;
    pol_decision *decision;
};

int cp_checker_new(cp_store *store, cp_checker **out, polis_error *err)
{
    cp_checker *c = calloc(1, sizeof(*c));

    if (c == NULL || (c->decision = pol_decision_new()) == NULL) {
        free(c);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    c->store = store;
    c->built_seq = -1;
    pthread_mutex_init(&c->lock, NULL);
    *out = c;
    return 0;
}

void cp_checker_free(cp_checker *c)
{
    if (c == NULL)
        return;
    pol_engine_free(c->engine);
    pol_decision_free(c->decision);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* Policies and DataProducts, all read at one revision (one listing), so
 * the engine never mixes two points in time. */
static int load_documents(cp_store *store, json_t *docs, int64_t *revision,
                          polis_error *err)
{
    cp_resource *list = NULL;
    size_t n = 0;
    int rc = cp_store_list(store, NULL, NULL, &list, &n, revision, err);

    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *doc;
        if (strcmp(list[i].kind, "Policy") != 0 &&
            strcmp(list[i].kind, "DataProduct") != 0)
            continue;
        doc = json_loads(list[i].doc_json, 0, NULL);
        if (doc == NULL)
            rc = polis_error_set(err, POLIS_EPROTO, list[i].name,
                                 "stored document is not JSON");
        else
            json_array_append_new(docs, doc);
    }
    cp_resources_free(list, n);
    return rc;
}

static int refresh_engine(cp_checker *c, polis_error *err)
{
    json_t *docs;
    pol_engine *engine = NULL;
    int64_t seq, revision = 0;
    int rc;

    rc = cp_store_change_revision(c->store, &seq, err);
    if (rc || seq == c->built_seq)
        return rc;
    docs = json_array();
    if (docs == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    rc = load_documents(c->store, docs, &revision, err);
    if (rc == 0) {
        rc = pol_engine_build(docs, NULL, &engine, err);
        if (rc)
            polis_error_prefix_where(err, "stored policies do not compile");
    }
    json_decref(docs);
    if (rc)
        return rc;
    pol_engine_free(c->engine);
    c->engine = engine;
    c->built_seq = seq;
    c->built_revision = revision;
    return 0;
}

/* A rule for all of a domain matches any product name: say so when the
 * product does not exist, rather than explain a decision about nothing. */
static int product_must_exist(cp_checker *c, const char *product,
                              polis_error *err)
{
    char domain[CP_NAME_MAX];
    const char *slash = product ? strchr(product, '/') : NULL;
    bool exists = false;
    int rc;

    if (slash == NULL || slash == product || slash[1] == '\0' ||
        (size_t)(slash - product) >= sizeof(domain))
        return polis_error_set(err, POLIS_EINVAL, "product",
                               "expected \"domain/product\", got \"%s\"",
                               product ? product : "");
    memcpy(domain, product, (size_t)(slash - product));
    domain[slash - product] = '\0';
    rc = cp_store_exists(c->store, "DataProduct", domain, slash + 1, &exists,
                         err);
    if (rc == 0 && !exists)
        rc = polis_error_set(err, POLIS_ENOTFOUND, "product",
                             "data product \"%s\" not found", product);
    return rc;
}

int cp_checker_check(cp_checker *c, const Polis__V1__CheckRequest *req,
                     Polis__V1__CheckResponse *resp, polis_error *err)
{
    cp_resource principal = {0};
    json_t *pdoc = NULL;
    check_subject *subject = NULL;
    check_columns *cols = NULL;
    pol_request preq;
    int rc;

    if (req->principal == NULL || req->principal[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, "principal",
                               "required (a Principal's name)");
    rc = cp_store_get(c->store, "Principal", "global", req->principal,
                      &principal, err);
    if (rc)
        return rc;
    rc = product_must_exist(c, req->product, err);
    if (rc) {
        cp_resource_clear(&principal);
        return rc;
    }
    subject = malloc(sizeof(*subject));
    cols = malloc(sizeof(*cols));
    pdoc = json_loads(principal.doc_json, 0, NULL);
    if (subject == NULL || cols == NULL || pdoc == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto out;
    }
    rc = check_subject_from_principal(req->principal, pdoc, subject, err);
    if (rc == 0)
        rc = check_request_from_pb(req, subject, cols, &preq, err);
    if (rc)
        goto out;
    pthread_mutex_lock(&c->lock);
    rc = refresh_engine(c, err);
    if (rc == 0)
        rc = pol_decide(c->engine, &preq, c->decision, err);
    if (rc == 0)
        rc = check_response_from_decision(c->decision, c->built_revision,
                                          req->principal, resp, err);
    pthread_mutex_unlock(&c->lock);
out:
    json_decref(pdoc);
    free(cols);
    free(subject);
    cp_resource_clear(&principal);
    return rc;
}
