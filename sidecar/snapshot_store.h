/*
 * snapshot_store.h — the sidecar's last good snapshot on disk: a packed
 * polis.v1.Snapshot (proto/polis/v1/distribution.proto) in
 * <state-dir>/snapshot.pb, written atomically (temp file, fsync, rename,
 * fsync of the directory) so that a crash leaves the old or the new file,
 * never half of one.
 */
#ifndef POLIS_SC_SNAPSHOT_STORE_H
#define POLIS_SC_SNAPSHOT_STORE_H

#include "common/error.h"
#include "polis/v1/distribution.pb-c.h"

#include <stddef.h>

#define SC_STORE_FILE     "snapshot.pb"
#define SC_STORE_TMP_FILE "snapshot.pb.tmp"
/* A larger file is refused on load (and not written): the bound keeps a
 * damaged or foreign file from exhausting memory. */
#define SC_STORE_MAX_BYTES (256u * 1024 * 1024)

/*
 * Write `snap` to <dir>/snapshot.pb atomically, creating `dir` (mode 0700)
 * if it does not exist.  POLIS_EIO (with the path and errno text) on a
 * failed write; the previous file is then intact.  POLIS_ETOOBIG over
 * SC_STORE_MAX_BYTES.
 */
int sc_store_save(const char *dir, const Polis__V1__Snapshot *snap,
                  polis_error *err);

/*
 * Read <dir>/snapshot.pb.  On success *out is the snapshot (caller frees
 * with sc_store_free).  POLIS_ENOTFOUND when there is no file, POLIS_EIO
 * when it cannot be read, POLIS_EPARSE when it is not a well-formed
 * snapshot (does not unpack, revision <= 0, no domain, or a digest that
 * is not 64 hex digits), POLIS_ETOOBIG over SC_STORE_MAX_BYTES.
 */
int sc_store_load(const char *dir, Polis__V1__Snapshot **out, polis_error *err);

/* Free a snapshot from sc_store_load; NULL is a no-op. */
void sc_store_free(Polis__V1__Snapshot *snap);

#endif
