/*
 * test_event_log.c — the event ports' storage (sidecar/event_log.h): round
 * trips across segment rolls, offsets after reopen, retention by size and
 * age, torn and corrupt tails cut at open, SIGKILL during a publish burst,
 * concurrent appenders with a waiting reader, group-commit acknowledgement,
 * asynchronous appends (callbacks after the fsync, cancelled at shutdown).
 */
#include "sidecar/event_log.h"
#include "tests/support/testenv.h"
#include "tests/support/testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *fresh_dir(const char *tag)
{
    static char path[512];
    static int n;
    const char *base = testenv_tmpdir("evlog");
    if (!base)
        return NULL;
    snprintf(path, sizeof(path), "%s/%s-%d", base, tag, n++);
    return path;
}

static sc_event_log *open_opts(const sc_event_log_options *o)
{
    sc_event_log *log = NULL;
    polis_error err = {0};
    int rc = sc_event_log_open(o, &log, &err);
    if (rc != 0)
        fprintf(stderr, "open: %s: %s\n", err.where, err.message);
    CU_ASSERT_EQUAL(rc, 0);
    return log;
}

static int append_str(sc_event_log *log, const char *s, uint64_t *off)
{
    sc_event ev = {s, strlen(s)};
    polis_error err = {0};
    int rc = sc_event_log_append(log, &ev, 1, off, &err);
    if (rc != 0)
        fprintf(stderr, "append: %s\n", err.message);
    return rc;
}

/* Records read back, kept as strings. */
typedef struct collected {
    uint64_t offsets[4096];
    char *data[4096];
    size_t n;
} collected;

static int collect(void *ctx, const sc_event_record *r)
{
    collected *c = ctx;
    if (c->n >= 4096)
        return 1;
    c->offsets[c->n] = r->offset;
    c->data[c->n] = strndup(r->data, r->len);
    c->n++;
    return 0;
}

static void collected_clear(collected *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->data[i]);
    c->n = 0;
}

/* Read everything from `from` in chunks; returns the read result. */
static int read_all(sc_event_log *log, uint64_t from, collected *c)
{
    polis_error err = {0};
    for (;;) {
        uint64_t next = 0;
        size_t before = c->n;
        int rc = sc_event_log_read(log, from, 7, 0, collect, c, &next, &err);
        if (rc != 0)
            return rc;
        if (c->n == before)
            return 0;
        CU_ASSERT_EQUAL(next, c->offsets[c->n - 1] + 1);
        from = next;
    }
}

static size_t count_segment_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;
    if (!d)
        return 0;
    while ((de = readdir(d)) != NULL)
        if (strstr(de->d_name, ".log"))
            n++;
    closedir(d);
    return n;
}

static void payload_for(uint64_t i, char *buf, size_t len)
{
    /* Varying sizes, so records straddle index intervals and roll points. */
    int pad = (int)(i * 37 % 300);
    snprintf(buf, len, "event-%llu-%.*s", (unsigned long long)i, pad,
             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
}

static void test_round_trip_across_rolls(void)
{
    sc_event_log_options o = {.dir = fresh_dir("rt"),
                              .fsync = SC_EVENT_FSYNC_NEVER,
                              .segment_bytes = 4096};
    sc_event_log *log = open_opts(&o);
    char buf[512], b2[512], b3[512];
    uint64_t off;
    collected *c = calloc(1, sizeof(*c));
    polis_error err = {0};
    sc_event_log_stats st;

    for (uint64_t i = 0; i < 600;) {
        if (i % 10 == 0) { /* a three-event publish */
            payload_for(i, buf, sizeof(buf));
            payload_for(i + 1, b2, sizeof(b2));
            payload_for(i + 2, b3, sizeof(b3));
            sc_event evs[3] = {
                {buf, strlen(buf)}, {b2, strlen(b2)}, {b3, strlen(b3)}};
            CU_ASSERT_EQUAL(sc_event_log_append(log, evs, 3, &off, &err), 0);
            CU_ASSERT_EQUAL(off, i);
            i += 3;
        } else {
            payload_for(i, buf, sizeof(buf));
            CU_ASSERT_EQUAL(append_str(log, buf, &off), 0);
            CU_ASSERT_EQUAL(off, i);
            i++;
        }
    }
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.next_offset, 600);
    CU_ASSERT(st.segments > 10);
    CU_ASSERT_EQUAL(count_segment_files(o.dir), st.segments);

    CU_ASSERT_EQUAL(read_all(log, 0, c), 0);
    CU_ASSERT_EQUAL(c->n, 600);
    for (size_t i = 0; i < c->n; i++) {
        payload_for(i, buf, sizeof(buf));
        CU_ASSERT_EQUAL(c->offsets[i], i);
        CU_ASSERT_STRING_EQUAL(c->data[i], buf);
    }
    collected_clear(c);

    /* From the middle of a segment, and a byte bound of one record. */
    uint64_t next = 0;
    CU_ASSERT_EQUAL(
        sc_event_log_read(log, 337, 100, 1, collect, c, &next, &err), 0);
    CU_ASSERT_EQUAL(c->n, 1);
    CU_ASSERT_EQUAL(next, 338);
    payload_for(337, buf, sizeof(buf));
    if (c->n == 1)
        CU_ASSERT_STRING_EQUAL(c->data[0], buf);
    collected_clear(c);

    /* At the end: nothing, no error; past the end: EINVAL. */
    CU_ASSERT_EQUAL(sc_event_log_read(log, 600, 10, 0, collect, c, &next, &err),
                    0);
    CU_ASSERT_EQUAL(c->n, 0);
    CU_ASSERT_EQUAL(next, 600);
    CU_ASSERT_EQUAL(sc_event_log_read(log, 601, 10, 0, collect, c, &next, &err),
                    POLIS_EINVAL);
    sc_event_log_free(log);
    free(c);
}

static void test_offsets_continue_after_reopen(void)
{
    sc_event_log_options o = {.dir = fresh_dir("reopen"),
                              .segment_bytes = 2048};
    sc_event_log *log = open_opts(&o);
    char buf[512];
    uint64_t off = 0;
    collected *c = calloc(1, sizeof(*c));

    for (int i = 0; i < 50; i++) {
        payload_for((uint64_t)i, buf, sizeof(buf));
        CU_ASSERT_EQUAL(append_str(log, buf, &off), 0);
    }
    sc_event_log_free(log);

    log = open_opts(&o);
    sc_event_log_stats st;
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.next_offset, 50);
    CU_ASSERT_EQUAL(st.truncated_bytes, 0);
    payload_for(50, buf, sizeof(buf));
    CU_ASSERT_EQUAL(append_str(log, buf, &off), 0);
    CU_ASSERT_EQUAL(off, 50);
    CU_ASSERT_EQUAL(read_all(log, 0, c), 0);
    CU_ASSERT_EQUAL(c->n, 51);
    for (size_t i = 0; i < c->n; i++) {
        payload_for(i, buf, sizeof(buf));
        CU_ASSERT_STRING_EQUAL(c->data[i], buf);
    }
    collected_clear(c);
    sc_event_log_free(log);
    free(c);
}

static void test_retention_by_size(void)
{
    sc_event_log_options o = {.dir = fresh_dir("retsize"),
                              .fsync = SC_EVENT_FSYNC_NEVER,
                              .segment_bytes = 1000,
                              .retention_bytes = 3000};
    sc_event_log *log = open_opts(&o);
    char buf[128];
    collected *c = calloc(1, sizeof(*c));
    polis_error err = {0};
    sc_event_log_stats st;

    for (int i = 0; i < 300; i++) {
        snprintf(buf, sizeof(buf), "%080d", i); /* 104 bytes a record */
        CU_ASSERT_EQUAL(append_str(log, buf, NULL), 0);
    }
    sc_event_log_stats_get(log, &st);
    /* Kept: at most the bound plus the active segment's worth. */
    CU_ASSERT(st.bytes <= 3000 + 1000);
    CU_ASSERT(st.bytes >= 3000 - 1000);
    CU_ASSERT(st.start_offset > 200);
    CU_ASSERT(st.segments_retired > 20);
    CU_ASSERT_EQUAL(count_segment_files(o.dir), st.segments);

    /* A consumer that fell behind is told where the log starts now. */
    CU_ASSERT_EQUAL(sc_event_log_read(log, 0, 10, 0, collect, c, NULL, &err),
                    POLIS_ENOTFOUND);
    char want[128];
    snprintf(want, sizeof(want), "retention start %llu",
             (unsigned long long)st.start_offset);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, want));
    CU_ASSERT_EQUAL(read_all(log, st.start_offset, c), 0);
    CU_ASSERT_EQUAL(c->n, 300 - st.start_offset);
    snprintf(want, sizeof(want), "%080d", (int)st.start_offset);
    if (c->n > 0)
        CU_ASSERT_STRING_EQUAL(c->data[0], want);
    collected_clear(c);
    sc_event_log_free(log);

    /* The start survives a reopen. */
    log = open_opts(&o);
    sc_event_log_stats st2;
    sc_event_log_stats_get(log, &st2);
    CU_ASSERT_EQUAL(st2.start_offset, st.start_offset);
    CU_ASSERT_EQUAL(st2.next_offset, 300);
    sc_event_log_free(log);
    free(c);
}

static int64_t fake_clock_ms(void *ctx)
{
    return *(int64_t *)ctx;
}

static void test_retention_by_age(void)
{
    int64_t now = 1700000000000;
    sc_event_log_options o = {.dir = fresh_dir("retage"),
                              .fsync = SC_EVENT_FSYNC_NEVER,
                              .segment_bytes = 500,
                              .retention_ms = 60000,
                              .clock_ms = fake_clock_ms,
                              .clock_ctx = &now};
    sc_event_log *log = open_opts(&o);
    char buf[128];
    size_t removed = 99;
    polis_error err = {0};
    sc_event_log_stats st;

    /* 10 segments of 4 records, the clock moving 10 s per segment. */
    for (int i = 0; i < 40; i++) {
        if (i > 0 && i % 4 == 0)
            now += 10000;
        snprintf(buf, sizeof(buf), "%0100d", i); /* 124 bytes a record */
        CU_ASSERT_EQUAL(append_str(log, buf, NULL), 0);
    }
    /* Each roll applied retention: segment k's newest record is at
       t0 + 10 s * k and the last roll happened at t0 + 90 s, so the
       segments newer than t0 + 30 s (k = 3..9) are left. */
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.segments, 7);
    CU_ASSERT_EQUAL(st.segments_retired, 3);
    CU_ASSERT_EQUAL(st.start_offset, 12);
    CU_ASSERT_EQUAL(count_segment_files(o.dir), 7);

    /* 15 s later the cutoff is t0 + 45 s: segments 3 and 4 go. */
    now += 15000;
    CU_ASSERT_EQUAL(sc_event_log_retain(log, &removed, &err), 0);
    CU_ASSERT_EQUAL(removed, 2);
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.start_offset, 20);
    CU_ASSERT_EQUAL(count_segment_files(o.dir), 5);

    /* Far in the future everything is old, but the active segment stays. */
    now += 3600 * 1000;
    CU_ASSERT_EQUAL(sc_event_log_retain(log, &removed, &err), 0);
    CU_ASSERT_EQUAL(removed, 4);
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.segments, 1);
    CU_ASSERT_EQUAL(st.start_offset, 36);
    CU_ASSERT_EQUAL(st.next_offset, 40);
    CU_ASSERT_EQUAL(count_segment_files(o.dir), 1);
    sc_event_log_free(log);

    /* Ages come from the records, so they hold after a reopen too. */
    log = open_opts(&o);
    uint64_t off;
    now += 10;
    CU_ASSERT_EQUAL(append_str(log, "after", &off), 0);
    CU_ASSERT_EQUAL(off, 40);
    sc_event_log_free(log);
}

static char *segment_path(const char *dir, uint64_t base)
{
    static char p[600];
    snprintf(p, sizeof(p), "%s/%020llu.log", dir, (unsigned long long)base);
    return p;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static void fill_ten(sc_event_log_options *o)
{
    sc_event_log *log = open_opts(o);
    char buf[64];
    for (int i = 0; i < 10; i++) {
        snprintf(buf, sizeof(buf), "record %02d of ten", i); /* 16 bytes */
        CU_ASSERT_EQUAL(append_str(log, buf, NULL), 0);
    }
    sc_event_log_free(log);
}

static void check_continues_at(sc_event_log_options *o, uint64_t expect)
{
    sc_event_log *log = open_opts(o);
    collected *c = calloc(1, sizeof(*c));
    uint64_t off = 0;
    char buf[64];

    CU_ASSERT_EQUAL(append_str(log, "the next one", &off), 0);
    CU_ASSERT_EQUAL(off, expect);
    CU_ASSERT_EQUAL(read_all(log, 0, c), 0);
    CU_ASSERT_EQUAL(c->n, expect + 1);
    for (size_t i = 0; i < c->n && i < expect; i++) {
        snprintf(buf, sizeof(buf), "record %02d of ten", (int)i);
        CU_ASSERT_STRING_EQUAL(c->data[i], buf);
    }
    if (c->n == expect + 1)
        CU_ASSERT_STRING_EQUAL(c->data[expect], "the next one");
    collected_clear(c);
    free(c);
    sc_event_log_free(log);
}

static void test_torn_tail_is_cut(void)
{
    sc_event_log_options o = {.dir = fresh_dir("torn")};
    fill_ten(&o);
    const char *seg = segment_path(o.dir, 0);
    CU_ASSERT_EQUAL(file_size(seg), 10 * 40);
    /* The last record loses its last 5 bytes, as in a crash mid-write. */
    CU_ASSERT_EQUAL(truncate(seg, 10 * 40 - 5), 0);

    sc_event_log *log = open_opts(&o);
    sc_event_log_stats st;
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.next_offset, 9);
    CU_ASSERT_EQUAL(st.truncated_bytes, 40 - 5);
    CU_ASSERT_EQUAL(file_size(seg), 9 * 40);
    sc_event_log_free(log);
    check_continues_at(&o, 9);
}

static void test_garbage_tail_is_cut(void)
{
    sc_event_log_options o = {.dir = fresh_dir("garbage")};
    fill_ten(&o);
    const char *seg = segment_path(o.dir, 0);
    int fd = open(seg, O_WRONLY | O_APPEND);
    unsigned char junk[100];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (unsigned char)(i * 91 + 7);
    CU_ASSERT_EQUAL(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(fd);

    sc_event_log *log = open_opts(&o);
    sc_event_log_stats st;
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.next_offset, 10);
    CU_ASSERT_EQUAL(st.truncated_bytes, 100);
    sc_event_log_free(log);
    check_continues_at(&o, 10);
}

static void test_corrupt_crc_in_the_middle_cuts_there(void)
{
    sc_event_log_options o = {.dir = fresh_dir("crc")};
    fill_ten(&o);
    const char *seg = segment_path(o.dir, 0);
    /* Flip one payload byte of record 6: its header is intact, its CRC is
       not, so it and everything after it go. */
    int fd = open(seg, O_RDWR);
    char ch;
    off_t at = 6 * 40 + 24 + 3;
    CU_ASSERT_EQUAL(pread(fd, &ch, 1, at), 1);
    ch ^= 0x20;
    CU_ASSERT_EQUAL(pwrite(fd, &ch, 1, at), 1);
    close(fd);

    sc_event_log *log = open_opts(&o);
    sc_event_log_stats st;
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.next_offset, 6);
    CU_ASSERT_EQUAL(st.truncated_bytes, 4 * 40);
    CU_ASSERT_EQUAL(file_size(seg), 6 * 40);
    sc_event_log_free(log);
    check_continues_at(&o, 6);
}

/* Sealed segments are trusted at open; a damaged record in one is an error
   for the reader that reaches it, not silently skipped or cut. */
static void test_damage_in_sealed_segment_is_reported(void)
{
    sc_event_log_options o = {.dir = fresh_dir("sealed"),
                              .segment_bytes = 200}; /* 5 records */
    fill_ten(&o);
    const char *seg = segment_path(o.dir, 0);
    int fd = open(seg, O_RDWR);
    char ch;
    off_t at = 2 * 40 + 24 + 1;
    CU_ASSERT_EQUAL(pread(fd, &ch, 1, at), 1);
    ch ^= 0x01;
    CU_ASSERT_EQUAL(pwrite(fd, &ch, 1, at), 1);
    close(fd);

    sc_event_log *log = open_opts(&o);
    collected *c = calloc(1, sizeof(*c));
    polis_error err = {0};
    sc_event_log_stats st;
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.next_offset, 10);
    CU_ASSERT_EQUAL(st.segments, 2);
    CU_ASSERT_EQUAL(st.truncated_bytes, 0);
    CU_ASSERT_EQUAL(sc_event_log_read(log, 0, 10, 0, collect, c, NULL, &err),
                    POLIS_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "record 2 is damaged"));
    CU_ASSERT_EQUAL(c->n, 0);
    /* Past the damage, and in the next segment, reading works. */
    CU_ASSERT_EQUAL(read_all(log, 3, c), 0);
    CU_ASSERT_EQUAL(c->n, 7);
    collected_clear(c);
    free(c);
    sc_event_log_free(log);
}

/* fsync=never after a machine crash: a sealed segment may have lost its
   tail.  Readers skip the hole instead of getting stuck in it. */
static void test_gap_after_lost_sealed_tail_is_skipped(void)
{
    sc_event_log_options o = {.dir = fresh_dir("gap"),
                              .fsync = SC_EVENT_FSYNC_NEVER,
                              .segment_bytes = 200}; /* 5 records */
    fill_ten(&o);
    CU_ASSERT_EQUAL(truncate(segment_path(o.dir, 0), 3 * 40 + 10), 0);

    sc_event_log *log = open_opts(&o);
    collected *c = calloc(1, sizeof(*c));
    CU_ASSERT_EQUAL(read_all(log, 0, c), 0);
    CU_ASSERT_EQUAL(c->n, 3 + 5);
    if (c->n == 8) {
        CU_ASSERT_EQUAL(c->offsets[2], 2);
        CU_ASSERT_EQUAL(c->offsets[3], 5);
        CU_ASSERT_STRING_EQUAL(c->data[3], "record 05 of ten");
    }
    collected_clear(c);
    /* From inside the hole too. */
    uint64_t next = 0;
    polis_error err = {0};
    CU_ASSERT_EQUAL(sc_event_log_read(log, 4, 1, 0, collect, c, &next, &err),
                    0);
    CU_ASSERT_EQUAL(c->n, 1);
    CU_ASSERT_EQUAL(next, 6);
    if (c->n == 1)
        CU_ASSERT_EQUAL(c->offsets[0], 5);
    collected_clear(c);
    free(c);
    sc_event_log_free(log);
}

/*
 * The crash test at the storage level: a child publishes with
 * fsync=always and reports every acknowledged offset through a pipe; it is
 * killed with SIGKILL mid-burst; every acknowledged record must be there.
 */
static void test_kill9_keeps_acknowledged(void)
{
    sc_event_log_options o = {.dir = fresh_dir("kill9"),
                              .fsync = SC_EVENT_FSYNC_ALWAYS,
                              .segment_bytes = 16384};
    int fds[2];
    CU_ASSERT_FATAL(pipe(fds) == 0);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        sc_event_log *log = NULL;
        polis_error err = {0};
        if (sc_event_log_open(&o, &log, &err) != 0)
            _exit(2);
        char buf[512];
        for (uint64_t i = 0;; i++) {
            uint64_t off;
            payload_for(i, buf, sizeof(buf));
            sc_event ev = {buf, strlen(buf)};
            if (sc_event_log_append(log, &ev, 1, &off, &err) != 0)
                _exit(3);
            if (write(fds[1], &off, sizeof(off)) != sizeof(off))
                _exit(4);
        }
    }
    close(fds[1]);
    /* Let the burst get going (however slow the machine), then kill it
       ~200 ms later, in the middle of it. */
    uint64_t acked = 0, off;
    bool in_order = true;
    while (acked < 20 &&
           read(fds[0], &off, sizeof(off)) == (ssize_t)sizeof(off)) {
        if (off != acked)
            in_order = false;
        acked++;
    }
    CU_ASSERT_EQUAL(acked, 20);
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    CU_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    while (read(fds[0], &off, sizeof(off)) == (ssize_t)sizeof(off)) {
        if (off != acked)
            in_order = false;
        acked++;
    }
    close(fds[0]);
    CU_ASSERT(in_order);

    sc_event_log *log = open_opts(&o);
    collected *c = calloc(1, sizeof(*c));
    sc_event_log_stats st;
    sc_event_log_stats_get(log, &st);
    CU_ASSERT(st.next_offset >= acked);
    /* Check every acknowledged record, in chunks of what `collected` holds. */
    char buf[512];
    size_t missing = 0;
    for (uint64_t from = 0; from < acked;) {
        polis_error err = {0};
        uint64_t next = from;
        CU_ASSERT_EQUAL_FATAL(sc_event_log_read(log, from, 4096, 64u << 20,
                                                collect, c, &next, &err),
                              0);
        if (c->n == 0)
            break;
        for (size_t i = 0; i < c->n; i++) {
            uint64_t want = from + i;
            if (want >= acked)
                break;
            payload_for(want, buf, sizeof(buf));
            if (c->offsets[i] != want || strcmp(c->data[i], buf) != 0)
                missing++;
        }
        from = next;
        collected_clear(c);
    }
    CU_ASSERT_EQUAL(missing, 0);
    printf("\n    kill -9: %llu acknowledged, %llu on disk, %llu bytes cut\n",
           (unsigned long long)acked, (unsigned long long)st.next_offset,
           (unsigned long long)st.truncated_bytes);
    free(c);
    sc_event_log_free(log);
}

/* ---- concurrency ---- */

#define WRITERS    4
#define PER_WRITER 400

typedef struct writer_arg {
    sc_event_log *log;
    int id;
    int failures;
} writer_arg;

static void *writer_main(void *p)
{
    writer_arg *a = p;
    char buf[64];
    for (int i = 0; i < PER_WRITER; i++) {
        snprintf(buf, sizeof(buf), "w%d-%d", a->id, i);
        if (append_str(a->log, buf, NULL) != 0)
            a->failures++;
    }
    return NULL;
}

typedef struct reader_state {
    sc_event_log *log;
    int last_seen[WRITERS];
    uint64_t read;
    int out_of_order;
    int bad;
    int timeouts;
} reader_state;

static int reader_cb(void *ctx, const sc_event_record *r)
{
    reader_state *s = ctx;
    int w, i;
    char tmp[64];
    size_t n = r->len < sizeof(tmp) - 1 ? r->len : sizeof(tmp) - 1;
    memcpy(tmp, r->data, n);
    tmp[n] = 0;
    if (r->offset != s->read || sscanf(tmp, "w%d-%d", &w, &i) != 2 || w < 0 ||
        w >= WRITERS) {
        s->bad++;
    } else {
        if (i != s->last_seen[w] + 1)
            s->out_of_order++;
        s->last_seen[w] = i;
    }
    s->read++;
    return 0;
}

static void *reader_main(void *p)
{
    reader_state *s = p;
    while (s->read < WRITERS * PER_WRITER) {
        polis_error err = {0};
        if (sc_event_log_wait(s->log, s->read, 10000, &err) != 0) {
            s->timeouts++;
            break;
        }
        if (sc_event_log_read(s->log, s->read, 50, 0, reader_cb, s, NULL,
                              &err) != 0) {
            s->bad++;
            break;
        }
    }
    return NULL;
}

static void visible_hook(void *ctx, uint64_t next)
{
    uint64_t *max = ctx;
    /* Called from several threads, not necessarily in order. */
    uint64_t cur = __atomic_load_n(max, __ATOMIC_SEQ_CST);
    while (next > cur &&
           !__atomic_compare_exchange_n(max, &cur, next, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        ;
}

static void run_concurrent(sc_event_fsync mode, const char *tag)
{
    uint64_t visible = 0;
    sc_event_log_options o = {.dir = fresh_dir(tag),
                              .fsync = mode,
                              .segment_bytes = 8192,
                              .on_visible = visible_hook,
                              .on_visible_ctx = &visible};
    sc_event_log *log = open_opts(&o);
    pthread_t wt[WRITERS], rt;
    writer_arg wa[WRITERS];
    reader_state rs = {.log = log};
    for (int i = 0; i < WRITERS; i++)
        rs.last_seen[i] = -1;

    pthread_create(&rt, NULL, reader_main, &rs);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < WRITERS; i++) {
        wa[i] = (writer_arg){.log = log, .id = i};
        pthread_create(&wt[i], NULL, writer_main, &wa[i]);
    }
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(wt[i], NULL);
        CU_ASSERT_EQUAL(wa[i].failures, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(rt, NULL);
    CU_ASSERT_EQUAL(rs.read, WRITERS * PER_WRITER);
    CU_ASSERT_EQUAL(rs.bad, 0);
    CU_ASSERT_EQUAL(rs.out_of_order, 0);
    CU_ASSERT_EQUAL(rs.timeouts, 0);
    for (int i = 0; i < WRITERS; i++)
        CU_ASSERT_EQUAL(rs.last_seen[i], PER_WRITER - 1);

    sc_event_log_stats st;
    sc_event_log_stats_get(log, &st);
    double s = (double)(t1.tv_sec - t0.tv_sec) +
               (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("\n    %s: %d appends by %d threads in %.3f s (%.0f/s), "
           "%llu fsyncs\n",
           tag, WRITERS * PER_WRITER, WRITERS, s,
           (WRITERS * PER_WRITER) / (s > 0 ? s : 1e-9),
           (unsigned long long)st.fsyncs);
    if (mode == SC_EVENT_FSYNC_BATCH)
        CU_ASSERT(st.fsyncs >= 1);
    sc_event_log_free(log); /* joins the flusher, the last notifier */
    CU_ASSERT_EQUAL(visible, WRITERS * PER_WRITER);
}

static void test_concurrent_batch(void)
{
    run_concurrent(SC_EVENT_FSYNC_BATCH, "batch");
}

static void test_concurrent_always(void)
{
    run_concurrent(SC_EVENT_FSYNC_ALWAYS, "always");
}

static void test_concurrent_never(void)
{
    run_concurrent(SC_EVENT_FSYNC_NEVER, "never");
}

/* ---- group commit acknowledges after the fsync ---- */

typedef struct fsync_probe {
    pthread_mutex_t mu;
    uint64_t durable; /* highest offset an fsync has covered */
    unsigned calls;
} fsync_probe;

static void probe_hook(void *ctx, uint64_t durable_next)
{
    fsync_probe *p = ctx;
    /* A slow disk: an acknowledgement that did not wait would overtake. */
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
    pthread_mutex_lock(&p->mu);
    if (durable_next > p->durable)
        p->durable = durable_next;
    p->calls++;
    pthread_mutex_unlock(&p->mu);
}

typedef struct ack_arg {
    sc_event_log *log;
    fsync_probe *probe;
    int early; /* acknowledgements before their fsync */
    int failures;
} ack_arg;

static void *ack_writer(void *p)
{
    ack_arg *a = p;
    for (int i = 0; i < 60; i++) {
        uint64_t off;
        if (append_str(a->log, "payload", &off) != 0) {
            a->failures++;
            continue;
        }
        pthread_mutex_lock(&a->probe->mu);
        if (a->probe->durable < off + 1)
            a->early++;
        pthread_mutex_unlock(&a->probe->mu);
    }
    return NULL;
}

static unsigned run_ack_probe(sc_event_fsync mode)
{
    fsync_probe probe = {.mu = PTHREAD_MUTEX_INITIALIZER};
    sc_event_log_options o = {.dir = fresh_dir("ack"),
                              .fsync = mode,
                              .batch_interval_ms = 2,
                              .on_fsync = probe_hook,
                              .on_fsync_ctx = &probe};
    sc_event_log *log = open_opts(&o);
    pthread_t t[3];
    ack_arg a[3];
    for (int i = 0; i < 3; i++) {
        a[i] = (ack_arg){.log = log, .probe = &probe};
        pthread_create(&t[i], NULL, ack_writer, &a[i]);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(a[i].early, 0);
        CU_ASSERT_EQUAL(a[i].failures, 0);
    }
    sc_event_log_free(log);
    return probe.calls;
}

static void test_batch_acks_after_fsync(void)
{
    unsigned calls = run_ack_probe(SC_EVENT_FSYNC_BATCH);
    /* Group commit: fewer fsyncs than appends (each fsync takes 5 ms while
       three writers keep appending). */
    CU_ASSERT(calls >= 1);
    CU_ASSERT(calls < 180);
    printf("\n    batch: 180 appends acknowledged with %u fsyncs\n", calls);
}

static void test_always_acks_after_fsync(void)
{
    CU_ASSERT_EQUAL(run_ack_probe(SC_EVENT_FSYNC_ALWAYS), 180);
}

/* ---- bounds and errors ---- */

static void test_bounds_and_errors(void)
{
    sc_event_log_options o = {.dir = fresh_dir("bounds"),
                              .max_record_bytes = 1000};
    sc_event_log *log = open_opts(&o), *second = NULL;
    polis_error err = {0};
    char big[1001];
    memset(big, 'b', sizeof(big));
    sc_event ev = {big, sizeof(big)};

    CU_ASSERT_EQUAL(sc_event_log_append(log, &ev, 1, NULL, &err),
                    POLIS_ETOOBIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "above the limit of 1000"));
    ev.len = 1000;
    CU_ASSERT_EQUAL(sc_event_log_append(log, &ev, 1, NULL, &err), 0);
    CU_ASSERT_EQUAL(sc_event_log_append(log, &ev, 0, NULL, &err), POLIS_EINVAL);
    sc_event empty = {NULL, 0};
    uint64_t off = 0;
    CU_ASSERT_EQUAL(sc_event_log_append(log, &empty, 1, &off, &err), 0);
    CU_ASSERT_EQUAL(off, 1);

    /* One writer per directory. */
    CU_ASSERT_EQUAL(sc_event_log_open(&o, &second, &err), POLIS_ECONFLICT);
    CU_ASSERT_PTR_NULL(second);

    sc_event_log_options bad = o;
    bad.max_record_bytes = SC_EVENT_LOG_RECORD_MAX + 1;
    CU_ASSERT_EQUAL(sc_event_log_open(&bad, &second, &err), POLIS_EINVAL);

    /* Waiting: the record exists, a later one times out. */
    CU_ASSERT_EQUAL(sc_event_log_wait(log, 1, 0, &err), 0);
    CU_ASSERT_EQUAL(sc_event_log_wait(log, 2, 20, &err), POLIS_ETIMEDOUT);

    sc_event_log_shutdown(log);
    CU_ASSERT_EQUAL(sc_event_log_wait(log, 2, -1, &err), POLIS_ECANCELED);
    CU_ASSERT_EQUAL(append_str(log, "late", NULL), POLIS_ECANCELED);
    sc_event_log_free(log);
    sc_event_log_free(NULL);
}

/* A waiter blocked with no timeout is woken by a later append. */
typedef struct waiter {
    sc_event_log *log;
    int rc;
} waiter;

static void *waiter_main(void *p)
{
    waiter *w = p;
    polis_error err = {0};
    w->rc = sc_event_log_wait(w->log, 0, -1, &err);
    return NULL;
}

static void test_waiter_woken_by_append(void)
{
    sc_event_log_options o = {.dir = fresh_dir("wake"),
                              .fsync = SC_EVENT_FSYNC_BATCH};
    sc_event_log *log = open_opts(&o);
    waiter w = {.log = log, .rc = 99};
    pthread_t t;
    pthread_create(&t, NULL, waiter_main, &w);
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    CU_ASSERT_EQUAL(append_str(log, "hello", NULL), 0);
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(w.rc, 0);
    sc_event_log_free(log);
}

/* ---- asynchronous appends ---- */

typedef struct async_done {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned calls, ok, cancelled;
    uint64_t firsts[256];
} async_done;

static void async_cb(void *ctx, int rc, uint64_t first, const polis_error *err)
{
    async_done *d = ctx;

    (void)err;
    pthread_mutex_lock(&d->mu);
    if (rc == 0 && d->ok < 256)
        d->firsts[d->ok++] = first;
    if (rc == POLIS_ECANCELED)
        d->cancelled++;
    d->calls++;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void test_async_batch_shares_fsyncs(void)
{
    fsync_probe probe = {.mu = PTHREAD_MUTEX_INITIALIZER};
    async_done d = {.mu = PTHREAD_MUTEX_INITIALIZER,
                    .cv = PTHREAD_COND_INITIALIZER};
    sc_event_log_options o = {.dir = fresh_dir("async"),
                              .fsync = SC_EVENT_FSYNC_BATCH,
                              .batch_interval_ms = 50,
                              .on_fsync = probe_hook,
                              .on_fsync_ctx = &probe};
    sc_event_log *log = open_opts(&o);
    polis_error err = {0};
    collected c = {0};
    char text[32];

    /* One thread, 100 appends, none waits: they ride on few fsyncs, and
     * each is told its offsets once they are durable. */
    for (int i = 0; i < 100; i++) {
        sc_event ev = {text, 0};
        uint64_t first = 0;
        bool pending = false;

        ev.len = (size_t)snprintf(text, sizeof(text), "ev-%d", i);
        CU_ASSERT_EQUAL(sc_event_log_append_async(log, &ev, 1, async_cb, &d,
                                                  &first, &pending, &err),
                        0);
        CU_ASSERT(pending);
        CU_ASSERT_EQUAL(first, (uint64_t)i);
    }
    pthread_mutex_lock(&d.mu);
    while (d.calls < 100) {
        struct timespec at;
        clock_gettime(CLOCK_REALTIME, &at);
        at.tv_sec += 10;
        if (pthread_cond_timedwait(&d.cv, &d.mu, &at) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&d.mu);
    CU_ASSERT_EQUAL(d.calls, 100);
    CU_ASSERT_EQUAL(d.ok, 100);
    for (unsigned i = 0; i < d.ok; i++)
        CU_ASSERT_EQUAL(d.firsts[i], i); /* in append order */
    CU_ASSERT(probe.calls >= 1 && probe.calls < 20);
    printf("\n    100 asynchronous appends from one thread, %u fsyncs\n",
           probe.calls);
    CU_ASSERT_EQUAL(read_all(log, 0, &c), 0);
    CU_ASSERT_EQUAL(c.n, 100);

    /* Still waiting for its fsync at shutdown: cancelled, exactly once. */
    {
        sc_event ev = {"late", 4};
        bool pending = false;
        CU_ASSERT_EQUAL(sc_event_log_append_async(log, &ev, 1, async_cb, &d,
                                                  NULL, &pending, &err),
                        0);
        sc_event_log_shutdown(log);
        CU_ASSERT_EQUAL(d.calls, pending ? 101u : 100u);
        sc_event_log_shutdown(log);
        sc_event_log_free(log);
        CU_ASSERT_EQUAL(d.calls, pending ? 101u : 100u);
        CU_ASSERT(!pending || d.cancelled + d.ok == 101);
    }
    for (size_t i = 0; i < c.n; i++)
        free(c.data[i]);
}

static void test_async_always_is_durable_on_return(void)
{
    fsync_probe probe = {.mu = PTHREAD_MUTEX_INITIALIZER};
    async_done d = {.mu = PTHREAD_MUTEX_INITIALIZER,
                    .cv = PTHREAD_COND_INITIALIZER};
    sc_event_log_options o = {.dir = fresh_dir("async-always"),
                              .fsync = SC_EVENT_FSYNC_ALWAYS,
                              .on_fsync = probe_hook,
                              .on_fsync_ctx = &probe};
    sc_event_log *log = open_opts(&o);
    sc_event ev = {"x", 1};
    polis_error err = {0};
    bool pending = true;

    CU_ASSERT_EQUAL(sc_event_log_append_async(log, &ev, 1, async_cb, &d, NULL,
                                              &pending, &err),
                    0);
    CU_ASSERT(!pending);
    CU_ASSERT_EQUAL(probe.calls, 1);
    CU_ASSERT_EQUAL(d.calls, 0); /* no callback: the call was the ack */
    sc_event_log_free(log);
}

/* A port's retention changed while its log is open: in force at once. */
static void test_configure_retention(void)
{
    sc_event_log_options o = {.dir = fresh_dir("configure-ret"),
                              .fsync = SC_EVENT_FSYNC_NEVER,
                              .segment_bytes = 1000};
    sc_event_log *log = open_opts(&o);
    sc_event_log_stats st;
    polis_error err = {0};
    char buf[128];

    for (int i = 0; i < 100; i++) {
        snprintf(buf, sizeof(buf), "%080d", i); /* 104 bytes a record */
        CU_ASSERT_EQUAL(append_str(log, buf, NULL), 0);
    }
    sc_event_log_stats_get(log, &st);
    CU_ASSERT_EQUAL(st.start_offset, 0); /* no bound yet: all kept */
    o.retention_bytes = 3000;
    CU_ASSERT_EQUAL(sc_event_log_configure(log, &o, &err), 0);
    sc_event_log_stats_get(log, &st);
    CU_ASSERT(st.bytes <= 3000 + 1000);
    CU_ASSERT(st.start_offset > 50);
    CU_ASSERT_EQUAL(count_segment_files(o.dir), st.segments);
    /* Bad values change nothing. */
    o.retention_ms = -1;
    CU_ASSERT_EQUAL(sc_event_log_configure(log, &o, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "retention -1 ms"));
    sc_event_log_free(log);
}

/* Asynchronous appends waiting for a batch fsync are answered after a
 * switch to ALWAYS, and a switch back to BATCH starts the flusher. */
static void test_configure_fsync_modes(void)
{
    fsync_probe probe = {.mu = PTHREAD_MUTEX_INITIALIZER};
    async_done d = {.mu = PTHREAD_MUTEX_INITIALIZER,
                    .cv = PTHREAD_COND_INITIALIZER};
    /* A long batch interval keeps the second append waiting. */
    sc_event_log_options o = {.dir = fresh_dir("configure-fsync"),
                              .fsync = SC_EVENT_FSYNC_BATCH,
                              .batch_interval_ms = 1500,
                              .on_fsync = probe_hook,
                              .on_fsync_ctx = &probe};
    sc_event_log *log = open_opts(&o);
    sc_event ev = {"x", 1};
    polis_error err = {0};
    bool pending = false;
    struct timespec at;

    /* The first append's fsync starts the interval; the next two wait. */
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(sc_event_log_append_async(log, &ev, 1, async_cb, &d,
                                                  NULL, &pending, &err),
                        0);
        CU_ASSERT(pending);
        clock_gettime(CLOCK_REALTIME, &at);
        at.tv_sec += 10;
        pthread_mutex_lock(&d.mu);
        while (i == 0 && d.calls < 1 &&
               pthread_cond_timedwait(&d.cv, &d.mu, &at) != ETIMEDOUT)
            ;
        pthread_mutex_unlock(&d.mu);
    }
    CU_ASSERT_EQUAL(d.calls, 1);
    o.fsync = SC_EVENT_FSYNC_ALWAYS;
    CU_ASSERT_EQUAL(sc_event_log_configure(log, &o, &err), 0);
    /* Now durable on return, no callback... */
    pending = true;
    CU_ASSERT_EQUAL(sc_event_log_append_async(log, &ev, 1, async_cb, &d, NULL,
                                              &pending, &err),
                    0);
    CU_ASSERT(!pending);
    /* ...and the two from before are told, once each. */
    clock_gettime(CLOCK_REALTIME, &at);
    at.tv_sec += 10;
    pthread_mutex_lock(&d.mu);
    while (d.calls < 3 &&
           pthread_cond_timedwait(&d.cv, &d.mu, &at) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&d.mu);
    CU_ASSERT_EQUAL(d.calls, 3);
    CU_ASSERT_EQUAL(d.ok, 3);
    sc_event_log_free(log);

    /* Opened in NEVER (no flusher), switched to BATCH: appends are acked
     * through the flusher it starts. */
    memset(&d, 0, sizeof(d));
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cv, NULL);
    o.fsync = SC_EVENT_FSYNC_NEVER;
    o.batch_interval_ms = 0;
    log = open_opts(&o);
    o.fsync = SC_EVENT_FSYNC_BATCH;
    CU_ASSERT_EQUAL(sc_event_log_configure(log, &o, &err), 0);
    CU_ASSERT_EQUAL(sc_event_log_append_async(log, &ev, 1, async_cb, &d, NULL,
                                              &pending, &err),
                    0);
    CU_ASSERT(pending);
    clock_gettime(CLOCK_REALTIME, &at);
    at.tv_sec += 10;
    pthread_mutex_lock(&d.mu);
    while (d.calls < 1 &&
           pthread_cond_timedwait(&d.cv, &d.mu, &at) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&d.mu);
    CU_ASSERT_EQUAL(d.ok, 1);
    /* Without a callback an asynchronous append in BATCH is refused, and
     * nothing is written. */
    CU_ASSERT_EQUAL(sc_event_log_append_async(log, &ev, 1, NULL, NULL, NULL,
                                              &pending, &err),
                    POLIS_EINVAL);
    {
        sc_event_log_stats st;
        sc_event_log_stats_get(log, &st);
        CU_ASSERT_EQUAL(st.next_offset, 5);
    }
    sc_event_log_free(log);
}

typedef struct one_append {
    sc_event_log *log;
    uint64_t off;
    int rc;
} one_append;

static void *append_one(void *p)
{
    one_append *a = p;

    a->rc = append_str(a->log, "waits-for-its-batch", &a->off);
    return NULL;
}

/* A switch to NEVER while a BATCH append waits for its fsync (here the
 * next append also rolls the segment): that append is still answered
 * only once an fsync covered it. */
static void test_configure_never_keeps_waiters_durable(void)
{
    fsync_probe probe = {.mu = PTHREAD_MUTEX_INITIALIZER};
    sc_event_log_options o = {.dir = fresh_dir("configure-never"),
                              .fsync = SC_EVENT_FSYNC_BATCH,
                              .batch_interval_ms = 2000,
                              .segment_bytes = 256,
                              .on_fsync = probe_hook,
                              .on_fsync_ctx = &probe};
    sc_event_log *log = open_opts(&o);
    one_append a = {.log = log};
    sc_event_log_stats st = {0};
    polis_error err = {0};
    struct timespec t0, t1;
    uint64_t before;
    char big[300];
    pthread_t t;

    /* The first append's fsync starts the interval; the next one waits. */
    CU_ASSERT_EQUAL(append_str(log, "first", NULL), 0);
    sc_event_log_stats_get(log, &st);
    before = st.bytes;
    CU_ASSERT_FATAL(pthread_create(&t, NULL, append_one, &a) == 0);
    /* Its record is written (bytes grow) long before it is acknowledged. */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        struct timespec pause = {0, 1000 * 1000};
        nanosleep(&pause, NULL);
        sc_event_log_stats_get(log, &st);
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while (st.bytes == before && t1.tv_sec - t0.tv_sec < 10);
    CU_ASSERT_EQUAL(st.next_offset, 1); /* still waiting */
    o.fsync = SC_EVENT_FSYNC_NEVER;
    CU_ASSERT_EQUAL(sc_event_log_configure(log, &o, &err), 0);
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CU_ASSERT_EQUAL(append_str(log, big, NULL), 0); /* rolls */
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(a.rc, 0);
    pthread_mutex_lock(&probe.mu);
    CU_ASSERT(probe.durable >= a.off + 1);
    pthread_mutex_unlock(&probe.mu);
    sc_event_log_free(log);
}

static const test_case event_log_cases[] = {
    {"round_trip_across_rolls", test_round_trip_across_rolls},
    {"offsets_continue_after_reopen", test_offsets_continue_after_reopen},
    {"retention_by_size", test_retention_by_size},
    {"retention_by_age", test_retention_by_age},
    {"torn_tail_is_cut", test_torn_tail_is_cut},
    {"garbage_tail_is_cut", test_garbage_tail_is_cut},
    {"corrupt_crc_in_the_middle_cuts_there",
     test_corrupt_crc_in_the_middle_cuts_there},
    {"damage_in_sealed_segment_is_reported",
     test_damage_in_sealed_segment_is_reported},
    {"gap_after_lost_sealed_tail_is_skipped",
     test_gap_after_lost_sealed_tail_is_skipped},
    {"kill9_keeps_acknowledged", test_kill9_keeps_acknowledged},
    {"concurrent_batch", test_concurrent_batch},
    {"concurrent_always", test_concurrent_always},
    {"concurrent_never", test_concurrent_never},
    {"batch_acks_after_fsync", test_batch_acks_after_fsync},
    {"always_acks_after_fsync", test_always_acks_after_fsync},
    {"bounds_and_errors", test_bounds_and_errors},
    {"waiter_woken_by_append", test_waiter_woken_by_append},
    {"async_batch_shares_fsyncs", test_async_batch_shares_fsyncs},
    {"configure_retention", test_configure_retention},
    {"configure_fsync_modes", test_configure_fsync_modes},
    {"configure_never_keeps_waiters_durable",
     test_configure_never_keeps_waiters_durable},
    {"async_always_is_durable_on_return",
     test_async_always_is_durable_on_return},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"event_log", NULL, NULL, event_log_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
