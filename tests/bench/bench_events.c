/*
 * bench_events.c — the sidecar's event port (http_api.c, "event port") end to
 * end with real processes: etcd, the control plane and one polis-sidecar;
 * the publishers and the consumers are in this process, over loopback.
 *
 *  1. Publish throughput, acknowledged once durable: BENCH_PUBLISHERS (4)
 *     keep-alive connections POST batches of 1 and of 100 order events
 *     (~200 bytes each) for BENCH_SECONDS (5) each on a port with
 *     fsync=batch, then batches of 1 on a port with fsync=always.
 *  2. Publish → delivered latency: BENCH_CONSUMERS (100) Server-Sent Events
 *     consumers of one product under three principals (half of them see a
 *     masked and filtered view), one publisher sending one event every
 *     BENCH_INTERVAL_MS (10), BENCH_EVENTS (500) in all.  Each event carries
 *     its send time (CLOCK_MONOTONIC, this process both sends and
 *     receives); every consumer must get exactly the events its policy
 *     shows it, masked as it should be, or the run fails.
 *
 *   BENCH_SIDECAR_WORKERS=n          the sidecar's --http-workers (default 4)
 *
 * Prints `bench: <name> <value> <unit>` lines, and notes starting with "#";
 * exits 1 when anything fails.
 *
 * Figures (2 shared cores, Release, defaults; scripts/bench.sh events),
 * with publishes answered from the log's flusher (no loop waits for the
 * disk): fsync=batch 5,600-6,300 events/s one event per publish (ack p50
 * 0.6 ms, p99 2.8 ms) and ~147,000 events/s a hundred per publish;
 * fsync=always 3,900-4,500 events/s.  Publish -> delivered with 100
 * consumers: p50 2.0-2.7 ms, p99 4.0 ms, max 7 ms, ~26 us of sidecar CPU
 * per consumer and event while each stream read and governed every event;
 * with streams of one view sharing their batches: p50 1.6 ms, p99 2.6 ms,
 * max 4.2 ms, ~16 us (156,000 events/s at 100 per publish).
 * Runs while other work loads the machine show half the throughput and
 * p99s of 50-200 ms: the *_machine_cpu lines tell such runs apart.
 */
#include "common/rpc.h"
#include "polis/v1/governance.pb-c.h"
#include "tests/support/cpenv.h"
#include "tests/support/govclient.h"
#include "tests/support/sidecarenv.h"
#include "tests/support/procstat.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DOMAIN          "sales"
#define PUBLISHER       "orders-service"
#define MAX_PUBLISHERS  32
#define MAX_CONSUMERS   1000
#define MAX_EVENTS      100000
#define SYNC_WAIT_MS    30000
#define SUBSCRIBE_MS    15000 /* until every consumer has its first comment */
#define DRAIN_MS        15000 /* after the last publish, for the stragglers */
#define HTTP_TIMEOUT_MS 15000
#define LINE_MAX_BYTES  8192

static const char *const regions[] = {"EU", "US", "APAC"};

/* The consumers' principals: who they are and what their policy shows. */
typedef struct who {
    const char *name, *token;
    const char *region; /* the row filter; NULL: every event */
    bool card_masked, email_masked;
} who;

static const who people[] = {
    {"carol", "carol-token-0123456789", NULL, false, false},
    {"alice", "alice-token-0123456789", "EU", true, true},
    {"bob", "bob-token-0123456789", "US", true, false},
};
#define PUBLISHER_TOKEN "orders-service-token-0123456789"

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(int64_t us)
{
    struct timespec ts;

    if (us <= 0)
        return;
    ts.tv_sec = us / 1000000;
    ts.tv_nsec = (long)(us % 1000000) * 1000;
    nanosleep(&ts, NULL);
}

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    long n;

    if (v == NULL || *v == '\0')
        return def;
    n = strtol(v, NULL, 10);
    return n < lo ? lo : n > hi ? hi : (int)n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Where the cores went during a phase that started at *_0 values. */
static void print_cpu(const char *name, pid_t sidecar, double secs, double sc0,
                      double me0, double all0)
{
    printf("bench: %s_sidecar_cpu %.2f cores\n", name,
           (ps_cpu_seconds(sidecar) - sc0) / secs);
    printf("bench: %s_client_cpu %.2f cores\n", name,
           (ps_cpu_seconds(getpid()) - me0) / secs);
    printf("bench: %s_machine_cpu %.2f cores of %ld\n", name,
           (ps_machine_busy_seconds() - all0) / secs,
           sysconf(_SC_NPROCESSORS_ONLN));
}

/* ---- the mesh ------------------------------------------------------------ */

static char *principal_doc(const char *name, const char *group,
                           const char *region, const char *token)
{
    char hex[65], attrs[64] = "";
    char *doc = NULL;

    gc_token_sha256(token, hex);
    if (region)
        snprintf(attrs, sizeof(attrs), ",\"attributes\":{\"region\":\"%s\"}",
                 region);
    if (asprintf(&doc,
                 "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\","
                 "\"metadata\":{\"name\":\"%s\"},\"spec\":{\"groups\":[\"%s\"]"
                 "%s,\"credentials\":{\"tokenSha256\":[\"%s\"]}}}",
                 name, group, attrs, hex) < 0)
        return NULL;
    return doc;
}

/* An orders product whose only port is an event port with `fsync`. */
static char *product_doc(const char *name, const char *fsync)
{
    char *doc = NULL;

    if (asprintf(&doc,
                 "{\"apiVersion\":\"polis/v1\",\"kind\":\"DataProduct\","
                 "\"metadata\":{\"name\":\"%s\"},\"spec\":{\"domain\":\"" DOMAIN
                 "\",\"ports\":[{\"name\":\"changes\",\"type\":\"event\","
                 "\"fsync\":\"%s\",\"publishers\":[\"" PUBLISHER "\"]}],"
                 "\"schema\":["
                 "{\"name\":\"order_id\",\"type\":\"integer\"},"
                 "{\"name\":\"customer_email\",\"type\":\"string\","
                 "\"classification\":[\"pii.email\"]},"
                 "{\"name\":\"card_number\",\"type\":\"string\","
                 "\"classification\":[\"pii.card\"]},"
                 "{\"name\":\"region\",\"type\":\"string\"},"
                 "{\"name\":\"amount\",\"type\":\"decimal\"},"
                 "{\"name\":\"order_date\",\"type\":\"date\"},"
                 "{\"name\":\"status\",\"type\":\"string\"},"
                 "{\"name\":\"channel\",\"type\":\"string\"},"
                 "{\"name\":\"sent_us\",\"type\":\"integer\"}]}}",
                 name, fsync) < 0)
        return NULL;
    return doc;
}

/* The example mesh's rules, cut to what the event port uses: carol sees
 * everything, alice (analysts) EU orders with e-mails and cards masked,
 * bob (managers) US orders with cards masked. */
static const char policy_doc[] =
    "{\"apiVersion\":\"polis/v1\",\"kind\":\"Policy\",\"metadata\":{\"name\":"
    "\"council\"},\"spec\":{\"scope\":\"global\",\"rules\":["
    "{\"name\":\"analysts-read\",\"effect\":\"allow\",\"subjects\":["
    "\"group:analysts\"],\"resources\":[\"sales/*\"],\"ports\":[\"event\"]},"
    "{\"name\":\"managers-read\",\"effect\":\"allow\",\"subjects\":["
    "\"group:managers\"],\"resources\":[\"sales/*\"]},"
    "{\"name\":\"privacy-read-all\",\"effect\":\"allow\",\"subjects\":["
    "\"group:privacy\"],\"resources\":[\"*\"]},"
    "{\"name\":\"mask-emails\",\"effect\":\"mask\",\"subjects\":["
    "\"group:analysts\"],\"resources\":[\"*\"],\"mask\":{\"method\":"
    "\"email\",\"classifications\":[\"pii.email\"]}},"
    "{\"name\":\"mask-cards\",\"effect\":\"mask\",\"subjects\":["
    "\"group:analysts\",\"group:managers\"],\"resources\":[\"*\"],\"mask\":{"
    "\"method\":\"show_last\",\"classifications\":[\"pii.card\"],"
    "\"params\":{\"n\":4}}},"
    "{\"name\":\"own-region\",\"effect\":\"filter\",\"subjects\":["
    "\"group:analysts\",\"group:managers\"],\"resources\":[\"sales/*\"],"
    "\"filter\":\"region == subject.region\"}]}}";

static int64_t apply_mesh(rpc_channel *ch)
{
    char *docs[16] = {NULL};
    size_t n = 0;
    int64_t rev = -1;

    docs[n++] = strdup("{\"apiVersion\":\"polis/v1\",\"kind\":\"Domain\","
                       "\"metadata\":{\"name\":\"" DOMAIN "\"},\"spec\":{"
                       "\"owners\":[\"sales-data@example.com\"]}}");
    docs[n++] = principal_doc(PUBLISHER, "services", NULL, PUBLISHER_TOKEN);
    docs[n++] = principal_doc("carol", "privacy", "EU", people[0].token);
    docs[n++] = principal_doc("alice", "analysts", "EU", people[1].token);
    docs[n++] = principal_doc("bob", "managers", "US", people[2].token);
    docs[n++] = product_doc("orders-batch", "batch");
    docs[n++] = product_doc("orders-always", "always");
    docs[n++] = product_doc("orders-live", "batch");
    docs[n++] = strdup(policy_doc);
    for (size_t i = 0; i < n; i++)
        if (docs[i] == NULL)
            goto out;
    /* The domain first: products and principals name it. */
    if (gc_apply_docs(ch, (const char *const *)docs, 1, 30000) >= 0)
        rev = gc_apply_docs(ch, (const char *const *)docs + 1, n - 1, 30000);
out:
    for (size_t i = 0; i < n; i++)
        free(docs[i]);
    return rev;
}

/* Wait until the sidecar is SYNCED at >= rev. */
static int wait_synced(rpc_channel *ch, const char *id, int64_t rev)
{
    int64_t until = mono_us() + (int64_t)SYNC_WAIT_MS * 1000;
    char last[640] = "(not listed)";

    while (mono_us() < until) {
        Polis__V1__SidecarsRequest req = POLIS__V1__SIDECARS_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        bool ok = false;

        if (rpc_unary(ch, &polis__v1__governance__descriptor, "Sidecars",
                      &req.base, &resp, NULL, 0, 5000, NULL) == RPC_OK) {
            Polis__V1__SidecarsResponse *r =
                (Polis__V1__SidecarsResponse *)resp;
            for (size_t i = 0; i < r->n_sidecars; i++) {
                Polis__V1__SidecarStatus *s = r->sidecars[i];
                if (strcmp(s->id, id) != 0)
                    continue;
                snprintf(last, sizeof(last), "%s applied=%lld error=%.500s",
                         s->state, (long long)s->applied_revision,
                         s->last_error);
                ok = strcmp(s->state, "SYNCED") == 0 &&
                     s->applied_revision >= rev;
            }
            protobuf_c_message_free_unpacked(resp, NULL);
        }
        if (ok)
            return 0;
        sleep_us(100 * 1000);
    }
    fprintf(stderr,
            "bench_events: sidecar %s not SYNCED at %lld in %d ms: %s\n", id,
            (long long)rev, SYNC_WAIT_MS, last);
    return -1;
}

/* ---- events -------------------------------------------------------------- */

/* The card number of order `id`: consumers check their masks against it. */
static void card_of(uint64_t id, char *buf, size_t len)
{
    unsigned r = (unsigned)(id * 2654435761u);

    snprintf(buf, len, "4%03u%04u%04u%04u", r % 1000, (r >> 3) % 10000,
             (unsigned)(id % 10000), (r >> 7) % 10000);
}

static void email_of(uint64_t id, char *buf, size_t len)
{
    unsigned r = (unsigned)(id * 2654435761u);

    snprintf(buf, len, "customer.%u@mail%u.example.com", r % 1000000, r % 50);
}

static const char *region_of(uint64_t id)
{
    return regions[id % 3];
}

/* One order event, ~200 bytes, as the web shop would publish it. */
static int order_json(char *buf, size_t len, uint64_t id, int64_t sent_us)
{
    char card[32], email[64];
    unsigned r = (unsigned)(id * 2654435761u);

    card_of(id, card, sizeof(card));
    email_of(id, email, sizeof(email));
    return snprintf(buf, len,
                    "{\"order_id\":%llu,\"customer_email\":\"%s\","
                    "\"card_number\":\"%s\",\"region\":\"%s\",\"amount\":"
                    "%u.%02u,\"order_date\":\"2024-%02u-%02u\",\"status\":"
                    "\"placed\",\"channel\":\"web-shop\",\"sent_us\":%lld}",
                    (unsigned long long)id, email, card, region_of(id),
                    r % 5000, r % 100, (unsigned)(id % 12) + 1,
                    (unsigned)(id % 28) + 1, (long long)sent_us);
}

/* ---- publishing ---------------------------------------------------------- */

typedef struct publisher {
    CURL *curl;
    struct curl_slist *hdr;
    char url[256];
    char *body;
    size_t cap;
    char resp[2048];
    size_t rlen;
} publisher;

static size_t pub_write(char *data, size_t size, size_t n, void *arg)
{
    publisher *p = arg;
    size_t k = size * n, room = sizeof(p->resp) - 1 - p->rlen;

    memcpy(p->resp + p->rlen, data, k < room ? k : room);
    p->rlen += k < room ? k : room;
    p->resp[p->rlen] = '\0';
    return k;
}

static int pub_init(publisher *p, const char *base, const char *product,
                    size_t cap)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->url, sizeof(p->url), "%s/v1/products/" DOMAIN "/%s/events",
             base, product);
    p->cap = cap;
    p->body = malloc(cap);
    p->curl = curl_easy_init();
    p->hdr = curl_slist_append(NULL, "Authorization: Bearer " PUBLISHER_TOKEN);
    if (p->hdr)
        p->hdr = curl_slist_append(p->hdr, "Content-Type: application/json");
    /* No "Expect: 100-continue" round trip for the larger batches. */
    if (p->hdr)
        p->hdr = curl_slist_append(p->hdr, "Expect:");
    if (p->body == NULL || p->curl == NULL || p->hdr == NULL)
        return -1;
    curl_easy_setopt(p->curl, CURLOPT_URL, p->url);
    curl_easy_setopt(p->curl, CURLOPT_HTTPHEADER, p->hdr);
    curl_easy_setopt(p->curl, CURLOPT_WRITEFUNCTION, pub_write);
    curl_easy_setopt(p->curl, CURLOPT_WRITEDATA, p);
    curl_easy_setopt(p->curl, CURLOPT_TIMEOUT_MS, (long)HTTP_TIMEOUT_MS);
    curl_easy_setopt(p->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(p->curl, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(p->curl, CURLOPT_POST, 1L);
    return 0;
}

static void pub_free(publisher *p)
{
    if (p->curl)
        curl_easy_cleanup(p->curl);
    curl_slist_free_all(p->hdr);
    free(p->body);
    memset(p, 0, sizeof(*p));
}

/* POST p->body[0..len): 0 when answered 200 with "count":expect, else -1
 * with the reason in why. */
static int pub_post(publisher *p, size_t len, long expect, char *why,
                    size_t why_len)
{
    long status = 0, count = -1;
    const char *c;
    CURLcode rc;

    p->rlen = 0;
    p->resp[0] = '\0';
    curl_easy_setopt(p->curl, CURLOPT_POSTFIELDS, p->body);
    curl_easy_setopt(p->curl, CURLOPT_POSTFIELDSIZE, (long)len);
    rc = curl_easy_perform(p->curl);
    if (rc != CURLE_OK) {
        snprintf(why, why_len, "POST %s: %s", p->url, curl_easy_strerror(rc));
        return -1;
    }
    curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &status);
    c = strstr(p->resp, "\"count\":");
    if (c)
        count = strtol(c + 8, NULL, 10);
    if (status != 200 || count != expect) {
        snprintf(why, why_len, "POST %s: %ld %.300s", p->url, status, p->resp);
        return -1;
    }
    return 0;
}

/* The body of a publish of `batch` events from `first` on: one object, or
 * an array.  Its length, or 0 when it does not fit. */
static size_t build_batch(publisher *p, int batch, uint64_t first)
{
    size_t used = 0;
    int64_t now = mono_us();

    if (batch > 1)
        p->body[used++] = '[';
    for (int i = 0; i < batch; i++) {
        int k;
        if (i)
            p->body[used++] = ',';
        k = order_json(p->body + used, p->cap - used - 2, first + (uint64_t)i,
                       now);
        if (k < 0 || (size_t)k >= p->cap - used - 2)
            return 0;
        used += (size_t)k;
    }
    if (batch > 1)
        p->body[used++] = ']';
    return used;
}

typedef struct tput_worker {
    const char *base, *product;
    int batch, index;
    int64_t until_us;
    pthread_t thread;
    uint64_t events;
    size_t nack, cap;
    double *ack_ms;
    int failed;
    char why[512];
} tput_worker;

static void *tput_main(void *arg)
{
    tput_worker *w = arg;
    publisher p;
    uint64_t id = (uint64_t)(w->index + 1) * 1000000000ull;

    if (pub_init(&p, w->base, w->product, (size_t)w->batch * 400 + 64) != 0) {
        snprintf(w->why, sizeof(w->why), "cannot set up a publisher");
        w->failed = 1;
        pub_free(&p);
        return NULL;
    }
    while (mono_us() < w->until_us) {
        size_t len = build_batch(&p, w->batch, id);
        int64_t t0 = mono_us();

        if (len == 0 ||
            pub_post(&p, len, w->batch, w->why, sizeof(w->why)) != 0) {
            w->failed = 1;
            break;
        }
        if (w->nack < w->cap)
            w->ack_ms[w->nack++] = (double)(mono_us() - t0) / 1000.0;
        w->events += (uint64_t)w->batch;
        id += (uint64_t)w->batch;
    }
    pub_free(&p);
    return NULL;
}

/* Publish to `product` from `k` connections in batches of `batch` for
 * `seconds`; prints events/s and the acknowledgement latency.  0 or -1. */
static int run_throughput(const sidecarenv *sc, const char *product,
                          const char *name, int k, int batch, int seconds)
{
    tput_worker w[MAX_PUBLISHERS];
    pid_t pid = testenv_proc_pid(sc->proc);
    double cpu0 = ps_cpu_seconds(pid), me0 = ps_cpu_seconds(getpid()),
           all0 = ps_machine_busy_seconds(), secs, *all;
    uint64_t events = 0;
    size_t nall = 0;
    int64_t t0 = mono_us();
    int started = 0, rc = 0;

    memset(w, 0, sizeof(w));
    for (int i = 0; i < k; i++) {
        w[i].base = sc->http_url;
        w[i].product = product;
        w[i].batch = batch;
        w[i].index = i;
        w[i].until_us = t0 + (int64_t)seconds * 1000000;
        w[i].cap = 1000000;
        w[i].ack_ms = malloc(w[i].cap * sizeof(double));
        if (w[i].ack_ms == NULL ||
            pthread_create(&w[i].thread, NULL, tput_main, &w[i]) != 0) {
            fprintf(stderr, "bench_events: cannot start publisher %d\n", i);
            rc = -1;
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++)
        pthread_join(w[i].thread, NULL);
    secs = (double)(mono_us() - t0) / 1e6;
    for (int i = 0; i < started; i++) {
        events += w[i].events;
        nall += w[i].nack;
        if (w[i].failed) {
            fprintf(stderr, "bench_events: %s: publisher %d: %s\n", name, i,
                    w[i].why);
            rc = -1;
        }
    }
    all = malloc((nall ? nall : 1) * sizeof(double));
    if (rc == 0 && all != NULL && nall > 0) {
        size_t n = 0;
        for (int i = 0; i < started; i++) {
            memcpy(all + n, w[i].ack_ms, w[i].nack * sizeof(double));
            n += w[i].nack;
        }
        qsort(all, nall, sizeof(double), cmp_double);
        printf("bench: %s %.0f events/s\n", name, (double)events / secs);
        printf("bench: %s_ack_p50 %.2f ms\n", name, all[nall / 2]);
        printf("bench: %s_ack_p99 %.2f ms\n", name,
               all[(size_t)((double)nall * 0.99)]);
        print_cpu(name, pid, secs, cpu0, me0, all0);
        fflush(stdout);
    } else if (rc == 0) {
        fprintf(stderr, "bench_events: %s: nothing published\n", name);
        rc = -1;
    }
    free(all);
    for (int i = 0; i < k; i++)
        free(w[i].ack_ms);
    return rc;
}

/* ---- consuming ----------------------------------------------------------- */

enum { C_HEAD, C_SIZE, C_DATA, C_CRLF, C_RAW };

typedef struct consumer {
    int fd;
    const who *who;
    int state;
    char head[4096];
    size_t hlen;
    uint64_t chunk_left;
    char sz[32];
    size_t szlen;
    char line[LINE_MAX_BYTES];
    size_t llen;
    char data[LINE_MAX_BYTES];
    bool has_data;
    long long id, last_id;
    bool subscribed;
    long received;
    bool failed;
    char why[300];
} consumer;

typedef struct readers {
    consumer *c;
    int n;
    atomic_bool stop;
    atomic_int subscribed;
    atomic_long received;
    double *lat_ms;
    size_t nlat, cap;
} readers;

static void consumer_fail(consumer *c, const char *fmt, const char *arg)
{
    if (c->failed)
        return;
    c->failed = true;
    snprintf(c->why, sizeof(c->why), fmt, arg);
}

/* A whole SSE event (blank line): check it and take its latency. */
static void sse_dispatch(readers *r, consumer *c, int64_t now)
{
    const char *s = strstr(c->data, "\"sent_us\":");
    const char *o = strstr(c->data, "\"order_id\":");
    char card[32], email[64];
    uint64_t id;

    if (s == NULL || o == NULL) {
        consumer_fail(c, "an event without sent_us/order_id: %.200s", c->data);
        return;
    }
    id = strtoull(o + 11, NULL, 10);
    if (c->id <= c->last_id) {
        consumer_fail(c, "event ids out of order at %s", c->data);
        return;
    }
    c->last_id = c->id;
    if (c->who->region && strcmp(region_of(id), c->who->region) != 0)
        consumer_fail(c, "an event its filter should drop: %.200s", c->data);
    card_of(id, card, sizeof(card));
    email_of(id, email, sizeof(email));
    if ((strstr(c->data, card) != NULL) == c->who->card_masked ||
        (strstr(c->data, email) != NULL) == c->who->email_masked)
        consumer_fail(c, "masked wrongly: %.200s", c->data);
    c->received++;
    atomic_fetch_add(&r->received, 1);
    if (r->nlat < r->cap)
        r->lat_ms[r->nlat++] =
            (double)(now - strtoll(s + 10, NULL, 10)) / 1000.0;
}

static void sse_line(readers *r, consumer *c, int64_t now)
{
    char *l = c->line;

    if (c->llen && l[c->llen - 1] == '\r')
        c->llen--;
    l[c->llen] = '\0';
    if (c->llen == 0) {
        if (c->has_data)
            sse_dispatch(r, c, now);
        c->has_data = false;
    } else if (l[0] == ':') {
        if (!c->subscribed && strstr(l, " from ") != NULL) {
            c->subscribed = true;
            atomic_fetch_add(&r->subscribed, 1);
        }
    } else if (strncmp(l, "id: ", 4) == 0) {
        c->id = strtoll(l + 4, NULL, 10);
    } else if (strncmp(l, "data: ", 6) == 0) {
        snprintf(c->data, sizeof(c->data), "%s", l + 6);
        c->has_data = true;
    } else if (strncmp(l, "event: ", 7) == 0) {
        /* error, gone, denied: the stream is ending on us */
        consumer_fail(c, "the sidecar sent %s", l);
    }
    c->llen = 0;
}

static void sse_feed(readers *r, consumer *c, const char *b, size_t n,
                     int64_t now)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i] == '\n') {
            sse_line(r, c, now);
        } else if (c->llen < sizeof(c->line) - 1) {
            c->line[c->llen++] = b[i];
        } else {
            consumer_fail(c, "an SSE line longer than %s bytes", "8191");
        }
    }
}

/* Bytes off the socket: the response head, then the chunked body. */
static void consumer_input(readers *r, consumer *c, const char *b, size_t n,
                           int64_t now)
{
    size_t i = 0;

    while (i < n && !c->failed) {
        switch (c->state) {
        case C_HEAD: {
            char *end;
            if (c->hlen >= sizeof(c->head) - 1) {
                consumer_fail(c, "a response head over %s bytes", "4095");
                return;
            }
            c->head[c->hlen++] = b[i++];
            c->head[c->hlen] = '\0';
            end = strstr(c->head, "\r\n\r\n");
            if (end == NULL)
                continue;
            if (strncmp(c->head, "HTTP/1.1 200", 12) != 0) {
                consumer_fail(c, "answered %.200s", c->head);
                return;
            }
            c->state = strcasestr(c->head, "transfer-encoding: chunked")
                           ? C_SIZE
                           : C_RAW;
            break;
        }
        case C_SIZE:
            if (b[i] == '\n') {
                c->sz[c->szlen] = '\0';
                c->chunk_left = strtoull(c->sz, NULL, 16);
                c->szlen = 0;
                if (c->chunk_left == 0) {
                    consumer_fail(c, "the stream ended%s", "");
                    return;
                }
                c->state = C_DATA;
            } else if (c->szlen < sizeof(c->sz) - 1) {
                c->sz[c->szlen++] = b[i];
            }
            i++;
            break;
        case C_DATA: {
            size_t k = n - i < c->chunk_left ? n - i : (size_t)c->chunk_left;
            sse_feed(r, c, b + i, k, now);
            i += k;
            c->chunk_left -= k;
            if (c->chunk_left == 0)
                c->state = C_CRLF;
            break;
        }
        case C_CRLF:
            if (b[i++] == '\n')
                c->state = C_SIZE;
            break;
        default:
            sse_feed(r, c, b + i, n - i, now);
            i = n;
        }
    }
}

static void *readers_main(void *arg)
{
    readers *r = arg;
    struct pollfd *pfd = calloc((size_t)r->n, sizeof(*pfd));
    char buf[65536];

    if (pfd == NULL)
        return NULL;
    for (int i = 0; i < r->n; i++) {
        pfd[i].fd = r->c[i].fd;
        pfd[i].events = POLLIN;
    }
    while (!atomic_load(&r->stop)) {
        int k = poll(pfd, (nfds_t)r->n, 100);

        for (int i = 0; k > 0 && i < r->n; i++) {
            consumer *c = &r->c[i];
            ssize_t got;

            if (pfd[i].revents == 0)
                continue;
            got = read(c->fd, buf, sizeof(buf));
            if (got > 0) {
                consumer_input(r, c, buf, (size_t)got, mono_us());
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                consumer_fail(c, "the connection closed%s", "");
                pfd[i].fd = -1;
            }
        }
    }
    free(pfd);
    return NULL;
}

/* Connect and send the subscription (blocking; loopback). */
static int consumer_open(consumer *c, int port, const char *product)
{
    struct sockaddr_in a = {0};
    char req[512];
    int one = 1, len;

    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return -1;
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        return -1;
    len =
        snprintf(req, sizeof(req),
                 "GET /v1/products/" DOMAIN "/%s/events?from=start HTTP/1.1\r\n"
                 "Host: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                 "Accept: text/event-stream\r\n\r\n",
                 product, port, c->who->token);
    if (write(c->fd, req, (size_t)len) != len)
        return -1;
    return fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
}

static long expected_for(const who *w, int events)
{
    long n = 0;

    for (int i = 1; i <= events; i++)
        n +=
            w->region == NULL || strcmp(region_of((uint64_t)i), w->region) == 0;
    return n;
}

/* 100 consumers, one publisher: publish → delivered latency.  0 or -1. */
static int run_latency(const sidecarenv *sc, int nconsumers, int events,
                       int interval_ms)
{
    readers r;
    publisher p;
    pthread_t thread;
    bool thread_up = false;
    long expected_total = 0, bad = 0;
    double *ack = calloc((size_t)events, sizeof(double));
    pid_t pid = testenv_proc_pid(sc->proc);
    double sc0 = 0, me0 = 0, all0 = 0;
    int64_t t0, until;
    int rc = -1;

    memset(&r, 0, sizeof(r));
    memset(&p, 0, sizeof(p));
    r.n = nconsumers;
    r.c = calloc((size_t)nconsumers, sizeof(consumer));
    if (r.c == NULL || ack == NULL)
        goto out;
    for (int i = 0; i < nconsumers; i++) {
        consumer *c = &r.c[i];
        /* Half see everything (carol), half a masked, filtered view. */
        c->who = i % 2 == 0 ? &people[0] : &people[1 + (i / 2) % 2];
        c->last_id = -1;
        c->fd = -1;
        expected_total += expected_for(c->who, events);
    }
    r.cap = (size_t)expected_total + 16;
    r.lat_ms = malloc(r.cap * sizeof(double));
    if (r.lat_ms == NULL)
        goto out;
    for (int i = 0; i < nconsumers; i++)
        if (consumer_open(&r.c[i], sc->http_port, "orders-live") != 0) {
            fprintf(stderr, "bench_events: consumer %d: cannot subscribe: %s\n",
                    i, strerror(errno));
            goto out;
        }
    if (pthread_create(&thread, NULL, readers_main, &r) != 0)
        goto out;
    thread_up = true;
    until = mono_us() + SUBSCRIBE_MS * 1000LL;
    while (atomic_load(&r.subscribed) < nconsumers && mono_us() < until)
        sleep_us(5000);
    if (atomic_load(&r.subscribed) < nconsumers) {
        fprintf(stderr,
                "bench_events: only %d of %d consumers subscribed in %d ms\n",
                atomic_load(&r.subscribed), nconsumers, SUBSCRIBE_MS);
        goto out;
    }
    if (pub_init(&p, sc->http_url, "orders-live", 1024) != 0)
        goto out;
    sc0 = ps_cpu_seconds(pid);
    me0 = ps_cpu_seconds(getpid());
    all0 = ps_machine_busy_seconds();
    t0 = mono_us();
    for (int i = 1; i <= events; i++) {
        char why[512];
        int64_t s;
        int len;

        sleep_us(t0 + (int64_t)i * interval_ms * 1000 - mono_us());
        s = mono_us();
        len = order_json(p.body, p.cap, (uint64_t)i, s);
        if (pub_post(&p, (size_t)len, 1, why, sizeof(why)) != 0) {
            fprintf(stderr, "bench_events: live publish %d: %s\n", i, why);
            goto out;
        }
        ack[i - 1] = (double)(mono_us() - s) / 1000.0;
    }
    until = mono_us() + DRAIN_MS * 1000LL;
    while (atomic_load(&r.received) < expected_total && mono_us() < until)
        sleep_us(5000);
    atomic_store(&r.stop, true);
    pthread_join(thread, NULL);
    thread_up = false;

    for (int i = 0; i < nconsumers; i++) {
        consumer *c = &r.c[i];
        long want = expected_for(c->who, events);
        if (c->failed || c->received != want) {
            if (bad++ < 5)
                fprintf(stderr,
                        "bench_events: consumer %d (%s) got %ld of %ld "
                        "events%s%s\n",
                        i, c->who->name, c->received, want,
                        c->failed ? ": " : "", c->why);
        }
    }
    if (bad) {
        fprintf(stderr,
                "bench_events: %ld of %d consumers did not get "
                "exactly their events\n",
                bad, nconsumers);
        goto out;
    }
    qsort(r.lat_ms, r.nlat, sizeof(double), cmp_double);
    qsort(ack, (size_t)events, sizeof(double), cmp_double);
    printf("bench: events_consumers %d consumers\n", nconsumers);
    printf("bench: events_delivered %zu events\n", r.nlat);
    printf("bench: events_delivery_p50 %.2f ms\n", r.lat_ms[r.nlat / 2]);
    printf("bench: events_delivery_p99 %.2f ms\n",
           r.lat_ms[(size_t)((double)r.nlat * 0.99)]);
    printf("bench: events_delivery_max %.2f ms\n", r.lat_ms[r.nlat - 1]);
    printf("bench: events_live_ack_p50 %.2f ms\n", ack[events / 2]);
    printf("bench: events_live_ack_p99 %.2f ms\n",
           ack[(size_t)((double)events * 0.99)]);
    print_cpu("events_delivery", pid, (double)(mono_us() - t0) / 1e6, sc0, me0,
              all0);
    rc = 0;
out:
    if (thread_up) {
        atomic_store(&r.stop, true);
        pthread_join(thread, NULL);
    }
    for (int i = 0; r.c && i < nconsumers; i++)
        if (r.c[i].fd >= 0)
            close(r.c[i].fd);
    pub_free(&p);
    free(r.c);
    free(r.lat_ms);
    free(ack);
    return rc;
}

/* One publish to each product: opens the logs before anything is timed. */
static int warm_up(const sidecarenv *sc)
{
    static const char *const products[] = {"orders-batch", "orders-always"};
    publisher p;
    char why[512];
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < 2; i++) {
        if (pub_init(&p, sc->http_url, products[i], 1024) != 0) {
            pub_free(&p);
            return -1;
        }
        rc = pub_post(&p, (size_t)order_json(p.body, p.cap, 1, 0), 1, why,
                      sizeof(why));
        if (rc != 0)
            fprintf(stderr, "bench_events: warm-up: %s\n", why);
        pub_free(&p);
    }
    return rc;
}

int main(int argc, char **argv)
{
    int seconds = env_int("BENCH_SECONDS", 5, 1, 600);
    int npub = env_int("BENCH_PUBLISHERS", 4, 1, MAX_PUBLISHERS);
    int nconsumers = env_int("BENCH_CONSUMERS", 100, 1, MAX_CONSUMERS);
    int events = env_int("BENCH_EVENTS", 500, 1, MAX_EVENTS);
    int interval_ms = env_int("BENCH_INTERVAL_MS", 10, 1, 10000);
    int workers = env_int("BENCH_SIDECAR_WORKERS", 0, 0, 64);
    static const char *const cp_args[] = {"--debounce-ms", "20", NULL};
    cpenv_options co = {.extra_args = cp_args};
    sidecarenv_options so = {.domain = DOMAIN, .id = "bench-events-sidecar"};
    const char *extra[3] = {NULL};
    char workers_arg[16], sample[512];
    cpenv *cp = NULL;
    sidecarenv *sc = NULL;
    rpc_channel *gov = NULL;
    int64_t rev;
    int rc = 1;

    (void)argv;
    if (argc > 1) {
        fprintf(stderr, "usage: [BENCH_SECONDS=5] [BENCH_PUBLISHERS=4] "
                        "[BENCH_CONSUMERS=100] [BENCH_EVENTS=500] "
                        "[BENCH_INTERVAL_MS=10] [BENCH_SIDECAR_WORKERS=n] "
                        "bench_events\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    cp = cpenv_start(&co);
    if (cp == NULL || (gov = cpenv_channel(cp)) == NULL)
        goto out;
    if ((rev = apply_mesh(gov)) < 0)
        goto out;
    so.controlplane = cp->grpc_target;
    so.wait_ready = true;
    if (workers > 0) {
        snprintf(workers_arg, sizeof(workers_arg), "%d", workers);
        extra[0] = "--http-workers";
        extra[1] = workers_arg;
        so.extra_args = extra;
    }
    sc = sidecarenv_start(&so);
    if (sc == NULL || wait_synced(gov, so.id, rev) != 0 || warm_up(sc) != 0)
        goto out;
    printf("# sidecar --http-workers %d%s; %ld cores online, shared with "
           "whatever else runs; state dir %s\n",
           workers > 0 ? workers : 4, workers > 0 ? "" : " (default)",
           sysconf(_SC_NPROCESSORS_ONLN), sc->state_dir);
    printf("# an event is %d bytes, e.g. %s\n",
           order_json(sample, sizeof(sample), 7, 0), sample);
    printf("# publish: %d keep-alive connections, %d s each\n", npub, seconds);
    fflush(stdout);
    if (run_throughput(sc, "orders-batch", "events_publish_b1", npub, 1,
                       seconds) != 0 ||
        run_throughput(sc, "orders-batch", "events_publish_b100", npub, 100,
                       seconds) != 0 ||
        run_throughput(sc, "orders-always", "events_publish_always_b1", npub, 1,
                       seconds) != 0)
        goto out;
    printf("# delivery: %d SSE consumers (half carol: everything; half "
           "alice/bob: masked, one region), one event every %d ms, %d "
           "events\n",
           nconsumers, interval_ms, events);
    fflush(stdout);
    if (run_latency(sc, nconsumers, events, interval_ms) != 0)
        goto out;
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "bench_events: FAILED\n");
    if (rc && sc)
        sidecarenv_dump_log(sc, 3000);
    if (rc && cp)
        cpenv_dump_log(cp, 2000);
    sidecarenv_free(sc);
    rpc_channel_free(gov);
    cpenv_stop(cp);
    curl_global_cleanup();
    return rc;
}
