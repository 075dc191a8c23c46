//! Shared subscriptions whose members run on several agents.
//!
//! The broker hands each message of a `$share` group to one member, so no single agent's
//! members see the whole of a stream: settled per agent, each agent's part would read as
//! loss. Such a share is settled at the controller instead. Each agent sends what its members
//! received as [`Receipts`] (per stream, the sorted sequence numbers), in epochs of
//! [`EPOCH_NS`] on the run's common time base; the controller merges the agents' receipts of
//! each epoch once every agent holding members has reported past it, so the merged ledger sees
//! each stream nearly in order, and settles it against every stream's final count like any
//! other receiver.
//!
//! Out of order is judged where the messages arrive (a sequence received by an agent after a
//! higher one of the same stream, on that agent): across agents there is no common order to
//! judge it by. Duplicates are judged at the controller, so a message the broker gave to two
//! members on two agents is counted once as received and once as a duplicate.

use serde::{Deserialize, Serialize};

/// The length of a receipt epoch, ns: receipts are merged across agents epoch by epoch.
pub const EPOCH_NS: u64 = 100_000_000;

/// Sequence numbers per [`Receipts`] event: a few hundred KiB on the wire at most, far below
/// gRPC's 4 MiB message limit.
pub const RECEIPTS_PER_EVENT: usize = 65_536;

/// What one agent's members of one shared subscription received since its last receipts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipts {
    /// The scenario group (its position in the plan).
    pub group: u32,
    /// The share's rendered filters (the members' subscription).
    pub filters: Vec<String>,
    /// Everything the members received before this instant (ns since the Unix epoch, on the
    /// run's time base) is in these receipts or an earlier one.
    pub through_unix_ns: u64,
    pub streams: Vec<StreamReceipts>,
}

/// One stream's messages received in one epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReceipts {
    /// `receipt time / EPOCH_NS`.
    pub epoch: u64,
    pub stream: u32,
    /// The highest QoS they were delivered with.
    pub qos: u8,
    /// Sorted; a sequence appears once per time it was received.
    pub seqs: Vec<u64>,
}

impl Receipts {
    /// Sequence numbers carried.
    pub fn len(&self) -> usize {
        self.streams.iter().map(|s| s.seqs.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.iter().all(|s| s.seqs.is_empty())
    }
}

/// One agent's part of a shared subscription settled at the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareResult {
    pub group: u32,
    /// The share's filters with the best QoS granted to any of this agent's members (`None`:
    /// granted to none).
    pub filters: Vec<(String, Option<u8>)>,
    /// This agent's members of the share.
    pub members: u64,
    /// Received after a higher sequence of the same stream on this agent, by delivered QoS.
    pub out_of_order: [u64; 3],
    /// Received but not recorded: the agent's receipt buffer was full (a warning; 0 normally).
    pub unrecorded: u64,
}
