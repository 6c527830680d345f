//! What every command needs: the cluster file and clients of its agents.
use std::path::PathBuf;
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
