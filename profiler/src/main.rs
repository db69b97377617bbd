//! The `prof` binary: parse the command line, run the command, and report failure as one
//! line, `prof: <error chain>`, with exit status 2.
//!
//! Nothing here may panic on what the environment does: a closed stdout ends prof quietly
//! with status 0, a full disk behind stdout is an error like any other, and a stderr that
//! cannot be written is ignored. So the binary never uses `print!` or `eprint!`, which panic
//! when the write fails: it writes through [`say!`] and [`cmd::stdout`].
#![deny(clippy::print_stdout, clippy::print_stderr)]

/// Writes a line to stderr, like `eprintln!`, but ignores a failed write: there is nowhere
/// left to report it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod cmd;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(err) => return fail(&err),
    };
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
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    say!("prof: {err:#}");
    ExitCode::from(2)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
