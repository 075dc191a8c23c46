//! squall's load engine: simulated MQTT clients, paced publishing, honest measurement.
//!
//! # Layout
//! - [`engine`]: runs an assignment in phases (ramp, publish, drain, finish) driven by
//!   [`Command`](engine::Command)s, emitting [`AgentEvent`](engine::AgentEvent)s: snapshots
//!   every interval, then the final ledger. The controller sees nothing else.
//! - [`client`]: one task per simulated client: connect, subscribe, publish on schedule,
//!   reconnect with jittered backoff, record.
//! - [`mqtt`]: the wire (ntex-mqtt's codec), the I/O-free connection state machine, TCP/TLS
//!   transport and source addresses.
//! - [`pacer`]: when each message is intended to be sent (the basis of corrected latency).
//! - [`timer`]: wake-ups on those times to the microsecond (one timerfd per lane).
//! - [`lanes`]: the engine's threads, one single-threaded runtime per core, clients pinned.
//! - [`payload`]: the measurement header every squall payload starts with.
//! - [`metrics`]: recording shards, the snapshot collector, the delivery ledger.
//! - [`link`]: the agent's side of the gRPC link: dialing, authentication, the lease.
//!
//! What an agent is asked to run (the `Assignment`), what it reports (snapshots, events) and
//! the shared clock are the contract's: `squall_proto`.
//!
//! Data flows one way: assignment → clients → recorder shards → snapshots → controller.

pub mod client;
pub mod engine;
pub mod lanes;
pub mod link;
pub mod metrics;
pub mod mqtt;
pub mod pacer;
pub mod payload;
pub mod timer;
