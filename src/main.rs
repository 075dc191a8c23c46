//! `squall`: parse, set up logging, dispatch, map the outcome to an exit code.

fn main() -> std::process::ExitCode {
    squall::cli::main(std::env::args_os())
}
