//! Typed addresses, so a client address can never be confused with the
//! destination the client asked for.

use std::fmt;
use std::net::SocketAddr;

/// The destination the client originally connected to, before iptables
/// redirected the connection to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

/// The peer address of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The address the proxy itself accepted the connection on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

/// An endpoint the proxy forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointAddr(pub SocketAddr);

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_inner!(OrigDstAddr, ClientAddr, ListenAddr, EndpointAddr);
