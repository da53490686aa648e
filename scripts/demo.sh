#!/usr/bin/env bash
# The main job: builds vipr and shows the Kubernetes tutorial's service (VIP 192.0.2.10:8088
# in front of four backends on 8080) spreading flows over its backends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q --release -p vipr --locked
vipr=target/release/vipr
echo "\$ vipr validate config/examples/tutorial.yaml"
$vipr validate config/examples/tutorial.yaml
echo
echo "\$ vipr simulate -c config/examples/tutorial.yaml --flows 1000"
$vipr simulate -c config/examples/tutorial.yaml --flows 1000
for port in 40000 40001 40002 40003; do
  echo "\$ vipr trace -c config/examples/tutorial.yaml 198.51.100.7:$port 192.0.2.10:8088 tcp"
  $vipr trace -c config/examples/tutorial.yaml "198.51.100.7:$port" 192.0.2.10:8088 tcp
  echo
done
