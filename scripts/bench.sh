#!/usr/bin/env bash
# bench.sh — build Polis (Release) and run every benchmark program
# (tests/bench/bench_*.c → BUILD/tests/bench_*) in turn, printing their
# output: one `bench: <name> <value> <unit>` line per figure.
#
#   scripts/bench.sh                 build in ./build, run all benchmarks
#   POLIS_BUILD_DIR=dir scripts/bench.sh
#   scripts/bench.sh governance      only benchmarks whose name contains it
# Each benchmark's own knobs (BENCH_THREADS, BENCH_SECONDS...) are read
# from the environment; see the comment at the top of its source.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${POLIS_BUILD_DIR:-$root/build}
filter=${1:-}

cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
    -DPOLIS_SANITIZE=OFF >/dev/null || exit 1
# Only the benchmarks and the daemons/CLI they start: faster than a full
# build, and a broken unrelated target does not stop the measurements.
all_targets=$(cmake --build "$build_dir" --target help |
    sed -n 's/^\.\.\. \([A-Za-z0-9_-]*\).*/\1/p')
targets=$(echo "$all_targets" | grep -E '^bench_' | tr '\n' ' ')
programs=$(echo "$all_targets" | grep -E '^(polis-controlplane|polis-sidecar|polisctl)$' | tr '\n' ' ')
if [ -z "$targets" ]; then
    echo "bench: no bench_* targets (tests/bench/bench_*.c)" >&2
    exit 1
fi
# shellcheck disable=SC2086
cmake --build "$build_dir" -j"$(nproc)" --target $targets $programs >/dev/null || {
    echo "bench: build failed (run: cmake --build $build_dir)" >&2
    exit 1
}

shopt -s nullglob
benches=("$build_dir"/tests/bench_*)
status=0
ran=0
for b in "${benches[@]}"; do
    [ -x "$b" ] && [ -f "$b" ] || continue
    name=$(basename "$b")
    [ -n "$filter" ] && [[ $name != *"$filter"* ]] && continue
    echo "== $name"
    # Bounded: a benchmark that hangs must not hold the machine.
    timeout 300 "$b"
    rc=$?
    if [ $rc -ne 0 ]; then
        echo "bench: $name exited with status $rc" >&2
        status=1
    fi
    ran=$((ran + 1))
done
if [ $ran -eq 0 ]; then
    echo "bench: no benchmark programs found in $build_dir/tests" >&2
    exit 1
fi
exit $status
