/*
 * access.h — the control plane's side of the sidecars' access records
 * (distribution.proto AccessReport, governance.proto Access): validates and
 * sanitizes each batch, stores it once in etcd under
 * <prefix>access/<time>-<sidecar>-<batch> (leased, so the store stays
 * bounded), counts it in polis_access_total, and lists recent records.
 * Design notes: docs/internals/access.md.
 */
#ifndef POLIS_CP_ACCESS_H
#define POLIS_CP_ACCESS_H

#include "common/error.h"
#include "common/etcd.h"
#include "common/metrics.h"
#include "polis/v1/distribution.pb-c.h"
#include "polis/v1/governance.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define CP_ACCESS_MAX_BATCH 500 /* records per AccessReport */

typedef struct cp_access cp_access;

/*
 * Called on the writer thread once batch `batch` from the stream `token`
 * is stored (stored: it is new; or it was already there from an earlier
 * send): the sidecar may forget it.  Not called for batches that could not
 * be written; the sidecar sends those again.
 */
typedef void (*cp_access_stored_fn)(void *ud, uint64_t token, uint64_t batch);

typedef struct cp_access_options {
    int ttl_s;        /* records are kept at least this long; 0: 3600 */
    size_t queue_max; /* batches waiting for etcd; 0: 256 */
    cp_access_stored_fn stored;
    void *stored_ud;
} cp_access_options;

/*
 * Borrows etcd and m; copies prefix.  Starts the writer thread.  Caller
 * frees with cp_access_free.
 */
int cp_access_new(etcd_client *etcd, const char *prefix, metrics *m,
                  const cp_access_options *opts, cp_access **out,
                  polis_error *err);

/* Stop the writer (batches still queued are not written, nor acked). */
void cp_access_free(cp_access *a);

/*
 * Queue one report from sidecar `sidecar_id` (already validated) for
 * storing; copies what it needs.  POLIS_EINVAL for a report that can never
 * be stored (no batch id, more than CP_ACCESS_MAX_BATCH records): the
 * caller should acknowledge it anyway, so it is not resent forever.
 * POLIS_EAGAIN when the queue is full (the sidecar resends later).
 */
int cp_access_submit(cp_access *a, const char *sidecar_id, uint64_t token,
                     const Polis__V1__AccessReport *rep, polis_error *err);

/*
 * The newest records matching req (product, principal; limit 0: 100, at
 * most 10000), newest first, read from etcd.  Fills `out` (initialised by
 * the caller); free its contents with cp_access_response_free.
 */
int cp_access_list(etcd_client *etcd, const char *prefix,
                   const Polis__V1__AccessRequest *req,
                   Polis__V1__AccessResponse *out, polis_error *err);
void cp_access_response_free(Polis__V1__AccessResponse *out);

#endif
