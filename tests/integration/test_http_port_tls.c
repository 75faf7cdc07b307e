/*
 * test_http_port_tls.c — an HTTP port in front of https upstreams: a real
 * nginx with certificates made by the openssl CLI for this run, a real
 * control plane and sidecar.  The sidecar trusts the test CA
 * (--upstream-ca-file), checks the upstream's certificate against the host
 * name or IP address of the upstream URL, and refuses, with a 502 that
 * says why, a certificate of another CA or of another name.
 */
#include "common/rpc.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/nginxenv.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testenv.h"
#include "tests/support/testutil.h"
#include "tests/support/tlscert.h"

#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ALICE "alice-token-0123456789"

static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;
static char dir[512];
/* good: the test CA, SAN localhost + 127.0.0.1; rogue: another CA;
 * other: the test CA, SAN other.example only */
static nginxenv web;
static testenv_proc *closer; /* HTTP/1.0, ends bodies by closing */
static int port_good, port_rogue, port_other, port_closer;

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Can this machine listen on ::1?  ("localhost" may resolve to it.) */
static bool have_ipv6_loopback(void)
{
    struct sockaddr_in6 a = {.sin6_family = AF_INET6,
                             .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

    if (fd >= 0)
        close(fd);
    return ok;
}

/* One nginx, one TLS server per certificate; the answer says how many
 * requests its connection has carried (keep-alive is visible). */
static int serve(void)
{
    static const char *const certs[] = {"good", "rogue", "other"};
    int *ports[] = {&port_good, &port_rogue, &port_other}, list[3];
    char http[4096];
    size_t used = 0;
    bool v6 = have_ipv6_loopback();

    for (int i = 0; i < 3; i++) {
        *ports[i] = list[i] = testenv_free_port();
        used += (size_t)snprintf(
            http + used, sizeof(http) - used,
            "  server {\n"
            "    listen 127.0.0.1:%d ssl;\n"
            "%s%d%s"
            "    ssl_certificate %s/%s.crt;\n"
            "    ssl_certificate_key %s/%s.key;\n"
            "    access_log off;\n"
            "    location / { default_type text/plain;\n"
            "      return 200 \"hello over tls $connection_requests\\n\"; }\n"
            "  }\n",
            list[i], v6 ? "    listen [::1]:" : "# ", list[i],
            v6 ? " ssl;\n" : "\n", dir, certs[i], dir, certs[i]);
    }
    return nginxenv_start(&web, dir, "nginx", http, list, 3);
}

/*
 * An upstream as small servers are: HTTP/1.0, the body ended by closing
 * the connection, and no TLS close_notify before the close (Python's
 * SSLSocket.close() sends none).  OpenSSL 3 calls that an error unless
 * told otherwise; the answer must still arrive whole.
 */
static testenv_proc *serve_closer(void)
{
    static const char script[] =
        "import socket, ssl, sys\n"
        "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
        "ctx.load_cert_chain(sys.argv[2], sys.argv[3])\n"
        "srv = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
        "while True:\n"
        "    raw, _ = srv.accept()\n"
        "    try:\n"
        "        c = ctx.wrap_socket(raw, server_side=True)\n"
        "        buf = b''\n"
        "        while b'\\r\\n\\r\\n' not in buf:\n"
        "            d = c.recv(4096)\n"
        "            if not d: break\n"
        "            buf += d\n"
        "        c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain'\n"
        "                  b'\\r\\n\\r\\nclosed, not notified\\n')\n"
        "        c.close()\n"
        "    except (OSError, ssl.SSLError):\n"
        "        raw.close()\n";
    char port[16], crt[600], key[600], log[600];
    const char *argv[] = {"python3", "-c", script, port, crt, key, NULL};

    port_closer = testenv_free_port();
    snprintf(port, sizeof(port), "%d", port_closer);
    snprintf(crt, sizeof(crt), "%s/good.crt", dir);
    snprintf(key, sizeof(key), "%s/good.key", dir);
    snprintf(log, sizeof(log), "%s/closer.log", dir);
    return testenv_spawn_listening("the python upstream", argv, NULL, log,
                                   port_closer, 15000);
}

static int apply_product(const char *name, const char *upstream)
{
    char doc[1024];

    snprintf(doc, sizeof(doc),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
             "\"metadata\":{\"name\":\"%s\"},\"spec\":{\"domain\":\"sales\","
             "\"ports\":[{\"name\":\"api\",\"type\":\"http\",\"upstream\":"
             "\"%s\"}],\"schema\":[{\"name\":\"id\",\"type\":\"integer\"}]}}",
             name, upstream);
    return gc_apply(gov, doc) < 0 ? -1 : 0;
}

/* GET through the sidecar: the status, the body in *out (caller frees). */
static long get(const char *product, char **out)
{
    char url[512];
    gc_response r;
    long st;

    snprintf(url, sizeof(url), "%s/v1/products/sales/%s/http/hello.txt",
             sc->http_url, product);
    st = gc_http(NULL, url, ALICE, NULL, NULL, 20000, &r);
    *out = r.body ? strdup(r.body) : NULL;
    gc_response_free(&r);
    return st;
}

static int suite_cleanup(void)
{
    sidecarenv_free(sc);
    sc = NULL;
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    nginxenv_stop(&web, 2000);
    testenv_proc_stop(closer, 2000);
    closer = NULL;
    return 0;
}

static int suite_init(void)
{
    static const char *const cp_args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = cp_args};
    sidecarenv_options so = {.domain = "sales", .id = "sales-https-1"};
    char url[256], ca[600], hex[65], doc[1024];
    /* One loop, so one pool: the second call finds the first's connection. */
    const char *sc_args[] = {"--http-workers", "1", "--upstream-ca-file", ca,
                             NULL};
    const char *t = testenv_tmpdir("httptls");
    int64_t until;
    char *body = NULL;
    long st = -1;

    if (t == NULL)
        return -1;
    snprintf(dir, sizeof(dir), "%s", t);
    if (tlscert_ca(dir, "ca") || tlscert_ca(dir, "rogueca") ||
        tlscert_issue(dir, "good", "ca", "/CN=localhost",
                      "subjectAltName=DNS:localhost,IP:127.0.0.1\n") ||
        tlscert_issue(dir, "rogue", "rogueca", "/CN=rogue",
                      "subjectAltName=IP:127.0.0.1\n") ||
        tlscert_issue(dir, "other", "ca", "/CN=other.example",
                      "subjectAltName=DNS:other.example\n"))
        return -1;
    if (serve() != 0)
        goto fail;
    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto fail;
    gc_token_sha256(ALICE, hex);
    snprintf(doc, sizeof(doc),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\",\"metadata\":"
             "{\"name\":\"alice\"},\"spec\":{\"groups\":[\"analysts\"],"
             "\"credentials\":{\"tokenSha256\":[\"%s\"]}}}",
             hex);
    if (gc_apply(gov, "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                      "\"metadata\":{\"name\":\"sales\"},\"spec\":{\"owners\":"
                      "[\"s@example.com\"]}}") < 0 ||
        gc_apply(gov, doc) < 0 ||
        gc_apply(
            gov,
            "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":"
            "{\"name\":\"api\"},\"spec\":{\"scope\":\"global\",\"rules\":["
            "{\"name\":\"call-sales\",\"effect\":\"allow\",\"subjects\":"
            "[\"group:analysts\"],\"resources\":[\"sales/*\"],"
            "\"ports\":[\"http\"]}]}}") < 0)
        goto fail;
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/base", port_good);
    if (apply_product("by-ip", url))
        goto fail;
    snprintf(url, sizeof(url), "https://localhost:%d/base", port_good);
    if (apply_product("by-name", url))
        goto fail;
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/base", port_rogue);
    if (apply_product("rogue", url))
        goto fail;
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/base", port_other);
    if (apply_product("other-name", url))
        goto fail;
    if ((closer = serve_closer()) == NULL)
        goto fail;
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/base", port_closer);
    if (apply_product("closer", url))
        goto fail;
    snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
    so.controlplane = cp->grpc_target;
    so.extra_args = sc_args;
    so.wait_ready = true;
    sc = sidecarenv_start(&so);
    if (sc == NULL)
        goto fail;
    /* The sidecar has the products once its first call is not a 404. */
    until = mono_ms() + 15000;
    while (mono_ms() < until && (st = get("other-name", &body)) == 404) {
        free(body);
        body = NULL;
        usleep(50 * 1000);
    }
    free(body);
    return 0;
fail:
    if (sc)
        sidecarenv_dump_log(sc, 4000);
    if (web.proc)
        nginxenv_print_logs(&web);
    suite_cleanup();
    return -1;
}

static void test_verified_by_ip(void)
{
    char *body = NULL;

    CU_ASSERT_EQUAL(get("by-ip", &body), 200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    CU_ASSERT_STRING_EQUAL(body, "hello over tls 1\n");
    free(body);
    /* The next request rides the same TLS connection: no new handshake. */
    CU_ASSERT_EQUAL(get("by-ip", &body), 200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    CU_ASSERT_STRING_EQUAL(body, "hello over tls 2\n");
    free(body);
}

/* A host name: resolved without blocking (evdns, the hosts file), sent as
 * SNI and checked against the certificate's DNS name. */
static void test_verified_by_name(void)
{
    char *body = NULL;

    CU_ASSERT_EQUAL(get("by-name", &body), 200);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "hello over tls"));
    free(body);
}

static void test_unknown_ca_refused(void)
{
    char *body = NULL;

    CU_ASSERT_EQUAL(get("rogue", &body), 502);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    printf("\n    %s", body);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "certificate"));
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "issuer"));
    CU_ASSERT_PTR_NULL(strstr(body, "hello"));
    free(body);
}

static void test_other_name_refused(void)
{
    char *body = NULL;

    CU_ASSERT_EQUAL(get("other-name", &body), 502);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    printf("\n    %s", body);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "mismatch"));
    free(body);
    /* Refusals leave nothing behind: the good upstream still answers. */
    CU_ASSERT_EQUAL(get("by-ip", &body), 200);
    free(body);
}

/* Twice: the first connection is not pooled (it ended with the answer),
 * so the second is not sent on a dead one. */
static void test_close_delimited(void)
{
    for (int i = 0; i < 2; i++) {
        char *body = NULL;

        CU_ASSERT_EQUAL(get("closer", &body), 200);
        CU_ASSERT_PTR_NOT_NULL_FATAL(body);
        CU_ASSERT_STRING_EQUAL(body, "closed, not notified\n");
        free(body);
    }
}

static const test_case cases[] = {
    {"verified by IP address", test_verified_by_ip},
    {"verified by host name", test_verified_by_name},
    {"a certificate of an unknown CA is refused", test_unknown_ca_refused},
    {"a certificate for another name is refused", test_other_name_refused},
    {"a body ended by a close without close_notify", test_close_delimited},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"http port over tls", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
