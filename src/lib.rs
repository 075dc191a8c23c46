//! The `squall` command line. Each subcommand lives in its own file under [`cli`]; they parse,
//! call the crates that do the work, and turn outcomes into exit codes (see [`cli::exit`]).

pub mod cli;
