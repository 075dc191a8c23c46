//! Scraping `--metrics-listen` endpoints in tests, parsed with a text-format parser (the
//! `prometheus-parse` crate, not a regex).

use std::io::{Read, Write};
use std::time::Duration;

/// `GET /metrics` on loopback `port`, parsed; `None` while nothing answers.
pub fn scrape(port: u16) -> Option<prometheus_parse::Scrape> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Some(prometheus_parse::Scrape::parse(lines).expect("the exposition parses"))
}

/// The sum of every sample called `name` (over its labels).
pub fn value(s: &prometheus_parse::Scrape, name: &str) -> f64 {
    value_with(s, name, &[])
}

/// The sum of the samples called `name` that carry these labels.
pub fn value_with(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
