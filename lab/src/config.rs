//! The files the lab writes: knitd's YAML objects (one per file) and each
//! pod's `/etc/netns/<ns>/hosts`. Everything is written atomically (temp file
//! in the same filesystem, then rename) so knitd's 250 ms poll and a pod's
//! resolver never see half a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::error::{LabError, Result};
use crate::spec::{ServicePort, TargetPort};

/// A YAML double-quoted scalar; quoting every string keeps values like `on`,
/// `1e3` or `null` strings.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn string_map(out: &mut String, indent: &str, key: &str, map: &BTreeMap<String, String>) {
    if map.is_empty() {
        let _ = writeln!(out, "{indent}{key}: {{}}");
        return;
    }
    let _ = writeln!(out, "{indent}{key}:");
    for (k, v) in map {
        let _ = writeln!(out, "{indent}  {}: {}", quote(k), quote(v));
    }
}

/// A core v1 Service as knitd's file source reads it. With `vip6` it is
/// dual-stack: both addresses in `clusterIPs`, IPv4 first (the primary
/// family), as Kubernetes writes a `PreferDualStack` Service.
pub fn service_yaml(
    name: &str,
    namespace: &str,
    vip: Ipv4Addr,
    vip6: Option<Ipv6Addr>,
    ports: &[ServicePort],
    selector: &BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    out.push_str("apiVersion: v1\nkind: Service\nmetadata:\n");
    let _ = writeln!(out, "  name: {}", quote(name));
    let _ = writeln!(out, "  namespace: {}", quote(namespace));
    out.push_str("spec:\n");
    let _ = writeln!(out, "  clusterIP: {}", quote(&vip.to_string()));
    if let Some(vip6) = vip6 {
        let _ = writeln!(
            out,
            "  clusterIPs: [{}, {}]",
            quote(&vip.to_string()),
            quote(&vip6.to_string())
        );
        out.push_str("  ipFamilies: [\"IPv4\", \"IPv6\"]\n");
        out.push_str("  ipFamilyPolicy: \"PreferDualStack\"\n");
    }
    string_map(&mut out, "  ", "selector", selector);
    out.push_str("  ports:\n");
    for p in ports {
        let _ = writeln!(out, "    - name: {}", quote(&p.name));
        let _ = writeln!(out, "      port: {}", p.port);
        // A number stays a YAML integer, a name a string (IntOrString).
        match &p.target_port {
            TargetPort::Number(n) => {
                let _ = writeln!(out, "      targetPort: {n}");
            }
            TargetPort::Name(name) => {
                let _ = writeln!(out, "      targetPort: {}", quote(name));
            }
        }
        out.push_str("      protocol: TCP\n");
        if let Some(proto) = &p.app_protocol {
            let _ = writeln!(out, "      appProtocol: {}", quote(proto));
        }
    }
    out
}

/// What runs beside a workload, as its WorkloadEntry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryProxy<'a> {
    /// No Knit proxy: peers reach the pod directly.
    None,
    /// A Knit proxy, with the SHA-256 (hex) of its CA token when it has
    /// one; knitd signs its certificate only for that token.
    Knit { token_sha256: Option<&'a str> },
}

/// A `mesh.knit.dev/v1alpha1` WorkloadEntry standing in for a pod.
pub fn workload_entry_yaml(
    name: &str,
    namespace: &str,
    address: Ipv4Addr,
    labels: &BTreeMap<String, String>,
    service_account: &str,
    ports: &BTreeMap<String, u16>,
    proxy: EntryProxy<'_>,
) -> String {
    let mut out = String::new();
    out.push_str("apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n");
    let _ = writeln!(out, "  name: {}", quote(name));
    let _ = writeln!(out, "  namespace: {}", quote(namespace));
    match proxy {
        // Peers reach a pod without a Knit proxy directly, not through the
        // mesh port.
        EntryProxy::None => out.push_str("  annotations:\n    \"mesh.knit.dev/proxy\": \"none\"\n"),
        EntryProxy::Knit {
            token_sha256: Some(digest),
        } => {
            out.push_str("  annotations:\n");
            let _ = writeln!(
                out,
                "    {}: {}",
                quote("mesh.knit.dev/token-sha256"),
                quote(digest)
            );
        }
        EntryProxy::Knit { token_sha256: None } => {}
    }
    out.push_str("spec:\n");
    let _ = writeln!(out, "  address: {}", quote(&address.to_string()));
    string_map(&mut out, "  ", "labels", labels);
    let _ = writeln!(out, "  serviceAccount: {}", quote(service_account));
    if ports.is_empty() {
        out.push_str("  ports: {}\n");
    } else {
        out.push_str("  ports:\n");
        for (k, v) in ports {
            let _ = writeln!(out, "    {}: {v}", quote(k));
        }
    }
    out
}

/// A service as it appears in pods' hosts files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostsService {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub vip6: Option<Ipv6Addr>,
}

/// `/etc/hosts` for a pod: localhost, the pod's own name, and every service
/// under its cluster DNS names, IPv6 VIPs on a line of their own after the
/// IPv4 one (so `getent ahosts` lists both). The bare service name is only
/// listed for services in the pod's own namespace, as cluster DNS search
/// paths would.
pub(crate) fn hosts_file(
    pod_name: &str,
    pod_namespace: &str,
    pod_ip: Ipv4Addr,
    pod_ip6: Option<Ipv6Addr>,
    services: &[HostsService],
) -> String {
    let mut out = String::from("127.0.0.1 localhost\n");
    let _ = writeln!(out, "{pod_ip} {pod_name}");
    if let Some(ip6) = pod_ip6 {
        let _ = writeln!(out, "{ip6} {pod_name}");
    }
    for s in services {
        let (n, ns) = (&s.name, &s.namespace);
        let short = if *ns == pod_namespace {
            format!("{n} ")
        } else {
            String::new()
        };
        let names = format!("{short}{n}.{ns} {n}.{ns}.svc {n}.{ns}.svc.cluster.local");
        let _ = writeln!(out, "{} {names}", s.vip);
        if let Some(vip6) = s.vip6 {
            let _ = writeln!(out, "{vip6} {names}");
        }
    }
    out
}

/// A pod's `/etc/resolv.conf`: names resolve through the hosts file only. An
/// unknown name then fails at once (nothing answers on the pod's loopback)
/// instead of waiting on the host's nameserver, which a pod cannot reach.
pub(crate) const RESOLV_CONF: &str = "# knit-lab: pods resolve names through /etc/hosts only\n\
nameserver 127.0.0.1\n\
options timeout:1 attempts:1\n";

/// A config file name: a plain file name, no directories, not hidden (the
/// lab's temp files are hidden so knitd ignores them).
pub(crate) fn validate_file_name(file: &str) -> Result<()> {
    let ok = !file.is_empty()
        && !file.starts_with('.')
        && !file.contains('/')
        && !file.contains('\0')
        && file.len() <= 200;
    if ok {
        Ok(())
    } else {
        Err(LabError::invalid(
            "config file name",
            format!("{file:?} must be a plain, non-hidden file name"),
        ))
    }
}

/// Writes `contents` to `target` via a temp file `tmp` (same filesystem) and a
/// rename, so readers see the old or the new file, never a partial one.
pub(crate) fn write_atomic(tmp: &Path, target: &Path, contents: &str) -> Result<()> {
    let result = (|| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, target)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        LabError::io(format!("writing {}", target.display()), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn service_yaml_is_exact() {
        let ports = [
            ServicePort {
                name: "http".into(),
                port: 80,
                target_port: TargetPort::Number(8080),
                app_protocol: None,
            },
            ServicePort {
                name: "admin".into(),
                port: 9000,
                target_port: TargetPort::Number(9001),
                app_protocol: None,
            },
        ];
        let yaml = service_yaml(
            "backend",
            "default",
            Ipv4Addr::new(198, 19, 0, 10),
            None,
            &ports,
            &map(&[("app", "backend")]),
        );
        let want = r#"apiVersion: v1
kind: Service
metadata:
  name: "backend"
  namespace: "default"
spec:
  clusterIP: "198.19.0.10"
  selector:
    "app": "backend"
  ports:
    - name: "http"
      port: 80
      targetPort: 8080
      protocol: TCP
    - name: "admin"
      port: 9000
      targetPort: 9001
      protocol: TCP
"#;
        assert_eq!(yaml, want);
    }

    #[test]
    fn service_yaml_parses_as_the_kubernetes_shape() {
        let ports = [ServicePort {
            name: "http".into(),
            port: 80,
            target_port: TargetPort::Number(8080),
            app_protocol: None,
        }];
        let yaml = service_yaml(
            "backend",
            "shop",
            Ipv4Addr::new(198, 19, 0, 11),
            None,
            &ports,
            &map(&[]),
        );
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Service");
        assert_eq!(v["metadata"]["name"], "backend");
        assert_eq!(v["metadata"]["namespace"], "shop");
        assert_eq!(v["spec"]["clusterIP"], "198.19.0.11");
        assert_eq!(v["spec"]["selector"], serde_json::json!({}));
        assert_eq!(
            v["spec"]["ports"],
            serde_json::json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}])
        );
    }

    #[test]
    fn dual_stack_service_with_named_targets_and_protocols() {
        let ports = [
            ServicePort {
                name: "grpc".into(),
                port: 50051,
                target_port: TargetPort::Name("grpc".into()),
                app_protocol: Some("grpc".into()),
            },
            ServicePort {
                name: "banner".into(),
                port: 25,
                target_port: TargetPort::Number(2525),
                app_protocol: Some("tcp".into()),
            },
        ];
        let yaml = service_yaml(
            "apps",
            "default",
            Ipv4Addr::new(198, 19, 0, 12),
            Some("2001:2:0:1::12".parse().unwrap()),
            &ports,
            &map(&[("app", "apps")]),
        );
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(v["spec"]["clusterIP"], "198.19.0.12");
        assert_eq!(
            v["spec"]["clusterIPs"],
            serde_json::json!(["198.19.0.12", "2001:2:0:1::12"])
        );
        assert_eq!(v["spec"]["ipFamilies"], serde_json::json!(["IPv4", "IPv6"]));
        assert_eq!(v["spec"]["ipFamilyPolicy"], "PreferDualStack");
        assert_eq!(
            v["spec"]["ports"],
            serde_json::json!([
                {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "banner", "port": 25, "targetPort": 2525, "protocol": "TCP", "appProtocol": "tcp"}
            ])
        );
    }

    #[test]
    fn workload_entry_without_sidecar_is_annotated() {
        let yaml = workload_entry_yaml(
            "plain",
            "default",
            Ipv4Addr::new(198, 18, 0, 20),
            &BTreeMap::new(),
            "default",
            &BTreeMap::new(),
            EntryProxy::None,
        );
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            v["metadata"]["annotations"],
            serde_json::json!({"mesh.knit.dev/proxy": "none"})
        );
    }

    #[test]
    fn workload_entry_yaml_round_trips() {
        let labels = map(&[
            ("app", "backend"),
            ("version", "on"),
            ("app.kubernetes.io/part-of", "shop"),
        ]);
        let ports = BTreeMap::from([("http".to_string(), 8080u16)]);
        let yaml = workload_entry_yaml(
            "backend-1",
            "default",
            Ipv4Addr::new(198, 18, 0, 11),
            &labels,
            "backend",
            &ports,
            EntryProxy::Knit { token_sha256: None },
        );
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": "mesh.knit.dev/v1alpha1",
                "kind": "WorkloadEntry",
                "metadata": {"name": "backend-1", "namespace": "default"},
                "spec": {
                    "address": "198.18.0.11",
                    // "on" stays a string because every scalar is quoted.
                    "labels": {"app": "backend", "version": "on", "app.kubernetes.io/part-of": "shop"},
                    "serviceAccount": "backend",
                    "ports": {"http": 8080}
                }
            })
        );
    }

    #[test]
    fn workload_entry_carries_its_token_digest() {
        let digest = "ab".repeat(32);
        let yaml = workload_entry_yaml(
            "web-0",
            "shop",
            Ipv4Addr::new(198, 18, 0, 12),
            &BTreeMap::new(),
            "web",
            &BTreeMap::new(),
            EntryProxy::Knit {
                token_sha256: Some(&digest),
            },
        );
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            v["metadata"]["annotations"],
            serde_json::json!({"mesh.knit.dev/token-sha256": digest})
        );
        assert_eq!(v["spec"]["serviceAccount"], "web");
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\ny"), r#""x\u000ay""#);
        let v: String = serde_saphyr::from_str(&quote("tab\there \"q\" \\")).unwrap();
        assert_eq!(v, "tab\there \"q\" \\");
    }

    #[test]
    fn hosts_file_lists_services() {
        let services = [
            HostsService {
                name: "backend".into(),
                namespace: "default".into(),
                vip: Ipv4Addr::new(198, 19, 0, 10),
                vip6: None,
            },
            HostsService {
                name: "db".into(),
                namespace: "data".into(),
                vip: Ipv4Addr::new(198, 19, 0, 11),
                vip6: None,
            },
        ];
        let text = hosts_file(
            "frontend",
            "default",
            Ipv4Addr::new(198, 18, 0, 11),
            None,
            &services,
        );
        assert_eq!(
            text,
            "127.0.0.1 localhost\n\
             198.18.0.11 frontend\n\
             198.19.0.10 backend backend.default backend.default.svc backend.default.svc.cluster.local\n\
             198.19.0.11 db.data db.data.svc db.data.svc.cluster.local\n"
        );

        let mut dual = services[..1].to_vec();
        dual[0].vip6 = Some("2001:2:0:1::10".parse().unwrap());
        let text = hosts_file(
            "frontend",
            "default",
            Ipv4Addr::new(198, 18, 0, 11),
            Some("2001:2::11".parse().unwrap()),
            &dual,
        );
        assert_eq!(
            text,
            "127.0.0.1 localhost\n\
             198.18.0.11 frontend\n\
             2001:2::11 frontend\n\
             198.19.0.10 backend backend.default backend.default.svc backend.default.svc.cluster.local\n\
             2001:2:0:1::10 backend backend.default backend.default.svc backend.default.svc.cluster.local\n"
        );
    }

    #[test]
    fn file_names() {
        validate_file_name("svc-backend.yaml").unwrap();
        for bad in ["", ".hidden.yaml", "a/b.yaml", "../x"] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.yaml");
        let tmp = dir.path().join(".x.yaml.tmp");
        write_atomic(&tmp, &target, "one").unwrap();
        write_atomic(&tmp, &target, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "two");
        assert!(!tmp.exists());
        let missing = dir.path().join("no-such-dir").join("y.yaml");
        let err =
            write_atomic(&dir.path().join("no-such-dir").join(".y"), &missing, "z").unwrap_err();
        assert!(err.to_string().contains("y.yaml"), "{err}");
    }
}
