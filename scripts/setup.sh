#!/usr/bin/env bash
# setup.sh — install the Debian packages Polis needs (only the missing ones;
# idempotent, non-interactive) and build it with CMake.
#
#   scripts/setup.sh                 Release build in ./build
#   POLIS_BUILD_DIR=dir POLIS_BUILD_TYPE=Debug scripts/setup.sh
#   POLIS_SANITIZE=ON scripts/setup.sh   address+undefined sanitizer build
#   POLIS_SKIP_INSTALL=1 scripts/setup.sh   build only
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${POLIS_BUILD_DIR:-$root/build}
build_type=${POLIS_BUILD_TYPE:-Release}
sanitize=${POLIS_SANITIZE:-OFF}
cc=${CC:-}

# Build and runtime dependencies (see docs/architecture.md for what uses what).
packages=(
    build-essential cmake pkg-config
    libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler
    libcurl4-openssl-dev libjansson-dev libevent-dev libcunit1-dev
    libyaml-dev libssl-dev libsqlite3-dev sqlite3
    libpq-dev postgresql
    etcd-server etcd-client
    libmosquitto-dev mosquitto
    clang libclang-rt-14-dev
    curl ca-certificates openssl procps python3
    nginx-light wrk
)

install_missing() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "setup: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

if [ "${POLIS_SKIP_INSTALL:-0}" != 1 ]; then
    install_missing
fi

echo "setup: building ($build_type, sanitize=$sanitize) in $build_dir"
cmake_args=(-S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE="$build_type"
            -DPOLIS_SANITIZE="$sanitize")
[ -n "$cc" ] && cmake_args+=(-DCMAKE_C_COMPILER="$cc")
[ -n "${POLIS_FUZZ:-}" ] && cmake_args+=(-DPOLIS_FUZZ="$POLIS_FUZZ")
cmake "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j"$(nproc)"
echo "setup: done; binaries in $build_dir/controlplane, $build_dir/cli"
