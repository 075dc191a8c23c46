//! squall's load engine: simulated MQTT clients, paced publishing, honest measurement.
//!
//! # Layout
//! - [`plan`]: the [`Assignment`](plan::Assignment) an agent runs — groups of clients, their
//!   MQTT settings, publish and subscribe behaviour — and its validation.
//! - [`engine`]: runs an assignment in phases (ramp, publish, drain, finish) driven by
//!   [`Command`](engine::Command)s, emitting [`AgentEvent`](engine::AgentEvent)s: snapshots
//!   every interval, then the final ledger. The controller sees nothing else.
//! - [`client`]: one task per simulated client: connect, subscribe, publish on schedule,
//!   reconnect with jittered backoff, record.
//! - [`mqtt`]: the wire (ntex-mqtt's codec), the I/O-free connection state machine, TCP/TLS
//!   transport and source addresses, topic matching.
//! - [`pacer`]: when each message is intended to be sent (the basis of corrected latency).
//! - [`payload`]: the measurement header every squall payload starts with.
//! - [`metrics`]: HDR histograms, counters, load-error kinds, the delivery ledger, snapshots.
//! - [`clock`]: a monotonic clock that reads in Unix nanoseconds.
//! - [`template`]: `{group}`/`{i}` templates for client ids and topics.
//!
//! Data flows one way: assignment → clients → recorder shards → snapshots → controller.

pub mod client;
pub mod clock;
pub mod engine;
pub mod metrics;
pub mod mqtt;
pub mod pacer;
pub mod payload;
pub mod plan;
pub mod template;
