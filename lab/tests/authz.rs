//! AuthorizationPolicy end to end: policies in knitd's config, enforced by
//! the backend's proxy on requests that arrive through real capture, from
//! meshed callers (mutual TLS, with identities) and an unmeshed one
//! (plaintext, no identity).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{OrLogs, new_lab, stat};
use knit_lab::{ClientReport, ClientSpec, Lab, PodSpec, ServiceSpec, wait_until};

const PATIENCE: Duration = Duration::from_secs(30);

/// backend-1 (sa backend) behind service `backend`; meshed callers
/// `frontend` (default/frontend) and `intruder` (other/intruder); the
/// unmeshed pod `plain` (default). Returns the lab and backend-1's address.
fn mesh(name: &str) -> (Lab, Ipv4Addr) {
    let mut lab = new_lab(name);
    lab.start_knitd().or_logs(&lab);
    lab.add_service(
        ServiceSpec::new("backend")
            .vip(Ipv4Addr::new(198, 19, 0, 10))
            .port("http", 80, 8080)
            .selector("app", "backend"),
    )
    .or_logs(&lab);
    let backend = lab
        .add_pod(
            PodSpec::new("backend-1")
                .label("app", "backend")
                .service_account("backend")
                .sidecar(true),
        )
        .or_logs(&lab)
        .ip;
    lab.add_pod(
        PodSpec::new("frontend")
            .label("app", "frontend")
            .service_account("frontend")
            .sidecar(true),
    )
    .or_logs(&lab);
    lab.add_pod(
        PodSpec::new("intruder")
            .namespace("other")
            .label("app", "intruder")
            .service_account("intruder")
            .sidecar(true),
    )
    .or_logs(&lab);
    lab.add_pod(PodSpec::new("plain").label("app", "plain"))
        .or_logs(&lab);
    for pod in ["frontend", "intruder"] {
        wait_until(
            &format!("{pod}'s proxy to know the backend"),
            PATIENCE,
            || {
                let dump = lab.proxy_config_dump(pod)?;
                Ok(dump["services"]["default/backend"][0]["endpoints"]
                    .as_array()
                    .is_some_and(|e| e.len() == 1))
            },
        )
        .or_logs(&lab);
    }
    (lab, backend)
}

/// Replaces the backend's AuthorizationPolicy with one named `name` and
/// `spec`, and waits until backend-1's proxy serves it.
fn apply_policy(lab: &Lab, name: &str, spec: &str) {
    lab.write_config(
        "authz.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: backend}}}}\n{spec}"
        ),
    )
    .or_logs(lab);
    wait_until(
        &format!("backend-1's proxy to serve policy {name}"),
        PATIENCE,
        || {
            let dump = lab.proxy_config_dump("backend-1")?;
            Ok(dump["authorization"]
                .to_string()
                .contains(&format!("\"default/{name}\"")))
        },
    )
    .or_logs(lab);
}

fn get(lab: &Lab, pod: &str, url: &str) -> ClientReport {
    lab.run_client(pod, &ClientSpec::new(url).count(1))
        .or_logs(lab)
}

/// What one request got: its status, and the proxy's `x-knit-error`.
fn outcome(report: &ClientReport) -> (u16, Option<String>) {
    let status = report.statuses.keys().next().copied().unwrap_or(0);
    let reason = report.knit_errors.keys().next().cloned();
    (status, reason)
}

fn denied() -> (u16, Option<String>) {
    (403, Some("rbac_denied".to_owned()))
}

fn allowed() -> (u16, Option<String>) {
    (200, None)
}

/// ALLOW by principal: the named caller gets through, a caller with
/// another identity is refused with 403 rbac_denied before the app.
#[test]
fn allow_by_principal() {
    let (lab, _) = mesh("authz-allow");
    apply_policy(
        &lab,
        "frontend-only",
        "  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/frontend\"]}\n",
    );
    assert_eq!(
        outcome(&get(&lab, "frontend", "http://backend/")),
        allowed()
    );
    let r = lab
        .run_client(
            "intruder",
            &ClientSpec::new("http://backend.default.svc.cluster.local/").count(3),
        )
        .or_logs(&lab);
    assert_eq!(r.statuses.get(&403), Some(&3), "{r:?}");
    assert_eq!(r.knit_errors.get("rbac_denied"), Some(&3), "{r:?}");
    assert!(r.by_pod.is_empty(), "nothing reached the app: {r:?}");
    assert!(stat(&lab, "backend-1", "mesh.errors.rbac_denied") >= 3);
    let metrics = lab
        .http_get_in_node(&format!(
            "http://{}:15090/metrics",
            lab.pod("backend-1").or_logs(&lab).ip
        ))
        .or_logs(&lab)
        .body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("knit_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_workload=\"intruder\"")
                && l.contains("response_code=\"403\"")
                && l.ends_with(" 3")),
        "denials are counted: {metrics}"
    );
}

/// DENY by path: every spelling of /admin is refused; paths are
/// case-sensitive, so /ADMIN is another resource; the app receives the
/// normalized path (it answers /status/204 only if it sees exactly that).
#[test]
fn deny_by_path_catches_every_spelling() {
    let (lab, _) = mesh("authz-path");
    apply_policy(
        &lab,
        "no-admin",
        "  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/admin\", \"/admin/*\"]}\n",
    );
    let spellings = [
        "/admin",
        "/a/../admin",
        "//admin",
        "/%2Fadmin",
        "/%2fadmin",
        "/%5Cadmin",
        "/./admin",
        "/%61dmin",
        "/admin/",
        "/admin/x/../y",
        "/x/%2e%2e/admin",
    ];
    for path in spellings {
        let r = get(&lab, "frontend", &format!("http://backend{path}"));
        assert_eq!(outcome(&r), denied(), "{path}: {r:?}");
    }
    for (path, status) in [
        ("/ADMIN", 200),
        ("/administrator", 200),
        ("/public?next=/admin", 200),
        ("/status/%32%30%34", 204),
        ("/x/../status/204", 204),
        ("//status//204", 204),
    ] {
        let r = get(&lab, "frontend", &format!("http://backend{path}"));
        assert_eq!(outcome(&r), (status, None), "{path}: {r:?}");
    }
}

/// DENY by namespace: callers from `other` are refused, callers from
/// `default` are not.
#[test]
fn deny_by_namespace() {
    let (lab, _) = mesh("authz-ns");
    apply_policy(
        &lab,
        "not-from-other",
        "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [\"other\"]}\n",
    );
    assert_eq!(
        outcome(&get(
            &lab,
            "intruder",
            "http://backend.default.svc.cluster.local/"
        )),
        denied()
    );
    assert_eq!(
        outcome(&get(&lab, "frontend", "http://backend/")),
        allowed()
    );
}

/// PERMISSIVE lets plaintext in, but plaintext carries no identity: it
/// never matches principals or namespaces, and `not*` rules never turn a
/// missing identity into an allow (in a DENY they match: fail closed).
#[test]
fn permissive_plaintext_matrix() {
    let (lab, backend) = mesh("authz-plain");
    let plain_ip = lab.pod("plain").or_logs(&lab).ip;
    let direct = format!("http://{backend}:8080/");
    let frontend = "cluster.local/ns/default/sa/frontend";
    let intruder = "cluster.local/ns/other/sa/intruder";
    // (policy name, spec, plaintext outcome, frontend outcome)
    let matrix = [
        (
            "allow-principal",
            format!(
                "  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [\"{frontend}\"]}}\n"
            ),
            denied(),
            allowed(),
        ),
        (
            "allow-any-principal",
            "  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [\"*\"]}\n"
                .to_owned(),
            denied(),
            allowed(),
        ),
        (
            "allow-not-principal",
            format!(
                "  action: ALLOW\n  rules:\n  - from:\n    - source: {{notPrincipals: [\"{intruder}\"]}}\n"
            ),
            denied(),
            allowed(),
        ),
        (
            "allow-namespace",
            "  action: ALLOW\n  rules:\n  - from:\n    - source: {namespaces: [\"default\"]}\n"
                .to_owned(),
            denied(),
            allowed(),
        ),
        (
            "allow-not-namespace",
            "  action: ALLOW\n  rules:\n  - from:\n    - source: {notNamespaces: [\"other\"]}\n"
                .to_owned(),
            denied(),
            allowed(),
        ),
        (
            "deny-not-namespace",
            "  action: DENY\n  rules:\n  - from:\n    - source: {notNamespaces: [\"default\"]}\n"
                .to_owned(),
            denied(),
            allowed(),
        ),
        (
            "deny-any-principal",
            "  action: DENY\n  rules:\n  - from:\n    - source: {principals: [\"*\"]}\n".to_owned(),
            allowed(),
            denied(),
        ),
        (
            "allow-ip-block",
            format!(
                "  action: ALLOW\n  rules:\n  - from:\n    - source: {{ipBlocks: [\"{plain_ip}/32\"]}}\n"
            ),
            allowed(),
            denied(),
        ),
        (
            "allow-nothing",
            "  action: ALLOW\n".to_owned(),
            denied(),
            denied(),
        ),
    ];
    for (name, spec, plaintext, meshed) in matrix {
        apply_policy(&lab, name, &spec);
        let r = get(&lab, "plain", &direct);
        assert_eq!(outcome(&r), plaintext, "{name}, plaintext: {r:?}");
        let r = get(&lab, "frontend", "http://backend/");
        assert_eq!(outcome(&r), meshed, "{name}, frontend: {r:?}");
    }
    assert!(stat(&lab, "backend-1", "inbound.errors.rbac_denied") >= 6);
}
