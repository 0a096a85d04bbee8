//! The `knit-init` binary: parses options and runs the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use knit_init::{Cli, Iptables};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match knit_init::run(&cli, &Iptables::ipv4()) {
        Ok(outcome) => {
            print!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("knit-init: error: {:#}", anyhow::Error::new(err));
            ExitCode::FAILURE
        }
    }
}
