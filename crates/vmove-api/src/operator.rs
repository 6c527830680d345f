//! Operator clients: the cluster file's CA and operator certificate, one [`AgentClient`] per
//! host. What the CLI and the lab use to talk to a cluster's agents.
use std::path::PathBuf;

use vmove_model::Cluster;

use crate::pki::CertPair;
use crate::tls::TlsError;
use crate::AgentClient;

/// Why the operator clients of a cluster could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// A TLS file named by the cluster file could not be read.
    #[error("read the {what} {}", path.display())]
    Read {
        /// `cluster CA`, `operator certificate` or `operator key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificates do not make a TLS configuration.
    #[error("the cluster file's TLS files")]
    Tls(#[source] TlsError),
    /// A host's address is not `IP:PORT`.
    #[error("host {host}: bad address {address:?}")]
    Address {
        /// The host.
        host: String,
        /// Its address.
        address: String,
        /// The cause.
        #[source]
        source: std::net::AddrParseError,
    },
}

/// An operator client for every host of a cluster, in file order (default timeout).
pub fn operator_clients(cluster: &Cluster) -> Result<Vec<(String, AgentClient)>, OperatorError> {
    let read = |what: &'static str, p: &std::path::Path| {
        let path = cluster.resolve(p);
        std::fs::read_to_string(&path).map_err(|source| OperatorError::Read { what, path, source })
    };
    let ca = read("cluster CA", &cluster.tls.ca)?;
    let me = CertPair { cert_pem: read("operator certificate", &cluster.tls.cert)?, key_pem: read("operator key", &cluster.tls.key)? };
    let tls = crate::tls::client_config(&ca, &me).map_err(OperatorError::Tls)?;
    cluster
        .hosts
        .iter()
        .map(|h| {
            let addr = h.address.parse().map_err(|source| OperatorError::Address {
                host: h.name.clone(),
                address: h.address.clone(),
                source,
            })?;
            Ok((h.name.clone(), AgentClient::new(addr, &h.name, tls.clone())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[cluster]\nname = \"c\"\n[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/op.pem\"\nkey = \"pki/op.key\"\n";
        let c = Cluster::parse(text, &dir.path().join("cluster.toml")).unwrap();
        let e = operator_clients(&c).err().unwrap();
        assert!(matches!(e, OperatorError::Read { what: "cluster CA", .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("read the cluster CA {}", dir.path().join("pki/ca.pem").display()));
    }

    #[test]
    fn one_client_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Ca::generate("c").unwrap();
        let pki = dir.path().join("pki");
        ca.pair().write(&pki, "ca").unwrap();
        ca.issue_operator("operator").unwrap().write(&pki, "op").unwrap();
        let text = "[cluster]\nname = \"c\"\n[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/op.pem\"\nkey = \"pki/op.key\"\n\
                    [[hosts]]\nname = \"host1\"\naddress = \"198.51.100.2:7450\"\n\
                    [[hosts]]\nname = \"host2\"\naddress = \"198.51.100.3:7450\"\n";
        let c = Cluster::parse(text, &dir.path().join("cluster.toml")).unwrap();
        let clients = operator_clients(&c).unwrap();
        let names: Vec<_> = clients.iter().map(|(n, c)| (n.as_str(), c.addr().to_string())).collect();
        assert_eq!(names, [("host1", "198.51.100.2:7450".to_string()), ("host2", "198.51.100.3:7450".to_string())]);
    }
}
