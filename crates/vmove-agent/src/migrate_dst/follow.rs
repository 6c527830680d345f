//! The memory phase: poll the source every 250 ms over the kept-alive connection, show the
//! progress, feed the convergence ladder and do what it says (a higher downtime limit, the
//! throttle, post-copy and its recovery, or the cancel at the timeout), until the migration
//! completes.
use std::time::Duration;

use vmove_api::{ErrorCode, EventKind, Request};
use vmove_plan::converge::{Action, Phase, Sample};
use vmove_qmp::{MigrationInfo, Qmp};

use super::setup::Prepared;
use super::switchover::{final_figures, progress, Completed};
use crate::error::{fail, AgentError, Result, ResultExt};
use crate::peer::{call, PEER_TIMEOUT};
use crate::steps::StepCx;

/// How often the target asks the source for progress.
const POLL: Duration = Duration::from_millis(250);

/// Beyond the ladder's own cancel at the timeout, a pre-copy migration is given up this much
/// later whatever happens (the source does not answer, say).
const TIMEOUT_GRACE: Duration = Duration::from_secs(30);

fn sample(info: &MigrationInfo, at_ms: u64) -> Sample {
    Sample {
        at_ms,
        status: Phase::from_qemu(info.status.as_ref().map_or("none", |s| s.as_str())),
        pass: info.passes(),
        remaining_bytes: info.remaining_bytes(),
        transferred_bytes: info.transferred_bytes(),
        rate_bytes_per_s: info.rate_bytes_per_s(),
        dirty_rate_bytes_per_s: info.dirty_rate_bytes_per_s(),
        expected_downtime_ms: info.expected_downtime.unwrap_or(0),
        throttle_pct: info.cpu_throttle_percentage,
    }
}

/// Follows the migration until it completes.
pub(super) async fn follow(cx: &StepCx<'_>, mut p: Prepared) -> Result<Completed> {
    let (agent, name) = (cx.agent(), cx.guest().to_string());
    let timeout = Duration::from_secs(cx.spec.params.timeout_s);
    let mut misses = 0u32;
    let mut dst_events = p.q.subscribe();
    let mut postcopy = false;
    let mut told_cancel = false;
    loop {
        if cx.cell.cancelled() {
            if !postcopy {
                fail!(Cancelled, "cancelled by the operator during the memory phase; the guest keeps running on {}", cx.spec.source.name);
            }
            if !told_cancel {
                told_cancel = true;
                let message = "cancel ignored: in post-copy the guest already runs on the target".to_string();
                cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
            }
        }
        if !postcopy && p.started.elapsed() > timeout + TIMEOUT_GRACE {
            fail!(Timeout, "timed out after {} s: the migration did not end (the guest keeps running on {})", timeout.as_secs(), cx.spec.source.name);
        }
        if p.q.is_closed() {
            if postcopy {
                fail!(PastNoReturn, "the target QEMU exited during post-copy: the guest is lost (the source QEMU is kept for inspection)");
            }
            fail!(Qemu, "the target QEMU exited during the migration");
        }
        let info = match call::<MigrationInfo>(cx.peer, &Request::PeerMigrateQuery { name: name.clone() }, PEER_TIMEOUT).await {
            Ok(info) => {
                misses = 0;
                Some(info)
            }
            Err(e) if e.code == ErrorCode::StateWrite => return Err(e),
            Err(e) => {
                misses = misses.saturating_add(1);
                if misses == 1 {
                    cx.cell.emit(&agent.state, EventKind::Info { message: format!("source not answering: {e}") }).await?;
                }
                if !postcopy && p.q.query_status().await.is_ok_and(|s| s.running) {
                    tracing::warn!("source unreachable ({e}) but the target runs: switchover happened");
                    return Ok(completed(p, MigrationInfo::default()));
                }
                // In post-copy the target's own view drives the recovery.
                if postcopy {
                    p.q.query_migrate().await.ok()
                } else {
                    None
                }
            }
        };
        if let Some(info) = info {
            let status = info.status.as_ref().map_or("none", |s| s.as_str()).to_string();
            match status.as_str() {
                "completed" => {
                    let last = final_figures(cx, info).await;
                    return Ok(completed(p, last));
                }
                "pre-switchover" => {
                    cx.cell.emit(&agent.state, EventKind::Info { message: "paused at switchover (test hook)".into() }).await?;
                    if !cx.cell.wait_resumed().await {
                        fail!(Cancelled, "cancelled by the operator at switchover; the guest keeps running on {}", cx.spec.source.name);
                    }
                    cx.peer.call(&Request::PeerMigrateContinue { name: name.clone() }, PEER_TIMEOUT).await.ctx("continue at switchover")?;
                }
                "failed" | "cancelled" => {
                    let why = info.error_desc.clone().unwrap_or_else(|| "no reason given".into());
                    if postcopy {
                        fail!(PastNoReturn, "the migration {status} during post-copy: {why}");
                    }
                    fail!(Qemu, "the source reports the migration {status}: {why}");
                }
                _ => {
                    let at_ms = u64::try_from(p.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let actions = p.ladder.observe(&sample(&info, at_ms));
                    for a in actions {
                        let rung = p.ladder.rung().to_string();
                        let figures = a.why().figures.clone();
                        cx.cell.emit(&agent.state, EventKind::Escalation { action: a.describe(), rung, figures }).await?;
                        if act(cx, &p, &a).await? {
                            postcopy = true;
                        }
                    }
                    let mut pr = progress(&info);
                    if pr.total_bytes > 0 {
                        pr.rung = Some(p.ladder.rung().to_string());
                        if let Some(eta) = p.ladder.eta_ms() {
                            pr.eta_s = Some(eta / 1000);
                        }
                        cx.cell.emit(&agent.state, EventKind::Progress(pr)).await?;
                    }
                }
            }
        }
        // Wait for the next poll, or for the target QEMU's MIGRATION event (it reports the
        // incoming side's completion at once).
        let _ = tokio::time::timeout(POLL, async {
            loop {
                match dst_events.recv().await {
                    Ok(e) if e.migration_status().is_some() => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
        })
        .await;
    }
}

fn completed(p: Prepared, last: MigrationInfo) -> Completed {
    Completed { q: p.q, last, watches: p.watches, times: p.times }
}

/// Does what the ladder decided. Returns whether post-copy started.
async fn act(cx: &StepCx<'_>, p: &Prepared, a: &Action) -> Result<bool> {
    let name = cx.guest().to_string();
    let tune = |downtime_limit_ms, throttle| Request::PeerMigrateTune { name: name.clone(), downtime_limit_ms, throttle };
    match a {
        Action::SetDowntimeLimit { ms, .. } => {
            cx.peer.call(&tune(Some(*ms), None), PEER_TIMEOUT).await.ctx("raise the downtime limit")?;
        }
        Action::UnparkThrottle { params, .. } | Action::RaiseThrottle { params, .. } => {
            cx.peer.call(&tune(None, Some(*params)), PEER_TIMEOUT).await.ctx("throttle the guest")?;
        }
        Action::StartPostcopy { .. } => {
            cx.peer.call(&Request::PeerMigrateStartPostcopy { name }, PEER_TIMEOUT).await.ctx("switch to post-copy")?;
            return Ok(true);
        }
        Action::RecoverPostcopy { attempt, .. } => {
            if let Err(e) = recover(cx, &p.q).await {
                let message = format!("post-copy recovery attempt {attempt} failed: {e}; the next one follows");
                cx.cell.emit(&cx.agent().state, EventKind::Info { message }).await?;
            }
        }
        Action::Exhausted { .. } => {}
        Action::Cancel { .. } => {
            fail!(
                Timeout,
                "timed out after {} s: memory did not converge (cancelled; the guest keeps running on {})",
                cx.spec.params.timeout_s,
                cx.spec.source.name
            );
        }
    }
    Ok(false)
}

/// Post-copy paused (the link broke): the target listens again (`migrate-recover`, out of
/// band where negotiated: a target blocked on a missing page still answers it) and the
/// source resumes to it.
async fn recover(cx: &StepCx<'_>, q: &Qmp) -> Result<()> {
    let agent = cx.agent();
    let Some((ip, _)) = agent.cfg.listen.rsplit_once(':') else { fail!(Internal, "bad listen address {}", agent.cfg.listen) };
    // The target may not have noticed the broken link yet (it waits on a dead connection):
    // pause it, so that it listens again.
    let status = |i: MigrationInfo| i.status.map(|s| s.as_str().to_string()).unwrap_or_default();
    if q.query_migrate().await.map(status).is_ok_and(|s| s == "postcopy-active") {
        q.migrate_pause().await.ctx("migrate-pause")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !q.query_migrate().await.map(status).is_ok_and(|s| s == "postcopy-paused") {
            if std::time::Instant::now() > deadline {
                fail!(Qemu, "the target did not pause its post-copy");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    q.migrate_recover(&format!("tcp:{ip}:0")).await.ctx("migrate-recover")?;
    let port = super::switchover::bound_port(q).await?;
    let uri = format!("tcp:{ip}:{port}");
    cx.peer
        .call(&Request::PeerMigrateResume { name: cx.guest().to_string(), uri }, PEER_TIMEOUT)
        .await
        .map_err(|e: AgentError| e.context("resume on the source"))?;
    Ok(())
}
