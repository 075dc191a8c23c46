//! squall's controller: from a scenario file to a verdict.
//!
//! # Layout
//! - [`scenario`]: the TOML format, errors with file:line:column, resolution (defaults, CLI
//!   overrides, validation) into one [`Plan`](scenario::Plan).
//! - [`thresholds`]: pass/fail rules, parsed and checked when the scenario loads.
//! - [`segment`]: a plan split into one [`Assignment`](squall_proto::plan::Assignment) per agent.
//! - [`coordinator`]: runs the phases across agents (barrier, publishing window, drain,
//!   ledger settlement) over [`AgentLink`](coordinator::AgentLink)s: plain commands and events.
//! - [`link`]: the controller's side of the gRPC link: the agent endpoint, the handshake, the
//!   lobby where agents wait, and remote agents as the coordinator's links.
//! - [`clock_offset`]: each remote agent's clock offset from ping-pong exchanges.
//! - [`aggregate`]: merges snapshots: totals, the timeline, the live window.
//! - [`report`]: the report model and its JSON Schema, the text summary, the live line.
//! - [`init`]: the commented example scenario `squall init` prints, and the scenario schema.

pub mod aggregate;
pub mod broker_process;
pub mod broker_sys;
pub mod clock_offset;
pub mod compare;
pub mod coordinator;
pub mod init;
pub mod link;
pub mod prometheus;
pub mod report;
pub mod scenario;
pub mod search;
pub mod segment;
pub mod shares;
pub mod soak_log;
pub mod stages;
pub mod stepper;
pub mod thresholds;
