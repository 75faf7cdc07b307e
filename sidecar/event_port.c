/*
 * event_port.c — the event ports' logs, publish checks and governed views
 * (event_port.h).  The logs are opened lazily, one per product port, and
 * kept for the life of the sidecar; a thread applies retention on a timer.
 */
#include "sidecar/event_port.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

/* Open logs: one per port of this domain's products; a sidecar serves
 * a handful, so a linear table is enough, bounded for safety. */
#define MAX_LOGS 256
/* A governed event is at most this big (masks may grow a value). */
#define VIEW_MAX_OUTPUT (4 * SC_EVENT_LOG_RECORD_MAX)

typedef struct open_log {
    char key[2 * POL_MAX_NAME + 66]; /* "domain/product/port" */
    sc_event_log *log;
    sc_event_log_options applied; /* the port's settings in force */
    int64_t applied_rev;          /* of the snapshot they came from */
} open_log;

struct sc_events {
    sc_events_options o;
    char *dir;
    pthread_mutex_t mu;
    open_log logs[MAX_LOGS];
    size_t nlogs;
    bool stopping;
    pthread_cond_t cv; /* wakes the retention thread to stop */
    pthread_t retainer;
    bool retainer_started;
    metric_series *m_fsyncs;
    pthread_mutex_t lmu; /* the on_visible listener */
    void (*listener)(void *ctx);
    void *listener_ctx;
};

static void log_visible(void *ctx, uint64_t next)
{
    sc_events *ev = ctx;

    void (*fn)(void *);
    void *fn_ctx;

    (void)next;
    if (ev->o.on_visible)
        ev->o.on_visible(ev->o.on_visible_ctx);
    pthread_mutex_lock(&ev->lmu);
    fn = ev->listener;
    fn_ctx = ev->listener_ctx;
    pthread_mutex_unlock(&ev->lmu);
    if (fn)
        fn(fn_ctx);
}

static void log_fsynced(void *ctx, uint64_t durable_next)
{
    sc_events *ev = ctx;

    (void)durable_next;
    metric_add(ev->m_fsyncs, 1);
}

void sc_events_set_listener(sc_events *ev, void (*fn)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&ev->lmu);
    ev->listener = fn;
    ev->listener_ctx = ctx;
    pthread_mutex_unlock(&ev->lmu);
}

static void *retain_thread(void *arg)
{
    sc_events *ev = arg;
    struct timespec at;

    pthread_mutex_lock(&ev->mu);
    while (!ev->stopping) {
        clock_gettime(CLOCK_REALTIME, &at);
        at.tv_sec += ev->o.retain_interval_ms / 1000;
        at.tv_nsec += (long)(ev->o.retain_interval_ms % 1000) * 1000000;
        if (at.tv_nsec >= 1000000000) {
            at.tv_sec++;
            at.tv_nsec -= 1000000000;
        }
        if (pthread_cond_timedwait(&ev->cv, &ev->mu, &at) == ETIMEDOUT &&
            !ev->stopping) {
            pthread_mutex_unlock(&ev->mu);
            sc_events_retain(ev);
            pthread_mutex_lock(&ev->mu);
        }
    }
    pthread_mutex_unlock(&ev->mu);
    return NULL;
}

int sc_events_new(const sc_events_options *o, sc_events **out, polis_error *err)
{
    sc_events *ev;

    *out = NULL;
    if (o == NULL || o->dir == NULL || o->dir[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "the event ports need a directory");
    if ((ev = calloc(1, sizeof(*ev))) == NULL ||
        (ev->dir = strdup(o->dir)) == NULL) {
        free(ev);
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    }
    ev->o = *o;
    ev->o.dir = ev->dir;
    if (ev->o.retention_bytes == 0)
        ev->o.retention_bytes = SC_EVENTS_DEFAULT_RETENTION_BYTES;
    if (ev->o.retention_ms == 0)
        ev->o.retention_ms = SC_EVENTS_DEFAULT_RETENTION_MS;
    if (ev->o.retain_interval_ms <= 0)
        ev->o.retain_interval_ms = 60000;
    if (o->metrics)
        ev->m_fsyncs = metrics_counter(
            o->metrics, "polis_sidecar_event_fsyncs_total",
            "fsyncs of the event ports' logs (one covers every publish "
            "waiting for it)",
            NULL);
    pthread_mutex_init(&ev->mu, NULL);
    pthread_mutex_init(&ev->lmu, NULL);
    pthread_cond_init(&ev->cv, NULL);
    if (pthread_create(&ev->retainer, NULL, retain_thread, ev) != 0) {
        sc_events_free(ev);
        return polis_error_set(err, POLIS_ENOMEM, NULL,
                               "cannot start the retention thread");
    }
    ev->retainer_started = true;
    *out = ev;
    return 0;
}

void sc_events_shutdown(sc_events *ev)
{
    if (ev == NULL)
        return;
    pthread_mutex_lock(&ev->mu);
    for (size_t i = 0; i < ev->nlogs; i++)
        sc_event_log_shutdown(ev->logs[i].log);
    pthread_mutex_unlock(&ev->mu);
}

void sc_events_free(sc_events *ev)
{
    if (ev == NULL)
        return;
    pthread_mutex_lock(&ev->mu);
    ev->stopping = true;
    pthread_cond_broadcast(&ev->cv);
    pthread_mutex_unlock(&ev->mu);
    if (ev->retainer_started)
        pthread_join(ev->retainer, NULL);
    for (size_t i = 0; i < ev->nlogs; i++) {
        sc_event_log_shutdown(ev->logs[i].log);
        sc_event_log_free(ev->logs[i].log);
    }
    pthread_cond_destroy(&ev->cv);
    pthread_mutex_destroy(&ev->mu);
    pthread_mutex_destroy(&ev->lmu);
    free(ev->dir);
    free(ev);
}

static int make_dir(const char *path, polis_error *err)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return 0;
    return polis_error_set(err, POLIS_EIO, path, "cannot create: %s",
                           strerror(errno));
}

static int port_fsync(const json_t *port_doc, sc_event_fsync *out)
{
    const char *s = json_string_value(json_object_get(port_doc, "fsync"));

    if (s == NULL || strcmp(s, "batch") == 0)
        *out = SC_EVENT_FSYNC_BATCH;
    else if (strcmp(s, "always") == 0)
        *out = SC_EVENT_FSYNC_ALWAYS;
    else if (strcmp(s, "never") == 0)
        *out = SC_EVENT_FSYNC_NEVER;
    else
        return -1;
    return 0;
}

/* The log settings a port asks for: its own, else the sidecar's. */
static int port_settings(const sc_events *ev, const json_t *port_doc,
                         sc_event_log_options *lo)
{
    const json_t *rb = json_object_get(port_doc, "retentionBytes");
    const json_t *rh = json_object_get(port_doc, "retentionHours");

    if (port_fsync(port_doc, &lo->fsync) != 0)
        return -1;
    lo->retention_bytes = json_is_integer(rb) && json_integer_value(rb) > 0
                              ? (uint64_t)json_integer_value(rb)
                              : ev->o.retention_bytes;
    lo->retention_ms = json_is_integer(rh) && json_integer_value(rh) > 0
                           ? (int64_t)json_integer_value(rh) * 3600 * 1000
                           : ev->o.retention_ms;
    /* Segments a sixteenth of the retention (64 KiB to 64 MiB): retention
     * drops whole segments, so the log keeps between 15/16 of the bound
     * and the bound plus the active segment. */
    lo->segment_bytes = lo->retention_bytes / 16;
    if (lo->segment_bytes < 64 * 1024)
        lo->segment_bytes = 64 * 1024;
    if (lo->segment_bytes > 64 * 1024 * 1024)
        lo->segment_bytes = 64 * 1024 * 1024;
    return 0;
}

static bool same_settings(const sc_event_log_options *a,
                          const sc_event_log_options *b)
{
    return a->fsync == b->fsync && a->retention_bytes == b->retention_bytes &&
           a->retention_ms == b->retention_ms &&
           a->segment_bytes == b->segment_bytes;
}

int sc_events_log(sc_events *ev, const char *product, const json_t *port_doc,
                  int64_t revision, sc_event_log **log, polis_error *err)
{
    const char *port = json_string_value(json_object_get(port_doc, "name"));
    const char *slash = strchr(product, '/');
    sc_event_log_options want = {0}, lo;
    char key[sizeof(ev->logs[0].key)], path[4096];
    int rc = 0;

    *log = NULL;
    if (port == NULL || slash == NULL)
        return polis_error_set(err, POLIS_EINVAL, product,
                               "an event port needs a product and a name");
    if ((size_t)snprintf(key, sizeof(key), "%s/%s", product, port) >=
        sizeof(key))
        return polis_error_set(err, POLIS_ETOOBIG, product, "name too long");
    if (port_settings(ev, port_doc, &want) != 0)
        return polis_error_set(err, POLIS_EINVAL, key, "unknown fsync mode");
    pthread_mutex_lock(&ev->mu);
    for (size_t i = 0; i < ev->nlogs; i++) {
        open_log *ol = &ev->logs[i];
        if (strcmp(ol->key, key) != 0)
            continue;
        /* The port changed in a newer snapshot: in force from this request
         * on (a request still on an older one must not bring the old
         * settings back).  Should that fail, the log keeps its settings
         * and serves. */
        if (revision > 0 && revision >= ol->applied_rev) {
            polis_error ignored = {0};
            if (same_settings(&ol->applied, &want) ||
                sc_event_log_configure(ol->log, &want, &ignored) == 0 ||
                ignored.code == POLIS_EIO) {
                ol->applied = want;
                ol->applied_rev = revision;
            }
        }
        *log = ol->log;
        pthread_mutex_unlock(&ev->mu);
        return 0;
    }
    if (ev->stopping) {
        rc = polis_error_set(err, POLIS_ECANCELED, key, "shutting down");
        goto out;
    }
    if (ev->nlogs == MAX_LOGS) {
        rc = polis_error_set(err, POLIS_ETOOBIG, key,
                             "more than %d event ports", MAX_LOGS);
        goto out;
    }
    /* <dir>/<domain>/<product>/<port>: names are checked resource names
     * ([a-z0-9-]), so they are safe path components. */
    snprintf(path, sizeof(path), "%s", ev->dir);
    if ((rc = make_dir(path, err)) != 0)
        goto out;
    snprintf(path, sizeof(path), "%s/%.*s", ev->dir, (int)(slash - product),
             product);
    if ((rc = make_dir(path, err)) != 0)
        goto out;
    snprintf(path, sizeof(path), "%s/%s", ev->dir, product);
    if ((rc = make_dir(path, err)) != 0)
        goto out;
    snprintf(path, sizeof(path), "%s/%s", ev->dir, key);
    lo = want;
    lo.dir = path;
    lo.batch_interval_ms = ev->o.batch_interval_ms;
    lo.on_visible = log_visible;
    lo.on_visible_ctx = ev;
    if (ev->m_fsyncs) {
        lo.on_fsync = log_fsynced;
        lo.on_fsync_ctx = ev;
    }
    rc = sc_event_log_open(&lo, log, err);
    if (rc == 0) {
        open_log *ol = &ev->logs[ev->nlogs++];
        snprintf(ol->key, sizeof(key), "%s", key);
        ol->log = *log;
        ol->applied = want;
        ol->applied_rev = revision;
    }
out:
    pthread_mutex_unlock(&ev->mu);
    return rc;
}

void sc_events_retain(sc_events *ev)
{
    sc_event_log *logs[MAX_LOGS];
    size_t n;

    pthread_mutex_lock(&ev->mu);
    n = ev->nlogs;
    for (size_t i = 0; i < n; i++)
        logs[i] = ev->logs[i].log;
    pthread_mutex_unlock(&ev->mu);
    /* Logs are never closed before sc_events_free, which joins us first. */
    for (size_t i = 0; i < n; i++) {
        polis_error err = {0};
        sc_event_log_retain(logs[i], NULL, &err);
    }
}

bool sc_events_may_publish(const json_t *port_doc, const char *principal,
                           const pol_expr_subject *subject)
{
    const json_t *list = json_object_get(port_doc, "publishers"), *item;
    size_t i;

    json_array_foreach(list, i, item)
    {
        const char *s = json_string_value(item);
        if (s == NULL)
            continue;
        if (strncmp(s, "group:", 6) != 0) {
            if (principal && strcmp(s, principal) == 0)
                return true;
            continue;
        }
        for (size_t g = 0; subject && g < subject->ngroups; g++)
            if (strcmp(s + 6, subject->groups[g]) == 0)
                return true;
    }
    return false;
}

/* ---- publish ------------------------------------------------------------- */

static const char *type_name(pol_expr_type t)
{
    switch (t) {
    case POL_EXPR_INTEGER:
        return "an integer";
    case POL_EXPR_DECIMAL:
        return "a number";
    case POL_EXPR_BOOLEAN:
        return "true or false";
    default:
        return "a string";
    }
}

static bool value_fits(const json_t *v, pol_expr_type t)
{
    switch (t) {
    case POL_EXPR_INTEGER:
        return json_is_integer(v);
    case POL_EXPR_DECIMAL:
        return json_is_number(v);
    case POL_EXPR_BOOLEAN:
        return json_is_boolean(v);
    default:
        return json_is_string(v);
    }
}

static int check_event(const json_t *obj, size_t idx, bool single,
                       const fp_column *schema, size_t nschema,
                       polis_error *err)
{
    char where[POLIS_ERROR_WHERE_MAX];
    const char *key;
    const json_t *v;

    if (single)
        snprintf(where, sizeof(where), "event");
    else
        snprintf(where, sizeof(where), "events[%zu]", idx);
    if (!json_is_object(obj))
        return polis_error_set(err, POLIS_EINVAL, where,
                               "an event is a JSON object");
    if (json_object_size(obj) == 0)
        return polis_error_set(err, POLIS_EINVAL, where, "an empty event");
    if (json_object_size(obj) > nschema)
        return polis_error_set(err, POLIS_EINVAL, where,
                               "%zu keys, and the schema has %zu columns",
                               json_object_size(obj), nschema);
    json_object_foreach((json_t *)obj, key, v)
    {
        const json_t *other;
        const char *okey;
        size_t c;
        for (c = 0; c < nschema; c++)
            if (strcasecmp(schema[c].name, key) == 0)
                break;
        if (c == nschema)
            return polis_error_set(
                err, POLIS_EINVAL, where,
                "\"%.64s\" is not a column of the product's schema", key);
        /* Column names are case-insensitive: "Amount" and "amount" would
         * be one column twice. */
        json_object_foreach((json_t *)obj, okey, other)
        {
            if (okey != key && strcasecmp(okey, key) == 0)
                return polis_error_set(err, POLIS_EINVAL, where,
                                       "\"%.64s\" and \"%.64s\" name the "
                                       "same column",
                                       key, okey);
        }
        if (!json_is_null(v) && !value_fits(v, schema[c].type))
            return polis_error_set(err, POLIS_EINVAL, where,
                                   "%s: expected %s or null", schema[c].name,
                                   type_name(schema[c].type));
    }
    return 0;
}

int sc_event_batch_parse(const char *body, size_t len, const fp_column *schema,
                         size_t nschema, sc_event_batch *out, polis_error *err)
{
    json_error_t jerr;
    json_t *root, *item;
    size_t n, i;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    if (len > SC_EVENTS_MAX_BODY)
        return polis_error_set(err, POLIS_ETOOBIG, "body",
                               "larger than %d bytes", SC_EVENTS_MAX_BODY);
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return polis_error_set(err, POLIS_EPARSE, "body",
                               "line %d column %d: %s", jerr.line, jerr.column,
                               jerr.text);
    n = json_is_array(root) ? json_array_size(root) : 1;
    if (n == 0 || n > SC_EVENTS_MAX_BATCH) {
        rc = polis_error_set(err, POLIS_EINVAL, "body",
                             "send 1 to %d events (got %zu)",
                             SC_EVENTS_MAX_BATCH, n);
        goto out;
    }
    out->events = calloc(n, sizeof(*out->events));
    out->texts = calloc(n, sizeof(*out->texts));
    if (out->events == NULL || out->texts == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
        goto out;
    }
    for (i = 0; i < n; i++) {
        item = json_is_array(root) ? json_array_get(root, i) : root;
        if ((rc = check_event(item, i, !json_is_array(root), schema, nschema,
                              err)) != 0)
            goto out;
        out->texts[i] = json_dumps(item, JSON_COMPACT);
        if (out->texts[i] == NULL) {
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
            goto out;
        }
        out->events[i].data = out->texts[i];
        out->events[i].len = strlen(out->texts[i]);
        out->count++;
    }
out:
    json_decref(root);
    return rc;
}

void sc_event_batch_free(sc_event_batch *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; b->texts && i < b->count; i++)
        free(b->texts[i]);
    free(b->texts);
    free(b->events);
    memset(b, 0, sizeof(*b));
}

/* ---- the governed view --------------------------------------------------- */

struct sc_event_view {
    sc_snapshot *snap;
    json_t *doc;
    pol_decision *decision;
    check_subject subject;
    pol_expr_request req;
    char product[2 * POL_MAX_NAME + 2];
    char principal[POL_MAX_NAME + 1];
    char purpose[POL_MAX_NAME + 1];
    char rule[3 * POL_MAX_NAME + 4];
    fp_column *schema;
    size_t nschema;
    fp_reader *reader;
    char *buf; /* the governed event */
    size_t len, cap;
};

static int view_sink(void *ctx, const void *data, size_t n)
{
    sc_event_view *v = ctx;

    if (n > v->cap - v->len) {
        size_t cap = v->cap ? v->cap : 4096;
        char *p;
        while (cap - v->len < n && cap < VIEW_MAX_OUTPUT)
            cap *= 2;
        if (cap - v->len < n)
            return POLIS_ETOOBIG;
        if ((p = realloc(v->buf, cap)) == NULL)
            return POLIS_ENOMEM;
        v->buf = p;
        v->cap = cap;
    }
    memcpy(v->buf + v->len, data, n);
    v->len += n;
    return 0;
}

int sc_event_view_new(sc_snapshot *snap, sc_ports *ports, const char *product,
                      const char *principal, const char *purpose,
                      sc_event_view **out, polis_error *err)
{
    const json_t *pdoc, *port_doc;
    const char *name = strchr(product, '/');
    pol_request request = {0};
    fp_options fo = {0};
    sc_event_view *v;
    char text[1024];
    int rc;

    *out = NULL;
    if (name == NULL)
        return polis_error_set(err, POLIS_EINVAL, product,
                               "a product is \"domain/name\"");
    pdoc = sc_principals_by_name(sc_snapshot_principals(snap), principal);
    if (pdoc == NULL)
        return polis_error_set(err, POLIS_ENOTFOUND, principal,
                               "no such principal in the snapshot");
    if ((v = calloc(1, sizeof(*v))) == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    v->snap = sc_snapshot_ref(snap);
    snprintf(v->product, sizeof(v->product), "%s", product);
    snprintf(v->principal, sizeof(v->principal), "%s", principal);
    if (purpose)
        snprintf(v->purpose, sizeof(v->purpose), "%s", purpose);
    if ((rc = sc_ports_product(ports, snap, name + 1, &v->doc, err)) != 0)
        goto fail;
    port_doc = sc_ports_find(v->doc, "event");
    if (port_doc == NULL) {
        rc = polis_error_set(err, POLIS_ENOTFOUND, product,
                             "the data product has no event port");
        goto fail;
    }
    if ((rc = check_subject_from_principal(v->principal, pdoc, &v->subject,
                                           err)) != 0)
        goto fail;
    if ((v->decision = pol_decision_new()) == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
        goto fail;
    }
    request.subject = v->subject.subject;
    request.product = v->product;
    request.port = POL_PORT_EVENT;
    request.purpose = purpose ? v->purpose : NULL;
    rc = pol_decide(sc_snapshot_engine(snap), &request, v->decision, err);
    if (rc != 0)
        goto fail;
    check_rule_id(pol_decision_deciding_rule(v->decision), v->rule,
                  sizeof(v->rule));
    if (!pol_decision_allowed(v->decision)) {
        pol_decision_explain(v->decision, text, sizeof(text));
        rc = polis_error_set(err, POLIS_EDENIED, v->rule[0] ? v->rule : NULL,
                             "%s", text);
        goto fail;
    }
    if ((rc = fp_schema_from_product(v->doc, &v->schema, &v->nschema, err)) !=
        0)
        goto fail;
    v->req.purpose = request.purpose;
    v->req.product = v->product;
    v->req.port = "event";
    fo.format = FP_FORMAT_JSONL;
    fo.schema = v->schema;
    fo.nschema = v->nschema;
    fo.decision = v->decision;
    fo.mask_key = pol_engine_mask_key(sc_snapshot_engine(snap));
    fo.subject = &v->subject.subject;
    fo.request = &v->req;
    /* Events were checked against the schema when published; a column
     * the contract dropped since is left out rather than failing. */
    fo.unknown_columns = FP_UNKNOWN_DROP;
    fo.max_record = SC_EVENT_LOG_RECORD_MAX;
    rc = fp_reader_new_records(&fo, view_sink, v, &v->reader, err);
    if (rc != 0)
        goto fail;
    *out = v;
    return 0;
fail:
    sc_event_view_free(v);
    return rc;
}

void sc_event_view_free(sc_event_view *v)
{
    if (v == NULL)
        return;
    fp_reader_free(v->reader);
    free(v->schema);
    free(v->buf);
    pol_decision_free(v->decision);
    json_decref(v->doc);
    sc_snapshot_unref(v->snap);
    free(v);
}

const sc_snapshot *sc_event_view_snapshot(const sc_event_view *v)
{
    return v->snap;
}

const char *sc_event_view_principal(const sc_event_view *v)
{
    return v->principal;
}

const char *sc_event_view_rule(const sc_event_view *v)
{
    return v->rule;
}

int sc_event_view_apply(sc_event_view *v, const void *data, size_t n,
                        const char **out, size_t *len, polis_error *err)
{
    bool written = false;
    int rc;

    *out = NULL;
    *len = 0;
    v->len = 0;
    rc = fp_reader_record(v->reader, data, n, &written, err);
    if (rc != 0 || !written)
        return rc;
    /* The reader ends a record with "\n"; an event is the object alone. */
    if (v->len > 0 && v->buf[v->len - 1] == '\n')
        v->len--;
    *out = v->buf;
    *len = v->len;
    return 0;
}
