//! The soak log: what a long run leaves on disk as it goes, so a crash loses at most one
//! interval. A directory with two files, both appended once per agent snapshot and flushed:
//!
//! - `run.hlog`: an HdrHistogram interval log (V2 + DEFLATE, the format the Java tools read):
//!   one entry per snapshot histogram, tagged `METRIC.TIMING.GROUP` (e.g. `e2e.corrected.pub`),
//!   values in µs, timestamps in seconds since the run started (its StartTime and BaseTime);
//! - `counters.jsonl`: JSON lines, first the run (scenario, groups, thresholds), then one per
//!   snapshot (agent, interval, counters, errors, connected), and, if the run finished, a last
//!   line with the whole report.
//!
//! `squall report DIR` reads them back: the final report if the run finished, else a report
//! rebuilt from every interval written (latency, counters, errors, timeline; the delivery
//! ledger, settled only at the end, is absent).

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use serde::{Deserialize, Serialize};
use squall_proto::metrics::{
    Counters, ErrorCount, HistogramBytes, Latency, LoadError, Metric, Snapshot, Timing,
};
use squall_proto::plan::GroupSpec;

use crate::aggregate::Aggregate;
use crate::report::{self, Report, Status};
use crate::scenario::Plan;

pub const HLOG: &str = "run.hlog";
pub const JOURNAL: &str = "counters.jsonl";

/// The first journal line: what the run was.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeta {
    pub scenario: String,
    pub run_tag: u32,
    pub squall_version: String,
    pub started_at: String,
    pub start_unix_ns: u64,
    pub targets: Vec<String>,
    pub embedded_broker: bool,
    pub agents: u32,
    pub drain_ms: u64,
    /// Passwords blanked.
    pub groups: Vec<GroupSpec>,
    pub thresholds: Vec<String>,
}

/// One journal line after the first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    Interval {
        agent: u32,
        seq: u64,
        start_unix_ns: u64,
        end_unix_ns: u64,
        connected: u64,
        /// Non-zero counters only.
        counters: std::collections::BTreeMap<String, u64>,
        errors: Vec<(String, Option<u8>, u64)>,
        /// Will records in the interval (the records themselves are not kept here).
        #[serde(default)]
        wills: u64,
    },
    End {
        report: Box<Report>,
    },
}

enum Msg {
    Snapshot(Snapshot),
    End(Box<Report>),
}

/// A soak log being written (by a thread of its own: the interval log writer borrows its file).
pub struct SoakLog {
    tx: std::sync::mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    pub dir: PathBuf,
}

fn tag_of(h: &HistogramBytes, groups: &[String]) -> String {
    let group = groups.get(h.group as usize).map_or_else(|| format!("g{}", h.group), |g| g.clone());
    // tags may not hold commas or spaces
    let group: String = group.chars().map(|c| if c == ',' || c.is_whitespace() { '_' } else { c }).collect();
    let timing = match h.timing {
        Timing::Raw => "raw",
        Timing::Corrected => "corrected",
    };
    format!("{}.{timing}.{group}", h.metric.name())
}

impl SoakLog {
    /// Creates `dir` (it must not hold a soak log already) and starts writing.
    pub fn create(dir: &Path, started: SystemTime, plan: &Plan, meta: RunMeta) -> io::Result<SoakLog> {
        std::fs::create_dir_all(dir)?;
        if dir.join(JOURNAL).exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already holds a soak log; give a new directory", dir.display()),
            ));
        }
        let mut journal = File::create(dir.join(JOURNAL))?;
        writeln!(journal, "{}", serde_json::to_string(&meta).expect("meta serializes"))?;
        let hlog = File::create(dir.join(HLOG))?;
        let groups: Vec<String> = plan.groups.iter().map(|g| g.name.clone()).collect();
        let start_ns = meta.start_unix_ns;
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let thread =
            std::thread::Builder::new().name("soak-log".into()).spawn(move || -> io::Result<()> {
                // unbuffered: each entry reaches the kernel as it is written, so a kill -9 keeps it
                let mut hlog = hlog;
                let mut serializer = V2DeflateSerializer::new();
                let mut w = IntervalLogWriterBuilder::new()
                    .add_comment(&format!(
                        "squall {} soak log: values in µs, tags METRIC.TIMING.GROUP",
                        env!("CARGO_PKG_VERSION")
                    ))
                    .with_start_time(started)
                    .with_base_time(started)
                    .begin_log_with(&mut hlog, &mut serializer)?;
                for msg in rx {
                    match msg {
                        Msg::Snapshot(s) => {
                            let start = Duration::from_nanos(s.start_unix_ns.saturating_sub(start_ns));
                            let length = Duration::from_nanos(s.end_unix_ns.saturating_sub(s.start_unix_ns));
                            for h in &s.histograms {
                                let Ok(l) = Latency::from_v2(&h.v2) else { continue };
                                let tag = tag_of(h, &groups);
                                w.write_histogram(l.inner(), start, length, Tag::new(&tag))
                                    .map_err(|e| io::Error::other(format!("{e:?}")))?;
                            }
                            let line = Line::Interval {
                                agent: s.agent,
                                seq: s.seq,
                                start_unix_ns: s.start_unix_ns,
                                end_unix_ns: s.end_unix_ns,
                                connected: s.connected,
                                counters: s
                                    .counters
                                    .fields()
                                    .into_iter()
                                    .filter(|(_, v)| *v > 0)
                                    .map(|(k, v)| (k.to_string(), v))
                                    .collect(),
                                errors: s
                                    .errors
                                    .iter()
                                    .map(|e| (e.error.name().to_string(), e.error.code(), e.count))
                                    .collect(),
                                wills: s.wills.len() as u64,
                            };
                            writeln!(
                                journal,
                                "{}",
                                serde_json::to_string(&line).expect("a line serializes")
                            )?;
                        }
                        Msg::End(report) => {
                            let line = Line::End { report };
                            writeln!(
                                journal,
                                "{}",
                                serde_json::to_string(&line).expect("a line serializes")
                            )?;
                        }
                    }
                }
                journal.sync_data()
            })?;
        Ok(SoakLog { tx, thread: Some(thread), dir: dir.to_path_buf() })
    }

    pub fn snapshot(&self, s: &Snapshot) {
        let _ = self.tx.send(Msg::Snapshot(s.clone()));
    }

    /// Writes the final report and closes the files.
    pub fn finish(mut self, report: &Report) -> io::Result<()> {
        let _ = self.tx.send(Msg::End(Box::new(report.clone())));
        self.close()
    }

    fn close(&mut self) -> io::Result<()> {
        let (tx, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the soak log writer panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for SoakLog {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Why a soak log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("{0}: line {1} is not a squall soak log line ({2})")]
    Line(PathBuf, usize, String),
    #[error("{0}: the interval log does not parse: {1}")]
    Hlog(PathBuf, String),
}

/// The report of the run whose soak log is in `dir`: its final report if it finished, else
/// one rebuilt from every interval it wrote.
pub fn read(dir: &Path) -> Result<Report, ReadError> {
    let jpath = dir.join(JOURNAL);
    let file = File::open(&jpath).map_err(|e| ReadError::Io(jpath.clone(), e))?;
    let mut lines = io::BufReader::new(file).lines().enumerate();
    let meta: RunMeta = match lines.next() {
        Some((_, Ok(l))) => {
            serde_json::from_str(&l).map_err(|e| ReadError::Line(jpath.clone(), 1, e.to_string()))?
        }
        Some((_, Err(e))) => return Err(ReadError::Io(jpath, e)),
        None => return Err(ReadError::Line(jpath, 1, "the file is empty".into())),
    };
    let mut intervals = Vec::new();
    for (i, l) in lines {
        let l = l.map_err(|e| ReadError::Io(jpath.clone(), e))?;
        match serde_json::from_str::<Line>(&l) {
            Ok(Line::End { report }) => return Ok(*report),
            Ok(line) => intervals.push(line),
            // a crash may cut the last line short: everything before it stands
            Err(_) if l.trim().is_empty() || !l.ends_with('}') => break,
            Err(e) => return Err(ReadError::Line(jpath, i + 1, e.to_string())),
        }
    }
    // the histograms, by the interval they belong to (start and length, in ms as the log keeps)
    let hpath = dir.join(HLOG);
    let bytes = std::fs::read(&hpath).map_err(|e| ReadError::Io(hpath.clone(), e))?;
    let groups: Vec<String> = meta.groups.iter().map(|g| g.name.clone()).collect();
    let mut by_interval: std::collections::HashMap<(u64, u64), Vec<HistogramBytes>> = Default::default();
    for entry in IntervalLogIterator::new(&bytes) {
        let Ok(LogEntry::Interval(h)) = entry else {
            // a crash may cut the last entry short
            continue;
        };
        let Some(tag) = h.tag() else { continue };
        let parts: Vec<&str> = tag.as_str().splitn(3, '.').collect();
        let [metric, timing, group] = parts[..] else { continue };
        let (Some(metric), Some(group)) = (Metric::from_name(metric), groups.iter().position(|g| g == group))
        else {
            continue;
        };
        let timing = if timing == "raw" { Timing::Raw } else { Timing::Corrected };
        // V2 + DEFLATE: what the aggregate reads, as an agent's bytes
        let Ok(v2) = base64_decode(h.encoded_histogram()) else { continue };
        if let Err(e) = Latency::from_v2(&v2) {
            return Err(ReadError::Hlog(hpath, e));
        }
        let key = (h.start_timestamp().as_millis() as u64, h.duration().as_millis() as u64);
        by_interval.entry(key).or_default().push(HistogramBytes {
            metric,
            timing,
            v2,
            clamped: 0,
            group: group as u32,
        });
    }
    let mut agg = Aggregate::new(meta.start_unix_ns).with_groups(groups.clone());
    let mut last_ns = meta.start_unix_ns;
    for line in intervals {
        let Line::Interval { agent, seq, start_unix_ns, end_unix_ns, connected, counters, errors, .. } = line
        else {
            continue;
        };
        let mut c = Counters::default();
        for (k, v) in counters {
            if let Some(slot) = c.by_name_mut(&k) {
                *slot = v;
            }
        }
        // keyed as the interval log rounds: ms, to 3 decimals of a second
        let ms = |ns: u64| ((ns as f64 / 1e6) + 0.5) as u64;
        let key = (
            ms(start_unix_ns.saturating_sub(meta.start_unix_ns)),
            ms(end_unix_ns.saturating_sub(start_unix_ns)),
        );
        let histograms = by_interval.remove(&key).unwrap_or_default();
        let s = Snapshot {
            agent,
            seq,
            start_unix_ns,
            end_unix_ns,
            counters: c,
            errors: errors
                .into_iter()
                .filter_map(|(k, code, count)| {
                    Some(ErrorCount { error: LoadError::from_name(&k, code)?, count })
                })
                .collect(),
            connected,
            histograms,
            wills: vec![],
        };
        last_ns = last_ns.max(end_unix_ns);
        if let Err(e) = agg.apply(&s) {
            return Err(ReadError::Hlog(hpath, e));
        }
    }
    let plan = Plan::rebuilt(&meta);
    let elapsed_s = last_ns.saturating_sub(meta.start_unix_ns) as f64 / 1e9;
    let started_at = humantime::parse_rfc3339(&meta.started_at).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut r = report::build(report::Inputs {
        plan: &plan,
        agg: &agg,
        results: &[],
        settled: None,
        targets: meta.targets.clone(),
        embedded_broker: meta.embedded_broker,
        agents: meta.agents,
        per_agent: vec![],
        start_skew_us: None,
        started_at,
        elapsed_s,
        publish_window_s: elapsed_s,
        failure: Some((
            Status::Error,
            format!(
                "the run did not finish: rebuilt from its soak log ({} s of intervals); the delivery ledger, settled only at the end, is missing",
                elapsed_s.round()
            ),
        )),
        warnings: vec![],
        wills: None,
        // the soak log keeps intervals, not the stages they belonged to
        stages: vec![],
        capacity: None,
    });
    r.squall_version = meta.squall_version;
    Ok(r)
}

/// Standard base64 (the interval log's encoding of each histogram).
fn base64_decode(s: &str) -> Result<Vec<u8>, ()> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(|_| ())
}
