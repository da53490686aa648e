#!/usr/bin/env bash
# A real kube-apiserver (v1.20.2, from Debian's kubernetes source package) with etcd on
# loopback, for vipr-k8s's integration tests. See shared/REAL-APISERVER.md.
#
#   scripts/k8s-apiserver.sh build    # once: apt packages, source, build; cached
#   scripts/k8s-apiserver.sh start    # etcd + kube-apiserver on 127.0.0.1, waits for /readyz
#   scripts/k8s-apiserver.sh stop     # stops both (the state dir is kept)
#   scripts/k8s-apiserver.sh restart-apiserver   # API server outage and return, etcd kept
#   scripts/k8s-apiserver.sh compact  # compacts etcd to its current revision (410 Gone)
#   scripts/k8s-apiserver.sh env      # prints VIPR_K8S_URL, VIPR_K8S_TOKEN and
#                                     # VIPR_K8S_AUDIT_LOG for tests
#
# Every step is idempotent: a finished step leaves a marker and is skipped next time.
# Build output lives in $VIPR_K8S_CACHE (default /var/cache/vipr/k8s); the running
# server's state (etcd data, certs, token, logs, pids) in $VIPR_K8S_STATE
# (default /run/vipr-k8s). Ports: etcd 127.0.0.1:$VIPR_K8S_ETCD_PORT and the next one
# (default 2379/2380), API 127.0.0.1:$VIPR_K8S_PORT (default 6443).
#
# Authorization is RBAC, as in a cluster: the tests' token is in group system:masters
# (everything allowed); deploy/'s ServiceAccount gets only its roles. Requests of
# service accounts (nobody else's) go to an audit log at Metadata level, so a test can
# see exactly which calls a controller made (controlplane/k8s/tests/rbac.rs).
set -euo pipefail

CACHE=${VIPR_K8S_CACHE:-/var/cache/vipr/k8s}
STATE=${VIPR_K8S_STATE:-/run/vipr-k8s}
BIN=$CACHE/bin
GOPATH_DIR=$CACHE/gopath
TREE=$GOPATH_DIR/src/k8s.io/kubernetes
API_PORT=${VIPR_K8S_PORT:-6443}
ETCD_PORT=${VIPR_K8S_ETCD_PORT:-2379}
ETCD=http://127.0.0.1:$ETCD_PORT
ETCD_PEER=http://127.0.0.1:$((ETCD_PORT + 1))
AUDIT_LOG=$STATE/audit.log
TOKEN=vipr-integration-token
# Documentation prefix: no real address is ever a Service's cluster IP here.
SERVICE_RANGE=198.51.100.0/24

log() { echo "k8s-apiserver: $*" >&2; }

build() {
    if [[ -x $BIN/kube-apiserver ]] && "$BIN/kube-apiserver" --version >/dev/null 2>&1; then
        log "kube-apiserver already built: $BIN/kube-apiserver"
        return
    fi
    mkdir -p "$CACHE/src" "$BIN"

    if [[ ! -f $CACHE/.apt-done ]]; then
        log "installing golang-go etcd-server reflect2 openssl"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            golang-go etcd-server golang-github-modern-go-reflect2-dev openssl curl >/dev/null
        touch "$CACHE/.apt-done"
    fi

    if [[ ! -f $CACHE/.source-done ]]; then
        # A deb-src entry mirroring the machine's own deb entry (same URIs, suites,
        # components, keyring).
        local src=/etc/apt/sources.list.d/vipr-deb-src.sources
        if [[ ! -f $src ]]; then
            if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
                sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$src"
            else
                grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' \
                    >/etc/apt/sources.list.d/vipr-deb-src.list
            fi
            apt-get update -qq
        fi
        (cd "$CACHE/src" && apt-get source --download-only kubernetes >/dev/null)
        touch "$CACHE/.source-done"
    fi

    if [[ ! -f $CACHE/.unpack-done ]]; then
        log "unpacking into $TREE"
        rm -rf "$TREE" "$CACHE/src/unpack"
        mkdir -p "$CACHE/src/unpack" "$(dirname "$TREE")"
        tar -xzf "$(ls "$CACHE"/src/kubernetes_*.orig.tar.gz | head -n1)" -C "$CACHE/src/unpack"
        mv "$(find "$CACHE/src/unpack" -mindepth 1 -maxdepth 1 -type d | head -n1)" "$TREE"
        # The bundled reflect2 1.0.1 is unsafe with Go >= 1.18; Debian ships 1.0.2.
        rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
        cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 \
            "$TREE/vendor/github.com/modern-go/reflect2"
        touch "$CACHE/.unpack-done"
    fi

    export GOPATH=$GOPATH_DIR GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
    export GOCACHE=$CACHE/gocache
    cd "$TREE"

    if [[ ! -f $CACHE/.openapi-done ]]; then
        log "generating pkg/generated/openapi (not in the source package)"
        nice go build -o "$BIN/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
        # Every package tagged for openapi-gen, by import path; vendored ones by their
        # own path (GOPATH mode resolves them through vendor/, which links staging/).
        local pkgs
        pkgs=$(grep -rlE --include='*.go' '^// ?\+k8s:openapi-gen=' . \
            | grep -v -e /testdata/ -e /code-generator/ -e /sample-apiserver/ \
            | xargs -n1 dirname | sort -u \
            | sed -e 's#^\./vendor/##' -e 's#^\./staging/src/##' -e 's#^\./#k8s.io/kubernetes/#' \
            | paste -sd, -)
        nice "$BIN/openapi-gen" --input-dirs "$pkgs" \
            -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
            -h hack/boilerplate/boilerplate.generatego.txt \
            --report-filename "$CACHE/openapi-violations.txt" >"$CACHE/openapi-gen.log" 2>&1 \
            || { tail -n 30 "$CACHE/openapi-gen.log" >&2; exit 1; }
        touch "$CACHE/.openapi-done"
    fi

    log "building kube-apiserver (a few minutes on 2 cores)"
    local ldflags=""
    for p in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version \
        k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
        ldflags+=" -X $p.gitVersion=v1.20.2 -X $p.gitMajor=1 -X $p.gitMinor=20"
        ldflags+=" -X $p.gitTreeState=clean"
    done
    nice go build -o "$BIN/kube-apiserver.tmp" -ldflags "$ldflags" ./cmd/kube-apiserver
    mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
    log "built $BIN/kube-apiserver"
}

running() { [[ -f $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

start_etcd() {
    running etcd && return
    mkdir -p "$STATE/etcd"
    setsid etcd --data-dir "$STATE/etcd" --name vipr \
        --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
        --listen-peer-urls "$ETCD_PEER" --initial-advertise-peer-urls "$ETCD_PEER" \
        --initial-cluster "vipr=$ETCD_PEER" \
        >"$STATE/etcd.log" 2>&1 &
    echo $! >"$STATE/etcd.pid"
}

start_apiserver() {
    running kube-apiserver && return
    if [[ ! -f $STATE/sa.key ]]; then
        openssl genrsa -out "$STATE/sa.key" 2048 2>/dev/null
        openssl rsa -in "$STATE/sa.key" -pubout -out "$STATE/sa.pub" 2>/dev/null
    fi
    echo "$TOKEN,admin,admin-uid,system:masters" >"$STATE/tokens.csv"
    cat >"$STATE/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
POLICY
    setsid "$BIN/kube-apiserver" --etcd-servers="$ETCD" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
        --cert-dir="$STATE/certs" \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$STATE/sa.pub" \
        --service-account-signing-key-file="$STATE/sa.key" \
        --token-auth-file="$STATE/tokens.csv" --authorization-mode=RBAC \
        --audit-policy-file="$STATE/audit-policy.yaml" --audit-log-path="$AUDIT_LOG" \
        --service-cluster-ip-range="$SERVICE_RANGE" \
        --feature-gates=EndpointSliceNodeName=true,EndpointSliceTerminatingCondition=true \
        >"$STATE/kube-apiserver.log" 2>&1 &
    echo $! >"$STATE/kube-apiserver.pid"
    local i
    for i in $(seq 1 120); do
        if curl -skf -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz" \
            >/dev/null 2>&1; then
            log "ready on https://127.0.0.1:$API_PORT"
            return
        fi
        running kube-apiserver || { tail -n 30 "$STATE/kube-apiserver.log" >&2; exit 1; }
        sleep 1
    done
    log "not ready after 120 s; see $STATE/kube-apiserver.log"
    exit 1
}

stop_one() {
    if running "$1"; then
        kill "$(cat "$STATE/$1.pid")"
        local i
        for i in $(seq 1 50); do running "$1" || break; sleep 0.2; done
    fi
    rm -f "$STATE/$1.pid"
}

case "${1:-}" in
build) build ;;
start)
    build
    mkdir -p "$STATE"
    start_etcd
    start_apiserver
    ;;
stop)
    stop_one kube-apiserver
    stop_one etcd
    ;;
restart-apiserver)
    stop_one kube-apiserver
    sleep "${2:-0}"
    start_apiserver
    ;;
compact)
    rev=$(ETCDCTL_API=3 etcdctl --endpoints="$ETCD" endpoint status -w json \
        | sed -n 's/.*"revision":\([0-9]*\).*/\1/p')
    ETCDCTL_API=3 etcdctl --endpoints="$ETCD" compact "$rev"
    ;;
env)
    echo "VIPR_K8S_URL=https://127.0.0.1:$API_PORT"
    echo "VIPR_K8S_TOKEN=$TOKEN"
    echo "VIPR_K8S_AUDIT_LOG=$AUDIT_LOG"
    ;;
*)
    sed -n '2,22p' "$0"
    exit 2
    ;;
esac
