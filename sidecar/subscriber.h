/*
 * subscriber.h — the sidecar's side of Distribution.Subscribe
 * (proto/polis/v1/distribution.proto, DESIGN.md "Distribution protocol"):
 * a thread that connects to the control-plane endpoints in turn, says
 * hello, compiles each snapshot it is sent, writes the good ones to disk,
 * swaps them in and ACKs (or NACKs and keeps the previous one), exchanges
 * keepalives, and reconnects with jittered exponential backoff.  It also
 * restores the last good snapshot from disk at start, and sends the access
 * log's batches (AccessReport, acknowledged by AccessAck) every
 * access_interval_ms, spooling them to disk while disconnected.
 */
#ifndef POLIS_SC_SUBSCRIBER_H
#define POLIS_SC_SUBSCRIBER_H

#include "common/error.h"
#include "common/metrics.h"
#include "sidecar/access_log.h"
#include "sidecar/snapshot.h"

#include <stdint.h>

typedef struct sc_subscriber sc_subscriber;

/* What happened, for the daemon to log (the module itself never logs). */
typedef enum sc_subscriber_event {
    SC_SUB_CONNECTED,    /* hello sent to `endpoint` */
    SC_SUB_DISCONNECTED, /* the stream to `endpoint` ended: `detail` */
    SC_SUB_APPLIED,      /* snapshot `revision` in force and ACKed */
    SC_SUB_REJECTED,     /* snapshot `revision` NACKed: `detail` */
    SC_SUB_SAVE_FAILED,  /* in force, but not written to disk: `detail` */
} sc_subscriber_event;

typedef struct sc_subscriber_report {
    sc_subscriber_event event;
    const char *endpoint; /* the control plane concerned, or NULL */
    int64_t revision;
    const char *digest;
    const char *detail; /* reason or error text, or NULL */
} sc_subscriber_report;

/* Called on the subscriber thread; everything borrowed for the call. */
typedef void (*sc_subscriber_report_fn)(void *ud,
                                        const sc_subscriber_report *r);

typedef struct sc_subscriber_options {
    const char *endpoints; /* "host:port[,host:port...]" */
    const char *id;        /* Hello.sidecar_id */
    const char *domain;
    const char *address;            /* Hello.address: where the ports listen */
    const char *state_dir;          /* holds snapshot.pb */
    int keepalive_ms;               /* 0: 10000 */
    int backoff_min_ms;             /* 0: 100 */
    int backoff_max_ms;             /* 0: 10000 */
    sc_subscriber_report_fn report; /* may be NULL */
    void *report_ud;
    /* Borrowed, may be NULL; must outlive the subscriber, which is its one
     * drain thread (take/ack/requeue/spool). */
    sc_access_log *access_log;
    int access_interval_ms; /* 0: 2000 */
} sc_subscriber_options;

/*
 * Strings in `opts` are copied.  `slot` (borrowed, must outlive the
 * subscriber) receives the snapshots put in force; `m` (borrowed, may be
 * NULL) gets polis_sidecar_snapshot_revision, _connected,
 * _snapshots_applied_total and _snapshots_rejected_total.  POLIS_EINVAL
 * for no endpoints or too many (at most 16).  Caller frees with
 * sc_subscriber_free.
 */
int sc_subscriber_new(const sc_subscriber_options *opts, sc_snapshot_slot *slot,
                      metrics *m, sc_subscriber **out, polis_error *err);

/*
 * Put the snapshot saved in the state dir in force, if there is one.
 * POLIS_ENOTFOUND when there is none; POLIS_EPARSE for a corrupt file,
 * POLIS_EINVAL for one that does not compile or belongs to another domain
 * (the error says why; the file is then ignored, nothing is in force).
 */
int sc_subscriber_restore(sc_subscriber *s, polis_error *err);

/* Start the thread. */
int sc_subscriber_start(sc_subscriber *s, polis_error *err);

/* True while a stream to a control plane is up. */
int sc_subscriber_connected(const sc_subscriber *s);

/*
 * Stop the thread and free.  With an access log and a stream up, the
 * records still in memory are sent first (waiting up to about 1.5 s for
 * their acknowledgement); whatever is left is spooled to disk.  Then the
 * stream is cancelled.  NULL is a no-op.
 */
void sc_subscriber_free(sc_subscriber *s);

#endif
