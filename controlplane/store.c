/*
 * store.c — resources, history and audit in etcd (store.h).  Reads are one
 * etcd range or read-only txn; a write is one txn guarded by a compare on
 * every touched resource's mod revision, retried when one moved.
 */
#include "controlplane/store.h"
#include "common/log.h"

#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <openssl/rand.h>

#define KEY_MAX       1024
#define APPLY_RETRIES 16
#define LIST_PAGE     500

struct cp_store {
    etcd_client *etcd;
    char prefix[256];
    pthread_mutex_t cache_lock;
    json_t *cache; /* resource key -> [mod, versions, generation, doc] */
};

int cp_store_new(etcd_client *etcd, const char *prefix, cp_store **out,
                 polis_error *err)
{
    cp_store *s;
    size_t len = strlen(prefix);

    if (len == 0 || len > 200 || prefix[0] != '/')
        return polis_error_set(err, POLIS_EINVAL, "etcd-prefix",
                               "\"%s\" must start with '/' and be at most "
                               "200 bytes",
                               prefix);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    s->etcd = etcd;
    s->cache = json_object();
    if (s->cache == NULL) {
        free(s);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    pthread_mutex_init(&s->cache_lock, NULL);
    /* Always end with '/', so "/polis" and "/polis/" mean the same. */
    snprintf(s->prefix, sizeof(s->prefix), "%s%s", prefix,
             prefix[len - 1] == '/' ? "" : "/");
    *out = s;
    return 0;
}

void cp_store_free(cp_store *s)
{
    if (s == NULL)
        return;
    json_decref(s->cache);
    pthread_mutex_destroy(&s->cache_lock);
    free(s);
}

const char *cp_store_prefix(const cp_store *s)
{
    return s->prefix;
}

void cp_resource_clear(cp_resource *r)
{
    if (r == NULL)
        return;
    free(r->doc_json);
    memset(r, 0, sizeof(*r));
}

void cp_resources_free(cp_resource *list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        cp_resource_clear(&list[i]);
    free(list);
}

/* ---- keys ---- */

static void lower_into(char *dst, size_t len, const char *src)
{
    size_t i = 0;
    for (; src[i] && i + 1 < len; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

static void resource_key(const cp_store *s, char *buf, const char *kind,
                         const char *scope, const char *name)
{
    char k[CP_KIND_MAX];
    lower_into(k, sizeof(k), kind);
    snprintf(buf, KEY_MAX, "%sresources/%s/%s/%s", s->prefix, k, scope, name);
}

static void history_prefix(const cp_store *s, char *buf, const char *kind,
                           const char *scope, const char *name)
{
    char k[CP_KIND_MAX];
    lower_into(k, sizeof(k), kind);
    snprintf(buf, KEY_MAX, "%shistory/%s/%s/%s/", s->prefix, k, scope, name);
}

static void now_rfc3339(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

/* ---- stored values ---- */

/*
 * A stored value: {"document":{...},"generation":N,"author":"...",
 * "updatedAt":"..."[,"deleted":true]}.  Fills r from kv; the key
 * gives kind/scope/name only for resources/ keys, so those come from the
 * document.
 */
static int resource_from_kv(const etcd_kv *kv, cp_resource *r, polis_error *err)
{
    json_t *v, *doc;
    json_error_t jerr;
    const char *kind = NULL, *name = NULL, *author = NULL, *at = NULL,
               *scope = NULL;
    int deleted = 0;

    memset(r, 0, sizeof(*r));
    v = json_loadb(kv->value, kv->value_len, 0, &jerr);
    if (v == NULL || !json_is_object(v)) {
        json_decref(v);
        return polis_error_set(err, POLIS_EPROTO, kv->key,
                               "stored value is not a Polis record: %s",
                               jerr.text);
    }
    doc = json_object_get(v, "document");
    if (json_unpack(v, "{s?s, s?s, s?s, s?I, s?b, s?s}", "author", &author,
                    "updatedAt", &at, "scope", &scope, "generation",
                    &r->generation, "deleted", &deleted, "kind", &kind) != 0 ||
        !json_is_object(doc)) {
        json_decref(v);
        return polis_error_set(err, POLIS_EPROTO, kv->key,
                               "stored value is not a Polis record");
    }
    r->deleted = deleted != 0; /* "b" stores an int */
    json_unpack(doc, "{s?s, s?{s?s}}", "kind", &kind, "metadata", "name",
                &name);
    snprintf(r->kind, sizeof(r->kind), "%s", kind ? kind : "");
    snprintf(r->name, sizeof(r->name), "%s", name ? name : "");
    snprintf(r->scope, sizeof(r->scope), "%s", scope ? scope : "");
    snprintf(r->author, sizeof(r->author), "%s", author ? author : "");
    snprintf(r->updated_at, sizeof(r->updated_at), "%s", at ? at : "");
    r->revision = kv->mod_revision;
    r->doc_json = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(v);
    if (r->doc_json == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    return 0;
}

static char *record_json(const char *doc_json, const char *scope,
                         int64_t generation, const char *author, const char *at,
                         bool deleted, polis_error *err)
{
    json_error_t jerr;
    json_t *doc = json_loads(doc_json, 0, &jerr), *rec;
    char *out;

    if (doc == NULL) {
        polis_error_set(err, POLIS_EINVAL, "document", "%s", jerr.text);
        return NULL;
    }
    rec = json_pack("{s:o, s:s, s:I, s:s, s:s}", "document", doc, "scope",
                    scope, "generation", (json_int_t)generation, "author",
                    author, "updatedAt", at);
    if (rec && deleted)
        json_object_set_new(rec, "deleted", json_true());
    out = rec ? json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(rec);
    if (out == NULL)
        polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    return out;
}

/* The document part of a stored record, canonical, for change detection. */
static char *record_document(const etcd_kv *kv)
{
    json_t *v = json_loadb(kv->value, kv->value_len, 0, NULL);
    char *out = NULL;

    if (v && json_is_object(json_object_get(v, "document")))
        out = json_dumps(json_object_get(v, "document"),
                         JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(v);
    return out;
}

static int64_t record_generation(const etcd_kv *kv)
{
    json_t *v = json_loadb(kv->value, kv->value_len, 0, NULL);
    int64_t g = json_integer_value(json_object_get(v, "generation"));
    json_decref(v);
    return g;
}

/* ---- the write path ---- */

typedef struct write_plan {
    etcd_op *ops;
    etcd_compare *cmps;
    char **bufs; /* keys and values the ops point into */
    size_t n_ops, n_cmps, n_bufs;
    bool failed; /* an allocation failed */
} write_plan;

static int plan_alloc(write_plan *p, size_t n_docs, size_t n_guards)
{
    p->ops = calloc(2 * n_docs + 2, sizeof(*p->ops));
    /* mod + history per document, and the guards */
    p->cmps = calloc(2 * n_docs + n_guards + 1, sizeof(*p->cmps));
    p->bufs = calloc(4 * n_docs + n_guards + 8, sizeof(*p->bufs));
    return p->ops && p->cmps && p->bufs ? 0 : -1;
}

static void plan_free(write_plan *p)
{
    for (size_t i = 0; i < p->n_bufs; i++)
        free(p->bufs[i]);
    free(p->bufs);
    free(p->ops);
    free(p->cmps);
    memset(p, 0, sizeof(*p));
}

/* Keep s (malloc'd) alive until the plan is freed; NULL marks failure. */
static char *plan_keep(write_plan *p, char *s)
{
    if (s == NULL)
        p->failed = true;
    else
        p->bufs[p->n_bufs++] = s;
    return s;
}

/* Returns the plan's copy of key (NULL when out of memory). */
static const char *plan_put(write_plan *p, const char *key, const char *value)
{
    char *k = plan_keep(p, strdup(key));
    if (k && value)
        p->ops[p->n_ops++] = (etcd_op){.type = ETCD_OP_PUT,
                                       .key = k,
                                       .value = value,
                                       .value_len = strlen(value)};
    return k;
}

/* The write must find `key` as it was read (mod_revision 0: absent). */
static void plan_unchanged_since(write_plan *p, const char *key, int64_t mod)
{
    p->cmps[p->n_cmps++] = (etcd_compare){.key = key,
                                          .target = ETCD_CMP_MOD,
                                          .op = ETCD_CMP_EQUAL,
                                          .number = mod};
}

/* The key a guard compares: the resource, or the kind/scope prefix. */
static void guard_key(const cp_store *s, const cp_guard *g, char *buf)
{
    char k[CP_KIND_MAX];

    if (g->name) {
        resource_key(s, buf, g->kind, g->scope, g->name);
        return;
    }
    lower_into(k, sizeof(k), g->kind);
    snprintf(buf, KEY_MAX, "%sresources/%s/%s/", s->prefix, k, g->scope);
}

/* The guards as compares: CREATE > 0 (it exists) or, over the prefix,
 * VERSION == 0 (nothing there). */
static void plan_guards(const cp_store *s, write_plan *p,
                        const cp_guard *guards, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char key[KEY_MAX];
        const char *kept;

        guard_key(s, &guards[i], key);
        if ((kept = plan_keep(p, strdup(key))) == NULL)
            return;
        p->cmps[p->n_cmps++] = guards[i].name
                                   ? (etcd_compare){.key = kept,
                                                    .target = ETCD_CMP_CREATE,
                                                    .op = ETCD_CMP_GREATER,
                                                    .number = 0}
                                   : (etcd_compare){.key = kept,
                                                    .prefix = true,
                                                    .target = ETCD_CMP_VERSION,
                                                    .op = ETCD_CMP_EQUAL,
                                                    .number = 0};
    }
}

/*
 * After a txn whose compares failed: POLIS_ECONFLICT naming the first
 * guard that does not hold (the write must not be retried), 0 when they
 * all hold (a document changed: read again and retry).
 */
static int guards_broken(cp_store *s, const cp_guard *guards, size_t n,
                         polis_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const cp_guard *g = &guards[i];
        char key[KEY_MAX];
        etcd_range_result rr = {0};
        etcd_range_opts o = {.count_only = true, .prefix = g->name == NULL};
        int64_t count;
        int rc;

        guard_key(s, g, key);
        rc = etcd_range(s->etcd, key, &o, &rr, err);
        count = rr.count;
        etcd_range_result_free(&rr);
        if (rc)
            return rc;
        if (g->name && count == 0)
            return polis_error_set(err, POLIS_ECONFLICT, NULL,
                                   "%s \"%s\" was deleted meanwhile; "
                                   "nothing was written",
                                   g->kind, g->name);
        if (!g->name && count > 0)
            return polis_error_set(err, POLIS_ECONFLICT, NULL,
                                   "a %s was written in \"%s\" meanwhile; "
                                   "nothing was written",
                                   g->kind, g->scope);
    }
    return 0;
}

/*
 * Every write also records an audit entry and touches meta/last-change,
 * whose mod revision tells caches that something changed.  Neither is
 * compared, so writers of different resources never conflict.
 */
static void plan_audit(cp_store *s, write_plan *p, const char *action,
                       const char *author, const char *at, json_t *changes)
{
    char key[KEY_MAX], *audit;
    unsigned char rnd[4] = {0};
    struct timespec ts;
    json_t *a;

    clock_gettime(CLOCK_REALTIME, &ts);
    RAND_bytes(rnd, sizeof(rnd));
    /* Time-ordered and unique without coordination between writers;
     * readers order entries by their etcd mod revision. */
    snprintf(key, sizeof(key), "%saudit/%020lld-%02x%02x%02x%02x", s->prefix,
             (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, rnd[0], rnd[1],
             rnd[2], rnd[3]);
    a = json_pack("{s:s, s:s, s:s, s:O}", "action", action, "author", author,
                  "time", at, "changes", changes);
    audit =
        plan_keep(p, a ? json_dumps(a, JSON_COMPACT | JSON_SORT_KEYS) : NULL);
    json_decref(a);
    plan_put(p, key, audit);
    snprintf(key, sizeof(key), "%smeta/last-change", s->prefix);
    plan_put(p, key, audit);
}

/*
 * Read every touched resource and the number of versions in its history in
 * one consistent read: responses[2i] is the resource, responses[2i + 1] the
 * keys of history/<kind>/<scope>/<name>/.
 */
static int read_current(cp_store *s, char **keys, char **hprefixes, size_t n,
                        etcd_txn_result *tr, polis_error *err)
{
    etcd_op *ops = calloc(2 * n + 1, sizeof(*ops));
    int rc;

    if (ops == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        ops[2 * i] = (etcd_op){.type = ETCD_OP_RANGE, .key = keys[i]};
        /* Keys only: the count, and the revision of the last version
         * (a deletion leaves only that behind). */
        ops[2 * i + 1] = (etcd_op){.type = ETCD_OP_RANGE,
                                   .key = hprefixes[i],
                                   .prefix = true,
                                   .keys_only = true};
    }
    rc = etcd_txn(s->etcd, NULL, 0, ops, 2 * n, NULL, 0, tr, err);
    free(ops);
    if (rc == 0 && tr->n_responses != 2 * n)
        rc = polis_error_set(err, POLIS_EPROTO, NULL,
                             "etcd answered %zu reads for %zu", tr->n_responses,
                             2 * n);
    return rc;
}

static const etcd_kv *current_kv(const etcd_txn_result *tr, size_t i)
{
    const etcd_range_result *r = &tr->responses[2 * i];
    return r->n ? &r->kvs[0] : NULL;
}

/* Versions so far; a new version is number versions + 1, which keeps
 * history keys unique across delete and re-create. */
static int64_t current_versions(const etcd_txn_result *tr, size_t i)
{
    return tr->responses[2 * i + 1].count;
}

/* The newest version's revision in the history (0: none). */
static int64_t history_last_revision(const etcd_txn_result *tr, size_t i)
{
    const etcd_range_result *h = &tr->responses[2 * i + 1];
    int64_t last = 0;

    for (size_t j = 0; j < h->n; j++)
        if (h->kvs[j].mod_revision > last)
            last = h->kvs[j].mod_revision;
    return last;
}

/* Did a document move past expected_revision, deletions included? */
static int check_expected(const etcd_txn_result *tr, char **keys, size_t n,
                          int64_t expected, polis_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const etcd_kv *kv = current_kv(tr, i);
        int64_t last = history_last_revision(tr, i);

        if (kv && kv->mod_revision > expected)
            return polis_error_set(
                err, POLIS_ECONFLICT, keys[i],
                "changed at revision %" PRId64 ", after the expected "
                "revision %" PRId64 "; read it again and retry",
                kv->mod_revision, expected);
        if (kv == NULL && last > expected)
            return polis_error_set(
                err, POLIS_ECONFLICT, keys[i],
                "deleted at revision %" PRId64 ", after the expected "
                "revision %" PRId64 "; read it again and retry",
                last, expected);
    }
    return 0;
}

static void backoff(int attempt)
{
    usleep((useconds_t)(500 * (1 + attempt) + rand() % 1000));
}

static int gave_up(polis_error *err)
{
    return polis_error_set(err, POLIS_EUNAVAIL, NULL,
                           "gave up after %d attempts: other writers kept "
                           "changing the same resources; retry",
                           APPLY_RETRIES);
}

typedef struct key_set {
    char **keys, **hprefixes;
    size_t n;
} key_set;

static void key_set_free(key_set *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->keys[i]);
        free(k->hprefixes[i]);
    }
    free(k->keys);
    free(k->hprefixes);
}

static int key_set_make(cp_store *s, const cp_change *changes, size_t n,
                        key_set *k, polis_error *err)
{
    char key[KEY_MAX];

    k->keys = calloc(n ? n : 1, sizeof(char *));
    k->hprefixes = calloc(n ? n : 1, sizeof(char *));
    k->n = 0;
    if (k->keys == NULL || k->hprefixes == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    for (size_t i = 0; i < n; i++, k->n++) {
        resource_key(s, key, changes[i].kind, changes[i].scope,
                     changes[i].name);
        k->keys[i] = strdup(key);
        history_prefix(s, key, changes[i].kind, changes[i].scope,
                       changes[i].name);
        k->hprefixes[i] = strdup(key);
        if (k->keys[i] == NULL || k->hprefixes[i] == NULL) {
            k->n++;
            return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        }
    }
    return 0;
}

/*
 * What the store holds for one touched resource: from a read, or from the
 * cache of what this process last read or wrote.
 */
typedef struct doc_state {
    char *doc;          /* stored canonical document; NULL: absent */
    int64_t mod;        /* its mod revision; 0: absent */
    int64_t versions;   /* history entries so far */
    int64_t generation; /* the stored record's generation */
} doc_state;

static void states_free(doc_state *st, size_t n)
{
    for (size_t i = 0; st && i < n; i++)
        free(st[i].doc);
    free(st);
}

static void states_from_read(const etcd_txn_result *cur, doc_state *st,
                             size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const etcd_kv *kv = current_kv(cur, i);
        st[i].doc = kv ? record_document(kv) : NULL;
        st[i].mod = kv ? kv->mod_revision : 0;
        st[i].generation = kv ? record_generation(kv) : 0;
        st[i].versions = current_versions(cur, i);
    }
}

/*
 * The cache lets a write skip its read: the write txn compares the cached
 * mod revision, so a stale entry only costs a failed txn and a read.  An
 * unknown key is guessed absent with no history (the common create), which
 * the compare on the history key checks.  Bounded: cleared when full.
 */
#define CACHE_MAX 50000

static void states_from_cache(cp_store *s, const key_set *k, doc_state *st)
{
    pthread_mutex_lock(&s->cache_lock);
    for (size_t i = 0; i < k->n; i++) {
        json_t *e = json_object_get(s->cache, k->keys[i]);
        const char *doc = json_string_value(json_array_get(e, 3));
        st[i].mod = json_integer_value(json_array_get(e, 0));
        st[i].versions = json_integer_value(json_array_get(e, 1));
        st[i].generation = json_integer_value(json_array_get(e, 2));
        st[i].doc = doc ? strdup(doc) : NULL;
    }
    pthread_mutex_unlock(&s->cache_lock);
}

static void cache_put(cp_store *s, const char *key, const doc_state *st)
{
    pthread_mutex_lock(&s->cache_lock);
    if (json_object_size(s->cache) >= CACHE_MAX)
        json_object_clear(s->cache);
    if (st->doc)
        json_object_set_new(s->cache, key,
                            json_pack("[I, I, I, s]", (json_int_t)st->mod,
                                      (json_int_t)st->versions,
                                      (json_int_t)st->generation, st->doc));
    else
        json_object_del(s->cache, key);
    pthread_mutex_unlock(&s->cache_lock);
}

static void cache_drop(cp_store *s, const char *key)
{
    pthread_mutex_lock(&s->cache_lock);
    json_object_del(s->cache, key);
    pthread_mutex_unlock(&s->cache_lock);
}

/*
 * Plan the write of changes against the states; results filled.  Every
 * document, changed or not, must still be at its state's mod revision, and
 * a new history entry must not exist yet.  Returns the number of changed
 * documents or a negative error.
 */
static int plan_apply(cp_store *s, const cp_change *changes, size_t n,
                      const cp_guard *guards, size_t n_guards, const key_set *k,
                      const doc_state *st, const char *author, const char *at,
                      cp_apply_result *results, write_plan *plan,
                      polis_error *err)
{
    json_t *audit_changes = json_array();
    int n_changed = 0;

    if (audit_changes == NULL || plan_alloc(plan, n, n_guards) != 0) {
        json_decref(audit_changes);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    plan_guards(s, plan, guards, n_guards);
    for (size_t i = 0; i < n; i++) {
        int64_t gen = st[i].versions + 1;
        char hkey[KEY_MAX], *rec;
        const char *hkey_kept;

        plan_unchanged_since(plan, k->keys[i], st[i].mod);
        if (st[i].doc && strcmp(st[i].doc, changes[i].doc_json) == 0) {
            results[i].action = "unchanged";
            results[i].generation = st[i].generation;
            continue;
        }
        results[i].action = st[i].doc ? "updated" : "created";
        results[i].generation = gen;
        n_changed++;
        rec = record_json(changes[i].doc_json, changes[i].scope, gen, author,
                          at, false, err);
        if (rec == NULL) {
            json_decref(audit_changes);
            return err && err->code ? err->code : POLIS_ENOMEM;
        }
        plan_keep(plan, rec);
        plan_put(plan, k->keys[i], rec);
        snprintf(hkey, sizeof(hkey), "%s%020" PRId64, k->hprefixes[i], gen);
        hkey_kept = plan_put(plan, hkey, rec);
        if (hkey_kept)
            plan->cmps[plan->n_cmps++] =
                (etcd_compare){.key = hkey_kept,
                               .target = ETCD_CMP_CREATE,
                               .op = ETCD_CMP_EQUAL,
                               .number = 0};
        json_array_append_new(
            audit_changes,
            json_pack("{s:s, s:s, s:s, s:s, s:I}", "kind", changes[i].kind,
                      "scope", changes[i].scope, "name", changes[i].name,
                      "action", results[i].action, "generation",
                      (json_int_t)gen));
    }
    if (n_changed > 0)
        plan_audit(s, plan, "apply", author, at, audit_changes);
    json_decref(audit_changes);
    if (plan->failed)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    return n_changed;
}

int cp_store_apply(cp_store *s, const cp_change *changes, size_t n,
                   const cp_guard *guards, size_t n_guards,
                   int64_t expected_revision, bool dry_run, const char *author,
                   cp_apply_result *results, int64_t *revision_out,
                   polis_error *err)
{
    key_set k = {0};
    char at[40];
    int rc;

    *revision_out = 0;
    rc = key_set_make(s, changes, n, &k, err);
    for (int attempt = 0; rc == 0; attempt++) {
        etcd_txn_result cur = {0}, wr = {0};
        write_plan plan = {0};
        doc_state *st = calloc(n ? n : 1, sizeof(*st));
        /* First try from the cache, unless the caller needs the exact
         * stored state (dry run, read-modify-write). */
        bool optimistic = attempt == 0 && !dry_run && expected_revision == 0;
        int n_changed = 0;

        now_rfc3339(at, sizeof(at));
        if (st == NULL) {
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
            break;
        }
        if (optimistic) {
            states_from_cache(s, &k, st);
        } else {
            rc = read_current(s, k.keys, k.hprefixes, n, &cur, err);
            if (rc == 0 && expected_revision > 0)
                rc = check_expected(&cur, k.keys, n, expected_revision, err);
            if (rc == 0)
                states_from_read(&cur, st, n);
            for (size_t i = 0; rc == 0 && i < n; i++)
                cache_put(s, k.keys[i], &st[i]);
        }
        if (rc == 0) {
            n_changed = plan_apply(s, changes, n, guards, n_guards, &k, st,
                                   author, at, results, &plan, err);
            rc = n_changed < 0 ? n_changed : 0;
        }
        /* Nothing to write after a read: done.  From the cache, the
         * compares alone confirm that nothing changed. */
        if (rc == 0 && !dry_run && (n_changed > 0 || optimistic))
            rc = etcd_txn(s->etcd, plan.cmps, plan.n_cmps, plan.ops, plan.n_ops,
                          NULL, 0, &wr, err);
        for (size_t i = 0; rc == 0 && wr.succeeded && i < n; i++) {
            if (strcmp(results[i].action, "unchanged") == 0)
                continue;
            free(st[i].doc);
            st[i] = (doc_state){.doc = strdup(changes[i].doc_json),
                                .mod = wr.revision,
                                .versions = results[i].generation,
                                .generation = results[i].generation};
            cache_put(s, k.keys[i], &st[i]);
        }
        plan_free(&plan);
        states_free(st, n);
        etcd_txn_result_free(&cur);
        if (rc || dry_run || wr.succeeded || (n_changed == 0 && !optimistic)) {
            if (rc == 0 && wr.succeeded && n_changed > 0)
                *revision_out = wr.revision;
            etcd_txn_result_free(&wr);
            break;
        }
        etcd_txn_result_free(&wr);
        /* The cache was stale, or a document changed between the read and
         * the write: read again (an expected_revision is then checked
         * against the new state).  A reference that went away is final. */
        for (size_t i = 0; i < n; i++)
            cache_drop(s, k.keys[i]);
        if ((rc = guards_broken(s, guards, n_guards, err)) != 0)
            break;
        if (attempt + 1 >= APPLY_RETRIES) {
            rc = gave_up(err);
            break;
        }
        if (!optimistic)
            backoff(attempt);
    }
    key_set_free(&k);
    return rc;
}

/* ---- reads ---- */

static int range_all(cp_store *s, const char *prefix, int64_t revision,
                     etcd_kv **kvs_out, size_t *n_out, int64_t *rev_out,
                     polis_error *err);

int cp_store_get(cp_store *s, const char *kind, const char *scope,
                 const char *name, cp_resource *out, polis_error *err)
{
    char key[KEY_MAX], k[CP_KIND_MAX];
    etcd_range_result rr = {0};
    int rc;

    memset(out, 0, sizeof(*out));
    lower_into(k, sizeof(k), kind);
    if (scope && scope[0]) {
        resource_key(s, key, kind, scope, name);
        rc = etcd_range(s->etcd, key, NULL, &rr, err);
        if (rc)
            return rc;
        if (rr.n == 0) {
            etcd_range_result_free(&rr);
            return polis_error_set(err, POLIS_ENOTFOUND, NULL,
                                   "%s \"%s\" not found in scope \"%s\"", kind,
                                   name, scope);
        }
        rc = resource_from_kv(&rr.kvs[0], out, err);
        etcd_range_result_free(&rr);
        return rc;
    }
    /* Any scope: list the kind's keys and pick the ones with this name. */
    {
        etcd_kv *kvs = NULL;
        size_t n = 0, found = 0, at = 0;
        int64_t rev;
        char pfx[KEY_MAX], scopes[512] = "";

        snprintf(pfx, sizeof(pfx), "%sresources/%s/", s->prefix, k);
        rc = range_all(s, pfx, 0, &kvs, &n, &rev, err);
        if (rc)
            return rc;
        for (size_t i = 0; i < n; i++) {
            const char *slash = strrchr(kvs[i].key, '/');
            if (slash && strcmp(slash + 1, name) == 0) {
                const char *sc = kvs[i].key + strlen(pfx);
                size_t used = strlen(scopes);
                snprintf(scopes + used, sizeof(scopes) - used, "%s%.*s",
                         found ? ", " : "", (int)(slash - sc), sc);
                at = i;
                found++;
            }
        }
        if (found == 1)
            rc = resource_from_kv(&kvs[at], out, err);
        else if (found == 0)
            rc = polis_error_set(err, POLIS_ENOTFOUND, NULL,
                                 "%s \"%s\" not found", kind, name);
        else
            rc = polis_error_set(err, POLIS_EINVAL, NULL,
                                 "%s \"%s\" exists in several scopes (%s); "
                                 "name one",
                                 kind, name, scopes);
        for (size_t i = 0; i < n; i++) {
            free(kvs[i].key);
            free(kvs[i].value);
        }
        free(kvs);
        return rc;
    }
}

/* Every kv under a prefix, in pages, all read at one revision. */
static int range_all(cp_store *s, const char *prefix, int64_t revision,
                     etcd_kv **kvs_out, size_t *n_out, int64_t *rev_out,
                     polis_error *err)
{
    char *from = NULL, end[KEY_MAX];
    etcd_kv *all = NULL;
    size_t n = 0;
    int rc = 0;
    size_t plen = strlen(prefix);

    /* range_end of a prefix: the prefix with its last byte incremented. */
    memcpy(end, prefix, plen + 1);
    end[plen - 1]++;
    from = strdup(prefix);
    if (from == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    *rev_out = revision;
    for (;;) {
        etcd_range_result rr = {0};
        etcd_range_opts o = {
            .range_end = end, .limit = LIST_PAGE, .revision = *rev_out};
        etcd_kv *grown;

        rc = etcd_range(s->etcd, from, &o, &rr, err);
        if (rc)
            break;
        if (*rev_out == 0)
            *rev_out = rr.revision;
        grown = realloc(all, (n + rr.n + 1) * sizeof(*all));
        if (grown == NULL) {
            etcd_range_result_free(&rr);
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
            break;
        }
        all = grown;
        for (size_t i = 0; i < rr.n; i++) {
            all[n++] = rr.kvs[i]; /* take ownership of key/value */
            rr.kvs[i].key = NULL;
            rr.kvs[i].value = NULL;
        }
        bool more = rr.more && rr.n > 0;
        if (more) {
            /* The next page starts just after the last key: key + "\x01"
             * (keys here are text; none holds a NUL byte). */
            free(from);
            from = NULL;
            if (asprintf(&from, "%s\x01", all[n - 1].key) < 0)
                from = NULL;
            if (from == NULL) {
                etcd_range_result_free(&rr);
                rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
                break;
            }
        }
        etcd_range_result_free(&rr);
        if (!more)
            break;
    }
    free(from);
    if (rc) {
        for (size_t i = 0; i < n; i++) {
            free(all[i].key);
            free(all[i].value);
        }
        free(all);
        return rc;
    }
    *kvs_out = all;
    *n_out = n;
    return 0;
}

static void kvs_free(etcd_kv *kvs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kvs[i].key);
        free(kvs[i].value);
    }
    free(kvs);
}

/*
 * Records into resources.  A record that is not Polis's (written around the
 * control plane, e.g. with etcdctl) is skipped with a warning rather than
 * failing the whole listing.
 */
static int resources_from_kvs(etcd_kv *kvs, size_t n, bool newest_first,
                              size_t limit, cp_resource **out, size_t *n_out,
                              polis_error *err)
{
    size_t take = limit && limit < n ? limit : n, got = 0;
    cp_resource *list = calloc(take ? take : 1, sizeof(*list));

    if (list == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    for (size_t i = 0; i < n && got < take; i++) {
        size_t src = newest_first ? n - 1 - i : i;
        polis_error bad = {0};
        char msg[512];

        if (resource_from_kv(&kvs[src], &list[got], &bad) == 0) {
            got++;
            continue;
        }
        if (bad.code == POLIS_ENOMEM) {
            cp_resources_free(list, got);
            return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        }
        log_warn("skipping an unreadable record", "error=\"%s\"",
                 polis_error_format(&bad, msg, sizeof(msg)));
    }
    *out = list;
    *n_out = got;
    return 0;
}

int cp_store_list(cp_store *s, const char *kind, const char *scope,
                  cp_resource **out, size_t *n_out, int64_t *revision_out,
                  polis_error *err)
{
    char pfx[KEY_MAX], k[CP_KIND_MAX] = "";
    etcd_kv *kvs = NULL;
    size_t n = 0;
    int rc;

    *out = NULL;
    *n_out = 0;
    if (kind && kind[0]) {
        lower_into(k, sizeof(k), kind);
        if (scope && scope[0])
            snprintf(pfx, sizeof(pfx), "%sresources/%s/%s/", s->prefix, k,
                     scope);
        else
            snprintf(pfx, sizeof(pfx), "%sresources/%s/", s->prefix, k);
    } else {
        snprintf(pfx, sizeof(pfx), "%sresources/", s->prefix);
    }
    rc = range_all(s, pfx, 0, &kvs, &n, revision_out, err);
    if (rc)
        return rc;
    /* Without a kind, a scope still filters: resources/<kind>/<scope>/. */
    if (!(kind && kind[0]) && scope && scope[0]) {
        size_t w = 0;
        for (size_t i = 0; i < n; i++) {
            const char *p = strchr(kvs[i].key + strlen(pfx), '/');
            size_t sl = strlen(scope);
            if (p && strncmp(p + 1, scope, sl) == 0 && p[1 + sl] == '/')
                kvs[w++] = kvs[i];
            else {
                free(kvs[i].key);
                free(kvs[i].value);
            }
        }
        n = w;
    }
    rc = resources_from_kvs(kvs, n, false, 0, out, n_out, err);
    kvs_free(kvs, n);
    return rc;
}

int cp_store_history(cp_store *s, const char *kind, const char *scope,
                     const char *name, size_t limit, cp_resource **out,
                     size_t *n_out, polis_error *err)
{
    char pfx[KEY_MAX];
    etcd_kv *kvs = NULL;
    size_t n = 0;
    int64_t rev;
    cp_resource cur = {0};
    int rc;

    *out = NULL;
    *n_out = 0;
    if (scope == NULL || scope[0] == '\0') {
        /* Resolve the scope through the live resource. */
        rc = cp_store_get(s, kind, NULL, name, &cur, err);
        if (rc)
            return rc;
        scope = cur.scope;
    }
    history_prefix(s, pfx, kind, scope, name);
    rc = range_all(s, pfx, 0, &kvs, &n, &rev, err);
    if (rc == 0 && n == 0)
        rc = polis_error_set(err, POLIS_ENOTFOUND, NULL,
                             "%s \"%s\" has no history in scope \"%s\"", kind,
                             name, scope);
    if (rc == 0)
        rc = resources_from_kvs(kvs, n, true, limit, out, n_out, err);
    kvs_free(kvs, n);
    cp_resource_clear(&cur);
    return rc;
}

int cp_store_exists(cp_store *s, const char *kind, const char *scope,
                    const char *name, bool *exists, polis_error *err)
{
    char key[KEY_MAX];
    etcd_range_result rr = {0};
    etcd_range_opts o = {.count_only = true};
    int rc;

    resource_key(s, key, kind, scope, name);
    rc = etcd_range(s->etcd, key, &o, &rr, err);
    if (rc == 0)
        *exists = rr.count > 0;
    etcd_range_result_free(&rr);
    return rc;
}

int cp_store_count(cp_store *s, const char *kind, const char *scope,
                   int64_t *count, polis_error *err)
{
    char key[KEY_MAX], k[CP_KIND_MAX];
    etcd_range_result rr = {0};
    etcd_range_opts o = {.count_only = true, .prefix = true};
    int rc;

    lower_into(k, sizeof(k), kind);
    snprintf(key, sizeof(key), "%sresources/%s/%s/", s->prefix, k, scope);
    rc = etcd_range(s->etcd, key, &o, &rr, err);
    if (rc == 0)
        *count = rr.count;
    etcd_range_result_free(&rr);
    return rc;
}

int cp_store_delete(cp_store *s, const char *kind, const char *scope,
                    const char *name, const cp_guard *guards, size_t n_guards,
                    int64_t expected_revision, bool dry_run, const char *author,
                    cp_resource *deleted, int64_t *revision_out,
                    polis_error *err)
{
    cp_resource cur_res = {0};
    cp_change one;
    key_set k = {0};
    char at[40];
    int rc;

    *revision_out = 0;
    if (scope == NULL || scope[0] == '\0') {
        rc = cp_store_get(s, kind, NULL, name, &cur_res, err);
        if (rc)
            return rc;
        scope = cur_res.scope;
    }
    one = (cp_change){.kind = kind, .scope = scope, .name = name};
    rc = key_set_make(s, &one, 1, &k, err);
    for (int attempt = 0; rc == 0; attempt++) {
        etcd_txn_result cur = {0}, wr = {0};
        write_plan plan = {0};
        const etcd_kv *kv;
        char hkey[KEY_MAX], *doc = NULL;
        json_t *changes = NULL;
        int64_t gen;

        now_rfc3339(at, sizeof(at));
        rc = read_current(s, k.keys, k.hprefixes, 1, &cur, err);
        kv = rc == 0 ? current_kv(&cur, 0) : NULL;
        if (rc == 0 && kv == NULL)
            rc = polis_error_set(err, POLIS_ENOTFOUND, NULL,
                                 "%s \"%s\" not found in scope \"%s\"", kind,
                                 name, scope);
        if (rc == 0 && expected_revision > 0)
            rc = check_expected(&cur, k.keys, 1, expected_revision, err);
        if (rc == 0 && deleted) {
            cp_resource_clear(deleted);
            rc = resource_from_kv(kv, deleted, err);
        }
        if (rc || dry_run) {
            etcd_txn_result_free(&cur);
            break;
        }
        gen = current_versions(&cur, 0) + 1;
        doc = record_document(kv);
        changes = json_pack("[{s:s, s:s, s:s, s:s, s:I}]", "kind", kind,
                            "scope", scope, "name", name, "action", "deleted",
                            "generation", (json_int_t)gen);
        if (doc == NULL || changes == NULL ||
            plan_alloc(&plan, 1, n_guards) != 0) {
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        } else {
            /* The history keeps the last document, marked deleted. */
            char *rec = plan_keep(
                &plan, record_json(doc, scope, gen, author, at, true, err));
            plan_unchanged_since(&plan, k.keys[0], kv->mod_revision);
            plan_guards(s, &plan, guards, n_guards);
            plan.ops[plan.n_ops++] =
                (etcd_op){.type = ETCD_OP_DELETE, .key = k.keys[0]};
            snprintf(hkey, sizeof(hkey), "%s%020" PRId64, k.hprefixes[0], gen);
            plan_put(&plan, hkey, rec);
            plan_audit(s, &plan, "delete", author, at, changes);
            if (plan.failed)
                rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
            else
                rc = etcd_txn(s->etcd, plan.cmps, plan.n_cmps, plan.ops,
                              plan.n_ops, NULL, 0, &wr, err);
            if (rc == 0 && wr.succeeded)
                *revision_out = wr.revision;
        }
        cache_drop(s, k.keys[0]);
        free(doc);
        json_decref(changes);
        plan_free(&plan);
        etcd_txn_result_free(&cur);
        bool done = rc || wr.succeeded;
        etcd_txn_result_free(&wr);
        if (done)
            break;
        if ((rc = guards_broken(s, guards, n_guards, err)) != 0)
            break;
        if (attempt + 1 >= APPLY_RETRIES) {
            rc = gave_up(err);
            break;
        }
        backoff(attempt);
    }
    key_set_free(&k);
    cp_resource_clear(&cur_res);
    return rc;
}

int cp_store_change_revision(cp_store *s, int64_t *revision, polis_error *err)
{
    char key[KEY_MAX];
    etcd_range_result rr = {0};
    int rc;

    snprintf(key, sizeof(key), "%smeta/last-change", s->prefix);
    rc = etcd_range(s->etcd, key, NULL, &rr, err);
    if (rc == 0)
        *revision = rr.n ? rr.kvs[0].mod_revision : 0;
    etcd_range_result_free(&rr);
    return rc;
}

etcd_client *cp_store_etcd(const cp_store *s)
{
    return s->etcd;
}

int cp_store_masking_key(cp_store *s, unsigned char *key, size_t cap,
                         size_t *len_out, polis_error *err)
{
    char k[KEY_MAX];
    unsigned char fresh[32];
    etcd_compare absent;
    etcd_op put, get;
    etcd_txn_result tr = {0};
    const etcd_range_result *rr;
    int rc;

    if (RAND_bytes(fresh, sizeof(fresh)) != 1)
        return polis_error_set(err, POLIS_EINTERNAL, NULL,
                               "no random bytes for the masking key");
    snprintf(k, sizeof(k), "%smeta/masking-key", s->prefix);
    /* Create it if absent, else read it: one txn, so every replica ends up
     * with the same key whoever came first. */
    absent = (etcd_compare){
        .key = k, .target = ETCD_CMP_CREATE, .op = ETCD_CMP_EQUAL, .number = 0};
    put = (etcd_op){.type = ETCD_OP_PUT,
                    .key = k,
                    .value = (const char *)fresh,
                    .value_len = sizeof(fresh)};
    get = (etcd_op){.type = ETCD_OP_RANGE, .key = k};
    rc = etcd_txn(s->etcd, &absent, 1, &put, 1, &get, 1, &tr, err);
    if (rc)
        return rc;
    if (tr.succeeded) {
        *len_out = sizeof(fresh) < cap ? sizeof(fresh) : cap;
        memcpy(key, fresh, *len_out);
    } else {
        rr = tr.n_responses ? &tr.responses[0] : NULL;
        if (rr == NULL || rr->n == 0) {
            etcd_txn_result_free(&tr);
            return polis_error_set(err, POLIS_EPROTO, k,
                                   "masking key vanished while read");
        }
        *len_out = rr->kvs[0].value_len < cap ? rr->kvs[0].value_len : cap;
        memcpy(key, rr->kvs[0].value, *len_out);
    }
    etcd_txn_result_free(&tr);
    return 0;
}
