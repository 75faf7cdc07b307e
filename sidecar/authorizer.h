/*
 * authorizer.h — gRPC polis.v1.Authorizer/Check (proto/polis/v1/
 * authorizer.proto) on an rpc_server: the Check API for services that
 * enforce in their own data path, as Envoy's ext_authz does.
 */
#ifndef POLIS_SC_AUTHORIZER_H
#define POLIS_SC_AUTHORIZER_H

#include "common/error.h"
#include "common/rpc.h"
#include "sidecar/checker.h"

/*
 * Serve Authorizer on `srv` (before rpc_server_start).  `c` is borrowed and
 * must outlive the server.  Every decision, a denial included, is status
 * OK with the CheckResponse; a bad request is INVALID_ARGUMENT (or
 * NOT_FOUND for an unknown column) with "field: reason" as the message.
 * The explanation and decision_json come only when the request sets
 * `explain`.
 */
int sc_authorizer_register(rpc_server *srv, sc_checker *c, polis_error *err);

#endif
