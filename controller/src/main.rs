//! `voipwall`: a thin dispatcher over the controller library.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::{EnvFilter, fmt};
use voipwall::cli::{Cli, LogFormat, dispatch};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("VOIPWALL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // `log` records (aya-log's bridge for the eBPF program's own log lines) reach tracing too.
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::stderr().is_terminal();
    match cli.log_format {
        LogFormat::Human => fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init(),
        LogFormat::Json => fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
    dispatch(cli)
}
