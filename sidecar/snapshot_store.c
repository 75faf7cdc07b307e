/*
 * snapshot_store.c — the last good snapshot on disk (snapshot_store.h).
 * The rename is the commit point; the directory fsync makes the rename
 * itself durable, so a power cut after an ACK cannot bring back an older
 * snapshot than the one acknowledged.
 */
#include "sidecar/snapshot_store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int io_error(polis_error *err, const char *path, const char *what)
{
    return polis_error_set(err, POLIS_EIO, path, "%s: %s", what,
                           strerror(errno));
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc;

    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

int sc_store_save(const char *dir, const Polis__V1__Snapshot *snap,
                  polis_error *err)
{
    char tmp[PATH_MAX], final[PATH_MAX];
    unsigned char *buf = NULL;
    size_t len;
    int fd = -1, rc = 0;

    if (snprintf(tmp, sizeof(tmp), "%s/" SC_STORE_TMP_FILE, dir) >=
            (int)sizeof(tmp) ||
        snprintf(final, sizeof(final), "%s/" SC_STORE_FILE, dir) >=
            (int)sizeof(final))
        return polis_error_set(err, POLIS_EINVAL, dir,
                               "state directory path too long");
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return io_error(err, dir, "cannot create the state directory");
    len = protobuf_c_message_get_packed_size(&snap->base);
    if (len > SC_STORE_MAX_BYTES)
        return polis_error_set(err, POLIS_ETOOBIG, final,
                               "snapshot of %zu bytes, at most %u", len,
                               SC_STORE_MAX_BYTES);
    buf = malloc(len ? len : 1);
    if (buf == NULL)
        return polis_error_set(err, POLIS_ENOMEM, final, NULL);
    protobuf_c_message_pack(&snap->base, buf);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = io_error(err, tmp, "cannot create");
        goto out;
    }
    if (write_all(fd, buf, len) != 0) {
        rc = io_error(err, tmp, "cannot write");
        goto out;
    }
    if (fsync(fd) != 0) {
        rc = io_error(err, tmp, "cannot fsync");
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = io_error(err, tmp, "cannot close");
        goto out;
    }
    fd = -1;
    if (rename(tmp, final) != 0) {
        rc = io_error(err, final, "cannot rename the temp file over");
        goto out;
    }
    if (fsync_dir(dir) != 0)
        rc = io_error(err, dir, "cannot fsync the state directory");
out:
    if (fd >= 0)
        close(fd);
    if (rc)
        unlink(tmp);
    free(buf);
    return rc;
}

static int is_hex_digest(const char *s)
{
    size_t n = 0;

    if (s == NULL)
        return 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return 0;
    return n == 64;
}

static int read_file(const char *path, unsigned char **out, size_t *outlen,
                     polis_error *err)
{
    struct stat st;
    unsigned char *buf;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        if (errno == ENOENT)
            return polis_error_set(err, POLIS_ENOTFOUND, path,
                                   "no snapshot file");
        return io_error(err, path, "cannot open");
    }
    if (fstat(fd, &st) != 0) {
        close(fd);
        return io_error(err, path, "cannot stat");
    }
    if (st.st_size > (off_t)SC_STORE_MAX_BYTES) {
        close(fd);
        return polis_error_set(err, POLIS_ETOOBIG, path,
                               "%lld bytes, at most %u", (long long)st.st_size,
                               SC_STORE_MAX_BYTES);
    }
    buf = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
    if (buf == NULL) {
        close(fd);
        return polis_error_set(err, POLIS_ENOMEM, path, NULL);
    }
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int rc = io_error(err, path, "cannot read");
            free(buf);
            close(fd);
            return rc;
        }
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *outlen = got;
    return 0;
}

int sc_store_load(const char *dir, Polis__V1__Snapshot **out, polis_error *err)
{
    char path[PATH_MAX];
    unsigned char *buf = NULL;
    size_t len = 0;
    Polis__V1__Snapshot *snap;
    int rc;

    *out = NULL;
    if (snprintf(path, sizeof(path), "%s/" SC_STORE_FILE, dir) >=
        (int)sizeof(path))
        return polis_error_set(err, POLIS_EINVAL, dir,
                               "state directory path too long");
    if ((rc = read_file(path, &buf, &len, err)) != 0)
        return rc;
    snap = polis__v1__snapshot__unpack(NULL, len, buf);
    free(buf);
    if (snap == NULL)
        return polis_error_set(err, POLIS_EPARSE, path,
                               "corrupt snapshot file: %zu bytes that do not "
                               "unpack as a polis.v1.Snapshot",
                               len);
    if (snap->revision <= 0 || snap->domain == NULL ||
        snap->domain[0] == '\0' || !is_hex_digest(snap->digest)) {
        rc = polis_error_set(err, POLIS_EPARSE, path,
                             "corrupt snapshot file: %s",
                             snap->revision <= 0 ? "no revision"
                             : (snap->domain == NULL || !snap->domain[0])
                                 ? "no domain"
                                 : "digest is not 64 hex digits");
        polis__v1__snapshot__free_unpacked(snap, NULL);
        return rc;
    }
    *out = snap;
    return 0;
}

void sc_store_free(Polis__V1__Snapshot *snap)
{
    if (snap)
        polis__v1__snapshot__free_unpacked(snap, NULL);
}
