//! The scenario file as written (TOML). Every field is optional unless the docs say otherwise;
//! [`resolve`](super::resolve) fills defaults and checks meaning.
//!
//! Units are explicit: durations are strings with a unit (`"30s"`, `"250ms"`, `"1h"`), rates
//! are per second and named as such. Unknown keys are errors (a typo must not silently fall
//! back to a default).

use schemars::JsonSchema;
use serde::Deserialize;

/// A scenario: who connects where, what they publish and subscribe, for how long, and what
/// counts as a pass.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports; the file name when absent.
    pub name: Option<String>,
    /// Pass/fail rules, e.g. `"e2e.p99 < 50ms"`, `"lost == 0"`, `"connect.errors == 0"`.
    /// A failed threshold makes `squall run` exit with code 1.
    #[serde(default)]
    pub thresholds: Vec<String>,
    /// Where the brokers are. Absent: `squall run` starts its embedded broker.
    pub target: Option<Target>,
    /// Timing of the whole run.
    #[serde(default)]
    pub run: Run,
    /// Groups of identical clients. At least one.
    #[serde(default, rename = "group")]
    pub groups: Vec<Group>,
    /// The publishing window as stages: steps one after another, each at its share of every
    /// publishing group's rate, each with its own figures in the report (instead of
    /// `run.duration`, which is then their sum).
    #[serde(default, rename = "stage")]
    pub stages: Vec<Stage>,
    /// A capacity search: steps whose rates squall chooses as the run goes, to find the
    /// highest share of the publishing groups' rates at which every `slo` rule holds (instead
    /// of `run.duration` and stages).
    pub search: Option<Search>,
}

/// One step of a staged run.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// How long it lasts (required), e.g. "30s".
    pub duration: Option<String>,
    /// Its share of every publishing group's rate as written, e.g. "50%", "250%" (default "100%").
    pub rate: Option<String>,
    /// Left out of the stage's figures, from its start, while the broker settles to the new
    /// rate (default: a fifth of the duration, at most "5s").
    pub warmup: Option<String>,
}

/// A capacity search: steps at rising shares of the scenario's rates until one breaks a rule,
/// then halving the gap between the highest step that held and the lowest that broke.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// What each step must hold (required), as thresholds: latencies (`e2e.p99 < 20ms`),
    /// `missing == 0` (messages skipped over and not arrived), `errors == 0`, any counter,
    /// `publish.rate` and `receive.rate` over the step.
    #[serde(default)]
    pub slo: Vec<String>,
    /// The first step's share of the groups' rates (default "100%").
    pub from: Option<String>,
    /// The highest share tried (default "10000%", bounded by what one client can publish).
    pub to: Option<String>,
    /// Each step's duration (default "20s").
    pub step: Option<String>,
    /// Left out of each step's figures, from its start (default: a fifth of the step, at most "5s").
    pub warmup: Option<String>,
    /// The search ends when the lowest step that broke a rule is within this of the highest
    /// that held (default "5%").
    pub precision: Option<String>,
    /// Steps at most (default 16).
    pub max_steps: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Broker URLs, `mqtt://host:port` or `mqtts://host:port`, or MQTT over WebSocket
    /// `ws://host:port/path` and `wss://host:port/path` (path default `/mqtt`). Clients are spread over them
    /// round-robin (as over the nodes of a cluster).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Local IP addresses to connect from, round-robin. One address reaches ~28k connections
    /// to one broker address; more addresses go beyond (127.0.0.2, 127.0.0.3 … on loopback).
    #[serde(default)]
    pub source_addresses: Vec<String>,
    /// TLS for `mqtts://` URLs.
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM CA certificates to trust (the system roots when absent). Relative to the scenario file.
    pub ca: Option<String>,
    /// PEM client certificate, for mutual TLS.
    pub cert: Option<String>,
    /// PEM private key of the client certificate.
    pub key: Option<String>,
    /// Name to verify the broker's certificate against (and send as SNI).
    pub server_name: Option<String>,
    /// Accept any certificate (lab brokers only).
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// How long publishers publish, once every client has connected (default "10s").
    pub duration: Option<String>,
    /// How long to keep receiving after the last publish (default "2s").
    pub drain: Option<String>,
    /// How long to wait for every client's first connection attempt before publishing anyway
    /// (default: the slowest group's ramp time plus its connect timeout, plus 10s).
    pub ramp_timeout: Option<String>,
    /// Hard limit on the whole run; past it, all load stops (default: everything above plus 60s).
    pub max_duration: Option<String>,
    /// How often agents report (default "1s").
    pub snapshot_interval: Option<String>,
    /// Connection handshakes in flight at once, per agent, fixed. Left out (the default), the
    /// window adapts from 64 up to 4096: it grows while handshakes take no longer, and backs
    /// off when they queue or a SYN is lost (brokers drop SYNs beyond their accept queue,
    /// mosquitto's is small, and each costs its client a second).
    pub max_connecting: Option<u32>,
    /// Wake-ups of clients due closer together than this share one (default "0s": every
    /// client wakes on its own deadline, as precisely as the host allows; at most "10ms").
    /// Thousands of clients each waking on its own cost the tester CPU; "250us" or "1ms"
    /// trades that much timer lag (reported, and in corrected latency) for fewer wake-ups.
    pub timer_coalesce: Option<String>,
    /// On a busy connection (reads less than half this apart), data that comes within this
    /// of the last read is read at the window's end, in one read (default "0s": as soon as
    /// data comes; "50us" for floods; at most "1ms"). A subscriber taking messages one small
    /// write at a time from a busy broker would otherwise wake and read a few at a time, and
    /// spend more CPU than the broker; the window lets them gather. Messages of such a read are timed at
    /// the kernel's stamp of its newest byte, so they read late by at most this: the report
    /// counts such reads.
    pub read_coalesce: Option<String>,
    /// Bytes all clients of one agent may hold written but not yet taken by the network
    /// (default 268435456, 256 MiB; at least 65536). A stalled broker fills every client's
    /// buffer: past this, clients take no more messages from their schedules, and what they
    /// owe is counted behind schedule. Each client also stops at 256 KiB of its own.
    pub max_unsent_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Unique name; `{group}` in templates.
    pub name: Option<String>,
    /// How many clients (required).
    pub clients: Option<u32>,
    /// Client id template (default `"squall-{run}-{group}-{i}"`); must contain `{i}` when
    /// `clients > 1`. Placeholders: `{group}`, `{i}`, `{agent}`, `{run}`.
    pub client_id: Option<String>,
    /// A CSV file of the group's devices, one row each, with a header naming any of
    /// `client_id`, `username`, `password`: client `i` takes row `i` (relative to the scenario
    /// file; at least as many rows as clients). An empty cell, or a column the file leaves
    /// out, is the group's own value.
    pub identities: Option<String>,
    /// MQTT protocol, `"3.1.1"` or `"5"` (default `"3.1.1"`).
    pub protocol: Option<String>,
    /// Keepalive (default "30s"; "0s" turns it off).
    pub keepalive: Option<String>,
    /// Start with a clean session (default true).
    pub clean_start: Option<bool>,
    /// MQTT 5 session expiry interval (default "0s").
    pub session_expiry: Option<String>,
    /// Over TLS (`mqtts://`), each client resumes its previous TLS session when it reconnects,
    /// as a device that caches its session ticket does (default true); false: a full handshake
    /// every time (what fells brokers in a TLS storm).
    pub tls_resumption: Option<bool>,
    pub username: Option<String>,
    /// Password in the file. Prefer `password_env`.
    pub password: Option<String>,
    /// Name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// New connections per second across the group during ramp-up (default 1000).
    pub connect_rate: Option<f64>,
    /// Disconnections per second across the group at the end (default: `connect_rate`).
    pub disconnect_rate: Option<f64>,
    /// Unanswered QoS 1/2 publishes per client (default 100; the broker's receive maximum may lower it).
    pub max_inflight: Option<u16>,
    /// TCP + TLS + CONNACK must complete within this (default "10s").
    pub connect_timeout: Option<String>,
    /// PUBACK/PUBCOMP/SUBACK/PINGRESP later than this are counted as timeouts (default "10s").
    pub ack_timeout: Option<String>,
    pub reconnect: Option<Reconnect>,
    pub will: Option<Will>,
    pub publish: Option<Publish>,
    pub subscribe: Option<Subscribe>,
    /// Timed actions on some of the group's clients: storms, will triggers (`[[group.event]]`).
    #[serde(default, rename = "event")]
    pub events: Vec<Event>,
}

/// A timed action on some of a group's clients, chosen at random (a seed from the run tag:
/// the same choice on every agent, a new one each time it repeats). Events act only inside
/// the publishing window.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When, after the publishing window starts (required), e.g. "30s".
    pub at: Option<String>,
    /// Repeat this often (with `times`).
    pub every: Option<String>,
    /// How many times in all (default 1; at most 10000).
    pub times: Option<u32>,
    /// "disconnect" (clean, no will), "drop" (socket reset without DISCONNECT: the broker
    /// publishes the will), "silence" (no packets at all until the broker's keepalive ends the
    /// connection), "blackhole" (the link dead both ways, nothing acknowledged, until the
    /// broker's keepalive deadline + 1 s), "disconnect_with_will" (MQTT 5 reason 0x04). Required.
    pub action: Option<String>,
    /// How many of the group's clients each time …
    pub count: Option<u32>,
    /// … or what fraction of them (0 < fraction ≤ 1).
    pub fraction: Option<f64>,
    /// When they come back: "now", "backoff" (the group's policy; the default), "never", or
    /// after a pause such as "5s".
    pub back: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    /// Reconnect after a failed or lost connection (default true).
    pub enabled: Option<bool>,
    /// The base delay before a retry (default "1s"): the first delay, and never less whatever
    /// the jitter.
    pub min_backoff: Option<String>,
    /// Largest backoff (default "30s").
    pub max_backoff: Option<String>,
    /// Reconnections per second across the group, at most (default: `connect_rate`).
    pub max_rate: Option<f64>,
    /// How the delay grows with failures in a row: "none" (retry at once), "constant" (base),
    /// "linear" (base × n), "exponential" (base × multiplier^(n−1); the default).
    pub backoff: Option<String>,
    /// How delays are spread so a fleet does not return in lockstep: "none", "full" (uniform
    /// between base and the delay; the default), "equal" (half the delay plus a uniform half),
    /// "decorrelated" (uniform between base and 3 × the previous delay).
    pub jitter: Option<String>,
    /// Growth per failure of the exponential policy (default 2; 1 < multiplier ≤ 100).
    pub multiplier: Option<f64>,
    /// Retries in a row (attempts after a failure, without a connection between) after which
    /// a client gives up, counted `abandoned` (default 0: never).
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Will {
    /// Will topic (template).
    pub topic: Option<String>,
    /// Will payload. squall puts a 20-byte header before it (magic "SW", run tag, the client's
    /// group, index and connection), so the will ledger can say whose will an observer got.
    #[serde(default)]
    pub payload: String,
    pub qos: Option<u8>,
    #[serde(default)]
    pub retain: bool,
    /// MQTT 5 will delay interval (default "0s").
    pub delay: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// Topic template, e.g. `"sensors/{i}/temp"` (required).
    pub topic: Option<String>,
    /// 0, 1 or 2 (default 0).
    pub qos: Option<u8>,
    #[serde(default)]
    pub retain: bool,
    /// Payload bytes per message, at least 36 (the measurement header). Default 64.
    pub payload_size: Option<u32>,
    /// Text sent after the 36-byte measurement header.
    pub payload: Option<String>,
    /// Text sent exactly as given, without a header: not measured (no end-to-end latency,
    /// no ledger).
    pub payload_raw: Option<String>,
    /// Each client publishes once per this interval, e.g. "100ms". Give this or `group_rate`.
    pub interval: Option<String>,
    /// Messages per second summed over the whole group (each client gets its share).
    /// Give this or `interval`.
    pub group_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// Topic filters (templates); `+`, `#` and `$share/<name>/…` allowed (required).
    #[serde(default)]
    pub filters: Vec<String>,
    /// Maximum QoS asked for (default 0).
    pub qos: Option<u8>,
}
