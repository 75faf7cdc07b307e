/*
 * daemon.h — the start-up steps polis-controlplane and polis-sidecar share:
 * flags through the config table (with --help and --version), logging from
 * the level and format names, and the signal mask the main thread waits
 * on.  They print to stdout/stderr: this module is for main() only.
 */
#ifndef POLIS_DAEMON_H
#define POLIS_DAEMON_H

#include "common/config.h"

#include <signal.h>
#include <stdio.h>

#define DAEMON_CONTINUE (-1)

/*
 * config_load, then --help (usage to stdout) and --version.  Returns
 * DAEMON_CONTINUE to go on, or the exit code: 0 after --help/--version, 2
 * after a usage error (printed as "prog: where: why" plus a hint).
 */
int daemon_parse_args(const char *prog, const config_option *table, size_t n,
                      void *conf, int argc, char **argv,
                      void (*usage)(FILE *out));

/* log_setup from "debug|info|warn|error" and "text|json"; DAEMON_CONTINUE,
 * or 2 with a message for an unknown level. */
int daemon_setup_logging(const char *prog, const char *level,
                         const char *format);

/*
 * Block SIGINT and SIGTERM (in this thread and every thread started after)
 * and ignore SIGPIPE; *sigs receives the set for sigwaitinfo/sigtimedwait.
 * Call before starting any thread.
 */
void daemon_block_signals(sigset_t *sigs);

#endif
