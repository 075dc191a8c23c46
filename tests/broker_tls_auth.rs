//! The embedded broker's TLS listener (server certificate, mutual TLS) and password check.

mod support;

use squall_broker::{Listener, TlsFiles};
use squall_controller::report::Status;
use support::ca::TestCa;

const SCENARIO: &str = r#"
thresholds = ["lost == 0"]
[run]
duration = "1s"
drain = "300ms"
[[group]]
name = "pub"
clients = 3
protocol = "5"
[group.reconnect]
enabled = false
[group.publish]
topic = "sec/{i}"
qos = 1
interval = "100ms"
[[group]]
name = "sub"
clients = 1
protocol = "5"
[group.reconnect]
enabled = false
[group.subscribe]
filters = ["sec/#"]
qos = 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_listeners() {
    let dir = support::mosquitto::readable_dir();
    let ca = TestCa::new("squall broker test CA");
    let ca_pem = ca.write_ca(dir.path(), "ca.pem");
    let server = ca.issue(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let client = ca.issue(dir.path(), "client", &["squall-client"]);
    let tls = |client_ca: Option<std::path::PathBuf>| {
        Some(TlsFiles { cert: server.cert.clone(), key: server.key.clone(), client_ca })
    };
    let broker = support::broker(|c| {
        c.listeners = vec![
            Listener { addr: "127.0.0.1:0".parse().unwrap(), tls: tls(None), ws: false },
            Listener { addr: "127.0.0.1:0".parse().unwrap(), tls: tls(Some(ca_pem.clone())), ws: false },
        ]
    })
    .await;
    let (tls_addr, mtls_addr) = (broker.addrs()[0], broker.addrs()[1]);

    let with_ca = format!("{SCENARIO}\n[target.tls]\nca = \"{}\"\n", ca_pem.display());
    let r = support::run(support::plan(&with_ca, &format!("mqtts://{tls_addr}"), dir.path())).await;
    assert_eq!(r.verdict.status, Status::Pass, "{:?} {:?}", r.verdict, r.errors);
    assert!(r.delivery.all.delivered > 0);

    // mutual TLS: without a client certificate the handshake fails, with one it passes
    let r = support::run(support::plan(&with_ca, &format!("mqtts://{mtls_addr}"), dir.path())).await;
    assert_eq!(r.verdict.status, Status::Error);
    assert!(
        r.errors
            .iter()
            .any(|e| e.kind == "tls" || e.kind == "closed_by_broker" || e.kind == "connection_lost"),
        "{:?}",
        r.errors
    );
    assert_eq!(r.counters["connects"], 0);
    let with_cert = format!(
        "{SCENARIO}\n[target.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca_pem.display(),
        client.cert.display(),
        client.key.display()
    );
    let r = support::run(support::plan(&with_cert, &format!("mqtts://{mtls_addr}"), dir.path())).await;
    assert_eq!(r.verdict.status, Status::Pass, "{:?} {:?}", r.verdict, r.errors);

    // a third-party client over TLS
    let port = tls_addr.port().to_string();
    let pub_out = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--cafile",
            ca_pem.to_str().unwrap(),
            "-t",
            "sec/x",
            "-m",
            "hi",
            "-q",
            "1",
        ])
        .output()
        .expect("mosquitto_pub runs");
    assert!(pub_out.status.success(), "{}", String::from_utf8_lossy(&pub_out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked() {
    let broker = support::broker(|c| {
        c.users = vec![("alice".into(), "s3cret".into())];
        c.allow_anonymous = false;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let with = |user: &str, pw: &str| {
        SCENARIO.replace(
            "protocol = \"5\"\n",
            &format!("protocol = \"5\"\nusername = \"{user}\"\npassword = \"{pw}\"\n"),
        )
    };
    let r = support::run(support::plan(&with("alice", "s3cret"), &support::url(&broker), dir.path())).await;
    assert_eq!(r.verdict.status, Status::Pass, "{:?}", r.errors);
    let r = support::run(support::plan(&with("alice", "nope"), &support::url(&broker), dir.path())).await;
    let refused: Vec<_> =
        r.errors.iter().filter(|e| e.kind == "connect_refused").map(|e| (e.code, e.count)).collect();
    assert_eq!(refused, vec![(Some(0x86), 4)], "bad user name or password");
    let r = support::run(support::plan(SCENARIO, &support::url(&broker), dir.path())).await;
    let refused: Vec<_> =
        r.errors.iter().filter(|e| e.kind == "connect_refused").map(|e| (e.code, e.count)).collect();
    assert_eq!(refused, vec![(Some(0x87), 4)], "anonymous: not authorized");
}
