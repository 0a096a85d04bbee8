//! Reading the proxies' `/metrics`: the samples of a Prometheus text
//! exposition (`name{label="value",...} number`), enough for tests to ask
//! for a counter, a gauge or the label values of an info series.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parses an exposition; comments, blank and malformed lines are
    /// skipped (a test asking for a missing sample gets `None` and says so).
    pub fn parse(text: &str) -> Samples {
        Samples(text.lines().filter_map(parse_line).collect())
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The value of the first sample named `name` (any labels).
    pub fn value(&self, name: &str) -> Option<f64> {
        self.matching(name, &[]).next().map(|s| s.value)
    }

    /// The sum over samples named `name` with `labels`; 0 when none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The values of label `label` across samples named `name`, in order.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.matching(name, &[])
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (BTreeMap::new(), &line[name_end..])
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"}` → the labels and what follows the `}`.
fn parse_labels(mut rest: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key, value);
        rest = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels() {
        let text = "# HELP knit_identity_renewals Renewals.\n\
                    # TYPE knit_identity_renewals counter\n\
                    knit_identity_renewals_total 7\n\
                    knit_identity_trust_bundle_root_info{fingerprint=\"sha256:bb\"} 1\n\
                    knit_identity_trust_bundle_root_info{fingerprint=\"sha256:aa\"} 1\n\
                    knit_requests_total{reporter=\"source\",response_code=\"200\"} 40 1700000000\n\
                    knit_requests_total{reporter=\"source\",response_code=\"503\"} 2\n\
                    odd{a=\"x \\\"quoted\\\" \\\\ y\",b=\"\"} -1.5\n\
                    not a sample\n\
                    # EOF\n";
        let s = Samples::parse(text);
        assert_eq!(s.0.len(), 6, "{s:?}");
        assert_eq!(s.value("knit_identity_renewals_total"), Some(7.0));
        assert_eq!(s.value("missing"), None);
        assert_eq!(
            s.label_values("knit_identity_trust_bundle_root_info", "fingerprint"),
            ["sha256:bb", "sha256:aa"]
        );
        assert_eq!(
            s.sum("knit_requests_total", &[("reporter", "source")]),
            42.0
        );
        assert_eq!(
            s.sum("knit_requests_total", &[("response_code", "503")]),
            2.0
        );
        let odd = s.matching("odd", &[]).next().expect("parsed");
        assert_eq!(odd.labels["a"], "x \"quoted\" \\ y");
        assert_eq!((odd.labels["b"].as_str(), odd.value), ("", -1.5));
    }
}
