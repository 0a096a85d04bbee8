//! Socket options: the original destination of a redirected connection.
//!
//! iptables REDIRECT rewrites the destination; conntrack remembers the
//! original, and `SO_ORIGINAL_DST` (IPv4) / `IP6T_SO_ORIGINAL_DST` (IPv6)
//! read it back.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

use crate::addr::OrigDstAddr;

pub fn original_dst(stream: &TcpStream) -> std::io::Result<OrigDstAddr> {
    let local = stream.local_addr()?;
    // An IPv4 client on a dual-stack socket shows up as v4-mapped IPv6.
    let addr = if local.ip().to_canonical().is_ipv4() {
        let sin = getsockopt(stream, sockopt::OriginalDst)?;
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        ))
    } else {
        let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sin6.sin6_addr.s6_addr),
            u16::from_be(sin6.sin6_port),
            0,
            sin6.sin6_scope_id,
        ))
    };
    Ok(OrigDstAddr(addr.to_canonical_mapped()))
}

/// Small helper for `SocketAddr`s that arrive as IPv4-mapped IPv6 on a
/// dual-stack socket.
trait Canonical {
    fn to_canonical_mapped(self) -> SocketAddr;
}

impl Canonical for SocketAddr {
    fn to_canonical_mapped(self) -> SocketAddr {
        SocketAddr::new(self.ip().to_canonical(), self.port())
    }
}
