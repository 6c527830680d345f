//! `[store]`: which state store holds a cluster's truth, and where etcd is.
//!
//! In the cluster file it says where the operators' tools find the cluster's state: with
//! `kind = "file"` (the default, and what a file without `[store]` means) the file itself
//! is the truth; with `kind = "etcd"` the file is a bootstrap and an export, and guests,
//! placement, jobs, leases and membership live in etcd (the operator's `[tls]` certificate
//! is its etcd client certificate). In an agent's configuration it says where the agent
//! keeps its state (the agent's own certificate is its client certificate).
use serde::{Deserialize, Serialize};

/// The kind of store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Files: the cluster file, each agent's state directory, lease files on the pools.
    #[default]
    File,
    /// etcd, over TLS with client certificates.
    Etcd,
}

/// `[store]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreEntry {
    /// `file` or `etcd`.
    #[serde(default)]
    pub kind: StoreKind,
    /// etcd's client URLs (`https://IP:PORT`), every member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The key prefix of this cluster in etcd (`/vmove/<cluster>/` when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name etcd's certificates carry, when not the endpoints' host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl StoreEntry {
    /// Whether this is the file store (nothing to say in a file).
    pub fn is_file(&self) -> bool {
        self.kind == StoreKind::File
    }

    /// The namespace: the one given, or `/vmove/<cluster>/`.
    pub fn namespace_for(&self, cluster: &str) -> String {
        self.namespace.clone().unwrap_or_else(|| format!("/vmove/{cluster}/"))
    }

    /// Checks the endpoints and the namespace; `what` names the section in messages
    /// (`store`).
    pub fn validate(&self, what: &str) -> Result<(), String> {
        if self.kind == StoreKind::File {
            if !self.endpoints.is_empty() {
                return Err(format!("{what}.endpoints: only an etcd store has endpoints"));
            }
            return Ok(());
        }
        if self.endpoints.is_empty() {
            return Err(format!("{what}.endpoints: an etcd store needs at least one endpoint"));
        }
        for e in &self.endpoints {
            let Some(rest) = e.strip_prefix("https://") else {
                return Err(format!("{what}.endpoints: {e:?} is not https://HOST:PORT (etcd is reached over TLS)"));
            };
            let port = rest.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if !matches!(port, Some((h, Ok(p))) if !h.is_empty() && p > 0 && !h.contains('/')) {
                return Err(format!("{what}.endpoints: {e:?} is not https://HOST:PORT"));
            }
        }
        if let Some(ns) = &self.namespace {
            if !valid_namespace(ns) {
                return Err(format!(
                    "{what}.namespace: {ns:?} is not '/', path segments of letters, digits, '.', '_', '-', and '/'"
                ));
            }
        }
        Ok(())
    }
}

/// `/a/b/`: starts and ends with `/`, non-empty segments of `[A-Za-z0-9._-]` not starting
/// with `.`.
pub fn valid_namespace(ns: &str) -> bool {
    let Some(inner) = ns.strip_prefix('/').and_then(|s| s.strip_suffix('/')) else { return false };
    !inner.is_empty()
        && inner.split('/').all(|s| {
            !s.is_empty()
                && s.len() <= 200
                && !s.starts_with('.')
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(endpoints: &[&str], ns: Option<&str>) -> StoreEntry {
        StoreEntry {
            kind: StoreKind::Etcd,
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            namespace: ns.map(Into::into),
            server_name: None,
        }
    }

    #[test]
    fn endpoints_and_namespaces_are_checked() {
        assert_eq!(StoreEntry::default().validate("store"), Ok(()));
        assert!(etcd(&["https://198.51.100.14:2379", "https://etcd1:2379"], Some("/vmove/lab/")).validate("store").is_ok());
        for bad in ["http://1.2.3.4:2379", "https://1.2.3.4", "https://:2379", "https://a:0", "https://a:99999", "1.2.3.4:2379"] {
            let e = etcd(&[bad], None).validate("store").unwrap_err();
            assert!(e.starts_with("store.endpoints: "), "{e}");
        }
        assert_eq!(etcd(&[], None).validate("store").unwrap_err(), "store.endpoints: an etcd store needs at least one endpoint");
        for ns in ["vmove/", "/vmove", "/", "//", "/a//b/", "/.a/", "/a b/"] {
            assert!(etcd(&["https://a:1"], Some(ns)).validate("store").is_err(), "{ns}");
        }
        let file_with_endpoints = StoreEntry { kind: StoreKind::File, ..etcd(&["https://a:1"], None) };
        assert!(file_with_endpoints.validate("store").is_err());
        assert_eq!(etcd(&["https://a:1"], None).namespace_for("lab"), "/vmove/lab/");
        assert_eq!(etcd(&["https://a:1"], Some("/x/")).namespace_for("lab"), "/x/");
    }
}
