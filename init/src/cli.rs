//! The `knit-init` command line.
//!
//! Every capture option is a long option named after what it controls, so
//! pod annotations can map onto them one to one. List values are one
//! comma-separated argument; `*` means everything and `""` nothing.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::config::{
    CaptureConfig, DEFAULT_INBOUND_PORT, DEFAULT_MESH_PORT, DEFAULT_OUTBOUND_PORT,
    DEFAULT_PROXY_ID, Selection, parse_cidr_list, parse_cidr_selection, parse_interface_list,
    parse_port_list, parse_port_selection,
};
use crate::error::InitError;
use crate::family::Family;
use crate::iptables::Iptables;
use crate::rules::Cidr;

/// Installs the nat-table iptables and ip6tables rules that capture this
/// network namespace's TCP traffic for the Knit proxy: inbound TCP goes to the
/// inbound port, outbound TCP to the outbound port, except the proxy's own
/// traffic, loopback and what the options exclude. Each family is applied as
/// one restore transaction; safe to re-run.
#[derive(Debug, Clone, Parser)]
#[command(name = "knit-init", version)]
pub struct Cli {
    /// uid of the proxy; its outbound traffic is not captured.
    #[arg(long, value_name = "UID", default_value_t = DEFAULT_PROXY_ID)]
    pub proxy_uid: u32,

    /// gid of the proxy; its outbound traffic is not captured.
    #[arg(long, value_name = "GID", default_value_t = DEFAULT_PROXY_ID)]
    pub proxy_gid: u32,

    /// Port of the proxy's inbound listener.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_INBOUND_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,

    /// Port of the proxy's outbound listener.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_OUTBOUND_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,

    /// Port where the proxy accepts connections from peer proxies; never
    /// captured inbound.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_MESH_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub mesh_port: u16,

    /// Inbound destination ports to capture: `*` for all, a comma-separated
    /// list, or "" for none. Excluded ports and the proxy's own ports are never captured.
    #[arg(long, value_name = "PORTS", default_value = "*",
          value_parser = parse_port_selection_arg)]
    pub include_inbound_ports: PortSelection,

    /// Comma-separated inbound destination ports that are not captured ("" for none).
    #[arg(long, value_name = "PORTS", default_value = "15000,15021,15090",
          value_parser = parse_port_list_arg)]
    pub exclude_inbound_ports: PortList,

    /// Outbound destinations to capture: `*` for all, a comma-separated list of
    /// IPv4/IPv6 CIDRs (only these are captured), or "" for none.
    #[arg(long, value_name = "CIDRS", default_value = "*",
          value_parser = parse_cidr_selection_arg)]
    pub include_outbound_cidrs: CidrSelection,

    /// Comma-separated IPv4/IPv6 CIDRs whose outbound traffic is not captured.
    #[arg(long, value_name = "CIDRS", default_value = "",
          value_parser = parse_cidr_list_arg)]
    pub exclude_outbound_cidrs: CidrList,

    /// Comma-separated outbound destination ports that are not captured.
    #[arg(long, value_name = "PORTS", default_value = "",
          value_parser = parse_port_list_arg)]
    pub exclude_outbound_ports: PortList,

    /// Comma-separated interfaces whose traffic, in or out, is not captured
    /// (a trailing `+` matches every name with that prefix).
    #[arg(long, value_name = "IFACES", default_value = "",
          value_parser = parse_interface_list_arg)]
    pub exclude_interfaces: InterfaceList,

    /// Capture outbound TCP to port 53 too; by default DNS over TCP is left alone.
    #[arg(long)]
    pub capture_dns: bool,

    /// Capture IPv6 as well: on, off, or auto (on when the namespace has a
    /// global-scope IPv6 address). A dry run treats auto as off.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,

    /// Apply inside the network namespace at this path (e.g. /var/run/netns/NAME)
    /// instead of the current one. Ignored by a dry run.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Report rules found in the other iptables backend (legacy vs nf_tables)
    /// as a warning instead of failing.
    #[arg(long)]
    pub allow_backend_mismatch: bool,

    /// Print the restore transactions instead of running them; with --cleanup, the ones
    /// removing what these options install. Needs neither root nor iptables.
    #[arg(long)]
    pub dry_run: bool,

    /// Remove every rule and chain knit-init installed (IPv4, and IPv6 unless
    /// --ipv6 off), instead of installing them.
    #[arg(long)]
    pub cleanup: bool,

    /// The iptables-save to run (default: from PATH). For unusual installs and
    /// tests that need to replace one family's tools.
    #[arg(long, value_name = "PATH", hide = true)]
    pub iptables_save: Option<String>,

    /// The iptables-restore to run (default: from PATH).
    #[arg(long, value_name = "PATH", hide = true)]
    pub iptables_restore: Option<String>,

    /// The ip6tables-save to run (default: from PATH).
    #[arg(long, value_name = "PATH", hide = true)]
    pub ip6tables_save: Option<String>,

    /// The ip6tables-restore to run (default: from PATH); the tests point it at
    /// a failing script to prove a failed IPv6 apply rolls IPv4 back.
    #[arg(long, value_name = "PATH", hide = true)]
    pub ip6tables_restore: Option<String>,
}

/// Whether IPv6 is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    /// Always; fails when ip6tables cannot be used.
    On,
    /// Never; IPv6 rules are left as they are.
    Off,
    /// When the namespace has a global-scope IPv6 address.
    Auto,
}

/// A list of ports given as one comma-separated argument.
///
/// Newtypes rather than `Vec`, which clap would treat as a repeated option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// `*` or a list of ports, as one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSelection(pub Selection<u16>);

/// A list of CIDRs, as one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

/// `*` or a list of CIDRs, as one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrSelection(pub Selection<Cidr>);

/// A list of interface names, as one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceList(pub Vec<String>);

fn parse_port_list_arg(text: &str) -> Result<PortList, String> {
    parse_port_list(text).map(PortList)
}

fn parse_port_selection_arg(text: &str) -> Result<PortSelection, String> {
    parse_port_selection(text).map(PortSelection)
}

fn parse_cidr_list_arg(text: &str) -> Result<CidrList, String> {
    parse_cidr_list(text).map(CidrList)
}

fn parse_cidr_selection_arg(text: &str) -> Result<CidrSelection, String> {
    parse_cidr_selection(text).map(CidrSelection)
}

fn parse_interface_list_arg(text: &str) -> Result<InterfaceList, String> {
    parse_interface_list(text).map(InterfaceList)
}

impl Cli {
    /// The validated capture configuration the options describe.
    pub fn capture_config(&self) -> Result<CaptureConfig, InitError> {
        let config = CaptureConfig {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            mesh_port: self.mesh_port,
            include_inbound_ports: self.include_inbound_ports.0.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.0.clone(),
            include_outbound_cidrs: self.include_outbound_cidrs.0.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.0.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.0.clone(),
            exclude_interfaces: self.exclude_interfaces.0.clone(),
            capture_dns: self.capture_dns,
        };
        config.validate()?;
        Ok(config)
    }

    /// The tools of `family`, honouring the hidden per-binary overrides.
    pub fn iptables(&self, family: Family) -> Iptables {
        let (save, restore) = match family {
            Family::Ipv4 => (&self.iptables_save, &self.iptables_restore),
            Family::Ipv6 => (&self.ip6tables_save, &self.ip6tables_restore),
        };
        Iptables::new(
            family,
            save.clone()
                .unwrap_or_else(|| family.save_tool().to_string()),
            restore
                .clone()
                .unwrap_or_else(|| family.restore_tool().to_string()),
        )
    }
}

#[cfg(test)]
mod tests;
