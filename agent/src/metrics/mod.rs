//! Recording: the shards clients record into, the collector that turns them into snapshots,
//! and the receivers' delivery ledger. The data model (histograms, counters, errors,
//! snapshots) is squall-proto's.

pub mod recorder;
pub mod shares;

pub use recorder::{Collector, Recorder, Shard};
// the data model is the contract's (squall-proto); the agent records into it
pub use squall_proto::metrics::*;
