#!/usr/bin/env bash
# fuzz.sh BUILD_DIR SECONDS — run every libFuzzer target in BUILD_DIR/tests/fuzz
# for SECONDS each, from its seed corpus in tests/fuzz/corpus/<target>/.
# Exits non-zero when a target finds a crash, a leak or a sanitizer error.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: fuzz.sh BUILD_DIR SECONDS}
seconds=${2:-30}
status=0
shopt -s nullglob
for bin in "$build"/tests/fuzz/fuzz_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin")
    work=$(mktemp -d)
    seeds=()
    [ -d "$root/tests/fuzz/corpus/$name" ] && seeds+=("$root/tests/fuzz/corpus/$name")
    echo "fuzz: $name for ${seconds}s"
    if ! "$bin" -max_total_time="$seconds" -max_len=8192 -timeout=10 \
        -artifact_prefix="$work/" "$work" "${seeds[@]}" >"$work/log" 2>&1; then
        echo "fuzz: $name FAILED; last lines:"
        tail -40 "$work/log"
        status=1
    else
        grep -E '^#[0-9]+.*(DONE|pulse)' "$work/log" | tail -1
    fi
    rm -rf "$work"
done
exit $status
