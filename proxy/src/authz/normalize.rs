//! Request normalization: one spelling per resource, so a policy written
//! for `/admin` cannot be walked around with `//admin` or `/%61dmin`, and
//! the app is handed exactly the request the decision was made on.
//!
//! This is Knit's documented policy for every HTTP request that reaches a
//! workload through its proxy (the mesh port and the inbound port):
//!
//! **Rejected** with 400 `bad_request`:
//! - a fragment (`#`) in the request target. HTTP/1.1 request lines are
//!   checked byte for byte by the head guard; over HTTP/2 the parser drops
//!   a fragment from `:path` before the proxy sees it, so it can neither
//!   reach the app nor the decision;
//! - invalid percent-encoding: `%` not followed by two hex digits (`%zz`,
//!   a truncated `%4`);
//! - NUL or another ASCII control character, literal or after decoding
//!   (`%00`, `%0A`, `%7F`);
//! - a byte outside ASCII (HTTP/1.1 never lets one through either);
//! - an origin-form path that does not start with `/`. Exempt from every
//!   path rule: CONNECT (authority-form) and OPTIONS `*` (asterisk-form).
//!
//! **Rewritten**, in this order:
//! 1. Percent-encoded unreserved characters (ALPHA DIGIT `-` `.` `_` `~`)
//!    are decoded; every other escape keeps its byte with upper-case hex
//!    (`%2a` becomes `%2A`, `%25` stays `%25`: nothing is decoded twice).
//! 2. `%2F` and `%5C` (any case) and a literal `\` become `/`: servers and
//!    frameworks disagree on whether they separate segments, so they do.
//! 3. Runs of `/` merge into one.
//! 4. Dot segments are removed (RFC 3986 §5.2.4), including those that
//!    decoding revealed (`/%2e%2e/`); `..` above the root stays at the root.
//!    A path ending in a dot segment keeps its trailing `/` (`/a/b/..` is
//!    `/a/`).
//!
//! **Kept as sent**:
//! - the query string, byte for byte. Path rules never see it;
//! - the case of the path (RFC 3986 §6.2.2.1): `/ADMIN` is a different
//!   resource from `/admin`, is not matched by a rule for `/admin`, and is
//!   forwarded as `/ADMIN`;
//! - extension methods, matched case-sensitively. A standard method (GET
//!   HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH) in another case is
//!   upper-cased.
//!
//! Hosts are not rewritten; they are matched case-insensitively, without
//! a trailing dot, against the authority as sent and against it without
//! its port (see [`split_authority`]).
//!
//! Path patterns in policies go through the same escape rules (steps 1-2),
//! and exact ones through all four, so a rule means what a request means.
//!
//! The request forwarded to the app carries the normalized method and
//! path. An already normal path (the common case) is recognised in one
//! pass without allocating.

use std::borrow::Cow;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Method, Request, Uri};

use crate::error::Error;

/// The methods RFC 9110 and RFC 5789 define; these are upper-cased.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// Normalizes the method and path of `req` in place (the query is kept).
/// The URI is rebuilt only when the path changes.
pub fn normalize_request<B>(req: &mut Request<B>) -> Result<(), Error> {
    if let Some(method) = normalize_method(req.method()) {
        *req.method_mut() = method;
    }
    if is_exempt_from_path_rules(req.method(), req.uri()) {
        return Ok(());
    }
    let path = match normalize_path(req.uri().path())? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(path_and_query)
            .map_err(|_| bad("normalized path is not a valid request target"))?,
    );
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| bad("normalized URI is not a valid request target"))?;
    Ok(())
}

/// CONNECT (authority-form) and OPTIONS `*` (asterisk-form) have no path
/// to normalize.
fn is_exempt_from_path_rules(method: &Method, uri: &Uri) -> bool {
    *method == Method::CONNECT || (*method == Method::OPTIONS && uri.path() == "*")
}

/// The standard method `method` spells in another case, if it does.
pub fn normalize_method(method: &Method) -> Option<Method> {
    if STANDARD_METHODS.contains(method) {
        return None;
    }
    let name = method.as_str();
    STANDARD_METHODS
        .iter()
        .find(|standard| standard.as_str().eq_ignore_ascii_case(name))
        .cloned()
}

/// The normal form of an origin-form path (no query), borrowed when the
/// path is already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, Error> {
    normal_path(path).map_err(Error::BadRequest)
}

fn normal_path(path: &str) -> Result<Cow<'_, str>, String> {
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err("request path does not start with '/'".into());
    }
    let decoded = canonical_escapes(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// A path pattern of a policy in the form requests are compared in:
/// escapes as in steps 1-2 always; exact paths (`exact`) fully normalized.
pub fn normalize_path_pattern(pattern: String, exact: bool) -> Result<String, String> {
    let normal = if exact && pattern.starts_with('/') {
        normal_path(&pattern)
    } else if is_normal_escapes(&pattern) {
        Ok(Cow::Borrowed(pattern.as_str()))
    } else {
        canonical_escapes(&pattern).map(Cow::Owned)
    };
    match normal {
        Ok(Cow::Borrowed(_)) => Ok(pattern),
        Ok(Cow::Owned(normal)) => Ok(normal),
        Err(reason) => Err(format!("{pattern:?}: {reason}")),
    }
}

/// How a percent-encoded byte is written in normal form.
enum Escaped {
    /// Decoded to this character.
    Literal(char),
    /// Kept as an escape (upper-case hex).
    Kept,
}

fn normal_form_of_escape(byte: u8) -> Result<Escaped, String> {
    match byte {
        0x00..=0x1f | 0x7f => Err("NUL or control character in the request path".into()),
        b'/' | b'\\' => Ok(Escaped::Literal('/')),
        b if is_unreserved(b) => Ok(Escaped::Literal(char::from(b))),
        _ => Ok(Escaped::Kept),
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The byte `%XY` at `bytes[i]` encodes, if `X` and `Y` are hex digits.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let high = hex_value(*bytes.get(i + 1)?)?;
    let low = hex_value(*bytes.get(i + 2)?)?;
    Some(high << 4 | low)
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Steps 1 and 2 (escapes and backslashes), and every rejection.
fn canonical_escapes(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let decoded = escape_at(bytes, i)
                    .ok_or_else(|| "invalid percent-encoding in the request path".to_owned())?;
                match normal_form_of_escape(decoded)? {
                    Escaped::Literal(c) => out.push(c),
                    Escaped::Kept => {
                        out.push('%');
                        out.push(char::from(UPPER_HEX[usize::from(decoded >> 4)]));
                        out.push(char::from(UPPER_HEX[usize::from(decoded & 0x0f)]));
                    }
                }
                i += 3;
                continue;
            }
            b'\\' => out.push('/'),
            b'#' => return Err("fragment in the request target".into()),
            0x00..=0x1f | 0x7f => return Err("NUL or control character in the request path".into()),
            0x80..=0xff => return Err("byte outside ASCII in the request path".into()),
            _ => out.push(char::from(byte)),
        }
        i += 1;
    }
    Ok(out)
}

/// Steps 3 and 4 on a path that starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segments = path.split('/').skip(1).peekable();
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        match segment {
            "" | "." => trailing_slash = is_last,
            ".." => {
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
                trailing_slash = is_last;
            }
            name => {
                out.push('/');
                out.push_str(name);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether `path` is already in normal form: one pass, no allocation.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'/' {
            let segment = &bytes[i + 1..];
            let end = segment
                .iter()
                .position(|&b| b == b'/')
                .unwrap_or(segment.len());
            match &segment[..end] {
                // An empty segment is normal only as the last one (`/a/`).
                b"" if end < segment.len() => return false,
                b"." | b".." => return false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match escape_len_if_normal(bytes, i) {
            Some(len) => i += len,
            None => return false,
        }
    }
    true
}

/// Whether a pattern's escapes are in normal form (steps 1-2 change nothing).
fn is_normal_escapes(pattern: &str) -> bool {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match escape_len_if_normal(bytes, i) {
            Some(len) => i += len,
            None => return false,
        }
    }
    true
}

/// The length of the character or escape at `bytes[i]` when it is in
/// normal form (the slash aside); `None` when it is not.
fn escape_len_if_normal(bytes: &[u8], i: usize) -> Option<usize> {
    match *bytes.get(i)? {
        b'%' => {
            let upper_hex = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
            if !bytes.get(i + 1..i + 3)?.iter().all(upper_hex) {
                return None;
            }
            match normal_form_of_escape(escape_at(bytes, i)?) {
                Ok(Escaped::Kept) => Some(3),
                _ => None,
            }
        }
        b'\\' | b'#' | 0x00..=0x1f | 0x7f..=0xff => None,
        _ => Some(1),
    }
}

/// The authority a request names: the URI's (HTTP/2, absolute-form), else
/// the Host header; empty when there is neither.
pub fn request_authority<B>(req: &Request<B>) -> &str {
    match req.uri().authority() {
        Some(authority) => authority.as_str(),
        None => req
            .headers()
            .get(HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or(""),
    }
}

/// The two spellings a host pattern is matched against: the authority as
/// sent and the host alone, both without userinfo and without a trailing
/// dot on the host. Borrowed unless a trailing dot sits before a port.
pub fn split_authority(authority: &str) -> (Cow<'_, str>, &str) {
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || host.ends_with(']')) =>
        {
            (host, Some(port))
        }
        _ => (authority, None),
    };
    let bare = host.strip_suffix('.').unwrap_or(host);
    let full = match port {
        None => Cow::Borrowed(bare),
        Some(_) if bare.len() == host.len() => Cow::Borrowed(authority),
        Some(port) => Cow::Owned(format!("{bare}:{port}")),
    };
    (full, bare)
}

fn bad(reason: &str) -> Error {
    Error::BadRequest(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (path as sent, normal form, or the error's words)
    const PATHS: &[(&str, Result<&str, &str>)] = &[
        ("/admin", Ok("/admin")),
        ("/", Ok("/")),
        ("/a/b/", Ok("/a/b/")),
        ("/a/../admin", Ok("/admin")),
        ("//admin", Ok("/admin")),
        ("///admin//x//", Ok("/admin/x/")),
        ("/%2Fadmin", Ok("/admin")),
        ("/%2fadmin", Ok("/admin")),
        ("/%5Cadmin", Ok("/admin")),
        ("/%5cadmin", Ok("/admin")),
        ("/\\admin", Ok("/admin")),
        ("/a\\..\\admin", Ok("/admin")),
        ("/%2e%2e/admin", Ok("/admin")),
        ("/%2E%2E/admin", Ok("/admin")),
        ("/.%2e/admin", Ok("/admin")),
        ("/x/%2e%2e%2fadmin", Ok("/admin")),
        ("/%61dmin", Ok("/admin")),
        ("/a/./b", Ok("/a/b")),
        ("/a/b/.", Ok("/a/b/")),
        ("/a/b/..", Ok("/a/")),
        ("/..", Ok("/")),
        ("/../../admin", Ok("/admin")),
        ("/a/...", Ok("/a/...")),
        ("/a/.b/..c", Ok("/a/.b/..c")),
        ("/ADMIN", Ok("/ADMIN")),
        ("/%41DMIN", Ok("/ADMIN")),
        ("/a%20b", Ok("/a%20b")),
        ("/a%2ab", Ok("/a%2Ab")),
        ("/a%25b", Ok("/a%25b")),
        ("/a%252fb", Ok("/a%252fb")),
        ("/%7e%2d%5f", Ok("/~-_")),
        ("/%C3%A9", Ok("/%C3%A9")),
        ("/%c3%a9", Ok("/%C3%A9")),
        ("/admin#x", Err("fragment")),
        ("/%zz", Err("invalid percent-encoding")),
        ("/%4", Err("invalid percent-encoding")),
        ("/a%", Err("invalid percent-encoding")),
        ("/%00", Err("control character")),
        ("/a%0Ab", Err("control character")),
        ("/a%7f", Err("control character")),
        ("/a\u{1}", Err("control character")),
        ("/caf\u{e9}", Err("outside ASCII")),
        ("admin", Err("does not start with '/'")),
        ("*", Err("does not start with '/'")),
        ("", Err("does not start with '/'")),
    ];

    #[test]
    fn path_normalization_table() {
        for (path, want) in PATHS {
            match (normalize_path(path), want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, *want, "{path:?}");
                    let again = normalize_path(&got).expect("normal form stays valid");
                    assert!(
                        matches!(again, Cow::Borrowed(_)),
                        "{path:?}: its normal form {got:?} is recognised as normal"
                    );
                }
                (Err(Error::BadRequest(got)), Err(want)) => {
                    assert!(got.contains(want), "{path:?}: {got:?} should say {want:?}")
                }
                (got, want) => panic!("{path:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/admin",
            "/a/b/",
            "/a%20b",
            "/a/.b",
            "/~user/x-y_z.html",
        ] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path:?}"
            );
        }
    }

    fn normalized(method: &str, target: &str) -> Result<(String, String), String> {
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .body(())
            .expect("request");
        match normalize_request(&mut req) {
            Ok(()) => Ok((req.method().to_string(), req.uri().to_string())),
            Err(e) => Err(e.reason().to_owned()),
        }
    }

    /// (method, target) forwarded, or the error's reason.
    type Forwarded = Result<(&'static str, &'static str), &'static str>;

    #[test]
    fn request_normalization_table() {
        let cases: &[(&str, &str, Forwarded)] = &[
            (
                "GET",
                "/a/../admin?x=%2e%2e/&y=A#",
                Ok(("GET", "/admin?x=%2e%2e/&y=A")),
            ),
            (
                "GET",
                "//admin?q=//a/../b",
                Ok(("GET", "/admin?q=//a/../b")),
            ),
            ("GET", "/a?", Ok(("GET", "/a?"))),
            ("GET", "/x/%2e%2e?", Ok(("GET", "/?"))),
            ("get", "/admin", Ok(("GET", "/admin"))),
            ("Post", "/admin", Ok(("POST", "/admin"))),
            ("patch", "/admin", Ok(("PATCH", "/admin"))),
            ("PURGE", "/admin", Ok(("PURGE", "/admin"))),
            ("purge", "/admin", Ok(("purge", "/admin"))),
            ("OPTIONS", "*", Ok(("OPTIONS", "*"))),
            ("options", "*", Ok(("OPTIONS", "*"))),
            ("GET", "*", Err("bad_request")),
            (
                "CONNECT",
                "example.com:443",
                Ok(("CONNECT", "example.com:443")),
            ),
            (
                "GET",
                "http://Example.COM//a/./b?c",
                Ok(("GET", "http://Example.COM/a/b?c")),
            ),
            ("GET", "/%zz?x", Err("bad_request")),
            ("GET", "/a?%zz", Ok(("GET", "/a?%zz"))),
        ];
        for (method, target, want) in cases {
            let want = want.map(|(m, t)| (m.to_owned(), t.to_owned()));
            assert_eq!(
                normalized(method, target),
                want.map_err(str::to_owned),
                "{method} {target}"
            );
        }
    }

    #[test]
    fn path_patterns_are_compared_in_normal_form() {
        // (pattern text, exact) -> canonical text or error words
        let cases: &[(&str, bool, Result<&str, &str>)] = &[
            ("/admin", true, Ok("/admin")),
            ("//admin/./x", true, Ok("/admin/x")),
            ("/%61dmin", true, Ok("/admin")),
            ("/api/", false, Ok("/api/")),
            ("/a%2fb/", false, Ok("/a/b/")),
            (".php", false, Ok(".php")),
            ("/a%2a", false, Ok("/a%2A")),
            ("/caf\u{e9}", true, Err("outside ASCII")),
            ("/%zz", false, Err("percent-encoding")),
        ];
        for (pattern, exact, want) in cases {
            match (normalize_path_pattern((*pattern).to_owned(), *exact), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{pattern:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got:?}"),
                (got, want) => panic!("{pattern:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn authority_spellings() {
        // authority -> (as sent without trailing dot, host alone)
        let cases = [
            ("example.com", "example.com", "example.com"),
            ("Example.com:8080", "Example.com:8080", "Example.com"),
            ("example.com.", "example.com", "example.com"),
            ("example.com.:8080", "example.com:8080", "example.com"),
            ("[::1]:8080", "[::1]:8080", "[::1]"),
            ("[::1]", "[::1]", "[::1]"),
            ("user@host:1", "host:1", "host"),
            ("host:", "host:", "host:"),
            ("", "", ""),
        ];
        for (authority, full, host) in cases {
            let (got_full, got_host) = split_authority(authority);
            assert_eq!((got_full.as_ref(), got_host), (full, host), "{authority:?}");
        }
        assert!(matches!(split_authority("a.b:80").0, Cow::Borrowed(_)));
    }

    #[test]
    fn authority_comes_from_the_uri_then_the_host_header() {
        let req = Request::builder()
            .uri("http://a.example:80/x")
            .header(HOST, "b.example")
            .body(())
            .expect("request");
        assert_eq!(request_authority(&req), "a.example:80");
        let req = Request::builder()
            .uri("/x")
            .header(HOST, "b.example")
            .body(())
            .expect("request");
        assert_eq!(request_authority(&req), "b.example");
        let req = Request::builder().uri("/x").body(()).expect("request");
        assert_eq!(request_authority(&req), "");
    }
}
