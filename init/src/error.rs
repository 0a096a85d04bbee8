//! The one error type of knit-init.

use std::io;
use std::path::PathBuf;

use crate::family::Family;

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

    /// A tool knit-init runs is not installed (or not in PATH).
    #[error("{}", not_found_message(binary, package))]
    BinaryNotFound {
        /// The binary that was looked up, as given (a name or a path).
        binary: String,
        /// The distribution package that provides it.
        package: &'static str,
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

    /// A tool could not be started for another reason than being missing.
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
         remove that rule before running --cleanup or changing what is captured"
    )]
    ForeignReference {
        /// The table holding the rule.
        table: String,
        /// The chain holding the foreign rule.
        chain: String,
        /// The knit-init chain it jumps to.
        target: String,
    },

    /// A command that inspects the namespace (not netfilter) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    ProbeFailed {
        /// The command line, as one string.
        command: String,
        /// How the process ended.
        status: String,
        /// Its error output, trimmed.
        stderr: String,
    },

    /// `--ipv6 auto` could not find out whether the namespace has IPv6.
    #[error("cannot resolve --ipv6 auto (pass --ipv6 on or --ipv6 off to skip the detection)")]
    Ipv6AutoDetection {
        /// Why the detection failed.
        #[source]
        source: Box<InitError>,
    },

    /// Rules of this family live in the other iptables backend too.
    #[error(
        "iptables backend mismatch ({family}): knit-init writes through {in_use}, but {finding}; \
         the kernel runs both rule sets, so capture would not be what knit-init installed. \
         Remove those rules or use the matching iptables variant; \
         --allow-backend-mismatch turns this into a warning"
    )]
    BackendMismatch {
        /// The address family checked.
        family: Family,
        /// The tool in use with its backend, e.g. "iptables-save v1.8.9 (nf_tables)".
        in_use: String,
        /// What the other backend holds, naming its tool.
        finding: String,
    },

    /// `--netns` could not be entered; nothing was changed.
    #[error("cannot enter the network namespace {}: {reason}", path.display())]
    Netns {
        /// The namespace file given with `--netns`.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// Applying the IPv6 rules failed after the IPv4 rules were applied; the
    /// IPv4 rules were removed again, so neither family is captured.
    #[error(
        "IPv6 capture failed after IPv4 capture was applied; the IPv4 rules were removed \
         again so IPv4 is not captured without IPv6"
    )]
    Ipv6FailedRolledBack {
        /// Why IPv6 failed.
        #[source]
        source: Box<InitError>,
    },

    /// Applying the IPv6 rules failed, and so did removing the IPv4 rules again.
    #[error(
        "IPv6 capture failed ({ipv6}) and removing the IPv4 rules again failed too, so IPv4 \
         may be captured while IPv6 is not; run `knit-init --cleanup`"
    )]
    RollbackFailed {
        /// Why IPv6 failed.
        ipv6: Box<InitError>,
        /// Why the IPv4 cleanup failed.
        #[source]
        rollback: Box<InitError>,
    },
}

fn not_found_message(binary: &str, package: &str) -> String {
    if binary.contains('/') {
        format!("`{binary}` does not exist; install the `{package}` package or fix the path")
    } else {
        format!("`{binary}` was not found in PATH; install the `{package}` package")
    }
}
