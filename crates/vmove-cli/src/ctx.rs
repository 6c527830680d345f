//! What every command needs: the cluster (from the cluster file, or from etcd when the file
//! says so) and clients of its agents.
//!
//! With `[store] kind = "etcd"` the cluster file is the operator's bootstrap: its TLS files
//! (the operator certificate is also the etcd client certificate) and where etcd is. Hosts,
//! policy and guests (with their placement) come from the store, and the changes `vmove`
//! makes to guests go to the store, so every operator on every machine sees one truth.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::sync::OnceCell;
use vmove_api::AgentClient;
use vmove_model::{Cluster, GuestSpec};
use vmove_store::EtcdStore;

/// Global options, and the store once opened.
pub struct Ctx {
    pub cluster_path: PathBuf,
    pub json: bool,
    store: OnceCell<Arc<EtcdStore>>,
}

impl Ctx {
    /// A context for the cluster file at `cluster_path`.
    pub fn new(cluster_path: PathBuf, json: bool) -> Ctx {
        Ctx { cluster_path, json, store: OnceCell::new() }
    }

    /// The cluster file as it is on disk.
    pub fn file(&self) -> Result<Cluster> {
        if !self.cluster_path.exists() {
            return Err(anyhow!(
                "cluster file {} not found (use --cluster FILE or VMOVE_CLUSTER, or `vmove lab up`)",
                self.cluster_path.display()
            ));
        }
        Ok(Cluster::load(&self.cluster_path)?)
    }

    /// The cluster: the file, or with an etcd store the store's cluster (with the file's
    /// TLS files and store section).
    pub async fn cluster(&self) -> Result<Cluster> {
        let file = self.file()?;
        if file.store.is_file() {
            return Ok(file);
        }
        let store = self.store(&file).await?;
        vmove_registry::load_cluster(store.as_ref(), &file)
            .await
            .with_context(|| format!("the cluster in etcd ({})", file.store.namespace_for(&file.cluster.name)))
    }

    /// The etcd store a cluster file names (opened once, over TLS with the operator
    /// certificate).
    pub async fn store(&self, file: &Cluster) -> Result<Arc<EtcdStore>> {
        let s = self
            .store
            .get_or_try_init(|| async {
                let tls = vmove_registry::read_tls(
                    &file.resolve(&file.tls.ca),
                    &file.resolve(&file.tls.cert),
                    &file.resolve(&file.tls.key),
                )?;
                let ns = file.store.namespace_for(&file.cluster.name);
                let store = vmove_registry::open_etcd(&file.store, &ns, tls)
                    .await
                    .with_context(|| format!("connect to etcd at {}", file.store.endpoints.join(", ")))?;
                Ok::<_, anyhow::Error>(Arc::new(store))
            })
            .await?;
        Ok(s.clone())
    }

    /// Records a guest's definition: in the store, or in the cluster file.
    pub async fn put_guest(&self, cluster: &mut Cluster, spec: GuestSpec) -> Result<()> {
        if cluster.store.is_file() {
            cluster.upsert_guest(spec);
            return cluster.save(&self.cluster_path).context("update the cluster file");
        }
        let store = self.store(cluster).await?;
        vmove_registry::put_guest(store.as_ref(), &spec).await.context("record the guest in etcd")?;
        cluster.upsert_guest(spec);
        Ok(())
    }

    /// Removes a guest's definition: from the store, or from the cluster file.
    pub async fn remove_guest(&self, cluster: &mut Cluster, name: &str) -> Result<()> {
        if cluster.store.is_file() {
            cluster.guests.retain(|g| g.name != name);
            return cluster.save(&self.cluster_path).context("update the cluster file");
        }
        let store = self.store(cluster).await?;
        vmove_registry::remove_guest(store.as_ref(), name).await.context("remove the guest from etcd")?;
        cluster.guests.retain(|g| g.name != name);
        Ok(())
    }

    /// Where the cluster's truth is, for messages.
    pub fn truth(&self, cluster: &Cluster) -> String {
        if cluster.store.is_file() {
            self.cluster_path.display().to_string()
        } else {
            format!("etcd ({})", cluster.store.namespace_for(&cluster.cluster.name))
        }
    }

    /// Clients of every host, in file order.
    pub fn clients(&self, c: &Cluster) -> Result<Vec<(String, AgentClient)>> {
        Ok(vmove_api::operator_clients(c)?
            .into_iter()
            .map(|(n, cl)| (n, cl.with_timeout(Duration::from_secs(10))))
            .collect())
    }

    /// The client of one host.
    pub fn client(&self, c: &Cluster, host: &str) -> Result<AgentClient> {
        self.clients(c)?
            .into_iter()
            .find(|(n, _)| n == host)
            .map(|(_, cl)| cl)
            .with_context(|| format!("no host named {host} in {}", self.truth(c)))
    }
}
