/*
 * inputs.h — the documents `polisctl apply -f` sends: files, directories
 * (every *.yaml, *.yml and *.json below, sorted by path) and standard
 * input, parsed locally with common/document.h so that syntax errors, size
 * limits and unreadable paths are reported with file:line:col before any
 * RPC.
 */
#ifndef POLIS_CLI_INPUTS_H
#define POLIS_CLI_INPUTS_H

#include "cli/cli.h"

#include <stddef.h>

#define INPUT_MAX_FILES     10000 /* per invocation, directories included */
#define INPUT_MAX_DOCUMENTS 1000  /* the control plane's default limit */
#define INPUT_MAX_DEPTH     32    /* directory nesting (symlink loops) */
/* What one ApplyRequest may carry, leaving room for the envelope below
 * the gRPC layer's default message limit. */
#define INPUT_MAX_TOTAL_BYTES (RPC_DEFAULT_MAX_MESSAGE - 64 * 1024)

typedef struct input_doc {
    char *source; /* "orders.yaml", "mesh.yaml#2", "stdin" */
    char *json;   /* compact JSON text of the document */
} input_doc;

typedef struct input_set {
    input_doc *docs;
    size_t n, cap;
    size_t total_bytes;
    size_t n_files;
    int stdin_used;
    int too_many; /* a size limit was reported */
} input_set;

/*
 * Read one -f argument (a file, a directory or "-") into set, appending in
 * order.  Every problem is printed (cli_fail) and counted; returns the
 * number of problems (0: all read).  Reading goes on after a problem so
 * that one run lists them all.
 */
int input_add(cli_ctx *ctx, input_set *set, const char *path);

/* Free the documents; the set is left empty.  NULL is a no-op. */
void input_set_clear(input_set *set);

#endif
