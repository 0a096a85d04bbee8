//! SIMPLE and MUTUAL: the proxy originates TLS to an endpoint without a
//! Knit proxy, for opaque TCP and for HTTP, and refuses servers it cannot
//! verify.

use std::time::Duration;

use http::StatusCode;
use knit_proto::v1;
use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{
    App, Files, HOSTNAME, client_tls, context, get, get_many, leaf, new_ca, outbound_proxy,
    response, server_config, server_leaf, tls_server, uri,
};

fn simple(ca_file: &str) -> v1::ClientTls {
    v1::ClientTls {
        ca_certificates: ca_file.to_owned(),
        ..client_tls(v1::ClientTlsMode::Simple)
    }
}

/// Sends a line through the proxy to a greeter; returns the greeting and
/// the echo (empty when the connection closed first).
async fn greet(proxy: std::net::SocketAddr) -> (String, String) {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let read_line =
        async |lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>| {
            tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("an answer in time")
                .ok()
                .flatten()
                .unwrap_or_default()
        };
    let greeting = read_line(&mut lines).await;
    if greeting.is_empty() {
        return (greeting, String::new());
    }
    write.write_all(b"ping\n").await.expect("write");
    let echo = read_line(&mut lines).await;
    write.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let _ = lines.into_inner().read_to_end(&mut rest).await;
    (greeting, echo)
}

#[tokio::test]
async fn simple_carries_opaque_tcp_verified_with_the_service_hostname_as_sni() {
    let ca = new_ca("Upstream CA");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = tls_server(server_config(&server_leaf(&ca), &[], None), App::Greeter).await;
    let ctx = context(&response(
        server.addr,
        v1::Protocol::Tcp,
        Some(simple(&ca_file)),
    ));
    let proxy = outbound_proxy(ctx.clone()).await;

    let (greeting, echo) = greet(proxy).await;
    assert_eq!(greeting, format!("sni={HOSTNAME} client=no alpn=none"));
    assert_eq!(echo, "ping");
    let stats = ctx.stats_map();
    assert_eq!(
        stats["upstream.direct.tls_connections_opened"], 1,
        "{stats:?}"
    );
    // Originated TLS is not mesh mutual TLS, and the metrics say so.
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("destination_workload=\"api-1\"")
            && metrics.contains("connection_security_policy=\"none\"")
            && !metrics.contains("mutual_tls"),
        "{metrics}"
    );
}

#[tokio::test]
async fn http_keeps_one_multiplexed_connection_when_the_server_chooses_h2() {
    let ca = new_ca("Upstream CA");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    let config = server_config(&server_leaf(&ca), &[b"h2", b"http/1.1"], None);
    let server = tls_server(config, App::Http).await;
    let ctx = context(&response(
        server.addr,
        v1::Protocol::Http,
        Some(simple(&ca_file)),
    ));
    let proxy = outbound_proxy(ctx.clone()).await;

    let clients: Vec<_> = (0..3).map(|_| tokio::spawn(get_many(proxy, 10))).collect();
    for client in clients {
        for reply in client.await.expect("client") {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            assert!(
                reply.body.starts_with("HTTP/2.0 https://api/r")
                    && reply
                        .body
                        .ends_with(&format!("sni={HOSTNAME} client=no alpn=h2")),
                "{}",
                reply.body
            );
        }
    }
    assert_eq!(server.accepted(), 1, "30 requests share one connection");
    assert_eq!(ctx.stats_map()["upstream.direct.tls_connections_opened"], 1);
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("connection_security_policy=\"none\",response_code=\"200\"} 30"),
        "{metrics}"
    );
}

#[tokio::test]
async fn http_to_a_server_that_chooses_http1_reuses_pooled_connections() {
    let ca = new_ca("Upstream CA");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    let config = server_config(&server_leaf(&ca), &[b"http/1.1"], None);
    let server = tls_server(config, App::Http).await;
    let ctx = context(&response(
        server.addr,
        v1::Protocol::Http,
        Some(simple(&ca_file)),
    ));
    let proxy = outbound_proxy(ctx.clone()).await;

    for reply in get_many(proxy, 10).await {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(
            reply.body.starts_with("HTTP/1.1 /r")
                && reply.body.ends_with("client=no alpn=http/1.1"),
            "{}",
            reply.body
        );
    }
    assert!(
        server.accepted() < 10,
        "sequential requests reuse idle connections: {} opened",
        server.accepted()
    );
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused_with_a_reason() {
    let ca = new_ca("Upstream CA");
    let stranger = new_ca("Some other CA");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &stranger.pem);
    let http = tls_server(
        server_config(&server_leaf(&ca), &[b"h2", b"http/1.1"], None),
        App::Http,
    )
    .await;
    let ctx = context(&response(
        http.addr,
        v1::Protocol::Http,
        Some(simple(&ca_file)),
    ));
    let reply = get(outbound_proxy(ctx.clone()).await).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.headers["x-knit-error"], "upstream_tls_failed");
    assert!(reply.body.contains("(unknown_ca)"), "{}", reply.body);
    assert!(ctx.stats_map()["outbound.errors.upstream_tls_failed"] >= 1);

    // Opaque TCP: the connection closes before a byte of the server's.
    let greeter = tls_server(server_config(&server_leaf(&ca), &[], None), App::Greeter).await;
    let ctx = context(&response(
        greeter.addr,
        v1::Protocol::Tcp,
        Some(simple(&ca_file)),
    ));
    let (greeting, _) = greet(outbound_proxy(ctx.clone()).await).await;
    assert_eq!(greeting, "");
    assert!(ctx.stats_map()["outbound.errors.upstream_tls_failed"] >= 1);
}

#[tokio::test]
async fn names_are_checked_against_sni_or_subject_alt_names() {
    let ca = new_ca("Upstream CA");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    let config = server_config(&server_leaf(&ca), &[b"h2", b"http/1.1"], None);
    let server = tls_server(config, App::Http).await;
    let with = |sni: &str, sans: &[&str]| v1::ClientTls {
        sni: sni.to_owned(),
        subject_alt_names: sans.iter().map(|s| (*s).to_owned()).collect(),
        ..simple(&ca_file)
    };
    // (settings, expected: Ok(SNI the server saw) or Err(cause))
    let table: [(v1::ClientTls, Result<&str, &str>); 6] = [
        (with("api.example.test", &[]), Ok("api.example.test")),
        (
            with("elsewhere.example.test", &[]),
            Err("server_name_mismatch"),
        ),
        (with("", &["api.example.test"]), Ok(HOSTNAME)),
        (
            with("elsewhere.example.test", &["spiffe://example.test/api"]),
            Ok("elsewhere.example.test"),
        ),
        (
            with("", &["other.example.test", "10.1.2.3"]),
            Err("san_mismatch"),
        ),
        (
            with("", &["spiffe://example.test/other"]),
            Err("san_mismatch"),
        ),
    ];
    for (tls, expected) in table {
        let what = format!("sni {:?} sans {:?}", tls.sni, tls.subject_alt_names);
        let ctx = context(&response(server.addr, v1::Protocol::Http, Some(tls)));
        let reply = get(outbound_proxy(ctx).await).await;
        match expected {
            Ok(sni) => {
                assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.body);
                assert!(
                    reply.body.contains(&format!("sni={sni} ")),
                    "{what}: {}",
                    reply.body
                );
            }
            Err(cause) => {
                assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
                assert_eq!(reply.headers["x-knit-error"], "upstream_tls_failed");
                assert!(
                    reply.body.contains(&format!("({cause})")),
                    "{what}: {}",
                    reply.body
                );
            }
        }
    }
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_a_server_requires() {
    let ca = new_ca("Upstream CA");
    let client_ca = new_ca("Client CA");
    let client = leaf(
        &client_ca,
        vec![uri("spiffe://example.test/frontend")],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    let cert_file = files.write("client.pem", &client.cert_pem);
    let key_file = files.write("client.key", &client.key_pem);
    let config = server_config(&server_leaf(&ca), &[b"h2", b"http/1.1"], Some(&client_ca));
    let server = tls_server(config, App::Http).await;

    let mutual = v1::ClientTls {
        ca_certificates: ca_file.clone(),
        client_certificate: cert_file,
        private_key: key_file,
        ..client_tls(v1::ClientTlsMode::Mutual)
    };
    let ctx = context(&response(server.addr, v1::Protocol::Http, Some(mutual)));
    let reply = get(outbound_proxy(ctx).await).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.contains("client=yes alpn=h2"), "{}", reply.body);

    // Without a client certificate the server refuses; with TLS 1.3 it says
    // so after the client's side of the handshake, so the request fails.
    let ctx = context(&response(
        server.addr,
        v1::Protocol::Http,
        Some(simple(&ca_file)),
    ));
    let reply = get(outbound_proxy(ctx).await).await;
    assert!(
        reply.status.is_server_error() && reply.headers.contains_key("x-knit-error"),
        "{} {}",
        reply.status,
        reply.body
    );
}
