//! `squall device`: an open device-conformance endpoint. A device's MQTT client connects to
//! squall's broker, which withholds and drops on purpose; the verdicts come from the broker's
//! packet timeline (timestamps taken off the socket).
//!
//! Built so far: [`backoff`], the classifier of a device's retry delays (constant, linear,
//! exponential, jittered) that the backoff cases judge by, and [`suite`], suite files in
//! Device Advisor's shape, and [`attempts`], a device's connections and the delays between them
//! read off the broker's timeline. The cases themselves and the endpoint are still to come (issue 11).

pub mod attempts;
pub mod backoff;
pub mod report;
pub mod run;
pub mod suite;
