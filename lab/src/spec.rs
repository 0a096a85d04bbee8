//! What a test asks the lab for: pods and services, with builders and the
//! validation that keeps bad names out of namespaces, files and YAML.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::apps::AppSpec;
use crate::error::{LabError, Result};

/// A pod to add: a network namespace running the echo app (plus any
/// [`AppSpec`] apps) and, with `sidecar`, `knit-init` + `knit-proxy`.
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
    /// Apps the pod runs besides the echo, each on its own port.
    pub apps: Vec<AppSpec>,
    /// Extra arguments for knit-init (e.g. `--exclude-inbound-ports=...`).
    pub init_args: Vec<String>,
    /// Extra arguments for knit-proxy (e.g. `--detect-timeout-ms=3000`).
    pub proxy_args: Vec<String>,
    /// Extra environment of knit-proxy (e.g. `TOKIO_WORKER_THREADS=2`).
    pub proxy_env: Vec<(String, String)>,
    /// A program (and its arguments) knit-proxy runs under, e.g. a
    /// profiler; empty for none.
    pub proxy_wrapper: Vec<String>,
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
            apps: Vec::new(),
            init_args: Vec::new(),
            proxy_args: Vec::new(),
            proxy_env: Vec::new(),
            proxy_wrapper: Vec::new(),
        }
    }

    /// Runs knit-proxy under `wrapper` (a program and its arguments, e.g.
    /// `valgrind --tool=callgrind`), still as the proxy's uid.
    pub fn proxy_wrapper(mut self, wrapper: &[String]) -> Self {
        self.proxy_wrapper = wrapper.to_vec();
        self
    }

    /// Sets a variable in knit-proxy's environment.
    pub fn proxy_env(mut self, key: &str, value: &str) -> Self {
        self.proxy_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds an argument to the pod's knit-init command line.
    pub fn init_arg(mut self, arg: &str) -> Self {
        self.init_args.push(arg.to_string());
        self
    }

    /// Adds an argument to the pod's knit-proxy command line.
    pub fn proxy_arg(mut self, arg: &str) -> Self {
        self.proxy_args.push(arg.to_string());
        self
    }

    /// Adds an app besides the echo; its port joins the WorkloadEntry's
    /// `ports` under the app's name (`grpc`, `tls`, `banner`, `tcp`).
    pub fn app(mut self, app: AppSpec) -> Self {
        self.apps.push(app);
        self
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
        for (k, v) in &self.proxy_env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(LabError::invalid(
                    format!("{what} proxy_env"),
                    format!("{k:?}={v:?} is not a usable environment variable"),
                ));
            }
        }
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
        let mut ports = vec![("http", self.app_port)];
        for app in &self.apps {
            let field = format!("{what} app {}", app.port_name());
            if app.port() == 0 {
                return Err(LabError::invalid(field, "port 0"));
            }
            if self.sidecar && PROXY_PORTS.contains(&app.port()) {
                return Err(LabError::invalid(
                    field,
                    format!("{} is reserved for the proxy ({PROXY_PORTS:?})", app.port()),
                ));
            }
            if let Some((other, _)) = ports
                .iter()
                .find(|(n, p)| *n == app.port_name() || *p == app.port())
            {
                return Err(LabError::invalid(
                    field,
                    format!(
                        "port {} or name {} is already taken by {other}",
                        app.port(),
                        app.port_name()
                    ),
                ));
            }
            ports.push((app.port_name(), app.port()));
        }
        Ok(())
    }

    /// The WorkloadEntry's named ports: `http` (the echo) and every app's.
    pub fn named_ports(&self) -> BTreeMap<String, u16> {
        let mut ports = BTreeMap::from([("http".to_string(), self.app_port)]);
        for app in &self.apps {
            ports.insert(app.port_name().to_string(), app.port());
        }
        ports
    }
}

/// Ports the proxy itself listens on inside a pod.
const PROXY_PORTS: [u16; 6] = [15000, 15001, 15006, 15008, 15021, 15090];

/// Where a Service port sends traffic on the selected pods: a number, or
/// the name of a port in their WorkloadEntries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl From<u16> for TargetPort {
    fn from(n: u16) -> TargetPort {
        TargetPort::Number(n)
    }
}

impl From<&str> for TargetPort {
    fn from(name: &str) -> TargetPort {
        TargetPort::Name(name.to_string())
    }
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(name) => f.write_str(name),
        }
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    /// Kubernetes `appProtocol` (e.g. `http`, `grpc`, `tcp`), which tells
    /// the mesh the protocol without detection.
    pub app_protocol: Option<String>,
}

/// A Service to add: a VIP (allocated from 198.19.0.10 upwards unless given),
/// in dual-stack labs also an IPv6 VIP, ports and a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub vip: Option<Ipv4Addr>,
    /// The IPv6 VIP (in 2001:2:0:1::/64). Unset, a dual-stack lab derives
    /// it from the IPv4 VIP (198.19.A.B → 2001:2:0:1::A:B).
    pub vip6: Option<Ipv6Addr>,
    /// No IPv6 VIP even in a dual-stack lab.
    pub ipv4_only: bool,
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
            vip6: None,
            ipv4_only: false,
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

    /// A second cluster IP, IPv6; makes the Service dual-stack in any lab.
    pub fn vip6(mut self, vip: Ipv6Addr) -> Self {
        self.vip6 = Some(vip);
        self
    }

    /// Keeps the Service single-stack IPv4 in a dual-stack lab.
    pub fn ipv4_only(mut self) -> Self {
        self.ipv4_only = true;
        self
    }

    pub fn port(self, name: &str, port: u16, target_port: u16) -> Self {
        self.port_to(name, port, target_port, None)
    }

    /// A port with an `appProtocol`, e.g. `.port_with_protocol("banner", 25, 2525, "tcp")`.
    pub fn port_with_protocol(
        self,
        name: &str,
        port: u16,
        target_port: u16,
        app_protocol: &str,
    ) -> Self {
        self.port_to(name, port, target_port, Some(app_protocol))
    }

    /// The general form: the target by number or by the pods' port name
    /// (`"grpc"`), with an optional `appProtocol`.
    pub fn port_to(
        mut self,
        name: &str,
        port: u16,
        target: impl Into<TargetPort>,
        app_protocol: Option<&str>,
    ) -> Self {
        self.ports.push(ServicePort {
            name: name.to_string(),
            port,
            target_port: target.into(),
            app_protocol: app_protocol.map(str::to_string),
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
            let field = format!("{what} port `{}`", p.name);
            if p.port == 0 || p.target_port == TargetPort::Number(0) {
                return Err(LabError::invalid(field, "port 0"));
            }
            if let TargetPort::Name(target) = &p.target_port
                && !is_port_name(target)
            {
                return Err(LabError::invalid(
                    field,
                    format!(
                        "target port name {target:?} must be 1-15 lowercase letters, digits and single '-', with a letter"
                    ),
                ));
            }
            if let Some(proto) = &p.app_protocol
                && (proto.is_empty()
                    || proto.len() > 253
                    || !proto.bytes().all(|b| b.is_ascii_graphic()))
            {
                return Err(LabError::invalid(
                    field,
                    format!("appProtocol {proto:?} must be a non-empty token"),
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
        if let Some(vip6) = self.vip6 {
            if !in_vip6_range(vip6) {
                return Err(LabError::invalid(
                    format!("{what} vip6"),
                    format!("{vip6} is outside 2001:2:0:1::/64"),
                ));
            }
            if self.ipv4_only {
                return Err(LabError::invalid(
                    format!("{what} vip6"),
                    "an IPv6 VIP on an ipv4_only service",
                ));
            }
        }
        Ok(())
    }
}

/// Service VIPs live in 198.19.0.0/16 and are never assigned to an interface.
pub(crate) fn in_vip_range(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 198 && o[1] == 19
}

/// IPv6 service VIPs live in 2001:2:0:1::/64 (RFC 5180's benchmarking
/// prefix) and are never assigned to an interface either.
pub(crate) fn in_vip6_range(ip: Ipv6Addr) -> bool {
    ip.segments()[..4] == [0x2001, 2, 0, 1]
}

/// An IANA service name, as Kubernetes requires of named ports: 1-15
/// lowercase letters, digits and non-adjacent '-', at least one letter,
/// not starting or ending with '-'.
pub(crate) fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
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
        let err = base
            .clone()
            .vip(Ipv4Addr::new(10, 0, 0, 1))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("outside 198.19.0.0/16"), "{err}");

        let v6: Ipv6Addr = "2001:2:0:1::10".parse().unwrap();
        base.clone().vip6(v6).validate().unwrap();
        let err = base
            .clone()
            .vip6("2001:2::10".parse().unwrap())
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("outside 2001:2:0:1::/64"), "{err}");
        assert!(base.clone().vip6(v6).ipv4_only().validate().is_err());

        let named = ServiceSpec::new("grpc")
            .port_to("grpc", 50051, "grpc", Some("grpc"))
            .port_with_protocol("banner", 25, 2525, "tcp");
        named.validate().unwrap();
        assert_eq!(named.ports[0].target_port, TargetPort::Name("grpc".into()));
        assert_eq!(named.ports[1].app_protocol.as_deref(), Some("tcp"));
        for bad in ["", "GRPC", "123", "-a", "a--b", "sixteen-letters-"] {
            let spec = ServiceSpec::new("x").port_to("p", 1, bad, None);
            assert!(spec.validate().is_err(), "{bad:?}");
        }
        assert!(
            ServiceSpec::new("x")
                .port_with_protocol("p", 1, 1, "has space")
                .validate()
                .is_err()
        );
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

        let apps = PodSpec::new("apps")
            .app(AppSpec::GrpcEcho { port: 50051 })
            .app(AppSpec::Banner { port: 2525 });
        apps.validate().unwrap();
        assert_eq!(
            apps.named_ports(),
            BTreeMap::from([
                ("banner".to_string(), 2525),
                ("grpc".to_string(), 50051),
                ("http".to_string(), 8080)
            ])
        );
        let clash = apps.clone().app(AppSpec::TcpEcho { port: 8080 }).validate();
        assert!(
            clash
                .unwrap_err()
                .to_string()
                .contains("already taken by http")
        );
        let twice = apps
            .clone()
            .app(AppSpec::GrpcEcho { port: 50052 })
            .validate();
        assert!(twice.unwrap_err().to_string().contains("name grpc"));
        let reserved = apps
            .app(AppSpec::TlsEcho { port: 15008 })
            .sidecar(true)
            .validate();
        assert!(reserved.unwrap_err().to_string().contains("reserved"));
    }
}
