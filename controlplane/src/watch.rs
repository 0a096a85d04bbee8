//! Watching the config directory: compile it, publish what changed, report
//! what is wrong, and poll for the next change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::ca::auth::WorkloadTokens;
use crate::config::source::{Fingerprint, fingerprint};
use crate::config::{ParseCache, load_dir_cached};
use crate::error::Error;
use crate::model::DEFAULT_ROOT_NAMESPACE;
use crate::mtls::MtlsInputs;
use crate::shutdown::shutdown_requested;
use crate::snapshot::Snapshot;
use crate::state::{ConfigReport, ConfigState};
use crate::translate::translate;

/// A directory compiled into a snapshot, with every problem found.
#[derive(Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    /// The workloads' CA token digests.
    pub tokens: WorkloadTokens,
    /// What `/debug/mtls` computes the effective modes from.
    pub mtls: MtlsInputs,
    pub errors: Vec<Error>,
    pub warnings: Vec<String>,
}

/// Loads, validates and translates `dir`. Fails only when the directory
/// cannot be listed; problems inside it are in `errors` / `warnings`.
/// Uses the default root namespace; see [`compile_dir_in`].
pub fn compile_dir(dir: &Path) -> Result<Compiled, Error> {
    compile_dir_in(dir, DEFAULT_ROOT_NAMESPACE)
}

/// [`compile_dir`] with the mesh root namespace the proxies' inbound
/// policies are computed with.
pub fn compile_dir_in(dir: &Path, root_namespace: &str) -> Result<Compiled, Error> {
    compile_dir_cached(dir, root_namespace, &mut ParseCache::default())
}

/// [`compile_dir_in`], parsing only the files that changed since `cache`
/// saw them.
pub fn compile_dir_cached(
    dir: &Path,
    root_namespace: &str,
    cache: &mut ParseCache,
) -> Result<Compiled, Error> {
    let loaded = load_dir_cached(dir, cache)?;
    let translation = translate(&loaded.config);
    let mut warnings = loaded.warnings;
    warnings.extend(translation.warnings);
    let mtls = MtlsInputs {
        workloads: loaded.config.workloads.clone(),
        policies: loaded.config.peer_authentications.clone(),
    };
    let Snapshot {
        services,
        endpoints,
        ..
    } = translation.snapshot;
    Ok(Compiled {
        snapshot: Snapshot::with_policies(
            services,
            endpoints,
            mtls.clone(),
            loaded.config.authorization_policies.clone(),
            root_namespace,
        ),
        tokens: WorkloadTokens::from_config(&loaded.config),
        mtls,
        errors: loaded.errors,
        warnings,
    })
}

/// Publishes a compile result and logs it: one line per problem, one info
/// line per new version. An unreadable directory keeps the last good
/// snapshot. Returns whether a new snapshot was published.
pub fn apply(state: &ConfigState, result: Result<Compiled, Error>) -> bool {
    match result {
        Ok(compiled) => {
            for error in &compiled.errors {
                tracing::error!("{error}");
            }
            for warning in &compiled.warnings {
                tracing::warn!("{warning}");
            }
            state.set_report(ConfigReport {
                errors: compiled.errors.iter().map(ToString::to_string).collect(),
                warnings: compiled.warnings,
            });
            state.set_tokens(compiled.tokens);
            state.set_mtls(compiled.mtls);
            let summary = format!(
                "config version {}: {} services, {} endpoints",
                compiled.snapshot.version,
                compiled.snapshot.services.len(),
                compiled.snapshot.endpoint_count()
            );
            let published = state.publish(compiled.snapshot);
            if published {
                tracing::info!("{summary}");
            }
            published
        }
        Err(error) => {
            tracing::error!(
                "{error}; keeping config version {}",
                state.snapshot().version
            );
            state.set_report(ConfigReport {
                errors: vec![error.to_string()],
                warnings: Vec::new(),
            });
            false
        }
    }
}

/// What the poll loop carries from one poll to the next.
pub struct Watched {
    /// Taken before reading, so a change made during a read is seen by the
    /// next poll.
    last: Fingerprint,
    cache: ParseCache,
}

/// Loads `dir` once and publishes it.
pub async fn load_initial(dir: &Path, state: &ConfigState) -> Watched {
    let dir = dir.to_path_buf();
    let root_namespace = state.root_namespace().to_owned();
    let loaded = tokio::task::spawn_blocking(move || {
        let mut cache = ParseCache::default();
        let stamp = fingerprint(&dir);
        let result = compile_dir_cached(&dir, &root_namespace, &mut cache);
        (stamp, result, cache)
    })
    .await;
    match loaded {
        Ok((last, result, cache)) => {
            apply(state, result);
            Watched { last, cache }
        }
        Err(join_error) => {
            tracing::error!("config load task failed: {join_error}");
            Watched {
                last: Fingerprint::Unreadable(join_error.to_string()),
                cache: ParseCache::default(),
            }
        }
    }
}

/// Polls `dir` every `interval` and recompiles when its fingerprint changes.
///
/// Polling is deliberate: a ConfigMap mounted as a directory is updated by
/// swapping a `..data` symlink, which inotify-style watches on the files miss;
/// a fingerprint of names, sizes, mtimes and inodes (following links) sees it.
pub async fn poll_config_dir(
    dir: PathBuf,
    state: Arc<ConfigState>,
    interval: Duration,
    watched: Watched,
    mut shutdown: watch::Receiver<bool>,
) {
    let Watched { mut last, cache } = watched;
    // Moved into each poll's blocking task and back; lost only if a task
    // panics, which costs one full re-parse.
    let mut cache = Some(cache);
    loop {
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let dir = dir.clone();
        let previous = last.clone();
        let root_namespace = state.root_namespace().to_owned();
        let mut taken = cache.take().unwrap_or_default();
        let polled = tokio::task::spawn_blocking(move || {
            let stamp = fingerprint(&dir);
            if stamp == previous {
                return (None, taken);
            }
            let result = compile_dir_cached(&dir, &root_namespace, &mut taken);
            (Some((stamp, result)), taken)
        })
        .await;
        match polled {
            Ok((Some((stamp, result)), returned)) => {
                cache = Some(returned);
                last = stamp;
                apply(&state, result);
            }
            Ok((None, returned)) => cache = Some(returned),
            Err(join_error) => tracing::error!("config poll task failed: {join_error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.1\n  selector:\n    app: web\n  ports:\n  - port: 80\n";

    fn workload(name: &str, address: &str) -> String {
        format!(
            "apiVersion: mesh.knit.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\nspec:\n  address: {address}\n  labels:\n    app: web\n"
        )
    }

    fn write(dir: &Path, name: &str, text: &str) {
        if let Err(err) = fs::write(dir.join(name), text) {
            panic!("write {name}: {err}");
        }
    }

    fn compile(dir: &Path) -> Compiled {
        match compile_dir(dir) {
            Ok(compiled) => compiled,
            Err(err) => panic!("{err}"),
        }
    }

    fn temp_dir() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(err) => panic!("tempdir: {err}"),
        }
    }

    #[test]
    fn malformed_file_next_to_a_valid_one() {
        let dir = temp_dir();
        write(dir.path(), "a-services.yaml", SERVICE);
        write(dir.path(), "b-pods.yml", &workload("web-a", "10.0.0.1"));
        write(
            dir.path(),
            "c-broken.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
        );
        write(dir.path(), "notes.txt", "not config");
        write(dir.path(), ".hidden.yaml", "also: [broken\n");
        let compiled = compile(dir.path());
        assert_eq!(compiled.snapshot.services.len(), 1);
        assert_eq!(compiled.snapshot.endpoint_count(), 1);
        let errors: Vec<String> = compiled.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("config error: c-broken.yaml doc 1: invalid YAML"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn same_config_same_version_and_endpoint_change_new_version() {
        let first = temp_dir();
        write(
            first.path(),
            "all.yaml",
            &format!("{SERVICE}---\n{}", workload("web-a", "10.0.0.1")),
        );
        let second = temp_dir();
        // Same content split differently over files: same version.
        write(second.path(), "1.yaml", SERVICE);
        write(second.path(), "2.yaml", &workload("web-a", "10.0.0.1"));
        let v1 = compile(first.path()).snapshot.version;
        assert_eq!(v1, compile(first.path()).snapshot.version);
        assert_eq!(v1, compile(second.path()).snapshot.version);
        write(second.path(), "2.yaml", &workload("web-a", "10.0.0.2"));
        assert_ne!(v1, compile(second.path()).snapshot.version);
    }

    #[test]
    fn unreadable_dir_keeps_the_last_good_snapshot_and_reports() {
        let dir = temp_dir();
        write(dir.path(), "a.yaml", SERVICE);
        let state = ConfigState::new(Snapshot::empty());
        assert!(apply(&state, compile_dir(dir.path())));
        let good = state.snapshot().version.clone();
        let missing = dir.path().join("gone");
        assert!(!apply(&state, compile_dir(&missing)));
        assert_eq!(state.snapshot().version, good);
        let report = state.report();
        assert_eq!(report.errors.len(), 1);
        assert!(
            report.errors[0].starts_with(&format!(
                "config error: cannot read config dir {}",
                missing.display()
            )),
            "{}",
            report.errors[0]
        );
        // Back to a readable dir: the errors clear.
        assert!(!apply(&state, compile_dir(dir.path())));
        assert!(state.report().errors.is_empty());
    }
}
