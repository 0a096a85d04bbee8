//! The one error type of the lab. Every variant names what failed and where,
//! so a failing end-to-end test says why without digging through logs.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout the lab.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("knit-lab needs root (CAP_NET_ADMIN) to create network namespaces; run it as root")]
    NotRoot,

    #[error(
        "required tool `{tool}` not found in {searched}; install iproute2, iptables, util-linux and procps (e.g. apt-get install iproute2 iptables util-linux procps)"
    )]
    ToolMissing { tool: String, searched: String },

    #[error("{name} not found in {dirs}; run: cargo build --workspace")]
    BinaryNotFound { name: String, dirs: String },

    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },

    #[error("`{command}` did not finish within {after:?} and was killed")]
    CommandTimeout { command: String, after: Duration },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },

    #[error("{kind} `{name}` does not exist in this lab")]
    NotFound { kind: &'static str, name: String },

    #[error("{kind} `{name}` already exists in this lab")]
    AlreadyExists { kind: &'static str, name: String },

    #[error("no free address left in {range}")]
    AddressesExhausted { range: &'static str },

    #[error("{name} exited ({status}); log {log}:\n{tail}")]
    ProcessExited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("timed out after {after:?} waiting for {what}; last: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },

    #[error("GET {url} from {place} failed: {reason}")]
    Http {
        url: String,
        place: String,
        reason: String,
    },

    #[error("could not parse {what}: {reason}")]
    Parse { what: String, reason: String },

    #[error("{what}: {detail}")]
    CheckFailed { what: String, detail: String },

    #[error("TLS: {context}: {reason}")]
    Tls { context: String, reason: String },

    #[error("the lab has been shut down; nothing more can be started in it")]
    ShutDown,
}

impl LabError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        LabError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn parse(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        LabError::Parse {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
