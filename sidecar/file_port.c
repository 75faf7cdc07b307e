/*
 * file_port.c — the governed file port (file_port.h): safe opening inside a
 * product's directory, and a chunked streaming reader that parses CSV
 * (RFC 4180) in place or JSON Lines (Jansson, one line at a time), applies
 * the decision's row filters and masks, and writes the same format out.
 */
#include "sidecar/file_port.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- names and opening --------------------------------------------------- */

int fp_name_check(const char *name, size_t len, polis_error *err)
{
    size_t i;

    if (name == NULL || len == 0)
        return polis_error_set(err, POLIS_EDENIED, "file", "empty file name");
    if (len > FP_MAX_NAME)
        return polis_error_set(err, POLIS_EDENIED, "file",
                               "file name longer than %d bytes", FP_MAX_NAME);
    if (name[0] == '.')
        return polis_error_set(err, POLIS_EDENIED, "file",
                               "file names starting with '.' are not served");
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '/')
            return polis_error_set(err, POLIS_EDENIED, "file",
                                   "file name contains '/'");
        if (c == 0)
            return polis_error_set(err, POLIS_EDENIED, "file",
                                   "file name contains a NUL byte");
        if (c < 0x20 || c == 0x7f)
            return polis_error_set(err, POLIS_EDENIED, "file",
                                   "file name contains a control character");
        if (c == '.' && i + 1 < len && name[i + 1] == '.')
            return polis_error_set(err, POLIS_EDENIED, "file",
                                   "file name contains \"..\"");
    }
    return 0;
}

static int errno_to_code(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return POLIS_ENOTFOUND;
    case EACCES:
    case EPERM:
    case ELOOP:
    case EXDEV:
        return POLIS_EDENIED;
    case ENOMEM:
        return POLIS_ENOMEM;
    default:
        return POLIS_EIO;
    }
}

static int open_dir(const char *dir, int *dfd, polis_error *err)
{
    int fd;

    if (dir == NULL || dir[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, "directory",
                               "no product directory given");
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return polis_error_set(err, errno_to_code(e), "directory",
                               "product directory \"%s\": %s", dir,
                               strerror(e));
    }
    *dfd = fd;
    return 0;
}

/*
 * Kernels before 5.6 (or sandboxes that filter openat2) lack
 * RESOLVE_BENEATH: resolve the name with realpath and check that it stays
 * under the directory's own real path.  A component swapped between the
 * check and the open could still escape; the directory belongs to the
 * product's owners, so that race needs an insider.
 */
static int open_beneath_fallback(int dfd, const char *dir, const char *name,
                                 int flags)
{
    char *root = NULL, *full = NULL, *target = NULL;
    size_t rlen;
    int fd = openat(dfd, name, flags | O_NOFOLLOW);

    if (fd >= 0 || errno != ELOOP)
        return fd;
    /* A symbolic link: follow it only if it stays inside. */
    root = realpath(dir, NULL);
    if (root == NULL || asprintf(&full, "%s/%s", root, name) < 0) {
        full = NULL;
        fd = -1;
        goto out;
    }
    target = realpath(full, NULL);
    if (target == NULL) {
        fd = -1;
        goto out;
    }
    rlen = strlen(root);
    if (strncmp(target, root, rlen) != 0 || target[rlen] != '/') {
        errno = EXDEV;
        fd = -1;
        goto out;
    }
    fd = open(target, flags | O_NOFOLLOW);
out : {
    int e = errno;
    free(target);
    free(full);
    free(root);
    errno = e;
}
    return fd;
}

/* Open `name` under dfd without leaving it; a regular file only. */
static int open_beneath(int dfd, const char *dir, const char *name, int *out,
                        polis_error *err)
{
    struct open_how how;
    struct stat st;
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    int fd;

    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)flags;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    fd = (int)syscall(SYS_openat2, dfd, name, &how, sizeof how);
    if (fd < 0 && (errno == ENOSYS || errno == EPERM))
        fd = open_beneath_fallback(dfd, dir, name, flags);
    if (fd < 0) {
        int e = errno;
        if (e == EXDEV || e == ELOOP)
            return polis_error_set(err, POLIS_EDENIED, "file",
                                   "\"%s\" leads outside the product's "
                                   "directory",
                                   name);
        if (e == ENOENT)
            return polis_error_set(err, POLIS_ENOTFOUND, "file",
                                   "no file \"%s\" in the product's directory",
                                   name);
        return polis_error_set(err, errno_to_code(e), "file", "\"%s\": %s",
                               name, strerror(e));
    }
    /* O_NONBLOCK kept the open of a FIFO from hanging; refuse all but
     * regular files, then read in blocking mode. */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return polis_error_set(err, POLIS_EDENIED, "file",
                               "\"%s\" is not a regular file", name);
    }
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return polis_error_set(err, POLIS_EIO, "file", "\"%s\": %s", name,
                               strerror(e));
    }
    *out = fd;
    return 0;
}

int fp_open(const char *dir, const char *name, size_t len, int *fd,
            polis_error *err)
{
    char nm[FP_MAX_NAME + 1];
    int dfd = -1, rc;

    *fd = -1;
    if ((rc = fp_name_check(name, len, err)) != 0)
        return rc;
    memcpy(nm, name, len);
    nm[len] = '\0';
    if ((rc = open_dir(dir, &dfd, err)) != 0)
        return rc;
    rc = open_beneath(dfd, dir, nm, fd, err);
    close(dfd);
    return rc;
}

/* ---- listing ------------------------------------------------------------- */

static int file_cmp(const void *a, const void *b)
{
    return strcmp(((const fp_file *)a)->name, ((const fp_file *)b)->name);
}

void fp_listing_free(fp_listing *l)
{
    size_t i;

    if (l == NULL)
        return;
    for (i = 0; i < l->count; i++)
        free(l->files[i].name);
    free(l->files);
    l->files = NULL;
    l->count = 0;
}

int fp_list(const char *dir, fp_listing *out, polis_error *err)
{
    DIR *d = NULL;
    struct dirent *de;
    size_t cap = 0;
    int dfd = -1, dfd2, rc;

    out->files = NULL;
    out->count = 0;
    if ((rc = open_dir(dir, &dfd, err)) != 0)
        return rc;
    dfd2 = dup(dfd);
    if (dfd2 < 0 || (d = fdopendir(dfd2)) == NULL) {
        int e = errno;
        if (dfd2 >= 0)
            close(dfd2);
        rc = polis_error_set(err, POLIS_EIO, "directory", "\"%s\": %s", dir,
                             strerror(e));
        goto out;
    }
    for (;;) {
        struct stat st;
        fp_file *f;

        errno = 0;
        if ((de = readdir(d)) == NULL) {
            if (errno != 0) {
                int e = errno;
                rc = polis_error_set(err, POLIS_EIO, "directory", "\"%s\": %s",
                                     dir, strerror(e));
                goto out;
            }
            break;
        }
        if (fp_name_check(de->d_name, strlen(de->d_name), NULL) != 0)
            continue;
        if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue; /* vanished meanwhile */
        if (S_ISLNK(st.st_mode)) {
            int fd;
            if (open_beneath(dfd, dir, de->d_name, &fd, NULL) != 0)
                continue;
            rc = fstat(fd, &st);
            close(fd);
            if (rc != 0)
                continue;
        } else if (!S_ISREG(st.st_mode)) {
            continue;
        }
        if (out->count == FP_MAX_LIST_FILES) {
            rc = polis_error_set(err, POLIS_ETOOBIG, "directory",
                                 "\"%s\" holds more than %d files", dir,
                                 FP_MAX_LIST_FILES);
            goto out;
        }
        if (out->count == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            fp_file *nf = realloc(out->files, ncap * sizeof *nf);
            if (nf == NULL)
                goto nomem;
            out->files = nf;
            cap = ncap;
        }
        f = &out->files[out->count];
        if ((f->name = strdup(de->d_name)) == NULL)
            goto nomem;
        f->size = (uint64_t)st.st_size;
        f->mtime_sec = (int64_t)st.st_mtime;
        out->count++;
    }
    if (out->count > 1)
        qsort(out->files, out->count, sizeof *out->files, file_cmp);
    rc = 0;
    goto out;
nomem:
    rc = polis_error_set(err, POLIS_ENOMEM, "directory", "out of memory");
out:
    if (d != NULL)
        closedir(d);
    close(dfd);
    if (rc != 0)
        fp_listing_free(out);
    return rc;
}

/* ---- schema -------------------------------------------------------------- */

int fp_format_from_name(const char *name, fp_format *out)
{
    if (name != NULL && strcmp(name, "csv") == 0) {
        *out = FP_FORMAT_CSV;
        return 0;
    }
    if (name != NULL && strcmp(name, "jsonl") == 0) {
        *out = FP_FORMAT_JSONL;
        return 0;
    }
    return POLIS_ENOTFOUND;
}

/* The type names the policy engine knows (policy/engine.c, column_type). */
static int type_from_name(const char *t, pol_expr_type *out)
{
    static const char *const ints[] = {"integer",  "int",   "long",  "bigint",
                                       "smallint", "int64", "int32", NULL};
    static const char *const decs[] = {"number",  "decimal", "double", "float",
                                       "numeric", "real",    NULL};
    static const char *const strs[] = {"string", "date", "timestamp", "text",
                                       NULL};
    size_t i;

    *out = POL_EXPR_NULL;
    for (i = 0; ints[i]; i++)
        if (strcmp(t, ints[i]) == 0)
            *out = POL_EXPR_INTEGER;
    for (i = 0; decs[i]; i++)
        if (strcmp(t, decs[i]) == 0)
            *out = POL_EXPR_DECIMAL;
    for (i = 0; strs[i]; i++)
        if (strcmp(t, strs[i]) == 0)
            *out = POL_EXPR_STRING;
    if (strcmp(t, "boolean") == 0 || strcmp(t, "bool") == 0)
        *out = POL_EXPR_BOOLEAN;
    return *out == POL_EXPR_NULL ? POLIS_ENOTFOUND : 0;
}

int fp_schema_from_product(const json_t *doc, fp_column **cols, size_t *n,
                           polis_error *err)
{
    const json_t *schema =
        json_object_get(json_object_get(doc, "spec"), "schema");
    fp_column *c;
    size_t i, count;

    *cols = NULL;
    *n = 0;
    if (schema == NULL)
        return 0;
    if (!json_is_array(schema))
        return polis_error_set(err, POLIS_EINVAL, "spec.schema", "not a list");
    count = json_array_size(schema);
    if (count > POL_MAX_COLUMNS)
        return polis_error_set(err, POLIS_ETOOBIG, "spec.schema",
                               "more than %d columns", POL_MAX_COLUMNS);
    if (count == 0)
        return 0;
    if ((c = calloc(count, sizeof *c)) == NULL)
        return polis_error_set(err, POLIS_ENOMEM, "spec.schema",
                               "out of memory");
    for (i = 0; i < count; i++) {
        const json_t *col = json_array_get(schema, i);
        const char *name = json_string_value(json_object_get(col, "name"));
        const char *type = json_string_value(json_object_get(col, "type"));
        char where[64];

        snprintf(where, sizeof where, "spec.schema[%zu]", i);
        if (name == NULL || type == NULL) {
            free(c);
            return polis_error_set(err, POLIS_EINVAL, where,
                                   "a column needs a name and a type");
        }
        if (type_from_name(type, &c[i].type) != 0) {
            free(c);
            return polis_error_set(err, POLIS_EINVAL, where,
                                   "unknown type \"%s\"", type);
        }
        c[i].name = name;
    }
    *cols = c;
    *n = count;
    return 0;
}

/* ---- the reader ---------------------------------------------------------- */

/* One field of the current CSV record, pointing into the input buffer. */
typedef struct fp_field {
    const char *p; /* content; inside the quotes when quoted */
    size_t len;
    const char *val; /* unescaped content, once asked for */
    size_t vlen;
    bool quoted;
    bool escaped; /* quoted and holds "" pairs */
    bool have_val;
} fp_field;

/* Per column of the schema: served or not, and how. */
typedef struct fp_scol {
    bool served;
    const pol_mask *mask;
    int file_col; /* CSV: index in the header, -1 absent */
} fp_scol;

/* Output buffer of a records reader. */
#define FP_RECORDS_OUT_SIZE 4096

/* Filter column ids (the engine's) to schema indexes. */
#define FP_ID_CACHE 32

struct fp_reader {
    int fd; /* -1: a records reader (fp_reader_new_records) */
    bool records;
    fp_options o;
    fp_sink_fn sink;
    void *sink_ctx;
    size_t max_record;

    char *in; /* max_record + FP_CHUNK_SIZE + 1 (sentinel) */
    size_t in_cap, in_start, in_len;
    bool eof, done, started, header_done, crlf;
    int failed;
    polis_error failure;

    char *out;
    size_t out_cap, out_len, rec_mark;
    char *scratch; /* mask output, dumps; grows on demand, bounded */
    size_t scratch_cap;
    char *unesc; /* unescaped CSV fields of one record (max_record) */
    size_t unesc_used;

    uint64_t line; /* line where the next record starts */
    fp_stats st;

    fp_scol *scols; /* nschema */
    fp_field *fields;
    size_t nfields;
    int *file_schema; /* CSV: header index -> schema index, -1 dropped */
    size_t nfile;
    json_t **jvals; /* JSONL: this line's value per schema column */

    struct {
        int id;
        int schema;
    } ids[FP_ID_CACHE];
    size_t nids;
};

/* Bytes that end an unquoted CSV field. */
static const unsigned char csv_stop[256] = {
    ['\n'] = 1,
    ['\r'] = 1,
    [','] = 1,
    ['"'] = 1,
};

static int fail_at(fp_reader *r, polis_error *err, int code, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));

static int fail_at(fp_reader *r, polis_error *err, int code, const char *fmt,
                   ...)
{
    char where[48], msg[POLIS_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->records)
        snprintf(where, sizeof where, "event");
    else
        snprintf(where, sizeof where, "line %llu", (unsigned long long)r->line);
    return polis_error_set(err, code, where, "%s", msg);
}

static int schema_find(const fp_reader *r, const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < r->o.nschema; i++) {
        const char *s = r->o.schema[i].name;
        if (strncasecmp(s, name, len) == 0 && s[len] == '\0')
            return (int)i;
    }
    return -1;
}

/* The schema index of a filter's column, cached by the engine's id. */
static int filter_column(fp_reader *r, int id, const char *name)
{
    size_t i;
    int s;

    for (i = 0; i < r->nids; i++)
        if (r->ids[i].id == id)
            return r->ids[i].schema;
    s = schema_find(r, name, strlen(name));
    if (r->nids < FP_ID_CACHE) {
        r->ids[r->nids].id = id;
        r->ids[r->nids].schema = s;
        r->nids++;
    }
    return s;
}

static int ensure_scratch(fp_reader *r, size_t need, polis_error *err)
{
    char *p;
    size_t cap;

    if (need <= r->scratch_cap)
        return 0;
    if (need > 4 * r->max_record + 4096)
        return fail_at(r, err, POLIS_ETOOBIG,
                       "a value's output is larger than %zu bytes",
                       4 * r->max_record + 4096);
    cap = r->scratch_cap ? r->scratch_cap : 4096;
    while (cap < need)
        cap *= 2;
    if ((p = realloc(r->scratch, cap)) == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    r->scratch = p;
    r->scratch_cap = cap;
    return 0;
}

/* ---- output -------------------------------------------------------------- */

static int out_flush(fp_reader *r, polis_error *err)
{
    int rc;

    if (r->out_len == 0)
        return 0;
    rc = r->sink(r->sink_ctx, r->out, r->out_len);
    if (rc != 0)
        return polis_error_set(err, rc < 0 ? rc : POLIS_EIO, "sink",
                               "the output was not accepted");
    r->st.bytes_written += r->out_len;
    r->out_len = 0;
    r->rec_mark = 0;
    return 0;
}

static int out_put_slow(fp_reader *r, const void *d, size_t n, polis_error *err)
{
    int rc;

    if ((rc = out_flush(r, err)) != 0)
        return rc;
    if (n > r->out_cap) {
        rc = r->sink(r->sink_ctx, d, n);
        if (rc != 0)
            return polis_error_set(err, rc < 0 ? rc : POLIS_EIO, "sink",
                                   "the output was not accepted");
        r->st.bytes_written += n;
        return 0;
    }
    memcpy(r->out, d, n);
    r->out_len = n;
    return 0;
}

static inline int out_put(fp_reader *r, const void *d, size_t n,
                          polis_error *err)
{
    if (n <= r->out_cap - r->out_len) {
        memcpy(r->out + r->out_len, d, n);
        r->out_len += n;
        return 0;
    }
    return out_put_slow(r, d, n, err);
}

static inline int out_byte(fp_reader *r, char c, polis_error *err)
{
    if (r->out_len < r->out_cap) {
        r->out[r->out_len++] = c;
        return 0;
    }
    return out_put_slow(r, &c, 1, err);
}

/* A CSV value, quoted when it must be (and "" for the empty string, which
 * an empty unquoted field would turn into NULL). */
static int csv_put_value(fp_reader *r, const char *v, size_t n,
                         polis_error *err)
{
    size_t i, from = 0;
    int rc;

    if (n == 0)
        return out_put(r, "\"\"", 2, err);
    for (i = 0; i < n; i++)
        if (csv_stop[(unsigned char)v[i]])
            break;
    if (i == n)
        return out_put(r, v, n, err);
    if ((rc = out_byte(r, '"', err)) != 0)
        return rc;
    for (; i < n; i++) {
        if (v[i] != '"')
            continue;
        if ((rc = out_put(r, v + from, i + 1 - from, err)) != 0 ||
            (rc = out_byte(r, '"', err)) != 0)
            return rc;
        from = i + 1;
    }
    if ((rc = out_put(r, v + from, n - from, err)) != 0)
        return rc;
    return out_byte(r, '"', err);
}

static int json_put_string(fp_reader *r, const char *s, size_t n,
                           polis_error *err)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, from = 0;
    int rc;

    if ((rc = out_byte(r, '"', err)) != 0)
        return rc;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t elen = 2;

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        esc[0] = '\\';
        switch (c) {
        case '"':
        case '\\':
            esc[1] = (char)c;
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if ((rc = out_put(r, s + from, i - from, err)) != 0 ||
            (rc = out_put(r, esc, elen, err)) != 0)
            return rc;
        from = i + 1;
    }
    if ((rc = out_put(r, s + from, n - from, err)) != 0)
        return rc;
    return out_byte(r, '"', err);
}

/* Shortest "%g" text that reads back as the same double, and still reads
 * as a real ("2.0", not "2"). */
static size_t format_real(double d, char *buf, size_t cap)
{
    int prec, n = 0;

    for (prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, cap, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (strpbrk(buf, ".eEn") == NULL && (size_t)n + 2 < cap) {
        memcpy(buf + n, ".0", 3);
        n += 2;
    }
    return (size_t)n;
}

/* ---- typed values for filters -------------------------------------------- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Text to the column's type; anything unparseable is NULL. */
static void text_to_value(pol_expr_type type, const char *s, size_t n,
                          pol_expr_value *out)
{
    out->type = POL_EXPR_NULL;
    if (type == POL_EXPR_STRING) {
        out->type = POL_EXPR_STRING;
        out->u.str = s;
        out->len = n;
        return;
    }
    while (n > 0 && is_space(*s))
        s++, n--;
    while (n > 0 && is_space(s[n - 1]))
        n--;
    if (n == 0)
        return;
    if (type == POL_EXPR_INTEGER) {
        uint64_t v = 0, lim;
        bool neg = false;
        size_t i = 0;

        if (s[0] == '-' || s[0] == '+')
            neg = s[i++] == '-';
        if (i == n)
            return;
        lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        for (; i < n; i++) {
            unsigned dgt = (unsigned char)s[i] - '0';
            if (dgt > 9 || v > (lim - dgt) / 10)
                return;
            v = v * 10 + dgt;
        }
        out->type = POL_EXPR_INTEGER;
        out->u.i = neg ? (int64_t)(0 - v) : (int64_t)v;
    } else if (type == POL_EXPR_DECIMAL) {
        char buf[64], *end;
        bool digit = false;
        size_t i;
        double d;

        if (n >= sizeof buf)
            return;
        for (i = 0; i < n; i++) {
            char c = s[i];
            if (c >= '0' && c <= '9')
                digit = true;
            else if (c != '+' && c != '-' && c != '.' && c != 'e' && c != 'E')
                return; /* no "inf", "nan" or hex */
        }
        if (!digit)
            return;
        memcpy(buf, s, n);
        buf[n] = '\0';
        d = strtod(buf, &end);
        if (end != buf + n || !isfinite(d))
            return;
        out->type = POL_EXPR_DECIMAL;
        out->u.d = d;
    } else if (type == POL_EXPR_BOOLEAN) {
        static const char *const t[] = {"true", "t", "1", "yes", "y", NULL};
        static const char *const f[] = {"false", "f", "0", "no", "n", NULL};
        size_t i;

        for (i = 0; t[i]; i++)
            if (strlen(t[i]) == n && strncasecmp(s, t[i], n) == 0) {
                out->type = POL_EXPR_BOOLEAN;
                out->u.b = true;
                return;
            }
        for (i = 0; f[i]; i++)
            if (strlen(f[i]) == n && strncasecmp(s, f[i], n) == 0) {
                out->type = POL_EXPR_BOOLEAN;
                out->u.b = false;
                return;
            }
    }
}

/* ---- CSV ----------------------------------------------------------------- */

/* The field's value with "" pairs collapsed (into r->unesc, once). */
static void csv_field_value(fp_reader *r, fp_field *f, const char **s,
                            size_t *n)
{
    if (!f->escaped) {
        *s = f->p;
        *n = f->len;
        return;
    }
    if (!f->have_val) {
        char *dst = r->unesc + r->unesc_used;
        size_t i, k = 0;

        for (i = 0; i < f->len; i++) {
            dst[k++] = f->p[i];
            if (f->p[i] == '"')
                i++; /* the second quote of the pair */
        }
        f->val = dst;
        f->vlen = k;
        f->have_val = true;
        r->unesc_used += k;
    }
    *s = f->val;
    *n = f->vlen;
}

static int csv_row_value(void *row, int id, const char *name,
                         pol_expr_value *out)
{
    fp_reader *r = row;
    int s = filter_column(r, id, name), fc;
    fp_field *f;
    const char *v;
    size_t n;

    out->type = POL_EXPR_NULL;
    if (s < 0 || (fc = r->scols[s].file_col) < 0)
        return 0;
    f = &r->fields[fc];
    if (!f->quoted && f->len == 0)
        return 0;
    csv_field_value(r, f, &v, &n);
    text_to_value(r->o.schema[s].type, v, n, out);
    return 0;
}

/*
 * Split one record at `start` (data up to `end`, a sentinel byte after
 * it).  Returns 1 and *next (after its line end), 0 if the record is not
 * complete yet, or an error.  Nothing is written into the buffer, so an
 * incomplete record is simply parsed again once more data came.
 */
static int csv_split(fp_reader *r, const char *start, const char *end,
                     const char **next, uint64_t *newlines, polis_error *err)
{
    const char *p = start;
    size_t nf = 0;
    uint64_t nl = 0;

    for (;;) {
        fp_field *f;

        if (nf == FP_MAX_FIELDS)
            return fail_at(r, err, POLIS_ETOOBIG, "more than %d fields",
                           FP_MAX_FIELDS);
        f = &r->fields[nf++];
        f->have_val = false;
        if (p < end && *p == '"') {
            const char *q = p + 1, *c;

            f->p = q;
            f->quoted = true;
            f->escaped = false;
            for (;;) {
                c = memchr(q, '"', (size_t)(end - q));
                if (c == NULL) {
                    if (!r->eof)
                        return 0;
                    return fail_at(r, err, POLIS_EPARSE,
                                   "quoted field not closed before the end "
                                   "of the file");
                }
                if (c + 1 == end && !r->eof)
                    return 0; /* "" split by the chunk boundary? */
                if (c + 1 < end && c[1] == '"') {
                    f->escaped = true;
                    q = c + 2;
                    continue;
                }
                break;
            }
            f->len = (size_t)(c - f->p);
            for (q = f->p; (q = memchr(q, '\n', (size_t)(c - q))) != NULL; q++)
                nl++;
            p = c + 1;
        } else {
            const char *s = p;

            while (!csv_stop[(unsigned char)*p])
                p++;
            if (p < end && *p == '"')
                return fail_at(r, err, POLIS_EPARSE,
                               "field %zu: a quote inside an unquoted field "
                               "(quote the whole field and double the quote)",
                               nf);
            f->p = s;
            f->len = (size_t)(p - s);
            f->quoted = false;
            f->escaped = false;
        }
        if (p >= end) {
            if (!r->eof)
                return 0;
            *next = end;
            break;
        }
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == '\n') {
            *next = p + 1;
            break;
        }
        if (*p == '\r') {
            if (p + 1 == end && !r->eof)
                return 0;
            if (p + 1 == end) { /* "\r" as the file's last byte */
                *next = end;
                break;
            }
            if (p[1] == '\n') {
                *next = p + 2;
                break;
            }
            return fail_at(r, err, POLIS_EPARSE,
                           "field %zu: carriage return not followed by a "
                           "line feed (quote the field)",
                           nf);
        }
        return fail_at(r, err, POLIS_EPARSE,
                       "field %zu: unexpected character after the closing "
                       "quote",
                       nf);
    }
    r->nfields = nf;
    *newlines = nl;
    return 1;
}

static int csv_header(fp_reader *r, const char *rec_end, polis_error *err)
{
    size_t i;
    bool first = true;
    int rc;

    r->crlf = (size_t)(rec_end - r->in) >= 2 && rec_end[-1] == '\n' &&
              rec_end[-2] == '\r';
    r->nfile = r->nfields;
    for (i = 0; i < r->nfields; i++) {
        const char *s;
        size_t n;
        int sc;

        csv_field_value(r, &r->fields[i], &s, &n);
        while (n > 0 && is_space(*s))
            s++, n--;
        while (n > 0 && is_space(s[n - 1]))
            n--;
        if (n == 0)
            return fail_at(r, err, POLIS_EINVAL,
                           "header column %zu has no name", i + 1);
        sc = schema_find(r, s, n);
        if (sc < 0 && r->o.unknown_columns != FP_UNKNOWN_DROP)
            return fail_at(r, err, POLIS_EINVAL,
                           "column \"%.*s\" is not in the product's schema "
                           "(the file does not match its contract)",
                           (int)(n > 128 ? 128 : n), s);
        r->file_schema[i] = sc;
        if (sc < 0)
            continue;
        if (r->scols[sc].file_col >= 0)
            return fail_at(r, err, POLIS_EINVAL,
                           "column \"%s\" appears twice in the header",
                           r->o.schema[sc].name);
        r->scols[sc].file_col = (int)i;
    }
    for (i = 0; i < r->nfile; i++) {
        int sc = r->file_schema[i];
        if (sc < 0 || !r->scols[sc].served)
            continue;
        if ((!first && (rc = out_byte(r, ',', err)) != 0) ||
            (rc = csv_put_value(r, r->o.schema[sc].name,
                                strlen(r->o.schema[sc].name), err)) != 0)
            return rc;
        first = false;
    }
    return r->crlf ? out_put(r, "\r\n", 2, err) : out_byte(r, '\n', err);
}

static int mask_value(fp_reader *r, const pol_mask *m, const char *v, size_t n,
                      const char **res, size_t *rlen, bool *is_null,
                      polis_error *err)
{
    int rc;

    if ((rc = ensure_scratch(r, pol_mask_output_max(m, n), err)) != 0)
        return rc;
    rc = pol_mask_apply(m, r->o.mask_key, v, n, r->scratch, r->scratch_cap,
                        rlen, is_null);
    if (rc != 0)
        return fail_at(r, err, rc, "masking (%s) failed",
                       pol_mask_method_name(m->method));
    *res = r->scratch;
    return 0;
}

static int csv_row(fp_reader *r, polis_error *err)
{
    size_t i, nfilters = pol_decision_filter_count(r->o.decision);
    bool first = true;
    int rc;

    if (r->nfields != r->nfile)
        return fail_at(r, err, POLIS_EINVAL, "%zu fields, the header has %zu",
                       r->nfields, r->nfile);
    r->st.rows_read++;
    r->unesc_used = 0;
    if (nfilters > 0) {
        bool matched = false;
        polis_error ferr = {0};
        rc = pol_expr_matches(pol_decision_filters(r->o.decision), nfilters,
                              csv_row_value, r, r->o.subject, r->o.request,
                              &matched, &ferr);
        if (rc != 0)
            return fail_at(r, err, rc, "row filter: %s", ferr.message);
        if (!matched)
            return 0;
    }
    for (i = 0; i < r->nfile; i++) {
        int sc = r->file_schema[i];
        const fp_scol *c;
        fp_field *f = &r->fields[i];

        rc = 0;
        if (sc < 0 || !(c = &r->scols[sc])->served)
            continue;
        if (!first && (rc = out_byte(r, ',', err)) != 0)
            return rc;
        first = false;
        if (c->mask == NULL) {
            if (!f->quoted) {
                rc = out_put(r, f->p, f->len, err);
            } else if ((rc = out_byte(r, '"', err)) == 0 &&
                       (rc = out_put(r, f->p, f->len, err)) == 0) {
                rc = out_byte(r, '"', err);
            }
        } else if (f->quoted || f->len > 0) {
            const char *v, *res = NULL;
            size_t n, rlen = 0;
            bool is_null;

            csv_field_value(r, f, &v, &n);
            rc = mask_value(r, c->mask, v, n, &res, &rlen, &is_null, err);
            if (rc == 0 && !is_null)
                rc = csv_put_value(r, res, rlen, err);
        }
        if (rc != 0)
            return rc;
    }
    r->st.rows_written++;
    return r->crlf ? out_put(r, "\r\n", 2, err) : out_byte(r, '\n', err);
}

/* Every complete record in the buffer; at the end of the file the last. */
static int csv_records(fp_reader *r, polis_error *err)
{
    while (r->in_start < r->in_len) {
        const char *start = r->in + r->in_start, *end = r->in + r->in_len;
        const char *next = NULL;
        uint64_t nl = 0;
        int rc;

        if (*start == '\n' ||
            (*start == '\r' && start + 1 < end && start[1] == '\n')) {
            r->in_start += *start == '\n' ? 1 : 2; /* blank line */
            r->line++;
            continue;
        }
        rc = csv_split(r, start, end, &next, &nl, err);
        if (rc < 0)
            return rc;
        if ((rc == 1 && (size_t)(next - start) > r->max_record) ||
            (rc == 0 && (size_t)(end - start) > r->max_record))
            return fail_at(r, err, POLIS_ETOOBIG,
                           "record longer than %zu bytes", r->max_record);
        if (rc == 0)
            return 0;
        r->rec_mark = r->out_len;
        if (!r->header_done) {
            rc = csv_header(r, next, err);
            r->header_done = true;
        } else {
            rc = csv_row(r, err);
        }
        if (rc != 0)
            return rc;
        r->in_start = (size_t)(next - r->in);
        r->line += 1 + nl;
    }
    return 0;
}

/* ---- JSON Lines ---------------------------------------------------------- */

static int jsonl_row_value(void *row, int id, const char *name,
                           pol_expr_value *out)
{
    fp_reader *r = row;
    int s = filter_column(r, id, name);
    const json_t *v;
    pol_expr_type type;

    out->type = POL_EXPR_NULL;
    if (s < 0 || (v = r->jvals[s]) == NULL)
        return 0;
    type = r->o.schema[s].type;
    if (json_is_string(v)) {
        text_to_value(type, json_string_value(v), json_string_length(v), out);
    } else if (json_is_integer(v) && type == POL_EXPR_INTEGER) {
        out->type = POL_EXPR_INTEGER;
        out->u.i = (int64_t)json_integer_value(v);
    } else if (json_is_number(v) && type == POL_EXPR_DECIMAL) {
        out->type = POL_EXPR_DECIMAL;
        out->u.d = json_number_value(v);
    } else if (json_is_boolean(v) && type == POL_EXPR_BOOLEAN) {
        out->type = POL_EXPR_BOOLEAN;
        out->u.b = json_is_true(v);
    }
    return 0;
}

/* A scalar's text for masking; false for null, objects and arrays. */
static bool json_scalar_text(const json_t *v, char *buf, size_t cap,
                             const char **s, size_t *n)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        *s = json_string_value(v);
        *n = json_string_length(v);
        return true;
    case JSON_INTEGER:
        *n = (size_t)snprintf(buf, cap, "%" JSON_INTEGER_FORMAT,
                              json_integer_value(v));
        *s = buf;
        return true;
    case JSON_REAL:
        *n = format_real(json_real_value(v), buf, cap);
        *s = buf;
        return true;
    case JSON_TRUE:
        *s = "true";
        *n = 4;
        return true;
    case JSON_FALSE:
        *s = "false";
        *n = 5;
        return true;
    default:
        return false;
    }
}

static int jsonl_put_value(fp_reader *r, const json_t *v, polis_error *err)
{
    char buf[40];
    const char *s;
    size_t n;

    switch (json_typeof(v)) {
    case JSON_STRING:
        return json_put_string(r, json_string_value(v), json_string_length(v),
                               err);
    case JSON_NULL:
        return out_put(r, "null", 4, err);
    case JSON_OBJECT:
    case JSON_ARRAY: {
        size_t need = json_dumpb(v, NULL, 0, JSON_COMPACT | JSON_ENCODE_ANY);
        int rc = ensure_scratch(r, need, err);
        if (rc != 0)
            return rc;
        n = json_dumpb(v, r->scratch, r->scratch_cap,
                       JSON_COMPACT | JSON_ENCODE_ANY);
        return out_put(r, r->scratch, n, err);
    }
    default:
        json_scalar_text(v, buf, sizeof buf, &s, &n);
        return out_put(r, s, n, err);
    }
}

static int jsonl_line(fp_reader *r, const char *s, size_t n, polis_error *err)
{
    size_t i, nfilters = pol_decision_filter_count(r->o.decision);
    json_error_t jerr;
    json_t *obj, *v;
    const char *key;
    bool first = true;
    int rc = 0;

    obj = json_loadb(s, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (obj == NULL)
        return fail_at(r, err, POLIS_EPARSE, "column %d: %s", jerr.column,
                       jerr.text);
    if (!json_is_object(obj)) {
        json_decref(obj);
        return fail_at(r, err, POLIS_EPARSE, "not a JSON object");
    }
    r->st.rows_read++;
    for (i = 0; i < r->o.nschema; i++)
        r->jvals[i] = NULL;
    json_object_foreach(obj, key, v)
    {
        int sc = schema_find(r, key, strlen(key));
        if (sc < 0 && r->o.unknown_columns != FP_UNKNOWN_DROP) {
            rc = fail_at(r, err, POLIS_EINVAL,
                         "key \"%.128s\" is not a column of the product's "
                         "schema (the file does not match its contract)",
                         key);
            goto out;
        }
        if (sc < 0)
            continue;
        if (r->jvals[sc] != NULL) {
            rc =
                fail_at(r, err, POLIS_EINVAL, "two keys name the column \"%s\"",
                        r->o.schema[sc].name);
            goto out;
        }
        r->jvals[sc] = v;
    }
    if (nfilters > 0) {
        bool matched = false;
        polis_error ferr = {0};
        rc = pol_expr_matches(pol_decision_filters(r->o.decision), nfilters,
                              jsonl_row_value, r, r->o.subject, r->o.request,
                              &matched, &ferr);
        if (rc != 0) {
            rc = fail_at(r, err, rc, "row filter: %s", ferr.message);
            goto out;
        }
        if (!matched)
            goto out;
    }
    if ((rc = out_byte(r, '{', err)) != 0)
        goto out;
    json_object_foreach(obj, key, v)
    {
        int sc = schema_find(r, key, strlen(key));
        const fp_scol *c;
        const char *name;

        if (sc < 0 || !(c = &r->scols[sc])->served)
            continue;
        name = r->o.schema[sc].name;
        if ((!first && (rc = out_byte(r, ',', err)) != 0) ||
            (rc = json_put_string(r, name, strlen(name), err)) != 0 ||
            (rc = out_byte(r, ':', err)) != 0)
            goto out;
        first = false;
        if (c->mask == NULL) {
            rc = jsonl_put_value(r, v, err);
        } else {
            char buf[40];
            const char *t, *res = NULL;
            size_t tn, rlen = 0;
            bool is_null = true;

            /* Objects and arrays cannot be masked: they fail closed. */
            if (json_scalar_text(v, buf, sizeof buf, &t, &tn))
                rc = mask_value(r, c->mask, t, tn, &res, &rlen, &is_null, err);
            if (rc == 0)
                rc = is_null ? out_put(r, "null", 4, err)
                             : json_put_string(r, res, rlen, err);
        }
        if (rc != 0)
            goto out;
    }
    if ((rc = out_put(r, "}\n", 2, err)) != 0)
        goto out;
    r->st.rows_written++;
out:
    json_decref(obj);
    return rc;
}

static int jsonl_records(fp_reader *r, polis_error *err)
{
    while (r->in_start < r->in_len) {
        const char *start = r->in + r->in_start, *end = r->in + r->in_len;
        const char *nl = memchr(start, '\n', (size_t)(end - start));
        const char *next, *e;
        int rc;

        if (nl == NULL && !r->eof) {
            if ((size_t)(end - start) > r->max_record)
                return fail_at(r, err, POLIS_ETOOBIG,
                               "line longer than %zu bytes", r->max_record);
            return 0;
        }
        e = nl ? nl : end;
        next = nl ? nl + 1 : end;
        if ((size_t)(e - start) > r->max_record)
            return fail_at(r, err, POLIS_ETOOBIG, "line longer than %zu bytes",
                           r->max_record);
        if (e > start && e[-1] == '\r')
            e--;
        while (start < e && (*start == ' ' || *start == '\t'))
            start++;
        r->rec_mark = r->out_len;
        if (start < e &&
            (rc = jsonl_line(r, start, (size_t)(e - start), err)) != 0)
            return rc;
        r->in_start = (size_t)(next - r->in);
        r->line++;
    }
    return 0;
}

/* ---- driving ------------------------------------------------------------- */

/* One read(2) of at most FP_CHUNK_SIZE bytes; 0 at the end of the file. */
static int read_chunk(int fd, char *buf, size_t cap, size_t *got,
                      polis_error *err)
{
    ssize_t n;

    do {
        n = read(fd, buf, cap);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        int e = errno;
        return polis_error_set(err, POLIS_EIO, "file", "read: %s", strerror(e));
    }
    *got = (size_t)n;
    return 0;
}

static int reader_new(int fd, bool records, const fp_options *opts,
                      fp_sink_fn sink, void *sink_ctx, fp_reader **out,
                      polis_error *err)
{
    fp_reader *r;
    size_t i, j, ndc;

    *out = NULL;
    if (opts == NULL || sink == NULL || opts->decision == NULL ||
        (fd < 0 && !records) || (records && opts->format != FP_FORMAT_JSONL) ||
        (opts->nschema > 0 && opts->schema == NULL) ||
        (opts->format != FP_FORMAT_CSV && opts->format != FP_FORMAT_JSONL) ||
        opts->max_record > FP_MAX_RECORD_LIMIT)
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "bad file port options");
    if (opts->nschema > POL_MAX_COLUMNS)
        return polis_error_set(err, POLIS_ETOOBIG, "schema",
                               "more than %d columns", POL_MAX_COLUMNS);
    if (!pol_decision_allowed(opts->decision))
        return polis_error_set(err, POLIS_EDENIED, NULL,
                               "the decision denies access to the product");
    ndc = pol_decision_column_count(opts->decision);
    for (i = 0; i < ndc; i++) {
        const pol_mask *m = pol_decision_column_mask(opts->decision, i);
        if (m != NULL && m->method == POL_MASK_HASH && opts->mask_key == NULL)
            return polis_error_set(
                err, POLIS_EINVAL, pol_decision_column_name(opts->decision, i),
                "the hash mask needs the deployment's key, which is not "
                "configured");
    }
    if ((r = calloc(1, sizeof *r)) == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    r->fd = fd;
    r->records = records;
    r->o = *opts;
    r->sink = sink;
    r->sink_ctx = sink_ctx;
    r->max_record = opts->max_record ? opts->max_record : FP_DEFAULT_MAX_RECORD;
    r->in_cap = r->max_record + FP_CHUNK_SIZE;
    r->line = 1;
    /* A records reader is handed its input: no input buffer. */
    r->in = records ? NULL : malloc(r->in_cap + 1);
    /* A records reader serves one event at a time to one of possibly
     * thousands of consumers: a small output buffer (a larger record goes
     * to the sink in pieces). */
    r->out_cap = records ? FP_RECORDS_OUT_SIZE : FP_OUT_CHUNK_SIZE;
    r->out = malloc(r->out_cap);
    r->scols = calloc(opts->nschema + 1, sizeof *r->scols);
    if (opts->format == FP_FORMAT_CSV) {
        r->unesc = malloc(r->max_record + 1);
        r->fields = malloc(FP_MAX_FIELDS * sizeof *r->fields);
        r->file_schema = malloc(FP_MAX_FIELDS * sizeof *r->file_schema);
    } else {
        r->jvals = calloc(opts->nschema + 1, sizeof *r->jvals);
    }
    if ((r->in == NULL && !records) || r->out == NULL || r->scols == NULL ||
        (opts->format == FP_FORMAT_CSV &&
         (r->unesc == NULL || r->fields == NULL || r->file_schema == NULL)) ||
        (opts->format == FP_FORMAT_JSONL && r->jvals == NULL)) {
        fp_reader_free(r);
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    }
    /* Served columns: the decision's, matched to the schema by name. */
    for (i = 0; i < opts->nschema; i++) {
        r->scols[i].file_col = -1;
        for (j = 0; j < ndc; j++) {
            if (strcasecmp(pol_decision_column_name(opts->decision, j),
                           opts->schema[i].name) == 0) {
                r->scols[i].served = true;
                r->scols[i].mask = pol_decision_column_mask(opts->decision, j);
                break;
            }
        }
    }
    *out = r;
    return 0;
}

int fp_reader_new(int fd, const fp_options *opts, fp_sink_fn sink,
                  void *sink_ctx, fp_reader **out, polis_error *err)
{
    return reader_new(fd, false, opts, sink, sink_ctx, out, err);
}

int fp_reader_new_records(const fp_options *opts, fp_sink_fn sink,
                          void *sink_ctx, fp_reader **out, polis_error *err)
{
    return reader_new(-1, true, opts, sink, sink_ctx, out, err);
}

int fp_reader_record(fp_reader *r, const char *json, size_t n, bool *written,
                     polis_error *err)
{
    uint64_t before = r->st.rows_written;
    int rc;

    *written = false;
    if (!r->records)
        return polis_error_set(err, POLIS_EINVAL, NULL, "not a records reader");
    if (n > r->max_record)
        return fail_at(r, err, POLIS_ETOOBIG, "longer than %zu bytes",
                       r->max_record);
    r->rec_mark = r->out_len;
    rc = jsonl_line(r, json, n, err);
    if (rc != 0) {
        r->out_len = r->rec_mark; /* no half record */
        return rc;
    }
    if ((rc = out_flush(r, err)) != 0)
        return rc;
    *written = r->st.rows_written > before;
    return 0;
}

int fp_reader_step(fp_reader *r, bool *done, polis_error *err)
{
    size_t got = 0;
    int rc;

    *done = false;
    if (r->records)
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "a records reader reads no file");
    if (r->failed) {
        if (err != NULL)
            *err = r->failure;
        return r->failed;
    }
    if (r->done) {
        *done = true;
        return 0;
    }
    if (r->in_start > 0) {
        memmove(r->in, r->in + r->in_start, r->in_len - r->in_start);
        r->in_len -= r->in_start;
        r->in_start = 0;
    }
    rc = read_chunk(r->fd, r->in + r->in_len, FP_CHUNK_SIZE, &got, err);
    if (rc != 0)
        goto fail;
    r->in_len += got;
    r->st.bytes_read += got;
    r->eof = got == 0;
    r->in[r->in_len] = '\n'; /* sentinel: ends every unquoted scan */
    if (!r->started) {
        if (r->in_len < 3 && !r->eof)
            return 0;
        if (r->in_len >= 3 && memcmp(r->in, "\xEF\xBB\xBF", 3) == 0)
            r->in_start = 3; /* a UTF-8 byte-order mark */
        r->started = true;
    }
    rc = r->o.format == FP_FORMAT_CSV ? csv_records(r, err)
                                      : jsonl_records(r, err);
    if (rc != 0) {
        r->out_len = r->rec_mark; /* no half record */
        out_flush(r, NULL);
        goto fail;
    }
    r->rec_mark = r->out_len;
    if ((rc = out_flush(r, err)) != 0)
        goto fail;
    if (r->eof) {
        r->done = true;
        *done = true;
    }
    return 0;
fail:
    r->failed = rc;
    if (err != NULL)
        r->failure = *err;
    else
        polis_error_set(&r->failure, rc, NULL, "%s", polis_strerror(rc));
    return rc;
}

void fp_reader_stats(const fp_reader *r, fp_stats *out)
{
    *out = r->st;
}

void fp_reader_free(fp_reader *r)
{
    if (r == NULL)
        return;
    free(r->in);
    free(r->out);
    free(r->scratch);
    free(r->unesc);
    free(r->fields);
    free(r->file_schema);
    free(r->jvals);
    free(r->scols);
    free(r);
}

int fp_stream(int fd, const fp_options *opts, fp_sink_fn sink, void *sink_ctx,
              fp_stats *stats, polis_error *err)
{
    fp_reader *r;
    bool done = false;
    int rc;

    if (stats != NULL)
        memset(stats, 0, sizeof *stats);
    if ((rc = fp_reader_new(fd, opts, sink, sink_ctx, &r, err)) != 0)
        return rc;
    while (!done && (rc = fp_reader_step(r, &done, err)) == 0)
        ;
    if (stats != NULL)
        fp_reader_stats(r, stats);
    fp_reader_free(r);
    return rc;
}

int fp_stream_raw(int fd, fp_sink_fn sink, void *sink_ctx, fp_stats *stats,
                  polis_error *err)
{
    char *buf = malloc(FP_CHUNK_SIZE);
    fp_stats st = {0};
    size_t got = 0;
    int rc;

    if (buf == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, "out of memory");
    for (;;) {
        if ((rc = read_chunk(fd, buf, FP_CHUNK_SIZE, &got, err)) != 0 ||
            got == 0)
            break;
        st.bytes_read += got;
        if ((rc = sink(sink_ctx, buf, got)) != 0) {
            rc = polis_error_set(err, rc < 0 ? rc : POLIS_EIO, "sink",
                                 "the output was not accepted");
            break;
        }
        st.bytes_written += got;
    }
    free(buf);
    if (stats != NULL)
        *stats = st;
    return rc;
}
