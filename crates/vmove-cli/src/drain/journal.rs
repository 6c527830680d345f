//! The runner's side of the drain record: every change it makes goes to the store before
//! the runner goes on (fail-stop: a write that fails stops the runner; the child jobs go
//! on on their agents and `vmove job watch ID` takes the drain over).
use std::sync::Arc;

use anyhow::{bail, Result};
use vmove_api::{JobRecord, Request};
use vmove_model::Cluster;

use super::record::{DrainError, DrainRecord};
use super::store::{DrainStore, RunnerGuard};
use crate::ctx::Ctx;

/// The record of the drain this process runs, and its runner claim.
pub struct Journal {
    /// The store.
    pub store: Arc<DrainStore>,
    /// The drain.
    pub id: String,
    guard: RunnerGuard,
}

impl Journal {
    /// The journal of drain `id`, whose running `guard` this process holds.
    pub fn new(store: Arc<DrainStore>, id: &str, guard: RunnerGuard) -> Journal {
        Journal { store, id: id.to_string(), guard }
    }

    /// Changes the record and writes it; an error stops the runner.
    pub async fn write<T>(&self, change: impl FnMut(&mut DrainRecord) -> std::result::Result<T, DrainError>) -> Result<T> {
        if self.guard.lost() {
            bail!("drain {}: this process lost its runner lease; another may take the drain over: stopping", self.id);
        }
        Ok(self.store.update(&self.id, change).await?.1)
    }

    /// The record as stored.
    pub async fn read(&self) -> Result<DrainRecord> {
        self.store.must_get(&self.id).await
    }

    /// Frees the runner claim.
    pub async fn release(self) {
        self.guard.release().await;
    }
}

/// Asks the agents to cancel `jobs` (`<target>-<n>`); what each answered, one line each.
/// A job past its switchover goes on to its end (the guest moves).
pub async fn cancel_jobs(ctx: &Ctx, cluster: &Cluster, jobs: &[String]) -> Vec<(String, std::result::Result<(), String>)> {
    let mut out = Vec::new();
    for job in jobs {
        let r = match job.rsplit_once('-').map(|(h, _)| h) {
            Some(host) => match ctx.client(cluster, host) {
                Ok(c) => c.call::<JobRecord>(&Request::JobCancel { id: job.clone() }).await.map(|_| ()).map_err(crate::out::one_line),
                Err(e) => Err(crate::out::one_line(e)),
            },
            None => Err(format!("{job:?} is not a job id")),
        };
        out.push((job.clone(), r));
    }
    out
}
