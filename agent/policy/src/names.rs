//! Kubernetes' name and label rules (apimachinery's validation), written
//! out by hand: each check returns the problem in words close to the API
//! server's, so people recognise them.
//!
//! Shared by every parser of Kubernetes objects in Weir (policies here, pods
//! and namespaces in weir-state's manifests source), so that one object kind
//! never accepts a label another refuses.

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const IANA_SVC_NAME_MAX: usize = 15;

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (namespace names).
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "{s:?}: must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !is_dns1123_label(s) {
        return Err(format!(
            "{s:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters \
             or '-', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= DNS1123_SUBDOMAIN_MAX && s.split('.').all(is_dns1123_label)
}

/// Dot-separated DNS-1123 labels, at most 253 characters (pod names).
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "{s:?}: must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !is_dns1123_subdomain(s) {
        return Err(format!(
            "{s:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
             characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the name part of a label key
/// and the shape of a non-empty label value.
fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label or annotation key: optional DNS-subdomain prefix and `/`, then a
/// name part of at most 63 characters.
pub fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(format!("key {key:?}: prefix part must be non-empty"));
        }
        if !is_dns1123_subdomain(prefix) {
            return Err(format!(
                "key {key:?}: prefix part must be a lowercase RFC 1123 subdomain (at most \
                 {DNS1123_SUBDOMAIN_MAX} characters)"
            ));
        }
    }
    if name.is_empty() {
        return Err(format!("key {key:?}: name part must be non-empty"));
    }
    if name.len() > QUALIFIED_NAME_MAX {
        return Err(format!(
            "key {key:?}: name part must be no more than {QUALIFIED_NAME_MAX} characters"
        ));
    }
    if !is_label_token(name) {
        return Err(format!(
            "key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of the label-token shape.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > LABEL_VALUE_MAX {
        return Err(format!(
            "value {value:?}: must be no more than {LABEL_VALUE_MAX} characters"
        ));
    }
    if !is_label_token(value) {
        return Err(format!(
            "value {value:?}: a valid label must be an empty string or consist of alphanumeric \
             characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// An IANA service name (named container ports): at most 15 lowercase
/// alphanumerics or '-', at least one letter, no leading, trailing or double '-'.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > IANA_SVC_NAME_MAX {
        return Err(format!(
            "{s:?}: must be between 1 and {IANA_SVC_NAME_MAX} characters"
        ));
    }
    if !b.iter().all(|&c| is_lower_alnum(c) || c == b'-') {
        return Err(format!(
            "{s:?}: must contain only lowercase alphanumeric characters or '-'"
        ));
    }
    if !b.iter().any(u8::is_ascii_lowercase) {
        return Err(format!("{s:?}: must contain at least one letter (a-z)"));
    }
    if s.contains("--") {
        return Err(format!("{s:?}: must not contain consecutive hyphens"));
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err(format!("{s:?}: must not begin or end with a hyphen"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_label("kube-system").is_ok());
        assert!(dns1123_label("a").is_ok());
        assert!(dns1123_label("Default").is_err());
        assert!(dns1123_label("-a").is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain("web-0.example").is_ok());
        assert!(dns1123_subdomain("web..0").is_err());
        assert!(dns1123_subdomain("web_0").is_err());
        assert!(dns1123_subdomain("").is_err());
    }

    #[test]
    fn labels() {
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("app.kubernetes.io/name").is_ok());
        assert!(qualified_name("Some_Key.x").is_ok());
        assert!(qualified_name("/app").is_err());
        assert!(qualified_name("example.com/").is_err());
        assert!(qualified_name("Example.com/app").is_err());
        assert!(qualified_name("app-").is_err());
        assert!(qualified_name(&"k".repeat(64)).is_err());
        assert!(qualified_name("a/b/c").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_x-Y").is_ok());
        assert!(label_value("has space").is_err());
        assert!(label_value(&"v".repeat(64)).is_err());
    }

    #[test]
    fn port_names() {
        assert!(iana_svc_name("http").is_ok());
        assert!(iana_svc_name("h2-metrics").is_ok());
        assert!(iana_svc_name("8080").is_err());
        assert!(iana_svc_name("a--b").is_err());
        assert!(iana_svc_name("-http").is_err());
        assert!(iana_svc_name("HTTP").is_err());
        assert!(iana_svc_name("averyveryverylongname").is_err());
    }
}
