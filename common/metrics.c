/*
 * metrics.c — Prometheus registry (metrics.h).  Series are kept in a flat
 * array under a mutex for lookup; values are C11 atomics so hot paths only
 * pay an atomic add.  Rendering groups series by metric name.
 */
#include "common/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

#define METRICS_MAX_BUCKETS 24

struct metric_series {
    enum metric_type type;
    char *name;
    char *help;
    char *labels;
    _Atomic uint64_t count; /* counter value, histogram count */
    _Atomic int64_t gauge;
    _Atomic uint64_t sum_micro; /* histogram sum, in millionths */
    size_t n_buckets;
    double bounds[METRICS_MAX_BUCKETS];
    _Atomic uint64_t buckets[METRICS_MAX_BUCKETS];
};

struct metrics {
    pthread_mutex_t lock;
    metric_series **series;
    size_t n, cap;
};

const double metrics_latency_buckets[] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
const size_t metrics_latency_buckets_n =
    sizeof(metrics_latency_buckets) / sizeof(metrics_latency_buckets[0]);

metrics *metrics_new(void)
{
    metrics *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    return m;
}

static void series_free(metric_series *s)
{
    free(s->name);
    free(s->help);
    free(s->labels);
    free(s);
}

void metrics_free(metrics *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->n; i++)
        series_free(m->series[i]);
    free(m->series);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static metric_series *series_get(metrics *m, enum metric_type type,
                                 const char *name, const char *help,
                                 const char *labels, const double *bounds,
                                 size_t n_bounds)
{
    metric_series *s = NULL;

    if (m == NULL || name == NULL)
        return NULL;
    if (labels == NULL)
        labels = "";
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n; i++) {
        metric_series *c = m->series[i];
        if (c->type == type && strcmp(c->name, name) == 0 &&
            strcmp(c->labels, labels) == 0) {
            s = c;
            goto out;
        }
    }
    if (m->n >= METRICS_MAX_SERIES)
        goto out;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 32;
        metric_series **grown = realloc(m->series, cap * sizeof(*grown));
        if (grown == NULL)
            goto out;
        m->series = grown;
        m->cap = cap;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto out;
    s->type = type;
    s->name = strdup(name);
    s->help = strdup(help ? help : "");
    s->labels = strdup(labels);
    if (s->name == NULL || s->help == NULL || s->labels == NULL) {
        series_free(s);
        s = NULL;
        goto out;
    }
    if (n_bounds > METRICS_MAX_BUCKETS)
        n_bounds = METRICS_MAX_BUCKETS;
    s->n_buckets = n_bounds;
    for (size_t i = 0; i < n_bounds; i++)
        s->bounds[i] = bounds[i];
    m->series[m->n++] = s;
out:
    pthread_mutex_unlock(&m->lock);
    return s;
}

metric_series *metrics_counter(metrics *m, const char *name, const char *help,
                               const char *labels)
{
    return series_get(m, METRIC_COUNTER, name, help, labels, NULL, 0);
}

metric_series *metrics_gauge(metrics *m, const char *name, const char *help,
                             const char *labels)
{
    return series_get(m, METRIC_GAUGE, name, help, labels, NULL, 0);
}

metric_series *metrics_histogram(metrics *m, const char *name, const char *help,
                                 const char *labels, const double *buckets,
                                 size_t n_buckets)
{
    return series_get(m, METRIC_HISTOGRAM, name, help, labels, buckets,
                      n_buckets);
}

void metric_add(metric_series *s, uint64_t n)
{
    if (s)
        atomic_fetch_add_explicit(&s->count, n, memory_order_relaxed);
}

void metric_set(metric_series *s, int64_t value)
{
    if (s)
        atomic_store_explicit(&s->gauge, value, memory_order_relaxed);
}

void metric_gauge_add(metric_series *s, int64_t delta)
{
    if (s)
        atomic_fetch_add_explicit(&s->gauge, delta, memory_order_relaxed);
}

void metric_observe(metric_series *s, double value)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n_buckets; i++)
        if (value <= s->bounds[i])
            atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
    if (value > 0)
        atomic_fetch_add_explicit(&s->sum_micro, (uint64_t)(value * 1e6),
                                  memory_order_relaxed);
}

/* A growable text buffer for rendering; bounded by the series cap. */
typedef struct render_buf {
    char *p;
    size_t len, cap;
    int failed;
} render_buf;

static void rb_printf(render_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void rb_printf(render_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->failed)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *grown = realloc(b->p, cap);
        if (grown == NULL) {
            b->failed = 1;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
}

static const char *type_name(enum metric_type t)
{
    return t == METRIC_COUNTER ? "counter"
           : t == METRIC_GAUGE ? "gauge"
                               : "histogram";
}

static void render_labels(render_buf *b, const char *labels, const char *extra)
{
    if (labels[0] == '\0' && extra == NULL)
        return;
    rb_printf(b, "{%s%s%s}", labels, labels[0] && extra ? "," : "",
              extra ? extra : "");
}

static void render_series(render_buf *b, metric_series *s)
{
    char le[64];

    switch (s->type) {
    case METRIC_COUNTER:
        rb_printf(b, "%s", s->name);
        render_labels(b, s->labels, NULL);
        rb_printf(b, " %llu\n", (unsigned long long)atomic_load(&s->count));
        break;
    case METRIC_GAUGE:
        rb_printf(b, "%s", s->name);
        render_labels(b, s->labels, NULL);
        rb_printf(b, " %lld\n", (long long)atomic_load(&s->gauge));
        break;
    case METRIC_HISTOGRAM:
        for (size_t i = 0; i < s->n_buckets; i++) {
            snprintf(le, sizeof(le), "le=\"%g\"", s->bounds[i]);
            rb_printf(b, "%s_bucket", s->name);
            render_labels(b, s->labels, le);
            rb_printf(b, " %llu\n",
                      (unsigned long long)atomic_load(&s->buckets[i]));
        }
        rb_printf(b, "%s_bucket", s->name);
        render_labels(b, s->labels, "le=\"+Inf\"");
        rb_printf(b, " %llu\n", (unsigned long long)atomic_load(&s->count));
        rb_printf(b, "%s_sum", s->name);
        render_labels(b, s->labels, NULL);
        rb_printf(b, " %.6f\n", (double)atomic_load(&s->sum_micro) / 1e6);
        rb_printf(b, "%s_count", s->name);
        render_labels(b, s->labels, NULL);
        rb_printf(b, " %llu\n", (unsigned long long)atomic_load(&s->count));
        break;
    }
}

char *metrics_render(metrics *m)
{
    render_buf b = {0};
    unsigned char *done;

    b.cap = 4096;
    b.p = malloc(b.cap);
    if (b.p == NULL)
        return NULL;
    b.p[0] = '\0';
    pthread_mutex_lock(&m->lock);
    done = calloc(m->n ? m->n : 1, 1);
    if (done == NULL)
        b.failed = 1;
    /* Prometheus wants every series of a name together under one HELP. */
    for (size_t i = 0; !b.failed && i < m->n; i++) {
        metric_series *s = m->series[i];
        if (done[i])
            continue;
        rb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", s->name, s->help, s->name,
                  type_name(s->type));
        for (size_t j = i; j < m->n; j++) {
            if (!done[j] && strcmp(m->series[j]->name, s->name) == 0) {
                render_series(&b, m->series[j]);
                done[j] = 1;
            }
        }
    }
    pthread_mutex_unlock(&m->lock);
    free(done);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
