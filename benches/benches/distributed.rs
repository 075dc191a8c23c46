//! Distributed bench programs: what splitting a run over agent processes costs, and how many
//! connections one box holds with several agents and several broker processes.
//!
//! They drive the release `squall` binary as a user would (build it first:
//! `cargo build --release`), every process a child of this program, so each one's CPU comes
//! from `wait4` (user + system, its own) and RSS from /proc while it runs.
//!
//! cargo bench -p squall-benches --bench distributed -- cost --agents 0,1,2,4 --rate 20000 --seconds 10
//! cargo bench -p squall-benches --bench distributed -- connections --agents 6 --brokers 6 --clients 100000
//! cargo bench -p squall-benches --bench distributed -- stalled --agents 6 --brokers 6 --clients 100000 --budget-mib 16 --payload 16384

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use squall_benches::{cpu_s, free_port, rss_kib};

struct Args {
    mode: String,
    agents: Vec<u32>,
    brokers: u32,
    clients: u32,
    rate: f64,
    seconds: u64,
    qos: u8,
    repeat: u32,
    /// `stalled`: each agent's unsent-bytes budget, MiB.
    budget_mib: u64,
    /// `stalled`: bytes per message (each client sends one a second).
    payload: u32,
    /// Agent engine threads: cores ÷ agents (at least 1) when set to 0.
    threads: Option<u32>,
    squall: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        agents: vec![0, 1, 2, 4],
        brokers: 1,
        clients: 100,
        rate: 20_000.0,
        seconds: 10,
        qos: 0,
        repeat: 1,
        budget_mib: 16,
        payload: 16384,
        threads: None,
        squall: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/squall"),
    };
    let mut it = std::env::args().skip(1).filter(|s| s != "--bench");
    while let Some(x) = it.next() {
        let mut val = || it.next().expect("a value");
        match x.as_str() {
            "--agents" => a.agents = val().split(',').map(|n| n.parse().unwrap()).collect(),
            "--brokers" => a.brokers = val().parse().unwrap(),
            "--clients" => a.clients = val().parse().unwrap(),
            "--rate" => a.rate = val().parse().unwrap(),
            "--seconds" => a.seconds = val().parse().unwrap(),
            "--qos" => a.qos = val().parse().unwrap(),
            "--repeat" => a.repeat = val().parse().unwrap(),
            "--budget-mib" => a.budget_mib = val().parse().unwrap(),
            "--payload" => a.payload = val().parse().unwrap(),
            "--threads" => a.threads = Some(val().parse().unwrap()),
            "--squall" => a.squall = val().into(),
            m if !m.starts_with('-') => a.mode = m.to_string(),
            other => panic!("unknown argument {other}"),
        }
    }
    if !a.squall.exists() {
        eprintln!(
            "{} is missing: run `cargo build --release` first (or give --squall PATH)",
            a.squall.display()
        );
        std::process::exit(2);
    }
    a
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// squall's broker in a process of its own.
fn broker(squall: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(squall)
        .args(["broker", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "the broker did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), port)
}

/// Waits for a child; its exit code and its own CPU seconds (user + system, from wait4).
fn wait_cpu(p: &mut Proc) -> (i32, f64) {
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = p.0.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4");
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (libc::WEXITSTATUS(status), t(ru.ru_utime) + t(ru.ru_stime))
}

/// A process and its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let kids = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        out.extend(kids.split_whitespace().filter_map(|k| k.parse::<u32>().ok()));
        i += 1;
    }
    out
}

/// RSS of a process and its descendants, KiB.
fn tree_rss(pid: u32) -> u64 {
    tree(pid).iter().map(|p| rss_kib(*p)).sum()
}

/// `squall run SCENARIO --local-agents N` writing its report to `report`, quietly.
fn local_run(squall: &Path, scenario: &Path, agents: u32, report: &Path) -> Proc {
    Proc(
        Command::new(squall)
            .arg("run")
            .arg(scenario)
            .args(["--local-agents", &agents.to_string(), "--live", "off", "-q", "--report"])
            .arg(report)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the report")).unwrap()
}

fn counter(r: &Value, k: &str) -> u64 {
    r["counters"][k].as_u64().unwrap_or(0)
}

fn main() {
    let a = args();
    println!(
        "machine: {} cores; squall: {}",
        std::thread::available_parallelism().unwrap(),
        a.squall.display()
    );
    match a.mode.as_str() {
        "cost" => cost(&a),
        "connections" => connections(&a),
        "stalled" => stalled(&a),
        other => panic!("mode cost|connections|stalled, not `{other}`"),
    }
}

/// Tester CPU per message at one total load, in one process (`--agents 0`) and split over
/// 1, 2, 4 … agent processes, with the controller's CPU and link bytes apart.
fn cost(a: &Args) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-bench-token-of-enough-length").unwrap();
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>9} {:>12} {:>12} {:>10} {:>14}",
        "agents",
        "published",
        "received",
        "tester s",
        "ctl s",
        "µs/message",
        "ctl µs/msg",
        "broker s",
        "link B/agent/s"
    );
    // rounds interleave the configurations, so a noisy minute on this shared machine hits
    // them alike; the medians come last
    let mut per_msg: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
    for (_, &n) in (0..a.repeat).flat_map(|r| a.agents.iter().map(move |n| (r, n))) {
        let (mut brk, port) = broker(&a.squall);
        let scenario = dir.path().join("s.toml");
        std::fs::write(
            &scenario,
            format!(
                "[target]\nurls = [\"mqtt://127.0.0.1:{port}\"]\n[run]\nduration = \"{}s\"\ndrain = \"1s\"\n\
                 [[group]]\nname = \"pub\"\nclients = {c}\n[group.publish]\ntopic = \"b/{{i}}\"\nqos = {q}\npayload_size = 64\ngroup_rate = {r}\n\
                 [[group]]\nname = \"sub\"\nclients = {c}\n[group.subscribe]\nfilters = [\"b/{{i}}\"]\nqos = {q}\n",
                a.seconds,
                c = a.clients,
                q = a.qos,
                r = a.rate
            ),
        )
        .unwrap();
        let rep = dir.path().join(format!("r{n}.json"));
        let b0 = cpu_s(brk.0.id());
        let w0 = Instant::now();
        let (ctl_cpu, agents_cpu) = if n == 0 {
            let mut run = Proc(
                Command::new(&a.squall)
                    .arg("run")
                    .arg(&scenario)
                    .args(["--live", "off", "-q", "--report"])
                    .arg(&rep)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let (code, cpu) = wait_cpu(&mut run);
            assert!(code == 0 || code == 1, "squall run exited {code}");
            (cpu, 0.0)
        } else {
            let listen = free_port();
            let mut ctl = Proc(
                Command::new(&a.squall)
                    .arg("controller")
                    .arg(&scenario)
                    .args(["--listen", &format!("127.0.0.1:{listen}"), "--agents", &n.to_string()])
                    .arg("--token-file")
                    .arg(&token)
                    .args(["--live", "off", "-q", "--report"])
                    .arg(&rep)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let mut agents: Vec<Proc> = (0..n)
                .map(|k| {
                    let mut cmd = Command::new(&a.squall);
                    cmd.args(["agent", "--once", "--name", &format!("a{k}"), "--controller"])
                        .arg(format!("http://127.0.0.1:{listen}"))
                        .arg("--token-file")
                        .arg(&token);
                    if let Some(t) = a.threads {
                        let cores = std::thread::available_parallelism().unwrap().get() as u32;
                        let t = if t == 0 { (cores / n).max(1) } else { t };
                        cmd.args(["--threads", &t.to_string()]);
                    }
                    Proc(cmd.spawn().unwrap())
                })
                .collect();
            let (code, ctl) = wait_cpu(&mut ctl);
            assert!(code == 0 || code == 1, "squall controller exited {code}");
            let agents_cpu: f64 = agents.iter_mut().map(|p| wait_cpu(p).1).sum();
            (ctl, agents_cpu)
        };
        let wall = w0.elapsed().as_secs_f64();
        let broker_cpu = cpu_s(brk.0.id()) - b0;
        let r = report(&rep);
        let published =
            counter(&r, "published_qos0") + counter(&r, "published_qos1") + counter(&r, "published_qos2");
        let received =
            counter(&r, "received_qos0") + counter(&r, "received_qos1") + counter(&r, "received_qos2");
        let msgs = (published + received).max(1) as f64;
        let tester = ctl_cpu + agents_cpu;
        let elapsed = r["elapsed_s"].as_f64().unwrap_or(wall).max(1e-9);
        let link: Vec<u64> =
            r["per_agent"].as_array().unwrap().iter().filter_map(|p| p["link_bytes_in"].as_u64()).collect();
        let link_per_agent_s =
            if link.is_empty() { 0.0 } else { link.iter().sum::<u64>() as f64 / link.len() as f64 / elapsed };
        println!(
            "{:>6} {:>10} {:>10} {:>9.2} {:>9.2} {:>12.3} {:>12.3} {:>10.2} {:>14.0}",
            if n == 0 { "in-proc".to_string() } else { n.to_string() },
            published,
            received,
            tester,
            if n == 0 { f64::NAN } else { ctl_cpu },
            tester * 1e6 / msgs,
            if n == 0 { f64::NAN } else { ctl_cpu * 1e6 / msgs },
            broker_cpu,
            link_per_agent_s
        );
        let _ = std::io::stdout().flush();
        let _ = brk.0.kill();
        per_msg.entry(n).or_default().push(tester * 1e6 / msgs);
    }
    if a.repeat > 1 {
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let base = per_msg.get(&1).cloned().map(|mut v| median(&mut v));
        for (n, v) in &mut per_msg {
            let m = median(v);
            let vs = base
                .map(|b| format!(" ({:+.1}% against 1 agent)", (m / b - 1.0) * 100.0))
                .unwrap_or_default();
            println!("median tester µs/message, {} agents over {} rounds: {m:.3}{vs}", n, v.len());
        }
    }
}

/// Idle connections held by `--agents` local agent processes against `--brokers` processes of
/// squall's broker; the tester's RSS (the run and its agents) per connection.
fn connections(a: &Args) {
    let n = *a.agents.first().unwrap_or(&6);
    let dir = tempfile::tempdir().unwrap();
    let brokers: Vec<(Proc, u16)> = (0..a.brokers).map(|_| broker(&a.squall)).collect();
    let urls: Vec<String> = brokers.iter().map(|(_, p)| format!("\"mqtt://127.0.0.1:{p}\"")).collect();
    // a small run first: the fixed cost of the processes, to take off the marginal figure
    let mut rows = Vec::new();
    for clients in [n * 10, a.clients] {
        let scenario = dir.path().join("idle.toml");
        std::fs::write(
            &scenario,
            format!(
                "[target]\nurls = [{}]\n[run]\nduration = \"3s\"\ndrain = \"0s\"\nramp_timeout = \"300s\"\n\
                 [[group]]\nname = \"idle\"\nclients = {clients}\nconnect_rate = 50000\nkeepalive = \"300s\"\n",
                urls.join(", ")
            ),
        )
        .unwrap();
        let rep = dir.path().join("idle.json");
        let t0 = Instant::now();
        let mut run = local_run(&a.squall, &scenario, n, &rep);
        let pid = run.0.id();
        let (mut peak_tester, mut peak_brokers) = (0u64, 0u64);
        while run.0.try_wait().unwrap().is_none() {
            let t = tree_rss(pid);
            let b: u64 = brokers.iter().map(|(p, _)| rss_kib(p.0.id())).sum();
            peak_tester = peak_tester.max(t);
            peak_brokers = peak_brokers.max(b);
            std::thread::sleep(Duration::from_millis(200));
        }
        let code = run.0.wait().unwrap().code().unwrap_or(-1);
        let r = report(&rep);
        let connects = counter(&r, "connects");
        let failures = counter(&r, "connect_failures");
        let errors: u64 =
            r["errors"].as_array().unwrap().iter().map(|e| e["count"].as_u64().unwrap_or(0)).sum();
        println!(
            "{clients} clients on {n} agents → {} brokers: exit {code}, {connects} connected, {failures} connect failures, {errors} errors, {:.1}s; peak RSS tester {} KiB ({:.2} KiB/conn), brokers {} KiB ({:.2} KiB/conn)",
            a.brokers,
            t0.elapsed().as_secs_f64(),
            peak_tester,
            peak_tester as f64 / connects.max(1) as f64,
            peak_brokers,
            peak_brokers as f64 / connects.max(1) as f64,
        );
        rows.push((connects, peak_tester));
    }
    if let [(c0, t0), (c1, t1)] = rows[..] {
        println!(
            "tester marginal RSS: {:.2} KiB per connection (({t1} − {t0}) KiB ÷ ({c1} − {c0}))",
            (t1 as f64 - t0 as f64) / (c1 as f64 - c0 as f64).max(1.0)
        );
    }
}

/// Open file descriptors of a process (a broker's: about its connections).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Issue 8's scale hazard at scale: every broker stops reading (SIGSTOP, a hung broker) while
/// `--clients` clients publish `--payload` bytes (16 KiB) once a second. The kernel's socket buffers fill, then the
/// clients' own; each agent must hold at most its one budget of unsent bytes (without it,
/// 256 KiB per client: 25 GB at 100k), count what the schedule owed and could not send, and
/// stay cheap while it waits for room.
fn stalled(a: &Args) {
    let n = *a.agents.first().unwrap_or(&6);
    let dir = tempfile::tempdir().unwrap();
    let brokers: Vec<(Proc, u16)> = (0..a.brokers).map(|_| broker(&a.squall)).collect();
    let urls: Vec<String> = brokers.iter().map(|(_, p)| format!("\"mqtt://127.0.0.1:{p}\"")).collect();
    let budget = a.budget_mib << 20;
    let scenario = dir.path().join("stalled.toml");
    std::fs::write(
        &scenario,
        format!(
            "[target]\nurls = [{}]\n[run]\nduration = \"{}s\"\ndrain = \"0s\"\nramp_timeout = \"300s\"\n\
             max_unsent_bytes = {budget}\n\
             [[group]]\nname = \"stalled\"\nclients = {}\nconnect_rate = 50000\nkeepalive = \"300s\"\n\
             [group.publish]\ntopic = \"stall/{{i}}\"\nqos = 0\npayload_size = {}\ninterval = \"1s\"\n",
            urls.join(", "),
            a.seconds,
            a.clients,
            a.payload
        ),
    )
    .unwrap();
    let rep = dir.path().join("stalled.json");
    let mut run = local_run(&a.squall, &scenario, n, &rep);
    let pid = run.0.id();
    let t0 = Instant::now();
    let connected = |brokers: &[(Proc, u16)]| brokers.iter().map(|(p, _)| fds(p.0.id())).sum::<usize>();
    while connected(&brokers) < a.clients as usize && run.0.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{} connections at the brokers after {:.1}s", connected(&brokers), t0.elapsed().as_secs_f64());
    // a few seconds of healthy publishing, then the brokers hang
    std::thread::sleep(Duration::from_secs(3));
    let cpu = |pid: u32| tree(pid).iter().map(|p| cpu_s(*p)).sum::<f64>();
    let (rss0, cpu0, ts) = (tree_rss(pid), cpu(pid), Instant::now());
    for (p, _) in &brokers {
        unsafe { libc::kill(p.0.id() as i32, libc::SIGSTOP) };
    }
    println!("brokers stopped; tester RSS {rss0} KiB");
    // (CPU seconds since the stall, at seconds since the stall): the last reading while it ran
    let (mut peak, mut last, mut mark) = (rss0, (0.0, 0.0), (0.0, 0.0));
    for i in 1.. {
        if run.0.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let now = tree_rss(pid);
        peak = peak.max(now);
        // agents that have exited no longer show in /proc: keep the highest reading
        let c = cpu(pid) - cpu0;
        if c > last.0 {
            last = (c, ts.elapsed().as_secs_f64());
        }
        if i % 10 == 0 {
            let pct = 100.0 * (last.0 - mark.0) / (last.1 - mark.1).max(1e-9);
            println!("  +{:.0}s: tester RSS {now} KiB, CPU {pct:.0} % of a core over the last 5 s", last.1);
            mark = last;
        }
    }
    for (p, _) in &brokers {
        unsafe { libc::kill(p.0.id() as i32, libc::SIGCONT) };
    }
    let code = run.0.wait().unwrap().code().unwrap_or(-1);
    let r = report(&rep);
    let per_budget = (peak.saturating_sub(rss0) as f64 * 1024.0) / (budget * n as u64) as f64;
    println!(
        "exit {code}; tester RSS {rss0} → peak {peak} KiB (+{} KiB = {per_budget:.2} × the {n} agents' budgets of {} MiB); \
         CPU while stalled {:.2} s in {:.1} s ({:.0} % of a core)",
        peak.saturating_sub(rss0),
        a.budget_mib,
        last.0,
        last.1,
        100.0 * last.0 / last.1.max(1e-9)
    );
    for k in
        ["published_qos0", "bytes_out", "send_buffer_full", "behind_schedule", "connects", "connections_lost"]
    {
        println!("  {k}: {}", counter(&r, k));
    }
    println!("  errors: {}", r["errors"]);
}
