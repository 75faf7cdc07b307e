/*
 * policy.h — libpolis-policy: compile Policy and DataProduct documents into
 * an immutable, indexed engine; decide access requests (default deny, deny
 * wins, masks combine to the strongest, filters AND-ed); explain decisions;
 * mask values.  Language and semantics: docs/policy.md; internals:
 * docs/internals/policy.md.  Expressions (`when`, `filter`): policy/expr.h.
 */
#ifndef POLIS_POLICY_H
#define POLIS_POLICY_H

#include "common/error.h"
#include "policy/expr.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- limits -------------------------------------------------------------- */

#define POL_MAX_DOCUMENTS        100000 /* documents in one build */
#define POL_MAX_RULES_PER_POLICY 10000
#define POL_MAX_LIST             1024 /* subjects, resources, ... of a rule */
#define POL_MAX_NAME             253  /* names, patterns, tags (bytes) */
#define POL_MAX_COLUMNS          1024 /* columns of a product or a request */
#define POL_MAX_GROUPS           256  /* groups of a requesting principal */
#define POL_MAX_MATCHED          256  /* rules listed in one decision */
#define POL_MAX_FILTERS          64   /* row filters in one decision */
#define POL_MASK_TEXT_MAX        64   /* bytes of a redact replacement */

/* ---- vocabulary ---------------------------------------------------------- */

typedef enum pol_effect {
    POL_EFFECT_ALLOW = 0,
    POL_EFFECT_DENY,
    POL_EFFECT_MASK,
    POL_EFFECT_FILTER,
    POL_EFFECT_AGGREGATE,
} pol_effect;

/* "allow", "deny", ...; never NULL. */
const char *pol_effect_name(pol_effect effect);

typedef enum pol_port {
    POL_PORT_QUERY = 0,
    POL_PORT_FILE,
    POL_PORT_EVENT,
    POL_PORT_HTTP,
    POL_PORT_COUNT
} pol_port;

/* "query", "file", ...; never NULL ("?" for an invalid value). */
const char *pol_port_name(pol_port port);

/* 0 and *port, or POLIS_ENOTFOUND for an unknown name. */
int pol_port_from_name(const char *name, pol_port *port);

/* ---- masking ------------------------------------------------------------- */

/*
 * Masking methods, in increasing order of strength: when several masks
 * apply to one column the one with the highest value wins (ties: see
 * pol_mask_compare).
 */
typedef enum pol_mask_method {
    POL_MASK_NONE = 0,
    POL_MASK_EMAIL,      /* "****@example.com": keeps the domain */
    POL_MASK_SHOW_LAST,  /* keep the last n code points */
    POL_MASK_SHOW_FIRST, /* keep the first n code points */
    POL_MASK_BUCKET,     /* numbers to "30-39" (or "30") for width 10 */
    POL_MASK_DATE_MONTH, /* "2024-05-17..." to "2024-05-01" */
    POL_MASK_DATE_YEAR,  /* "2024-05-17..." to "2024-01-01" */
    POL_MASK_HASH,       /* HMAC-SHA256, 64 lower-case hex digits */
    POL_MASK_REDACT,     /* fixed replacement, or one fill per code point */
    POL_MASK_NULLIFY,    /* NULL */
} pol_mask_method;

/* A compiled mask: the method and its parameters (docs/policy.md). */
typedef struct pol_mask {
    pol_mask_method method;
    unsigned n;        /* show_first / show_last */
    int64_t width;     /* bucket, >= 1 */
    bool bucket_lower; /* bucket: "30" instead of "30-39" */
    bool per_char;     /* redact: one fill per code point */
    char fill[8];      /* UTF-8 of the masking character, "*" default */
    char replacement[POL_MASK_TEXT_MAX + 1]; /* redact, "****" default */
} pol_mask;

/* "hash", "show_last", ...; never NULL. */
const char *pol_mask_method_name(pol_mask_method method);

/* 0 and *method, or POLIS_ENOTFOUND for an unknown name. */
int pol_mask_method_from_name(const char *name, pol_mask_method *method);

/*
 * Compile a mask from its method name and its `params` object (may be
 * NULL).  Errors are POLIS_EINVAL with err->where the field ("method",
 * "params.n") relative to the mask object.
 */
int pol_mask_parse(const char *method, const json_t *params, pol_mask *out,
                   polis_error *err);

/*
 * Strength order: > 0 if a is stronger than b, < 0 if weaker, 0 if equal.
 * Methods compare by enum order; within one method fewer visible code
 * points (show_*), a wider bucket and a fixed redact replacement (rather
 * than one fill per code point) are stronger.
 */
int pol_mask_compare(const pol_mask *a, const pol_mask *b);

/*
 * The key of the hash method, prepared once (the HMAC inner and outer
 * SHA-256 states) so that hashing a short value costs two compressions.
 * Treat the fields as private.
 */
typedef struct pol_mask_key {
    uint32_t inner[8];
    uint32_t outer[8];
} pol_mask_key;

/* Prepare `key` (len bytes, any length, may be 0) for HMAC-SHA256. */
void pol_mask_key_init(pol_mask_key *out, const void *key, size_t len);

/* Bytes of output buffer (including the terminating NUL) that masking an
 * input of inlen bytes needs at most. */
size_t pol_mask_output_max(const pol_mask *mask, size_t inlen);

/*
 * Mask one value.  `in` (inlen bytes, need not be NUL-terminated) NULL is
 * an SQL NULL, which stays NULL for every method.  On success returns 0
 * and either sets *out_null = true (the result is NULL; *outlen = 0) or
 * writes *outlen bytes plus a NUL into out.  POLIS_ETOOBIG if cap is too
 * small (*outlen receives the size needed, NUL included); POLIS_EINVAL for
 * the hash method without a key.  Never allocates; thread-safe.
 *
 * Unparseable input fails closed: date methods give NULL unless the value
 * starts with YYYY-MM-DD, bucket gives NULL unless it is a number, email
 * gives "****" without an '@'.
 */
int pol_mask_apply(const pol_mask *mask, const pol_mask_key *key,
                   const char *in, size_t inlen, char *out, size_t cap,
                   size_t *outlen, bool *out_null);

/* HMAC-SHA256 of data into 32 bytes, with a prepared key. */
void pol_hmac_sha256(const pol_mask_key *key, const void *data, size_t len,
                     unsigned char digest[32]);

/* ---- the engine ---------------------------------------------------------- */

/* Immutable after pol_engine_build: share it between threads freely. */
typedef struct pol_engine pol_engine;

typedef struct pol_engine_options {
    /* Key of the hash mask (borrowed during the build only).  NULL: the
     * engine has no key and pol_engine_mask_key returns NULL. */
    const void *hmac_key;
    size_t hmac_key_len;
} pol_engine_options;

/*
 * Build an engine from `docs`, a JSON array of resource documents (borrowed).
 * Policy and DataProduct documents are compiled; other kinds (Domain,
 * Principal, ...) are ignored.  `opts` may be NULL.  On success *out is the
 * engine (caller frees with pol_engine_free).  On failure *out is NULL and
 * err names the document and field: err->where `policy "pii":
 * spec.rules[2].mask.method`, err->message `unknown method "sha1"`
 * (documents without a usable name are `documents[3]`).  Codes:
 * POLIS_EINVAL (a bad document), POLIS_ECONFLICT (two policies with the
 * same scope and name, two products with the same id), POLIS_ETOOBIG,
 * POLIS_ENOMEM.
 */
int pol_engine_build(const json_t *docs, const pol_engine_options *opts,
                     pol_engine **out, polis_error *err);

/* Free an engine; NULL is a no-op.  No decision made with it may be read
 * afterwards. */
void pol_engine_free(pol_engine *engine);

/* The prepared hash key, or NULL if the engine was built without one.
 * Borrowed from the engine. */
const pol_mask_key *pol_engine_mask_key(const pol_engine *engine);

/* Counts, for tools and tests. */
size_t pol_engine_rule_count(const pol_engine *engine);
size_t pol_engine_product_count(const pol_engine *engine);

/*
 * Compile one Policy document alone (no products: filters are parsed but
 * not checked against columns) and report the first error, as
 * pol_engine_build would.  For the control plane to reject a Policy before
 * storing it.
 */
int pol_policy_validate(const json_t *policy, polis_error *err);

/* ---- requests and decisions ---------------------------------------------- */

/* One requested column.  classifications NULL: take the tags from the
 * product's schema (the column must exist there). */
typedef struct pol_column_request {
    const char *name;
    const char *const *classifications;
    size_t nclassifications;
} pol_column_request;

/*
 * An access request; everything is borrowed.  subject.name is the
 * principal, subject.groups its groups (at most POL_MAX_GROUPS),
 * subject.attrs its attributes (used by `when` and filter expressions).
 * product is "domain/product".  purpose may be NULL (then rules restricted
 * to purposes do not match).  ncolumns 0: all columns of the product's
 * schema.
 */
typedef struct pol_request {
    pol_expr_subject subject;
    const char *product;
    pol_port port;
    const char *purpose;
    const pol_column_request *columns;
    size_t ncolumns;
} pol_request;

/* A compiled rule as the decision shows it.  Borrowed from the engine. */
typedef struct pol_rule_info {
    const char *scope;  /* "global" or the domain */
    const char *policy; /* metadata.name */
    const char *name;   /* the rule's name */
    pol_effect effect;
    const char *filter;     /* filter rules: the expression text, else NULL */
    int64_t min_group_size; /* aggregate rules, else 0 */
} pol_rule_info;

typedef enum pol_reason {
    POL_REASON_ALLOWED = 0, /* an allow matched and no deny */
    POL_REASON_DENIED,      /* a deny rule matched */
    POL_REASON_DEFAULT_DENY /* no allow matched */
} pol_reason;

/*
 * A reusable decision: bounded arrays inside, so that pol_decide does not
 * allocate.  One decision per thread; reuse it for every request.  It
 * borrows from the engine and from the request it was decided with (its
 * strings: product, principal, purpose, column names): keep both alive
 * while reading it.  A new decision reads as a default deny.
 */
typedef struct pol_decision pol_decision;

/* NULL on allocation failure.  Free with pol_decision_free (NULL: no-op). */
pol_decision *pol_decision_new(void);
void pol_decision_free(pol_decision *decision);

/*
 * Decide `req` with `engine` into `out` (its previous content is
 * replaced).  Returns 0 (allowed or denied: see pol_decision_allowed), or
 * POLIS_EINVAL (missing product, bad port), POLIS_ENOTFOUND (a column
 * without classifications that the product's schema lacks), POLIS_ETOOBIG
 * (more than POL_MAX_COLUMNS columns, POL_MAX_GROUPS groups or
 * POL_MAX_FILTERS filters).  On error the decision is a deny.  Thread-safe
 * for distinct decisions.
 */
int pol_decide(const pol_engine *engine, const pol_request *req,
               pol_decision *out, polis_error *err);

bool pol_decision_allowed(const pol_decision *d);
pol_reason pol_decision_reason(const pol_decision *d);

/* The rule that decided (the first matching deny, else the first matching
 * allow), NULL for a default deny. */
const pol_rule_info *pol_decision_deciding_rule(const pol_decision *d);

/* Columns of the decision (requested, or the product's); empty when
 * denied. */
size_t pol_decision_column_count(const pol_decision *d);
const char *pol_decision_column_name(const pol_decision *d, size_t i);
/* The column's mask, NULL if it is returned as is. */
const pol_mask *pol_decision_column_mask(const pol_decision *d, size_t i);
/* The rule that chose the mask, and the classification tag that made it
 * apply (NULL when the rule names the column). */
const pol_rule_info *pol_decision_column_mask_rule(const pol_decision *d,
                                                   size_t i);
const char *pol_decision_column_mask_tag(const pol_decision *d, size_t i);
/* Number of masked columns. */
size_t pol_decision_mask_count(const pol_decision *d);

/* Row filters to AND (checked expressions, borrowed from the engine), in
 * rule order; pass the array to pol_expr_matches / pol_expr_to_sql. */
size_t pol_decision_filter_count(const pol_decision *d);
const pol_expr *const *pol_decision_filters(const pol_decision *d);
const pol_rule_info *pol_decision_filter_rule(const pol_decision *d, size_t i);

/* Minimum group size of aggregated results (0: none), and its rule. */
int64_t pol_decision_min_group_size(const pol_decision *d);
const pol_rule_info *pol_decision_aggregate_rule(const pol_decision *d);

/* Every rule that matched the request (at most POL_MAX_MATCHED; see
 * pol_decision_matched_truncated), in rule order. */
size_t pol_decision_matched_count(const pol_decision *d);
const pol_rule_info *pol_decision_matched(const pol_decision *d, size_t i);
bool pol_decision_matched_truncated(const pol_decision *d);

/*
 * Human-readable explanation into buf (always NUL-terminated when len > 0),
 * e.g. "denied: no rule allows (default deny)" or "allowed by
 * global/analysts/allow-sales; column email masked (hash) by
 * global/pii/mask-email (classification pii.email)".  Returns the length
 * the full text needs (snprintf style): compare with len to detect
 * truncation.
 */
size_t pol_decision_explain(const pol_decision *d, char *buf, size_t len);

/* The decision as JSON (docs/policy.md, "Decisions"); caller owns the
 * result (json_decref).  NULL on allocation failure. */
json_t *pol_decision_to_json(const pol_decision *d);

#endif
