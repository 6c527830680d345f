//! Opening the cluster's etcd from a `[store]` section and TLS files.
use std::path::Path;

use vmove_model::{StoreEntry, StoreKind};
use vmove_store::{EtcdOptions, EtcdStore, EtcdTls};

use crate::{RegistryError, Result};

/// The client's TLS material from its files: the CA that signs etcd's certificates, the
/// client certificate and its key (PEM).
pub fn read_tls(ca: &Path, cert: &Path, key: &Path) -> Result<EtcdTls> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read_to_string(path).map_err(|source| RegistryError::Read { what, path: path.into(), source })
    };
    Ok(EtcdTls {
        ca_pem: read("CA certificate", ca)?,
        cert_pem: read("client certificate", cert)?,
        key_pem: read("client key", key)?,
    })
}

/// Connects to the etcd a `[store]` section names, on `namespace`, over TLS; checks that
/// it answers. [`RegistryError::NotEtcd`] for a file store.
pub async fn open_etcd(entry: &StoreEntry, namespace: &str, tls: EtcdTls) -> Result<EtcdStore> {
    if entry.kind != StoreKind::Etcd {
        return Err(RegistryError::NotEtcd);
    }
    let mut opts = EtcdOptions::new(entry.endpoints.clone(), Some(tls), namespace);
    opts.server_name = entry.server_name.clone();
    Ok(EtcdStore::connect_with(opts).await?)
}
