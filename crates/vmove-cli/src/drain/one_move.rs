//! One attempt at one move of a drain or an evacuation: the prechecks against fresh
//! inventories, a normal migration job on the target (with the drain's inbound limit),
//! followed to its end; a job that failed is recovered, and the guest located, so that the
//! runner knows whether it may try another target.
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vmove_api::{AgentClient, ClientError, ErrorCode, GuestStatus, JobEvent, JobRecord, JobStatus, Request};
use vmove_model::Cluster;
use vmove_plan::{Mode, PlannedMove, Step};

use crate::cmd_migrate::{self, PrecheckOpts};
use crate::ctx::Ctx;
use crate::request::MigrateCommand;

/// How long a job's target may stay silent while the move is followed before the move's
/// outcome is declared unknown.
const SILENT_TARGET: Duration = Duration::from_secs(60);
/// Heartbeats come every few seconds on a job's stream; this much silence breaks it.
const STREAM_IDLE: Duration = Duration::from_secs(20);

/// What the runner tells one attempt.
#[derive(Debug, Clone)]
pub struct AttemptSpec {
    /// The move.
    pub planned: PlannedMove,
    /// The guest's dirty rate measured at planning, bytes/s.
    pub dirty_rate_bytes_per_s: Option<u64>,
    /// The target refuses the job while it already receives this many guests.
    pub max_incoming: u32,
    /// Test hook: fail this step of the job on purpose.
    pub inject_fault: Option<Step>,
}

/// A job event of a move, for the runner's progress lines.
#[derive(Debug, Clone)]
pub struct MoveEvent {
    /// The guest.
    pub guest: String,
    /// The job.
    pub job: String,
    /// The event.
    pub event: JobEvent,
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// The guest is on the target: the job (or its recovery, the second record) succeeded.
    Moved {
        /// The job.
        job: Box<JobRecord>,
        /// The recovery that finished it, if the job itself failed.
        recovery: Option<Box<JobRecord>>,
    },
    /// The target already receives as many guests as the drain allows (another drain's
    /// moves, say): nothing was started, try again later.
    Deferred,
    /// The move did not happen and the guest is where it was: another target may be tried.
    NotMoved {
        /// The job, if one was started.
        job: Option<String>,
        /// Why, one line.
        why: String,
    },
    /// Where the guest is is not known for sure (a target that stopped answering, a
    /// recovery that failed): no retry, the operator decides.
    Unknown {
        /// The job.
        job: Option<String>,
        /// Why, one line, with what to do.
        why: String,
    },
}

/// Runs one attempt; job events go to `events` as they come.
pub async fn attempt(ctx: &Ctx, cluster: &Cluster, spec: AttemptSpec, events: mpsc::UnboundedSender<MoveEvent>) -> Attempt {
    let m = &spec.planned;
    let mut cmd = MigrateCommand::new(&cluster.policy, &m.guest, &m.from, &m.to, m.mode, None);
    cmd.hooks.inject_fault = spec.inject_fault;
    let opts = PrecheckOpts { guest_work_only: true, dirty_rate_bytes_per_s: spec.dirty_rate_bytes_per_s, ..Default::default() };
    let measured = match cmd_migrate::prechecks_with(ctx, cluster, &cmd.request, &opts).await {
        Ok((f, _)) if vmove_plan::any_failed(&f) => {
            let first = f.iter().find(|x| x.verdict == vmove_plan::Verdict::Fail).map(|x| x.reason.clone()).unwrap_or_default();
            return Attempt::NotMoved { job: None, why: format!("precheck failed: {}: {first}", cmd_migrate::failed_ids(&f)) };
        }
        Ok((_, measured)) => measured,
        Err(e) => return Attempt::NotMoved { job: None, why: format!("prechecks: {}", crate::out::one_line(e)) },
    };
    let (client, job_spec) = match (ctx.client(cluster, &m.to), cmd_migrate::job_spec(cluster, &cmd, &measured)) {
        (Ok(c), Ok(mut j)) => {
            j.max_incoming = Some(spec.max_incoming);
            (c, j)
        }
        (Err(e), _) | (_, Err(e)) => return Attempt::NotMoved { job: None, why: crate::out::one_line(e) },
    };
    let rec: JobRecord = match client.call(&Request::JobSubmit { spec: job_spec }).await {
        Ok(r) => r,
        Err(e) if e.code() == ErrorCode::AtLimit => return Attempt::Deferred,
        Err(e) if !e.is_unreachable() || matches!(e, ClientError::Connect { .. } | ClientError::Tls { .. }) => {
            return Attempt::NotMoved { job: None, why: format!("{} refused the job: {}", m.to, crate::out::one_line(e)) };
        }
        Err(e) => {
            return Attempt::Unknown {
                job: None,
                why: format!(
                    "{} did not answer the submission ({}): see `vmove job list` for a job of {}",
                    m.to,
                    crate::out::one_line(e),
                    m.guest
                ),
            };
        }
    };
    let job = match follow(&client, &m.guest, &rec.id, &events).await {
        Ok(r) => r,
        Err(why) => return Attempt::Unknown { job: Some(rec.id.clone()), why },
    };
    if job.status == JobStatus::Succeeded {
        return Attempt::Moved { job: Box::new(job), recovery: None };
    }
    settle(ctx, cluster, &client, m, job, &events).await
}

/// After a job that did not succeed: recovers it unless it rolled back by itself, then
/// says where the guest is.
async fn settle(
    ctx: &Ctx,
    cluster: &Cluster,
    client: &AgentClient,
    m: &PlannedMove,
    job: JobRecord,
    events: &mpsc::UnboundedSender<MoveEvent>,
) -> Attempt {
    let failed = format!("job {} {}: {}", job.id, format!("{:?}", job.status).to_lowercase(), job.error.clone().unwrap_or_default());
    if job.guest_host.as_deref() == Some(m.from.as_str()) {
        // Rolled back by itself (LIVE before the switchover): the guest runs on its source.
        return Attempt::NotMoved { job: Some(job.id), why: failed };
    }
    let recovery = match client.call::<JobRecord>(&Request::JobRecover { id: job.id.clone() }).await {
        Ok(r) => match follow(client, &m.guest, &r.id, events).await {
            Ok(rec) => rec,
            Err(why) => return Attempt::Unknown { job: Some(job.id), why: format!("{failed}; its recovery {}: {why}", r.id) },
        },
        Err(e) => {
            let why = format!("{failed}; `vmove job recover {}` refused: {}", job.id, crate::out::one_line(e));
            return Attempt::Unknown { job: Some(job.id), why };
        }
    };
    if recovery.status != JobStatus::Succeeded {
        let why = format!("{failed}; its recovery {} failed: {}", recovery.id, recovery.error.clone().unwrap_or_default());
        return Attempt::Unknown { job: Some(job.id), why };
    }
    match locate(ctx, cluster, m).await {
        Where::Target => Attempt::Moved { job: Box::new(job), recovery: Some(Box::new(recovery)) },
        Where::Source => Attempt::NotMoved { job: Some(job.id), why: format!("{failed}; recovered back by {}", recovery.id) },
        Where::Unclear(what) => Attempt::Unknown { job: Some(job.id), why: format!("{failed}; after recovery {}: {what}", recovery.id) },
    }
}

enum Where {
    Source,
    Target,
    Unclear(String),
}

/// Where the guest is defined after a recovery, as the two agents say (a source that does
/// not answer counts as not having it only in OFFLINEFORCE).
async fn locate(ctx: &Ctx, cluster: &Cluster, m: &PlannedMove) -> Where {
    async fn has(ctx: &Ctx, cluster: &Cluster, host: &str, guest: &str) -> Result<bool, String> {
        let c = ctx.client(cluster, host).map_err(crate::out::one_line)?.with_timeout(Duration::from_secs(5));
        match c.call::<GuestStatus>(&Request::GuestShow { name: guest.to_string() }).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(false),
            Err(e) => Err(crate::out::one_line(e)),
        }
    }
    let (src, dst) = tokio::join!(has(ctx, cluster, &m.from, &m.guest), has(ctx, cluster, &m.to, &m.guest));
    let src = match src {
        Err(_) if m.mode == Mode::OfflineForce => Ok(false),
        s => s,
    };
    match (src, dst) {
        (Ok(false), Ok(true)) => Where::Target,
        (Ok(true), Ok(false)) => Where::Source,
        (s, d) => Where::Unclear(format!("{} on {}: {:?}, on {}: {:?}", m.guest, m.from, s, m.to, d)),
    }
}

/// Follows a job to its end, passing its events on; a stream that breaks is resumed from
/// the last event while the target answers again within [`SILENT_TARGET`].
async fn follow(client: &AgentClient, guest: &str, id: &str, events: &mpsc::UnboundedSender<MoveEvent>) -> Result<JobRecord, String> {
    let mut next = 0u64;
    let mut silent_since: Option<Instant> = None;
    loop {
        let before = next;
        let r = client
            .watch(id, next, STREAM_IDLE, |e| {
                next = e.seq.saturating_add(1);
                let _ = events.send(MoveEvent { guest: guest.to_string(), job: id.to_string(), event: e.clone() });
            })
            .await;
        match r {
            Ok(rec) => return Ok(rec),
            Err(e) if e.is_unreachable() => {
                if next != before {
                    silent_since = None;
                }
                let since = *silent_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SILENT_TARGET {
                    return Err(format!(
                        "{} stopped answering during job {id} ({}); once it is back: `vmove job show {id}`, `vmove job recover {id}`",
                        client.host(),
                        crate::out::one_line(e)
                    ));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(format!("following job {id}: {}", crate::out::one_line(e))),
        }
    }
}
