//! One job in memory and in the store: its record (`jobs/<id>`, rewritten only when a step
//! or the status changes) and its events (the append-only log `jobs/<id>`, one durable
//! record per event, written by the store off the async workers). Every write is
//! fail-stop: an error reaches the runner, which stops the job.
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;
use vmove_api::{EventKind, JobEvent, JobRecord, StepStatus};
use vmove_plan::Step;

use crate::error::Result;
use crate::state::{job_key, JobRec, State};

/// A job and its notifications.
pub struct JobCell {
    rec: Mutex<JobRecord>,
    write: tokio::sync::Mutex<()>,
    pub(crate) events: watch::Sender<u64>,
    pub(crate) cancel: watch::Sender<bool>,
    pub(crate) resume: watch::Sender<bool>,
    /// LIVE: the guest's dirty rate, sampled on the source from the job's start when the
    /// job decides `predicted-convergence` (taken by the memory migration).
    pub(crate) dirty_sample: Mutex<Option<tokio::task::JoinHandle<Result<u64>>>>,
}

impl JobCell {
    /// A cell for `rec` (its events already in it).
    pub fn new(rec: JobRecord) -> JobCell {
        let n = rec.events.len() as u64;
        JobCell {
            rec: Mutex::new(rec),
            write: tokio::sync::Mutex::new(()),
            events: watch::channel(n).0,
            cancel: watch::channel(false).0,
            resume: watch::channel(false).0,
            dirty_sample: Mutex::new(None),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, JobRecord> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the record, events included.
    pub fn snapshot(&self) -> JobRecord {
        self.lock().clone()
    }

    /// The job's id.
    pub fn id(&self) -> String {
        self.lock().id.clone()
    }

    /// Whether cancel was requested.
    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Waits until the job is cancelled.
    pub async fn wait_cancelled(&self) {
        let mut c = self.cancel.subscribe();
        while !*c.borrow_and_update() {
            if c.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until the job is resumed or cancelled (test hooks). Returns whether it was
    /// resumed.
    pub async fn wait_resumed(&self) -> bool {
        let mut r = self.resume.subscribe();
        let mut c = self.cancel.subscribe();
        loop {
            if *c.borrow_and_update() {
                return false;
            }
            if *r.borrow_and_update() {
                self.resume.send_replace(false);
                return true;
            }
            tokio::select! {
                _ = r.changed() => {}
                _ = c.changed() => {}
            }
        }
    }

    /// Saves the record (without its events).
    pub async fn save(&self, state: &State) -> Result<()> {
        let _w = self.write.lock().await;
        let mut rec = self.snapshot();
        rec.events.clear();
        let key = job_key(&rec.id);
        let brief = vmove_api::JobBrief::from(&rec);
        state.put(&key, &JobRec(rec)).await?;
        match state.fleet() {
            Some(f) => f.index_job(&brief).await,
            None => Ok(()),
        }
    }

    /// Records an event durably, then wakes the watchers.
    pub async fn emit(&self, state: &State, kind: EventKind) -> Result<()> {
        let _w = self.write.lock().await;
        let (id, seq) = {
            let r = self.lock();
            (r.id.clone(), r.events.len() as u64)
        };
        let e = JobEvent { seq, at_ms: crate::now_ms(), kind };
        state.append_event(&id, &e).await?;
        let n = {
            let mut r = self.lock();
            r.events.push(e);
            r.events.len() as u64
        };
        self.events.send_replace(n);
        Ok(())
    }

    /// Changes a step's status in memory (save it with [`JobCell::save`]).
    pub fn set_step(&self, step: Step, status: StepStatus, note: Option<String>) {
        let mut r = self.lock();
        let now = crate::now_ms();
        if let Some(s) = r.steps.iter_mut().find(|s| s.step == step) {
            match status {
                StepStatus::Running => s.started_ms = Some(now),
                _ => s.ended_ms = Some(now),
            }
            s.status = status;
            s.note = note;
        }
    }
}
