//! What to capture: the proxy's identity and ports, and the exceptions.

use crate::error::InitError;

/// The uid and gid the proxy runs as (Knit's convention, shared with Istio).
pub const DEFAULT_PROXY_ID: u32 = 1337;
/// Port of the proxy's outbound capture listener.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Port of the proxy's inbound capture listener.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Proxy ports that must reach the proxy directly: admin, readiness, metrics.
pub const DEFAULT_EXCLUDED_INBOUND_PORTS: [u16; 3] = [15000, 15021, 15090];

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
    /// Destination ports of inbound TCP that are left alone, in the order given.
    pub exclude_inbound_ports: Vec<u16>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            proxy_uid: DEFAULT_PROXY_ID,
            proxy_gid: DEFAULT_PROXY_ID,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
            exclude_inbound_ports: DEFAULT_EXCLUDED_INBOUND_PORTS.to_vec(),
        }
    }
}

impl CaptureConfig {
    /// Rejects configurations whose rules could not work.
    pub fn validate(&self) -> Result<(), InitError> {
        for (field, port) in [
            ("--outbound-port", self.outbound_port),
            ("--inbound-port", self.inbound_port),
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
        if self.exclude_inbound_ports.contains(&0) {
            return Err(InitError::InvalidConfig {
                field: "--exclude-inbound-ports",
                reason: "port 0 is not a valid port".to_string(),
            });
        }
        Ok(())
    }
}

/// Parses a comma-separated port list such as `15000,15021`; the empty string is the empty list.
/// Repeated ports are kept once, at their first position.
pub fn parse_port_list(text: &str) -> Result<Vec<u16>, String> {
    let mut ports: Vec<u16> = Vec::new();
    if text.trim().is_empty() {
        return Ok(ports);
    }
    for (index, item) in text.split(',').enumerate() {
        let item = item.trim();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_parse_or_name_the_bad_item() {
        let cases: &[(&str, Result<&[u16], &str>)] = &[
            ("", Ok(&[])),
            ("  ", Ok(&[])),
            ("15000", Ok(&[15000])),
            ("15000,15021,15090", Ok(&[15000, 15021, 15090])),
            (" 22 , 443 ", Ok(&[22, 443])),
            ("80,80,443,80", Ok(&[80, 443])),
            ("80,,443", Err("item 2 `` is not a port number")),
            ("80,http", Err("item 2 `http` is not a port number")),
            ("70000", Err("item 1 `70000` is not a port number")),
            ("-1", Err("item 1 `-1` is not a port number")),
            ("0", Err("item 1 is port 0")),
        ];
        for (text, expected) in cases {
            match (expected, parse_port_list(text)) {
                (Ok(ports), Ok(got)) => assert_eq!(&got, ports, "input `{text}`"),
                (Err(fragment), Err(message)) => assert!(
                    message.contains(fragment),
                    "input `{text}`: `{message}` lacks `{fragment}`"
                ),
                (expected, got) => panic!("input `{text}`: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn validation_names_the_offending_option() {
        let cases: &[(CaptureConfig, Option<&str>)] = &[
            (CaptureConfig::default(), None),
            (
                CaptureConfig {
                    exclude_inbound_ports: vec![],
                    ..CaptureConfig::default()
                },
                None,
            ),
            (
                CaptureConfig {
                    inbound_port: 15001,
                    ..CaptureConfig::default()
                },
                Some("--inbound-port"),
            ),
            (
                CaptureConfig {
                    outbound_port: 0,
                    ..CaptureConfig::default()
                },
                Some("--outbound-port"),
            ),
            (
                CaptureConfig {
                    inbound_port: 0,
                    ..CaptureConfig::default()
                },
                Some("--inbound-port"),
            ),
            (
                CaptureConfig {
                    exclude_inbound_ports: vec![22, 0],
                    ..CaptureConfig::default()
                },
                Some("--exclude-inbound-ports"),
            ),
        ];
        for (config, expected_field) in cases {
            match (expected_field, config.validate()) {
                (None, Ok(())) => {}
                (Some(field), Err(err)) => {
                    assert!(err.to_string().contains(field), "{config:?}: `{err}`")
                }
                (expected, got) => panic!("{config:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }
}
