/*
 * test_mqtt_secure.c — the MQTT bridge against a broker that requires TLS
 * and a login: a throwaway CA and broker certificate made with the openssl
 * CLI, a real Mosquitto with a TLS listener and a password file, real
 * etcd, control plane and sidecars.  With the right CA and login the
 * governed view arrives; a wrong password is refused and logged without
 * the password, and a corrected credentials file applies at the next retry
 * without a restart; a CA that did not sign the broker's certificate is
 * refused; a listener that requires a client certificate takes the
 * sidecar's --mqtt-cert-file and refuses a sidecar without one.
 */
#include "common/rpc.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/mqttsub.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"
#include "tests/support/tlscert.h"

#include <curl/curl.h>
#include <jansson.h>
#include <mosquitto.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PUBLISHER   "orders-service-token-0123456789"
#define TOPIC       "polis/sales/orders-secure"
#define BRIDGE_USER "partner-bridge"
#define RIGHT_PW    "Right-pw-7f3c9a1e"
#define WRONG_PW    "Wrong-pw-41d2b8c0"
#define MALFORMED   "no-colon-Malformed-5e6f"
#define READER_USER "reader"
#define READER_PW   "Reader-pw-0a9b8c"
#define WAIT_MS     15000

static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;
static testenv_proc *broker;
static const char *dir;
static char path_ca[600], path_rogue_ca[600], path_creds_dir[600],
    path_creds[600], broker_conf[600], broker_log[600], path_client_crt[600],
    path_client_key[600];
static int broker_port, mtls_port; /* TLS; TLS with client certificates */

static mqttsub *sub; /* the reader: TLS, logged in */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int write_file(const char *path, const char *text)
{
    char tmp[700];
    FILE *f;

    /* tmp + rename, as a Secret volume swaps its files. */
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if ((f = fopen(tmp, "w")) == NULL)
        return -1;
    fputs(text, f);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

/* ---- certificates, passwords, the broker --------------------------------- */

/* The broker's certificate for 127.0.0.1 and localhost, the sidecar's
 * client certificate, and the password file with the bridge's and the
 * reader's logins. */
static int make_broker_files(void)
{
    char pw[600];
    const char *pw1[] = {"mosquitto_passwd", "-b",     "-c", pw,
                         BRIDGE_USER,        RIGHT_PW, NULL};
    const char *pw2[] = {"mosquitto_passwd", "-b",      pw,
                         READER_USER,        READER_PW, NULL};

    snprintf(pw, sizeof(pw), "%s/passwords", dir);
    snprintf(path_client_crt, sizeof(path_client_crt), "%s/client.crt", dir);
    snprintf(path_client_key, sizeof(path_client_key), "%s/client.key", dir);
    if (tlscert_issue(dir, "server", "ca", "/CN=localhost",
                      "subjectAltName=IP:127.0.0.1,DNS:localhost\n") ||
        tlscert_issue(dir, "client", "ca", "/CN=polis-sidecar-sales",
                      "extendedKeyUsage=clientAuth\n") ||
        tlscert_run(dir, pw1) || tlscert_run(dir, pw2))
        return -1;
    return 0;
}

static int broker_start(void)
{
    const char *argv[] = {"/usr/sbin/mosquitto", "-c", broker_conf, NULL};

    broker = testenv_spawn_listening("mosquitto", argv, NULL, broker_log,
                                     broker_port, 10000);
    return broker ? 0 : -1;
}

static int broker_setup(void)
{
    FILE *f;

    snprintf(path_ca, sizeof(path_ca), "%s/ca.crt", dir);
    snprintf(path_rogue_ca, sizeof(path_rogue_ca), "%s/rogue-ca.crt", dir);
    if ((broker_port = testenv_free_port()) < 0 ||
        (mtls_port = testenv_free_port()) < 0 || tlscert_ca(dir, "ca") ||
        tlscert_ca(dir, "rogue-ca") || make_broker_files())
        return -1;
    snprintf(broker_conf, sizeof(broker_conf), "%s/mosquitto.conf", dir);
    snprintf(broker_log, sizeof(broker_log), "%s/mosquitto.log", dir);
    if ((f = fopen(broker_conf, "w")) == NULL)
        return -1;
    /* Persistence keeps the reader's session across a broker restart (see
     * test_mqtt_bridge.c, also for `user root`). */
    fprintf(f,
            "listener %d 127.0.0.1\n"
            "cafile %s\ncertfile %s/server.crt\nkeyfile %s/server.key\n"
            "require_certificate false\n"
            "tls_version tlsv1.2\n"
            "listener %d 127.0.0.1\n"
            "cafile %s\ncertfile %s/server.crt\nkeyfile %s/server.key\n"
            "require_certificate true\n"
            "allow_anonymous false\n"
            "password_file %s/passwords\n"
            "user root\n"
            "persistence true\npersistence_location %s/\n"
            "log_dest stderr\nlog_type all\n",
            broker_port, path_ca, dir, dir, mtls_port, path_ca, dir, dir, dir,
            dir);
    return fclose(f) == 0 ? broker_start() : -1;
}

/* ---- the reader: a TLS, logged-in subscriber ----------------------------- */

static int subscriber_start(void)
{
    mqttsub_options o = {.client_id = "polis-secure-reader",
                         .port = broker_port,
                         .topic = TOPIC,
                         .ca_file = path_ca,
                         .user = READER_USER,
                         .password = READER_PW};

    sub = mqttsub_start(&o, WAIT_MS);
    return sub ? 0 : -1;
}

static void subscriber_stop(void)
{
    mqttsub_stop(sub);
    sub = NULL;
}

/* The event of the first message whose event has this order_id (a new
 * reference), or NULL. */
static json_t *event_of(int order_id)
{
    json_t *msgs = mqttsub_messages(sub, NULL), *ev = NULL;

    for (size_t i = 0; i < json_array_size(msgs) && ev == NULL; i++) {
        json_t *e = json_object_get(json_array_get(msgs, i), "event");
        if (json_integer_value(json_object_get(e, "order_id")) == order_id)
            ev = json_incref(e);
    }
    json_decref(msgs);
    return ev;
}

static json_t *wait_event(int order_id, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;
    json_t *ev;

    while ((ev = event_of(order_id)) == NULL && now_ms() < until)
        usleep(20 * 1000);
    return ev;
}

/* Whether the event of order_id arrives within timeout_ms. */
static bool arrives(int order_id, int timeout_ms)
{
    json_t *ev = wait_event(order_id, timeout_ms);

    json_decref(ev);
    return ev != NULL;
}

/* The event of order_id arrives (bounded) as the partner's view: the
 * email masked.  CUnit assertions; false (the log printed) when not. */
static bool arrives_governed(const sidecarenv *s, int order_id)
{
    json_t *ev = wait_event(order_id, WAIT_MS);
    const char *email = json_string_value(json_object_get(ev, "email"));

    CU_ASSERT_PTR_NOT_NULL(ev);
    if (ev == NULL)
        sidecarenv_dump_log(s, 3000);
    else
        CU_ASSERT_STRING_EQUAL(email ? email : "(none)", "****@example.com");
    json_decref(ev);
    return ev != NULL;
}

/* ---- the sidecars' logs and pages ---------------------------------------- */

/* No secret in the sidecar's log nor in its /metrics page. */
static void assert_no_secrets(const sidecarenv *s)
{
    static const char *const secrets[] = {RIGHT_PW, WRONG_PW, MALFORMED,
                                          READER_PW};
    char url[128];
    gc_response r;

    snprintf(url, sizeof(url), "%s/metrics", s->admin_url);
    gc_http(NULL, url, NULL, NULL, NULL, 5000, &r);
    CU_ASSERT_EQUAL(r.status, 200);
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
        CU_ASSERT_EQUAL(sidecarenv_log_count(s, secrets[i]), 0);
        CU_ASSERT_PTR_NULL(r.body ? strstr(r.body, secrets[i]) : NULL);
    }
    gc_response_free(&r);
}

/* POST one event to the event port of sales/<product>, retrying while
 * the sidecar does not know the product yet; 0 or -1. */
static int publish(const sidecarenv *s, const char *product, int order_id)
{
    char url[256], body[200];
    int64_t until = now_ms() + WAIT_MS;
    gc_response r;
    long st;

    snprintf(url, sizeof(url), "%s/v1/products/sales/%s/events", s->http_url,
             product);
    snprintf(body, sizeof(body),
             "[{\"order_id\":%d,\"email\":\"u%d@example.com\",\"amount\":%d}]",
             order_id, order_id, order_id);
    for (;;) {
        st = gc_http(NULL, url, PUBLISHER, body, NULL, 10000, &r);
        if (st == 200 || st != 404 || now_ms() > until)
            break;
        gc_response_free(&r);
        usleep(100 * 1000);
    }
    if (st != 200)
        fprintf(stderr, "\npublish -> %ld: %s\n", st, r.body ? r.body : "");
    gc_response_free(&r);
    return st == 200 ? 0 : -1;
}

/* A sidecar of the domain whose bridges trust `ca`, with the client
 * certificate when `client_cert`. */
static sidecarenv *start_sidecar(const char *id, const char *ca,
                                 bool client_cert)
{
    const char *args[] = {"--mqtt-ca-file",
                          ca,
                          "--mqtt-credentials-dir",
                          path_creds_dir,
                          "--mqtt-reconnect-max-ms",
                          "1000",
                          client_cert ? "--mqtt-cert-file" : NULL,
                          path_client_crt,
                          "--mqtt-key-file",
                          path_client_key,
                          NULL};
    sidecarenv_options so = {.domain = "sales",
                             .id = id,
                             .controlplane = cp->grpc_target,
                             .extra_args = args,
                             .wait_ready = true};

    return sidecarenv_start(&so);
}

/* ---- the suite ----------------------------------------------------------- */

static int suite_cleanup(void)
{
    subscriber_stop();
    sidecarenv_free(sc);
    sc = NULL;
    rpc_channel_free(gov);
    gov = NULL;
    cpenv_stop(cp);
    cp = NULL;
    testenv_proc_stop(broker, 5000);
    broker = NULL;
    mosquitto_lib_cleanup();
    curl_global_cleanup();
    return 0;
}

/* Product sales/<name>: an event port bridged to the broker's `port`. */
static int apply_product(const char *name, int port)
{
    char doc[1500];

    snprintf(doc, sizeof(doc),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
             "\"metadata\":{\"name\":\"%s\"},\"spec\":{\"domain\":"
             "\"sales\",\"ports\":[{\"name\":\"changes\",\"type\":\"event\","
             "\"publishers\":[\"orders-service\"],\"mqtt\":{\"broker\":"
             "\"mqtts://127.0.0.1:%d\",\"topic\":\"" TOPIC "\",\"audience\":"
             "\"partner\",\"credentials\":\"partner-broker\"}}],\"schema\":["
             "{\"name\":\"order_id\",\"type\":\"integer\"},"
             "{\"name\":\"email\",\"type\":\"string\",\"classification\":"
             "[\"pii.email\"]},{\"name\":\"amount\",\"type\":\"integer\"}]}}",
             name, port);
    return gc_apply(gov, doc) < 0 ? -1 : 0;
}

static int suite_init(void)
{
    static const char *const cp_args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = cp_args};

    curl_global_init(CURL_GLOBAL_DEFAULT);
    mosquitto_lib_init();
    if ((dir = testenv_tmpdir("mqtts")) == NULL || broker_setup() != 0)
        goto fail;
    snprintf(path_creds_dir, sizeof(path_creds_dir), "%s/creds", dir);
    snprintf(path_creds, sizeof(path_creds), "%s/partner-broker",
             path_creds_dir);
    if (mkdir(path_creds_dir, 0700) != 0 ||
        write_file(path_creds, BRIDGE_USER ":" RIGHT_PW "\n") != 0)
        goto fail;
    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL ||
        gc_apply(gov, "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                      "\"metadata\":{\"name\":\"sales\"},\"spec\":{\"owners\":"
                      "[\"s@example.com\"]}}") < 0 ||
        apply_product("orders", broker_port) ||
        gc_apply_principal(gov, "orders-service", "services", NULL, PUBLISHER) <
            0 ||
        gc_apply_principal(gov, "partner", "partners", NULL,
                           "partner-token-0123456789") < 0 ||
        gc_apply(gov,
                 "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\","
                 "\"metadata\":{\"name\":\"partner-feed\"},\"spec\":{"
                 "\"scope\":\"global\",\"rules\":["
                 "{\"name\":\"partner-reads\",\"effect\":\"allow\","
                 "\"subjects\":[\"partner\"],\"resources\":[\"sales/orders\","
                 "\"sales/refunds\"],\"ports\":[\"event\"]},"
                 "{\"name\":\"service-writes\",\"effect\":\"allow\","
                 "\"subjects\":[\"orders-service\"],\"resources\":"
                 "[\"sales/orders\",\"sales/refunds\"],\"ports\":[\"event\"]},"
                 "{\"name\":\"mask-emails\",\"effect\":\"mask\",\"subjects\":"
                 "[\"*\"],\"resources\":[\"*\"],\"mask\":{\"method\":"
                 "\"email\",\"classifications\":[\"pii.email\"]}}]}}") < 0)
        goto fail;
    /* Subscribed before anything is published: the broker keeps nothing
     * for a topic nobody listens to. */
    if (subscriber_start() != 0 ||
        (sc = start_sidecar("sales-secure-1", path_ca, false)) == NULL)
        goto fail;
    return 0;
fail:
    suite_cleanup();
    return -1;
}

/* ---- cases --------------------------------------------------------------- */

static void test_tls_login_governed_view(void)
{
    CU_ASSERT_FATAL(publish(sc, "orders", 1) == 0);
    CU_ASSERT_FATAL(arrives_governed(sc, 1));
    CU_ASSERT(sidecarenv_log_count(sc, "mqtt bridge connected") >= 1);
    assert_no_secrets(sc);
}

static void test_bad_credentials_then_rotated(void)
{
    pid_t pid = testenv_proc_pid(sc->proc);
    int refused = sidecarenv_log_count(sc, "broker refused");
    int malformed = sidecarenv_log_count(sc, "is badly formed");
    int connected = sidecarenv_log_count(sc, "mqtt bridge connected");

    /* A file that is not username:password: named, never shown. */
    CU_ASSERT_FATAL(write_file(path_creds, MALFORMED "\n") == 0);
    /* The bridge reads the file when it connects: restart the broker. */
    CU_ASSERT_FATAL(testenv_proc_stop(broker, 5000) == 0);
    broker = NULL;
    CU_ASSERT_FATAL(broker_start() == 0);
    CU_ASSERT_FATAL(
        sidecarenv_wait_logged(sc, "is badly formed", malformed, WAIT_MS) == 0);
    CU_ASSERT(sidecarenv_log_count(sc, path_creds) >= 1);
    /* A wrong password: the broker says no. */
    CU_ASSERT_FATAL(write_file(path_creds, BRIDGE_USER ":" WRONG_PW "\n") == 0);
    CU_ASSERT_FATAL(
        sidecarenv_wait_logged(sc, "broker refused", refused, WAIT_MS) == 0);
    CU_ASSERT(sidecarenv_log_count(sc,
                                   "not authorized (the login of credentials "
                                   "partner-broker)") >= 1);
    CU_ASSERT_FATAL(mqttsub_wait_subscribed(sub, WAIT_MS) == 0);
    CU_ASSERT_FATAL(publish(sc, "orders", 2) == 0);
    CU_ASSERT_FALSE(arrives(2, 1500));
    CU_ASSERT_EQUAL(sidecarenv_log_count(sc, "mqtt bridge connected"),
                    connected);
    assert_no_secrets(sc);
    /* The rotated secret applies at the next retry, same process. */
    CU_ASSERT_FATAL(write_file(path_creds, BRIDGE_USER ":" RIGHT_PW) == 0);
    CU_ASSERT_FATAL(arrives_governed(sc, 2));
    CU_ASSERT_EQUAL(testenv_proc_pid(sc->proc), pid);
    CU_ASSERT(sidecarenv_log_count(sc, "mqtt bridge connected") > connected);
    assert_no_secrets(sc);
}

static void test_untrusted_ca_refused(void)
{
    /* Same product, same login; only the CA differs. */
    sidecarenv *other = start_sidecar("sales-secure-2", path_rogue_ca, false);

    CU_ASSERT_PTR_NOT_NULL_FATAL(other);
    CU_ASSERT(sidecarenv_wait_logged(other, "certificate verify failed", 0,
                                     WAIT_MS) == 0);
    CU_ASSERT(publish(other, "orders", 3) == 0);
    CU_ASSERT_FALSE(arrives(3, 1500));
    CU_ASSERT_EQUAL(sidecarenv_log_count(other, "mqtt bridge connected"), 0);
    assert_no_secrets(other);
    sidecarenv_free(other);
}

/* The bridge of sales/refunds reports a failed connection attempt. */
#define REFUSED_REFUNDS "retrying\" port=sales/refunds/changes"
static void test_mutual_tls(void)
{
    sidecarenv *with_cert;
    int failed = sidecarenv_log_count(sc, REFUSED_REFUNDS);

    /* sales/refunds goes to the listener that demands a client
     * certificate: a sidecar with one delivers, one without is refused. */
    CU_ASSERT_FATAL(apply_product("refunds", mtls_port) == 0);
    with_cert = start_sidecar("sales-secure-3", path_ca, true);
    CU_ASSERT_PTR_NOT_NULL_FATAL(with_cert);
    CU_ASSERT(publish(with_cert, "refunds", 4) == 0);
    CU_ASSERT(arrives_governed(with_cert, 4));
    CU_ASSERT(publish(sc, "refunds", 5) == 0);
    CU_ASSERT(sidecarenv_wait_logged(sc, REFUSED_REFUNDS, failed, WAIT_MS) ==
              0);
    CU_ASSERT_FALSE(arrives(5, 1500));
    assert_no_secrets(with_cert);
    sidecarenv_free(with_cert);
}

/* Without --mqtt-ca-file the bridge trusts what OpenSSL trusts by
 * default: here $SSL_CERT_FILE, as an operator of a private CA may set. */
static void test_default_ca_is_openssls(void)
{
    sidecarenv *s;

    setenv("SSL_CERT_FILE", path_ca, 1);
    s = start_sidecar("sales-secure-4", "", false);
    unsetenv("SSL_CERT_FILE");
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT(sidecarenv_wait_logged(s, "mqtt bridge connected", 0, WAIT_MS) ==
              0);
    CU_ASSERT(publish(s, "orders", 6) == 0);
    CU_ASSERT(arrives(6, WAIT_MS));
    sidecarenv_free(s);
}

static const test_case cases[] = {
    {"tls_login_governed_view", test_tls_login_governed_view},
    {"bad_credentials_then_rotated", test_bad_credentials_then_rotated},
    {"untrusted_ca_refused", test_untrusted_ca_refused},
    {"mutual_tls", test_mutual_tls},
    {"the default CA is OpenSSL's", test_default_ca_is_openssls},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"mqtt_secure", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return test_main(argc, argv, suites);
}
