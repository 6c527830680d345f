//! `job_watch`: a job's events streamed to a client until the job ends.
use std::time::Duration;

use vmove_api::server::EventSink;
use vmove_api::{EventKind, JobEvent, JobRecord, StreamLine, HEARTBEAT_SEQ};

use super::JobCell;

/// A heartbeat is sent after this long without events (not stored in the job).
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a watcher waits for the JobEnded event of a job whose record has ended.
const END_GRACE: Duration = Duration::from_secs(3);

/// Streams a job's events from `from` until the job ends; returns the final record.
pub async fn watch_events(cell: &JobCell, from: u64, out: &mut EventSink<'_>) -> std::io::Result<JobRecord> {
    let mut rx = cell.events.subscribe();
    let mut next = from;
    let mut final_since: Option<std::time::Instant> = None;
    loop {
        let (batch, done) = {
            let r = cell.lock();
            let start = usize::try_from(next).unwrap_or(usize::MAX);
            let batch: Vec<JobEvent> = r.events.iter().skip(start).cloned().collect();
            // The runner marks the record ended a moment before it saves it and appends
            // JobEnded (with the summary): a watcher woken in between waits for that event,
            // or [`END_GRACE`] for a job that ended without one.
            let ended = r.events.iter().rev().any(|e| matches!(e.kind, EventKind::JobEnded { .. }));
            let done = r.status.is_final()
                && (ended || final_since.get_or_insert_with(std::time::Instant::now).elapsed() >= END_GRACE);
            (batch, done)
        };
        for e in batch {
            next = e.seq.saturating_add(1);
            out.send(&StreamLine::Event { job_event: e }).await?;
        }
        if done && usize::try_from(next).unwrap_or(usize::MAX) >= cell.lock().events.len() {
            return Ok(cell.snapshot());
        }
        tokio::select! {
            r = rx.changed() => { if r.is_err() { return Ok(cell.snapshot()); } }
            _ = tokio::time::sleep(HEARTBEAT) => {
                let hb = JobEvent { seq: HEARTBEAT_SEQ, at_ms: crate::now_ms(), kind: EventKind::Info { message: String::new() } };
                out.send(&StreamLine::Event { job_event: hb }).await?;
            }
        }
    }
}
