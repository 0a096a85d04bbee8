//! Protocol detection: peek at the client's first bytes, never consume them.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    /// Bytes arrived that are none of the above.
    Opaque,
    /// Nothing decisive arrived in time (server-speaks-first protocols).
    Timeout,
    /// The client closed before sending anything.
    Closed,
}

/// Ports whose protocols the server speaks first (MySQL, PostgreSQL,
/// Redis, SMTP, submission, memcached, MongoDB, NATS...). Sniffing them would only
/// delay the greeting by the detection timeout, so they are opaque unless
/// a Service declares otherwise.
pub const SERVER_FIRST_PORTS: [u16; 9] = [25, 587, 3306, 5432, 6379, 11211, 27017, 4222, 9042];

/// Whether a connection to `port` with this declared protocol skips
/// sniffing and is carried as opaque TCP.
pub fn is_server_first(port: u16) -> bool {
    SERVER_FIRST_PORTS.contains(&port)
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Decides from a prefix of the stream, or `None` when more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == 0x16 {
        // TLS handshake record; version major byte 3.
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Opaque),
        };
    }
    let mut undecided = false;
    for candidate in std::iter::once(H2_PREFACE).chain(METHODS) {
        let n = buf.len().min(candidate.len());
        if buf[..n] == candidate[..n] {
            if n == candidate.len() {
                return Some(if candidate == H2_PREFACE {
                    Detected::Http2
                } else {
                    Detected::Http1
                });
            }
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(Detected::Opaque)
    }
}

/// Peeks until `classify` decides or `timeout` passes.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut last_len = 0;
    let mut backoff = Duration::from_micros(200);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Ok(Detected::Timeout),
            Ok(Ok(0)) => return Ok(Detected::Closed),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        if let Some(d) = classify(&buf[..n]) {
            return Ok(d);
        }
        // A partial prefix: peek returns at once while the same bytes sit in
        // the buffer, so back off briefly instead of spinning.
        if n == last_len {
            if Instant::now() + backoff >= deadline {
                return Ok(Detected::Timeout);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
        last_len = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn classify_table() {
        let cases: [(&[u8], Option<Detected>); 11] = [
            (b"", None),
            (b"G", None),
            (b"GET / HTTP/1.1\r\n", Some(Detected::Http1)),
            (b"POST /x", Some(Detected::Http1)),
            (b"PRI * HTTP/2.0\r\n", None),
            (H2_PREFACE, Some(Detected::Http2)),
            (b"P", None),
            (b"\x16\x03\x01\x02\x00", Some(Detected::Tls)),
            (b"\x16", None),
            (b"SSH-2.0-OpenSSH", Some(Detected::Opaque)),
            (b"GEX", Some(Detected::Opaque)),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn detects_split_request_line_and_leaves_bytes_unread() {
        let (mut client, server) = pair().await;
        client.write_all(b"GE").await.expect("write");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(b"T / HTTP/1.1\r\n").await.expect("write");
            client
        });
        let got = detect(&server, Duration::from_secs(5))
            .await
            .expect("detect");
        assert_eq!(got, Detected::Http1);
        let _client = writer.await.expect("join");
        let mut buf = [0u8; 3];
        let n = server.peek(&mut buf).await.expect("peek");
        assert_eq!(&buf[..n], b"GET", "detection must not consume bytes");
    }

    #[tokio::test]
    async fn silent_client_times_out_and_closed_client_is_closed() {
        let (_client, server) = pair().await;
        let got = detect(&server, Duration::from_millis(50))
            .await
            .expect("detect");
        assert_eq!(got, Detected::Timeout);

        let (client, server) = pair().await;
        drop(client);
        let got = detect(&server, Duration::from_secs(5))
            .await
            .expect("detect");
        assert_eq!(got, Detected::Closed);
    }
}
