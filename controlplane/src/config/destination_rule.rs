//! The DestinationRule kind as written in YAML: Istio's shape, of which Knit
//! implements `trafficPolicy.tls` (mesh-wide, port level first). The other
//! fields are read so Istio YAML loads, and reported as not implemented.
//!
//! Unknown fields are rejected rather than ignored: a misspelt TLS field
//! (`subjectAltName` for `subjectAltNames`) would silently weaken how the
//! server is verified.

use std::borrow::Cow;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::kinds::PeerWorkloadSelector;

/// Every apiVersion accepted for `DestinationRule`: ours first, then
/// Istio's, so existing Istio YAML loads unchanged.
pub const DESTINATION_RULE_API_VERSIONS: [&str; 4] = [
    "mesh.knit.dev/v1alpha1",
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// How clients connect to a service, in Istio's shape.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "mesh.knit.dev",
    version = "v1alpha1",
    kind = "DestinationRule",
    plural = "destinationrules",
    doc = "How clients connect to a service (Istio's DestinationRule); Knit implements trafficPolicy.tls.",
    namespaced,
    derive = "PartialEq",
    category = "knit",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"TLS","type":"string","jsonPath":".spec.trafficPolicy.tls.mode"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The Service the rule is for: `name` (in the rule's namespace),
    /// `name.namespace`, or `name.namespace.svc.cluster.local`. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Settings for every port of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<NotImplemented>,
    /// Not implemented yet: the rule applies mesh-wide; a warning says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Not implemented yet: the rule applies to every client; a warning
    /// says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<PeerWorkloadSelector>,
}

/// Istio's TrafficPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// How the client proxy secures connections to the service's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Per-port settings; a port's entry replaces `tls` on that port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<NotImplemented>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<NotImplemented>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<NotImplemented>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<NotImplemented>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<NotImplemented>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<NotImplemented>,
}

/// Istio's PortTrafficPolicy: settings for one service port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The service port; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    /// Replaces `trafficPolicy.tls` on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<NotImplemented>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<NotImplemented>,
    /// Not implemented yet: accepted without effect, with a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<NotImplemented>,
}

/// Istio's PortSelector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// The service port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

/// Istio's ClientTLSSettings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// Required (Istio reads an absent mode as DISABLE; Knit asks for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientTlsModeSetting>,
    /// MUTUAL: PEM file of the client certificate chain, on the proxy's
    /// filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// MUTUAL: PEM file of the client certificate's private key, on the
    /// proxy's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// SIMPLE, MUTUAL: PEM file of the CA certificates that verify the
    /// server, on the proxy's filesystem. Required (no system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Not supported by Knit (certificates from Kubernetes secrets);
    /// rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// SIMPLE, MUTUAL: the server certificate must carry one of these
    /// names instead of being valid for `sni`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SIMPLE, MUTUAL: the SNI sent; the service hostname when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Not supported by Knit: `true` is rejected (a server that is not
    /// verified is not worth the TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Not supported by Knit (revocation lists); rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

/// Istio's client TLS modes as written in YAML.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClientTlsModeSetting {
    /// No TLS from the proxy.
    #[serde(rename = "DISABLE")]
    Disable,
    /// TLS originated by the proxy, server verified.
    #[serde(rename = "SIMPLE")]
    Simple,
    /// SIMPLE plus a client certificate.
    #[serde(rename = "MUTUAL")]
    Mutual,
    /// Mesh mutual TLS with the workload identity.
    #[serde(rename = "ISTIO_MUTUAL")]
    IstioMutual,
}

/// A field Knit reads so Istio YAML loads, but does not implement yet: any
/// mapping is accepted (and reported); its content is not interpreted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct NotImplemented(pub serde_json::Value);

impl JsonSchema for NotImplemented {
    fn schema_name() -> Cow<'static, str> {
        "NotImplemented".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Not implemented by Knit yet: accepted without effect, with a warning.",
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}
