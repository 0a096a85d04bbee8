//! The mesh CA: it signs each proxy's workload certificate for the SPIFFE
//! identity of the authenticated caller, and serves knitd's own gRPC over
//! TLS with a certificate of its own making.
//!
//! - [`material`] finds the signing key and certificate: generated into
//!   `--state-dir`, loaded from it, or plugged in with `--ca-cert/--ca-key
//!   [--ca-chain]` ([`store`] keeps the files).
//! - [`authority`] checks them, builds the trust bundle and issues
//!   certificates.
//! - [`csr`] says what a CSR must look like before anything is signed.
//! - [`auth`] says who is calling ([`auth::CallerAuthenticator`]; file mode
//!   checks a token digest from the WorkloadEntry).
//! - [`service`] serves `Certificates.Sign`.
//! - [`tls`] runs the TLS server on 15012 with its renewed certificate.
//!
//! # Flow of a `Sign`
//!
//! ```text
//! authorization: Bearer <token> ─► CallerAuthenticator ─► CallerIdentity {ns, sa, workload}
//!   ─► SpiffeId spiffe://<td>/ns/<ns>/sa/<sa>
//!   ─► csr::check_csr (PEM, PKCS#10, self-signature, key type, SAN == that ID)
//!   ─► CertificateAuthority::issue (URI SAN only, not a CA, serverAuth+clientAuth,
//!      min(ttl, max), notBefore 1 min back, random serial)
//!   ─► SignResponse { leaf + intermediates, trust bundle }
//! ```
//!
//! # Rotating the root without failed handshakes
//!
//! Peers accept a certificate when it chains to any root of the bundle they
//! hold, and every `Sign` answer carries the bundle, so a proxy picks up a
//! new bundle when it next renews its certificate (at the latest after
//! `--max-cert-ttl`). Knit rotates in three restarts of knitd; its state is
//! reloaded on each and proxies keep serving meanwhile:
//!
//! 1. **Trust the new root first.** Create the new root (any CA tool, or a
//!    knitd run with an empty `--state-dir` of its own), and restart knitd
//!    with it in `--extra-trust-bundle`. The old root still signs. Wait until
//!    every proxy has renewed (at most `--max-cert-ttl`): all now trust both.
//! 2. **Sign with the new root.** Restart knitd with the new root active
//!    (`--ca-cert/--ca-key`, or its files in place of `root-cert.pem` and
//!    `root-key.pem` in `--state-dir`) and the *old* root in
//!    `--extra-trust-bundle`. New certificates chain to the new root; the old
//!    ones still verify because every peer trusts both.
//! 3. **Drop the old root** once every certificate it signed has expired
//!    (`--max-cert-ttl` after step 2): restart knitd without it in the extra
//!    bundle.
//!
//! An intermediate under an unchanged root rotates in one step: certificates
//! from the old and the new intermediate chain to the same root.
//! `/debug/ca` on the debug port shows the active issuer and the bundle's
//! fingerprints, to check each step; each proxy's `/metrics` shows the
//! same fingerprints for what it holds (`knit_identity_trust_bundle_root_info`
//! per root, and the root its certificate chains to in
//! `knit_identity_cert_info`), so "every proxy trusts both" (after step 1)
//! and "every certificate chains to the new root" (before step 3) can be
//! checked rather than waited out. Proxies keep serving their certificates
//! while knitd restarts, and retry a renewal that fails meanwhile.

pub mod auth;
pub mod authority;
pub mod csr;
pub mod identity;
pub mod material;
pub mod pki;
pub mod service;
pub mod store;
pub mod tls;

#[cfg(test)]
mod rotation_tests;

pub use auth::{CallerAuthenticator, CallerIdentity, FileTokenAuthenticator, WorkloadTokens};
pub use authority::{
    CaOptions, CaOrigin, CaSource, CaView, CertificateAuthority, DEFAULT_CERT_TTL,
    DEFAULT_MAX_CERT_TTL, IssuedCert,
};
pub use identity::{DEFAULT_TRUST_DOMAIN, SpiffeId, TrustDomain, parse_duration};
pub use service::CertificatesService;
pub use tls::ServingCert;
