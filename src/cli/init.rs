//! `squall init`: print a commented example scenario, or a JSON Schema.

use clap::{Args, ValueEnum};

use super::exit;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Print a JSON Schema instead of the example.
    #[arg(long, value_enum)]
    pub schema: Option<Schema>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Schema {
    /// Scenario files (for editors: taplo / Even Better TOML).
    Scenario,
    /// `squall run --report` output.
    Report,
    /// `squall check --format json` output.
    Check,
    /// `squall device --report` output.
    DeviceReport,
}

pub fn run(a: InitArgs) -> u8 {
    let schema = match a.schema {
        None => {
            print!("{}", squall_controller::init::EXAMPLE);
            return exit::PASS;
        }
        Some(Schema::Scenario) => squall_controller::init::scenario_schema(),
        Some(Schema::Report) => squall_controller::report::schema(),
        Some(Schema::Check) => squall_check::report::schema(),
        Some(Schema::DeviceReport) => squall_device::report::schema(),
    };
    println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
    exit::PASS
}
