/*
 * checker.h — Governance.Check: decide a request against the policies and
 * data products stored now, for `polisctl check` and anyone who wants a
 * decision explained.  Keeps one compiled engine, rebuilt when the store's
 * last change moves.
 */
#ifndef POLIS_CP_CHECKER_H
#define POLIS_CP_CHECKER_H

#include "common/error.h"
#include "controlplane/store.h"
#include "polis/v1/check.pb-c.h"

typedef struct cp_checker cp_checker;

/* Borrows store.  Caller frees with cp_checker_free(). */
int cp_checker_new(cp_store *store, cp_checker **out, polis_error *err);
void cp_checker_free(cp_checker *c);

/*
 * Decide `req` (principal by name) into `resp` (initialised by the caller;
 * release with check_response_clear from policy/api/check.h).
 * POLIS_ENOTFOUND for an unknown principal, POLIS_EINVAL for a bad request
 * (field in err->where), POLIS_EINVAL too when the stored documents do not
 * compile (the compiler's error).
 */
int cp_checker_check(cp_checker *c, const Polis__V1__CheckRequest *req,
                     Polis__V1__CheckResponse *resp, polis_error *err);

#endif
