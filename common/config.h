/*
 * config.h — declarative daemon configuration: a table of options (name,
 * type, bounds, default, help) applied in the order defaults → config file
 * (YAML/JSON mapping, keys = option names) → environment (POLIS_<NAME>) →
 * command-line flags (--name VALUE or --name=VALUE).  --help text comes from
 * the same table.
 */
#ifndef POLIS_CONFIG_H
#define POLIS_CONFIG_H

#include "common/error.h"

#include <stddef.h>
#include <stdio.h>

typedef enum config_type {
    CONFIG_STRING, /* char[size] at offset */
    CONFIG_INT,    /* int at offset, within [min, max] */
    CONFIG_BOOL,   /* int at offset: true/false, yes/no, 1/0 */
} config_type;

typedef struct config_option {
    const char *name; /* "etcd-prefix": flag --etcd-prefix, env
                         POLIS_ETCD_PREFIX, file key etcd-prefix */
    config_type type;
    size_t offset; /* offsetof(struct, field) */
    size_t size;   /* CONFIG_STRING: sizeof(field) */
    const char *def;
    long min, max; /* CONFIG_INT */
    const char *help;
} config_option;

/* One table row for field `field` of struct type `type`. */
#define CONFIG_OPT(type, name, kind, field, def, min, max, help)               \
    {                                                                          \
        name, kind, offsetof(type, field), sizeof(((type *)0)->field), def,    \
            min, max, help                                                     \
    }

/*
 * Fill `conf` from the table.  argv is scanned for --config FILE first;
 * --help and --version set *help_out / *version_out (and nothing else is
 * required).  Unknown flags, missing values, values out of bounds or too
 * long are errors naming the option and where it came from (flag, env,
 * file:key).  `env_prefix` is e.g. "POLIS_".
 */
int config_load(const config_option *table, size_t n, void *conf, int argc,
                char **argv, const char *env_prefix, int *help_out,
                int *version_out, polis_error *err);

/* Print "  --name VALUE   help (default: x)" lines for the table. */
void config_print_help(FILE *out, const config_option *table, size_t n);

#endif
