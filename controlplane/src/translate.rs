//! Translation: the validated config → the snapshot every proxy is sent.
//! Pure functions only; the same config always gives the same snapshot.

use std::collections::{BTreeMap, HashMap};

use knit_proto::v1 as pb;

use crate::client_tls::select_rules;
use crate::model::{MeshConfig, ServiceDef, ServicePortDef, TargetPort, Transport, Workload};
use crate::snapshot::Snapshot;

/// DNS suffix of in-mesh Service hostnames.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A snapshot plus what translation noticed but did not reject.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    pub snapshot: Snapshot,
    pub warnings: Vec<String>,
}

/// `<name>.<namespace>.svc.cluster.local`
pub fn hostname(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// Whether a Service's selector picks a workload, as Kubernetes selects pods:
/// every selector key present with the same value. An empty selector picks
/// nothing: such a Service's endpoints are not managed from workloads.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

/// The port a workload serves a Service port on: the number itself, or the
/// workload's port of that name (`None` when it declares no such name).
pub fn resolve_target_port(
    target: &TargetPort,
    workload_ports: &BTreeMap<String, u16>,
) -> Option<u16> {
    match target {
        TargetPort::Number(port) => Some(*port),
        TargetPort::Named(name) => workload_ports.get(name).copied(),
    }
}

/// Protocol named by a port-name prefix or an `appProtocol` value.
fn protocol_from_name(name: &str) -> Option<pb::Protocol> {
    match name.to_ascii_lowercase().as_str() {
        "http" | "grpc-web" => Some(pb::Protocol::Http),
        "http2" => Some(pb::Protocol::Http2),
        "grpc" => Some(pb::Protocol::Grpc),
        "tcp" => Some(pb::Protocol::Tcp),
        // The app terminates TLS itself, so to the mesh it is opaque TLS.
        "tls" | "https" => Some(pb::Protocol::Tls),
        _ => None,
    }
}

/// How a Service port's traffic is carried. `appProtocol` wins when set
/// (including Kubernetes' `kubernetes.io/h2c`); otherwise the port name,
/// either exactly a protocol or `<protocol>-<suffix>` (Istio's convention).
/// Anything else is left to detection.
pub fn derive_protocol(port_name: Option<&str>, app_protocol: Option<&str>) -> pb::Protocol {
    if let Some(app_protocol) = app_protocol {
        if app_protocol.eq_ignore_ascii_case("kubernetes.io/h2c") {
            return pb::Protocol::Http2;
        }
        return protocol_from_name(app_protocol).unwrap_or(pb::Protocol::Unspecified);
    }
    let Some(name) = port_name else {
        return pb::Protocol::Unspecified;
    };
    // `grpc-web` has a dash of its own, so it is matched before splitting.
    if name.to_ascii_lowercase().starts_with("grpc-web") {
        return pb::Protocol::Http;
    }
    let prefix = name.split_once('-').map_or(name, |(prefix, _)| prefix);
    protocol_from_name(prefix).unwrap_or(pb::Protocol::Unspecified)
}

/// The Service ports the mesh carries: TCP only; UDP and SCTP pass by.
fn mesh_ports(service: &ServiceDef, warnings: &mut Vec<String>) -> Vec<ServicePortDef> {
    let mut ports = Vec::new();
    for port in &service.ports {
        if port.transport == Transport::Tcp {
            ports.push(port.clone());
        } else {
            warnings.push(format!(
                "config warning: {}: spec.ports[{}]: {}/{} is not carried by the mesh, ignored",
                service.origin, port.index, port.port, port.transport
            ));
        }
    }
    ports.sort_by_key(|port| port.port);
    ports
}

fn endpoint_for(
    service: &ServiceDef,
    ports: &[ServicePortDef],
    workload: &Workload,
    warnings: &mut Vec<String>,
) -> Option<pb::Endpoint> {
    let mut resolved = HashMap::new();
    for port in ports {
        match resolve_target_port(&port.target, &workload.ports) {
            Some(target) => {
                resolved.insert(u32::from(port.port), u32::from(target));
            }
            None => warnings.push(format!(
                "config warning: {}: spec.ports[{}].targetPort: WorkloadEntry {}/{} ({}) declares no port {}, so it is not an endpoint for port {}",
                service.origin,
                port.index,
                workload.namespace,
                workload.name,
                workload.origin.position(),
                port.target,
                port.port
            )),
        }
    }
    (!resolved.is_empty() || ports.is_empty()).then(|| pb::Endpoint {
        address: workload.address.to_string(),
        workload_name: workload.name.clone(),
        workload_namespace: workload.namespace.clone(),
        service_account: workload.service_account.clone(),
        ports: resolved,
        mesh_port: workload.mesh_port.map_or(0, u32::from),
        // Filled per response from the published mTLS table.
        mtls: None,
    })
}

/// Compiles the validated config into the snapshot. Output is sorted:
/// services by namespace and name, ports by number, endpoints by workload.
pub fn translate(config: &MeshConfig) -> Translation {
    let mut warnings = Vec::new();
    let mut services: Vec<&ServiceDef> = config.services.iter().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let rules = select_rules(&config.destination_rules, &config.services, &mut warnings);

    let mut proto_services = Vec::with_capacity(services.len());
    let mut proto_endpoints = Vec::with_capacity(services.len());
    for service in services {
        let ports = mesh_ports(service, &mut warnings);
        let hostname = hostname(&service.name, &service.namespace);
        let mut proto_ports = Vec::with_capacity(ports.len());
        for port in &ports {
            let protocol = derive_protocol(port.name.as_deref(), port.app_protocol.as_deref());
            proto_ports.push(pb::ServicePort {
                name: port.name.clone().unwrap_or_default(),
                port: u32::from(port.port),
                protocol: protocol as i32,
                client_tls: rules.client_tls(service, port, &hostname, protocol, &mut warnings),
            });
        }
        proto_services.push(pb::Service {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
            hostname,
            vips: service.vips.iter().map(ToString::to_string).collect(),
            ports: proto_ports,
        });

        let mut endpoints: Vec<pb::Endpoint> = config
            .workloads
            .iter()
            .filter(|w| w.namespace == service.namespace && selects(&service.selector, &w.labels))
            .filter_map(|w| endpoint_for(service, &ports, w, &mut warnings))
            .collect();
        endpoints
            .sort_by(|a, b| (&a.workload_name, &a.address).cmp(&(&b.workload_name, &b.address)));
        proto_endpoints.push(pb::ServiceEndpoints {
            service_name: service.name.clone(),
            service_namespace: service.namespace.clone(),
            endpoints,
        });
    }
    Translation {
        snapshot: Snapshot::new(proto_services, proto_endpoints),
        warnings,
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
