//! MQTT on the wire: the only engine module that touches ntex-mqtt's codec.
//!
//! - [`codec`]: framing and one protocol-independent view of v3.1.1 and v5 packets.
//! - [`inflight`]: the window of unanswered packets, in send order.
//! - [`state`]: the connection state machine (no I/O; unit-tested with bytes).
//! - [`transport`]: TCP and TLS streams (and WebSocket over either), source addresses.
//! - [`websocket`]: MQTT over WebSocket: the opening handshake and the framing.
//! - [`tls`]: rustls client configuration from CA, client certificate and key files.
//! - topic-filter matching is the contract's ([`squall_proto::topic`]), shared with the controller.

pub mod codec;
pub mod inflight;
pub mod state;
pub mod tls;
pub mod transport;
pub mod websocket;

pub use codec::{ConnectSpec, Protocol, QoS, ServerLimits, Will};
pub use state::{Connection, Event, Fault, Options, Refusal};
