/*
 * resource.h — the Polis resource model (Domain, DataProduct, Policy,
 * Principal) and its structural validation, as specified field by field in
 * docs/resources.md.  Policy rules are checked only for shape here; the
 * policy engine (policy/) validates their meaning.  Pure: no I/O, no logging.
 */
#ifndef POLIS_RESOURCE_H
#define POLIS_RESOURCE_H

#include "common/error.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define RES_API_VERSION  "polis/v1"
#define RES_SCOPE_GLOBAL "global"
#define RES_NAME_MAX     64 /* a name (1-63 chars) plus its NUL */
#define RES_MAX_ERRORS   50 /* errors kept by res_validate_set */

typedef enum res_kind {
    RES_KIND_UNKNOWN = 0,
    RES_DOMAIN,
    RES_DATAPRODUCT,
    RES_POLICY,
    RES_PRINCIPAL,
} res_kind;

#define RES_KIND_COUNT 4 /* kinds are 1..RES_KIND_COUNT */

/* Who a document is: kind, scope ("global" or a domain) and name. */
typedef struct res_info {
    res_kind kind;
    char scope[RES_NAME_MAX];
    char name[RES_NAME_MAX];
} res_info;

/* "DataProduct" (as written in documents); "" for RES_KIND_UNKNOWN. */
const char *res_kind_name(res_kind kind);

/* "dataproduct": the kind in etcd keys; "" for RES_KIND_UNKNOWN. */
const char *res_kind_key(res_kind kind);

/*
 * A kind as a user types it on the command line: case-insensitive, with
 * plurals and short forms (domain/domains, dataproduct/dataproducts/product/
 * products/dp, policy/policies, principal/principals).  RES_KIND_UNKNOWN
 * when it is none of them.
 */
res_kind res_kind_parse(const char *text);

/*
 * Check one document (a JSON object, e.g. from doc_parse) against
 * docs/resources.md.  On success fills *out (may be NULL) and returns 0.
 * On failure returns POLIS_EINVAL with the first problem in *err:
 * err->where is "<source>: <field path>" (just the path when source is
 * NULL), so polis_error_format gives
 *   orders.yaml: spec.schema[3].type: unknown type "strng" (expected ...)
 */
int res_validate(const json_t *doc, const char *source, res_info *out,
                 polis_error *err);

/*
 * Write into a valid document the defaults that decide where it lives, so
 * that what is stored (and compiled by the policy engine) says it: a
 * Policy without spec.scope gets "global".  Call after res_validate, before
 * res_canonical_json.  0, or POLIS_ENOMEM.
 */
int res_apply_defaults(json_t *doc);

/*
 * Does kind/scope/name already exist (in the store)?  Set *exists and
 * return 0, or return a negative POLIS_E* code with *err filled; the set
 * validation then stops and returns that code.
 */
typedef int (*res_lookup_fn)(void *ctx, res_kind kind, const char *scope,
                             const char *name, bool *exists, polis_error *err);

/* Every problem found in a set, in document order.  About 52 KB: allocate
 * it rather than putting it on a small stack. */
typedef struct res_errors {
    size_t count;   /* entries used in items */
    size_t omitted; /* problems found beyond RES_MAX_ERRORS */
    polis_error items[RES_MAX_ERRORS];
} res_errors;

/*
 * Validate everything a single `apply` writes: each document (as
 * res_validate), then duplicates within the set (same kind/scope/name
 * twice, naming both sources), then references — a DataProduct's domain, a
 * domain-scoped Policy's domain, a DataProduct's derivedFrom products —
 * which must be in the set or, when `lookup` is not NULL, already stored.
 *
 * docs: JSON array of documents.  sources: docs' size entries naming each
 * document in errors ("orders.yaml", "mesh.yaml#2"), or NULL ("document
 * 3").  infos: NULL or docs' size entries, filled for valid documents.
 * errs: reset, then filled with all problems (up to RES_MAX_ERRORS).
 * Returns 0 when the set is valid, POLIS_EINVAL when errs holds problems,
 * or the lookup's code when a lookup failed (that error is the last in
 * errs).
 */
int res_validate_set(const json_t *docs, const char *const *sources,
                     res_lookup_fn lookup, void *lookup_ctx, res_info *infos,
                     res_errors *errs);

/*
 * The document as compact JSON with sorted keys: the same resource gives
 * the same bytes whatever the key order it was written in.  For storage
 * and change detection.  NULL on allocation failure; caller frees (free).
 */
char *res_canonical_json(const json_t *doc);

/*
 * "<prefix>resources/<kind>/<scope>/<name>" into buf, kind in lower case
 * ("/polis/resources/dataproduct/sales/orders").  prefix is used as is
 * (normally ends in '/').  POLIS_ETOOBIG if it does not fit, POLIS_EINVAL
 * for an unknown kind.
 */
int res_etcd_key(const char *prefix, res_kind kind, const char *scope,
                 const char *name, char *buf, size_t len);

/*
 * The prefix that lists resources: "<prefix>resources/" (kind unknown),
 * "<prefix>resources/<kind>/" (scope NULL) or
 * "<prefix>resources/<kind>/<scope>/".  Same errors as res_etcd_key.
 */
int res_etcd_prefix(const char *prefix, res_kind kind, const char *scope,
                    char *buf, size_t len);

/*
 * Split an etcd key made by res_etcd_key back into *out.  POLIS_EINVAL when
 * the key is not "<prefix>resources/<kind>/<scope>/<name>" with a known
 * kind and names that fit.
 */
int res_etcd_key_parse(const char *prefix, const char *key, res_info *out);

#endif
