//! `tidewatch-sensor`: meters OT traffic into flow records and uploads them to
//! the tidewatch collector over mutually authenticated gRPC. The options
//! are in [`cli`], one file per subcommand beside them.

use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().cmd {
        Cmd::Read(args) => cli::read::main(args),
        Cmd::Run(args) => cli::run::main(*args),
        Cmd::Estimate(args) => cli::estimate::main(args),
        Cmd::Buffer(args) => cli::buffer::main(args),
        Cmd::Enroll(args) => cli::enroll::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One plain line (as the collector does), not a log line as well.
            eprintln!("tidewatch-sensor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
