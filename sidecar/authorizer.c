/*
 * authorizer.c — Authorizer.Check over gRPC (authorizer.h); the decision
 * itself is sc_checker_check, shared with the HTTP API.
 */
#include "sidecar/authorizer.h"
#include "policy/api/check.h"
#include "polis/v1/authorizer.pb-c.h"

static int check_start(rpc_call *call, const ProtobufCMessage *msg, void *ud)
{
    sc_checker *c = ud;
    const Polis__V1__CheckRequest *req = (const Polis__V1__CheckRequest *)msg;
    Polis__V1__CheckResponse resp = POLIS__V1__CHECK_RESPONSE__INIT;
    polis_error err = {0};
    char text[1100];
    int rc, status = RPC_OK;

    /* The machine path: explain only when asked (check.proto). */
    rc = sc_checker_decide(c, req, req->explain, &resp, &err);
    if (rc == 0) {
        rc = rpc_call_send(call, &resp.base);
        if (rc) {
            status = RPC_INTERNAL;
            rpc_call_set_status_message(call, "cannot send the answer: %s",
                                        polis_strerror(rc));
        }
    } else {
        status = rpc_status_from_polis(rc);
        rpc_call_set_status_message(
            call, "%s", polis_error_format(&err, text, sizeof(text)));
    }
    check_response_clear(&resp);
    return status;
}

int sc_authorizer_register(rpc_server *srv, sc_checker *c, polis_error *err)
{
    static const rpc_handler handlers[] = {
        {.method = "Check", .kind = RPC_KIND_UNARY, .on_start = check_start},
    };

    return rpc_server_add_service(srv, &polis__v1__authorizer__descriptor,
                                  handlers, 1, c, err);
}
