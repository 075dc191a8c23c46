#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests talk to when it is
# missing (mosquitto, its clients, docker-compose, iproute2, chromium, nodejs and npm from Debian; paho-mqtt,
# jsonschema, PyYAML and kubernetes-validate from PyPI; aedes and websocket-stream from npm; rumqttd
# from crates.io), then
# runs every test of every crate. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have mosquitto || missing+=(mosquitto)
have mosquitto_pub || missing+=(mosquitto-clients)
have docker-compose || missing+=(docker-compose)
have ip || missing+=(iproute2)
have chromium || missing+=(chromium)
have node || missing+=(nodejs)
have npm || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]} (the tests start their own brokers on free ports)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c "import paho.mqtt, jsonschema, yaml" >/dev/null 2>&1 || ! have kubernetes-validate; then
  echo "installing paho-mqtt, jsonschema, PyYAML and kubernetes-validate (interop, schema, YAML and deploy tests)"
  python3 -m pip install -q "paho-mqtt==2.1.0" "jsonschema>=4" "PyYAML>=6" "kubernetes-validate==1.37.0"
fi
# brokers nobody here wrote, pinned, for the squall check matrix (tests/check_matrix.rs)
if [ ! -d target/interop/node/node_modules/aedes ] || [ ! -d target/interop/node/node_modules/websocket-stream ]; then
  echo "installing aedes 0.51.3 and websocket-stream 5.5.2 (npm) under target/interop/node"
  mkdir -p target/interop/node
  npm install --silent --no-audit --no-fund --prefix target/interop/node aedes@0.51.3 websocket-stream@5.5.2 >/dev/null
fi
if [ ! -x target/interop/rumqttd/bin/rumqttd ]; then
  # its own lock file pins a `time` that no longer builds on this toolchain: resolve afresh
  echo "installing rumqttd 0.19.0 (cargo install, about 2 minutes) under target/interop/rumqttd"
  cargo install -q rumqttd --version 0.19.0 --root target/interop/rumqttd
fi

cargo test --workspace --locked "$@"
# benchmarks are not run in CI (BENCHMARKS.md says how), but they must keep compiling
cargo check --locked -q -p squall-benches --benches
