//! Where drain records are kept, and who runs a drain (docs/drain.md "The drain as a
//! job").
//!
//! Records go through the [`StateStore`] trait, key `drains/<id>`
//! ([`vmove_registry::keys::drain`]), written with compare-and-swap so that the runner and
//! `job cancel` never lose each other's changes:
//! - file store: a [`FileStore`] in the cluster file's directory (`vmove-drains/`; every
//!   write under its `flock`, atomic rename, fsync);
//! - etcd: the cluster's etcd, beside the job index.
//!
//! The runner holds a claim that its death frees, so that another process can take the
//! drain over ([`DrainStore::claim_runner`]):
//! - file store: an exclusive `flock` on `vmove-drains/runners/<id>.lock`. The kernel
//!   drops it when the process ends, however it ends (SIGKILL included), and never while
//!   it lives, whatever became of pids; it works between processes that share the cluster
//!   directory (one machine, or a file system with working `flock`);
//! - etcd: the key `drain-runners/<id>` attached to the runner's lease (10 s TTL): it
//!   vanishes at most a TTL after its process stopped renewing it, on any machine.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use vmove_model::Cluster;
use vmove_registry::keys;
use vmove_store::{get_record, list_records, put_record, FileStore, Lease, LeasePolicy, LeaseStore, Precondition, Record, StateStore, StoreError};

use super::record::{now_ms, parse_id, DrainError, DrainKind, DrainRecord, Runner};
use crate::ctx::Ctx;

/// The TTL of a runner's lease on etcd.
pub const RUNNER_TTL: Duration = Duration::from_secs(10);
/// How often a compare-and-swap update is tried before it gives up.
const CAS_TRIES: usize = 50;

impl Record for Runner {
    const KIND: &'static str = "drain-runner";
    const VERSION: u32 = 1;
}

/// How the runner's claim is kept.
enum Runners {
    /// `flock`ed files in this directory.
    Files(PathBuf),
    /// Keys attached to leases.
    Leases(Arc<dyn LeaseStore>),
}

/// The claim of the process that runs a drain; dropping it (or the process dying) frees it.
pub enum RunnerGuard {
    /// The `flock` held (until dropped).
    File {
        /// The locked file.
        _lock: nix::fcntl::Flock<std::fs::File>,
    },
    /// The lease its key is attached to.
    Lease(Lease),
}

impl RunnerGuard {
    /// Whether the claim is gone although this process lives (a lease not renewed in time:
    /// another process may take the drain over). A runner that sees it stops (fail-stop).
    pub fn lost(&self) -> bool {
        matches!(self, RunnerGuard::Lease(l) if l.health() == vmove_store::LeaseHealth::Lost)
    }

    /// Frees the claim now (a lease is revoked rather than left to expire).
    pub async fn release(self) {
        if let RunnerGuard::Lease(l) = self {
            let _ = l.revoke().await;
        }
    }
}

/// The changes to one drain's record and runner key ([`DrainStore::watch`]).
pub struct DrainWatch {
    keys: [String; 2],
    watches: Vec<vmove_store::Watch>,
}

impl DrainWatch {
    /// Waits at most `max` for a change of the record or the runner key (a prefix watch also
    /// sees `drain-host1-10` for `drain-host1-1`: those are skipped).
    pub async fn changed(&mut self, max: Duration) -> Wake {
        let DrainWatch { keys, watches } = self;
        let next = async {
            loop {
                match futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.recv()))).await.0 {
                    Some(ev) if keys.iter().any(|k| k == ev.key()) => return Wake::Changed,
                    Some(_) => continue,
                    None => return Wake::Ended,
                }
            }
        };
        tokio::time::timeout(max, next).await.unwrap_or(Wake::Quiet)
    }
}

/// What ended a [`DrainWatch::changed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The record or the runner key changed.
    Changed,
    /// A watch ended (the store connection went): start a new one.
    Ended,
    /// Nothing changed for the whole wait.
    Quiet,
}

/// Drain records and runner claims of one cluster.
pub struct DrainStore {
    store: Arc<dyn StateStore>,
    runners: Runners,
}

impl DrainStore {
    /// The cluster's: a file store beside the cluster file, or its etcd.
    pub async fn open(ctx: &Ctx, cluster: &Cluster) -> Result<DrainStore> {
        if cluster.store.is_file() {
            let dir = match ctx.cluster_path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let root = dir.join("vmove-drains");
            let fs = FileStore::open(&root).with_context(|| format!("open the drain records in {}", root.display()))?;
            return Ok(DrainStore::with_files(Arc::new(fs), &root.join("runners")));
        }
        let etcd = ctx.store(cluster).await?;
        Ok(DrainStore::with_leases(etcd.clone(), etcd))
    }

    /// Records in `store`, runners `flock`ing files in `dir`.
    pub fn with_files(store: Arc<dyn StateStore>, dir: &Path) -> DrainStore {
        DrainStore { store, runners: Runners::Files(dir.to_path_buf()) }
    }

    /// Records in `store`, runners holding leases of `leases` (the same store).
    pub fn with_leases(store: Arc<dyn StateStore>, leases: Arc<dyn LeaseStore>) -> DrainStore {
        DrainStore { store, runners: Runners::Leases(leases) }
    }

    /// A new drain record, with a cluster-unique id (`<kind>-<host>-<n>`, `n` one more than
    /// any before); with `claim`, this process runs it (claimed before the record exists,
    /// so that nobody takes it over in between).
    pub async fn create(
        &self,
        kind: DrainKind,
        host: &str,
        claim: bool,
        make: impl Fn(String) -> DrainRecord,
    ) -> Result<(DrainRecord, Option<RunnerGuard>)> {
        let used = self.store.list(keys::DRAINS).await.context("list the drain records")?;
        let mut n = used
            .iter()
            .filter_map(|e| parse_id(e.key.strip_prefix(keys::DRAINS)?))
            .filter(|(k, h, _)| *k == kind && *h == host)
            .map(|(_, _, n)| n)
            .max()
            .unwrap_or(0);
        for _ in 0..CAS_TRIES {
            n = n.checked_add(1).ok_or_else(|| anyhow!("drain numbers of {host} exhausted"))?;
            let id = super::record::drain_id(kind, host, n);
            let guard = if claim {
                match self.claim_runner(&id).await? {
                    Some(g) => Some(g),
                    None => continue,
                }
            } else {
                None
            };
            let mut rec = make(id.clone());
            if guard.is_some() {
                rec.runner = Some(Runner::me());
            }
            rec.validate()?;
            match put_record(self.store.as_ref(), &keys::drain(&id), &rec, Precondition::Absent).await {
                Ok(_) => return Ok((rec, guard)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e).context(format!("record drain {id}")),
            }
        }
        bail!("could not find a free drain id for {host}")
    }

    /// A drain record and its revision, checked ([`DrainRecord::validate`]).
    pub async fn get(&self, id: &str) -> Result<Option<(DrainRecord, u64)>> {
        let key = keys::drain(id);
        let Some((rec, rev)) = get_record::<DrainRecord>(self.store.as_ref(), &key).await.with_context(|| format!("read drain {id}"))? else {
            return Ok(None);
        };
        if rec.id != id {
            return Err(DrainError::Invalid { id: id.to_string(), what: format!("the record at {key} is {}", rec.id) }.into());
        }
        rec.validate()?;
        Ok(Some((rec, rev)))
    }

    /// A drain record that must exist.
    pub async fn must_get(&self, id: &str) -> Result<DrainRecord> {
        self.get(id).await?.map(|(r, _)| r).ok_or_else(|| anyhow!("no drain {id} (see `vmove job list`)"))
    }

    /// Every drain record, oldest first.
    pub async fn list(&self) -> Result<Vec<DrainRecord>> {
        let mut v: Vec<DrainRecord> = list_records::<DrainRecord>(self.store.as_ref(), keys::DRAINS)
            .await
            .context("list the drain records")?
            .into_iter()
            .map(|(_, r, _)| r.validate().map(|_| r))
            .collect::<std::result::Result<_, _>>()?;
        v.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(v)
    }

    /// Changes a record with `change` and writes it (compare-and-swap: tried again on a
    /// concurrent write). Fail-stop: an error means nothing was written.
    pub async fn update<T>(&self, id: &str, mut change: impl FnMut(&mut DrainRecord) -> std::result::Result<T, DrainError>) -> Result<(DrainRecord, T)> {
        for _ in 0..CAS_TRIES {
            let (mut rec, rev) = self.get(id).await?.ok_or_else(|| anyhow!("no drain {id}"))?;
            let out = change(&mut rec)?;
            rec.updated_ms = now_ms().max(rec.created_ms);
            rec.validate()?;
            match put_record(self.store.as_ref(), &keys::drain(id), &rec, Precondition::Revision(rev)).await {
                Ok(_) => return Ok((rec, out)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e).context(format!("record drain {id}")),
            }
        }
        bail!("drain {id}: too many concurrent updates")
    }

    /// Claims the running of drain `id` for this process; `None` while another process
    /// holds it (it runs).
    pub async fn claim_runner(&self, id: &str) -> Result<Option<RunnerGuard>> {
        match &self.runners {
            Runners::Files(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
                let path = dir.join(format!("{id}.lock"));
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("open {}", path.display()))?;
                match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                    Ok(l) => Ok(Some(RunnerGuard::File { _lock: l })),
                    Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
                    Err((_, e)) => Err(anyhow!("lock {}: {e}", path.display())),
                }
            }
            Runners::Leases(store) => {
                let key = keys::drain_runner(id);
                if store.get(&key).await?.is_some() {
                    return Ok(None);
                }
                let lease = Lease::grant(store.clone(), LeasePolicy::with_ttl(RUNNER_TTL)).await.context("grant the runner's lease")?;
                let value = vmove_store::encode_record(&key, &Runner::me())?;
                match lease.put(&key, value, Precondition::Absent).await {
                    Ok(_) => Ok(Some(RunnerGuard::Lease(lease))),
                    Err(StoreError::Conflict { .. }) => {
                        let _ = lease.revoke().await;
                        Ok(None)
                    }
                    Err(e) => Err(e).context("claim the drain's runner key"),
                }
            }
        }
    }

    /// Whether a process runs drain `id` now (looks without keeping the claim).
    pub async fn runner_alive(&self, id: &str) -> Result<bool> {
        match &self.runners {
            Runners::Files(_) => Ok(match self.claim_runner(id).await? {
                Some(g) => {
                    g.release().await;
                    false
                }
                None => true,
            }),
            Runners::Leases(store) => Ok(store.get(&keys::drain_runner(id)).await?.is_some()),
        }
    }

    /// On etcd, a watch of drain `id`'s record and of its runner's key (`None` with the
    /// file store: its runner is another process, whose writes a watch does not see).
    pub async fn watch(&self, id: &str) -> Result<Option<DrainWatch>> {
        let Runners::Leases(_) = &self.runners else { return Ok(None) };
        let keys = [keys::drain(id), keys::drain_runner(id)];
        let mut watches = Vec::new();
        for k in &keys {
            watches.push(self.store.watch(k).await.with_context(|| format!("watch {k}"))?);
        }
        Ok(Some(DrainWatch { keys, watches }))
    }

    /// The directory of the runner claims and detached runners' logs (file store), if any.
    pub fn runner_dir(&self) -> Option<&Path> {
        match &self.runners {
            Runners::Files(d) => Some(d),
            Runners::Leases(_) => None,
        }
    }
}
