/*
 * distribution.h — the Distribution service
 * (proto/polis/v1/distribution.proto): one etcd watch on the resources →
 * debounce → per-domain snapshots rebuilt only where their content changed →
 * pushed to the domain's sidecar streams, which answer ACK or NACK.  Sidecar
 * status is kept in etcd under <prefix>sidecars/<id>, bound to a lease, so
 * every replica can list it.  Access reports from the sidecars are handed
 * to controlplane/access.h and acknowledged once stored.  Design notes:
 * docs/internals/distribution.md, docs/internals/access.md.
 */
#ifndef POLIS_CP_DISTRIBUTION_H
#define POLIS_CP_DISTRIBUTION_H

#include "common/error.h"
#include "common/etcd.h"
#include "common/metrics.h"
#include "common/rpc.h"
#include "controlplane/store.h"
#include "polis/v1/governance.pb-c.h"

#include <stddef.h>

typedef struct cp_dist_options {
    int debounce_ms;         /* quiet time after the last change; 0: 20 */
    int debounce_max_ms;     /* at most this after the first change; 0: 250 */
    int keepalive_ms;        /* keepalive period both ways; 0: 10000 */
    int status_lease_s;      /* TTL of connected sidecars' status; 0: 15 */
    const char *replica;     /* this control plane, as status shows it */
    const void *masking_key; /* sent in every snapshot (copied) */
    size_t masking_key_len;
    int access_ttl_s; /* access records kept in etcd at least; 0: 3600 */
} cp_dist_options;

typedef struct cp_dist cp_dist;

/* Borrows etcd, store and m.  Caller frees with cp_dist_free(). */
int cp_dist_new(etcd_client *etcd, cp_store *store, metrics *m,
                const cp_dist_options *opts, cp_dist **out, polis_error *err);

/* Serve Distribution.Subscribe on srv (before rpc_server_start). */
int cp_dist_register(cp_dist *d, rpc_server *srv, polis_error *err);

/* Load the resources, open the watch and start the distribution thread. */
int cp_dist_start(cp_dist *d, polis_error *err);

/* Stop the thread (after the rpc server's shutdown ended the streams). */
void cp_dist_free(cp_dist *d);

/*
 * The sidecars' status as stored in etcd, with the state derived now
 * (SYNCED, SYNCING, STALE, NACKED, DISCONNECTED).  domain "" or NULL: all.
 * *out is an array of *n statuses; free with cp_sidecars_free.
 */
int cp_sidecars_list(etcd_client *etcd, const char *prefix, const char *domain,
                     Polis__V1__SidecarStatus ***out, size_t *n,
                     polis_error *err);
void cp_sidecars_free(Polis__V1__SidecarStatus **list, size_t n);

#endif
