//! The file source: the config directory, its documents, the kinds they
//! declare, and validation into the model.

pub mod destination_rule;
pub mod directory;
pub mod kinds;
pub mod loader;
pub mod names;
pub mod source;
pub mod validate;
pub mod validate_authz;
pub mod validate_destination;

pub use destination_rule::{DestinationRule, DestinationRuleSpec};
pub use directory::{LoadedConfig, ParseCache, load_dir, load_dir_cached};
pub use kinds::{
    AuthorizationPolicy, AuthorizationPolicySpec, PeerAuthentication, PeerAuthenticationSpec,
    Service, WorkloadEntry, WorkloadEntrySpec,
};
