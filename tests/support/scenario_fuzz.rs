//! A structured fuzz of scenario loading: scenarios drawn from the file format's grammar, with
//! every value picked from the edges (zero, negative, huge, NaN, wrong type, bad units,
//! malformed templates) as well as ordinary ones; the same scenarios with bytes flipped; and
//! arbitrary bytes. Each must load or be refused with a diagnostic: never a panic, never a
//! hang, and a plan that loads must split over agents into assignments that validate.
//!
//! Shared by `tests/scenario_fuzz.rs` (a few hundred cases) and the 10-minute bench job
//! (`cargo bench -p squall-benches --bench fuzz_scenarios`), which includes this file.

use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use squall_controller::scenario::{Overrides, Source, load_source};
use squall_controller::segment::segment;

/// How long one scenario may take to load before it counts as a hang (loading takes
/// microseconds; this is a hang detector, not a speed bound).
pub const HANG: Duration = Duration::from_secs(20);

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(options).prop_map(str::to_string)
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        pick(&[
            "\"0s\"",
            "\"1ns\"",
            "\"10us\"",
            "\"1ms\"",
            "\"100ms\"",
            "\"1s\"",
            "\"2s\"",
            "\"30d\"",
            "\"31d\"",
            "\"100000000000h\"",
            "\"-1s\"",
            "\"1\"",
            "\"ms\"",
            "\"\"",
            "\"1s 1s\"",
            "1",
            "-5",
            "true",
            "\"18446744073709551615ns\"",
            "\"1e400s\"",
        ]),
        (0u64..100_000, pick(&["ns", "us", "ms", "s", "m", "h", "d", "x", ""]))
            .prop_map(|(n, u)| format!("\"{n}{u}\"")),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        pick(&[
            "0",
            "1",
            "-1",
            "2",
            "100",
            "65535",
            "65536",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "18446744073709551616",
            "1e30",
            "-1e30",
            "1.5",
            "nan",
            "inf",
            "-inf",
            "0.0000001",
            "\"10\"",
            "true",
            "268435455",
            "268435456",
            "4000000000",
        ]),
        any::<u32>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:e}") } else { "1.0".into() }),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        pick(&[
            "\"t/{i}\"",
            "\"t/{i}/{group}/{agent}/{run}\"",
            "\"{i\"",
            "\"{nope}\"",
            "\"t/#\"",
            "\"t/+/x\"",
            "\"$share/g/t/#\"",
            "\"$share//t\"",
            "\"#/x\"",
            "\"a+b\"",
            "\"\"",
            "\"t\\u0000\"",
            "\"dev-{i}\"",
            "\"{i}{i}{i}\"",
            "\"é/{i}\"",
            "1",
        ]),
        "[a-z{}/+#$]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

/// Mostly an ordinary value for `key` (so that most scenarios get past the parser and into
/// resolution, splitting and validation), sometimes one from the edges.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    prop_oneof![12 => ordinary(key), 1 => edge(key)].boxed()
}

fn ordinary(key: &'static str) -> BoxedStrategy<String> {
    match key {
        "duration" | "drain" | "ramp_timeout" | "snapshot_interval" | "keepalive" | "session_expiry"
        | "connect_timeout" | "ack_timeout" | "min_backoff" | "delay" => {
            pick(&["\"1s\"", "\"2s\"", "\"500ms\""]).boxed()
        }
        "max_duration" => pick(&["\"1h\"", "\"10m\""]).boxed(),
        "max_backoff" => pick(&["\"5s\"", "\"10s\""]).boxed(),
        "interval" => pick(&["\"100ms\"", "\"1s\"", "\"10us\""]).boxed(),
        "timer_coalesce" => pick(&["\"0s\"", "\"250us\"", "\"10ms\""]).boxed(),
        "topic" => pick(&["\"t/{i}\"", "\"t/{group}/{i}\"", "\"$share/x/t/#\""]).boxed(),
        "client_id" => pick(&["\"c-{group}-{i}\"", "\"{run}-{agent}-{group}-{i}\""]).boxed(),
        "name" | "username" | "password" | "payload" | "payload_raw" => {
            pick(&["\"g\"", "\"x\"", "\"hello\""]).boxed()
        }
        "protocol" => pick(&["\"3.1.1\"", "\"5\""]).boxed(),
        "clean_start" | "retain" | "enabled" => pick(&["true", "false"]).boxed(),
        "filters" => pick(&["[\"t/#\"]", "[\"t/+\", \"t/x/#\"]", "[\"$share/s/t/#\"]"]).boxed(),
        "urls" => {
            pick(&["[\"mqtt://127.0.0.1:1883\"]", "[\"mqtt://127.0.0.1:1\", \"mqtt://[::1]:2\"]"]).boxed()
        }
        "source_addresses" => pick(&["[\"127.0.0.1\"]", "[]"]).boxed(),
        "qos" => pick(&["0", "1", "2"]).boxed(),
        "clients" => (1u32..2000).prop_map(|n| n.to_string()).boxed(),
        "payload_size" => pick(&["64", "36", "1000"]).boxed(),
        "max_inflight" => pick(&["1", "10", "65535"]).boxed(),
        "max_unsent_bytes" => pick(&["65536", "268435456"]).boxed(),
        "max_connecting" => pick(&["1", "64", "4096"]).boxed(),
        "rate" | "from" | "to" | "precision" => {
            pick(&["\"50%\"", "\"100%\"", "\"250%\"", "\"5%\"", "\"10000%\""]).boxed()
        }
        "step" | "warmup" => pick(&["\"2s\"", "\"500ms\"", "\"20s\""]).boxed(),
        "slo" => {
            pick(&["[\"e2e.p99 < 20ms\"]", "[\"missing == 0\", \"receive.rate >= 10\"]", "[\"lost == 0\"]"])
                .boxed()
        }
        "max_steps" => pick(&["1", "16", "64"]).boxed(),
        _ => pick(&["1", "10", "100", "1000", "0.5"]).boxed(),
    }
}

fn edge(key: &'static str) -> BoxedStrategy<String> {
    match key {
        "duration" | "drain" | "ramp_timeout" | "max_duration" | "snapshot_interval" | "timer_coalesce"
        | "keepalive" | "session_expiry" | "connect_timeout" | "ack_timeout" | "interval" | "min_backoff"
        | "max_backoff" | "delay" => duration().boxed(),
        "topic" | "client_id" | "name" | "payload" | "payload_raw" | "username" | "password" => {
            text().boxed()
        }
        "protocol" => pick(&["\"3.1.1\"", "\"5\"", "\"4\"", "\"\"", "5"]).boxed(),
        "rate" | "from" | "to" | "precision" => prop_oneof![
            pick(&[
                "\"0%\"",
                "\"-5%\"",
                "\"1e400%\"",
                "\"nan%\"",
                "\"inf%\"",
                "\"%\"",
                "\"100\"",
                "5",
                "\"1e-300%\"",
                "\"1000000000000%\""
            ]),
            (0u64..10_000_000).prop_map(|n| format!("\"{n}%\"")),
        ]
        .boxed(),
        "slo" => prop_oneof![
            proptest::collection::vec(text(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
            pick(&["[]", "[\"capacity > 1\"]", "[\"errors > 10 abort\"]", "\"e2e.p99 < 1ms\""]),
        ]
        .boxed(),
        "step" | "warmup" => duration().boxed(),
        "clean_start" | "retain" | "enabled" => pick(&["true", "false", "1", "\"yes\""]).boxed(),
        "filters" | "urls" | "source_addresses" => prop_oneof![
            proptest::collection::vec(text(), 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
            pick(&[
                "[\"mqtt://127.0.0.1:1883\"]",
                "[\"mqtts://localhost:8883\", \"mqtt://[::1]:1\"]",
                "[\"http://x\"]",
                "[\"mqtt://:0\"]",
                "[\"127.0.0.1\", \"::1\", \"nope\"]",
                "\"t/#\"",
            ]),
        ]
        .boxed(),
        _ => number().boxed(),
    }
}

fn table(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::subsequence(keys, 0..=keys.len())
        .prop_flat_map(|ks| {
            ks.into_iter().map(|k| value_for(k).prop_map(move |v| format!("{k} = {v}\n"))).collect::<Vec<_>>()
        })
        .prop_map(|lines| lines.concat())
}

const RUN: &[&str] = &[
    "duration",
    "drain",
    "ramp_timeout",
    "max_duration",
    "snapshot_interval",
    "max_connecting",
    "timer_coalesce",
    "max_unsent_bytes",
];
const GROUP: &[&str] = &[
    "name",
    "clients",
    "client_id",
    "protocol",
    "keepalive",
    "clean_start",
    "session_expiry",
    "username",
    "password",
    "connect_rate",
    "disconnect_rate",
    "max_inflight",
    "connect_timeout",
    "ack_timeout",
];
const PUBLISH: &[&str] =
    &["topic", "qos", "retain", "payload_size", "payload", "payload_raw", "interval", "group_rate"];
const SUBSCRIBE: &[&str] = &["filters", "qos"];
const RECONNECT: &[&str] = &["enabled", "min_backoff", "max_backoff", "max_rate"];
const WILL: &[&str] = &["topic", "payload", "qos", "retain", "delay"];
const TARGET: &[&str] = &["urls", "source_addresses"];
const STAGE: &[&str] = &["duration", "rate", "warmup"];
const SEARCH: &[&str] = &["slo", "from", "to", "step", "warmup", "precision", "max_steps"];

fn group(index: usize) -> impl Strategy<Value = String> {
    (
        table(GROUP),
        (1u32..500, any::<bool>()),
        proptest::option::of(table(PUBLISH)),
        proptest::option::of(table(SUBSCRIBE)),
        proptest::option::of(table(RECONNECT)),
        proptest::option::of(table(WILL)),
    )
        .prop_map(move |(g, (clients, named), p, s, r, w)| {
            // a name and a client count unless the table drew its own (a duplicate key is one
            // more thing to refuse)
            let mut out = "[[group]]\n".to_string();
            if named && !g.contains("name =") {
                out += &format!("name = \"g{index}\"\n");
            }
            if !g.contains("clients =") {
                out += &format!("clients = {clients}\n");
            }
            out += &g;
            for (name, t) in [("publish", p), ("subscribe", s), ("reconnect", r), ("will", w)] {
                if let Some(t) = t {
                    out += &format!("[group.{name}]\n{t}");
                }
            }
            out
        })
}

/// A stage, with a duration unless the table drew its own.
fn stage() -> impl Strategy<Value = String> {
    table(STAGE).prop_map(|t| if t.contains("duration =") { t } else { format!("duration = \"10s\"\n{t}") })
}

/// A scenario from the grammar.
pub fn scenario() -> impl Strategy<Value = String> {
    (
        proptest::option::of(proptest::collection::vec(
            pick(&[
                "\"e2e.p99 < 50ms\"",
                "\"lost == 0\"",
                "\"e2e{group=g}.p99 < 1ms\"",
                "\"bogus > 1\"",
                "\"e2e.p99 <\"",
                "\"errors > 10 abort\"",
                "\"e2e{group=}.p50 < 1s\"",
                "\"lag.p999 < 1h\"",
                "\"e2e.p100 < 1ms\"",
            ]),
            0..4,
        )),
        proptest::option::of(table(TARGET)),
        proptest::option::of(table(RUN)),
        (0usize..4).prop_flat_map(|n| (0..n).map(group).collect::<Vec<_>>()),
        // stages and a search now and then (either replaces run.duration, and not both)
        prop_oneof![6 => Just(Vec::new()), 1 => proptest::collection::vec(stage(), 1..4)],
        prop_oneof![8 => Just(None), 1 => table(SEARCH).prop_map(Some)],
    )
        .prop_map(|(th, target, run, groups, stages, search)| {
            let mut out = String::new();
            if let Some(th) = th {
                out += &format!("thresholds = [{}]\n", th.join(", "));
            }
            if let Some(t) = target {
                out += &format!("[target]\n{t}");
            }
            if let Some(r) = run {
                out += &format!("[run]\n{r}");
            }
            out += &groups.concat();
            for st in stages {
                out += &format!("[[stage]]\n{st}");
            }
            if let Some(sr) = search {
                out += &format!("[search]\n{sr}");
            }
            out
        })
}

/// Every stage the controller could send for `plan` passes the agent's own check of it: a
/// scenario that loads can never make an agent refuse a stage and stop all load.
fn stages_pass_the_agents_check(
    plan: &squall_controller::scenario::Plan,
    a: &squall_proto::plan::Assignment,
) -> Result<(), String> {
    use squall_controller::scenario::Shape;
    use squall_proto::link::StageCommand;
    let scales: Vec<(f64, u64)> = match &plan.shape {
        Shape::Steady => return Ok(()),
        Shape::Stages(s) => s.iter().map(|s| (s.scale, s.duration.as_nanos() as u64)).collect(),
        // the extremes a search may reach: its top, and the floor it halves down to
        Shape::Search(s) => {
            let floor = s.from / f64::from(1u32 << squall_controller::search::MAX_HALVINGS);
            vec![
                (s.to, s.step.as_nanos() as u64),
                (floor, s.step.as_nanos() as u64),
                (s.from, s.step.as_nanos() as u64),
            ]
        }
    };
    let mut at = 1_000_000_000u64;
    for (i, (scale, len)) in scales.into_iter().enumerate() {
        let st = StageCommand { index: i as u32, start_unix_ns: at, until_unix_ns: at + len, scale };
        a.check_stage(&st, i as u32, at)
            .map_err(|e| format!("the controller accepted a stage the agent refuses: {e}"))?;
        at += len;
    }
    Ok(())
}

/// A publishing group that loads, with drawn stages or a drawn search: reaches the checks of
/// stages and searches (and the agent's check of the stages the controller would send) far
/// more often than the whole grammar does.
pub fn staged() -> impl Strategy<Value = String> {
    (
        1u32..5000,
        pick(&["interval = \"100ms\"", "interval = \"10us\"", "interval = \"1s\"", "group_rate = 100000", "group_rate = 0.5"]),
        prop_oneof![
            proptest::collection::vec(stage(), 1..6).prop_map(|st| st.iter().map(|t| format!("[[stage]]\n{t}")).collect::<String>()),
            table(SEARCH).prop_map(|t| {
                let t = if t.contains("slo =") { t } else { format!("slo = [\"e2e.p99 < 20ms\"]\n{t}") };
                format!("[search]\n{t}")
            }),
        ],
    )
        .prop_map(|(clients, rate, shape)| {
            format!("[[group]]\nname = \"g\"\nclients = {clients}\n[group.publish]\ntopic = \"t/{{i}}\"\n{rate}\n{shape}")
        })
}

/// A scenario from the grammar with a few bytes overwritten, inserted or removed.
pub fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (scenario(), proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6))
        .prop_map(|(s, edits)| {
            let mut b = s.into_bytes();
            for (at, byte, kind) in edits {
                if b.is_empty() {
                    b.push(byte);
                    continue;
                }
                let i = at.index(b.len());
                match kind {
                    0 => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ => {
                        b.remove(i);
                    }
                }
            }
            b
        })
}

/// Loads `bytes` as a scenario (lossy UTF-8, as a file read would be refused otherwise), splits
/// what loads over one and three agents, and validates every assignment. Runs on its own
/// thread: `Err` if it panicked or took longer than [`HANG`].
pub fn check(bytes: Vec<u8>) -> Result<(), String> {
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (tx, rx) = mpsc::channel();
    let shown = text.clone();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(move || {
            let ov = Overrides::default();
            match load_source(&Source::new("fuzz.toml", text), &ov) {
                Err(d) => {
                    let shown = d.to_string();
                    assert!(!shown.is_empty(), "a refusal says why");
                }
                Ok(plan) => {
                    let target = ["mqtt://127.0.0.1:1883".parse().expect("a valid URL")];
                    for weights in [&[1][..], &[1, 2, 3]] {
                        for a in segment(&plan, &target, weights) {
                            a.validate().map_err(|e| {
                                format!("a loaded plan split into an invalid assignment: {e}")
                            })?;
                            let _ = a.memory_estimate();
                            stages_pass_the_agents_check(&plan, &a)?;
                        }
                    }
                }
            }
            Ok::<(), String>(())
        });
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(HANG) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(format!("loading panicked on:\n{shown}")),
        Err(_) => Err(format!("loading took longer than {HANG:?} on:\n{shown}")),
    }
}
