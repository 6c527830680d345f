//! What every command needs: the cluster (from the cluster file, or from etcd when the file
//! says so) and clients of its agents.
//!
//! With `[store] kind = "etcd"` the cluster file is the operator's bootstrap: its TLS files
//! (the operator certificate is also the etcd client certificate) and where etcd is. Hosts,
//! policy and guests (with their placement) come from the store, and the changes `vmove`
//! makes to guests go to the store, so every operator on every machine sees one truth.
use std::path::{Path, PathBuf};
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

/// An error whose cause is etcd's lost quorum says what it means for the operator first.
fn no_quorum_says_so(e: anyhow::Error, what: &str) -> anyhow::Error {
    let lost = e.chain().any(|c| matches!(c.downcast_ref::<vmove_store::StoreError>(), Some(vmove_store::StoreError::NoQuorum { .. })));
    if !lost {
        return e;
    }
    e.context(format!(
        "etcd has lost its quorum (a majority of its members answer, none has a leader): {what} cannot change until it is back; running guests keep running"
    ))
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
        let what = || format!("the cluster in etcd ({})", file.store.namespace_for(&file.cluster.name));
        let store = self.store(&file).await.map_err(|e| no_quorum_says_so(e, &what()))?;
        match vmove_registry::load_cluster(store.as_ref(), &file).await {
            Ok(c) => Ok(c),
            Err(e) if e.store().is_some_and(|s| s.is_unreachable()) => {
                use vmove_store::LeaseStore;
                if store.quorum_lost_everywhere(Duration::from_secs(2)).await {
                    let no_quorum = vmove_store::StoreError::NoQuorum { context: e.to_string() };
                    return Err(no_quorum_says_so(anyhow::Error::new(no_quorum), &what()));
                }
                Err(anyhow::Error::new(e).context(what()))
            }
            Err(e) => Err(anyhow::Error::new(e).context(what())),
        }
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

    /// Where the cluster's truth is, for messages.
    pub fn truth(&self, cluster: &Cluster) -> String {
        if cluster.store.is_file() {
            self.cluster_path.display().to_string()
        } else {
            format!("etcd ({})", cluster.store.namespace_for(&cluster.cluster.name))
        }
    }

    /// Loads the cluster, lets `change` edit it and records it if `change` says it changed
    /// anything.
    ///
    /// With a cluster file: under an exclusive `flock` on the file's directory (the file
    /// itself is replaced by a rename on save), so that `vmove` processes running side by
    /// side (two drains, a drain and a `migrate`) never lose each other's updates.
    ///
    /// On etcd: the guests that `change` added, changed or removed are written to (removed
    /// from) the store one by one; a change of a guest's host alone is not written (the
    /// target's agent records where a guest is, as its migration goes).
    pub async fn update_cluster(&self, change: impl FnOnce(&mut Cluster) -> bool) -> Result<()> {
        let file = self.file()?;
        if !file.store.is_file() {
            let mut c = self.cluster().await?;
            let before = c.guests.clone();
            if !change(&mut c) {
                return Ok(());
            }
            let store = self.store(&file).await?;
            for old in &before {
                if c.guest(&old.name).is_none() {
                    vmove_registry::remove_guest(store.as_ref(), &old.name).await.context("remove the guest from etcd")?;
                }
            }
            for g in &c.guests {
                let unchanged = before
                    .iter()
                    .find(|b| b.name == g.name)
                    .is_some_and(|b| *b == GuestSpec { host: b.host.clone(), ..g.clone() });
                if !unchanged {
                    vmove_registry::put_guest(store.as_ref(), g).await.context("record the guest in etcd")?;
                }
            }
            return Ok(());
        }
        let dir = match self.cluster_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let d = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
        let _lock = nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow!("lock {}: {e}", dir.display()))?;
        let mut c = self.file()?;
        if change(&mut c) {
            c.save(&self.cluster_path)?;
        }
        Ok(())
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
