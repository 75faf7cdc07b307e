/*
 * bench_file.c — throughput of the governed file port (sidecar/file_port.h)
 * on a generated CSV of orders (~200 MB; BENCH_FILE_MB overrides): the raw
 * chunked read, and fp_stream with two masks (email, show_last) and a row
 * filter (region == subject.region), in input MB/s on one core.  Prints
 * `bench: <name> <value> <unit>` lines; each figure is the median of 3 runs
 * over a file in the page cache.
 */
#include "sidecar/file_port.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RUNS 3

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int count_sink(void *ctx, const void *data, size_t len)
{
    (void)data;
    *(uint64_t *)ctx += len;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Orders with realistic widths: ~85 bytes a row, a third outside EU. */
static int generate(const char *path, uint64_t bytes)
{
    static const char *const regions[] = {"EU", "US", "EU", "APAC", "EU", "US"};
    FILE *f = fopen(path, "w");
    uint64_t written = 0, id = 0;
    unsigned seed = 42;

    if (f == NULL)
        return -1;
    written += (uint64_t)fprintf(f, "order_id,customer_email,card_number,"
                                    "region,amount,order_date\n");
    while (written < bytes) {
        unsigned r;
        id++;
        seed = seed * 1103515245u + 12345u;
        r = seed >> 8;
        written += (uint64_t)fprintf(
            f,
            "%llu,customer.%u@mail%u.example.com,4%03u%04u%04u%04u,%s,"
            "%u.%02u,2024-%02u-%02uT%02u:%02u:00Z\n",
            (unsigned long long)id, r % 1000000, r % 50, r % 1000,
            (r >> 3) % 10000, (unsigned)(id % 10000), (r >> 7) % 10000,
            regions[id % 6], r % 5000, r % 100, (unsigned)(id % 12) + 1,
            (unsigned)(id % 28) + 1, r % 24, (r >> 5) % 60);
    }
    return fclose(f);
}

int main(void)
{
    static const char policy[] =
        "[{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
        "\"metadata\":{\"name\":\"orders\"},\"spec\":{\"domain\":\"sales\","
        "\"schema\":[{\"name\":\"order_id\",\"type\":\"integer\"},"
        "{\"name\":\"customer_email\",\"type\":\"string\","
        "\"classification\":[\"pii.email\"]},"
        "{\"name\":\"card_number\",\"type\":\"string\","
        "\"classification\":[\"pci.pan\"]},"
        "{\"name\":\"region\",\"type\":\"string\"},"
        "{\"name\":\"amount\",\"type\":\"decimal\"},"
        "{\"name\":\"order_date\",\"type\":\"timestamp\"}]}},"
        "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
        "\"metadata\":{\"name\":\"p\"},\"spec\":{\"rules\":["
        "{\"name\":\"read\",\"effect\":\"allow\",\"subjects\":[\"*\"],"
        "\"resources\":[\"sales/*\"]},"
        "{\"name\":\"email\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
        "\"resources\":[\"*\"],\"mask\":{\"method\":\"email\","
        "\"classifications\":[\"pii.email\"]}},"
        "{\"name\":\"card\",\"effect\":\"mask\",\"subjects\":[\"*\"],"
        "\"resources\":[\"*\"],\"mask\":{\"method\":\"show_last\","
        "\"classifications\":[\"pci.pan\"],\"params\":{\"n\":4}}},"
        "{\"name\":\"region\",\"effect\":\"filter\",\"subjects\":[\"*\"],"
        "\"resources\":[\"sales/*\"],"
        "\"filter\":\"region == subject.region\"}]}}]";
    const char *tmp = getenv("TMPDIR");
    const char *mb_env = getenv("BENCH_FILE_MB");
    uint64_t bytes = (uint64_t)(mb_env ? atoi(mb_env) : 200) << 20;
    char dir[512], path[600];
    json_error_t jerr;
    json_t *docs = json_loads(policy, 0, &jerr);
    pol_engine *engine = NULL;
    pol_decision *d = pol_decision_new();
    polis_error err = {0};
    pol_expr_attr attr = {"region", false, "EU", NULL, 0};
    pol_request req;
    fp_column *schema = NULL;
    size_t nschema = 0;
    fp_options o;
    double raw[RUNS], masked[RUNS], mb;
    fp_stats st = {0};
    int i, rc = 1;

    snprintf(dir, sizeof dir, "%s/polis-bench-file-XXXXXX", tmp ? tmp : "/tmp");
    if (docs == NULL || d == NULL || mkdtemp(dir) == NULL) {
        fprintf(stderr, "bench_file: setup failed\n");
        return 1;
    }
    snprintf(path, sizeof path, "%s/orders.csv", dir);
    if (pol_engine_build(docs, NULL, &engine, &err) != 0 ||
        fp_schema_from_product(json_array_get(docs, 0), &schema, &nschema,
                               &err) != 0) {
        fprintf(stderr, "bench_file: %s: %s\n", err.where, err.message);
        goto out;
    }
    memset(&req, 0, sizeof req);
    req.subject.name = "bench";
    req.subject.attrs = &attr;
    req.subject.nattrs = 1;
    req.product = "sales/orders";
    req.port = POL_PORT_FILE;
    if (pol_decide(engine, &req, d, &err) != 0 || !pol_decision_allowed(d)) {
        fprintf(stderr, "bench_file: decision refused\n");
        goto out;
    }
    memset(&o, 0, sizeof o);
    o.format = FP_FORMAT_CSV;
    o.schema = schema;
    o.nschema = nschema;
    o.decision = d;
    o.subject = &req.subject;
    if (generate(path, bytes) != 0) {
        fprintf(stderr, "bench_file: cannot write %s\n", path);
        goto out;
    }
    for (i = 0; i < RUNS; i++) {
        uint64_t out_bytes = 0;
        double t0;
        int fd = open(path, O_RDONLY);

        t0 = now_s();
        if (fd < 0 || fp_stream_raw(fd, count_sink, &out_bytes, &st, &err)) {
            fprintf(stderr, "bench_file: raw: %s\n", err.message);
            goto out;
        }
        raw[i] = (double)st.bytes_read / (now_s() - t0) / 1e6;
        close(fd);

        fd = open(path, O_RDONLY);
        out_bytes = 0;
        t0 = now_s();
        if (fd < 0 || fp_stream(fd, &o, count_sink, &out_bytes, &st, &err)) {
            fprintf(stderr, "bench_file: masked: %s: %s\n", err.where,
                    err.message);
            goto out;
        }
        masked[i] = (double)st.bytes_read / (now_s() - t0) / 1e6;
        close(fd);
    }
    qsort(raw, RUNS, sizeof raw[0], cmp_double);
    qsort(masked, RUNS, sizeof masked[0], cmp_double);
    mb = (double)st.bytes_read / 1e6;
    printf("bench: file_input_mb %.0f MB\n", mb);
    printf("bench: file_rows_read %llu rows\n",
           (unsigned long long)st.rows_read);
    printf("bench: file_rows_written %llu rows\n",
           (unsigned long long)st.rows_written);
    printf("bench: file_raw_read_mb_per_s %.0f MB/s\n", raw[RUNS / 2]);
    printf("bench: file_masked_mb_per_s %.0f MB/s\n", masked[RUNS / 2]);
    printf("bench: file_masked_vs_raw_ratio %.3f\n",
           masked[RUNS / 2] / raw[RUNS / 2]);
    rc = 0;
out:
    unlink(path);
    rmdir(dir);
    free(schema);
    pol_decision_free(d);
    pol_engine_free(engine);
    json_decref(docs);
    return rc;
}
