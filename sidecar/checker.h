/*
 * checker.h — the sidecar's decision path, shared by gRPC Authorizer.Check
 * (proto/polis/v1/authorizer.proto) and HTTP POST /v1/check: validate the
 * request, authenticate (bearer token) or look up (principal name) the
 * subject in the snapshot in force, decide with the policy engine.
 * Allocation-light: each calling thread reuses one decision and its
 * scratch; no lock is held while deciding.
 */
#ifndef POLIS_SC_CHECKER_H
#define POLIS_SC_CHECKER_H

#include "common/error.h"
#include "common/metrics.h"
#include "polis/v1/check.pb-c.h"
#include "sidecar/snapshot.h"

#include <stdbool.h>

typedef struct sc_checker sc_checker;

/* Reasons of the denials the sidecar decides before the engine does. */
#define SC_REASON_NO_SNAPSHOT     "no snapshot"
#define SC_REASON_UNAUTHENTICATED "unauthenticated"
#define SC_REASON_UNKNOWN         "unknown principal"

/*
 * A checker for a sidecar of `domain` (copied), deciding with whatever
 * `slot` holds (borrowed; must outlive the checker).  Counts into `m`
 * (borrowed, may be NULL): polis_sidecar_checks_total{decision=...} and
 * polis_sidecar_check_seconds.  Caller frees with sc_checker_free, after
 * every thread that checks has stopped checking.
 */
int sc_checker_new(const char *domain, sc_snapshot_slot *slot, metrics *m,
                   sc_checker **out, polis_error *err);
void sc_checker_free(sc_checker *c);

/*
 * Decide `req` into `resp` (initialised by the caller with
 * POLIS__V1__CHECK_RESPONSE__INIT; release with check_response_clear from
 * policy/api/check.h, also after an error).  With `explain`, the response
 * also carries the explanation text and decision_json; without, those stay
 * "" and the sidecar spends less CPU per check (docs/internals/sidecar.md).
 * gRPC passes the request's `explain` field (default off: the machine
 * path); people's paths pass true.
 *
 * Returns 0 for every decision, allowed or not, including the sidecar's
 * own denials (reason SC_REASON_*: no snapshot in force, a token that
 * matches no principal, a principal name the snapshot lacks).  Errors are
 * bad requests, with the field in err->where: POLIS_EINVAL (no principal
 * and no token, both, a missing or malformed product, a product of another
 * domain, an unknown port), POLIS_ENOTFOUND (a column the product lacks),
 * POLIS_ETOOBIG (too many columns), or POLIS_ENOMEM.  Thread-safe.
 */
int sc_checker_decide(sc_checker *c, const Polis__V1__CheckRequest *req,
                      bool explain, Polis__V1__CheckResponse *resp,
                      polis_error *err);

/* sc_checker_decide with explain: HTTP POST /v1/check's answer. */
int sc_checker_check(sc_checker *c, const Polis__V1__CheckRequest *req,
                     Polis__V1__CheckResponse *resp, polis_error *err);

#endif
