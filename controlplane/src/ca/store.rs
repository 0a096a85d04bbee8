//! The CA's files on disk: the generated root in `--state-dir` and private
//! keys supplied by the operator. Keys are written atomically with mode
//! 0600 and refused when group or others can read them, because whoever
//! reads the key can mint any identity in the mesh.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The root certificate knitd generated, in `--state-dir`.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Its private key (PKCS#8 PEM, mode 0600).
pub const ROOT_KEY_FILE: &str = "root-key.pem";

fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::CaFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a private key file after checking that only its owner can read it.
pub fn read_private_key(path: &Path) -> Result<String, Error> {
    let metadata =
        fs::metadata(path).map_err(|err| file_error(path, format!("cannot read: {err}")))?;
    if !metadata.is_file() {
        return Err(file_error(path, "is not a regular file"));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(file_error(
            path,
            format!(
                "the CA key is readable by group or others (mode {mode:04o}); \
                 make it private with `chmod 600 {}` (on a Kubernetes Secret volume: \
                 defaultMode 0400)",
                path.display()
            ),
        ));
    }
    fs::read_to_string(path).map_err(|err| file_error(path, format!("cannot read: {err}")))
}

/// What `--state-dir` held at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredRoot {
    /// Both files were there.
    Found { cert_pem: String, key_pem: String },
    /// Neither file was there: a new root is to be generated.
    Empty,
}

pub fn cert_path(dir: &Path) -> PathBuf {
    dir.join(ROOT_CERT_FILE)
}

pub fn key_path(dir: &Path) -> PathBuf {
    dir.join(ROOT_KEY_FILE)
}

/// Reads the root from `dir`, creating `dir` (mode 0700) when missing.
/// Exactly one of the two files present is an error: regenerating would
/// silently replace a root that may already have signed certificates.
pub fn load_root(dir: &Path) -> Result<StoredRoot, Error> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| file_error(dir, format!("cannot create the state dir: {err}")))?;
    } else if !dir.is_dir() {
        return Err(file_error(dir, "--state-dir is not a directory"));
    }
    let cert = cert_path(dir);
    let key = key_path(dir);
    match (cert.exists(), key.exists()) {
        (false, false) => Ok(StoredRoot::Empty),
        (true, true) => {
            let cert_pem = fs::read_to_string(&cert)
                .map_err(|err| file_error(&cert, format!("cannot read: {err}")))?;
            let key_pem = read_private_key(&key)?;
            Ok(StoredRoot::Found { cert_pem, key_pem })
        }
        (true, false) => Err(file_error(
            &key,
            format!(
                "is missing while {ROOT_CERT_FILE} exists; restore it from a backup, or remove \
                 {ROOT_CERT_FILE} to generate a new root (certificates of the old root stop \
                 verifying)"
            ),
        )),
        (false, true) => Err(file_error(
            &cert,
            format!(
                "is missing while {ROOT_KEY_FILE} exists; restore it from a backup, or remove \
                 {ROOT_KEY_FILE} to generate a new root"
            ),
        )),
    }
}

/// Saves a newly generated root: the key first, so a crash in between
/// leaves a state `load_root` reports instead of a cert without its key.
pub fn save_root(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), Error> {
    write_atomically(&key_path(dir), key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_path(dir), cert_pem.as_bytes(), 0o644)
}

/// Writes `path` so that readers see the old content or the whole new one:
/// a temp file in the same directory (created with `mode`, so the key is
/// never briefly readable), flushed to disk, then renamed over `path`.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        // A leftover from a crashed run of the same pid is stale.
        let _ = fs::remove_file(&temp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        // The rename itself is durable only once the directory is synced.
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|err| {
        let _ = fs::remove_file(&temp);
        file_error(path, format!("cannot write: {err}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|err| panic!("tempdir: {err}"))
    }

    #[test]
    fn saved_root_round_trips_with_a_private_key_file() {
        let dir = temp_dir();
        let state = dir.path().join("state");
        assert_eq!(load_root(&state).ok(), Some(StoredRoot::Empty));
        let dir_mode = fs::metadata(&state).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(dir_mode.ok(), Some(0o700));
        if let Err(err) = save_root(&state, "CERT", "KEY") {
            panic!("{err}");
        }
        let key_mode = fs::metadata(key_path(&state)).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(key_mode.ok(), Some(0o600));
        assert_eq!(
            load_root(&state).ok(),
            Some(StoredRoot::Found {
                cert_pem: "CERT".to_owned(),
                key_pem: "KEY".to_owned()
            })
        );
        // No temp files are left behind.
        let names: Vec<String> = fs::read_dir(&state)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn half_a_root_is_refused() {
        let dir = temp_dir();
        if let Err(err) = write_atomically(&cert_path(dir.path()), b"CERT", 0o644) {
            panic!("{err}");
        }
        match load_root(dir.path()) {
            Err(err) => assert!(
                err.to_string().contains("root-key.pem: is missing"),
                "{err}"
            ),
            Ok(found) => panic!("accepted {found:?}"),
        }
    }

    #[test]
    fn readable_keys_are_refused() {
        let dir = temp_dir();
        let key = dir.path().join("key.pem");
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o644, false)] {
            let _ = fs::remove_file(&key);
            if let Err(err) = write_atomically(&key, b"KEY", mode) {
                panic!("{err}");
            }
            // The umask may have narrowed the create mode; set it exactly.
            if let Err(err) = fs::set_permissions(&key, fs::Permissions::from_mode(mode)) {
                panic!("{err}");
            }
            match read_private_key(&key) {
                Ok(text) => assert!(ok, "mode {mode:o} accepted: {text}"),
                Err(err) => {
                    assert!(!ok, "mode {mode:o} refused: {err}");
                    assert!(err.to_string().contains("chmod 600"), "{err}");
                }
            }
        }
    }
}
