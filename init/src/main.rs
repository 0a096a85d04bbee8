//! The `knit-init` binary: parses options, enters `--netns`, runs the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use knit_init::{Cli, Family, InitError, IpCommand, Report, Tools};

fn main() -> ExitCode {
    // Nothing before this point starts a thread, which `netns::enter` relies on.
    let cli = Cli::parse();
    match execute(&cli) {
        Ok(report) => {
            for warning in &report.warnings {
                eprintln!("knit-init: warning: {warning}");
            }
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("knit-init: error: {:#}", anyhow::Error::new(err));
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: &Cli) -> Result<Report, InitError> {
    if let Some(path) = cli.netns.as_deref().filter(|_| !cli.dry_run) {
        knit_init::netns::enter(path)?;
    }
    let ipv4 = cli.iptables(Family::Ipv4);
    let ipv6 = cli.iptables(Family::Ipv6);
    knit_init::run(
        cli,
        &Tools {
            ipv4: &ipv4,
            ipv6: &ipv6,
            addresses: &IpCommand,
        },
    )
}
