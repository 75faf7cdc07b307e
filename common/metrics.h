/*
 * metrics.h — a small Prometheus registry: counters, gauges and histograms
 * identified by name + label set, rendered in the text exposition format
 * (version 0.0.4) for the daemons' /metrics endpoints.  Thread-safe; updates
 * are lock-free atomics once a series is looked up.
 */
#ifndef POLIS_METRICS_H
#define POLIS_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct metrics metrics;
typedef struct metric_series metric_series;

/* Caller frees with metrics_free(). NULL on allocation failure. */
metrics *metrics_new(void);
void metrics_free(metrics *m); /* NULL is a no-op */

/*
 * Get or create a series.  `labels` is the inside of the braces
 * ('method="Apply",code="OK"') or NULL.  The series lives as long as the
 * registry; NULL only when out of memory or the registry is full (bounded
 * at METRICS_MAX_SERIES, so a label explosion cannot eat memory), and every
 * update function accepts NULL and does nothing.
 */
#define METRICS_MAX_SERIES 4096
metric_series *metrics_counter(metrics *m, const char *name, const char *help,
                               const char *labels);
metric_series *metrics_gauge(metrics *m, const char *name, const char *help,
                             const char *labels);
/* buckets: ascending upper bounds (seconds, usually); +Inf is implicit. */
metric_series *metrics_histogram(metrics *m, const char *name, const char *help,
                                 const char *labels, const double *buckets,
                                 size_t n_buckets);

void metric_add(metric_series *s, uint64_t n);    /* counters */
void metric_set(metric_series *s, int64_t value); /* gauges */
void metric_gauge_add(metric_series *s, int64_t delta);
void metric_observe(metric_series *s, double value); /* histograms */

/* Latency buckets from 100 µs to 10 s, in seconds. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_buckets_n;

/* The whole registry in Prometheus text format; caller frees. NULL on
 * allocation failure. */
char *metrics_render(metrics *m);

#endif
