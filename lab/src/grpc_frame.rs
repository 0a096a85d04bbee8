//! `knit-lab client --grpc-unary N`: the Echo service's unary call as plain
//! HTTP/2 requests, so the open-loop load engine can drive gRPC. The
//! request is one length-prefixed `EchoRequest` of N bytes; an answer
//! passes only with `grpc-status: 0` and a reply that echoes all N bytes.

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use prost::Message;

use crate::grpc::pb::{EchoReply, EchoRequest};
use crate::report::TransferCheck;

/// The unary method's path.
pub const UNARY_PATH: &str = "/knit.lab.v1.Echo/Unary";

/// The request body: an uncompressed gRPC message carrying `n` bytes.
pub fn request_body(n: usize) -> Bytes {
    let msg = EchoRequest {
        message: "x".repeat(n),
    }
    .encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    out.put_slice(&msg);
    out.freeze()
}

/// Checks one answer: the status (from the trailers, or the headers of a
/// trailers-only answer) and the echoed message.
pub fn check(
    expected_bytes: u64,
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
    body: &[u8],
) -> TransferCheck {
    let mut check = TransferCheck {
        direction: "grpc-unary".to_string(),
        expected_bytes,
        ..TransferCheck::default()
    };
    check.problem = match reply_problem(expected_bytes, headers, trailers, body) {
        Ok(bytes) => {
            check.bytes = bytes;
            None
        }
        Err(problem) => Some(problem),
    };
    check
}

fn reply_problem(
    expected_bytes: u64,
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<u64, String> {
    let status = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .ok_or("no grpc-status in the trailers or headers")?;
    if status.as_bytes() != b"0" {
        let message = trailers
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| headers.get("grpc-message"))
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!(
            "grpc-status {}: {message}",
            String::from_utf8_lossy(status.as_bytes())
        ));
    }
    let (flag, rest) = body.split_first().ok_or("an empty reply body")?;
    if *flag != 0 {
        return Err(format!(
            "compression flag {flag}: the request asked for none"
        ));
    }
    let len: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("a reply shorter than its 5-byte prefix")?;
    let len = u32::from_be_bytes(len) as usize;
    let msg = &rest[4..];
    if msg.len() != len {
        return Err(format!(
            "the prefix announces {len} bytes, {} arrived (one message expected)",
            msg.len()
        ));
    }
    let reply = EchoReply::decode(msg).map_err(|e| format!("decoding EchoReply: {e}"))?;
    let echoed = reply.message.len() as u64;
    if echoed != expected_bytes {
        return Err(format!("echoed {echoed} bytes, sent {expected_bytes}"));
    }
    Ok(echoed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn reply(n: usize) -> Vec<u8> {
        let msg = EchoReply {
            message: "x".repeat(n),
            pod: "p".to_string(),
            seq: 0,
        }
        .encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        out
    }

    fn status(code: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_str(code).unwrap());
        h
    }

    #[test]
    fn request_is_one_prefixed_message() {
        let body = request_body(1000);
        assert_eq!(body[0], 0);
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, body.len() - 5);
        let req = EchoRequest::decode(&body[5..]).unwrap();
        assert_eq!(req.message.len(), 1000);
    }

    #[test]
    fn answers_pass_only_when_ok_and_complete() {
        let none = HeaderMap::new();
        let ok = status("0");
        assert!(check(10, &none, Some(&ok), &reply(10)).passed());
        // Trailers-only answers carry the status in the headers.
        assert!(check(10, &ok, None, &reply(10)).passed());
        let cases = [
            (
                check(10, &none, Some(&status("14")), &reply(10)),
                "grpc-status 14",
            ),
            (check(10, &none, None, &reply(10)), "no grpc-status"),
            (check(11, &none, Some(&ok), &reply(10)), "echoed 10 bytes"),
            (check(10, &none, Some(&ok), &reply(10)[..8]), "announces"),
            (check(10, &none, Some(&ok), &[]), "empty"),
            (check(10, &none, Some(&ok), &[1, 0, 0, 0, 0]), "compression"),
        ];
        for (c, want) in cases {
            let problem = c.problem.clone().unwrap_or_default();
            assert!(problem.contains(want), "{problem:?} should say {want:?}");
        }
    }
}
