//! Separate hosts, as far as one machine can make them: the broker and each agent in a network
//! namespace of its own, wired by veth pairs to a bridge the test makes, the controller on the
//! bridge's address. Nothing shares a loopback: the link runs over TLS on a real interface,
//! agents reach the broker only through the bridge, and their allow lists must admit it.
//!
//! Needs root (or CAP_NET_ADMIN) and `ip`; where namespaces cannot be made it says so loudly
//! and passes without running.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The namespaces and the bridge, removed when dropped.
struct Net {
    tag: String,
    namespaces: Vec<String>,
    bridge: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// A bridge at `<prefix>.1/24` and one namespace per name at `<prefix>.2`, `.3`, …
    fn make(prefix: &str, names: &[&str]) -> Result<Net, String> {
        // one tag per net: the tests of this file run side by side in one process
        static NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("sq{}{n}", std::process::id() % 10_000);
        let bridge = format!("{tag}br");
        let mut net = Net { tag: tag.clone(), namespaces: Vec::new(), bridge: bridge.clone() };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (k, name) in names.iter().enumerate() {
            let ns = format!("{tag}{name}");
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let (host_end, ns_end) = (format!("{tag}h{k}"), format!("{tag}n{k}"));
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &ns_end])?;
            ip(&["link", "set", &host_end, "master", &bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["-n", &ns, "addr", "add", &format!("{prefix}.{}/24", k + 2), "dev", &ns_end])?;
            ip(&["-n", &ns, "link", "set", &ns_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.tag)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// squall, run inside network namespace `ns`.
fn squall_in(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_squall"));
    c
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(c: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(s) = c.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn agents_and_broker_on_separate_network_namespaces() {
    let prefix = format!("10.{}.{}", 200 + std::process::id() % 50, (std::process::id() / 50) % 250);
    let net = match Net::make(&prefix, &["brk", "a0", "a1"]) {
        Ok(n) => n,
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED agents_and_broker_on_separate_network_namespaces: cannot make network namespaces here ({e}); run the tests as root to cover separate hosts ***\n"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let controller_ip = format!("{prefix}.1");
    let broker_addr = format!("{prefix}.2:1883");
    // the broker, reachable only through the bridge
    let _broker = Killed(
        squall_in(&net.ns("brk"))
            .args(["broker", "--listen", &broker_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = support::ca::TestCa::new("netns-ca");
    let ca_pem = ca.write_ca(dir.path(), "ca.pem");
    let cert = ca.issue(dir.path(), "controller", &[&controller_ip]);
    std::fs::write(dir.path().join("token"), "a-netns-test-token-long-enough").unwrap();
    std::fs::write(
        dir.path().join("s.toml"),
        format!(
            r#"[target]
urls = ["mqtt://{broker_addr}"]
[run]
duration = "2s"
drain = "1s"
[[group]]
name = "sensors"
clients = 40
[group.publish]
topic = "ns/{{i}}"
qos = 1
interval = "100ms"
[[group]]
name = "backend"
clients = 2
[group.subscribe]
filters = ["ns/+"]
qos = 1
"#
        ),
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let port =
        std::net::TcpListener::bind(format!("{controller_ip}:0")).unwrap().local_addr().unwrap().port();
    let mut controller = Killed(
        Command::new(env!("CARGO_BIN_EXE_squall"))
            .arg("controller")
            .arg(dir.path().join("s.toml"))
            .args(["--listen", &format!("{controller_ip}:{port}"), "--agents", "2", "--live", "off", "-q"])
            .args(["--agent-timeout", "60s", "--token-file"])
            .arg(dir.path().join("token"))
            .arg("--tls-cert")
            .arg(&cert.cert)
            .arg("--tls-key")
            .arg(&cert.key)
            .arg("--report")
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut agents: Vec<Killed> = ["a0", "a1"]
        .iter()
        .map(|a| {
            Killed(
                squall_in(&net.ns(a))
                    .args(["agent", "--once", "--name", a, "--controller"])
                    .arg(format!("https://{controller_ip}:{port}"))
                    .arg("--ca")
                    .arg(&ca_pem)
                    .arg("--token-file")
                    .arg(dir.path().join("token"))
                    .args(["--allow-target", &format!("{prefix}.0/24")])
                    .arg("--tally-file")
                    .arg(dir.path().join(format!("tally-{a}.json")))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let code = wait_exit(&mut controller.0, Duration::from_secs(120));
    let mut err = String::new();
    if let Some(mut e) = controller.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(code, Some(0), "controller stderr:\n{err}");
    for a in &mut agents {
        assert_eq!(wait_exit(&mut a.0, Duration::from_secs(30)), Some(0));
    }
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let per = r["per_agent"].as_array().unwrap();
    assert_eq!(per.len(), 2);
    for a in per {
        assert_eq!(a["status"], "finished", "{a}");
        // a real interface: the round trip is measured, and the offset is within it
        assert!(a["clock"]["bound_us"].as_f64().unwrap() > 0.0, "{a}");
    }
    let c = |k: &str| r["counters"][k].as_u64().unwrap();
    assert_eq!(c("connects"), 42);
    let d = &r["delivery"]["all"];
    assert!(c("published_qos1") > 0);
    assert_eq!(d["expected"].as_u64().unwrap(), 2 * c("published_qos1"), "{d}");
    assert_eq!(d["delivered"], d["expected"], "{d}");
    assert_eq!(d["lost"], 0, "{d}");
    // the merge against each agent's own tally, counter by counter
    let files: Vec<_> = ["a0", "a1"].iter().map(|a| dir.path().join(format!("tally-{a}.json"))).collect();
    support::assert_counters_match_tallies(&r, &files);
}

/// Passwords never cross a plaintext link off loopback, wherever they come from: the group's
/// own, or a device's row of an identities file. The controller refuses the run before any
/// assignment leaves.
#[test]
fn identities_with_passwords_never_cross_a_plaintext_link() {
    let prefix = format!("10.{}.{}", 150 + std::process::id() % 50, (std::process::id() / 50) % 250);
    let net = match Net::make(&prefix, &["a0"]) {
        Ok(n) => n,
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED identities_with_passwords_never_cross_a_plaintext_link: cannot make network namespaces here ({e}) ***\n"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let controller_ip = format!("{prefix}.1");
    std::fs::write(dir.path().join("token"), "a-netns-test-token-long-enough").unwrap();
    std::fs::write(dir.path().join("ids.csv"), "client_id,password\nd0,secret-0\nd1,secret-1\n").unwrap();
    std::fs::write(
        dir.path().join("s.toml"),
        format!(
            "[target]\nurls = [\"mqtt://{prefix}.9:1883\"]\n[[group]]\nname = \"d\"\nclients = 2\nidentities = \"ids.csv\"\n[group.subscribe]\nfilters = [\"x\"]\n"
        ),
    )
    .unwrap();
    let port =
        std::net::TcpListener::bind(format!("{controller_ip}:0")).unwrap().local_addr().unwrap().port();
    let mut controller = Killed(
        Command::new(env!("CARGO_BIN_EXE_squall"))
            .arg("controller")
            .arg(dir.path().join("s.toml"))
            .args(["--listen", &format!("{controller_ip}:{port}"), "--agents", "1", "--insecure-link", "-q"])
            .args(["--agent-timeout", "60s", "--token-file"])
            .arg(dir.path().join("token"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _agent = Killed(
        squall_in(&net.ns("a0"))
            .args(["agent", "--once", "--name", "a0", "--controller"])
            .arg(format!("http://{controller_ip}:{port}"))
            .arg("--token-file")
            .arg(dir.path().join("token"))
            .args(["--allow-target", &format!("{prefix}.0/24")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let code = wait_exit(&mut controller.0, Duration::from_secs(60));
    let mut out = String::new();
    if let Some(mut p) = controller.0.stdout.take() {
        let _ = p.read_to_string(&mut out);
    }
    if let Some(mut p) = controller.0.stderr.take() {
        let _ = p.read_to_string(&mut out);
    }
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("passwords travel only over TLS"), "{out}");
}
