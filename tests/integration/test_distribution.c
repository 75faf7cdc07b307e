/*
 * test_distribution.c — push distribution and its failure model with real
 * processes on loopback: etcd, polis-controlplane (--debounce-ms 20
 * --keepalive-ms 1000) and polis-sidecar.  Suite "stream" drives
 * Distribution.Subscribe by hand as a fake sidecar (what a snapshot holds,
 * who gets pushed, NACK status); suite "sidecar" runs real sidecars through
 * a policy change, a snapshot they cannot compile, a control plane crash
 * and an etcd compaction behind the control plane's watch.
 */
#include "common/etcd.h"
#include "common/resource.h"
#include "polis/v1/distribution.pb-c.h"
#include "polis/v1/governance.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PREFIX "/polis/"
/* Bounds on waits for a condition, not expected times (those are printed):
 * generous, as CI runs this under ASan beside other tests on 2 cores. */
#define PUSH_WAIT_MS   10000 /* a change reaches an affected sidecar */
#define STATUS_WAIT_MS 20000 /* status reaches etcd and Sidecars */
#define RECOVER_MS     30000 /* reconnect (backoff up to 10 s) and a push */
#define LOG_TAIL       3000

static cpenv *cp;
static rpc_channel *gov;
static etcd_client *etcd;

static int64_t now_ms(void)
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

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));

    return v ? v : "";
}

/* ---- the control plane ---- */

/* A Policy document with one allow/deny rule. */
static char *policy_doc(const char *name, const char *scope, const char *rule,
                        const char *effect, const char *subject,
                        const char *resource)
{
    char *s = NULL;

    if (asprintf(&s,
                 "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
                 "\"metadata\":{\"name\":\"%s\"},\"spec\":{\"scope\":\"%s\","
                 "\"rules\":[{\"name\":\"%s\",\"effect\":\"%s\","
                 "\"subjects\":[\"%s\"],\"resources\":[\"%s\"]}]}}",
                 name, scope, rule, effect, subject, resource) < 0)
        return NULL;
    return s;
}

static int64_t apply_policy(const char *name, const char *scope,
                            const char *rule, const char *effect,
                            const char *subject, const char *resource)
{
    char *doc = policy_doc(name, scope, rule, effect, subject, resource);
    int64_t rev = doc ? gc_apply(gov, doc) : -1;

    free(doc);
    return rev;
}

/* A sidecar's status from Governance.Sidecars; 0 when found. */
typedef struct sc_status {
    char state[32];
    int64_t applied, latest;
    char error[512];
} sc_status;

static int sidecar_status(const char *id, sc_status *out)
{
    Polis__V1__SidecarsRequest req = POLIS__V1__SIDECARS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    Polis__V1__SidecarsResponse *r;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (rpc_unary(gov, &polis__v1__governance__descriptor, "Sidecars",
                  &req.base, &resp, NULL, 0, 5000, NULL) != RPC_OK)
        return -1;
    r = (Polis__V1__SidecarsResponse *)resp;
    for (size_t i = 0; i < r->n_sidecars; i++) {
        if (strcmp(r->sidecars[i]->id, id) != 0)
            continue;
        snprintf(out->state, sizeof(out->state), "%s", r->sidecars[i]->state);
        snprintf(out->error, sizeof(out->error), "%s",
                 r->sidecars[i]->last_error);
        out->applied = r->sidecars[i]->applied_revision;
        out->latest = r->sidecars[i]->latest_revision;
        rc = 0;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

/* Wait until sidecar `id` shows `state` with applied >= min_applied; 0, or
 * -1 (the last status printed).  `keep` (may be NULL) is called between
 * polls, e.g. to keep a fake stream alive. */
static int wait_status(const char *id, const char *state, int64_t min_applied,
                       int timeout_ms, void (*keep)(void *), void *ud,
                       sc_status *out)
{
    int64_t until = now_ms() + timeout_ms;
    sc_status st = {0};

    do {
        if (sidecar_status(id, &st) == 0 && strcmp(st.state, state) == 0 &&
            st.applied >= min_applied) {
            if (out)
                *out = st;
            return 0;
        }
        if (keep)
            keep(ud);
        nap_ms(50);
    } while (now_ms() < until);
    fprintf(stderr,
            "\nsidecar %s: wanted %s with applied >= %lld within %d ms; "
            "last: state=%s applied=%lld latest=%lld error=\"%s\"\n",
            id, state, (long long)min_applied, timeout_ms,
            st.state[0] ? st.state : "(absent)", (long long)st.applied,
            (long long)st.latest, st.error);
    if (out)
        *out = st;
    return -1;
}

/* Write a resource record straight into etcd, as an operator with etcdctl
 * would, around the control plane's validation. */
static int etcd_put_record(const char *kind_key_scope, const char *name,
                           const char *doc_json, int64_t *rev_out)
{
    char key[256], *val = NULL;
    polis_error err = {0};
    int rc;

    snprintf(key, sizeof(key), "%sresources/%s/%s", PREFIX, kind_key_scope,
             name);
    if (asprintf(&val,
                 "{\"document\":%s,\"scope\":\"global\",\"generation\":1,"
                 "\"seq\":1,\"author\":\"test\",\"updatedAt\":"
                 "\"2026-01-01T00:00:00Z\"}",
                 doc_json) < 0)
        return -1;
    rc = etcd_put(etcd, key, val, strlen(val), 0, rev_out, &err);
    if (rc)
        fprintf(stderr, "\netcd put %s: %s\n", key, err.message);
    free(val);
    return rc;
}

static int etcd_del_record(const char *kind_key_scope, const char *name,
                           int64_t *rev_out)
{
    char key[256];
    polis_error err = {0};

    snprintf(key, sizeof(key), "%sresources/%s/%s", PREFIX, kind_key_scope,
             name);
    return etcd_delete(etcd, key, false, NULL, rev_out, &err);
}

/* POST a JSON body (etcd's gateway); the HTTP status or -1. */
static long post_json(const char *url, const char *body)
{
    gc_response r;

    gc_http(NULL, url, NULL, body, NULL, 5000, &r);
    gc_response_free(&r);
    return r.status;
}

/* ---- the mesh ---- */

static const char *const mesh_docs[] = {
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":{\"name\":"
    "\"sales\"},\"spec\":{\"owners\":[\"sales@example.com\"]}}",
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":{\"name\":"
    "\"crm\"},\"spec\":{\"owners\":[\"crm@example.com\"]}}",
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":{"
    "\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\",\"ports\":[{\"name\":"
    "\"sql\",\"type\":\"query\",\"engine\":\"sqlite\",\"database\":\"o.db\","
    "\"table\":\"orders\"}],\"schema\":[{\"name\":\"order_id\",\"type\":"
    "\"integer\"},{\"name\":\"email\",\"type\":\"string\",\"classification\":"
    "[\"pii.email\"]},{\"name\":\"region\",\"type\":\"string\"}]}}",
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":{"
    "\"name\":\"customers\"},\"spec\":{\"domain\":\"crm\",\"ports\":[{"
    "\"name\":\"sql\",\"type\":\"query\",\"engine\":\"sqlite\",\"database\":"
    "\"c.db\",\"table\":\"customers\"}],\"schema\":[{\"name\":\"id\","
    "\"type\":\"integer\"},{\"name\":\"phone\",\"type\":\"string\"}]}}",
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\",\"metadata\":{"
    "\"name\":\"alice\"},\"spec\":{\"groups\":[\"analysts\"],\"attributes\":"
    "{\"region\":\"EU\"}}}",
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\",\"metadata\":{"
    "\"name\":\"bob\"},\"spec\":{\"groups\":[\"managers\"],\"attributes\":{"
    "\"region\":\"US\"}}}",
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":{\"name\":"
    "\"council\"},\"spec\":{\"scope\":\"global\",\"rules\":[{\"name\":"
    "\"analysts-read\",\"effect\":\"allow\",\"subjects\":[\"group:analysts\"],"
    "\"resources\":[\"sales/*\",\"crm/*\"]}]}}",
};

static int start_controlplane(void)
{
    static const char *const args[] = {"--debounce-ms", "20", "--keepalive-ms",
                                       "1000", NULL};
    cpenv_options o = {.extra_args = args};
    etcd_options eo = {0};
    polis_error err = {0};

    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        return -1;
    eo.endpoints = cp->etcd->endpoint;
    if (etcd_client_new(&eo, &etcd, &err) != 0)
        return -1;
    if (gc_apply_docs(gov, mesh_docs, sizeof(mesh_docs) / sizeof(mesh_docs[0]),
                      0) <= 0)
        return -1;
    return 0;
}

static int stop_controlplane(void)
{
    etcd_client_free(etcd);
    etcd = NULL;
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    return 0;
}

static int wait_domains_served(void);

static int stream_init(void)
{
    if (start_controlplane() == 0 && wait_domains_served() == 0)
        return 0;
    stop_controlplane();
    return -1;
}

/* ============================ suite "stream" ============================ */

typedef struct fake {
    rpc_channel *ch;
    rpc_stream *s;
    const char *id;
} fake;

static int fake_send(fake *f, Polis__V1__SidecarMessage *m)
{
    return rpc_stream_send(f->s, &m->base);
}

static void fake_close(fake *f)
{
    rpc_stream_free(f->s);
    rpc_channel_free(f->ch);
    f->s = NULL;
    f->ch = NULL;
}

static int fake_open_at(fake *f, const char *id, const char *domain,
                        int64_t applied_revision, const char *applied_digest)
{
    Polis__V1__Hello h = POLIS__V1__HELLO__INIT;
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;
    polis_error err = {0};

    memset(f, 0, sizeof(*f));
    f->id = id;
    f->ch = cpenv_channel(cp);
    if (f->ch == NULL ||
        rpc_stream_open(f->ch, &polis__v1__distribution__descriptor,
                        "Subscribe", NULL, 0, 0, &f->s, &err) != 0) {
        fake_close(f);
        return -1;
    }
    h.sidecar_id = (char *)id;
    h.domain = (char *)domain;
    h.version = "test";
    h.applied_revision = applied_revision;
    h.applied_digest = (char *)(applied_digest ? applied_digest : "");
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_HELLO;
    m.hello = &h;
    if (fake_send(f, &m) != 0) {
        fake_close(f);
        return -1;
    }
    return 0;
}

static int fake_open(fake *f, const char *id, const char *domain)
{
    return fake_open_at(f, id, domain, 0, NULL);
}

static void fake_keepalive(void *ud)
{
    fake *f = ud;
    Polis__V1__Keepalive k = POLIS__V1__KEEPALIVE__INIT;
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;

    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_KEEPALIVE;
    m.keepalive = &k;
    if (f->s)
        fake_send(f, &m);
}

/* The next snapshot within timeout_ms (keepalives answered and skipped), or
 * NULL.  Caller frees with protobuf_c_message_free_unpacked. */
static Polis__V1__ControlMessage *fake_snapshot(fake *f, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;

    while (f->s && now_ms() < until) {
        ProtobufCMessage *msg = NULL;
        int64_t left = until - now_ms();
        int rc = rpc_stream_recv(f->s, &msg, left < 300 ? (int)left : 300);

        fake_keepalive(f);
        if (rc == POLIS_ETIMEDOUT)
            continue;
        if (rc != 1)
            return NULL;
        if (((Polis__V1__ControlMessage *)msg)->msg_case ==
            POLIS__V1__CONTROL_MESSAGE__MSG_SNAPSHOT)
            return (Polis__V1__ControlMessage *)msg;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    return NULL;
}

/*
 * Apply returns once etcd has the Domain; the control plane learns it
 * through its watch, and refuses a hello for a domain it does not know
 * yet.  A real sidecar retries; the fake streams of this suite do not, so
 * wait until a probe stream for each domain gets a snapshot.
 */
static int wait_domains_served(void)
{
    static const char *const domains[] = {"sales", "crm"};

    for (size_t i = 0; i < sizeof(domains) / sizeof(domains[0]); i++) {
        int64_t until = now_ms() + 15000;
        Polis__V1__ControlMessage *cm = NULL;

        while (cm == NULL && now_ms() < until) {
            fake f;

            if (fake_open(&f, "fake-probe", domains[i]) == 0)
                cm = fake_snapshot(&f, 2000);
            fake_close(&f);
            if (cm == NULL)
                nap_ms(100);
        }
        if (cm == NULL) {
            fprintf(stderr, "the control plane never served domain %s\n",
                    domains[i]);
            return -1;
        }
        protobuf_c_message_free_unpacked(&cm->base, NULL);
    }
    return 0;
}

static int fake_ack(fake *f, const Polis__V1__Snapshot *s)
{
    Polis__V1__Ack a = POLIS__V1__ACK__INIT;
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;

    a.revision = s->revision;
    a.digest = s->digest;
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_ACK;
    m.ack = &a;
    return fake_send(f, &m);
}

static int fake_nack(fake *f, const Polis__V1__Snapshot *s, const char *why)
{
    Polis__V1__Nack n = POLIS__V1__NACK__INIT;
    Polis__V1__SidecarMessage m = POLIS__V1__SIDECAR_MESSAGE__INIT;

    n.revision = s->revision;
    n.digest = s->digest;
    n.error = (char *)why;
    m.msg_case = POLIS__V1__SIDECAR_MESSAGE__MSG_NACK;
    m.nack = &n;
    return fake_send(f, &m);
}

/* The Policy resources of a snapshot whose scope is `scope` (resource field
 * or the document's spec.scope). */
static int count_policies(const Polis__V1__Snapshot *s, const char *scope,
                          const char *name)
{
    int n = 0;

    for (size_t i = 0; i < s->n_resources; i++) {
        const Polis__V1__Resource *r = s->resources[i];
        json_t *doc;
        const char *doc_scope, *doc_name;

        if (strcmp(r->kind, "Policy") != 0)
            continue;
        doc = json_loads(r->document_json, 0, NULL);
        doc_scope = jstr(json_object_get(doc, "spec"), "scope");
        doc_name = jstr(json_object_get(doc, "metadata"), "name");
        if ((strcmp(r->scope, scope) == 0 || strcmp(doc_scope, scope) == 0) &&
            (name == NULL || strcmp(doc_name, name) == 0))
            n++;
        json_decref(doc);
    }
    return n;
}

/* A domain-B policy never reaches domain A's snapshot, nor is A pushed
 * anything when only B's policies change. */
static void test_domain_isolation(void)
{
    fake f;
    Polis__V1__ControlMessage *cm;
    int64_t rev;

    CU_ASSERT_FATAL(apply_policy("sales-private", "sales", "managers-read",
                                 "allow", "group:managers", "sales/*") > 0);
    CU_ASSERT_FATAL(fake_open(&f, "fake-crm-1", "crm") == 0);
    cm = fake_snapshot(&f, 5000);
    CU_ASSERT_FATAL(cm != NULL);
    CU_ASSERT_STRING_EQUAL(cm->snapshot->domain, "crm");
    CU_ASSERT(cm->snapshot->revision > 0);
    CU_ASSERT_EQUAL(strlen(cm->snapshot->digest), 64);
    CU_ASSERT_EQUAL(count_policies(cm->snapshot, "global", "council"), 1);
    CU_ASSERT_EQUAL(count_policies(cm->snapshot, "sales", NULL), 0);
    CU_ASSERT_EQUAL(fake_ack(&f, cm->snapshot), 0);
    protobuf_c_message_free_unpacked(&cm->base, NULL);

    /* crm's own policy arrives; sales' still does not. */
    rev = apply_policy("crm-private", "crm", "analysts-read", "allow",
                       "group:analysts", "crm/*");
    CU_ASSERT_FATAL(rev > 0);
    cm = fake_snapshot(&f, PUSH_WAIT_MS);
    CU_ASSERT_FATAL(cm != NULL);
    CU_ASSERT(cm->snapshot->revision >= rev);
    CU_ASSERT_EQUAL(count_policies(cm->snapshot, "crm", "crm-private"), 1);
    CU_ASSERT_EQUAL(count_policies(cm->snapshot, "sales", NULL), 0);
    CU_ASSERT_EQUAL(fake_ack(&f, cm->snapshot), 0);
    protobuf_c_message_free_unpacked(&cm->base, NULL);
    CU_ASSERT_EQUAL(wait_status("fake-crm-1", "SYNCED", rev, STATUS_WAIT_MS,
                                fake_keepalive, &f, NULL),
                    0);

    /* Only sales changes: nothing is pushed to crm. */
    CU_ASSERT_FATAL(apply_policy("sales-private", "sales", "managers-read",
                                 "allow", "group:managers",
                                 "sales/orders") > 0);
    cm = fake_snapshot(&f, 1000);
    if (cm)
        fprintf(stderr, "\ncrm was pushed revision %lld for a sales change\n",
                (long long)cm->snapshot->revision);
    CU_ASSERT(cm == NULL);
    if (cm)
        protobuf_c_message_free_unpacked(&cm->base, NULL);
    fake_close(&f);
}

/* A NACK shows as NACKED with the sidecar's error; a later good snapshot
 * ACKed clears it. */
static void test_nack_status(void)
{
    fake f;
    Polis__V1__ControlMessage *cm;
    sc_status st;
    int64_t rev;

    CU_ASSERT_FATAL(fake_open(&f, "fake-sales-1", "sales") == 0);
    cm = fake_snapshot(&f, 5000);
    CU_ASSERT_FATAL(cm != NULL);
    CU_ASSERT_EQUAL(count_policies(cm->snapshot, "sales", "sales-private"), 1);
    CU_ASSERT_EQUAL(count_policies(cm->snapshot, "crm", NULL), 0);
    CU_ASSERT_EQUAL(fake_nack(&f, cm->snapshot, "rule x: cannot compile"), 0);
    protobuf_c_message_free_unpacked(&cm->base, NULL);
    CU_ASSERT_EQUAL(wait_status("fake-sales-1", "NACKED", 0, STATUS_WAIT_MS,
                                fake_keepalive, &f, &st),
                    0);
    CU_ASSERT_STRING_EQUAL(st.error, "rule x: cannot compile");

    rev = apply_policy("sales-extra", "sales", "r", "allow", "alice",
                       "sales/orders");
    CU_ASSERT_FATAL(rev > 0);
    cm = fake_snapshot(&f, PUSH_WAIT_MS);
    CU_ASSERT_FATAL(cm != NULL);
    CU_ASSERT_EQUAL(fake_ack(&f, cm->snapshot), 0);
    protobuf_c_message_free_unpacked(&cm->base, NULL);
    CU_ASSERT_EQUAL(wait_status("fake-sales-1", "SYNCED", rev, STATUS_WAIT_MS,
                                fake_keepalive, &f, &st),
                    0);
    CU_ASSERT_STRING_EQUAL(st.error, "");
    fake_close(&f);
}

/* ============================ suite "sidecar" =========================== */

static sidecarenv *sales_sc, *crm_sc;

static sidecarenv *start_sidecar(const char *domain, const char *id)
{
    sidecarenv_options o = {.domain = domain,
                            .controlplane = cp->grpc_target,
                            .id = id,
                            .keepalive_ms = 1000,
                            .wait_ready = true};
    return sidecarenv_start(&o);
}

static int sidecar_cleanup(void);

/* CUnit runs no cleanup after a failed init: clean up here. */
static int sidecar_init(void)
{
    if (start_controlplane() == 0) {
        sales_sc = start_sidecar("sales", "sales-1");
        crm_sc = start_sidecar("crm", "crm-1");
        if (sales_sc && crm_sc)
            return 0;
    }
    sidecar_cleanup();
    return -1;
}

static int sidecar_cleanup(void)
{
    sidecarenv_free(sales_sc);
    sidecarenv_free(crm_sc);
    sales_sc = crm_sc = NULL;
    return stop_controlplane();
}

/* A decision of `sc` for principal on product (port query). */
static json_t *decide(sidecarenv *sc, const char *principal,
                      const char *product)
{
    char req[512];
    json_t *ans = NULL;
    long st;

    snprintf(req, sizeof(req),
             "{\"principal\":\"%s\",\"product\":\"%s\",\"port\":\"query\","
             "\"purpose\":\"analytics\"}",
             principal, product);
    st = sidecarenv_check(sc, req, &ans, 2000);
    if (st != 200) {
        fprintf(stderr, "\n%s: POST /v1/check %s -> HTTP %ld\n", sc->id, req,
                st);
        json_decref(ans);
        return NULL;
    }
    return ans;
}

static int allowed(const json_t *ans)
{
    return json_is_true(json_object_get(ans, "allowed"));
}

static int64_t answer_revision(const json_t *ans)
{
    return json_integer_value(json_object_get(ans, "revision"));
}

/* Wait until the decision shows `want_allowed` from a snapshot at revision
 * >= min_rev; the elapsed ms, or -1 (the last answer printed). */
static int64_t wait_decision(sidecarenv *sc, const char *principal,
                             const char *product, int want_allowed,
                             int64_t min_rev, int timeout_ms)
{
    int64_t start = now_ms();
    char *last = NULL;

    do {
        json_t *ans = decide(sc, principal, product);

        if (ans && allowed(ans) == want_allowed &&
            answer_revision(ans) >= min_rev) {
            json_decref(ans);
            free(last);
            return now_ms() - start;
        }
        free(last);
        last = ans ? json_dumps(ans, JSON_COMPACT) : NULL;
        json_decref(ans);
        nap_ms(20);
    } while (now_ms() - start < timeout_ms);
    fprintf(stderr,
            "\n%s: %s on %s never became allowed=%d at revision >= %lld "
            "within %d ms; last answer: %s\n",
            sc->id, principal, product, want_allowed, (long long)min_rev,
            timeout_ms, last ? last : "(none)");
    free(last);
    return -1;
}

static int same_decision(const json_t *a, const json_t *b)
{
    return a && b && allowed(a) == allowed(b) &&
           strcmp(jstr(a, "decidingRule"), jstr(b, "decidingRule")) == 0 &&
           answer_revision(a) == answer_revision(b);
}

#define APPLIED_METRIC "polis_sidecar_snapshots_applied_total"

static void test_policy_reaches_domain_only(void)
{
    sc_status crm_before, crm_after;
    double crm_m0 = -1, crm_m1 = -1, sales_m0 = -1, sales_m1 = -1;
    json_t *ans;
    int64_t rev, took;

    ans = decide(sales_sc, "bob", "sales/orders");
    CU_ASSERT_FATAL(ans != NULL);
    CU_ASSERT(!allowed(ans));
    json_decref(ans);
    CU_ASSERT_FATAL(wait_status("crm-1", "SYNCED", 0, STATUS_WAIT_MS, NULL,
                                NULL, &crm_before) == 0);
    CU_ASSERT_EQUAL(sidecarenv_metric(crm_sc, APPLIED_METRIC, &crm_m0), 0);
    CU_ASSERT_EQUAL(sidecarenv_metric(sales_sc, APPLIED_METRIC, &sales_m0), 0);

    rev = apply_policy("sales-managers", "sales", "managers-read", "allow",
                       "group:managers", "sales/*");
    CU_ASSERT_FATAL(rev > 0);
    took = wait_decision(sales_sc, "bob", "sales/orders", 1, rev, PUSH_WAIT_MS);
    CU_ASSERT(took >= 0);
    printf("(enforced after %lld ms) ", (long long)took);
    CU_ASSERT_EQUAL(
        wait_status("sales-1", "SYNCED", rev, STATUS_WAIT_MS, NULL, NULL, NULL),
        0);
    CU_ASSERT_EQUAL(sidecarenv_metric(sales_sc, APPLIED_METRIC, &sales_m1), 0);
    CU_ASSERT(sales_m1 > sales_m0);

    /* Well past the debounce: crm was not pushed anything. */
    nap_ms(500);
    CU_ASSERT_EQUAL(sidecar_status("crm-1", &crm_after), 0);
    CU_ASSERT_EQUAL(crm_after.applied, crm_before.applied);
    CU_ASSERT_STRING_EQUAL(crm_after.state, "SYNCED");
    CU_ASSERT_EQUAL(sidecarenv_metric(crm_sc, APPLIED_METRIC, &crm_m1), 0);
    CU_ASSERT_EQUAL(crm_m1, crm_m0);
    ans = decide(crm_sc, "bob", "crm/customers");
    CU_ASSERT(ans != NULL && !allowed(ans));
    json_decref(ans);
}

static const char broken_policy[] =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":{\"name\":"
    "\"broken\"},\"spec\":{\"scope\":\"global\",\"rules\":[{\"name\":"
    "\"bad-rule\",\"effect\":\"explode\",\"subjects\":[\"*\"],"
    "\"resources\":[\"*\"]}]}}";

static void test_nack_keeps_old_snapshot(void)
{
    json_t *before, *after;
    sc_status st;
    int64_t rev;

    before = decide(sales_sc, "alice", "sales/orders");
    CU_ASSERT_FATAL(before != NULL);
    CU_ASSERT(allowed(before));

    CU_ASSERT_FATAL(
        etcd_put_record("policy/global", "broken", broken_policy, NULL) == 0);
    CU_ASSERT_EQUAL(
        wait_status("sales-1", "NACKED", 0, STATUS_WAIT_MS, NULL, NULL, &st),
        0);
    printf("(NACK error: \"%s\") ", st.error);
    CU_ASSERT(st.error[0] != '\0');
    CU_ASSERT(strstr(st.error, "explode") || strstr(st.error, "effect") ||
              strstr(st.error, "broken"));
    after = decide(sales_sc, "alice", "sales/orders");
    CU_ASSERT(same_decision(before, after));
    CU_ASSERT_EQUAL(sidecarenv_readyz(sales_sc, 2000), 200);
    json_decref(after);

    /* Fixed in etcd: a good snapshot again, ACKed. */
    CU_ASSERT_EQUAL(etcd_del_record("policy/global", "broken", &rev), 0);
    CU_ASSERT_EQUAL(
        wait_status("sales-1", "SYNCED", rev, STATUS_WAIT_MS, NULL, NULL, &st),
        0);
    CU_ASSERT_EQUAL(
        wait_status("crm-1", "SYNCED", rev, STATUS_WAIT_MS, NULL, NULL, NULL),
        0);
    json_decref(before);
}

static void test_controlplane_crash(void)
{
    json_t *before, *ans;
    int64_t rev;

    before = decide(sales_sc, "alice", "sales/orders");
    CU_ASSERT_FATAL(before != NULL && allowed(before));
    CU_ASSERT_FATAL(testenv_proc_kill(cp->proc, SIGKILL) == 0);
    nap_ms(200);

    ans = decide(sales_sc, "alice", "sales/orders");
    CU_ASSERT(same_decision(before, ans));
    json_decref(ans);

    /* A restart with the control plane down serves from disk. */
    CU_ASSERT_FATAL(sidecarenv_restart(sales_sc, true) == 0);
    CU_ASSERT_EQUAL(sidecarenv_readyz(sales_sc, 2000), 200);
    ans = decide(sales_sc, "alice", "sales/orders");
    CU_ASSERT(same_decision(before, ans));
    json_decref(ans);

    fprintf(stderr, "\n(the control plane was SIGKILLed on purpose; cpenv "
                    "reports it below)\n");
    CU_ASSERT_FATAL(cpenv_restart(cp) == 0);
    rpc_channel_free(gov);
    gov = cpenv_channel(cp);
    CU_ASSERT_FATAL(gov != NULL);
    rev = apply_policy("after-restart", "global", "managers-crm", "allow",
                       "group:managers", "crm/*");
    CU_ASSERT_FATAL(rev > 0);
    CU_ASSERT(
        wait_decision(crm_sc, "bob", "crm/customers", 1, rev, RECOVER_MS) >= 0);
    CU_ASSERT(wait_decision(sales_sc, "alice", "sales/orders", 1, rev,
                            RECOVER_MS) >= 0);
    CU_ASSERT_EQUAL(
        wait_status("sales-1", "SYNCED", rev, STATUS_WAIT_MS, NULL, NULL, NULL),
        0);
    CU_ASSERT_EQUAL(
        wait_status("crm-1", "SYNCED", rev, STATUS_WAIT_MS, NULL, NULL, NULL),
        0);
    json_decref(before);
}

/* A sidecar that comes back with the content in force (its disk copy) is
 * not sent it again, and shows SYNCED. */
static void test_hello_with_current_digest(void)
{
    fake f;
    Polis__V1__ControlMessage *cm;
    char digest[80];
    int64_t rev;
    sc_status st;

    CU_ASSERT_FATAL(fake_open(&f, "fake-sales-2", "sales") == 0);
    cm = fake_snapshot(&f, 5000);
    CU_ASSERT_FATAL(cm != NULL);
    rev = cm->snapshot->revision;
    snprintf(digest, sizeof(digest), "%s", cm->snapshot->digest);
    CU_ASSERT_EQUAL(fake_ack(&f, cm->snapshot), 0);
    protobuf_c_message_free_unpacked(&cm->base, NULL);
    fake_close(&f);

    CU_ASSERT_FATAL(fake_open_at(&f, "fake-sales-2", "sales", rev, digest) ==
                    0);
    cm = fake_snapshot(&f, 1000);
    CU_ASSERT(cm == NULL);
    if (cm)
        protobuf_c_message_free_unpacked(&cm->base, NULL);
    CU_ASSERT_EQUAL(wait_status("fake-sales-2", "SYNCED", rev, STATUS_WAIT_MS,
                                fake_keepalive, &f, &st),
                    0);
    CU_ASSERT_EQUAL(st.applied, st.latest);
    fake_close(&f);
}

/* Every resource of a snapshot is named as its document names it. */
static int snapshot_names_consistent(const Polis__V1__Snapshot *s)
{
    int ok = 1;

    for (size_t i = 0; i < s->n_resources; i++) {
        const Polis__V1__Resource *r = s->resources[i];
        json_t *doc = json_loads(r->document_json, 0, NULL);
        const char *name = jstr(json_object_get(doc, "metadata"), "name");

        if (doc == NULL || strcmp(r->name, name) != 0) {
            fprintf(stderr,
                    "\nsnapshot resource %zu (%s): name \"%.40s\", its "
                    "document says \"%s\"\n",
                    i, r->kind, r->name, name);
            ok = 0;
        }
        json_decref(doc);
    }
    return ok;
}

/*
 * A resource rewritten in etcd with the same document (an operator's
 * etcdctl put, a restore) changes no snapshot's content; a sidecar that
 * connects afterwards must still get a whole, well-formed snapshot.
 */
static void test_unchanged_rewrite_then_hello(void)
{
    fake a, b;
    Polis__V1__ControlMessage *cm;
    int64_t rev = 0;
    const char *council = mesh_docs[6];

    CU_ASSERT_FATAL(strstr(council, "\"council\"") != NULL);
    CU_ASSERT_FATAL(fake_open(&a, "fake-crm-3", "crm") == 0);
    cm = fake_snapshot(&a, 5000);
    CU_ASSERT_FATAL(cm != NULL);
    CU_ASSERT(snapshot_names_consistent(cm->snapshot));
    CU_ASSERT_EQUAL(fake_ack(&a, cm->snapshot), 0);
    protobuf_c_message_free_unpacked(&cm->base, NULL);

    /* Rewritten twice, so that freed memory is likely reused. */
    CU_ASSERT(etcd_put_record("policy/global", "council", council, NULL) == 0);
    CU_ASSERT(etcd_put_record("policy/global", "council", council, &rev) == 0);
    cm = fake_snapshot(&a, 500); /* same content: nothing pushed */
    CU_ASSERT(cm == NULL);
    if (cm)
        protobuf_c_message_free_unpacked(&cm->base, NULL);

    CU_ASSERT(fake_open(&b, "fake-crm-4", "crm") == 0);
    cm = fake_snapshot(&b, 5000);
    CU_ASSERT(cm != NULL);
    if (cm) {
        CU_ASSERT(snapshot_names_consistent(cm->snapshot));
        CU_ASSERT_EQUAL(count_policies(cm->snapshot, "global", "council"), 1);
        protobuf_c_message_free_unpacked(&cm->base, NULL);
    }
    CU_ASSERT(testenv_proc_alive(cp->proc));
    fake_close(&b);
    fake_close(&a);
}

/* A sidecar that goes silent is cut after three keepalive periods (3 s
 * here) and shown DISCONNECTED. */
/* A snapshot carries the principals and the masking key: a hello for a
 * domain nobody created is refused, and a stream that never says hello is
 * closed after three keepalive periods (found in review). */
static void test_unknown_domain_and_no_hello(void)
{
    fake f;
    ProtobufCMessage *msg = NULL;
    rpc_status rs = {0};
    polis_error err = {0};
    int rc;

    CU_ASSERT_FATAL(fake_open(&f, "fake-nodomain", "no-such-domain") == 0);
    rc = rpc_stream_recv(f.s, &msg, 5000);
    CU_ASSERT_EQUAL(rc, 0); /* ended, no snapshot */
    if (rc == 1)
        protobuf_c_message_free_unpacked(msg, NULL);
    CU_ASSERT_EQUAL(rpc_stream_status(f.s, &rs), RPC_FAILED_PRECONDITION);
    CU_ASSERT_PTR_NOT_NULL(strstr(rs.message, "does not exist"));
    fake_close(&f);

    memset(&f, 0, sizeof(f));
    f.ch = cpenv_channel(cp);
    CU_ASSERT_FATAL(f.ch != NULL &&
                    rpc_stream_open(f.ch, &polis__v1__distribution__descriptor,
                                    "Subscribe", NULL, 0, 0, &f.s, &err) == 0);
    rc = rpc_stream_recv(f.s, &msg, 8000); /* silence: no hello */
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rpc_stream_status(f.s, &rs), RPC_DEADLINE_EXCEEDED);
    CU_ASSERT_PTR_NOT_NULL(strstr(rs.message, "no hello"));
    fake_close(&f);
}

static void test_silent_sidecar_is_dropped(void)
{
    fake f;
    Polis__V1__ControlMessage *cm;
    rpc_status rs = {0};
    int64_t start, until, ended_after = -1;

    CU_ASSERT_FATAL(fake_open(&f, "fake-silent", "crm") == 0);
    cm = fake_snapshot(&f, 5000);
    CU_ASSERT_FATAL(cm != NULL);
    CU_ASSERT_EQUAL(fake_ack(&f, cm->snapshot), 0);
    protobuf_c_message_free_unpacked(&cm->base, NULL);
    start = now_ms();
    until = start + 8000;
    while (now_ms() < until) {
        ProtobufCMessage *msg = NULL;
        int rc = rpc_stream_recv(f.s, &msg, 200); /* no keepalive sent */

        if (rc == 1) {
            protobuf_c_message_free_unpacked(msg, NULL);
            continue;
        }
        if (rc == POLIS_ETIMEDOUT)
            continue;
        ended_after = now_ms() - start;
        break;
    }
    CU_ASSERT(ended_after >= 2500 && ended_after <= 6000);
    printf("(dropped after %lld ms) ", (long long)ended_after);
    CU_ASSERT_EQUAL(rpc_stream_status(f.s, &rs), RPC_UNAVAILABLE);
    CU_ASSERT_EQUAL(wait_status("fake-silent", "DISCONNECTED", 0,
                                STATUS_WAIT_MS, NULL, NULL, NULL),
                    0);
    fake_close(&f);
}

/* Sidecar ids starting with `prefix` in Governance.Sidecars whose latest
 * pushed revision is at least min_latest; -1 on error. */
static int count_listed(const char *prefix, int64_t min_latest)
{
    Polis__V1__SidecarsRequest req = POLIS__V1__SIDECARS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    Polis__V1__SidecarsResponse *r;
    int n = 0;

    if (rpc_unary(gov, &polis__v1__governance__descriptor, "Sidecars",
                  &req.base, &resp, NULL, 0, 5000, NULL) != RPC_OK)
        return -1;
    r = (Polis__V1__SidecarsResponse *)resp;
    for (size_t i = 0; i < r->n_sidecars; i++)
        if (strncmp(r->sidecars[i]->id, prefix, strlen(prefix)) == 0 &&
            r->sidecars[i]->latest_revision >= min_latest)
            n++;
    protobuf_c_message_free_unpacked(resp, NULL);
    return n;
}

/* Wait until all `want` fleet-* sidecars are listed with latest >= min. */
static int wait_listed(fake *fleet, int want, int64_t min_latest)
{
    int64_t until = now_ms() + STATUS_WAIT_MS;
    int listed = -1;

    while (now_ms() < until) {
        listed = count_listed("fleet-", min_latest);
        if (listed == want)
            break;
        for (int i = 0; i < want; i++)
            fake_keepalive(&fleet[i]);
        nap_ms(200);
    }
    if (listed != want)
        fprintf(stderr,
                "\nGovernance.Sidecars lists %d of %d connected sidecars "
                "with a push at revision >= %lld after %d ms\n",
                listed, want, (long long)min_latest, STATUS_WAIT_MS);
    return listed;
}

/* More sidecars than an etcd txn takes operations by default (128, etcd's
 * --max-txn-ops) are pushed a change at once: the status of every one is
 * written all the same. */
static void test_status_of_many_sidecars(void)
{
    enum { FLEET = 150 };
    static fake fleet[FLEET];
    char ids[FLEET][32];
    int opened = 0;
    int64_t rev;

    for (int i = 0; i < FLEET; i++) {
        snprintf(ids[i], sizeof(ids[i]), "fleet-%03d", i);
        if (fake_open(&fleet[i], ids[i], i % 2 ? "sales" : "crm") == 0)
            opened++;
    }
    CU_ASSERT_EQUAL(opened, FLEET);
    CU_ASSERT_EQUAL(wait_listed(fleet, FLEET, 0), FLEET);
    /* One global change: FLEET pushes, FLEET status records at once. */
    rev = apply_policy("fleet-change", "global", "r", "allow", "bob", "crm/*");
    CU_ASSERT(rev > 0);
    CU_ASSERT_EQUAL(wait_listed(fleet, FLEET, rev), FLEET);
    for (int i = 0; i < FLEET; i++)
        fake_close(&fleet[i]);
}

/* How often `needle` occurs in the control plane's log. */
static int log_count(const char *needle)
{
    char *log = testenv_file_tail(cp->log_path, 4 << 20);
    int n = 0;

    for (const char *p = log; p && (p = strstr(p, needle)); p++)
        n++;
    free(log);
    return n;
}

/*
 * Put v1 then v2 (Policy documents) straight into etcd where the control
 * plane's watch cannot follow: the control plane is stopped (SIGSTOP) with
 * its watch open, etcd restarts under it (the watch connection breaks), the
 * changes are written and etcd is compacted at the newest revision, so the
 * watch can only resume into a compacted revision and must resync.  The
 * control plane always gets SIGCONT.  The compacted revision, or -1.
 */
static int64_t compact_behind_controlplane(const char *name, const char *v1,
                                           const char *v2)
{
    char url[256], body[64];
    int64_t rev = -1;
    int ok = 1;

    if (testenv_proc_kill(cp->proc, SIGSTOP) != 0)
        return -1;
    ok &= testenv_etcd_restart(cp->etcd) == 0;
    ok &= etcd_put_record("policy/global", name, v1, NULL) == 0;
    ok &= etcd_put_record("policy/global", name, v2, &rev) == 0;
    snprintf(url, sizeof(url), "%s/v3/kv/compaction", cp->etcd->endpoint);
    snprintf(body, sizeof(body), "{\"revision\":\"%lld\"}", (long long)rev);
    ok &= rev > 0 && post_json(url, body) == 200;
    testenv_proc_kill(cp->proc, SIGCONT);
    return ok ? rev : -1;
}

static void test_compaction_resync_stream(void)
{
    fake f;
    Polis__V1__ControlMessage *cm;
    char *v1, *v2;
    int64_t rev, until;
    int seen_before, found = 0;

    v1 = policy_doc("compacted", "global", "first", "allow", "bob", "crm/*");
    v2 = policy_doc("compacted", "global", "final", "deny", "bob", "crm/*");
    CU_ASSERT_FATAL(v1 && v2);
    CU_ASSERT_FATAL(fake_open(&f, "fake-crm-2", "crm") == 0);
    cm = fake_snapshot(&f, 5000);
    CU_ASSERT_FATAL(cm != NULL);
    CU_ASSERT_EQUAL(fake_ack(&f, cm->snapshot), 0);
    protobuf_c_message_free_unpacked(&cm->base, NULL);
    seen_before = log_count("fell behind a compaction");

    rev = compact_behind_controlplane("compacted", v1, v2);
    CU_ASSERT(rev > 0);
    /* The stream may have been dropped while the control plane was
     * stopped (no keepalive for three periods): connect again, as a
     * sidecar does. */
    until = now_ms() + RECOVER_MS;
    while (rev > 0 && !found && now_ms() < until) {
        cm = fake_snapshot(&f, 3000);
        if (cm == NULL) {
            fake_close(&f);
            if (fake_open(&f, "fake-crm-2", "crm") != 0)
                nap_ms(200);
            continue;
        }
        if (cm->snapshot->revision >= rev) {
            for (size_t i = 0; i < cm->snapshot->n_resources; i++) {
                const Polis__V1__Resource *r = cm->snapshot->resources[i];
                if (strcmp(r->kind, "Policy") == 0 &&
                    strstr(r->document_json, "\"compacted\"")) {
                    found = strstr(r->document_json, "\"final\"") != NULL;
                    CU_ASSERT(strstr(r->document_json, "\"first\"") == NULL);
                }
            }
            CU_ASSERT(found);
            if (!found)
                fprintf(stderr, "\nsnapshot %lld lacks the final version\n",
                        (long long)cm->snapshot->revision);
            found = 1;
        }
        fake_ack(&f, cm->snapshot);
        protobuf_c_message_free_unpacked(&cm->base, NULL);
    }
    CU_ASSERT(found);
    CU_ASSERT(log_count("fell behind a compaction") > seen_before);
    fake_close(&f);
    etcd_del_record("policy/global", "compacted", NULL);
    free(v1);
    free(v2);
}

static void test_compaction_resync(void)
{
    char *v1, *v2;
    int64_t rev;
    int seen_before = log_count("fell behind a compaction");

    v1 = policy_doc("compacted", "global", "bob-crm", "allow", "bob", "crm/*");
    v2 = policy_doc("compacted", "global", "no-bob", "deny", "bob", "crm/*");
    CU_ASSERT_FATAL(v1 && v2);
    CU_ASSERT_FATAL(
        wait_decision(crm_sc, "bob", "crm/customers", 1, 0, PUSH_WAIT_MS) >= 0);

    rev = compact_behind_controlplane("compacted", v1, v2);
    CU_ASSERT_FATAL(rev > 0);
    CU_ASSERT(
        wait_decision(crm_sc, "bob", "crm/customers", 0, rev, RECOVER_MS) >= 0);
    CU_ASSERT(wait_decision(sales_sc, "alice", "sales/orders", 1, rev,
                            RECOVER_MS) >= 0);
    CU_ASSERT_EQUAL(
        wait_status("crm-1", "SYNCED", rev, STATUS_WAIT_MS, NULL, NULL, NULL),
        0);
    CU_ASSERT(log_count("fell behind a compaction") > seen_before);
    free(v1);
    free(v2);
}

static const test_case stream_cases[] = {
    {"domain_isolation", test_domain_isolation},
    {"nack_status", test_nack_status},
    {"hello_with_current_digest", test_hello_with_current_digest},
    {"silent_sidecar_is_dropped", test_silent_sidecar_is_dropped},
    {"unknown_domain_and_no_hello", test_unknown_domain_and_no_hello},
    {"compaction_resync", test_compaction_resync_stream},
    {"status_of_many_sidecars", test_status_of_many_sidecars},
    /* Last: under ASan the bug it shows kills the control plane. */
    {"unchanged_rewrite_then_hello", test_unchanged_rewrite_then_hello},
    {NULL, NULL},
};

static const test_case sidecar_cases[] = {
    {"policy_reaches_domain_only", test_policy_reaches_domain_only},
    {"nack_keeps_old_snapshot", test_nack_keeps_old_snapshot},
    {"controlplane_crash", test_controlplane_crash},
    {"compaction_resync", test_compaction_resync},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"stream", stream_init, stop_controlplane, stream_cases},
    {"sidecar", sidecar_init, sidecar_cleanup, sidecar_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
