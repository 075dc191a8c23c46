#!/usr/bin/env bash
# squall device in real time: paho-mqtt 2.1 with its delays as shipped devices use them
# (reconnect_delay_set(1, 120), keepalive 10 s) through the backoff cases, which the test suite
# runs with times scaled down. Prints each case's verdict line; the JSON report is left in
# $OUT (default target/device-realtime.json).
#   bash benches/device_realtime.sh            (about 6 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/device-realtime.json}
cargo build --release -q --bin squall
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
suite=$(mktemp)
cat > "$suite" <<JSON
{"tests":[
 {"name":"connect","configuration":{"EXECUTION_TIMEOUT":"60"},"test":{"id":"MQTT_Connect","version":"0.0.0"}},
 {"name":"jitter","configuration":{"EXECUTION_TIMEOUT":"600"},"test":{"id":"MQTT_Connect_Jitter_Backoff_Retries","version":"0.0.0"}},
 {"name":"server-disconnect","configuration":{"EXECUTION_TIMEOUT":"600"},"test":{"id":"MQTT_Reconnect_Backoff_Retries_On_Server_Disconnect","version":"0.0.0"}},
 {"name":"unstable","configuration":{"EXECUTION_TIMEOUT":"600"},"test":{"id":"MQTT_Reconnect_Backoff_Retries_On_Unstable_Connection","version":"0.0.0"}},
 {"name":"no-pingresp","configuration":{"EXECUTION_TIMEOUT":"120"},"test":{"id":"MQTT_No_Ack_PingResp","version":"0.0.0"}}
]}
JSON
./target/release/squall device --listen "127.0.0.1:$port" --suite "$suite" --report "$OUT" &
endpoint=$!
sleep 1
PAHO_MIN_DELAY=1 PAHO_MAX_DELAY=120 PAHO_KEEPALIVE=10 python3 tests/interop/paho_device.py 127.0.0.1 "$port" 3.1.1 >/dev/null &
paho=$!
status=0
wait "$endpoint" || status=$?
kill "$paho" 2>/dev/null || true
rm -f "$suite"
echo "exit $status; report in $OUT"
