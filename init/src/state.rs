//! The rules currently in the kernel, read from `iptables-save -t TABLE`.

use crate::error::InitError;
use crate::rules::{CHAIN_PREFIX, Table};

/// One rule as iptables-save printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingRule {
    /// The chain holding the rule.
    pub chain: String,
    /// Everything after `-A CHAIN `, exactly as printed; valid input for `-D CHAIN`.
    pub spec: String,
    /// The chain or target after `-j`/`-g`, if any.
    pub target: Option<String>,
}

/// The chains and rules of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingState {
    table: Table,
    chains: Vec<String>,
    rules: Vec<ExistingRule>,
}

impl ExistingState {
    /// A table without any user chain or rule (what a fresh network namespace has).
    pub fn empty(table: Table) -> Self {
        ExistingState {
            table,
            chains: table
                .builtin_chains()
                .iter()
                .map(|c| c.to_string())
                .collect(),
            rules: Vec::new(),
        }
    }

    /// Builds a state from its parts; `chains` should include the builtin ones.
    pub fn new(table: Table, chains: Vec<String>, rules: Vec<ExistingRule>) -> Self {
        ExistingState {
            table,
            chains,
            rules,
        }
    }

    /// Parses the `*TABLE` section of iptables-save output (without `-c`).
    ///
    /// Output without that section means the table holds nothing yet.
    pub fn parse_save(table: Table, text: &str) -> Result<Self, InitError> {
        let header = format!("*{}", table.name());
        let mut chains = Vec::new();
        let mut rules = Vec::new();
        let mut in_table = false;
        let mut saw_table = false;
        for (index, raw_line) in text.lines().enumerate() {
            let line = raw_line.trim_end();
            let error = |reason: &str| InitError::ParseSave {
                line_number: index + 1,
                line: line.to_string(),
                reason: reason.to_string(),
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if in_table {
                    return Err(error("table starts before the previous one was committed"));
                }
                in_table = line == header;
                saw_table |= in_table;
                if name.is_empty() {
                    return Err(error("table header without a name"));
                }
                continue;
            }
            if !in_table {
                continue;
            }
            if line == "COMMIT" {
                in_table = false;
            } else if let Some(declaration) = line.strip_prefix(':') {
                let name = declaration
                    .split_whitespace()
                    .next()
                    .ok_or_else(|| error("chain declaration without a name"))?;
                chains.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest
                    .split_once(' ')
                    .ok_or_else(|| error("rule without a specification"))?;
                let tokens = split_words(spec).map_err(|reason| error(&reason))?;
                let target = tokens
                    .windows(2)
                    .find(|pair| matches!(pair[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
                    .map(|pair| pair[1].clone());
                rules.push(ExistingRule {
                    chain: chain.to_string(),
                    spec: spec.to_string(),
                    target,
                });
            } else {
                return Err(error("expected a chain declaration, a rule or COMMIT"));
            }
        }
        if in_table {
            return Err(InitError::ParseSave {
                line_number: text.lines().count(),
                line: String::new(),
                reason: format!("table {} is not terminated by COMMIT", table.name()),
            });
        }
        if !saw_table {
            return Ok(ExistingState::empty(table));
        }
        Ok(ExistingState {
            table,
            chains,
            rules,
        })
    }

    /// The table this state describes.
    pub fn table(&self) -> Table {
        self.table
    }

    /// All chains, builtin and user-defined, in save order.
    pub fn chains(&self) -> &[String] {
        &self.chains
    }

    /// All rules, in save order.
    pub fn rules(&self) -> &[ExistingRule] {
        &self.rules
    }

    /// Whether some rule of builtin chain `from` jumps to `to`.
    pub fn has_jump(&self, from: &str, to: &str) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.chain == from && rule.target.as_deref() == Some(to))
    }

    /// The user chains that belong to knit-init.
    pub fn knit_chains(&self) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .map(String::as_str)
            .filter(|name| is_knit_chain(self.table, name))
    }

    /// Rules outside knit-init's chains whose target is one of them.
    pub fn rules_entering_knit_chains(&self) -> impl Iterator<Item = &ExistingRule> {
        self.rules.iter().filter(|rule| {
            !is_knit_chain(self.table, &rule.chain)
                && rule
                    .target
                    .as_deref()
                    .is_some_and(|target| is_knit_chain(self.table, target))
        })
    }
}

fn is_knit_chain(table: Table, name: &str) -> bool {
    name.starts_with(CHAIN_PREFIX) && !table.is_builtin(name)
}

/// Splits a rule specification into words the way iptables-restore does:
/// whitespace separates, double quotes group, a backslash escapes the next character.
fn split_words(spec: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let escaped = chars
                    .next()
                    .ok_or_else(|| "rule ends with a lone backslash".to_string())?;
                current.push(escaped);
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated double quote".to_string());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALLED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 04:25:36 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [0:0]
:KNIT_INBOUND - [0:0]
:KNIT_OUTPUT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -m comment --comment \"knit: inbound TCP enters knit capture\" -j KNIT_INBOUND
-A OUTPUT -p udp -m comment --comment \"not ours -j KNIT_OUTPUT\" -j OTHER
-A OUTPUT -p tcp -m comment --comment \"knit: outbound TCP enters knit capture\" -j KNIT_OUTPUT
-A KNIT_INBOUND -p tcp -m comment --comment \"knit: capture all other inbound TCP\" -j KNIT_IN_REDIRECT
-A OTHER -p udp -j RETURN
COMMIT
# Completed on Sun Nov 22 04:25:36 2026
";

    #[test]
    fn parses_chains_rules_and_targets() {
        let state = ExistingState::parse_save(Table::Nat, INSTALLED).expect("valid save output");
        assert_eq!(
            state.chains(),
            [
                "PREROUTING",
                "INPUT",
                "OUTPUT",
                "POSTROUTING",
                "KNIT_INBOUND",
                "KNIT_OUTPUT",
                "OTHER"
            ]
        );
        assert_eq!(
            state.knit_chains().collect::<Vec<_>>(),
            ["KNIT_INBOUND", "KNIT_OUTPUT"]
        );
        assert!(state.has_jump("PREROUTING", "KNIT_INBOUND"));
        assert!(state.has_jump("OUTPUT", "KNIT_OUTPUT"));
        assert!(!state.has_jump("PREROUTING", "KNIT_OUTPUT"));
        let second = &state.rules()[1];
        assert_eq!(second.chain, "OUTPUT");
        assert_eq!(
            second.spec,
            "-p udp -m comment --comment \"not ours -j KNIT_OUTPUT\" -j OTHER"
        );
        assert_eq!(
            second.target.as_deref(),
            Some("OTHER"),
            "quoted -j is not a target"
        );
        let entering: Vec<(&str, Option<&str>)> = state
            .rules_entering_knit_chains()
            .map(|r| (r.chain.as_str(), r.target.as_deref()))
            .collect();
        assert_eq!(
            entering,
            [
                ("PREROUTING", Some("KNIT_INBOUND")),
                ("OUTPUT", Some("KNIT_OUTPUT"))
            ]
        );
    }

    #[test]
    fn missing_or_other_tables_mean_an_empty_nat_table() {
        let cases = [
            "",
            "# Warning: iptables-legacy tables present\n",
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KNIT_X\nCOMMIT\n",
        ];
        for text in cases {
            let state = ExistingState::parse_save(Table::Nat, text).expect("valid");
            assert_eq!(state, ExistingState::empty(Table::Nat), "input {text:?}");
        }
    }

    #[test]
    fn malformed_output_is_rejected_with_its_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("*nat\n-A OUTPUT\nCOMMIT\n", 2, "without a specification"),
            (
                "*nat\n-I OUTPUT -j X\nCOMMIT\n",
                2,
                "expected a chain declaration",
            ),
            (
                "*nat\n-A OUTPUT -m comment --comment \"open -j X\nCOMMIT\n",
                2,
                "unterminated",
            ),
            ("*nat\n:\nCOMMIT\n", 2, "without a name"),
            (
                "*nat\n:OUTPUT ACCEPT [0:0]\n",
                2,
                "not terminated by COMMIT",
            ),
            ("*nat\n*filter\nCOMMIT\n", 2, "before the previous one"),
        ];
        for (text, line_number, fragment) in cases {
            match ExistingState::parse_save(Table::Nat, text) {
                Err(InitError::ParseSave {
                    line_number: got_line,
                    reason,
                    ..
                }) => {
                    assert_eq!(got_line, *line_number, "input {text:?}");
                    assert!(reason.contains(fragment), "input {text:?}: `{reason}`");
                }
                other => panic!("input {text:?}: expected a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn words_split_like_iptables_restore() {
        let cases: &[(&str, &[&str])] = &[
            ("-p tcp -j RETURN", &["-p", "tcp", "-j", "RETURN"]),
            ("  -p   tcp  ", &["-p", "tcp"]),
            ("--comment \"a b\" -j X", &["--comment", "a b", "-j", "X"]),
            ("--comment \"say \\\"hi\\\"\"", &["--comment", "say \"hi\""]),
            ("--comment \"\"", &["--comment", ""]),
        ];
        for (spec, expected) in cases {
            let words = split_words(spec).expect("well-formed spec");
            assert_eq!(words, *expected, "spec {spec:?}");
        }
    }
}
