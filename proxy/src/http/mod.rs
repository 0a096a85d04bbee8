//! HTTP on the data path: the body type, proxy-generated responses, header
//! hygiene, and the upstream connection pool.

pub mod forward;
pub mod guard;
pub mod headers;
pub mod server;
pub mod upgrade;
pub mod upstream;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

use crate::error::Error;

/// Every body the proxy moves: streamed from a peer or generated here.
pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub const KNIT_ERROR_HEADER: &str = "x-knit-error";

/// The response the proxy sends when it cannot serve a request itself: the
/// status follows the error class, `x-knit-error` names the reason, and
/// the body says it in words, so no 503 is opaque.
pub fn error_response(err: &Error) -> Response<Body> {
    let mut resp = Response::new(full_body(format!("{}: {err}\n", err.reason())));
    *resp.status_mut() = err.status();
    let headers = resp.headers_mut();
    headers.insert(KNIT_ERROR_HEADER, HeaderValue::from_static(err.reason()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
