"""Checks of squall's embedded broker with paho-mqtt, a client nobody here wrote.

usage: paho_checks.py HOST PORT [CHECK ...]
Prints one line per check: "ok NAME" or "FAIL NAME: why". Exit code 1 if any failed.
Every wait is bounded.
"""
import socket
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT = sys.argv[1], int(sys.argv[2])
V3, V5 = mqtt.MQTTv311, mqtt.MQTTv5


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """A paho client with a message inbox and bounded waits."""

    def __init__(self, proto=V3, client_id=None, clean=True, will=None, keepalive=30, session_expiry=None):
        self.proto = proto
        self.client_id = client_id or uid("paho")
        if proto == V5:
            self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=V5)
        else:
            self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=V3, clean_session=clean)
        self.clean, self.keepalive, self.session_expiry = clean, keepalive, session_expiry
        self.inbox = []
        self.cv = threading.Condition()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present = None
        self.subacks = []
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        if will:
            topic, payload, qos, props = will
            self.c.will_set(topic, payload, qos=qos, retain=False, properties=props)

    def _on_message(self, c, u, m):
        with self.cv:
            self.inbox.append(m)
            self.cv.notify_all()

    def _on_connect(self, c, u, flags, rc, props=None):
        self.session_present = flags.session_present
        self.connected.set()

    def _on_disconnect(self, c, u, flags, rc, props=None):
        self.disconnected.set()

    def _on_subscribe(self, c, u, mid, rcs, props=None):
        with self.cv:
            self.subacks.append(mid)
            self.cv.notify_all()

    def connect(self):
        if self.proto == V5:
            props = Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                props.SessionExpiryInterval = self.session_expiry
            self.c.connect(HOST, PORT, keepalive=self.keepalive, clean_start=self.clean, properties=props)
        else:
            self.c.connect(HOST, PORT, keepalive=self.keepalive)
        self.c.loop_start()
        if not self.connected.wait(5):
            raise AssertionError(f"{self.client_id}: no CONNACK")
        return self

    def subscribe(self, topic, qos):
        _, mid = self.c.subscribe(topic, qos)
        with self.cv:
            if not self.cv.wait_for(lambda: mid in self.subacks, 5):
                raise AssertionError(f"no SUBACK for {topic}")

    def wait_messages(self, n, timeout=5):
        with self.cv:
            self.cv.wait_for(lambda: len(self.inbox) >= n, timeout)
            return list(self.inbox)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Abrupt close: the socket goes away without DISCONNECT."""
        sock = self.c.socket()
        self.c.loop_stop()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def publish_all(proto, topic, n, qos, retain=False):
    p = Client(proto).connect()
    for i in range(n):
        info = p.c.publish(topic, f"m{i}".encode(), qos=qos, retain=retain)
        info.wait_for_publish(5)
    p.stop()


def check_pubsub(proto, qos):
    topic = uid("interop/pubsub")
    s = Client(proto).connect()
    s.subscribe(topic, qos)
    publish_all(proto, topic, 20, qos)
    got = s.wait_messages(20)
    s.stop()
    assert len(got) == 20, f"received {len(got)} of 20"
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(20)], "order or content"
    assert all(m.qos == qos for m in got), f"QoS {[m.qos for m in got]}"


def check_retained(proto):
    topic = uid("interop/retained")
    publish_all(proto, topic, 1, 1, retain=True)
    s = Client(proto).connect()
    s.subscribe(topic, 1)
    got = s.wait_messages(1)
    s.stop()
    assert len(got) == 1 and got[0].retain and got[0].payload == b"m0", f"retained not delivered: {got}"
    p = Client(proto).connect()
    p.c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    p.stop()
    s = Client(proto).connect()
    s.subscribe(topic, 1)
    got = s.wait_messages(1, timeout=0.7)
    s.stop()
    assert not got, "cleared retained message still delivered"


def observer(proto, topic):
    o = Client(proto).connect()
    o.subscribe(topic, 1)
    return o


def check_will_abrupt(proto):
    topic = uid("interop/will")
    o = observer(proto, topic)
    a = Client(proto, will=(topic, b"gone", 1, None)).connect()
    a.kill()
    got = o.wait_messages(1)
    o.stop()
    assert [m.payload for m in got] == [b"gone"], f"will not delivered: {got}"


def check_no_will_on_clean_disconnect(proto):
    topic = uid("interop/will")
    o = observer(proto, topic)
    a = Client(proto, will=(topic, b"gone", 1, None)).connect()
    a.stop()
    got = o.wait_messages(1, timeout=1.0)
    o.stop()
    assert not got, f"will sent after a clean DISCONNECT: {got}"


def check_will_on_keepalive_expiry(proto):
    topic = uid("interop/will")
    o = observer(proto, topic)
    a = Client(proto, will=(topic, b"silent", 1, None), keepalive=1).connect()
    a.c.loop_stop()  # no more PINGREQ; the socket stays open
    start = time.monotonic()
    got = o.wait_messages(1, timeout=6)
    waited = time.monotonic() - start
    o.stop()
    sock = a.c.socket()
    if sock is not None:
        sock.close()
    assert [m.payload for m in got] == [b"silent"], f"will not delivered after keepalive expiry: {got}"
    assert waited >= 1.0, f"will after {waited:.2f}s: before 1.5 x keepalive"


def check_will_delay_v5():
    topic = uid("interop/will")
    o = observer(V5, topic)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 2
    a = Client(V5, will=(topic, b"later", 1, props), session_expiry=60).connect()
    start = time.monotonic()
    a.kill()
    got = o.wait_messages(1, timeout=6)
    waited = time.monotonic() - start
    o.stop()
    assert [m.payload for m in got] == [b"later"], f"delayed will not delivered: {got}"
    assert waited >= 1.8, f"will delay 2s, delivered after {waited:.2f}s"


def check_disconnect_with_will_v5():
    topic = uid("interop/will")
    o = observer(V5, topic)
    a = Client(V5, will=(topic, b"asked", 1, None)).connect()
    a.c.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=4))
    a.c.loop_stop()
    got = o.wait_messages(1)
    o.stop()
    assert [m.payload for m in got] == [b"asked"], f"DISCONNECT 0x04 must publish the will: {got}"


def check_persistent_session(proto):
    topic = uid("interop/session")
    cid = uid("paho-persist")
    kw = dict(client_id=cid, clean=False, session_expiry=300 if proto == V5 else None)
    b = Client(proto, **kw).connect()
    b.subscribe(topic, 1)
    b.stop()
    publish_all(proto, topic, 5, 1)
    b = Client(proto, **kw).connect()
    got = b.wait_messages(5)
    present = b.session_present
    b.stop()
    assert present, "CONNACK session present expected on resume"
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(5)], f"offline queue: {got}"


def check_takeover(proto):
    cid = uid("paho-twin")
    a = Client(proto, client_id=cid).connect()
    b = Client(proto, client_id=cid).connect()
    ok = a.disconnected.wait(5)
    b.stop()
    a.c.loop_stop()
    assert ok, "the first connection was not closed when its id connected again"


def check_shared_subscription_v5():
    topic = uid("interop/shared")
    s1, s2 = Client(V5).connect(), Client(V5).connect()
    s1.subscribe(f"$share/g/{topic}", 1)
    s2.subscribe(f"$share/g/{topic}", 1)
    publish_all(V5, topic, 10, 1)
    time.sleep(0.3)  # nothing more is coming: let the last deliveries land
    n1, n2 = len(s1.inbox), len(s2.inbox)
    s1.stop()
    s2.stop()
    assert n1 + n2 == 10 and n1 > 0 and n2 > 0, f"shared: {n1} + {n2}"


def check_expired_session(proto):
    """Against a broker told to expire sessions: a persistent client comes back to nothing."""
    cid = uid("paho-expire")
    kw = dict(client_id=cid, clean=False, session_expiry=300 if proto == V5 else None)
    b = Client(proto, **kw).connect()
    b.stop()
    b = Client(proto, **kw).connect()
    present = b.session_present
    b.stop()
    assert present is False, f"session present {present}: the broker was told to expire it"


CHECKS = {
    **{f"pubsub_qos{q}_v311": (lambda q=q: check_pubsub(V3, q)) for q in range(3)},
    **{f"pubsub_qos{q}_v5": (lambda q=q: check_pubsub(V5, q)) for q in range(3)},
    "retained_v311": lambda: check_retained(V3),
    "retained_v5": lambda: check_retained(V5),
    "will_abrupt_v311": lambda: check_will_abrupt(V3),
    "will_abrupt_v5": lambda: check_will_abrupt(V5),
    "no_will_on_clean_disconnect": lambda: check_no_will_on_clean_disconnect(V3),
    "will_on_keepalive_expiry": lambda: check_will_on_keepalive_expiry(V3),
    "will_delay_v5": check_will_delay_v5,
    "disconnect_with_will_v5": check_disconnect_with_will_v5,
    "persistent_session_v311": lambda: check_persistent_session(V3),
    "persistent_session_v5": lambda: check_persistent_session(V5),
    "takeover": lambda: check_takeover(V3),
    "shared_subscription_v5": check_shared_subscription_v5,
}
# run only when named: they need a broker configured for them
EXTRA = {
    "expired_session_v311": lambda: check_expired_session(V3),
    "expired_session_v5": lambda: check_expired_session(V5),
}

if __name__ == "__main__":
    names = sys.argv[3:] or list(CHECKS)
    failed = 0
    for name in names:
        try:
            {**CHECKS, **EXTRA}[name]()
            print(f"ok {name}", flush=True)
        except Exception as e:  # one check's failure must not hide the others
            failed += 1
            print(f"FAIL {name}: {e!r}", flush=True)
    sys.exit(1 if failed else 0)
