//! `sluice`, the operator CLI. See the library for commands and exit codes.

use std::process::ExitCode;

use clap::Parser;
use sluice_cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(sluice_cli::exit::SERVER);
        }
    };
    let code = runtime.block_on(run(cli, &mut std::io::stdout(), &mut std::io::stderr()));
    ExitCode::from(code)
}
