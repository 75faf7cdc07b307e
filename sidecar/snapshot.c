/*
 * snapshot.c — compiled snapshots and the slot that holds the one in force
 * (snapshot.h).  After the engine is built only the Principal documents
 * are kept (the token and name indexes point into them): the rest of the
 * parsed JSON is released to keep a large snapshot's footprint small.
 */
#include "sidecar/snapshot.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sc_snapshot {
    atomic_int refs;
    int64_t revision;
    char digest[80];
    char domain[256];
    size_t nresources;
    pol_engine *engine;
    json_t *principal_docs; /* the Principal documents, indexed below */
    sc_principals *principals;
    /* The raw masking key: the PostgreSQL engine computes hash masks in
     * the database (pgcrypto), which needs the key, not HMAC states. */
    unsigned char *masking_key;
    size_t masking_key_len;
};

static void snapshot_free(sc_snapshot *s)
{
    pol_engine_free(s->engine);
    sc_principals_free(s->principals);
    json_decref(s->principal_docs);
    if (s->masking_key) {
        OPENSSL_cleanse(s->masking_key, s->masking_key_len);
        free(s->masking_key);
    }
    free(s);
}

/* Parse the documents; Principals also go to `principals`. */
static int parse_documents(const Polis__V1__Snapshot *pb, json_t *docs,
                           json_t *principals, polis_error *err)
{
    for (size_t i = 0; i < pb->n_resources; i++) {
        const Polis__V1__Resource *r = pb->resources[i];
        json_error_t jerr;
        json_t *doc;
        const char *kind;
        char where[64];

        snprintf(where, sizeof(where), "resources[%zu]", i);
        if (r == NULL || r->document_json == NULL)
            return polis_error_set(err, POLIS_EINVAL, where, "no document");
        doc = json_loads(r->document_json, JSON_REJECT_DUPLICATES, &jerr);
        if (doc == NULL || !json_is_object(doc)) {
            json_decref(doc);
            return polis_error_set(err, POLIS_EINVAL, where,
                                   "document is not a JSON object: %s",
                                   doc ? "wrong type" : jerr.text);
        }
        kind = json_string_value(json_object_get(doc, "kind"));
        if (kind && strcmp(kind, "Principal") == 0 &&
            json_array_append(principals, doc) != 0) {
            json_decref(doc);
            return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        }
        if (json_array_append_new(docs, doc) != 0)
            return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    return 0;
}

int sc_snapshot_compile(const Polis__V1__Snapshot *pb, const char *domain,
                        sc_snapshot **out, polis_error *err)
{
    sc_snapshot *s;
    json_t *docs = NULL;
    pol_engine_options eo = {0};
    int rc;

    *out = NULL;
    if (pb->domain == NULL || strcmp(pb->domain, domain) != 0)
        return polis_error_set(err, POLIS_EINVAL, "snapshot.domain",
                               "snapshot for domain \"%s\", but this sidecar "
                               "serves \"%s\"",
                               pb->domain ? pb->domain : "", domain);
    if (pb->revision <= 0)
        return polis_error_set(err, POLIS_EINVAL, "snapshot.revision",
                               "revision %lld, expected > 0",
                               (long long)pb->revision);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    atomic_init(&s->refs, 1);
    s->revision = pb->revision;
    s->nresources = pb->n_resources;
    snprintf(s->digest, sizeof(s->digest), "%s", pb->digest ? pb->digest : "");
    snprintf(s->domain, sizeof(s->domain), "%s", domain);
    docs = json_array();
    s->principal_docs = json_array();
    if (docs == NULL || s->principal_docs == NULL) {
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
        goto fail;
    }
    if ((rc = parse_documents(pb, docs, s->principal_docs, err)) != 0)
        goto fail;
    if (pb->masking_key.len > 0) {
        eo.hmac_key = pb->masking_key.data;
        eo.hmac_key_len = pb->masking_key.len;
        s->masking_key = malloc(pb->masking_key.len);
        if (s->masking_key == NULL) {
            rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
            goto fail;
        }
        memcpy(s->masking_key, pb->masking_key.data, pb->masking_key.len);
        s->masking_key_len = pb->masking_key.len;
    }
    if ((rc = pol_engine_build(docs, &eo, &s->engine, err)) != 0)
        goto fail;
    if ((rc = sc_principals_build(s->principal_docs, &s->principals, err)))
        goto fail;
    json_decref(docs);
    *out = s;
    return 0;
fail:
    json_decref(docs);
    snapshot_free(s);
    return rc;
}

sc_snapshot *sc_snapshot_ref(sc_snapshot *s)
{
    if (s)
        atomic_fetch_add(&s->refs, 1);
    return s;
}

void sc_snapshot_unref(sc_snapshot *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1)
        snapshot_free(s);
}

const pol_engine *sc_snapshot_engine(const sc_snapshot *s)
{
    return s->engine;
}

const sc_principals *sc_snapshot_principals(const sc_snapshot *s)
{
    return s->principals;
}

const char *sc_snapshot_digest(const sc_snapshot *s)
{
    return s->digest;
}

const char *sc_snapshot_domain(const sc_snapshot *s)
{
    return s->domain;
}

int64_t sc_snapshot_revision(const sc_snapshot *s)
{
    return s->revision;
}

size_t sc_snapshot_resource_count(const sc_snapshot *s)
{
    return s->nresources;
}

const void *sc_snapshot_masking_key(const sc_snapshot *s, size_t *len)
{
    *len = s->masking_key_len;
    return s->masking_key;
}

/* ---- slot ---- */

struct sc_snapshot_slot {
    pthread_mutex_t lock;
    sc_snapshot *current;
};

sc_snapshot_slot *sc_snapshot_slot_new(void)
{
    sc_snapshot_slot *slot = calloc(1, sizeof(*slot));

    if (slot)
        pthread_mutex_init(&slot->lock, NULL);
    return slot;
}

void sc_snapshot_slot_free(sc_snapshot_slot *slot)
{
    if (slot == NULL)
        return;
    sc_snapshot_unref(slot->current);
    pthread_mutex_destroy(&slot->lock);
    free(slot);
}

sc_snapshot *sc_snapshot_slot_get(sc_snapshot_slot *slot)
{
    sc_snapshot *s;

    pthread_mutex_lock(&slot->lock);
    s = sc_snapshot_ref(slot->current);
    pthread_mutex_unlock(&slot->lock);
    return s;
}

void sc_snapshot_slot_set(sc_snapshot_slot *slot, sc_snapshot *s)
{
    sc_snapshot *old;

    pthread_mutex_lock(&slot->lock);
    old = slot->current;
    slot->current = s;
    pthread_mutex_unlock(&slot->lock);
    /* Outside the lock: freeing a large engine must not stall readers. */
    sc_snapshot_unref(old);
}
