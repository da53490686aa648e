#!/usr/bin/env bash
# Installs everything vipr's build, tests, demo and benchmarks need on a fresh Debian
# bookworm machine. Idempotent: each step checks first, so a second run takes seconds.
# Called by scripts/demo.sh and scripts/test.sh; nobody needs to run it by hand.
set -euo pipefail

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (it installs packages and creates network namespaces)" >&2
  exit 1
fi

# Debian packages. llvm-22-dev is what bpf-linker links against.
APT_PACKAGES=(
  build-essential pkg-config clang-22 llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev
  iproute2 iptables nftables conntrack iperf3 curl ethtool procps psmisc
  # The DPDK driver (dataplane/dpdk): DPDK 22.11 headers, libraries and PMDs; its
  # build.rs runs bindgen, which loads clang-22's libclang.
  libdpdk-dev libclang1-22
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export PATH="$HOME/.cargo/bin:$PATH"

# Userspace builds with the stable toolchain; the eBPF crate needs nightly + rust-src.
if ! rustup toolchain list | grep -q '^nightly'; then
  log "rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi
for c in clippy rustfmt; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done

if ! command -v bpf-linker >/dev/null 2>&1; then
  log "cargo install bpf-linker (llvm-22), about a minute"
  LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install --locked bpf-linker --no-default-features --features llvm-22
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "cargo install cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

# bpffs for pinned maps (present on most systems; mount it if not).
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf || true
fi
log "ready"
