/*
 * event_port.h — a data product's event port, minus HTTP: the durable log
 * of each event port (event_log.h, opened on first use under the state
 * dir, retention applied on a timer), the checks of a publish (who may
 * publish, events that match the product's schema), and the governed view
 * of the log for one principal (its decision's columns, masks and row
 * filters applied to each event).  The routes are in http_api.c, the MQTT
 * bridge in mqtt_bridge.c; docs/sidecar.md "Event ports".
 */
#ifndef POLIS_SC_EVENT_PORT_H
#define POLIS_SC_EVENT_PORT_H

#include "common/error.h"
#include "common/metrics.h"
#include "policy/api/check.h"
#include "sidecar/event_log.h"
#include "sidecar/file_port.h"
#include "sidecar/ports.h"
#include "sidecar/snapshot.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most events in one publish, and the largest publish body. */
#define SC_EVENTS_MAX_BATCH 10000
#define SC_EVENTS_MAX_BODY  (1024 * 1024)
/* Defaults for a port that sets no retention. */
#define SC_EVENTS_DEFAULT_RETENTION_BYTES (1024ull * 1024 * 1024)
#define SC_EVENTS_DEFAULT_RETENTION_MS    (7ll * 24 * 3600 * 1000)

typedef struct sc_events sc_events;

typedef struct sc_events_options {
    const char *dir; /* the logs live in <dir>/<domain>/<product>/<port>;
                        created; copied */
    uint64_t retention_bytes;   /* for ports without retentionBytes; 0: 1 GiB */
    int64_t retention_ms;       /* for ports without retentionHours; 0: 7 d */
    unsigned batch_interval_ms; /* fsync batch: see event_log.h */
    int retain_interval_ms;     /* retention runs this often; 0: 60000 */
    /* Called (from an appending or flushing thread) whenever any log has
     * new readable events; the hook to wake the consumers.  May be NULL. */
    void (*on_visible)(void *ctx);
    void *on_visible_ctx;
    metrics *metrics; /* borrowed, may be NULL: gets
                         polis_sidecar_event_fsyncs_total */
} sc_events_options;

/* Start the port set (no log is opened yet) and its retention thread. */
int sc_events_new(const sc_events_options *o, sc_events **out,
                  polis_error *err);

/* Refuse appends and wake every waiter of every log (before stopping the
 * threads that use them).  Idempotent. */
void sc_events_shutdown(sc_events *ev);

/* Stop the retention thread, close the logs, free.  NULL is a no-op. */
void sc_events_free(sc_events *ev);

/*
 * A second on_visible hook, set (or cleared with NULL) after the set was
 * made: the HTTP server's, which is started after the set.  The listener
 * is called without locks held and must be cheap (event_active).
 * Thread-safe.
 */
void sc_events_set_listener(sc_events *ev, void (*fn)(void *ctx), void *ctx);

/*
 * The log of `product`'s ("domain/name") event port `port_doc` (a port of
 * type event of the DataProduct of snapshot `revision`), opened on first
 * use with the port's fsync and retention settings.  When the log is open
 * and `revision` is at least that of the settings in force, port_doc's
 * settings are applied to it first (a new snapshot changed them); an older
 * revision, or 0, changes nothing.  *log is borrowed until sc_events_free.
 * Thread-safe.
 */
int sc_events_log(sc_events *ev, const char *product, const json_t *port_doc,
                  int64_t revision, sc_event_log **log, polis_error *err);

/* Apply retention to every open log now (the timer does it too). */
void sc_events_retain(sc_events *ev);

/*
 * Whether `principal` (with the groups of `subject`) may publish to
 * `port_doc`: it is named in the port's `publishers`, or one of its groups
 * is, as "group:<name>".  A port without publishers takes no publish.
 */
bool sc_events_may_publish(const json_t *port_doc, const char *principal,
                           const pol_expr_subject *subject);

/* The events of one publish, each a compact JSON object (owned). */
typedef struct sc_event_batch {
    sc_event *events;
    size_t count;
    char **texts;
} sc_event_batch;

/*
 * Parse a publish body (`body`, len bytes): one JSON object or an array of
 * 1..SC_EVENTS_MAX_BATCH objects whose keys are columns of `schema` and
 * whose values are null or of the column's type.  POLIS_EPARSE or
 * POLIS_EINVAL with err->where naming the event ("events[3].amount").
 * Free *out with sc_event_batch_free (also after an error).
 */
int sc_event_batch_parse(const char *body, size_t len, const fp_column *schema,
                         size_t nschema, sc_event_batch *out, polis_error *err);

void sc_event_batch_free(sc_event_batch *b);

/* ---- the governed view of one principal ---------------------------------- */

typedef struct sc_event_view sc_event_view;

/*
 * The view of product `product` ("domain/name") for principal `principal`
 * (purpose may be NULL) as snapshot `snap` decides it (a reference is
 * taken).  POLIS_ENOTFOUND: no such product, event port or principal;
 * POLIS_EDENIED: the decision denies (the message explains);
 * POLIS_EINVAL: a bad contract.  Free with sc_event_view_free.
 */
int sc_event_view_new(sc_snapshot *snap, sc_ports *ports, const char *product,
                      const char *principal, const char *purpose,
                      sc_event_view **out, polis_error *err);

void sc_event_view_free(sc_event_view *v);

/* The snapshot the view was decided on (borrowed). */
const sc_snapshot *sc_event_view_snapshot(const sc_event_view *v);

/* The principal it governs for (borrowed). */
const char *sc_event_view_principal(const sc_event_view *v);

/* The id of the rule that decided ("" for none). */
const char *sc_event_view_rule(const sc_event_view *v);

/*
 * Govern one event (a stored record): *out gets the governed JSON object
 * (no newline; borrowed until the next call or free) and *len its length,
 * or NULL when the view's filters leave the event out.  An event that
 * cannot be governed (a mask that cannot apply) is an error for this event
 * only.
 */
int sc_event_view_apply(sc_event_view *v, const void *data, size_t n,
                        const char **out, size_t *len, polis_error *err);

#endif
