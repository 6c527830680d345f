//! The memory phase: poll the source every 250 ms over the kept-alive connection, show the
//! progress, feed the convergence ladder and do what it says (a higher downtime limit, the
//! throttle, post-copy and its recovery, or the cancel at the timeout), until the migration
//! completes.
use std::time::Duration;

use vmove_api::{ErrorCode, EventKind, Request};
use vmove_plan::converge::{Action, Phase, Sample};
use vmove_qmp::{MigrationInfo, MigrationStatus, Qmp};

use super::setup::Prepared;
use super::switchover::{final_figures, progress, Completed};
use crate::error::{fail, AgentError, Result, ResultExt};
use crate::peer::{call, PEER_TIMEOUT};
use crate::steps::StepCx;

/// How often the target asks the source for progress.
const POLL: Duration = Duration::from_millis(250);

/// In post-copy the source must answer fast: a hung link is detected by the ladder from
/// bytes that stop moving, not by waiting out [`PEER_TIMEOUT`].
const POSTCOPY_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The target's own `query-migrate` in post-copy (its main loop may wait on a page).
const TARGET_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

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
        // From the source agent (`PeerMigrateQuery`); an older one sends none.
        in_flight_bytes: info.extra.get(crate::migrate_src::IN_FLIGHT_KEY).and_then(|v| v.as_u64()).unwrap_or(0),
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
    // The source's last answer (post-copy figures when it does not answer).
    let mut last_source = MigrationInfo::default();
    // The URI the target listens on after `migrate-recover`, until post-copy runs again.
    let mut listening: Option<String> = None;
    // The target's post-copy was paused by this agent and has not run since.
    let mut paused_here = false;
    // The target reported post-copy: the guest runs here.
    let mut runs_here = false;
    // The pre-switchover pause was handled.
    let mut held = false;
    let poll = if p.copying { super::pause::POLL_COPYING } else { POLL };
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
                // The source's memory is older than what the guest wrote to its disks
                // while it ran here: it must never run again. End it too.
                let stop = Request::PeerStopGuest { name: name.clone(), force: true, timeout_s: 15, job: Some(cx.claim()) };
                let ended = match cx.peer.call(&stop, PEER_TIMEOUT).await {
                    Ok(_) => format!("the source's out-of-date QEMU was ended on {}", cx.spec.source.name),
                    Err(e) => format!("ending the source's out-of-date QEMU on {} failed ({e}): end it before starting the guest", cx.spec.source.name),
                };
                fail!(
                    PastNoReturn,
                    "the target QEMU exited during post-copy: the guest is lost, its memory was split between the hosts; {ended}; its disks are intact: {}",
                    lost_hint(cx)
                );
            }
            fail!(Qemu, "the target QEMU exited during the migration");
        }
        if postcopy && !runs_here {
            // The target's own view: once it is in post-copy, the guest runs here.
            if let Ok(Ok(t)) = tokio::time::timeout(TARGET_QUERY_TIMEOUT, p.q.query_migrate()).await {
                if t.status == Some(MigrationStatus::PostcopyActive) {
                    runs_here = true;
                    let message = format!(
                        "post-copy: the guest runs on {} now; the rest of its memory follows from {} as it is touched",
                        agent.cfg.name, cx.spec.source.name
                    );
                    cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
                }
            }
        }
        let query_timeout = if postcopy { POSTCOPY_QUERY_TIMEOUT } else { PEER_TIMEOUT };
        let info = match call::<MigrationInfo>(cx.peer, &Request::PeerMigrateQuery { name: name.clone() }, query_timeout).await {
            Ok(info) => {
                misses = 0;
                last_source = info.clone();
                Some(info)
            }
            Err(e) if e.code == ErrorCode::StateWrite => return Err(e),
            // In post-copy the source answers that it has no QEMU of the guest: the other
            // half of its memory died with it (the guest is lost), unless the migration
            // completed just before.
            Err(e) if postcopy && source_qemu_gone(e.code) => {
                if let Ok(Ok(t)) = tokio::time::timeout(TARGET_QUERY_TIMEOUT, p.q.query_migrate()).await {
                    if t.status == Some(MigrationStatus::Completed) {
                        return Ok(completed(p, last_source));
                    }
                }
                // A target that waits on pages that will never come cannot run: end it.
                let ended = match agent.stop(&name, true, Duration::from_secs(15)).await {
                    Ok(_) => format!("the target's QEMU was ended on {}", agent.cfg.name),
                    Err(err) => format!("ending the target's QEMU on {} failed ({err})", agent.cfg.name),
                };
                fail!(
                    PastNoReturn,
                    "the source QEMU exited during post-copy ({}): the guest is lost, its memory was split between the hosts; {ended}; its disks are intact: {}",
                    e.message,
                    lost_hint(cx)
                );
            }
            Err(e) => {
                misses = misses.saturating_add(1);
                if misses == 1 {
                    cx.cell.emit(&agent.state, EventKind::Info { message: format!("source not answering: {e}") }).await?;
                }
                if !postcopy && p.q.query_status().await.is_ok_and(|s| s.running) {
                    tracing::warn!("source unreachable ({e}) but the target runs: switchover happened");
                    return Ok(completed(p, MigrationInfo::default()));
                }
                // In post-copy the target's own status drives the ladder, with the source's
                // last figures: bytes that do not move are a hung link. A target whose main
                // loop waits on a missing page does not answer either: then the status is
                // what the agent last did (paused it) or saw.
                if postcopy {
                    let own = match tokio::time::timeout(TARGET_QUERY_TIMEOUT, p.q.query_migrate()).await {
                        Ok(Ok(t)) => t.status,
                        Ok(Err(e)) => {
                            tracing::debug!("target query-migrate in post-copy: {e}");
                            None
                        }
                        Err(_) => {
                            tracing::debug!("target query-migrate in post-copy: no answer within {TARGET_QUERY_TIMEOUT:?}");
                            None
                        }
                    };
                    // Post-copy was asked and accepted: the source's last answer may predate it.
                    let assumed = if paused_here { MigrationStatus::PostcopyPaused } else { MigrationStatus::PostcopyActive };
                    let status = own.filter(|s| s.as_str().starts_with("postcopy") || s.as_str() == "completed").or(Some(assumed));
                    Some(MigrationInfo { status, ..last_source.clone() })
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
                // Once: a query right after the continue may still see the pause.
                "pre-switchover" if !held => {
                    held = true;
                    super::pause::at_pre_switchover(cx, p.hook, p.copying).await?;
                }
                "failed" | "cancelled" => {
                    let why = info.error_desc.clone().unwrap_or_else(|| "no reason given".into());
                    if postcopy {
                        fail!(PastNoReturn, "the migration {status} during post-copy: {why}");
                    }
                    fail!(Qemu, "the source reports the migration {status}: {why}");
                }
                other => {
                    if other == "postcopy-active" && misses == 0 {
                        listening = None;
                        paused_here = false;
                    }
                    let at_ms = u64::try_from(p.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    let actions = p.ladder.observe(&sample(&info, at_ms));
                    for a in actions {
                        let rung = p.ladder.rung().to_string();
                        let figures = a.why().figures.clone();
                        cx.cell.emit(&agent.state, EventKind::Escalation { action: a.describe(), rung, figures }).await?;
                        if act(cx, &mut p, &a, &mut listening, &mut paused_here).await? {
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
        let _ = tokio::time::timeout(poll, async {
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

/// Whether a source's refusal says that it has no QEMU of the guest (any more).
fn source_qemu_gone(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::WrongState | ErrorCode::NotFound)
}

/// What the operator does after a guest was lost in post-copy.
fn lost_hint(cx: &StepCx<'_>) -> String {
    format!(
        "run `vmove job recover {}` (the guest goes back to {}, stopped), then `vmove guest start {}` boots it",
        cx.cell.id(),
        cx.spec.source.name,
        cx.guest()
    )
}

fn completed(p: Prepared, last: MigrationInfo) -> Completed {
    Completed { q: p.q, last, watches: p.watches, times: p.times }
}

/// Does what the ladder decided. Returns whether post-copy started.
async fn act(cx: &StepCx<'_>, p: &mut Prepared, a: &Action, listening: &mut Option<String>, paused_here: &mut bool) -> Result<bool> {
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
        Action::PausePostcopy { .. } => {
            match p.q.migrate_pause().await {
                Ok(()) => *paused_here = true,
                Err(e) => {
                    let message = format!("pausing post-copy failed: {e}; asked again if the bytes still do not move");
                    cx.cell.emit(&cx.agent().state, EventKind::Info { message }).await?;
                    p.ladder.pause_failed();
                }
            }
        }
        Action::RecoverPostcopy { attempt, .. } => {
            if let Err(e) = recover(cx, &p.q, listening).await {
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

/// Post-copy paused (the link broke, or the target paused a hung one): the target listens
/// again (`migrate-recover`, out of band; once, the URI is kept for the next attempts) and
/// the source resumes to it (pausing its own side first if it still waits on the dead
/// connection).
async fn recover(cx: &StepCx<'_>, q: &Qmp, listening: &mut Option<String>) -> Result<()> {
    let agent = cx.agent();
    let name = cx.guest().to_string();
    let Some((ip, _)) = agent.cfg.listen.rsplit_once(':') else { fail!(Internal, "bad listen address {}", agent.cfg.listen) };
    let uri = match listening.clone() {
        Some(uri) => uri,
        None => {
            // The port QEMU binds is read from its sockets: its main loop may be blocked on
            // a missing page, and `query-migrate` is not out of band.
            let pid = agent.pid_of(&name)?;
            let before = vmove_host::proc::listening(pid).ctx("the target QEMU's sockets")?;
            q.migrate_recover(&format!("tcp:{ip}:0")).await.ctx("migrate-recover")?;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let addr = loop {
                let now = vmove_host::proc::listening(pid).ctx("the target QEMU's sockets")?;
                if let Some(a) = now.into_iter().find(|a| !before.contains(a) && a.ip().to_string() == ip) {
                    break a;
                }
                if std::time::Instant::now() > deadline {
                    fail!(Qemu, "the target QEMU did not listen for the post-copy recovery");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let uri = format!("tcp:{ip}:{}", addr.port());
            *listening = Some(uri.clone());
            uri
        }
    };
    call::<serde_json::Value>(cx.peer, &Request::PeerMigrateResume { name, uri }, PEER_TIMEOUT)
        .await
        .map_err(|e: AgentError| e.context("resume on the source"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sources_bytes_in_flight_reach_the_ladder() {
        let mut info = vmove_qmp::MigrationInfo::default();
        assert_eq!(super::sample(&info, 250).in_flight_bytes, 0, "an older source sends none");
        info.extra.insert(crate::migrate_src::IN_FLIGHT_KEY.into(), 4_194_304u64.into());
        assert_eq!(super::sample(&info, 250).in_flight_bytes, 4_194_304);
        info.extra.insert(crate::migrate_src::IN_FLIGHT_KEY.into(), (-1i64).into());
        assert_eq!(super::sample(&info, 250).in_flight_bytes, 0, "not a byte count: none");
    }
}
