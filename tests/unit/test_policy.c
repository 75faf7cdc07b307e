/*
 * test_policy.c — semantics of the policy engine (policy/policy.h) as a
 * table: one fixture of products and policies, rows of requests with the
 * expected decision; then build errors with their exact messages, the
 * explanation, JSON, validation and the unknown-product path.
 */
#include "policy/policy.h"
#include "tests/support/testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* JSON with ` for " (expressions keep their single quotes). */
static json_t *J(const char *text)
{
    char *s = strdup(text), *p;
    json_error_t jerr;
    json_t *v;

    for (p = s; *p; p++)
        if (*p == '`')
            *p = '"';
    v = json_loads(s, 0, &jerr);
    if (v == NULL)
        fprintf(stderr, "fixture JSON: %s at %d:%d\n", jerr.text, jerr.line,
                jerr.column);
    free(s);
    return v;
}

#define PRODUCT(domain, name, schema)                                          \
    "{`apiVersion`:`polis/v1`,`kind`:`DataProduct`,`metadata`:{`name`:`" name  \
    "`},`spec`:{`domain`:`" domain "`,`schema`:[" schema "]}}"
#define POLICY(scope, name, rules)                                             \
    "{`apiVersion`:`polis/v1`,`kind`:`Policy`,`metadata`:{`name`:`" name       \
    "`},`spec`:{`scope`:`" scope "`,`rules`:[" rules "]}}"

/* clang-format off */
static const char *const fixture[] = {
    /* ---- products ---- */
    PRODUCT("sales", "customers",
            "{`name`:`id`,`type`:`integer`},"
            "{`name`:`name`,`type`:`string`,`classification`:[`pii.name`]},"
            "{`name`:`email`,`type`:`string`,`classification`:[`pii.email`]},"
            "{`name`:`phone`,`type`:`string`,`classification`:[`pii.phone`]},"
            "{`name`:`birth_date`,`type`:`date`,`classification`:`pii.dob`},"
            "{`name`:`region`,`type`:`string`}"),
    PRODUCT("sales", "orders",
            "{`name`:`order_id`,`type`:`integer`},"
            "{`name`:`customer_id`,`type`:`integer`},"
            "{`name`:`amount`,`type`:`decimal`,"
            "`classification`:[`finance.revenue`]},"
            "{`name`:`region`,`type`:`string`},"
            "{`name`:`card`,`type`:`string`,`classification`:[`pci.pan`]}"),
    PRODUCT("hr", "salaries",
            "{`name`:`employee`,`type`:`string`,`classification`:[`pii.name`]},"
            "{`name`:`salary`,`type`:`integer`,"
            "`classification`:[`confidential.salary`]},"
            "{`name`:`region`,`type`:`string`}"),
    PRODUCT("marketing", "campaigns",
            "{`name`:`name`,`type`:`string`,`classification`:[`public.name`]},"
            "{`name`:`budget`,`type`:`decimal`,"
            "`classification`:[`finance.budget`]}"),
    "{`apiVersion`:`polis/v1`,`kind`:`Domain`,`metadata`:{`name`:`sales`}}",
    /* ---- domain policies first: the engine orders global before domain */
    POLICY("sales", "sales-local",
           "{`name`:`allow-sales-team`,`effect`:`allow`,"
           "`subjects`:[`group:sales`],`resources`:[`sales/*`]},"
           "{`name`:`redact-email-sales`,`effect`:`mask`,"
           "`subjects`:[`group:sales`],`resources`:[`sales/customers`],"
           "`mask`:{`method`:`redact`,`columns`:[`email`]}},"
           "{`name`:`email-analysts`,`effect`:`mask`,"
           "`subjects`:[`group:analysts`],`resources`:[`sales/customers`],"
           "`mask`:{`method`:`email`,`columns`:[`email`]}},"
           "{`name`:`filter-small`,`effect`:`filter`,"
           "`subjects`:[`group:sales`],`resources`:[`sales/orders`],"
           "`filter`:`amount < 1000`},"
           "{`name`:`agg-sales`,`effect`:`aggregate`,"
           "`subjects`:[`group:analysts`],`resources`:[`sales/orders`],"
           "`aggregate`:{`minGroupSize`:20}},"
           "{`name`:`allow-partner-events`,`effect`:`allow`,"
           "`subjects`:[`partner`],`resources`:[`sales/orders`],"
           "`ports`:[`event`]},"
           "{`name`:`allow-contractors-customers`,`effect`:`allow`,"
           "`subjects`:[`group:contractors`],"
           "`resources`:[`sales/customers`]},"
           "{`name`:`deny-interns`,`effect`:`deny`,"
           "`subjects`:[`group:interns`],`resources`:[`sales/*`]},"
           "{`name`:`phone-first-sales`,`effect`:`mask`,"
           "`subjects`:[`group:sales`],`resources`:[`sales/customers`],"
           "`mask`:{`method`:`show_first`,`classifications`:[`pii.phone`],"
           "`params`:{`n`:2}}}"),
    POLICY("hr", "hr-local",
           "{`name`:`allow-cleared-analysts`,`effect`:`allow`,"
           "`subjects`:[`group:analysts`],`resources`:[`hr/salaries`],"
           "`when`:`subject.clearance == 'high'`},"
           "{`name`:`filter-hr-region`,`effect`:`filter`,`subjects`:[`*`],"
           "`resources`:[`hr/*`],`filter`:`region == subject.region`}"),
    /* ---- global policies ---- */
    POLICY("global", "base",
           "{`name`:`allow-analysts`,`effect`:`allow`,"
           "`subjects`:[`group:analysts`],"
           "`resources`:[`sales/*`,`marketing/*`],`ports`:[`query`,`file`]},"
           "{`name`:`deny-contractors-pii`,`effect`:`deny`,"
           "`subjects`:[`group:contractors`],`resources`:[`*`],"
           "`classifications`:[`pii.*`]},"
           "{`name`:`allow-contractors`,`effect`:`allow`,"
           "`subjects`:[`group:contractors`],`resources`:[`sales/orders`]},"
           "{`name`:`deny-banned`,`effect`:`deny`,`subjects`:[`mallory`],"
           "`resources`:[`*`]},"
           "{`name`:`allow-auditors`,`effect`:`allow`,"
           "`subjects`:[`group:auditors`],`resources`:[`*/*`],"
           "`purposes`:[`audit`]},"
           "{`name`:`allow-marketing-finance`,`effect`:`allow`,"
           "`subjects`:[`group:marketing`],"
           "`resources`:[`marketing/campaigns`],"
           "`classifications`:[`finance.*`]},"
           "{`name`:`deny-hr-outside-eu`,`effect`:`deny`,`subjects`:[`*`],"
           "`resources`:[`hr/*`],`when`:`subject.region != 'EU'`},"
           "{`name`:`allow-hr`,`effect`:`allow`,`subjects`:[`group:hr`],"
           "`resources`:[`hr/*`],`except`:{`subjects`:[`eve`]}},"
           "{`name`:`deny-marketing-use`,`effect`:`deny`,`subjects`:[`*`],"
           "`resources`:[`sales/customers`],`purposes`:[`marketing`],"
           "`except`:{`subjects`:[`group:dpo`]}},"
           "{`name`:`allow-dpo`,`effect`:`allow`,`subjects`:[`group:dpo`],"
           "`resources`:[`sales/*`]},"
           "{`name`:`allow-orders-glob`,`effect`:`allow`,"
           "`subjects`:[`group:finance`],`resources`:[`*/ord*`]},"
           "{`name`:`allow-research`,`effect`:`allow`,"
           "`subjects`:[`group:research`],`resources`:[`sales/orders`],"
           "`except`:{`purposes`:[`marketing`]}},"
           "{`name`:`allow-qmark`,`effect`:`allow`,"
           "`subjects`:[`group:glob`],`resources`:[`sales/ord?rs`]}"),
    POLICY("global", "pii",
           "{`name`:`mask-email`,`effect`:`mask`,`subjects`:[`*`],"
           "`resources`:[`*`],"
           "`mask`:{`method`:`hash`,`classifications`:[`pii.email`]}},"
           "{`name`:`mask-phone`,`effect`:`mask`,`subjects`:[`*`],"
           "`resources`:[`sales/*`],`mask`:{`method`:`show_last`,"
           "`classifications`:[`pii.phone`],`params`:{`n`:4}}},"
           "{`name`:`mask-dob`,`effect`:`mask`,`subjects`:[`*`],"
           "`resources`:[`*`],"
           "`mask`:{`method`:`date_year`,`classifications`:[`pii.dob`]}},"
           "{`name`:`mask-pan`,`effect`:`mask`,`subjects`:[`*`],"
           "`resources`:[`*`],"
           "`mask`:{`method`:`show_last`,`classifications`:[`pci.*`]}},"
           "{`name`:`mask-name-auditors`,`effect`:`mask`,"
           "`subjects`:[`group:auditors`],`resources`:[`*`],"
           "`mask`:{`method`:`redact`,`classifications`:[`pii.name`]}},"
           "{`name`:`null-salary`,`effect`:`mask`,"
           "`subjects`:[`group:analysts`],`resources`:[`hr/*`],"
           "`mask`:{`method`:`nullify`,`columns`:[`salary`]}}"),
    POLICY("global", "rows",
           "{`name`:`eu-filter`,`effect`:`filter`,"
           "`subjects`:[`group:analysts`],`resources`:[`sales/*`],"
           "`filter`:`region == subject.region`},"
           "{`name`:`agg-finance`,`effect`:`aggregate`,"
           "`subjects`:[`group:analysts`],`resources`:[`sales/orders`],"
           "`classifications`:[`finance.*`],`aggregate`:{`minGroupSize`:5}},"
           "{`name`:`agg-hr`,`effect`:`aggregate`,`subjects`:[`*`],"
           "`resources`:[`hr/*`],`aggregate`:{`minGroupSize`:10}},"
           "{`name`:`event-filter`,`effect`:`filter`,`subjects`:[`*`],"
           "`resources`:[`sales/orders`],`ports`:[`event`],"
           "`filter`:`amount > 0`}"),
    NULL,
};
/* clang-format on */

/*
 * One row: the request (groups comma-separated; attrs "k=v;k=v"; columns
 * comma-separated, "" for all, "name:tag|tag" to give classifications)
 * and the expected decision (deciding rule "scope/policy/rule" or NULL;
 * masks "column:method,..." in column order).
 */
typedef struct row {
    const char *principal, *groups, *attrs, *product, *port, *purpose, *columns;
    bool allowed;
    const char *deciding, *masks;
    size_t nfilters;
    int64_t min_group;
} row;

#define B  "global/base/"
#define SL "sales/sales-local/"
#define HL "hr/hr-local/"

static const row rows[] = {
    /* analysts: global allow, masks from global and domain, filters */
    {"ann", "analysts", "region=EU", "sales/customers", "query", NULL, "", 1,
     B "allow-analysts", "email:hash,phone:show_last,birth_date:date_year", 1,
     0},
    {"ann", "analysts", "region=EU", "sales/orders", "query", NULL, "", 1,
     B "allow-analysts", "card:show_last", 1, 20},
    {"ann", "analysts", "region=EU", "sales/orders", "query", NULL,
     "order_id,region", 1, B "allow-analysts", "", 1, 20},
    {"ann", "analysts", "region=EU", "sales/orders", "event", NULL, "", 0, NULL,
     "", 0, 0},
    {"ann", "analysts", "region=EU", "sales/orders", "file", NULL, "", 1,
     B "allow-analysts", "card:show_last", 1, 20},
    {"ann", "analysts", "region=EU", "marketing/campaigns", "query", NULL, "",
     1, B "allow-analysts", "", 0, 0},
    {"ann", "analysts", "region=EU", "marketing/campaigns", "event", NULL, "",
     0, NULL, "", 0, 0},
    {"ann", "analysts", "region=EU", "sales/orders", "http", NULL, "", 0, NULL,
     "", 0, 0},
    /* `when` on subject attributes; unknown fails closed */
    {"ann", "analysts", "region=EU", "hr/salaries", "query", NULL, "", 0, NULL,
     "", 0, 0},
    {"ann", "analysts", "region=EU;clearance=high", "hr/salaries", "query",
     NULL, "", 1, HL "allow-cleared-analysts", "salary:nullify", 1, 10},
    {"ann", "analysts", "region=EU;clearance=low", "hr/salaries", "query", NULL,
     "", 0, NULL, "", 0, 0},
    {"ann", "analysts", "clearance=high", "hr/salaries", "query", NULL, "", 0,
     B "deny-hr-outside-eu", "", 0, 0},
    {"ann", "analysts", "region=US;clearance=high", "hr/salaries", "query",
     NULL, "", 0, B "deny-hr-outside-eu", "", 0, 0},
    /* deny over allow; classification globs on deny */
    {"carl", "contractors", "", "sales/orders", "query", NULL, "", 1,
     B "allow-contractors", "card:show_last", 0, 0},
    {"carl", "contractors", "", "sales/customers", "query", NULL, "", 0,
     B "deny-contractors-pii", "", 0, 0},
    {"carl", "contractors", "", "sales/customers", "query", NULL, "id,region",
     1, SL "allow-contractors-customers", "", 0, 0},
    {"carl", "contractors", "", "sales/customers", "query", NULL, "id,email", 0,
     B "deny-contractors-pii", "", 0, 0},
    {"carl", "contractors", "", "sales/orders", "query", NULL, "card", 1,
     B "allow-contractors", "card:show_last", 0, 0},
    {"kim", "analysts,contractors", "region=EU", "sales/customers", "query",
     NULL, "", 0, B "deny-contractors-pii", "", 0, 0},
    {"kim", "analysts,contractors", "region=EU", "sales/customers", "query",
     NULL, "id", 1, B "allow-analysts", "", 1, 0},
    {"mallory", "analysts", "region=EU", "sales/orders", "query", NULL, "", 0,
     B "deny-banned", "", 0, 0},
    {"mallory", "", "region=EU", "hr/salaries", "query", NULL, "", 0,
     B "deny-banned", "", 0, 0},
    {"mallory", "auditors", "", "sales/orders", "query", "audit", "", 0,
     B "deny-banned", "", 0, 0},
    /* purposes */
    {"aud", "auditors", "", "sales/customers", "query", "audit", "", 1,
     B "allow-auditors",
     "name:redact,email:hash,phone:show_last,birth_date:date_year", 0, 0},
    {"aud", "auditors", "", "sales/customers", "query", "analytics", "", 0,
     NULL, "", 0, 0},
    {"aud", "auditors", "", "sales/customers", "query", NULL, "", 0, NULL, "",
     0, 0},
    {"aud", "auditors", "region=EU", "hr/salaries", "query", "audit", "", 1,
     B "allow-auditors", "employee:redact", 1, 10},
    {"aud", "auditors", "", "sales/orders", "query", "audit", "", 1,
     B "allow-auditors", "card:show_last", 0, 0},
    {"aud", "auditors", "", "marketing/campaigns", "query", "audit", "", 1,
     B "allow-auditors", "", 0, 0},
    {"ann", "analysts", "region=EU", "sales/customers", "query", "marketing",
     "", 0, B "deny-marketing-use", "", 0, 0},
    {"ann", "analysts", "region=EU", "sales/orders", "query", "marketing", "",
     1, B "allow-analysts", "card:show_last", 1, 20},
    /* exceptions */
    {"dora", "dpo", "", "sales/customers", "query", "marketing", "", 1,
     B "allow-dpo", "email:hash,phone:show_last,birth_date:date_year", 0, 0},
    {"dora", "dpo", "", "sales/customers", "query", "analytics", "", 1,
     B "allow-dpo", "email:hash,phone:show_last,birth_date:date_year", 0, 0},
    {"dora", "dpo", "", "sales/orders", "query", "marketing", "", 1,
     B "allow-dpo", "card:show_last", 0, 0},
    {"hana", "hr", "region=EU", "hr/salaries", "query", NULL, "", 1,
     B "allow-hr", "", 1, 10},
    {"hana", "hr", "region=EU", "hr/salaries", "event", NULL, "", 1,
     B "allow-hr", "", 1, 10},
    {"eve", "hr", "region=EU", "hr/salaries", "query", NULL, "", 0, NULL, "", 0,
     0},
    {"hana", "hr", "region=US", "hr/salaries", "query", NULL, "", 0,
     B "deny-hr-outside-eu", "", 0, 0},
    {"hana", "hr", "region=EU", "sales/orders", "query", NULL, "", 0, NULL, "",
     0, 0},
    /* classification-limited allow covers every column */
    {"mo", "marketing", "", "marketing/campaigns", "query", NULL, "budget", 1,
     B "allow-marketing-finance", "", 0, 0},
    {"mo", "marketing", "", "marketing/campaigns", "query", NULL, "", 0, NULL,
     "", 0, 0},
    {"mo", "marketing", "", "marketing/campaigns", "query", NULL, "name,budget",
     0, NULL, "", 0, 0},
    {"mo", "marketing", "", "sales/orders", "query", NULL, "", 0, NULL, "", 0,
     0},
    /* domain policies: tighten, never reach other domains */
    {"sam", "sales", "region=EU", "sales/customers", "query", NULL, "", 1,
     SL "allow-sales-team",
     "email:redact,phone:show_first,birth_date:date_year", 0, 0},
    {"sam", "sales", "region=EU", "sales/customers", "query", NULL, "phone", 1,
     SL "allow-sales-team", "phone:show_first", 0, 0},
    {"sam", "sales", "", "sales/orders", "query", NULL, "", 1,
     SL "allow-sales-team", "card:show_last", 1, 0},
    {"sam", "sales,analysts", "region=EU", "sales/orders", "query", NULL, "", 1,
     B "allow-analysts", "card:show_last", 2, 20},
    {"ivan", "sales,interns", "", "sales/orders", "query", NULL, "", 0,
     SL "deny-interns", "", 0, 0},
    {"ivan", "analysts,interns", "region=EU", "sales/orders", "query", NULL, "",
     0, SL "deny-interns", "", 0, 0},
    {"sam", "sales", "region=EU", "hr/salaries", "query", NULL, "", 0, NULL, "",
     0, 0},
    {"sam", "sales", "", "marketing/campaigns", "query", NULL, "", 0, NULL, "",
     0, 0},
    {"ann", "analysts", "region=EU", "sales/customers", "query", NULL, "email",
     1, B "allow-analysts", "email:hash", 1, 0},
    /* ports on a principal (not group) subject */
    {"partner", "", "", "sales/orders", "event", NULL, "", 1,
     SL "allow-partner-events", "card:show_last", 1, 0},
    {"partner", "", "", "sales/orders", "event", NULL, "order_id", 1,
     SL "allow-partner-events", "", 1, 0},
    {"partner", "", "", "sales/orders", "query", NULL, "", 0, NULL, "", 0, 0},
    /* resource globs */
    {"fin", "finance", "", "sales/orders", "query", NULL, "", 1,
     B "allow-orders-glob", "card:show_last", 0, 0},
    {"fin", "finance", "", "sales/customers", "query", NULL, "", 0, NULL, "", 0,
     0},
    {"fin", "finance", "", "marketing/campaigns", "query", NULL, "", 0, NULL,
     "", 0, 0},
    /* except purposes: only a declared purpose can be exempted */
    {"rita", "research", "", "sales/orders", "query", "analytics", "", 1,
     B "allow-research", "card:show_last", 0, 0},
    {"rita", "research", "", "sales/orders", "query", "marketing", "", 0, NULL,
     "", 0, 0},
    {"rita", "research", "", "sales/orders", "query", NULL, "", 1,
     B "allow-research", "card:show_last", 0, 0},
    /* `?` matches one character */
    {"gil", "glob", "", "sales/orders", "query", NULL, "", 1, B "allow-qmark",
     "card:show_last", 0, 0},
    {"gil", "glob", "", "sales/customers", "query", NULL, "", 0, NULL, "", 0,
     0},
    /* subjects: names and groups are distinct, case-sensitive */
    {"nobody", "", "", "sales/orders", "query", NULL, "", 0, NULL, "", 0, 0},
    {"ann", "Analysts", "region=EU", "sales/orders", "query", NULL, "", 0, NULL,
     "", 0, 0},
    {"analysts", "", "region=EU", "sales/orders", "query", NULL, "", 0, NULL,
     "", 0, 0},
    /* column names compare like SQL identifiers (case-insensitively) */
    {"sam", "sales", "", "sales/customers", "query", NULL, "EMAIL,Phone", 1,
     SL "allow-sales-team", "EMAIL:redact,Phone:show_first", 0, 0},
    /* classifications given by the request */
    {"ann", "analysts", "region=EU", "sales/customers", "query", NULL,
     "notes:pii.email", 1, B "allow-analysts", "notes:hash", 1, 0},
    {"ann", "analysts", "region=EU", "sales/customers", "query", NULL,
     "id:,email:pii.email|pii.phone", 1, B "allow-analysts", "email:hash", 1,
     0},
    /* a product the engine does not know: every rule is looked at */
    {"sam", "sales", "", "sales/returns", "query", NULL, "id:,email:pii.email",
     1, SL "allow-sales-team", "email:hash", 0, 0},
    {"carl", "contractors", "", "sales/returns", "query", NULL,
     "email:pii.email", 0, B "deny-contractors-pii", "", 0, 0},
    {"fin", "finance", "", "eu/ordering", "query", NULL, "x:", 1,
     B "allow-orders-glob", "", 0, 0},
};

static pol_engine *engine;

static int suite_init(void)
{
    json_t *docs = json_array();
    polis_error err = {0};
    pol_engine_options opts = {"test-key", 8};
    size_t i;
    int rc;

    for (i = 0; fixture[i]; i++)
        if (json_array_append_new(docs, J(fixture[i])) != 0)
            return 1;
    rc = pol_engine_build(docs, &opts, &engine, &err);
    if (rc != 0)
        fprintf(stderr, "fixture: %s: %s\n", err.where, err.message);
    json_decref(docs);
    return rc != 0;
}

static int suite_cleanup(void)
{
    pol_engine_free(engine);
    engine = NULL;
    return 0;
}

/* Split s at `sep` into out (pointers into buf). */
static size_t split(const char *s, char sep, char *buf, size_t buflen,
                    char **out, size_t max)
{
    size_t n = 0;
    char *p;

    snprintf(buf, buflen, "%s", s ? s : "");
    if (buf[0] == '\0')
        return 0;
    for (p = buf; n < max;) {
        out[n++] = p;
        p = strchr(p, sep);
        if (p == NULL)
            break;
        *p++ = '\0';
    }
    return n;
}

typedef struct req_storage {
    char gbuf[256], abuf[256], cbuf[512], tagbuf[16][128];
    char *groups[16], *attrs[16], *cols[16], *tags[16][8];
    pol_expr_attr attr[16];
    pol_column_request col[16];
} req_storage;

/* Returns 0, or -1 for a bad port name in the row.  No CUnit calls: the
 * thread test uses it too, and CUnit is not thread-safe. */
static int make_request(const row *r, req_storage *s, pol_request *req)
{
    size_t i, na, nc;

    memset(req, 0, sizeof(*req));
    req->subject.name = r->principal;
    req->subject.ngroups =
        split(r->groups, ',', s->gbuf, sizeof(s->gbuf), s->groups, 16);
    req->subject.groups = (const char *const *)s->groups;
    na = split(r->attrs, ';', s->abuf, sizeof(s->abuf), s->attrs, 16);
    for (i = 0; i < na; i++) {
        char *eq = strchr(s->attrs[i], '=');

        *eq = '\0';
        s->attr[i] = (pol_expr_attr){s->attrs[i], false, eq + 1, NULL, 0};
    }
    req->subject.attrs = s->attr;
    req->subject.nattrs = na;
    req->product = r->product;
    if (pol_port_from_name(r->port, &req->port) != 0)
        return -1;
    req->purpose = r->purpose;
    nc = split(r->columns, ',', s->cbuf, sizeof(s->cbuf), s->cols, 16);
    for (i = 0; i < nc; i++) {
        char *colon = strchr(s->cols[i], ':');

        s->col[i].name = s->cols[i];
        if (colon) {
            *colon = '\0';
            s->col[i].nclassifications =
                split(colon + 1, '|', s->tagbuf[i], sizeof(s->tagbuf[i]),
                      s->tags[i], 8);
            s->col[i].classifications = (const char *const *)s->tags[i];
        }
    }
    req->columns = s->col;
    req->ncolumns = nc;
    return 0;
}

static void test_semantic_table(void)
{
    pol_decision *d = pol_decision_new();
    size_t i, k;

    CU_ASSERT_FATAL(d != NULL);
    CU_ASSERT(sizeof(rows) / sizeof(rows[0]) >= 60);
    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const row *r = &rows[i];
        req_storage s;
        pol_request req;
        polis_error err = {0};
        const pol_rule_info *dr;
        char deciding[256] = "", masks[512] = "", why[1024];
        bool ok;
        int rc;

        memset(&s, 0, sizeof(s));
        CU_ASSERT_EQUAL(make_request(r, &s, &req), 0);
        rc = pol_decide(engine, &req, d, &err);
        dr = pol_decision_deciding_rule(d);
        if (dr)
            snprintf(deciding, sizeof(deciding), "%s/%s/%s", dr->scope,
                     dr->policy, dr->name);
        for (k = 0; k < pol_decision_column_count(d); k++) {
            const pol_mask *m = pol_decision_column_mask(d, k);

            if (m)
                snprintf(masks + strlen(masks), sizeof(masks) - strlen(masks),
                         "%s%s:%s", masks[0] ? "," : "",
                         pol_decision_column_name(d, k),
                         pol_mask_method_name(m->method));
        }
        ok = rc == 0 && pol_decision_allowed(d) == r->allowed &&
             strcmp(deciding, r->deciding ? r->deciding : "") == 0 &&
             strcmp(masks, r->masks) == 0 &&
             pol_decision_filter_count(d) == r->nfilters &&
             pol_decision_min_group_size(d) == r->min_group;
        if (!ok) {
            pol_decision_explain(d, why, sizeof(why));
            fprintf(stderr,
                    "\nrow %zu (%s %s %s %s): rc %d %s; allowed %d, "
                    "deciding \"%s\", masks \"%s\", filters %zu, min %lld\n"
                    "  %s\n",
                    i, r->principal, r->groups, r->product, r->port, rc,
                    err.message, pol_decision_allowed(d), deciding, masks,
                    pol_decision_filter_count(d),
                    (long long)pol_decision_min_group_size(d), why);
        }
        CU_ASSERT(ok);
        /* Invariants: a denial carries no obligations; the reason agrees. */
        if (!pol_decision_allowed(d)) {
            CU_ASSERT_EQUAL(pol_decision_column_count(d), 0);
            CU_ASSERT_EQUAL(pol_decision_filter_count(d), 0);
            CU_ASSERT_EQUAL(pol_decision_reason(d),
                            dr ? POL_REASON_DENIED : POL_REASON_DEFAULT_DENY);
        }
    }
    pol_decision_free(d);
}

/* ---- build errors ------------------------------------------------------- */

typedef struct build_error {
    const char *docs;
    int code;
    const char *where;
    const char *message;
} build_error;

#define R0(x)     POLICY("global", "p", "{`name`:`r`," x "}")
#define RS(x)     POLICY("sales", "p", "{`name`:`r`," x "}")
#define ALLOW_ALL "`effect`:`allow`,`subjects`:[`*`],`resources`:[`*`]"

static const build_error build_errors[] = {
    {"[" POLICY("global", "pii",
                "{`name`:`m`,`effect`:`mask`,`subjects`:[`*`],"
                "`resources`:[`*`],`mask`:{`method`:`sha1`,"
                "`columns`:[`email`]}}") "]",
     POLIS_EINVAL, "policy \"pii\": spec.rules[0].mask.method",
     "unknown method \"sha1\""},
    {"[" RS("`effect`:`allow`,`subjects`:[`*`],"
            "`resources`:[`sales/*`,`hr/salaries`]") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].resources[1]",
     "a policy of domain \"sales\" may only name products \"sales/...\", "
     "not \"hr/salaries\""},
    {"[" RS("`effect`:`deny`,`subjects`:[`*`],`resources`:[`*`]") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].resources[0]",
     "a policy of domain \"sales\" may only name products \"sales/...\", "
     "not \"*\""},
    {"[" RS("`effect`:`deny`,`subjects`:[`*`],`resources`:[`*/orders`]") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].resources[0]",
     "a policy of domain \"sales\" may only name products \"sales/...\", "
     "not \"*/orders\""},
    {"[" R0("`effect`:`permit`,`subjects`:[`*`],`resources`:[`*`]") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].effect",
     "unknown effect \"permit\" (allow, deny, mask, filter, aggregate)"},
    {"[" R0("`effect`:`allow`,`resources`:[`*`]") "]", POLIS_EINVAL,
     "policy \"p\": spec.rules[0].subjects", "is required"},
    {"[" R0("`effect`:`allow`,`subjects`:[],`resources`:[`*`]") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].subjects", "must not be empty"},
    {"[" R0("`effect`:`allow`,`subjects`:[`group:`],`resources`:[`*`]") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].subjects[0]",
     "invalid subject \"group:\" (a principal name, \"group:<name>\" or "
     "\"*\")"},
    {"[" R0(ALLOW_ALL ",`ports`:[`query`,`ftp`]") "]", POLIS_EINVAL,
     "policy \"p\": spec.rules[0].ports[1]",
     "unknown port \"ftp\" (query, file, event, http)"},
    {"[" POLICY("global", "p",
                "{`name`:`r`," ALLOW_ALL "},{`name`:`r`," ALLOW_ALL "}") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[1].name",
     "rule \"r\" is defined twice in the policy"},
    {"[" R0(ALLOW_ALL ",`subjetcs`:[`x`]") "]", POLIS_EINVAL,
     "policy \"p\": spec.rules[0].subjetcs", "unknown field \"subjetcs\""},
    {"[" R0(ALLOW_ALL ",`except`:{`subject`:[`x`]}") "]", POLIS_EINVAL,
     "policy \"p\": spec.rules[0].except.subject", "unknown field \"subject\""},
    {"[" R0("`effect`:`mask`,`subjects`:[`*`],`resources`:[`*`],"
            "`except`:{`subjects`:[`x`]},"
            "`mask`:{`method`:`hash`,`columns`:[`c`]}") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].except",
     "only allow and deny rules may have exceptions"},
    {"[" R0("`effect`:`mask`,`subjects`:[`*`],`resources`:[`*`],"
            "`mask`:{`method`:`hash`}") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].mask",
     "needs columns and/or classifications"},
    {"[" R0("`effect`:`mask`,`subjects`:[`*`],`resources`:[`*`],"
            "`classifications`:[`pii.*`],"
            "`mask`:{`method`:`hash`,`columns`:[`c`]}") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].classifications",
     "a mask rule chooses its columns with mask.columns and "
     "mask.classifications"},
    {"[" R0("`effect`:`mask`,`subjects`:[`*`],`resources`:[`*`],"
            "`mask`:{`method`:`show_last`,`columns`:[`c`],"
            "`params`:{`n`:`x`}}") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].mask.params.n",
     "must be an integer from 0 to 1024"},
    {"[" R0("`effect`:`mask`,`subjects`:[`*`],`resources`:[`*`]") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].mask",
     "is required when effect is mask"},
    {"[" R0(ALLOW_ALL ",`filter`:`a == 1`") "]", POLIS_EINVAL,
     "policy \"p\": spec.rules[0].filter",
     "only allowed when effect is filter"},
    {"[" R0("`effect`:`aggregate`,`subjects`:[`*`],`resources`:[`*`],"
            "`aggregate`:{`minGroupSize`:0}") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].aggregate.minGroupSize",
     "must be an integer from 1 to 10^9"},
    {"[" R0(ALLOW_ALL ",`when`:`subject.region ==`") "]", POLIS_EPARSE,
     "policy \"p\": spec.rules[0].when", NULL},
    {"[" R0(ALLOW_ALL ",`when`:`region == 'EU'`") "]", POLIS_EINVAL,
     "policy \"p\": spec.rules[0].when", NULL},
    {"[" PRODUCT("sales", "orders", "{`name`:`region`,`type`:`string`}") "," R0(
         "`effect`:`filter`,`subjects`:[`*`],`resources`:[`sales/*`],"
         "`filter`:`regio == subject.region`") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].filter",
     "product \"sales/orders\": col 1: unknown column \"regio\""},
    {"[" R0(ALLOW_ALL) "," R0(ALLOW_ALL) "]", POLIS_ECONFLICT,
     "policy \"p\": metadata.name",
     "policy \"p\" of scope \"global\" is defined twice"},
    {"[{`apiVersion`:`polis/v2`,`kind`:`Policy`,`metadata`:{`name`:`p`},"
     "`spec`:{`scope`:`global`,`rules`:[]}}]",
     POLIS_EINVAL, "policy \"p\": apiVersion", "must be \"polis/v1\""},
    {"[{`apiVersion`:`polis/v1`,`kind`:`Policy`,`metadata`:{},"
     "`spec`:{`scope`:`global`,`rules`:[]}}]",
     POLIS_EINVAL, "documents[0]: metadata.name", "must be a non-empty string"},
    {"[{`apiVersion`:`polis/v1`,`kind`:`Policy`,`metadata`:{`name`:`p`},"
     "`spec`:{`scope`:`sales/x`,`rules`:[]}}]",
     POLIS_EINVAL, "policy \"p\": spec.scope",
     "must be \"global\" or a domain name"},
    {"[" R0("`effect`:`allow`,`subjects`:[`*`],`resources`:[`sales`]") "]",
     POLIS_EINVAL, "policy \"p\": spec.rules[0].resources[0]",
     "invalid resource \"sales\" (\"domain/product\", globs allowed, or "
     "\"*\")"},
    {"[" PRODUCT("sales", "orders", "{`name`:`id`}") "," PRODUCT(
         "sales", "orders", "{`name`:`id`}") "]",
     POLIS_ECONFLICT, "dataproduct \"sales/orders\": metadata.name",
     "product \"sales/orders\" is defined twice"},
    {"[{`apiVersion`:`polis/v1`,`kind`:`DataProduct`,"
     "`metadata`:{`name`:`orders`},`spec`:{`schema`:[]}}]",
     POLIS_EINVAL, "dataproduct \"orders\": spec.domain",
     "must be a domain name without '/', '*' or '?'"},
    {"[" PRODUCT("sales", "orders", "{`name`:`id`},{`name`:`id`}") "]",
     POLIS_EINVAL, "dataproduct \"sales/orders\": spec.schema[1].name",
     "column \"id\" is defined twice"},
    {"[{`metadata`:{`name`:`x`}}]", POLIS_EINVAL, "documents[0]: kind",
     "is required"},
    {"{}", POLIS_EINVAL, "documents", "must be a list of documents"},
};

static void test_build_errors(void)
{
    size_t i;

    for (i = 0; i < sizeof(build_errors) / sizeof(build_errors[0]); i++) {
        const build_error *be = &build_errors[i];
        json_t *docs = J(be->docs);
        pol_engine *e = (pol_engine *)1;
        polis_error err = {0};
        int rc;

        CU_ASSERT_FATAL(docs != NULL);
        rc = pol_engine_build(docs, NULL, &e, &err);
        if (rc != be->code || strcmp(err.where, be->where) != 0 ||
            (be->message && strcmp(err.message, be->message) != 0))
            fprintf(stderr, "\nbuild error %zu: %d %s: %s\n", i, rc, err.where,
                    err.message);
        CU_ASSERT_EQUAL(rc, be->code);
        CU_ASSERT_STRING_EQUAL(err.where, be->where);
        if (be->message) {
            CU_ASSERT_STRING_EQUAL(err.message, be->message);
        } else {
            CU_ASSERT(strncmp(err.message, "col ", 4) == 0);
        }
        CU_ASSERT_PTR_NULL(e);
        json_decref(docs);
    }
}

/* ---- explanation, JSON, validation -------------------------------------- */

/* The decision borrows the request's column names: s must outlive it. */
static int decide_row(const row *r, req_storage *s, pol_decision *d)
{
    pol_request req;

    memset(s, 0, sizeof(*s));
    if (make_request(r, s, &req) != 0)
        return POLIS_EINVAL;
    return pol_decide(engine, &req, d, NULL);
}

static void test_explain(void)
{
    pol_decision *d = pol_decision_new();
    req_storage s;
    char buf[1024];
    size_t n;
    const row deny = {
        "nobody", "", "", "sales/orders", "query", NULL, "", 0, NULL, "", 0, 0};
    const row denied = {"carl",  "contractors",
                        "",      "sales/customers",
                        "query", NULL,
                        "",      0,
                        NULL,    "",
                        0,       0};
    const row allowed = {"ann",   "analysts", "region=EU", "sales/orders",
                         "query", NULL,       "",          0,
                         NULL,    "",         0,           0};

    /* A decision never decided reads as a default deny. */
    CU_ASSERT_FALSE(pol_decision_allowed(d));
    pol_decision_explain(d, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "denied: no rule allows (default deny)");
    CU_ASSERT_EQUAL(decide_row(&deny, &s, d), 0);
    pol_decision_explain(d, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "denied: no rule allows (default deny)");

    CU_ASSERT_EQUAL(decide_row(&denied, &s, d), 0);
    pol_decision_explain(d, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "denied by global/base/deny-contractors-pii "
                                "(subject group:contractors, column name "
                                "classified pii.name)");

    CU_ASSERT_EQUAL(decide_row(&allowed, &s, d), 0);
    n = pol_decision_explain(d, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(
        buf, "allowed by global/base/allow-analysts (subject group:analysts)"
             "; column card masked (show_last) by global/pii/mask-pan "
             "(classification pci.pan)"
             "; rows filtered by global/rows/eu-filter: region == "
             "subject.region"
             "; minimum group size 20 by sales/sales-local/agg-sales");
    CU_ASSERT_EQUAL(n, strlen(buf));
    /* Truncation: snprintf-style length, always terminated. */
    CU_ASSERT_EQUAL(pol_decision_explain(d, buf, 10), n);
    CU_ASSERT_EQUAL(strlen(buf), 9);
    /* Every matched rule is listed: allow, mask, 2 filters... */
    CU_ASSERT_EQUAL(pol_decision_matched_count(d), 5);
    CU_ASSERT_STRING_EQUAL(pol_decision_matched(d, 0)->name, "allow-analysts");
    CU_ASSERT_STRING_EQUAL(pol_decision_aggregate_rule(d)->name, "agg-sales");
    CU_ASSERT_STRING_EQUAL(pol_decision_filter_rule(d, 0)->filter,
                           "region == subject.region");
    pol_decision_free(d);
}

static void test_json(void)
{
    pol_decision *d = pol_decision_new();
    const row r = {"ann",   "analysts", "region=EU", "sales/customers",
                   "query", NULL,       "id,email",  0,
                   NULL,    "",         0,           0};
    json_t *j, *cols, *email;
    req_storage s;

    CU_ASSERT_EQUAL(decide_row(&r, &s, d), 0);
    j = pol_decision_to_json(d);
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT(json_is_true(json_object_get(j, "allowed")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "reason")),
                           "allowed");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(
                               json_object_get(j, "deciding"), "rule")),
                           "allow-analysts");
    cols = json_object_get(j, "columns");
    CU_ASSERT_EQUAL(json_array_size(cols), 2);
    CU_ASSERT_PTR_NULL(json_object_get(json_array_get(cols, 0), "mask"));
    email = json_array_get(cols, 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(
                               json_object_get(email, "mask"), "method")),
                           "hash");
    CU_ASSERT_STRING_EQUAL(
        json_string_value(json_object_get(email, "classification")),
        "pii.email");
    CU_ASSERT_STRING_EQUAL(
        json_string_value(json_object_get(
            json_array_get(json_object_get(j, "filters"), 0), "expression")),
        "region == subject.region");
    /* allow, hash, filter, and the weaker email mask that lost */
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "matched")), 4);
    json_decref(j);
    pol_decision_free(d);
}

static void test_validate(void)
{
    polis_error err = {0};
    json_t *ok = J(POLICY("global", "p",
                          "{`name`:`f`,`effect`:`filter`,`subjects`:[`*`],"
                          "`resources`:[`*`],`filter`:`any_column == 1`}"));
    json_t *bad = J(POLICY("sales", "p",
                           "{`name`:`r`,`effect`:`allow`,`subjects`:[`*`],"
                           "`resources`:[`hr/*`]}"));
    json_t *notpolicy = J(PRODUCT("sales", "x", ""));

    /* Alone, a filter is parsed but its columns are not known yet. */
    CU_ASSERT_EQUAL(pol_policy_validate(ok, &err), 0);
    CU_ASSERT_EQUAL(pol_policy_validate(bad, &err), POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where,
                           "policy \"p\": spec.rules[0].resources[0]");
    CU_ASSERT_EQUAL(pol_policy_validate(notpolicy, &err), POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where, "kind");
    json_decref(ok);
    json_decref(bad);
    json_decref(notpolicy);
}

/* A Policy without spec.scope is global (the control plane's default). */
static void test_scope_defaults_to_global(void)
{
    json_t *docs = json_array();
    pol_engine *e = NULL;
    pol_decision *d = pol_decision_new();
    pol_request req = {
        {"ann", NULL, 0, NULL, 0}, "hr/x", POL_PORT_QUERY, NULL, NULL, 0};

    json_array_append_new(
        docs, J("{`apiVersion`:`polis/v1`,`kind`:`Policy`,"
                "`metadata`:{`name`:`p`},`spec`:{`rules`:[{`name`:`r`,"
                "`effect`:`allow`,`subjects`:[`ann`],`resources`:[`*`]}]}}"));
    CU_ASSERT_EQUAL_FATAL(pol_engine_build(docs, NULL, &e, NULL), 0);
    CU_ASSERT_EQUAL(pol_decide(e, &req, d, NULL), 0);
    CU_ASSERT_TRUE(pol_decision_allowed(d));
    CU_ASSERT_STRING_EQUAL(pol_decision_deciding_rule(d)->scope, "global");
    pol_decision_free(d);
    pol_engine_free(e);
    json_decref(docs);
}

static void test_decide_errors(void)
{
    pol_decision *d = pol_decision_new();
    polis_error err = {0};
    pol_request req = {0};
    pol_column_request col = {"nope", NULL, 0};
    const char *groups[] = {"analysts"};
    pol_expr_attr attr = {"region", false, "EU", NULL, 0};

    req.subject.name = "ann";
    req.subject.groups = groups;
    req.subject.ngroups = 1;
    req.subject.attrs = &attr;
    req.subject.nattrs = 1;
    req.port = POL_PORT_QUERY;
    /* No product. */
    CU_ASSERT_EQUAL(pol_decide(engine, &req, d, &err), POLIS_EINVAL);
    CU_ASSERT_FALSE(pol_decision_allowed(d));
    /* A column the product does not have, without classifications. */
    req.product = "sales/orders";
    req.columns = &col;
    req.ncolumns = 1;
    CU_ASSERT_EQUAL(pol_decide(engine, &req, d, &err), POLIS_ENOTFOUND);
    CU_ASSERT_STRING_EQUAL(err.message, "no column \"nope\"");
    CU_ASSERT_FALSE(pol_decision_allowed(d));
    /* An unknown product: the filter was checked against the products of
     * sales/ that the engine knows, so it applies as it is. */
    req.product = "sales/returns";
    col.classifications = groups;
    col.nclassifications = 0;
    CU_ASSERT_EQUAL(pol_decide(engine, &req, d, &err), 0);
    CU_ASSERT_TRUE(pol_decision_allowed(d));
    CU_ASSERT_EQUAL(pol_decision_filter_count(d), 1);
    /* A column filter never checked against any schema: refused. */
    {
        json_t *docs = json_array();
        pol_engine *e = NULL;

        json_array_append_new(
            docs, J(POLICY("global", "p",
                           "{`name`:`a`,`effect`:`allow`,`subjects`:[`*`],"
                           "`resources`:[`*`]},"
                           "{`name`:`f`,`effect`:`filter`,`subjects`:[`*`],"
                           "`resources`:[`*`],`filter`:`region == 'EU'`}")));
        CU_ASSERT_EQUAL_FATAL(pol_engine_build(docs, NULL, &e, &err), 0);
        CU_ASSERT_EQUAL(pol_decide(e, &req, d, &err), POLIS_EINVAL);
        CU_ASSERT_FALSE(pol_decision_allowed(d));
        CU_ASSERT_EQUAL(pol_decision_filter_count(d), 0);
        pol_engine_free(e);
        json_decref(docs);
    }
    /* Too many groups. */
    req.product = "sales/orders";
    req.subject.ngroups = POL_MAX_GROUPS + 1;
    CU_ASSERT_EQUAL(pol_decide(engine, &req, d, &err), POLIS_ETOOBIG);
    pol_decision_free(d);
}

/* The filters of a decision evaluate on rows and render to SQL. */
static int row_value(void *rowp, int column_id, const char *name,
                     pol_expr_value *out)
{
    const char *region = rowp;

    (void)column_id;
    if (strcmp(name, "region") != 0)
        return POLIS_EINVAL;
    out->type = POL_EXPR_STRING;
    out->u.str = region;
    out->len = strlen(region);
    return 0;
}

static void test_filters_evaluate(void)
{
    pol_decision *d = pol_decision_new();
    const char *groups[] = {"analysts"};
    pol_expr_attr attr = {"region", false, "EU", NULL, 0};
    pol_column_request col = {"region", NULL, 0};
    pol_request req = {{"ann", groups, 1, &attr, 1},
                       "sales/customers",
                       POL_PORT_QUERY,
                       NULL,
                       &col,
                       1};
    pol_expr_sql sql = {0};
    pol_expr_sql_opts opts = {POL_SQL_SQLITE, NULL, 0};
    bool matched = false;

    CU_ASSERT_EQUAL_FATAL(pol_decide(engine, &req, d, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(pol_decision_filter_count(d), 1);
    CU_ASSERT_EQUAL(pol_expr_matches(pol_decision_filters(d), 1, row_value,
                                     (void *)"EU", &req.subject, NULL, &matched,
                                     NULL),
                    0);
    CU_ASSERT_TRUE(matched);
    CU_ASSERT_EQUAL(pol_expr_matches(pol_decision_filters(d), 1, row_value,
                                     (void *)"US", &req.subject, NULL, &matched,
                                     NULL),
                    0);
    CU_ASSERT_FALSE(matched);
    CU_ASSERT_EQUAL(pol_expr_to_sql(pol_decision_filters(d), 1, &opts,
                                    &req.subject, NULL, &sql, NULL),
                    0);
    CU_ASSERT(sql.text && strstr(sql.text, "\"region\"") != NULL);
    CU_ASSERT_EQUAL(sql.nparams, 1);
    pol_expr_sql_free(&sql);
    pol_decision_free(d);
}

static void test_hash_key_from_options(void)
{
    const pol_mask_key *k = pol_engine_mask_key(engine);
    pol_mask_key expect;

    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    pol_mask_key_init(&expect, "test-key", 8);
    CU_ASSERT_EQUAL(memcmp(k, &expect, sizeof(expect)), 0);
    CU_ASSERT_EQUAL(pol_engine_product_count(engine), 4);
    CU_ASSERT_EQUAL(pol_engine_rule_count(engine), 34);
}

/* One engine shared by several threads, each with its own decision, gives
 * every thread the table's answers. */
static void *table_worker(void *arg)
{
    pol_decision *d = pol_decision_new();
    size_t *mismatches = arg, i, round;

    for (round = 0; d && round < 50; round++) {
        for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
            req_storage s;
            pol_request req;
            const pol_rule_info *dr;
            char deciding[256] = "";

            memset(&s, 0, sizeof(s));
            if (make_request(&rows[i], &s, &req) != 0 ||
                pol_decide(engine, &req, d, NULL) != 0) {
                (*mismatches)++;
                continue;
            }
            dr = pol_decision_deciding_rule(d);
            if (dr)
                snprintf(deciding, sizeof(deciding), "%s/%s/%s", dr->scope,
                         dr->policy, dr->name);
            if (pol_decision_allowed(d) != rows[i].allowed ||
                strcmp(deciding, rows[i].deciding ? rows[i].deciding : "") !=
                    0 ||
                pol_decision_filter_count(d) != rows[i].nfilters)
                (*mismatches)++;
        }
    }
    pol_decision_free(d);
    return NULL;
}

static void test_shared_between_threads(void)
{
    pthread_t t[4];
    size_t mismatches[4] = {0}, i;

    for (i = 0; i < 4; i++)
        CU_ASSERT_EQUAL_FATAL(
            pthread_create(&t[i], NULL, table_worker, &mismatches[i]), 0);
    for (i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(mismatches[i], 0);
    }
}

static const test_case policy_cases[] = {
    {"semantic_table", test_semantic_table},
    {"build_errors", test_build_errors},
    {"explain", test_explain},
    {"json", test_json},
    {"validate", test_validate},
    {"scope_defaults_to_global", test_scope_defaults_to_global},
    {"decide_errors", test_decide_errors},
    {"filters_evaluate", test_filters_evaluate},
    {"hash_key_from_options", test_hash_key_from_options},
    {"shared_between_threads", test_shared_between_threads},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"policy", suite_init, suite_cleanup, policy_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
