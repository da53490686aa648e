#!/usr/bin/env bash
# The real-API-server tier of vipr's tests: builds (once, cached) and starts a
# kube-apiserver v1.20.2 with etcd on loopback (scripts/k8s-apiserver.sh), runs the
# vipr-k8s tests against it (tests/live.rs: the live source's scenarios; tests/rbac.rs:
# the controller under deploy/'s ServiceAccount, RBAC checked against the audit log;
# tests/deploy.rs needs no server), and always stops both servers again, also when a
# test fails or the run is interrupted.
#
#   scripts/k8s-test.sh [ARGS]   # ARGS go to the test binaries (a test name filter, ...)
#
# Idempotent: a finished build is skipped; servers an interrupted run left behind are
# stopped and started afresh. Needs root (apt, /run, /var/cache). Takes about a minute
# once built, 30 s of it an API server outage the tests cause on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."

API=scripts/k8s-apiserver.sh
STATE=${VIPR_K8S_STATE:-/run/vipr-k8s}
log() { echo "k8s-test: $*" >&2; }

# The 410 Gone scenario compacts etcd with etcdctl; Debian's etcd-server has only etcd.
if ! command -v etcdctl >/dev/null; then
    log "installing etcd-client (etcdctl)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client >/dev/null
fi

bash "$API" build

# Stops what the script started; an API server that outlives its SIGTERM (it keeps
# serving open watches for up to a minute) is killed by its pid.
stop_servers() {
    local pid
    pid=$(cat "$STATE/kube-apiserver.pid" 2>/dev/null || true)
    bash "$API" stop || true
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
}
stop_servers
# An empty cluster every run: objects an interrupted run left behind (a LoadBalancer
# Service holding a pool address, say) would change what the scenarios see.
rm -rf "$STATE/etcd"
trap stop_servers EXIT
bash "$API" start

set -a
eval "$(bash "$API" env)"
set +a
log "testing against $VIPR_K8S_URL"
# The scenarios share one API server and take turns anyway; one thread keeps their
# output in order. Every test target of vipr-k8s runs: live, rbac, deploy and the
# unit tests.
cargo test -p vipr-k8s --features live --locked -- --test-threads=1 "$@"
# `vipr run` with a `kubernetes:` section against the same server: a LoadBalancer
# Service allocated, programmed into the XDP dataplane and reached over real TCP in
# network namespaces (ignored in plain `cargo test`, which has no API server).
VIPR_K8S_STATE=$STATE cargo test -p vipr --test kubernetes --locked -- --include-ignored --test-threads=1 "$@"
