/*
 * ctlrun.h — run polisctl (the real binary from the build tree) as a user
 * would, for the CLI tests: arguments, stdin, a clean environment, and
 * stdout, stderr, exit code and duration captured; a run that hangs is
 * killed.
 */
#ifndef POLIS_TESTS_CTLRUN_H
#define POLIS_TESTS_CTLRUN_H

#define CTLRUN_POLISCTL POLIS_BUILD_DIR "/cli/polisctl"
#define CTLRUN_LIMIT_MS 30000 /* a run that takes longer is a hang */
#define CTLRUN_MAX_ARGV 32

typedef struct ctl_result {
    int code;       /* exit code; -1 when killed or not run */
    char *out;      /* never NULL after ctl_run */
    char *err;      /* never NULL after ctl_run */
    double seconds; /* wall time of the run */
} ctl_result;

/*
 * Run polisctl with `args` (NULL-terminated, after the program name), stdin
 * from the text `input` (NULL: /dev/null), USER set to `user` (NULL: left
 * as is) and POLIS_SERVER removed from the environment.  Output goes
 * through files in `workdir`.  Makes no CUnit assertion (suite set-up uses
 * it too).  POLIS_TEST_VERBOSE=1 prints every run.  Free with
 * ctl_result_clear.
 */
void ctl_run(ctl_result *r, const char *workdir, const char *input,
             const char *user, const char *const *args);

void ctl_result_clear(ctl_result *r);

/* A file's whole contents, NUL-terminated ("" when unreadable). */
char *ctl_slurp(const char *path);

#endif
