//! IPv6 counterparts of the IPv4 listeners. Each family gets its own
//! socket (IPV6_V6ONLY), so `[::]:15001` and `0.0.0.0:15001` coexist and
//! SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST match the socket's family.

use std::net::{Ipv6Addr, SocketAddr};

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

/// `[::]:port`, IPv6 only. Fails where the kernel has no IPv6.
pub fn bind_v6_only(port: u16) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
