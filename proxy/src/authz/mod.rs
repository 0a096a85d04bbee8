//! Authorization: Istio's AuthorizationPolicy, decided by the proxy in
//! front of the workload (the server side), before anything reaches the
//! app.
//!
//! ```text
//! snapshot: policies ─► policy::AuthorizationPolicies::from_proto (validate, compile)
//! request ─► normalize (400 bad_request) ─► Attributes (peer identity from the
//!            TLS handshake, addresses, normalized method/host/path, headers)
//!         ─► eval: AUDIT, DENY, ALLOW ─► forwarded as normalized | 403 rbac_denied
//! ```
//!
//! The listeners that enforce it: the mesh port (requests and CONNECT
//! tunnels from peer proxies) and the inbound port (plaintext clients,
//! HTTP and raw TCP). `normalize`, `policy` and `eval` are pure; this
//! module adds the logging around a decision.

pub mod eval;
pub mod matchers;
pub mod normalize;
pub mod policy;

pub use eval::{Attributes, Decision, HttpAttributes, NO_ALLOW_POLICY_MATCHED, Verdict};
pub use normalize::{normalize_request, request_authority};
pub use policy::AuthorizationPolicies;

use tracing::info;

use crate::addr::ClientAddr;
use crate::error::Error;

/// Decides on `request`; a denial becomes `Error::RbacDenied`. Each AUDIT
/// match and each denial is logged here, once, with the listener, the
/// client and what was asked (never header values).
pub fn authorize(
    policies: &AuthorizationPolicies,
    request: &Attributes<'_>,
    listener: &'static str,
    client: ClientAddr,
) -> Result<(), Error> {
    if policies.is_empty() {
        return Ok(());
    }
    let verdict = policies.evaluate(request);
    let (method, path) = request
        .http
        .as_ref()
        .map_or(("-", "-"), |http| (http.method(), http.path()));
    let source = request.source.map_or("none", |id| id.as_str());
    let port = request.destination_port;
    for policy in &verdict.audited {
        info!(listener, %client, source, port, method, path, policy, "request matched an AUDIT authorization policy");
    }
    match verdict.decision {
        Decision::Allow => Ok(()),
        Decision::Deny { policy } => {
            info!(listener, %client, source, port, method, path, policy, "denied by authorization policy");
            Err(Error::RbacDenied {
                policy: policy.to_owned(),
            })
        }
    }
}
