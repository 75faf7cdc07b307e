/*
 * principals.h — the Principal documents of a snapshot, indexed by name and
 * by bearer token: spec.credentials.tokenSha256 holds lower-case hex
 * SHA-256 digests of the tokens a principal may present (docs/resources.md).
 * Immutable after sc_principals_build: share it between threads freely.
 */
#ifndef POLIS_SC_PRINCIPALS_H
#define POLIS_SC_PRINCIPALS_H

#include "common/error.h"

#include <jansson.h>
#include <stddef.h>

typedef struct sc_principals sc_principals;

/* Bounds: a larger snapshot is refused with POLIS_ETOOBIG. */
#define SC_MAX_PRINCIPALS 1000000
#define SC_MAX_TOKENS     4000000

/*
 * Index the Principal documents of `docs` (a JSON array of resource
 * documents; other kinds are skipped).  Borrows `docs`: keep it alive and
 * unchanged while the index is used.  POLIS_EINVAL (err->where `principal
 * "alice": spec.credentials.tokenSha256[1]`) for a digest that is not 64
 * lower-case hex digits, POLIS_ECONFLICT for two principals of one name
 * or one token digest listed by two principals (a token must name one
 * identity), POLIS_ETOOBIG, POLIS_ENOMEM.  Caller frees with
 * sc_principals_free.
 */
int sc_principals_build(const json_t *docs, sc_principals **out,
                        polis_error *err);

/* NULL is a no-op. */
void sc_principals_free(sc_principals *p);

/* The Principal document named `name`, or NULL.  Borrowed from docs. */
const json_t *sc_principals_by_name(const sc_principals *p, const char *name);

/*
 * The principal a bearer token (len bytes) authenticates, or NULL.  The
 * token is hashed with SHA-256 and the digest compared in constant time
 * (CRYPTO_memcmp); the table slot is chosen by the digest, so timing
 * reveals nothing about the token or the stored digests beyond what a
 * SHA-256 preimage would.  *doc (may be NULL) receives the document.
 * Returned strings and documents are borrowed from docs.
 */
const char *sc_principals_by_token(const sc_principals *p, const char *token,
                                   size_t len, const json_t **doc);

size_t sc_principals_count(const sc_principals *p);
size_t sc_principals_token_count(const sc_principals *p);

#endif
