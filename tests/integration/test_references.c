/*
 * test_references.c — references between resources hold under concurrent
 * writers: a DataProduct applied while its domain is being deleted either
 * finds the domain or fails, and a domain is never deleted from under a
 * product written meanwhile.  Real control plane, real etcd; the check
 * reads etcd directly, in one consistent read.
 */
#include "common/etcd.h"
#include "common/rpc.h"
#include "polis/v1/governance.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/testutil.h"

#include <CUnit/CUnit.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CALL_TIMEOUT_MS 10000
/* How long the writers race; enough for a few hundred rounds each. */
#define RACE_MS 4000

static cpenv *cp;
static etcd_client *etcd;

static const char *const domain_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":"
    "{\"name\":\"race\"},\"spec\":{\"owners\":[\"r@example.com\"]}}";

static const char *const product_doc =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\",\"metadata\":"
    "{\"name\":\"runner\"},\"spec\":{\"domain\":\"race\",\"ports\":["
    "{\"name\":\"e\",\"type\":\"event\"}],\"schema\":["
    "{\"name\":\"id\",\"type\":\"integer\"}]}}";

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Apply one document: the gRPC status code, the message in st. */
static int apply_doc(rpc_channel *ch, const char *doc, rpc_status *st)
{
    Polis__V1__ApplyRequest req = POLIS__V1__APPLY_REQUEST__INIT;
    Polis__V1__Document d = POLIS__V1__DOCUMENT__INIT, *dp = &d;
    ProtobufCMessage *resp = NULL;
    int code;

    d.source = "doc";
    d.json = (char *)doc;
    req.documents = &dp;
    req.n_documents = 1;
    code = rpc_unary(ch, &polis__v1__governance__descriptor, "Apply", &req.base,
                     &resp, NULL, 0, CALL_TIMEOUT_MS, st);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

static int delete_res(rpc_channel *ch, const char *kind, const char *scope,
                      const char *name, rpc_status *st)
{
    Polis__V1__DeleteRequest req = POLIS__V1__DELETE_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int code;

    req.kind = (char *)kind;
    req.scope = (char *)scope;
    req.name = (char *)name;
    code = rpc_unary(ch, &polis__v1__governance__descriptor, "Delete",
                     &req.base, &resp, NULL, 0, CALL_TIMEOUT_MS, st);
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

/*
 * In one etcd read (one revision): does the product exist, and its domain?
 * 0, or -1 when etcd could not be read.
 */
static int read_pair(bool *product, bool *domain)
{
    etcd_op ops[2] = {
        {.type = ETCD_OP_RANGE,
         .key = "/polis/resources/dataproduct/race/runner",
         .count_only = true},
        {.type = ETCD_OP_RANGE,
         .key = "/polis/resources/domain/global/race",
         .count_only = true},
    };
    etcd_txn_result r = {0};
    polis_error err = {0};
    int rc = etcd_txn(etcd, NULL, 0, ops, 2, NULL, 0, &r, &err);

    if (rc == 0 && r.n_responses == 2) {
        *product = r.responses[0].count > 0;
        *domain = r.responses[1].count > 0;
    } else {
        rc = -1;
    }
    etcd_txn_result_free(&r);
    return rc;
}

typedef struct race {
    atomic_bool stop;
    atomic_int orphans; /* reads that saw the product without its domain */
    atomic_int reads;
    atomic_int products; /* product applies that succeeded */
    atomic_int domains;  /* domain deletes that succeeded */
    atomic_int refused;  /* writes refused for a reference */
    atomic_int unexpected;
    char unexpected_msg[256];
} race;

/* Note a refusal: one for the reference is expected, anything else not. */
static void refusal(race *r, int code, const rpc_status *st, const char *what)
{
    bool reference =
        (code == RPC_INVALID_ARGUMENT && strstr(st->message, "\"race\"")) ||
        (code == RPC_FAILED_PRECONDITION && strstr(st->message, "still has")) ||
        (code == RPC_ABORTED && strstr(st->message, "meanwhile")) ||
        code == RPC_NOT_FOUND;

    if (reference) {
        atomic_fetch_add(&r->refused, 1);
        return;
    }
    if (atomic_fetch_add(&r->unexpected, 1) == 0)
        snprintf(r->unexpected_msg, sizeof(r->unexpected_msg), "%s: %s: %s",
                 what, rpc_status_name(code), st->message);
}

/* Creates and deletes the domain, over and over. */
static void *domain_writer(void *arg)
{
    race *r = arg;
    rpc_channel *ch = cpenv_channel(cp);

    while (ch && !atomic_load(&r->stop)) {
        rpc_status st = {0};
        int code = apply_doc(ch, domain_doc, &st);

        if (code != RPC_OK)
            refusal(r, code, &st, "apply domain");
        code = delete_res(ch, "Domain", "", "race", &st);
        if (code == RPC_OK)
            atomic_fetch_add(&r->domains, 1);
        else
            refusal(r, code, &st, "delete domain");
    }
    rpc_channel_free(ch);
    return NULL;
}

/* Creates and deletes a product of the domain, over and over. */
static void *product_writer(void *arg)
{
    race *r = arg;
    rpc_channel *ch = cpenv_channel(cp);

    while (ch && !atomic_load(&r->stop)) {
        rpc_status st = {0};
        int code = apply_doc(ch, product_doc, &st);

        if (code == RPC_OK) {
            atomic_fetch_add(&r->products, 1);
            code = delete_res(ch, "DataProduct", "race", "runner", &st);
            if (code != RPC_OK)
                refusal(r, code, &st, "delete product");
        } else {
            refusal(r, code, &st, "apply product");
        }
    }
    rpc_channel_free(ch);
    return NULL;
}

/* Watches etcd for the state the guards rule out. */
static void *checker(void *arg)
{
    race *r = arg;

    while (!atomic_load(&r->stop)) {
        bool product = false, domain = false;

        if (read_pair(&product, &domain) == 0) {
            atomic_fetch_add(&r->reads, 1);
            if (product && !domain)
                atomic_fetch_add(&r->orphans, 1);
        }
        usleep(500);
    }
    return NULL;
}

static void test_domain_delete_races_product_apply(void)
{
    race r = {0};
    pthread_t t[4];
    bool product = false, domain = false;
    int64_t until = mono_ms() + RACE_MS;

    CU_ASSERT_FATAL(pthread_create(&t[0], NULL, domain_writer, &r) == 0);
    CU_ASSERT_FATAL(pthread_create(&t[1], NULL, product_writer, &r) == 0);
    CU_ASSERT_FATAL(pthread_create(&t[2], NULL, product_writer, &r) == 0);
    CU_ASSERT_FATAL(pthread_create(&t[3], NULL, checker, &r) == 0);
    while (mono_ms() < until)
        usleep(50 * 1000);
    atomic_store(&r.stop, true);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    printf("\n    %d product applies, %d domain deletes, %d refused for a "
           "reference, %d consistent reads, %d orphans\n",
           atomic_load(&r.products), atomic_load(&r.domains),
           atomic_load(&r.refused), atomic_load(&r.reads),
           atomic_load(&r.orphans));
    if (atomic_load(&r.unexpected))
        printf("    first unexpected refusal: %s\n", r.unexpected_msg);
    CU_ASSERT_EQUAL(atomic_load(&r.unexpected), 0);
    /* Both writers made progress, so the race was run... */
    CU_ASSERT(atomic_load(&r.products) > 10);
    CU_ASSERT(atomic_load(&r.domains) > 10);
    CU_ASSERT(atomic_load(&r.reads) > 100);
    /* ...and no read ever saw a product whose domain was gone. */
    CU_ASSERT_EQUAL(atomic_load(&r.orphans), 0);
    CU_ASSERT_EQUAL(read_pair(&product, &domain), 0);
    CU_ASSERT(!product || domain);
}

static int suite_init(void)
{
    static const char *const args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = args};
    etcd_options eo = {0};
    polis_error err = {0};

    cp = cpenv_start(&o);
    if (cp == NULL)
        return -1;
    eo.endpoints = cp->etcd_endpoints;
    eo.timeout_ms = 5000;
    if (etcd_client_new(&eo, &etcd, &err) != 0) {
        fprintf(stderr, "etcd client: %s\n", err.message);
        return -1;
    }
    return 0;
}

static int suite_cleanup(void)
{
    etcd_client_free(etcd);
    etcd = NULL;
    cpenv_stop(cp);
    cp = NULL;
    return 0;
}

static const test_case cases[] = {
    {"domain delete races product apply",
     test_domain_delete_races_product_apply},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"references", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
