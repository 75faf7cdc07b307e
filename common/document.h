/*
 * document.h — read resource documents: one or more YAML documents
 * ("---"-separated) or JSON (one object, or an array of objects) into Jansson
 * objects, bounded in size and checked to be valid UTF-8.  Errors carry the
 * source name and line:column.
 */
#ifndef POLIS_DOCUMENT_H
#define POLIS_DOCUMENT_H

#include "common/error.h"

#include <jansson.h>
#include <stddef.h>

#define DOC_DEFAULT_MAX_BYTES (1024 * 1024) /* one input (file) */

/*
 * Parse `data` (len bytes, need not be NUL-terminated) named `source` (a
 * file name, or "-" for standard input; used in errors) into a JSON array
 * of objects, one per document; empty YAML documents are skipped.  YAML
 * plain scalars follow the YAML 1.2 core schema (true/false, null, ints,
 * floats); quoted scalars are strings.  Anchors/aliases and duplicate keys
 * are errors.  max_bytes 0 means DOC_DEFAULT_MAX_BYTES.  On success the
 * caller owns *out (json_decref).
 */
int doc_parse(const char *source, const char *data, size_t len,
              size_t max_bytes, json_t **out, polis_error *err);

/* Read a whole file (bounded by max_bytes) and doc_parse it. */
int doc_parse_file(const char *path, size_t max_bytes, json_t **out,
                   polis_error *err);

/* True when the len bytes are valid UTF-8 (no overlongs or surrogates);
 * *bad_offset (may be NULL) receives the first bad byte's offset. */
int doc_utf8_valid(const char *data, size_t len, size_t *bad_offset);

/*
 * Copy `src` into dst (cap bytes, always NUL-terminated when cap > 0) as
 * printable UTF-8: invalid bytes and control characters become '?', and a
 * cut falls on a character boundary.  For untrusted text that goes into
 * JSON, logs or status records (RPC metadata, a peer's error message).
 * Returns dst.
 */
char *doc_utf8_sanitize(char *dst, size_t cap, const char *src);

/* Emit a JSON value as YAML (block style) into a malloc'd string the
 * caller frees; NULL on allocation failure. */
char *doc_to_yaml(const json_t *value);

#endif
