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
    // the observer got exactly one will per dropped client (wills carry no squall header)
    assert_eq!(c["received_foreign"], 8, "{c:?}");
    let clean = will_storm(&m.url(), "disconnect", "never").await;
    let c = &clean.counters;
    assert_eq!(c["event_actions"], 8, "{c:?}");
    assert_eq!(c["received_foreign"], 0, "no will after a clean DISCONNECT: {c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_taken_away_come_back_as_the_event_says() {
    let broker = support::broker(|_| {}).await;
    let url = support::url(&broker);
    let r = will_storm(&url, "drop", "now").await;
    let c = &r.counters;
    assert_eq!((c["event_actions"], c["reconnects"], c["received_foreign"]), (8, 8, 8), "{c:?}");
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
    assert_eq!((c["event_actions"], c["received_foreign"], c["reconnects"]), (8, 8, 8), "{c:?}");
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
    assert_eq!((c["event_actions"], c["received_foreign"]), (8, 8), "{c:?}");
}
