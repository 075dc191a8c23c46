//! Broker addresses as users write them: `mqtt://host:1883`, `mqtts://host:8883`.

/// A broker address as written: `mqtt://host:1883` or `mqtts://host:8883`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`{0}` has no scheme; write mqtt://host:port or mqtts://host:port")]
    NoScheme(String),
    #[error("scheme `{0}` is not supported; use mqtt:// (TCP) or mqtts:// (TLS)")]
    Scheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}` has an invalid port")]
    Port(String),
}

impl std::str::FromStr for TargetUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| UrlError::NoScheme(s.into()))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" | "tls" => true,
            other => return Err(UrlError::Scheme(other.into())),
        };
        let rest = rest.trim_end_matches('/');
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
            None if tls => 8883,
            None => 1883,
        };
        Ok(TargetUrl { tls, host, port })
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
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}
