//! `squall check URL`: a broker connection check for CI and on-call.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use squall_agent::mqtt::codec::Protocol;
use squall_agent::mqtt::tls::TlsFiles;
use squall_agent::mqtt::transport::TargetUrl;
use squall_check::{Anonymous, CHECKS, CheckOptions, report};

use super::exit;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The broker: mqtt://host:port or mqtts://host:port.
    pub url: String,
    #[arg(long, short)]
    pub username: Option<String>,
    /// The password (better: the SQUALL_PASSWORD environment variable, kept out of shell history).
    #[arg(long, short, env = "SQUALL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Use TLS even for an mqtt:// URL.
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificates to trust (default: the system's).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name to verify the certificate against (default: the URL's host).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Accept any certificate (lab brokers only; the report says so).
    #[arg(long)]
    pub insecure: bool,
    /// Client id prefix; each run adds a random part and a role.
    #[arg(long, default_value = "squall-check")]
    pub client_id: String,
    /// Topic prefix; each run adds a random level, so two checks never collide.
    #[arg(long, default_value = "squall-check")]
    pub topic_prefix: String,
    /// Highest QoS to check.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// How long any one answer may take (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// MQTT version(s) to check.
    #[arg(long, value_enum, default_value_t = Versions::Both)]
    pub protocol: Versions,
    /// Run only these checks (comma-separated or repeated): dns, tcp, tls, connect, auth,
    /// anonymous, publish, subscribe, latency, retained, will, session, shared, max_payload, burst.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Skip these checks.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Also run the optional checks: shared subscription, payload-size probe, 1,000-message burst.
    #[arg(long)]
    pub extended: bool,
    /// Round-trip latency samples.
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Fail the latency check when the median round trip (publish to one's own message
    /// coming back) exceeds this, e.g. 1s or 50ms. Without it the check only reports.
    #[arg(long, value_parser = parse_duration)]
    pub max_latency: Option<Duration>,
    /// Judge these features even where an MQTT 5 broker declares them absent in CONNACK
    /// (retained, shared, qos1, qos2): a declared absence fails instead of being reported.
    #[arg(long, value_delimiter = ',', value_name = "FEATURE")]
    pub require: Vec<String>,
    /// A topic this client must not be allowed to use (repeatable): the `deny` check passes
    /// when the broker refuses the subscription or the publish there, or delivers nothing.
    #[arg(long, value_name = "TOPIC")]
    pub expect_deny: Vec<String>,
    /// Judge anonymous access instead of only reporting it.
    #[arg(long, value_enum, default_value_t = AnonymousArg::Report)]
    pub anonymous: AnonymousArg,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also write the report in --format to this file (stdout then gets the table; with
    /// --every, the latest round's report).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Check again on this cadence (start to start, e.g. 60s), for monitoring: one line per
    /// round (text), one JSON document per line (json) or one YAML document per round, until
    /// --rounds or a signal. Exit 1 if any round failed.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub every: Option<Duration>,
    /// With --every: stop after this many rounds.
    #[arg(long, value_name = "N", requires = "every")]
    pub rounds: Option<u64>,
    /// With --every: stop at the first round that fails (exit 1).
    #[arg(long, requires = "every")]
    pub stop_on_fail: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Versions {
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnonymousArg {
    Report,
    Allowed,
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Yaml,
    Junit,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| format!("`{s}` is not a duration; write e.g. 5s or 500ms"))
}

pub fn run(a: CheckArgs) -> u8 {
    let url: TargetUrl = match a.url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    for name in a.only.iter().chain(&a.skip) {
        let base = name.split('.').next().unwrap_or(name);
        if !CHECKS.contains(&base) {
            eprintln!("error: unknown check `{name}`; the checks are {}", CHECKS.join(", "));
            return exit::INVALID;
        }
    }
    for f in [&a.ca, &a.cert, &a.key].into_iter().flatten() {
        if !f.is_file() {
            eprintln!("error: no such file: {}", f.display());
            return exit::INVALID;
        }
    }
    if let Some(f) = a.require.iter().find(|f| !squall_check::REQUIRABLE.contains(&f.as_str())) {
        eprintln!("error: --require {f}: give one of {}", squall_check::REQUIRABLE.join(", "));
        return exit::INVALID;
    }
    if let Some(t) = a.expect_deny.iter().find(|t| squall_proto::topic::validate_topic(t).is_err()) {
        eprintln!(
            "error: --expect-deny {t:?}: give a topic name to publish on (no + or # wildcards, not empty)"
        );
        return exit::INVALID;
    }
    let o = CheckOptions {
        url,
        tls: TlsFiles {
            ca_file: a.ca,
            cert_file: a.cert,
            key_file: a.key,
            server_name: a.server_name,
            insecure: a.insecure,
        },
        force_tls: a.tls,
        username: a.username,
        password: a.password,
        client_id_prefix: a.client_id,
        topic_prefix: a.topic_prefix.trim_end_matches('/').to_string(),
        max_qos: a.qos,
        timeout: a.timeout,
        protocols: match a.protocol {
            Versions::V311 => vec![Protocol::V311],
            Versions::V5 => vec![Protocol::V5],
            Versions::Both => vec![Protocol::V311, Protocol::V5],
        },
        only: a.only,
        skip: a.skip,
        samples: a.samples,
        max_latency: a.max_latency,
        anonymous: match a.anonymous {
            AnonymousArg::Report => Anonymous::Report,
            AnonymousArg::Allowed => Anonymous::Allowed,
            AnonymousArg::Refused => Anonymous::Refused,
        },
        extended: a.extended,
        require: a.require,
        expect_deny: a.expect_deny,
    };
    let rt = match super::runtime(&mut tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if let Some(every) = a.every {
        if a.format == Format::Junit {
            eprintln!("error: --every writes a stream of rounds: use --format text, json or yaml");
            return exit::INVALID;
        }
        if every < Duration::from_millis(100) {
            eprintln!("error: --every {}: at least 100ms between rounds", humantime::format_duration(every));
            return exit::INVALID;
        }
        let round = Rounds {
            format: a.format,
            output: a.output.clone(),
            rounds: a.rounds,
            stop_on_fail: a.stop_on_fail,
        };
        return rt.block_on(every_round(&round, o, every));
    }
    let r = rt.block_on(squall_check::run(o));
    let rendered = render(a.format, &r);
    match &a.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &rendered) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return exit::RUNTIME;
            }
            print!("{}", report::text(&r));
        }
        None => print!("{rendered}"),
    }
    if r.ok { exit::PASS } else { exit::FAIL }
}

/// The report in `format`.
fn render(format: Format, r: &squall_check::CheckReport) -> String {
    match format {
        Format::Text => report::text(r),
        Format::Json => report::json(r),
        Format::Yaml => report::yaml(r),
        Format::Junit => report::junit(r),
    }
}

/// What `--every` needs of the arguments.
struct Rounds {
    format: Format,
    output: Option<PathBuf>,
    rounds: Option<u64>,
    stop_on_fail: bool,
}

/// `--every`: rounds on a fixed cadence until `--rounds`, a failure with `--stop-on-fail`, or
/// a signal; each round's result as it comes.
async fn every_round(a: &Rounds, o: squall_check::CheckOptions, every: Duration) -> u8 {
    use std::io::Write;
    let mut any_failed = false;
    let mut next = tokio::time::Instant::now();
    let interrupted = super::run::interrupted();
    tokio::pin!(interrupted);
    for round in 1u64.. {
        let r = squall_check::run(o.clone()).await;
        any_failed |= !r.ok;
        let line = match a.format {
            Format::Json => serde_json::to_string(&r).expect("a report serializes") + "\n",
            Format::Yaml => report::yaml(&r),
            _ => {
                let failed: Vec<&str> = r
                    .checks
                    .iter()
                    .filter(|c| c.status == squall_check::report::Status::Fail)
                    .map(|c| c.id.as_str())
                    .collect();
                format!(
                    "{} round {round} {} {}: {} passed, {} failed{}\n",
                    r.started_at,
                    r.target,
                    if r.ok { "ok" } else { "FAIL" },
                    r.passed,
                    r.failed,
                    if failed.is_empty() { String::new() } else { format!(" ({})", failed.join(", ")) }
                )
            }
        };
        print!("{line}");
        let _ = std::io::stdout().flush();
        if let Some(path) = &a.output {
            if let Err(e) = std::fs::write(path, render(a.format, &r)) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return exit::RUNTIME;
            }
        }
        if (a.stop_on_fail && !r.ok) || a.rounds.is_some_and(|n| round >= n) {
            break;
        }
        // start to start; a round that overran is not made up for
        next += every;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = &mut interrupted => break,
        }
    }
    if any_failed { exit::FAIL } else { exit::PASS }
}
