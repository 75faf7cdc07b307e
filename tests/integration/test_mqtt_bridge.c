/*
 * test_mqtt_bridge.c — the MQTT bridge of an event port with real etcd,
 * polis-controlplane, polis-sidecar and Mosquitto processes: a libmosquitto
 * subscriber on the bridge topic receives exactly the audience's governed
 * view (emails masked, small amounts filtered out, offsets in order), every
 * event published while the broker was down once it is back, and no replay
 * of acknowledged events after a sidecar restart.
 */
#include "common/rpc.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/mqttsub.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/testutil.h"

#include <curl/curl.h>
#include <dirent.h>
#include <jansson.h>
#include <mosquitto.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PUBLISHER "orders-service-token-0123456789"
#define PARTNER   "partner-token-0123456789"
#define TOPIC     "polis/sales/orders"

static cpenv *cp;
static rpc_channel *gov;
static sidecarenv *sc;
static testenv_proc *broker;
static const char *broker_dir;
static char broker_conf[600], broker_log[600];
static int broker_port;

static mqttsub *sub; /* what the topic carries, duplicates included */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the broker ---------------------------------------------------------- */

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

    broker_dir = testenv_tmpdir("mqtt");
    if (broker_dir == NULL || (broker_port = testenv_free_port()) < 0)
        return -1;
    snprintf(broker_conf, sizeof(broker_conf), "%s/mosquitto.conf", broker_dir);
    snprintf(broker_log, sizeof(broker_log), "%s/mosquitto.log", broker_dir);
    if ((f = fopen(broker_conf, "w")) == NULL)
        return -1;
    /* Persistence keeps the subscriber's session (its subscription and the
     * messages queued for it) across the broker's restart, so the test
     * does not depend on who reconnects first, the subscriber or the
     * bridge.  `user root`: a broker started as root otherwise drops to
     * user mosquitto, which cannot write the persistence file in the
     * test's private temp dir (no effect when not root). */
    fprintf(f,
            "listener %d 127.0.0.1\n"
            "user root\n"
            "allow_anonymous true\n"
            "persistence true\n"
            "persistence_location %s/\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "log_type information\n",
            broker_port, broker_dir);
    return fclose(f) == 0 ? broker_start() : -1;
}

/* ---- the subscriber ------------------------------------------------------ */

/* A persistent session (clean_session false) with QoS 1: what the broker
 * takes while the subscriber is away is kept for it. */
static int subscriber_start(void)
{
    mqttsub_options o = {.client_id = "polis-test-subscriber",
                         .port = broker_port,
                         .topic = TOPIC};

    sub = mqttsub_start(&o, 10000);
    return sub ? 0 : -1;
}

static void subscriber_stop(void)
{
    mqttsub_stop(sub);
    sub = NULL;
}

/* The offset of the i-th message (an envelope), -1 if it has none. */
static int64_t offset_at(const json_t *msgs, size_t i)
{
    const json_t *off = json_object_get(json_array_get(msgs, i), "offset");

    return json_is_integer(off) ? json_integer_value(off) : -1;
}

/* How many messages have arrived, and whether each of `want` (n offsets)
 * is among them. */
static bool have_all(const int64_t *want, size_t n, size_t *count)
{
    json_t *msgs = mqttsub_messages(sub, NULL);
    size_t got = json_array_size(msgs);
    bool all = true;

    for (size_t i = 0; i < n && all; i++) {
        bool found = false;
        for (size_t j = 0; j < got && !found; j++)
            found = offset_at(msgs, j) == want[i];
        all = found;
    }
    if (count)
        *count = got;
    json_decref(msgs);
    return all;
}

/* Wait (bounded) until every offset in `want` has arrived. */
static bool wait_for(const int64_t *want, size_t n, int timeout_ms)
{
    int64_t until = now_ms() + timeout_ms;
    json_t *msgs;

    while (now_ms() < until) {
        if (have_all(want, n, NULL))
            return true;
        usleep(20 * 1000);
    }
    fprintf(stderr, "\nmissing offsets after %d ms; received:", timeout_ms);
    msgs = mqttsub_messages(sub, NULL);
    for (size_t j = 0; j < json_array_size(msgs); j++)
        fprintf(stderr, " %lld", (long long)offset_at(msgs, j));
    json_decref(msgs);
    fprintf(stderr, "\n");
    sidecarenv_dump_log(sc, 3000);
    return false;
}

/* The first message with this offset (a new reference), or NULL. */
static json_t *message_at(int64_t offset)
{
    json_t *msgs = mqttsub_messages(sub, NULL), *m = NULL;

    for (size_t j = 0; j < json_array_size(msgs) && m == NULL; j++)
        if (offset_at(msgs, j) == offset)
            m = json_incref(json_array_get(msgs, j));
    json_decref(msgs);
    return m;
}

/* How many messages (duplicates included) carry this offset. */
static size_t copies_of(int64_t offset)
{
    json_t *msgs = mqttsub_messages(sub, NULL);
    size_t c = 0;

    for (size_t j = 0; j < json_array_size(msgs); j++)
        c += offset_at(msgs, j) == offset;
    json_decref(msgs);
    return c;
}

/* Offsets, first arrivals only, must come in increasing order. */
static bool first_arrivals_in_order(void)
{
    json_t *msgs = mqttsub_messages(sub, NULL);
    int64_t last = -1;
    bool ok = true;

    for (size_t j = 0; j < json_array_size(msgs); j++) {
        bool seen = false;
        for (size_t k = 0; k < j && !seen; k++)
            seen = offset_at(msgs, k) == offset_at(msgs, j);
        if (seen)
            continue;
        if (offset_at(msgs, j) <= last)
            ok = false;
        last = offset_at(msgs, j);
    }
    json_decref(msgs);
    return ok;
}

/* ---- the control plane and the sidecar ----------------------------------- */

static int apply_principal(const char *name, const char *token)
{
    char hex[65], doc[1024];

    gc_token_sha256(token, hex);
    snprintf(doc, sizeof(doc),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\",\"metadata\":"
             "{\"name\":\"%s\"},\"spec\":{\"credentials\":{\"tokenSha256\":"
             "[\"%s\"]}}}",
             name, hex);
    return gc_apply(gov, doc) > 0 ? 0 : -1;
}

/* The partner's feed: events above 10, emails masked; `paused` adds a
 * rule that denies the partner the product. */
static int64_t apply_policy(bool paused)
{
    char policy[2048];

    snprintf(policy, sizeof(policy),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":"
             "{\"name\":\"partner-feed\"},\"spec\":{\"scope\":\"global\","
             "\"rules\":["
             "{\"name\":\"partner-reads-orders\",\"effect\":\"allow\","
             "\"subjects\":[\"partner\"],\"resources\":[\"sales/orders\"],"
             "\"ports\":[\"event\"]},"
             "{\"name\":\"service-writes-orders\",\"effect\":\"allow\","
             "\"subjects\":[\"orders-service\"],\"resources\":"
             "[\"sales/orders\"],\"ports\":[\"event\"]},"
             "{\"name\":\"mask-emails\",\"effect\":\"mask\",\"subjects\":"
             "[\"*\"],\"resources\":[\"*\"],\"mask\":{\"method\":\"email\","
             "\"classifications\":[\"pii.email\"]}},"
             "{\"name\":\"big-orders-only\",\"effect\":\"filter\","
             "\"subjects\":[\"partner\"],\"resources\":[\"sales/orders\"],"
             "\"filter\":\"amount > 10\"}%s]}}",
             paused ? ",{\"name\":\"partner-paused\",\"effect\":\"deny\","
                      "\"subjects\":[\"partner\"],\"resources\":"
                      "[\"sales/orders\"]}"
                    : "");
    return gc_apply(gov, policy);
}

/* Wait until the sidecar enforces revision `rev` and the partner's
 * decision is `allowed`. */
static int wait_revision(int64_t rev, bool allowed)
{
    int64_t until = now_ms() + 15000;

    while (now_ms() < until) {
        json_t *ans = NULL;
        long st = sidecarenv_check(sc,
                                   "{\"principal\":\"partner\",\"product\":"
                                   "\"sales/orders\",\"port\":\"event\"}",
                                   &ans, 2000);
        json_int_t r = json_integer_value(json_object_get(ans, "revision"));
        bool ok = json_is_true(json_object_get(ans, "allowed"));
        json_decref(ans);
        if (st == 200 && r >= rev && ok == allowed)
            return 0;
        usleep(50 * 1000);
    }
    fprintf(stderr, "\nthe sidecar never reached revision %lld\n",
            (long long)rev);
    return -1;
}

/* The bridge's view changes are logged; these are the lines a user reads
 * to see that it skips events, or forwards them again.  Once logged, the
 * bridge has decided on the new snapshot: every event it reads from then
 * on is governed by it. */
#define LOG_DENIED  "the audience may not read the product"
#define LOG_ALLOWED "the audience may read again"

/* The offset the bridge saved (the next one it will read: everything
 * before it was acknowledged, filtered out or skipped), or -1. */
static int64_t bridge_saved_offset(void)
{
    char path[1200], text[64] = "";
    struct dirent *e;
    int64_t off = -1;
    DIR *d;

    snprintf(path, sizeof(path), "%s/bridges", sc->state_dir);
    if ((d = opendir(path)) == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        FILE *f;

        if (len < 7 || strcmp(e->d_name + len - 7, ".offset") != 0)
            continue;
        snprintf(path, sizeof(path), "%s/bridges/%s", sc->state_dir, e->d_name);
        if ((f = fopen(path, "r")) != NULL) {
            if (fgets(text, sizeof(text), f))
                off = strtoll(text, NULL, 10);
            fclose(f);
        }
        break;
    }
    closedir(d);
    return off;
}

/* Wait until the bridge is done with `offset` (its saved offset passed
 * it).  0, or -1. */
static int wait_bridge_past(int64_t offset)
{
    int64_t until = now_ms() + 15000, saved = -1;

    while (now_ms() < until) {
        if ((saved = bridge_saved_offset()) > offset)
            return 0;
        usleep(20 * 1000);
    }
    fprintf(stderr, "\nthe bridge never got past offset %lld (saved %lld)\n",
            (long long)offset, (long long)saved);
    sidecarenv_dump_log(sc, 3000);
    return -1;
}

/* POST the events (a JSON array) as the product's service; the offset of
 * the first, or -1 (the answer printed). */
static int64_t publish(const char *events)
{
    char url[256];
    gc_response r;
    int64_t first = -1;
    json_t *ans;

    snprintf(url, sizeof(url), "%s/v1/products/sales/orders/events",
             sc->http_url);
    gc_http(NULL, url, PUBLISHER, events, NULL, 10000, &r);
    ans = gc_response_json(&r);
    if (r.status == 200 && json_is_integer(json_object_get(ans, "first")))
        first = json_integer_value(json_object_get(ans, "first"));
    else
        fprintf(stderr, "\npublish -> %ld: %s\n", r.status,
                r.body ? r.body : "(no body)");
    json_decref(ans);
    gc_response_free(&r);
    return first;
}

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

static int suite_init(void)
{
    static const char *const cp_args[] = {"--debounce-ms", "20", NULL};
    cpenv_options o = {.extra_args = cp_args};
    sidecarenv_options so = {
        .domain = "sales", .id = "sales-bridge-1", .wait_ready = true};
    char product[2048];

    curl_global_init(CURL_GLOBAL_DEFAULT);
    mosquitto_lib_init();
    if (broker_setup() != 0) {
        fprintf(stderr, "cannot start mosquitto\n");
        goto fail;
    }
    snprintf(product, sizeof(product),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
             "\"metadata\":{\"name\":\"orders\"},\"spec\":{\"domain\":"
             "\"sales\",\"ports\":[{\"name\":\"changes\",\"type\":\"event\","
             "\"publishers\":[\"orders-service\"],\"mqtt\":{\"broker\":"
             "\"mqtt://127.0.0.1:%d\",\"topic\":\"" TOPIC "\",\"audience\":"
             "\"partner\"}}],\"schema\":["
             "{\"name\":\"order_id\",\"type\":\"integer\"},"
             "{\"name\":\"email\",\"type\":\"string\",\"classification\":"
             "[\"pii.email\"]},"
             "{\"name\":\"amount\",\"type\":\"decimal\"}]}}",
             broker_port);
    cp = cpenv_start(&o);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto fail;
    if (gc_apply(
            gov,
            "{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\",\"metadata\":"
            "{\"name\":\"sales\"},\"spec\":{\"owners\":[\"s@example.com\"]"
            "}}") < 0 ||
        gc_apply(gov, product) < 0 ||
        apply_principal("orders-service", PUBLISHER) ||
        apply_principal("partner", PARTNER) || apply_policy(false) < 0)
        goto fail;
    so.controlplane = cp->grpc_target;
    if ((sc = sidecarenv_start(&so)) == NULL)
        goto fail;
    /* Subscribed before anything is published: the broker keeps nothing
     * for a topic nobody listens to. */
    if (subscriber_start() != 0)
        goto fail;
    return 0;
fail:
    suite_cleanup();
    return -1;
}

/* ---- cases --------------------------------------------------------------- */

/* Six events; the partner sees the three above 10, emails masked. */
static int64_t first_batch = -1;

static void check_event(int64_t offset, int order_id, const char *email,
                        double amount)
{
    json_t *m = message_at(offset);
    const json_t *ev = json_object_get(m, "event");

    CU_ASSERT_PTR_NOT_NULL(m);
    if (m == NULL)
        return;
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(m, "product")),
                           "sales/orders");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(ev, "order_id")),
                    order_id);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ev, "email")),
                           email);
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(ev, "amount")),
                           amount, 1e-9);
    json_decref(m);
}

/* Messages that are not an envelope with an offset (or not JSON). */
static size_t bad_messages(void)
{
    size_t bad = 0;
    json_t *msgs = mqttsub_messages(sub, &bad);

    for (size_t j = 0; j < json_array_size(msgs); j++)
        bad += offset_at(msgs, j) < 0;
    json_decref(msgs);
    return bad;
}

static void test_governed_view(void)
{
    int64_t want[3];

    first_batch =
        publish("[{\"order_id\":1,\"email\":\"ann@example.com\",\"amount\":5},"
                "{\"order_id\":2,\"email\":\"bo@shop.org\",\"amount\":20},"
                "{\"order_id\":3,\"email\":\"cy@example.com\",\"amount\":7.5},"
                "{\"order_id\":4,\"email\":\"di@shop.org\",\"amount\":30.25},"
                "{\"order_id\":5,\"email\":\"ed@example.com\",\"amount\":15},"
                "{\"order_id\":6,\"email\":\"fi@shop.org\",\"amount\":1}]");
    CU_ASSERT_FATAL(first_batch >= 0);
    want[0] = first_batch + 1;
    want[1] = first_batch + 3;
    want[2] = first_batch + 4;
    CU_ASSERT_FATAL(wait_for(want, 3, 15000));
    /* Time for anything that should not come to come anyway. */
    usleep(500 * 1000);
    check_event(first_batch + 1, 2, "****@shop.org", 20);
    check_event(first_batch + 3, 4, "****@shop.org", 30.25);
    check_event(first_batch + 4, 5, "****@example.com", 15);
    CU_ASSERT_EQUAL(copies_of(first_batch + 0), 0);
    CU_ASSERT_EQUAL(copies_of(first_batch + 2), 0);
    CU_ASSERT_EQUAL(copies_of(first_batch + 5), 0);
    CU_ASSERT(first_arrivals_in_order());
    CU_ASSERT_EQUAL(bad_messages(), 0);
}

static void test_broker_restart(void)
{
    int64_t first, want[8];
    size_t nwant = 0;
    int64_t t0;

    CU_ASSERT_FATAL(first_batch >= 0);
    /* SIGTERM: mosquitto saves its sessions (the subscriber's) on exit. */
    CU_ASSERT_FATAL(testenv_proc_stop(broker, 5000) == 0);
    broker = NULL;
    first = publish(
        "[{\"order_id\":11,\"email\":\"gu@example.com\",\"amount\":11},"
        "{\"order_id\":12,\"email\":\"ha@shop.org\",\"amount\":2},"
        "{\"order_id\":13,\"email\":\"io@example.com\",\"amount\":130}]");
    CU_ASSERT_FATAL(first >= 0);
    want[nwant++] = first;
    want[nwant++] = first + 2;
    /* The bridge retries against a broker that is not there. */
    usleep(1500 * 1000);
    first = publish(
        "[{\"order_id\":14,\"email\":\"ju@shop.org\",\"amount\":14},"
        "{\"order_id\":15,\"email\":\"ka@example.com\",\"amount\":150}]");
    CU_ASSERT_FATAL(first >= 0);
    want[nwant++] = first;
    want[nwant++] = first + 1;
    CU_ASSERT_FALSE(have_all(want, 1, NULL));
    t0 = now_ms();
    CU_ASSERT_FATAL(broker_start() == 0);
    CU_ASSERT_FATAL(wait_for(want, nwant, 30000));
    printf("(outage events delivered %lld ms after the broker restarted) ",
           (long long)(now_ms() - t0));
    check_event(want[0], 11, "****@example.com", 11);
    check_event(want[1], 13, "****@example.com", 130);
    check_event(want[2], 14, "****@shop.org", 14);
    check_event(want[3], 15, "****@example.com", 150);
    CU_ASSERT_EQUAL(copies_of(want[0] + 1), 0); /* amount 2 */
    CU_ASSERT(first_arrivals_in_order());
    /* And the bridge still forwards new events. */
    first =
        publish("[{\"order_id\":16,\"email\":\"lo@shop.org\",\"amount\":16}]");
    CU_ASSERT_FATAL(first >= 0);
    CU_ASSERT(wait_for(&first, 1, 15000));
}

static void test_sidecar_restart_no_replay(void)
{
    int64_t first;
    size_t before;

    /* A clean stop saves the acknowledged offset: nothing already
     * delivered is sent again after the restart. */
    CU_ASSERT_FATAL(sidecarenv_restart(sc, true) == 0);
    have_all(NULL, 0, &before);
    first = publish(
        "[{\"order_id\":17,\"email\":\"mu@example.com\",\"amount\":17}]");
    CU_ASSERT_FATAL(first >= 0);
    CU_ASSERT_FATAL(wait_for(&first, 1, 15000));
    usleep(300 * 1000);
    {
        json_t *msgs = mqttsub_messages(sub, NULL);

        for (size_t j = before; j < json_array_size(msgs); j++)
            if (offset_at(msgs, j) != first) {
                fprintf(stderr, "\noffset %lld sent again after the restart\n",
                        (long long)offset_at(msgs, j));
                CU_FAIL("replayed after restart");
            }
        json_decref(msgs);
    }
    check_event(first, 17, "****@example.com", 17);
}

static void test_audience_denied(void)
{
    int64_t skipped, resumed, rev;
    int denied_before = sidecarenv_log_count(sc, LOG_DENIED);
    int allowed_before = sidecarenv_log_count(sc, LOG_ALLOWED);

    /* Denied: the bridge forwards nothing and skips the events... */
    CU_ASSERT_FATAL((rev = apply_policy(true)) > 0);
    CU_ASSERT_FATAL(wait_revision(rev, false) == 0);
    /* The check answers from the new snapshot; the bridge thread decides
     * on it at its next read. */
    CU_ASSERT_FATAL(
        sidecarenv_wait_logged(sc, LOG_DENIED, denied_before, 15000) == 0);
    skipped = publish(
        "[{\"order_id\":21,\"email\":\"nu@example.com\",\"amount\":21}]");
    CU_ASSERT_FATAL(skipped >= 0);
    /* Skipped, not merely not read yet: allowed again before the bridge
     * read it, it would be forwarded. */
    CU_ASSERT_FATAL(wait_bridge_past(skipped) == 0);
    /* ...and resumes with the next event once allowed again. */
    CU_ASSERT_FATAL((rev = apply_policy(false)) > 0);
    CU_ASSERT_FATAL(wait_revision(rev, true) == 0);
    CU_ASSERT_FATAL(
        sidecarenv_wait_logged(sc, LOG_ALLOWED, allowed_before, 15000) == 0);
    resumed =
        publish("[{\"order_id\":22,\"email\":\"om@shop.org\",\"amount\":22}]");
    CU_ASSERT_FATAL(resumed >= 0);
    CU_ASSERT_FATAL(wait_for(&resumed, 1, 15000));
    usleep(300 * 1000);
    CU_ASSERT_EQUAL(copies_of(skipped), 0);
    check_event(resumed, 22, "****@shop.org", 22);
    CU_ASSERT(first_arrivals_in_order());
}

static void test_stop_while_broker_down(void)
{
    int64_t first, t0, stop_ms;
    int status;

    /* Stopping never waits for a broker that is not there. */
    CU_ASSERT_FATAL(testenv_proc_stop(broker, 5000) == 0);
    broker = NULL;
    first = publish(
        "[{\"order_id\":31,\"email\":\"pa@example.com\",\"amount\":31}]");
    CU_ASSERT_FATAL(first >= 0);
    usleep(700 * 1000);
    t0 = now_ms();
    status = sidecarenv_stop(sc, 10000);
    stop_ms = now_ms() - t0;
    printf("(sidecar stopped in %lld ms with the broker down) ",
           (long long)stop_ms);
    CU_ASSERT_EQUAL(status, 0);
    CU_ASSERT(stop_ms < 3000);
    /* The event is forwarded once both are back. */
    CU_ASSERT_FATAL(broker_start() == 0);
    CU_ASSERT_FATAL(sidecarenv_restart(sc, true) == 0);
    CU_ASSERT_FATAL(wait_for(&first, 1, 20000));
    check_event(first, 31, "****@example.com", 31);
}

/* More than the bridge's in-flight window (256), with the broker restarted
 * in the middle: every event arrives, in order of first arrival. */
static void test_burst_across_broker_restart(void)
{
    enum { N = 600 };
    static int64_t want[N];
    char *events = malloc(N * 80 + 16);
    size_t len = 0;
    int64_t first, t0;

    CU_ASSERT_FATAL(events != NULL);
    events[len++] = '[';
    for (int i = 0; i < N; i++)
        len += (size_t)sprintf(events + len,
                               "%s{\"order_id\":%d,\"email\":"
                               "\"u%d@example.com\",\"amount\":%d}",
                               i ? "," : "", 1000 + i, i, 100 + i);
    events[len++] = ']';
    events[len] = '\0';
    first = publish(events);
    free(events);
    CU_ASSERT_FATAL(first >= 0);
    for (int i = 0; i < N; i++)
        want[i] = first + i;
    usleep(30 * 1000);
    CU_ASSERT_FATAL(testenv_proc_stop(broker, 5000) == 0);
    broker = NULL;
    CU_ASSERT_FATAL(broker_start() == 0);
    t0 = now_ms();
    CU_ASSERT_FATAL(wait_for(want, N, 30000));
    {
        size_t copies = 0;
        for (int i = 0; i < N; i++)
            copies += copies_of(want[i]);
        printf("(%d events complete %lld ms after the broker restarted, "
               "%zu duplicates) ",
               N, (long long)(now_ms() - t0), copies - N);
    }
    check_event(first + N - 1, 1000 + N - 1, "****@example.com", 100 + N - 1);
    CU_ASSERT(first_arrivals_in_order());
}

static const test_case cases[] = {
    {"governed_view", test_governed_view},
    {"broker_restart", test_broker_restart},
    {"sidecar_restart_no_replay", test_sidecar_restart_no_replay},
    {"audience_denied", test_audience_denied},
    {"burst_across_broker_restart", test_burst_across_broker_restart},
    {"stop_while_broker_down", test_stop_while_broker_down},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"mqtt_bridge", suite_init, suite_cleanup, cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return test_main(argc, argv, suites);
}
