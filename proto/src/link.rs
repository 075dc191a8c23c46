//! What crosses a link between the controller and an agent, as plain data: [`Command`]s down,
//! [`AgentEvent`]s up. The in-process link carries these values as they are; the gRPC link
//! converts them to and from [`crate::wire`].

use serde::{Deserialize, Serialize};

use crate::metrics::{
    LedgerTotals, Observers, OutageWindow, Receipts, ShareResult, Snapshot, StormResult, StreamFinal,
};

/// What the controller tells an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Publish within `[start, until)` (ns since the Unix epoch, on every agent's clock).
    Publish { start_unix_ns: u64, until_unix_ns: u64 },
    /// A stage of a staged run ([`Assignment::staged`](crate::plan::Assignment::staged)):
    /// publish within `[start, until)` at `scale` × the scenario's rates. Stages come in
    /// order of `index` (0, 1, …), never overlapping, inside the publishing window; a capacity
    /// search sends each one once it has judged the one before.
    Stage(StageCommand),
    /// Every stream's final count (from all agents), then drain and disconnect.
    Finish { streams: Vec<StreamFinal>, drain_ms: u64 },
    /// Stop all load now.
    Abort,
}

/// One stage, as [`Command::Stage`] carries it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StageCommand {
    pub index: u32,
    pub start_unix_ns: u64,
    pub until_unix_ns: u64,
    pub scale: f64,
}

/// What an agent tells its controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentEvent {
    Snapshot(Snapshot),
    /// Every client made its first connection attempt.
    Ready {
        clients: u64,
        connected: u64,
    },
    /// The agent reached the publishing window's start instant, `late_ns` after it (on the
    /// controller's time base, as far as the agent's clock offset is known).
    Started {
        late_ns: i64,
    },
    /// The publishing window is over; the final count of each of this agent's streams.
    PublishDone {
        streams: Vec<StreamFinal>,
    },
    /// What this agent's members of a shared subscription split over agents received (see
    /// [`crate::metrics::shares`]); sent before the snapshot of the same interval.
    Receipts(Receipts),
    /// The run is over on this agent (the last snapshot came before this).
    Finished(AgentResult),
    /// The agent could not go on.
    Failed {
        message: String,
    },
}

/// The delivery accounting of one agent's receivers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentResult {
    pub ledger: LedgerTotals,
    /// By the subscribing group.
    pub ledger_by_group: Vec<(String, LedgerTotals)>,
    /// Receivers accounted (subscribing clients, or shared-subscription groups).
    pub receivers: u64,
    /// Subscribing clients that never had a filter granted (not accounted).
    pub receivers_never_subscribed: u64,
    /// This agent's receivers by their granted filters: who was owed each will.
    pub observers: Vec<Observers>,
    /// Each storm (a firing of a scenario event) this agent's clients were taken by.
    pub storms: Vec<StormResult>,
    /// Clients taken by storms past the tracked bound (256 storms per agent).
    pub storms_untracked: u64,
    /// Connections lost without the scenario asking: from the first loss until all were back.
    pub outages: Vec<OutageWindow>,
    /// This agent's part of each shared subscription split over agents (settled at the
    /// controller from the receipts; not in `ledger`, `receivers` or `observers`).
    pub shares: Vec<ShareResult>,
}
