//! `squall report`: a report again, from its JSON or from a soak log directory (a run that
//! crashed or was killed included).

use std::path::PathBuf;

use clap::Args;
use squall_controller::report::{self, Report, Status};
use squall_controller::soak_log;

use super::exit;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A report (`squall run --report FILE`) or a soak log directory (`--soak-log DIR`).
    pub input: PathBuf,
    /// Write the report as JSON to this file (from a soak log: the rebuilt report).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write the report as one self-contained HTML file (plots drawn inline, opens offline).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Print Markdown (for a pull request or a ticket) instead of the terminal summary.
    #[arg(long)]
    pub md: bool,
    /// Write the per-interval series (the timeline) as CSV to this file.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write the per-interval series (the timeline) as JSON lines to this file: one object
    /// per interval, with the report's field names.
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,
}

pub fn run(a: ReportArgs) -> u8 {
    let r: Report = if a.input.is_dir() {
        match soak_log::read(&a.input) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::INVALID;
            }
        }
    } else {
        let text = match std::fs::read_to_string(&a.input) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", a.input.display());
                return exit::INVALID;
            }
        };
        match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "error: {} is not a squall report ({e}); give a `--report` file or a `--soak-log` directory",
                    a.input.display()
                );
                return exit::INVALID;
            }
        }
    };
    if a.md {
        print!("{}", report::md::render(&r));
    } else {
        print!("{}", report::text::render(&r));
    }
    if let Some(path) = &a.html
        && let Err(e) = std::fs::write(path, report::html::render(&r))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return exit::RUNTIME;
    }
    if let Some(path) = &a.csv
        && let Err(e) = write_csv(path, &r)
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return exit::RUNTIME;
    }
    if let Some(path) = &a.jsonl
        && let Err(e) = write_jsonl(path, &r)
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return exit::RUNTIME;
    }
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(&r).expect("a report serializes");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("error: cannot write {}: {e}", path.display());
            return exit::RUNTIME;
        }
    }
    match r.verdict.status {
        Status::Pass => exit::PASS,
        Status::Fail => exit::FAIL,
        Status::Aborted => exit::INTERRUPTED,
        Status::Error => exit::RUNTIME,
    }
}

/// The timeline as JSON lines, one object per row (merged rows of a long run stay merged).
fn write_jsonl(path: &std::path::Path, r: &Report) -> std::io::Result<()> {
    let mut out = String::new();
    for row in &r.timeline {
        out.push_str(&serde_json::to_string(row).expect("a timeline row serializes"));
        out.push('\n');
    }
    std::fs::write(path, out)
}

/// The timeline, one row per interval (merged rows of a long run stay merged); after the
/// fixed columns, one `errors_<kind>` column per kind of error the run had.
fn write_csv(path: &std::path::Path, r: &Report) -> Result<(), Box<dyn std::error::Error>> {
    let kinds = squall_controller::aggregate::IntervalRow::error_kinds(&r.timeline);
    let mut w = csv::Writer::from_path(path)?;
    let fixed = [
        "t_s",
        "intervals",
        "connected",
        "published",
        "received",
        "connects",
        "reconnects",
        "errors",
        "e2e_p50_us",
        "e2e_p99_us",
        "e2e_max_us",
    ];
    w.write_record(fixed.iter().map(|c| c.to_string()).chain(kinds.iter().map(|k| format!("errors_{k}"))))?;
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    for row in &r.timeline {
        let by_kind = kinds.iter().map(|k| row.errors_by_kind.get(*k).copied().unwrap_or(0).to_string());
        w.write_record(
            [
                format!("{:.3}", row.t_s),
                row.intervals.to_string(),
                row.connected.to_string(),
                row.published.to_string(),
                row.received.to_string(),
                row.connects.to_string(),
                row.reconnects.to_string(),
                row.errors.to_string(),
                opt(row.e2e_p50_us),
                opt(row.e2e_p99_us),
                opt(row.e2e_max_us),
            ]
            .into_iter()
            .chain(by_kind),
        )?;
    }
    w.flush()?;
    Ok(())
}
