//! squall's embedded broker with clients nobody here wrote: paho-mqtt (Python) and
//! mosquitto_pub/mosquitto_sub. QoS 0/1/2 both ways, retained messages, wills (abrupt close,
//! keepalive expiry, clean DISCONNECT, MQTT 5 delay and DISCONNECT-with-will), persistent
//! sessions, takeover, shared subscriptions.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

fn paho_checks(port: u16) -> (bool, String) {
    let out = Command::new("python3")
        .arg("tests/interop/paho_checks.py")
        .arg("127.0.0.1")
        .arg(port.to_string())
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt_interoperates() {
    let broker = support::broker(|_| {}).await;
    let port = broker.local_addr().port();
    let (ok, text) = tokio::task::spawn_blocking(move || paho_checks(port)).await.unwrap();
    assert!(
        !text.contains("ModuleNotFoundError"),
        "paho-mqtt is missing: run the README's test command\n{text}"
    );
    let passed = text.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(ok && passed == 18, "paho checks ({passed} of 18 passed):\n{text}");
    let s = broker.stats();
    assert!(s.wills_published >= 5, "{s:?}");
    assert!(s.takeovers >= 1, "{s:?}");
}

fn tool(name: &str) -> Command {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return Command::new(p);
        }
    }
    panic!("{name} is missing: run the README's test command (it installs mosquitto-clients)");
}

/// Waits (bounded) until the broker counts exactly `n` subscriptions: a subscriber is ready,
/// or a finished one is gone.
async fn subscriptions(broker: &squall_broker::Broker, n: u64) {
    for _ in 0..500 {
        if broker.stats().subscriptions == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not {n} subscriptions after 5s: {:?}", broker.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_interoperate() {
    let broker = support::broker(|_| {}).await;
    let port = broker.local_addr().port().to_string();
    for qos in ["0", "1", "2"] {
        for v in ["mqttv311", "mqttv5"] {
            let topic = format!("mq/{qos}/{v}");
            subscriptions(&broker, 0).await;
            let sub = tool("mosquitto_sub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    v,
                    "-q",
                    qos,
                    "-t",
                    &topic,
                    "-C",
                    "3",
                    "-W",
                    "10",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            subscriptions(&broker, 1).await;
            for i in 0..3 {
                let st = tool("mosquitto_pub")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port,
                        "-V",
                        v,
                        "-q",
                        qos,
                        "-t",
                        &topic,
                        "-m",
                        &format!("hello {i}"),
                    ])
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            let out = tokio::task::spawn_blocking(move || sub.wait_with_output()).await.unwrap().unwrap();
            assert!(out.status.success(), "mosquitto_sub QoS {qos} {v} timed out");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 0\nhello 1\nhello 2\n", "QoS {qos} {v}");
        }
    }

    // retained: set, seen by a newcomer, cleared
    let pub_retained = |args: &[&str]| {
        let mut a = vec!["-h", "127.0.0.1", "-p", &port, "-t", "mq/retained", "-r", "-q", "1"];
        a.extend_from_slice(args);
        assert!(tool("mosquitto_pub").args(&a).status().unwrap().success());
    };
    pub_retained(&["-m", "kept"]);
    let out = tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "mq/retained", "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    pub_retained(&["-n"]);
    assert_eq!(broker.stats().retained, 0, "an empty retained payload clears it");

    // the will of a client killed without DISCONNECT
    subscriptions(&broker, 0).await;
    let watcher = tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "mq/will", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    subscriptions(&broker, 1).await;
    let mut dying = tool("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "mq/nothing",
            "--will-topic",
            "mq/will",
            "--will-payload",
            "dead",
            "--will-qos",
            "1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    subscriptions(&broker, 2).await;
    dying.kill().unwrap(); // SIGKILL: the socket closes, no DISCONNECT
    let _ = dying.wait();
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dead\n", "the will reached the watcher");
    assert_eq!(broker.stats().wills_published, 1);
}
