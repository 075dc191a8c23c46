//! End-to-end bench programs: memory per idle connection, connect rate, and throughput with
//! the tester's CPU per message beside the broker's. The broker always runs in a process of its
//! own (mosquitto, or squall's broker re-executed from this binary), so each side is measured
//! apart: RSS from /proc, CPU from getrusage (tester) and /proc/<pid>/stat (broker).
//!
//! cargo bench -p squall-benches --bench e2e -- idle --clients 19000 [--broker squall]
//! cargo bench -p squall-benches --bench e2e -- connect --clients 10000 --rate 40000 [--inflight N|0] [--broker squall --connack-delay-ms 20]
//! cargo bench -p squall-benches --bench e2e -- throughput --qos 0 --rate 1000000 --seconds 10 [--read-coalesce-us 0]
//! cargo bench -p squall-benches --bench e2e -- flood-floor --seconds 10
//! cargo bench -p squall-benches --bench e2e -- lag --clients 1000 --rate 10 --seconds 10 [--coalesce-us 250]   (with the bare floor of the same load)
//! cargo bench -p squall-benches --bench e2e -- soak --clients 10000 --seconds 1800
//! cargo bench -p squall-benches --bench e2e -- storm --clients 19000 [--broker squall] [--back now|backoff] [--sources 4]
//! cargo bench -p squall-benches --bench e2e -- ledger-memory --clients 10000   (no broker: the receiver ledger alone)

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use squall_agent::engine::{self, AgentEvent, Command as Cmd};
use squall_benches::{cpu_s, free_port, rss_kib};
use squall_controller::aggregate::Aggregate;
use squall_controller::scenario::{Overrides, Source, load_source};
use squall_controller::segment::segment;

mod floor;

struct Args {
    mode: String,
    broker: String,
    clients: u32,
    rate: f64,
    qos: u8,
    seconds: u64,
    payload: u32,
    inflight: u32,
    coalesce_us: u64,
    /// `run.read_coalesce` in µs; None: the default.
    read_coalesce_us: Option<u64>,
    connack_delay_ms: u64,
    back: String,
    sources: u8,
}

impl Args {
    /// The `[run]` line of `--read-coalesce-us`, if given.
    fn read_coalesce_line(&self) -> String {
        self.read_coalesce_us.map(|us| format!("read_coalesce = \"{us}us\"\n")).unwrap_or_default()
    }
}

fn args() -> Args {
    let mut a = Args {
        mode: String::new(),
        broker: "mosquitto".into(),
        clients: 1000,
        rate: 100_000.0,
        qos: 0,
        seconds: 10,
        payload: 64,
        inflight: 256,
        coalesce_us: 0,
        read_coalesce_us: None,
        connack_delay_ms: 0,
        back: String::new(),
        sources: 0,
    };
    let mut it = std::env::args().skip(1).filter(|s| s != "--bench");
    while let Some(x) = it.next() {
        let mut val = || it.next().expect("a value");
        match x.as_str() {
            "--broker" => a.broker = val(),
            "--clients" => a.clients = val().parse().unwrap(),
            "--rate" => a.rate = val().parse().unwrap(),
            "--qos" => a.qos = val().parse().unwrap(),
            "--seconds" => a.seconds = val().parse().unwrap(),
            "--payload" => a.payload = val().parse().unwrap(),
            "--inflight" => a.inflight = val().parse().unwrap(),
            "--coalesce-us" => a.coalesce_us = val().parse().unwrap(),
            "--read-coalesce-us" => a.read_coalesce_us = Some(val().parse().unwrap()),
            "--connack-delay-ms" => a.connack_delay_ms = val().parse().unwrap(),
            "--back" => a.back = val(),
            "--sources" => a.sources = val().parse().unwrap(),
            m if !m.starts_with('-') => a.mode = m.to_string(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

struct Broker {
    child: Child,
    port: u16,
    _dir: Option<std::path::PathBuf>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(kind: &str, connack_delay_ms: u64) -> Broker {
    match kind {
        "mosquitto" => {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("squall-bench-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("m.conf");
            std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\nconnection_messages false\nlog_dest stderr\n")).unwrap();
            let mut child = Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto is installed");
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            for l in lines.by_ref() {
                if l.unwrap().contains(" running") {
                    break;
                }
            }
            std::thread::spawn(move || for _ in lines {});
            Broker { child, port, _dir: Some(dir) }
        }
        "squall" => {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .arg("--serve-broker")
                .arg(connack_delay_ms.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let port = line.trim().strip_prefix("PORT ").expect("the child says its port").parse().unwrap();
            Broker { child, port, _dir: None }
        }
        other => panic!("--broker mosquitto|squall, not {other}"),
    }
}

/// Child mode: squall's broker on a free port until stdin closes.
fn serve_broker() {
    let delay_ms: u64 =
        std::env::args().skip_while(|a| a != "--serve-broker").nth(1).unwrap().parse().unwrap();
    let mut config = squall_broker::BrokerConfig::default();
    if delay_ms > 0 {
        // a broker far away, or slow to accept: every CONNACK takes this long
        config.faults = vec![squall_broker::Rule::all(squall_broker::Action::Delay {
            packet: squall_broker::AckPacket::ConnAck,
            by: squall_broker::Delay::Fixed(Duration::from_millis(delay_ms)),
        })];
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let b = squall_broker::Broker::start(config).await.unwrap();
        println!("PORT {}", b.local_addr().port());
        std::io::stdout().flush().unwrap();
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await
        .unwrap();
        eprintln!("broker: {}", serde_json::to_string(&b.stats()).unwrap());
    });
}

fn self_cpu_s() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Runs a scenario on one in-process agent, calling `at_ready` once every client connected.
async fn drive(text: &str, port: u16, at_ready: impl FnOnce(Duration)) -> Aggregate {
    drive_result(text, port, at_ready).await.0
}

/// [`drive`], with the agent's final result (ledger, storms, outages).
async fn drive_result(
    text: &str,
    port: u16,
    at_ready: impl FnOnce(Duration),
) -> (Aggregate, squall_agent::engine::AgentResult) {
    drive_from(text, port, 0, at_ready).await
}

/// [`drive_result`] with connections spread over `sources` loopback source addresses
/// (127.0.0.1 …), 0 for the kernel's choice.
async fn drive_from(
    text: &str,
    port: u16,
    sources: u8,
    at_ready: impl FnOnce(Duration),
) -> (Aggregate, squall_agent::engine::AgentResult) {
    let ov = Overrides { targets: vec![format!("mqtt://127.0.0.1:{port}")], ..Default::default() };
    let plan = load_source(&Source::new("bench.toml", text), &ov).expect("bench scenario");
    let mut a = segment(&plan, &plan.targets, &[1]).remove(0);
    a.source_addresses = (1..=sources).map(|i| std::net::IpAddr::from([127, 0, 0, i])).collect();
    let clock = squall_proto::clock::Clock::new();
    let mut agg = Aggregate::new(clock.now_ns());
    let started = Instant::now();
    let mut h = engine::start(a, squall_proto::clock::Clock::new()).await.unwrap();
    let mut at_ready = Some(at_ready);
    while let Some(ev) = h.events.recv().await {
        match ev {
            AgentEvent::Snapshot(s) => agg.apply(&s).unwrap(),
            AgentEvent::Ready { .. } => {
                if let Some(f) = at_ready.take() {
                    f(started.elapsed());
                }
                let start = clock.now_ns() + 50_000_000;
                let until = start + plan.duration.as_nanos() as u64;
                h.commands.send(Cmd::Publish { start_unix_ns: start, until_unix_ns: until }).await.unwrap();
            }
            AgentEvent::PublishDone { streams } => {
                h.commands
                    .send(Cmd::Finish { streams, drain_ms: plan.drain.as_millis() as u64 })
                    .await
                    .unwrap();
            }
            AgentEvent::Finished(r) => return (agg, r),
            AgentEvent::Failed { message } => panic!("{message}"),
            // one agent: a share is whole on it, never settled at the controller
            AgentEvent::Started { .. } | AgentEvent::Receipts(_) => {}
        }
    }
    panic!("the agent stopped without a result")
}

fn main() {
    if std::env::args().any(|a| a == "--serve-broker") {
        return serve_broker();
    }
    let a = args();
    if a.mode == "ledger-memory" {
        return ledger_memory(a.clients);
    }
    let workers: usize = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(2);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
    if a.connack_delay_ms > 0 {
        assert_eq!(a.broker, "squall", "--connack-delay-ms needs --broker squall");
    }
    let broker = start_broker(&a.broker, a.connack_delay_ms);
    let bpid = broker.child.id();
    let me = std::process::id();
    println!(
        "machine: {} cores; broker: {} (pid {bpid}); date: see BENCHMARKS.md",
        std::thread::available_parallelism().unwrap(),
        a.broker
    );
    match a.mode.as_str() {
        "idle" => {
            let text = format!(
                "[run]\nduration = \"1s\"\ndrain = \"0s\"\n[[group]]\nname = \"idle\"\nclients = {}\nconnect_rate = 20000\nkeepalive = \"300s\"\n",
                a.clients
            );
            let (t0, b0) = (rss_kib(me), rss_kib(bpid));
            let mut measured = (0, 0);
            let agg = rt.block_on(drive(&text, broker.port, |_| {
                // let late acks and allocator churn settle
                std::thread::sleep(Duration::from_secs(2));
                measured = (rss_kib(me), rss_kib(bpid));
            }));
            let n = agg.counters.connects.max(1);
            println!("idle connections: {n}");
            println!(
                "tester RSS {} KiB → {} KiB: {:.2} KiB per connection",
                t0,
                measured.0,
                (measured.0 - t0) as f64 / n as f64
            );
            println!(
                "broker RSS {} KiB → {} KiB: {:.2} KiB per connection",
                b0,
                measured.1,
                (measured.1 as f64 - b0 as f64) / n as f64
            );
        }
        "connect" => {
            // the floor first, in the same run: a bare loop (TCP connect, CONNECT, CONNACK,
            // nothing else) at fixed windows; its best is what squall's defaults are held to
            let mut best = 0.0f64;
            for w in [16usize, 64, 256] {
                let (rate, failed) = rt.block_on(bare_connects(broker.port, a.clients, w));
                println!("floor: bare loop, {w} in flight: {rate:.0} connects/s ({failed} failed)");
                best = best.max(rate);
            }
            println!("floor: best {best:.0} connects/s");
            // --inflight 0: the default, adaptive window
            let window =
                if a.inflight == 0 { String::new() } else { format!("max_connecting = {}\n", a.inflight) };
            let text = format!(
                "[run]\nduration = \"1s\"\ndrain = \"0s\"\n{window}[[group]]\nname = \"c\"\nclients = {}\nconnect_rate = {}\nkeepalive = \"300s\"\n",
                a.clients, a.rate
            );
            let mut took = Duration::ZERO;
            let agg = rt.block_on(drive(&text, broker.port, |d| took = d));
            let s = agg
                .hists
                .get(squall_agent::metrics::Metric::Connect, squall_agent::metrics::Timing::Raw)
                .summary();
            let c = agg
                .hists
                .get(squall_agent::metrics::Metric::Connect, squall_agent::metrics::Timing::Corrected)
                .summary();
            println!(
                "connects: {} in {:.3}s → {:.0}/s (asked {}/s); failures {}",
                agg.counters.connects,
                took.as_secs_f64(),
                agg.counters.connects as f64 / took.as_secs_f64(),
                a.rate,
                agg.counters.connect_failures
            );
            println!("CONNECT→CONNACK µs: p50 {} p99 {} max {}", s.p50_us, s.p99_us, s.max_us);
            println!(
                "scheduled → CONNACK (TCP and waiting for a slot included) µs: p50 {} p99 {} max {}",
                c.p50_us, c.p99_us, c.max_us
            );
        }
        "flood-floor" => {
            // the bare floor of a flood, side by side: eager reads, then reads 50 µs apart
            for gap_us in [0u64, 50] {
                let f = floor::flood(broker.port, bpid, a.seconds, a.payload, Duration::from_micros(gap_us));
                println!(
                    "floor, bare threads (64 KiB writes, blocking reads {}): sent {}, received {} ({:.0}/s); tester {:.2}s = {:.2} µs/msg; broker {:.2}s = {:.2} µs/msg",
                    if gap_us == 0 {
                        "as data comes".to_string()
                    } else {
                        format!("at least {gap_us} µs apart")
                    },
                    f.sent,
                    f.received,
                    f.received as f64 / a.seconds as f64,
                    f.tester_cpu_s,
                    f.tester_cpu_s * 1e6 / f.received.max(1) as f64,
                    f.broker_cpu_s,
                    f.broker_cpu_s * 1e6 / f.received.max(1) as f64
                );
            }
        }
        "throughput" => {
            let read = a.read_coalesce_line();
            let text = format!(
                "[run]\nduration = \"{}s\"\ndrain = \"1s\"\n{read}[[group]]\nname = \"pub\"\nclients = 1\nmax_inflight = 1000\n[group.publish]\ntopic = \"tp\"\nqos = {}\npayload_size = {}\ngroup_rate = {}\n[[group]]\nname = \"sub\"\nclients = 1\n[group.subscribe]\nfilters = [\"tp\"]\nqos = {}\n",
                a.seconds, a.qos, a.payload, a.rate, a.qos
            );
            println!(
                "read_coalesce: {}",
                a.read_coalesce_us.map_or("default (0: eager)".to_string(), |us| format!("{us} µs"))
            );
            let (c0, b0) = (self_cpu_s(), cpu_s(bpid));
            let w0 = Instant::now();
            let agg = rt.block_on(drive(&text, broker.port, |_| {}));
            let wall = w0.elapsed().as_secs_f64();
            let (tester, brok) = (self_cpu_s() - c0, cpu_s(bpid) - b0);
            let c = &agg.counters;
            let (published, received) = (c.published(), c.received());
            let e2e = agg
                .hists
                .get(squall_agent::metrics::Metric::E2e, squall_agent::metrics::Timing::Raw)
                .summary();
            println!(
                "QoS {}: published {published} ({:.0}/s), received {received} ({:.0}/s), behind schedule {}",
                a.qos,
                published as f64 / a.seconds as f64,
                received as f64 / a.seconds as f64,
                c.behind_schedule
            );
            let wait = agg
                .hists
                .get(squall_agent::metrics::Metric::ReadWait, squall_agent::metrics::Timing::Raw)
                .summary();
            println!(
                "e2e raw µs: p50 {} p90 {} p99 {}; reads that waited: {}; read_wait µs p50 {} p99 {}",
                e2e.p50_us, e2e.p90_us, e2e.p99_us, c.reads_coalesced, wait.p50_us, wait.p99_us
            );
            println!(
                "CPU over {wall:.1}s: tester {tester:.2}s, broker {brok:.2}s → tester/broker {:.2}",
                tester / brok.max(1e-9)
            );
            println!(
                "tester CPU per message published and received: {:.3} µs; broker {:.3} µs",
                tester * 1e6 / received.max(1) as f64,
                brok * 1e6 / received.max(1) as f64
            );
        }
        "lag" => lag(&a, &rt, broker.port, bpid),
        "soak" => soak(&a, &rt, broker.port, bpid),
        "storm" => storm(&a, &rt, broker.port, bpid),
        other => panic!("mode idle|connect|throughput|lag|soak|storm, not `{other}`"),
    }
}

/// The tester's own lag: `--clients` publishers at `--rate` msg/s each (QoS 0) and one
/// subscriber, beside two floors measured in the same run: as many bare tasks waking on the
/// same schedule with tokio's `sleep_until`, and with squall's timer.
fn lag(a: &Args, rt: &tokio::runtime::Runtime, port: u16, bpid: u32) {
    use squall_agent::metrics::{Metric, Timing};
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let floor_secs = a.seconds.min(5);
    for kind in ["tokio::time::sleep_until", "squall_agent::timer"] {
        let (p50, p99, cpu) = rt.block_on(floor(
            kind,
            a.clients,
            interval,
            Duration::from_secs(floor_secs),
            Duration::from_micros(a.coalesce_us),
        ));
        println!(
            "floor, {} tasks × {:.0}/s on {kind}: lag µs p50 {p50} p99 {p99}; CPU {:.3} µs per wake",
            a.clients, a.rate, cpu
        );
    }
    // the bare floor of the same load, in the same run: what any tester pays here
    let f = floor::fan_in(
        port,
        bpid,
        a.clients,
        a.rate,
        a.seconds,
        a.payload,
        Duration::from_micros(a.coalesce_us),
    );
    println!(
        "floor, bare threads (blocking send per message, clock_nanosleep, eager reader): sent {}, received {}; lag µs p50 {} p99 {}",
        f.sent, f.received, f.lag_p50_us, f.lag_p99_us
    );
    println!(
        "floor CPU: tester {:.2}s, broker {:.2}s → tester/broker {:.2}; tester {:.2} µs per message",
        f.tester_cpu_s,
        f.broker_cpu_s,
        f.tester_cpu_s / f.broker_cpu_s.max(1e-9),
        f.tester_cpu_s * 1e6 / f.received.max(1) as f64
    );
    let text = format!(
        "[run]\nduration = \"{}s\"\ndrain = \"1s\"\ntimer_coalesce = \"{}us\"\n{}[[group]]\nname = \"pub\"\nclients = {}\nconnect_rate = 5000\n[group.publish]\ntopic = \"lag/{{i}}\"\nqos = 0\npayload_size = {}\ninterval = \"{}us\"\n[[group]]\nname = \"sub\"\nclients = 1\n[group.subscribe]\nfilters = [\"lag/#\"]\nqos = 0\n",
        a.seconds,
        a.coalesce_us,
        a.read_coalesce_line(),
        a.clients,
        a.payload,
        interval.as_micros()
    );
    // from the moment every client is connected, as the floor (connects are not the point)
    let (mut c0, mut b0) = (self_cpu_s(), cpu_s(bpid));
    let agg = rt.block_on(drive(&text, port, |_| (c0, b0) = (self_cpu_s(), cpu_s(bpid))));
    let (tester, brok) = (self_cpu_s() - c0, cpu_s(bpid) - b0);
    let h = |m, t| agg.hists.get(m, t).summary();
    let lag = h(Metric::Lag, Timing::Raw);
    let (raw, cor) = (h(Metric::E2e, Timing::Raw), h(Metric::E2e, Timing::Corrected));
    println!(
        "squall, {} clients × {:.0}/s: published {}, received {}; lag µs p50 {} p99 {} max {}",
        a.clients,
        a.rate,
        agg.counters.published(),
        agg.counters.received(),
        lag.p50_us,
        lag.p99_us,
        lag.max_us
    );
    println!(
        "e2e µs: raw p50 {} p99 {}; corrected p50 {} p99 {}; corrected − raw at p50: {} µs",
        raw.p50_us,
        raw.p99_us,
        cor.p50_us,
        cor.p99_us,
        cor.p50_us as i64 - raw.p50_us as i64
    );
    println!(
        "CPU: tester {tester:.2}s, broker {brok:.2}s → tester/broker {:.2}; tester {:.2} µs per message",
        tester / brok.max(1e-9),
        tester * 1e6 / agg.counters.received().max(1) as f64
    );
}

/// `n` tasks each waking every `interval` (staggered) for `secs`; lag p50, p99 in µs, and
/// CPU per wake in µs.
async fn floor(
    kind: &'static str,
    n: u32,
    interval: Duration,
    secs: Duration,
    coalesce: Duration,
) -> (u64, u64, f64) {
    let timers = std::sync::Arc::new(squall_agent::timer::Timers::new(coalesce).unwrap());
    let t0 = Instant::now() + Duration::from_millis(300);
    let end = t0 + secs;
    let c0 = self_cpu_s();
    let mut tasks = Vec::new();
    for i in 0..n {
        let timers = timers.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut at = t0 + interval.mul_f64(i as f64 / n as f64);
            let mut sleep = timers.sleep();
            while at < end {
                if kind == "squall_agent::timer" {
                    sleep.reset(at);
                    (&mut sleep).await;
                } else {
                    tokio::time::sleep_until(at.into()).await;
                }
                h.record(Instant::now().saturating_duration_since(at).as_nanos() as u64).unwrap();
                at += interval;
            }
            h
        }));
    }
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    let cpu = self_cpu_s() - c0;
    (
        all.value_at_quantile(0.5) / 1000,
        all.value_at_quantile(0.99) / 1000,
        cpu * 1e6 / all.len().max(1) as f64,
    )
}

/// The receiver ledger's memory after loss: `streams` streams, each losing its second message
/// and then delivering 4,000 more in order (what a subscriber's ledger holds after one bout of
/// broker-side loss, before the gaps are declared lost). RSS before and after, per stream.
fn ledger_memory(streams: u32) {
    let me = std::process::id();
    let mut ledger = squall_proto::metrics::ReceiverLedger::new();
    for s in 0..streams {
        ledger.observe(s, 0, 1);
    }
    let before = rss_kib(me);
    for seq in 2..4002u64 {
        for s in 0..streams {
            ledger.observe(s, seq, 1);
        }
    }
    let after = rss_kib(me);
    println!(
        "ledger: {streams} streams, one message lost each, 4,000 after it: RSS {before} → {after} KiB, {:.0} bytes per stream",
        (after.saturating_sub(before)) as f64 * 1024.0 / streams.max(1) as f64
    );
    std::hint::black_box(&ledger);
}

/// A soak: `--clients` publishers at 1 msg/s each, QoS 1, and one subscriber to all of them,
/// for `--seconds`. Every 30 s: the tester's RSS and open fds, the broker's RSS; at the end,
/// how they moved after the warm-up (the first tenth of the run) and how big the run's
/// timeline (the report's one growing part) got.
fn soak(a: &Args, rt: &tokio::runtime::Runtime, port: u16, bpid: u32) {
    let text = format!(
        "[run]\nduration = \"{}s\"\ndrain = \"2s\"\n[[group]]\nname = \"dev\"\nclients = {}\nconnect_rate = 2000\n[group.publish]\ntopic = \"soak/{{i}}\"\nqos = 1\npayload_size = {}\ninterval = \"1s\"\n[[group]]\nname = \"app\"\nclients = 1\n[group.subscribe]\nfilters = [\"soak/#\"]\nqos = 1\n",
        a.seconds, a.clients, a.payload
    );
    let me = std::process::id();
    let fds = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut rows: Vec<(f64, u64, usize, u64)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let row = (t0.elapsed().as_secs_f64(), rss_kib(me), fds(), rss_kib(bpid));
                println!(
                    "t {:>6.0}s  tester RSS {:>8} KiB  fds {:>6}  broker RSS {:>8} KiB",
                    row.0, row.1, row.2, row.3
                );
                rows.push(row);
                for _ in 0..300 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            rows
        })
    };
    let agg = rt.block_on(drive(&text, port, |_| {}));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rows = sampler.join().unwrap();
    let c = &agg.counters;
    println!(
        "published {} acked {} received {} lost(unacked) {} errors {}",
        c.published(),
        c.acked_qos1,
        c.received(),
        c.unacked,
        agg.error_count()
    );
    // after the warm-up: connected, and a tenth of the run gone
    let warm = rows.iter().filter(|r| r.0 >= a.seconds as f64 / 10.0 + 10.0).collect::<Vec<_>>();
    if let (Some(first), Some(last)) = (warm.first(), warm.last()) {
        let (lo, hi) = warm.iter().fold((u64::MAX, 0), |(lo, hi), r| (lo.min(r.1), hi.max(r.1)));
        println!(
            "after warm-up ({} samples): tester RSS {} → {} KiB ({:+.1} %), range {lo}..{hi} KiB ({:.1} % of the first); fds {} → {}",
            warm.len(),
            first.1,
            last.1,
            (last.1 as f64 - first.1 as f64) * 100.0 / first.1 as f64,
            (hi - lo) as f64 * 100.0 / first.1 as f64,
            first.2,
            last.2
        );
    }
    let timeline = serde_json::to_string(&agg.timeline).unwrap().len();
    println!("timeline: {} rows, {} bytes of JSON", agg.timeline.len(), timeline);
}

/// The connect floor: `n` clients, at most `window` handshakes in flight, each a TCP connect,
/// an MQTT 3.1.1 CONNECT and its CONNACK, nothing else; the connections are held until all
/// are made, then reset (linger 0, so no port waits in TIME_WAIT for the run after).
/// Connects per second, and how many failed.
async fn bare_connects(port: u16, n: u32, window: usize) -> (f64, u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(window));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let id = format!("floor-{i}");
            let mut p = vec![
                0x10,
                (12 + id.len()) as u8,
                0,
                4,
                b'M',
                b'Q',
                b'T',
                b'T',
                4,
                2,
                0,
                60,
                0,
                id.len() as u8,
            ];
            p.extend_from_slice(id.as_bytes());
            s.write_all(&p).await?;
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await?;
            if ack != [0x20, 2, 0, 0] {
                return Err(std::io::Error::other("refused"));
            }
            Ok::<_, std::io::Error>(s)
        });
    }
    let mut held = Vec::new();
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(s)) => held.push(s),
            _ => failed += 1,
        }
    }
    let rate = held.len() as f64 / t0.elapsed().as_secs_f64();
    for s in held {
        let _ = s.set_zero_linger();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (rate, failed)
}

/// A storm: `--clients` idle clients all dropped at once 5 s into the window (socket closed,
/// no DISCONNECT), back at once (`--back now`, the thundering herd) or by the default backoff
/// (exponential, full jitter, 1 s base). Prints the recovery (99 % and all back, beside the
/// policy alone), failed attempts, and the CPU of tester and broker over the storm, sampled
/// every 100 ms.
fn storm(a: &Args, rt: &tokio::runtime::Runtime, port: u16, bpid: u32) {
    let back = if a.back.is_empty() { "now" } else { a.back.as_str() };
    let text = format!(
        "[run]\nduration = \"{}s\"\ndrain = \"0s\"\n[[group]]\nname = \"dev\"\nclients = {}\nconnect_rate = 20000\nkeepalive = \"300s\"\n[[group.event]]\nat = \"5s\"\naction = \"drop\"\nfraction = 1.0\nback = \"{back}\"\n",
        a.seconds.max(15),
        a.clients
    );
    // CPU of both sides every 100 ms, to read the storm's seconds off afterwards
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let t0 = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v.push((t0.elapsed().as_secs_f64(), self_cpu_s(), cpu_s(bpid)));
                std::thread::sleep(Duration::from_millis(100));
            }
            (t0, v)
        })
    };
    let mut ready_at = None;
    let (agg, result) = rt.block_on(drive_from(&text, port, a.sources, |_| ready_at = Some(Instant::now())));
    println!(
        "source addresses: {}",
        if a.sources == 0 {
            "the kernel's choice".to_string()
        } else {
            format!("127.0.0.1 … 127.0.0.{}", a.sources)
        }
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (t0, samples) = sampler.join().unwrap();
    let Some(s) = result.storms.first() else { panic!("no storm recorded: {:?}", agg.counters) };
    let backh = squall_proto::metrics::Latency::from_v2(&s.back_v2).unwrap();
    let policy = squall_proto::metrics::Latency::from_v2(&s.policy_v2).unwrap();
    let rank = |h: &squall_proto::metrics::Latency, share: f64| {
        let k = ((s.taken as f64 * share).ceil() as u64).max(1);
        (h.len() >= k).then(|| h.quantile_us(k as f64 / h.len() as f64) as f64 / 1e3)
    };
    let ms = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.0} ms"));
    println!(
        "storm: {} taken, {} back, {} failed attempts, {} abandoned (back = {back})",
        s.taken,
        backh.len(),
        s.failed_attempts,
        s.abandoned
    );
    println!(
        "recovery: 99 % in {}, all in {}; the policy alone: {}, {}",
        ms(rank(&backh, 0.99)),
        ms(rank(&backh, 1.0)),
        ms(rank(&policy, 0.99)),
        ms(rank(&policy, 1.0))
    );
    let errors: Vec<String> = agg.errors.iter().map(|(e, n)| format!("{} {n}", e.name())).collect();
    println!("errors: {}", if errors.is_empty() { "none".into() } else { errors.join(", ") });
    // the storm's span: from the drop (window start + 5 s) to the last client back
    let ready = ready_at.expect("ready").duration_since(t0).as_secs_f64();
    let from = ready + 0.05 + 5.0;
    let to = from + rank(&backh, 1.0).unwrap_or(10_000.0) / 1e3;
    let at = |t: f64| samples.iter().rev().find(|x| x.0 <= t).or(samples.first()).copied().unwrap();
    let until = samples.iter().find(|x| x.0 >= to + 0.1).or(samples.last()).copied().unwrap();
    let start = at(from - 0.1);
    let span = until.0 - start.0;
    println!(
        "CPU over the storm ({span:.1} s): tester {:.2} s ({:.0} % of a core), broker {:.2} s ({:.0} %)",
        until.1 - start.1,
        100.0 * (until.1 - start.1) / span,
        until.2 - start.2,
        100.0 * (until.2 - start.2) / span
    );
}
