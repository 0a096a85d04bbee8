//! `knit.v1.Discovery` on the wire, without tonic's response encoder.
//!
//! tonic encodes every response into a per-stream buffer that keeps the
//! capacity of the largest response for as long as the stream lives: about
//! one whole config (hundreds of KiB) per connected proxy. Here each
//! response leaves as two DATA chunks: the gRPC prefix with the per-proxy
//! head, then the services and endpoints, which are the `Bytes` every
//! stream of that config shares (no copy, nothing kept once sent). Requests
//! are still decoded by tonic, and the logic is [`DiscoveryService`]'s.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use knit_proto::v1 as pb;
use knit_proto::wire::EncodedDiscoveryResponse;
use prost::Message;
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;

use crate::discovery::DiscoveryService;

/// The one method of the service.
const STREAM_PATH: &str = "/knit.v1.Discovery/Stream";
/// Largest request a proxy may send (they are a few hundred bytes).
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The Discovery service for tonic's router.
#[derive(Clone)]
pub struct DiscoveryHttp {
    service: DiscoveryService,
}

impl DiscoveryHttp {
    pub fn new(service: DiscoveryService) -> DiscoveryHttp {
        DiscoveryHttp { service }
    }
}

impl NamedService for DiscoveryHttp {
    const NAME: &'static str = "knit.v1.Discovery";
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl tower::Service<http::Request<Body>> for DiscoveryHttp {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Answer {
        if request.uri().path() != STREAM_PATH {
            let status = Status::unimplemented(format!(
                "knit.v1.Discovery has no method {}",
                request.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding.as_bytes() != b"identity"
        {
            let status = Status::unimplemented(format!(
                "grpc-encoding {}: knitd reads uncompressed requests only",
                String::from_utf8_lossy(encoding.as_bytes())
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let service = self.service.clone();
        Box::pin(async move {
            // Only the decoder is used; responses are framed below.
            let mut codec =
                tonic_prost::ProstCodec::<pb::DiscoveryResponse, pb::DiscoveryRequest>::default();
            let requests = Streaming::new_request(
                codec.decoder(),
                request.into_body(),
                None,
                Some(MAX_REQUEST_BYTES),
            );
            let mut http = http::Response::new(Body::new(Framed::new(service.open(requests))));
            http.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            Ok(http)
        })
    }
}

/// The response body: each response as prefix+head, then the shared part;
/// trailers with the final status.
struct Framed<S> {
    responses: S,
    /// The shared part of the response whose head went out last.
    shared: Option<Bytes>,
    done: bool,
}

impl<S> Framed<S> {
    fn new(responses: S) -> Framed<S> {
        Framed {
            responses,
            shared: None,
            done: false,
        }
    }
}

impl<S> http_body::Body for Framed<S>
where
    S: Stream<Item = Result<EncodedDiscoveryResponse, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(shared) = self.shared.take() {
            return Poll::Ready(Some(Ok(Frame::data(shared))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.responses).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(response))) => match head_frame(&response) {
                Ok(head) => {
                    self.shared = Some(response.shared).filter(|s| !s.is_empty());
                    Poll::Ready(Some(Ok(Frame::data(head))))
                }
                Err(status) => {
                    self.done = true;
                    Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
                }
            },
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::ok(""))))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.shared.is_none()
    }
}

/// The 5-byte gRPC prefix (uncompressed, length of the whole message) and
/// the encoded head.
fn head_frame(response: &EncodedDiscoveryResponse) -> Result<Bytes, Status> {
    let whole = response.encoded_len();
    let length = u32::try_from(whole).map_err(|_| {
        Status::resource_exhausted(format!(
            "a config of {whole} bytes is beyond gRPC's 4 GiB message limit"
        ))
    })?;
    let head = &response.head;
    let mut frame = BytesMut::with_capacity(5 + head.encoded_len());
    frame.put_u8(0);
    frame.put_u32(length);
    head.encode(&mut frame)
        .map_err(|e| Status::internal(format!("encoding a config: {e}")))?;
    Ok(frame.freeze())
}

fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Err(unencodable) = status.add_header(&mut map) {
        // Only a message that is no header value ends up here.
        let _ = Status::new(unencodable.code(), "").add_header(&mut map);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn response(version: &str, shared: Bytes) -> EncodedDiscoveryResponse {
        EncodedDiscoveryResponse {
            head: pb::DiscoveryResponse {
                version_info: version.to_owned(),
                ..Default::default()
            },
            shared,
        }
    }

    /// The body of `items` as sent: its bytes and its trailers.
    async fn collect(items: Vec<Result<EncodedDiscoveryResponse, Status>>) -> (Bytes, HeaderMap) {
        let collected = Framed::new(tokio_stream::iter(items))
            .collect()
            .await
            .expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn responses_leave_as_prefixed_messages_then_an_ok_trailer() {
        let shared = knit_proto::wire::encode_shared(
            &[pb::Service {
                name: "web".to_owned(),
                ..Default::default()
            }],
            &[],
        );
        let items = vec![Ok(response("v1", shared)), Ok(response("v2", Bytes::new()))];
        let (mut bytes, trailers) = collect(items).await;
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        let mut versions = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0, "uncompressed");
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            let message = bytes.slice(5..5 + len);
            let decoded = pb::DiscoveryResponse::decode(message).expect("decodes");
            versions.push((decoded.version_info.clone(), decoded.services.len()));
            bytes = bytes.slice(5 + len..);
        }
        assert_eq!(versions, [("v1".to_owned(), 1), ("v2".to_owned(), 0)]);
    }

    #[tokio::test]
    async fn an_error_ends_the_body_with_its_status() {
        let items = vec![
            Ok(response("v1", Bytes::new())),
            Err(Status::invalid_argument("no node")),
        ];
        let (_, trailers) = collect(items).await;
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        assert_eq!(
            trailers.get("grpc-message").map(|v| v.as_bytes()),
            Some(&b"no%20node"[..]) // percent-encoded, as gRPC requires
        );
    }
}
