//! Opaque TCP: connect, then copy both ways. `copy_bidirectional` forwards
//! a FIN in one direction while the other keeps flowing (half-close).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::Error;
use crate::http::upstream::connect_tcp;

/// Bytes moved (client → upstream, upstream → client).
pub async fn forward(
    mut downstream: TcpStream,
    upstream_addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<(u64, u64), Error> {
    let mut upstream = connect_tcp(upstream_addr, connect_timeout).await?;
    tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
        .await
        .map_err(|source| Error::Transfer {
            addr: upstream_addr,
            source,
        })
}
