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
}

impl Error {
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
