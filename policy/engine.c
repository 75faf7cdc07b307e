/*
 * engine.c — compile Policy and DataProduct documents (docs/policy.md) into
 * an immutable engine with a per-product, per-port rule index, and decide
 * requests against it without allocating (docs/internals/policy.md).
 */
#include "policy/policy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- arena: everything of an engine but its index vectors ---------------- */

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    max_align_t data[];
} arena_chunk;

typedef struct arena {
    arena_chunk *head;
} arena;

static void *arena_alloc(arena *a, size_t n)
{
    arena_chunk *c = a->head;
    size_t align = sizeof(max_align_t);

    n = (n + align - 1) / align * align;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;

        c = malloc(sizeof(*c) + cap);
        if (c == NULL)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    c->used += n;
    return (char *)c->data + c->used - n;
}

static char *arena_strdup(arena *a, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = arena_alloc(a, n);

    if (p)
        memcpy(p, s, n);
    return p;
}

static void arena_free(arena *a)
{
    arena_chunk *c = a->head, *next;

    for (; c; c = next) {
        next = c->next;
        free(c);
    }
    a->head = NULL;
}

/* ---- string map: open addressing, string -> uint32 ----------------------- */

/*
 * Keys up to 16 bytes are copied into the slot, and every slot keeps its
 * hash: a lookup of a principal or group name usually costs one cache
 * miss, with no string compare on a collision.
 */
#define STRMAP_INLINE 16

typedef struct strmap_slot {
    uint64_t hash;
    uint32_t len, val;
    const char *key; /* NULL: empty slot */
    char inl[STRMAP_INLINE];
} strmap_slot;

typedef struct strmap {
    strmap_slot *slots;
    size_t cap, n;
} strmap;

static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    size_t i;

    for (i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static bool slot_is(const strmap_slot *sl, uint64_t h, const char *s,
                    size_t len)
{
    return sl->hash == h && sl->len == len &&
           memcmp(len <= STRMAP_INLINE ? sl->inl : sl->key, s, len) == 0;
}

static bool strmap_get(const strmap *m, const char *s, size_t len,
                       uint32_t *val)
{
    uint64_t h;
    size_t i;

    if (m->cap == 0)
        return false;
    h = hash_bytes(s, len);
    for (i = h & (m->cap - 1); m->slots[i].key; i = (i + 1) & (m->cap - 1))
        if (slot_is(&m->slots[i], h, s, len)) {
            *val = m->slots[i].val;
            return true;
        }
    return false;
}

static void strmap_place(strmap *m, const strmap_slot *sl)
{
    size_t i;

    for (i = sl->hash & (m->cap - 1); m->slots[i].key;
         i = (i + 1) & (m->cap - 1))
        ;
    m->slots[i] = *sl;
    m->n++;
}

/* `key` must outlive the map.  Replaces an existing value. */
static int strmap_put(strmap *m, const char *key, uint32_t val)
{
    size_t i, len = strlen(key);
    uint64_t h = hash_bytes(key, len);
    strmap_slot sl = {0};

    if (len > UINT32_MAX)
        return POLIS_ETOOBIG;
    for (i = h & (m->cap - 1); m->cap && m->slots[i].key;
         i = (i + 1) & (m->cap - 1))
        if (slot_is(&m->slots[i], h, key, len)) {
            m->slots[i].val = val;
            return 0;
        }
    if ((m->n + 1) * 2 > m->cap) {
        strmap bigger = {0};
        size_t j;

        bigger.cap = m->cap ? m->cap * 2 : 16;
        bigger.slots = calloc(bigger.cap, sizeof(strmap_slot));
        if (bigger.slots == NULL)
            return POLIS_ENOMEM;
        for (j = 0; j < m->cap; j++)
            if (m->slots[j].key)
                strmap_place(&bigger, &m->slots[j]);
        free(m->slots);
        *m = bigger;
    }
    sl.hash = h;
    sl.len = (uint32_t)len;
    sl.val = val;
    sl.key = key;
    if (len <= STRMAP_INLINE)
        memcpy(sl.inl, key, len);
    strmap_place(m, &sl);
    return 0;
}

static void strmap_free(strmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

/* ---- compiled structures ------------------------------------------------- */

typedef struct strlist {
    const char **v;
    uint32_t n;
} strlist;

typedef struct rule {
    pol_rule_info info; /* first: decisions hand out &rule->info */
    uint32_t order;
    uint32_t index; /* in its policy's spec.rules, for errors */
    bool any_subject;
    uint32_t *subjects; /* interned principal and group ids */
    strlist subject_text;
    strlist resources;
    uint8_t ports; /* bit per pol_port */
    strlist classes;
    strlist purposes; /* n == 0: any purpose */
    pol_expr *when;
    uint32_t *except_subjects;
    strlist except_subject_text;
    bool except_any_subject;
    strlist except_purposes;
    pol_mask mask;
    strlist mask_columns;
    strlist mask_classes;
    pol_expr *filter;
    bool filter_checked;
} rule;

typedef struct column {
    const char *name;
    pol_expr_type type;
    strlist tags;
    uint32_t name_id;
} column;

/* Rule ids in rule order.  Most lists of a (product, subject) pair hold
 * one or two rules: those stay inside the struct (cap == 0), saving the
 * decision a cache miss. */
typedef struct rulevec {
    uint32_t n, cap;
    union {
        uint32_t *heap;
        uint32_t in[2];
    } u;
} rulevec;

static const uint32_t *rv_ids(const rulevec *v)
{
    return v->cap ? v->u.heap : v->u.in;
}

static void rv_free(rulevec *v)
{
    if (v->cap)
        free(v->u.heap);
}

enum { LIST_ACCESS = 0, LIST_OBLIGATION = 1 };

typedef struct product {
    const char *id; /* "domain/name" */
    const char *domain;
    const char *name;
    column *cols;
    uint32_t ncols;
    rulevec any[2];     /* rules for subject "*", by LIST_* */
    uint32_t last_rule; /* index build: last rule added + 1 */
} product;

/* Rules of one (product index << 32 | subject id) pair, by LIST_*, kept
 * in the hash slot itself: one cache miss finds the lists. */
typedef struct pair_slot {
    uint64_t key; /* UINT64_MAX: empty */
    rulevec lists[2];
} pair_slot;

typedef struct pair_map {
    pair_slot *slots;
    size_t cap, n;
} pair_map;

/* What a decision reads of every candidate rule, packed so that rules
 * without conditions are decided without touching their full struct. */
enum {
    HOT_COND = 1, /* purposes, exceptions, classifications or `when` */
};

typedef struct rule_hot {
    uint8_t effect, ports, flags;
} rule_hot;

struct pol_engine {
    arena ar;
    rule *rules;
    size_t nrules, rules_cap;
    product *products;
    size_t nproducts;
    strmap product_map;
    strmap principals, groups; /* subject name -> id */
    uint32_t nsubjects;
    strmap column_names;
    uint32_t ncolumn_names;
    pair_map pairs;
    /* Bit (product, subject id) set when the pair has rules: most pairs
     * have none, and this small table answers without a cache miss.  NULL
     * when it would be too big (then every pair is looked up). */
    uint64_t *pair_bits;
    size_t pair_words; /* per product */
    rule_hot *hot;     /* per rule */
    bool has_key;
    pol_mask_key key;
};

/* ---- names --------------------------------------------------------------- */

static const char *const effect_names[] = {"allow", "deny", "mask", "filter",
                                           "aggregate"};
static const char *const port_names[] = {"query", "file", "event", "http"};

const char *pol_effect_name(pol_effect effect)
{
    if ((unsigned)effect < 5)
        return effect_names[effect];
    return "?";
}

const char *pol_port_name(pol_port port)
{
    if ((unsigned)port < POL_PORT_COUNT)
        return port_names[port];
    return "?";
}

int pol_port_from_name(const char *name, pol_port *port)
{
    unsigned i;

    for (i = 0; name && i < POL_PORT_COUNT; i++) {
        if (strcmp(name, port_names[i]) == 0) {
            *port = (pol_port)i;
            return 0;
        }
    }
    return POLIS_ENOTFOUND;
}

/* ---- globs --------------------------------------------------------------- */

/* `*` matches any run of characters (also '/' and '.'), `?` one byte. */
static bool glob_match(const char *pat, const char *s)
{
    const char *star = NULL, *resume = NULL;

    while (*s) {
        if (*pat == '*') {
            star = pat++;
            resume = s;
        } else if (*pat == '?' || *pat == *s) {
            pat++;
            s++;
        } else if (star) {
            pat = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*pat == '*')
        pat++;
    return *pat == '\0';
}

static bool has_glob(const char *s)
{
    return strpbrk(s, "*?") != NULL;
}

static bool has_glob_n(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (s[i] == '*' || s[i] == '?')
            return true;
    return false;
}

/* ---- build context and errors -------------------------------------------- */

typedef struct build {
    pol_engine *e;
    polis_error *err;
    char doc[POL_MAX_NAME + 32]; /* `policy "pii"` */
    bool validate_only;
} build;

static int fail(build *b, int code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(build *b, int code, const char *path, const char *fmt, ...)
{
    char where[POLIS_ERROR_WHERE_MAX];
    char msg[POLIS_ERROR_MSG_MAX];
    va_list ap;

    if (path && path[0])
        snprintf(where, sizeof(where), "%s: %s", b->doc, path);
    else
        snprintf(where, sizeof(where), "%s", b->doc);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return polis_error_set(b->err, code, where, "%s", msg);
}

static int nomem(build *b)
{
    return polis_error_set(b->err, POLIS_ENOMEM, b->doc, "out of memory");
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);

    return n > 0 && n <= POL_MAX_NAME;
}

/*
 * A non-empty array of non-empty strings (at most POL_MAX_LIST, each at most
 * POL_MAX_NAME bytes) into arena copies.  `required`: absence is an error;
 * otherwise absence leaves out empty.
 */
static int parse_strlist(build *b, const json_t *v, const char *path,
                         bool required, strlist *out)
{
    char ipath[POLIS_ERROR_WHERE_MAX];
    size_t i;

    out->v = NULL;
    out->n = 0;
    if (v == NULL) {
        if (required)
            return fail(b, POLIS_EINVAL, path, "is required");
        return 0;
    }
    if (!json_is_array(v))
        return fail(b, POLIS_EINVAL, path, "must be a list of strings");
    if (json_array_size(v) == 0)
        return fail(b, POLIS_EINVAL, path, "must not be empty");
    if (json_array_size(v) > POL_MAX_LIST)
        return fail(b, POLIS_ETOOBIG, path, "more than %d entries",
                    POL_MAX_LIST);
    out->v = arena_alloc(&b->e->ar, json_array_size(v) * sizeof(char *));
    if (out->v == NULL)
        return nomem(b);
    for (i = 0; i < json_array_size(v); i++) {
        const json_t *s = json_array_get(v, i);

        snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
        if (!json_is_string(s))
            return fail(b, POLIS_EINVAL, ipath, "must be a string");
        if (!valid_name(json_string_value(s)) ||
            strlen(json_string_value(s)) != json_string_length(s))
            return fail(b, POLIS_EINVAL, ipath,
                        "must be a non-empty string of at most %d bytes",
                        POL_MAX_NAME);
        out->v[i] = arena_strdup(&b->e->ar, json_string_value(s));
        if (out->v[i] == NULL)
            return nomem(b);
        out->n++;
    }
    return 0;
}

/* Check that every key of obj is in the NULL-terminated `allowed`. */
static int check_keys(build *b, const json_t *obj, const char *path,
                      const char *const *allowed)
{
    const char *key;
    json_t *v;
    size_t i;

    json_object_foreach((json_t *)obj, key, v)
    {
        bool ok = false;

        for (i = 0; allowed[i]; i++)
            if (strcmp(key, allowed[i]) == 0)
                ok = true;
        if (!ok) {
            char where[POLIS_ERROR_WHERE_MAX];

            if (path && path[0])
                snprintf(where, sizeof(where), "%s.%s", path, key);
            else
                snprintf(where, sizeof(where), "%s", key);
            return fail(b, POLIS_EINVAL, where, "unknown field \"%s\"", key);
        }
    }
    return 0;
}

static int intern_subject(build *b, const char *text, uint32_t *id)
{
    pol_engine *e = b->e;
    strmap *m = &e->principals;
    const char *key = text;

    if (strncmp(text, "group:", 6) == 0) {
        m = &e->groups;
        key = text + 6;
    }
    if (strmap_get(m, key, strlen(key), id))
        return 0;
    *id = e->nsubjects++;
    if (strmap_put(m, key, *id) != 0)
        return nomem(b);
    return 0;
}

/* Subjects: "*", "group:<name>" or a principal name. */
static int parse_subjects(build *b, const json_t *v, const char *path,
                          bool required, strlist *text, uint32_t **ids,
                          bool *any)
{
    char ipath[POLIS_ERROR_WHERE_MAX];
    uint32_t i;
    int rc;

    *any = false;
    *ids = NULL;
    if ((rc = parse_strlist(b, v, path, required, text)) != 0)
        return rc;
    if (text->n == 0)
        return 0;
    *ids = arena_alloc(&b->e->ar, text->n * sizeof(uint32_t));
    if (*ids == NULL)
        return nomem(b);
    for (i = 0; i < text->n; i++) {
        snprintf(ipath, sizeof(ipath), "%s[%u]", path, i);
        if (strcmp(text->v[i], "*") == 0) {
            *any = true;
            (*ids)[i] = UINT32_MAX;
            continue;
        }
        if (strcmp(text->v[i], "group:") == 0 || has_glob(text->v[i]))
            return fail(b, POLIS_EINVAL, ipath,
                        "invalid subject \"%s\" (a principal name, "
                        "\"group:<name>\" or \"*\")",
                        text->v[i]);
        if ((rc = intern_subject(b, text->v[i], &(*ids)[i])) != 0)
            return rc;
    }
    return 0;
}

/* ---- expressions ----------------------------------------------------------
 */

static int expr_fail(build *b, const char *path, const char *prefix,
                     const polis_error *perr)
{
    if (perr->code == POLIS_ENOMEM)
        return nomem(b);
    return fail(b, perr->code ? perr->code : POLIS_EINVAL, path, "%s%s%s%s",
                prefix ? prefix : "", perr->where, perr->where[0] ? ": " : "",
                perr->message);
}

static pol_expr_type column_type(const char *t)
{
    static const char *const ints[] = {"integer",  "int",   "long",  "bigint",
                                       "smallint", "int64", "int32", NULL};
    static const char *const decs[] = {"number",  "decimal", "double", "float",
                                       "numeric", "real",    NULL};
    size_t i;

    if (t == NULL)
        return POL_EXPR_STRING;
    for (i = 0; ints[i]; i++)
        if (strcmp(t, ints[i]) == 0)
            return POL_EXPR_INTEGER;
    for (i = 0; decs[i]; i++)
        if (strcmp(t, decs[i]) == 0)
            return POL_EXPR_DECIMAL;
    if (strcmp(t, "boolean") == 0 || strcmp(t, "bool") == 0)
        return POL_EXPR_BOOLEAN;
    /* Dates and timestamps are ISO strings for the expression language. */
    return POL_EXPR_STRING;
}

typedef struct lookup_ctx {
    const product *p;
} lookup_ctx;

static int product_lookup(void *ctx, const char *name, pol_expr_type *type,
                          int *column_id)
{
    const product *p = ((lookup_ctx *)ctx)->p;
    uint32_t i;

    for (i = 0; i < p->ncols; i++) {
        if (strcasecmp(p->cols[i].name, name) == 0) {
            *type = p->cols[i].type;
            *column_id = (int)p->cols[i].name_id;
            return 0;
        }
    }
    return POLIS_ENOTFOUND;
}

/* ---- DataProduct documents ------------------------------------------------
 */

static int parse_product(build *b, const json_t *doc, size_t index)
{
    pol_engine *e = b->e;
    const json_t *spec = json_object_get(doc, "spec");
    const json_t *meta = json_object_get(doc, "metadata");
    const char *name = json_string_value(json_object_get(meta, "name"));
    const char *domain = json_string_value(json_object_get(spec, "domain"));
    const json_t *schema = json_object_get(spec, "schema");
    product *p = &e->products[e->nproducts];
    char id[2 * POL_MAX_NAME + 2];
    uint32_t dup;
    size_t i;

    snprintf(b->doc, sizeof(b->doc), "documents[%zu]", index);
    if (name == NULL || !valid_name(name) || strchr(name, '/'))
        return fail(b, POLIS_EINVAL, "metadata.name",
                    "must be a non-empty name without '/'");
    snprintf(b->doc, sizeof(b->doc), "dataproduct \"%s\"", name);
    if (!json_is_object(spec))
        return fail(b, POLIS_EINVAL, "spec", "must be an object");
    if (domain == NULL || !valid_name(domain) || strchr(domain, '/') ||
        has_glob(domain))
        return fail(b, POLIS_EINVAL, "spec.domain",
                    "must be a domain name without '/', '*' or '?'");
    snprintf(id, sizeof(id), "%s/%s", domain, name);
    snprintf(b->doc, sizeof(b->doc), "dataproduct \"%s\"", id);
    if (strmap_get(&e->product_map, id, strlen(id), &dup))
        return fail(b, POLIS_ECONFLICT, "metadata.name",
                    "product \"%s\" is defined twice", id);
    memset(p, 0, sizeof(*p));
    p->id = arena_strdup(&e->ar, id);
    p->domain = arena_strdup(&e->ar, domain);
    p->name = arena_strdup(&e->ar, name);
    if (!p->id || !p->domain || !p->name)
        return nomem(b);
    if (schema != NULL && !json_is_array(schema))
        return fail(b, POLIS_EINVAL, "spec.schema",
                    "must be a list of columns");
    if (json_array_size(schema) > POL_MAX_COLUMNS)
        return fail(b, POLIS_ETOOBIG, "spec.schema", "more than %d columns",
                    POL_MAX_COLUMNS);
    p->cols =
        arena_alloc(&e->ar, (json_array_size(schema) + 1) * sizeof(column));
    if (p->cols == NULL)
        return nomem(b);
    for (i = 0; i < json_array_size(schema); i++) {
        const json_t *c = json_array_get(schema, i);
        const char *cname = json_string_value(json_object_get(c, "name"));
        const json_t *cls = json_object_get(c, "classification");
        column *col = &p->cols[p->ncols];
        char path[64];
        uint32_t k;
        int rc;

        memset(col, 0, sizeof(*col));
        snprintf(path, sizeof(path), "spec.schema[%zu].name", i);
        if (cname == NULL || !valid_name(cname))
            return fail(b, POLIS_EINVAL, path, "must be a non-empty string");
        for (k = 0; k < p->ncols; k++)
            if (strcasecmp(p->cols[k].name, cname) == 0)
                return fail(b, POLIS_EINVAL, path,
                            "column \"%s\" is defined twice", cname);
        col->name = arena_strdup(&e->ar, cname);
        if (col->name == NULL)
            return nomem(b);
        col->type = column_type(json_string_value(json_object_get(c, "type")));
        snprintf(path, sizeof(path), "spec.schema[%zu].classification", i);
        if (json_is_string(cls)) {
            /* One tag may be written without a list. */
            col->tags.v = arena_alloc(&e->ar, sizeof(char *));
            if (!col->tags.v || !(col->tags.v[0] = arena_strdup(
                                      &e->ar, json_string_value(cls))))
                return nomem(b);
            col->tags.n = 1;
        } else if (cls != NULL &&
                   !(json_is_array(cls) && json_array_size(cls) == 0)) {
            if ((rc = parse_strlist(b, cls, path, false, &col->tags)) != 0)
                return rc;
        }
        if (!strmap_get(&e->column_names, col->name, strlen(col->name),
                        &col->name_id)) {
            col->name_id = e->ncolumn_names++;
            if (strmap_put(&e->column_names, col->name, col->name_id))
                return nomem(b);
        }
        p->ncols++;
    }
    if (strmap_put(&e->product_map, p->id, (uint32_t)e->nproducts))
        return nomem(b);
    e->nproducts++;
    return 0;
}

/* ---- Policy documents -----------------------------------------------------
 */

static int parse_ports(build *b, const json_t *v, const char *path,
                       uint8_t *ports)
{
    strlist names;
    uint32_t i;
    int rc;

    *ports = (1u << POL_PORT_COUNT) - 1;
    if ((rc = parse_strlist(b, v, path, false, &names)) != 0 || names.n == 0)
        return rc;
    *ports = 0;
    for (i = 0; i < names.n; i++) {
        pol_port port;
        char ipath[POLIS_ERROR_WHERE_MAX];

        if (pol_port_from_name(names.v[i], &port) != 0) {
            snprintf(ipath, sizeof(ipath), "%s[%u]", path, i);
            return fail(b, POLIS_EINVAL, ipath,
                        "unknown port \"%s\" (query, file, event, http)",
                        names.v[i]);
        }
        *ports |= (uint8_t)(1u << port);
    }
    return 0;
}

static int check_resources(build *b, const rule *r, const char *path,
                           const char *scope)
{
    char ipath[POLIS_ERROR_WHERE_MAX];
    uint32_t i;

    for (i = 0; i < r->resources.n; i++) {
        const char *res = r->resources.v[i];
        const char *slash = strchr(res, '/');

        snprintf(ipath, sizeof(ipath), "%s[%u]", path, i);
        if (strcmp(res, "*") != 0 &&
            (slash == NULL || slash == res || slash[1] == '\0' ||
             strchr(slash + 1, '/')))
            return fail(b, POLIS_EINVAL, ipath,
                        "invalid resource \"%s\" (\"domain/product\", "
                        "globs allowed, or \"*\")",
                        res);
        if (strcmp(scope, "global") == 0)
            continue;
        /* Domain policies reach their own domain's products only. */
        if (slash == NULL || (size_t)(slash - res) != strlen(scope) ||
            strncmp(res, scope, strlen(scope)) != 0)
            return fail(b, POLIS_EINVAL, ipath,
                        "a policy of domain \"%s\" may only name products "
                        "\"%s/...\", not \"%s\"",
                        scope, scope, res);
    }
    return 0;
}

static int parse_rule(build *b, const json_t *jr, size_t ri, const char *scope,
                      const char *policy, rule *r)
{
    static const char *const keys[] = {
        "name",        "effect", "subjects",
        "resources",   "ports",  "classifications",
        "purposes",    "when",   "except",
        "mask",        "filter", "aggregate",
        "description", NULL};
    static const char *const except_keys[] = {"subjects", "purposes", NULL};
    static const char *const mask_keys[] = {"method", "columns",
                                            "classifications", "params", NULL};
    static const char *const agg_keys[] = {"minGroupSize", NULL};
    char path[64], sub[POLIS_ERROR_WHERE_MAX];
    const char *name, *effect, *text;
    const json_t *v;
    unsigned i;
    int rc;

    snprintf(path, sizeof(path), "spec.rules[%zu]", ri);
    memset(r, 0, sizeof(*r));
    if (!json_is_object(jr))
        return fail(b, POLIS_EINVAL, path, "must be an object");
    if ((rc = check_keys(b, jr, path, keys)) != 0)
        return rc;
    r->info.scope = scope;
    r->info.policy = policy;
    snprintf(sub, sizeof(sub), "%s.name", path);
    name = json_string_value(json_object_get(jr, "name"));
    if (name == NULL || !valid_name(name))
        return fail(b, POLIS_EINVAL, sub, "must be a non-empty string");
    if (!(r->info.name = arena_strdup(&b->e->ar, name)))
        return nomem(b);

    snprintf(sub, sizeof(sub), "%s.effect", path);
    effect = json_string_value(json_object_get(jr, "effect"));
    for (i = 0; effect && i < 5; i++)
        if (strcmp(effect, effect_names[i]) == 0)
            break;
    if (effect == NULL || i == 5)
        return fail(b, POLIS_EINVAL, sub,
                    effect ? "unknown effect \"%s\" (allow, deny, mask, "
                             "filter, aggregate)"
                           : "is required%s",
                    effect ? effect : "");
    r->info.effect = (pol_effect)i;

    snprintf(sub, sizeof(sub), "%s.subjects", path);
    if ((rc = parse_subjects(b, json_object_get(jr, "subjects"), sub, true,
                             &r->subject_text, &r->subjects,
                             &r->any_subject)) != 0)
        return rc;
    snprintf(sub, sizeof(sub), "%s.resources", path);
    if ((rc = parse_strlist(b, json_object_get(jr, "resources"), sub, true,
                            &r->resources)) != 0 ||
        (rc = check_resources(b, r, sub, scope)) != 0)
        return rc;
    snprintf(sub, sizeof(sub), "%s.ports", path);
    if ((rc = parse_ports(b, json_object_get(jr, "ports"), sub, &r->ports)))
        return rc;
    snprintf(sub, sizeof(sub), "%s.classifications", path);
    if ((rc = parse_strlist(b, json_object_get(jr, "classifications"), sub,
                            false, &r->classes)) != 0)
        return rc;
    if (r->classes.n && r->info.effect == POL_EFFECT_MASK)
        return fail(b, POLIS_EINVAL, sub,
                    "a mask rule chooses its columns with "
                    "mask.columns and mask.classifications");
    snprintf(sub, sizeof(sub), "%s.purposes", path);
    if ((rc = parse_strlist(b, json_object_get(jr, "purposes"), sub, false,
                            &r->purposes)) != 0)
        return rc;

    v = json_object_get(jr, "when");
    if (v) {
        pol_expr *when = NULL;
        polis_error perr = {0};

        snprintf(sub, sizeof(sub), "%s.when", path);
        if (!json_is_string(v))
            return fail(b, POLIS_EINVAL, sub, "must be a string");
        if (pol_expr_compile(json_string_value(v), NULL, &when, &perr) != 0)
            return expr_fail(b, sub, NULL, &perr);
        r->when = when;
    }

    v = json_object_get(jr, "except");
    if (v) {
        snprintf(sub, sizeof(sub), "%s.except", path);
        if (r->info.effect != POL_EFFECT_ALLOW &&
            r->info.effect != POL_EFFECT_DENY)
            return fail(b, POLIS_EINVAL, sub,
                        "only allow and deny rules may have exceptions");
        if (!json_is_object(v) || json_object_size(v) == 0)
            return fail(b, POLIS_EINVAL, sub,
                        "must be an object with subjects and/or purposes");
        if ((rc = check_keys(b, v, sub, except_keys)) != 0)
            return rc;
        snprintf(sub, sizeof(sub), "%s.except.subjects", path);
        if ((rc = parse_subjects(b, json_object_get(v, "subjects"), sub, false,
                                 &r->except_subject_text, &r->except_subjects,
                                 &r->except_any_subject)) != 0)
            return rc;
        snprintf(sub, sizeof(sub), "%s.except.purposes", path);
        if ((rc = parse_strlist(b, json_object_get(v, "purposes"), sub, false,
                                &r->except_purposes)) != 0)
            return rc;
    }

    /* Effect parameters: required for their effect, refused otherwise. */
    {
        static const char *const params[] = {"mask", "filter", "aggregate"};
        static const pol_effect owner[] = {POL_EFFECT_MASK, POL_EFFECT_FILTER,
                                           POL_EFFECT_AGGREGATE};

        for (i = 0; i < 3; i++) {
            bool present = json_object_get(jr, params[i]) != NULL;

            snprintf(sub, sizeof(sub), "%s.%s", path, params[i]);
            if (present && r->info.effect != owner[i])
                return fail(b, POLIS_EINVAL, sub,
                            "only allowed when effect is %s", params[i]);
            if (!present && r->info.effect == owner[i])
                return fail(b, POLIS_EINVAL, sub,
                            "is required when effect is %s", params[i]);
        }
    }
    if (r->info.effect == POL_EFFECT_MASK) {
        polis_error perr = {0};

        v = json_object_get(jr, "mask");
        snprintf(sub, sizeof(sub), "%s.mask", path);
        if (!json_is_object(v))
            return fail(b, POLIS_EINVAL, sub, "must be an object");
        if ((rc = check_keys(b, v, sub, mask_keys)) != 0)
            return rc;
        if (json_object_get(v, "method") &&
            !json_is_string(json_object_get(v, "method"))) {
            snprintf(sub, sizeof(sub), "%s.mask.method", path);
            return fail(b, POLIS_EINVAL, sub, "must be a string");
        }
        if (pol_mask_parse(json_string_value(json_object_get(v, "method")),
                           json_object_get(v, "params"), &r->mask,
                           &perr) != 0) {
            snprintf(sub, sizeof(sub), "%s.mask.%s", path, perr.where);
            return fail(b, perr.code, sub, "%s", perr.message);
        }
        snprintf(sub, sizeof(sub), "%s.mask.columns", path);
        if ((rc = parse_strlist(b, json_object_get(v, "columns"), sub, false,
                                &r->mask_columns)) != 0)
            return rc;
        snprintf(sub, sizeof(sub), "%s.mask.classifications", path);
        if ((rc = parse_strlist(b, json_object_get(v, "classifications"), sub,
                                false, &r->mask_classes)) != 0)
            return rc;
        if (r->mask_columns.n == 0 && r->mask_classes.n == 0) {
            snprintf(sub, sizeof(sub), "%s.mask", path);
            return fail(b, POLIS_EINVAL, sub,
                        "needs columns and/or classifications");
        }
    }
    if (r->info.effect == POL_EFFECT_FILTER) {
        polis_error perr = {0};
        pol_expr *f = NULL;

        v = json_object_get(jr, "filter");
        snprintf(sub, sizeof(sub), "%s.filter", path);
        if (!json_is_string(v))
            return fail(b, POLIS_EINVAL, sub, "must be a string");
        text = json_string_value(v);
        if (pol_expr_parse(text, &f, &perr) != 0)
            return expr_fail(b, sub, NULL, &perr);
        r->filter = f;
        if (!(r->info.filter = arena_strdup(&b->e->ar, text)))
            return nomem(b);
        /* Filters on subject/request only need no product to be checked. */
        if (!pol_expr_uses_columns(f)) {
            if (pol_expr_check(f, NULL, &perr) != 0)
                return expr_fail(b, sub, NULL, &perr);
            r->filter_checked = true;
        }
    }
    if (r->info.effect == POL_EFFECT_AGGREGATE) {
        const json_t *n;

        v = json_object_get(jr, "aggregate");
        snprintf(sub, sizeof(sub), "%s.aggregate", path);
        if (!json_is_object(v))
            return fail(b, POLIS_EINVAL, sub, "must be an object");
        if ((rc = check_keys(b, v, sub, agg_keys)) != 0)
            return rc;
        n = json_object_get(v, "minGroupSize");
        snprintf(sub, sizeof(sub), "%s.aggregate.minGroupSize", path);
        if (!json_is_integer(n) || json_integer_value(n) < 1 ||
            json_integer_value(n) > 1000000000)
            return fail(b, POLIS_EINVAL, sub,
                        "must be an integer from 1 to 10^9");
        r->info.min_group_size = json_integer_value(n);
    }
    return 0;
}

typedef struct policy_ref {
    size_t index; /* in docs */
    const json_t *doc;
    const char *scope;
    const char *name;
} policy_ref;

static int policy_order(const void *pa, const void *pb)
{
    const policy_ref *a = pa, *b = pb;
    int ga = strcmp(a->scope, "global") == 0;
    int gb = strcmp(b->scope, "global") == 0;
    int c;

    if (ga != gb)
        return gb - ga;
    if ((c = strcmp(a->scope, b->scope)) != 0)
        return c;
    if ((c = strcmp(a->name, b->name)) != 0)
        return c;
    return a->index < b->index ? -1 : a->index > b->index;
}

/* Header fields of a Policy, enough to sort it; rules come later. */
static int parse_policy_head(build *b, const json_t *doc, size_t index,
                             policy_ref *out)
{
    static const char *const spec_keys[] = {"scope", "rules", "description",
                                            NULL};
    const json_t *meta = json_object_get(doc, "metadata");
    const json_t *spec = json_object_get(doc, "spec");
    const char *name = json_string_value(json_object_get(meta, "name"));
    const char *scope = json_string_value(json_object_get(spec, "scope"));
    const json_t *rules = json_object_get(spec, "rules");
    int rc;

    snprintf(b->doc, sizeof(b->doc), "documents[%zu]", index);
    if (name == NULL || !valid_name(name))
        return fail(b, POLIS_EINVAL, "metadata.name",
                    "must be a non-empty string");
    snprintf(b->doc, sizeof(b->doc), "policy \"%s\"", name);
    {
        const char *api = json_string_value(json_object_get(doc, "apiVersion"));

        if (api == NULL || strcmp(api, "polis/v1") != 0)
            return fail(b, POLIS_EINVAL, "apiVersion", "must be \"polis/v1\"");
    }
    if (!json_is_object(spec))
        return fail(b, POLIS_EINVAL, "spec", "must be an object");
    if ((rc = check_keys(b, spec, "spec", spec_keys)) != 0)
        return rc;
    /* The control plane writes the default in; a bare document means it. */
    if (json_object_get(spec, "scope") == NULL)
        scope = "global";
    if (scope == NULL || !valid_name(scope) || strchr(scope, '/') ||
        has_glob(scope))
        return fail(b, POLIS_EINVAL, "spec.scope",
                    "must be \"global\" or a domain name");
    if (!json_is_array(rules))
        return fail(b, POLIS_EINVAL, "spec.rules", "must be a list of rules");
    if (json_array_size(rules) > POL_MAX_RULES_PER_POLICY)
        return fail(b, POLIS_ETOOBIG, "spec.rules", "more than %d rules",
                    POL_MAX_RULES_PER_POLICY);
    out->index = index;
    out->doc = doc;
    out->scope = scope;
    out->name = name;
    return 0;
}

static int compile_policy(build *b, const policy_ref *pr)
{
    pol_engine *e = b->e;
    const json_t *rules =
        json_object_get(json_object_get(pr->doc, "spec"), "rules");
    const char *scope, *name;
    size_t i, first = e->nrules, n = json_array_size(rules);
    int rc;

    snprintf(b->doc, sizeof(b->doc), "policy \"%s\"", pr->name);
    scope = arena_strdup(&e->ar, pr->scope);
    name = arena_strdup(&e->ar, pr->name);
    if (!scope || !name)
        return nomem(b);
    if (e->nrules + n > e->rules_cap) {
        size_t cap = e->rules_cap ? e->rules_cap : 64;
        rule *bigger;

        while (cap < e->nrules + n)
            cap *= 2;
        bigger = realloc(e->rules, cap * sizeof(rule));
        if (bigger == NULL)
            return nomem(b);
        e->rules = bigger;
        e->rules_cap = cap;
    }
    for (i = 0; i < n; i++) {
        rule *r = &e->rules[e->nrules];
        size_t k;

        rc = parse_rule(b, json_array_get(rules, i), i, scope, name, r);
        /* Count it even on failure so that engine_free frees its exprs. */
        e->nrules++;
        if (rc != 0)
            return rc;
        r->order = (uint32_t)(e->nrules - 1);
        r->index = (uint32_t)i;
        for (k = first; k < e->nrules - 1; k++) {
            if (strcmp(e->rules[k].info.name, r->info.name) == 0) {
                char path[64];

                snprintf(path, sizeof(path), "spec.rules[%zu].name", i);
                return fail(b, POLIS_EINVAL, path,
                            "rule \"%s\" is defined twice in the policy",
                            r->info.name);
            }
        }
    }
    return 0;
}

/* ---- index ----------------------------------------------------------------
 */

static int rulevec_push(rulevec *v, uint32_t id)
{
    if (v->cap == 0 && v->n < 2) {
        v->u.in[v->n++] = id;
        return 0;
    }
    if (v->cap == 0) {
        uint32_t *ids = malloc(4 * sizeof(uint32_t));

        if (ids == NULL)
            return POLIS_ENOMEM;
        memcpy(ids, v->u.in, sizeof(v->u.in));
        v->u.heap = ids;
        v->cap = 4;
    } else if (v->n == v->cap) {
        uint32_t *ids = realloc(v->u.heap, 2 * v->cap * sizeof(uint32_t));

        if (ids == NULL)
            return POLIS_ENOMEM;
        v->u.heap = ids;
        v->cap *= 2;
    }
    v->u.heap[v->n++] = id;
    return 0;
}

static size_t pair_hash(const pair_map *m, uint64_t key)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 17) & (m->cap - 1);
}

static const pair_slot *pair_get(const pol_engine *e, uint32_t pi, uint32_t sid)
{
    const pair_map *m = &e->pairs;
    uint64_t key = (uint64_t)pi << 32 | sid;
    size_t i;

    if (m->cap == 0)
        return NULL;
    for (i = pair_hash(m, key); m->slots[i].key != UINT64_MAX;
         i = (i + 1) & (m->cap - 1))
        if (m->slots[i].key == key)
            return &m->slots[i];
    return NULL;
}

/* The slot of (pi, sid), created empty if new; valid until the next put. */
static pair_slot *pair_put(pol_engine *e, uint32_t pi, uint32_t sid)
{
    pair_map *m = &e->pairs;
    uint64_t key = (uint64_t)pi << 32 | sid;
    size_t i;

    if ((m->n + 1) * 2 > m->cap) {
        pair_map bigger = {0};
        size_t j;

        bigger.cap = m->cap ? m->cap * 2 : 1024;
        bigger.slots = malloc(bigger.cap * sizeof(pair_slot));
        if (bigger.slots == NULL)
            return NULL;
        for (j = 0; j < bigger.cap; j++)
            bigger.slots[j].key = UINT64_MAX;
        for (j = 0; j < m->cap; j++) {
            if (m->slots[j].key == UINT64_MAX)
                continue;
            for (i = pair_hash(&bigger, m->slots[j].key);
                 bigger.slots[i].key != UINT64_MAX;
                 i = (i + 1) & (bigger.cap - 1))
                ;
            bigger.slots[i] = m->slots[j];
        }
        bigger.n = m->n;
        free(m->slots);
        *m = bigger;
    }
    for (i = pair_hash(m, key); m->slots[i].key != UINT64_MAX;
         i = (i + 1) & (m->cap - 1))
        if (m->slots[i].key == key)
            return &m->slots[i];
    memset(&m->slots[i], 0, sizeof(pair_slot));
    m->slots[i].key = key;
    m->n++;
    return &m->slots[i];
}

static int index_add(build *b, product *p, uint32_t rid)
{
    rule *r = &b->e->rules[rid];
    int list =
        r->info.effect == POL_EFFECT_ALLOW || r->info.effect == POL_EFFECT_DENY
            ? LIST_ACCESS
            : LIST_OBLIGATION;
    uint32_t pi = (uint32_t)(p - b->e->products), k;

    if (p->last_rule == rid + 1)
        return 0; /* another resource of the same rule matched already */
    p->last_rule = rid + 1;
    if (r->filter && pol_expr_uses_columns(r->filter)) {
        lookup_ctx ctx = {p};
        pol_expr_schema schema = {NULL, 0, product_lookup, &ctx};
        polis_error perr = {0};
        char path[POLIS_ERROR_WHERE_MAX], prefix[POL_MAX_NAME * 2 + 16];

        if (pol_expr_check(r->filter, &schema, &perr) != 0) {
            snprintf(b->doc, sizeof(b->doc), "policy \"%s\"", r->info.policy);
            snprintf(path, sizeof(path), "spec.rules[%u].filter", r->index);
            snprintf(prefix, sizeof(prefix), "product \"%s\": ", p->id);
            return expr_fail(b, path, prefix, &perr);
        }
        r->filter_checked = true;
    }
    if (r->any_subject && rulevec_push(&p->any[list], rid) != 0)
        return nomem(b);
    for (k = 0; !r->any_subject && k < r->subject_text.n; k++) {
        pair_slot *se = pair_put(b->e, pi, r->subjects[k]);
        rulevec *v;

        if (se == NULL)
            return nomem(b);
        if (b->e->pair_bits)
            b->e->pair_bits[pi * b->e->pair_words + r->subjects[k] / 64] |=
                1ULL << (r->subjects[k] % 64);
        v = &se->lists[list];
        /* A subject listed twice in one rule. */
        if (v->n && rv_ids(v)[v->n - 1] == rid)
            continue;
        if (rulevec_push(v, rid) != 0)
            return nomem(b);
    }
    return 0;
}

static int build_index(build *b)
{
    pol_engine *e = b->e;
    strmap domains = {0}; /* domain -> first product of a domain-sorted run */
    uint32_t *dom_next = NULL;
    size_t i;
    uint32_t rid;
    int rc = 0;

    e->hot = calloc(e->nrules + 1, sizeof(rule_hot));
    if (e->hot == NULL)
        return nomem(b);
    e->pair_words = (e->nsubjects + 63) / 64;
    if (e->nproducts * e->pair_words * 8 <= 4 * 1024 * 1024) {
        e->pair_bits = calloc(e->nproducts * e->pair_words + 1, 8);
        if (e->pair_bits == NULL)
            return nomem(b);
    }
    for (rid = 0; rid < e->nrules; rid++) {
        const rule *r = &e->rules[rid];

        e->hot[rid].effect = (uint8_t)r->info.effect;
        e->hot[rid].ports = r->ports;
        e->hot[rid].flags = r->purposes.n || r->except_any_subject ||
                                    r->except_subject_text.n ||
                                    r->except_purposes.n || r->classes.n ||
                                    r->when
                                ? HOT_COND
                                : 0;
    }
    /* Products of one domain as a linked list: "d/ *" costs its products. */
    if (e->nproducts) {
        dom_next = malloc(e->nproducts * sizeof(uint32_t));
        if (!dom_next) {
            rc = nomem(b);
            goto out;
        }
    }
    for (i = 0; i < e->nproducts; i++) {
        uint32_t head;

        dom_next[i] = UINT32_MAX;
        if (strmap_get(&domains, e->products[i].domain,
                       strlen(e->products[i].domain), &head))
            dom_next[i] = head;
        if (strmap_put(&domains, e->products[i].domain, (uint32_t)i)) {
            rc = nomem(b);
            goto out;
        }
    }
    for (rid = 0; rid < e->nrules; rid++) {
        rule *r = &e->rules[rid];
        uint32_t k;

        for (k = 0; k < r->resources.n; k++) {
            const char *res = r->resources.v[k];
            const char *slash = strchr(res, '/');
            uint32_t pi;

            if (!has_glob(res)) {
                if (strmap_get(&e->product_map, res, strlen(res), &pi) &&
                    (rc = index_add(b, &e->products[pi], rid)) != 0)
                    goto out;
            } else if (slash && strcmp(slash + 1, "*") == 0 &&
                       !has_glob_n(res, (size_t)(slash - res))) {
                if (!strmap_get(&domains, res, (size_t)(slash - res), &pi))
                    continue;
                for (; pi != UINT32_MAX; pi = dom_next[pi])
                    if ((rc = index_add(b, &e->products[pi], rid)) != 0)
                        goto out;
            } else {
                for (pi = 0; pi < e->nproducts; pi++)
                    if ((strcmp(res, "*") == 0 ||
                         glob_match(res, e->products[pi].id)) &&
                        (rc = index_add(b, &e->products[pi], rid)) != 0)
                        goto out;
            }
        }
    }
out:
    free(dom_next);
    strmap_free(&domains);
    return rc;
}

/* ---- build and free -------------------------------------------------------
 */

void pol_engine_free(pol_engine *e)
{
    size_t i;
    unsigned list;

    if (e == NULL)
        return;
    for (i = 0; i < e->nrules; i++) {
        pol_expr_free(e->rules[i].when);
        pol_expr_free(e->rules[i].filter);
    }
    for (list = 0; list < 2; list++) {
        for (i = 0; i < e->nproducts; i++)
            rv_free(&e->products[i].any[list]);
        for (i = 0; i < e->pairs.cap; i++)
            if (e->pairs.slots[i].key != UINT64_MAX)
                rv_free(&e->pairs.slots[i].lists[list]);
    }
    free(e->pairs.slots);
    free(e->pair_bits);
    free(e->hot);
    free(e->rules);
    free(e->products);
    strmap_free(&e->product_map);
    strmap_free(&e->principals);
    strmap_free(&e->groups);
    strmap_free(&e->column_names);
    arena_free(&e->ar);
    free(e);
}

static int engine_build(const json_t *docs, const pol_engine_options *opts,
                        bool validate_only, pol_engine **out, polis_error *err)
{
    build b = {0};
    policy_ref *pols = NULL;
    size_t i, n, nprod = 0, npol = 0;
    int rc = 0;

    *out = NULL;
    b.err = err;
    b.validate_only = validate_only;
    snprintf(b.doc, sizeof(b.doc), "documents");
    if (!json_is_array(docs))
        return polis_error_set(err, POLIS_EINVAL, "documents",
                               "must be a list of documents");
    n = json_array_size(docs);
    if (n > POL_MAX_DOCUMENTS)
        return polis_error_set(err, POLIS_ETOOBIG, "documents",
                               "more than %d documents", POL_MAX_DOCUMENTS);
    b.e = calloc(1, sizeof(pol_engine));
    if (b.e == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    if (opts && opts->hmac_key) {
        pol_mask_key_init(&b.e->key, opts->hmac_key, opts->hmac_key_len);
        b.e->has_key = true;
    }
    for (i = 0; i < n; i++) {
        const json_t *doc = json_array_get(docs, i);
        const char *kind = json_string_value(json_object_get(doc, "kind"));

        snprintf(b.doc, sizeof(b.doc), "documents[%zu]", i);
        if (!json_is_object(doc)) {
            rc = fail(&b, POLIS_EINVAL, NULL, "must be an object");
            goto out;
        }
        if (kind == NULL) {
            rc = fail(&b, POLIS_EINVAL, "kind", "is required");
            goto out;
        }
        nprod += strcmp(kind, "DataProduct") == 0;
        npol += strcmp(kind, "Policy") == 0;
    }
    b.e->products = calloc(nprod + 1, sizeof(product));
    pols = calloc(npol + 1, sizeof(policy_ref));
    if (!b.e->products || !pols) {
        rc = nomem(&b);
        goto out;
    }
    npol = 0;
    for (i = 0; i < n; i++) {
        const json_t *doc = json_array_get(docs, i);
        const char *kind = json_string_value(json_object_get(doc, "kind"));

        if (strcmp(kind, "DataProduct") == 0)
            rc = parse_product(&b, doc, i);
        else if (strcmp(kind, "Policy") == 0)
            rc = parse_policy_head(&b, doc, i, &pols[npol++]);
        if (rc != 0)
            goto out;
    }
    qsort(pols, npol, sizeof(policy_ref), policy_order);
    for (i = 1; i < npol; i++) {
        if (strcmp(pols[i].scope, pols[i - 1].scope) == 0 &&
            strcmp(pols[i].name, pols[i - 1].name) == 0) {
            snprintf(b.doc, sizeof(b.doc), "policy \"%s\"", pols[i].name);
            rc = fail(&b, POLIS_ECONFLICT, "metadata.name",
                      "policy \"%s\" of scope \"%s\" is defined twice",
                      pols[i].name, pols[i].scope);
            goto out;
        }
    }
    for (i = 0; i < npol; i++)
        if ((rc = compile_policy(&b, &pols[i])) != 0)
            goto out;
    if ((rc = build_index(&b)) != 0)
        goto out;
    *out = b.e;
    b.e = NULL;
out:
    free(pols);
    pol_engine_free(b.e);
    return rc;
}

int pol_engine_build(const json_t *docs, const pol_engine_options *opts,
                     pol_engine **out, polis_error *err)
{
    if (out == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "no output engine");
    return engine_build(docs, opts, false, out, err);
}

int pol_policy_validate(const json_t *policy, polis_error *err)
{
    pol_engine *e = NULL;
    json_t *docs;
    const char *kind = json_string_value(json_object_get(policy, "kind"));
    int rc;

    if (!json_is_object(policy))
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "a Policy must be an object");
    if (kind == NULL || strcmp(kind, "Policy") != 0)
        return polis_error_set(err, POLIS_EINVAL, "kind", "must be \"Policy\"");
    docs = json_array();
    if (docs == NULL || json_array_append(docs, (json_t *)policy) != 0) {
        json_decref(docs);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    rc = engine_build(docs, NULL, true, &e, err);
    pol_engine_free(e);
    json_decref(docs);
    return rc;
}

const pol_mask_key *pol_engine_mask_key(const pol_engine *engine)
{
    return engine && engine->has_key ? &engine->key : NULL;
}

size_t pol_engine_rule_count(const pol_engine *engine)
{
    return engine ? engine->nrules : 0;
}

size_t pol_engine_product_count(const pol_engine *engine)
{
    return engine ? engine->nproducts : 0;
}

/* ---- decisions ------------------------------------------------------------
 */

typedef struct dcol {
    const char *name;
    const char *const *tags;
    size_t ntags;
    const rule *mask_rule;
    const char *mask_tag;
} dcol;

/* One matched rule and why: the subject entry, and for classification
 * rules the column and tag that made it apply. */
typedef struct dmatch {
    const rule *r;
    uint32_t sid; /* SID_ANY for "*" */
    const char *column;
    const char *tag;
} dmatch;

#define SID_ANY  UINT32_MAX
#define SID_NONE (UINT32_MAX - 1)

struct pol_decision {
    const pol_engine *engine;
    const char *product, *principal, *purpose;
    pol_port port;
    bool allowed;
    pol_reason reason;
    bool has_deciding;
    dmatch deciding;
    size_t ncols, nmasked, nmatched, nfilters, nids;
    bool truncated;
    int64_t min_group;
    const rule *agg_rule;
    uint32_t ids[POL_MAX_GROUPS + 1];
    /* Candidate lists being merged in rule order: "*" and one per id. */
    struct cursor {
        const uint32_t *ids;
        uint32_t n, pos, sid;
    } cur[POL_MAX_GROUPS + 2];
    size_t ncur;
    const struct pair_slot *slots[POL_MAX_GROUPS + 1]; /* per id */
    const pol_expr *filters[POL_MAX_FILTERS];
    const rule *filter_rules[POL_MAX_FILTERS];
    dmatch matched[POL_MAX_MATCHED];
    dcol cols[POL_MAX_COLUMNS];
};

pol_decision *pol_decision_new(void)
{
    pol_decision *d = malloc(sizeof(pol_decision));

    /* Only the header: the arrays (~57 KiB, zeroing them was a tenth of
     * the HTTP port's CPU per request) are read only up to the counts,
     * which pol_decide resets. */
    if (d) {
        memset(d, 0, offsetof(pol_decision, ids));
        d->reason = POL_REASON_DEFAULT_DENY; /* nothing decided yet */
    }
    return d;
}

void pol_decision_free(pol_decision *d)
{
    free(d);
}

typedef struct dctx {
    const pol_engine *e;
    const pol_request *req;
    pol_decision *d;
    pol_expr_request ereq;
} dctx;

static bool in_ids(const pol_decision *d, uint32_t id)
{
    size_t i;

    for (i = 0; i < d->nids; i++)
        if (d->ids[i] == id)
            return true;
    return false;
}

static bool in_list(const strlist *l, const char *s)
{
    uint32_t i;

    for (i = 0; s && i < l->n; i++)
        if (strcmp(l->v[i], s) == 0 || strcmp(l->v[i], "*") == 0)
            return true;
    return false;
}

/* Column names compare like SQL identifiers: ASCII case-insensitively. */
static bool in_list_nocase(const strlist *l, const char *s)
{
    uint32_t i;

    for (i = 0; i < l->n; i++)
        if (strcasecmp(l->v[i], s) == 0)
            return true;
    return false;
}

static bool column_classified(const dcol *c, const strlist *pats,
                              const char **tag)
{
    size_t t;
    uint32_t k;

    for (t = 0; t < c->ntags; t++)
        for (k = 0; k < pats->n; k++)
            if (glob_match(pats->v[k], c->tags[t])) {
                *tag = c->tags[t];
                return true;
            }
    return false;
}

/*
 * Subject, purpose, exceptions, classifications and `when`.  A `when` that
 * is unknown (null) or fails to evaluate makes tightening rules (deny,
 * mask, filter, aggregate) apply and allow rules not: fail closed.
 */
static bool rule_matches(const dctx *c, const rule *r, dmatch *m)
{
    const pol_decision *d = c->d;
    uint32_t i;

    if (r->purposes.n && !in_list(&r->purposes, c->req->purpose))
        return false;
    if (r->except_any_subject)
        return false;
    for (i = 0; i < r->except_subject_text.n; i++)
        if (in_ids(d, r->except_subjects[i]))
            return false;
    if (r->except_purposes.n && c->req->purpose &&
        in_list(&r->except_purposes, c->req->purpose))
        return false;
    if (r->classes.n) {
        size_t k;
        const char *tag = NULL;

        if (r->info.effect == POL_EFFECT_ALLOW) {
            /* An allow limited to classifications covers every column. */
            if (d->ncols == 0)
                return false;
            for (k = 0; k < d->ncols; k++)
                if (!column_classified(&d->cols[k], &r->classes, &tag))
                    return false;
        } else {
            for (k = 0; k < d->ncols; k++)
                if (column_classified(&d->cols[k], &r->classes, &tag)) {
                    m->column = d->cols[k].name;
                    m->tag = tag;
                    break;
                }
            if (k == d->ncols)
                return false;
        }
    }
    if (r->when) {
        pol_tri t = POL_UNKNOWN;

        if (pol_expr_eval(r->when, NULL, NULL, &c->req->subject, &c->ereq, &t,
                          NULL) != 0)
            t = POL_UNKNOWN;
        if (t == POL_FALSE)
            return false;
        if (t == POL_UNKNOWN && r->info.effect == POL_EFFECT_ALLOW)
            return false;
    }
    return true;
}

static void record(pol_decision *d, const dmatch *m)
{
    if (d->nmatched < POL_MAX_MATCHED)
        d->matched[d->nmatched++] = *m;
    else
        d->truncated = true;
}

static bool rule_reaches(const rule *r, const char *product_id)
{
    uint32_t i;

    for (i = 0; i < r->resources.n; i++)
        if (strcmp(r->resources.v[i], "*") == 0 ||
            glob_match(r->resources.v[i], product_id))
            return true;
    return false;
}

/* The subject entry of r that the request matches: SID_ANY, an id, or
 * SID_NONE (for the unindexed path). */
static uint32_t subject_of(const pol_decision *d, const rule *r)
{
    uint32_t i;

    if (r->any_subject)
        return SID_ANY;
    for (i = 0; i < r->subject_text.n; i++)
        if (in_ids(d, r->subjects[i]))
            return r->subjects[i];
    return SID_NONE;
}

/* A candidate allow or deny whose subject matched as `sid`. */
static void access_rule(dctx *c, uint32_t rid, uint32_t sid,
                        dmatch *first_allow)
{
    pol_decision *d = c->d;
    const rule_hot *h = &c->e->hot[rid];
    dmatch m = {&c->e->rules[rid], sid, NULL, NULL};

    if (!(h->ports & (1u << c->req->port)))
        return;
    if ((h->flags & HOT_COND) && !rule_matches(c, m.r, &m))
        return;
    record(d, &m);
    if (h->effect == POL_EFFECT_DENY && d->reason != POL_REASON_DENIED) {
        d->reason = POL_REASON_DENIED;
        d->deciding = m;
    } else if (h->effect == POL_EFFECT_ALLOW && first_allow->r == NULL) {
        *first_allow = m;
    }
}

static int obligation_rule(dctx *c, uint32_t rid, uint32_t sid,
                           polis_error *err)
{
    pol_decision *d = c->d;
    const rule_hot *h = &c->e->hot[rid];
    const rule *r = &c->e->rules[rid];
    dmatch m = {r, sid, NULL, NULL};
    size_t k;
    bool applied = false;

    if (!(h->ports & (1u << c->req->port)))
        return 0;
    if ((h->flags & HOT_COND) && !rule_matches(c, r, &m))
        return 0;
    switch (r->info.effect) {
    case POL_EFFECT_MASK:
        for (k = 0; k < d->ncols; k++) {
            dcol *col = &d->cols[k];
            const char *tag = NULL;

            if (!in_list_nocase(&r->mask_columns, col->name) &&
                !column_classified(col, &r->mask_classes, &tag))
                continue;
            if (!applied) {
                m.column = col->name;
                m.tag = tag;
                applied = true;
            }
            /* Ties keep the earlier rule: global before domain. */
            if (col->mask_rule == NULL) {
                d->nmasked++;
            } else if (pol_mask_compare(&r->mask, &col->mask_rule->mask) <= 0) {
                continue;
            }
            col->mask_rule = r;
            col->mask_tag = tag;
        }
        if (!applied)
            return 0;
        break;
    case POL_EFFECT_FILTER:
        if (!r->filter_checked)
            return polis_error_set(
                err, POLIS_EINVAL, c->req->product,
                "filter of rule %s/%s/%s was not checked against the "
                "product's schema (product unknown to the engine)",
                r->info.scope, r->info.policy, r->info.name);
        if (d->nfilters == POL_MAX_FILTERS)
            return polis_error_set(err, POLIS_ETOOBIG, c->req->product,
                                   "more than %d row filters apply",
                                   POL_MAX_FILTERS);
        d->filters[d->nfilters] = r->filter;
        d->filter_rules[d->nfilters++] = r;
        break;
    case POL_EFFECT_AGGREGATE:
        if (r->info.min_group_size > d->min_group) {
            d->min_group = r->info.min_group_size;
            d->agg_rule = r;
        }
        break;
    default:
        return 0;
    }
    record(d, &m);
    return 0;
}

static void open_cursors(pol_decision *d, const pol_engine *e, const product *p,
                         int list)
{
    uint32_t pi = (uint32_t)(p - e->products);
    size_t i;

    d->ncur = 0;
    if (p->any[list].n)
        d->cur[d->ncur++] =
            (struct cursor){rv_ids(&p->any[list]), p->any[list].n, 0, SID_ANY};
    for (i = 0; i < d->nids; i++) {
        /* The access pass looks the pairs up; obligations reuse them. */
        const pair_slot *se = d->slots[i];

        if (list == LIST_ACCESS)
            se = e->pair_bits &&
                         !(e->pair_bits[pi * e->pair_words + d->ids[i] / 64] >>
                               (d->ids[i] % 64) &
                           1)
                     ? NULL
                     : pair_get(e, pi, d->ids[i]);

        d->slots[i] = se;
        if (se && se->lists[list].n)
            d->cur[d->ncur++] = (struct cursor){
                rv_ids(&se->lists[list]), se->lists[list].n, 0, d->ids[i]};
    }
}

/* The smallest rule id at the heads of the cursors (each rule once), or
 * UINT32_MAX when all are exhausted. */
/* The smallest rule id at the heads of the cursors (each rule once, with
 * the subject it was indexed under), or UINT32_MAX when all are done. */
static uint32_t next_candidate(pol_decision *d, uint32_t *sid)
{
    uint32_t best = UINT32_MAX;
    size_t i;

    for (i = 0; i < d->ncur; i++)
        if (d->cur[i].pos < d->cur[i].n &&
            d->cur[i].ids[d->cur[i].pos] < best) {
            best = d->cur[i].ids[d->cur[i].pos];
            *sid = d->cur[i].sid;
        }
    for (i = 0; best != UINT32_MAX && i < d->ncur; i++)
        if (d->cur[i].pos < d->cur[i].n && d->cur[i].ids[d->cur[i].pos] == best)
            d->cur[i].pos++;
    return best;
}

static const product *find_product(const pol_engine *e, const char *id)
{
    uint32_t pi;

    if (strmap_get(&e->product_map, id, strlen(id), &pi))
        return &e->products[pi];
    return NULL;
}

static int setup_columns(const dctx *c, const product *p, polis_error *err)
{
    pol_decision *d = c->d;
    const pol_request *req = c->req;
    size_t i;
    uint32_t k;

    if (req->ncolumns == 0) {
        for (k = 0; p && k < p->ncols; k++) {
            d->cols[k].name = p->cols[k].name;
            d->cols[k].tags = p->cols[k].tags.v;
            d->cols[k].ntags = p->cols[k].tags.n;
            d->cols[k].mask_rule = NULL;
            d->cols[k].mask_tag = NULL;
        }
        d->ncols = p ? p->ncols : 0;
        return 0;
    }
    if (req->ncolumns > POL_MAX_COLUMNS)
        return polis_error_set(err, POLIS_ETOOBIG, "columns",
                               "more than %d columns", POL_MAX_COLUMNS);
    for (i = 0; i < req->ncolumns; i++) {
        const pol_column_request *rc = &req->columns[i];
        dcol *col = &d->cols[i];

        if (rc->name == NULL)
            return polis_error_set(err, POLIS_EINVAL, "columns",
                                   "column %zu has no name", i);
        col->name = rc->name;
        col->mask_rule = NULL;
        col->mask_tag = NULL;
        col->tags = rc->classifications;
        col->ntags = rc->nclassifications;
        if (rc->classifications != NULL)
            continue;
        if (p == NULL)
            return polis_error_set(
                err, POLIS_ENOTFOUND, req->product,
                "product unknown to the engine: give the classifications "
                "of column \"%s\"",
                rc->name);
        for (k = 0; k < p->ncols; k++)
            if (strcasecmp(p->cols[k].name, rc->name) == 0)
                break;
        if (k == p->ncols)
            return polis_error_set(err, POLIS_ENOTFOUND, req->product,
                                   "no column \"%s\"", rc->name);
        col->tags = p->cols[k].tags.v;
        col->ntags = p->cols[k].tags.n;
    }
    d->ncols = req->ncolumns;
    return 0;
}

int pol_decide(const pol_engine *e, const pol_request *req, pol_decision *d,
               polis_error *err)
{
    dctx c;
    const product *p;
    dmatch first_allow = {0};
    uint32_t id, sid = SID_ANY;
    size_t i;
    int rc;

    if (d == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL, "no decision");
    d->engine = e;
    d->product = req ? req->product : NULL;
    d->principal = req ? req->subject.name : NULL;
    d->purpose = req ? req->purpose : NULL;
    d->port = req ? req->port : POL_PORT_QUERY;
    d->allowed = false;
    d->reason = POL_REASON_DEFAULT_DENY;
    d->has_deciding = false;
    d->ncols = d->nmasked = d->nmatched = d->nfilters = d->nids = 0;
    d->truncated = false;
    d->min_group = 0;
    d->agg_rule = NULL;
    if (e == NULL || req == NULL || req->product == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "an engine and a request with a product are "
                               "required");
    if ((unsigned)req->port >= POL_PORT_COUNT)
        return polis_error_set(err, POLIS_EINVAL, "port", "invalid port %d",
                               (int)req->port);
    if (req->subject.ngroups > POL_MAX_GROUPS)
        return polis_error_set(err, POLIS_ETOOBIG, "groups",
                               "more than %d groups", POL_MAX_GROUPS);
    c.e = e;
    c.req = req;
    c.d = d;
    c.ereq.purpose = req->purpose;
    c.ereq.product = req->product;
    c.ereq.port = pol_port_name(req->port);

    if (req->subject.name && strmap_get(&e->principals, req->subject.name,
                                        strlen(req->subject.name), &id))
        d->ids[d->nids++] = id;
    for (i = 0; i < req->subject.ngroups; i++)
        if (req->subject.groups[i] &&
            strmap_get(&e->groups, req->subject.groups[i],
                       strlen(req->subject.groups[i]), &id))
            d->ids[d->nids++] = id;

    p = find_product(e, req->product);
    if ((rc = setup_columns(&c, p, err)) != 0)
        goto fail;

    if (p) {
        open_cursors(d, e, p, LIST_ACCESS);
        while ((id = next_candidate(d, &sid)) != UINT32_MAX)
            access_rule(&c, id, sid, &first_allow);
    } else {
        /* Not in the snapshot: no index, look at every rule. */
        for (i = 0; i < e->nrules; i++) {
            const rule *r = &e->rules[i];

            if ((r->info.effect == POL_EFFECT_ALLOW ||
                 r->info.effect == POL_EFFECT_DENY) &&
                rule_reaches(r, req->product) &&
                (sid = subject_of(d, r)) != SID_NONE)
                access_rule(&c, (uint32_t)i, sid, &first_allow);
        }
    }
    if (d->reason == POL_REASON_DENIED) {
        d->has_deciding = true;
        d->ncols = 0;
        return 0;
    }
    if (first_allow.r == NULL) {
        d->ncols = 0;
        return 0;
    }
    d->allowed = true;
    d->reason = POL_REASON_ALLOWED;
    d->has_deciding = true;
    d->deciding = first_allow;

    if (p) {
        open_cursors(d, e, p, LIST_OBLIGATION);
        while ((id = next_candidate(d, &sid)) != UINT32_MAX)
            if ((rc = obligation_rule(&c, id, sid, err)) != 0)
                goto fail;
    } else {
        for (i = 0; i < e->nrules; i++) {
            const rule *r = &e->rules[i];

            if (r->info.effect != POL_EFFECT_ALLOW &&
                r->info.effect != POL_EFFECT_DENY &&
                rule_reaches(r, req->product) &&
                (sid = subject_of(d, r)) != SID_NONE &&
                (rc = obligation_rule(&c, (uint32_t)i, sid, err)) != 0)
                goto fail;
        }
    }
    return 0;
fail:
    d->allowed = false;
    d->reason = POL_REASON_DEFAULT_DENY;
    d->has_deciding = false;
    d->ncols = d->nmasked = d->nfilters = 0;
    d->min_group = 0;
    d->agg_rule = NULL;
    return rc;
}

/* ---- reading a decision ---------------------------------------------------
 */

bool pol_decision_allowed(const pol_decision *d)
{
    return d->allowed;
}

pol_reason pol_decision_reason(const pol_decision *d)
{
    return d->reason;
}

const pol_rule_info *pol_decision_deciding_rule(const pol_decision *d)
{
    return d->has_deciding ? &d->deciding.r->info : NULL;
}

size_t pol_decision_column_count(const pol_decision *d)
{
    return d->ncols;
}

const char *pol_decision_column_name(const pol_decision *d, size_t i)
{
    return i < d->ncols ? d->cols[i].name : NULL;
}

const pol_mask *pol_decision_column_mask(const pol_decision *d, size_t i)
{
    return i < d->ncols && d->cols[i].mask_rule ? &d->cols[i].mask_rule->mask
                                                : NULL;
}

const pol_rule_info *pol_decision_column_mask_rule(const pol_decision *d,
                                                   size_t i)
{
    return i < d->ncols && d->cols[i].mask_rule ? &d->cols[i].mask_rule->info
                                                : NULL;
}

const char *pol_decision_column_mask_tag(const pol_decision *d, size_t i)
{
    return i < d->ncols ? d->cols[i].mask_tag : NULL;
}

size_t pol_decision_mask_count(const pol_decision *d)
{
    return d->nmasked;
}

size_t pol_decision_filter_count(const pol_decision *d)
{
    return d->nfilters;
}

const pol_expr *const *pol_decision_filters(const pol_decision *d)
{
    return d->filters;
}

const pol_rule_info *pol_decision_filter_rule(const pol_decision *d, size_t i)
{
    return i < d->nfilters ? &d->filter_rules[i]->info : NULL;
}

int64_t pol_decision_min_group_size(const pol_decision *d)
{
    return d->min_group;
}

const pol_rule_info *pol_decision_aggregate_rule(const pol_decision *d)
{
    return d->agg_rule ? &d->agg_rule->info : NULL;
}

size_t pol_decision_matched_count(const pol_decision *d)
{
    return d->nmatched;
}

const pol_rule_info *pol_decision_matched(const pol_decision *d, size_t i)
{
    return i < d->nmatched ? &d->matched[i].r->info : NULL;
}

bool pol_decision_matched_truncated(const pol_decision *d)
{
    return d->truncated;
}

/* ---- explanation ----------------------------------------------------------
 */

typedef struct sbuf {
    char *p;
    size_t cap, len;
} sbuf;

static void sb_printf(sbuf *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf *s, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(s->len < s->cap ? s->p + s->len : NULL,
                  s->len < s->cap ? s->cap - s->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        s->len += (size_t)n;
}

static void sb_rule(sbuf *s, const rule *r)
{
    sb_printf(s, "%s/%s/%s", r->info.scope, r->info.policy, r->info.name);
}

static void sb_why(sbuf *s, const dmatch *m)
{
    const char *subject = "*";
    uint32_t i;

    for (i = 0; m->sid != SID_ANY && i < m->r->subject_text.n; i++)
        if (m->r->subjects[i] == m->sid) {
            subject = m->r->subject_text.v[i];
            break;
        }
    sb_printf(s, " (subject %s", subject);
    if (m->tag)
        sb_printf(s, ", column %s classified %s", m->column, m->tag);
    sb_printf(s, ")");
}

size_t pol_decision_explain(const pol_decision *d, char *buf, size_t len)
{
    sbuf s = {buf, len, 0};
    size_t i;

    if (len > 0)
        buf[0] = '\0';
    if (d->reason == POL_REASON_DEFAULT_DENY) {
        sb_printf(&s, "denied: no rule allows (default deny)");
        return s.len;
    }
    sb_printf(&s, "%s by ", d->allowed ? "allowed" : "denied");
    sb_rule(&s, d->deciding.r);
    sb_why(&s, &d->deciding);
    if (!d->allowed)
        return s.len;
    for (i = 0; i < d->ncols; i++) {
        const dcol *c = &d->cols[i];

        if (c->mask_rule == NULL)
            continue;
        sb_printf(&s, "; column %s masked (%s) by ", c->name,
                  pol_mask_method_name(c->mask_rule->mask.method));
        sb_rule(&s, c->mask_rule);
        if (c->mask_tag)
            sb_printf(&s, " (classification %s)", c->mask_tag);
        else
            sb_printf(&s, " (column)");
    }
    for (i = 0; i < d->nfilters; i++) {
        sb_printf(&s, "; rows filtered by ");
        sb_rule(&s, d->filter_rules[i]);
        sb_printf(&s, ": %s", d->filter_rules[i]->info.filter);
    }
    if (d->agg_rule) {
        sb_printf(&s, "; minimum group size %lld by ", (long long)d->min_group);
        sb_rule(&s, d->agg_rule);
    }
    return s.len;
}

/* ---- JSON -----------------------------------------------------------------
 */

static json_t *rule_json(const rule *r)
{
    return json_pack("{s:s, s:s, s:s, s:s}", "scope", r->info.scope, "policy",
                     r->info.policy, "rule", r->info.name, "effect",
                     pol_effect_name(r->info.effect));
}

static json_t *mask_json(const pol_mask *m)
{
    json_t *o = json_pack("{s:s}", "method", pol_mask_method_name(m->method));
    json_t *params = json_object();

    if (!o || !params) {
        json_decref(o);
        json_decref(params);
        return NULL;
    }
    switch (m->method) {
    case POL_MASK_SHOW_FIRST:
    case POL_MASK_SHOW_LAST:
        json_object_set_new(params, "n", json_integer(m->n));
        json_object_set_new(params, "char", json_string(m->fill));
        break;
    case POL_MASK_REDACT:
        if (m->per_char)
            json_object_set_new(params, "char", json_string(m->fill));
        else
            json_object_set_new(params, "replacement",
                                json_string(m->replacement));
        break;
    case POL_MASK_BUCKET:
        json_object_set_new(params, "width", json_integer(m->width));
        json_object_set_new(params, "format",
                            json_string(m->bucket_lower ? "lower" : "range"));
        break;
    default:
        break;
    }
    json_object_set_new(o, "params", params);
    return o;
}

static const char *const reason_names[] = {"allowed", "denied", "default-deny"};

json_t *pol_decision_to_json(const pol_decision *d)
{
    json_t *o = json_object(), *cols = json_array(), *filters = json_array(),
           *matched = json_array();
    size_t i, n = pol_decision_explain(d, NULL, 0) + 1;
    char *text = malloc(n);

    if (!o || !cols || !filters || !matched || !text)
        goto fail;
    pol_decision_explain(d, text, n);
    json_object_set_new(o, "allowed", json_boolean(d->allowed));
    json_object_set_new(o, "reason", json_string(reason_names[d->reason]));
    json_object_set_new(o, "explanation", json_string(text));
    free(text);
    text = NULL;
    if (d->product)
        json_object_set_new(o, "product", json_string(d->product));
    if (d->principal)
        json_object_set_new(o, "principal", json_string(d->principal));
    json_object_set_new(o, "port", json_string(pol_port_name(d->port)));
    if (d->purpose)
        json_object_set_new(o, "purpose", json_string(d->purpose));
    json_object_set_new(o, "deciding",
                        d->has_deciding ? rule_json(d->deciding.r)
                                        : json_null());
    for (i = 0; i < d->ncols; i++) {
        const dcol *c = &d->cols[i];
        json_t *jc = json_pack("{s:s}", "name", c->name);

        if (jc && c->mask_rule) {
            json_object_set_new(jc, "mask", mask_json(&c->mask_rule->mask));
            json_object_set_new(jc, "maskedBy", rule_json(c->mask_rule));
            if (c->mask_tag)
                json_object_set_new(jc, "classification",
                                    json_string(c->mask_tag));
        }
        if (jc == NULL || json_array_append_new(cols, jc) != 0)
            goto fail;
    }
    for (i = 0; i < d->nfilters; i++) {
        json_t *f = json_pack("{s:s, s:o}", "expression",
                              d->filter_rules[i]->info.filter, "rule",
                              rule_json(d->filter_rules[i]));

        if (f == NULL || json_array_append_new(filters, f) != 0)
            goto fail;
    }
    for (i = 0; i < d->nmatched; i++)
        if (json_array_append_new(matched, rule_json(d->matched[i].r)) != 0)
            goto fail;
    json_object_set_new(o, "columns", cols);
    json_object_set_new(o, "filters", filters);
    json_object_set_new(o, "minGroupSize", json_integer(d->min_group));
    json_object_set_new(o, "matched", matched);
    json_object_set_new(o, "matchedTruncated", json_boolean(d->truncated));
    return o;
fail:
    free(text);
    json_decref(o);
    json_decref(cols);
    json_decref(filters);
    json_decref(matched);
    return NULL;
}
