/*
 * test_sidecar.c — polis-sidecar with real processes on loopback: alone (no
 * control plane reachable: not ready, denies everything, the HTTP API's
 * errors), then beside etcd and polis-controlplane: a snapshot arrives, an
 * applied Policy changes the answer of POST /v1/check and gRPC
 * Authorizer.Check (the time it took is printed), bearer tokens
 * authenticate, and the last good snapshot is on disk.
 */
#include "common/rpc.h"
#include "polis/v1/authorizer.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* A bound on the wait for a pushed change, not its expected time (that is
 * printed): CI runs this under ASan beside other tests on 2 cores. */
#define APPLY_WAIT_MS 10000
#define ALICE_TOKEN   "alice-token-0123456789"

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

static int allowed(const json_t *ans)
{
    return json_is_true(json_object_get(ans, "allowed"));
}

/* ======================= suite "alone": no control plane ================ */

static sidecarenv *lone;

static int alone_init(void)
{
    char cp[64];
    sidecarenv_options o = {.domain = "sales", .id = "lone-sales"};

    /* A free port nobody listens on: the control plane is unreachable. */
    snprintf(cp, sizeof(cp), "127.0.0.1:%d", testenv_refused_port());
    o.controlplane = cp;
    lone = sidecarenv_start(&o);
    return lone ? 0 : -1;
}

static int alone_cleanup(void)
{
    sidecarenv_free(lone);
    lone = NULL;
    return 0;
}

static void test_no_snapshot_not_ready_and_denies(void)
{
    json_t *ans = NULL;
    double v = -1;

    CU_ASSERT_EQUAL(sidecarenv_readyz(lone, 2000), 503);
    CU_ASSERT_EQUAL(sidecarenv_check(lone,
                                     "{\"principal\":\"alice\",\"product\":"
                                     "\"sales/orders\",\"port\":\"query\"}",
                                     &ans, 2000),
                    200);
    CU_ASSERT_FATAL(ans != NULL);
    CU_ASSERT(!allowed(ans));
    CU_ASSERT_STRING_EQUAL(jstr(ans, "reason"), "no snapshot");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(ans, "revision")), 0);
    json_decref(ans);
    CU_ASSERT_EQUAL(sidecarenv_metric(lone, "polis_sidecar_connected", &v), 0);
    CU_ASSERT_EQUAL(v, 0);
    CU_ASSERT_EQUAL(
        sidecarenv_metric(lone, "polis_sidecar_checks_total{decision=\"deny\"}",
                          &v),
        0);
    CU_ASSERT(v >= 1);
}

/* A bad request is a 400 with {"error","detail"}; detail holds `needle`. */
static void expect_400(const char *body, const char *needle)
{
    json_t *ans = NULL;
    long st = sidecarenv_check(lone, body, &ans, 2000);

    CU_ASSERT_EQUAL(st, 400);
    CU_ASSERT(ans != NULL && json_is_string(json_object_get(ans, "error")));
    if (strstr(jstr(ans, "detail"), needle) == NULL) {
        fprintf(stderr, "\n%s -> HTTP %ld, detail \"%s\" lacks \"%s\"\n", body,
                st, jstr(ans, "detail"), needle);
        CU_FAIL("detail");
    }
    json_decref(ans);
}

static void test_bad_requests(void)
{
    char *big;
    size_t n = 70 * 1024;

    expect_400("{\"principal\": ", "line 1");
    expect_400("[1,2]", "object");
    expect_400("{\"principal\":\"alice\",\"port\":\"query\"}", "product");
    expect_400("{\"principal\":\"alice\",\"product\":\"sales/orders\","
               "\"port\":\"carrier-pigeon\"}",
               "unknown port");
    expect_400("{\"principal\":\"alice\",\"product\":\"crm/customers\"}",
               "product crm/customers is not served by this sidecar (domain "
               "sales)");
    expect_400("{\"product\":\"sales/orders\"}", "principal");
    expect_400("{\"principal\":7,\"product\":\"sales/orders\"}", "principal");
    expect_400("{\"principal\":\"a\",\"product\":\"sales/orders\","
               "\"colour\":\"red\"}",
               "colour");
    big = malloc(n + 1);
    CU_ASSERT_FATAL(big != NULL);
    memset(big, ' ', n);
    memcpy(big, "{\"principal\":\"alice\",", 21);
    big[n - 1] = '}';
    big[n] = '\0';
    expect_400(big, "at most 65536");
    free(big);
}

static void test_paths_and_methods(void)
{
    char url[128], body[256];

    snprintf(url, sizeof(url), "%s/v1/nothing", lone->http_url);
    CU_ASSERT_EQUAL(cpenv_http_get(url, 2000, body, sizeof(body)), 404);
    snprintf(url, sizeof(url), "%s/v1/check", lone->http_url);
    CU_ASSERT_EQUAL(cpenv_http_get(url, 2000, body, sizeof(body)), 405);
    snprintf(url, sizeof(url), "%s/healthz", lone->admin_url);
    CU_ASSERT_EQUAL(cpenv_http_get(url, 2000, body, sizeof(body)), 200);
    snprintf(url, sizeof(url), "%s/readyz", lone->admin_url);
    CU_ASSERT_EQUAL(cpenv_http_get(url, 2000, body, sizeof(body)), 503);
    CU_ASSERT(strstr(body, "no snapshot yet: denying every request") != NULL);
}

static void test_grpc_without_snapshot(void)
{
    Polis__V1__CheckRequest req = POLIS__V1__CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    rpc_channel *ch = NULL;
    rpc_status st = {0};
    polis_error err = {0};

    CU_ASSERT_FATAL(rpc_channel_new(lone->grpc_target, NULL, &ch, &err) == 0);
    req.principal = "alice";
    req.product = "sales/orders";
    CU_ASSERT_EQUAL(rpc_unary(ch, &polis__v1__authorizer__descriptor, "Check",
                              &req.base, &resp, NULL, 0, 5000, &st),
                    RPC_OK);
    CU_ASSERT(resp && !((Polis__V1__CheckResponse *)resp)->allowed);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    resp = NULL;
    req.product = "crm/customers";
    CU_ASSERT_EQUAL(rpc_unary(ch, &polis__v1__authorizer__descriptor, "Check",
                              &req.base, &resp, NULL, 0, 5000, &st),
                    RPC_INVALID_ARGUMENT);
    CU_ASSERT(strstr(st.message, "not served by this sidecar") != NULL);
    rpc_channel_free(ch);
}

/* ================== suite "mesh": etcd + control plane ================== */

static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;

static int mesh_cleanup(void)
{
    sidecarenv_free(sc);
    sc = NULL;
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    return 0;
}

static int mesh_init(void)
{
    static const char *const args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = args};
    sidecarenv_options so = {.domain = "sales", .id = "sales-test-1"};

    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto fail;
    so.controlplane = cp->grpc_target;
    sc = sidecarenv_start(&so);
    if (sc == NULL)
        goto fail;
    return 0;
fail:
    mesh_cleanup();
    return -1;
}

static json_t *check_http(const char *who_field, const char *who)
{
    char req[512];
    json_t *ans = NULL;
    long st;

    snprintf(req, sizeof(req),
             "{\"%s\":\"%s\",\"product\":\"sales/orders\",\"port\":\"query\","
             "\"purpose\":\"analytics\"}",
             who_field, who);
    st = sidecarenv_check(sc, req, &ans, 2000);
    if (st != 200) {
        fprintf(stderr, "\nPOST /v1/check %s -> %ld\n", req, st);
        json_decref(ans);
        return NULL;
    }
    return ans;
}

static void test_snapshot_then_apply_changes_answer(void)
{
    char state[800];
    json_t *ans = NULL;
    int64_t rev, start, took = -1;
    double v = -1;
    struct stat stt;

    CU_ASSERT_FATAL(gc_apply(gov,
                             "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                             "\"metadata\":{\"name\":\"sales\"},\"spec\":{"
                             "\"owners\":[\"sales@example.com\"]}}") > 0);
    CU_ASSERT_FATAL(
        gc_apply(gov,
                 "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
                 "\"metadata\":{\"name\":\"orders\"},\"spec\":{\"domain\":"
                 "\"sales\",\"ports\":[{\"name\":\"sql\",\"type\":\"query\","
                 "\"engine\":\"sqlite\",\"database\":\"o.db\",\"table\":"
                 "\"orders\"}],\"schema\":[{\"name\":\"order_id\",\"type\":"
                 "\"integer\"},{\"name\":\"email\",\"type\":\"string\","
                 "\"classification\":[\"pii.email\"]}]}}") > 0);
    rev = gc_apply_principal(gov, "alice", "analysts", "EU", ALICE_TOKEN);
    CU_ASSERT_FATAL(rev > 0);

    /* Principal and product known, no policy yet: default deny. */
    start = now_ms();
    do {
        json_decref(ans);
        ans = check_http("principal", "alice");
        if (ans && json_integer_value(json_object_get(ans, "revision")) >= rev)
            break;
        nap_ms(20);
    } while (now_ms() - start < APPLY_WAIT_MS);
    CU_ASSERT_FATAL(ans != NULL);
    CU_ASSERT(json_integer_value(json_object_get(ans, "revision")) >= rev);
    CU_ASSERT(!allowed(ans));
    CU_ASSERT_STRING_EQUAL(jstr(ans, "reason"), "default-deny");
    json_decref(ans);
    CU_ASSERT_EQUAL(sidecarenv_readyz(sc, 2000), 200);

    rev = gc_apply(
        gov, "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
             "\"metadata\":{\"name\":\"analysts\"},\"spec\":{\"scope\":"
             "\"global\",\"rules\":[{\"name\":\"read-sales\",\"effect\":"
             "\"allow\",\"subjects\":[\"group:analysts\"],\"resources\":"
             "[\"sales/*\"]},{\"name\":\"hash-email\",\"effect\":\"mask\","
             "\"subjects\":[\"*\"],\"resources\":[\"*\"],\"mask\":{"
             "\"method\":\"hash\",\"classifications\":[\"pii.email\"]}}]}}");
    CU_ASSERT_FATAL(rev > 0);
    start = now_ms();
    ans = NULL;
    do {
        json_decref(ans);
        ans = check_http("principal", "alice");
        if (ans && allowed(ans)) {
            took = now_ms() - start;
            break;
        }
        nap_ms(20);
    } while (now_ms() - start < APPLY_WAIT_MS);
    printf("(allowed %lld ms after the apply) ", (long long)took);
    CU_ASSERT_FATAL(ans != NULL && took >= 0);
    CU_ASSERT_STRING_EQUAL(jstr(ans, "reason"), "allowed");
    CU_ASSERT_STRING_EQUAL(jstr(ans, "decidingRule"),
                           "global/analysts/read-sales");
    CU_ASSERT_STRING_EQUAL(jstr(ans, "principal"), "alice");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(ans, "revision")), rev);
    {
        json_t *m = json_array_get(json_object_get(ans, "masks"), 0);
        CU_ASSERT_EQUAL(json_array_size(json_object_get(ans, "masks")), 1);
        CU_ASSERT_STRING_EQUAL(jstr(m, "column"), "email");
        CU_ASSERT_STRING_EQUAL(jstr(m, "method"), "hash");
        CU_ASSERT_STRING_EQUAL(jstr(m, "classification"), "pii.email");
    }
    json_decref(ans);

    CU_ASSERT_EQUAL(
        sidecarenv_metric(sc, "polis_sidecar_snapshot_revision", &v), 0);
    CU_ASSERT_EQUAL((int64_t)v, rev);
    CU_ASSERT_EQUAL(sidecarenv_metric(sc, "polis_sidecar_connected", &v), 0);
    CU_ASSERT_EQUAL(v, 1);
    snprintf(state, sizeof(state), "%s/snapshot.pb", sc->state_dir);
    CU_ASSERT(stat(state, &stt) == 0 && stt.st_size > 0);
}

static void test_tokens_and_unknown_principal(void)
{
    json_t *ans = check_http("token", ALICE_TOKEN);

    CU_ASSERT_FATAL(ans != NULL);
    CU_ASSERT(allowed(ans));
    CU_ASSERT_STRING_EQUAL(jstr(ans, "principal"), "alice");
    json_decref(ans);

    ans = check_http("token", "not-a-token-anyone-has");
    CU_ASSERT_FATAL(ans != NULL);
    CU_ASSERT(!allowed(ans));
    CU_ASSERT_STRING_EQUAL(jstr(ans, "reason"), "unauthenticated");
    CU_ASSERT_STRING_EQUAL(jstr(ans, "principal"), "");
    json_decref(ans);

    ans = check_http("principal", "mallory");
    CU_ASSERT_FATAL(ans != NULL);
    CU_ASSERT(!allowed(ans));
    CU_ASSERT_STRING_EQUAL(jstr(ans, "reason"), "unknown principal");
    json_decref(ans);
}

static void test_grpc_agrees(void)
{
    Polis__V1__CheckRequest req = POLIS__V1__CHECK_REQUEST__INIT;
    Polis__V1__CheckResponse *r;
    ProtobufCMessage *resp = NULL;
    rpc_channel *ch = NULL;
    rpc_status st = {0};
    polis_error err = {0};
    json_t *http = check_http("principal", "alice");

    CU_ASSERT_FATAL(http != NULL);
    CU_ASSERT_FATAL(rpc_channel_new(sc->grpc_target, NULL, &ch, &err) == 0);
    req.principal = "alice";
    req.product = "sales/orders";
    req.port = "query";
    req.purpose = "analytics";
    req.explain = true; /* decision_json is asserted below */
    CU_ASSERT_EQUAL_FATAL(rpc_unary(ch, &polis__v1__authorizer__descriptor,
                                    "Check", &req.base, &resp, NULL, 0, 5000,
                                    &st),
                          RPC_OK);
    r = (Polis__V1__CheckResponse *)resp;
    CU_ASSERT(r->allowed);
    CU_ASSERT_EQUAL(r->allowed, allowed(http));
    CU_ASSERT_STRING_EQUAL(r->deciding_rule, jstr(http, "decidingRule"));
    CU_ASSERT_EQUAL(r->revision,
                    json_integer_value(json_object_get(http, "revision")));
    CU_ASSERT_EQUAL(r->n_masks, 1);
    CU_ASSERT(r->decision_json && r->decision_json[0] == '{');
    protobuf_c_message_free_unpacked(resp, NULL);
    resp = NULL;

    req.principal = NULL;
    req.token = "wrong";
    CU_ASSERT_EQUAL(rpc_unary(ch, &polis__v1__authorizer__descriptor, "Check",
                              &req.base, &resp, NULL, 0, 5000, &st),
                    RPC_OK);
    r = (Polis__V1__CheckResponse *)resp;
    CU_ASSERT(r && !r->allowed);
    CU_ASSERT(r && strcmp(r->reason, "unauthenticated") == 0);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    rpc_channel_free(ch);
    json_decref(http);
}

static const test_case alone_cases[] = {
    {"no_snapshot_not_ready_and_denies", test_no_snapshot_not_ready_and_denies},
    {"bad_requests", test_bad_requests},
    {"paths_and_methods", test_paths_and_methods},
    {"grpc_without_snapshot", test_grpc_without_snapshot},
    {NULL, NULL},
};

static const test_case mesh_cases[] = {
    {"snapshot_then_apply_changes_answer",
     test_snapshot_then_apply_changes_answer},
    {"tokens_and_unknown_principal", test_tokens_and_unknown_principal},
    {"grpc_agrees", test_grpc_agrees},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"alone", alone_init, alone_cleanup, alone_cases},
    {"mesh", mesh_init, mesh_cleanup, mesh_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
