//! Proxy-to-proxy transport. Every Knit proxy accepts HTTP/2 from its
//! peers on the mesh port (15008, never captured). One connection per peer
//! pod carries everything sent to that pod, multiplexed:
//! - an HTTP request is one stream, with `x-knit-target-port` (which app
//!   port) and, when the app spoke HTTP/1.x, `x-knit-orig-proto`, so the
//!   peer delivers the same version the client used;
//! - anything else (opaque TCP, TLS, upgraded connections) is a `CONNECT`
//!   stream to `pod-ip:port`, a tunnel of raw bytes.
//!
//! mTLS wraps this one connection type.

pub mod client;
pub mod pool;
pub mod server;

pub const MESH_PORT: u16 = 15008;
pub const TARGET_PORT_HEADER: &str = "x-knit-target-port";
pub const ORIG_PROTO_HEADER: &str = "x-knit-orig-proto";
/// Who is calling and which service it called, as the source proxy tells
/// its peer (for the destination's metrics). The app's own `x-knit-*`
/// headers never get this far: the source proxy strips them.
pub const SOURCE_WORKLOAD_HEADER: &str = "x-knit-source-workload";
pub const SOURCE_NAMESPACE_HEADER: &str = "x-knit-source-namespace";
pub const DESTINATION_SERVICE_HEADER: &str = "x-knit-destination-service";

/// The metadata headers a source proxy adds on the mesh hop.
pub fn source_metadata(
    node: &crate::context::NodeMeta,
    destination_service: &str,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut out = Vec::with_capacity(3);
    for (name, value) in [
        (SOURCE_WORKLOAD_HEADER, &*node.workload),
        (SOURCE_NAMESPACE_HEADER, &*node.namespace),
        (DESTINATION_SERVICE_HEADER, destination_service),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            out.push((http::HeaderName::from_static(name), value));
        }
    }
    out
}

/// Ports of the proxy itself: admin, outbound, inbound, mesh, readiness,
/// metrics. Traffic is never delivered to them as if to an app.
pub const PROXY_PORTS: [u16; 6] = [15000, 15001, 15006, MESH_PORT, 15021, 15090];
