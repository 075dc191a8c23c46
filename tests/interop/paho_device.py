"""A device as firmware teams write one with paho-mqtt 2.1 (PyPI), for `squall device`.

    python3 paho_device.py HOST PORT PROTOCOL(3.1.1|5)

It keeps a persistent session (3.1.1: clean_session False; MQTT 5: clean start on the first
connect only, session expiry 300 s), subscribes to cmd/paho at QoS 1 in on_connect unless the
session was resumed (as paho's documentation advises), publishes a retained QoS 1 message on
dev/paho every 0.5 s (MQTT 5: with the user property device=paho), keepalive 2 s, and lets paho
reconnect by itself: reconnect_delay_set(0.05, 5), paho's doubling delay. Runs until killed.
PAHO_MIN_DELAY, PAHO_MAX_DELAY and PAHO_KEEPALIVE (seconds) set them otherwise (real time:
benches/device_realtime.sh).
"""

import os
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
v5 = proto == "5"

client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id="paho-device-v5" if v5 else "paho-device",
    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    clean_session=None if v5 else False,
)
client.reconnect_delay_set(
    min_delay=float(os.environ.get("PAHO_MIN_DELAY", "0.05")),
    max_delay=float(os.environ.get("PAHO_MAX_DELAY", "5")),
)


def on_connect(c, userdata, flags, reason_code, properties):
    if not reason_code.is_failure and not flags.session_present:
        c.subscribe("cmd/paho", qos=1)


client.on_connect = on_connect
connect_props = None
if v5:
    connect_props = Properties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = 300
client.connect_async(host, port, keepalive=int(os.environ.get("PAHO_KEEPALIVE", "2")), properties=connect_props)
client.loop_start()

publish_props = None
if v5:
    publish_props = Properties(PacketTypes.PUBLISH)
    publish_props.UserProperty = [("device", "paho")]
while True:
    client.publish("dev/paho", b"hello from paho", qos=1, retain=True, properties=publish_props)
    time.sleep(0.5)
