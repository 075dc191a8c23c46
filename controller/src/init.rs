//! `squall init`: a commented example scenario (every key, with its meaning and default), and
//! the JSON Schema of scenario files for editors.

/// The example printed by `squall init`; parsed by a test so it never rots.
pub const EXAMPLE: &str = include_str!("../../scenarios/example.toml");

/// The JSON Schema of a scenario file (TOML checked as JSON by editors such as taplo).
pub fn scenario_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(crate::scenario::format::Scenario))
        .expect("a schema serializes")
}
