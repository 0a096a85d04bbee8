//! The immutable, validated config the data path reads. Built from a
//! `DiscoveryResponse` off the data path; published with `ArcSwap`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use knit_proto::v1;
use serde::Serialize;

use crate::error::Error;
use crate::upstream_tls::{ClientTlsPolicy, FileCache, TlsOrigination, compile_client_tls};

/// How a service port carries traffic, as declared. `Detect` means sniff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclaredProtocol {
    Detect,
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

impl DeclaredProtocol {
    fn from_proto(value: i32) -> Result<Self, String> {
        match v1::Protocol::try_from(value) {
            Ok(v1::Protocol::Unspecified) => Ok(Self::Detect),
            Ok(v1::Protocol::Http) => Ok(Self::Http),
            Ok(v1::Protocol::Http2) => Ok(Self::Http2),
            Ok(v1::Protocol::Grpc) => Ok(Self::Grpc),
            Ok(v1::Protocol::Tcp) => Ok(Self::Tcp),
            Ok(v1::Protocol::Tls) => Ok(Self::Tls),
            Err(_) => Err(format!("unknown protocol {value}")),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Shared with the metric labels of every request to the endpoint.
    pub workload: std::sync::Arc<str>,
    pub namespace: std::sync::Arc<str>,
    pub service_account: String,
    /// Where the endpoint's Knit proxy takes mesh HTTP/2; `None` when the
    /// endpoint has no proxy and is reached directly.
    pub mesh_port: Option<u16>,
    /// How the endpoint's proxy takes traffic per app port; a client sends
    /// plaintext to a DISABLE port and mutual TLS otherwise.
    pub mtls: InboundModes,
}

impl Endpoint {
    /// Whether a client should originate mutual TLS to this endpoint (when
    /// it has an identity): every mode but DISABLE on the endpoint's port.
    pub fn wants_mtls(&self) -> bool {
        self.mtls.mode_for(self.addr.port()) != MtlsMode::Disable
    }
}

/// Where a request or connection goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Straight to this address (no Knit proxy there, or this very pod).
    Direct(SocketAddr),
    /// To the peer proxy's mesh port, for the app port `target_port`; over
    /// mutual TLS when `identity` names who the peer must be.
    Mesh {
        peer: SocketAddr,
        target_port: u16,
        identity: Option<crate::identity::SpiffeId>,
    },
    /// Straight to this address over TLS this proxy originates
    /// (DestinationRule SIMPLE or MUTUAL).
    Tls {
        addr: SocketAddr,
        tls: Arc<TlsOrigination>,
    },
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Direct(addr) => write!(f, "{addr}"),
            Upstream::Mesh {
                peer,
                target_port,
                identity: Some(id),
            } => write!(f, "{peer} (mesh, port {target_port}, {id})"),
            Upstream::Mesh {
                peer,
                target_port,
                identity: None,
            } => write!(f, "{peer} (mesh, port {target_port}, plaintext)"),
            Upstream::Tls { addr, tls } => write!(f, "{addr} (TLS, sni {})", tls.sni),
        }
    }
}

/// One port of one service: everything the outbound path needs after the
/// VIP:port lookup.
#[derive(Debug, Serialize)]
pub struct ServiceTarget {
    /// `namespace/name`.
    pub service: String,
    /// Shared with the metric labels of every request to the service.
    pub hostname: std::sync::Arc<str>,
    pub port: u16,
    pub port_name: String,
    pub protocol: DeclaredProtocol,
    /// How connections to the endpoints are secured (a DestinationRule),
    /// compiled with its files and rustls configs.
    pub client_tls: ClientTlsPolicy,
    pub endpoints: Vec<Endpoint>,
    /// Round-robin cursor. Lives with the snapshot: a config change resets
    /// it, which is harmless.
    #[serde(skip)]
    cursor: AtomicUsize,
}

impl ServiceTarget {
    /// Round robin over the endpoints; `None` when there are none.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.endpoints.get(n % self.endpoints.len())
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    pub version: String,
    /// Keyed by `namespace/name`, then port.
    pub services: BTreeMap<String, Vec<Arc<ServiceTarget>>>,
    /// Whether this workload takes mutual TLS, plaintext or both, per app port.
    pub inbound: InboundModes,
    /// The AuthorizationPolicies of this workload, compiled.
    pub authorization: crate::authz::AuthorizationPolicies,
    #[serde(skip)]
    by_vip: HashMap<SocketAddr, Arc<ServiceTarget>>,
}

impl Snapshot {
    /// The target for a connection's original destination, if it is a
    /// service VIP:port.
    pub fn lookup(&self, dst: SocketAddr) -> Option<&Arc<ServiceTarget>> {
        self.by_vip
            .get(&SocketAddr::new(dst.ip().to_canonical(), dst.port()))
    }

    pub fn endpoint_count(&self) -> usize {
        self.services
            .values()
            .flat_map(|ports| ports.iter())
            .map(|t| t.endpoints.len())
            .sum()
    }

    /// Validates a response and compiles it. Any invalid resource rejects
    /// the whole response (the proxy NACKs it and keeps its last good
    /// snapshot), with a message naming the resource and field.
    pub fn from_proto(resp: &v1::DiscoveryResponse) -> Result<Snapshot, Error> {
        let invalid = |msg: String| Error::InvalidConfig(msg);
        let mut endpoints_by_service: HashMap<String, &v1::ServiceEndpoints> = HashMap::new();
        for set in &resp.endpoints {
            let key = format!("{}/{}", set.service_namespace, set.service_name);
            if endpoints_by_service.insert(key.clone(), set).is_some() {
                return Err(invalid(format!("endpoints for service {key} listed twice")));
            }
        }

        let mut services = BTreeMap::new();
        let mut by_vip = HashMap::new();
        let mut files = FileCache::default();
        for svc in &resp.services {
            if svc.name.is_empty() || svc.namespace.is_empty() {
                return Err(invalid(format!(
                    "service {:?}/{:?}: name and namespace must be set",
                    svc.namespace, svc.name
                )));
            }
            let key = format!("{}/{}", svc.namespace, svc.name);
            if services.contains_key(&key) {
                return Err(invalid(format!("service {key} listed twice")));
            }
            let vips = svc
                .vips
                .iter()
                .map(|v| {
                    v.parse::<IpAddr>().map_err(|_| {
                        invalid(format!("service {key}: vips: {v:?} is not an IP address"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let set = endpoints_by_service.remove(&key);
            let mut targets = Vec::with_capacity(svc.ports.len());
            for port in &svc.ports {
                let number = valid_port(port.port).ok_or_else(|| {
                    invalid(format!(
                        "service {key}: ports: {} is not a valid port",
                        port.port
                    ))
                })?;
                let protocol = DeclaredProtocol::from_proto(port.protocol)
                    .map_err(|e| invalid(format!("service {key} port {number}: {e}")))?;
                let client_tls = compile_client_tls(
                    &key,
                    number,
                    &svc.hostname,
                    port.client_tls.as_ref(),
                    &mut files,
                )?;
                let endpoints = match set {
                    Some(set) => compile_endpoints(&key, number, set)?,
                    None => Vec::new(),
                };
                let target = Arc::new(ServiceTarget {
                    service: key.clone(),
                    hostname: svc.hostname.as_str().into(),
                    port: number,
                    port_name: port.name.clone(),
                    protocol,
                    client_tls,
                    endpoints,
                    cursor: AtomicUsize::new(0),
                });
                for vip in &vips {
                    let sock = SocketAddr::new(vip.to_canonical(), number);
                    if let Some(other) = by_vip.insert(sock, target.clone()) {
                        return Err(invalid(format!(
                            "service {key}: {sock} is also claimed by service {}",
                            other.service
                        )));
                    }
                }
                targets.push(target);
            }
            services.insert(key, targets);
        }
        if let Some(orphan) = endpoints_by_service.keys().next() {
            return Err(invalid(format!("endpoints for unknown service {orphan}")));
        }
        let inbound = InboundModes::from_proto(resp.inbound.as_ref(), "inbound")?;
        let authorization = crate::authz::AuthorizationPolicies::from_proto(&resp.authorization)?;
        Ok(Snapshot {
            version: resp.version_info.clone(),
            services,
            inbound,
            authorization,
            by_vip,
        })
    }
}

/// The mTLS mode of an inbound port, after PeerAuthentication precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsMode {
    Disable,
    /// The mesh default: mutual TLS and plaintext are both accepted.
    #[default]
    Permissive,
    Strict,
}

impl MtlsMode {
    fn from_proto(value: i32, place: &str) -> Result<Self, Error> {
        match v1::MtlsMode::try_from(value) {
            Ok(v1::MtlsMode::Unspecified) | Ok(v1::MtlsMode::Permissive) => {
                Ok(MtlsMode::Permissive)
            }
            Ok(v1::MtlsMode::Disable) => Ok(MtlsMode::Disable),
            Ok(v1::MtlsMode::Strict) => Ok(MtlsMode::Strict),
            Err(_) => Err(Error::InvalidConfig(format!(
                "{place}: unknown mTLS mode {value}"
            ))),
        }
    }

    /// Whether a plaintext connection or request may reach the app.
    pub fn allows_plaintext(self) -> bool {
        self != MtlsMode::Strict
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InboundModes {
    pub default: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl InboundModes {
    /// `place` names the field in errors (`inbound`, or an endpoint's).
    fn from_proto(policy: Option<&v1::InboundPolicy>, place: &str) -> Result<Self, Error> {
        let Some(policy) = policy else {
            return Ok(InboundModes::default());
        };
        let mut ports = BTreeMap::new();
        for (port, mode) in &policy.port_modes {
            let port = valid_port(*port).ok_or_else(|| {
                Error::InvalidConfig(format!("{place}: port_modes: {port} is not a valid port"))
            })?;
            ports.insert(port, MtlsMode::from_proto(*mode, place)?);
        }
        Ok(InboundModes {
            default: MtlsMode::from_proto(policy.default_mode, place)?,
            ports,
        })
    }

    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }
}

fn valid_port(port: u32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

fn compile_endpoints(
    service: &str,
    service_port: u16,
    set: &v1::ServiceEndpoints,
) -> Result<Vec<Endpoint>, Error> {
    let mut out = Vec::new();
    for ep in &set.endpoints {
        let ip: IpAddr = ep.address.parse().map_err(|_| {
            Error::InvalidConfig(format!(
                "service {service}: endpoint {}: address {:?} is not an IP address",
                ep.workload_name, ep.address
            ))
        })?;
        // A workload that does not serve this port is not an endpoint of it.
        let Some(&target) = ep.ports.get(&u32::from(service_port)) else {
            continue;
        };
        let target = valid_port(target).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "service {service}: endpoint {}: target port {target} is not a valid port",
                ep.workload_name
            ))
        })?;
        let mesh_port = match ep.mesh_port {
            0 => None,
            port => Some(valid_port(port).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "service {service}: endpoint {}: mesh port {port} is not a valid port",
                    ep.workload_name
                ))
            })?),
        };
        let mtls = InboundModes::from_proto(
            ep.mtls.as_ref(),
            &format!("service {service}: endpoint {}: mtls", ep.workload_name),
        )?;
        out.push(Endpoint {
            addr: SocketAddr::new(ip.to_canonical(), target),
            workload: ep.workload_name.as_str().into(),
            namespace: ep.workload_namespace.as_str().into(),
            service_account: ep.service_account.clone(),
            mesh_port,
            mtls,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, vip: &str, port: u32) -> v1::Service {
        v1::Service {
            name: name.into(),
            namespace: "default".into(),
            hostname: format!("{name}.default.svc.cluster.local"),
            vips: vec![vip.into()],
            ports: vec![v1::ServicePort {
                name: "http".into(),
                port,
                protocol: 0,
                client_tls: None,
            }],
        }
    }

    fn endpoints(name: &str, addrs: &[(&str, u32, u32)]) -> v1::ServiceEndpoints {
        v1::ServiceEndpoints {
            service_name: name.into(),
            service_namespace: "default".into(),
            endpoints: addrs
                .iter()
                .enumerate()
                .map(|(i, (addr, sport, tport))| v1::Endpoint {
                    address: (*addr).into(),
                    workload_name: format!("{name}-{i}"),
                    workload_namespace: "default".into(),
                    service_account: "default".into(),
                    ports: [(*sport, *tport)].into_iter().collect(),
                    mesh_port: 0,
                    mtls: None,
                })
                .collect(),
        }
    }

    fn response(
        services: Vec<v1::Service>,
        eps: Vec<v1::ServiceEndpoints>,
    ) -> v1::DiscoveryResponse {
        v1::DiscoveryResponse {
            version_info: "v1".into(),
            nonce: "n".into(),
            services,
            endpoints: eps,
            ..Default::default()
        }
    }

    #[test]
    fn lookup_and_round_robin() {
        let resp = response(
            vec![service("backend", "198.19.0.10", 80)],
            vec![endpoints(
                "backend",
                &[("198.18.0.11", 80, 8080), ("198.18.0.12", 80, 8080)],
            )],
        );
        let snap = Snapshot::from_proto(&resp).expect("valid");
        let target = snap
            .lookup("198.19.0.10:80".parse().expect("lit"))
            .expect("found");
        let picks: Vec<_> = (0..4)
            .map(|_| target.pick().expect("some").addr.to_string())
            .collect();
        assert_eq!(
            picks,
            [
                "198.18.0.11:8080",
                "198.18.0.12:8080",
                "198.18.0.11:8080",
                "198.18.0.12:8080"
            ]
        );
        assert!(
            snap.lookup("198.19.0.10:81".parse().expect("lit"))
                .is_none()
        );
        assert!(
            snap.lookup("198.19.0.11:80".parse().expect("lit"))
                .is_none()
        );
        assert_eq!(snap.endpoint_count(), 2);
    }

    #[test]
    fn endpoint_without_the_port_is_skipped_and_empty_pick_is_none() {
        let resp = response(
            vec![service("backend", "198.19.0.10", 80)],
            vec![endpoints("backend", &[("198.18.0.11", 81, 8080)])],
        );
        let snap = Snapshot::from_proto(&resp).expect("valid");
        let target = snap
            .lookup("198.19.0.10:80".parse().expect("lit"))
            .expect("found");
        assert!(target.pick().is_none());
    }

    #[test]
    fn invalid_resources_are_rejected_with_their_name() {
        let cases: Vec<(v1::DiscoveryResponse, &str)> = vec![
            (
                response(vec![service("a", "not-an-ip", 80)], vec![]),
                "service default/a: vips: \"not-an-ip\"",
            ),
            (
                response(vec![service("a", "198.19.0.1", 70000)], vec![]),
                "service default/a: ports: 70000",
            ),
            (
                response(vec![service("a", "198.19.0.1", 0)], vec![]),
                "ports: 0 is not a valid port",
            ),
            (
                response(
                    vec![
                        service("a", "198.19.0.1", 80),
                        service("b", "198.19.0.1", 80),
                    ],
                    vec![],
                ),
                "198.19.0.1:80 is also claimed by service default/a",
            ),
            (
                response(
                    vec![service("a", "198.19.0.1", 80)],
                    vec![endpoints("zzz", &[])],
                ),
                "endpoints for unknown service default/zzz",
            ),
            (
                response(
                    vec![service("a", "198.19.0.1", 80)],
                    vec![endpoints("a", &[("bogus", 80, 8080)])],
                ),
                "endpoint a-0: address \"bogus\"",
            ),
            (
                response(
                    vec![service("a", "198.19.0.1", 80)],
                    vec![endpoints("a", &[("198.18.0.2", 80, 0)])],
                ),
                "target port 0",
            ),
        ];
        for (resp, want) in cases {
            let err = Snapshot::from_proto(&resp).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
