//! Scenario events against real brokers: clients taken away on schedule (drop, clean
//! disconnect, silence), the wills that must and must not follow, and the way back.

mod support;

use squall_controller::report::Report;
use support::mosquitto::Mosquitto;

async fn run(target: &str, text: &str) -> Report {
    let dir = tempfile::tempdir().unwrap();
    support::run(support::plan(text, target, dir.path())).await
}

/// `count` of 20 devices with wills taken away by `action` half a second into the window; an
/// observer subscribed to the wills. Returns the report.
async fn will_storm(target: &str, action: &str, back: &str) -> Report {
    will_storm_for(target, action, back, "2s", "3.1.1").await
}

async fn will_storm_for(target: &str, action: &str, back: &str, duration: &str, protocol: &str) -> Report {
    let text = format!(
        r#"
[run]
duration = "{duration}"
drain = "1s"
[[group]]
name = "obs"
clients = 1
[group.subscribe]
filters = ["wills/#"]
qos = 1
[[group]]
name = "dev"
clients = 20
keepalive = "1s"
protocol = "{protocol}"
[group.will]
topic = "wills/{{i}}"
payload = "gone"
qos = 1
[group.publish]
topic = "dev/{{i}}"
interval = "100ms"
[[group.event]]
at = "500ms"
action = "{action}"
count = 8
back = "{back}"
"#
    );
    run(target, &text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_clients_fire_their_wills_and_clean_ones_do_not_on_mosquitto() {
    let m = Mosquitto::start();
    let dropped = will_storm(&m.url(), "drop", "never").await;
    let c = &dropped.counters;
    assert_eq!(c["event_actions"], 8, "{c:?}");
    // the observer got exactly one will per dropped client, each named by its header
    assert_eq!((c["wills_received"], c["received_foreign"]), (8, 0), "{c:?}");
    let w = dropped.wills.unwrap();
    assert!(w.complete);
    assert_eq!((w.expected, w.delivered, w.missing, w.unexpected), (8, 8, 0, 0), "{w:?}");
    let lat = dropped.latency["will"].raw.unwrap();
    assert_eq!(lat.count, 8);
    let clean = will_storm(&m.url(), "disconnect", "never").await;
    let c = &clean.counters;
    assert_eq!(c["event_actions"], 8, "{c:?}");
    assert_eq!(c["wills_received"], 0, "no will after a clean DISCONNECT: {c:?}");
    let w = clean.wills.unwrap();
    assert_eq!((w.expected, w.delivered, w.unexpected), (0, 0, 0), "{w:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_taken_away_come_back_as_the_event_says() {
    let broker = support::broker(|_| {}).await;
    let url = support::url(&broker);
    let r = will_storm(&url, "drop", "now").await;
    let c = &r.counters;
    assert_eq!((c["event_actions"], c["reconnects"], c["wills_received"]), (8, 8, 8), "{c:?}");
    let w = r.wills.unwrap();
    assert_eq!((w.expected, w.delivered, w.missing, w.unexpected), (8, 8, 0, 0), "{w:?}");
    let back = r.groups.iter().find(|g| g.name == "dev").unwrap().latency["reconnect"].raw.unwrap();
    assert_eq!(back.count, 8);
    assert!(back.max_us < 500_000, "back at once: {back:?}");
    // the schedule kept running while they were away: nothing it owed was lost on the way back
    assert_eq!(r.delivery.all.lost, 0, "{:?}", r.delivery);
    broker.shutdown().await;
}

/// Silence: no packet at all, PINGREQ included, until the broker's keepalive (1.5 × 1 s) ends
/// the connection; then the will fires, and the client comes back. (squall's broker: it
/// enforces keepalive to the millisecond; mosquitto 2.0 checks every few seconds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_ended_by_the_brokers_keepalive_and_its_will_fires() {
    let broker = support::broker(|_| {}).await;
    let r = will_storm_for(&support::url(&broker), "silence", "now", "3s", "3.1.1").await;
    let c = &r.counters;
    assert_eq!((c["event_actions"], c["wills_received"], c["reconnects"]), (8, 8, 8), "{c:?}");
    let w = r.wills.unwrap();
    assert_eq!((w.expected, w.delivered, w.missing, w.unexpected, w.early), (8, 8, 0, 0, 0), "{w:?}");
    // measured from when the broker was due to act (last packet + 1.5 × keepalive), not from
    // the silence: what is left is the broker's enforcement delay, well under the 1.5 s
    let will = r.groups.iter().find(|g| g.name == "dev").unwrap().latency["will"].raw.unwrap();
    assert_eq!(will.count, 8);
    assert!(will.max_us < 1_000_000, "{will:?}");
    let away = r.groups.iter().find(|g| g.name == "dev").unwrap().latency["reconnect"].raw.unwrap();
    // from the silence to the next CONNACK: at least the broker's 1.5 s
    assert!(away.min_us >= 1_000_000, "{away:?}");
    broker.shutdown().await;
}

/// MQTT 5's DISCONNECT with reason 0x04 asks the broker to publish the will: it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_with_will_publishes_the_will_on_mosquitto() {
    let m = Mosquitto::start();
    let r = will_storm_for(&m.url(), "disconnect_with_will", "never", "2s", "5").await;
    let c = &r.counters;
    assert_eq!((c["event_actions"], c["wills_received"]), (8, 8), "{c:?}");
    let w = r.wills.unwrap();
    assert_eq!((w.expected, w.delivered, w.missing, w.unexpected), (8, 8, 0, 0), "{w:?}");
}

/// Wills for the will ledger's spec cases: `n` devices (MQTT 5, persistent sessions) with a
/// will `delay` taken away by `action` half a second in, coming `back`.
async fn delayed_wills(target: &str, action: &str, back: &str, delay: &str) -> Report {
    let text = format!(
        r#"
[run]
duration = "4s"
drain = "1s"
[[group]]
name = "obs"
clients = 1
protocol = "5"
[group.subscribe]
filters = ["wills/#"]
qos = 1
[[group]]
name = "dev"
clients = 10
protocol = "5"
clean_start = false
session_expiry = "60s"
[group.will]
topic = "wills/{{i}}"
payload = "gone"
qos = 1
delay = "{delay}"
[[group.event]]
at = "500ms"
action = "{action}"
count = 6
back = "{back}"
"#
    );
    run(target, &text).await
}

/// MQTT 5 will delay on squall's broker: a session resumed within the delay withholds the will;
/// one that stays away gets it after the delay, and the latency counts from then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_will_is_withheld_on_resume_and_due_after_its_delay() {
    let broker = support::broker(|_| {}).await;
    let url = support::url(&broker);
    let resumed = delayed_wills(&url, "drop", "now", "2s").await;
    let w = resumed.wills.unwrap();
    assert_eq!(resumed.counters["reconnects"], 6);
    assert_eq!((w.expected, w.delivered, w.unexpected), (0, 0, 0), "withheld: {w:?}");
    let away = delayed_wills(&url, "drop", "never", "1s").await;
    let w = away.wills.unwrap();
    assert_eq!((w.expected, w.delivered, w.missing, w.unexpected, w.early), (6, 6, 0, 0, 0), "{w:?}");
    // from the drop + 1 s: the broker's share only (it sleeps whole seconds, to the ms)
    let will = away.latency["will"].raw.unwrap();
    assert!(will.max_us < 500_000, "{will:?}");
    broker.shutdown().await;
}

/// A broker that publishes a will after a clean DISCONNECT (squall's broker, broken on
/// purpose) is caught: every such will is `unexpected`, none is counted as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_after_a_clean_disconnect_is_unexpected() {
    use squall_broker::faults::{Action, Rule};
    let broker = support::broker(|c| c.faults = vec![Rule::all(Action::WillOnCleanDisconnect)]).await;
    let r = will_storm(&support::url(&broker), "disconnect", "never").await;
    let w = r.wills.unwrap();
    // the 8 taken away mid-run; the rest leave at the end with the observer. Each group's
    // client 0 leaves at the same instant (the finish time plus 0 / disconnect_rate), so when
    // `dev` client 0 was not among the 8 (a seeded choice), its will can reach the observer
    // before the observer is gone: 8, or 9 with that one; never one counted as delivered
    assert_eq!((w.expected, w.delivered), (0, 0), "{w:?}");
    assert!((8..=9).contains(&w.unexpected), "{w:?}");
    assert!(r.thresholds.is_empty());
    broker.shutdown().await;
}

/// A storm of 2,000 drops at once, back by the group's backoff: every client returns, the
/// report's recovery is measured from the drop, and the policy's own share (here a constant
/// 300 ms, or decorrelated jitter up to `max_backoff`) is shown beside it.
async fn storm_of_2000(target: &str, jitter: &str, max_backoff: &str) -> Report {
    let text = format!(
        r#"
[run]
duration = "4s"
drain = "1s"
[[group]]
name = "dev"
clients = 2000
connect_rate = 4000
[group.reconnect]
backoff = "constant"
jitter = "{jitter}"
min_backoff = "300ms"
max_backoff = "{max_backoff}"
max_rate = 100000
[[group.event]]
at = "1s"
action = "drop"
fraction = 1.0
back = "backoff"
"#
    );
    run(target, &text).await
}

fn one_storm(r: &Report) -> &squall_controller::report::StormReport {
    assert_eq!(r.storms.len(), 1, "{:?}", r.storms);
    &r.storms[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_2000_drops_recovers_fully_and_shows_the_policys_share() {
    let m = Mosquitto::start();
    let broker = support::broker(|_| {}).await;
    for target in [m.url(), support::url(&broker)] {
        let r = storm_of_2000(&target, "none", "300ms").await;
        let s = one_storm(&r);
        assert_eq!((s.taken, s.back, s.abandoned), (2000, 2000, 0), "{target}: {s:?}");
        // nothing refused them on the way back: one attempt each
        assert_eq!((s.failed_attempts, s.failed_attempts_peak_per_s, s.attempts_max), (0, 0, 1), "{s:?}");
        assert_eq!(s.attempts_mean, 1.0);
        let (p100, r99, r100) =
            (s.policy_100_ms.unwrap(), s.recovered_99_ms.unwrap(), s.recovered_100_ms.unwrap());
        // constant, no jitter: every client waited its 300 ms (the timer may be late, not early)
        let p99 = s.policy_99_ms.unwrap();
        assert!((299.0..400.0).contains(&s.policy_99_ms.unwrap()), "{target}: {s:?}");
        assert!(p99 <= p100 && r99 <= r100 && p100 <= r100, "{target}: {s:?}");
        let backoff = r.latency["backoff"].raw.unwrap();
        assert_eq!(backoff.count, 2000);
        assert!(backoff.min_us >= 299_000, "{backoff:?}");

        // decorrelated jitter: uniform between the base and 3 × the last delay, capped at
        // 900 ms: spread, never in lockstep
        let r = storm_of_2000(&target, "decorrelated", "900ms").await;
        let s = one_storm(&r);
        assert_eq!((s.taken, s.back), (2000, 2000), "{target}: {s:?}");
        let b = r.latency["backoff"].raw.unwrap();
        assert!(b.min_us >= 299_000 && b.p90_us > b.p50_us + 100_000, "{target}: {b:?}");
        assert!(s.policy_100_ms.unwrap() > 600.0, "{target}: {s:?}");
    }
    broker.shutdown().await;
}

/// Blackhole: the link dies both ways (incoming packets dropped before TCP, nothing written).
/// The broker's keepalive ends it (1.5 × 1 s) and publishes the will; the client cannot see the
/// broker's close, so it gives the link up only at its own deadline (the broker's + 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_client_is_ended_by_the_broker_and_comes_back_after_its_own_deadline() {
    let broker = support::broker(|_| {}).await;
    let r = will_storm_for(&support::url(&broker), "blackhole", "now", "4s", "3.1.1").await;
    let c = &r.counters;
    assert_eq!((c["event_actions"], c["events_refused"], c["reconnects"]), (8, 0, 8), "{c:?}");
    let w = r.wills.unwrap();
    assert_eq!((w.expected, w.delivered, w.missing, w.unexpected, w.early), (8, 8, 0, 0, 0), "{w:?}");
    let dev = r.groups.iter().find(|g| g.name == "dev").unwrap();
    assert!(dev.latency["will"].raw.unwrap().max_us < 1_000_000, "{:?}", dev.latency["will"]);
    // a silent client sees the broker's FIN at 1.5 s; a blackholed one never does
    let away = dev.latency["reconnect"].raw.unwrap();
    assert!(away.min_us >= 2_300_000, "{away:?}");
    broker.shutdown().await;
}

/// Each policy, measured: 2,000 clients whose first three connections squall's broker refuses,
/// then a storm that drops them all, back by their backoff. With no jitter, the delays they
/// really waited are the policy's steps: constant 100, 100, 100 ms; linear 100, 200, 300 ms;
/// exponential 100, 200, then the 350 ms cap. (Each wait also holds the client's place in the
/// group's reconnect queue: 2,000 at 100,000/s are up to 20 ms apart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backoff_policy_waits_its_own_steps_through_refusals_and_a_storm() {
    use squall_broker::{Action, Rule, Selector};
    for (policy, steps) in
        [("constant", [100, 100, 100]), ("linear", [100, 200, 300]), ("exponential", [100, 200, 350])]
    {
        let broker = support::broker(|c| {
            c.faults = vec![Rule {
                select: Selector { first: Some(3), ..Default::default() },
                action: Action::Refuse { code: 0x88 },
            }]
        })
        .await;
        let text = format!(
            r#"
[run]
duration = "3s"
drain = "500ms"
ramp_timeout = "20s"
[[group]]
name = "dev"
clients = 2000
connect_rate = 4000
[group.reconnect]
backoff = "{policy}"
jitter = "none"
min_backoff = "100ms"
max_backoff = "350ms"
max_rate = 100000
[[group.event]]
at = "1500ms"
action = "drop"
fraction = 1.0
back = "backoff"
"#
        );
        let r = run(&support::url(&broker), &text).await;
        let c = &r.counters;
        assert_eq!((c["connects"], c["reconnects"], c["abandoned"]), (4000, 2000, 0), "{policy}: {c:?}");
        assert_eq!(c["connect_failures"], 6000, "{policy}: {c:?}");
        let s = one_storm(&r);
        assert_eq!((s.taken, s.back), (2000, 2000), "{policy}: {s:?}");
        // 8,000 waits: three after refusals, one after the drop (the first step again)
        let b = r.latency["backoff"].raw.unwrap();
        assert_eq!(b.count, 8000, "{policy}");
        let ms = |us: u64| (us as f64 / 1e3).round() as u64;
        // half the waits are the first step (the first retry, and the storm's), the top quarter
        // the third; late by the queue and the timer, never early
        // (the median is the slowest of the first-step half: lateness shows there first)
        assert!(b.min_us >= steps[0] * 1000 - 1000, "{policy}: {b:?}");
        let below_next = if steps[1] > steps[0] { steps[1] } else { steps[0] + 60 };
        assert!((steps[0]..below_next).contains(&ms(b.p50_us)), "{policy}: {b:?}");
        assert!((steps[2]..steps[2] + 60).contains(&ms(b.p90_us)), "{policy}: {b:?}");
        assert!(ms(b.max_us) < steps[2] + 150, "{policy}: {b:?}");
        broker.shutdown().await;
    }
}

/// Refusals on the way back from a storm: squall's broker refuses each client's 2nd and 3rd
/// connections (its first two attempts after the drop), so all 200 come back on their third
/// attempt; the storm counts 400 failed attempts, their peak second, and 3 attempts a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_counts_the_refusals_on_the_way_back_and_the_attempts_per_client() {
    use squall_broker::{Action, Rule, Selector};
    let broker = support::broker(|c| {
        c.faults = vec![Rule {
            select: Selector { after: Some(1), first: Some(3), ..Default::default() },
            action: Action::Refuse { code: 0x89 },
        }]
    })
    .await;
    let text = r#"
[run]
duration = "3s"
drain = "500ms"
[[group]]
name = "dev"
clients = 200
[group.reconnect]
backoff = "constant"
jitter = "none"
min_backoff = "100ms"
max_backoff = "100ms"
[[group.event]]
at = "500ms"
action = "drop"
fraction = 1.0
back = "backoff"
"#;
    let r = run(&support::url(&broker), text).await;
    let s = one_storm(&r);
    assert_eq!((s.taken, s.back, s.abandoned), (200, 200, 0), "{s:?}");
    assert_eq!((s.failed_attempts, s.attempts_max), (400, 3), "{s:?}");
    assert_eq!(s.attempts_mean, 3.0);
    // back at 100, 200 and 300 ms: both refusals inside the storm's first second
    assert_eq!(s.failed_attempts_peak_per_s, 400, "{s:?}");
    // by the code the broker gave: 0x89 (server busy) is 3 (server unavailable) on 3.1.1
    let refused = r.errors.iter().find(|e| e.kind == "connect_refused").unwrap();
    assert_eq!((refused.code, refused.count), (Some(3), 400));
    broker.shutdown().await;
}
