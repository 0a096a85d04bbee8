//! `knit-lab grpc-echo`: a real gRPC server (tonic) with a unary, a
//! bidirectional-streaming and a slow method. Replies name the pod, and
//! every response carries the trailer `x-echo-trailer: <pod>`, so a test can
//! tell that trailers survived the trip.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use http::HeaderValue;
use http_body::{Body as HttpBody, Frame};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{LabError, Result};

/// The generated code of `proto/knit/lab/v1/echo.proto`.
pub mod pb {
    tonic::include_proto!("knit.lab.v1");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest, SlowRequest};

/// The trailer the server adds to every response.
pub const TRAILER: &str = "x-echo-trailer";
/// Longest sleep `Slow` accepts, so a mistyped request cannot hold a stream for hours.
pub const MAX_SLOW: Duration = Duration::from_secs(600);

struct EchoService {
    pod: Arc<str>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = std::result::Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        req: Request<EchoRequest>,
    ) -> std::result::Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            message: req.into_inner().message,
            pod: self.pod.to_string(),
            seq: 0,
        }))
    }

    type BidiStreamStream = ReplyStream;

    async fn bidi_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> std::result::Result<Response<ReplyStream>, Status> {
        let pod = self.pod.clone();
        // Mapping the inbound stream answers each message when it arrives;
        // nothing waits for the client to finish sending.
        let replies = req.into_inner().enumerate().map(move |(seq, msg)| {
            msg.map(|m| EchoReply {
                message: m.message,
                pod: pod.to_string(),
                seq: seq as u64,
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn slow(
        &self,
        req: Request<SlowRequest>,
    ) -> std::result::Result<Response<EchoReply>, Status> {
        let req = req.into_inner();
        let pause = Duration::from_millis(req.millis);
        if pause > MAX_SLOW {
            return Err(Status::invalid_argument(format!(
                "millis {} is more than {} ms",
                req.millis,
                MAX_SLOW.as_millis()
            )));
        }
        // A deadline (grpc-timeout) cancels this sleep: tonic drops the handler.
        tokio::time::sleep(pause).await;
        Ok(Response::new(EchoReply {
            message: req.message,
            pod: self.pod.to_string(),
            seq: 0,
        }))
    }
}

/// Binds `listen` and serves until the process is stopped.
pub async fn run(pod: &str, listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| LabError::io(format!("grpc-echo binding {listen}"), e))?;
    tracing::info!(pod, %listen, "grpc-echo listening");
    serve(listener, pod).await
}

/// Serves on an already bound listener until the process is stopped.
pub async fn serve(listener: TcpListener, pod: &str) -> Result<()> {
    let value = HeaderValue::from_str(pod)
        .map_err(|e| LabError::invalid("pod name", format!("{pod:?} as a header: {e}")))?;
    let svc = WithTrailer {
        inner: EchoServer::new(EchoService {
            pod: Arc::from(pod),
        }),
        value,
    };
    // tonic sets TCP_NODELAY only on listeners it binds itself; without
    // it, a response's DATA frame waits out the peer's delayed ACK (40 ms).
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| LabError::io("grpc-echo serving", std::io::Error::other(e)))
}

/// Wraps a gRPC service so every response ends with the pod trailer. tonic
/// has no API for custom trailers on successful calls, so the trailer is
/// added to the trailers frame on its way out.
#[derive(Clone)]
struct WithTrailer<S> {
    inner: S,
    value: HeaderValue,
}

impl<S: NamedService> NamedService for WithTrailer<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for WithTrailer<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let fut = self.inner.call(req);
        let value = self.value.clone();
        Box::pin(async move {
            let (mut parts, body) = fut.await?.into_parts();
            if parts.headers.contains_key("grpc-status") {
                // A trailers-only response (an error before any message):
                // its headers are the trailers.
                parts.headers.insert(TRAILER, value);
                return Ok(http::Response::from_parts(parts, body));
            }
            let body = Body::new(AddTrailer {
                inner: body,
                value: Some(value),
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A response body that adds the pod trailer to its trailers frame.
struct AddTrailer {
    inner: Body,
    value: Option<HeaderValue>,
}

impl HttpBody for AddTrailer {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<bytes::Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut()
                    && let Some(value) = this.value.take()
                {
                    trailers.insert(TRAILER, value);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
