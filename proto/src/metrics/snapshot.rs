//! What an agent reports every interval. Plain data, ready to cross a process boundary: the
//! controller's gRPC link carries exactly these fields.

use serde::{Deserialize, Serialize};

use super::counters::Counters;
use super::errors::ErrorCount;
use super::wills::WillRecord;
use super::{Metric, Timing};

/// One interval of one agent: increments of the counters, the errors, and the latency
/// histograms of what completed in the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub agent: u32,
    /// 0, 1, 2 … per agent; a gap means a lost snapshot.
    pub seq: u64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub counters: Counters,
    pub errors: Vec<ErrorCount>,
    /// Clients connected at the end of the interval (a gauge, not an increment).
    pub connected: u64,
    pub histograms: Vec<HistogramBytes>,
    /// Wills owed, withdrawn or allowed by this agent's clients' lost connections, and wills
    /// its observers received, in the interval.
    #[serde(default)]
    pub wills: Vec<WillRecord>,
}

/// One interval histogram as HdrHistogram V2 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramBytes {
    pub metric: Metric,
    pub timing: Timing,
    pub v2: Vec<u8>,
    /// Values above the histogram's range, recorded at its maximum.
    pub clamped: u64,
    /// The scenario group (its position) whose clients' events these are; for e2e, the
    /// group that published the messages.
    pub group: u32,
}
