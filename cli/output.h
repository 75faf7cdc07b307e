/*
 * output.h — how polisctl shows results: aligned text tables for people,
 * and JSON or YAML (common/document.h) for scripts.  Resources are shown
 * as their metadata (kind, scope, name, revision, generation, author,
 * updatedAt) plus the document itself.
 */
#ifndef POLIS_CLI_OUTPUT_H
#define POLIS_CLI_OUTPUT_H

#include "cli/cli.h"
#include "polis/v1/governance.pb-c.h"

#include <jansson.h>
#include <stdio.h>

#define OUT_TABLE_MAX_COLS 12
#define OUT_TABLE_MAX_ROWS 1000000 /* far past what a response can carry */

typedef struct out_table out_table;

/* A table with the given column headers (n_cols <= OUT_TABLE_MAX_COLS;
 * the strings are borrowed).  NULL on allocation failure.  Caller frees
 * with out_table_free(). */
out_table *out_table_new(const char *const *headers, size_t n_cols);

/* Append a row of n_cols cells (copied; NULL shows as "").  0, or -1 when
 * out of memory or past OUT_TABLE_MAX_ROWS. */
int out_table_add(out_table *t, const char *const *cells);

/* Print with columns padded to their widest cell, three spaces apart. */
void out_table_print(const out_table *t, FILE *f);

void out_table_free(out_table *t);

/*
 * A resource as a JSON object: {"kind","scope","name","revision",
 * "generation","author","updatedAt",["deleted"],"document"}; the document
 * is the parsed document_json (a string when it is not valid JSON).
 * NULL when out of memory.  Caller owns the reference.
 */
json_t *out_resource_json(const Polis__V1__Resource *r, bool with_deleted);

/*
 * Print a JSON value as indented JSON or as YAML, following ctx->output
 * (table mode prints YAML).  Returns 0, or CLI_EXIT_ERROR after printing
 * why when out of memory.
 */
int out_print_value(cli_ctx *ctx, const json_t *value);

/* "Policy" -> "policy": the lower-case kind, as typed on command lines.
 * Writes into buf and returns it. */
const char *out_kind_lower(const char *kind, char *buf, size_t len);

#endif
