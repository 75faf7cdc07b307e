/*
 * store.h — Polis resources in etcd (DESIGN.md "etcd layout"):
 *   <prefix>resources/<kind>/<scope>/<name>          current document
 *   <prefix>history/<kind>/<scope>/<name>/<version>  every version
 *   <prefix>audit/<time>-<random>                    who changed what, when
 *   <prefix>meta/last-change                         touched by every write
 * Every change is one etcd txn that also writes its history and audit
 * entries, guarded by compares on the touched resources only, so nothing is
 * half-written and writers of different resources never wait on each
 * other.  Design notes: docs/internals/store.md.
 */
#ifndef POLIS_CP_STORE_H
#define POLIS_CP_STORE_H

#include "common/error.h"
#include "common/etcd.h"

#include <stdbool.h>
#include <stdint.h>

#define CP_KIND_MAX   32
#define CP_NAME_MAX   128
#define CP_AUTHOR_MAX 256

typedef struct cp_store cp_store;

/* Borrows `etcd` (must outlive the store).  Caller frees with
 * cp_store_free(). */
int cp_store_new(etcd_client *etcd, const char *prefix, cp_store **out,
                 polis_error *err);
void cp_store_free(cp_store *s);

/* The etcd prefix the store writes under ("/polis/"). Borrowed. */
const char *cp_store_prefix(const cp_store *s);

/* One resource version as stored. */
typedef struct cp_resource {
    char kind[CP_KIND_MAX]; /* "Policy" */
    char scope[CP_NAME_MAX];
    char name[CP_NAME_MAX];
    char *doc_json; /* the document, compact JSON (owned) */
    int64_t revision;
    int64_t generation;
    char author[CP_AUTHOR_MAX];
    char updated_at[40];
    bool deleted; /* history: this version is a deletion */
} cp_resource;

void cp_resource_clear(cp_resource *r);
void cp_resources_free(cp_resource *list, size_t n);

/* A validated document to write. */
typedef struct cp_change {
    const char *kind; /* canonical kind name: "Policy" */
    const char *scope;
    const char *name;
    const char *doc_json; /* canonical compact JSON (key-sorted) */
} cp_change;

typedef struct cp_apply_result {
    const char *action; /* "created" | "updated" | "unchanged" (static) */
    int64_t generation;
} cp_apply_result;

/*
 * A reference a write depends on, compared in the write's own etcd txn so
 * that no concurrent change slips between the caller's check and the
 * write.  With a name, that resource must exist (a DataProduct's domain);
 * without (NULL), no resource of `kind` may exist in `scope` (a domain
 * being deleted).  A write whose guard does not hold any more fails with
 * POLIS_ECONFLICT, which names the guard.
 */
typedef struct cp_guard {
    const char *kind; /* canonical kind name: "Domain" */
    const char *scope;
    const char *name; /* NULL: "none of kind in scope" */
} cp_guard;

/*
 * Apply all changes in one txn, or none, if every guard (n_guards, may be
 * 0) holds.  expected_revision > 0: every document's current version must
 * be at or below it, else POLIS_ECONFLICT.  results: n entries, filled.
 * *revision_out: the write's revision (0 when nothing changed or dry_run).
 */
int cp_store_apply(cp_store *s, const cp_change *changes, size_t n,
                   const cp_guard *guards, size_t n_guards,
                   int64_t expected_revision, bool dry_run, const char *author,
                   cp_apply_result *results, int64_t *revision_out,
                   polis_error *err);

/* scope "" or NULL: any scope, if the name is unique.  POLIS_ENOTFOUND
 * when absent.  Caller clears *out with cp_resource_clear. */
int cp_store_get(cp_store *s, const char *kind, const char *scope,
                 const char *name, cp_resource *out, polis_error *err);

/* kind/scope "" or NULL: all.  Caller frees with cp_resources_free. */
int cp_store_list(cp_store *s, const char *kind, const char *scope,
                  cp_resource **out, size_t *n_out, int64_t *revision_out,
                  polis_error *err);

/* Delete if every guard holds (as cp_store_apply); `deleted` (may be NULL)
 * receives the last version. */
int cp_store_delete(cp_store *s, const char *kind, const char *scope,
                    const char *name, const cp_guard *guards, size_t n_guards,
                    int64_t expected_revision, bool dry_run, const char *author,
                    cp_resource *deleted, int64_t *revision_out,
                    polis_error *err);

/* Versions, newest first (history keeps a deleted resource's versions and
 * its deletion; a re-created one continues the numbering); limit 0: all. */
int cp_store_history(cp_store *s, const char *kind, const char *scope,
                     const char *name, size_t limit, cp_resource **out,
                     size_t *n_out, polis_error *err);

/* Does kind/scope/name exist now?  (reference checks) */
int cp_store_exists(cp_store *s, const char *kind, const char *scope,
                    const char *name, bool *exists, polis_error *err);

/* Number of resources stored under kind/scope (e.g. a domain's products). */
int cp_store_count(cp_store *s, const char *kind, const char *scope,
                   int64_t *count, polis_error *err);

/* The etcd revision of the last change to any resource (0 before the
 * first), so caches can tell whether to rebuild. */
int cp_store_change_revision(cp_store *s, int64_t *revision, polis_error *err);

/*
 * The organisation's masking key (hash masks: HMAC-SHA256), created once at
 * random under <prefix>meta/masking-key and the same for every replica.
 * Writes at most `cap` bytes into key; *len_out receives the length.
 */
int cp_store_masking_key(cp_store *s, unsigned char *key, size_t cap,
                         size_t *len_out, polis_error *err);

/* The etcd client the store uses (borrowed). */
etcd_client *cp_store_etcd(const cp_store *s);

#endif
