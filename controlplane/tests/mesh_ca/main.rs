//! The mesh CA in-process on loopback: `Certificates.Sign` with its
//! refusals, persistence across restarts, plug-in CAs, the trust bundle,
//! and the TLS port.

#[path = "../common/mod.rs"]
mod common;

mod sign;
mod state;
mod support;
mod tls;
