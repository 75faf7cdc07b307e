/*
 * resource.c — validation of Polis resource documents (resource.h) against
 * the field tables of docs/resources.md, one function per kind, plus the
 * whole-set checks of an apply (duplicates, references) and etcd key helpers.
 */
#include "common/resource.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PATH_MAX_LEN    256
#define DESCRIPTION_MAX 4096
#define TEXT_MAX        1024 /* owners, paths, DSNs, URLs, subjects, values */
#define RULE_NAME_MAX   128

/* ---- kinds ------------------------------------------------------------- */

static const char *const kind_names[RES_KIND_COUNT + 2] = {
    "", "Domain", "DataProduct", "Policy", "Principal", NULL};
static const char *const kind_keys[RES_KIND_COUNT + 1] = {
    "", "domain", "dataproduct", "policy", "principal"};

const char *res_kind_name(res_kind kind)
{
    if (kind < RES_DOMAIN || kind > RES_PRINCIPAL)
        return "";
    return kind_names[kind];
}

const char *res_kind_key(res_kind kind)
{
    if (kind < RES_DOMAIN || kind > RES_PRINCIPAL)
        return "";
    return kind_keys[kind];
}

res_kind res_kind_parse(const char *text)
{
    static const struct {
        const char *word;
        res_kind kind;
    } words[] = {
        {"domain", RES_DOMAIN},           {"domains", RES_DOMAIN},
        {"dataproduct", RES_DATAPRODUCT}, {"dataproducts", RES_DATAPRODUCT},
        {"product", RES_DATAPRODUCT},     {"products", RES_DATAPRODUCT},
        {"dp", RES_DATAPRODUCT},          {"policy", RES_POLICY},
        {"policies", RES_POLICY},         {"principal", RES_PRINCIPAL},
        {"principals", RES_PRINCIPAL},
    };

    if (text == NULL)
        return RES_KIND_UNKNOWN;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strcasecmp(text, words[i].word) == 0)
            return words[i].kind;
    return RES_KIND_UNKNOWN;
}

/* ---- the validation context -------------------------------------------- */

/* Where problems go: the first one into `first` (res_validate), all of
 * them into `list` (res_validate_set). */
typedef struct vctx {
    const char *source;
    polis_error *first;
    res_errors *list;
    int problems;
} vctx;

static void errors_add(res_errors *list, const polis_error *e)
{
    if (list->count < RES_MAX_ERRORS)
        list->items[list->count++] = *e;
    else
        list->omitted++;
}

static void fail(vctx *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(vctx *c, const char *path, const char *fmt, ...)
{
    polis_error e;
    va_list ap;

    e.code = POLIS_EINVAL;
    if (c->source && path[0])
        snprintf(e.where, sizeof(e.where), "%s: %s", c->source, path);
    else
        snprintf(e.where, sizeof(e.where), "%s", c->source ? c->source : path);
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof(e.message), fmt, ap);
    va_end(ap);
    if (c->problems == 0 && c->first)
        *c->first = e;
    if (c->list)
        errors_add(c->list, &e);
    c->problems++;
}

/* "base.key" (or "key" at the top) into buf. */
static const char *join(char *buf, const char *base, const char *key)
{
    if (base[0])
        snprintf(buf, PATH_MAX_LEN, "%s.%s", base, key);
    else
        snprintf(buf, PATH_MAX_LEN, "%s", key);
    return buf;
}

/* "base[i]" into buf. */
static const char *at(char *buf, const char *base, size_t i)
{
    snprintf(buf, PATH_MAX_LEN, "%s[%zu]", base, i);
    return buf;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "a mapping";
    case JSON_ARRAY:
        return "a list";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "a value";
}

/* "a, b, c" of a NULL-terminated list into buf. */
static const char *word_list(const char *const *words, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; words[i] && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
                                 words[i]);
    return buf;
}

static bool in_list(const char *s, const char *const *words)
{
    for (; *words; words++)
        if (strcmp(s, *words) == 0)
            return true;
    return false;
}

/* Every key of obj must be one of `allowed`: typos must not pass. */
static void check_fields(vctx *c, const json_t *obj, const char *base,
                         const char *const *allowed)
{
    char path[PATH_MAX_LEN], words[512];
    const char *key;
    json_t *v;

    json_object_foreach((json_t *)obj, key, v)
    {
        if (!in_list(key, allowed))
            fail(c, join(path, base, key), "unknown field (allowed: %s)",
                 word_list(allowed, words, sizeof(words)));
    }
}

/*
 * The member `key` of obj when present with type `want`, else NULL.  null
 * counts as absent (YAML's `description:` with nothing after it).  Reports
 * a missing required member and a wrong type.
 */
static const json_t *member(vctx *c, const json_t *obj, const char *base,
                            const char *key, json_type want, bool required)
{
    static const char *const want_names[] = {
        [JSON_OBJECT] = "a mapping", [JSON_ARRAY] = "a list",
        [JSON_STRING] = "a string",  [JSON_INTEGER] = "an integer",
        [JSON_REAL] = "a number",    [JSON_TRUE] = "a boolean",
        [JSON_FALSE] = "a boolean",  [JSON_NULL] = "null"};
    char path[PATH_MAX_LEN];
    const json_t *v = json_object_get(obj, key);

    if (v == NULL || json_is_null(v)) {
        if (required)
            fail(c, join(path, base, key), "missing required field");
        return NULL;
    }
    if (json_typeof(v) != want && !(want == JSON_TRUE && json_is_boolean(v))) {
        fail(c, join(path, base, key), "must be %s, not %s", want_names[want],
             type_name(v));
        return NULL;
    }
    return v;
}

/* A string member, bounded in length; "" is refused when required. */
static const char *string_member(vctx *c, const json_t *obj, const char *base,
                                 const char *key, bool required, size_t max)
{
    char path[PATH_MAX_LEN];
    const json_t *v = member(c, obj, base, key, JSON_STRING, required);
    size_t n;

    if (v == NULL)
        return NULL;
    n = json_string_length(v);
    if (n == 0 && required) {
        fail(c, join(path, base, key), "must not be empty");
        return NULL;
    }
    if (n > max) {
        fail(c, join(path, base, key), "too long (%zu bytes, at most %zu)", n,
             max);
        return NULL;
    }
    return json_string_value(v);
}

/* ---- value syntax ------------------------------------------------------ */

/* DNS-label-like: 1-63 of [a-z0-9-], starting with a letter, not ending
 * with '-'.  Safe in etcd keys, URLs and file names. */
static bool is_name(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63 || !(s[0] >= 'a' && s[0] <= 'z') || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '-'))
            return false;
    return true;
}

#define NAME_RULE                                                              \
    "use 1-63 lowercase letters, digits and '-', starting with a letter "      \
    "and not ending with '-'"

/* An SQL identifier the sidecar can quote safely: [A-Za-z_][A-Za-z0-9_]*. */
static bool is_identifier(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

/* A token of [a-z0-9_-] segments joined by '.': "pii.email", "gdpr". */
static bool is_tag(const char *s, size_t max)
{
    size_t n = strlen(s), seg = 0;

    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '.') {
            if (seg == 0)
                return false;
            seg = 0;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                   ch == '_' || ch == '-') {
            seg++;
        } else {
            return false;
        }
    }
    return seg > 0;
}

/* A group or attribute key: 1-63 of [A-Za-z0-9._-], starting alphanumeric
 * (directory groups are often mixed case). */
static bool is_group(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63 || !isalnum((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '_' ||
              s[i] == '-'))
            return false;
    return true;
}

static bool is_attribute_key(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '_' ||
              s[i] == '-'))
            return false;
    return true;
}

/* One or more <digits><unit> with units s, m, h, d ("24h", "1h30m"),
 * greater than zero. */
static bool is_duration(const char *s)
{
    uint64_t total = 0;
    bool any = false;

    while (*s) {
        uint64_t n = 0, mult;
        const char *start = s;
        while (*s >= '0' && *s <= '9') {
            if (n > UINT32_MAX)
                return false;
            n = n * 10 + (uint64_t)(*s - '0');
            s++;
        }
        if (s == start)
            return false;
        switch (*s) {
        case 's':
            mult = 1;
            break;
        case 'm':
            mult = 60;
            break;
        case 'h':
            mult = 3600;
            break;
        case 'd':
            mult = 86400;
            break;
        default:
            return false;
        }
        s++;
        total += n * mult;
        any = true;
    }
    return any && total > 0;
}

static bool is_sha256_hex(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (size_t i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* http(s)://host[:port][/path...], printable ASCII, no spaces. */
static bool is_http_url(const char *s)
{
    const char *host;
    size_t hl;

    if (strncmp(s, "http://", 7) == 0)
        host = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        host = s + 8;
    else
        return false;
    hl = strcspn(host, ":/?#");
    if (hl == 0)
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7F)
            return false;
    return true;
}

/* mqtt://host[:port] or mqtts://host[:port] (TLS): a broker address for
 * an event port's bridge. */
static bool is_mqtt_url(const char *s)
{
    const char *host, *colon;
    size_t hl;

    if (strncmp(s, "mqtt://", 7) == 0)
        host = s + 7;
    else if (strncmp(s, "mqtts://", 8) == 0)
        host = s + 8;
    else
        return false;
    hl = strcspn(host, ":");
    if (hl == 0 || host[hl + strcspn(host + hl, "/?#")] != '\0')
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7F)
            return false;
    colon = strchr(host, ':');
    if (colon) {
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end != '\0' || end == colon + 1 || port < 1 || port > 65535)
            return false;
    }
    return true;
}

/* An MQTT topic to publish to: no wildcards, no leading '$'. */
static bool is_mqtt_topic(const char *s)
{
    if (s[0] == '\0' || s[0] == '$')
        return false;
    for (const char *p = s; *p; p++)
        if (*p == '+' || *p == '#' || (unsigned char)*p < ' ')
            return false;
    return true;
}

/* A value that must be one of `words`; reports `unknown <what> "v"`. */
static bool check_enum(vctx *c, const char *path, const char *value,
                       const char *what, const char *const *words)
{
    char list[256];

    if (in_list(value, words))
        return true;
    fail(c, path, "unknown %s \"%s\" (expected one of: %s)", what, value,
         word_list(words, list, sizeof(list)));
    return false;
}

/*
 * A list of strings, each checked by `valid` (may be NULL; `rule` explains
 * it) and, if `unique`, appearing once.  Returns the list or NULL.
 */
static const json_t *string_list(vctx *c, const json_t *obj, const char *base,
                                 const char *key, bool required,
                                 bool (*valid)(const char *), const char *rule,
                                 bool unique)
{
    char lpath[PATH_MAX_LEN], path[PATH_MAX_LEN];
    const json_t *list = member(c, obj, base, key, JSON_ARRAY, required);
    const json_t *item;
    size_t i;

    if (list == NULL)
        return NULL;
    join(lpath, base, key);
    if (required && json_array_size(list) == 0)
        fail(c, lpath, "must not be empty");
    json_array_foreach(list, i, item)
    {
        const char *s;
        at(path, lpath, i);
        if (!json_is_string(item)) {
            fail(c, path, "must be a string, not %s", type_name(item));
            continue;
        }
        s = json_string_value(item);
        if (json_string_length(item) == 0 ||
            json_string_length(item) > TEXT_MAX ||
            strlen(s) != json_string_length(item)) {
            fail(c, path, "must be a non-empty string of at most %d bytes",
                 TEXT_MAX);
            continue;
        }
        if (valid && !valid(s)) {
            fail(c, path, "invalid value \"%s\": %s", s, rule);
            continue;
        }
        if (unique) {
            for (size_t j = 0; j < i; j++) {
                json_t *prev = json_array_get(list, j);
                if (json_is_string(prev) &&
                    strcmp(json_string_value(prev), s) == 0) {
                    fail(c, path, "duplicate value \"%s\" (also %s[%zu])", s,
                         lpath, j);
                    break;
                }
            }
        }
    }
    return list;
}

/* Is v a string of at most max bytes without NUL? */
static bool short_string(const json_t *v, size_t max)
{
    return json_is_string(v) && json_string_length(v) <= max &&
           strlen(json_string_value(v)) == json_string_length(v);
}

/*
 * A map of key -> string; with `lists`, a value may also be a list of
 * strings (list-valued subject attributes: `subject.<attr>` in policy
 * expressions reads them with `in`).
 */
static const json_t *string_map(vctx *c, const json_t *obj, const char *base,
                                const char *key,
                                bool (*valid_key)(const char *),
                                const char *key_rule, size_t value_max,
                                bool lists)
{
    char mpath[PATH_MAX_LEN], path[PATH_MAX_LEN], ipath[PATH_MAX_LEN];
    const json_t *map = member(c, obj, base, key, JSON_OBJECT, false);
    const char *k;
    json_t *v, *item;
    size_t i;

    if (map == NULL)
        return NULL;
    join(mpath, base, key);
    json_object_foreach((json_t *)map, k, v)
    {
        join(path, mpath, k);
        if (!valid_key(k)) {
            fail(c, path, "invalid key \"%s\": %s", k, key_rule);
        } else if (lists && json_is_array(v)) {
            json_array_foreach(v, i, item)
            {
                if (!short_string(item, value_max))
                    fail(c, at(ipath, path, i),
                         "must be a string of at most %zu bytes, not %s",
                         value_max, type_name(item));
            }
        } else if (!json_is_string(v)) {
            bool scalar = !json_is_object(v) && !json_is_array(v);
            fail(c, path, "must be a string%s, not %s%s",
                 lists ? " or a list of strings" : "", type_name(v),
                 scalar ? " (quote it)" : "");
        } else if (!short_string(v, value_max)) {
            fail(c, path, "must be a string of at most %zu bytes", value_max);
        }
    }
    return map;
}

/* ---- Domain ------------------------------------------------------------ */

static bool any_text(const char *s)
{
    return s[0] != '\0';
}

static void validate_domain(vctx *c, const json_t *spec)
{
    static const char *const fields[] = {"owners", "description", NULL};

    check_fields(c, spec, "spec", fields);
    string_list(c, spec, "spec", "owners", true, any_text, "", true);
    string_member(c, spec, "spec", "description", false, DESCRIPTION_MAX);
}

/* ---- DataProduct ------------------------------------------------------- */

static const char *const port_types[] = {"query", "file", "event", "http",
                                         NULL};
static const char *const column_types[] = {
    "string", "integer", "decimal", "boolean", "date", "timestamp", NULL};

static void positive_int(vctx *c, const json_t *obj, const char *base,
                         const char *key)
{
    char path[PATH_MAX_LEN];
    const json_t *v = member(c, obj, base, key, JSON_INTEGER, false);

    if (v && json_integer_value(v) <= 0)
        fail(c, join(path, base, key), "must be greater than 0");
}

/* ---- PostgreSQL query ports ---- */

#define ROLE_RULE "use letters, digits and '_', not starting with a digit"

/*
 * A libpq keyword/value connection string, scanned only as far as needed
 * to refuse what must not be in an etcd document: a password (secrets live
 * in the sidecar's passfile) and a user (the sidecar appends the port's
 * two roles).  The URI form is refused so that what the sidecar appends
 * keeps its meaning.
 */
static void validate_dsn(vctx *c, const char *dsn, const char *path)
{
    const char *p = dsn;

    if (strncmp(dsn, "postgresql://", 13) == 0 ||
        strncmp(dsn, "postgres://", 11) == 0) {
        fail(c, path,
             "use the keyword=value form (host=db dbname=sales), not a URI");
        return;
    }
    for (;;) {
        char key[64];
        size_t n = 0;

        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0')
            return;
        while (isalnum((unsigned char)*p) || *p == '_') {
            if (n + 1 < sizeof(key))
                key[n] = (char)tolower((unsigned char)*p);
            n++;
            p++;
        }
        key[n < sizeof(key) ? n : sizeof(key) - 1] = '\0';
        while (isspace((unsigned char)*p))
            p++;
        if (n == 0 || *p != '=') {
            fail(c, path,
                 "not a libpq connection string: expected keyword=value at "
                 "\"%.32s\"",
                 p);
            return;
        }
        p++;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\'') {
            for (p++; *p && *p != '\''; p++)
                if (*p == '\\' && p[1])
                    p++;
            if (*p != '\'') {
                fail(c, path, "unterminated quoted value of %s", key);
                return;
            }
            p++;
        } else {
            while (*p && !isspace((unsigned char)*p)) {
                if (*p == '\\' && p[1])
                    p++;
                p++;
            }
        }
        if (strcmp(key, "password") == 0) {
            fail(c, path,
                 "no password in a resource: the sidecar reads it from its "
                 "passfile (PGPASSFILE or ~/.pgpass)");
            return;
        }
        if (strcmp(key, "user") == 0) {
            fail(c, path,
                 "no user in the dsn: name the roles with ownerUser and "
                 "queryUser");
            return;
        }
    }
}

static void validate_pg(vctx *c, const json_t *port, const char *base,
                        const char *dsn)
{
    char path[PATH_MAX_LEN];
    const char *owner, *query;

    if (dsn)
        validate_dsn(c, dsn, join(path, base, "dsn"));
    owner = string_member(c, port, base, "ownerUser", false, 63);
    if (owner && !is_identifier(owner))
        fail(c, join(path, base, "ownerUser"), "invalid role \"%s\": %s", owner,
             ROLE_RULE);
    query = string_member(c, port, base, "queryUser", false, 63);
    if (query && !is_identifier(query))
        fail(c, join(path, base, "queryUser"), "invalid role \"%s\": %s", query,
             ROLE_RULE);
    if (strcmp(owner ? owner : "polis_owner", query ? query : "polis_query") ==
        0)
        fail(c, join(path, base, "queryUser"),
             "the query role must not be the owner role");
}

static void no_pg_users(vctx *c, const json_t *port, const char *base)
{
    char path[PATH_MAX_LEN];

    if (json_object_get(port, "ownerUser"))
        fail(c, join(path, base, "ownerUser"), "not used with engine sqlite");
    if (json_object_get(port, "queryUser"))
        fail(c, join(path, base, "queryUser"), "not used with engine sqlite");
}

/* An event port's publishers: principal names or "group:<group>". */
static bool is_publisher(const char *s)
{
    if (strncmp(s, "group:", 6) == 0)
        return is_group(s + 6);
    return is_name(s);
}

static void validate_mqtt(vctx *c, const json_t *port, const char *base)
{
    static const char *const fields[] = {"broker",      "topic", "audience",
                                         "credentials", "qos",   NULL};
    char mbase[PATH_MAX_LEN], path[PATH_MAX_LEN];
    const json_t *m = member(c, port, base, "mqtt", JSON_OBJECT, false);
    const json_t *qos;
    const char *s;

    if (m == NULL)
        return;
    join(mbase, base, "mqtt");
    check_fields(c, m, mbase, fields);
    s = string_member(c, m, mbase, "broker", true, TEXT_MAX);
    /* Resources are readable by many: a login belongs in the sidecar's
     * credentials directory, and the message must not repeat it. */
    if (s && strchr(s, '@') != NULL)
        fail(c, join(path, mbase, "broker"),
             "no credentials in a resource: name a file of the sidecar's "
             "--mqtt-credentials-dir with `credentials`");
    else if (s && !is_mqtt_url(s))
        fail(c, join(path, mbase, "broker"),
             "invalid broker \"%s\": use mqtt://host[:port] or "
             "mqtts://host[:port] (TLS)",
             s);
    s = string_member(c, m, mbase, "topic", true, 256);
    if (s && !is_mqtt_topic(s))
        fail(c, join(path, mbase, "topic"),
             "invalid topic \"%s\": no '+' or '#' wildcards, no control "
             "characters, not starting with '$'",
             s);
    s = string_member(c, m, mbase, "audience", true, 63);
    if (s && !is_name(s))
        fail(c, join(path, mbase, "audience"),
             "invalid principal name \"%s\": %s", s, NAME_RULE);
    s = string_member(c, m, mbase, "credentials", false, 63);
    if (s && !is_name(s))
        fail(c, join(path, mbase, "credentials"),
             "invalid credentials name (not repeated here: it may be a "
             "login): %s; it names a file of the sidecar's "
             "--mqtt-credentials-dir",
             NAME_RULE);
    qos = member(c, m, mbase, "qos", JSON_INTEGER, false);
    if (qos && json_integer_value(qos) != 0 && json_integer_value(qos) != 1)
        fail(c, join(path, mbase, "qos"), "must be 0 or 1");
}

static void validate_port(vctx *c, const json_t *port, const char *base)
{
    static const char *const query_fields[] = {
        "name", "type",  "description", "engine",    "database",
        "dsn",  "table", "ownerUser",   "queryUser", NULL};
    static const char *const file_fields[] = {
        "name", "type", "description", "directory", "format", NULL};
    static const char *const event_fields[] = {
        "name",           "type",           "description",
        "retentionBytes", "retentionHours", "fsync",
        "publishers",     "mqtt",           NULL};
    static const char *const http_fields[] = {"name", "type", "description",
                                              "upstream", NULL};
    static const char *const engines[] = {"sqlite", "postgresql", NULL};
    static const char *const formats[] = {"csv", "jsonl", NULL};
    static const char *const fsyncs[] = {"always", "batch", "never", NULL};
    char path[PATH_MAX_LEN];
    const char *type, *s;

    s = string_member(c, port, base, "name", true, 63);
    if (s && !is_name(s))
        fail(c, join(path, base, "name"), "invalid name \"%s\": %s", s,
             NAME_RULE);
    string_member(c, port, base, "description", false, DESCRIPTION_MAX);
    type = string_member(c, port, base, "type", true, 63);
    if (type == NULL ||
        !check_enum(c, join(path, base, "type"), type, "port type", port_types))
        return;
    if (strcmp(type, "query") == 0) {
        const char *engine;
        check_fields(c, port, base, query_fields);
        engine = string_member(c, port, base, "engine", true, 63);
        if (engine && check_enum(c, join(path, base, "engine"), engine,
                                 "engine", engines)) {
            bool sqlite = strcmp(engine, "sqlite") == 0;
            const char *need = sqlite ? "database" : "dsn";
            const char *other = sqlite ? "dsn" : "database";
            s = string_member(c, port, base, need, true, TEXT_MAX);
            if (json_object_get(port, other))
                fail(c, join(path, base, other),
                     "not used with engine %s (use %s)", engine, need);
            if (sqlite)
                no_pg_users(c, port, base);
            else
                validate_pg(c, port, base, s);
        }
        s = string_member(c, port, base, "table", true, 63);
        if (s && !is_identifier(s))
            fail(c, join(path, base, "table"),
                 "invalid table \"%s\": use letters, digits and '_', "
                 "not starting with a digit",
                 s);
    } else if (strcmp(type, "file") == 0) {
        check_fields(c, port, base, file_fields);
        string_member(c, port, base, "directory", true, TEXT_MAX);
        s = string_member(c, port, base, "format", false, 63);
        if (s)
            check_enum(c, join(path, base, "format"), s, "format", formats);
    } else if (strcmp(type, "event") == 0) {
        check_fields(c, port, base, event_fields);
        positive_int(c, port, base, "retentionBytes");
        positive_int(c, port, base, "retentionHours");
        s = string_member(c, port, base, "fsync", false, 63);
        if (s)
            check_enum(c, join(path, base, "fsync"), s, "fsync mode", fsyncs);
        string_list(c, port, base, "publishers", false, is_publisher,
                    "a principal name, or group:<group>", true);
        validate_mqtt(c, port, base);
    } else {
        check_fields(c, port, base, http_fields);
        s = string_member(c, port, base, "upstream", true, TEXT_MAX);
        if (s && !is_http_url(s))
            fail(c, join(path, base, "upstream"),
                 "invalid URL \"%s\": use http://host[:port][/path] or "
                 "https://...",
                 s);
    }
}

/* Items of a list of mappings, each with a "name" that must be unique
 * (compare with `same`). */
static void check_unique_names(vctx *c, const json_t *list, const char *lpath,
                               const char *what,
                               int (*same)(const char *, const char *))
{
    char path[PATH_MAX_LEN], field[PATH_MAX_LEN];
    const json_t *item;
    size_t i;

    json_array_foreach(list, i, item)
    {
        const json_t *n = json_object_get(item, "name");
        if (!json_is_string(n))
            continue;
        for (size_t j = 0; j < i; j++) {
            const json_t *m = json_object_get(json_array_get(list, j), "name");
            if (json_is_string(m) &&
                same(json_string_value(m), json_string_value(n)) == 0) {
                fail(c, join(field, at(path, lpath, i), "name"),
                     "duplicate %s \"%s\" (also %s[%zu])", what,
                     json_string_value(n), lpath, j);
                break;
            }
        }
    }
}

static void validate_ports(vctx *c, const json_t *spec)
{
    char path[PATH_MAX_LEN];
    const json_t *ports = member(c, spec, "spec", "ports", JSON_ARRAY, false);
    const json_t *port;
    size_t i;

    if (ports == NULL)
        return;
    json_array_foreach(ports, i, port)
    {
        at(path, "spec.ports", i);
        if (!json_is_object(port))
            fail(c, path, "must be a mapping, not %s", type_name(port));
        else
            validate_port(c, port, path);
    }
    check_unique_names(c, ports, "spec.ports", "port", strcmp);
}

static bool is_classification(const char *s)
{
    return is_tag(s, 128);
}

static void validate_schema(vctx *c, const json_t *spec)
{
    static const char *const fields[] = {"name", "type", "classification",
                                         "description", NULL};
    char base[PATH_MAX_LEN], path[PATH_MAX_LEN];
    const json_t *schema = member(c, spec, "spec", "schema", JSON_ARRAY, false);
    const json_t *col;
    size_t i;

    if (schema == NULL)
        return;
    json_array_foreach(schema, i, col)
    {
        const char *s;
        at(base, "spec.schema", i);
        if (!json_is_object(col)) {
            fail(c, base, "must be a mapping, not %s", type_name(col));
            continue;
        }
        check_fields(c, col, base, fields);
        s = string_member(c, col, base, "name", true, 63);
        if (s && !is_identifier(s))
            fail(c, join(path, base, "name"),
                 "invalid column name \"%s\": use letters, digits and '_', "
                 "not starting with a digit",
                 s);
        s = string_member(c, col, base, "type", true, 63);
        if (s)
            check_enum(c, join(path, base, "type"), s, "type", column_types);
        string_list(c, col, base, "classification", false, is_classification,
                    "use lowercase dot-separated words like pii.email", true);
        string_member(c, col, base, "description", false, DESCRIPTION_MAX);
    }
    /* SQL identifiers compare case-insensitively. */
    check_unique_names(c, schema, "spec.schema", "column", strcasecmp);
}

static bool is_purpose(const char *s)
{
    return is_tag(s, 63);
}

static bool is_product_ref(const char *s)
{
    const char *slash = strchr(s, '/');
    char domain[RES_NAME_MAX];
    size_t n;

    if (slash == NULL)
        return false;
    n = (size_t)(slash - s);
    if (n >= sizeof(domain))
        return false;
    memcpy(domain, s, n);
    domain[n] = '\0';
    return is_name(domain) && is_name(slash + 1);
}

static void validate_dataproduct(vctx *c, const json_t *spec, const char *name)
{
    static const char *const fields[] = {"domain",   "description", "owner",
                                         "ports",    "schema",      "sla",
                                         "purposes", "derivedFrom", NULL};
    static const char *const sla_fields[] = {"freshness", NULL};
    char path[PATH_MAX_LEN];
    const char *domain, *s;
    const json_t *sla, *derived;

    check_fields(c, spec, "spec", fields);
    domain = string_member(c, spec, "spec", "domain", true, 63);
    if (domain && !is_name(domain)) {
        fail(c, "spec.domain", "invalid domain name \"%s\": %s", domain,
             NAME_RULE);
        domain = NULL;
    }
    string_member(c, spec, "spec", "description", false, DESCRIPTION_MAX);
    string_member(c, spec, "spec", "owner", false, TEXT_MAX);
    validate_ports(c, spec);
    validate_schema(c, spec);
    sla = member(c, spec, "spec", "sla", JSON_OBJECT, false);
    if (sla) {
        check_fields(c, sla, "spec.sla", sla_fields);
        s = string_member(c, sla, "spec.sla", "freshness", false, 63);
        if (s && !is_duration(s))
            fail(c, "spec.sla.freshness",
                 "invalid duration \"%s\" (use e.g. 30m, 24h, 7d, 1h30m)", s);
    }
    string_list(c, spec, "spec", "purposes", false, is_purpose,
                "use lowercase words like analytics or fraud-detection", true);
    derived = string_list(c, spec, "spec", "derivedFrom", false, is_product_ref,
                          "use <domain>/<product>", true);
    if (derived && domain && name) {
        const json_t *item;
        size_t i;
        json_array_foreach(derived, i, item)
        {
            const char *ref = json_string_value(item);
            size_t dl = strlen(domain);
            if (ref && strncmp(ref, domain, dl) == 0 && ref[dl] == '/' &&
                strcmp(ref + dl + 1, name) == 0)
                fail(c, at(path, "spec.derivedFrom", i),
                     "a data product cannot derive from itself");
        }
    }
}

/* ---- Policy ------------------------------------------------------------ */

static const char *validate_policy(vctx *c, const json_t *spec)
{
    static const char *const fields[] = {"scope", "description", "rules", NULL};
    char base[PATH_MAX_LEN];
    const char *scope;
    const json_t *rules, *rule;
    size_t i;

    check_fields(c, spec, "spec", fields);
    scope = string_member(c, spec, "spec", "scope", false, 63);
    if (scope == NULL) {
        scope = RES_SCOPE_GLOBAL;
    } else if (strcmp(scope, RES_SCOPE_GLOBAL) != 0 && !is_name(scope)) {
        fail(c, "spec.scope",
             "invalid scope \"%s\": use global or a domain name", scope);
        scope = NULL;
    }
    string_member(c, spec, "spec", "description", false, DESCRIPTION_MAX);
    rules = member(c, spec, "spec", "rules", JSON_ARRAY, true);
    if (rules == NULL)
        return scope;
    if (json_array_size(rules) == 0)
        fail(c, "spec.rules", "must not be empty");
    json_array_foreach(rules, i, rule)
    {
        at(base, "spec.rules", i);
        if (!json_is_object(rule)) {
            fail(c, base, "must be a mapping, not %s", type_name(rule));
            continue;
        }
        /* Everything else in a rule is the policy engine's to judge. */
        string_member(c, rule, base, "name", true, RULE_NAME_MAX);
        string_member(c, rule, base, "effect", true, 63);
    }
    check_unique_names(c, rules, "spec.rules", "rule", strcmp);
    return scope;
}

/* ---- Principal --------------------------------------------------------- */

static void validate_principal(vctx *c, const json_t *spec)
{
    static const char *const fields[] = {"description", "groups", "attributes",
                                         "credentials", NULL};
    static const char *const cred_fields[] = {"tokenSha256", "certificates",
                                              NULL};
    const json_t *creds;

    check_fields(c, spec, "spec", fields);
    string_member(c, spec, "spec", "description", false, DESCRIPTION_MAX);
    string_list(c, spec, "spec", "groups", false, is_group,
                "use 1-63 letters, digits, '.', '_' or '-'", true);
    string_map(c, spec, "spec", "attributes", is_attribute_key,
               "use 1-63 letters, digits, '.', '_' or '-', starting with a "
               "letter",
               TEXT_MAX, true);
    creds = member(c, spec, "spec", "credentials", JSON_OBJECT, false);
    if (creds) {
        check_fields(c, creds, "spec.credentials", cred_fields);
        string_list(c, creds, "spec.credentials", "tokenSha256", false,
                    is_sha256_hex,
                    "must be 64 lowercase hex digits, the SHA-256 of the "
                    "token (printf %s \"$TOKEN\" | sha256sum)",
                    true);
        string_list(c, creds, "spec.credentials", "certificates", false,
                    any_text, "", true);
    }
}

/* ---- the envelope ------------------------------------------------------ */

/*
 * Validate one document, reporting into c.  *info gets kind/scope/name as
 * soon as they are known (even if other fields are wrong), so that a set
 * can still resolve references to it; *identified says whether they were.
 */
static void validate_doc(vctx *c, const json_t *doc, res_info *info,
                         bool *identified)
{
    static const char *const top_fields[] = {"apiVersion", "kind", "metadata",
                                             "spec", NULL};
    static const char *const meta_fields[] = {"name", "labels", "description",
                                              NULL};
    char kinds[128];
    const char *api, *kind_text, *name, *scope = NULL;
    const json_t *meta, *spec;
    res_kind kind = RES_KIND_UNKNOWN;

    memset(info, 0, sizeof(*info));
    *identified = false;
    if (!json_is_object(doc)) {
        fail(c, "", "document must be a mapping, not %s", type_name(doc));
        return;
    }
    check_fields(c, doc, "", top_fields);
    api = string_member(c, doc, "", "apiVersion", true, 63);
    if (api && strcmp(api, RES_API_VERSION) != 0)
        fail(c, "apiVersion", "unsupported version \"%s\" (expected %s)", api,
             RES_API_VERSION);
    kind_text = string_member(c, doc, "", "kind", true, 63);
    if (kind_text) {
        for (int k = RES_DOMAIN; k <= RES_PRINCIPAL; k++)
            if (strcmp(kind_text, kind_names[k]) == 0)
                kind = (res_kind)k;
        if (kind == RES_KIND_UNKNOWN) {
            res_kind guess = res_kind_parse(kind_text);
            word_list(kind_names + 1, kinds, sizeof(kinds));
            if (guess != RES_KIND_UNKNOWN)
                fail(c, "kind", "unknown kind \"%s\" (did you mean %s?)",
                     kind_text, kind_names[guess]);
            else
                fail(c, "kind", "unknown kind \"%s\" (expected one of: %s)",
                     kind_text, kinds);
        }
    }
    meta = member(c, doc, "", "metadata", JSON_OBJECT, true);
    name = NULL;
    if (meta) {
        check_fields(c, meta, "metadata", meta_fields);
        name = string_member(c, meta, "metadata", "name", true, 255);
        if (name && !is_name(name)) {
            fail(c, "metadata.name", "invalid name \"%s\": %s", name,
                 NAME_RULE);
            name = NULL;
        } else if (name && kind == RES_DOMAIN &&
                   strcmp(name, RES_SCOPE_GLOBAL) == 0) {
            fail(c, "metadata.name",
                 "\"global\" is reserved for the global scope");
            name = NULL;
        }
        string_map(c, meta, "metadata", "labels", is_attribute_key,
                   "use 1-63 letters, digits, '.', '_' or '-', starting "
                   "with a letter",
                   256, false);
        string_member(c, meta, "metadata", "description", false,
                      DESCRIPTION_MAX);
    }
    spec = member(c, doc, "", "spec", JSON_OBJECT, true);
    if (kind == RES_KIND_UNKNOWN || spec == NULL)
        return;
    switch (kind) {
    case RES_DOMAIN:
        validate_domain(c, spec);
        scope = RES_SCOPE_GLOBAL;
        break;
    case RES_DATAPRODUCT:
        validate_dataproduct(c, spec, name);
        scope = json_string_value(json_object_get(spec, "domain"));
        if (scope && !is_name(scope))
            scope = NULL;
        break;
    case RES_POLICY:
        scope = validate_policy(c, spec);
        break;
    case RES_PRINCIPAL:
        validate_principal(c, spec);
        scope = RES_SCOPE_GLOBAL;
        break;
    case RES_KIND_UNKNOWN:
        break;
    }
    if (name && scope) {
        info->kind = kind;
        snprintf(info->scope, sizeof(info->scope), "%s", scope);
        snprintf(info->name, sizeof(info->name), "%s", name);
        *identified = true;
    }
}

int res_validate(const json_t *doc, const char *source, res_info *out,
                 polis_error *err)
{
    vctx c = {source, err, NULL, 0};
    res_info info;
    bool identified;

    validate_doc(&c, doc, &info, &identified);
    if (c.problems)
        return POLIS_EINVAL;
    if (out)
        *out = info;
    return 0;
}

/* ---- a whole apply ----------------------------------------------------- */

static void id_key(char *buf, size_t len, res_kind kind, const char *scope,
                   const char *name)
{
    snprintf(buf, len, "%d/%s/%s", (int)kind, scope, name);
}

typedef struct set_ctx {
    json_t *index; /* "kind/scope/name" -> document number (owned) */
    res_lookup_fn lookup;
    void *lookup_ctx;
    res_errors *errs;
    int lookup_rc;
} set_ctx;

/* Is kind/scope/name in the set or stored?  -1 when the lookup failed. */
static int exists(set_ctx *s, res_kind kind, const char *scope,
                  const char *name)
{
    char key[3 * RES_NAME_MAX];
    polis_error err = {0};
    bool found = false;
    int rc;

    id_key(key, sizeof(key), kind, scope, name);
    if (json_object_get(s->index, key))
        return 1;
    if (s->lookup == NULL)
        return 0;
    rc = s->lookup(s->lookup_ctx, kind, scope, name, &found, &err);
    if (rc != 0) {
        if (err.code == 0)
            polis_error_set(&err, rc, NULL, "lookup of %s %s/%s failed",
                            res_kind_name(kind), scope, name);
        /* The header promises it is the last item, even when full. */
        if (s->errs->count == RES_MAX_ERRORS) {
            s->errs->count--;
            s->errs->omitted++;
        }
        errors_add(s->errs, &err);
        s->lookup_rc = rc;
        return -1;
    }
    return found ? 1 : 0;
}

static const char *source_name(const char *const *sources, size_t i, char *buf,
                               size_t len)
{
    if (sources && sources[i])
        return sources[i];
    snprintf(buf, len, "document %zu", i + 1);
    return buf;
}

/* References of one valid document; false when a lookup failed. */
static bool check_references(set_ctx *s, vctx *c, const json_t *doc,
                             const res_info *info)
{
    char path[PATH_MAX_LEN];
    const json_t *spec = json_object_get(doc, "spec");
    int e;

    if ((info->kind == RES_DATAPRODUCT || info->kind == RES_POLICY) &&
        strcmp(info->scope, RES_SCOPE_GLOBAL) != 0) {
        e = exists(s, RES_DOMAIN, RES_SCOPE_GLOBAL, info->scope);
        if (e < 0)
            return false;
        if (e == 0)
            fail(c,
                 info->kind == RES_DATAPRODUCT ? "spec.domain" : "spec.scope",
                 "domain \"%s\" does not exist (apply the Domain first or "
                 "in the same set)",
                 info->scope);
    }
    if (info->kind == RES_DATAPRODUCT) {
        const json_t *derived = json_object_get(spec, "derivedFrom");
        const json_t *item;
        size_t i;
        json_array_foreach(derived, i, item)
        {
            const char *ref = json_string_value(item);
            const char *slash = ref ? strchr(ref, '/') : NULL;
            char domain[RES_NAME_MAX];
            if (slash == NULL || (size_t)(slash - ref) >= sizeof(domain))
                continue;
            memcpy(domain, ref, (size_t)(slash - ref));
            domain[slash - ref] = '\0';
            e = exists(s, RES_DATAPRODUCT, domain, slash + 1);
            if (e < 0)
                return false;
            if (e == 0)
                fail(c, at(path, "spec.derivedFrom", i),
                     "data product \"%s\" does not exist", ref);
        }
    }
    return true;
}

int res_validate_set(const json_t *docs, const char *const *sources,
                     res_lookup_fn lookup, void *lookup_ctx, res_info *infos,
                     res_errors *errs)
{
    char key[3 * RES_NAME_MAX], namebuf[32], firstbuf[32];
    set_ctx s = {NULL, lookup, lookup_ctx, errs, 0};
    size_t n = json_array_size(docs);
    res_info *info = NULL;
    bool *ok = NULL, *known = NULL;
    int rc = 0;

    errs->count = 0;
    errs->omitted = 0;
    if (!json_is_array(docs)) {
        polis_error e = {POLIS_EINVAL, "", "expected a list of documents"};
        errors_add(errs, &e);
        return POLIS_EINVAL;
    }
    s.index = json_object();
    info = calloc(n ? n : 1, sizeof(*info));
    ok = calloc(n ? n : 1, sizeof(*ok));
    known = calloc(n ? n : 1, sizeof(*known));
    if (s.index == NULL || info == NULL || ok == NULL || known == NULL) {
        polis_error e = {POLIS_ENOMEM, "", "out of memory"};
        errors_add(errs, &e);
        rc = POLIS_ENOMEM;
        goto out;
    }

    /* 1: each document on its own, and the set's index of identities. */
    for (size_t i = 0; i < n; i++) {
        vctx c = {source_name(sources, i, namebuf, sizeof(namebuf)), NULL, errs,
                  0};
        json_t *prev;

        validate_doc(&c, json_array_get(docs, i), &info[i], &known[i]);
        ok[i] = c.problems == 0;
        if (!known[i])
            continue;
        /* 2: the same resource twice in one apply. */
        id_key(key, sizeof(key), info[i].kind, info[i].scope, info[i].name);
        prev = json_object_get(s.index, key);
        if (prev) {
            size_t j = (size_t)json_integer_value(prev);
            bool scoped = strcmp(info[i].scope, RES_SCOPE_GLOBAL) != 0;
            c.problems = 0;
            fail(&c, "metadata.name", "%s \"%s%s%s\" is also defined in %s",
                 res_kind_name(info[i].kind), scoped ? info[i].scope : "",
                 scoped ? "/" : "", info[i].name,
                 source_name(sources, j, firstbuf, sizeof(firstbuf)));
            ok[i] = false;
            continue;
        }
        if (json_object_set_new(s.index, key, json_integer((json_int_t)i))) {
            rc = POLIS_ENOMEM;
            goto out;
        }
    }

    /* 3: references, to the set or to what is stored. */
    for (size_t i = 0; i < n; i++) {
        vctx c = {source_name(sources, i, namebuf, sizeof(namebuf)), NULL, errs,
                  0};
        if (!ok[i])
            continue;
        if (!check_references(&s, &c, json_array_get(docs, i), &info[i])) {
            rc = s.lookup_rc;
            goto out;
        }
    }
    for (size_t i = 0; infos && i < n; i++) {
        if (known[i])
            infos[i] = info[i];
        else
            memset(&infos[i], 0, sizeof(infos[i]));
    }
out:
    json_decref(s.index);
    free(info);
    free(ok);
    free(known);
    if (rc == 0 && (errs->count > 0 || errs->omitted > 0))
        rc = POLIS_EINVAL;
    return rc;
}

int res_apply_defaults(json_t *doc)
{
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    json_t *spec = json_object_get(doc, "spec");
    json_t *scope = json_object_get(spec, "scope");

    if (kind == NULL || strcmp(kind, "Policy") != 0 || !json_is_object(spec))
        return 0;
    if (scope != NULL && !json_is_null(scope))
        return 0;
    if (json_object_set_new(spec, "scope", json_string(RES_SCOPE_GLOBAL)))
        return POLIS_ENOMEM;
    return 0;
}

/* ---- storage helpers --------------------------------------------------- */

char *res_canonical_json(const json_t *doc)
{
    if (doc == NULL)
        return NULL;
    return json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
}

int res_etcd_key(const char *prefix, res_kind kind, const char *scope,
                 const char *name, char *buf, size_t len)
{
    int n;

    if (kind < RES_DOMAIN || kind > RES_PRINCIPAL || scope == NULL ||
        name == NULL || buf == NULL)
        return POLIS_EINVAL;
    n = snprintf(buf, len, "%sresources/%s/%s/%s", prefix ? prefix : "",
                 kind_keys[kind], scope, name);
    if (n < 0 || (size_t)n >= len)
        return POLIS_ETOOBIG;
    return 0;
}

int res_etcd_prefix(const char *prefix, res_kind kind, const char *scope,
                    char *buf, size_t len)
{
    int n;

    if (buf == NULL || kind < RES_KIND_UNKNOWN || kind > RES_PRINCIPAL)
        return POLIS_EINVAL;
    if (prefix == NULL)
        prefix = "";
    if (kind == RES_KIND_UNKNOWN)
        n = snprintf(buf, len, "%sresources/", prefix);
    else if (scope == NULL)
        n = snprintf(buf, len, "%sresources/%s/", prefix, kind_keys[kind]);
    else
        n = snprintf(buf, len, "%sresources/%s/%s/", prefix, kind_keys[kind],
                     scope);
    if (n < 0 || (size_t)n >= len)
        return POLIS_ETOOBIG;
    return 0;
}

/* Copy the segment [s, end) into dst (RES_NAME_MAX), if it fits. */
static bool copy_segment(char *dst, const char *s, const char *end)
{
    size_t n = (size_t)(end - s);

    if (n == 0 || n >= RES_NAME_MAX)
        return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

int res_etcd_key_parse(const char *prefix, const char *key, res_info *out)
{
    size_t pl = prefix ? strlen(prefix) : 0;
    const char *p, *slash1, *slash2;
    char kind[RES_NAME_MAX];
    res_info info;

    if (key == NULL || out == NULL || (pl && strncmp(key, prefix, pl) != 0))
        return POLIS_EINVAL;
    p = key + pl;
    if (strncmp(p, "resources/", 10) != 0)
        return POLIS_EINVAL;
    p += 10;
    slash1 = strchr(p, '/');
    slash2 = slash1 ? strchr(slash1 + 1, '/') : NULL;
    if (slash2 == NULL || strchr(slash2 + 1, '/') != NULL)
        return POLIS_EINVAL;
    memset(&info, 0, sizeof(info));
    if (!copy_segment(kind, p, slash1) ||
        !copy_segment(info.scope, slash1 + 1, slash2) ||
        !copy_segment(info.name, slash2 + 1, slash2 + 1 + strlen(slash2 + 1)))
        return POLIS_EINVAL;
    for (int k = RES_DOMAIN; k <= RES_PRINCIPAL; k++)
        if (strcmp(kind, kind_keys[k]) == 0)
            info.kind = (res_kind)k;
    if (info.kind == RES_KIND_UNKNOWN)
        return POLIS_EINVAL;
    *out = info;
    return 0;
}
