#!/usr/bin/env bash
# The main job: builds vipr and runs `vipr demo`, the Kubernetes tutorial's Service
# (VIP 192.0.2.10:8088 in front of four backends on 8080) built in network namespaces
# with vipr's XDP program in the middle. It removes everything it made on exit and Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q --release -p vipr --locked
exec target/release/vipr demo
