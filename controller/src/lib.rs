//! squall's controller: from a scenario file to a verdict.
//!
//! # Layout
//! - [`scenario`]: the TOML format, errors with file:line:column, resolution (defaults, CLI
//!   overrides, validation) into one [`Plan`](scenario::Plan).
//! - [`thresholds`]: pass/fail rules, parsed and checked when the scenario loads.
//! - [`segment`]: a plan split into one [`Assignment`](squall_agent::plan::Assignment) per agent.
//! - [`coordinator`]: runs the phases across agents (barrier, publishing window, drain,
//!   ledger settlement) over plain commands and events.
//! - [`aggregate`]: merges snapshots: totals, the timeline, the live window.
//! - [`report`]: the report model and its JSON Schema, the text summary, the live line.
//! - [`init`]: the commented example scenario `squall init` prints, and the scenario schema.

pub mod aggregate;
pub mod coordinator;
pub mod init;
pub mod report;
pub mod scenario;
pub mod segment;
pub mod thresholds;
