//! Header hygiene between hops: hop-by-hop headers never cross the proxy,
//! and the request is put in the form the upstream HTTP version expects.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version, uri};

use crate::error::Error;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Removes hop-by-hop headers, including those the `Connection` header
/// names. `TE: trailers` survives: gRPC needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their few names costs less
    // than hashing the six for lookups. `Connection` is among them, so the
    // headers it names are only looked for when it is there.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    let keeps_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if keeps_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes every `x-knit-*` header, so a client cannot forge what the mesh
/// says about a request.
pub fn strip_knit_headers(headers: &mut HeaderMap) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-knit-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// Puts a request into the shape `version` needs on the upstream hop,
/// keeping the authority the client asked for: HTTP/1.1 wants origin-form
/// plus `Host`; HTTP/2 wants scheme and authority in the URI.
///
/// `fallback_authority` (the original destination) stands in for the Host
/// header that HTTP/1.0 clients may omit; it is formatted only then.
pub fn prepare_for_upstream<B>(
    req: &mut Request<B>,
    version: Version,
    fallback_authority: Option<SocketAddr>,
) -> Result<(), Error> {
    let authority = match (req.uri().authority(), req.headers().get(header::HOST)) {
        (Some(a), _) => a.clone(),
        (None, Some(host)) => uri::Authority::try_from(host.as_bytes())
            .map_err(|_| Error::BadRequest(format!("invalid Host header {host:?}")))?,
        (None, None) => {
            let fallback = fallback_authority.ok_or_else(|| {
                Error::BadRequest("no Host header and no authority in the request target".into())
            })?;
            uri::Authority::try_from(fallback.to_string()).map_err(|_| {
                Error::BadRequest(format!("no Host header, and {fallback} is no authority"))
            })?
        }
    };
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
    strip_hop_by_hop(req.headers_mut());
    if version == Version::HTTP_2 {
        let scheme = req.uri().scheme().cloned().unwrap_or(uri::Scheme::HTTP);
        *req.uri_mut() = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        req.headers_mut().remove(header::HOST);
    } else {
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Error::BadRequest(format!("invalid authority {authority}")))?;
        req.headers_mut().insert(header::HOST, host);
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = version;
    Ok(())
}

/// Re-shapes a request already in upstream form for `version` over TLS the
/// proxy originates: an HTTP/2 request says `https`.
pub fn prepare_for_tls_upstream<B>(req: &mut Request<B>, version: Version) -> Result<(), Error> {
    // The authority is in the URI or the Host header by now, so no
    // fallback is needed.
    prepare_for_upstream(req, version, None)?;
    if version == Version::HTTP_2 {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(uri::Scheme::HTTPS);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| Error::BadRequest(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FALLBACK: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, 10)),
        80,
    );

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-app"]);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed_and_others_are_untouched() {
        for name in HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x-named"));
            h.insert("x-named", HeaderValue::from_static("1"));
            h.insert("x-app", HeaderValue::from_static("kept"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(&name), "{name}");
            assert!(h.contains_key("x-app"), "{name}");
            // Only `Connection` names other headers.
            assert_eq!(
                h.contains_key("x-named"),
                name != header::CONNECTION,
                "{name}"
            );
        }
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("a"));
        plain.insert("x-app", HeaderValue::from_static("kept"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain, before);
    }

    #[test]
    fn knit_headers_from_clients_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-knit-error", HeaderValue::from_static("forged"));
        h.insert("x-knit-peer", HeaderValue::from_static("forged"));
        h.insert("x-knitting", HeaderValue::from_static("kept"));
        strip_knit_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-knitting"));
    }

    #[test]
    fn upstream_forms_table() {
        // (uri, host header, upstream version) -> (uri, host header)
        let cases = [
            (
                "/a?b=1",
                Some("backend"),
                Version::HTTP_11,
                "/a?b=1",
                Some("backend"),
            ),
            (
                "http://backend:80/a",
                None,
                Version::HTTP_11,
                "/a",
                Some("backend:80"),
            ),
            (
                "/a",
                Some("backend"),
                Version::HTTP_2,
                "http://backend/a",
                None,
            ),
            (
                "http://api.default/x.Y/Z",
                None,
                Version::HTTP_2,
                "http://api.default/x.Y/Z",
                None,
            ),
        ];
        for (uri, host, version, want_uri, want_host) in cases {
            let mut req = Request::builder().uri(uri);
            if let Some(host) = host {
                req = req.header(header::HOST, host);
            }
            let mut req = req.body(()).expect("request");
            prepare_for_upstream(&mut req, version, Some(FALLBACK)).expect("prepared");
            assert_eq!(req.uri().to_string(), want_uri, "{uri}");
            assert_eq!(
                req.headers()
                    .get(header::HOST)
                    .map(|h| h.to_str().expect("ascii")),
                want_host,
                "{uri}"
            );
            assert_eq!(req.version(), version);
        }
    }

    #[test]
    fn tls_upstream_forms_say_https_on_http2() {
        let mut req = Request::builder()
            .uri("/a?b=1")
            .header(header::HOST, "api.example.com")
            .body(())
            .expect("request");
        prepare_for_upstream(&mut req, Version::HTTP_11, Some(FALLBACK)).expect("shaped");
        prepare_for_tls_upstream(&mut req, Version::HTTP_2).expect("h2");
        assert_eq!(req.uri().to_string(), "https://api.example.com/a?b=1");
        assert!(req.headers().get(header::HOST).is_none());
        prepare_for_tls_upstream(&mut req, Version::HTTP_11).expect("h1");
        assert_eq!(req.uri().to_string(), "/a?b=1");
        assert_eq!(req.headers()[header::HOST], "api.example.com");
    }

    #[test]
    fn request_without_host_uses_the_fallback_or_is_a_bad_request() {
        let mut req = Request::builder()
            .uri("/")
            .version(Version::HTTP_10)
            .body(())
            .expect("request");
        prepare_for_upstream(&mut req, Version::HTTP_11, Some(FALLBACK)).expect("fallback");
        assert_eq!(req.headers()[header::HOST], "198.19.0.10:80");

        let mut req = Request::builder().uri("/").body(()).expect("request");
        let err = prepare_for_upstream(&mut req, Version::HTTP_11, None).expect_err("bad");
        assert_eq!(err.reason(), "bad_request");
    }
}
