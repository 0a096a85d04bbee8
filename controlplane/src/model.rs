//! The validated config model: what the loader hands to translation. Every
//! value here has passed validation, so translation never fails.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Which resource a document declares, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef {
    pub kind: String,
    pub namespace: String,
    /// `None` when the document has no `metadata.name`.
    pub name: Option<String>,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} {}/{}", self.kind, self.namespace, name),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// Where a resource came from: file name within the config dir, 1-based
/// document index within the file, and the resource if it could be read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocumentRef {
    pub file: String,
    pub index: usize,
    pub resource: Option<ResourceRef>,
}

impl DocumentRef {
    /// The same document, now known to declare `resource`.
    pub fn with_resource(&self, resource: ResourceRef) -> DocumentRef {
        DocumentRef {
            resource: Some(resource),
            ..self.clone()
        }
    }

    /// `file doc N`, without the resource: used to point at another document.
    pub fn position(&self) -> String {
        format!("{} doc {}", self.file, self.index)
    }
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} doc {}", self.file, self.index)?;
        if let Some(resource) = &self.resource {
            write!(f, " ({resource})")?;
        }
        Ok(())
    }
}

/// The L4 protocol of a Service port, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Sctp => "SCTP",
        })
    }
}

/// Where a Service port is delivered on a workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    /// A port name looked up in each workload's `spec.ports`.
    Named(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(port) => write!(f, "{port}"),
            TargetPort::Named(name) => write!(f, "{name:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortDef {
    /// Position in `spec.ports`, to name the field in warnings.
    pub index: usize,
    pub name: Option<String>,
    pub port: u16,
    pub transport: Transport,
    pub target: TargetPort,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: String,
    pub namespace: String,
    /// Empty for a headless Service.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePortDef>,
    /// Empty means "endpoints not managed from workloads" (Kubernetes).
    pub selector: BTreeMap<String, String>,
    pub origin: DocumentRef,
}

/// A workload (a pod, in file mode declared by a WorkloadEntry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// Port name → number, for named targetPorts.
    pub ports: BTreeMap<String, u16>,
    /// Where the workload's Knit proxy takes mesh traffic; `None` when it
    /// runs without one.
    pub mesh_port: Option<u16>,
    pub origin: DocumentRef,
}

/// The annotation that says whether a WorkloadEntry runs a Knit proxy:
/// `knit` (the default) or `none`.
pub const PROXY_ANNOTATION: &str = "mesh.knit.dev/proxy";

/// The port a Knit proxy accepts mesh HTTP/2 on.
pub const MESH_PORT: u16 = 15008;

/// The whole validated config, in load order (files by name, then document).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub services: Vec<ServiceDef>,
    pub workloads: Vec<Workload>,
}
