/*
 * test_metrics.c — the Prometheus registry renders what was counted, one
 * HELP/TYPE per metric name, cumulative histogram buckets, bounded series.
 */
#include "common/metrics.h"
#include "tests/support/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_counter_and_gauge(void)
{
    metrics *m = metrics_new();
    char *text;

    metric_add(
        metrics_counter(m, "polis_x_total", "X things", "method=\"Get\""), 2);
    metric_add(
        metrics_counter(m, "polis_x_total", "X things", "method=\"Get\""), 3);
    metric_add(
        metrics_counter(m, "polis_x_total", "X things", "method=\"Apply\""), 1);
    metric_set(metrics_gauge(m, "polis_up", "Up", NULL), 1);
    text = metrics_render(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "polis_x_total{method=\"Get\"} 5\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "polis_x_total{method=\"Apply\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "polis_up 1\n"));
    /* One HELP line per name, however many series. */
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# HELP polis_x_total X things\n"));
    CU_ASSERT_PTR_NULL(strstr(strstr(text, "# HELP polis_x_total") + 1,
                              "# HELP polis_x_total"));
    free(text);
    metrics_free(m);
}

static void test_histogram_buckets_are_cumulative(void)
{
    metrics *m = metrics_new();
    const double b[] = {0.1, 1};
    metric_series *h =
        metrics_histogram(m, "polis_lat_seconds", "Latency", NULL, b, 2);
    char *text;

    metric_observe(h, 0.05);
    metric_observe(h, 0.5);
    metric_observe(h, 5);
    text = metrics_render(m);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "polis_lat_seconds_bucket{le=\"0.1\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "polis_lat_seconds_bucket{le=\"1\"} 2\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(text, "polis_lat_seconds_bucket{le=\"+Inf\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "polis_lat_seconds_count 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "polis_lat_seconds_sum 5.55"));
    free(text);
    metrics_free(m);
}

static void test_series_are_bounded(void)
{
    metrics *m = metrics_new();
    char labels[32];
    int made = 0;

    for (int i = 0; i < METRICS_MAX_SERIES + 10; i++) {
        snprintf(labels, sizeof(labels), "id=\"%d\"", i);
        if (metrics_counter(m, "polis_many_total", "Many", labels))
            made++;
    }
    CU_ASSERT_EQUAL(made, METRICS_MAX_SERIES);
    metric_add(NULL, 1); /* updates on a refused series are no-ops */
    metrics_free(m);
}

static const test_case cases[] = {
    {"counter_and_gauge", test_counter_and_gauge},
    {"histogram_buckets_are_cumulative", test_histogram_buckets_are_cumulative},
    {"series_are_bounded", test_series_are_bounded},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"metrics", NULL, NULL, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
