//! Live migration, the target's half (`dst`): LIVE MIGRATE_GUEST. The target starts an
//! incoming QEMU, asks the source to migrate into it, follows the progress, and once the
//! guest runs here announces it and ends the source's QEMU (see [`crate::migrate_src`] for
//! the protocol). Its undo, used while the guest still runs on the source, cancels the
//! source's migration and removes the incoming QEMU.
use std::time::{Duration, Instant};

use async_trait::async_trait;
use vmove_api::{ErrorCode, EventKind, GuestState, Progress, Request};
use vmove_qmp::{AnnounceParameters, MigrationInfo, Qmp};

use crate::error::{fail, AgentError, Result, ResultExt};
use crate::peer::{call, PEER_TIMEOUT};
use crate::steps::{take_definition, StepCx, StepWork};

mod switchover;

/// How often the target asks the source for progress at most.
const POLL: Duration = Duration::from_millis(500);

/// LIVE MIGRATE_GUEST.
pub struct MemoryMigration;

#[async_trait]
impl StepWork for MemoryMigration {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let (agent, name) = (cx.agent(), cx.guest().to_string());
        if agent.spec(&name).is_some() && agent.show(&name)?.state == GuestState::Running {
            // The switchover happened while nobody watched (e.g. this agent restarted):
            // end the source's paused QEMU and announce.
            let finish = cx.peer.call(&Request::PeerMigrateFinish { name: name.clone() }, Duration::from_secs(30)).await;
            if let Ok((q, _)) = agent.qmp_of(&name) {
                q.announce_self(&AnnounceParameters::default()).await.ctx("announce-self")?;
            }
            return Ok(match finish {
                Ok(_) => format!("guest already runs on {}; source QEMU ended", agent.name()),
                Err(e) => format!("guest already runs on {}; source not confirmed ({e})", agent.name()),
            });
        }
        take_definition(agent, cx.spec).await?;
        let (q, last) = migrate(cx).await?;
        switched_over(cx, &q, last).await
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        let name = cx.guest().to_string();
        let cancel = cx.peer.call(&Request::PeerMigrateCancel { name: name.clone() }, Duration::from_secs(40)).await;
        if let Err(e) = &cancel {
            if e.code == ErrorCode::WrongState {
                fail!(WrongState, "{}; the guest moved: run `vmove job recover` to go forward", e.message);
            }
        }
        let note = abort_incoming(cx).await?;
        match cancel {
            Ok(_) => Ok(format!("{note}; the migration was cancelled on {}", cx.spec.source.name)),
            Err(e) => Err(e.context(format!("{note}, but {} did not confirm that it stopped migrating", cx.spec.source.name))),
        }
    }
}

/// Removes the incoming QEMU, the definition and the taps of a migration that did not
/// switch over. Refuses when the guest already runs here.
async fn abort_incoming(cx: &StepCx<'_>) -> Result<String> {
    let (agent, name) = (cx.agent(), cx.guest());
    if agent.spec(name).is_none() {
        agent.unplug_taps(&cx.spec.guest).await;
        return Ok(format!("nothing of {name} on {}", agent.name()));
    }
    let st = agent.show(name)?;
    if st.state == GuestState::Running {
        fail!(WrongState, "guest {name} already runs on {}: the migration completed; recover forward", agent.name());
    }
    if st.pid.is_some() {
        agent.stop(name, true, Duration::from_secs(15)).await?;
    }
    agent.forget(name).await?;
    Ok(format!("incoming guest removed from {}", agent.name()))
}

/// Starts the incoming QEMU and the migration, and follows it until it completes.
async fn migrate(cx: &StepCx<'_>) -> Result<(Qmp, MigrationInfo)> {
    let (agent, name) = (cx.agent(), cx.guest().to_string());
    let mut p = cx.spec.params.clone();
    let hook = crate::hooks::pause_at_switchover(agent, cx.spec);
    // Local volumes: the mirrors must be in sync now and are finished at the pause.
    let copying = crate::storage::dst::copies_in_sync(cx).await?;
    p.pause_before_switchover = hook || copying;
    agent.start_incoming(&name).await?;
    let (q, _) = agent.qmp_of(&name)?;
    crate::migrate_src::setup_qemu(&q, agent, &name, &p, "server", None).await?;
    let Some((ip, _)) = agent.cfg.listen.rsplit_once(':') else { fail!(Internal, "bad listen address {}", agent.cfg.listen) };
    // Port 0: QEMU binds a free port itself; read it back (no bind-and-release race).
    q.migrate_incoming(&format!("tcp:{ip}:0")).await.ctx("migrate-incoming")?;
    let port = bound_port(&q).await?;
    let uri = format!("tcp:{ip}:{port}");
    let tls_hostname = (!p.insecure_transport).then(|| agent.cfg.name.clone());
    let out = Request::PeerMigrateOut { name: name.clone(), uri: uri.clone(), tls_hostname, params: p.clone(), job: Some(cx.claim()) };
    cx.peer.call(&out, PEER_TIMEOUT).await.ctx("start the migration on the source")?;
    let started_msg = format!(
        "memory migration to {uri} started ({}, downtime limit {} ms, bandwidth {})",
        if p.insecure_transport { "clear text" } else { "TLS" },
        p.max_downtime_ms,
        p.bandwidth_bytes_per_s.map_or("unlimited".to_string(), |b| format!("{} MiB/s", b >> 20))
    );
    cx.cell.emit(&agent.state, EventKind::Info { message: started_msg }).await?;
    let started = Instant::now();
    let timeout = Duration::from_secs(p.timeout_s);
    let mut misses = 0u32;
    let mut held = false;
    let mut dst_events = q.subscribe();
    loop {
        if cx.cell.cancelled() {
            fail!(Cancelled, "cancelled by the operator during the memory phase; the guest keeps running on {}", cx.spec.source.name);
        }
        if started.elapsed() > timeout {
            fail!(
                Timeout,
                "timed out after {} s: memory did not converge (cancelled; the guest keeps running on {})",
                p.timeout_s,
                cx.spec.source.name
            );
        }
        if q.is_closed() {
            fail!(Qemu, "the target QEMU exited during the migration");
        }
        match call::<MigrationInfo>(cx.peer, &Request::PeerMigrateQuery { name: name.clone() }, PEER_TIMEOUT).await {
            Ok(info) => {
                misses = 0;
                let pr = progress(&info);
                match pr.status.as_str() {
                    "completed" => return Ok((q.clone(), final_figures(cx, info).await)),
                    // Once: a query right after the continue may still see the pause.
                    "pre-switchover" if !held => {
                        held = true;
                        switchover::at_pre_switchover(cx, hook, copying).await?;
                    }
                    "failed" | "cancelled" => fail!(
                        Qemu,
                        "the source reports the migration {}: {}",
                        pr.status,
                        info.error_desc.clone().unwrap_or_else(|| "no reason given".into())
                    ),
                    _ => cx.cell.emit(&agent.state, EventKind::Progress(pr)).await?,
                }
            }
            Err(e) if e.code == ErrorCode::StateWrite => return Err(e),
            Err(e) => {
                misses = misses.saturating_add(1);
                if q.query_status().await.is_ok_and(|s| s.running) {
                    tracing::warn!("source unreachable ({e}) but the target runs: switchover happened");
                    return Ok((q.clone(), MigrationInfo::default()));
                }
                if misses == 1 {
                    cx.cell.emit(&agent.state, EventKind::Info { message: format!("source not answering: {e}") }).await?;
                }
            }
        }
        // Wait for the next poll, or for the target QEMU's MIGRATION event (it reports the
        // incoming side's completion at once).
        let _ = tokio::time::timeout(switchover::poll_interval(copying), async {
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

/// The port an incoming migration listens on, from `query-migrate`'s `socket-address`.
async fn bound_port(q: &Qmp) -> Result<u16> {
    let info = q.query_migrate().await.ctx("query-migrate")?;
    let port = info
        .socket_address
        .iter()
        .flatten()
        .find_map(|a| a.get("port").and_then(|p| p.as_str().and_then(|s| s.parse::<u16>().ok()).or_else(|| p.as_u64().and_then(|n| u16::try_from(n).ok()))));
    port.filter(|p| *p != 0).ok_or_else(|| AgentError::new(ErrorCode::Qemu, "the incoming QEMU did not report the port it listens on"))
}

/// After the switchover: the target runs the guest; announce, end the source, announce again.
/// From here on the guest lives on the target: what fails now is a note, not a failure.
async fn switched_over(cx: &StepCx<'_>, q: &Qmp, last: MigrationInfo) -> Result<String> {
    let (agent, name) = (cx.agent(), cx.guest().to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !q.query_status().await.map(|s| s.running).unwrap_or(false) {
        if Instant::now() > deadline {
            fail!(Qemu, "the target QEMU did not resume the guest after the migration");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.set_state(&name, GuestState::Running);
    let mut notes = vec![];
    if let Err(e) = q.announce_self(&AnnounceParameters::default()).await {
        notes.push(format!("announce-self failed: {e}"));
    }
    let pr = progress(&last);
    {
        let mut s = cx.summary.lock().unwrap_or_else(|p| p.into_inner());
        s.migration_ms = last.total_time;
        s.downtime_ms = last.downtime;
        s.transferred_bytes = Some(pr.transferred_bytes);
        s.passes = Some(pr.pass);
    }
    if let Err(e) = cx.peer.call(&Request::PeerMigrateFinish { name: name.clone() }, Duration::from_secs(30)).await {
        let message = format!("the source did not confirm the end of its QEMU ({e}); its agent fences it at restart");
        cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
    }
    // Announce once more now that the source QEMU and its tap are gone: a late frame
    // flushed from the paused source could otherwise have taught the switches the old port.
    if let Err(e) = q.announce_self(&AnnounceParameters::default()).await {
        notes.push(format!("second announce-self failed: {e}"));
    }
    let mut note = format!(
        "switched over to {} in {} ms, downtime {} ms, {} MiB sent in {} passes; announced",
        agent.name(),
        last.total_time.unwrap_or(0),
        last.downtime.unwrap_or(0),
        pr.transferred_bytes >> 20,
        pr.pass
    );
    for n in notes {
        note.push_str("; ");
        note.push_str(&n);
    }
    Ok(note)
}

fn progress(info: &MigrationInfo) -> Progress {
    let from_events = info.extra.get("vmove-passes").and_then(|v| v.as_u64()).unwrap_or(0);
    let ram = info.ram.clone().unwrap_or_default();
    let rate = ram.mbps.map(|m| (m * 1e6 / 8.0) as u64).unwrap_or(0);
    let dirty = ram.dirty_pages_rate.unwrap_or(0).saturating_mul(ram.page_size.unwrap_or(4096));
    let remaining = ram.remaining.unwrap_or(0);
    let eta_s = (rate > dirty).then(|| remaining / (rate - dirty).max(1));
    Progress {
        status: info.status.as_ref().map(|s| s.as_str().to_string()).unwrap_or_else(|| "none".into()),
        pass: ram.dirty_sync_count.unwrap_or(0).max(from_events),
        transferred_bytes: ram.transferred.unwrap_or(0),
        remaining_bytes: remaining,
        total_bytes: ram.total.unwrap_or(0),
        rate_bytes_per_s: rate,
        dirty_rate_bytes_per_s: dirty,
        expected_downtime_ms: info.expected_downtime.unwrap_or(0),
        eta_s,
        elapsed_ms: info.total_time.unwrap_or(0),
    }
}

/// QEMU marks a migration completed a moment before it fills in `total-time` and
/// `downtime`: ask again until they are there (up to a second).
async fn final_figures(cx: &StepCx<'_>, mut info: MigrationInfo) -> MigrationInfo {
    for _ in 0..20 {
        if info.total_time.unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        match call::<MigrationInfo>(cx.peer, &Request::PeerMigrateQuery { name: cx.guest().into() }, PEER_TIMEOUT).await {
            Ok(i) => info = i,
            Err(_) => break,
        }
    }
    info
}
