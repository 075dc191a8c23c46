//! `squall device`: an open device-conformance endpoint. A device's MQTT client connects to
//! squall's broker, which withholds and drops on purpose; the verdicts come from the broker's
//! packet timeline (timestamps taken off the socket).
//!
//! - [`suite`]: suite files in Device Advisor's shape;
//! - [`run`]: the endpoint, and the cases it runs one after another against the device;
//! - [`attempts`]: a device's connections and the delays between them, off the timeline;
//! - [`backoff`]: the classifier of retry delays (constant, linear, exponential, jittered);
//! - [`report`]: the report as JSON, text and JUnit XML.

pub mod attempts;
pub mod backoff;
pub mod report;
pub mod run;
pub mod suite;
