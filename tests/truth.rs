//! Truth tests: squall's numbers against a broker whose behaviour is known because squall's
//! own broker injects it. They run one at a time (a global lock): they measure time.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use squall_broker::timeline::{Dir, Kind};
use squall_broker::{AckPacket, Action, Delay, Rule};
use squall_controller::report::{Percentiles, Report, Status};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lat(r: &Report, metric: &str) -> (Percentiles, Percentiles) {
    let l = &r.latency[metric];
    (l.raw.expect("raw"), l.corrected.expect("corrected"))
}

const LIGHT_QOS1: &str = r#"
[run]
duration = "5s"
drain = "500ms"
# one client, 4 ms apart: a held PUBACK (5 ms) is never released as a PUBLISH arrives
[[group]]
name = "pub"
clients = 1
client_id = "truth"
[group.publish]
topic = "truth/0"
qos = 1
interval = "4ms"
"#;

/// Runs the light QoS 1 load; returns squall's raw and corrected publish→PUBACK percentiles
/// and, from the broker's timeline, how long the broker really held each PUBACK (µs, sorted).
async fn puback(faults: Vec<Rule>) -> (Percentiles, Percentiles, Vec<u64>) {
    let broker = support::broker(|c| {
        c.faults = faults;
        c.timeline = true;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let report = support::run(support::plan(LIGHT_QOS1, &support::url(&broker), dir.path())).await;
    assert_eq!(report.verdict.status, Status::Pass, "{:?}", report.verdict);
    let mut holds = Vec::new();
    let mut arrived: std::collections::HashMap<Option<u16>, u64> = Default::default();
    for e in broker.timeline("truth") {
        match (e.dir, e.kind) {
            (Dir::In, Kind::Publish) => {
                arrived.insert(e.pid, e.at_ns);
            }
            (Dir::Out, Kind::PubAck) => {
                holds.push((e.at_ns - arrived.remove(&e.pid).expect("a PUBACK follows its PUBLISH")) / 1000)
            }
            _ => {}
        }
    }
    holds.sort();
    broker.shutdown().await;
    let (raw, corrected) = lat(&report, "puback");
    (raw, corrected, holds)
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The broker holds every PUBACK for D. squall's publish→PUBACK must be what the broker
/// really did (its timeline: PUBLISH in → PUBACK out, at least D) plus the loopback round trip
/// (measured the same way just before, without the fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_puback_is_measured_as_the_delay() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Duration::from_millis(5);
    let (base, _, _) = puback(vec![]).await;
    let (held, corrected, holds) =
        puback(vec![Rule::all(Action::Delay { packet: AckPacket::PubAck, by: Delay::Fixed(d) })]).await;
    let truth = d.as_micros() as f64;
    let (hold50, hold99) = (pct(&holds, 0.50), pct(&holds, 0.99));
    eprintln!(
        "round trip without the fault: {base:?}\nbroker held PUBACKs: min {}µs p50 {hold50}µs p99 {hold99}µs\nsquall measured: {held:?}\ncorrected: {corrected:?}",
        holds[0]
    );
    assert_eq!(holds.len() as u64, held.count, "every PUBACK was held, and measured");
    assert!(holds[0] as f64 >= truth, "the broker never released early: {}µs", holds[0]);
    assert!(held.min_us >= holds[0], "nothing is measured faster than the broker held it");
    // Each measured latency is the broker's hold of that message plus the transit both ways,
    // so squall's percentiles can never be below the hold's (exact), and exceed it by no more
    // than the loopback round trip measured without the fault (its median at p50; at p99, its
    // p99.9 tail: scheduling hiccups on this shared 2-core machine), plus the issue's 2 % + 50 µs.
    let tol = truth * 0.02 + 50.0;
    assert!(held.p50_us >= hold50, "p50 {}µs is below the broker's own hold {hold50}µs", held.p50_us);
    let top50 = hold50 as f64 + base.p50_us as f64 + tol;
    assert!(
        held.p50_us as f64 <= top50,
        "p50 {}µs: more than held {hold50}µs + round trip {}µs + {tol}µs",
        held.p50_us,
        base.p50_us
    );
    assert!(held.p99_us >= hold99, "p99 {}µs is below the broker's own hold {hold99}µs", held.p99_us);
    let hold995 = pct(&holds, 0.995);
    let top99 = hold995 as f64 + base.p999_us as f64 + tol;
    assert!(
        held.p99_us as f64 <= top99,
        "p99 {}µs: more than held {hold995}µs (p99.5) + round trip tail {}µs + {tol}µs",
        held.p99_us,
        base.p999_us
    );
    // Corrected latency counts from the intended send time, so it adds the tester's own wake-up
    // lag: the issue's bound is the hold plus the round trip, within 2 % + 100 µs at p50.
    assert!(corrected.p50_us >= hold50, "corrected p50 {}µs below the hold {hold50}µs", corrected.p50_us);
    let top = hold50 as f64 + base.p50_us as f64 + truth * 0.02 + 100.0;
    assert!(
        corrected.p50_us as f64 <= top,
        "corrected p50 {}µs: more than held {hold50}µs + round trip {}µs + 2 % + 100µs (the tester's own lag)",
        corrected.p50_us,
        base.p50_us
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_in_corrected_latency_and_not_in_raw() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let broker = support::broker(|_| {}).await;
    // one message in flight per client: a stalled broker holds the client back, and only the
    // schedule (corrected latency) knows what it should have sent meanwhile
    let text = r#"
[run]
duration = "4s"
drain = "500ms"
[[group]]
name = "pub"
clients = 2
max_inflight = 1
[group.publish]
topic = "stall/{i}"
qos = 1
interval = "5ms"
[[group]]
name = "sub"
clients = 1
[group.subscribe]
filters = ["stall/#"]
qos = 1
"#;
    let dir = tempfile::tempdir().unwrap();
    let plan = support::plan(text, &support::url(&broker), dir.path());
    let run = tokio::spawn(support::run(plan));
    // stall a second into the window (ramp-up of 3 clients takes a few ms)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.stall_for(Duration::from_secs(1));
    let report = run.await.unwrap();
    assert_eq!(report.delivery.all.lost, 0, "{:?}", report.delivery);
    for metric in ["puback", "e2e"] {
        let (raw, cor) = lat(&report, metric);
        // ~1/4 of the schedule fell in the stall: corrected p99 is most of a second
        assert!(cor.p99_us > 500_000, "{metric}: corrected p99 {}µs should show the 1s stall", cor.p99_us);
        // raw: only the one message per client in flight during the stall waited
        assert!(raw.p99_us < 100_000, "{metric}: raw p99 {}µs should not show the stall", raw.p99_us);
        assert!(
            raw.max_us > 800_000,
            "{metric}: the messages caught in the stall do show in raw max: {raw:?}"
        );
    }
    // the text report shows both
    let text = squall_controller::report::text::render(&report);
    assert!(text.contains("puback (raw)") && text.contains("puback "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_counts_equal_the_ledger_message_for_message() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let broker = support::broker(|_| {}).await;
    let text = r#"
[run]
duration = "2s"
drain = "500ms"
[[group]]
name = "q0"
clients = 20
[group.publish]
topic = "count/q0/{i}"
qos = 0
interval = "10ms"
[[group]]
name = "q1"
clients = 20
[group.publish]
topic = "count/q1/{i}"
qos = 1
interval = "10ms"
[[group]]
name = "q2"
clients = 20
[group.publish]
topic = "count/q2/{i}"
qos = 2
interval = "10ms"
[[group]]
name = "all"
clients = 2
[group.subscribe]
filters = ["count/#"]
qos = 2
[[group]]
name = "shared"
clients = 3
[group.subscribe]
filters = ["$share/workers/count/q1/#"]
qos = 1
"#;
    let dir = tempfile::tempdir().unwrap();
    let report = support::run(support::plan(text, &support::url(&broker), dir.path())).await;
    let stats = broker.stats();
    let c = &report.counters;
    for q in 0..3 {
        assert_eq!(
            stats.messages_in[q],
            c[&format!("published_qos{q}")],
            "QoS {q}: broker received what squall published"
        );
        assert_eq!(
            stats.messages_out[q],
            c[&format!("received_qos{q}")],
            "QoS {q}: squall received what the broker sent"
        );
    }
    let d = &report.delivery.all;
    assert_eq!(d.lost, 0, "{d:?}");
    assert_eq!(d.duplicates, 0, "{d:?}");
    // two full subscribers see everything; the shared group sees every QoS 1 message once
    let published: u64 = (0..3).map(|q| c[&format!("published_qos{q}")]).sum();
    assert_eq!(d.expected, 2 * published + c["published_qos1"], "{d:?}");
    assert_eq!(
        d.delivered,
        stats.messages_out_total(),
        "every PUBLISH the broker sent is one delivery in the ledger"
    );
    assert_eq!((stats.dropped_queue_full, stats.dropped_offline_qos0), (0, 0));
}

/// Two device classes in one run, one behind a slow broker path: each group's latencies are
/// its own (the slow group's PUBACKs carry the delay, the fast group's do not), e2e belongs to
/// the group that published (not to the subscriber's), and rules can name a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_reports_its_own_latency_and_rules_can_name_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Duration::from_millis(20);
    let broker = support::broker(|c| {
        c.faults = vec![Rule::for_clients(
            "slow-*",
            Action::Delay { packet: AckPacket::PubAck, by: Delay::Fixed(d) },
        )];
    })
    .await;
    let text = r#"
thresholds = [
  "puback{group=slow}.p50 >= 20ms",
  "puback{group=fast}.raw.p99 < 20ms",
  "e2e{group=app}.count == 0",
  "e2e{group=fast}.count > 0",
]
[run]
duration = "3s"
drain = "500ms"
[[group]]
name = "fast"
clients = 3
client_id = "fast-{i}"
[group.publish]
topic = "g/fast/{i}"
qos = 1
interval = "50ms"
[[group]]
name = "slow"
clients = 2
client_id = "slow-{i}"
[group.publish]
topic = "g/slow/{i}"
qos = 1
interval = "50ms"
[[group]]
name = "app"
clients = 1
[group.subscribe]
filters = ["g/#"]
qos = 1
"#;
    let dir = tempfile::tempdir().unwrap();
    let report = support::run(support::plan(text, &support::url(&broker), dir.path())).await;
    assert_eq!(report.delivery.all.lost, 0, "{:?}", report.delivery);
    let group = |name: &str| report.groups.iter().find(|g| g.name == name).unwrap();
    let corrected = |g: &str, m: &str| group(g).latency.get(m).and_then(|l| l.corrected);
    let raw = |g: &str, m: &str| group(g).latency.get(m).and_then(|l| l.raw);
    let (fast, slow) = (corrected("fast", "puback").unwrap(), corrected("slow", "puback").unwrap());
    eprintln!("fast puback {fast:?}\nslow puback {slow:?}");
    assert!(slow.min_us >= d.as_micros() as u64, "every slow PUBACK was held: {slow:?}");
    let fast_raw = raw("fast", "puback").unwrap();
    assert!(fast_raw.p99_us < d.as_micros() as u64, "no fast PUBACK was held: {fast_raw:?}");
    // e2e: the publishers' groups, the subscriber's none; together, the run's total
    let e2e = |g: &str| corrected(g, "e2e").map_or(0, |p| p.count);
    assert_eq!(e2e("app"), 0, "the subscriber published nothing");
    assert!(e2e("fast") > 0 && e2e("slow") > 0);
    assert_eq!(e2e("fast") + e2e("slow"), report.latency["e2e"].corrected.unwrap().count);
    assert_eq!(
        (corrected("fast", "puback").unwrap().count + slow.count),
        report.latency["puback"].corrected.unwrap().count
    );
    for t in &report.thresholds {
        assert!(t.pass, "{t:?}");
    }
    broker.shutdown().await;
}
