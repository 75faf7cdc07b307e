/*
 * etcd.h — an etcd v3 client on libcurl + Jansson, speaking the v3 JSON
 * gateway (POST /v3/kv/range, /v3/kv/txn, /v3/lease/..., /v3/watch).
 * Several endpoints with failover; every call has a timeout; errors tell
 * unavailable, conflict, not-found and bad-request apart and carry etcd's
 * own message.  A client is safe to use from many threads at once.
 */
#ifndef POLIS_ETCD_H
#define POLIS_ETCD_H

#include "common/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct etcd_client etcd_client;

typedef struct etcd_options {
    const char *endpoints;  /* "http://127.0.0.1:2379,http://..." (required) */
    int timeout_ms;         /* whole request, default 5000 */
    int connect_timeout_ms; /* default 1000 */
    const char *ca_file;    /* TLS (optional) */
    const char *cert_file;
    const char *key_file;
} etcd_options;

/* Caller frees with etcd_client_free().  Does not contact etcd. */
int etcd_client_new(const etcd_options *opts, etcd_client **out,
                    polis_error *err);
void etcd_client_free(etcd_client *c); /* NULL is a no-op */

/* One key-value.  Keys and values are byte strings, NUL-terminated for
 * convenience (the terminator is not counted in the length). */
typedef struct etcd_kv {
    char *key;
    size_t key_len;
    char *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
} etcd_kv;

typedef struct etcd_range_opts {
    bool prefix;           /* every key starting with `key` */
    const char *range_end; /* explicit [key, range_end) (overrides prefix) */
    int64_t limit;         /* 0: no limit */
    int64_t revision;      /* 0: latest */
    bool keys_only;
    bool count_only;
    bool serializable; /* answer from the local member, even without quorum */
} etcd_range_opts;

typedef struct etcd_range_result {
    etcd_kv *kvs; /* n entries, owned by the result */
    size_t n;
    int64_t count;    /* total matching keys (may exceed n with a limit) */
    bool more;        /* more keys beyond the limit */
    int64_t revision; /* store revision the read was served at */
} etcd_range_result;

/* Frees the contents (not the struct itself); safe on a zeroed result. */
void etcd_range_result_free(etcd_range_result *r);

/* opts may be NULL (single key, latest). A missing key is not an error:
 * out->n == 0. */
int etcd_range(etcd_client *c, const char *key, const etcd_range_opts *opts,
               etcd_range_result *out, polis_error *err);

/* revision_out (may be NULL) receives the revision of the write. */
int etcd_put(etcd_client *c, const char *key, const char *value,
             size_t value_len, int64_t lease, int64_t *revision_out,
             polis_error *err);

/* Delete `key` or, with prefix, every key under it.  deleted_out and
 * revision_out may be NULL. */
int etcd_delete(etcd_client *c, const char *key, bool prefix,
                int64_t *deleted_out, int64_t *revision_out, polis_error *err);

/* ---- transactions ---- */

typedef enum etcd_cmp_target {
    ETCD_CMP_VALUE,
    ETCD_CMP_MOD,     /* mod_revision */
    ETCD_CMP_CREATE,  /* create_revision (0: key absent) */
    ETCD_CMP_VERSION, /* version (0: key absent) */
} etcd_cmp_target;

typedef enum etcd_cmp_op {
    ETCD_CMP_EQUAL,
    ETCD_CMP_NOT_EQUAL,
    ETCD_CMP_LESS,
    ETCD_CMP_GREATER,
} etcd_cmp_op;

typedef struct etcd_compare {
    const char *key;
    /* Compare every key under `key` as a prefix: all must satisfy it, and
     * an empty range compares as one absent key (revisions and version 0),
     * so VERSION EQUAL 0 means "no key under the prefix".  Not for VALUE
     * (etcd fails a VALUE compare on an absent key). */
    bool prefix;
    etcd_cmp_target target;
    etcd_cmp_op op;
    int64_t number;    /* for MOD, CREATE, VERSION */
    const char *value; /* for VALUE */
    size_t value_len;
} etcd_compare;

typedef enum etcd_op_type {
    ETCD_OP_PUT,
    ETCD_OP_DELETE,
    ETCD_OP_RANGE,
} etcd_op_type;

typedef struct etcd_op {
    etcd_op_type type;
    const char *key;
    const char *value; /* PUT */
    size_t value_len;
    int64_t lease;   /* PUT */
    bool prefix;     /* DELETE, RANGE */
    bool count_only; /* RANGE: only the count (etcd_range_result.count) */
    bool keys_only;  /* RANGE: keys and revisions, no values */
} etcd_op;

typedef struct etcd_txn_result {
    bool succeeded;
    int64_t revision;
    /* One entry per op of the branch that ran; only RANGE ops fill theirs
     * (others are zeroed). */
    etcd_range_result *responses;
    size_t n_responses;
} etcd_txn_result;

void etcd_txn_result_free(etcd_txn_result *r);

/* A txn whose compares fail is not an error: out->succeeded is false. */
int etcd_txn(etcd_client *c, const etcd_compare *cmp, size_t n_cmp,
             const etcd_op *success, size_t n_success, const etcd_op *failure,
             size_t n_failure, etcd_txn_result *out, polis_error *err);

/* ---- leases ---- */

int etcd_lease_grant(etcd_client *c, int64_t ttl_s, int64_t *id_out,
                     polis_error *err);
/* One keepalive round; POLIS_ENOTFOUND when the lease has expired.
 * ttl_out (may be NULL) receives the remaining TTL. */
int etcd_lease_keepalive(etcd_client *c, int64_t id, int64_t *ttl_out,
                         polis_error *err);
int etcd_lease_revoke(etcd_client *c, int64_t id, polis_error *err);

/* ---- watch ---- */

typedef enum etcd_event_type {
    ETCD_EVENT_PUT,
    ETCD_EVENT_DELETE
} etcd_event_type;

typedef struct etcd_event {
    etcd_event_type type;
    etcd_kv kv; /* for DELETE: key and mod_revision only */
    bool has_prev;
    etcd_kv prev_kv; /* with etcd_watch_opts.prev_kv */
} etcd_event;

typedef struct etcd_watch_batch {
    etcd_event *events; /* owned by the batch */
    size_t n;           /* 0 for a progress notification or a timeout */
    int64_t revision;   /* header revision: everything up to it was seen */
    int64_t compact_revision; /* set with POLIS_ECOMPACTED */
} etcd_watch_batch;

void etcd_watch_batch_free(etcd_watch_batch *b);

typedef struct etcd_watch_opts {
    const char *key;
    bool prefix;
    int64_t start_revision; /* 0: from now */
    bool prev_kv;
    bool progress_notify;
} etcd_watch_opts;

typedef struct etcd_watch etcd_watch;

/*
 * Open a watch.  It runs on its own thread and survives endpoint failures:
 * on a broken connection it reconnects (next endpoint, backoff) and resumes
 * from the last revision it delivered + 1, so no event is lost or repeated.
 * Caller frees with etcd_watch_free().
 */
int etcd_watch_open(etcd_client *c, const etcd_watch_opts *opts,
                    etcd_watch **out, polis_error *err);

/*
 * Wait up to timeout_ms (-1: forever) for the next batch of events, in
 * revision order.  Returns POLIS_OK with out->n == 0 on a timeout or a
 * progress notification; POLIS_ECOMPACTED when etcd compacted past the
 * watch's revision (out->compact_revision set: resync with a full range and
 * open a new watch); POLIS_ECANCELED once etcd_watch_cancel() was called.
 * One thread at a time calls etcd_watch_next.
 * Caller frees the batch with etcd_watch_batch_free().
 */
int etcd_watch_next(etcd_watch *w, etcd_watch_batch *out, int timeout_ms,
                    polis_error *err);

/* Stop the watch from any thread; a thread blocked in etcd_watch_next
 * returns POLIS_ECANCELED. */
void etcd_watch_cancel(etcd_watch *w);

/* Cancel, join the watch thread and free.  No thread may be inside
 * etcd_watch_next.  NULL is a no-op. */
void etcd_watch_free(etcd_watch *w);

#endif
