#!/usr/bin/env bash
# mesh.sh — the local Polis mesh: installs what is missing, builds, starts
# the control plane with its embedded etcd, and applies the sample resources
# in examples/mesh/.  Everything runs in the background; state lives in
# .polis-mesh/ (override with POLIS_MESH_DIR).
#
#   scripts/mesh.sh [up]     set up and start (idempotent)
#   scripts/mesh.sh status   what runs, and where
#   scripts/mesh.sh down     stop everything (the data stays)
#   scripts/mesh.sh reset    stop and delete the data
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${POLIS_MESH_DIR:-$root/.polis-mesh}
build=${POLIS_BUILD_DIR:-$root/build}
grpc_addr=${POLIS_MESH_LISTEN:-127.0.0.1:7400}
admin_addr=${POLIS_MESH_ADMIN:-127.0.0.1:7401}
cp_pidfile=$dir/controlplane.pid
# Sidecars of the sample domains: name, HTTP port, admin port, gRPC port.
sidecars=("sales 7480 7481 7482" "crm 7490 7491 7492")

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_ready() {
    for _ in $(seq 1 100); do
        curl -fsS "http://$admin_addr/readyz" >/dev/null 2>&1 && return 0
        running "$cp_pidfile" || break
        sleep 0.2
    done
    echo "mesh: the control plane did not become ready; its log:" >&2
    tail -20 "$dir/controlplane.log" >&2 || true
    return 1
}

start_sidecar() {
    local domain=$1 http=$2 admin=$3 grpc=$4 pidfile=$dir/sidecar-$1.pid
    if running "$pidfile"; then
        echo "mesh: sidecar $domain already running (pid $(cat "$pidfile"))"
        return 0
    fi
    echo "mesh: starting polis-sidecar for $domain on 127.0.0.1:$http"
    nohup "$build/sidecar/polis-sidecar" --domain "$domain" \
        --controlplane "$grpc_addr" --id "mesh-$domain" \
        --state-dir "$dir/sidecar-$domain" \
        --listen "127.0.0.1:$http" --admin-listen "127.0.0.1:$admin" \
        --grpc-listen "127.0.0.1:$grpc" --data-root "$dir" \
        >>"$dir/sidecar-$domain.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 50); do
        curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "mesh: sidecar $domain is not ready yet; see $dir/sidecar-$domain.log" >&2
}

stop_pid() {
    local pidfile=$1 what=$2
    if running "$pidfile"; then
        kill -TERM "$(cat "$pidfile")"
        for _ in $(seq 1 50); do running "$pidfile" || break; sleep 0.1; done
        echo "mesh: stopped $what"
    fi
    rm -f "$pidfile"
}

up() {
    "$root/scripts/setup.sh"
    mkdir -p "$dir"
    if running "$cp_pidfile"; then
        echo "mesh: control plane already running (pid $(cat "$cp_pidfile"))"
    else
        echo "mesh: starting polis-controlplane on $grpc_addr (admin $admin_addr)"
        nohup "$build/controlplane/polis-controlplane" \
            --listen "$grpc_addr" --admin-listen "$admin_addr" \
            --data-dir "$dir/controlplane" \
            >>"$dir/controlplane.log" 2>&1 &
        echo $! >"$cp_pidfile"
    fi
    wait_ready
    echo "mesh: applying the sample resources in examples/mesh/"
    "$build/cli/polisctl" --server "$grpc_addr" apply -f "$root/examples/mesh"
    if [ ! -f "$dir/data/sales/orders.db" ]; then
        "$root/examples/data/generate.sh" "$dir"
    fi
    for sc in "${sidecars[@]}"; do
        # shellcheck disable=SC2086
        start_sidecar $sc
    done
    cat <<TXT

Polis is running.  Try:
  export PATH=$build/cli:\$PATH POLIS_SERVER=$grpc_addr
  polisctl list all                      # everything stored
  polisctl list policies -o yaml         # the sample policies
  polisctl get dataproduct orders        # a data-product contract
  polisctl history domain sales          # versions of a resource
  polisctl check --principal alice --product sales/orders --purpose analytics
  polisctl sidecars                      # the sidecars and their snapshots
  curl -s http://$admin_addr/metrics | grep polis_

The sales sidecar serves its products, governed per caller (alice: EU rows,
e-mails and cards masked; bob: US rows; carol: everything):
  curl -s http://127.0.0.1:7480/v1/products/sales/orders/query \\
    -H 'Authorization: Bearer alice-token' -H 'Polis-Purpose: analytics' \\
    -d '{"sql":"SELECT * FROM orders ORDER BY order_id LIMIT 3"}'
  curl -s http://127.0.0.1:7480/v1/products/sales/orders/files/ \\
    -H 'Authorization: Bearer bob-token'
  polisctl access                        # who read what

Logs: $dir/*.log   Stop: scripts/mesh.sh down
TXT
}

down() {
    for sc in "${sidecars[@]}"; do
        set -- $sc
        stop_pid "$dir/sidecar-$1.pid" "sidecar $1"
    done
    stop_pid "$cp_pidfile" "the control plane"
}

status() {
    if running "$cp_pidfile"; then
        echo "control plane: running, pid $(cat "$cp_pidfile"), grpc $grpc_addr, admin $admin_addr"
        curl -s "http://$admin_addr/readyz" || true
    else
        echo "control plane: not running"
    fi
    for sc in "${sidecars[@]}"; do
        set -- $sc
        if running "$dir/sidecar-$1.pid"; then
            echo "sidecar $1: running, pid $(cat "$dir/sidecar-$1.pid"), http 127.0.0.1:$2, admin 127.0.0.1:$3"
        else
            echo "sidecar $1: not running"
        fi
    done
}

case "${1:-up}" in
up) up ;;
down) down ;;
status) status ;;
reset) down; rm -rf "$dir"; echo "mesh: data removed" ;;
-h | --help | help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
*) echo "mesh.sh: unknown command \"$1\" (up, status, down, reset)" >&2; exit 2 ;;
esac
