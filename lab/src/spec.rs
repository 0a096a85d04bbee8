//! What a test asks the lab for: pods and services, with builders and the
//! validation that keeps bad names out of namespaces, files and YAML.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::error::{LabError, Result};

/// A pod to add: a network namespace running the echo app and, with
/// `sidecar`, `knit-init` + `knit-proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name; unique within the lab (it names the pod's namespace).
    pub name: String,
    /// Kubernetes-style namespace of the workload, `default` unless set.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Service account of the workload; `default` unless set.
    pub service_account: String,
    /// Port the echo app listens on (the WorkloadEntry's `http` port).
    pub app_port: u16,
    /// Whether the pod gets traffic capture and a proxy.
    pub sidecar: bool,
}

impl PodSpec {
    /// A pod in namespace `default` with the echo on 8080 and no sidecar.
    pub fn new(name: &str) -> PodSpec {
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            labels: BTreeMap::new(),
            service_account: "default".to_string(),
            app_port: 8080,
            sidecar: false,
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.to_string();
        self
    }

    pub fn app_port(mut self, port: u16) -> Self {
        self.app_port = port;
        self
    }

    pub fn sidecar(mut self, sidecar: bool) -> Self {
        self.sidecar = sidecar;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let what = format!("pod `{}`", self.name);
        validate_dns_label(&format!("{what} name"), &self.name)?;
        validate_dns_label(&format!("{what} namespace"), &self.namespace)?;
        validate_dns_label(&format!("{what} service account"), &self.service_account)?;
        validate_labels(&what, &self.labels)?;
        if self.app_port == 0 {
            return Err(LabError::invalid(format!("{what} app_port"), "port 0"));
        }
        if self.sidecar && PROXY_PORTS.contains(&self.app_port) {
            return Err(LabError::invalid(
                format!("{what} app_port"),
                format!(
                    "{} is reserved for the proxy ({PROXY_PORTS:?})",
                    self.app_port
                ),
            ));
        }
        Ok(())
    }
}

/// Ports the proxy itself listens on inside a pod.
const PROXY_PORTS: [u16; 5] = [15000, 15001, 15006, 15021, 15090];

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
}

/// A Service to add: a VIP (allocated from 198.19.0.10 upwards unless given),
/// ports and a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// A service in namespace `default` with no ports and no selector yet.
    pub fn new(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            vip: None,
            ports: Vec::new(),
            selector: BTreeMap::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    pub fn vip(mut self, vip: Ipv4Addr) -> Self {
        self.vip = Some(vip);
        self
    }

    pub fn port(mut self, name: &str, port: u16, target_port: u16) -> Self {
        self.ports.push(ServicePort {
            name: name.to_string(),
            port,
            target_port,
        });
        self
    }

    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.selector.insert(key.to_string(), value.to_string());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let what = format!("service `{}`", self.name);
        validate_dns_label(&format!("{what} name"), &self.name)?;
        validate_dns_label(&format!("{what} namespace"), &self.namespace)?;
        validate_labels(&format!("{what} selector"), &self.selector)?;
        if self.ports.is_empty() {
            return Err(LabError::invalid(
                format!("{what} ports"),
                "a service needs at least one port",
            ));
        }
        let mut seen_names = Vec::new();
        let mut seen_ports = Vec::new();
        for p in &self.ports {
            validate_dns_label(&format!("{what} port name"), &p.name)?;
            if p.port == 0 || p.target_port == 0 {
                return Err(LabError::invalid(
                    format!("{what} port `{}`", p.name),
                    "port 0",
                ));
            }
            if seen_names.contains(&&p.name) || seen_ports.contains(&p.port) {
                return Err(LabError::invalid(
                    format!("{what} port `{}`", p.name),
                    "duplicate port name or number",
                ));
            }
            seen_names.push(&p.name);
            seen_ports.push(p.port);
        }
        if let Some(vip) = self.vip
            && !in_vip_range(vip)
        {
            return Err(LabError::invalid(
                format!("{what} vip"),
                format!("{vip} is outside 198.19.0.0/16"),
            ));
        }
        Ok(())
    }
}

/// Service VIPs live in 198.19.0.0/16 and are never assigned to an interface.
pub(crate) fn in_vip_range(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 198 && o[1] == 19
}

/// RFC 1123 label: what Kubernetes requires of names, and safe in file and
/// namespace names.
pub(crate) fn validate_dns_label(what: &str, name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    if name.is_empty() || name.len() > 63 || !ok_chars || !ok_ends {
        return Err(LabError::invalid(
            what,
            format!(
                "{name:?} must be 1-63 lowercase letters, digits or '-', starting and ending alphanumeric"
            ),
        ));
    }
    Ok(())
}

/// Label keys and values as Kubernetes accepts them (an optional DNS prefix
/// with `/` in keys; letters, digits, `-`, `_`, `.` elsewhere).
pub(crate) fn validate_labels(what: &str, labels: &BTreeMap<String, String>) -> Result<()> {
    let name_ok = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    };
    for (k, v) in labels {
        let (prefix, key) = match k.rsplit_once('/') {
            Some((p, k)) => (Some(p), k),
            None => (None, k.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && name_ok(p, 253));
        if key.is_empty() || !name_ok(key, 63) || !prefix_ok {
            return Err(LabError::invalid(
                format!("{what} label key"),
                format!("{k:?}"),
            ));
        }
        if !name_ok(v, 63) {
            return Err(LabError::invalid(
                format!("{what} label `{k}` value"),
                format!("{v:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "backend-1", "x9"] {
            validate_dns_label("name", ok).unwrap();
        }
        for bad in ["", "-a", "a-", "Upper", "a.b", "a/b", &"x".repeat(64)] {
            let err = validate_dns_label("pod name", bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid pod name:"), "{err}");
        }
    }

    #[test]
    fn label_rules() {
        let ok: BTreeMap<String, String> = [
            ("app", "backend"),
            ("app.kubernetes.io/name", "x_y.z"),
            ("tier", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        validate_labels("pod", &ok).unwrap();
        for (k, v) in [
            ("", "x"),
            ("a b", "x"),
            ("app", "has space"),
            ("/x", "y"),
            ("app", "-x"),
        ] {
            let one = BTreeMap::from([(k.to_string(), v.to_string())]);
            assert!(
                validate_labels("pod", &one).is_err(),
                "{k:?}={v:?} accepted"
            );
        }
    }

    #[test]
    fn service_validation() {
        let base = ServiceSpec::new("backend").port("http", 80, 8080);
        base.validate().unwrap();
        assert!(ServiceSpec::new("backend").validate().is_err());
        assert!(base.clone().port("http", 81, 8080).validate().is_err());
        assert!(base.clone().port("other", 80, 8080).validate().is_err());
        let err = base.vip(Ipv4Addr::new(10, 0, 0, 1)).validate().unwrap_err();
        assert!(err.to_string().contains("outside 198.19.0.0/16"), "{err}");
    }

    #[test]
    fn pod_validation() {
        PodSpec::new("web").label("app", "web").validate().unwrap();
        assert!(
            PodSpec::new("web")
                .app_port(15001)
                .sidecar(true)
                .validate()
                .is_err()
        );
        PodSpec::new("web").app_port(15001).validate().unwrap();
        assert!(PodSpec::new("Web").validate().is_err());
    }
}
