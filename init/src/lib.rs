//! knit-init: computes the iptables and ip6tables rules that capture a pod's
//! TCP traffic for its Knit proxy, as data, and applies them with one atomic
//! `iptables-restore --noflush` transaction per address family.
//!
//! The pipeline is `plan` (config + family → [`Ruleset`], pure) → read the
//! current table ([`ExistingState`]) → `render_restore` / `render_cleanup`
//! (pure) → [`Netfilter::restore`] (the only side effect). [`run`] strings
//! the families together fail-closed: IPv4, then IPv6, and IPv4 is removed
//! again when IPv6 fails.
#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod config;
pub mod dry_run;
pub mod error;
pub mod family;
pub mod iptables;
pub mod netns;
pub mod outcome;
pub mod plan;
pub mod probe;
pub mod render;
pub mod rules;
pub mod run;
pub mod state;

pub use cli::{Cli, Ipv6Mode};
pub use config::{CaptureConfig, Selection};
pub use error::InitError;
pub use family::{Backend, Family};
pub use iptables::{Iptables, Netfilter};
pub use outcome::{Outcome, Report};
pub use plan::plan;
pub use probe::{AddressProbe, IpCommand};
pub use render::{installed_state, render_cleanup, render_restore};
pub use rules::{BuiltinChain, Chain, Cidr, Jump, Match, Protocol, Rule, Ruleset, Table, Target};
pub use run::{Tools, apply_all, cleanup_all, run};
pub use state::{ExistingRule, ExistingState};
