"""paho-mqtt (PyPI), a client nobody here wrote, over WebSocket against squall's broker:
    python3 paho_ws.py HOST PORT PATH N [tls CAFILE]
Subscribes to paho/ws/#, publishes N messages at QoS 1 to paho/ws/<k>, and prints
"received <n>" once it got them all back (or after 10 s with what came). Exit 0 if all came."""
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
got = set()
done = threading.Event()
subscribed = threading.Event()


def on_message(_c, _u, msg):
    got.add(msg.payload)
    if len(got) == n:
        done.set()


c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws", transport="websockets")
c.ws_set_options(path=path)
if len(sys.argv) > 6 and sys.argv[5] == "tls":
    c.tls_set(ca_certs=sys.argv[6], cert_reqs=ssl.CERT_REQUIRED)
c.on_message = on_message
c.on_subscribe = lambda *_a: subscribed.set()
c.connect(host, port, keepalive=10)
c.loop_start()
c.subscribe("paho/ws/#", qos=1)
if not subscribed.wait(5):
    sys.exit("no SUBACK")
for k in range(n):
    c.publish(f"paho/ws/{k}", f"m{k}".encode(), qos=1)
done.wait(10)
print(f"received {len(got)}")
c.disconnect()
c.loop_stop()
sys.exit(0 if len(got) == n else 1)
