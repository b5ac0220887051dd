use std::process::ExitCode;

use clap::Parser;
use monitor::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Watch(args)) => monitor::cmd_watch::run(args),
        Some(Command::Serve(args)) => monitor::cmd_serve::run(args),
        Some(Command::Check(args)) => monitor::cmd_check::run(args),
        Some(Command::Record(args)) => monitor::cmd_record::run(args),
        Some(Command::Report(args)) => monitor::cmd_report::run(args),
        Some(Command::Live(args)) => monitor::cmd_live::run(args),
        Some(Command::Demo(args)) => monitor::cmd_demo::run(args),
        Some(Command::Replay(args)) => monitor::cmd_replay::run(args),
        Some(Command::Completions(args)) => monitor::cmd_gen::completions(args),
        Some(Command::Man(args)) => monitor::cmd_gen::man(args),
        None if monitor::cmd_live::on_a_terminal() => {
            monitor::cmd_live::run(&monitor::cli::LiveArgs {
                filters: Default::default(),
                probe: Default::default(),
                record: None,
                full: false,
                offscreen: false,
                duration: None,
            })
        }
        None => {
            eprintln!(
                "twmon: no terminal for the dashboard. Try `twmon watch` (events as lines), \
                 `twmon check ADDR:PORT`, or `twmon --help`."
            );
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
