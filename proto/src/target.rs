//! Broker addresses as users write them: `mqtt://host:1883`, `mqtts://host:8883`, and MQTT over
//! WebSocket, `ws://host:8080/mqtt`, `wss://host:8084/mqtt`.

/// A broker address as written: `mqtt://host:1883`, `mqtts://host:8883`, `ws://host:port/path`
/// or `wss://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// MQTT over WebSocket (RFC 6455, subprotocol `mqtt`) at this path; `None`: MQTT straight
    /// over TCP (or TLS).
    pub ws_path: Option<String>,
}

impl TargetUrl {
    /// MQTT straight over TCP to `host:port`.
    pub fn tcp(host: impl Into<String>, port: u16) -> TargetUrl {
        TargetUrl { tls: false, host: host.into(), port, ws_path: None }
    }
}

/// The path a WebSocket URL without one gets: what EMQX, HiveMQ and AWS IoT serve MQTT on.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`{0}` has no scheme; write mqtt://host:port or mqtts://host:port")]
    NoScheme(String),
    #[error(
        "scheme `{0}` is not supported; use mqtt:// (TCP), mqtts:// (TLS), ws:// or wss:// (MQTT over WebSocket)"
    )]
    Scheme(String),
    #[error("path `{0}`: only ws:// and wss:// URLs have a path (printable ASCII, no spaces)")]
    Path(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}` has an invalid port")]
    Port(String),
}

impl std::str::FromStr for TargetUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| UrlError::NoScheme(s.into()))?;
        let (tls, ws) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (false, false),
            "mqtts" | "ssl" | "tls" => (true, false),
            "ws" => (false, true),
            "wss" => (true, true),
            other => return Err(UrlError::Scheme(other.into())),
        };
        // a path belongs to WebSocket URLs only
        let (rest, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let ws_path = match (ws, path) {
            (false, Some(p)) if p.trim_matches('/').is_empty() => None,
            (false, Some(p)) => return Err(UrlError::Path(p.into())),
            (false, None) => None,
            (true, None) => Some(DEFAULT_WS_PATH.to_string()),
            (true, Some(p)) if p.bytes().all(|b| b.is_ascii_graphic()) => Some(p.to_string()),
            (true, Some(p)) => return Err(UrlError::Path(p.into())),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| UrlError::NoHost(s.into()))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(s.into()));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| UrlError::Port(s.into()))?,
            None => match (tls, ws) {
                (false, false) => 1883,
                (true, false) => 8883,
                (false, true) => 80,
                (true, true) => 443,
            },
        };
        Ok(TargetUrl { tls, host, port, ws_path })
    }
}

impl TryFrom<String> for TargetUrl {
    type Error = UrlError;
    fn try_from(s: String) -> Result<Self, UrlError> {
        s.parse()
    }
}

impl From<TargetUrl> for String {
    fn from(u: TargetUrl) -> String {
        u.to_string()
    }
}

impl std::fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match (self.tls, self.ws_path.is_some()) {
            (false, false) => "mqtt",
            (true, false) => "mqtts",
            (false, true) => "ws",
            (true, true) => "wss",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)?;
        }
        f.write_str(self.ws_path.as_deref().unwrap_or(""))
    }
}
