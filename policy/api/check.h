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
 * from a decision.  Allocates its strings and arrays; release them with
 * check_response_clear.  Returns POLIS_ENOMEM on allocation failure.
 */
int check_response_from_decision(const pol_decision *d, int64_t revision,
                                 const char *principal,
                                 Polis__V1__CheckResponse *out,
                                 polis_error *err);

void check_response_clear(Polis__V1__CheckResponse *resp);

/* "scope/policy/rule" of a rule into buf (empty for NULL). */
void check_rule_id(const pol_rule_info *rule, char *buf, size_t len);

#endif
