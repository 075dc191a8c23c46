//! Load errors are data: a broker refusing or dropping clients during a test is a result, to be
//! counted by kind, not a failure of squall.

use serde::{Deserialize, Serialize};

/// What went wrong for a client, with the broker's reason code where it gave one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadError {
    /// The TCP connection was refused (nothing listening, or a full backlog).
    TcpRefused,
    /// TCP, TLS and CONNACK did not complete within the connect timeout.
    ConnectTimeout,
    /// The network is unreachable from this agent.
    Unreachable,
    /// No local port left for the source address: add source addresses.
    NoLocalPort,
    /// The agent ran out of file descriptors.
    TooManyOpenFiles,
    /// The TLS handshake failed (untrusted certificate, wrong name, protocol mismatch …).
    Tls,
    /// Another I/O error while connecting.
    ConnectIo,
    /// The WebSocket upgrade failed (`ws://`, `wss://`): the server answered other than 101, or
    /// with a wrong accept key or subprotocol.
    WebSocket,
    /// CONNACK refused the connection with this return/reason code.
    ConnectRefused { code: u8 },
    /// A SUBACK refused a filter with this code.
    SubscribeRefused { code: u8 },
    /// A PUBACK or PUBREC refused a publish with this reason code.
    PublishRefused { code: u8 },
    /// A publish acknowledgement did not come within the ack timeout (counted once per message).
    AckTimeout,
    /// No PINGRESP within the ack timeout: the client dropped the connection.
    PingTimeout,
    /// The broker sent something the protocol forbids, or bytes that do not decode.
    ProtocolError,
    /// The broker sent DISCONNECT with this reason code (MQTT 5).
    DisconnectedByBroker { code: u8 },
    /// The broker closed the connection without a DISCONNECT.
    ClosedByBroker,
    /// The connection failed mid-way (reset, broken pipe, TLS alert …).
    ConnectionLost,
}

impl LoadError {
    /// Whether this happened while establishing a connection (counted in `connect.errors`).
    pub fn is_connect_error(&self) -> bool {
        matches!(
            self,
            LoadError::TcpRefused
                | LoadError::ConnectTimeout
                | LoadError::Unreachable
                | LoadError::NoLocalPort
                | LoadError::TooManyOpenFiles
                | LoadError::Tls
                | LoadError::ConnectIo
                | LoadError::WebSocket
                | LoadError::ConnectRefused { .. }
        )
    }

    /// Stable snake_case name, as used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            LoadError::TcpRefused => "tcp_refused",
            LoadError::ConnectTimeout => "connect_timeout",
            LoadError::Unreachable => "unreachable",
            LoadError::NoLocalPort => "no_local_port",
            LoadError::TooManyOpenFiles => "too_many_open_files",
            LoadError::Tls => "tls",
            LoadError::ConnectIo => "connect_io",
            LoadError::WebSocket => "websocket",
            LoadError::ConnectRefused { .. } => "connect_refused",
            LoadError::SubscribeRefused { .. } => "subscribe_refused",
            LoadError::PublishRefused { .. } => "publish_refused",
            LoadError::AckTimeout => "ack_timeout",
            LoadError::PingTimeout => "ping_timeout",
            LoadError::ProtocolError => "protocol_error",
            LoadError::DisconnectedByBroker { .. } => "disconnected_by_broker",
            LoadError::ClosedByBroker => "closed_by_broker",
            LoadError::ConnectionLost => "connection_lost",
        }
    }

    /// The error of this report name, with its code for kinds that carry one.
    pub fn from_name(name: &str, code: Option<u8>) -> Option<LoadError> {
        Some(match (name, code) {
            ("tcp_refused", None) => LoadError::TcpRefused,
            ("connect_timeout", None) => LoadError::ConnectTimeout,
            ("unreachable", None) => LoadError::Unreachable,
            ("no_local_port", None) => LoadError::NoLocalPort,
            ("too_many_open_files", None) => LoadError::TooManyOpenFiles,
            ("tls", None) => LoadError::Tls,
            ("connect_io", None) => LoadError::ConnectIo,
            ("websocket", None) => LoadError::WebSocket,
            ("connect_refused", Some(code)) => LoadError::ConnectRefused { code },
            ("subscribe_refused", Some(code)) => LoadError::SubscribeRefused { code },
            ("publish_refused", Some(code)) => LoadError::PublishRefused { code },
            ("ack_timeout", None) => LoadError::AckTimeout,
            ("ping_timeout", None) => LoadError::PingTimeout,
            ("protocol_error", None) => LoadError::ProtocolError,
            ("disconnected_by_broker", Some(code)) => LoadError::DisconnectedByBroker { code },
            ("closed_by_broker", None) => LoadError::ClosedByBroker,
            ("connection_lost", None) => LoadError::ConnectionLost,
            _ => return None,
        })
    }

    /// The broker's code, if the error carries one.
    pub fn code(&self) -> Option<u8> {
        match *self {
            LoadError::ConnectRefused { code }
            | LoadError::SubscribeRefused { code }
            | LoadError::PublishRefused { code }
            | LoadError::DisconnectedByBroker { code } => Some(code),
            _ => None,
        }
    }
}

/// One error kind and how often it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    pub error: LoadError,
    pub count: u64,
}
