//! The `prof` binary: parse the command line, run the command, and report failure as one
//! line, `prof: <error chain>`, with exit status 2.

mod cli;
mod cmd;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::parse();
    if !cli.configures_logging() {
        tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .without_time()
            .with_ansi(io::stderr().is_terminal())
            .init();
    }
    match cli.run() {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("prof: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
