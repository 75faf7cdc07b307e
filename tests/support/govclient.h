/*
 * govclient.h — what integration tests and benchmarks do over and over
 * against a running mesh: apply resource documents through the control
 * plane's Governance API, make a principal with a bearer token, and call
 * a sidecar's HTTP port with libcurl.
 */
#ifndef POLIS_TESTS_GOVCLIENT_H
#define POLIS_TESTS_GOVCLIENT_H

#include "common/rpc.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Apply one resource document (JSON text) as source "test": the revision,
 * or -1 with the status and message on stderr. */
int64_t gc_apply(rpc_channel *gov, const char *doc);

/*
 * Apply docs[0..n) (JSON texts) in one call as source "test", bounded by
 * timeout_ms (0: 10000): the revision, or -1 with the status and message
 * on stderr.
 */
int64_t gc_apply_docs(rpc_channel *gov, const char *const *docs, size_t n,
                      int timeout_ms);

/* The lowercase hex SHA-256 of `token`, as a Principal's tokenSha256
 * holds it, into hex (NUL-terminated). */
void gc_token_sha256(const char *token, char hex[65]);

/*
 * Apply a Principal `name` in group `group` with attribute region=`region`
 * (NULL: none) whose bearer token is `token` (its SHA-256 is stored).
 * The revision, or -1.
 */
int64_t gc_apply_principal(rpc_channel *gov, const char *name,
                           const char *group, const char *region,
                           const char *token);

/* An HTTP answer: status (-1: no answer or a failed transfer) and body. */
typedef struct gc_response {
    long status;
    char *body; /* NUL-terminated, malloc'd (NULL when empty) */
    size_t len;
} gc_response;

/*
 * `method` (NULL: GET, or POST when body is set) on `url` with
 * Authorization: Bearer `token` (NULL: none), Content-Type
 * application/json when there is a body, and extra header lines `headers`
 * (NULL-terminated, may be NULL); bounded by timeout_ms (0: 30000).
 * Bodies above 16 MiB fail the transfer.  Returns r->status.  Free with
 * gc_response_free.
 */
long gc_http(const char *method, const char *url, const char *token,
             const char *body, const char *const *headers, int timeout_ms,
             gc_response *r);

/* The body as JSON (NULL when it is not JSON; caller decrefs). */
json_t *gc_response_json(const gc_response *r);

/* Free the body; the status stays. */
void gc_response_free(gc_response *r);

#endif
