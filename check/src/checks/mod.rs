//! The checks, in order. Each records a result; a failed prerequisite skips what depends on it
//! (with the reason). Nothing here panics on a broker's answer: every answer is a result.

use std::time::{Duration, Instant};

use ntex_bytes::ByteString;
use squall_agent::mqtt::codec::{
    ConnectSpec, Protocol, QoS, ServerLimits, Will, connack_meaning, qos_from_u8, reason_meaning,
};
use squall_agent::mqtt::tls::{self, TlsMaterial};
use squall_agent::mqtt::transport::{self, ConnectFailure, Endpoint};

use crate::client::{Client, ClientError, ConnAck};
use crate::report::{Cause, CheckReport, CheckResult, SCHEMA_VERSION, Status};
use crate::{Anonymous, CHECKS, CheckOptions, EXTENDED};

mod connect;
mod extended;
mod features;
mod messages;
mod network;

use network::network;

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
        1 | 0x84 => Cause::ProtocolUnsupported,
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
        if base == "deny" && self.o.expect_deny.is_empty() {
            return false; // nothing to deny
        }
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

    /// A failure because of `e` (after `context`, if any), with its hint and cause.
    fn failed_on(
        &mut self,
        check: &str,
        p: Option<Protocol>,
        took: Duration,
        context: &str,
        e: &ClientError,
    ) {
        let detail = if context.is_empty() { e.to_string() } else { format!("{context}: {e}") };
        self.push(check, p, Status::Fail, took, detail, Some(client_hint(e)), None);
        self.cause(error_cause(e));
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

/// Every check of one protocol, in order.
async fn per_protocol(r: &mut Runner, p: Protocol) {
    let (mut main, limits) = connect::connect_main(r, p).await;
    if r.selected("anonymous") {
        connect::anonymous(r, p).await;
    }
    if main.is_none() {
        // what made CONNECT fail is why the rest is skipped
        let id = format!("{}.connect", proto_tag(p));
        let cause = r.results.iter().rev().find(|c| c.id == id).and_then(|c| c.cause).unwrap_or(Cause::Other);
        for c in checks_from("publish") {
            if r.selected(c) {
                r.skip_because(c, Some(p), "skipped: CONNECT failed", cause);
            }
        }
        return;
    }
    let Some(publish_ok) = messages::publish_all(r, p, &mut main, &limits).await else { return };
    let client = main.as_mut().expect("connected or revived");
    let Some((tried_receive, receive_ok)) = messages::subscribe_all(r, p, client, &limits, publish_ok).await
    else {
        return;
    };
    if r.selected("deny") {
        for topic in r.o.expect_deny.clone() {
            messages::deny(r, p, &topic).await;
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

    if r.selected("latency") {
        messages::latency(r, p, client, receive_ok).await;
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
            "retained" => features::retained(r, p, &limits).await,
            "will" => features::will(r, p, client).await,
            "session" => features::session(r, p, client).await,
            "shared"
                if p == Protocol::V5 && !limits.shared_subscription_available && !r.required("shared") =>
            {
                let why = "the broker declares no shared subscriptions (CONNACK); not probed (--require shared judges it)";
                r.skip_because("shared", Some(p), why, Cause::SharedUnavailable);
            }
            "shared" => extended::shared(r, p, client).await,
            "max_payload" => extended::max_payload(r, p, client, &limits).await,
            _ => extended::burst(r, p, client).await,
        }
    }
    if let Some(c) = main {
        c.disconnect().await;
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
    second_with_ack(r, check, p, spec, t).await.map(|(c, _)| c)
}

/// [`second`], with its CONNACK (what the broker imposes on it, e.g. its keepalive).
async fn second_with_ack(
    r: &mut Runner,
    check: &str,
    p: Protocol,
    spec: &ConnectSpec,
    t: Instant,
) -> Option<(Client, ConnAck)> {
    match r.open(p, spec).await {
        Ok(c) => Some(c),
        Err(e) => {
            let limit =
                matches!(&e, ClientError::Closed) || matches!(&e, ClientError::Io(m) if m.contains("reset"));
            let hint = if limit {
                "the broker refused a second connection: is a connection limit (max_connections) reached?"
                    .to_string()
            } else {
                client_hint(&e)
            };
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
