//! Client TLS from DestinationRules: which rule applies to each Service, and
//! the settings each of its ports is sent. Pure functions only.
//!
//! A rule applies mesh-wide to the one Service its `spec.host` names. On a
//! port, the rule's `portLevelSettings` entry for that port wins over its
//! `trafficPolicy.tls`; a port with neither keeps auto mutual TLS.
//!
//! When several rules name one Service, the oldest wins, as for
//! PeerAuthentication (`mtls.rs`): by `metadata.creationTimestamp`, equal
//! timestamps by name; a rule with a timestamp is older than one without;
//! rules without one (file mode) by load order, so the first in the config
//! directory wins. Each ignored rule is reported as a warning.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use knit_proto::v1 as pb;

use crate::model::{
    ClientTlsDef, ClientTlsMode, DestinationRuleDef, ServiceDef, ServiceName, ServicePortDef,
};

/// The rule that applies to each Service that has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectedRules<'a> {
    pub by_service: BTreeMap<ServiceName, &'a DestinationRuleDef>,
}

/// Tie-break between two rules for one Service: `Less` when `a` (at load
/// position `ia`) wins over `b` (at `ib`). See the module docs.
fn older((ia, a): (usize, &DestinationRuleDef), (ib, b): (usize, &DestinationRuleDef)) -> Ordering {
    match (&a.created, &b.created) {
        (Some(ta), Some(tb)) => ta
            .cmp(tb)
            .then_with(|| a.name.cmp(&b.name))
            .then(ia.cmp(&ib)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => ia.cmp(&ib),
    }
}

/// Picks the rule of each Service and reports, as warnings: the fields each
/// rule sets that Knit does not implement, rules that name no Service, rules
/// another one overrides, and port-level entries for ports the Service does
/// not carry. `rules` is in load order; `services` are the config's.
pub fn select_rules<'a>(
    rules: &'a [DestinationRuleDef],
    services: &[ServiceDef],
    warnings: &mut Vec<String>,
) -> SelectedRules<'a> {
    let mut winners: BTreeMap<ServiceName, (usize, &'a DestinationRuleDef)> = BTreeMap::new();
    let mut shadowed: Vec<(usize, &'a DestinationRuleDef)> = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        for note in &rule.not_implemented {
            warnings.push(format!("config warning: {}: {note}", rule.origin));
        }
        let Some(service) = services
            .iter()
            .find(|s| s.name == rule.service.name && s.namespace == rule.service.namespace)
        else {
            warnings.push(format!(
                "config warning: {}: spec.host: {:?} names Service {}, which does not exist; \
                 the rule has no effect",
                rule.origin, rule.host, rule.service
            ));
            continue;
        };
        for (port, entry) in &rule.port_tls {
            let carried = service
                .ports
                .iter()
                .any(|p| p.port == *port && p.transport == crate::model::Transport::Tcp);
            if !carried {
                warnings.push(format!(
                    "config warning: {}: spec.trafficPolicy.portLevelSettings[{}].port.number: \
                     Service {} has no TCP port {port}; ignored",
                    rule.origin, entry.index, rule.service
                ));
            }
        }
        match winners.get_mut(&rule.service) {
            None => {
                winners.insert(rule.service.clone(), (index, rule));
            }
            Some(current) => {
                if older((index, rule), *current) == Ordering::Less {
                    shadowed.push(*current);
                    *current = (index, rule);
                } else {
                    shadowed.push((index, rule));
                }
            }
        }
    }
    shadowed.sort_by_key(|(index, _)| *index);
    for (_, loser) in shadowed {
        if let Some((_, winner)) = winners.get(&loser.service) {
            warnings.push(format!(
                "config warning: {}: DestinationRule {}/{} is ignored: DestinationRule {}/{} ({}) \
                 also names Service {} and wins (the oldest wins; without creation timestamps, \
                 the first in the config directory)",
                loser.origin,
                loser.namespace,
                loser.name,
                winner.namespace,
                winner.name,
                winner.origin.position(),
                loser.service
            ));
        }
    }
    SelectedRules {
        by_service: winners
            .into_iter()
            .map(|(service, (_, rule))| (service, rule))
            .collect(),
    }
}

impl SelectedRules<'_> {
    /// What a Service port is sent: the rule's port-level TLS, else its
    /// `trafficPolicy.tls`; `None` keeps auto mutual TLS. `hostname` is the
    /// default SNI.
    pub fn client_tls(
        &self,
        service: &ServiceDef,
        port: &ServicePortDef,
        hostname: &str,
        protocol: pb::Protocol,
        warnings: &mut Vec<String>,
    ) -> Option<pb::ClientTls> {
        let key = ServiceName {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
        };
        let rule = self.by_service.get(&key)?;
        let tls = match rule.port_tls.get(&port.port) {
            Some(entry) => &entry.tls,
            None => rule.tls.as_ref()?,
        };
        let originates = matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
        if originates && protocol == pb::Protocol::Tls {
            warnings.push(format!(
                "config warning: {}: {} on Service {} port {}: the port carries TLS the app \
                 originates (protocol TLS), so the proxy's TLS wraps it a second time",
                rule.origin, tls.mode, key, port.port
            ));
        }
        Some(to_wire(rule, tls, hostname))
    }
}

/// The settings as proxies are sent them; the SNI defaults to `hostname`.
pub fn to_wire(rule: &DestinationRuleDef, tls: &ClientTlsDef, hostname: &str) -> pb::ClientTls {
    let originates = matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
    pb::ClientTls {
        mode: proto_mode(tls.mode) as i32,
        ca_certificates: tls.ca_certificates.clone().unwrap_or_default(),
        client_certificate: tls.client_certificate.clone().unwrap_or_default(),
        private_key: tls.private_key.clone().unwrap_or_default(),
        sni: match (&tls.sni, originates) {
            (Some(sni), _) => sni.clone(),
            (None, true) => hostname.to_owned(),
            (None, false) => String::new(),
        },
        subject_alt_names: tls.subject_alt_names.clone(),
        destination_rule: format!("{}/{}", rule.namespace, rule.name),
    }
}

pub fn proto_mode(mode: ClientTlsMode) -> pb::ClientTlsMode {
    match mode {
        ClientTlsMode::Disable => pb::ClientTlsMode::Disable,
        ClientTlsMode::Simple => pb::ClientTlsMode::Simple,
        ClientTlsMode::Mutual => pb::ClientTlsMode::Mutual,
        ClientTlsMode::IstioMutual => pb::ClientTlsMode::IstioMutual,
    }
}

#[cfg(test)]
#[path = "client_tls_tests.rs"]
mod tests;
