//! Each sidecar pod's token for the mesh CA (knitd's file mode).
//!
//! The lab makes 32 random bytes per pod, writes them hex-encoded to
//! `<lab dir>/tokens/<pod>.token` (owned by the proxy's uid, mode 0400),
//! and puts the token's SHA-256 into the pod's WorkloadEntry annotation
//! `mesh.knit.dev/token-sha256`: the config holds no usable secret, and
//! knitd signs a certificate only for the workload whose digest matches.
//!
//! In the lab every proxy runs as uid 1337, so one proxy could read
//! another's token; on a real node each pod gets its own mount. What the
//! lab does prove is the flow: no token, no certificate.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// Random bytes per token: as much entropy as the digest that names it.
const TOKEN_BYTES: usize = 32;

/// A pod's token file and the digest its WorkloadEntry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodToken {
    pub path: PathBuf,
    pub sha256_hex: String,
}

/// Where the tokens of the lab in `lab_dir` live.
pub(crate) fn tokens_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("tokens")
}

/// The token file of `pod`.
pub(crate) fn token_path(lab_dir: &Path, pod: &str) -> PathBuf {
    tokens_dir(lab_dir).join(format!("{pod}.token"))
}

/// Makes a fresh token for `pod`, readable by the proxy's uid only.
/// `owner` is that uid ([`crate::PROXY_UID`]; a parameter so the unit tests can run unprivileged
/// with their own).
pub(crate) fn create(lab_dir: &Path, pod: &str, owner: u32) -> Result<PodToken> {
    let dir = tokens_dir(lab_dir);
    // 0711: the proxy may open its file by name but not list the others.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    check_reachable(&dir, owner)?;

    let token = random_hex(TOKEN_BYTES)?;
    let path = token_path(lab_dir, pod);
    let io = |what: &str, e| LabError::io(format!("{what} {}", path.display()), e);
    // A pod re-added under the same name gets a new token, never the old file.
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing", e)),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io("creating", e))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))?;
    drop(file);
    if nix::unistd::geteuid().as_raw() != owner {
        std::os::unix::fs::chown(&path, Some(owner), Some(owner))
            .map_err(|e| io("giving the proxy's uid", e))?;
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400))
        .map_err(|e| io("restricting", e))?;
    Ok(PodToken {
        path,
        sha256_hex: crate::pattern::sha256_hex(token.as_bytes()),
    })
}

/// Deletes `pod`'s token file, if there is one.
pub(crate) fn remove(lab_dir: &Path, pod: &str) -> Result<()> {
    let path = token_path(lab_dir, pod);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LabError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// `n` bytes from the kernel's CSPRNG, hex-encoded.
fn random_hex(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    Ok(crate::pattern::hex(&bytes))
}

/// Fails, saying why, when `owner` cannot walk down to `dir`: the lab's
/// directory sits under `$TMPDIR`, and a private `$TMPDIR` would otherwise
/// show up as a proxy that never gets ready.
fn check_reachable(dir: &Path, owner: u32) -> Result<()> {
    for ancestor in dir.ancestors() {
        let meta = fs::metadata(ancestor)
            .map_err(|e| LabError::io(format!("reading {}", ancestor.display()), e))?;
        let mode = meta.mode();
        let reachable = if meta.uid() == owner {
            mode & 0o100 != 0
        } else {
            mode & 0o001 != 0
        };
        if !reachable {
            return Err(LabError::invalid(
                "lab directory",
                format!(
                    "uid {owner} (the proxy) cannot enter {} (mode {:04o}), so it cannot read \
                     its CA token; point TMPDIR at a directory others may traverse",
                    ancestor.display(),
                    mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_private_and_named_by_their_digest() {
        let lab = tempfile::tempdir().expect("temp dir");
        // The tempdir itself is 0700 and ours; the check walks it as ours.
        let me = nix::unistd::geteuid().as_raw();
        fs::set_permissions(lab.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
        let first = create(lab.path(), "web", me).expect("token");
        assert_eq!(first.path, lab.path().join("tokens/web.token"));
        let text = fs::read_to_string(&first.path).expect("readable by its owner");
        assert_eq!(text.len(), 64, "32 bytes, hex");
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            first.sha256_hex,
            crate::pattern::sha256_hex(text.as_bytes())
        );
        let meta = fs::metadata(&first.path).expect("metadata");
        assert_eq!(meta.mode() & 0o777, 0o400);
        assert_eq!(
            fs::metadata(tokens_dir(lab.path())).expect("dir").mode() & 0o777,
            0o711
        );

        // Re-creating replaces the token; removing is idempotent.
        let second = create(lab.path(), "web", me).expect("token");
        assert_ne!(second.sha256_hex, first.sha256_hex);
        remove(lab.path(), "web").expect("removed");
        remove(lab.path(), "web").expect("already gone is fine");
        assert!(!second.path.exists());
    }

    #[test]
    fn an_unreachable_directory_is_reported_clearly() {
        let lab = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(lab.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        // Someone else's view of our 0700 directory.
        let stranger = nix::unistd::geteuid().as_raw().wrapping_add(4242);
        let err = check_reachable(lab.path(), stranger).expect_err("not reachable");
        let text = err.to_string();
        assert!(
            text.contains("cannot enter") && text.contains("TMPDIR") && text.contains("0700"),
            "{text}"
        );
    }
}
