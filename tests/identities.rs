//! Per-device identities from a file: each client connects as its row says (client id,
//! username, password), on one agent or split over agent processes, against a real mosquitto
//! that checks every password, and squall's broker that records every client id.

mod support;

use std::collections::BTreeSet;

use support::mosquitto::Mosquitto;

/// `n` devices: dev-0 … with user-k / secret-k; the row of `wrong` has a wrong password.
fn identities(n: usize, wrong: Option<usize>) -> String {
    let mut csv = "client_id,username,password\n".to_string();
    for k in 0..n {
        let pass = if Some(k) == wrong { "not-the-secret".to_string() } else { format!("secret-{k}") };
        csv += &format!("dev-{k},user-{k},{pass}\n");
    }
    csv
}

fn scenario(devices: usize) -> String {
    format!(
        r#"
[run]
duration = "1s"
drain = "500ms"
[[group]]
name = "devices"
clients = {devices}
identities = "devices.csv"
[group.reconnect]
enabled = false
[group.publish]
topic = "id/{{i}}"
qos = 1
interval = "100ms"
[[group]]
name = "sink"
clients = 1
username = "sink"
password = "sink-secret"
[group.subscribe]
filters = ["id/#"]
qos = 1
"#
    )
}

/// mosquitto with a password for each device (and the sink), and the scenario beside it.
fn broker_and_files(devices: usize, wrong: Option<usize>) -> Mosquitto {
    let users: Vec<(String, String)> = (0..devices)
        .map(|k| (format!("user-{k}"), format!("secret-{k}")))
        .chain([("sink".to_string(), "sink-secret".to_string())])
        .collect();
    let m = Mosquitto::start_with(
        |port| format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file passwd\n"),
        |dir| {
            let pairs: Vec<(&str, &str)> = users.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
            Mosquitto::password_file(dir, &pairs);
            std::fs::write(dir.join("devices.csv"), identities(devices, wrong)).unwrap();
            std::fs::write(dir.join("s.toml"), scenario(devices)).unwrap();
        },
    );
    m
}

#[test]
fn each_device_connects_as_its_row_even_split_over_agent_processes() {
    // 30 devices, row 7 with a wrong password, over two agent processes: a row given to the
    // wrong client would be refused too
    let m = broker_and_files(30, Some(7));
    let report = m.dir.path().join("r.json");
    let out = support::squall()
        .arg("run")
        .arg(m.dir.path().join("s.toml"))
        .args(["--target", &m.url(), "--local-agents", "2", "--live", "off", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["agents"], 2, "{stdout}");
    assert_eq!(r["counters"]["connects"], 30, "29 devices and the sink: {stdout}");
    let refused: Vec<&serde_json::Value> =
        r["errors"].as_array().unwrap().iter().filter(|e| e["kind"] == "connect_refused").collect();
    assert_eq!(refused.len(), 1, "{:?}", r["errors"]);
    // 3.1.1's "not authorized"
    assert_eq!(
        (refused[0]["code"].as_u64(), refused[0]["count"].as_u64()),
        (Some(5), Some(1)),
        "{refused:?}"
    );
    assert_eq!(r["delivery"]["all"]["lost"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_come_from_the_file() {
    let broker = support::broker(|c| c.timeline = true).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices.csv"), "client_id\nthermostat-A\nthermostat-B\nlock-C\n")
        .unwrap();
    let text = "[run]\nduration = \"500ms\"\n[[group]]\nname = \"d\"\nclients = 3\nidentities = \"devices.csv\"\n[group.publish]\ntopic = \"t/{i}\"\ninterval = \"100ms\"\n";
    let r = support::run(support::plan(text, &support::url(&broker), dir.path())).await;
    assert_eq!(r.counters["connects"], 3);
    let ids: BTreeSet<String> = broker.timeline_clients().into_iter().collect();
    assert_eq!(ids, ["lock-C", "thermostat-A", "thermostat-B"].into_iter().map(String::from).collect());
}

#[test]
fn a_bad_identities_file_is_refused_with_where_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[[group]]\nname = \"d\"\nclients = 3\nidentities = \"ids.csv\"\n[group.subscribe]\nfilters = [\"x\"]\n";
    std::fs::write(dir.path().join("s.toml"), base).unwrap();
    for (csv, says) in [
        ("client_id\na\nb\n", "has 2 identities for 3 clients"),
        ("client_id,secret\na,1\nb,2\nc,3\n", "unknown column `secret`"),
        ("client_id\na\nb\na\n", "client id `a` again"),
        ("client_id,username\na,u\n,v\nc,w\n", "line 3: no client id"),
        ("client_id\na\nb,extra\nc\n", "ids.csv"),
    ] {
        std::fs::write(dir.path().join("ids.csv"), csv).unwrap();
        let out = support::squall().args(["run", "--check"]).arg(dir.path().join("s.toml")).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{csv:?}: {err}");
        assert!(err.contains(says) && err.contains("s.toml:4:"), "{csv:?}: {err}");
    }
    std::fs::remove_file(dir.path().join("ids.csv")).unwrap();
    let out = support::squall().args(["run", "--check"]).arg(dir.path().join("s.toml")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("relative to the scenario file"));
}
