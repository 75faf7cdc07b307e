/*
 * test_etcd.c — the etcd client (common/etcd.h) and the etcd process
 * manager (common/etcd_server.h) against a real etcd 3.4 on free loopback
 * ports in a temp dir: reads, writes, txns, leases, watches across
 * restarts and compaction, failover, errors.
 */
#include "common/etcd.h"
#include "common/etcd_server.h"
#include "tests/support/testenv.h"
#include "tests/support/testutil.h"

#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The etcd most tests share; tests that restart or stop etcd start their
 * own. */
static testenv_etcd *shared;

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

static etcd_client *client_for(const char *endpoints, int timeout_ms)
{
    etcd_options o = {0};
    etcd_client *c = NULL;
    polis_error err = {0};
    char buf[1024];

    o.endpoints = endpoints;
    o.timeout_ms = timeout_ms;
    o.connect_timeout_ms = 500;
    if (etcd_client_new(&o, &c, &err) != POLIS_OK)
        fprintf(stderr, "client: %s\n",
                polis_error_format(&err, buf, sizeof(buf)));
    return c;
}

static void print_err(const char *what, const polis_error *err)
{
    char buf[1024];

    fprintf(stderr, "%s: %s [%s]\n", what,
            polis_error_format(err, buf, sizeof(buf)),
            polis_errname(err->code));
}

static int put_str(etcd_client *c, const char *k, const char *v, int64_t *rev)
{
    polis_error err = {0};
    int rc = etcd_put(c, k, v, strlen(v), 0, rev, &err);

    if (rc != POLIS_OK)
        print_err(k, &err);
    return rc;
}

static int suite_init(void)
{
    shared = testenv_etcd_start(NULL);
    return shared ? 0 : 1;
}

static int suite_cleanup(void)
{
    testenv_etcd_stop(shared);
    shared = NULL;
    return 0;
}

/* ---- key-value ---- */

static void test_put_get_range(void)
{
    etcd_client *c = client_for(shared->endpoint, 5000);
    etcd_range_result r = {0};
    etcd_range_opts o = {0};
    polis_error err = {0};
    int64_t rev1 = 0, rev2 = 0, deleted = 0;
    char key[32], val[32];

    CU_ASSERT_FATAL(c != NULL);
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "kv/a/%d", i);
        snprintf(val, sizeof(val), "value-%d", i);
        CU_ASSERT_EQUAL(put_str(c, key, val, &rev1), POLIS_OK);
    }
    CU_ASSERT_EQUAL(put_str(c, "kv/b", "other", NULL), POLIS_OK);

    /* single key, with the revisions of a first write */
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/4", NULL, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL_FATAL(r.n, 1);
    CU_ASSERT_STRING_EQUAL(r.kvs[0].key, "kv/a/4");
    CU_ASSERT_STRING_EQUAL(r.kvs[0].value, "value-4");
    CU_ASSERT_EQUAL(r.kvs[0].value_len, 7);
    CU_ASSERT_EQUAL(r.kvs[0].mod_revision, rev1);
    CU_ASSERT_EQUAL(r.kvs[0].create_revision, rev1);
    CU_ASSERT_EQUAL(r.kvs[0].version, 1);
    CU_ASSERT(r.revision >= rev1);
    etcd_range_result_free(&r);

    /* a missing key is not an error */
    CU_ASSERT_EQUAL(etcd_range(c, "kv/missing", NULL, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 0);
    CU_ASSERT_EQUAL(r.count, 0);
    etcd_range_result_free(&r);

    /* prefix: the five kv/a/ keys in order, not kv/b */
    o.prefix = true;
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/", &o, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL_FATAL(r.n, 5);
    CU_ASSERT_EQUAL(r.count, 5);
    CU_ASSERT_FALSE(r.more);
    CU_ASSERT_STRING_EQUAL(r.kvs[0].key, "kv/a/0");
    CU_ASSERT_STRING_EQUAL(r.kvs[4].value, "value-4");
    etcd_range_result_free(&r);

    /* limit: 2 of 5, more */
    o.limit = 2;
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/", &o, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 2);
    CU_ASSERT_EQUAL(r.count, 5);
    CU_ASSERT_TRUE(r.more);
    etcd_range_result_free(&r);

    /* count only */
    o.limit = 0;
    o.count_only = true;
    CU_ASSERT_EQUAL(etcd_range(c, "kv/", &o, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 0);
    CU_ASSERT_EQUAL(r.count, 6);
    etcd_range_result_free(&r);

    /* keys only: keys, no values */
    o.count_only = false;
    o.keys_only = true;
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/", &o, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL_FATAL(r.n, 5);
    CU_ASSERT_STRING_EQUAL(r.kvs[2].key, "kv/a/2");
    CU_ASSERT_EQUAL(r.kvs[2].value_len, 0);
    etcd_range_result_free(&r);

    /* explicit range [kv/a/1, kv/a/3) */
    memset(&o, 0, sizeof(o));
    o.range_end = "kv/a/3";
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/1", &o, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 2);
    etcd_range_result_free(&r);

    /* overwrite, then read the old value at its revision */
    CU_ASSERT_EQUAL(put_str(c, "kv/a/4", "new", &rev2), POLIS_OK);
    CU_ASSERT(rev2 > rev1);
    memset(&o, 0, sizeof(o));
    o.revision = rev1;
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/4", &o, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL_FATAL(r.n, 1);
    CU_ASSERT_STRING_EQUAL(r.kvs[0].value, "value-4");
    etcd_range_result_free(&r);
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/4", NULL, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL_FATAL(r.n, 1);
    CU_ASSERT_STRING_EQUAL(r.kvs[0].value, "new");
    CU_ASSERT_EQUAL(r.kvs[0].version, 2);
    etcd_range_result_free(&r);

    /* serializable read answers too */
    o.revision = 0;
    o.serializable = true;
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/4", &o, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 1);
    etcd_range_result_free(&r);

    /* binary value with a NUL inside survives base64 both ways */
    CU_ASSERT_EQUAL(etcd_put(c, "kv/bin",
                             "a\0\xff"
                             "b",
                             4, 0, NULL, &err),
                    POLIS_OK);
    CU_ASSERT_EQUAL(etcd_range(c, "kv/bin", NULL, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL_FATAL(r.n, 1);
    CU_ASSERT_EQUAL(r.kvs[0].value_len, 4);
    CU_ASSERT(memcmp(r.kvs[0].value,
                     "a\0\xff"
                     "b",
                     4) == 0);
    etcd_range_result_free(&r);

    /* delete prefix */
    CU_ASSERT_EQUAL(etcd_delete(c, "kv/a/", true, &deleted, NULL, &err),
                    POLIS_OK);
    CU_ASSERT_EQUAL(deleted, 5);
    o.serializable = false;
    o.prefix = true;
    CU_ASSERT_EQUAL(etcd_range(c, "kv/a/", &o, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 0);
    etcd_range_result_free(&r);
    CU_ASSERT_EQUAL(etcd_range(c, "kv/b", NULL, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 1);
    etcd_range_result_free(&r);
    CU_ASSERT_EQUAL(etcd_delete(c, "kv/b", false, &deleted, NULL, &err),
                    POLIS_OK);
    CU_ASSERT_EQUAL(deleted, 1);
    etcd_client_free(c);
}

static void test_bad_request(void)
{
    etcd_client *c = client_for(shared->endpoint, 5000);
    etcd_range_opts o = {0};
    etcd_range_result r = {0};
    polis_error err = {0};

    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(etcd_put(c, "", "x", 1, 0, NULL, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "key is not provided"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, shared->endpoint));

    /* a revision in the future */
    polis_error_clear(&err);
    o.revision = 1000000000;
    CU_ASSERT_EQUAL(etcd_range(c, "x", &o, &r, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "future revision"));

    /* a lease that does not exist */
    polis_error_clear(&err);
    CU_ASSERT_EQUAL(etcd_put(c, "kv/leased", "x", 1, 12345, NULL, &err),
                    POLIS_ENOTFOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "lease not found"));
    etcd_client_free(c);
}

/* ---- transactions ---- */

static void test_txn(void)
{
    etcd_client *c = client_for(shared->endpoint, 5000);
    polis_error err = {0};
    etcd_txn_result t = {0};
    int64_t rev = 0;

    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(put_str(c, "txn/k", "v1", &rev), POLIS_OK);

    /* compare-and-swap on mod revision succeeds once... */
    etcd_compare cmp = {.key = "txn/k",
                        .target = ETCD_CMP_MOD,
                        .op = ETCD_CMP_EQUAL,
                        .number = rev};
    etcd_op put = {
        .type = ETCD_OP_PUT, .key = "txn/k", .value = "v2", .value_len = 2};
    etcd_op get = {.type = ETCD_OP_RANGE, .key = "txn/k"};
    CU_ASSERT_EQUAL(etcd_txn(c, &cmp, 1, &put, 1, &get, 1, &t, &err), POLIS_OK);
    CU_ASSERT_TRUE(t.succeeded);
    CU_ASSERT(t.revision > rev);
    CU_ASSERT_EQUAL(t.n_responses, 1);
    etcd_txn_result_free(&t);

    /* ...and the same compare now fails: the failure branch ran and its
     * range shows the current value */
    CU_ASSERT_EQUAL(etcd_txn(c, &cmp, 1, &put, 1, &get, 1, &t, &err), POLIS_OK);
    CU_ASSERT_FALSE(t.succeeded);
    CU_ASSERT_EQUAL_FATAL(t.n_responses, 1);
    CU_ASSERT_EQUAL_FATAL(t.responses[0].n, 1);
    CU_ASSERT_STRING_EQUAL(t.responses[0].kvs[0].value, "v2");
    etcd_txn_result_free(&t);

    /* create-if-absent: first wins, second sees the key */
    etcd_compare absent = {.key = "txn/new",
                           .target = ETCD_CMP_CREATE,
                           .op = ETCD_CMP_EQUAL,
                           .number = 0};
    etcd_op create = {
        .type = ETCD_OP_PUT, .key = "txn/new", .value = "one", .value_len = 3};
    etcd_op create2 = create;
    create2.value = "two";
    CU_ASSERT_EQUAL(etcd_txn(c, &absent, 1, &create, 1, NULL, 0, &t, &err),
                    POLIS_OK);
    CU_ASSERT_TRUE(t.succeeded);
    etcd_txn_result_free(&t);
    CU_ASSERT_EQUAL(etcd_txn(c, &absent, 1, &create2, 1, &get, 1, &t, &err),
                    POLIS_OK);
    CU_ASSERT_FALSE(t.succeeded);
    etcd_txn_result_free(&t);

    /* compare on value and version; several ops incl. delete prefix */
    etcd_compare two[2] = {
        {.key = "txn/new",
         .target = ETCD_CMP_VALUE,
         .op = ETCD_CMP_EQUAL,
         .value = "one",
         .value_len = 3},
        {.key = "txn/new",
         .target = ETCD_CMP_VERSION,
         .op = ETCD_CMP_LESS,
         .number = 2},
    };
    etcd_op ops[2] = {
        {.type = ETCD_OP_DELETE, .key = "txn/", .prefix = true},
        {.type = ETCD_OP_RANGE, .key = "txn/", .prefix = true},
    };
    CU_ASSERT_EQUAL(etcd_txn(c, two, 2, ops, 2, NULL, 0, &t, &err), POLIS_OK);
    CU_ASSERT_TRUE(t.succeeded);
    CU_ASSERT_EQUAL_FATAL(t.n_responses, 2);
    CU_ASSERT_EQUAL(t.responses[0].n, 0);
    CU_ASSERT_EQUAL(t.responses[1].n, 0); /* deleted before the range */
    etcd_txn_result_free(&t);
    etcd_client_free(c);
}

/* ---- leases ---- */

static void test_lease_expiry_and_keepalive(void)
{
    etcd_client *c = client_for(shared->endpoint, 5000);
    polis_error err = {0};
    etcd_range_result r = {0};
    int64_t id = 0, ttl = 0, t0;
    int gone_after_ms = -1;

    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL_FATAL(etcd_lease_grant(c, 2, &id, &err), POLIS_OK);
    CU_ASSERT(id != 0);
    CU_ASSERT_EQUAL(etcd_put(c, "lease/k", "v", 1, id, NULL, &err), POLIS_OK);

    /* kept alive for 3.5 s, longer than the TTL: still there */
    t0 = mono_ms();
    while (mono_ms() - t0 < 3500) {
        CU_ASSERT_EQUAL(etcd_lease_keepalive(c, id, &ttl, &err), POLIS_OK);
        CU_ASSERT(ttl >= 1);
        nap_ms(500);
    }
    CU_ASSERT_EQUAL(etcd_range(c, "lease/k", NULL, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 1);
    if (r.n == 1)
        CU_ASSERT_EQUAL(r.kvs[0].lease, id);
    etcd_range_result_free(&r);

    /* left alone: gone after the TTL, once etcd's expiry check (every
     * 500 ms) revokes it through raft; the bound is generous for a loaded
     * machine, and the lower bound below is what matters */
    t0 = mono_ms();
    while (mono_ms() - t0 < 15000) {
        CU_ASSERT_EQUAL(etcd_range(c, "lease/k", NULL, &r, &err), POLIS_OK);
        if (r.n == 0) {
            gone_after_ms = (int)(mono_ms() - t0);
            break;
        }
        etcd_range_result_free(&r);
        nap_ms(100);
    }
    etcd_range_result_free(&r);
    CU_ASSERT(gone_after_ms >= 0);
    CU_ASSERT(gone_after_ms >= 1000); /* not before the TTL */
    polis_error_clear(&err);
    CU_ASSERT_EQUAL(etcd_lease_keepalive(c, id, &ttl, &err), POLIS_ENOTFOUND);
    CU_ASSERT_EQUAL(err.code, POLIS_ENOTFOUND);

    /* revoke removes the key at once; revoking twice is not found */
    CU_ASSERT_EQUAL_FATAL(etcd_lease_grant(c, 60, &id, &err), POLIS_OK);
    CU_ASSERT_EQUAL(etcd_put(c, "lease/k2", "v", 1, id, NULL, &err), POLIS_OK);
    CU_ASSERT_EQUAL(etcd_lease_revoke(c, id, &err), POLIS_OK);
    CU_ASSERT_EQUAL(etcd_range(c, "lease/k2", NULL, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 0);
    etcd_range_result_free(&r);
    CU_ASSERT_EQUAL(etcd_lease_revoke(c, id, &err), POLIS_ENOTFOUND);
    etcd_client_free(c);
}

/* ---- watch ---- */

#define WRITERS         4
#define PUTS_PER_WRITER 2500

typedef struct writer_arg {
    etcd_client *c;
    int id;
    int failures;
    int64_t first_rev;
} writer_arg;

static void *writer_main(void *p)
{
    writer_arg *a = p;
    char key[64], val[32];

    for (int i = 0; i < PUTS_PER_WRITER; i++) {
        polis_error err = {0};
        int64_t rev = 0;
        snprintf(key, sizeof(key), "w10k/%d/%05d", a->id, i % 50);
        snprintf(val, sizeof(val), "%d", i);
        if (etcd_put(a->c, key, val, strlen(val), 0, &rev, &err) != POLIS_OK)
            a->failures++;
    }
    return NULL;
}

static void test_watch_10000_puts_in_order(void)
{
    etcd_client *c = client_for(shared->endpoint, 10000);
    etcd_watch *w = NULL;
    etcd_watch_opts wo = {.key = "w10k/", .prefix = true};
    polis_error err = {0};
    pthread_t th[WRITERS];
    writer_arg args[WRITERS];
    int next_val[WRITERS] = {0};
    int64_t last_rev = 0, t0 = mono_ms();
    size_t total = 0;
    int out_of_order = 0, bad = 0;

    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL_FATAL(etcd_watch_open(c, &wo, &w, &err), POLIS_OK);
    /* one client shared by all writer threads */
    for (int i = 0; i < WRITERS; i++) {
        args[i] = (writer_arg){.c = c, .id = i};
        pthread_create(&th[i], NULL, writer_main, &args[i]);
    }
    while (total < WRITERS * PUTS_PER_WRITER && mono_ms() - t0 < 60000) {
        etcd_watch_batch b = {0};
        int rc = etcd_watch_next(w, &b, 2000, &err);
        if (rc != POLIS_OK) {
            print_err("watch", &err);
            break;
        }
        for (size_t i = 0; i < b.n; i++) {
            const etcd_event *ev = &b.events[i];
            int wid = -1, slot = -1;
            if (ev->kv.mod_revision <= last_rev)
                out_of_order++;
            last_rev = ev->kv.mod_revision;
            if (sscanf(ev->kv.key, "w10k/%d/%d", &wid, &slot) != 2 || wid < 0 ||
                wid >= WRITERS || ev->type != ETCD_EVENT_PUT) {
                bad++;
                continue;
            }
            /* each writer's puts arrive in the order it made them */
            if (atoi(ev->kv.value) != next_val[wid])
                bad++;
            next_val[wid] = atoi(ev->kv.value) + 1;
            total++;
        }
        etcd_watch_batch_free(&b);
    }
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(args[i].failures, 0);
    }
    fprintf(stderr, "\n  10000 puts from %d threads watched in %lld ms\n",
            WRITERS, (long long)(mono_ms() - t0));
    CU_ASSERT_EQUAL(total, WRITERS * PUTS_PER_WRITER);
    CU_ASSERT_EQUAL(out_of_order, 0);
    CU_ASSERT_EQUAL(bad, 0);
    etcd_watch_free(w);
    etcd_client_free(c);
}

static void test_watch_prev_kv_delete_and_progress(void)
{
    etcd_client *c = client_for(shared->endpoint, 5000);
    etcd_watch *w = NULL;
    etcd_watch_opts wo = {
        .key = "wp/k", .prev_kv = true, .progress_notify = true};
    etcd_watch_batch b = {0};
    polis_error err = {0};
    int64_t rev = 0, del_rev = 0;
    int progress = 0;

    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(put_str(c, "wp/k", "old", NULL), POLIS_OK);
    CU_ASSERT_EQUAL_FATAL(etcd_watch_open(c, &wo, &w, &err), POLIS_OK);
    CU_ASSERT_EQUAL(put_str(c, "wp/k", "new", &rev), POLIS_OK);
    CU_ASSERT_EQUAL(put_str(c, "wp/other", "x", NULL), POLIS_OK);
    CU_ASSERT_EQUAL(etcd_delete(c, "wp/k", false, NULL, &del_rev, &err),
                    POLIS_OK);

    CU_ASSERT_EQUAL(etcd_watch_next(w, &b, 5000, &err), POLIS_OK);
    CU_ASSERT_EQUAL_FATAL(b.n >= 1, 1);
    CU_ASSERT_EQUAL(b.events[0].type, ETCD_EVENT_PUT);
    CU_ASSERT_STRING_EQUAL(b.events[0].kv.value, "new");
    CU_ASSERT_EQUAL(b.events[0].kv.mod_revision, rev);
    CU_ASSERT_TRUE(b.events[0].has_prev);
    CU_ASSERT_STRING_EQUAL(b.events[0].prev_kv.value, "old");
    if (b.n == 1) {
        etcd_watch_batch_free(&b);
        CU_ASSERT_EQUAL(etcd_watch_next(w, &b, 5000, &err), POLIS_OK);
        CU_ASSERT_EQUAL_FATAL(b.n, 1);
        CU_ASSERT_EQUAL(b.events[0].type, ETCD_EVENT_DELETE);
    } else {
        CU_ASSERT_EQUAL(b.events[1].type, ETCD_EVENT_DELETE);
    }
    CU_ASSERT_EQUAL(b.events[b.n - 1].kv.mod_revision, del_rev);
    CU_ASSERT_STRING_EQUAL(b.events[b.n - 1].kv.key, "wp/k");
    CU_ASSERT_EQUAL(b.revision, del_rev);
    etcd_watch_batch_free(&b);

    /* no writes: etcd (progress interval 1 s) says how far it has seen */
    for (int i = 0; i < 5 && !progress; i++) {
        CU_ASSERT_EQUAL(etcd_watch_next(w, &b, 3000, &err), POLIS_OK);
        if (b.n == 0 && b.revision >= del_rev)
            progress = 1;
        etcd_watch_batch_free(&b);
    }
    CU_ASSERT_TRUE(progress);
    etcd_watch_free(w);
    etcd_client_free(c);
}

typedef struct canceler {
    etcd_watch *w;
    int rc;
    int64_t returned_at;
} canceler;

static void *blocked_reader(void *p)
{
    canceler *k = p;
    etcd_watch_batch b = {0};
    polis_error err = {0};

    k->rc = etcd_watch_next(k->w, &b, -1, &err);
    k->returned_at = mono_ms();
    etcd_watch_batch_free(&b);
    return NULL;
}

static void test_watch_cancel_wakes_reader(void)
{
    etcd_client *c = client_for(shared->endpoint, 5000);
    etcd_watch_opts wo = {.key = "wc/", .prefix = true};
    canceler k = {0};
    polis_error err = {0};
    pthread_t th;
    int64_t t0;

    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL_FATAL(etcd_watch_open(c, &wo, &k.w, &err), POLIS_OK);
    pthread_create(&th, NULL, blocked_reader, &k);
    nap_ms(300);
    t0 = mono_ms();
    etcd_watch_cancel(k.w);
    pthread_join(th, NULL);
    CU_ASSERT_EQUAL(k.rc, POLIS_ECANCELED);
    CU_ASSERT(k.returned_at - t0 < 500);
    t0 = mono_ms();
    etcd_watch_free(k.w);
    CU_ASSERT(mono_ms() - t0 < 1500); /* the thread left its stream */
    etcd_client_free(c);
}

static int post_json(const char *url, const char *body)
{
    CURL *h = curl_easy_init();
    FILE *sink = fopen("/dev/null", "w");
    long status = 0;

    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, sink);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    fclose(sink);
    return (int)status;
}

static void test_watch_compacted(void)
{
    etcd_client *c = client_for(shared->endpoint, 5000);
    etcd_watch *w = NULL;
    etcd_watch_opts wo = {.key = "cmp/", .prefix = true};
    etcd_watch_batch b = {0};
    etcd_range_result r = {0};
    etcd_range_opts ro = {0};
    polis_error err = {0};
    int64_t first = 0, last = 0;
    char url[256], body[64];
    int rc;

    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(put_str(c, "cmp/a", "1", &first), POLIS_OK);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(put_str(c, "cmp/a", "x", &last), POLIS_OK);
    snprintf(url, sizeof(url), "%s/v3/kv/compaction", shared->endpoint);
    snprintf(body, sizeof(body), "{\"revision\":\"%lld\"}", (long long)last);
    CU_ASSERT_EQUAL_FATAL(post_json(url, body), 200);

    ro.revision = first;
    CU_ASSERT_EQUAL(etcd_range(c, "cmp/a", &ro, &r, &err), POLIS_ECOMPACTED);
    etcd_range_result_free(&r);

    wo.start_revision = first;
    rc = etcd_watch_open(c, &wo, &w, &err);
    if (rc == POLIS_OK)
        rc = etcd_watch_next(w, &b, 5000, &err);
    else
        b.compact_revision = last; /* open may report it directly */
    CU_ASSERT_EQUAL(rc, POLIS_ECOMPACTED);
    CU_ASSERT_EQUAL(b.compact_revision, last);
    CU_ASSERT_EQUAL(err.code, POLIS_ECOMPACTED);
    /* it stays ended */
    if (w) {
        etcd_watch_batch_free(&b);
        CU_ASSERT_EQUAL(etcd_watch_next(w, &b, 100, &err), POLIS_ECOMPACTED);
    }
    etcd_watch_batch_free(&b);
    etcd_watch_free(w);
    etcd_client_free(c);
}

/* ---- failures ---- */

static void expect_events(etcd_watch *w, int from, int to, int *seen,
                          int64_t *last_rev)
{
    int64_t t0 = mono_ms();

    while (*seen < to && mono_ms() - t0 < 20000) {
        etcd_watch_batch b = {0};
        polis_error err = {0};
        if (etcd_watch_next(w, &b, 1000, &err) != POLIS_OK) {
            print_err("watch across restart", &err);
            return;
        }
        for (size_t i = 0; i < b.n; i++) {
            int v = atoi(b.events[i].kv.value);
            /* exactly the next one: no loss, no repeat */
            CU_ASSERT_EQUAL(v, *seen);
            CU_ASSERT(b.events[i].kv.mod_revision > *last_rev);
            *last_rev = b.events[i].kv.mod_revision;
            *seen = v + 1;
        }
        etcd_watch_batch_free(&b);
    }
    CU_ASSERT_EQUAL(*seen, to);
    (void)from;
}

static void put_range(etcd_client *c, int from, int to)
{
    char val[16];

    for (int i = from; i < to; i++) {
        snprintf(val, sizeof(val), "%d", i);
        /* right after a restart the first call may still meet the old,
         * dead connection: retry briefly */
        for (int attempt = 0; attempt < 20; attempt++) {
            polis_error err = {0};
            if (etcd_put(c, "rs/k", val, strlen(val), 0, NULL, &err) ==
                POLIS_OK)
                break;
            if (attempt == 19)
                print_err("put after restart", &err);
            nap_ms(100);
        }
    }
}

/*
 * The reader stops reading so that the watch thread blocks on its full
 * queue (backpressure) while etcd restarts and more keys are written: the
 * thread can only get those by resuming from the right revision.
 */
static void test_watch_survives_restarts(void)
{
    testenv_etcd *e = testenv_etcd_start(NULL);
    etcd_client *c;
    etcd_watch *w = NULL;
    etcd_watch_opts wo = {.key = "rs/", .prefix = true};
    polis_error err = {0};
    int seen = 0;
    int64_t last_rev = 0, t0;

    CU_ASSERT_FATAL(e != NULL);
    c = client_for(e->endpoint, 3000);
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL_FATAL(etcd_watch_open(c, &wo, &w, &err), POLIS_OK);

    put_range(c, 0, 200); /* more batches than the queue holds */
    nap_ms(200);
    t0 = mono_ms();
    CU_ASSERT_EQUAL(testenv_etcd_restart(e), 0); /* SIGTERM */
    fprintf(stderr, "\n  restart (SIGTERM) took %lld ms\n",
            (long long)(mono_ms() - t0));
    put_range(c, 200, 300);
    expect_events(w, 0, 300, &seen, &last_rev);

    put_range(c, 300, 350);
    CU_ASSERT_EQUAL(testenv_etcd_kill(e, SIGKILL), 0);
    CU_ASSERT_EQUAL(testenv_etcd_restart(e), 0);
    put_range(c, 350, 400);
    expect_events(w, 300, 400, &seen, &last_rev);

    /* and nothing more */
    {
        etcd_watch_batch b = {0};
        int extra = 0;
        for (int i = 0; i < 3; i++) {
            CU_ASSERT_EQUAL(etcd_watch_next(w, &b, 300, &err), POLIS_OK);
            extra += (int)b.n;
            etcd_watch_batch_free(&b);
        }
        CU_ASSERT_EQUAL(extra, 0);
    }
    etcd_watch_free(w);
    etcd_client_free(c);
    testenv_etcd_stop(e);
}

static void test_etcd_down_fails_fast(void)
{
    testenv_etcd *e = testenv_etcd_start(NULL);
    etcd_client *c;
    etcd_range_result r = {0};
    polis_error err = {0};
    char dead[64];
    int64_t t0, took;
    int rc;

    CU_ASSERT_FATAL(e != NULL);
    c = client_for(e->endpoint, 1000);
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(put_str(c, "down/k", "v", NULL), POLIS_OK);

    /* hung etcd (stopped): a timeout, in time */
    CU_ASSERT_EQUAL(testenv_etcd_kill(e, SIGSTOP), 0);
    t0 = mono_ms();
    rc = etcd_range(c, "down/k", NULL, &r, &err);
    took = mono_ms() - t0;
    CU_ASSERT(rc == POLIS_ETIMEDOUT || rc == POLIS_EUNAVAIL);
    CU_ASSERT(took < 1000 + 2000);
    CU_ASSERT(took >= 900);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, e->endpoint));
    etcd_range_result_free(&r);
    CU_ASSERT_EQUAL(testenv_etcd_kill(e, SIGCONT), 0);

    /* etcd gone: unavailable, at once */
    testenv_etcd_stop(e);
    t0 = mono_ms();
    polis_error_clear(&err);
    rc = etcd_put(c, "down/k", "v", 1, 0, NULL, &err);
    took = mono_ms() - t0;
    CU_ASSERT_EQUAL(rc, POLIS_EUNAVAIL);
    CU_ASSERT(took < 1000 + 2000);
    etcd_client_free(c);

    /* nothing ever listened there: the watch cannot open either */
    snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", testenv_refused_port());
    c = client_for(dead, 1000);
    CU_ASSERT_FATAL(c != NULL);
    {
        etcd_watch *w = NULL;
        etcd_watch_opts wo = {.key = "x"};
        t0 = mono_ms();
        rc = etcd_watch_open(c, &wo, &w, &err);
        CU_ASSERT(rc == POLIS_EUNAVAIL || rc == POLIS_ETIMEDOUT);
        CU_ASSERT(mono_ms() - t0 < 3000);
        CU_ASSERT_PTR_NULL(w);
    }
    etcd_client_free(c);
}

static void test_failover_to_live_endpoint(void)
{
    char eps[256];
    etcd_client *c;
    etcd_range_result r = {0};
    polis_error err = {0};
    int64_t t0;

    snprintf(eps, sizeof(eps), "http://127.0.0.1:%d, %s",
             testenv_refused_port(), shared->endpoint);
    c = client_for(eps, 3000);
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_EQUAL(put_str(c, "fo/k", "v", NULL), POLIS_OK);
    CU_ASSERT_EQUAL(etcd_range(c, "fo/k", NULL, &r, &err), POLIS_OK);
    CU_ASSERT_EQUAL(r.n, 1);
    etcd_range_result_free(&r);
    /* the live one is remembered: many calls stay quick */
    t0 = mono_ms();
    for (int i = 0; i < 50; i++) {
        CU_ASSERT_EQUAL(etcd_range(c, "fo/k", NULL, &r, &err), POLIS_OK);
        etcd_range_result_free(&r);
    }
    CU_ASSERT(mono_ms() - t0 < 2000);
    {
        etcd_watch *w = NULL;
        etcd_watch_opts wo = {.key = "fo/k"};
        etcd_watch_batch b = {0};
        CU_ASSERT_EQUAL_FATAL(etcd_watch_open(c, &wo, &w, &err), POLIS_OK);
        CU_ASSERT_EQUAL(put_str(c, "fo/k", "v2", NULL), POLIS_OK);
        CU_ASSERT_EQUAL(etcd_watch_next(w, &b, 5000, &err), POLIS_OK);
        CU_ASSERT_EQUAL(b.n, 1);
        etcd_watch_batch_free(&b);
        etcd_watch_free(w);
    }
    etcd_client_free(c);
}

/* ---- the process manager itself ---- */

static void test_server_lifecycle(void)
{
    const char *dir = testenv_tmpdir("etcdsrv");
    char data[512], log[512], url[256];
    etcd_server_options o = {0};
    etcd_server *s = NULL;
    polis_error err = {0};
    int status = 0;
    pid_t pid;

    CU_ASSERT_FATAL(dir != NULL);
    snprintf(data, sizeof(data), "%s/data", dir);
    snprintf(log, sizeof(log), "%s/etcd.log", dir);

    /* a binary that does not exist: a clear error */
    o.binary = "/nonexistent/etcd";
    o.data_dir = data;
    o.log_file = log;
    CU_ASSERT_EQUAL(etcd_server_start(&o, &s, &err), POLIS_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "/nonexistent/etcd"));
    CU_ASSERT_PTR_NULL(s);

    /* a bad flag: etcd exits, the error quotes its log */
    const char *bad[] = {"--no-such-flag", NULL};
    o.binary = NULL;
    o.extra_args = bad;
    CU_ASSERT_EQUAL(etcd_server_start(&o, &s, &err), POLIS_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "no-such-flag"));

    o.extra_args = NULL;
    CU_ASSERT_EQUAL_FATAL(etcd_server_start(&o, &s, &err), POLIS_OK);
    CU_ASSERT_TRUE(etcd_server_alive(s));
    pid = etcd_server_pid(s);
    CU_ASSERT(pid > 0);
    snprintf(url, sizeof(url), "%s/health", etcd_server_endpoint(s));
    CU_ASSERT_EQUAL(testenv_wait_http(url, 2000), 0);
    CU_ASSERT_EQUAL(
        testenv_wait_port("127.0.0.1", etcd_server_peer_port(s), 2000), 0);
    CU_ASSERT_EQUAL(etcd_server_kill(s, SIGKILL, &err), POLIS_OK);
    for (int i = 0; i < 100 && etcd_server_alive(s); i++)
        nap_ms(20);
    CU_ASSERT_FALSE(etcd_server_alive(s));
    CU_ASSERT_EQUAL(etcd_server_pid(s), -1);
    CU_ASSERT_EQUAL(etcd_server_restart(s, &err), POLIS_OK);
    CU_ASSERT_TRUE(etcd_server_alive(s));
    CU_ASSERT(etcd_server_pid(s) != pid);
    CU_ASSERT_EQUAL(etcd_server_stop(s, 5000, &status, &err), POLIS_OK);
    CU_ASSERT_FALSE(etcd_server_alive(s));
    etcd_server_free(s);
}

static const test_case kv_cases[] = {
    {"put_get_range", test_put_get_range},
    {"bad_request", test_bad_request},
    {"txn", test_txn},
    {"lease_expiry_and_keepalive", test_lease_expiry_and_keepalive},
    {NULL, NULL},
};

static const test_case watch_cases[] = {
    {"10000_puts_in_order", test_watch_10000_puts_in_order},
    {"prev_kv_delete_and_progress", test_watch_prev_kv_delete_and_progress},
    {"cancel_wakes_reader", test_watch_cancel_wakes_reader},
    {"compacted", test_watch_compacted},
    {NULL, NULL},
};

static const test_case failure_cases[] = {
    {"watch_survives_restarts", test_watch_survives_restarts},
    {"etcd_down_fails_fast", test_etcd_down_fails_fast},
    {"failover_to_live_endpoint", test_failover_to_live_endpoint},
    {"server_lifecycle", test_server_lifecycle},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"kv", suite_init, suite_cleanup, kv_cases},
    {"watch", suite_init, suite_cleanup, watch_cases},
    {"failure", suite_init, suite_cleanup, failure_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
