/*
 * checker.c — the Check decision path (checker.h).  Per-thread scratch
 * (decision, subject, columns: about 30 KiB) comes from a pthread key and
 * is kept on a list so that sc_checker_free releases it whichever threads
 * used it.  The snapshot is referenced for the whole check, so a swap in
 * the middle of a decision cannot free the engine under it.
 */
#include "sidecar/checker.h"
#include "policy/api/check.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct scratch {
    pol_decision *decision;
    check_subject subject;
    check_columns columns;
    struct scratch *next;
} scratch;

struct sc_checker {
    char domain[256];
    size_t domain_len;
    sc_snapshot_slot *slot;
    pthread_key_t key;
    pthread_mutex_t lock; /* guards the scratch list */
    scratch *all;
    metric_series *m_allow, *m_deny, *m_seconds;
};

int sc_checker_new(const char *domain, sc_snapshot_slot *slot, metrics *m,
                   sc_checker **out, polis_error *err)
{
    sc_checker *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    if (pthread_key_create(&c->key, NULL) != 0) {
        free(c);
        return polis_error_set(err, POLIS_ENOMEM, NULL,
                               "no thread-specific key left");
    }
    snprintf(c->domain, sizeof(c->domain), "%s", domain);
    c->domain_len = strlen(c->domain);
    c->slot = slot;
    pthread_mutex_init(&c->lock, NULL);
    if (m) {
        const char *help = "Check decisions answered (HTTP and gRPC)";
        c->m_allow = metrics_counter(m, "polis_sidecar_checks_total", help,
                                     "decision=\"allow\"");
        c->m_deny = metrics_counter(m, "polis_sidecar_checks_total", help,
                                    "decision=\"deny\"");
        c->m_seconds = metrics_histogram(
            m, "polis_sidecar_check_seconds",
            "Time to decide one check, from request to answer", NULL,
            metrics_latency_buckets, metrics_latency_buckets_n);
    }
    *out = c;
    return 0;
}

void sc_checker_free(sc_checker *c)
{
    if (c == NULL)
        return;
    while (c->all) {
        scratch *s = c->all;
        c->all = s->next;
        pol_decision_free(s->decision);
        free(s);
    }
    pthread_key_delete(c->key);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static scratch *thread_scratch(sc_checker *c)
{
    scratch *s = pthread_getspecific(c->key);

    if (s)
        return s;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->decision = pol_decision_new();
    if (s->decision == NULL || pthread_setspecific(c->key, s) != 0) {
        pol_decision_free(s->decision);
        free(s);
        return NULL;
    }
    pthread_mutex_lock(&c->lock);
    s->next = c->all;
    c->all = s;
    pthread_mutex_unlock(&c->lock);
    return s;
}

static double mono_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int validate(const sc_checker *c, const Polis__V1__CheckRequest *req,
                    polis_error *err)
{
    const char *product = req->product ? req->product : "";
    const char *slash = strchr(product, '/');
    bool has_principal = req->principal && req->principal[0];
    bool has_token = req->token && req->token[0];
    pol_port port;

    if (!has_principal && !has_token)
        return polis_error_set(err, POLIS_EINVAL, "principal",
                               "give a principal name or a bearer token");
    if (has_principal && has_token)
        return polis_error_set(err, POLIS_EINVAL, "token",
                               "give a principal name or a bearer token, "
                               "not both");
    if (product[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, "product",
                               "required (\"domain/product\")");
    if (slash == NULL || slash == product || slash[1] == '\0' ||
        strchr(slash + 1, '/') != NULL)
        return polis_error_set(err, POLIS_EINVAL, "product",
                               "expected \"domain/product\", got \"%s\"",
                               product);
    if ((size_t)(slash - product) != c->domain_len ||
        memcmp(product, c->domain, c->domain_len) != 0)
        return polis_error_set(err, POLIS_EINVAL, "product",
                               "product %s is not served by this sidecar "
                               "(domain %s)",
                               product, c->domain);
    if (req->port && req->port[0] && pol_port_from_name(req->port, &port) != 0)
        return polis_error_set(err, POLIS_EINVAL, "port",
                               "unknown port \"%s\" (query, file, event or "
                               "http)",
                               req->port);
    return 0;
}

/* A denial decided before the engine: no rule took part. */
static int deny_early(Polis__V1__CheckResponse *resp, const char *reason,
                      const char *explanation, const char *principal,
                      int64_t revision, bool explain, polis_error *err)
{
    return check_response_deny(reason, explanation, principal, revision,
                               explain, resp, err);
}

static int decide(sc_checker *c, const sc_snapshot *snap,
                  const Polis__V1__CheckRequest *req, bool explain,
                  Polis__V1__CheckResponse *resp, polis_error *err)
{
    const sc_principals *pr = sc_snapshot_principals(snap);
    int64_t revision = sc_snapshot_revision(snap);
    const json_t *doc;
    const char *name;
    scratch *s;
    pol_request preq;
    char text[300];
    int rc;

    if (req->token && req->token[0]) {
        name = sc_principals_by_token(pr, req->token, strlen(req->token), &doc);
        if (name == NULL)
            return deny_early(resp, SC_REASON_UNAUTHENTICATED,
                              "denied: the bearer token matches no "
                              "principal",
                              NULL, revision, explain, err);
    } else {
        name = req->principal;
        doc = sc_principals_by_name(pr, name);
        if (doc == NULL) {
            snprintf(text, sizeof(text),
                     "denied: no principal \"%.200s\" in the snapshot", name);
            return deny_early(resp, SC_REASON_UNKNOWN, text, name, revision,
                              explain, err);
        }
    }
    s = thread_scratch(c);
    if (s == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    rc = check_subject_from_principal(name, doc, &s->subject, err);
    if (rc == 0)
        rc = check_request_from_pb(req, &s->subject, &s->columns, &preq, err);
    if (rc == 0)
        rc = pol_decide(sc_snapshot_engine(snap), &preq, s->decision, err);
    if (rc == 0)
        rc = check_response_build(s->decision, revision, name, explain, resp,
                                  err);
    return rc;
}

int sc_checker_decide(sc_checker *c, const Polis__V1__CheckRequest *req,
                      bool explain, Polis__V1__CheckResponse *resp,
                      polis_error *err)
{
    double start = mono_seconds();
    sc_snapshot *snap;
    int rc = validate(c, req, err);

    if (rc)
        return rc;
    snap = sc_snapshot_slot_get(c->slot);
    if (snap == NULL)
        rc = deny_early(resp, SC_REASON_NO_SNAPSHOT,
                        "denied: no snapshot yet: denying every request",
                        req->principal, 0, explain, err);
    else
        rc = decide(c, snap, req, explain, resp, err);
    sc_snapshot_unref(snap);
    if (rc == 0) {
        metric_add(resp->allowed ? c->m_allow : c->m_deny, 1);
        metric_observe(c->m_seconds, mono_seconds() - start);
    }
    return rc;
}

int sc_checker_check(sc_checker *c, const Polis__V1__CheckRequest *req,
                     Polis__V1__CheckResponse *resp, polis_error *err)
{
    return sc_checker_decide(c, req, true, resp, err);
}
