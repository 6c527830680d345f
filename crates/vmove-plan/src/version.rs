//! Dotted numeric version comparison (`7.10` > `7.9`, `8.2` == `8.2.0`).
use std::cmp::Ordering;

/// The numeric components of a version: `8.2.2`, `v0.1.0-dev`, `8.2.2 (Debian 1:8.2.2)` all
/// work; only the leading `digits(.digits)*` part counts. `None` when there is none.
pub fn parse_version(s: &str) -> Option<Vec<u64>> {
    let t = s.trim();
    let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let head = t[..end].trim_end_matches('.');
    if head.is_empty() {
        return None;
    }
    head.split('.').map(|p| p.parse::<u64>().ok()).collect()
}

/// Compares two versions component by component, missing components counting as 0.
/// `None` when either is not a version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse_version(a)?, parse_version(b)?);
    let n = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    Some(
        (0..n)
            .map(|i| at(&a, i).cmp(&at(&b, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_not_lexical() {
        assert_eq!(compare_versions("7.10", "7.9"), Some(Ordering::Greater));
        assert_eq!(compare_versions("7.9.1", "7.10"), Some(Ordering::Less));
        assert_eq!(compare_versions("8.2", "8.2.0"), Some(Ordering::Equal));
        assert_eq!(compare_versions("0.1.0", "0.1.0"), Some(Ordering::Equal));
        assert_eq!(
            compare_versions("10.0.0", "9.99.99"),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn tolerates_prefixes_and_suffixes() {
        assert_eq!(parse_version("v0.2.0-dev"), Some(vec![0, 2, 0]));
        assert_eq!(
            parse_version("8.2.2 (Debian 1:8.2.2+ds-0)"),
            Some(vec![8, 2, 2])
        );
        assert_eq!(parse_version("7."), Some(vec![7]));
    }

    #[test]
    fn rejects_non_versions() {
        assert_eq!(parse_version("unknown"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("1..2"), None);
        assert_eq!(compare_versions("x", "1"), None);
    }
}
