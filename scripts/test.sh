#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, format, clippy, unit + property + fixture
# tests (userspace and in the kernel), end-to-end tests in network namespaces, the
# Kubernetes tier against a real kube-apiserver, a bounded fuzz run, and a smoke run of
# every benchmark. Needs root (BPF, network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p target
: > target/test.log

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p vipr-k8s --features live --all-targets --locked -- -D warnings
cargo clippy -p vipr --features dpdk --all-targets --locked -- -D warnings
cargo clippy -p vipr-bench --features dpdk --all-targets --locked -- -D warnings

step "cargo test (unit, property, fixtures in userspace and in the kernel, end to end)"
cargo test --workspace --locked 2>&1 | tee -a target/test.log

step "the DaemonSet's capabilities are enough for vipr run, and each is needed"
bash deploy/check-capabilities.sh target/debug/vipr

step "DPDK end to end (net_af_packet ports on the testbed's veths, --no-huge; the dpdk feature)"
cargo test -p vipr --features dpdk --test e2e_dpdk --locked 2>&1 | tee -a target/test.log

step "Kubernetes tier against a real kube-apiserver"
bash scripts/k8s-test.sh 2>&1 | tee -a target/test.log

step "fuzz the pipeline for ${FUZZ_SECONDS:-30} s"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

step "benchmark smoke run"
cargo run -q -p vipr-bench --features dpdk --locked -- --smoke >/dev/null
cargo run -q -p vipr-bench --locked -- --smoke forward --tcp --ipv6 >/dev/null

# One closing line for CI: the sum over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "\n%d passed, %d failed, %d skipped\n", p, f, s }' target/test.log
