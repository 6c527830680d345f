//! Jobs in an agent's own namespace (`/vmove/<cluster>/hosts/<host>/` on etcd): the record
//! `jobs/<id>` ([`JobRec`], without its events) and the log `jobs/<id>` (one JSON
//! [`JobEvent`] per record). The agent writes both; [`follow_job`] lets any operator's CLI
//! follow a job through the store's watches, without asking the agent.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmove_api::{EventKind, JobEvent, JobRecord};
use vmove_store::{get_record, LogRecord, Record, StateStore};

use crate::{keys, Member, RegistryError, Result};

/// A job, without its events (they are the records of the log of the same name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobRec(pub JobRecord);
impl Record for JobRec {
    const KIND: &'static str = "job";
    const VERSION: u32 = 2;
}

/// Key of a job's record.
pub fn job_key(id: &str) -> String {
    format!("jobs/{id}")
}

/// The log holding a job's events.
pub fn job_log(id: &str) -> String {
    format!("jobs/{id}")
}

/// A quiet job's record and its host's membership are looked at this often.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How long a follower waits for the JobEnded event of a job whose record has ended (the
/// runner marks the record ended a moment before it appends JobEnded).
const END_GRACE: Duration = Duration::from_secs(3);

/// Decodes an event record; one that does not decode (a newer agent's) is skipped.
fn decode(id: &str, seq: u64, bytes: &[u8]) -> Option<JobEvent> {
    serde_json::from_slice(bytes).map_err(|e| tracing::warn!(job = id, seq, "undecodable event: {e}")).ok()
}

/// Follows job `id` of `host` to its end through the store's watches: `host_store` is the
/// host's own namespace, `cluster` the cluster's (for the host's membership). Passes every
/// event from the first on to `on_event`, in order, once each; returns the final record
/// with its events.
///
/// A watch that ends is started again (and the log read up to its end); a job that stays
/// quiet is looked at every [`CHECK_EVERY`]: its host gone from the cluster's members is
/// [`RegistryError::HostGone`].
pub async fn follow_job(
    cluster: &dyn StateStore,
    host_store: &dyn StateStore,
    host: &str,
    id: &str,
    mut on_event: impl FnMut(&JobEvent),
) -> Result<JobRecord> {
    let log = job_log(id);
    let mut watch = host_store.watch_log(&log).await?;
    let no_job = || RegistryError::NoJob { host: host.into(), id: id.into() };
    get_record::<JobRec>(host_store, &job_key(id)).await?.ok_or_else(no_job)?;
    let mut events: Vec<JobEvent> = Vec::new();
    let mut next = 0u64;
    let mut catch_up = true;
    let mut final_since: Option<Instant> = None;
    loop {
        if catch_up {
            for (seq, bytes) in host_store.read_log(&log, next).await? {
                next = seq.saturating_add(1);
                if let Some(e) = decode(id, seq, &bytes) {
                    on_event(&e);
                    events.push(e);
                }
            }
            catch_up = false;
        }
        let ended = events.iter().rev().any(|e| matches!(e.kind, EventKind::JobEnded { .. }));
        if ended || final_since.is_some_and(|t| t.elapsed() >= END_GRACE) {
            let (JobRec(mut rec), _) = get_record::<JobRec>(host_store, &job_key(id)).await?.ok_or_else(no_job)?;
            rec.events = events;
            return Ok(rec);
        }
        let wait = if final_since.is_some() { Duration::from_millis(500) } else { CHECK_EVERY };
        match tokio::time::timeout(wait, watch.recv()).await {
            Ok(Some(LogRecord { seq, record })) if seq == next => {
                next = seq.saturating_add(1);
                if let Some(e) = decode(id, seq, &record) {
                    on_event(&e);
                    events.push(e);
                }
            }
            Ok(Some(r)) => catch_up = r.seq > next,
            Ok(None) => {
                watch = host_store.watch_log(&log).await?;
                catch_up = true;
            }
            Err(_) => {
                let (JobRec(rec), _) = get_record::<JobRec>(host_store, &job_key(id)).await?.ok_or_else(no_job)?;
                if rec.status.is_final() {
                    final_since.get_or_insert_with(Instant::now);
                    catch_up = true;
                } else if get_record::<Member>(cluster, &keys::member(host)).await?.is_none() {
                    return Err(RegistryError::HostGone { host: host.into(), id: id.into() });
                }
            }
        }
    }
}
