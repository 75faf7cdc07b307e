/*
 * test_resource.c — the resource model and its validation
 * (common/resource.h): every kind, every error message as a user reads it,
 * whole-apply checks, canonical JSON, etcd keys, and the shipped examples.
 */
#include "common/document.h"
#include "common/resource.h"
#include "policy/policy.h"
#include "tests/support/testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ENVELOPE "apiVersion: polis/v1\n"

static const char domain_yaml[] = ENVELOPE "kind: Domain\n"
                                           "metadata:\n"
                                           "  name: sales\n"
                                           "spec:\n"
                                           "  owners: [sales@example.com]\n";

static const char product_yaml[] =
    ENVELOPE "kind: DataProduct\n"
             "metadata: {name: orders, labels: {tier: gold}}\n"
             "spec:\n"
             "  domain: sales\n"
             "  ports:\n"
             "    - {name: sql, type: query, engine: sqlite,"
             " database: /data/orders.db, table: orders}\n"
             "    - {name: pg, type: query, engine: postgresql,"
             " dsn: 'host=db dbname=sales', table: orders}\n"
             "    - {name: files, type: file, directory: /data/out}\n"
             "    - {name: stream, type: event, retentionBytes: 1000,"
             " retentionHours: 24, fsync: always}\n"
             "    - {name: api, type: http, upstream: 'https://x:8443/v1'}\n"
             "    - {name: pg2, type: query, engine: postgresql,"
             " dsn: \"host = db port=5433 dbname='sales x'\","
             " ownerUser: sales_owner, queryUser: sales_query, table: orders}\n"
             "  schema:\n"
             "    - {name: order_id, type: integer}\n"
             "    - {name: email, type: string,"
             " classification: [pii.email]}\n"
             "    - {name: amount, type: decimal}\n"
             "    - {name: paid, type: boolean}\n"
             "    - {name: day, type: date}\n"
             "    - {name: at, type: timestamp}\n"
             "  sla: {freshness: 1h30m}\n"
             "  purposes: [analytics]\n"
             "  derivedFrom: [crm/customers]\n";

/* Parse YAML text into its first document (caller json_decref's). */
static json_t *doc_of(const char *yaml)
{
    polis_error err = {0};
    json_t *docs = NULL, *doc;

    if (doc_parse("test.yaml", yaml, strlen(yaml), 0, &docs, &err) != 0) {
        fprintf(stderr, "bad test YAML: %s %s\n", err.where, err.message);
        return NULL;
    }
    doc = json_incref(json_array_get(docs, 0));
    json_decref(docs);
    return doc;
}

static void expect_valid(const char *yaml, res_kind kind, const char *scope,
                         const char *name)
{
    json_t *doc = doc_of(yaml);
    polis_error err = {0};
    res_info info;
    char buf[1100];
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    rc = res_validate(doc, "ok.yaml", &info, &err);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc != 0)
        fprintf(stderr, "\n  unexpected: %s\n",
                polis_error_format(&err, buf, sizeof(buf)));
    else {
        CU_ASSERT_EQUAL(info.kind, kind);
        CU_ASSERT_STRING_EQUAL(info.scope, scope);
        CU_ASSERT_STRING_EQUAL(info.name, name);
    }
    json_decref(doc);
}

/* Validating the YAML as "orders.yaml" must fail with exactly `expected`. */
static void expect_error(const char *yaml, const char *expected)
{
    json_t *doc = doc_of(yaml);
    polis_error err = {0};
    char buf[1100];

    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    CU_ASSERT_EQUAL(res_validate(doc, "orders.yaml", NULL, &err), POLIS_EINVAL);
    polis_error_format(&err, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, expected);
    if (strcmp(buf, expected) != 0)
        fprintf(stderr, "\n  got:      %s\n  expected: %s\n", buf, expected);
    json_decref(doc);
}

/* product_yaml with one line replaced (the test's subject). */
static char *product_with(const char *find, const char *replace)
{
    const char *at = strstr(product_yaml, find);
    size_t total = strlen(product_yaml) - strlen(find) + strlen(replace);
    char *s = malloc(total + 1);

    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    memcpy(s, product_yaml, (size_t)(at - product_yaml));
    strcpy(s + (at - product_yaml), replace);
    strcat(s, at + strlen(find));
    return s;
}

static void expect_product_error(const char *find, const char *replace,
                                 const char *expected)
{
    char *yaml = product_with(find, replace);

    expect_error(yaml, expected);
    free(yaml);
}

/* ---- every kind, valid ------------------------------------------------- */

static void test_valid_domain(void)
{
    expect_valid(domain_yaml, RES_DOMAIN, "global", "sales");
    expect_valid(ENVELOPE "kind: Domain\n"
                          "metadata: {name: crm-2, description: x,"
                          " labels: {team.name: crm}}\n"
                          "spec: {owners: ['group:crm', a@b.c],"
                          " description: CRM}\n",
                 RES_DOMAIN, "global", "crm-2");
}

static void test_valid_dataproduct(void)
{
    expect_valid(product_yaml, RES_DATAPRODUCT, "sales", "orders");
    /* Only the domain is required. */
    expect_valid(ENVELOPE "kind: DataProduct\nmetadata: {name: p}\n"
                          "spec: {domain: d}\n",
                 RES_DATAPRODUCT, "d", "p");
}

static void test_valid_policy(void)
{
    expect_valid(ENVELOPE "kind: Policy\n"
                          "metadata: {name: deny-pii}\n"
                          "spec:\n"
                          "  description: x\n"
                          "  rules:\n"
                          "    - name: r1\n"
                          "      effect: deny\n"
                          "      anything: {the: engine checks this}\n",
                 RES_POLICY, "global", "deny-pii");
    expect_valid(ENVELOPE "kind: Policy\n"
                          "metadata: {name: eu}\n"
                          "spec: {scope: sales, rules: [{name: a,"
                          " effect: allow}]}\n",
                 RES_POLICY, "sales", "eu");
    expect_valid(ENVELOPE "kind: Policy\n"
                          "metadata: {name: g}\n"
                          "spec: {scope: global, rules: [{name: a,"
                          " effect: allow}]}\n",
                 RES_POLICY, "global", "g");
}

static void test_valid_principal(void)
{
    expect_valid(ENVELOPE
                 "kind: Principal\n"
                 "metadata: {name: alice}\n"
                 "spec:\n"
                 "  groups: [analysts, Data-Team]\n"
                 "  attributes: {region: EU, cost_center: '42',"
                 " regions: [EU, EEA]}\n"
                 "  credentials:\n"
                 "    tokenSha256: [9c220f200955d76c0a38d308225e0ef10c5f971a"
                 "caf2f8d1d8f732affa5bd1dc]\n"
                 "    certificates: ['CN=alice,O=Example']\n",
                 RES_PRINCIPAL, "global", "alice");
    expect_valid(ENVELOPE "kind: Principal\nmetadata: {name: etl-job}\n"
                          "spec: {}\n",
                 RES_PRINCIPAL, "global", "etl-job");
}

/* ---- the envelope ------------------------------------------------------ */

static void test_envelope_errors(void)
{
    expect_error("apiVersion: polis/v2\nkind: Domain\nmetadata: {name: a}\n"
                 "spec: {owners: [x]}\n",
                 "orders.yaml: apiVersion: unsupported version \"polis/v2\" "
                 "(expected polis/v1)");
    expect_error("kind: Domain\nmetadata: {name: a}\nspec: {owners: [x]}\n",
                 "orders.yaml: apiVersion: missing required field");
    expect_error(ENVELOPE "kind: Table\nmetadata: {name: a}\nspec: {}\n",
                 "orders.yaml: kind: unknown kind \"Table\" (expected one "
                 "of: Domain, DataProduct, Policy, Principal)");
    expect_error(ENVELOPE "kind: dataproduct\nmetadata: {name: a}\n"
                          "spec: {}\n",
                 "orders.yaml: kind: unknown kind \"dataproduct\" (did you "
                 "mean DataProduct?)");
    expect_error(ENVELOPE "kind: 3\nmetadata: {name: a}\nspec: {}\n",
                 "orders.yaml: kind: must be a string, not an integer");
    expect_error(ENVELOPE "kind: Domain\nspec: {owners: [x]}\n",
                 "orders.yaml: metadata: missing required field");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {labels: {}}\n"
                          "spec: {owners: [x]}\n",
                 "orders.yaml: metadata.name: missing required field");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a}\n",
                 "orders.yaml: spec: missing required field");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a}\nspec: [x]\n",
                 "orders.yaml: spec: must be a mapping, not a list");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a}\n"
                          "spec: {owners: [x]}\nstatus: {}\n",
                 "orders.yaml: status: unknown field (allowed: apiVersion, "
                 "kind, metadata, spec)");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a, nmae: b}\n"
                          "spec: {owners: [x]}\n",
                 "orders.yaml: metadata.nmae: unknown field (allowed: name, "
                 "labels, description)");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a,"
                          " labels: {tier: 1}}\nspec: {owners: [x]}\n",
                 "orders.yaml: metadata.labels.tier: must be a string, not "
                 "an integer (quote it)");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: global}\n"
                          "spec: {owners: [x]}\n",
                 "orders.yaml: metadata.name: \"global\" is reserved for the "
                 "global scope");
}

static void test_name_rules(void)
{
    static const char *const bad[] = {
        "Sales",
        "1sales",
        "sales-",
        "sa_les",
        "sa.les",
        "-a",
        "a234567890123456789012345678901234567890123456789012345678901234",
        NULL};
    char yaml[512], expected[512];

    for (const char *const *n = bad; *n; n++) {
        snprintf(yaml, sizeof(yaml),
                 ENVELOPE "kind: Domain\nmetadata: {name: '%s'}\n"
                          "spec: {owners: [x]}\n",
                 *n);
        snprintf(expected, sizeof(expected),
                 "orders.yaml: metadata.name: invalid name \"%s\": use 1-63 "
                 "lowercase letters, digits and '-', starting with a letter "
                 "and not ending with '-'",
                 *n);
        expect_error(yaml, expected);
    }
    expect_valid(ENVELOPE "kind: Domain\nmetadata: {name: a23456789012345678"
                          "901234567890123456789012345678901234567890123}\n"
                          "spec: {owners: [x]}\n",
                 RES_DOMAIN, "global",
                 "a23456789012345678901234567890123456789012345678901234567890"
                 "123");
}

static void test_not_a_mapping_and_no_source(void)
{
    json_t *arr = json_array();
    json_t *doc = doc_of(ENVELOPE "kind: Domain\nmetadata: {name: a}\n"
                                  "spec: {owners: []}\n");
    polis_error err = {0};
    char buf[512];

    CU_ASSERT_EQUAL(res_validate(arr, "x.json", NULL, &err), POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(polis_error_format(&err, buf, sizeof(buf)),
                           "x.json: document must be a mapping, not a list");
    CU_ASSERT_EQUAL(res_validate(doc, NULL, NULL, &err), POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(polis_error_format(&err, buf, sizeof(buf)),
                           "spec.owners: must not be empty");
    json_decref(arr);
    json_decref(doc);
}

/* ---- per kind ---------------------------------------------------------- */

static void test_domain_errors(void)
{
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a}\nspec: {}\n",
                 "orders.yaml: spec.owners: missing required field");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a}\n"
                          "spec: {owners: [x, 5]}\n",
                 "orders.yaml: spec.owners[1]: must be a string, not an "
                 "integer");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a}\n"
                          "spec: {owners: [x, x]}\n",
                 "orders.yaml: spec.owners[1]: duplicate value \"x\" (also "
                 "spec.owners[0])");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a}\n"
                          "spec: {owners: x}\n",
                 "orders.yaml: spec.owners: must be a list, not a string");
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: a}\n"
                          "spec: {owners: [x], owner: y}\n",
                 "orders.yaml: spec.owner: unknown field (allowed: owners, "
                 "description)");
}

static void test_schema_type_error(void)
{
    expect_product_error("{name: paid, type: boolean}",
                         "{name: paid, type: strng}",
                         "orders.yaml: spec.schema[3].type: unknown type "
                         "\"strng\" (expected one of: string, integer, "
                         "decimal, boolean, date, timestamp)");
}

static void test_schema_errors(void)
{
    expect_product_error("{name: paid, type: boolean}",
                         "{name: Email, type: boolean}",
                         "orders.yaml: spec.schema[3].name: duplicate column "
                         "\"Email\" (also spec.schema[1])");
    expect_product_error("{name: paid, type: boolean}",
                         "{name: 'paid at', type: boolean}",
                         "orders.yaml: spec.schema[3].name: invalid column "
                         "name \"paid at\": use letters, digits and '_', not "
                         "starting with a digit");
    expect_product_error("{name: paid, type: boolean}", "{type: boolean}",
                         "orders.yaml: spec.schema[3].name: missing required "
                         "field");
    expect_product_error("classification: [pii.email]",
                         "classification: [PII.Email]",
                         "orders.yaml: spec.schema[1].classification[0]: "
                         "invalid value \"PII.Email\": use lowercase "
                         "dot-separated words like pii.email");
    expect_product_error("classification: [pii.email]",
                         "classification: pii.email",
                         "orders.yaml: spec.schema[1].classification: must "
                         "be a list, not a string");
    expect_product_error("{name: paid, type: boolean}",
                         "{name: paid, type: boolean, pii: true}",
                         "orders.yaml: spec.schema[3].pii: unknown field "
                         "(allowed: name, type, classification, "
                         "description)");
    expect_product_error("{name: paid, type: boolean}", "paid",
                         "orders.yaml: spec.schema[3]: must be a mapping, not "
                         "a string");
}

static void test_port_errors(void)
{
    expect_product_error("{name: files, type: file, directory: /data/out}",
                         "{name: files, type: ftp}",
                         "orders.yaml: spec.ports[2].type: unknown port type "
                         "\"ftp\" (expected one of: query, file, event, "
                         "http)");
    expect_product_error("{name: files, type: file, directory: /data/out}",
                         "{name: files, type: file}",
                         "orders.yaml: spec.ports[2].directory: missing "
                         "required field");
    expect_product_error("{name: files, type: file, directory: /data/out}",
                         "{name: files, type: file, directory: /d,"
                         " format: xml}",
                         "orders.yaml: spec.ports[2].format: unknown format "
                         "\"xml\" (expected one of: csv, jsonl)");
    expect_product_error("{name: files, type: file, directory: /data/out}",
                         "{name: sql, type: file, directory: /d}",
                         "orders.yaml: spec.ports[2].name: duplicate port "
                         "\"sql\" (also spec.ports[0])");
    expect_product_error("{name: files, type: file, directory: /data/out}",
                         "{name: files, type: file, directory: /d,"
                         " table: x}",
                         "orders.yaml: spec.ports[2].table: unknown field "
                         "(allowed: name, type, description, directory, "
                         "format)");
    expect_product_error("engine: sqlite, database: /data/orders.db",
                         "engine: sqlite, dsn: x",
                         "orders.yaml: spec.ports[0].database: missing "
                         "required field");
    expect_product_error("database: /data/orders.db,",
                         "database: /data/orders.db, dsn: x,",
                         "orders.yaml: spec.ports[0].dsn: not used with "
                         "engine sqlite (use database)");
    expect_product_error("engine: sqlite", "engine: mysql",
                         "orders.yaml: spec.ports[0].engine: unknown engine "
                         "\"mysql\" (expected one of: sqlite, postgresql)");
    expect_product_error("dsn: 'host=db dbname=sales', table: orders",
                         "dsn: 'host=db', table: 'orders; drop'",
                         "orders.yaml: spec.ports[1].table: invalid table "
                         "\"orders; drop\": use letters, digits and '_', not "
                         "starting with a digit");
    expect_product_error("dsn: 'host=db dbname=sales'",
                         "dsn: 'host=db password=hunter2 dbname=sales'",
                         "orders.yaml: spec.ports[1].dsn: no password in a "
                         "resource: the sidecar reads it from its passfile "
                         "(PGPASSFILE or ~/.pgpass)");
    expect_product_error("dsn: 'host=db dbname=sales'",
                         "dsn: \"host=db PassWord = 'a b\\\\' c'\"",
                         "orders.yaml: spec.ports[1].dsn: no password in a "
                         "resource: the sidecar reads it from its passfile "
                         "(PGPASSFILE or ~/.pgpass)");
    expect_product_error("dsn: 'host=db dbname=sales'",
                         "dsn: \"host=db application_name='x user=y' "
                         "user=postgres\"",
                         "orders.yaml: spec.ports[1].dsn: no user in the dsn: "
                         "name the roles with ownerUser and queryUser");
    expect_product_error("dsn: 'host=db dbname=sales'",
                         "dsn: 'postgresql://u:pw@db/sales'",
                         "orders.yaml: spec.ports[1].dsn: use the "
                         "keyword=value form (host=db dbname=sales), not a "
                         "URI");
    expect_product_error("dsn: 'host=db dbname=sales'", "dsn: 'host=db sales'",
                         "orders.yaml: spec.ports[1].dsn: not a libpq "
                         "connection string: expected keyword=value at "
                         "\"\"");
    expect_product_error("dsn: 'host=db dbname=sales'",
                         "dsn: \"host='db dbname=sales\"",
                         "orders.yaml: spec.ports[1].dsn: unterminated quoted "
                         "value of host");
    expect_product_error("dsn: 'host=db dbname=sales',",
                         "dsn: 'host=db dbname=sales', ownerUser: \"a b\",",
                         "orders.yaml: spec.ports[1].ownerUser: invalid role "
                         "\"a b\": use letters, digits and '_', not "
                         "starting with a digit");
    expect_product_error("dsn: 'host=db dbname=sales',",
                         "dsn: 'host=db dbname=sales', queryUser: polis_owner,",
                         "orders.yaml: spec.ports[1].queryUser: the query "
                         "role must not be the owner role");
    expect_product_error("database: /data/orders.db,",
                         "database: /data/orders.db, queryUser: q,",
                         "orders.yaml: spec.ports[0].queryUser: not used "
                         "with engine sqlite");
    expect_product_error("retentionBytes: 1000", "retentionBytes: -1",
                         "orders.yaml: spec.ports[3].retentionBytes: must be "
                         "greater than 0");
    expect_product_error("retentionHours: 24", "retentionHours: 1.5",
                         "orders.yaml: spec.ports[3].retentionHours: must be "
                         "an integer, not a number");
    expect_product_error("fsync: always", "fsync: sometimes",
                         "orders.yaml: spec.ports[3].fsync: unknown fsync "
                         "mode \"sometimes\" (expected one of: always, "
                         "batch, never)");
    expect_product_error("upstream: 'https://x:8443/v1'", "upstream: 'ftp://x'",
                         "orders.yaml: spec.ports[4].upstream: invalid URL "
                         "\"ftp://x\": use http://host[:port][/path] or "
                         "https://...");
    expect_product_error("{name: sql, type: query,", "{name: SQL, type: query,",
                         "orders.yaml: spec.ports[0].name: invalid name "
                         "\"SQL\": use 1-63 lowercase letters, digits and "
                         "'-', starting with a letter and not ending with "
                         "'-'");
}

/* The event port's MQTT bridge: plain and TLS brokers, a named login. */
#define STREAM "retentionHours: 24, fsync: always}"
#define AT     "orders.yaml: spec.ports[3].mqtt."
#define NAME_RULE_                                                             \
    "use 1-63 lowercase letters, digits and '-', starting "                    \
    "with a letter and not ending with '-'"
#define BAD_BROKER "\": use mqtt://host[:port] or mqtts://host[:port] (TLS)"
#define BAD_CREDENTIALS                                                        \
    AT "credentials: invalid credentials name (not repeated here: it may "     \
       "be a login): " NAME_RULE_ "; it names a file of the sidecar's "        \
       "--mqtt-credentials-dir"
static void test_mqtt_settings(void)
{
    static const char *const valid[] = {
        "broker: 'mqtt://broker:1883', topic: a/b, audience: partner",
        "broker: 'mqtts://broker.example.com', topic: a/b, audience: partner,"
        " qos: 0",
        "broker: 'mqtts://10.0.0.7:8883', topic: a/b, audience: partner,"
        " credentials: partner-broker",
        "broker: 'mqtt://b', topic: a, audience: p, credentials: b2",
    };
    /* The setting, and the error it must give. */
    static const char *const invalid[][2] = {
        {"broker: 'tcp://b:1883', topic: a, audience: p",
         AT "broker: invalid broker \"tcp://b:1883" BAD_BROKER},
        {"broker: 'mqtts://b:0', topic: a, audience: p",
         AT "broker: invalid broker \"mqtts://b:0" BAD_BROKER},
        {"broker: 'mqtts://', topic: a, audience: p",
         AT "broker: invalid broker \"mqtts://" BAD_BROKER},
        /* A login in the URL is refused without being repeated. */
        {"broker: 'mqtts://bob:s3cret@b:8883', topic: a, audience: p",
         AT "broker: no credentials in a resource: name a file of the "
            "sidecar's --mqtt-credentials-dir with `credentials`"},
        {"broker: 'mqtts://b', topic: a, audience: p, credentials: 'bob:pw'",
         BAD_CREDENTIALS},
        {"broker: 'mqtts://b', topic: a, audience: p, credentials: ../etc",
         BAD_CREDENTIALS},
        {"broker: 'mqtts://b', topic: a, audience: p, credentials: [x]",
         AT "credentials: must be a string, not a list"},
        {"broker: 'mqtts://b', topic: a, audience: p, password: x",
         AT "password: unknown field (allowed: broker, topic, audience, "
            "credentials, qos)"},
        {"broker: 'mqtts://b', topic: 'a/#', audience: p",
         AT "topic: invalid topic \"a/#\": no '+' or '#' wildcards, no "
            "control characters, not starting with '$'"},
        {"broker: 'mqtts://b', topic: a, audience: p, qos: 2",
         AT "qos: must be 0 or 1"},
    };
    char line[512];

    for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        char *yaml;
        snprintf(line, sizeof(line),
                 "retentionHours: 24, fsync: always, mqtt: {%s}}", valid[i]);
        yaml = product_with(STREAM, line);
        expect_valid(yaml, RES_DATAPRODUCT, "sales", "orders");
        free(yaml);
    }
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        snprintf(line, sizeof(line), "retentionHours: 24, mqtt: {%s}}",
                 invalid[i][0]);
        expect_product_error(STREAM, line, invalid[i][1]);
    }
}

static void test_product_other_errors(void)
{
    expect_product_error("  domain: sales\n", "",
                         "orders.yaml: spec.domain: missing required field");
    expect_product_error("  domain: sales\n", "  domain: Sales\n",
                         "orders.yaml: spec.domain: invalid domain name "
                         "\"Sales\": use 1-63 lowercase letters, digits and "
                         "'-', starting with a letter and not ending with "
                         "'-'");
    expect_product_error("freshness: 1h30m", "freshness: 24hours",
                         "orders.yaml: spec.sla.freshness: invalid duration "
                         "\"24hours\" (use e.g. 30m, 24h, 7d, 1h30m)");
    expect_product_error("freshness: 1h30m", "freshness: 0h",
                         "orders.yaml: spec.sla.freshness: invalid duration "
                         "\"0h\" (use e.g. 30m, 24h, 7d, 1h30m)");
    expect_product_error("sla: {freshness: 1h30m}",
                         "sla: {freshness: 1h, uptime: 99}",
                         "orders.yaml: spec.sla.uptime: unknown field "
                         "(allowed: freshness)");
    expect_product_error("derivedFrom: [crm/customers]",
                         "derivedFrom: [customers]",
                         "orders.yaml: spec.derivedFrom[0]: invalid value "
                         "\"customers\": use <domain>/<product>");
    expect_product_error("derivedFrom: [crm/customers]",
                         "derivedFrom: [crm/customers, sales/orders]",
                         "orders.yaml: spec.derivedFrom[1]: a data product "
                         "cannot derive from itself");
    expect_product_error("purposes: [analytics]",
                         "purposes: [analytics, analytics]",
                         "orders.yaml: spec.purposes[1]: duplicate value "
                         "\"analytics\" (also spec.purposes[0])");
    expect_product_error("  purposes:", "  purpose: x\n  purposes:",
                         "orders.yaml: spec.purpose: unknown field (allowed: "
                         "domain, description, owner, ports, schema, sla, "
                         "purposes, derivedFrom)");
}

static void test_policy_errors(void)
{
    expect_error(ENVELOPE "kind: Policy\nmetadata: {name: p}\n"
                          "spec: {description: x}\n",
                 "orders.yaml: spec.rules: missing required field");
    expect_error(ENVELOPE "kind: Policy\nmetadata: {name: p}\n"
                          "spec: {rules: []}\n",
                 "orders.yaml: spec.rules: must not be empty");
    expect_error(ENVELOPE "kind: Policy\nmetadata: {name: p}\n"
                          "spec: {rules: [{name: a}]}\n",
                 "orders.yaml: spec.rules[0].effect: missing required "
                 "field");
    expect_error(ENVELOPE "kind: Policy\nmetadata: {name: p}\n"
                          "spec: {rules: [{name: a, effect: deny},"
                          " {name: a, effect: allow}]}\n",
                 "orders.yaml: spec.rules[1].name: duplicate rule \"a\" "
                 "(also spec.rules[0])");
    expect_error(ENVELOPE "kind: Policy\nmetadata: {name: p}\n"
                          "spec: {scope: Sales, rules: [{name: a,"
                          " effect: deny}]}\n",
                 "orders.yaml: spec.scope: invalid scope \"Sales\": use "
                 "global or a domain name");
    expect_error(ENVELOPE "kind: Policy\nmetadata: {name: p}\n"
                          "spec: {rules: [deny]}\n",
                 "orders.yaml: spec.rules[0]: must be a mapping, not a "
                 "string");
}

static void test_principal_errors(void)
{
    expect_error(ENVELOPE "kind: Principal\nmetadata: {name: a}\n"
                          "spec: {credentials: {tokenSha256: [abc]}}\n",
                 "orders.yaml: spec.credentials.tokenSha256[0]: invalid "
                 "value \"abc\": must be 64 lowercase hex digits, the "
                 "SHA-256 of the token (printf %s \"$TOKEN\" | sha256sum)");
    expect_error(ENVELOPE "kind: Principal\nmetadata: {name: a}\n"
                          "spec: {credentials: {tokens: [abc]}}\n",
                 "orders.yaml: spec.credentials.tokens: unknown field "
                 "(allowed: tokenSha256, certificates)");
    expect_error(ENVELOPE "kind: Principal\nmetadata: {name: a}\n"
                          "spec: {attributes: {region: {a: EU}}}\n",
                 "orders.yaml: spec.attributes.region: must be a string or "
                 "a list of strings, not a mapping");
    expect_error(ENVELOPE "kind: Principal\nmetadata: {name: a}\n"
                          "spec: {attributes: {regions: [EU, 3]}}\n",
                 "orders.yaml: spec.attributes.regions[1]: must be a string "
                 "of at most 1024 bytes, not an integer");
    expect_error(ENVELOPE "kind: Principal\nmetadata: {name: a}\n"
                          "spec: {groups: ['data team']}\n",
                 "orders.yaml: spec.groups[0]: invalid value \"data team\": "
                 "use 1-63 letters, digits, '.', '_' or '-'");
    expect_error(ENVELOPE "kind: Principal\nmetadata: {name: a}\n"
                          "spec: {roles: [x]}\n",
                 "orders.yaml: spec.roles: unknown field (allowed: "
                 "description, groups, attributes, credentials)");
}

static void test_first_error_in_document_order(void)
{
    expect_error(ENVELOPE "kind: Domain\nmetadata: {name: A}\n"
                          "spec: {owners: []}\n",
                 "orders.yaml: metadata.name: invalid name \"A\": use 1-63 "
                 "lowercase letters, digits and '-', starting with a letter "
                 "and not ending with '-'");
}

/* ---- a whole apply ----------------------------------------------------- */

typedef struct stored {
    const char *domains; /* space-separated names that "exist" */
    int calls;
    int fail;
} stored;

static int lookup(void *ctx, res_kind kind, const char *scope, const char *name,
                  bool *exists, polis_error *err)
{
    stored *s = ctx;
    char word[80];

    s->calls++;
    if (s->fail)
        return polis_error_set(err, POLIS_EUNAVAIL, "etcd",
                               "no endpoint answered");
    snprintf(word, sizeof(word), " %s ", name);
    *exists = kind == RES_DOMAIN && strcmp(scope, "global") == 0 &&
              strstr(s->domains, word) != NULL;
    return 0;
}

static json_t *docs_of(const char *yaml)
{
    polis_error err = {0};
    json_t *docs = NULL;

    CU_ASSERT_EQUAL(doc_parse("set.yaml", yaml, strlen(yaml), 0, &docs, &err),
                    0);
    return docs;
}

static void format_all(const res_errors *errs, char *buf, size_t len)
{
    size_t used = 0;
    char line[1100];

    buf[0] = '\0';
    for (size_t i = 0; i < errs->count && used < len; i++)
        used += (size_t)snprintf(
            buf + used, len - used, "%s\n",
            polis_error_format(&errs->items[i], line, sizeof(line)));
}

#define PRODUCT(name, domain)                                                  \
    ENVELOPE "kind: DataProduct\nmetadata: {name: " name "}\n"                 \
             "spec: {domain: " domain "}\n"
#define DOMAIN(name)                                                           \
    ENVELOPE "kind: Domain\nmetadata: {name: " name "}\n"                      \
             "spec: {owners: [x]}\n"

static void test_set_valid_with_references_inside(void)
{
    json_t *docs = docs_of(PRODUCT("orders", "sales") "---\n" DOMAIN("sales"));
    const char *sources[] = {"orders.yaml", "domains.yaml"};
    res_errors *errs = malloc(sizeof(*errs));
    res_info infos[2];

    CU_ASSERT_EQUAL(res_validate_set(docs, sources, NULL, NULL, infos, errs),
                    0);
    CU_ASSERT_EQUAL(errs->count, 0);
    CU_ASSERT_EQUAL(infos[0].kind, RES_DATAPRODUCT);
    CU_ASSERT_STRING_EQUAL(infos[0].scope, "sales");
    CU_ASSERT_STRING_EQUAL(infos[1].name, "sales");
    json_decref(docs);
    free(errs);
}

static void test_set_duplicates_name_both_sources(void)
{
    json_t *docs = docs_of(DOMAIN("sales") "---\n" PRODUCT(
        "orders", "sales") "---\n" PRODUCT("orders", "sales"));
    const char *sources[] = {"a.yaml", "b.yaml", "c.yaml"};
    res_errors *errs = malloc(sizeof(*errs));
    char buf[2048];

    CU_ASSERT_EQUAL(res_validate_set(docs, sources, NULL, NULL, NULL, errs),
                    POLIS_EINVAL);
    format_all(errs, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "c.yaml: metadata.name: DataProduct "
                                "\"sales/orders\" is also defined in "
                                "b.yaml\n");
    /* Same name in another domain is another product. */
    json_decref(docs);
    docs = docs_of(DOMAIN("sales") "---\n" DOMAIN("crm") "---\n" PRODUCT(
        "orders", "sales") "---\n" PRODUCT("orders", "crm"));
    CU_ASSERT_EQUAL(res_validate_set(docs, NULL, NULL, NULL, NULL, errs), 0);
    json_decref(docs);
    free(errs);
}

static void test_set_missing_domain(void)
{
    json_t *docs =
        docs_of(PRODUCT("orders", "sales") "---\n" ENVELOPE
                                           "kind: Policy\nmetadata: {name: p}\n"
                                           "spec: {scope: hr, rules: [{name: a,"
                                           " effect: deny}]}\n");
    res_errors *errs = malloc(sizeof(*errs));
    char buf[2048];
    stored st = {" crm ", 0, 0};

    CU_ASSERT_EQUAL(res_validate_set(docs, NULL, lookup, &st, NULL, errs),
                    POLIS_EINVAL);
    format_all(errs, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(
        buf, "document 1: spec.domain: domain \"sales\" does not exist "
             "(apply the Domain first or in the same set)\n"
             "document 2: spec.scope: domain \"hr\" does not exist (apply "
             "the Domain first or in the same set)\n");
    CU_ASSERT_EQUAL(st.calls, 2);

    /* The store answers for what the set does not hold. */
    st.domains = " sales hr ";
    CU_ASSERT_EQUAL(res_validate_set(docs, NULL, lookup, &st, NULL, errs), 0);
    CU_ASSERT_EQUAL(errs->count, 0);

    /* A failing store stops the check with its own error. */
    st.fail = 1;
    CU_ASSERT_EQUAL(res_validate_set(docs, NULL, lookup, &st, NULL, errs),
                    POLIS_EUNAVAIL);
    format_all(errs, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "etcd: no endpoint answered\n");
    json_decref(docs);
    free(errs);
}

static void test_set_missing_upstream_product(void)
{
    json_t *docs = docs_of(
        DOMAIN("mk") "---\n" ENVELOPE "kind: DataProduct\nmetadata: {name: c}\n"
                     "spec: {domain: mk, derivedFrom: [sales/orders,"
                     " mk/b]}\n"
                     "---\n" PRODUCT("b", "mk"));
    res_errors *errs = malloc(sizeof(*errs));
    char buf[2048];

    CU_ASSERT_EQUAL(res_validate_set(docs, NULL, NULL, NULL, NULL, errs),
                    POLIS_EINVAL);
    format_all(errs, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "document 2: spec.derivedFrom[0]: data "
                                "product \"sales/orders\" does not exist\n");
    json_decref(docs);
    free(errs);
}

static void test_set_collects_all_errors(void)
{
    json_t *docs = docs_of(
        ENVELOPE "kind: Domain\nmetadata: {name: A}\nspec: {owners: []}\n"
                 "---\n" DOMAIN("ok") "---\n" ENVELOPE
                                      "kind: DataProduct\nmetadata: {name: p}\n"
                                      "spec: {domain: nowhere, schema: [{name: "
                                      "x, type: strng}]}\n");
    const char *sources[] = {"one.yaml", "two.yaml", "three.yaml"};
    res_errors *errs = malloc(sizeof(*errs));
    char buf[4096];

    CU_ASSERT_EQUAL(res_validate_set(docs, sources, NULL, NULL, NULL, errs),
                    POLIS_EINVAL);
    format_all(errs, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(
        buf, "one.yaml: metadata.name: invalid name \"A\": use 1-63 "
             "lowercase letters, digits and '-', starting with a letter and "
             "not ending with '-'\n"
             "one.yaml: spec.owners: must not be empty\n"
             "three.yaml: spec.schema[0].type: unknown type \"strng\" "
             "(expected one of: string, integer, decimal, boolean, date, "
             "timestamp)\n");
    CU_ASSERT_EQUAL(errs->omitted, 0);
    json_decref(docs);
    free(errs);
}

static void test_set_error_bound(void)
{
    json_t *docs = json_array();
    res_errors *errs = malloc(sizeof(*errs));

    for (int i = 0; i < 60; i++)
        json_array_append_new(docs, json_pack("{s:s}", "kind", "Domain"));
    CU_ASSERT_EQUAL(res_validate_set(docs, NULL, NULL, NULL, NULL, errs),
                    POLIS_EINVAL);
    /* Each has three problems: apiVersion, metadata, spec. */
    CU_ASSERT_EQUAL(errs->count, RES_MAX_ERRORS);
    CU_ASSERT_EQUAL(errs->omitted, 180 - RES_MAX_ERRORS);
    json_decref(docs);
    free(errs);
}

static void test_set_lookup_failure_is_last_even_when_full(void)
{
    json_t *docs = docs_of(PRODUCT("orders", "sales"));
    res_errors *errs = malloc(sizeof(*errs));
    stored st = {"", 0, 1};
    char buf[1100];

    for (int i = 0; i < 20; i++)
        json_array_append_new(docs, json_pack("{s:s}", "kind", "Domain"));
    CU_ASSERT_EQUAL(res_validate_set(docs, NULL, lookup, &st, NULL, errs),
                    POLIS_EUNAVAIL);
    CU_ASSERT_EQUAL(errs->count, RES_MAX_ERRORS);
    CU_ASSERT_STRING_EQUAL(
        polis_error_format(&errs->items[errs->count - 1], buf, sizeof(buf)),
        "etcd: no endpoint answered");
    CU_ASSERT_EQUAL(errs->omitted, 60 - RES_MAX_ERRORS + 1);
    json_decref(docs);
    free(errs);
}

/* ---- kinds, canonical JSON, keys -------------------------------------- */

static void test_kind_names(void)
{
    CU_ASSERT_EQUAL(res_kind_parse("DataProduct"), RES_DATAPRODUCT);
    CU_ASSERT_EQUAL(res_kind_parse("products"), RES_DATAPRODUCT);
    CU_ASSERT_EQUAL(res_kind_parse("DP"), RES_DATAPRODUCT);
    CU_ASSERT_EQUAL(res_kind_parse("Domains"), RES_DOMAIN);
    CU_ASSERT_EQUAL(res_kind_parse("policies"), RES_POLICY);
    CU_ASSERT_EQUAL(res_kind_parse("PRINCIPAL"), RES_PRINCIPAL);
    CU_ASSERT_EQUAL(res_kind_parse("tables"), RES_KIND_UNKNOWN);
    CU_ASSERT_EQUAL(res_kind_parse(""), RES_KIND_UNKNOWN);
    CU_ASSERT_EQUAL(res_kind_parse(NULL), RES_KIND_UNKNOWN);
    CU_ASSERT_STRING_EQUAL(res_kind_name(RES_DATAPRODUCT), "DataProduct");
    CU_ASSERT_STRING_EQUAL(res_kind_key(RES_DATAPRODUCT), "dataproduct");
    CU_ASSERT_STRING_EQUAL(res_kind_name(RES_KIND_UNKNOWN), "");
    CU_ASSERT_STRING_EQUAL(res_kind_name((res_kind)99), "");
}

static void test_canonical_json_ignores_key_order(void)
{
    json_t *a = doc_of("kind: Domain\nmetadata: {name: s, labels: {b: '1',"
                       " a: '2'}}\nspec: {owners: [x, y]}\n");
    json_t *b = doc_of("{\"spec\": {\"owners\": [\"x\", \"y\"]},"
                       " \"metadata\": {\"labels\": {\"a\": \"2\","
                       " \"b\": \"1\"}, \"name\": \"s\"}, \"kind\": "
                       "\"Domain\"}");
    json_t *c = doc_of("kind: Domain\nmetadata: {name: s, labels: {b: '1',"
                       " a: '2'}}\nspec: {owners: [y, x]}\n");
    char *ca = res_canonical_json(a), *cb = res_canonical_json(b),
         *cc = res_canonical_json(c);

    CU_ASSERT_PTR_NOT_NULL_FATAL(ca);
    CU_ASSERT_STRING_EQUAL(ca, "{\"kind\":\"Domain\",\"metadata\":{\"labels\":"
                               "{\"a\":\"2\",\"b\":\"1\"},\"name\":\"s\"},"
                               "\"spec\":{\"owners\":[\"x\",\"y\"]}}");
    CU_ASSERT_STRING_EQUAL(ca, cb);
    CU_ASSERT_STRING_NOT_EQUAL(ca, cc); /* list order is meaning */
    free(ca);
    free(cb);
    free(cc);
    json_decref(a);
    json_decref(b);
    json_decref(c);
}

static void test_defaults_make_policy_scope_explicit(void)
{
    json_t *p = doc_of(ENVELOPE "kind: Policy\nmetadata: {name: p}\n"
                                "spec: {rules: [{name: a, effect: deny}]}\n");
    json_t *d = doc_of(DOMAIN("sales"));
    char *before = res_canonical_json(d), *after;

    CU_ASSERT_EQUAL(res_apply_defaults(p), 0);
    CU_ASSERT_STRING_EQUAL(
        json_string_value(json_object_get(json_object_get(p, "spec"), "scope")),
        "global");
    CU_ASSERT_EQUAL(res_validate(p, NULL, NULL, NULL), 0);
    /* Other kinds are left as written. */
    CU_ASSERT_EQUAL(res_apply_defaults(d), 0);
    after = res_canonical_json(d);
    CU_ASSERT_STRING_EQUAL(before, after);
    free(before);
    free(after);
    json_decref(p);
    json_decref(d);
}

static void test_etcd_keys(void)
{
    char buf[128];
    res_info info;

    CU_ASSERT_EQUAL(res_etcd_key("/polis/", RES_DATAPRODUCT, "sales", "orders",
                                 buf, sizeof(buf)),
                    0);
    CU_ASSERT_STRING_EQUAL(buf, "/polis/resources/dataproduct/sales/orders");
    CU_ASSERT_EQUAL(res_etcd_key_parse("/polis/", buf, &info), 0);
    CU_ASSERT_EQUAL(info.kind, RES_DATAPRODUCT);
    CU_ASSERT_STRING_EQUAL(info.scope, "sales");
    CU_ASSERT_STRING_EQUAL(info.name, "orders");
    CU_ASSERT_EQUAL(res_etcd_key("/polis/", RES_POLICY, "global", "p", buf, 20),
                    POLIS_ETOOBIG);
    CU_ASSERT_EQUAL(res_etcd_key("/polis/", RES_KIND_UNKNOWN, "global", "p",
                                 buf, sizeof(buf)),
                    POLIS_EINVAL);
    CU_ASSERT_EQUAL(
        res_etcd_prefix("/p/", RES_KIND_UNKNOWN, NULL, buf, sizeof(buf)), 0);
    CU_ASSERT_STRING_EQUAL(buf, "/p/resources/");
    CU_ASSERT_EQUAL(res_etcd_prefix("/p/", RES_POLICY, NULL, buf, sizeof(buf)),
                    0);
    CU_ASSERT_STRING_EQUAL(buf, "/p/resources/policy/");
    CU_ASSERT_EQUAL(
        res_etcd_prefix("/p/", RES_POLICY, "sales", buf, sizeof(buf)), 0);
    CU_ASSERT_STRING_EQUAL(buf, "/p/resources/policy/sales/");
    CU_ASSERT_EQUAL(
        res_etcd_key_parse("/polis/", "/polis/resources/table/global/x", &info),
        POLIS_EINVAL);
    CU_ASSERT_EQUAL(res_etcd_key_parse(
                        "/polis/", "/polis/resources/policy/global/x/1", &info),
                    POLIS_EINVAL);
    CU_ASSERT_EQUAL(res_etcd_key_parse(
                        "/polis/", "/other/resources/policy/global/x", &info),
                    POLIS_EINVAL);
    CU_ASSERT_EQUAL(
        res_etcd_key_parse("/polis/", "/polis/resources/policy//x", &info),
        POLIS_EINVAL);
}

/* ---- the shipped examples ---------------------------------------------- */

typedef struct example_set {
    json_t *docs;
    char **sources;
    size_t n;
    int files;
} example_set;

static void load_examples(const char *dir, example_set *set)
{
    DIR *d = opendir(dir);
    struct dirent *e;

    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    while ((e = readdir(d)) != NULL) {
        char path[1024];
        struct stat st;
        const char *ext = strrchr(e->d_name, '.');
        json_t *docs = NULL, *doc;
        polis_error err = {0};
        char buf[1100];
        size_t i;

        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            load_examples(path, set);
            continue;
        }
        if (ext == NULL ||
            (strcmp(ext, ".yaml") != 0 && strcmp(ext, ".yml") != 0 &&
             strcmp(ext, ".json") != 0))
            continue;
        set->files++;
        if (doc_parse_file(path, 0, &docs, &err) != 0) {
            fprintf(stderr, "\n  %s\n",
                    polis_error_format(&err, buf, sizeof(buf)));
            CU_FAIL("example does not parse");
            continue;
        }
        json_array_foreach(docs, i, doc)
        {
            char src[1100];
            snprintf(src, sizeof(src), "%s#%zu",
                     path + strlen(POLIS_SOURCE_DIR) + 1, i + 1);
            if (res_validate(doc, src, NULL, &err) != 0) {
                fprintf(stderr, "\n  %s\n",
                        polis_error_format(&err, buf, sizeof(buf)));
                CU_FAIL("example does not validate");
            }
            json_array_append(set->docs, doc);
            set->sources = realloc(set->sources, (set->n + 1) * sizeof(char *));
            set->sources[set->n++] = strdup(src);
        }
        json_decref(docs);
    }
    closedir(d);
}

/* Load every example (parsed, validated, defaults applied) into *set. */
static void load_example_set(example_set *set)
{
    set->docs = json_array();
    load_examples(POLIS_SOURCE_DIR "/examples", set);
    for (size_t i = 0; i < set->n; i++)
        res_apply_defaults(json_array_get(set->docs, i));
}

static void free_example_set(example_set *set)
{
    for (size_t i = 0; i < set->n; i++)
        free(set->sources[i]);
    free(set->sources);
    json_decref(set->docs);
}

/* Decide one request of a demo principal; returns the explanation. */
static const char *decide(const pol_engine *engine, pol_decision *d,
                          const char *who, const char *group,
                          const char *region, const char *product,
                          pol_port port, const char *purpose, char *buf,
                          size_t len)
{
    const char *groups[] = {group};
    pol_expr_attr attr = {"region", false, region, NULL, 0};
    pol_request req;
    polis_error err = {0};

    memset(&req, 0, sizeof(req));
    req.subject.name = who;
    req.subject.groups = groups;
    req.subject.ngroups = group ? 1 : 0;
    req.subject.attrs = region ? &attr : NULL;
    req.subject.nattrs = region ? 1 : 0;
    req.product = product;
    req.port = port;
    req.purpose = purpose;
    CU_ASSERT_EQUAL(pol_decide(engine, &req, d, &err), 0);
    pol_decision_explain(d, buf, len);
    return buf;
}

/* The example policies do what examples/mesh/policies.yaml says. */
static void test_example_policies_behave_as_documented(void)
{
    example_set set = {NULL, NULL, 0, 0};
    pol_engine *engine = NULL;
    pol_decision *d = pol_decision_new();
    polis_error err = {0};
    char buf[2048];

    load_example_set(&set);
    CU_ASSERT_EQUAL_FATAL(pol_engine_build(set.docs, NULL, &engine, &err), 0);
    CU_ASSERT_TRUE(pol_engine_rule_count(engine) >= 5);

    /* alice: EU orders only, e-mail and card masked. */
    decide(engine, d, "alice", "analysts", "EU", "sales/orders", POL_PORT_QUERY,
           NULL, buf, sizeof(buf));
    CU_ASSERT_TRUE(pol_decision_allowed(d));
    CU_ASSERT_EQUAL(pol_decision_mask_count(d), 2);
    CU_ASSERT_EQUAL(pol_decision_filter_count(d), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "column customer_email masked (email)"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(buf, "column card_number masked (show_last)"));
    /* ... but not the CSV extracts (the sales domain's own rule). */
    decide(engine, d, "alice", "analysts", "EU", "sales/orders", POL_PORT_FILE,
           NULL, buf, sizeof(buf));
    CU_ASSERT_FALSE(pol_decision_allowed(d));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "sales/sales-extracts"));
    /* ... customers only in groups of five or more ... */
    decide(engine, d, "alice", "analysts", "EU", "crm/customers",
           POL_PORT_QUERY, "analytics", buf, sizeof(buf));
    CU_ASSERT_TRUE(pol_decision_allowed(d));
    CU_ASSERT_EQUAL(pol_decision_min_group_size(d), 5);
    /* ... and no personal data for marketing. */
    decide(engine, d, "alice", "analysts", "EU", "crm/customers",
           POL_PORT_QUERY, "marketing", buf, sizeof(buf));
    CU_ASSERT_FALSE(pol_decision_allowed(d));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "no-personal-data-for-marketing"));

    /* bob: the extracts, card masked, e-mail not. */
    decide(engine, d, "bob", "managers", "US", "sales/orders", POL_PORT_FILE,
           NULL, buf, sizeof(buf));
    CU_ASSERT_TRUE(pol_decision_allowed(d));
    CU_ASSERT_EQUAL(pol_decision_mask_count(d), 1);
    CU_ASSERT_EQUAL(pol_decision_filter_count(d), 1);

    /* carol: everything, unmasked, unfiltered. */
    decide(engine, d, "carol", "privacy", "EU", "crm/customers", POL_PORT_QUERY,
           "marketing", buf, sizeof(buf));
    CU_ASSERT_TRUE(pol_decision_allowed(d));
    CU_ASSERT_EQUAL(pol_decision_mask_count(d), 0);
    CU_ASSERT_EQUAL(pol_decision_filter_count(d), 0);

    /* nobody else. */
    decide(engine, d, "mallory", NULL, NULL, "sales/orders", POL_PORT_QUERY,
           NULL, buf, sizeof(buf));
    CU_ASSERT_FALSE(pol_decision_allowed(d));
    CU_ASSERT_EQUAL(pol_decision_reason(d), POL_REASON_DEFAULT_DENY);

    pol_decision_free(d);
    pol_engine_free(engine);
    free_example_set(&set);
}

static void test_examples_validate(void)
{
    example_set set = {json_array(), NULL, 0, 0};
    res_errors *errs = malloc(sizeof(*errs));
    res_info *infos;
    int count[RES_KIND_COUNT + 1] = {0};
    char buf[8192];

    load_examples(POLIS_SOURCE_DIR "/examples", &set);
    CU_ASSERT_TRUE(set.files >= 5);
    infos = calloc(set.n, sizeof(*infos));
    /* Applied together, with nothing stored: every reference resolves. */
    CU_ASSERT_EQUAL(res_validate_set(set.docs, (const char *const *)set.sources,
                                     NULL, NULL, infos, errs),
                    0);
    format_all(errs, buf, sizeof(buf));
    if (errs->count)
        fprintf(stderr, "\n%s", buf);
    for (size_t i = 0; i < set.n; i++)
        count[infos[i].kind]++;
    /* And the policy engine compiles them (products and any policies). */
    {
        pol_engine *engine = NULL;
        polis_error err = {0};
        for (size_t i = 0; i < set.n; i++)
            CU_ASSERT_EQUAL(res_apply_defaults(json_array_get(set.docs, i)), 0);
        CU_ASSERT_EQUAL(pol_engine_build(set.docs, NULL, &engine, &err), 0);
        if (engine == NULL)
            fprintf(stderr, "\n  engine: %s\n",
                    polis_error_format(&err, buf, sizeof(buf)));
        else
            CU_ASSERT_EQUAL(pol_engine_product_count(engine),
                            (size_t)count[RES_DATAPRODUCT]);
        pol_engine_free(engine);
    }
    CU_ASSERT_TRUE(count[RES_DOMAIN] >= 3);
    CU_ASSERT_TRUE(count[RES_DATAPRODUCT] >= 3);
    CU_ASSERT_TRUE(count[RES_PRINCIPAL] >= 3);
    CU_ASSERT_TRUE(count[RES_POLICY] >= 2);
    for (size_t i = 0; i < set.n; i++)
        free(set.sources[i]);
    free(set.sources);
    free(infos);
    free(errs);
    json_decref(set.docs);
}

static const test_case kind_cases[] = {
    {"valid_domain", test_valid_domain},
    {"valid_dataproduct", test_valid_dataproduct},
    {"valid_policy", test_valid_policy},
    {"valid_principal", test_valid_principal},
    {"envelope_errors", test_envelope_errors},
    {"name_rules", test_name_rules},
    {"not_a_mapping_and_no_source", test_not_a_mapping_and_no_source},
    {"domain_errors", test_domain_errors},
    {"schema_type_error", test_schema_type_error},
    {"schema_errors", test_schema_errors},
    {"port_errors", test_port_errors},
    {"mqtt_settings", test_mqtt_settings},
    {"product_other_errors", test_product_other_errors},
    {"policy_errors", test_policy_errors},
    {"principal_errors", test_principal_errors},
    {"first_error_in_document_order", test_first_error_in_document_order},
    {NULL, NULL},
};

static const test_case set_cases[] = {
    {"valid_with_references_inside", test_set_valid_with_references_inside},
    {"duplicates_name_both_sources", test_set_duplicates_name_both_sources},
    {"missing_domain", test_set_missing_domain},
    {"missing_upstream_product", test_set_missing_upstream_product},
    {"collects_all_errors", test_set_collects_all_errors},
    {"error_bound", test_set_error_bound},
    {"lookup_failure_is_last_even_when_full",
     test_set_lookup_failure_is_last_even_when_full},
    {NULL, NULL},
};

static const test_case misc_cases[] = {
    {"kind_names", test_kind_names},
    {"canonical_json_ignores_key_order", test_canonical_json_ignores_key_order},
    {"defaults_make_policy_scope_explicit",
     test_defaults_make_policy_scope_explicit},
    {"etcd_keys", test_etcd_keys},
    {"examples_validate", test_examples_validate},
    {"example_policies_behave_as_documented",
     test_example_policies_behave_as_documented},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"kinds", NULL, NULL, kind_cases},
    {"set", NULL, NULL, set_cases},
    {"misc", NULL, NULL, misc_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
