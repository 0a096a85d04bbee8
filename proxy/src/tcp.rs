//! Opaque TCP: connect, then copy both ways. `copy_bidirectional` forwards
//! a FIN in one direction while the other keeps flowing (half-close).

use std::net::SocketAddr;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::snapshot::Upstream;
use crate::context::Pools;
use crate::error::Error;
use crate::mesh::client::open_tunnel;

/// An established upstream byte stream.
pub enum Connected {
    Direct(TcpStream, SocketAddr),
    /// A CONNECT stream on the shared connection to a peer proxy.
    Tunnel(TokioIo<Upgraded>, SocketAddr),
}

/// Connects to `upstream`: straight to the address, or through a tunnel to
/// the peer proxy. Nothing of the client's has been sent yet, so a failure
/// here may be retried elsewhere.
pub async fn open(upstream: Upstream, pools: &Pools) -> Result<Connected, Error> {
    match upstream {
        Upstream::Direct(addr) => Ok(Connected::Direct(
            pools.direct.connect_stream(addr).await?,
            addr,
        )),
        Upstream::Mesh { peer, target_port } => {
            let tunnel = open_tunnel(&pools.mesh, peer, target_port).await?;
            Ok(Connected::Tunnel(TokioIo::new(tunnel), peer))
        }
    }
}

/// Copies until both directions are closed; bytes (to upstream, to client).
pub async fn splice(mut downstream: TcpStream, upstream: Connected) -> Result<(u64, u64), Error> {
    match upstream {
        Connected::Direct(mut up, addr) => copy(&mut downstream, &mut up, addr).await,
        Connected::Tunnel(mut up, peer) => copy(&mut downstream, &mut up, peer).await,
    }
}

/// To this pod's app (inbound), from the delivery source address.
pub async fn deliver(
    mut downstream: TcpStream,
    app: SocketAddr,
    pools: &Pools,
) -> Result<(u64, u64), Error> {
    let mut up = pools.app.connect_stream(app).await?;
    copy(&mut downstream, &mut up, app).await
}

async fn copy<A, B>(a: &mut A, b: &mut B, addr: SocketAddr) -> Result<(u64, u64), Error>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(a, b)
        .await
        .map_err(|source| Error::Transfer { addr, source })
}
