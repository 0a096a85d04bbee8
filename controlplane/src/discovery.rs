//! `Discovery.Stream`: one bidirectional stream per proxy. The proxy names
//! itself, gets the current snapshot, then a new one whenever the version
//! changes; it answers each with an ACK or a NACK (xDS semantics).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use knit_proto::v1 as pb;
use knit_proto::wire::EncodedDiscoveryResponse;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

pub use crate::discovery_response::{
    encoded_response_for, inbound_policy, response_for, snapshot_for,
};
use crate::push_throttle::{InFlight, PushThrottle};
use crate::registry::{ProxyRegistry, Registration};
use crate::rollout::{DEFAULT_ROLLOUT_TIMEOUT, Rollout};
use crate::shutdown::shutdown_requested;
use crate::state::ConfigState;

/// A fresh random nonce per response, so a late answer to an older response
/// can be told apart even when the version is the same.
fn new_nonce() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Why a first request is refused, if it is.
pub fn check_node(request: &pb::DiscoveryRequest) -> Result<pb::Node, Status> {
    match &request.node {
        Some(node) if !node.pod_name.is_empty() && !node.namespace.is_empty() => Ok(node.clone()),
        Some(_) => Err(Status::invalid_argument(
            "the first DiscoveryRequest must carry node.pod_name and node.namespace (one is empty)",
        )),
        None => Err(Status::invalid_argument(
            "the first DiscoveryRequest must carry node (with pod_name and namespace)",
        )),
    }
}

/// How a request after the first one relates to what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ack {
        version: String,
    },
    Nack {
        version: String,
        message: String,
    },
    /// Names a nonce other than the latest sent: superseded, ignored.
    Stale,
}

pub fn classify_answer(request: &pb::DiscoveryRequest, latest_nonce: &str) -> Answer {
    if request.response_nonce != latest_nonce {
        return Answer::Stale;
    }
    match &request.error_detail {
        Some(detail) => Answer::Nack {
            version: request.version_info.clone(),
            message: detail.message.clone(),
        },
        None => Answer::Ack {
            version: request.version_info.clone(),
        },
    }
}

#[derive(Debug, Clone)]
pub struct DiscoveryService {
    rollout: Arc<Rollout>,
    registry: Arc<ProxyRegistry>,
    throttle: PushThrottle,
    shutdown: watch::Receiver<bool>,
}

impl DiscoveryService {
    /// Serves `state`'s config through a rollout with the default timeout
    /// (spawns the task that follows the config; call within a runtime).
    pub fn new(
        state: Arc<ConfigState>,
        registry: Arc<ProxyRegistry>,
        throttle: PushThrottle,
        shutdown: watch::Receiver<bool>,
    ) -> DiscoveryService {
        let rollout = Rollout::follow(state, DEFAULT_ROLLOUT_TIMEOUT, shutdown.clone());
        DiscoveryService {
            rollout,
            registry,
            throttle,
            shutdown,
        }
    }

    pub fn rollout(&self) -> &Arc<Rollout> {
        &self.rollout
    }

    /// Opens one proxy's `Discovery.Stream` on its decoded requests and
    /// returns the responses (written out by [`crate::discovery_http`]).
    /// Answers at once and does the work in a task, so a client that waits
    /// for response headers before sending its first request still works.
    pub fn open(&self, requests: Streaming<pb::DiscoveryRequest>) -> ResponseStream {
        let (responses, outbound) = mpsc::channel(4);
        let session = ProxyStream {
            inbound: requests,
            responses,
            rollout: Arc::clone(&self.rollout),
            registry: Arc::clone(&self.registry),
            throttle: self.throttle.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(session.run());
        Box::pin(ReceiverStream::new(outbound))
    }
}

pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<EncodedDiscoveryResponse, Status>> + Send>>;

/// One proxy's stream.
struct ProxyStream {
    inbound: Streaming<pb::DiscoveryRequest>,
    responses: mpsc::Sender<Result<EncodedDiscoveryResponse, Status>>,
    rollout: Arc<Rollout>,
    registry: Arc<ProxyRegistry>,
    throttle: PushThrottle,
    shutdown: watch::Receiver<bool>,
}

/// The last response sent on a stream.
struct Sent {
    version: String,
    nonce: String,
}

impl ProxyStream {
    async fn run(mut self) {
        let first = tokio::select! {
            first = self.inbound.message() => first,
            _ = shutdown_requested(&mut self.shutdown) => return,
        };
        let node = match first {
            Ok(Some(request)) => match check_node(&request) {
                Ok(node) => node,
                Err(status) => {
                    tracing::warn!("discovery stream refused: {}", status.message());
                    let _ = self.responses.send(Err(status)).await;
                    return;
                }
            },
            Ok(None) => return,
            Err(status) => {
                tracing::debug!("discovery stream failed before its first request: {status}");
                return;
            }
        };
        let who = format!("{}/{}", node.namespace, node.pod_name);
        let registration = self.registry.register(node.clone());
        // Subscribe before reading the snapshot, so no change slips between.
        let mut changes = self.rollout.subscribe();
        tracing::info!(proxy = %who, "proxy connected");

        // The push permit of an unanswered response, if one is out.
        let mut in_flight: Option<InFlight> = None;
        let Some(mut sent) = self
            .send_current(&node, &registration, &mut in_flight)
            .await
        else {
            tracing::info!(proxy = %who, "proxy disconnected");
            return;
        };
        loop {
            let expires = in_flight.as_ref().map(|held| held.expires);
            tokio::select! {
                _ = shutdown_requested(&mut self.shutdown) => break,
                _ = self.responses.closed() => break,
                _ = tokio::time::sleep_until(expires.unwrap_or_else(tokio::time::Instant::now)),
                    if expires.is_some() => {
                    tracing::debug!(proxy = %who, nonce = %sent.nonce, "no answer in time; push permit returned");
                    in_flight = None;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if self.rollout.current().version == sent.version {
                        continue;
                    }
                    match self.send_current(&node, &registration, &mut in_flight).await {
                        Some(now) => sent = now,
                        None => break,
                    }
                }
                request = self.inbound.message() => match request {
                    Ok(Some(request)) => match classify_answer(&request, &sent.nonce) {
                        Answer::Ack { version } => {
                            tracing::debug!(proxy = %who, %version, "proxy accepted config");
                            registration.record_ack(&version);
                            self.rollout.acked(registration.id(), &sent.nonce);
                            in_flight = None;
                        }
                        Answer::Nack { version, message } => {
                            tracing::warn!(
                                proxy = %who,
                                rejected = %sent.version,
                                serving = %version,
                                "proxy rejected config: {message}"
                            );
                            registration.record_nack(&message);
                            self.rollout.nacked(registration.id(), &sent.nonce);
                            in_flight = None;
                        }
                        Answer::Stale => {
                            tracing::debug!(
                                proxy = %who,
                                nonce = %request.response_nonce,
                                "answer to a superseded response"
                            );
                            // Still tells which config the proxy runs meanwhile.
                            if request.error_detail.is_none() {
                                self.rollout.acked(registration.id(), &request.response_nonce);
                            } else {
                                self.rollout.nacked(registration.id(), &request.response_nonce);
                            }
                        }
                    },
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(proxy = %who, "discovery stream ended: {status}");
                        break;
                    }
                },
            }
        }
        self.rollout.removed(registration.id());
        drop(registration);
        tracing::info!(proxy = %who, "proxy disconnected");
    }

    /// Sends the current snapshot once a push permit is held (kept from an
    /// unanswered send, or waited for); `None` when the proxy is gone or
    /// knitd stops.
    async fn send_current(
        &self,
        node: &pb::Node,
        registration: &Registration,
        in_flight: &mut Option<InFlight>,
    ) -> Option<Sent> {
        match in_flight {
            Some(held) => self.throttle.renew(held),
            None => {
                let mut shutdown = self.shutdown.clone();
                *in_flight = tokio::select! {
                    permit = self.throttle.acquire() => permit,
                    _ = shutdown_requested(&mut shutdown) => return None,
                    _ = self.responses.closed() => return None,
                };
            }
        }
        // The config is read after the wait, so a proxy that waited gets
        // the newest one.
        let nonce = new_nonce();
        let key = (node.namespace.clone(), node.pod_name.clone());
        let published = self.rollout.take_for_send(registration.id(), &key, &nonce);
        let response = encoded_response_for(node, &published, nonce);
        let sent = Sent {
            version: response.head.version_info.clone(),
            nonce: response.head.nonce.clone(),
        };
        // Recorded first: an ACK may race in right after the send.
        registration.record_sent(&sent.version, &sent.nonce);
        self.responses.send(Ok(response)).await.ok()?;
        Some(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(nonce: &str, version: &str, nack: Option<&str>) -> pb::DiscoveryRequest {
        pb::DiscoveryRequest {
            node: None,
            version_info: version.to_owned(),
            response_nonce: nonce.to_owned(),
            error_detail: nack.map(|message| pb::ErrorDetail {
                message: message.to_owned(),
            }),
        }
    }

    #[test]
    fn answers_are_ack_nack_or_stale() {
        let table = [
            (
                request("n2", "v2", None),
                Answer::Ack {
                    version: "v2".to_owned(),
                },
            ),
            (
                request("n2", "v1", Some("bad route")),
                Answer::Nack {
                    version: "v1".to_owned(),
                    message: "bad route".to_owned(),
                },
            ),
            (request("n1", "v1", None), Answer::Stale),
            (request("n1", "v1", Some("old")), Answer::Stale),
            (request("", "", None), Answer::Stale),
        ];
        for (req, expected) in table {
            assert_eq!(classify_answer(&req, "n2"), expected, "{req:?}");
        }
    }

    #[test]
    fn first_request_must_name_the_node() {
        let node = |pod: &str, ns: &str| pb::DiscoveryRequest {
            node: Some(pb::Node {
                pod_name: pod.to_owned(),
                namespace: ns.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_node(&node("web-a", "default")).is_ok());
        for bad in [
            node("", "default"),
            node("web-a", ""),
            pb::DiscoveryRequest::default(),
        ] {
            match check_node(&bad) {
                Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
                Ok(node) => panic!("accepted {node:?}"),
            }
        }
    }

    #[test]
    fn nonces_differ() {
        let nonces: std::collections::HashSet<String> = (0..100).map(|_| new_nonce()).collect();
        assert_eq!(nonces.len(), 100);
    }
}
