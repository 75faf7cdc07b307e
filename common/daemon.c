/*
 * daemon.c — shared start-up of the daemons (daemon.h).
 */
#include "common/daemon.h"
#include "common/log.h"

#include <pthread.h>
#include <string.h>

int daemon_parse_args(const char *prog, const config_option *table, size_t n,
                      void *conf, int argc, char **argv,
                      void (*usage)(FILE *out))
{
    polis_error err = {0};
    char msg[1024];
    int help = 0, version = 0;

    if (config_load(table, n, conf, argc, argv, "POLIS_", &help, &version,
                    &err) != 0) {
        fprintf(stderr, "%s: %s\n", prog,
                polis_error_format(&err, msg, sizeof(msg)));
        fprintf(stderr, "Try '%s --help'.\n", prog);
        return 2;
    }
    if (help) {
        usage(stdout);
        return 0;
    }
    if (version) {
        printf("%s %s\n", prog, POLIS_VERSION);
        return 0;
    }
    return DAEMON_CONTINUE;
}

int daemon_setup_logging(const char *prog, const char *level,
                         const char *format)
{
    int lv = log_level_parse(level);

    if (lv < 0) {
        fprintf(stderr,
                "%s: --log-level: unknown level \"%s\" (debug, info, warn, "
                "error)\n",
                prog, level);
        return 2;
    }
    log_setup((enum log_level)lv,
              strcmp(format, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
    return DAEMON_CONTINUE;
}

void daemon_block_signals(sigset_t *sigs)
{
    /* Signals go to the main thread only: blocked before any thread starts,
     * every thread inherits the mask. */
    sigemptyset(sigs);
    sigaddset(sigs, SIGINT);
    sigaddset(sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
}
