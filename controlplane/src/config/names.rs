//! Kubernetes' name rules (facts from the API conventions), as pure checks
//! returning the reason a value is rejected.

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: namespaces, Service port names.
pub fn check_dns1123_label(value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| is_lower_alnum(c) || c == '-')
        && value.starts_with(is_lower_alnum)
        && value.ends_with(is_lower_alnum);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid DNS label (at most 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit)"
        ))
    }
}

/// RFC 1035 label: Service names, which become DNS names and must start with
/// a letter.
pub fn check_dns1035_label(value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| is_lower_alnum(c) || c == '-')
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value.ends_with(is_lower_alnum);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid DNS label (at most 63 lowercase letters, digits and '-', \
             starting with a letter and ending with a letter or digit)"
        ))
    }
}

/// RFC 1123 subdomain: pod (WorkloadEntry) and service account names.
pub fn check_dns1123_subdomain(value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| is_lower_alnum(c) || c == '-')
                && label.starts_with(is_lower_alnum)
                && label.ends_with(is_lower_alnum)
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid DNS subdomain (dot-separated DNS labels, at most 253 characters)"
        ))
    }
}

/// IANA service name: named ports (`targetPort`, a workload's port names).
pub fn check_port_name(value: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 15
        && value.chars().all(|c| is_lower_alnum(c) || c == '-')
        && value.chars().any(|c| c.is_ascii_lowercase())
        && !value.starts_with('-')
        && !value.ends_with('-')
        && !value.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid port name (at most 15 lowercase letters, digits and \
             single '-', with at least one letter)"
        ))
    }
}

fn is_label_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label key: `[prefix/]name`, prefix a DNS subdomain.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| check_dns1123_subdomain(p).is_ok());
    if prefix_ok && is_label_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a valid label key (optional DNS subdomain prefix and '/', then at \
             most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        ))
    }
}

/// Label value: empty, or like a label key's name part.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value (at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        type Check = fn(&str) -> Result<(), String>;
        let long_label = "a".repeat(64);
        let table: Vec<(&str, Check, &str, bool)> = vec![
            ("1123 label", check_dns1123_label, "backend", true),
            ("1123 label", check_dns1123_label, "1st", true),
            ("1123 label", check_dns1123_label, "", false),
            ("1123 label", check_dns1123_label, "Backend", false),
            ("1123 label", check_dns1123_label, "-a", false),
            ("1123 label", check_dns1123_label, "a.b", false),
            ("1123 label", check_dns1123_label, &long_label, false),
            ("1035 label", check_dns1035_label, "backend-v2", true),
            ("1035 label", check_dns1035_label, "1st", false),
            ("1035 label", check_dns1035_label, "a-", false),
            ("subdomain", check_dns1123_subdomain, "pod-a.web", true),
            ("subdomain", check_dns1123_subdomain, "pod..a", false),
            ("subdomain", check_dns1123_subdomain, "Pod", false),
            ("port name", check_port_name, "http", true),
            ("port name", check_port_name, "http-web", true),
            ("port name", check_port_name, "8080", false),
            ("port name", check_port_name, "http--web", false),
            ("port name", check_port_name, "a-very-long-port-name", false),
            ("port name", check_port_name, "HTTP", false),
            ("label key", check_label_key, "app", true),
            ("label key", check_label_key, "app.kubernetes.io/name", true),
            ("label key", check_label_key, "App_Name.x", true),
            ("label key", check_label_key, "/name", false),
            ("label key", check_label_key, "bad key", false),
            ("label key", check_label_key, "", false),
            ("label value", check_label_value, "", true),
            ("label value", check_label_value, "v1.2_3", true),
            ("label value", check_label_value, "-v1", false),
        ];
        for (rule, check, value, valid) in table {
            assert_eq!(check(value).is_ok(), valid, "{rule}: {value:?}");
        }
    }
}
