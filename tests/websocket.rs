//! MQTT over WebSocket, with peers nobody here wrote on the other end: squall's engine against
//! aedes served by websocket-stream (npm), paho-mqtt's websockets transport against squall's
//! broker (tungstenite), squall against squall's broker over `ws://` and `wss://` (two
//! implementations of the framing: squall's client frames its own), and a server that breaks
//! the protocol in the ways a client must refuse.

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

use squall_broker::{Listener, TlsFiles};
use squall_controller::report::{Report, Status};
use support::ca::TestCa;

const SCENARIO: &str = r#"
[run]
duration = "2s"
drain = "1s"
[[group]]
name = "pub"
clients = 20
[group.publish]
topic = "ws/{i}"
qos = 1
interval = "50ms"
[[group]]
name = "sub"
clients = 2
[group.subscribe]
filters = ["ws/#"]
qos = 1
"#;

/// squall's broker on a `ws://` and a `wss://` listener (a test CA's certificate for
/// localhost, written in `dir`), and the CA's file.
async fn ws_broker(dir: &std::path::Path) -> (squall_broker::Broker, std::path::PathBuf) {
    let ca = TestCa::new("squall ws test CA");
    let ca_pem = ca.write_ca(dir, "ca.pem");
    let server = ca.issue(dir, "server", &["localhost", "127.0.0.1"]);
    let tls = Some(TlsFiles { cert: server.cert.clone(), key: server.key.clone(), client_ca: None });
    let broker = support::broker(|c| {
        c.listeners = vec![
            Listener { addr: "127.0.0.1:0".parse().unwrap(), tls: None, ws: true },
            Listener { addr: "127.0.0.1:0".parse().unwrap(), tls, ws: true },
        ]
    })
    .await;
    (broker, ca_pem)
}

/// Every message sent reached both subscribers, latency measured end to end.
fn assert_delivered(r: &Report) {
    assert_eq!(r.verdict.status, Status::Pass, "{:?} {:?}", r.verdict, r.errors);
    let published = r.counters["published_qos1"];
    assert!(published >= 700, "20 clients × 20/s × 2 s: {published}");
    let d = &r.delivery.all;
    assert_eq!(
        (d.expected, d.delivered, d.lost, d.duplicates),
        (2 * published, 2 * published, 0, 0),
        "{d:?}"
    );
    assert!(r.latency["e2e"].raw.as_ref().unwrap().count >= 2 * published);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squall_over_ws_and_wss_against_squalls_broker() {
    let dir = support::mosquitto::readable_dir();
    let (broker, ca_pem) = ws_broker(dir.path()).await;
    let (ws, wss) = (broker.addrs()[0], broker.addrs()[1]);
    let r = support::run(support::plan(SCENARIO, &format!("ws://{ws}/mqtt"), dir.path())).await;
    assert_delivered(&r);
    // arrivals are stamped by the kernel under the WebSocket layer too
    assert!(
        r.latency.get("read_wait").is_some_and(|l| l.raw.as_ref().is_some_and(|p| p.count > 0)),
        "read_wait"
    );
    let b = broker.stats();
    assert_eq!(b.messages_in[1], r.counters["published_qos1"], "{b:?}");

    let with_ca = format!("{SCENARIO}\n[target.tls]\nca = \"{}\"\n", ca_pem.display());
    let r =
        support::run(support::plan(&with_ca, &format!("wss://localhost:{}/mqtt", wss.port()), dir.path()))
            .await;
    assert_delivered(&r);
    assert!(r.counters["tls_handshakes"] >= 22, "every client over TLS: {:?}", r.counters["tls_handshakes"]);
    broker.shutdown().await;
}

/// Kills a child process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squall_over_ws_against_aedes() {
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop/node/node_modules");
    assert!(
        modules.join("websocket-stream").is_dir(),
        "aedes and websocket-stream are not installed at {}: run the README's test command (bash scripts/test.sh)",
        modules.display()
    );
    let port = support::mosquitto::free_port();
    let _aedes = Proc(
        Command::new("node")
            .args(["tests/interop/aedes_broker.js", &port.to_string(), "ws"])
            .env("NODE_PATH", &modules)
            .stdout(Stdio::null())
            .spawn()
            .expect("node runs"),
    );
    support::wait_for_port(port, "aedes over WebSocket");
    let dir = tempfile::tempdir().unwrap();
    // aedes speaks 3.1.1 (the scenario's default protocol)
    let r = support::run(support::plan(SCENARIO, &format!("ws://127.0.0.1:{port}/mqtt"), dir.path())).await;
    assert_delivered(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_websockets_against_squalls_broker() {
    let dir = support::mosquitto::readable_dir();
    let (broker, ca_pem) = ws_broker(dir.path()).await;
    let (ws, wss) = (broker.addrs()[0], broker.addrs()[1]);
    for (port, extra) in
        [(ws.port(), vec![]), (wss.port(), vec!["tls".to_string(), ca_pem.display().to_string()])]
    {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .args(["tests/interop/paho_ws.py", "localhost", &port.to_string(), "/mqtt", "200"])
                .args(extra)
                .output()
                .expect("python3 runs")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("received 200"), "{stdout}");
    }
    broker.shutdown().await;
}

/// A server that answers the upgrade as `answer` says, then sends `then`: what a client must
/// refuse, it refuses, and the run says so by kind.
fn hostile_server(answer: fn(&str) -> String, then: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(50) {
            let Ok(mut s) = conn else { return };
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).to_string();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or_default()
                .trim()
                .to_string();
            let _ = s.write_all(answer(&key).as_bytes());
            let _ = s.write_all(then);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    port
}

fn upgrade(key: &str) -> String {
    let accept = squall_agent::mqtt::websocket::accept_key(key);
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_breaks_websocket_is_refused_by_kind() {
    const ONE: &str = "[run]\nduration = \"500ms\"\nramp_timeout = \"3s\"\n[[group]]\nname = \"c\"\nclients = 2\n[group.reconnect]\nenabled = false\n[group.subscribe]\nfilters = [\"x\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let cases: [(fn(&str) -> String, &'static [u8], &str); 4] = [
        // the upgrade refused, or accepted with the wrong key: the handshake failed
        (|_| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(), b"", "websocket"),
        (|_| upgrade("not the key sent"), b"", "websocket"),
        // upgraded, then a CONNACK in a masked frame, or in a text frame: a protocol error
        (upgrade, &[0x82, 0x84, 1, 2, 3, 4, 0x21, 0x00, 0x03, 0x04], "protocol_error"),
        (upgrade, &[0x81, 0x04, 0x20, 0x02, 0x00, 0x00], "protocol_error"),
    ];
    for (answer, then, kind) in cases {
        let port = hostile_server(answer, then);
        let r = support::run(support::plan(ONE, &format!("ws://127.0.0.1:{port}/mqtt"), dir.path())).await;
        assert_eq!(r.counters["connects"], 0, "{kind}: {:?}", r.errors);
        assert!(r.errors.iter().any(|e| e.kind == kind), "wanted {kind}: {:?}", r.errors);
    }
}

/// `squall check` over `ws://`: every check passes against squall's broker, as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squall_check_over_ws() {
    let broker = support::broker(|c| {
        c.listeners = vec![Listener { addr: "127.0.0.1:0".parse().unwrap(), tls: None, ws: true }]
    })
    .await;
    let url = format!("ws://{}/mqtt", broker.addrs()[0]);
    let out = tokio::task::spawn_blocking(move || support::squall().args(["check", &url]).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(" 0 failed") && stdout.contains("skipped: plain ws://"), "{stdout}");
    broker.shutdown().await;
}
