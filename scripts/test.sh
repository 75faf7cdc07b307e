#!/usr/bin/env bash
# test.sh — set up (packages + build) and run the whole test suite with
# ctest: unit suites, integration tests against real etcd and the real
# binaries, then the same suites under AddressSanitizer+UBSan, then each
# fuzz target for a bounded time.  This is the README's test command and
# what CI runs (.ci/run).
#
#   POLIS_TEST_SANITIZE=0   skip the sanitizer pass
#   POLIS_FUZZ_SECONDS=N    seconds per fuzz target (default 30; 0 skips)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
fuzz_seconds=${POLIS_FUZZ_SECONDS:-30}

"$root/scripts/setup.sh"

status=0

# Fuzz targets first (short, bounded), so the closing lines stay ctest's.
if [ "$fuzz_seconds" != 0 ]; then
    POLIS_SKIP_INSTALL=1 POLIS_BUILD_DIR="$root/build-fuzz" CC=clang \
        POLIS_BUILD_TYPE=Debug POLIS_SANITIZE=ON POLIS_FUZZ=ON \
        "$root/scripts/setup.sh" >/dev/null
    "$root/scripts/fuzz.sh" "$root/build-fuzz" "$fuzz_seconds" || status=1
fi

if [ "${POLIS_TEST_SANITIZE:-1}" != 0 ]; then
    echo "test: sanitizer build (address+undefined)"
    POLIS_SKIP_INSTALL=1 POLIS_BUILD_DIR="$root/build-asan" \
        POLIS_BUILD_TYPE=Debug POLIS_SANITIZE=ON "$root/scripts/setup.sh" \
        >/dev/null
    (cd "$root/build-asan" &&
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --output-on-failure -j"$jobs") || status=1
fi

echo "test: release build"
(cd "$root/build" && ctest --output-on-failure -j"$jobs") || status=1
exit $status
