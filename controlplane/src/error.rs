//! The one error type of the control plane.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::model::DocumentRef;

/// Everything that can go wrong in knitd: bad config (reported, never fatal
/// while serving) and failures to start or run the servers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config directory itself could not be listed.
    #[error("config error: cannot read config dir {}: {source}", dir.display())]
    ConfigDir { dir: PathBuf, source: io::Error },

    /// One file in the config directory could not be read.
    #[error("config error: {file}: cannot read: {reason}")]
    ConfigFile { file: String, reason: String },

    /// A document as a whole is unusable (YAML syntax, not a mapping, ...).
    #[error("config error: {at}: {reason}")]
    Document {
        at: Box<DocumentRef>,
        reason: String,
    },

    /// A document has a bad value at a known field path.
    #[error("config error: {at}: {field}: {reason}")]
    Field {
        at: Box<DocumentRef>,
        field: String,
        reason: String,
    },

    /// A listening socket could not be opened.
    #[error("cannot listen for {purpose} on {addr}: {source}")]
    Bind {
        purpose: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },

    /// A listening socket could not tell its own address.
    #[error("cannot read the local address of the {purpose} listener: {source}")]
    LocalAddr {
        purpose: &'static str,
        source: io::Error,
    },

    /// The gRPC server stopped with an error.
    #[error("discovery gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),

    /// The CRD could not be rendered as YAML.
    #[error("cannot render the {kind} CRD as YAML: {reason}")]
    CrdRender { kind: &'static str, reason: String },

    /// JSON encoding of a debug view failed.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// A background task of knitd died.
    #[error("knitd task {task} failed: {reason}")]
    Task { task: &'static str, reason: String },

    /// A command-line option has a bad value or lacks a companion.
    #[error("invalid {flag}: {reason}")]
    InvalidOption { flag: &'static str, reason: String },

    /// A file of the CA (state dir, plug-in CA, trust bundle) is unusable.
    #[error("CA error: {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },

    /// The CA material as a whole is unusable (not a CA, key mismatch, ...).
    #[error("CA error: {reason}")]
    Ca { reason: String },

    /// Building or signing a certificate failed inside the CA.
    #[error("cannot issue a certificate: {reason}")]
    Issue { reason: String },

    /// The TLS server could not be set up.
    #[error("TLS error: {reason}")]
    Tls { reason: String },

    /// A caller presented no token, or one nobody issued.
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },

    /// The caller could not be checked now (e.g. the token review API is
    /// down); retrying later may work.
    #[error("cannot authenticate the caller now: {reason}")]
    AuthUnavailable { reason: String },

    /// A request that cannot be served as sent: a CSR that cannot be read
    /// or whose signature does not verify, a negative TTL.
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },

    /// A CSR asks for something the caller may not have; the reason names
    /// what was asked and what is allowed.
    #[error("permission denied: {reason}")]
    NotAllowed { reason: String },
}

impl Error {
    /// The gRPC status a request failing with this error is answered with.
    /// Internal failures keep their message: it never holds key material.
    pub fn to_status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Error::Unauthenticated { .. } => tonic::Status::unauthenticated(message),
            Error::AuthUnavailable { .. } => tonic::Status::unavailable(message),
            Error::InvalidRequest { .. } => tonic::Status::invalid_argument(message),
            Error::NotAllowed { .. } => tonic::Status::permission_denied(message),
            _ => tonic::Status::internal(message),
        }
    }

    /// File and document an error is about, if any: used to report errors
    /// in the order they appear in the config directory.
    pub fn position(&self) -> Option<(&str, usize)> {
        match self {
            Error::ConfigFile { file, .. } => Some((file, 0)),
            Error::Document { at, .. } | Error::Field { at, .. } => Some((&at.file, at.index)),
            _ => None,
        }
    }
}
