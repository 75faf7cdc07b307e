/*
 * ports.c — the DataProduct catalogue of the snapshot in force (ports.h).
 * sc_snapshot_compile releases every document but the Principals once the
 * engine is built, so the product documents are read back from the state
 * dir's snapshot.pb, which the subscriber writes before it swaps a
 * snapshot in; the copy is used only when its digest is the digest of the
 * snapshot in force, and kept until the next digest.
 */
#include "sidecar/ports.h"
#include "sidecar/snapshot_store.h"

#include <ctype.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sc_ports {
    char domain[256];
    char state_dir[1024];
    char data_root[1024];
    pthread_mutex_t lock;
    char digest[80];  /* of the snapshot `products` came from */
    json_t *products; /* name -> DataProduct document */
};

int sc_ports_new(const char *domain, const char *state_dir,
                 const char *data_root, sc_ports **out, polis_error *err)
{
    sc_ports *p;

    if (domain == NULL || state_dir == NULL)
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "a domain and a state dir are required");
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    if (snprintf(p->domain, sizeof(p->domain), "%s", domain) >=
            (int)sizeof(p->domain) ||
        snprintf(p->state_dir, sizeof(p->state_dir), "%s", state_dir) >=
            (int)sizeof(p->state_dir) ||
        snprintf(p->data_root, sizeof(p->data_root), "%s",
                 data_root ? data_root : "") >= (int)sizeof(p->data_root)) {
        free(p);
        return polis_error_set(err, POLIS_ETOOBIG, NULL,
                               "domain, state dir or data root too long");
    }
    pthread_mutex_init(&p->lock, NULL);
    *out = p;
    return 0;
}

void sc_ports_free(sc_ports *p)
{
    if (p == NULL)
        return;
    json_decref(p->products);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* This domain's DataProducts of a saved snapshot, by name. */
static int index_products(const sc_ports *p, const Polis__V1__Snapshot *pb,
                          json_t **out, polis_error *err)
{
    json_t *products = json_object();

    if (products == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    for (size_t i = 0; i < pb->n_resources; i++) {
        const Polis__V1__Resource *r = pb->resources[i];
        json_t *doc;

        if (r == NULL || r->kind == NULL || r->name == NULL ||
            r->scope == NULL || strcmp(r->kind, "DataProduct") != 0 ||
            strcmp(r->scope, p->domain) != 0 || r->document_json == NULL)
            continue;
        doc = json_loads(r->document_json, 0, NULL);
        if (doc == NULL || json_object_set_new(products, r->name, doc) != 0) {
            json_decref(products);
            return polis_error_set(err, POLIS_EUNAVAIL, r->name,
                                   "the saved DataProduct document does not "
                                   "parse");
        }
    }
    *out = products;
    return 0;
}

/* Under the lock: make `products` the catalogue of `digest`. */
static int reload(sc_ports *p, const char *digest, polis_error *err)
{
    Polis__V1__Snapshot *pb = NULL;
    json_t *products = NULL;
    int rc = sc_store_load(p->state_dir, &pb, err);

    if (rc != 0) {
        char why[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX];
        polis_error_format(err, why, sizeof(why));
        return polis_error_set(err, POLIS_EUNAVAIL, NULL,
                               "cannot read the product catalogue from the "
                               "state dir: %s",
                               why);
    }
    if (strcmp(pb->digest, digest) != 0) {
        /* The file holds another snapshot: a newer one about to be swapped
         * in, or an older one when saving failed.  Never mix them. */
        sc_store_free(pb);
        return polis_error_set(err, POLIS_EUNAVAIL, NULL,
                               "the product catalogue of the snapshot in "
                               "force is not on disk yet; retry");
    }
    rc = index_products(p, pb, &products, err);
    sc_store_free(pb);
    if (rc != 0)
        return rc;
    json_decref(p->products);
    p->products = products;
    snprintf(p->digest, sizeof(p->digest), "%s", digest);
    return 0;
}

int sc_ports_product(sc_ports *p, const sc_snapshot *snap, const char *name,
                     json_t **doc, polis_error *err)
{
    const char *digest = sc_snapshot_digest(snap);
    json_t *found;
    int rc = 0;

    *doc = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->products == NULL || strcmp(p->digest, digest) != 0)
        rc = reload(p, digest, err);
    if (rc == 0) {
        found = json_object_get(p->products, name);
        if (found == NULL)
            rc = polis_error_set(err, POLIS_ENOTFOUND, NULL,
                                 "no data product %s/%s", p->domain, name);
        else
            *doc = json_incref(found); /* shared, never modified */
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int sc_ports_products(sc_ports *p, const sc_snapshot *snap, json_t **all,
                      polis_error *err)
{
    const char *digest = sc_snapshot_digest(snap);
    int rc = 0;

    *all = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->products == NULL || strcmp(p->digest, digest) != 0)
        rc = reload(p, digest, err);
    if (rc == 0 && (*all = json_deep_copy(p->products)) == NULL)
        rc = polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    pthread_mutex_unlock(&p->lock);
    return rc;
}

const json_t *sc_ports_find(const json_t *doc, const char *type)
{
    const json_t *ports =
        json_object_get(json_object_get(doc, "spec"), "ports");
    const json_t *port;
    size_t i;

    json_array_foreach(ports, i, port)
    {
        const char *t = json_string_value(json_object_get(port, "type"));
        if (t && strcmp(t, type) == 0)
            return port;
    }
    return NULL;
}

int sc_ports_resolve(const sc_ports *p, const char *path, char *buf, size_t len,
                     polis_error *err)
{
    int n;

    if (path[0] == '/' || p->data_root[0] == '\0')
        n = snprintf(buf, len, "%s", path);
    else
        n = snprintf(buf, len, "%s/%s", p->data_root, path);
    if (n < 0 || (size_t)n >= len)
        return polis_error_set(err, POLIS_ETOOBIG, path, "path too long");
    return 0;
}

/* Only identifiers, so that the quoted value needs no escaping and means
 * the same to libpq as it does to the resource checks. */
static bool role_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

int sc_ports_pg_dsns(const json_t *port, char *owner_dsn, char *query_dsn,
                     size_t len, polis_error *err)
{
    const char *dsn = json_string_value(json_object_get(port, "dsn"));
    const char *owner = json_string_value(json_object_get(port, "ownerUser"));
    const char *query = json_string_value(json_object_get(port, "queryUser"));
    int n1, n2;

    if (owner == NULL)
        owner = SC_PORTS_PG_OWNER_USER;
    if (query == NULL)
        query = SC_PORTS_PG_QUERY_USER;
    if (dsn == NULL)
        return polis_error_set(err, POLIS_EINVAL, "dsn",
                               "the postgresql query port has no dsn");
    if (!role_ok(owner) || !role_ok(query))
        return polis_error_set(err, POLIS_EINVAL, "ownerUser",
                               "the port's roles must be plain identifiers");
    /* libpq takes the last of a repeated keyword, so the role appended
     * here is the one used even if a dsn slipped past validation. */
    n1 = snprintf(owner_dsn, len, "%s user='%s'", dsn, owner);
    n2 = snprintf(query_dsn, len, "%s user='%s'", dsn, query);
    if (n1 < 0 || (size_t)n1 >= len || n2 < 0 || (size_t)n2 >= len)
        return polis_error_set(err, POLIS_ETOOBIG, "dsn", "dsn too long");
    return 0;
}
