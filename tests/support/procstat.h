/*
 * procstat.h — what benchmarks and tests read from /proc about the
 * processes they measure: resident memory, CPU time of one process, and
 * the busy time of the whole machine (to tell a disturbed run).
 */
#ifndef POLIS_TESTS_PROCSTAT_H
#define POLIS_TESTS_PROCSTAT_H

#include <sys/types.h>

/* VmRSS of `pid` in KiB; -1 when unknown. */
long ps_rss_kib(pid_t pid);

/* CPU seconds (user + system) `pid` has used; -1 when unknown. */
double ps_cpu_seconds(pid_t pid);

/* Seconds every core of the machine spent busy (all processes, others'
 * too: all but idle and iowait); -1 when unknown.  A difference near the
 * core count times the elapsed time means the machine was saturated. */
double ps_machine_busy_seconds(void);

#endif
