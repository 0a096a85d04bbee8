//! Validation: typed resources → the config model. Each document is checked
//! on its own (first problem wins, so one document gives one error), then
//! across documents for duplicates; the first valid definition in load order
//! wins and later ones are reported.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::kinds::{PeerAuthentication, PeerMtls, PeerMtlsMode, Service, WorkloadEntry};
use super::loader::{DEFAULT_NAMESPACE, ParsedDocument, ParsedResource};
use super::names::{
    check_dns1035_label, check_dns1123_label, check_dns1123_subdomain, check_label_key,
    check_label_value, check_port_name,
};
use super::validate_authz::validate_authorization_policy;
use super::validate_destination::validate_destination_rule;
use crate::error::Error;
use crate::model::{
    DocumentRef, MESH_PORT, MeshConfig, MtlsMode, PROXY_ANNOTATION, PeerAuthenticationDef,
    ServiceDef, ServicePortDef, TOKEN_ANNOTATION, TargetPort, TokenDigest, Transport, Workload,
};

/// Service account of a workload that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A rejected value: where in the resource, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub(super) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(super) fn at(self, origin: &DocumentRef) -> Error {
        Error::Field {
            at: Box::new(origin.clone()),
            field: self.field,
            reason: self.reason,
        }
    }
}

fn check(field: impl Into<String>, result: Result<(), String>) -> Result<(), FieldError> {
    result.map_err(|reason| FieldError::new(field, reason))
}

pub(super) fn valid_port(field: &str, value: i64) -> Result<u16, FieldError> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(FieldError::new(
            field,
            format!("{value} is not a valid port (1-65535)"),
        )),
    }
}

pub(super) fn name_and_namespace(
    name: Option<&String>,
    namespace: Option<&String>,
    check_name: fn(&str) -> Result<(), String>,
) -> Result<(String, String), FieldError> {
    let name = match name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => return Err(FieldError::new("metadata.name", "must be set")),
    };
    check("metadata.name", check_name(&name))?;
    let namespace = match namespace {
        Some(ns) if !ns.is_empty() => ns.clone(),
        _ => DEFAULT_NAMESPACE.to_owned(),
    };
    check("metadata.namespace", check_dns1123_label(&namespace))?;
    Ok((name, namespace))
}

pub(super) fn check_labels(
    field: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), FieldError> {
    for (key, value) in labels {
        check(field, check_label_key(key))?;
        check(format!("{field}.{key}"), check_label_value(value))?;
    }
    Ok(())
}

fn parse_ip(field: &str, value: &str) -> Result<IpAddr, FieldError> {
    value
        .parse()
        .map_err(|_| FieldError::new(field, format!("{value:?} is not a valid IP address")))
}

/// The cluster IPs of a Service; empty for a headless one.
fn service_vips(
    cluster_ip: Option<&str>,
    cluster_ips: Option<&[String]>,
) -> Result<Vec<IpAddr>, FieldError> {
    let is_headless = |ip: &str| ip.is_empty() || ip == "None";
    let cluster_ip = cluster_ip.unwrap_or("");
    let cluster_ips = cluster_ips.unwrap_or(&[]);
    if let Some(first) = cluster_ips.first()
        && !cluster_ip.is_empty()
        && first != cluster_ip
    {
        return Err(FieldError::new(
            "spec.clusterIPs[0]",
            format!("{first:?} must equal spec.clusterIP {cluster_ip:?}"),
        ));
    }
    if cluster_ips.is_empty() {
        if is_headless(cluster_ip) {
            return Ok(Vec::new());
        }
        return parse_ip("spec.clusterIP", cluster_ip)
            .map(|ip| vec![ip])
            .map_err(|err| FieldError {
                reason: format!("{} (or \"None\" for a headless Service)", err.reason),
                ..err
            });
    }
    if cluster_ips.len() == 1 && is_headless(&cluster_ips[0]) {
        return Ok(Vec::new());
    }
    let mut vips = Vec::with_capacity(cluster_ips.len());
    for (i, ip) in cluster_ips.iter().enumerate() {
        vips.push(parse_ip(&format!("spec.clusterIPs[{i}]"), ip)?);
    }
    let dual_stack_ok = match vips.as_slice() {
        [_] => true,
        [a, b] => a.is_ipv4() != b.is_ipv4(),
        _ => false,
    };
    if !dual_stack_ok {
        return Err(FieldError::new(
            "spec.clusterIPs",
            "may hold at most one IPv4 and one IPv6 address",
        ));
    }
    Ok(vips)
}

fn service_port(
    index: usize,
    port: &ServicePort,
    multi: bool,
) -> Result<ServicePortDef, FieldError> {
    let field = |name: &str| format!("spec.ports[{index}].{name}");
    let number = valid_port(&field("port"), i64::from(port.port))?;
    let name = match port.name.as_deref() {
        None | Some("") if multi => {
            return Err(FieldError::new(
                field("name"),
                "must be set when a Service has more than one port",
            ));
        }
        None | Some("") => None,
        Some(name) => {
            check(field("name"), check_dns1123_label(name))?;
            Some(name.to_owned())
        }
    };
    let transport = match port.protocol.as_deref() {
        None | Some("") | Some("TCP") => Transport::Tcp,
        Some("UDP") => Transport::Udp,
        Some("SCTP") => Transport::Sctp,
        Some(other) => {
            return Err(FieldError::new(
                field("protocol"),
                format!("{other:?} is not supported (TCP, UDP or SCTP)"),
            ));
        }
    };
    let target = match &port.target_port {
        None => TargetPort::Number(number),
        Some(IntOrString::Int(value)) => {
            TargetPort::Number(valid_port(&field("targetPort"), i64::from(*value))?)
        }
        Some(IntOrString::String(name)) => {
            check(field("targetPort"), check_port_name(name))?;
            TargetPort::Named(name.clone())
        }
    };
    let app_protocol = port.app_protocol.clone().filter(|p| !p.is_empty());
    Ok(ServicePortDef {
        index,
        name,
        port: number,
        transport,
        target,
        app_protocol,
    })
}

/// Validates one Service into the model.
pub fn validate_service(service: &Service, origin: &DocumentRef) -> Result<ServiceDef, FieldError> {
    let (name, namespace) = name_and_namespace(
        service.metadata.name.as_ref(),
        service.metadata.namespace.as_ref(),
        check_dns1035_label,
    )?;
    let Some(spec) = &service.spec else {
        return Err(FieldError::new("spec", "must be set"));
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(FieldError::new(
            "spec.type",
            "ExternalName Services are not supported",
        ));
    }
    let vips = service_vips(spec.cluster_ip.as_deref(), spec.cluster_ips.as_deref())?;
    let raw_ports = spec.ports.as_deref().unwrap_or(&[]);
    if raw_ports.is_empty() && !vips.is_empty() {
        return Err(FieldError::new(
            "spec.ports",
            "a Service with a cluster IP needs at least one port",
        ));
    }
    let mut ports: Vec<ServicePortDef> = Vec::with_capacity(raw_ports.len());
    for (index, raw) in raw_ports.iter().enumerate() {
        let port = service_port(index, raw, raw_ports.len() > 1)?;
        if let Some(earlier) = ports
            .iter()
            .find(|p| p.port == port.port && p.transport == port.transport)
        {
            return Err(FieldError::new(
                format!("spec.ports[{index}].port"),
                format!(
                    "{}/{} is already declared by spec.ports[{}]",
                    port.port, port.transport, earlier.index
                ),
            ));
        }
        if let Some(name) = &port.name
            && let Some(earlier) = ports.iter().find(|p| p.name.as_ref() == Some(name))
        {
            return Err(FieldError::new(
                format!("spec.ports[{index}].name"),
                format!("{name:?} is already used by spec.ports[{}]", earlier.index),
            ));
        }
        ports.push(port);
    }
    let selector = spec.selector.clone().unwrap_or_default();
    check_labels("spec.selector", &selector)?;
    Ok(ServiceDef {
        name,
        namespace,
        vips,
        ports,
        selector,
        origin: origin.clone(),
    })
}

/// Validates one WorkloadEntry into the model.
pub fn validate_workload_entry(
    entry: &WorkloadEntry,
    origin: &DocumentRef,
) -> Result<Workload, FieldError> {
    let (name, namespace) = name_and_namespace(
        entry.metadata.name.as_ref(),
        entry.metadata.namespace.as_ref(),
        check_dns1123_subdomain,
    )?;
    let spec = &entry.spec;
    if spec.address.is_empty() {
        return Err(FieldError::new("spec.address", "must be set"));
    }
    let address = parse_ip("spec.address", &spec.address)?;
    check_labels("spec.labels", &spec.labels)?;
    let service_account = match spec.service_account.as_deref() {
        None | Some("") => DEFAULT_SERVICE_ACCOUNT.to_owned(),
        Some(account) => {
            check("spec.serviceAccount", check_dns1123_subdomain(account))?;
            account.to_owned()
        }
    };
    let mut ports = BTreeMap::new();
    for (port_name, number) in &spec.ports {
        check("spec.ports", check_port_name(port_name))?;
        let number = valid_port(&format!("spec.ports.{port_name}"), i64::from(*number))?;
        ports.insert(port_name.clone(), number);
    }
    let annotations = entry.metadata.annotations.as_ref();
    let annotation = annotations.and_then(|a| a.get(PROXY_ANNOTATION));
    let mesh_port = match annotation.map(String::as_str) {
        None | Some("knit") => Some(MESH_PORT),
        Some("none") => None,
        Some(other) => {
            return Err(FieldError::new(
                format!("metadata.annotations[{PROXY_ANNOTATION}]"),
                format!("{other:?} is neither \"knit\" nor \"none\""),
            ));
        }
    };
    let token_sha256 = match annotations.and_then(|a| a.get(TOKEN_ANNOTATION)) {
        None => None,
        Some(hex) => Some(TokenDigest::from_hex(hex).ok_or_else(|| {
            FieldError::new(
                format!("metadata.annotations[{TOKEN_ANNOTATION}]"),
                format!(
                    "{hex:?} is not a SHA-256 digest: 64 hex digits, the digest of the token \
                     as sent (`printf %s \"$TOKEN\" | sha256sum`)"
                ),
            )
        })?),
    };
    Ok(Workload {
        name,
        namespace,
        address,
        labels: spec.labels.clone(),
        service_account,
        ports,
        mesh_port,
        token_sha256,
        origin: origin.clone(),
    })
}

fn declared_mode(mtls: Option<&PeerMtls>) -> Option<MtlsMode> {
    match mtls.and_then(|m| m.mode) {
        None | Some(PeerMtlsMode::Unset) => None,
        Some(PeerMtlsMode::Disable) => Some(MtlsMode::Disable),
        Some(PeerMtlsMode::Permissive) => Some(MtlsMode::Permissive),
        Some(PeerMtlsMode::Strict) => Some(MtlsMode::Strict),
    }
}

/// Validates one PeerAuthentication into the model. The mode values are
/// checked when the document is parsed (they are an enum).
pub fn validate_peer_authentication(
    policy: &PeerAuthentication,
    origin: &DocumentRef,
) -> Result<PeerAuthenticationDef, FieldError> {
    let (name, namespace) = name_and_namespace(
        policy.metadata.name.as_ref(),
        policy.metadata.namespace.as_ref(),
        check_dns1123_subdomain,
    )?;
    let spec = &policy.spec;
    let selector = spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
    check_labels("spec.selector.matchLabels", &selector)?;
    let mut port_modes = BTreeMap::new();
    for (key, mtls) in &spec.port_level_mtls {
        let port = match key.parse::<u16>() {
            Ok(port) if port != 0 && !key.starts_with('+') => port,
            _ => {
                return Err(FieldError::new(
                    "spec.portLevelMtls",
                    format!("key {key:?} is not a port number (1-65535)"),
                ));
            }
        };
        port_modes.insert(port, declared_mode(Some(mtls)));
    }
    if !port_modes.is_empty() && selector.is_empty() {
        return Err(FieldError::new(
            "spec.portLevelMtls",
            "is only allowed with a workload selector (spec.selector.matchLabels), \
             as in Istio",
        ));
    }
    Ok(PeerAuthenticationDef {
        name,
        namespace,
        selector,
        mode: declared_mode(spec.mtls.as_ref()),
        port_modes,
        created: policy.metadata.creation_timestamp.clone(),
        origin: origin.clone(),
    })
}

/// Validates every document and checks them against each other. Returns the
/// model of everything valid and one error per rejected document.
pub fn assemble(documents: Vec<ParsedDocument>) -> (MeshConfig, Vec<Error>) {
    let mut config = MeshConfig::default();
    let mut errors = Vec::new();
    // Identity / address → where it was first defined.
    let mut services: HashMap<(String, String), DocumentRef> = HashMap::new();
    let mut vips: HashMap<IpAddr, (String, DocumentRef)> = HashMap::new();
    let mut workloads: HashMap<(String, String), DocumentRef> = HashMap::new();
    let mut addresses: HashMap<IpAddr, (String, DocumentRef)> = HashMap::new();
    let mut tokens: HashMap<TokenDigest, (String, DocumentRef)> = HashMap::new();
    let mut peer_authentications: HashMap<(String, String), DocumentRef> = HashMap::new();
    let mut authorization_policies: HashMap<(String, String), DocumentRef> = HashMap::new();
    let mut destination_rules: HashMap<(String, String), DocumentRef> = HashMap::new();

    for document in documents {
        let origin = document.at;
        match document.resource {
            ParsedResource::Service(service) => {
                let service = match validate_service(&service, &origin) {
                    Ok(service) => service,
                    Err(err) => {
                        errors.push(err.at(&origin));
                        continue;
                    }
                };
                let id = format!("{}/{}", service.namespace, service.name);
                let key = (service.namespace.clone(), service.name.clone());
                if let Some(first) = services.get(&key) {
                    errors.push(duplicate("Service", &id, first).at(&origin));
                    continue;
                }
                let taken = service
                    .vips
                    .iter()
                    .find_map(|vip| vips.get(vip).map(|owner| (vip, owner)));
                if let Some((vip, (owner, first))) = taken {
                    errors.push(
                        FieldError::new(
                            "spec.clusterIP",
                            format!(
                                "{vip} is already the cluster IP of Service {owner} ({})",
                                first.position()
                            ),
                        )
                        .at(&origin),
                    );
                    continue;
                }
                services.insert(key, origin.clone());
                for vip in &service.vips {
                    vips.insert(*vip, (id.clone(), origin.clone()));
                }
                config.services.push(service);
            }
            ParsedResource::WorkloadEntry(entry) => {
                let workload = match validate_workload_entry(&entry, &origin) {
                    Ok(workload) => workload,
                    Err(err) => {
                        errors.push(err.at(&origin));
                        continue;
                    }
                };
                let id = format!("{}/{}", workload.namespace, workload.name);
                let key = (workload.namespace.clone(), workload.name.clone());
                if let Some(first) = workloads.get(&key) {
                    errors.push(duplicate("WorkloadEntry", &id, first).at(&origin));
                    continue;
                }
                if let Some((owner, first)) = addresses.get(&workload.address) {
                    errors.push(
                        FieldError::new(
                            "spec.address",
                            format!(
                                "{} is already the address of WorkloadEntry {owner} ({})",
                                workload.address,
                                first.position()
                            ),
                        )
                        .at(&origin),
                    );
                    continue;
                }
                if let Some(digest) = workload.token_sha256
                    && let Some((owner, first)) = tokens.get(&digest)
                {
                    // One token must name one workload, or the CA could not
                    // tell whose identity to sign.
                    errors.push(
                        FieldError::new(
                            format!("metadata.annotations[{TOKEN_ANNOTATION}]"),
                            format!(
                                "is already the token digest of WorkloadEntry {owner} ({})",
                                first.position()
                            ),
                        )
                        .at(&origin),
                    );
                    continue;
                }
                if let Some(digest) = workload.token_sha256 {
                    tokens.insert(digest, (id.clone(), origin.clone()));
                }
                workloads.insert(key, origin.clone());
                addresses.insert(workload.address, (id, origin.clone()));
                config.workloads.push(workload);
            }
            ParsedResource::PeerAuthentication(policy) => {
                let policy = match validate_peer_authentication(&policy, &origin) {
                    Ok(policy) => policy,
                    Err(err) => {
                        errors.push(err.at(&origin));
                        continue;
                    }
                };
                let id = format!("{}/{}", policy.namespace, policy.name);
                let key = (policy.namespace.clone(), policy.name.clone());
                if let Some(first) = peer_authentications.get(&key) {
                    errors.push(duplicate("PeerAuthentication", &id, first).at(&origin));
                    continue;
                }
                peer_authentications.insert(key, origin.clone());
                config.peer_authentications.push(policy);
            }
            ParsedResource::AuthorizationPolicy(document) => {
                // An invalid policy may still come with its fail-closed
                // stand-in, which applies (and counts for duplicates) like
                // a valid one.
                let outcome = validate_authorization_policy(&document, &origin);
                let Some(policy) = outcome.policy else {
                    errors.extend(outcome.error);
                    continue;
                };
                let id = format!("{}/{}", policy.namespace, policy.name);
                let key = (policy.namespace.clone(), policy.name.clone());
                if let Some(first) = authorization_policies.get(&key) {
                    errors.push(duplicate("AuthorizationPolicy", &id, first).at(&origin));
                    continue;
                }
                errors.extend(outcome.error);
                authorization_policies.insert(key, origin.clone());
                config.authorization_policies.push(policy);
            }
            ParsedResource::DestinationRule(rule) => {
                let rule = match validate_destination_rule(&rule, &origin) {
                    Ok(rule) => rule,
                    Err(err) => {
                        errors.push(err.at(&origin));
                        continue;
                    }
                };
                let id = format!("{}/{}", rule.namespace, rule.name);
                let key = (rule.namespace.clone(), rule.name.clone());
                if let Some(first) = destination_rules.get(&key) {
                    errors.push(duplicate("DestinationRule", &id, first).at(&origin));
                    continue;
                }
                destination_rules.insert(key, origin.clone());
                config.destination_rules.push(rule);
            }
        }
    }
    (config, errors)
}

fn duplicate(kind: &str, id: &str, first: &DocumentRef) -> FieldError {
    FieldError::new(
        "metadata.name",
        format!(
            "duplicate {kind} {id}, already defined in {}",
            first.position()
        ),
    )
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
