/*
 * governance.h — the Governance gRPC service (proto/polis/v1/governance.proto):
 * Apply, Get, List, Delete, History.  Validates every document before
 * anything is written (common/resource.h, the policy compiler), then hands
 * the change to the store (store.h) as one txn.
 */
#ifndef POLIS_CP_GOVERNANCE_H
#define POLIS_CP_GOVERNANCE_H

#include "common/error.h"
#include "common/metrics.h"
#include "common/rpc.h"
#include "controlplane/store.h"

#include <stddef.h>

typedef struct cp_governance_options {
    size_t max_documents;      /* per Apply; 0: 1000 */
    size_t max_document_bytes; /* per document; 0: 1 MiB */
} cp_governance_options;

typedef struct cp_governance cp_governance;

/* Borrows store and m (must outlive it).  opts may be NULL.  Caller frees
 * with cp_governance_free() after the server is shut down. */
int cp_governance_new(cp_store *store, metrics *m,
                      const cp_governance_options *opts, cp_governance **out,
                      polis_error *err);

/* Register the service's handlers on srv (before rpc_server_start). */
int cp_governance_register(cp_governance *g, rpc_server *srv, polis_error *err);

void cp_governance_free(cp_governance *g);

#endif
