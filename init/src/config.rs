//! What to capture: the proxy's identity and ports, and the exceptions.

use crate::error::InitError;
use crate::rules::Cidr;

/// The uid and gid the proxy runs as (Knit's convention, shared with Istio).
pub const DEFAULT_PROXY_ID: u32 = 1337;
/// Port of the proxy's outbound capture listener.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Where the proxy accepts connections from peer proxies.
pub const DEFAULT_MESH_PORT: u16 = 15008;
/// Port of the proxy's inbound capture listener.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Proxy ports that must reach the proxy directly: admin, readiness, metrics.
pub const DEFAULT_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15000, 15021, 15090];
/// The DNS port; TCP to it is left alone unless DNS capture is asked for.
pub const DNS_PORT: u16 = 53;
/// Longest interface name Linux accepts (`IFNAMSIZ` minus the NUL).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

/// "Everything" (`*` on the command line) or exactly the listed items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<T> {
    /// Every port / every destination.
    All,
    /// Only these, in the order given; empty selects nothing.
    Only(Vec<T>),
}

impl<T> Selection<T> {
    /// Whether nothing at all is selected.
    pub fn is_nothing(&self) -> bool {
        matches!(self, Selection::Only(items) if items.is_empty())
    }
}

/// Everything `plan` needs to compute the capture rules of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// uid of the proxy process; its traffic is never captured.
    pub proxy_uid: u32,
    /// gid of the proxy process; its traffic is never captured.
    pub proxy_gid: u32,
    /// Where captured outbound TCP is redirected.
    pub outbound_port: u16,
    /// Where captured inbound TCP is redirected.
    pub inbound_port: u16,
    /// Where peer proxies connect (mesh HTTP/2); never captured inbound,
    /// or traffic between proxies would be redirected into the inbound
    /// listener.
    pub mesh_port: u16,
    /// Inbound destination ports that are captured.
    pub include_inbound_ports: Selection<u16>,
    /// Inbound destination ports left alone; they win over the include list.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations that are captured.
    pub include_outbound_cidrs: Selection<Cidr>,
    /// Outbound destinations left alone; they win over the include list.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Interfaces whose traffic, in or out, is left alone.
    pub exclude_interfaces: Vec<String>,
    /// Whether outbound TCP to port 53 is captured like any other port.
    pub capture_dns: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            proxy_uid: DEFAULT_PROXY_ID,
            proxy_gid: DEFAULT_PROXY_ID,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
            mesh_port: DEFAULT_MESH_PORT,
            include_inbound_ports: Selection::All,
            exclude_inbound_ports: DEFAULT_EXCLUDED_INBOUND_PORTS.to_vec(),
            include_outbound_cidrs: Selection::All,
            exclude_outbound_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_interfaces: Vec::new(),
            capture_dns: false,
        }
    }
}

impl CaptureConfig {
    /// Rejects configurations whose rules could not work.
    pub fn validate(&self) -> Result<(), InitError> {
        for (field, port) in [
            ("--outbound-port", self.outbound_port),
            ("--inbound-port", self.inbound_port),
            ("--mesh-port", self.mesh_port),
        ] {
            if port == 0 {
                return Err(InitError::InvalidConfig {
                    field,
                    reason: "port 0 cannot receive connections".to_string(),
                });
            }
        }
        if self.outbound_port == self.inbound_port {
            return Err(InitError::InvalidConfig {
                field: "--inbound-port",
                reason: format!(
                    "{} is also the outbound port; the proxy tells inbound from outbound \
                     traffic by the port it arrives on, so they must differ",
                    self.inbound_port
                ),
            });
        }
        if self.mesh_port == self.inbound_port || self.mesh_port == self.outbound_port {
            return Err(InitError::InvalidConfig {
                field: "--mesh-port",
                reason: format!(
                    "{} is also the proxy's inbound or outbound port; the mesh port must differ",
                    self.mesh_port
                ),
            });
        }
        let included_inbound: &[u16] = match &self.include_inbound_ports {
            Selection::All => &[],
            Selection::Only(ports) => ports,
        };
        for (field, ports) in [
            ("--include-inbound-ports", included_inbound),
            ("--exclude-inbound-ports", &self.exclude_inbound_ports),
            ("--exclude-outbound-ports", &self.exclude_outbound_ports),
        ] {
            if ports.contains(&0) {
                return Err(InitError::InvalidConfig {
                    field,
                    reason: "port 0 is not a valid port".to_string(),
                });
            }
        }
        for name in &self.exclude_interfaces {
            check_interface_name(name).map_err(|reason| InitError::InvalidConfig {
                field: "--exclude-interfaces",
                reason,
            })?;
        }
        Ok(())
    }
}

/// Splits a comma-separated option value into trimmed items; blank is no items.
fn items(text: &str) -> Vec<&str> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    text.split(',').map(str::trim).collect()
}

/// Parses a comma-separated port list such as `15000,15021`; the empty string is the empty list.
/// Repeated ports are kept once, at their first position.
pub fn parse_port_list(text: &str) -> Result<Vec<u16>, String> {
    let mut ports: Vec<u16> = Vec::new();
    for (index, item) in items(text).into_iter().enumerate() {
        let port: u16 = item.parse().map_err(|_| {
            format!(
                "item {} `{item}` is not a port number (expected 1-65535, comma-separated)",
                index + 1
            )
        })?;
        if port == 0 {
            return Err(format!(
                "item {} is port 0, which is not a valid port",
                index + 1
            ));
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Parses `*` (every port) or a port list as [`parse_port_list`] does.
pub fn parse_port_selection(text: &str) -> Result<Selection<u16>, String> {
    parse_selection(text, parse_port_list)
}

/// Parses a comma-separated list of CIDRs (IPv4 and IPv6 may be mixed; a bare
/// address is one host). Repeated blocks are kept once.
pub fn parse_cidr_list(text: &str) -> Result<Vec<Cidr>, String> {
    let mut cidrs: Vec<Cidr> = Vec::new();
    for (index, item) in items(text).into_iter().enumerate() {
        let cidr: Cidr = item
            .parse()
            .map_err(|reason| format!("item {}: {reason}", index + 1))?;
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(cidrs)
}

/// Parses `*` (every destination) or a CIDR list as [`parse_cidr_list`] does.
pub fn parse_cidr_selection(text: &str) -> Result<Selection<Cidr>, String> {
    parse_selection(text, parse_cidr_list)
}

/// Parses a comma-separated list of interface names. Repeated names are kept once.
pub fn parse_interface_list(text: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for (index, item) in items(text).into_iter().enumerate() {
        check_interface_name(item).map_err(|reason| format!("item {}: {reason}", index + 1))?;
        if !names.iter().any(|name| name == item) {
            names.push(item.to_string());
        }
    }
    Ok(names)
}

fn parse_selection<T>(
    text: &str,
    parse_list: impl Fn(&str) -> Result<Vec<T>, String>,
) -> Result<Selection<T>, String> {
    if text.trim() == "*" {
        return Ok(Selection::All);
    }
    if items(text).contains(&"*") {
        return Err(
            "`*` (everything) cannot be combined with other items; give `*` alone or a list"
                .to_string(),
        );
    }
    parse_list(text).map(Selection::Only)
}

/// Accepts names the kernel accepts and iptables can match: at most 15
/// characters of letters, digits, `-`, `_` and `.`, optionally ending in
/// iptables' `+` wildcard. Stricter than the kernel on purpose: the name is
/// written unquoted into the restore transaction.
fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name cannot be empty".to_string());
    }
    if name.len() > MAX_INTERFACE_NAME_LEN {
        return Err(format!(
            "interface name `{name}` is longer than {MAX_INTERFACE_NAME_LEN} characters"
        ));
    }
    let stem = name.strip_suffix('+').unwrap_or(name);
    if stem.is_empty() || stem == "." || stem == ".." {
        return Err(format!("`{name}` is not an interface name"));
    }
    if let Some(bad) = stem
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "interface name `{name}` contains `{bad}` (letters, digits, `-`, `_`, `.` and a \
             trailing `+` wildcard are allowed)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
