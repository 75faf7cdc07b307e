/*
 * bench_policy.c — policy engine figures on a seeded synthetic mesh: 200
 * products in 20 domains, 1,000 principals in 100 groups, 1,000 and 10,000
 * rules.  Prints `bench: <name> <value> <unit>` lines: build time, bytes the
 * build allocates, decisions/s on one core, p50/p99 latency per decision,
 * and the cost ratio 10k/1k.
 */
#include "policy/policy.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NDOMAINS    20
#define NPRODUCTS   200
#define NPRINCIPALS 1000
#define NGROUPS     100
#define GROUPS_PER  3
#define NREQUESTS   20000

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: seeded, the same mesh on every run */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static unsigned pick(unsigned n)
{
    return (unsigned)(rnd() % n);
}

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Principals and their groups (ids into "g%02d"). */
static unsigned member_of[NPRINCIPALS][GROUPS_PER];

static json_t *make_product(unsigned i)
{
    json_t *p = json_pack(
        "{s:s, s:s, s:{s:s}, s:{s:s, s:[{s:s,s:s}, {s:s,s:s}, "
        "{s:s,s:s,s:[s]}, {s:s,s:s,s:[s]}, {s:s,s:s,s:[s]}, "
        "{s:s,s:s,s:[s]}, {s:s,s:s}, {s:s,s:s}]}}",
        "apiVersion", "polis/v1", "kind", "DataProduct", "metadata", "name",
        "p000", "spec", "domain", "d00", "schema", "name", "id", "type",
        "integer", "name", "region", "type", "string", "name", "email", "type",
        "string", "classification", "pii.email", "name", "phone", "type",
        "string", "classification", "pii.phone", "name", "name", "type",
        "string", "classification", "pii.name", "name", "amount", "type",
        "decimal", "classification", "finance.amount", "name", "c1", "type",
        "string", "name", "c2", "type", "string");
    char buf[16];

    snprintf(buf, sizeof(buf), "p%03u", i);
    json_object_set_new(json_object_get(p, "metadata"), "name",
                        json_string(buf));
    snprintf(buf, sizeof(buf), "d%02u", i / (NPRODUCTS / NDOMAINS));
    json_object_set_new(json_object_get(p, "spec"), "domain", json_string(buf));
    return p;
}

static json_t *make_rule(unsigned n, int domain)
{
    static const char *const methods[] = {"hash", "show_last", "redact",
                                          "email"};
    static const char *const ports[] = {"query", "file", "event", "http"};
    json_t *r = json_object(), *subjects = json_array(), *res = json_array();
    unsigned e = pick(100), k, ns = 1 + pick(2);
    const char *effect = e < 45   ? "allow"
                         : e < 60 ? "deny"
                         : e < 80 ? "mask"
                         : e < 90 ? "filter"
                                  : "aggregate";
    char buf[64];

    snprintf(buf, sizeof(buf), "r%u", n);
    json_object_set_new(r, "name", json_string(buf));
    json_object_set_new(r, "effect", json_string(effect));
    for (k = 0; k < ns; k++) {
        unsigned s = pick(100);

        if (s < 2)
            snprintf(buf, sizeof(buf), "*");
        else if (s < 72)
            snprintf(buf, sizeof(buf), "group:g%02u", pick(NGROUPS));
        else
            snprintf(buf, sizeof(buf), "u%04u", pick(NPRINCIPALS));
        json_array_append_new(subjects, json_string(buf));
    }
    json_object_set_new(r, "subjects", subjects);
    {
        unsigned d = domain >= 0 ? (unsigned)domain : pick(NDOMAINS);
        unsigned p = d * (NPRODUCTS / NDOMAINS) + pick(NPRODUCTS / NDOMAINS);
        unsigned g = pick(100);

        if (g < 65)
            snprintf(buf, sizeof(buf), "d%02u/p%03u", d, p);
        else if (g < 95 || domain >= 0)
            snprintf(buf, sizeof(buf), "d%02u/*", d);
        else
            snprintf(buf, sizeof(buf), "*/p%03u", p);
        json_array_append_new(res, json_string(buf));
    }
    json_object_set_new(r, "resources", res);
    if (pick(100) < 30) {
        json_t *pl = json_array();

        json_array_append_new(pl, json_string(ports[pick(4)]));
        json_array_append_new(pl, json_string("query"));
        json_object_set_new(r, "ports", pl);
    }
    if (strcmp(effect, "deny") == 0 && pick(100) < 40)
        json_object_set_new(r, "classifications", json_pack("[s]", "pii.*"));
    if (strcmp(effect, "allow") == 0 && pick(100) < 10)
        json_object_set_new(r, "when", json_string("subject.region == 'EU'"));
    if (strcmp(effect, "mask") != 0 && pick(100) < 10)
        json_object_set_new(r, "purposes", json_pack("[s]", "analytics"));
    if (strcmp(effect, "mask") == 0)
        json_object_set_new(
            r, "mask",
            pick(2) ? json_pack("{s:s, s:[s]}", "method", methods[pick(4)],
                                "classifications", "pii.*")
                    : json_pack("{s:s, s:[s]}", "method", methods[pick(4)],
                                "columns", "phone"));
    if (strcmp(effect, "filter") == 0)
        json_object_set_new(r, "filter",
                            json_string("region == subject.region"));
    if (strcmp(effect, "aggregate") == 0)
        json_object_set_new(
            r, "aggregate",
            json_pack("{s:i}", "minGroupSize", 5 + (int)pick(46)));
    return r;
}

static json_t *make_docs(unsigned nrules)
{
    json_t *docs = json_array();
    unsigned i, n = 0, pol = 0;

    for (i = 0; i < NPRODUCTS; i++)
        json_array_append_new(docs, make_product(i));
    while (n < nrules) {
        /* One policy in five is global; the rest belong to a domain. */
        int domain = pol % 5 == 0 ? -1 : (int)(pol % NDOMAINS);
        json_t *rules = json_array();
        char name[32], scope[16];

        for (i = 0; i < 100 && n < nrules; i++, n++)
            json_array_append_new(rules, make_rule(n, domain));
        snprintf(name, sizeof(name), "policy-%u", pol);
        if (domain < 0)
            snprintf(scope, sizeof(scope), "global");
        else
            snprintf(scope, sizeof(scope), "d%02d", domain);
        json_array_append_new(
            docs, json_pack("{s:s, s:s, s:{s:s}, s:{s:s, s:o}}", "apiVersion",
                            "polis/v1", "kind", "Policy", "metadata", "name",
                            name, "spec", "scope", scope, "rules", rules));
        pol++;
    }
    return docs;
}

typedef struct bench_req {
    pol_request req;
    const char *groups[GROUPS_PER];
    pol_expr_attr attr;
    pol_column_request cols[2];
    char principal[16], product[16], g[GROUPS_PER][8];
} bench_req;

static const char *const col_names[] = {"id", "region", "email", "amount"};

/* Half the requests come from an allow rule (a member of its group asks
 * for its product), half are random: a mix of allowed and denied. */
static void make_requests(const json_t *docs, bench_req *reqs, size_t n)
{
    size_t i, k;

    for (i = 0; i < n; i++) {
        bench_req *b = &reqs[i];
        unsigned u = pick(NPRINCIPALS), prod = pick(NPRODUCTS);

        memset(b, 0, sizeof(*b));
        if (pick(2)) {
            const json_t *doc = json_array_get(
                docs, NPRODUCTS +
                          pick((unsigned)(json_array_size(docs) - NPRODUCTS)));
            const json_t *rules =
                json_object_get(json_object_get(doc, "spec"), "rules");
            const json_t *r =
                json_array_get(rules, pick((unsigned)json_array_size(rules)));
            const char *subj = json_string_value(
                json_array_get(json_object_get(r, "subjects"), 0));
            const char *res = json_string_value(
                json_array_get(json_object_get(r, "resources"), 0));
            unsigned g;

            if (sscanf(subj, "group:g%u", &g) == 1) {
                for (u = 0; u < NPRINCIPALS; u++)
                    if (member_of[u][0] == g || member_of[u][1] == g ||
                        member_of[u][2] == g)
                        break;
                u %= NPRINCIPALS;
            } else if (sscanf(subj, "u%u", &g) == 1) {
                u = g;
            }
            if (res[0] == 'd' && res[4] == 'p')
                prod = (unsigned)atoi(res + 5);
            else if (res[0] == 'd')
                prod = (unsigned)atoi(res + 1) * (NPRODUCTS / NDOMAINS) +
                       pick(NPRODUCTS / NDOMAINS);
            else
                prod = (unsigned)atoi(res + 3);
        }
        snprintf(b->principal, sizeof(b->principal), "u%04u", u);
        snprintf(b->product, sizeof(b->product), "d%02u/p%03u",
                 prod / (NPRODUCTS / NDOMAINS), prod);
        for (k = 0; k < GROUPS_PER; k++) {
            snprintf(b->g[k], sizeof(b->g[k]), "g%02u", member_of[u][k]);
            b->groups[k] = b->g[k];
        }
        b->attr =
            (pol_expr_attr){"region", false, u % 2 ? "EU" : "US", NULL, 0};
        b->req.subject.name = b->principal;
        b->req.subject.groups = b->groups;
        b->req.subject.ngroups = GROUPS_PER;
        b->req.subject.attrs = &b->attr;
        b->req.subject.nattrs = 1;
        b->req.product = b->product;
        b->req.port = pick(10) < 8 ? POL_PORT_QUERY : (pol_port)pick(4);
        b->req.purpose = pick(2) ? "analytics" : NULL;
        if (pick(2)) {
            b->cols[0].name = col_names[pick(4)];
            b->cols[1].name = col_names[pick(4)];
            if (b->cols[1].name == b->cols[0].name)
                b->cols[1].name = "c1";
            b->req.columns = b->cols;
            b->req.ncolumns = 2;
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

typedef struct figures {
    double mean_ns, p50_ns, p99_ns;
} figures;

static int run(unsigned nrules, figures *f)
{
    json_t *docs;
    pol_engine *engine = NULL;
    pol_decision *d = pol_decision_new();
    polis_error err = {0};
    static bench_req reqs[NREQUESTS];
    static double lat[NREQUESTS];
    struct mallinfo2 before, after;
    double t0, t1, overhead = 1e9;
    size_t i, allowed = 0, round, matched = 0;
    pol_engine_options opts = {"bench-key", 9};
    const char *tag = nrules >= 10000 ? "10k" : "1k";

    rng_state = 0x9e3779b97f4a7c15ULL ^ nrules;
    docs = make_docs(nrules);
    make_requests(docs, reqs, NREQUESTS);

    before = mallinfo2();
    t0 = now_ns();
    if (pol_engine_build(docs, &opts, &engine, &err) != 0) {
        fprintf(stderr, "build: %s: %s\n", err.where, err.message);
        return 1;
    }
    t1 = now_ns();
    after = mallinfo2();
    printf("bench: policy_%s_build_ms %.1f ms\n", tag, (t1 - t0) / 1e6);
    printf("bench: policy_%s_build_bytes %zu bytes\n", tag,
           (size_t)(after.uordblks - before.uordblks));
    printf("bench: policy_%s_rules %zu rules\n", tag,
           pol_engine_rule_count(engine));

    /* Throughput: the whole set, several rounds, no timer in the loop. */
    for (i = 0; i < NREQUESTS; i++) { /* warm up */
        if (pol_decide(engine, &reqs[i].req, d, NULL) == 0 &&
            pol_decision_allowed(d))
            allowed++;
        matched += pol_decision_matched_count(d);
    }
    t0 = now_ns();
    for (round = 0; round < 10; round++)
        for (i = 0; i < NREQUESTS; i++)
            pol_decide(engine, &reqs[i].req, d, NULL);
    t1 = now_ns();
    f->mean_ns = (t1 - t0) / (10.0 * NREQUESTS);
    printf("bench: policy_%s_decisions_per_s %.0f ops/s\n", tag,
           1e9 / f->mean_ns);
    printf("bench: policy_%s_allowed_fraction %.2f ratio\n", tag,
           (double)allowed / NREQUESTS);
    /* Rules that apply to a request grow with the rule count: this, not
     * the index, is what makes a decision at 10k cost more than at 1k. */
    printf("bench: policy_%s_matched_rules_per_decision %.2f rules\n", tag,
           (double)matched / NREQUESTS);

    /* Latency per call; the cost of reading the clock is subtracted. */
    for (i = 0; i < 1000; i++) {
        double a = now_ns(), b = now_ns();

        if (b - a < overhead)
            overhead = b - a;
    }
    for (i = 0; i < NREQUESTS; i++) {
        t0 = now_ns();
        pol_decide(engine, &reqs[i].req, d, NULL);
        t1 = now_ns();
        lat[i] = t1 - t0 - overhead;
    }
    qsort(lat, NREQUESTS, sizeof(double), cmp_double);
    f->p50_ns = lat[NREQUESTS / 2];
    f->p99_ns = lat[NREQUESTS * 99 / 100];
    printf("bench: policy_%s_p50 %.0f ns\n", tag, f->p50_ns);
    printf("bench: policy_%s_p99 %.0f ns\n", tag, f->p99_ns);

    pol_decision_free(d);
    pol_engine_free(engine);
    json_decref(docs);
    return 0;
}

int main(void)
{
    figures f1, f10;
    unsigned u, k;

    rng_state = 42;
    for (u = 0; u < NPRINCIPALS; u++)
        for (k = 0; k < GROUPS_PER; k++)
            member_of[u][k] = pick(NGROUPS);
    if (run(1000, &f1) != 0 || run(10000, &f10) != 0)
        return 1;
    printf("bench: policy_cost_ratio_10k_1k %.2f ratio\n",
           f10.mean_ns / f1.mean_ns);
    printf("bench: policy_p50_ratio_10k_1k %.2f ratio\n",
           f10.p50_ns / f1.p50_ns);
    return 0;
}
