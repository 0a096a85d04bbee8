//! The `knit-init` command line.

use clap::Parser;

use crate::config::{
    CaptureConfig, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT, DEFAULT_PROXY_ID, parse_port_list,
};
use crate::error::InitError;

/// Installs the nat-table iptables rules that capture this network namespace's
/// TCP traffic for the Knit proxy: inbound TCP goes to the inbound port,
/// outbound TCP to the outbound port, except the proxy's own traffic and
/// loopback. Applied as one iptables-restore transaction; safe to re-run.
#[derive(Debug, Clone, Parser)]
#[command(name = "knit-init", version)]
pub struct Cli {
    /// uid of the proxy; its outbound traffic is not captured.
    #[arg(long, value_name = "UID", default_value_t = DEFAULT_PROXY_ID)]
    pub proxy_uid: u32,

    /// gid of the proxy; its outbound traffic is not captured.
    #[arg(long, value_name = "GID", default_value_t = DEFAULT_PROXY_ID)]
    pub proxy_gid: u32,

    /// Port of the proxy's outbound listener.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_OUTBOUND_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,

    /// Port of the proxy's inbound listener.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_INBOUND_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,

    /// Comma-separated inbound destination ports that are not captured ("" for none).
    #[arg(long, value_name = "PORTS", default_value = "15000,15021,15090",
          value_parser = parse_port_list_arg)]
    pub exclude_inbound_ports: PortList,

    /// Print the iptables-restore transaction instead of running it; with --cleanup, the one
    /// removing what these options install. Needs neither root nor iptables.
    #[arg(long)]
    pub dry_run: bool,

    /// Remove every rule and chain knit-init installed, instead of installing them.
    #[arg(long)]
    pub cleanup: bool,
}

/// A list of ports given as one comma-separated argument.
///
/// A newtype rather than `Vec<u16>`, which clap would treat as a repeated option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

fn parse_port_list_arg(text: &str) -> Result<PortList, String> {
    parse_port_list(text).map(PortList)
}

impl Cli {
    /// The validated capture configuration the options describe.
    pub fn capture_config(&self) -> Result<CaptureConfig, InitError> {
        let config = CaptureConfig {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            exclude_inbound_ports: self.exclude_inbound_ports.0.clone(),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("knit-init").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_knit_conventions() {
        let cli = parse(&[]).expect("no arguments are valid");
        assert_eq!(
            cli.capture_config().expect("defaults are valid"),
            CaptureConfig::default()
        );
        assert!(!cli.dry_run && !cli.cleanup);
    }

    #[test]
    fn options_reach_the_capture_config() {
        let cli = parse(&[
            "--proxy-uid",
            "2000",
            "--proxy-gid",
            "3000",
            "--outbound-port",
            "16001",
            "--inbound-port",
            "16006",
            "--exclude-inbound-ports",
            "22,8443",
            "--dry-run",
            "--cleanup",
        ])
        .expect("valid arguments");
        assert_eq!(
            cli.capture_config().expect("valid"),
            CaptureConfig {
                proxy_uid: 2000,
                proxy_gid: 3000,
                outbound_port: 16001,
                inbound_port: 16006,
                exclude_inbound_ports: vec![22, 8443],
            }
        );
        assert!(cli.dry_run && cli.cleanup);
        let empty = parse(&["--exclude-inbound-ports", ""]).expect("empty list is valid");
        assert!(empty.exclude_inbound_ports.0.is_empty());
    }

    #[test]
    fn bad_values_are_rejected_with_the_option_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["--outbound-port", "0"], "--outbound-port"),
            (&["--inbound-port", "65536"], "--inbound-port"),
            (&["--proxy-uid=-1"], "--proxy-uid"),
            (&["--proxy-gid", "root"], "--proxy-gid"),
            (
                &["--exclude-inbound-ports", "80,web"],
                "`web` is not a port number",
            ),
        ];
        for (args, fragment) in cases {
            let err = parse(args).expect_err("invalid arguments");
            let message = err.to_string();
            assert!(message.contains(fragment), "{args:?}: {message}");
        }
        let same_ports = parse(&["--inbound-port", "15001"]).expect("parses");
        let err = same_ports.capture_config().expect_err("ports collide");
        assert!(err.to_string().contains("--inbound-port"), "{err}");
    }
}
