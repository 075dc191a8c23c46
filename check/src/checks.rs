//! The checks, in order. Each records a result; a failed prerequisite skips what depends on it
//! (with the reason). Nothing here panics on a broker's answer: every answer is a result.

use std::time::{Duration, Instant};

use ntex_bytes::ByteString;
use squall_agent::mqtt::codec::{
    ConnectSpec, Protocol, QoS, Will, connack_meaning, qos_from_u8, reason_meaning,
};
use squall_agent::mqtt::tls::{self, TlsMaterial};
use squall_agent::mqtt::transport::{self, ConnectFailure, Endpoint};

use crate::client::{Client, ClientError, ConnAck};
use crate::report::{Cause, CheckReport, CheckResult, SCHEMA_VERSION, Status};
use crate::{Anonymous, CHECKS, CheckOptions, EXTENDED};

struct Runner {
    o: CheckOptions,
    run: String,
    results: Vec<CheckResult>,
    endpoint: Option<Endpoint>,
    /// The stream the TCP (or TLS) check opened, kept for the first MQTT connection so the
    /// probe never counts against a connection limit.
    spare: Option<transport::Stream>,
}

fn proto_tag(p: Protocol) -> &'static str {
    match p {
        Protocol::V311 => "v311",
        Protocol::V5 => "v5",
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The hint for a CONNACK refusal.
fn refusal_hint(code: u8, o: &CheckOptions) -> String {
    match code {
        1 | 0x84 => "the broker does not speak this MQTT version; try --protocol 3.1.1 or 5".into(),
        2 | 0x85 => "the broker rejected the client id; try --client-id with another prefix".into(),
        3 | 0x88 | 0x89 => "the broker is unavailable or busy; check its logs and load".into(),
        4 | 0x86 => {
            if o.username.is_some() {
                "bad user name or password: check --username and --password (or SQUALL_PASSWORD)".into()
            } else {
                "the broker wants credentials: pass --username and --password".into()
            }
        }
        5 | 0x87 if o.username.is_some() => {
            "not authorized: check --username and --password (or SQUALL_PASSWORD); or the broker denies this client".into()
        }
        5 | 0x87 => "not authorized: the broker requires credentials (--username, --password) or denies this client".into(),
        0x97 => "quota exceeded: the broker's connection limit is reached".into(),
        _ => "see the broker's logs for why it refused".into(),
    }
}

/// The cause of a CONNACK refusal.
fn refusal_cause(code: u8) -> Cause {
    match code {
        4 | 0x86 => Cause::AuthFailed,
        5 | 0x87 => Cause::NotAuthorized,
        0x97 => Cause::ConnectionLimit,
        _ => Cause::Refused,
    }
}

/// The cause of an error that ended a connection attempt or an exchange.
fn error_cause(e: &ClientError) -> Cause {
    match e {
        ClientError::Connect(ConnectFailure::Refused) => Cause::Unreachable,
        ClientError::Connect(ConnectFailure::Tls(_)) => Cause::Tls,
        ClientError::Timeout(..) => Cause::Timeout,
        ClientError::Disconnected(0x9a) => Cause::RetainUnavailable,
        ClientError::Closed | ClientError::Disconnected(_) | ClientError::Io(_) => Cause::ConnectionClosed,
        _ => Cause::Other,
    }
}

/// Whether the connection is gone.
fn lost(e: &ClientError) -> bool {
    matches!(e, ClientError::Closed | ClientError::Disconnected(_) | ClientError::Io(_))
}

/// The hint for an error that ended a connection attempt or an exchange.
fn client_hint(e: &ClientError) -> String {
    let reset = matches!(e, ClientError::Io(m) if m.contains("reset") || m.contains("Broken pipe"));
    match e {
        _ if reset => "the broker dropped the connection: a connection limit (max_connections), a banned client id, or TLS expected on this port?".into(),
        ClientError::Closed => "the broker closed the connection: a connection limit (max_connections), a banned client id, or TLS expected on this port?".into(),
        ClientError::Timeout(_, what) => format!("no {what}: the broker is overloaded, or an ACL silently drops this (QoS 0 publishes are never refused)"),
        ClientError::Connect(ConnectFailure::Refused) => "nothing listens there: check the host and port".into(),
        ClientError::Connect(ConnectFailure::Tls(_)) => "the TLS handshake failed: see the tls check".into(),
        ClientError::Disconnected(code) => format!("the broker disconnected the client: {}", reason_meaning(*code)),
        _ => "see the detail".into(),
    }
}

impl Runner {
    fn selected(&self, check: &str) -> bool {
        let base = check.split('.').next().unwrap_or(check);
        let named = |list: &[String]| list.iter().any(|n| n == check || n == base);
        if named(&self.o.skip) {
            return false;
        }
        if !self.o.only.is_empty() {
            return named(&self.o.only);
        }
        !EXTENDED.contains(&base) || self.o.extended
    }

    fn push(
        &mut self,
        check: &str,
        p: Option<Protocol>,
        status: Status,
        took: Duration,
        detail: impl Into<String>,
        hint: Option<String>,
        data: Option<serde_json::Value>,
    ) {
        let id = match p {
            Some(p) => format!("{}.{check}", proto_tag(p)),
            None => check.to_string(),
        };
        self.results.push(CheckResult {
            id,
            check: check.to_string(),
            protocol: p.map(|p| p.to_string()),
            status,
            duration_ms: took.as_secs_f64() * 1e3,
            detail: detail.into(),
            hint,
            data,
            cause: None,
        });
    }

    /// Says why the last result failed or was skipped.
    fn cause(&mut self, c: Cause) {
        if let Some(last) = self.results.last_mut() {
            last.cause = Some(c);
        }
    }

    fn skip_because(&mut self, check: &str, p: Option<Protocol>, why: impl Into<String>, c: Cause) {
        self.skip(check, p, why);
        self.cause(c);
    }

    fn required(&self, feature: &str) -> bool {
        self.o.require.iter().any(|f| f == feature)
    }

    fn skip(&mut self, check: &str, p: Option<Protocol>, why: impl Into<String>) {
        self.push(check, p, Status::Skip, Duration::ZERO, why, None, None);
    }

    fn topic(&self, p: Protocol, what: &str) -> String {
        format!("{}/{}/{}/{what}", self.o.topic_prefix, self.run, proto_tag(p))
    }

    fn spec(&self, p: Protocol, role: &str, credentials: bool) -> ConnectSpec {
        ConnectSpec {
            client_id: ByteString::from(format!(
                "{}-{}-{role}-{}",
                self.o.client_id_prefix,
                self.run,
                proto_tag(p)
            )),
            keepalive_secs: 30,
            clean_start: true,
            session_expiry_secs: 0,
            username: if credentials { self.o.username.as_deref().map(ByteString::from) } else { None },
            password: if credentials {
                self.o.password.as_ref().map(|p| p.as_bytes().to_vec().into())
            } else {
                None
            },
            will: None,
            receive_max: 1000,
        }
    }

    async fn open(&self, p: Protocol, spec: &ConnectSpec) -> Result<(Client, ConnAck), ClientError> {
        let ep = self.endpoint.as_ref().expect("resolved");
        let (c, ack) = Client::connect(ep, spec, p, self.o.timeout).await?;
        if ack.code != 0 {
            return Err(ClientError::Fault(squall_agent::mqtt::state::Fault::Protocol("connection refused")));
        }
        Ok((c, ack))
    }
}

fn tls_used(o: &CheckOptions) -> bool {
    o.url.tls || o.force_tls
}

/// Runs the selected checks against the broker and returns the report.
pub async fn run(o: CheckOptions) -> CheckReport {
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut r = Runner {
        run: format!("{:08x}", fastrand::u32(..)),
        results: Vec::new(),
        endpoint: None,
        spare: None,
        o,
    };
    let ok = network(&mut r).await;
    for p in r.o.protocols.clone() {
        if ok {
            per_protocol(&mut r, p).await;
        } else {
            let unreachable: Vec<&str> = CHECKS.iter().skip(3).copied().filter(|c| r.selected(c)).collect();
            for c in unreachable {
                r.skip(c, Some(p), "skipped: the broker could not be reached");
            }
        }
    }
    let mut report = CheckReport {
        schema_version: SCHEMA_VERSION,
        squall_version: env!("CARGO_PKG_VERSION").to_string(),
        target: r.o.url.to_string(),
        protocols: r.o.protocols.iter().map(|p| p.to_string()).collect(),
        started_at,
        passed: 0,
        failed: 0,
        skipped: 0,
        info: 0,
        ok: false,
        checks: r.results,
    };
    report.tally();
    report
}

/// DNS, TCP, TLS. Returns whether MQTT can be tried.
async fn network(r: &mut Runner) -> bool {
    let url = r.o.url.clone();
    // DNS
    let t = Instant::now();
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(r.o.timeout, tokio::net::lookup_host((url.host.as_str(), url.port))).await
        {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                r.push(
                    "dns",
                    None,
                    Status::Fail,
                    t.elapsed(),
                    format!("cannot resolve {}: {e}", url.host),
                    Some("check the host name and this machine's DNS".into()),
                    None,
                );
                return false;
            }
            Err(_) => {
                r.push(
                    "dns",
                    None,
                    Status::Fail,
                    t.elapsed(),
                    format!("no answer for {} within {:?}", url.host, r.o.timeout),
                    Some("check this machine's DNS".into()),
                    None,
                );
                return false;
            }
        };
    let Some(addr) = addrs.first().copied() else {
        r.push("dns", None, Status::Fail, t.elapsed(), format!("{} has no address", url.host), None, None);
        return false;
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    r.push(
        "dns",
        None,
        Status::Pass,
        t.elapsed(),
        format!("{} → {} ({})", url.host, list.join(", "), ms(t.elapsed())),
        None,
        Some(serde_json::json!({ "addresses": list })),
    );

    // TCP
    let t = Instant::now();
    match tokio::time::timeout(r.o.timeout, transport::connect_tcp(addr, None)).await {
        Ok(Ok(s)) => {
            if !tls_used(&r.o) {
                r.spare = Some(transport::Stream::Tcp(s));
            }
            r.push(
                "tcp",
                None,
                Status::Pass,
                t.elapsed(),
                format!("connected to {addr} in {}", ms(t.elapsed())),
                None,
                None,
            );
        }
        Ok(Err(e)) => {
            let f = ConnectFailure::from_io(&e);
            let hint = match f {
                ConnectFailure::Refused => {
                    "nothing listens on that port: is the broker running, and is this its port?"
                }
                ConnectFailure::Unreachable => {
                    "no route to the host: check the network, firewalls, the address"
                }
                _ => "check the address and the network",
            };
            r.push("tcp", None, Status::Fail, t.elapsed(), format!("{addr}: {f}"), Some(hint.into()), None);
            return false;
        }
        Err(_) => {
            r.push(
                "tcp",
                None,
                Status::Fail,
                t.elapsed(),
                format!("{addr}: no answer within {:?}", r.o.timeout),
                Some("a firewall dropping packets, or the wrong address".into()),
                None,
            );
            return false;
        }
    }

    // TLS
    let tls_cfg = if tls_used(&r.o) {
        let t = Instant::now();
        match tls_check(r, addr).await {
            Some(cfg) => Some(cfg),
            None => {
                let _ = t;
                return false;
            }
        }
    } else {
        r.skip("tls", None, "skipped: plain mqtt:// (use mqtts:// or --tls)");
        None
    };
    r.endpoint = Some(Endpoint {
        url: url.clone(),
        addr,
        tls: tls_cfg.map(|(c, n)| (tokio_rustls::TlsConnector::from(c), n)),
    });
    true
}

type TlsCfg = (std::sync::Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>);

async fn tls_check(r: &mut Runner, addr: std::net::SocketAddr) -> Option<TlsCfg> {
    let t = Instant::now();
    let built = r.o.tls.read().map_err(tls::TlsError::from).and_then(|m| Ok((tls::client_config(&m)?, m)));
    let (cfg, material) = match built {
        Ok(built) => built,
        Err(e) => {
            r.push(
                "tls",
                None,
                Status::Fail,
                t.elapsed(),
                format!("TLS settings: {e}"),
                Some("check --ca, --cert and --key".into()),
                None,
            );
            return None;
        }
    };
    let name = match tls::server_name(&material, &r.o.url.host) {
        Ok(n) => n,
        Err(e) => {
            r.push("tls", None, Status::Fail, t.elapsed(), e.to_string(), None, None);
            return None;
        }
    };
    let ep = Endpoint {
        url: r.o.url.clone(),
        addr,
        tls: Some((tokio_rustls::TlsConnector::from(cfg.clone()), name.clone())),
    };
    match tokio::time::timeout(r.o.timeout, transport::connect(&ep, None)).await {
        Ok(Ok(stream)) => {
            let s = stream.tls_session().expect("a TLS stream");
            let version = s.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
            let suite = s.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
            let chain: Vec<crate::cert::CertInfo> =
                s.peer_certificates().unwrap_or(&[]).iter().filter_map(|c| crate::cert::parse(c)).collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let leaf = chain.first().cloned();
            let days_left = leaf.as_ref().map(|c| (c.not_after - now) / 86_400);
            let mut detail = format!("{version}, {suite}");
            if let Some(c) = &leaf {
                detail += &format!(
                    ", certificate {} from {}",
                    c.subject_cn.as_deref().unwrap_or("?"),
                    c.issuer_cn.as_deref().unwrap_or("?")
                );
            }
            if let Some(d) = days_left {
                detail += &format!(", expires in {d} days");
            }
            if r.o.tls.insecure {
                detail += " (not verified: --insecure)";
            }
            let hint = days_left
                .filter(|d| *d < 14)
                .map(|d| format!("the certificate expires in {d} days: renew it"));
            let data = serde_json::json!({ "version": version, "cipher_suite": suite, "chain": chain, "verified": !r.o.tls.insecure });
            r.push("tls", None, Status::Pass, t.elapsed(), detail, hint, Some(data));
            r.spare = Some(stream);
            Some((cfg, name))
        }
        Ok(Err(f)) => {
            let msg = f.to_string();
            let (detail, hint) = if msg.contains("UnknownIssuer") || msg.contains("unknown issuer") {
                (
                    "untrusted certificate: it is not signed by a CA you trust".to_string(),
                    "pass the broker's CA with --ca FILE (or --insecure for a lab broker)".to_string(),
                )
            } else if msg.contains("NotValidForName") || msg.contains("not valid for name") {
                (
                    format!(
                        "the certificate is not valid for `{}`",
                        r.o.tls.server_name.as_deref().unwrap_or(&r.o.url.host)
                    ),
                    "connect with a name the certificate lists, or pass --server-name".to_string(),
                )
            } else if msg.contains("Expired") || msg.contains("expired") {
                ("the certificate has expired".to_string(), "renew the broker's certificate".to_string())
            } else if msg.contains("NotValidYet") {
                (
                    "the certificate is not valid yet".to_string(),
                    "check the broker's and this machine's clocks".to_string(),
                )
            } else {
                (
                    format!("handshake failed: {msg}"),
                    "does the port speak TLS? is a client certificate required (--cert, --key)?".to_string(),
                )
            };
            // describe the certificate anyway, without trusting it
            let mut data = serde_json::json!({ "error": msg });
            let insecure = TlsMaterial { insecure: true, ..material.clone() };
            if let Ok(c) = tls::client_config(&insecure) {
                let ep = Endpoint {
                    url: r.o.url.clone(),
                    addr,
                    tls: Some((tokio_rustls::TlsConnector::from(c), name.clone())),
                };
                if let Ok(Ok(s)) = tokio::time::timeout(r.o.timeout, transport::connect(&ep, None)).await
                    && let Some(sess) = s.tls_session()
                {
                    let chain: Vec<crate::cert::CertInfo> = sess
                        .peer_certificates()
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|c| crate::cert::parse(c))
                        .collect();
                    data["chain"] = serde_json::to_value(chain).unwrap_or_default();
                }
            }
            r.push("tls", None, Status::Fail, t.elapsed(), detail, Some(hint), Some(data));
            None
        }
        Err(_) => {
            r.push(
                "tls",
                None,
                Status::Fail,
                t.elapsed(),
                format!("no TLS handshake within {:?}", r.o.timeout),
                Some("does the port speak TLS?".into()),
                None,
            );
            None
        }
    }
}

async fn per_protocol(r: &mut Runner, p: Protocol) {
    let timeout = r.o.timeout;
    // CONNECT/CONNACK with the given credentials
    let spec = r.spec(p, "main", true);
    let t = Instant::now();
    let ep = r.endpoint.clone().expect("resolved");
    let first = match r.spare.take() {
        Some(stream) => Client::handshake(stream, &spec, p, timeout).await,
        None => Client::connect(&ep, &spec, p, timeout).await,
    };
    let mut limits = squall_agent::mqtt::codec::ServerLimits::default();
    let mut main = match first {
        Ok((c, ack)) if ack.code == 0 => {
            limits = ack.limits.clone();
            let l = &ack.limits;
            let mut detail = format!(
                "accepted in {}; session present: {}",
                ms(ack.elapsed),
                if ack.session_present { "yes" } else { "no" }
            );
            if p == Protocol::V5 {
                detail += &format!(
                    "; receive max {}, max QoS {}, retain {}, max packet {}, topic aliases {}, wildcards {}, shared {}, server keepalive {}",
                    l.receive_max,
                    l.max_qos,
                    if l.retain_available { "yes" } else { "no" },
                    l.max_packet_size.map_or("unlimited".into(), |m| m.to_string()),
                    l.topic_alias_max,
                    if l.wildcard_subscription_available { "yes" } else { "no" },
                    if l.shared_subscription_available { "yes" } else { "no" },
                    l.server_keepalive_secs.map_or("as asked".into(), |k| format!("{k}s")),
                );
            }
            let data = serde_json::json!({ "session_present": ack.session_present, "limits": if p == Protocol::V5 { serde_json::to_value(l).ok() } else { None } });
            r.push("connect", Some(p), Status::Pass, t.elapsed(), detail, None, Some(data));
            if r.selected("auth") {
                match &r.o.username {
                    Some(u) => r.push(
                        "auth",
                        Some(p),
                        Status::Pass,
                        Duration::ZERO,
                        format!("credentials of `{u}` accepted"),
                        None,
                        None,
                    ),
                    None => r.skip("auth", Some(p), "skipped: no credentials given (--username)"),
                }
            }
            Some(c)
        }
        Ok((_, ack)) => {
            let meaning = connack_meaning(p, ack.code);
            let hint = refusal_hint(ack.code, &r.o);
            r.push(
                "connect",
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("refused: 0x{:02x} {meaning}", ack.code),
                Some(hint.clone()),
                Some(serde_json::json!({ "code": ack.code })),
            );
            r.cause(refusal_cause(ack.code));
            if r.selected("auth") {
                if matches!(ack.code, 4 | 5 | 0x86 | 0x87) {
                    r.push(
                        "auth",
                        Some(p),
                        Status::Fail,
                        Duration::ZERO,
                        format!("refused: {meaning}"),
                        Some(hint),
                        None,
                    );
                    r.cause(refusal_cause(ack.code));
                } else {
                    r.skip("auth", Some(p), "skipped: the connection was refused for another reason");
                }
            }
            None
        }
        Err(e) => {
            let hint = client_hint(&e);
            r.push("connect", Some(p), Status::Fail, t.elapsed(), e.to_string(), Some(hint), None);
            r.cause(error_cause(&e));
            if r.selected("auth") {
                r.skip("auth", Some(p), "skipped: CONNECT failed");
            }
            None
        }
    };

    // anonymous access: reported, judged only if asked
    if r.selected("anonymous") {
        let t = Instant::now();
        let spec = r.spec(p, "anon", false);
        let accepted = match Client::connect(&ep, &spec, p, timeout).await {
            Ok((c, ack)) if ack.code == 0 => {
                c.disconnect().await;
                Some(true)
            }
            Ok((_, ack)) => {
                let _ = ack;
                Some(false)
            }
            Err(_) => None,
        };
        let detail = match accepted {
            Some(true) => "the broker accepts clients without credentials",
            Some(false) => "the broker refuses clients without credentials",
            None => "could not tell (the connection failed)",
        };
        let status = match (r.o.anonymous, accepted) {
            (Anonymous::Report, _) => Status::Info,
            (Anonymous::Allowed, Some(true)) | (Anonymous::Refused, Some(false)) => Status::Pass,
            _ => Status::Fail,
        };
        let hint = (status == Status::Fail).then(|| match r.o.anonymous {
            Anonymous::Refused => {
                "anonymous clients get in: set allow_anonymous false (or the broker's equivalent)".to_string()
            }
            _ => "anonymous clients are refused".to_string(),
        });
        r.push("anonymous", Some(p), status, t.elapsed(), detail, hint, None);
    }

    let Some(client) = main.as_mut() else {
        for c in checks_from("publish") {
            if r.selected(c) {
                r.skip(c, Some(p), "skipped: CONNECT failed");
            }
        }
        return;
    };

    let max_qos = r.o.max_qos.min(2);
    let mut publish_ok = [false; 3];
    let mut publish_cause = [None; 3];
    // MQTT 5: what the broker declares absent is reported as such, not probed (unless required)
    let declared_absent = |q: u8| p == Protocol::V5 && q > limits.max_qos;
    for q in 0..=max_qos {
        let name = format!("publish.qos{q}");
        if !r.selected(&name) {
            continue;
        }
        if declared_absent(q) && !r.required(&format!("qos{q}")) {
            let why = format!(
                "the broker declares maximum QoS {} (CONNACK); not probed (--require qos{q} judges it)",
                limits.max_qos
            );
            r.skip_because(&name, Some(p), why, Cause::QosUnavailable);
            continue;
        }
        let topic = r.topic(p, &format!("publish/q{q}"));
        let qos = qos_from_u8(q).expect("0..=2");
        let t = Instant::now();
        match client.publish(&topic, b"squall check", qos, false, timeout).await {
            Ok(None) => {
                publish_ok[q as usize] = true;
                r.push(
                    &name,
                    Some(p),
                    Status::Pass,
                    t.elapsed(),
                    "sent (QoS 0 has no acknowledgement)",
                    None,
                    None,
                );
            }
            Ok(Some(a)) if a.code < 0x80 => {
                publish_ok[q as usize] = true;
                let what = if q == 1 { "PUBACK" } else { "PUBREC, PUBREL, PUBCOMP" };
                let note = if a.code == 0x10 { " (no matching subscribers)" } else { "" };
                r.push(
                    &name,
                    Some(p),
                    Status::Pass,
                    t.elapsed(),
                    format!("{what} in {}{note}", ms(a.elapsed)),
                    None,
                    Some(serde_json::json!({ "code": a.code })),
                );
            }
            Ok(Some(a)) => {
                let hint = if a.code == 0x87 {
                    format!("Not authorized: check the broker's ACL for topic {topic}")
                } else {
                    "see the broker's logs".to_string()
                };
                r.push(
                    &name,
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    format!("refused: 0x{:02x} {}", a.code, reason_meaning(a.code)),
                    Some(hint),
                    Some(serde_json::json!({ "code": a.code })),
                );
                r.cause(if a.code == 0x87 { Cause::AclDenied } else { Cause::Other });
            }
            Err(e) => {
                let hint = client_hint(&e);
                r.push(&name, Some(p), Status::Fail, t.elapsed(), e.to_string(), Some(hint), None);
                r.cause(error_cause(&e));
                if lost(&e) {
                    return skip_rest_after_loss(r, p);
                }
            }
        }
    }

    let mut receive_ok = [false; 3];
    let mut tried_receive = false;
    for (q, c) in publish_cause.iter_mut().enumerate() {
        // what made each publish fail, for the subscribe check it skips
        *c = r
            .results
            .iter()
            .rev()
            .find(|x| x.id == format!("{}.publish.qos{q}", proto_tag(p)))
            .and_then(|x| x.cause);
    }
    for q in 0..=max_qos {
        let name = format!("subscribe.qos{q}");
        if !r.selected(&name) {
            continue;
        }
        if declared_absent(q) && !r.required(&format!("qos{q}")) {
            let why = format!("the broker declares maximum QoS {} (CONNACK); not probed", limits.max_qos);
            r.skip_because(&name, Some(p), why, Cause::QosUnavailable);
            continue;
        }
        if r.selected(&format!("publish.qos{q}")) && !publish_ok[q as usize] {
            let cause = publish_cause[q as usize].unwrap_or(Cause::Other);
            r.skip_because(&name, Some(p), format!("skipped: publishing at QoS {q} failed"), cause);
            continue;
        }
        tried_receive = true;
        let topic = r.topic(p, &format!("subscribe/q{q}"));
        let qos = qos_from_u8(q).expect("0..=2");
        let t = Instant::now();
        let codes = match client.subscribe(&topic, qos, timeout).await {
            Ok(c) => c,
            Err(e) => {
                let hint = client_hint(&e);
                r.push(
                    &name,
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    format!("SUBSCRIBE: {e}"),
                    Some(hint),
                    None,
                );
                r.cause(error_cause(&e));
                if lost(&e) {
                    return skip_rest_after_loss(r, p);
                }
                continue;
            }
        };
        let granted = codes.first().copied().unwrap_or(0x80);
        if granted >= 0x80 {
            r.push(
                &name,
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("SUBACK refused: 0x{granted:02x} {}", reason_meaning(granted)),
                Some(format!("Not authorized? check the broker's ACL for topic {topic}")),
                Some(serde_json::json!({ "granted": granted })),
            );
            r.cause(if matches!(granted, 0x80 | 0x87) { Cause::AclDenied } else { Cause::Other });
            continue;
        }
        let payload = format!("own-{q}-{}", r.run);
        if let Err(e) = client.publish(&topic, payload.as_bytes(), qos, false, timeout).await {
            let hint = client_hint(&e);
            r.push(
                &name,
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("publishing to it: {e}"),
                Some(hint),
                None,
            );
            r.cause(error_cause(&e));
            continue;
        }
        match client.recv_on(&topic, 1, timeout).await {
            Ok(got) if got.first().is_some_and(|m| m.payload == payload.as_bytes()) => {
                receive_ok[q as usize] = true;
                let m = &got[0];
                let mut detail = format!(
                    "granted QoS {granted} (asked {q}); own message back at QoS {} in {}",
                    u8::from(m.qos),
                    ms(t.elapsed())
                );
                if granted < q {
                    detail += " — the broker downgraded the subscription";
                }
                r.push(&name, Some(p), Status::Pass, t.elapsed(), detail, None, Some(serde_json::json!({ "asked": q, "granted": granted, "received_qos": u8::from(m.qos) })));
            }
            Ok(_) => r.push(
                &name,
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("granted QoS {granted}, but the message did not come back within {timeout:?}"),
                Some(format!("an ACL may drop messages on {topic} silently")),
                None,
            ),
            Err(e) => {
                let hint = client_hint(&e);
                r.push(&name, Some(p), Status::Fail, t.elapsed(), e.to_string(), Some(hint), None);
                r.cause(error_cause(&e));
                continue;
            }
        }
        if !receive_ok[q as usize] {
            r.cause(Cause::NotDelivered);
        }
    }

    if r.selected("deny") {
        for topic in r.o.expect_deny.clone() {
            deny(r, p, &topic).await;
        }
    }

    // what follows needs own messages back: if none came, say so instead of guessing
    if tried_receive && !receive_ok.iter().any(|ok| *ok) {
        let why = format!("skipped: publishes on {} are not delivered (see subscribe)", r.o.topic_prefix);
        for c in checks_from("latency") {
            if r.selected(c) {
                r.skip_because(c, Some(p), why.clone(), Cause::NotDelivered);
                if c == "will" && r.selected("will") {
                    r.skip_because("will.clean_disconnect", Some(p), why.clone(), Cause::NotDelivered);
                }
            }
        }
        if let Some(c) = main {
            c.disconnect().await;
        }
        return;
    }

    // round trip: publish, receive own message, N times
    if r.selected("latency") {
        if r.selected("subscribe.qos0") && !receive_ok[0] {
            r.skip_because("latency", Some(p), "skipped: receiving own messages failed", Cause::NotDelivered);
        } else {
            let topic = r.topic(p, "latency");
            let t = Instant::now();
            let outcome = async {
                if client
                    .subscribe(&topic, QoS::AtMostOnce, timeout)
                    .await?
                    .first()
                    .is_none_or(|c| *c >= 0x80)
                {
                    return Err(ClientError::Closed);
                }
                let mut samples = Vec::new();
                for i in 0..r.o.samples {
                    let s = Instant::now();
                    let payload = format!("rtt-{i}");
                    client.publish(&topic, payload.as_bytes(), QoS::AtMostOnce, false, timeout).await?;
                    match client.recv_on(&topic, 1, timeout).await?.first() {
                        Some(m) if m.payload == payload.as_bytes() => {
                            samples.push(s.elapsed().as_secs_f64() * 1e3)
                        }
                        _ => return Err(ClientError::Timeout(timeout, "own message")),
                    }
                }
                Ok(samples)
            }
            .await;
            match outcome {
                Ok(mut s) if !s.is_empty() => {
                    s.sort_by(|a, b| a.total_cmp(b));
                    let q = |x: f64| s[((s.len() as f64 * x).ceil() as usize).clamp(1, s.len()) - 1];
                    let data = serde_json::json!({ "samples": s.len(), "min_ms": s[0], "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": s[s.len() - 1] });
                    let detail = format!(
                        "{} round trips: min {:.2} / p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms",
                        s.len(),
                        s[0],
                        q(0.5),
                        q(0.9),
                        q(0.99),
                        s[s.len() - 1]
                    );
                    match r.o.max_latency {
                        Some(bound) if q(0.5) > bound.as_secs_f64() * 1e3 => {
                            let max = bound.as_secs_f64() * 1e3;
                            let over = s.iter().filter(|v| **v > max).count();
                            let detail = format!(
                                "{detail}: median over --max-latency {} ({over} of {} over)",
                                humantime::format_duration(bound),
                                s.len()
                            );
                            let hint = "the broker, or the network to it, is slow to deliver: is it overloaded, far away, or persisting each message?".to_string();
                            r.push(
                                "latency",
                                Some(p),
                                Status::Fail,
                                t.elapsed(),
                                detail,
                                Some(hint),
                                Some(data),
                            );
                            r.cause(Cause::Slow);
                        }
                        _ => r.push("latency", Some(p), Status::Pass, t.elapsed(), detail, None, Some(data)),
                    }
                }
                Ok(_) => r.skip("latency", Some(p), "skipped: --samples 0"),
                Err(e) => {
                    let hint = client_hint(&e);
                    r.push("latency", Some(p), Status::Fail, t.elapsed(), e.to_string(), Some(hint), None);
                    r.cause(error_cause(&e));
                }
            }
        }
    }

    // each of these gets a working connection: never one an earlier check lost
    for check in ["retained", "will", "session", "shared", "max_payload", "burst"] {
        if !r.selected(check) {
            continue;
        }
        if let Err(e) = revive(r, p, &mut main).await {
            let why = format!("skipped: the connection was lost and a new one failed: {e}");
            for c in checks_from(check) {
                if r.selected(c) {
                    r.skip_because(c, Some(p), why.clone(), error_cause(&e));
                }
            }
            return;
        }
        let client = main.as_mut().expect("revived");
        match check {
            "retained" => retained(r, p, &limits).await,
            "will" => will(r, p, client).await,
            "session" => session(r, p, client).await,
            "shared"
                if p == Protocol::V5 && !limits.shared_subscription_available && !r.required("shared") =>
            {
                let why = "the broker declares no shared subscriptions (CONNACK); not probed (--require shared judges it)";
                r.skip_because("shared", Some(p), why, Cause::SharedUnavailable);
            }
            "shared" => shared(r, p, client).await,
            "max_payload" => max_payload(r, p, client).await,
            _ => burst(r, p, client).await,
        }
    }
    if let Some(c) = main {
        c.disconnect().await;
    }
}

/// `--expect-deny TOPIC`, on a connection of its own: passes when the broker refuses the
/// subscription or the publish there (or closes the connection on it), or grants both but
/// delivers nothing; fails when its own message comes back.
async fn deny(r: &mut Runner, p: Protocol, topic: &str) {
    let timeout = r.o.timeout;
    let t = Instant::now();
    let spec = r.spec(p, "deny", true);
    let Some(mut c) = second(r, "deny", p, &spec, t).await else { return };
    let outcome: Result<String, String> = async {
        match c.subscribe(topic, QoS::AtLeastOnce, timeout).await {
            Ok(codes) if codes.first().is_none_or(|g| *g >= 0x80) => {
                let g = codes.first().copied().unwrap_or(0x80);
                return Ok(format!("SUBSCRIBE refused: 0x{g:02x} {}", reason_meaning(g)));
            }
            Err(e) if lost(&e) => return Ok(format!("the broker ended the connection on SUBSCRIBE ({e})")),
            Err(e) => return Err(format!("SUBSCRIBE: {e}")),
            Ok(_) => {}
        }
        let payload = format!("deny-{}", r.run);
        match c.publish(topic, payload.as_bytes(), QoS::AtLeastOnce, false, timeout).await {
            Ok(Some(a)) if a.code >= 0x80 => {
                return Ok(format!("PUBLISH refused: 0x{:02x} {}", a.code, reason_meaning(a.code)));
            }
            Err(e) if lost(&e) => return Ok(format!("the broker ended the connection on PUBLISH ({e})")),
            Err(e) => return Err(format!("PUBLISH: {e}")),
            Ok(_) => {}
        }
        match c.recv_on(topic, 1, timeout.min(Duration::from_secs(2))).await {
            Ok(got) if got.iter().any(|m| m.payload == payload.as_bytes()) => {
                Err("allowed: the subscription was granted and its own message came back".into())
            }
            _ => Ok("subscription granted, but nothing published there is delivered".into()),
        }
    }
    .await;
    c.abort();
    match outcome {
        Ok(how) => {
            r.push("deny", Some(p), Status::Pass, t.elapsed(), format!("{topic}: denied ({how})"), None, None)
        }
        Err(why) => {
            let hint =
                format!("the broker's ACL lets this client use {topic}: check its rules for this user");
            r.push("deny", Some(p), Status::Fail, t.elapsed(), format!("{topic}: {why}"), Some(hint), None);
            r.cause(Cause::NotDenied);
        }
    }
    if let Some(last) = r.results.last_mut() {
        last.id = format!("{}.deny[{topic}]", proto_tag(p));
    }
}

/// Makes sure `main` is a live connection: a PINGREQ answered, or a new connection.
async fn revive(r: &mut Runner, p: Protocol, main: &mut Option<Client>) -> Result<(), ClientError> {
    let wait = r.o.timeout.min(Duration::from_secs(2));
    if let Some(c) = main.as_mut()
        && c.ping(wait).await.is_ok()
    {
        return Ok(());
    }
    if let Some(c) = main.take() {
        c.abort();
    }
    let spec = r.spec(p, "main", true);
    let (c, _) = r.open(p, &spec).await?;
    *main = Some(c);
    Ok(())
}

/// The checks from `first` on, in order.
fn checks_from(first: &str) -> impl Iterator<Item = &'static str> {
    CHECKS.iter().copied().skip_while(move |c| *c != first)
}

fn skip_rest_after_loss(r: &mut Runner, p: Protocol) {
    for c in checks_from("subscribe") {
        if r.selected(c) {
            r.skip(c, Some(p), "skipped: the broker dropped the connection");
        }
    }
}

/// A second connection for checks that need one; a failure is the check's failure.
async fn second(r: &mut Runner, check: &str, p: Protocol, spec: &ConnectSpec, t: Instant) -> Option<Client> {
    match r.open(p, spec).await {
        Ok((c, _)) => Some(c),
        Err(e) => {
            let hint = if matches!(&e, ClientError::Closed)
                || matches!(&e, ClientError::Io(m) if m.contains("reset"))
            {
                "the broker refused a second connection: is a connection limit (max_connections) reached?"
                    .to_string()
            } else {
                client_hint(&e)
            };
            let limit =
                matches!(&e, ClientError::Closed) || matches!(&e, ClientError::Io(m) if m.contains("reset"));
            r.push(
                check,
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("a second connection failed: {e}"),
                Some(hint),
                None,
            );
            r.cause(if limit { Cause::ConnectionLimit } else { error_cause(&e) });
            None
        }
    }
}

/// Retained messages, on a connection of its own (a broker that refuses them by closing the
/// connection takes nothing else down with it).
async fn retained(r: &mut Runner, p: Protocol, limits: &squall_agent::mqtt::codec::ServerLimits) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "retained");
    let payload = format!("retained-{}", r.run);
    let t = Instant::now();
    let qos = qos_from_u8(r.o.max_qos.min(1)).expect("0..=1");
    const DISABLED: &str =
        "retained messages are disabled on this broker (mosquitto: retain_available false)";
    if p == Protocol::V5 && !limits.retain_available {
        let why = "the broker declares retained messages unavailable (CONNACK retain available = no)";
        if r.required("retained") {
            r.push("retained", Some(p), Status::Fail, t.elapsed(), why, Some(DISABLED.into()), None);
            r.cause(Cause::RetainUnavailable);
        } else {
            let why = format!("{why}; not probed (--require retained judges it)");
            r.skip_because("retained", Some(p), why, Cause::RetainUnavailable);
        }
        return;
    }
    let spec = r.spec(p, "retained-set", true);
    let Some(mut main) = second(r, "retained", p, &spec, t).await else { return };
    let main = &mut main;
    if let Err(e) = main.publish(&topic, payload.as_bytes(), qos, true, timeout).await {
        let (detail, hint, cause) = if lost(&e) {
            (
                format!("the broker ended the connection on a retained PUBLISH ({e})"),
                DISABLED.to_string(),
                Cause::RetainUnavailable,
            )
        } else {
            (format!("setting it: {e}"), client_hint(&e), error_cause(&e))
        };
        r.push("retained", Some(p), Status::Fail, t.elapsed(), detail, Some(hint), None);
        r.cause(cause);
        return;
    }
    let spec = r.spec(p, "retained", true);
    let Some(mut other) = second(r, "retained", p, &spec, t).await else {
        let _ = main.publish(&topic, b"", qos, true, timeout).await;
        return;
    };
    // a QoS 0 retained PUBLISH has no answer: a broker that refuses it closes the connection
    let alive = main.ping(timeout.min(Duration::from_secs(2))).await.is_ok();
    let got = match other.subscribe(&topic, qos, timeout).await {
        Ok(_) => other.recv_on(&topic, 1, timeout).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    // clear it, whatever happened, and check that it is gone
    let cleared = main.publish(&topic, b"", qos, true, timeout).await.is_ok();
    let still = if cleared {
        match other.subscribe(&topic, qos, timeout).await {
            Ok(_) => {
                other.recv_on(&topic, 1, Duration::from_millis(500).min(timeout)).await.unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    } else {
        Vec::new()
    };
    other.disconnect().await;
    // the clearing publish itself reaches current subscribers; only the old payload counts
    let still: Vec<_> = still.into_iter().filter(|m| m.payload == payload.as_bytes()).collect();
    match got.first() {
        Some(m) if m.payload == payload.as_bytes() && m.retain && still.is_empty() && cleared => r.push(
            "retained",
            Some(p),
            Status::Pass,
            t.elapsed(),
            "set, received by a new subscriber with the retain flag, cleared",
            None,
            None,
        ),
        Some(m) if m.payload == payload.as_bytes() && !m.retain => r.push(
            "retained",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "delivered to a new subscriber without the retain flag",
            Some("the broker mishandles retained messages".into()),
            None,
        ),
        Some(_) if !still.is_empty() => r.push(
            "retained",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "an empty retained publish did not clear it",
            Some("the broker should delete a retained message on an empty payload".into()),
            None,
        ),
        _ if !alive => {
            r.push(
                "retained",
                Some(p),
                Status::Fail,
                t.elapsed(),
                "the broker ended the connection on a retained PUBLISH",
                Some(DISABLED.into()),
                None,
            );
            r.cause(Cause::RetainUnavailable);
        }
        _ => {
            r.push(
                "retained",
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("accepted, but a new subscriber did not receive it within {timeout:?}"),
                Some("the broker does not keep retained messages for new subscribers".into()),
                None,
            );
            r.cause(Cause::RetainNotKept);
        }
    }
}

/// A QoS 1 will with this payload on this topic.
fn will_on(topic: &str, payload: &str) -> Will {
    Will {
        topic: ByteString::from(topic),
        payload: payload.as_bytes().to_vec().into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_secs: 0,
    }
}

async fn will(r: &mut Runner, p: Protocol, observer: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "will");
    let t = Instant::now();
    if let Err(e) = observer.subscribe(&topic, QoS::AtLeastOnce, timeout).await {
        let hint = client_hint(&e);
        r.push(
            "will",
            Some(p),
            Status::Fail,
            t.elapsed(),
            format!("subscribing to the will topic: {e}"),
            Some(hint),
            None,
        );
        r.cause(error_cause(&e));
        return;
    }
    // an abrupt close must deliver the will, within keepalive bounds
    let keepalive = 2u16;
    let mut spec = r.spec(p, "will", true);
    spec.keepalive_secs = keepalive;
    let payload = format!("will-{}", r.run);
    spec.will = Some(will_on(&topic, &payload));
    let Some(dying) = second(r, "will", p, &spec, t).await else { return };
    let closed = Instant::now();
    dying.abort();
    let bound = timeout.max(Duration::from_millis(keepalive as u64 * 1500 + 1000));
    let got = observer.recv_on(&topic, 1, bound).await.unwrap_or_default();
    match got.first() {
        Some(m) if m.payload == payload.as_bytes() => r.push(
            "will",
            Some(p),
            Status::Pass,
            t.elapsed(),
            format!("delivered {} after the connection was closed abruptly", ms(closed.elapsed())),
            None,
            None,
        ),
        _ => r.push(
            "will",
            Some(p),
            Status::Fail,
            t.elapsed(),
            format!("not delivered within {bound:?} of an abrupt close"),
            Some("the broker does not publish wills, or an ACL drops the will topic".into()),
            None,
        ),
    }
    if r.results.last().is_some_and(|c| c.status == Status::Fail) {
        r.cause(Cause::WillNotPublished);
    }
    // and a clean DISCONNECT must not
    let t = Instant::now();
    let mut spec = r.spec(p, "will-clean", true);
    let payload = format!("will-clean-{}", r.run);
    spec.will = Some(will_on(&topic, &payload));
    let Some(leaving) = second(r, "will.clean_disconnect", p, &spec, t).await else { return };
    leaving.disconnect().await;
    let got = observer.recv_on(&topic, 1, Duration::from_millis(1500).min(timeout)).await.unwrap_or_default();
    if got.iter().any(|m| m.payload == payload.as_bytes()) {
        r.push(
            "will.clean_disconnect",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "the will was published after a clean DISCONNECT",
            Some("the broker breaks MQTT: a clean DISCONNECT discards the will".into()),
            None,
        );
        r.cause(Cause::WillOnCleanDisconnect);
    } else {
        r.push(
            "will.clean_disconnect",
            Some(p),
            Status::Pass,
            t.elapsed(),
            "no will after a clean DISCONNECT",
            None,
            None,
        );
    }
}

async fn session(r: &mut Runner, p: Protocol, main: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "session");
    let t = Instant::now();
    let mut spec = r.spec(p, "session", true);
    spec.clean_start = false;
    spec.session_expiry_secs = if p == Protocol::V5 { 300 } else { 0 };
    let Some(mut s) = second(r, "session", p, &spec, t).await else { return };
    let sub = s.subscribe(&topic, QoS::AtLeastOnce, timeout).await;
    s.disconnect().await;
    if !sub.as_ref().is_ok_and(|c| c.first().is_some_and(|c| *c < 0x80)) {
        r.push(
            "session",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "could not subscribe at QoS 1",
            Some(format!("check the broker's ACL for topic {topic}")),
            None,
        );
        r.cause(Cause::AclDenied);
        return;
    }
    let payload = format!("queued-{}", r.run);
    if let Err(e) = main.publish(&topic, payload.as_bytes(), QoS::AtLeastOnce, false, timeout).await {
        let hint = client_hint(&e);
        r.push(
            "session",
            Some(p),
            Status::Fail,
            t.elapsed(),
            format!("publishing while it was away: {e}"),
            Some(hint),
            None,
        );
        r.cause(error_cause(&e));
        return;
    }
    match r.open(p, &spec).await {
        Ok((mut back, ack)) => {
            let got = back.recv_on(&topic, 1, timeout).await.unwrap_or_default();
            back.disconnect().await;
            // leave no session behind
            let mut clean = spec.clone();
            clean.clean_start = true;
            if let Ok((c, _)) = r.open(p, &clean).await {
                c.disconnect().await;
            }
            let delivered = got.first().is_some_and(|m| m.payload == payload.as_bytes());
            match (ack.session_present, delivered) {
                (true, true) => r.push(
                    "session",
                    Some(p),
                    Status::Pass,
                    t.elapsed(),
                    "resumed with session present; the QoS 1 message queued while offline was delivered",
                    None,
                    None,
                ),
                (false, _) => r.push(
                    "session",
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    "CONNACK said session present = no",
                    Some("the broker does not keep persistent sessions (or expired it at once)".into()),
                    None,
                ),
                (true, false) => r.push(
                    "session",
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    "session present, but the message queued while offline never came",
                    Some("the broker does not queue QoS 1 messages for offline sessions".into()),
                    None,
                ),
            }
            if r.results.last().is_some_and(|c| c.status == Status::Fail) {
                r.cause(Cause::SessionNotKept);
            }
        }
        Err(e) => {
            let hint = client_hint(&e);
            r.push(
                "session",
                Some(p),
                Status::Fail,
                t.elapsed(),
                format!("reconnecting: {e}"),
                Some(hint),
                None,
            );
            r.cause(error_cause(&e));
        }
    }
}

async fn shared(r: &mut Runner, p: Protocol, main: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "shared");
    let filter = format!("$share/squall-{}/{topic}", r.run);
    let t = Instant::now();
    let mut members = Vec::new();
    for i in 0..2 {
        let spec = r.spec(p, &format!("shared{i}"), true);
        let Some(mut c) = second(r, "shared", p, &spec, t).await else { return };
        match c.subscribe(&filter, QoS::AtLeastOnce, timeout).await {
            Ok(codes) if codes.first().is_some_and(|c| *c < 0x80) => members.push(c),
            _ => {
                c.disconnect().await;
                r.push(
                    "shared",
                    Some(p),
                    Status::Fail,
                    t.elapsed(),
                    "the shared subscription was refused",
                    Some("the broker may not support $share subscriptions".into()),
                    None,
                );
                return;
            }
        }
    }
    let n = 10;
    for i in 0..n {
        if main.publish(&topic, format!("s{i}").as_bytes(), QoS::AtLeastOnce, false, timeout).await.is_err() {
            break;
        }
    }
    let mut counts = Vec::new();
    for m in members.iter_mut() {
        counts.push(
            m.recv_on(&topic, n, Duration::from_millis(1000).min(timeout)).await.unwrap_or_default().len(),
        );
    }
    for m in members {
        m.disconnect().await;
    }
    let total: usize = counts.iter().sum();
    let detail = format!("{n} messages to a group of 2: {} and {}", counts[0], counts[1]);
    if total == n {
        r.push(
            "shared",
            Some(p),
            Status::Pass,
            t.elapsed(),
            detail,
            None,
            Some(serde_json::json!({ "counts": counts })),
        );
    } else {
        r.push(
            "shared",
            Some(p),
            Status::Fail,
            t.elapsed(),
            detail,
            Some("each message should reach exactly one member".into()),
            Some(serde_json::json!({ "counts": counts })),
        );
    }
}

async fn max_payload(r: &mut Runner, p: Protocol, main: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "payload");
    let t = Instant::now();
    if main.subscribe(&topic, QoS::AtLeastOnce, timeout).await.is_err() {
        r.push("max_payload", Some(p), Status::Fail, t.elapsed(), "could not subscribe", None, None);
        return;
    }
    let mut largest = 0usize;
    for size in [1usize << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20] {
        let payload = vec![b'p'; size];
        match main.publish(&topic, &payload, QoS::AtLeastOnce, false, timeout).await {
            Ok(Some(a)) if a.code < 0x80 => {}
            _ => break,
        }
        match main.recv_on(&topic, 1, timeout).await {
            Ok(got) if got.first().is_some_and(|m| m.payload.len() == size) => largest = size,
            _ => break,
        }
    }
    if largest == 0 {
        r.push(
            "max_payload",
            Some(p),
            Status::Fail,
            t.elapsed(),
            "not even a 1 KiB message came back",
            Some("check the broker's maximum packet size".into()),
            None,
        );
    } else {
        let detail = if largest == 1 << 20 {
            "1 MiB payloads round-trip (probed up to 1 MiB)".to_string()
        } else {
            format!("the largest payload that round-tripped: {} KiB", largest >> 10)
        };
        r.push(
            "max_payload",
            Some(p),
            Status::Info,
            t.elapsed(),
            detail,
            None,
            Some(serde_json::json!({ "largest_bytes": largest })),
        );
    }
}

async fn burst(r: &mut Runner, p: Protocol, main: &mut Client) {
    let timeout = r.o.timeout;
    let topic = r.topic(p, "burst");
    let t = Instant::now();
    let spec = r.spec(p, "burst", true);
    let Some(mut sub) = second(r, "burst", p, &spec, t).await else { return };
    if !sub
        .subscribe(&topic, QoS::AtLeastOnce, timeout)
        .await
        .is_ok_and(|c| c.first().is_some_and(|c| *c < 0x80))
    {
        sub.disconnect().await;
        r.push("burst", Some(p), Status::Fail, t.elapsed(), "could not subscribe", None, None);
        return;
    }
    let n = 1000;
    let mut sent = 0;
    for i in 0..n {
        match main.publish(&topic, format!("b{i}").as_bytes(), QoS::AtLeastOnce, false, timeout).await {
            Ok(Some(a)) if a.code < 0x80 => sent += 1,
            _ => break,
        }
    }
    let got = sub.recv_on(&topic, n, timeout).await.unwrap_or_default().len();
    sub.disconnect().await;
    let detail = format!("{sent} QoS 1 messages acknowledged, {got} received, in {}", ms(t.elapsed()));
    if sent == n && got == n {
        r.push(
            "burst",
            Some(p),
            Status::Pass,
            t.elapsed(),
            detail,
            None,
            Some(serde_json::json!({ "sent": sent, "received": got })),
        );
    } else {
        r.push(
            "burst",
            Some(p),
            Status::Fail,
            t.elapsed(),
            detail,
            Some("the broker dropped messages: check its queue limits (e.g. max_queued_messages)".into()),
            Some(serde_json::json!({ "sent": sent, "received": got })),
        );
    }
}
