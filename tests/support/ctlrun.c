/*
 * ctlrun.c — polisctl runs for the CLI tests (ctlrun.h).
 */
#include "tests/support/ctlrun.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

char *ctl_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (f == NULL)
        return strdup("");
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)
        buf[0] = '\0';
    fclose(f);
    return buf ? buf : strdup("");
}

void ctl_result_clear(ctl_result *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}

void ctl_run(ctl_result *r, const char *workdir, const char *input,
             const char *user, const char *const *args)
{
    char out_path[512], err_path[512], in_path[512];
    const char *argv[CTLRUN_MAX_ARGV + 2];
    size_t n = 0;
    double started;
    pid_t pid;
    int status = 0;

    memset(r, 0, sizeof(*r));
    r->code = -1;
    argv[n++] = CTLRUN_POLISCTL;
    for (; args[n - 1] && n < CTLRUN_MAX_ARGV; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    snprintf(out_path, sizeof(out_path), "%s/run.out", workdir);
    snprintf(err_path, sizeof(err_path), "%s/run.err", workdir);
    snprintf(in_path, sizeof(in_path), "%s/run.in", workdir);
    if (input) {
        FILE *f = fopen(in_path, "wb");
        if (f == NULL || fputs(input, f) < 0) {
            if (f)
                fclose(f);
            r->out = strdup("");
            r->err = strdup("cannot write the input file\n");
            return;
        }
        fclose(f);
    }
    started = now_s();
    pid = fork();
    if (pid < 0) {
        r->out = strdup("");
        r->err = strdup("fork failed\n");
        return;
    }
    if (pid == 0) {
        int in = open(input ? in_path : "/dev/null", O_RDONLY);
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

        if (in < 0 || out < 0 || err < 0)
            _exit(127);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        if (user)
            setenv("USER", user, 1);
        unsetenv("POLIS_SERVER");
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR)
            break;
        if ((now_s() - started) * 1000 > CTLRUN_LIMIT_MS) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fprintf(stderr, "polisctl did not finish in %d ms\n",
                    CTLRUN_LIMIT_MS);
            status = -1;
            break;
        }
        usleep(2000);
    }
    r->seconds = now_s() - started;
    r->code = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r->out = ctl_slurp(out_path);
    r->err = ctl_slurp(err_path);
    if (getenv("POLIS_TEST_VERBOSE"))
        fprintf(stderr, "\n$ polisctl %s ... -> %d\n%s%s", args[0], r->code,
                r->out, r->err);
}
