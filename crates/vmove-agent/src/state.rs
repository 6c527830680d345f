//! The agent's state, as typed records in a [`StateStore`] (a [`vmove_store::FileStore`] in
//! the state directory by default):
//!
//! | key | record | what |
//! |---|---|---|
//! | `guests/<name>` | [`GuestDef`] | a guest defined on this host |
//! | `runs/<name>` | [`RunRec`] | its running QEMU (pid, start time) |
//! | `jobs/<id>` (+ log `jobs/<id>`) | [`JobRec`] | a job; its events are the log's records |
//! | `migrations/<guest>` | [`MigRec`] | where a migration to this host stands |
//! | `claims/<guest>` | [`Claim`] | a migration away from this host holds the guest |
//! | `journal/<seq>` | [`IntentRec`] | what the agent is about to do (removed once done) |
//! | `host/maintenance` | [`MaintenanceRec`] | the host is in maintenance (absent: it is not) |
//!
//! On etcd these keys live in the host's own namespace (`/vmove/<cluster>/hosts/<host>/`);
//! what every host and operator shares (the job index, migration claims, ownership,
//! membership) is in the cluster's ([`crate::fleet`]).
//!
//! Every write is fail-stop: an error is returned to the caller, which stops.
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmove_api::JobEvent;
use vmove_model::GuestSpec;
use vmove_plan::MigrationRecord;
use vmove_registry::jobs::job_log;
use vmove_store::{get_record, list_records, put_record, Precondition, Record, StateStore};

use crate::error::Result;

/// A guest definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GuestDef(pub GuestSpec);
impl Record for GuestDef {
    const KIND: &'static str = "guest";
    const VERSION: u32 = 1;
}

/// What survives an agent restart about a running QEMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRec {
    /// QEMU's pid.
    pub pid: u32,
    /// When it started, unix ms.
    pub started_ms: u64,
}
impl Record for RunRec {
    const KIND: &'static str = "run";
    const VERSION: u32 = 1;
}

/// A job, without its events (the record and key layout are shared with the CLI, which
/// follows jobs through the store: [`vmove_registry::jobs`]).
pub use vmove_registry::jobs::{job_key, JobRec};

/// A migration record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MigRec(pub MigrationRecord);
impl Record for MigRec {
    const KIND: &'static str = "migration";
    const VERSION: u32 = 1;
}

/// A source claim: a migration away from this host holds the guest until it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The migration holding it, in words (`the migration to host2`).
    pub by: String,
    /// When, unix ms.
    pub since_ms: u64,
}
impl Record for Claim {
    const KIND: &'static str = "claim";
    const VERSION: u32 = 1;
}

/// The host is in maintenance (`vmove host drain`) since `since_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaintenanceRec(pub vmove_model::inventory::Maintenance);
impl Record for MaintenanceRec {
    const KIND: &'static str = "maintenance";
    const VERSION: u32 = 1;
}

/// Key of the maintenance record.
pub const MAINTENANCE_KEY: &str = "host/maintenance";

/// What the agent was about to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// Define (persist) a guest.
    Define {
        /// Guest.
        guest: String,
    },
    /// Start a guest's QEMU.
    Start {
        /// Guest.
        guest: String,
    },
    /// Stop a guest.
    Stop {
        /// Guest.
        guest: String,
        /// Forced.
        force: bool,
    },
    /// Remove a guest's definition.
    Undefine {
        /// Guest.
        guest: String,
    },
}

/// A journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentRec {
    /// When, unix ms.
    pub at_ms: u64,
    /// What.
    pub intent: Intent,
}
impl Record for IntentRec {
    const KIND: &'static str = "intent";
    const VERSION: u32 = 1;
}

/// The typed view of the agent's store.
#[derive(Clone)]
pub struct State {
    store: Arc<dyn StateStore>,
    fleet: Option<Arc<crate::fleet::Fleet>>,
    stats: Option<Arc<vmove_store::StoreStats>>,
}

impl State {
    /// A view of `store`.
    pub fn new(store: Arc<dyn StateStore>) -> State {
        State { store, fleet: None, stats: None }
    }

    /// A view of `store` that counts every operation and the time spent in it (the
    /// agent's metrics report them).
    pub fn counted(store: Arc<dyn StateStore>) -> State {
        let stats = Arc::new(vmove_store::StoreStats::default());
        State { store: Arc::new(vmove_store::CountedStore::new(store, stats.clone())), fleet: None, stats: Some(stats) }
    }

    /// What went through the store, when it is counted.
    pub fn stats(&self) -> Option<&Arc<vmove_store::StoreStats>> {
        self.stats.as_ref()
    }

    /// The same view, also keeping the cluster's shared records (the job index) in
    /// `fleet`'s store.
    pub fn in_fleet(self, fleet: Option<Arc<crate::fleet::Fleet>>) -> State {
        State { fleet, ..self }
    }

    /// The cluster's shared store, on etcd.
    pub fn fleet(&self) -> Option<&Arc<crate::fleet::Fleet>> {
        self.fleet.as_ref()
    }

    /// The store itself.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Every record of a kind under `prefix`.
    pub async fn list<T: Record>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        Ok(list_records::<T>(self.store.as_ref(), prefix).await?.into_iter().map(|(k, v, _)| (k, v)).collect())
    }

    /// One record.
    pub async fn get<T: Record>(&self, key: &str) -> Result<Option<T>> {
        Ok(get_record::<T>(self.store.as_ref(), key).await?.map(|(v, _)| v))
    }

    /// Writes a record (whatever was there).
    pub async fn put<T: Record>(&self, key: &str, v: &T) -> Result<()> {
        put_record(self.store.as_ref(), key, v, Precondition::Any).await?;
        Ok(())
    }

    /// Writes a record that must not exist yet.
    pub async fn create<T: Record>(&self, key: &str, v: &T) -> Result<()> {
        put_record(self.store.as_ref(), key, v, Precondition::Absent).await?;
        Ok(())
    }

    /// Removes a key (absent is fine).
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.store.delete(key, Precondition::Any).await?;
        Ok(())
    }

    /// Appends a job event; returns its sequence number.
    pub async fn append_event(&self, id: &str, e: &JobEvent) -> Result<u64> {
        Ok(self.store.append(&job_log(id), serde_json::to_vec(e)?).await?)
    }

    /// A job's events from `from` on. Records that do not decode are skipped with a
    /// warning (a newer agent's events, say); the log itself is checksummed.
    pub async fn events(&self, id: &str, from: u64) -> Result<Vec<JobEvent>> {
        let raw = self.store.read_log(&job_log(id), from).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(seq, b)| match serde_json::from_slice::<JobEvent>(&b) {
                Ok(e) => Some(e),
                Err(err) => {
                    tracing::warn!(job = id, seq, "undecodable event: {err}");
                    None
                }
            })
            .collect())
    }
}

/// Key of a guest definition.
pub fn guest_key(name: &str) -> String {
    format!("guests/{name}")
}
/// Key of a run record.
pub fn run_key(name: &str) -> String {
    format!("runs/{name}")
}
/// Key of a migration record.
pub fn mig_key(guest: &str) -> String {
    format!("migrations/{guest}")
}
/// Key of a source claim.
pub fn claim_key(guest: &str) -> String {
    format!("claims/{guest}")
}
/// Key of a journal entry.
pub fn intent_key(seq: u64) -> String {
    format!("journal/{seq:020}")
}
