/*
 * test_access_log.c — the sidecar's access records (sidecar/access_log.h):
 * copies and cuts, batches and acks, the memory bound and its drop counter,
 * spooling to disk and replay after a restart, the spool bound (oldest
 * dropped first), unreadable spool files, and many recording threads.
 */
#include "common/metrics.h"
#include "sidecar/access_log.h"
#include "tests/support/testenv.h"
#include "tests/support/testutil.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sc_access_log *open_log(const char *dir, size_t max_pending,
                               uint64_t max_spool, size_t max_batch, metrics *m)
{
    sc_access_log_options o = {0};
    sc_access_log *log = NULL;
    polis_error err = {0};

    o.state_dir = dir;
    o.max_pending = max_pending;
    o.max_spool_bytes = max_spool;
    o.max_batch = max_batch;
    o.metrics = m;
    CU_ASSERT_EQUAL_FATAL(sc_access_log_new(&o, &log, &err), 0);
    return log;
}

/* Record number i: principal "user-<i>", rows i. */
static void record_n(sc_access_log *log, int from, int to)
{
    for (int i = from; i < to; i++) {
        char principal[32];
        sc_access a = {0};

        snprintf(principal, sizeof(principal), "user-%d", i);
        a.time_ms = 1700000000000 + i;
        a.principal = principal;
        a.product = "sales/orders";
        a.port = "query";
        a.purpose = "analytics";
        a.decision = i % 3 ? "allow" : "deny";
        a.rule = "r1";
        a.http_status = 200;
        a.rows = i;
        a.bytes = 10 * i;
        a.latency_us = 100;
        sc_access_log_record(log, &a);
    }
}

static size_t count_files(const char *dir)
{
    char path[1024];
    DIR *d;
    struct dirent *de;
    size_t n = 0;

    snprintf(path, sizeof(path), "%s/access", dir);
    if ((d = opendir(path)) == NULL)
        return 0;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".pb"))
            n++;
    closedir(d);
    return n;
}

static void test_record_take_ack(void)
{
    sc_access_log *log = open_log(NULL, 0, 0, 0, NULL);
    char principal[] = "alice";
    sc_access a = {0};
    sc_access_batch b;
    sc_access_log_stats st;
    polis_error err = {0};

    a.principal = principal;
    a.product = "sales/orders";
    a.port = "file";
    a.decision = "allow";
    a.rows = 42;
    a.bytes = 4200;
    a.latency_us = 1234;
    a.http_status = 200;
    sc_access_log_record(log, &a);
    principal[0] = 'X'; /* the log kept its own copy */

    CU_ASSERT_EQUAL(sc_access_log_take(log, 0, &b, &err), 0);
    CU_ASSERT_EQUAL_FATAL(b.count, 1);
    CU_ASSERT_STRING_EQUAL(b.records[0].principal, "alice");
    CU_ASSERT_STRING_EQUAL(b.records[0].product, "sales/orders");
    CU_ASSERT_STRING_EQUAL(b.records[0].port, "file");
    CU_ASSERT_STRING_EQUAL(b.records[0].purpose, ""); /* NULL -> "" */
    CU_ASSERT_STRING_EQUAL(b.records[0].rule, "");
    CU_ASSERT_EQUAL(b.records[0].rows, 42);
    CU_ASSERT_EQUAL(b.records[0].bytes, 4200);
    CU_ASSERT_EQUAL(b.records[0].latency_us, 1234);
    CU_ASSERT_EQUAL(b.records[0].http_status, 200);
    CU_ASSERT(b.records[0].time_ms > 1600000000000); /* 0 became now */

    /* In flight: not handed out twice. */
    CU_ASSERT_EQUAL(sc_access_log_take(log, 0, &b, &err), 0);
    CU_ASSERT_EQUAL(b.count, 0);

    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.recorded, 1);
    CU_ASSERT_EQUAL(st.pending, 1);
    sc_access_log_ack(log, 12345); /* unknown id: ignored */
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.acked, 0);
    sc_access_log_take(log, 0, &b, &err);
    sc_access_log_requeue(log);
    CU_ASSERT_EQUAL(sc_access_log_take(log, 0, &b, &err), 0);
    CU_ASSERT_EQUAL_FATAL(b.count, 1);
    sc_access_log_ack(log, b.id);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.acked, 1);
    CU_ASSERT_EQUAL(st.pending, 0);
    sc_access_log_free(log);
    sc_access_log_free(NULL);
    sc_access_log_record(NULL, &a); /* a port without a log */
}

static void test_strings_cut_on_utf8_boundary(void)
{
    sc_access_log *log = open_log(NULL, 0, 0, 0, NULL);
    char longname[1000], euros[400];
    sc_access a = {0};
    sc_access_batch b;
    polis_error err = {0};

    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    for (size_t i = 0; i + 3 < sizeof(euros); i += 3)
        memcpy(euros + i, "\xE2\x82\xAC", 3); /* U+20AC, 3 bytes */
    euros[(sizeof(euros) - 1) / 3 * 3] = '\0';
    a.principal = longname;
    a.product = euros;
    sc_access_log_record(log, &a);
    sc_access_log_take(log, 0, &b, &err);
    CU_ASSERT_EQUAL_FATAL(b.count, 1);
    CU_ASSERT_EQUAL(strlen(b.records[0].principal), 256);
    CU_ASSERT_EQUAL(strlen(b.records[0].product), 255); /* 85 whole euros */
    sc_access_log_free(log);
}

static void test_memory_bound_counts_drops(void)
{
    metrics *m = metrics_new();
    sc_access_log *log = open_log(NULL, 10, 0, 0, m);
    sc_access_log_stats st;
    char *text;

    record_n(log, 0, 15);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.recorded, 10);
    CU_ASSERT_EQUAL(st.dropped_memory, 5);
    CU_ASSERT_EQUAL(st.pending, 10);
    text = metrics_render(m);
    CU_ASSERT_FATAL(text != NULL);
    CU_ASSERT(strstr(text, "polis_sidecar_access_dropped_total{reason="
                           "\"memory\"} 5\n") != NULL);
    CU_ASSERT(strstr(text, "polis_sidecar_access_records_total 10\n") != NULL);
    CU_ASSERT(strstr(text, "polis_sidecar_access_pending 10\n") != NULL);
    free(text);
    sc_access_log_free(log);
    metrics_free(m);
}

static void test_batches_bounded_and_ordered(void)
{
    sc_access_log *log = open_log(NULL, 0, 0, 4, NULL);
    sc_access_batch b1, b2, b3, b4;
    sc_access_log_stats st;
    polis_error err = {0};

    record_n(log, 0, 10);
    sc_access_log_take(log, 0, &b1, &err);
    sc_access_log_take(log, 100, &b2, &err); /* max_batch still caps */
    sc_access_log_take(log, 1, &b3, &err);
    CU_ASSERT_EQUAL(b1.count, 4);
    CU_ASSERT_EQUAL(b2.count, 4);
    CU_ASSERT_EQUAL(b3.count, 1);
    CU_ASSERT(b1.id < b2.id && b2.id < b3.id);
    CU_ASSERT_EQUAL(b1.records[0].rows, 0);
    CU_ASSERT_EQUAL(b2.records[0].rows, 4);
    CU_ASSERT_EQUAL(b3.records[0].rows, 8);
    sc_access_log_take(log, 0, &b4, &err);
    CU_ASSERT_EQUAL(b4.count, 1);
    CU_ASSERT_EQUAL(b4.records[0].rows, 9);
    /* Acks in any order. */
    sc_access_log_ack(log, b2.id);
    sc_access_log_ack(log, b4.id);
    sc_access_log_ack(log, b1.id);
    sc_access_log_ack(log, b3.id);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.acked, 10);
    CU_ASSERT_EQUAL(st.pending, 0);
    sc_access_log_free(log);
}

static void test_spool_and_replay_after_restart(void)
{
    const char *dir = testenv_tmpdir("acclog");
    sc_access_log *log;
    sc_access_batch b, sent;
    sc_access_log_stats st;
    polis_error err = {0};
    int next = 0;

    CU_ASSERT_FATAL(dir != NULL);
    log = open_log(dir, 0, 0, 5, NULL);
    record_n(log, 0, 12);
    /* One batch was in flight when the stream broke. */
    sc_access_log_take(log, 0, &sent, &err);
    sc_access_log_requeue(log);
    CU_ASSERT_EQUAL(sc_access_log_spool(log, &err), 0);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.pending, 0); /* all on disk now */
    CU_ASSERT_EQUAL(st.spooled_batches, 3);
    CU_ASSERT(st.spool_bytes > 12 * 20);
    CU_ASSERT_EQUAL(count_files(dir), 3);
    sc_access_log_free(log);

    /* A new process finds them, in order, with their ids. */
    log = open_log(dir, 0, 0, 5, NULL);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.spooled_batches, 3);
    record_n(log, 12, 13); /* newer than anything on disk */
    for (;;) {
        CU_ASSERT_EQUAL_FATAL(sc_access_log_take(log, 0, &b, &err), 0);
        if (b.count == 0)
            break;
        if (next == 0)
            CU_ASSERT_EQUAL(b.id, sent.id); /* same id: receiver dedups */
        for (size_t i = 0; i < b.count; i++) {
            char want[32];

            snprintf(want, sizeof(want), "user-%d", next);
            CU_ASSERT_STRING_EQUAL(b.records[i].principal, want);
            CU_ASSERT_EQUAL(b.records[i].rows, next);
            CU_ASSERT_EQUAL(b.records[i].time_ms, 1700000000000 + next);
            CU_ASSERT_STRING_EQUAL(b.records[i].decision,
                                   next % 3 ? "allow" : "deny");
            next++;
        }
        sc_access_log_ack(log, b.id);
    }
    CU_ASSERT_EQUAL(next, 13);
    CU_ASSERT_EQUAL(count_files(dir), 0);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.spooled_batches, 0);
    CU_ASSERT_EQUAL(st.spool_bytes, 0);
    CU_ASSERT_EQUAL(st.acked, 13);
    sc_access_log_free(log);
}

static void test_spool_frees_memory_for_new_records(void)
{
    const char *dir = testenv_tmpdir("acclog");
    sc_access_log *log;
    sc_access_log_stats st;
    polis_error err = {0};

    CU_ASSERT_FATAL(dir != NULL);
    log = open_log(dir, 10, 0, 0, NULL);
    record_n(log, 0, 10);
    CU_ASSERT_EQUAL(sc_access_log_spool(log, &err), 0);
    record_n(log, 10, 20);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.recorded, 20);
    CU_ASSERT_EQUAL(st.dropped_memory, 0);
    sc_access_log_free(log);
}

static void test_spool_bound_drops_oldest(void)
{
    const char *dir = testenv_tmpdir("acclog");
    metrics *m = metrics_new();
    sc_access_log *log;
    sc_access_batch b;
    sc_access_log_stats st;
    polis_error err = {0};
    char *text, want[64];

    CU_ASSERT_FATAL(dir != NULL);
    /* Ten records per batch are ~600 bytes: room for about three. */
    log = open_log(dir, 0, 2000, 10, m);
    for (int round = 0; round < 10; round++) {
        record_n(log, round * 10, round * 10 + 10);
        CU_ASSERT_EQUAL(sc_access_log_spool(log, &err), 0);
    }
    sc_access_log_stats_get(log, &st);
    CU_ASSERT(st.spool_bytes <= 2000);
    CU_ASSERT(st.spooled_batches >= 2);
    CU_ASSERT_EQUAL(st.dropped_spool, 100 - 10 * st.spooled_batches);
    CU_ASSERT_EQUAL(count_files(dir), st.spooled_batches);
    text = metrics_render(m);
    snprintf(want, sizeof(want),
             "polis_sidecar_access_dropped_total{reason=\"spool\"} %llu\n",
             (unsigned long long)st.dropped_spool);
    CU_ASSERT(text && strstr(text, want) != NULL);
    free(text);
    /* The newest survived. */
    CU_ASSERT_EQUAL(sc_access_log_take(log, 0, &b, &err), 0);
    CU_ASSERT_EQUAL_FATAL(b.count, 10);
    CU_ASSERT_EQUAL(b.records[0].rows, 100 - 10 * (int)st.spooled_batches);
    sc_access_log_free(log);
    metrics_free(m);
}

static void test_unreadable_spool_file_skipped(void)
{
    const char *dir = testenv_tmpdir("acclog");
    sc_access_log *log;
    sc_access_batch b;
    sc_access_log_stats st;
    polis_error err = {0};
    char path[1024];
    FILE *f;

    CU_ASSERT_FATAL(dir != NULL);
    log = open_log(dir, 0, 0, 0, NULL); /* creates access/ */
    sc_access_log_free(log);
    snprintf(path, sizeof(path), "%s/access/%020d-7.pb", dir, 1);
    f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fputs("not a protobuf at all \xff\xff\xff", f);
    fclose(f);
    snprintf(path, sizeof(path), "%s/access/%020d-3.pb.tmp", dir, 2);
    f = fopen(path, "w"); /* a write a crash cut short */
    CU_ASSERT_FATAL(f != NULL);
    fclose(f);

    log = open_log(dir, 0, 0, 0, NULL);
    record_n(log, 0, 2);
    CU_ASSERT_EQUAL(sc_access_log_take(log, 0, &b, &err), 0);
    CU_ASSERT_EQUAL(b.count, 2); /* the good records still flow */
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.dropped_spool, 7);
    CU_ASSERT_EQUAL(st.spooled_batches, 0);
    CU_ASSERT_EQUAL(count_files(dir), 0);
    sc_access_log_free(log);
}

static void test_no_state_dir_spool_is_noop(void)
{
    sc_access_log *log = open_log(NULL, 0, 0, 0, NULL);
    sc_access_log_stats st;
    polis_error err = {0};

    record_n(log, 0, 3);
    CU_ASSERT_EQUAL(sc_access_log_spool(log, &err), 0);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.pending, 3);
    sc_access_log_free(log);
}

static void test_unwritable_state_dir(void)
{
    const char *dir = testenv_tmpdir("acclog");
    sc_access_log_options o = {0};
    sc_access_log *log = NULL;
    polis_error err = {0};
    char path[1024];
    FILE *f;

    CU_ASSERT_FATAL(dir != NULL);
    snprintf(path, sizeof(path), "%s/file", dir);
    f = fopen(path, "w");
    CU_ASSERT_FATAL(f != NULL);
    fclose(f);
    o.state_dir = path;
    CU_ASSERT_EQUAL(sc_access_log_new(&o, &log, &err), POLIS_EIO);
    CU_ASSERT(log == NULL);
    CU_ASSERT(strstr(err.where, "file") != NULL);
}

#define THREADS     4
#define PER_THREAD  5000
#define DRAIN_LIMIT (THREADS * PER_THREAD)

static void *recorder(void *arg)
{
    sc_access_log *log = arg;

    record_n(log, 0, PER_THREAD);
    return NULL;
}

static void test_concurrent_record_and_drain(void)
{
    sc_access_log *log = open_log(NULL, 1000, 0, 0, NULL);
    pthread_t t[THREADS];
    sc_access_log_stats st;
    polis_error err = {0};
    uint64_t drained = 0;
    int done = 0;

    for (int i = 0; i < THREADS; i++)
        CU_ASSERT_FATAL(pthread_create(&t[i], NULL, recorder, log) == 0);
    /* Drain while they record; stop once every record is accounted for. */
    while (!done) {
        sc_access_batch b;

        CU_ASSERT_EQUAL_FATAL(sc_access_log_take(log, 0, &b, &err), 0);
        if (b.count) {
            drained += b.count;
            sc_access_log_ack(log, b.id);
            continue;
        }
        sc_access_log_stats_get(log, &st);
        done = st.recorded + st.dropped_memory == DRAIN_LIMIT &&
               st.acked == st.recorded;
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    sc_access_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.recorded + st.dropped_memory, DRAIN_LIMIT);
    CU_ASSERT_EQUAL(drained, st.recorded);
    CU_ASSERT_EQUAL(st.pending, 0);
    sc_access_log_free(log);
}

static const test_case cases[] = {
    {"record_take_ack", test_record_take_ack},
    {"strings_cut_on_utf8_boundary", test_strings_cut_on_utf8_boundary},
    {"memory_bound_counts_drops", test_memory_bound_counts_drops},
    {"batches_bounded_and_ordered", test_batches_bounded_and_ordered},
    {"spool_and_replay_after_restart", test_spool_and_replay_after_restart},
    {"spool_frees_memory_for_new_records",
     test_spool_frees_memory_for_new_records},
    {"spool_bound_drops_oldest", test_spool_bound_drops_oldest},
    {"unreadable_spool_file_skipped", test_unreadable_spool_file_skipped},
    {"no_state_dir_spool_is_noop", test_no_state_dir_spool_is_noop},
    {"unwritable_state_dir", test_unwritable_state_dir},
    {"concurrent_record_and_drain", test_concurrent_record_and_drain},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"access_log", NULL, NULL, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
