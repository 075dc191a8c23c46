#!/usr/bin/env bash
# A capacity search against a real broker, with the broker's own saturation beside it.
#
#   bash benches/capacity.sh            (THREADS=N sets squall's engine threads)
#
# 1. squall run benches/capacity.toml against a fresh mosquitto (fan-in at QoS 1, 200 devices
#    → 1 subscriber): the highest rate at which e2e p99 < 10 ms and nothing goes missing, with
#    each step's figures and the broker's CPU (--broker-pid).
#    The same search again with mosquitto's queue limit lifted (max_queued_messages 0), and the
#    two compared with squall compare: two broker configurations by their capacity.
# 2. The reference, in the same run: mqttwrk (a peer tool, crates.io, pinned) floods a fresh
#    mosquitto with the same shape (200 publishers → 1 subscriber, QoS 1, 64 bytes) as fast as
#    it takes it: the broker's saturation throughput. A capacity at an SLO sits below it.
#
# Installs mqttwrk with cargo install when it is missing. Both tools share this host's cores
# with the broker: read the tester health the report gives for each step.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mqttwrk >/dev/null || cargo install mqttwrk --version 0.2.0 --locked
cargo build -q --release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
trap 'kill "${mpid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
# a fresh mosquitto; extra config lines as arguments
start_mosquitto() {
  port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\nlog_dest none\n' "$port" > "$dir/m.conf"
  for line in "$@"; do echo "$line" >> "$dir/m.conf"; done
  mosquitto -c "$dir/m.conf" & mpid=$!
  sleep 0.5
}

search() { # label, mosquitto config lines…
  local label=$1; shift
  start_mosquitto "$@"
  echo "== $label: squall run benches/capacity.toml --target mqtt://127.0.0.1:$port --broker-pid $mpid ${THREADS:+--threads $THREADS}"
  target/release/squall run benches/capacity.toml --target "mqtt://127.0.0.1:$port" --broker-pid "$mpid" \
    ${THREADS:+--threads $THREADS} --label "mosquitto=$label" --live lines --report "$dir/$label.json" \
    2>"$dir/$label.live" | sed -n '/steps/,/capacity/p' || true
  python3 - "$dir/$label.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["capacity"]
print(f"capacity: ended {c['ended']}, {c['steps']} steps, found {c['found'] and c['found']['offered_rate']}, broke {c['broke'] and c['broke']['offered_rate']}")
b = r.get("broker_process") or {}
print(f"broker CPU over the run: {b.get('cpu_s', 0):.1f} s; tester CPU: {r['counters']['agent_cpu_us'] / 1e6:.1f} s")
for s in r["stages"]:
    if s.get("tester_suspect"):
        print(f"  step {s['index'] + 1}: tester suspect: {', '.join(s['tester_suspect'])}")
PY
  kill "$mpid"; wait "$mpid" 2>/dev/null || true
}

search default
search unlimited-queue "max_queued_messages 0"
echo "== squall compare default.json unlimited-queue.json"
target/release/squall compare "$dir/default.json" "$dir/unlimited-queue.json" > "$dir/compare.txt" || true
grep -E 'capacity msg/s|WARNING' "$dir/compare.txt" || true

# the reference: the broker's saturation throughput for the same shape, by a peer tool (its
# subscriber waits for every message, so the queue limit that drops them is lifted)
start_mosquitto "max_queued_messages 0"
echo "== reference: mqttwrk bench -p 200 -s 1 -n 2000 -m 64 --publish-qos 1 --subscribe-qos 1 (400,000 messages), max_queued_messages 0"
mqttwrk bench -S 127.0.0.1 -P "$port" -p 200 -s 1 -n 2000 -m 64 --publish-qos 1 --subscribe-qos 1 2>&1 \
  | grep -E 'Stats|throughput|publish_count'
