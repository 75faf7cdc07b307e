/*
 * nginxenv.c — start and stop a real nginx for tests and benchmarks
 * (nginxenv.h).
 */
#include "tests/support/nginxenv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void print_tail(const char *what, const char *path)
{
    char *tail = testenv_file_tail(path, 3000);

    fprintf(stderr, "---- %s (%s) ----\n%s---- end ----\n", what, path,
            tail ? tail : "");
    free(tail);
}

void nginxenv_print_logs(const nginxenv *n)
{
    print_tail("nginx output", n->log);
    print_tail("nginx error log", n->error_log);
}

int nginxenv_start(nginxenv *n, const char *dir, const char *name,
                   const char *http, const int *ports, size_t nports)
{
    const char *argv[] = {
        NGINXENV_BIN, "-e",      n->error_log,
        "-p",         n->prefix, "-c",
        n->conf,      "-g",      "daemon off; master_process off;",
        NULL};
    size_t len = strlen(http) + 2048;
    char *text = malloc(len);
    FILE *f;
    int rc = -1;

    memset(n, 0, sizeof(*n));
    snprintf(n->prefix, sizeof(n->prefix), "%s/%s", dir, name);
    snprintf(n->conf, sizeof(n->conf), "%s/nginx.conf", n->prefix);
    snprintf(n->log, sizeof(n->log), "%s/stdout.log", n->prefix);
    snprintf(n->error_log, sizeof(n->error_log), "%s/error.log", n->prefix);
    if (text == NULL)
        return -1;
    if (mkdir(n->prefix, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "nginxenv: mkdir %s: %s\n", n->prefix, strerror(errno));
        goto out;
    }
    snprintf(text, len,
             "worker_processes 1;\n"
             "pid %s/nginx.pid;\n"
             "error_log %s warn;\n"
             "events { worker_connections 4096; }\n"
             "http {\n"
             "  client_body_temp_path %s/body;\n"
             "  proxy_temp_path %s/proxy;\n"
             "  fastcgi_temp_path %s/fastcgi;\n"
             "  uwsgi_temp_path %s/uwsgi;\n"
             "  scgi_temp_path %s/scgi;\n"
             "%s"
             "}\n",
             n->prefix, n->error_log, n->prefix, n->prefix, n->prefix,
             n->prefix, n->prefix, http);
    f = fopen(n->conf, "w");
    if (f == NULL || (fputs(text, f) < 0) + (fclose(f) != 0) > 0) {
        fprintf(stderr, "nginxenv: cannot write %s\n", n->conf);
        goto out;
    }
    if ((n->proc = testenv_spawn(argv, NULL, n->log)) == NULL)
        goto out;
    for (size_t i = 0; i < nports; i++) {
        if (testenv_wait_port("127.0.0.1", ports[i], 10000) != 0 ||
            !testenv_proc_alive(n->proc)) {
            fprintf(stderr, "nginxenv: nginx %s did not listen on %d\n", name,
                    ports[i]);
            nginxenv_print_logs(n);
            nginxenv_stop(n, 1000);
            goto out;
        }
    }
    rc = 0;
out:
    free(text);
    return rc;
}

void nginxenv_stop(nginxenv *n, int grace_ms)
{
    if (n == NULL || n->proc == NULL)
        return;
    testenv_proc_stop(n->proc, grace_ms);
    n->proc = NULL;
}
