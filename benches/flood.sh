#!/usr/bin/env bash
# Side by side (issue 8, goal 2): one publisher → one subscriber, QoS 0, 64-byte payloads,
# offered far above what one mosquitto takes, driven by mqttwrk and by squall, each against a
# fresh mosquitto with the same configuration. Prints each tool's rate, its own CPU per
# message and the broker's.
#
#   bash benches/flood.sh [MESSAGES]     (default 2,000,000 for mqttwrk; squall runs 10 s, with
#                                        read_coalesce 50 µs and 0)
#
# Installs mqttwrk (crates.io, pinned) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000000}
command -v mqttwrk >/dev/null || cargo install mqttwrk --version 0.2.0 --locked

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_s() { python3 -c "import os,sys; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))"; }

port=$(free_port)
dir=$(mktemp -d)
trap 'kill "${mpid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\nlog_dest none\n' "$port" > "$dir/m.conf"
mosquitto -c "$dir/m.conf" & mpid=$!
sleep 0.5
b0=$(cpu_s "$mpid")
# the tool's own CPU from its rusage, as the kernel counted it
python3 - "$port" "$N" > "$dir/mqttwrk.txt" <<'PY'
import resource, subprocess, sys, time
port, n = sys.argv[1], sys.argv[2]
t0 = time.time()
out = subprocess.run(["mqttwrk", "bench", "-S", "127.0.0.1", "-P", port, "-n", n, "-p", "1", "-s", "1",
                      "-m", "64", "--publish-qos", "0", "--subscribe-qos", "0"], capture_output=True, text=True).stdout
wall = time.time() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(out)
print(f"WALL {wall:.2f} CPU {ru.ru_utime + ru.ru_stime:.2f}")
PY
b1=$(cpu_s "$mpid")
kill "$mpid"; wait "$mpid" 2>/dev/null || true
python3 - "$dir/mqttwrk.txt" "$N" "$b0" "$b1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
n, b = int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3])
pub = float(re.search(r"PubStats \{[^}]*throughput: ([\d.]+)", text, re.S).group(1))
sub = float(re.search(r"SubStats \{[^}]*throughput: ([\d.]+)", text, re.S).group(1))
recv = int(re.search(r"SubStats \{[^}]*publish_count: (\d+)", text, re.S).group(1))
wall, cpu = map(float, re.search(r"WALL ([\d.]+) CPU ([\d.]+)", text).groups())
print(f"mqttwrk 0.2.0: published {pub:,.0f}/s, received {sub:,.0f}/s ({recv:,} of {n:,}); "
      f"tester CPU {cpu:.2f}s = {cpu * 1e6 / max(recv, 1):.2f} µs/msg; broker CPU {b:.2f}s = {b * 1e6 / max(recv, 1):.2f} µs/msg")
PY
for rc in 50 0; do
  echo "squall, read_coalesce ${rc} µs (cargo bench -p squall-benches --bench e2e -- throughput --broker mosquitto --qos 0 --rate 1000000 --seconds 10 --read-coalesce-us ${rc}):"
  cargo bench -q -p squall-benches --bench e2e -- throughput --broker mosquitto --qos 0 --rate 1000000 --seconds 10 --read-coalesce-us "$rc" 2>/dev/null \
    | grep -E "QoS|CPU|per message|e2e"
done
