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
}

pub fn run(a: InitArgs) -> u8 {
    match a.schema {
        None => print!("{}", squall_controller::init::EXAMPLE),
        Some(Schema::Scenario) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&squall_controller::init::scenario_schema()).unwrap_or_default()
            )
        }
        Some(Schema::Report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&squall_controller::report::schema()).unwrap_or_default()
            )
        }
    }
    exit::PASS
}
