//! Validation of DestinationRule documents into the model.
//!
//! Knit implements `trafficPolicy.tls` and its port-level entries. The
//! other fields Istio defines are accepted without effect and reported as
//! warnings, never ignored silently; TLS options Knit cannot honour
//! (`credentialName`, `insecureSkipVerify: true`, `caCrl`) reject the rule,
//! since applying it without them would connect differently than written.

use std::collections::BTreeMap;

use super::destination_rule::{
    ClientTlsModeSetting, ClientTlsSettings, DestinationRule, PortTrafficPolicy, TrafficPolicy,
};
use super::names::{check_dns1035_label, check_dns1123_label, check_dns1123_subdomain};
use super::validate::{FieldError, name_and_namespace, valid_port};
use crate::model::{
    ClientTlsDef, ClientTlsMode, DestinationRuleDef, DocumentRef, PortTlsDef, ServiceName,
};
use crate::translate::CLUSTER_DOMAIN;

/// How `spec.host` may be written, for error messages.
const HOST_FORMS: &str =
    "write `name`, `name.namespace` or `name.namespace.svc.cluster.local` of a Service";

/// Longest path or subjectAltName accepted; far beyond any real one, so a
/// runaway value is an error instead of a surprise on every proxy.
const MAX_TEXT_LEN: usize = 4096;

/// Validates one DestinationRule into the model.
pub fn validate_destination_rule(
    rule: &DestinationRule,
    origin: &DocumentRef,
) -> Result<DestinationRuleDef, FieldError> {
    let (name, namespace) = name_and_namespace(
        rule.metadata.name.as_ref(),
        rule.metadata.namespace.as_ref(),
        check_dns1123_subdomain,
    )?;
    let spec = &rule.spec;
    let host = match spec.host.as_deref() {
        None | Some("") => return Err(FieldError::new("spec.host", "must be set")),
        Some(host) => host.to_owned(),
    };
    let service = service_of_host(&host, &namespace)
        .map_err(|reason| FieldError::new("spec.host", reason))?;

    let mut not_implemented = Vec::new();
    if !spec.subsets.is_empty() {
        not_implemented.push(not_implemented_yet("spec.subsets"));
    }
    if !spec.export_to.is_empty() {
        not_implemented.push(
            "spec.exportTo: not implemented yet; the rule applies mesh-wide, to every client"
                .to_owned(),
        );
    }
    if spec.workload_selector.is_some() {
        not_implemented.push(
            "spec.workloadSelector: not implemented yet; the rule applies to every client"
                .to_owned(),
        );
    }
    let (tls, port_tls) = match &spec.traffic_policy {
        None => (None, BTreeMap::new()),
        Some(policy) => traffic_policy(policy, &mut not_implemented)?,
    };
    Ok(DestinationRuleDef {
        name,
        namespace,
        host,
        service,
        tls,
        port_tls,
        not_implemented,
        created: rule.metadata.creation_timestamp.clone(),
        origin: origin.clone(),
    })
}

fn not_implemented_yet(field: &str) -> String {
    format!("{field}: not implemented yet; accepted without effect")
}

fn traffic_policy(
    policy: &TrafficPolicy,
    not_implemented: &mut Vec<String>,
) -> Result<(Option<ClientTlsDef>, BTreeMap<u16, PortTlsDef>), FieldError> {
    let field = "spec.trafficPolicy";
    let unimplemented = [
        ("loadBalancer", policy.load_balancer.is_some()),
        ("connectionPool", policy.connection_pool.is_some()),
        ("outlierDetection", policy.outlier_detection.is_some()),
        ("tunnel", policy.tunnel.is_some()),
        ("proxyProtocol", policy.proxy_protocol.is_some()),
        ("retryBudget", policy.retry_budget.is_some()),
    ];
    for (name, _) in unimplemented.iter().filter(|(_, set)| *set) {
        not_implemented.push(not_implemented_yet(&format!("{field}.{name}")));
    }
    let tls = policy
        .tls
        .as_ref()
        .map(|tls| client_tls(&format!("{field}.tls"), tls))
        .transpose()?;
    let mut port_tls = BTreeMap::new();
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    for (index, entry) in policy.port_level_settings.iter().enumerate() {
        let field = format!("{field}.portLevelSettings[{index}]");
        let port = port_level_port(&field, entry)?;
        if let Some(earlier) = seen.insert(port, index) {
            return Err(FieldError::new(
                format!("{field}.port.number"),
                format!(
                    "port {port} is already set by spec.trafficPolicy.portLevelSettings[{earlier}]"
                ),
            ));
        }
        let unimplemented = [
            ("loadBalancer", entry.load_balancer.is_some()),
            ("connectionPool", entry.connection_pool.is_some()),
            ("outlierDetection", entry.outlier_detection.is_some()),
        ];
        for (name, _) in unimplemented.iter().filter(|(_, set)| *set) {
            not_implemented.push(not_implemented_yet(&format!("{field}.{name}")));
        }
        if let Some(tls) = &entry.tls {
            let tls = client_tls(&format!("{field}.tls"), tls)?;
            port_tls.insert(port, PortTlsDef { index, tls });
        }
    }
    Ok((tls, port_tls))
}

fn port_level_port(field: &str, entry: &PortTrafficPolicy) -> Result<u16, FieldError> {
    match entry.port.as_ref().and_then(|port| port.number) {
        None => Err(FieldError::new(
            format!("{field}.port.number"),
            "must be set (the service port the settings are for)",
        )),
        Some(number) => valid_port(&format!("{field}.port.number"), i64::from(number)),
    }
}

/// The Service a host names, resolving a short name in `namespace`.
pub fn service_of_host(host: &str, namespace: &str) -> Result<ServiceName, String> {
    if host.contains('*') {
        return Err(format!(
            "{host:?}: wildcard hosts are not supported yet; {HOST_FORMS}"
        ));
    }
    let lower = host.to_ascii_lowercase();
    let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
    let labels: Vec<&str> = trimmed.split('.').collect();
    let cluster_domain: Vec<&str> = CLUSTER_DOMAIN.split('.').collect();
    let (name, service_namespace) = match labels.as_slice() {
        [name] => (*name, namespace),
        [name, ns] | [name, ns, "svc"] => (*name, *ns),
        [name, ns, "svc", domain @ ..] if domain == cluster_domain.as_slice() => (*name, *ns),
        _ => {
            return Err(format!(
                "{host:?} does not name a Service: {HOST_FORMS} (hosts outside the cluster \
                 are not supported yet)"
            ));
        }
    };
    check_dns1035_label(name).map_err(|reason| format!("{host:?}: service name {reason}"))?;
    check_dns1123_label(service_namespace)
        .map_err(|reason| format!("{host:?}: namespace {reason}"))?;
    Ok(ServiceName {
        name: name.to_owned(),
        namespace: service_namespace.to_owned(),
    })
}

/// Validates one `tls` block.
fn client_tls(field: &str, tls: &ClientTlsSettings) -> Result<ClientTlsDef, FieldError> {
    let at = |name: &str| format!("{field}.{name}");
    let Some(mode) = tls.mode else {
        return Err(FieldError::new(
            at("mode"),
            "must be set (DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL); Istio reads an absent mode \
             as DISABLE, Knit asks for it to be written",
        ));
    };
    if tls.credential_name.is_some() {
        return Err(FieldError::new(
            at("credentialName"),
            "is not supported by Knit (certificates from Kubernetes secrets); name files on \
             the proxy's filesystem in caCertificates, clientCertificate and privateKey",
        ));
    }
    if tls.insecure_skip_verify == Some(true) {
        return Err(FieldError::new(
            at("insecureSkipVerify"),
            "is not supported: Knit always verifies the server (give its CA in caCertificates)",
        ));
    }
    if tls.ca_crl.is_some() {
        return Err(FieldError::new(
            at("caCrl"),
            "is not supported by Knit (certificate revocation lists)",
        ));
    }
    let mode = match mode {
        ClientTlsModeSetting::Disable => ClientTlsMode::Disable,
        ClientTlsModeSetting::Simple => ClientTlsMode::Simple,
        ClientTlsModeSetting::Mutual => ClientTlsMode::Mutual,
        ClientTlsModeSetting::IstioMutual => ClientTlsMode::IstioMutual,
    };
    let origination_fields = [
        ("caCertificates", tls.ca_certificates.is_some()),
        ("clientCertificate", tls.client_certificate.is_some()),
        ("privateKey", tls.private_key.is_some()),
        ("sni", tls.sni.is_some()),
        ("subjectAltNames", !tls.subject_alt_names.is_empty()),
    ];
    match mode {
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual => {
            if let Some((name, _)) = origination_fields.iter().find(|(_, set)| *set) {
                let why = if mode == ClientTlsMode::IstioMutual {
                    "the mesh verifies the endpoint's workload identity instead"
                } else {
                    "DISABLE sends no TLS"
                };
                return Err(FieldError::new(
                    at(name),
                    format!("is only used with SIMPLE or MUTUAL ({why})"),
                ));
            }
            return Ok(ClientTlsDef {
                mode,
                ca_certificates: None,
                client_certificate: None,
                private_key: None,
                sni: None,
                subject_alt_names: Vec::new(),
            });
        }
        ClientTlsMode::Simple => {
            for (name, set) in &origination_fields[1..3] {
                if *set {
                    return Err(FieldError::new(at(name), "is only used with MUTUAL"));
                }
            }
        }
        ClientTlsMode::Mutual => {}
    }
    let ca_certificates = match tls.ca_certificates.as_deref() {
        None => {
            return Err(FieldError::new(
                at("caCertificates"),
                "must be set with SIMPLE and MUTUAL: the server is verified against these CAs, \
                 and Knit has no system roots policy yet",
            ));
        }
        Some(path) => file_path(&at("caCertificates"), path)?,
    };
    let (client_certificate, private_key) = if mode == ClientTlsMode::Mutual {
        let required = |name: &str, value: Option<&str>| match value {
            None => Err(FieldError::new(at(name), "must be set with MUTUAL")),
            Some(path) => file_path(&at(name), path),
        };
        (
            Some(required(
                "clientCertificate",
                tls.client_certificate.as_deref(),
            )?),
            Some(required("privateKey", tls.private_key.as_deref())?),
        )
    } else {
        (None, None)
    };
    let sni = tls
        .sni
        .as_deref()
        .map(|sni| server_name(&at("sni"), sni))
        .transpose()?;
    let subject_alt_names = tls
        .subject_alt_names
        .iter()
        .enumerate()
        .map(|(index, name)| subject_alt_name(&format!("{field}.subjectAltNames[{index}]"), name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ClientTlsDef {
        mode,
        ca_certificates: Some(ca_certificates),
        client_certificate,
        private_key,
        sni,
        subject_alt_names,
    })
}

/// A file on the proxy's filesystem: absolute, since the proxy's working
/// directory is nothing the config should depend on.
fn file_path(field: &str, path: &str) -> Result<String, FieldError> {
    if path.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if !path.starts_with('/') {
        return Err(FieldError::new(
            field,
            format!("{path:?} must be an absolute path on the proxy's filesystem"),
        ));
    }
    if path.ends_with('/') {
        return Err(FieldError::new(
            field,
            format!("{path:?} names a directory"),
        ));
    }
    if path.len() > MAX_TEXT_LEN || path.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("{path:?} is not a usable path (control characters, or too long)"),
        ));
    }
    Ok(path.to_owned())
}

/// An SNI value: a DNS name (RFC 6066 sends no IP addresses), compared
/// case-insensitively, so kept in lowercase.
fn server_name(field: &str, sni: &str) -> Result<String, FieldError> {
    if sni.parse::<std::net::IpAddr>().is_ok() {
        return Err(FieldError::new(
            field,
            format!("{sni:?} is an IP address; SNI carries DNS names only"),
        ));
    }
    let lower = sni.to_ascii_lowercase();
    check_dns1123_subdomain(&lower).map_err(|reason| FieldError::new(field, reason))?;
    Ok(lower)
}

fn subject_alt_name(field: &str, name: &str) -> Result<String, FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if name.len() > MAX_TEXT_LEN || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FieldError::new(
            field,
            format!("{name:?} is not a name (whitespace, control characters, or too long)"),
        ));
    }
    if name == "*" {
        return Err(FieldError::new(
            field,
            "\"*\" would accept any certificate of the CA; name the server",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
#[path = "validate_destination_tests.rs"]
mod tests;
