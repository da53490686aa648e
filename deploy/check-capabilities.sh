#!/usr/bin/env bash
# Checks that the capabilities the DaemonSet grants (deploy/kubernetes/overlays/
# daemonset/daemonset.yaml, `capabilities.add`) are enough for `vipr run` and that
# each of them is needed: runs the agent as root with only those capabilities in its
# bounding set (as a container with `drop: [ALL]` and `add: [...]` gets them) and
# no_new_privs (allowPrivilegeEscalation: false), then once without each one.
#
#   sudo bash deploy/check-capabilities.sh [VIPR_BINARY]   # default target/release/vipr
#
# With all of them the agent must load and attach its XDP program, pin it, make the
# backend's next hop a managed neighbour, and adopt its pins when run again; without
# any one of them it must fail. Everything happens in two network namespaces this
# script makes (a veth pair between them, documentation addresses) and removes again;
# the pins go to /sys/fs/bpf/vipr/capcheck/ and are removed (`vipr stop`).
set -euo pipefail
cd "$(dirname "$0")/.."

VIPR=$(realpath "${1:-target/release/vipr}")
MANIFEST=deploy/kubernetes/overlays/daemonset/daemonset.yaml
NS=vipr-capcheck
WORK=$(mktemp -d)
log() { echo "check-capabilities: $*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "must run as root"; exit 1; }
[[ -x $VIPR ]] || { log "$VIPR: no vipr binary (cargo build --release -p vipr)"; exit 1; }

# The `- NAME` items of the container's capabilities.add list.
mapfile -t CAPS < <(awk '
    /capabilities:/ { in_caps = 1 }
    in_caps && /add:/ { in_add = 1; next }
    in_add && /^ *- [A-Z_]+ *$/ { print $2; next }
    in_add && /^ *[a-zA-Z]+:/ { exit }
' "$MANIFEST")
[[ ${#CAPS[@]} -gt 0 ]] || { log "no capabilities.add list in $MANIFEST"; exit 1; }
log "the DaemonSet grants: ${CAPS[*]}"

cleanup() {
    "$VIPR" stop --instance capcheck >/dev/null 2>&1 || true
    ip netns del "$NS" 2>/dev/null || true
    ip netns del "$NS-b" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cleanup
WORK=$(mktemp -d)

ip netns add "$NS"
ip netns add "$NS-b"
ip -n "$NS" link add vc0 type veth peer name vc1 netns "$NS-b"
ip -n "$NS" addr add 192.0.2.1/24 dev vc0
ip -n "$NS-b" addr add 192.0.2.21/24 dev vc1
for n in "$NS" "$NS-b"; do ip -n "$n" link set lo up; done
ip -n "$NS" link set vc0 up
ip -n "$NS-b" link set vc1 up
cat >"$WORK/vipr.yaml" <<'EOF'
instance: capcheck
dataplane: xdp
interfaces:
  - name: vc0
    attach: native
vips:
  - name: web
    address: 192.0.2.10
    port: 80
    backends:
      - address: 192.0.2.21
        port: 8080
EOF

# Runs the agent for a few seconds with only the capabilities in "$@"; nsenter enters
# only the network namespace, so the pins land in the host's bpffs as through the
# DaemonSet's hostPath mount.
run_with() {
    local set=-all
    local c
    for c in "$@"; do set+=",+${c,,}"; done
    set +e
    timeout 6 nsenter --net="/run/netns/$NS" \
        setpriv --bounding-set="$set" --inh-caps=-all --no-new-privs \
        "$VIPR" run --config "$WORK/vipr.yaml" >"$WORK/out" 2>&1
    local rc=$?
    set -e
    # 124: still serving when the timeout ended it, as it should be.
    [[ $rc -eq 124 ]]
}

fail() { log "FAIL: $*"; sed 's/^/    /' "$WORK/out" | head -n 20 >&2; exit 1; }

run_with "${CAPS[@]}" || fail "vipr run did not serve with ${CAPS[*]}"
grep -q "serves 1 VIPs" "$WORK/out" || fail "no VIP served with ${CAPS[*]}"
ip -n "$NS" link show vc0 | grep -q xdp || fail "no XDP program on vc0"
ip -n "$NS" neigh show 192.0.2.21 | grep -q managed || fail "the next hop is not a managed neighbour"
run_with "${CAPS[@]}" || fail "vipr run did not serve again with ${CAPS[*]}"
grep -q "adopted its pinned dataplane" "$WORK/out" || fail "the restarted agent did not adopt its pins"
log "ok: ${CAPS[*]} serve, pin, manage the neighbour and adopt the pins"
"$VIPR" stop --instance capcheck >/dev/null 2>&1

for leave_out in "${CAPS[@]}"; do
    rest=()
    for c in "${CAPS[@]}"; do [[ $c == "$leave_out" ]] || rest+=("$c"); done
    ip -n "$NS" neigh del 192.0.2.21 dev vc0 2>/dev/null || true
    if run_with "${rest[@]}"; then
        fail "vipr run served without $leave_out: is it needed?"
    fi
    why=$(grep -o 'refused program [a-z_]*\|failed to create map [^:]*\|not permitted\|denied' \
        "$WORK/out" | head -n1)
    log "ok: without $leave_out it fails (${why:-see its output})"
    "$VIPR" stop --instance capcheck >/dev/null 2>&1 || true
done
log "every capability is needed and together they are enough"
