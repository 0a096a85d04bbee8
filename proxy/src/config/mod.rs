//! Config flow: control-plane stream → validated `Snapshot` → `ArcSwap`.

pub mod backoff;
pub mod discovery;
pub mod snapshot;
