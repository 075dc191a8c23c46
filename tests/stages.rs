//! Staged runs: publishers keep to each stage's share of the scenario's rates and publish
//! nothing between stages; an agent refuses a stage it cannot run and stops all load.

mod support;

use std::time::Duration;

use squall_agent::engine::{self, AgentEvent, Command};
use squall_controller::scenario::{Overrides, Source, load_source};
use squall_controller::segment::segment;
use squall_proto::clock::Clock;
use squall_proto::link::StageCommand;
use squall_proto::metrics::Snapshot;

const MS: u64 = 1_000_000;

/// 20 publishers at 10 msg/s each (200 msg/s) and one subscriber, snapshots every 100 ms.
fn staged_assignment(broker: &squall_broker::Broker) -> squall_proto::plan::Assignment {
    let text = "[run]\nduration = \"10s\"\nsnapshot_interval = \"100ms\"\n\
                [[group]]\nname = \"pub\"\nclients = 20\n[group.publish]\ntopic = \"st/{i}\"\ninterval = \"100ms\"\n\
                [[group]]\nname = \"sub\"\nclients = 1\n[group.subscribe]\nfilters = [\"st/#\"]\n";
    let ov = Overrides { targets: vec![support::url(broker)], ..Default::default() };
    let plan = load_source(&Source::new("s.toml", text), &ov).unwrap();
    let mut a = segment(&plan, &plan.targets, &[1]).remove(0);
    a.staged = true;
    a
}

async fn until_ready(h: &mut engine::AgentHandle) {
    while let Some(ev) = h.events.recv().await {
        if let AgentEvent::Ready { connected, .. } = ev {
            assert_eq!(connected, 21);
            return;
        }
    }
    panic!("the engine ended before it was ready");
}

/// Messages published in the snapshots that lie wholly inside `[from, to)`.
fn published_within(snaps: &[Snapshot], from: u64, to: u64) -> (u64, u64) {
    let inside: Vec<&Snapshot> =
        snaps.iter().filter(|s| s.start_unix_ns >= from && s.end_unix_ns <= to).collect();
    let n = inside.iter().map(|s| s.counters.published()).sum();
    let span = inside.iter().map(|s| s.end_unix_ns - s.start_unix_ns).sum();
    (n, span)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_publishes_at_its_share_of_the_rate_and_nothing_between_stages() {
    let broker = support::broker(|_| {}).await;
    let clock = Clock::new();
    let mut h = engine::start(staged_assignment(&broker), clock.clone()).await.unwrap();
    until_ready(&mut h).await;
    let start = clock.now_ns() + 100 * MS;
    let stages = [(0, 1000, 1.0), (1500, 2500, 3.0), (2500, 3000, 0.5)];
    // the window first, then the stages as a capacity search sends them: each before it starts
    h.commands
        .send(Command::Publish { start_unix_ns: start, until_unix_ns: start + 3000 * MS })
        .await
        .unwrap();
    for (i, &(from, to, scale)) in stages.iter().enumerate() {
        let st = StageCommand {
            index: i as u32,
            start_unix_ns: start + from * MS,
            until_unix_ns: start + to * MS,
            scale,
        };
        h.commands.send(Command::Stage(st)).await.unwrap();
    }
    let mut snaps = Vec::new();
    let streams = loop {
        match h.events.recv().await.expect("the engine runs until told to finish") {
            AgentEvent::Snapshot(s) => snaps.push(s),
            AgentEvent::PublishDone { streams } => break streams,
            AgentEvent::Failed { message } => panic!("{message}"),
            _ => {}
        }
    };
    // every client's schedule is exact: 10 per client at 10/s for 1 s, 30 (±1 for the stagger)
    // at 30/s for 1 s, 2 or 3 at 5/s for 0.5 s
    let sent: u64 = streams.iter().map(|s| s.sent).sum();
    assert!((200 + 600 + 40..=200 + 620 + 60).contains(&sent), "sent {sent}");
    // nothing in the pause between stage 0 and stage 1 (a 20 ms margin for the snapshot ticks)
    let (gap, gap_span) = published_within(&snaps, start + 1020 * MS, start + 1480 * MS);
    assert!(gap_span >= 200 * MS, "the pause was seen by snapshots ({gap_span} ns)");
    assert_eq!(gap, 0, "published between stages");
    // inside stage 1, three times stage 0's rate
    let rate = |(n, span): (u64, u64)| n as f64 / (span as f64 / 1e9);
    let r0 = rate(published_within(&snaps, start + 20 * MS, start + 980 * MS));
    let r1 = rate(published_within(&snaps, start + 1520 * MS, start + 2480 * MS));
    assert!((150.0..=250.0).contains(&r0), "stage 0 published {r0:.0}/s, not 200");
    assert!((480.0..=720.0).contains(&r1), "stage 1 published {r1:.0}/s, not 600");
    h.commands.send(Command::Finish { streams, drain_ms: 200 }).await.unwrap();
    while let Some(ev) = h.events.recv().await {
        if let AgentEvent::Finished(r) = ev {
            let d = r.ledger.all();
            assert_eq!(d.lost, 0);
            assert_eq!(
                (d.expected, d.received),
                (sent, sent),
                "everything sent in every stage was delivered"
            );
            return;
        }
    }
    panic!("the engine did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_out_of_order_or_beyond_a_clients_rate_stops_all_load() {
    for (index, scale, why) in [(1, 1.0, "expected stage 0"), (0, 1e9, "outside"), (0, f64::NAN, "outside")] {
        let broker = support::broker(|_| {}).await;
        let clock = Clock::new();
        let mut h = engine::start(staged_assignment(&broker), clock.clone()).await.unwrap();
        until_ready(&mut h).await;
        let start = clock.now_ns() + 100 * MS;
        h.commands
            .send(Command::Publish { start_unix_ns: start, until_unix_ns: start + 60_000 * MS })
            .await
            .unwrap();
        let st = StageCommand { index, start_unix_ns: start, until_unix_ns: start + 60_000 * MS, scale };
        h.commands.send(Command::Stage(st)).await.unwrap();
        let message = loop {
            match tokio::time::timeout(Duration::from_secs(10), h.events.recv()).await {
                Ok(Some(AgentEvent::Failed { message })) => break message,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no failure for stage {index} at scale {scale}"),
            }
        };
        assert!(message.contains(why) && message.contains("all load stopped"), "{message}");
        // every client leaves
        for _ in 0..1000 {
            if broker.stats().connections == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(broker.stats().connections, 0, "clients still connected after a refused stage");
    }
}

/// A capacity search against squall's broker limited to a known number of PUBLISH a second:
/// the capacity found brackets the limit, and every step that broke received at the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_search_finds_a_brokers_known_capacity() {
    const LIMIT: f64 = 2000.0;
    let broker = support::broker(|c| c.publishes_per_sec = Some(LIMIT)).await;
    // 500 msg/s at 100 %: the limit is at 400 %
    let text = "[run]\nsnapshot_interval = \"250ms\"\n\
                [[group]]\nname = \"pub\"\nclients = 10\n[group.publish]\ntopic = \"cap/{i}\"\ninterval = \"20ms\"\n\
                [[group]]\nname = \"sub\"\nclients = 1\n[group.subscribe]\nfilters = [\"cap/#\"]\n\
                [search]\nslo = [\"e2e.p99 < 50ms\", \"missing == 0\"]\nfrom = \"100%\"\nto = \"1600%\"\n\
                step = \"2s\"\nwarmup = \"500ms\"\nprecision = \"10%\"\n";
    let dir = tempfile::tempdir().unwrap();
    let report = support::run(support::plan(text, &support::url(&broker), dir.path())).await;
    let c = report.capacity.as_ref().expect("a search reports its capacity");
    assert_eq!(c.ended, "converged", "{c:?}");
    assert!(c.monotone, "{c:?}");
    let (found, broke) = (c.found.as_ref().unwrap(), c.broke.as_ref().unwrap());
    assert!(
        (0.75 * LIMIT..=1.02 * LIMIT).contains(&found.offered_rate),
        "held at {} msg/s against a limit of {LIMIT}",
        found.offered_rate
    );
    assert!(
        broke.offered_rate > LIMIT && broke.offered_rate <= 1.25 * LIMIT,
        "broke at {} msg/s against a limit of {LIMIT}",
        broke.offered_rate
    );
    assert!(broke.offered_rate <= found.offered_rate * 1.1 + 1.0, "bracket within the precision: {c:?}");
    // each step as judged: the offered load was published, and a step that broke took the
    // broker past its limit, which delivered at that limit
    assert_eq!(report.stages.len() as u32, c.steps);
    for st in &report.stages {
        let v = st.verdict.as_ref().expect("search steps are judged");
        assert!((st.publish_rate - st.offered_rate).abs() <= 0.05 * st.offered_rate, "step {st:?}");
        let p99 = st.latency["e2e"].corrected.as_ref().unwrap().p99_us;
        assert_eq!(v.held, p99 < 50_000, "the verdict follows the measured p99 ({p99} µs): {st:?}");
        if !v.held {
            assert!(st.offered_rate > LIMIT, "broke below the limit: {st:?}");
            assert!(
                (st.receive_rate - LIMIT).abs() <= 0.05 * LIMIT,
                "delivered {} against the limit",
                st.receive_rate
            );
        }
    }
    // nothing lost: the steps that broke only queued
    assert_eq!(report.delivery.all.lost, 0);
}

/// The command end to end: a search's answer judged by a threshold (exit 0 when it holds, 1
/// when not), the stages table in the summary, the report valid against its schema.
#[test]
fn a_search_answer_is_a_threshold_and_the_report_matches_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    // 200 msg/s at 100 %; the embedded broker holds far more, so the search ends at its top
    let scenario = |threshold: &str| {
        format!(
            "thresholds = [\"{threshold}\"]\n[run]\nsnapshot_interval = \"250ms\"\ndrain = \"500ms\"\n\
             [[group]]\nname = \"pub\"\nclients = 10\n[group.publish]\ntopic = \"c/{{i}}\"\ninterval = \"50ms\"\n\
             [[group]]\nname = \"sub\"\nclients = 1\n[group.subscribe]\nfilters = [\"c/#\"]\n\
             [search]\nslo = [\"e2e.p99 < 500ms\"]\nto = \"400%\"\nstep = \"1s\"\nwarmup = \"250ms\"\n"
        )
    };
    for (threshold, code) in [("capacity >= 800", 0), ("capacity >= 801", 1)] {
        let path = dir.path().join("search.toml");
        std::fs::write(&path, scenario(threshold)).unwrap();
        let report = dir.path().join("report.json");
        let out = support::squall()
            .args(["run", "--live", "off", "--report"])
            .arg(&report)
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "{threshold}: {stdout}");
        assert!(stdout.contains("steps") && stdout.contains("400%"), "{stdout}");
        assert!(stdout.contains("800 msg/s (400% of the scenario's rates) held e2e.p99 < 500ms"), "{stdout}");
        assert!(stdout.contains("its highest step held"), "{stdout}");
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["capacity"]["ended"], "top");
        assert_eq!(r["capacity"]["steps"], 3, "100 %, 200 %, 400 %");
        assert_eq!(r["stages"].as_array().unwrap().len(), 3);
        support::validate_with_jsonschema(std::path::Path::new("schemas/report.schema.json"), &report);
        // the HTML report draws the capacity curve: a point per step, in rate order
        let html = dir.path().join("r.html");
        let out = support::squall().arg("report").arg(&report).arg("--html").arg(&html).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "the verdict again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&html).unwrap();
        let curve =
            text.split_once("End-to-end latency by offered rate").expect("the capacity curve is drawn").1;
        let p99 = curve.split("<polyline").nth(2).expect("a p99 line").split("points=\"").nth(1).unwrap();
        let xs: Vec<f64> = p99
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .map(|xy| xy.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(xs.len(), 3, "{p99}");
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "in rate order: {xs:?}");
        assert!(
            text.contains("800 msg/s (400% of the scenario&#39;s rates)")
                || text.contains("800 msg/s (400% of the scenario's rates)")
        );
        // and the Markdown has the steps' table and the answer
        let out = support::squall().arg("report").arg(&report).arg("--md").output().unwrap();
        let md = String::from_utf8_lossy(&out.stdout);
        assert!(md.contains("| 3 | 400% | 800 |") && md.contains("**Capacity**: 800 msg/s"), "{md}");
    }
}
