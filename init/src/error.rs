//! The one error type of knit-init.

use std::io;

/// Everything that can go wrong while planning, reading or applying capture rules.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The capture configuration is inconsistent.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The option at fault, spelled as on the command line.
        field: &'static str,
        /// Why the value cannot be used.
        reason: String,
    },

    /// An iptables binary is not installed (or not in PATH).
    #[error("`{binary}` was not found in PATH; install the `iptables` package")]
    BinaryNotFound {
        /// The binary that was looked up.
        binary: String,
    },

    /// The kernel refused access to netfilter.
    #[error(
        "`{binary}` was not permitted to access netfilter: knit-init needs CAP_NET_ADMIN \
         (run it as root or grant NET_ADMIN); {binary} said: {stderr}"
    )]
    PermissionDenied {
        /// The binary that was refused.
        binary: String,
        /// Its error output, trimmed.
        stderr: String,
    },

    /// An iptables binary could not be started for another reason than being missing.
    #[error("could not run `{binary}`")]
    Spawn {
        /// The binary that failed to start.
        binary: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Reading the current rules failed.
    #[error("`{binary} -t {table}` failed ({status}): {stderr}")]
    SaveFailed {
        /// The save binary.
        binary: String,
        /// The table that was read.
        table: String,
        /// How the process ended.
        status: String,
        /// Its error output, trimmed.
        stderr: String,
    },

    /// The restore transaction was rejected; nothing was changed.
    #[error(
        "`{binary} --noflush` rejected the transaction ({status}); no rule was changed: {stderr}"
    )]
    RestoreFailed {
        /// The restore binary.
        binary: String,
        /// How the process ended.
        status: String,
        /// Its error output, trimmed.
        stderr: String,
    },

    /// The output of iptables-save has a shape knit-init does not understand.
    #[error("cannot parse iptables-save output, line {line_number} `{line}`: {reason}")]
    ParseSave {
        /// 1-based line number in the save output.
        line_number: usize,
        /// The offending line.
        line: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A rule outside knit-init's chains refers to one of them, so removing them would fail.
    #[error(
        "chain {chain} in table {table} is not managed by knit-init but jumps to {target}; \
         remove that rule before running --cleanup"
    )]
    ForeignReference {
        /// The table holding the rule.
        table: String,
        /// The chain holding the foreign rule.
        chain: String,
        /// The knit-init chain it jumps to.
        target: String,
    },
}
