//! Exit codes, the same for every command.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | pass: the run finished and every threshold held (`check`: every check passed) |
//! | 1 | fail: a threshold (or a check) failed; the report says which |
//! | 2 | invalid input: scenario file, flags, TLS files |
//! | 3 | runtime failure: the run could not be carried out (no client could connect, an agent failed, a limit was hit) |
//! | 130 | interrupted (Ctrl-C or SIGTERM); the report is written with partial counts |

pub const PASS: u8 = 0;
pub const FAIL: u8 = 1;
pub const INVALID: u8 = 2;
pub const RUNTIME: u8 = 3;
pub const INTERRUPTED: u8 = 130;
