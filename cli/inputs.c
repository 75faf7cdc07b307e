/*
 * inputs.c — gather and parse the documents of one `polisctl apply` (see
 * inputs.h): directory walks sorted by path, stdin read once, every
 * document turned into compact JSON named by its source.
 */
#include "cli/inputs.h"
#include "common/document.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct path_list {
    char **paths;
    size_t n, cap;
} path_list;

static void path_list_clear(path_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->paths[i]);
    free(l->paths);
    memset(l, 0, sizeof(*l));
}

static int path_list_add(path_list *l, const char *path)
{
    char *copy;

    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        char **grown = realloc(l->paths, cap * sizeof(*grown));
        if (grown == NULL)
            return -1;
        l->paths = grown;
        l->cap = cap;
    }
    if ((copy = strdup(path)) == NULL)
        return -1;
    l->paths[l->n++] = copy;
    return 0;
}

static int path_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_document_name(const char *name)
{
    const char *dot = strrchr(name, '.');

    return dot && dot != name &&
           (strcmp(dot, ".yaml") == 0 || strcmp(dot, ".yml") == 0 ||
            strcmp(dot, ".json") == 0);
}

/* Collect document files below dir.  Hidden entries (".git", editor
 * backups such as ".x.yaml.swp" never match anyway) are skipped. */
static int walk(cli_ctx *ctx, const char *dir, int depth, path_list *out)
{
    DIR *d;
    struct dirent *e;
    int problems = 0;

    if (depth > INPUT_MAX_DEPTH)
        return cli_fail(ctx,
                        "%s: directories nested deeper than %d (a "
                        "symlink loop?)",
                        dir, INPUT_MAX_DEPTH);
    if ((d = opendir(dir)) == NULL)
        return cli_fail(ctx, "%s: %s", dir, strerror(errno));
    while ((e = readdir(d)) != NULL) {
        char path[PATH_MAX];
        struct stat st;
        size_t dl = strlen(dir);

        if (e->d_name[0] == '.')
            continue;
        if ((size_t)snprintf(path, sizeof(path), "%s%s%s", dir,
                             dl && dir[dl - 1] == '/' ? "" : "/",
                             e->d_name) >= sizeof(path)) {
            problems += cli_fail(ctx, "%s/%s: path too long", dir, e->d_name);
            continue;
        }
        if (stat(path, &st) != 0) {
            problems += cli_fail(ctx, "%s: %s", path, strerror(errno));
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            problems += walk(ctx, path, depth + 1, out);
        } else if (S_ISREG(st.st_mode) && is_document_name(e->d_name)) {
            if (out->n >= INPUT_MAX_FILES) {
                problems += cli_fail(ctx, "%s: more than %d files", dir,
                                     INPUT_MAX_FILES);
                break;
            }
            if (path_list_add(out, path) != 0) {
                problems += cli_fail(ctx, "out of memory");
                break;
            }
        }
    }
    closedir(d);
    return problems;
}

static int add_doc(cli_ctx *ctx, input_set *set, const char *source,
                   const json_t *doc)
{
    input_doc *slot;
    char *text;

    if (set->n >= INPUT_MAX_DOCUMENTS) {
        if (set->too_many++) /* said once is enough */
            return 1;
        return cli_fail(ctx,
                        "%s: more than %d documents in one apply; "
                        "split them",
                        source, INPUT_MAX_DOCUMENTS);
    }
    if (set->n == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        input_doc *grown = realloc(set->docs, cap * sizeof(*grown));
        if (grown == NULL)
            return cli_fail(ctx, "out of memory");
        set->docs = grown;
        set->cap = cap;
    }
    text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    slot = &set->docs[set->n];
    slot->source = strdup(source);
    slot->json = text;
    if (text == NULL || slot->source == NULL) {
        free(slot->source);
        free(text);
        return cli_fail(ctx, "out of memory");
    }
    set->n++;
    set->total_bytes += strlen(text) + strlen(source);
    if (set->total_bytes > INPUT_MAX_TOTAL_BYTES) {
        if (set->too_many++)
            return 1;
        return cli_fail(ctx,
                        "%s: the documents add up to more than %d "
                        "bytes, over what one apply can carry; split "
                        "them",
                        source, INPUT_MAX_TOTAL_BYTES);
    }
    return 0;
}

/* Name each document: the file alone, or file#N when it holds several. */
static int add_parsed(cli_ctx *ctx, input_set *set, const char *name,
                      const json_t *docs)
{
    size_t n = json_array_size(docs);
    int problems = 0;

    if (n == 0)
        return cli_fail(ctx, "%s: no documents in it", name);
    for (size_t i = 0; i < n; i++) {
        char source[PATH_MAX + 16];

        if (n == 1)
            snprintf(source, sizeof(source), "%s", name);
        else
            snprintf(source, sizeof(source), "%s#%zu", name, i + 1);
        if ((problems = add_doc(ctx, set, source, json_array_get(docs, i))))
            break;
    }
    return problems;
}

static void report(cli_ctx *ctx, const polis_error *err)
{
    char buf[POLIS_ERROR_WHERE_MAX + POLIS_ERROR_MSG_MAX];

    cli_fail(ctx, "%s", polis_error_format(err, buf, sizeof(buf)));
}

/* Standard input has no size up front: read one byte past the limit. */
static int add_stdin(cli_ctx *ctx, input_set *set)
{
    size_t cap = DOC_DEFAULT_MAX_BYTES + 1, used = 0;
    char *buf;
    json_t *docs = NULL;
    polis_error err = {0};
    int problems = 0;

    if (set->stdin_used++)
        return cli_fail(ctx, "-f -: standard input can be read only once");
    if ((buf = malloc(cap)) == NULL)
        return cli_fail(ctx, "out of memory");
    while (used < cap) {
        ssize_t n = read(STDIN_FILENO, buf + used, cap - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            problems = cli_fail(ctx, "stdin: %s", strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    if (used > DOC_DEFAULT_MAX_BYTES) {
        problems = cli_fail(ctx,
                            "stdin: more than %d bytes, over the "
                            "1 MiB limit of one input",
                            DOC_DEFAULT_MAX_BYTES);
        goto out;
    }
    if (doc_parse("stdin", buf, used, 0, &docs, &err) != 0) {
        report(ctx, &err);
        problems = 1;
        goto out;
    }
    problems = add_parsed(ctx, set, "stdin", docs);
out:
    json_decref(docs);
    free(buf);
    return problems;
}

static int add_file(cli_ctx *ctx, input_set *set, const char *path)
{
    json_t *docs = NULL;
    polis_error err = {0};
    int problems;

    if (++set->n_files > INPUT_MAX_FILES)
        return cli_fail(ctx, "%s: more than %d files in one apply", path,
                        INPUT_MAX_FILES);
    if (doc_parse_file(path, 0, &docs, &err) != 0) {
        report(ctx, &err);
        return 1;
    }
    problems = add_parsed(ctx, set, path, docs);
    json_decref(docs);
    return problems;
}

int input_add(cli_ctx *ctx, input_set *set, const char *path)
{
    struct stat st;
    path_list files = {0};
    int problems = 0;

    if (strcmp(path, "-") == 0)
        return add_stdin(ctx, set);
    if (path[0] == '\0')
        return cli_fail(ctx, "-f: empty file name");
    if (stat(path, &st) != 0)
        return cli_fail(ctx, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return add_file(ctx, set, path);
    problems = walk(ctx, path, 0, &files);
    if (problems == 0 && files.n == 0)
        problems = cli_fail(ctx,
                            "%s: no *.yaml, *.yml or *.json files in "
                            "it",
                            path);
    /* Sorted by full path, so the order (and which file wins a duplicate
     * error) does not depend on the file system. */
    if (files.n > 1)
        qsort(files.paths, files.n, sizeof(*files.paths), path_cmp);
    for (size_t i = 0; i < files.n; i++)
        problems += add_file(ctx, set, files.paths[i]);
    path_list_clear(&files);
    return problems;
}

void input_set_clear(input_set *set)
{
    if (set == NULL)
        return;
    for (size_t i = 0; i < set->n; i++) {
        free(set->docs[i].source);
        free(set->docs[i].json);
    }
    free(set->docs);
    memset(set, 0, sizeof(*set));
}
