//! How the proxy reaches knitd, for discovery and for its certificate:
//! `https://` (knitd's TLS port, 15012), verifying knitd's certificate
//! against a root the pod is given (`--control-plane-ca`, in Kubernetes a
//! mounted ConfigMap), or `http://` (15010) for development and the lab.
//!
//! The root file is read at every connection, so a rotated root that is
//! remounted in place is picked up on the next reconnect.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A validated control-plane URL and, for `https://`, the root to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneTarget {
    url: String,
    ca_file: Option<PathBuf>,
}

impl ControlPlaneTarget {
    /// Checks the pairing: `https://` needs `ca_file`; `http://` must not
    /// have one (it would never be used). Errors say which.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| e.to_string())?;
        match (endpoint.uri().scheme_str(), ca_file) {
            (Some("https"), Some(_)) | (Some("http"), None) => {}
            (Some("https"), None) => {
                return Err(
                    "an https:// control plane needs --control-plane-ca (the root that signs \
                     knitd's certificate)"
                        .to_owned(),
                );
            }
            (Some("http"), Some(_)) => {
                return Err(
                    "--control-plane-ca is only used with an https:// control plane".to_owned(),
                );
            }
            (scheme, _) => {
                return Err(format!(
                    "the scheme must be http:// or https://, not {:?}",
                    scheme.unwrap_or("")
                ));
            }
        }
        if endpoint.uri().host().is_none() {
            return Err("the URL names no host".to_owned());
        }
        Ok(ControlPlaneTarget {
            url: url.to_owned(),
            ca_file: ca_file.map(Path::to_path_buf),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_tls(&self) -> bool {
        self.ca_file.is_some()
    }

    /// A tonic endpoint for one connection; over TLS, with the root read
    /// now. knitd is verified by the URL's host (DNS name or IP address).
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(self.url.clone()).map_err(|e| e.to_string())?;
        let Some(ca_file) = &self.ca_file else {
            return Ok(endpoint);
        };
        let pem = std::fs::read(ca_file)
            .map_err(|e| format!("reading --control-plane-ca {}: {e}", ca_file.display()))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "--control-plane-ca {}: no PEM certificate in the file",
                ca_file.display()
            ));
        }
        let host = endpoint
            .uri()
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .unwrap_or_default();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name(host);
        endpoint.tls_config(tls).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_and_root_must_agree() {
        let root = Path::new("/etc/knit/root.pem");
        let table: [(&str, Option<&Path>, Result<bool, &str>); 6] = [
            ("http://198.18.0.1:15010", None, Ok(false)),
            ("https://knitd.knit-system.svc:15012", Some(root), Ok(true)),
            (
                "https://198.18.0.1:15012",
                None,
                Err("needs --control-plane-ca"),
            ),
            (
                "http://198.18.0.1:15010",
                Some(root),
                Err("only used with an https://"),
            ),
            ("ftp://198.18.0.1:15010", None, Err("http:// or https://")),
            ("not a url", None, Err("")),
        ];
        for (url, ca, want) in table {
            match (ControlPlaneTarget::new(url, ca), want) {
                (Ok(target), Ok(tls)) => assert_eq!(target.is_tls(), tls, "{url}"),
                (Err(err), Err(part)) => assert!(err.contains(part), "{url}: {err}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn an_unreadable_or_empty_root_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let target =
            ControlPlaneTarget::new("https://198.18.0.1:15012", Some(&missing)).expect("valid");
        let err = target.endpoint().expect_err("missing file");
        assert!(err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").expect("write");
        let target =
            ControlPlaneTarget::new("https://198.18.0.1:15012", Some(&empty)).expect("valid");
        let err = target.endpoint().expect_err("no certificate");
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
