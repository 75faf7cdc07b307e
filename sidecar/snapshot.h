/*
 * snapshot.h — a domain snapshot (polis.v1.Snapshot, distribution.proto)
 * compiled for enforcement: the policy engine, the principals indexed by
 * name and token, the revision and digest.  Reference-counted and
 * immutable, so that checks keep using the snapshot they started with while
 * a newer one is swapped in; the slot holds the one in force.
 */
#ifndef POLIS_SC_SNAPSHOT_H
#define POLIS_SC_SNAPSHOT_H

#include "common/error.h"
#include "policy/policy.h"
#include "polis/v1/distribution.pb-c.h"
#include "sidecar/principals.h"

#include <stdint.h>

typedef struct sc_snapshot sc_snapshot;

/*
 * Compile `pb` (borrowed) for a sidecar of `domain`.  Every resource's
 * document_json must be a JSON object; the engine is built with the
 * snapshot's masking key.  Errors say what and where, for a NACK:
 * POLIS_EINVAL for a snapshot of another domain, a document that is not
 * JSON (`resources[3]`), or what pol_engine_build or sc_principals_build
 * report (their field path in err->where).  On success *out holds one
 * reference (release with sc_snapshot_unref).
 */
int sc_snapshot_compile(const Polis__V1__Snapshot *pb, const char *domain,
                        sc_snapshot **out, polis_error *err);

/* Another reference; returns s (NULL stays NULL).  Thread-safe. */
sc_snapshot *sc_snapshot_ref(sc_snapshot *s);

/* Drop a reference; the last one frees.  NULL is a no-op.  Thread-safe. */
void sc_snapshot_unref(sc_snapshot *s);

/* Borrowed for as long as the caller holds a reference. */
const pol_engine *sc_snapshot_engine(const sc_snapshot *s);
const sc_principals *sc_snapshot_principals(const sc_snapshot *s);
const char *sc_snapshot_digest(const sc_snapshot *s);
const char *sc_snapshot_domain(const sc_snapshot *s);
int64_t sc_snapshot_revision(const sc_snapshot *s);
size_t sc_snapshot_resource_count(const sc_snapshot *s);
/* The snapshot's raw masking key (*len bytes), or NULL (*len 0) when it
 * has none; the key the engine's pol_engine_mask_key was prepared from. */
const void *sc_snapshot_masking_key(const sc_snapshot *s, size_t *len);

/* ---- the snapshot in force ---- */

typedef struct sc_snapshot_slot sc_snapshot_slot;

/* An empty slot; NULL on allocation failure.  Free with
 * sc_snapshot_slot_free (drops the snapshot it holds). */
sc_snapshot_slot *sc_snapshot_slot_new(void);
void sc_snapshot_slot_free(sc_snapshot_slot *slot);

/*
 * The snapshot in force with a new reference for the caller (release with
 * sc_snapshot_unref), or NULL when there is none yet.  The lock is held
 * only to copy a pointer and bump a count, never while deciding.
 */
sc_snapshot *sc_snapshot_slot_get(sc_snapshot_slot *slot);

/* Put `s` in force; takes over the caller's reference.  The previous one
 * is released (freed once its last reader lets go). */
void sc_snapshot_slot_set(sc_snapshot_slot *slot, sc_snapshot *s);

#endif
