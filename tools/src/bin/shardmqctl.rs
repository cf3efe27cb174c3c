//! `shardmqctl`: administers a shardmq cluster, produces and consumes from
//! the shell, and decodes or verifies a stopped broker's logs offline. The
//! command line is defined in `shardmq_tools::cli`.
//!
//! Exit codes: 0 on success, 1 on any error (printed as one line on
//! stderr), 2 on a usage error.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use shardmq_tools::cli::{self, Cli, BOOTSTRAP_ENV};
use shardmq_tools::CtlError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            if !error.use_stderr() {
                // --help, --version.
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid usage");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("shardmqctl: {first} (see shardmqctl --help)");
            return ExitCode::from(2);
        }
    };
    let env_bootstrap = std::env::var(BOOTSTRAP_ENV).ok();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = std::io::stderr().lock();
    let result = cli::run(cli, env_bootstrap.as_deref(), &mut out, &mut err);
    let flushed = out.flush().map_err(|source| CtlError::Stdio {
        what: "write to stdout",
        source,
    });
    match result.and(flushed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "shardmqctl: {}",
                error.to_string().replace(['\n', '\r'], " ")
            );
            ExitCode::from(error.exit_code())
        }
    }
}
