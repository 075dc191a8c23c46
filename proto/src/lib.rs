//! squall's controller–agent contract: the gRPC protocol (`squall/v1/link.proto`) and the plain
//! Rust types both sides work with. The controller reaches agents only through this crate.
//!
//! # Layout
//! - [`plan`]: the [`Assignment`](plan::Assignment) an agent runs (groups, MQTT settings,
//!   publish and subscribe specs) and its validation.
//! - [`link`]: [`Command`](link::Command)s down, [`AgentEvent`](link::AgentEvent)s up.
//! - [`metrics`]: what is measured, as data: HDR histograms (V2 bytes on the wire), counters,
//!   load errors, delivery totals, snapshots.
//! - [`protocol`], [`target`], [`tls`]: MQTT versions and code meanings, broker URLs, TLS
//!   material (PEM bytes, so agents need no files).
//! - [`template`], [`topic`]: client-id and topic templates, topic validation and matching
//!   (both sides need them: the controller validates, the agent renders and matches).
//! - [`clock`]: the shared time base (Unix ns, advancing monotonically).
//! - [`auth`]: the link's mutual HMAC authentication.
//! - [`replay`]: sequence numbers and replay, so a link reset mid-run loses nothing.
//! - [`wire`]: the generated gRPC types and service, and conversions from and to the plain types.

pub mod auth;
pub mod clock;
pub mod link;
pub mod metrics;
pub mod plan;
pub mod protocol;
pub mod replay;
pub mod target;
pub mod template;
pub mod tls;
pub mod topic;
pub mod wire;

/// The link protocol's version: a controller and an agent must agree on it.
pub const LINK_VERSION: u32 = 6;
