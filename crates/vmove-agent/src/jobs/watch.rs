//! `job_watch`: a job's events streamed to a client until the job ends.
use std::time::Duration;

use vmove_api::server::EventSink;
use vmove_api::{EventKind, JobEvent, JobRecord, StreamLine, HEARTBEAT_SEQ};

use super::JobCell;

/// A heartbeat is sent after this long without events (not stored in the job).
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Streams a job's events from `from` until the job ends; returns the final record.
pub async fn watch_events(cell: &JobCell, from: u64, out: &mut EventSink<'_>) -> std::io::Result<JobRecord> {
    let mut rx = cell.events.subscribe();
    let mut next = from;
    loop {
        let (batch, done) = {
            let r = cell.lock();
            let start = usize::try_from(next).unwrap_or(usize::MAX);
            let batch: Vec<JobEvent> = r.events.iter().skip(start).cloned().collect();
            (batch, r.status.is_final())
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
