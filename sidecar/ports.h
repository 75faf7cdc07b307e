/*
 * ports.h — where a data product's ports are: the DataProduct documents of
 * the snapshot in force (this domain's only), their query and file ports,
 * and the paths those ports name, resolved against --data-root.  Serving
 * the ports over HTTP is http_api.c; docs/sidecar.md "Product ports".
 */
#ifndef POLIS_SC_PORTS_H
#define POLIS_SC_PORTS_H

#include "common/error.h"
#include "sidecar/snapshot.h"

#include <jansson.h>
#include <stddef.h>

typedef struct sc_ports sc_ports;

/*
 * A catalogue for a sidecar of `domain` whose snapshots are saved in
 * `state_dir`, with relative port paths resolved against `data_root`
 * (NULL or "": the working directory).  Strings are copied.  Thread-safe.
 * Caller frees with sc_ports_free.
 */
int sc_ports_new(const char *domain, const char *state_dir,
                 const char *data_root, sc_ports **out, polis_error *err);

/* NULL is a no-op. */
void sc_ports_free(sc_ports *p);

/*
 * The DataProduct `name` of this domain as snapshot `snap` (borrowed) has
 * it: *doc is a new reference to the catalogue's document (caller
 * json_decref's it), shared between threads, so it must not be modified
 * (Jansson's reference counts are atomic; a deep copy per request was 5%
 * of the HTTP port's CPU).  POLIS_ENOTFOUND
 * when the snapshot has no such product; POLIS_EUNAVAIL when the
 * documents of `snap` cannot be read back (see the .c: the compiled
 * snapshot keeps no DataProduct documents, so they are read from the
 * state dir's copy of the same digest).
 */
int sc_ports_product(sc_ports *p, const sc_snapshot *snap, const char *name,
                     json_t **doc, polis_error *err);

/*
 * Every DataProduct of this domain as snapshot `snap` has them: *all is a
 * private JSON object name -> document (caller json_decref's it).  Errors
 * as sc_ports_product.
 */
int sc_ports_products(sc_ports *p, const sc_snapshot *snap, json_t **all,
                      polis_error *err);

/* The first port of `type` ("query", "file") of a DataProduct document, or
 * NULL.  Borrowed from doc. */
const json_t *sc_ports_find(const json_t *doc, const char *type);

/*
 * `path` (a port's database or directory) as the sidecar opens it: as is
 * when absolute, else under the data root.  POLIS_ETOOBIG when it does
 * not fit in len bytes.
 */
int sc_ports_resolve(const sc_ports *p, const char *path, char *buf, size_t len,
                     polis_error *err);

/* The roles of a postgresql query port without ownerUser / queryUser. */
#define SC_PORTS_PG_OWNER_USER "polis_owner"
#define SC_PORTS_PG_QUERY_USER "polis_query"

/*
 * The two libpq connection strings of a postgresql query port: its `dsn`
 * (host, port, dbname...; never a user or password, see common/resource.c)
 * with ` user='<ownerUser>'` and ` user='<queryUser>'` appended (defaults
 * above).  Passwords come from the sidecar's passfile.  POLIS_EINVAL when
 * the port has no dsn or a role is not a plain identifier, POLIS_ETOOBIG
 * when a string does not fit in len bytes.
 */
int sc_ports_pg_dsns(const json_t *port, char *owner_dsn, char *query_dsn,
                     size_t len, polis_error *err);

#endif
