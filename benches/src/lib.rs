//! knit-bench: Knit's load scenarios, run in the lab side by side with the
//! direct path.
//!
//! One lab holds a client→server pod pair per contender, so the contenders
//! can be measured in turns within one run and drift on the machine hits
//! each of them alike:
//!
//! - `direct`: no sidecars, the client calls the server pod's address;
//! - `knit-plain`: Knit sidecars on both pods, the mesh hop in plaintext
//!   (a DestinationRule with `tls: {mode: DISABLE}` for the service);
//! - `knit-mtls`: Knit sidecars on both pods, the mesh hop in mutual TLS
//!   (the default);
//! - `envoy-mtls`: an Envoy pair configured like Istio's sidecars, TLS 1.3
//!   mutual TLS between them (see [`envoy`]).
//!
//! The control-plane benchmark ([`control_plane`]) stands apart: knitd as
//! its own process on loopback, serving a large mesh to many simulated
//! proxies in the benchmark's process.
//!
//! The load is open loop at a constant rate, with latency counted from each
//! request's slot in the schedule (see [`knit_lab::Histogram`]). Around each
//! measurement the harness reads `/proc`: the CPU time and memory of each
//! proxy process, and the load the machine carried besides the lab's own
//! processes.

#![forbid(unsafe_code)]

pub mod control_plane;
pub mod envoy;
pub mod handshake;
pub mod load;
pub mod procfs;
pub mod results;
pub mod run;
pub mod svg;
pub mod topology;

use std::path::PathBuf;

/// What can go wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Lab(#[from] knit_lab::LabError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {reason}")]
    Parse { what: String, reason: String },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{tool} was not found ({hint})")]
    ToolMissing { tool: String, hint: String },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn parse(what: impl Into<String>, reason: impl ToString) -> BenchError {
        BenchError::Parse {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> BenchError {
        BenchError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
