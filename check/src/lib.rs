//! `squall check`: is this broker usable, and if not, exactly why — in order, with a reason
//! and a hint for every failure, in a form CI can gate on.
//!
//! # Layout
//! - [`checks`]: the checks and their order: DNS, TCP, TLS, then per protocol CONNECT,
//!   authentication, publish and subscribe at each QoS, round-trip latency, retained messages,
//!   the last will (delivered on an abrupt close, not on a clean DISCONNECT), persistent
//!   sessions; optionally shared subscriptions, a payload-size probe and a burst.
//! - [`client`]: a small request/response client over the agent's MQTT layer.
//! - [`cert`]: reading what a certificate says (subject, issuer, validity).
//! - [`report`]: the result model (with its JSON Schema) and text, JSON, YAML, JUnit output.

pub mod cert;
pub mod checks;
pub mod client;
pub mod report;

use std::time::Duration;

use squall_agent::mqtt::codec::Protocol;
use squall_agent::mqtt::tls::TlsFiles;
use squall_agent::mqtt::transport::TargetUrl;

pub use checks::run;
pub use report::{CheckReport, CheckResult, Status};

/// What to expect of clients without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// Report whether they are accepted; judge nothing.
    Report,
    /// They must be accepted.
    Allowed,
    /// They must be refused.
    Refused,
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub url: TargetUrl,
    /// TLS settings; TLS is used for `mqtts://` URLs or when `force_tls` is set.
    pub tls: TlsFiles,
    pub force_tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Client ids are `<prefix>-<random>-<role>-<protocol>`.
    pub client_id_prefix: String,
    /// Topics are `<prefix>/<random>/…`; unique per run.
    pub topic_prefix: String,
    /// Highest QoS to check (0–2).
    pub max_qos: u8,
    /// How long any one answer may take.
    pub timeout: Duration,
    pub protocols: Vec<Protocol>,
    /// Check names to run (empty: all of the default set).
    pub only: Vec<String>,
    pub skip: Vec<String>,
    /// Round-trip samples.
    pub samples: usize,
    /// The latency check fails when the median round trip exceeds this.
    pub max_latency: Option<Duration>,
    pub anonymous: Anonymous,
    /// Also run the optional checks: shared subscription, payload-size probe, burst.
    pub extended: bool,
    /// Features judged even where an MQTT 5 broker declares them absent (`retained`, `shared`,
    /// `qos1`, `qos2`): a declared absence then fails instead of being reported.
    pub require: Vec<String>,
    /// Topics on which a denial is what should happen (`--expect-deny`): a publish or
    /// subscription there passes when the broker refuses it.
    pub expect_deny: Vec<String>,
}

/// What `--require` takes.
pub const REQUIRABLE: &[&str] = &["retained", "shared", "qos1", "qos2"];

/// Every check name, in order (`--only`/`--skip` take these; `publish` means all its QoS).
pub const CHECKS: &[&str] = &[
    "dns",
    "tcp",
    "tls",
    "connect",
    "auth",
    "anonymous",
    "publish",
    "subscribe",
    "deny",
    "latency",
    "retained",
    "will",
    "session",
    "shared",
    "max_payload",
    "burst",
];

/// The optional checks, run with `--extended` or when named in `--only`.
pub const EXTENDED: &[&str] = &["shared", "max_payload", "burst"];
