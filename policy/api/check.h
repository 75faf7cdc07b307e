/*
 * check.h — glue between the Check API messages (proto/polis/v1/check.proto)
 * and the policy engine, shared by the control plane (Governance.Check) and
 * the sidecar (Authorizer.Check): a Principal document becomes the engine's
 * subject, a CheckRequest a pol_request, a decision a CheckResponse.
 */
#ifndef POLIS_POLICY_API_CHECK_H
#define POLIS_POLICY_API_CHECK_H

#include "common/error.h"
#include "policy/policy.h"
#include "polis/v1/check.pb-c.h"

#include <jansson.h>

#define CHECK_MAX_ATTRS       64
#define CHECK_MAX_ATTR_VALUES 256 /* strings in all list attributes */

/* A subject built from a Principal document; borrows the document's strings
 * (keep the json_t alive while it is used). */
typedef struct check_subject {
    pol_expr_subject subject;
    const char *groups[POL_MAX_GROUPS];
    pol_expr_attr attrs[CHECK_MAX_ATTRS];
    const char *values[CHECK_MAX_ATTR_VALUES]; /* list attributes' items */
} check_subject;

/*
 * Fill `out` from a Principal document (spec.groups, spec.attributes: a
 * string or a list of strings each), or from the name alone when
 * `principal` is NULL (an unknown principal has no groups and no
 * attributes).  Groups, attributes or list items beyond the bounds are an
 * error (POLIS_ETOOBIG) rather than silently dropped.
 */
int check_subject_from_principal(const char *name, const json_t *principal,
                                 check_subject *out, polis_error *err);

/* Columns of a CheckRequest; names borrowed from the request. */
typedef struct check_columns {
    pol_column_request cols[POL_MAX_COLUMNS];
    size_t n;
} check_columns;

/*
 * Build `req` from a CheckRequest (product, port, purpose, columns) and a
 * subject; everything borrowed.  POLIS_EINVAL with the field for a missing
 * product or an unknown port, POLIS_ETOOBIG for too many columns.
 */
int check_request_from_pb(const Polis__V1__CheckRequest *in,
                          const check_subject *subject, check_columns *cols,
                          pol_request *req, polis_error *err);

/*
 * Fill `out` (initialised by the caller with POLIS__V1__CHECK_RESPONSE__INIT)
 * from a decision: allowed, reason, deciding rule, masks, row filters,
 * minimum group size, matched rules, revision, principal; and, when
 * `explain`, the explanation text and decision_json.  Without `explain`
 * those two stay "" (the protobuf-c default): rendering them is most of
 * the cost of a response, and an enforcing service does not read them.
 * Its strings and arrays are one allocation (plus decision_json's own);
 * release them with check_response_clear.  Returns POLIS_ENOMEM on
 * allocation failure (`out` is then cleared).
 */
int check_response_build(const pol_decision *d, int64_t revision,
                         const char *principal, bool explain,
                         Polis__V1__CheckResponse *out, polis_error *err);

/* check_response_build with explain: for people (Governance.Check). */
int check_response_from_decision(const pol_decision *d, int64_t revision,
                                 const char *principal,
                                 Polis__V1__CheckResponse *out,
                                 polis_error *err);

/*
 * Fill `out` (initialised with POLIS__V1__CHECK_RESPONSE__INIT) with a
 * denial decided before the engine (no snapshot, an unknown principal...):
 * no rule took part.  `explanation` goes into the response, with a
 * decision_json of allowed, reason and explanation, only when `explain`.
 * Release with check_response_clear.  POLIS_ENOMEM on allocation failure.
 */
int check_response_deny(const char *reason, const char *explanation,
                        const char *principal, int64_t revision, bool explain,
                        Polis__V1__CheckResponse *out, polis_error *err);

/* Free what check_response_build or check_response_deny allocated in
 * `resp` (and nothing else: a response filled another way is its filler's
 * to free) and set it back to POLIS__V1__CHECK_RESPONSE__INIT.  Safe on a
 * response still at INIT. */
void check_response_clear(Polis__V1__CheckResponse *resp);

/* "scope/policy/rule" of a rule into buf (empty for NULL). */
void check_rule_id(const pol_rule_info *rule, char *buf, size_t len);

#endif
