//! The proxy's end of `Discovery.Stream`: connect (with backoff), say who
//! we are, then for every response validate → publish → ACK, or NACK and
//! keep the last good snapshot. Losing the control plane never stops the
//! data path.

use std::sync::Arc;
use std::time::Duration;

use knit_proto::v1::{self, discovery_client::DiscoveryClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::snapshot::Snapshot;
use crate::context::ProxyContext;
use crate::control_plane::ControlPlaneTarget;
use crate::error::error_chain;
use crate::stats::inc;

/// How long a stream must last before the reconnect backoff starts over.
const HEALTHY_STREAM: Duration = Duration::from_secs(5);
/// The largest config the proxy accepts: a whole mesh's services and
/// endpoints arrive in one message (about 70 bytes per endpoint), and
/// gRPC's default 4 MiB would cut a mesh off at ~60 000 endpoints.
const MAX_CONFIG_MESSAGE_BYTES: usize = 64 << 20;

pub struct ControlPlaneClient {
    target: ControlPlaneTarget,
    node: v1::Node,
    ctx: Arc<ProxyContext>,
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    /// The whole chain: tonic's own text is only "transport error".
    #[error("connect: {}", error_chain(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Setup(String),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
}

impl ControlPlaneClient {
    pub fn new(target: ControlPlaneTarget, node: v1::Node, ctx: Arc<ProxyContext>) -> Self {
        ControlPlaneClient { target, node, ctx }
    }

    /// Runs forever: reconnects after every failure.
    pub async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
        loop {
            let started = tokio::time::Instant::now();
            let result = self.stream_once(&mut backoff).await;
            if started.elapsed() >= HEALTHY_STREAM {
                backoff.reset();
            }
            match result {
                Ok(()) | Err(StreamEnd::Closed) => {
                    info!("control plane stream ended; reconnecting")
                }
                Err(e) => {
                    warn!(error = %e, control_plane = %self.target.url(), "control plane unavailable; serving last good config")
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn stream_once(&self, backoff: &mut Backoff) -> Result<(), StreamEnd> {
        // Built per connection: over TLS it reads knitd's root now.
        let endpoint = self
            .target
            .endpoint()
            .map_err(StreamEnd::Setup)?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect().await?;
        let mut client =
            DiscoveryClient::new(channel).max_decoding_message_size(MAX_CONFIG_MESSAGE_BYTES);
        let (requests, rx) = mpsc::channel(4);
        let hello = v1::DiscoveryRequest {
            node: Some(self.node.clone()),
            version_info: self.ctx.config.load().version.clone(),
            ..Default::default()
        };
        // The receiver is alive until `client.stream` drops it.
        let _ = requests.send(hello).await;
        let mut responses = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        inc(&self.ctx.stats.control_plane_connects);
        info!(control_plane = %self.target.url(), "connected to control plane");
        let connected_at = tokio::time::Instant::now();
        while let Some(resp) = responses.message().await? {
            // A server that answers once and then fails must not make us
            // reconnect at the base rate forever.
            if connected_at.elapsed() >= HEALTHY_STREAM {
                backoff.reset();
            }
            let reply = self.apply(&resp);
            if requests.send(reply).await.is_err() {
                return Err(StreamEnd::Closed);
            }
        }
        Err(StreamEnd::Closed)
    }

    /// Validates and publishes one response; returns the ACK or NACK.
    fn apply(&self, resp: &v1::DiscoveryResponse) -> v1::DiscoveryRequest {
        let current = self.ctx.config.load().version.clone();
        let unchanged = self.ctx.config.has_config() && resp.version_info == current;
        let outcome = if unchanged {
            Ok(None)
        } else {
            Snapshot::from_proto(resp).map(Some)
        };
        match outcome {
            Ok(snapshot) => {
                if let Some(snapshot) = snapshot {
                    info!(
                        version = %resp.version_info,
                        services = snapshot.services.len(),
                        endpoints = snapshot.endpoint_count(),
                        "config accepted"
                    );
                    self.ctx.config.publish(snapshot);
                    inc(&self.ctx.stats.config_updates_accepted);
                }
                v1::DiscoveryRequest {
                    node: None,
                    version_info: resp.version_info.clone(),
                    response_nonce: resp.nonce.clone(),
                    error_detail: None,
                }
            }
            Err(e) => {
                warn!(version = %resp.version_info, error = %e, "config rejected; keeping version {current:?}");
                inc(&self.ctx.stats.config_updates_rejected);
                v1::DiscoveryRequest {
                    node: None,
                    version_info: current,
                    response_nonce: resp.nonce.clone(),
                    error_detail: Some(v1::ErrorDetail {
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "connect: transport error" alone told an operator nothing; the
    /// cause (refused, timed out, TLS) must be in the log line.
    #[tokio::test]
    async fn a_failed_connect_names_its_cause() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = unused.local_addr().expect("addr");
        drop(unused);
        let err = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect_err("nothing listens");
        let text = StreamEnd::from(err).to_string();
        assert!(text.starts_with("connect: transport error: "), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
