//! `satchel`: the one binary of Satchel — client agent, gateway and admin
//! tools. Each subcommand lives in `cmd/`; this file parses the command line,
//! sets up logging, and turns errors into a message on stderr and exit code 1
//! (2 for a usage error, as clap reports it).

mod cmd;
mod config;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    init_logging(cli.verbose);
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<cmd::Exit>().is_some() => {
            let code = e.downcast_ref::<cmd::Exit>().map_or(1, |x| x.code);
            // An empty message: the command already said everything.
            if !e.to_string().is_empty() {
                eprintln!("satchel: {e:#}");
            }
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("satchel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A reader that closed our stdout early (`satchel ... | head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

/// Logs go to stderr; `SATCHEL_LOG` (an env-filter) overrides `-v`.
fn init_logging(verbose: u8) {
    // sqlx reports slow statements at warn; a million-row verify is not news.
    let default = match verbose {
        0 => "warn,sqlx=error,tss_esapi=off",
        1 => "info,sqlx=warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SATCHEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
