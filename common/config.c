/*
 * config.c — defaults → file → environment → flags (config.h).
 */
#include "common/config.h"
#include "common/document.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const config_option *find_option(const config_option *table, size_t n,
                                        const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(table[i].name) == len &&
            strncmp(table[i].name, name, len) == 0)
            return &table[i];
    return NULL;
}

/* Set one option from text; `origin` says where it came from, for errors. */
static int set_value(const config_option *o, void *conf, const char *value,
                     const char *origin, polis_error *err)
{
    char *field = (char *)conf + o->offset;
    char *end;
    long v;

    switch (o->type) {
    case CONFIG_STRING:
        if (strlen(value) >= o->size)
            return polis_error_set(err, POLIS_EINVAL, origin,
                                   "value is %zu bytes, at most %zu allowed",
                                   strlen(value), o->size - 1);
        memcpy(field, value, strlen(value) + 1);
        return 0;
    case CONFIG_INT:
        errno = 0;
        v = strtol(value, &end, 10);
        if (errno || end == value || *end != '\0')
            return polis_error_set(err, POLIS_EINVAL, origin,
                                   "\"%s\" is not an integer", value);
        if (v < o->min || v > o->max)
            return polis_error_set(err, POLIS_EINVAL, origin,
                                   "%ld is out of range [%ld, %ld]", v, o->min,
                                   o->max);
        *(int *)field = (int)v;
        return 0;
    case CONFIG_BOOL:
        if (!strcasecmp(value, "true") || !strcasecmp(value, "yes") ||
            !strcmp(value, "1") || !strcasecmp(value, "on"))
            *(int *)field = 1;
        else if (!strcasecmp(value, "false") || !strcasecmp(value, "no") ||
                 !strcmp(value, "0") || !strcasecmp(value, "off"))
            *(int *)field = 0;
        else
            return polis_error_set(err, POLIS_EINVAL, origin,
                                   "\"%s\" is not a boolean (true/false)",
                                   value);
        return 0;
    }
    return polis_error_set(err, POLIS_EINTERNAL, origin, "bad option type");
}

static int load_file(const config_option *table, size_t n, void *conf,
                     const char *path, polis_error *err)
{
    json_t *docs = NULL, *doc, *value;
    const char *key;
    char origin[POLIS_ERROR_WHERE_MAX], text[64];
    int rc;

    rc = doc_parse_file(path, 0, &docs, err);
    if (rc)
        return rc;
    if (json_array_size(docs) != 1) {
        rc = polis_error_set(err, POLIS_EINVAL, path,
                             "a config file holds exactly one mapping");
        goto out;
    }
    doc = json_array_get(docs, 0);
    json_object_foreach(doc, key, value)
    {
        const config_option *o = find_option(table, n, key, strlen(key));
        const char *s = text;

        snprintf(origin, sizeof(origin), "%s: %s", path, key);
        if (o == NULL || strcmp(key, "config") == 0) {
            rc = polis_error_set(err, POLIS_EINVAL, origin, "unknown option");
            goto out;
        }
        if (json_is_string(value))
            s = json_string_value(value);
        else if (json_is_integer(value))
            snprintf(text, sizeof(text), "%lld",
                     (long long)json_integer_value(value));
        else if (json_is_boolean(value))
            s = json_is_true(value) ? "true" : "false";
        else {
            rc = polis_error_set(err, POLIS_EINVAL, origin,
                                 "expected a string, number or boolean");
            goto out;
        }
        rc = set_value(o, conf, s, origin, err);
        if (rc)
            goto out;
    }
out:
    json_decref(docs);
    return rc;
}

static void env_name(const char *prefix, const char *name, char *buf,
                     size_t len)
{
    size_t i = (size_t)snprintf(buf, len, "%s", prefix);
    for (; *name && i + 1 < len; name++)
        buf[i++] = *name == '-' ? '_' : (char)toupper((unsigned char)*name);
    buf[i] = '\0';
}

int config_load(const config_option *table, size_t n, void *conf, int argc,
                char **argv, const char *env_prefix, int *help_out,
                int *version_out, polis_error *err)
{
    const char *config_file = NULL;
    char origin[POLIS_ERROR_WHERE_MAX], ename[128];
    int rc;

    *help_out = 0;
    if (version_out)
        *version_out = 0;
    for (size_t i = 0; i < n; i++) {
        rc = set_value(&table[i], conf, table[i].def ? table[i].def : "",
                       table[i].name, err);
        if (rc)
            return rc;
    }
    /* Pass 1: --help, --version, --config; they change what comes next. */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            *help_out = 1;
            return 0;
        }
        if (!strcmp(argv[i], "--version") && version_out) {
            *version_out = 1;
            return 0;
        }
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc)
                return polis_error_set(err, POLIS_EINVAL, "--config",
                                       "missing value (a file name)");
            config_file = argv[++i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            config_file = argv[i] + 9;
        }
    }
    if (config_file && (rc = load_file(table, n, conf, config_file, err)))
        return rc;
    for (size_t i = 0; i < n; i++) {
        const char *v;
        env_name(env_prefix, table[i].name, ename, sizeof(ename));
        v = getenv(ename);
        if (v == NULL)
            continue;
        snprintf(origin, sizeof(origin), "environment %s", ename);
        if ((rc = set_value(&table[i], conf, v, origin, err)))
            return rc;
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *name, *eq, *value;
        const config_option *o;
        size_t len;

        if (strncmp(arg, "--", 2) != 0)
            return polis_error_set(err, POLIS_EINVAL, arg,
                                   "unexpected argument (flags start with "
                                   "--; see --help)");
        name = arg + 2;
        eq = strchr(name, '=');
        len = eq ? (size_t)(eq - name) : strlen(name);
        if (len == 6 && !strncmp(name, "config", 6)) {
            if (!eq)
                i++;
            continue;
        }
        o = find_option(table, n, name, len);
        if (o == NULL)
            return polis_error_set(err, POLIS_EINVAL, arg,
                                   "unknown flag (see --help)");
        if (eq) {
            value = eq + 1;
        } else if (o->type == CONFIG_BOOL &&
                   (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))) {
            value = "true";
        } else {
            if (i + 1 >= argc)
                return polis_error_set(err, POLIS_EINVAL, arg, "missing value");
            value = argv[++i];
        }
        snprintf(origin, sizeof(origin), "--%s", o->name);
        if ((rc = set_value(o, conf, value, origin, err)))
            return rc;
    }
    return 0;
}

void config_print_help(FILE *out, const config_option *table, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const config_option *o = &table[i];
        char flag[96];
        snprintf(flag, sizeof(flag), "--%s %s", o->name,
                 o->type == CONFIG_INT    ? "N"
                 : o->type == CONFIG_BOOL ? "[BOOL]"
                                          : "VALUE");
        fprintf(out, "  %-30s %s", flag, o->help);
        if (o->def && o->def[0])
            fprintf(out, " (default: %s)", o->def);
        fputc('\n', out);
    }
    fprintf(out, "  %-30s %s\n", "--config FILE",
            "read options from a YAML/JSON file (keys are option names)");
    fprintf(out, "  %-30s %s\n", "--help", "show this help");
}
