//! The file source: the config directory, its documents, the kinds they
//! declare, and validation into the model.

pub mod kinds;
pub mod loader;
pub mod names;
pub mod source;
pub mod validate;

pub use kinds::{
    PeerAuthentication, PeerAuthenticationSpec, Service, WorkloadEntry, WorkloadEntrySpec,
};
pub use loader::{LoadedConfig, load_dir};
