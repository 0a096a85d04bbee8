//! knit-init: computes the iptables rules that capture a pod's TCP traffic for
//! its Knit proxy, as data, and applies them in one atomic
//! `iptables-restore --noflush` transaction.
//!
//! The pipeline is `plan` (config → [`Ruleset`], pure) → read the current
//! table ([`ExistingState`]) → `render_restore` / `render_cleanup` (pure) →
//! [`Netfilter::restore`] (the only side effect).
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod error;
pub mod iptables;
pub mod plan;
pub mod render;
pub mod rules;
pub mod run;
pub mod state;

pub use cli::Cli;
pub use config::CaptureConfig;
pub use error::InitError;
pub use iptables::{Iptables, Netfilter};
pub use plan::plan;
pub use render::{installed_state, render_cleanup, render_restore};
pub use rules::{BuiltinChain, Chain, Cidr, Jump, Match, Protocol, Rule, Ruleset, Table, Target};
pub use run::{Outcome, apply, cleanup, run};
pub use state::{ExistingRule, ExistingState};
