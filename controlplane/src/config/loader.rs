//! Parses one config file: every document is parsed on its own and
//! dispatched on apiVersion + kind, so one bad document costs only itself.
//! (`directory` puts the files of the directory together.)

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::kinds::{
    AuthorizationPolicy, DestinationRule, KnownKind, PeerAuthentication, PeerWorkloadSelector,
    Service, WorkloadEntry, classify,
};
use super::source::{DocumentText, split_documents};
use crate::error::Error;
use crate::model::{DocumentRef, ResourceRef};

/// Namespace of a resource that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A typed resource read from one document, not yet validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedResource {
    Service(Box<Service>),
    WorkloadEntry(Box<WorkloadEntry>),
    PeerAuthentication(Box<PeerAuthentication>),
    AuthorizationPolicy(Box<AuthorizationPolicyDocument>),
    DestinationRule(Box<DestinationRule>),
}

/// An AuthorizationPolicy as read. When its spec does not parse, what
/// places it (metadata, selector) and its action may still be readable:
/// enough to apply it fail-closed instead of dropping it.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthorizationPolicyDocument {
    Parsed(AuthorizationPolicy),
    Unparsed(UnparsedAuthorizationPolicy),
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnparsedAuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub selector: Option<PeerWorkloadSelector>,
    /// `spec.action` as written, if present.
    pub action: Option<Value>,
    /// Where parsing failed (`None`: the document as a whole) and why.
    pub field: Option<String>,
    pub reason: String,
}

/// The part of an AuthorizationPolicy that decides where and how it applies
/// fail-closed; every other field is ignored here.
#[derive(Deserialize)]
struct AuthorizationPolicyHead {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: AuthorizationPolicyHeadSpec,
}

#[derive(Deserialize, Default)]
struct AuthorizationPolicyHeadSpec {
    #[serde(default)]
    selector: Option<PeerWorkloadSelector>,
    #[serde(default)]
    action: Option<Value>,
}

/// Reads an AuthorizationPolicy; a spec that does not parse still yields
/// the readable head. When the head itself is unreadable, its problem is
/// the one reported: it is why the policy applies nowhere.
fn authorization_policy(value: Value, at: &DocumentRef) -> Result<ParsedResource, Problem> {
    let (field, reason) = match typed_or_reason::<AuthorizationPolicy>(value.clone()) {
        Ok(policy) => {
            return Ok(ParsedResource::AuthorizationPolicy(Box::new(
                AuthorizationPolicyDocument::Parsed(policy),
            )));
        }
        Err(problem) => problem,
    };
    let head = typed_or_reason::<AuthorizationPolicyHead>(value)
        .map_err(|problem| Problem::Error(problem_error(problem, at)))?;
    Ok(ParsedResource::AuthorizationPolicy(Box::new(
        AuthorizationPolicyDocument::Unparsed(UnparsedAuthorizationPolicy {
            metadata: head.metadata,
            selector: head.spec.selector,
            action: head.spec.action,
            field,
            reason,
        }),
    )))
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParsedDocument {
    pub at: DocumentRef,
    pub resource: ParsedResource,
}

/// The documents of a set of files, with what went wrong on the way.
#[derive(Debug, Default)]
pub struct ParsedFiles {
    pub documents: Vec<ParsedDocument>,
    pub errors: Vec<Error>,
    pub warnings: Vec<String>,
}

/// Parses every document of one file into `out`.
pub fn parse_file(file_name: &str, text: &str, out: &mut ParsedFiles) {
    for document in split_documents(text) {
        match parse_document(file_name, &document) {
            Ok(Some(parsed)) => out.documents.push(parsed),
            Ok(None) => {}
            Err(Problem::Error(err)) => out.errors.push(err),
            Err(Problem::Warning(warning)) => out.warnings.push(warning),
        }
    }
}

enum Problem {
    Error(Error),
    Warning(String),
}

/// One document: `Ok(None)` when it is empty.
fn parse_document(
    file_name: &str,
    document: &DocumentText,
) -> Result<Option<ParsedDocument>, Problem> {
    let at = DocumentRef {
        file: file_name.to_owned(),
        index: document.index,
        resource: None,
    };
    if !document.has_content {
        return Ok(None);
    }
    let value: Value = serde_saphyr::from_str(&document.text).map_err(|err| {
        let options = serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
            line_offset: (document.first_line as u64).saturating_sub(1),
        };
        Problem::Error(Error::Document {
            at: Box::new(at.clone()),
            reason: format!("invalid YAML: {}", err.render_with_options(options)),
        })
    })?;
    let object = match &value {
        Value::Null => return Ok(None),
        Value::Object(object) => object,
        other => {
            return Err(Problem::Error(Error::Document {
                at: Box::new(at),
                reason: format!(
                    "a resource must be a mapping with apiVersion and kind, found {}",
                    json_type_name(other)
                ),
            }));
        }
    };
    let api_version = required_string(object, "apiVersion", &at)?;
    let kind = required_string(object, "kind", &at)?;
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_owned();
    let Some(known) = classify(&api_version, &kind) else {
        let at = at.with_resource(ResourceRef {
            kind: kind.clone(),
            namespace,
            name,
        });
        return Err(Problem::Warning(format!(
            "config warning: {at}: unknown kind {kind} (apiVersion {api_version}), ignored"
        )));
    };
    let at = at.with_resource(ResourceRef {
        kind: known.name().to_owned(),
        namespace,
        name,
    });
    let resource = match known {
        KnownKind::Service => ParsedResource::Service(Box::new(typed(value, &at)?)),
        KnownKind::WorkloadEntry => ParsedResource::WorkloadEntry(Box::new(typed(value, &at)?)),
        KnownKind::PeerAuthentication => {
            ParsedResource::PeerAuthentication(Box::new(typed(value, &at)?))
        }
        KnownKind::AuthorizationPolicy => authorization_policy(value, &at)?,
        KnownKind::DestinationRule => ParsedResource::DestinationRule(Box::new(typed(value, &at)?)),
    };
    Ok(Some(ParsedDocument { at, resource }))
}

fn required_string(
    object: &serde_json::Map<String, Value>,
    field: &str,
    at: &DocumentRef,
) -> Result<String, Problem> {
    match object.get(field) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value.clone()),
        None | Some(Value::Null) => Err(Problem::Error(Error::Field {
            at: Box::new(at.clone()),
            field: field.to_owned(),
            reason: "must be set".to_owned(),
        })),
        Some(Value::String(_)) => Err(Problem::Error(Error::Field {
            at: Box::new(at.clone()),
            field: field.to_owned(),
            reason: "must not be empty".to_owned(),
        })),
        Some(other) => Err(Problem::Error(Error::Field {
            at: Box::new(at.clone()),
            field: field.to_owned(),
            reason: format!("must be a string, found {}", json_type_name(other)),
        })),
    }
}

/// Deserializes into a kind's Rust type, naming the field path on failure.
fn typed<T: DeserializeOwned>(value: Value, at: &DocumentRef) -> Result<T, Problem> {
    typed_or_reason(value).map_err(|problem| Problem::Error(problem_error(problem, at)))
}

/// Deserializes into `T`; on failure, the field path (`None`: the document
/// as a whole) and the reason.
fn typed_or_reason<T: DeserializeOwned>(value: Value) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let field = err.path().to_string();
        let reason = err.inner().to_string();
        ((field != ".").then_some(field), reason)
    })
}

fn problem_error((field, reason): (Option<String>, String), at: &DocumentRef) -> Error {
    match field {
        None => Error::Document {
            at: Box::new(at.clone()),
            reason,
        },
        Some(field) => Error::Field {
            at: Box::new(at.clone()),
            field,
            reason,
        },
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::directory::{LoadedConfig, ParseCache, load_dir, load_dir_cached};
    use std::fs;

    fn parse(file: &str, text: &str) -> ParsedFiles {
        let mut out = ParsedFiles::default();
        parse_file(file, text, &mut out);
        out
    }

    fn error_strings(parsed: &ParsedFiles) -> Vec<String> {
        parsed.errors.iter().map(ToString::to_string).collect()
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: backend\nspec:\n  ports:\n  - port: 80\n";
    const WORKLOAD: &str = "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: pod-a\n  namespace: shop\nspec:\n  address: 10.0.0.1\n";

    #[test]
    fn multi_document_file_yields_each_resource_in_order() {
        let text = format!("{SERVICE}---\n# nothing here\n---\n{WORKLOAD}");
        let parsed = parse("all.yaml", &text);
        assert!(parsed.errors.is_empty(), "{:?}", error_strings(&parsed));
        let positions: Vec<String> = parsed.documents.iter().map(|d| d.at.to_string()).collect();
        assert_eq!(
            positions,
            [
                "all.yaml doc 1 (Service default/backend)",
                "all.yaml doc 3 (WorkloadEntry shop/pod-a)"
            ]
        );
        assert!(matches!(
            parsed.documents[0].resource,
            ParsedResource::Service(_)
        ));
        match &parsed.documents[1].resource {
            ParsedResource::WorkloadEntry(entry) => assert_eq!(entry.spec.address, "10.0.0.1"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn load_dir_reads_every_config_file_and_document() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
        let write = |name: &str, text: &str| {
            fs::write(dir.path().join(name), text)
                .unwrap_or_else(|err| panic!("write {name}: {err}"));
        };
        write(
            "mesh.yaml",
            &format!(
                "{SERVICE}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n---\n{WORKLOAD}"
            ),
        );
        write(
            "more.yml",
            &WORKLOAD
                .replace("pod-a", "pod-b")
                .replace("10.0.0.1", "10.0.0.2"),
        );
        write("skipped.json", "{}");
        write(".skipped.yaml", "not: [yaml");
        let loaded = load_dir(dir.path()).unwrap_or_else(|err| panic!("{err}"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.config.services.len(), 1);
        let workloads: Vec<&str> = loaded
            .config
            .workloads
            .iter()
            .map(|w| w.name.as_str())
            .collect();
        assert_eq!(workloads, ["pod-a", "pod-b"]);
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            loaded.warnings[0].contains("mesh.yaml doc 2 (ConfigMap default/cm)"),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn a_cached_load_parses_only_changed_files_and_never_keeps_errors() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"));
        let path = |name: &str| dir.path().join(name);
        let write = |name: &str, text: &str| {
            fs::write(path(name), text).unwrap_or_else(|err| panic!("write {name}: {err}"));
        };
        let pod_b = WORKLOAD
            .replace("pod-a", "pod-b")
            .replace("10.0.0.1", "10.0.0.2");
        write("a.yaml", WORKLOAD);
        write("b.yaml", &pod_b);
        write("broken.yaml", "kind: [");
        let mut cache = ParseCache::default();
        let load = |cache: &mut ParseCache| {
            load_dir_cached(dir.path(), cache).unwrap_or_else(|err| panic!("{err}"))
        };
        let addresses = |loaded: &LoadedConfig| -> Vec<String> {
            loaded
                .config
                .workloads
                .iter()
                .map(|w| w.address.to_string())
                .collect()
        };
        let first = load(&mut cache);
        assert_eq!(addresses(&first), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!((first.errors.len(), cache.len()), (1, 2));

        // Rewritten in place with the same length and mtime: the stamp is
        // unchanged, so the kept parse is used (proof the file was not read).
        let modified = fs::metadata(path("b.yaml"))
            .and_then(|m| m.modified())
            .unwrap_or_else(|err| panic!("mtime: {err}"));
        write("b.yaml", &pod_b.replace("10.0.0.2", "10.0.0.3"));
        fs::File::options()
            .write(true)
            .open(path("b.yaml"))
            .and_then(|f| f.set_modified(modified))
            .unwrap_or_else(|err| panic!("set mtime: {err}"));
        let second = load(&mut cache);
        assert_eq!(addresses(&second), ["10.0.0.1", "10.0.0.2"]);
        // The broken file is parsed, and reported, every time.
        assert_eq!(second.errors.len(), 1, "{:?}", second.errors);

        // A real change (another length) is seen; a removed file is gone.
        write("b.yaml", &pod_b.replace("10.0.0.2", "10.0.0.33"));
        fs::remove_file(path("a.yaml")).unwrap_or_else(|err| panic!("rm: {err}"));
        let third = load(&mut cache);
        assert_eq!(addresses(&third), ["10.0.0.33"]);
        assert_eq!(cache.len(), 1);
        assert_eq!(addresses(&third), addresses(&load_dir(dir.path()).unwrap()));
    }

    #[test]
    fn istio_api_versions_load_as_workload_entries() {
        for api_version in [
            "networking.istio.io/v1alpha3",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1",
        ] {
            let text = WORKLOAD.replace("mesh.knit.dev/v1alpha1", api_version);
            let parsed = parse("we.yaml", &text);
            assert!(
                parsed.errors.is_empty(),
                "{api_version}: {:?}",
                error_strings(&parsed)
            );
            assert_eq!(parsed.documents.len(), 1, "{api_version}");
        }
    }

    #[test]
    fn unknown_kind_is_a_warning_and_ignored() {
        let text =
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n---\n{SERVICE}");
        let parsed = parse("mixed.yaml", &text);
        assert!(parsed.errors.is_empty());
        assert_eq!(parsed.documents.len(), 1);
        assert_eq!(
            parsed.warnings,
            [
                "config warning: mixed.yaml doc 1 (ConfigMap default/cm): unknown kind ConfigMap (apiVersion v1), ignored"
            ]
        );
    }

    #[test]
    fn broken_documents_name_file_document_and_field() {
        let table = [
            (
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: backend\nspec:\n  ports:\n  - port: eighty\n",
                "config error: s.yaml doc 1 (Service default/backend): spec.ports[0].port: invalid type: string \"eighty\", expected i32",
            ),
            (
                "kind: Service\nmetadata:\n  name: backend\n",
                "config error: s.yaml doc 1: apiVersion: must be set",
            ),
            (
                "apiVersion: v1\nmetadata:\n  name: backend\n",
                "config error: s.yaml doc 1: kind: must be set",
            ),
            (
                "apiVersion: v1\nkind: 7\n",
                "config error: s.yaml doc 1: kind: must be a string, found a number",
            ),
            (
                "- just\n- a list\n",
                "config error: s.yaml doc 1: a resource must be a mapping with apiVersion and kind, found a list",
            ),
            (
                "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: pod-a\nspec:\n  labels: {}\n",
                "config error: s.yaml doc 1 (WorkloadEntry default/pod-a): spec: missing field `address`",
            ),
            (
                "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: pod-a\nspec:\n  address: 10.0.0.1\n  ports:\n    http: -1\n",
                "config error: s.yaml doc 1 (WorkloadEntry default/pod-a): spec.ports.http: invalid value: integer `-1`, expected u32",
            ),
        ];
        for (text, expected) in table {
            let parsed = parse("s.yaml", text);
            assert_eq!(error_strings(&parsed), [expected], "{text}");
            assert!(parsed.documents.is_empty());
        }
    }

    #[test]
    fn yaml_syntax_error_costs_only_its_document() {
        let text = format!("{SERVICE}---\nkey: [unclosed\n---\n{WORKLOAD}");
        let parsed = parse("bad.yaml", &text);
        assert_eq!(parsed.documents.len(), 2);
        let errors = error_strings(&parsed);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("config error: bad.yaml doc 2: invalid YAML: "),
            "{}",
            errors[0]
        );
        // The location is reported in file lines, not document lines.
        assert!(
            errors[0].ends_with("unclosed bracket '[' at line 9, column 6"),
            "{}",
            errors[0]
        );
    }

    const PEER_AUTHENTICATION: &str = "apiVersion: mesh.knit.dev/v1alpha1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n";

    #[test]
    fn peer_authentication_loads_under_every_api_version() {
        for api_version in [
            "mesh.knit.dev/v1alpha1",
            "security.istio.io/v1beta1",
            "security.istio.io/v1",
        ] {
            let text = PEER_AUTHENTICATION.replace("mesh.knit.dev/v1alpha1", api_version);
            let parsed = parse("pa.yaml", &text);
            assert!(
                parsed.errors.is_empty(),
                "{api_version}: {:?}",
                error_strings(&parsed)
            );
            assert_eq!(
                parsed.documents[0].at.to_string(),
                "pa.yaml doc 1 (PeerAuthentication shop/default)"
            );
            match &parsed.documents[0].resource {
                ParsedResource::PeerAuthentication(policy) => assert_eq!(
                    policy.spec.mtls.as_ref().and_then(|m| m.mode),
                    Some(super::super::kinds::PeerMtlsMode::Strict)
                ),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Istio's security v1alpha1 was never PeerAuthentication's.
        let text =
            PEER_AUTHENTICATION.replace("mesh.knit.dev/v1alpha1", "security.istio.io/v1alpha1");
        let parsed = parse("pa.yaml", &text);
        assert!(parsed.documents.is_empty());
        assert_eq!(parsed.warnings.len(), 1);
    }

    #[test]
    fn broken_peer_authentications_name_the_field() {
        let table = [
            (
                PEER_AUTHENTICATION.replace("STRICT", "strict"),
                "config error: pa.yaml doc 1 (PeerAuthentication shop/default): spec.mtls.mode: unknown variant `strict`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
            ),
            (
                PEER_AUTHENTICATION.replace(
                    "  mtls:\n    mode: STRICT\n",
                    "  portLevelMtls:\n    8080:\n      mode: MUTUAL\n",
                ),
                "config error: pa.yaml doc 1 (PeerAuthentication shop/default): spec.portLevelMtls.8080.mode: unknown variant `MUTUAL`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`",
            ),
            (
                PEER_AUTHENTICATION.replace("  mtls:\n    mode: STRICT\n", "  selector: [app]\n"),
                "config error: pa.yaml doc 1 (PeerAuthentication shop/default): spec.selector[0]: invalid type: string \"app\", expected a map",
            ),
        ];
        for (text, expected) in table {
            let parsed = parse("pa.yaml", &text);
            assert_eq!(error_strings(&parsed), [expected], "{text}");
            assert!(parsed.documents.is_empty());
        }
    }
}
