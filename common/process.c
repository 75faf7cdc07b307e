/*
 * process.c — child-process helpers (process.h).
 */
#include "common/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

char *proc_find_on_path(const char *name)
{
    const char *path = getenv("PATH");
    char candidate[4096];

    if (strchr(name, '/'))
        return strdup(name);
    if (path == NULL)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t len = colon ? (size_t)(colon - path) : strlen(path);
        snprintf(candidate, sizeof(candidate), "%.*s/%s", (int)len, path, name);
        if (len > 0 && access(candidate, X_OK) == 0)
            return strdup(candidate);
        path += len;
        if (*path == ':')
            path++;
    }
    return NULL;
}

int proc_free_port(const char *host)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = -1;

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    if (host == NULL || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

void proc_file_tail(const char *path, char *buf, size_t len)
{
    int fd;
    off_t size;
    ssize_t n;

    if (len == 0)
        return;
    buf[0] = '\0';
    if (path == NULL || len < 2)
        return;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    size = lseek(fd, 0, SEEK_END);
    if (size > (off_t)(len - 1))
        lseek(fd, size - (off_t)(len - 1), SEEK_SET);
    else
        lseek(fd, 0, SEEK_SET);
    n = read(fd, buf, len - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
}

void proc_close_fds_from(int lowfd, int keep)
{
    long max = sysconf(_SC_OPEN_MAX);

#ifdef SYS_close_range
    if (keep < lowfd) {
        if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0)
            return;
    } else if ((keep == lowfd || syscall(SYS_close_range, (unsigned)lowfd,
                                         (unsigned)keep - 1, 0) == 0) &&
               syscall(SYS_close_range, (unsigned)keep + 1, ~0U, 0) == 0) {
        return;
    }
#endif
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = lowfd; fd < max; fd++) {
        if (fd != keep)
            close(fd);
    }
}
