use std::process::ExitCode;

use clap::Parser;
use monitor::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Watch(args)) => monitor::cmd_watch::run(args),
        Some(Command::Check(args)) => monitor::cmd_check::run(args),
        None => {
            eprintln!("twmon: the dashboard is not built yet; try `twmon watch`");
            Ok(2)
        }
        Some(other) => {
            eprintln!("twmon: {other:?} is not built yet");
            Ok(2)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("twmon: {e:#}");
            ExitCode::from(1)
        }
    }
}
