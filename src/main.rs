//! The `linesight` command: starts logging, runs the command its arguments name (see
//! [`cli`]), and turns errors into an exit code.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cli::Cli::parse().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("linesight: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
