//! What every command needs: the cluster file and clients of its agents.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use vmove_api::AgentClient;
use vmove_model::Cluster;

/// Global options.
pub struct Ctx {
    pub cluster_path: PathBuf,
    pub json: bool,
}

impl Ctx {
    /// Loads the cluster file.
    pub fn cluster(&self) -> Result<Cluster> {
        if !self.cluster_path.exists() {
            return Err(anyhow!(
                "cluster file {} not found (use --cluster FILE or VMOVE_CLUSTER, or `vmove lab up`)",
                self.cluster_path.display()
            ));
        }
        Ok(Cluster::load(&self.cluster_path)?)
    }

    /// Loads the cluster file, lets `change` edit it and saves it if `change` says it
    /// changed anything, under an exclusive `flock` on the file's directory (the file itself
    /// is replaced by a rename on save): `vmove` processes running side by side (two drains,
    /// a drain and a `migrate`) never lose each other's updates.
    pub fn update_cluster(&self, change: impl FnOnce(&mut Cluster) -> bool) -> Result<()> {
        let dir = match self.cluster_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let d = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
        let _lock = nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow!("lock {}: {e}", dir.display()))?;
        let mut c = self.cluster()?;
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
            .with_context(|| format!("no host named {host} in {}", self.cluster_path.display()))
    }
}
