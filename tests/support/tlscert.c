/*
 * tlscert.c — throwaway CAs and certificates with the openssl tool
 * (tlscert.h).
 */
#include "tests/support/tlscert.h"
#include "tests/support/testenv.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tlscert_run(const char *dir, const char *const argv[])
{
    char log[700];
    int64_t until = mono_ms() + 20000;
    int status = -1, fd;
    pid_t pid, r;

    snprintf(log, sizeof(log), "%s/tools.log", dir);
    if ((pid = fork()) < 0)
        return -1;
    if (pid == 0) {
        fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && mono_ms() < until)
        usleep(10 * 1000);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fprintf(stderr, "\n%s hung\n", argv[0]);
        return -1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char *tail = testenv_file_tail(log, 2000);
        fprintf(stderr, "\n%s failed:\n%s\n", argv[0], tail ? tail : "");
        free(tail);
        return -1;
    }
    return 0;
}

int tlscert_ca(const char *dir, const char *name)
{
    char key[600], crt[600], subj[200];
    const char *argv[] = {"openssl",
                          "req",
                          "-x509",
                          "-newkey",
                          "ec",
                          "-pkeyopt",
                          "ec_paramgen_curve:prime256v1",
                          "-nodes",
                          "-days",
                          "2",
                          "-subj",
                          subj,
                          "-addext",
                          "basicConstraints=critical,CA:TRUE",
                          "-addext",
                          "keyUsage=critical,keyCertSign,cRLSign",
                          "-keyout",
                          key,
                          "-out",
                          crt,
                          NULL};

    snprintf(crt, sizeof(crt), "%s/%s.crt", dir, name);
    snprintf(key, sizeof(key), "%s/%s.key", dir, name);
    snprintf(subj, sizeof(subj), "/CN=%s", name);
    return tlscert_run(dir, argv);
}

int tlscert_issue(const char *dir, const char *name, const char *ca,
                  const char *subj, const char *ext)
{
    char key[600], csr[600], crt[600], cnf[600], cacrt[600], cakey[600];
    const char *req[] = {"openssl",
                         "req",
                         "-new",
                         "-newkey",
                         "ec",
                         "-pkeyopt",
                         "ec_paramgen_curve:prime256v1",
                         "-nodes",
                         "-subj",
                         subj,
                         "-keyout",
                         key,
                         "-out",
                         csr,
                         NULL};
    const char *sign[] = {
        "openssl", "x509", "-req",     "-in", csr,
        "-CA",     cacrt,  "-CAkey",   cakey, "-CAcreateserial",
        "-days",   "2",    "-extfile", cnf,   "-out",
        crt,       NULL};
    FILE *f;

    snprintf(key, sizeof(key), "%s/%s.key", dir, name);
    snprintf(csr, sizeof(csr), "%s/%s.csr", dir, name);
    snprintf(crt, sizeof(crt), "%s/%s.crt", dir, name);
    snprintf(cnf, sizeof(cnf), "%s/%s.cnf", dir, name);
    snprintf(cacrt, sizeof(cacrt), "%s/%s.crt", dir, ca);
    snprintf(cakey, sizeof(cakey), "%s/%s.key", dir, ca);
    if ((f = fopen(cnf, "w")) == NULL)
        return -1;
    fputs(ext, f);
    if (fclose(f) != 0)
        return -1;
    return tlscert_run(dir, req) == 0 && tlscert_run(dir, sign) == 0 ? 0 : -1;
}
