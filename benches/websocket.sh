#!/usr/bin/env bash
# What the WebSocket layer costs: the same load over mqtt:// and ws:// against one squall broker
# process (its --listen and --ws-listen), alternating, three runs each. Prints the tester's CPU
# per message, the broker's, and e2e latency, from each run's report.
#
#   bash benches/websocket.sh [RATE]      (default 50000 msg/s: one publisher → one subscriber, QoS 0)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-50000}
cargo build -q --release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
trap 'kill "${bpid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
tcp=$(free_port); ws=$(free_port)
target/release/squall broker --listen "127.0.0.1:$tcp" --ws-listen "127.0.0.1:$ws" >/dev/null & bpid=$!
sleep 0.5
cat > "$dir/s.toml" <<TOML
[run]
duration = "10s"
drain = "1s"
[[group]]
name = "pub"
clients = 1
[group.publish]
topic = "bench"
qos = 0
payload_size = 64
group_rate = $RATE
[[group]]
name = "sub"
clients = 1
[group.subscribe]
filters = ["bench"]
TOML
for k in 1 2 3; do
  for url in "mqtt://127.0.0.1:$tcp" "ws://127.0.0.1:$ws/mqtt"; do
    b0=$(python3 -c "import os; f=open('/proc/$bpid/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))")
    target/release/squall run "$dir/s.toml" --target "$url" --live off --report "$dir/r.json" >/dev/null
    python3 - "$dir/r.json" "$url" "$bpid" "$b0" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
f = open(f"/proc/{sys.argv[3]}/stat").read().rsplit(")", 1)[1].split()
broker = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") - float(sys.argv[4])
n = sum(r["counters"][f"received_qos{q}"] for q in range(3))
tester = r["counters"]["agent_cpu_us"] / 1e6
e2e = r["latency"]["e2e"]["raw"]
print(f"{sys.argv[2]:<32} received {n:>9,}  tester {tester * 1e6 / n:5.2f} µs/msg  broker {broker * 1e6 / n:5.2f} µs/msg  e2e raw p50 {e2e['p50_us']} µs p99 {e2e['p99_us']} µs")
PY
  done
done
