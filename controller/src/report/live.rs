//! The live line: once a second, what the run is doing. On a terminal it rewrites one line; to
//! a file or pipe it prints plain lines (CI logs stay readable).

use std::io::{IsTerminal, Write};

use super::text::fmt_us;
use crate::aggregate::LiveView;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveMode {
    /// Rewrite one line (stderr is a terminal).
    Terminal,
    /// One plain line per interval.
    Lines,
    Off,
}

impl LiveMode {
    /// Terminal when stderr is one, plain lines otherwise.
    pub fn detect() -> LiveMode {
        if std::io::stderr().is_terminal() { LiveMode::Terminal } else { LiveMode::Lines }
    }
}

pub fn line(v: &LiveView) -> String {
    let lat = match (v.e2e_p50_us, v.e2e_p99_us) {
        (Some(p50), Some(p99)) => format!("e2e p50 {} p99 {}", fmt_us(p50 as f64), fmt_us(p99 as f64)),
        _ => "e2e -".to_string(),
    };
    let suspect =
        if v.suspect.is_empty() { String::new() } else { format!("  SUSPECT {}", v.suspect.join(", ")) };
    let stage = v.stage.as_deref().map(|s| format!(" {s} ")).unwrap_or_default();
    format!(
        "[{:>6.1}s]{stage} connected {}/{}  pub {:.0}/s  recv {:.0}/s  {}  errors {}{suspect}",
        v.elapsed_s,
        v.connected,
        v.clients,
        v.published as f64 / v.window_s,
        v.received as f64 / v.window_s,
        lat,
        v.errors
    )
}

/// Prints one live update.
pub fn show(mode: LiveMode, v: &LiveView) {
    let mut err = std::io::stderr().lock();
    match mode {
        LiveMode::Off => {}
        LiveMode::Terminal => {
            let _ = write!(err, "\r\x1b[2K{}", line(v));
            let _ = err.flush();
        }
        LiveMode::Lines => {
            let _ = writeln!(err, "{}", line(v));
        }
    }
}

/// Prints a line that stays (a search step's verdict), above a rewritten live line.
pub fn note(mode: LiveMode, text: &str) {
    let mut err = std::io::stderr().lock();
    match mode {
        LiveMode::Off => {}
        LiveMode::Terminal => {
            let _ = writeln!(err, "\r\x1b[2K{text}");
        }
        LiveMode::Lines => {
            let _ = writeln!(err, "{text}");
        }
    }
}

/// Ends the live display (a newline after a rewritten line).
pub fn finish(mode: LiveMode) {
    if mode == LiveMode::Terminal {
        let _ = writeln!(std::io::stderr());
    }
}
