//! Live migration: pre-copy over QEMU's own stream, TLS with the cluster CA's
//! certificates, multifd, a downtime limit and an explicit bandwidth (never QEMU's
//! 128 MiB/s default by accident).
//!
//! ```text
//!  target agent (dst, runs the job)               source agent (src)
//!  define guest, QEMU -incoming defer
//!  caps + params + tls-creds(server)
//!  migrate-incoming tcp:DST:PORT
//!  PeerMigrateOut ───────────────────────────▶   caps + params + tls-creds(client); migrate
//!  loop: PeerMigrateQuery ───────────────────▶   query-migrate → Progress
//!        (cancel / timeout → PeerMigrateCancel, kill the incoming QEMU: guest stays on src)
//!  completed: dst QEMU runs; announce-self
//!  PeerMigrateFinish ────────────────────────▶   quit the paused QEMU, remove taps, drop definition
//! ```
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use vmove_api::{GuestState, JobSpec, MigrationParams, Progress, Request, Summary};
use vmove_qmp::{AnnounceParameters, MigrateSetParameters, MigrationCapability, MigrationInfo, MigrationStatus, Qmp};

use crate::guests::Agent;
use crate::jobs::{JobCell, Jobs};

/// "Unlimited" bandwidth, bytes/s (QEMU refuses values above SIZE_MAX / 1000).
const UNLIMITED_BYTES_PER_S: u64 = 1 << 40;
const TLS_ID: &str = "vmove-tls";

/// Capabilities for both sides, from the parameter set.
fn capabilities(p: &MigrationParams) -> Vec<(MigrationCapability, bool)> {
    vec![
        (MigrationCapability::Events, true),
        (MigrationCapability::Multifd, p.multifd_channels > 0),
        (MigrationCapability::PostcopyRam, p.allow_postcopy),
        (MigrationCapability::PauseBeforeSwitchover, p.pause_before_switchover),
    ]
}

/// QEMU parameters for both sides, from the parameter set.
fn parameters(p: &MigrationParams, tls_hostname: Option<String>) -> MigrateSetParameters {
    let secure = !p.insecure_transport;
    MigrateSetParameters {
        max_bandwidth_bytes_per_s: Some(p.bandwidth_bytes_per_s.unwrap_or(UNLIMITED_BYTES_PER_S)),
        downtime_limit_ms: Some(p.max_downtime_ms),
        multifd_channels: (p.multifd_channels > 0).then_some(u64::from(p.multifd_channels)),
        tls_creds: Some(if secure { TLS_ID.to_string() } else { String::new() }),
        tls_hostname: if secure { tls_hostname } else { Some(String::new()) },
        ..Default::default()
    }
}

/// Writes QEMU's credential directory (`ca-cert.pem`, `<role>-cert.pem`, `<role>-key.pem`).
fn tls_dir(agent: &Agent, run: &Path, role: &str) -> Result<PathBuf> {
    let dir = run.join(format!("tls-{role}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(&agent.cfg.ca, dir.join("ca-cert.pem")).context("copy the CA certificate")?;
    std::fs::copy(&agent.cfg.cert, dir.join(format!("{role}-cert.pem"))).context("copy the host certificate")?;
    std::fs::copy(&agent.cfg.key, dir.join(format!("{role}-key.pem"))).context("copy the host key")?;
    Ok(dir)
}

async fn setup_qemu(q: &Qmp, agent: &Agent, run: &Path, p: &MigrationParams, role: &str, tls_hostname: Option<String>) -> Result<()> {
    if !p.insecure_transport {
        let dir = tls_dir(agent, run, role)?;
        let _ = q.execute("object-del", Some(json!({ "id": TLS_ID }))).await;
        q.execute(
            "object-add",
            Some(json!({ "qom-type": "tls-creds-x509", "id": TLS_ID, "dir": dir, "endpoint": role, "verify-peer": true })),
        )
        .await
        .context("tls-creds-x509")?;
    }
    q.migrate_set_capabilities(&capabilities(p)).await.context("migrate-set-capabilities")?;
    q.migrate_set_parameters(&parameters(p, tls_hostname)).await.context("migrate-set-parameters")?;
    Ok(())
}

// ---------------------------------------------------------------- source side (src)

/// src: starts the outgoing migration.
pub async fn src_migrate_out(agent: &Arc<Agent>, name: &str, uri: &str, tls_hostname: Option<String>, p: &MigrationParams) -> Result<()> {
    let (q, st) = agent.qmp_of(name)?;
    if st != GuestState::Running {
        bail!("guest {name} is {st:?} on {}, not running", agent.cfg.name);
    }
    setup_qemu(&q, agent, &agent.run_dir_of(name), p, "client", tls_hostname).await?;
    // Follow QEMU's MIGRATION and MIGRATION_PASS events for the target's queries.
    let mut events = q.subscribe();
    let seen = agent.migration_events(name);
    *seen.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => {
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(pass) = e.migration_pass() {
                        s.passes = pass;
                    }
                    if let Some(st) = e.migration_status() {
                        s.status = st.as_str().to_string();
                        if matches!(s.status.as_str(), "completed" | "failed" | "cancelled") {
                            break;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    });
    q.migrate(uri).await.context("migrate")?;
    agent.set_state(name, GuestState::Running);
    Ok(())
}

/// src: the outgoing migration's state.
pub async fn src_migrate_query(agent: &Agent, name: &str) -> Result<MigrationInfo> {
    let (q, _) = agent.qmp_of(name)?;
    let mut info = q.query_migrate().await?;
    let seen = agent.migration_events(name);
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    info.extra.insert("vmove-passes".into(), s.passes.into());
    info.extra.insert("vmove-event-status".into(), s.status.clone().into());
    Ok(info)
}

/// src: lets a migration held at switchover go on.
pub async fn src_migrate_continue(agent: &Agent, name: &str) -> Result<()> {
    let (q, _) = agent.qmp_of(name)?;
    q.migrate_continue(MigrationStatus::PreSwitchover).await.context("migrate-continue")?;
    Ok(())
}

/// src: cancels the outgoing migration and waits until the guest runs here again.
pub async fn src_migrate_cancel(agent: &Agent, name: &str) -> Result<MigrationInfo> {
    let Ok((q, _)) = agent.qmp_of(name) else {
        // No QEMU here: nothing is migrating.
        return Ok(MigrationInfo::default());
    };
    let _ = q.migrate_cancel().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = q.query_migrate().await?;
        let s = info.status.as_ref().map(|s| s.as_str().to_string()).unwrap_or_default();
        if matches!(s.as_str(), "cancelled" | "failed" | "none" | "") {
            if !q.query_status().await?.running {
                let _ = q.cont().await;
            }
            return Ok(info);
        }
        if s == "completed" {
            bail!("too late to cancel: the migration of {name} has completed");
        }
        if Instant::now() > deadline {
            bail!("migration of {name} did not cancel within 30 s (status {s})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// src: after switchover, ends the paused source QEMU and forgets the guest.
pub async fn src_migrate_finish(agent: &Arc<Agent>, name: &str) -> Result<()> {
    let Some(_) = agent.spec(name) else { return Ok(()) };
    if let Ok((q, _)) = agent.qmp_of(name) {
        let info = q.query_migrate().await?;
        let done = info.status.as_ref().is_some_and(|s| *s == MigrationStatus::Completed);
        if !done {
            bail!("the migration of {name} has not completed on {}; refusing to end the source", agent.cfg.name);
        }
    }
    agent.stop(name, true, Duration::from_secs(15)).await?;
    agent.forget(name).await
}

// ---------------------------------------------------------------- target side (dst)

/// dst ATTACH_VOLUMES: the target may open the volumes while the source runs them.
pub fn dst_attach_volumes(jobs: &Jobs, spec: &JobSpec) -> Result<String> {
    let agent = &jobs.agent;
    let mut notes = Vec::new();
    for d in &spec.guest.disks {
        let path = agent.volume_path(&d.pool, &d.volume)?;
        let pool = path.parent().unwrap_or(Path::new("/"));
        let l = vmove_host::lease::add_incoming(pool, &d.volume, &spec.source.name, &agent.cfg.name, &spec.guest.name)?;
        notes.push(format!("{}/{} (held by {}, incoming {})", d.pool, d.volume, l.holder, agent.cfg.name));
    }
    Ok(if notes.is_empty() { "no volumes".into() } else { notes.join(", ") })
}

/// dst DETACH_VOLUMES: the leases pass from the source to this host.
pub async fn dst_detach_volumes(jobs: &Jobs, spec: &JobSpec) -> Result<String> {
    let agent = &jobs.agent;
    let mut notes = Vec::new();
    for d in &spec.guest.disks {
        let path = agent.volume_path(&d.pool, &d.volume)?;
        let pool = path.parent().unwrap_or(Path::new("/"));
        let l = vmove_host::lease::switch_to_incoming(pool, &d.volume, &agent.cfg.name)?;
        vmove_host::lease::record_address(pool, &d.volume, &agent.cfg.name, &agent.cfg.listen)?;
        notes.push(format!("{}/{} (epoch {})", d.pool, d.volume, l.epoch));
    }
    Ok(if notes.is_empty() {
        format!("no volumes to detach from {}", spec.source.name)
    } else {
        format!("detached from {}, leased to {}: {}", spec.source.name, agent.cfg.name, notes.join(", "))
    })
}

/// dst: removes the incoming QEMU and definition after a failed or cancelled migration.
pub async fn dst_abort_incoming(jobs: &Jobs, spec: &JobSpec) -> Result<String> {
    let agent = &jobs.agent;
    let name = &spec.guest.name;
    if agent.spec(name).is_none() {
        agent.unplug_taps(&spec.guest).await;
        agent.release_leases(&spec.guest)?;
        return Ok(format!("nothing of {name} on {}", agent.cfg.name));
    }
    let st = agent.show(name)?;
    if st.state == GuestState::Running {
        bail!("guest {name} already runs on {}: the migration completed; recover forward", agent.cfg.name);
    }
    if st.pid.is_some() {
        agent.stop(name, true, Duration::from_secs(15)).await?;
    }
    agent.undefine(name).await?;
    agent.unplug_taps(&spec.guest).await;
    Ok(format!("incoming guest removed from {}", agent.cfg.name))
}

fn progress(info: &MigrationInfo) -> Progress {
    let from_events = info.extra.get("vmove-passes").and_then(|v| v.as_u64()).unwrap_or(0);
    let mut p = progress_from_query(info);
    p.pass = p.pass.max(from_events);
    p
}

fn progress_from_query(info: &MigrationInfo) -> Progress {
    let ram = info.ram.clone().unwrap_or_default();
    let rate = ram.mbps.map(|m| (m * 1e6 / 8.0) as u64).unwrap_or(0);
    let dirty = ram.dirty_pages_rate.unwrap_or(0).saturating_mul(ram.page_size.unwrap_or(4096));
    let remaining = ram.remaining.unwrap_or(0);
    let eta_s = (rate > dirty).then(|| remaining / (rate - dirty).max(1));
    Progress {
        status: info.status.as_ref().map(|s| s.as_str().to_string()).unwrap_or_else(|| "none".into()),
        pass: ram.dirty_sync_count.unwrap_or(0),
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
async fn final_figures(peer: &vmove_api::AgentClient, name: &str, mut info: MigrationInfo) -> MigrationInfo {
    for _ in 0..20 {
        if info.total_time.unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        match peer.call::<MigrationInfo>(&Request::PeerMigrateQuery { name: name.to_string() }).await {
            Ok(i) => info = i,
            Err(_) => break,
        }
    }
    info
}

/// dst MIGRATE_GUEST.
pub async fn dst_migrate(jobs: &Jobs, cell: &JobCell, spec: &JobSpec, summary: &mut Summary) -> Result<String> {
    let agent = jobs.agent.clone();
    let name = spec.guest.name.clone();
    let peer = jobs.peer(spec)?;
    if let Some(st) = agent.spec(&name).and_then(|_| agent.show(&name).ok()) {
        if st.state == GuestState::Running {
            // The switchover happened while nobody watched (e.g. this agent restarted):
            // end the source's paused QEMU and announce.
            let finish = peer.clone().with_timeout(Duration::from_secs(30)).call_raw(&Request::PeerMigrateFinish { name: name.clone() }).await;
            if let Ok((q, _)) = agent.qmp_of(&name) {
                q.announce_self(&AnnounceParameters::default()).await.context("announce-self")?;
            }
            return Ok(match finish {
                Ok(_) => format!("guest already runs on {}; source QEMU ended", agent.cfg.name),
                Err(e) => format!("guest already runs on {}; source not confirmed ({e:#})", agent.cfg.name),
            });
        }
    }
    crate::steps::dst_take_definition(jobs, spec).await?;
    let r = dst_migrate_inner(jobs, cell, spec, summary, &agent, &name, &peer).await;
    if let Err(e) = &r {
        tracing::warn!(guest = %name, "live migration failed: {e:#}; cleaning up the target");
        let _ = peer.call_raw(&Request::PeerMigrateCancel { name: name.clone() }).await;
        if let Err(c) = dst_abort_incoming(jobs, spec).await {
            tracing::error!(guest = %name, "cleanup failed: {c:#}");
        }
    }
    r
}

async fn dst_migrate_inner(
    jobs: &Jobs,
    cell: &JobCell,
    spec: &JobSpec,
    summary: &mut Summary,
    agent: &Arc<Agent>,
    name: &str,
    peer: &vmove_api::AgentClient,
) -> Result<String> {
    let mut params = spec.params.clone();
    params.pause_before_switchover = spec.pause_at_switchover && agent.cfg.allow_fault_injection;
    let p = &params;
    agent.clone().start_incoming(name).await?;
    let (q, _) = agent.qmp_of(name)?;
    setup_qemu(&q, agent, &agent.run_dir_of(name), p, "server", None).await?;
    let ip = agent.cfg.listen.rsplit_once(':').map(|(h, _)| h.to_string()).ok_or_else(|| anyhow!("bad listen address"))?;
    let port = std::net::TcpListener::bind((ip.as_str(), 0))?.local_addr()?.port();
    let uri = format!("tcp:{ip}:{port}");
    q.migrate_incoming(&uri).await.context("migrate-incoming")?;
    let tls_hostname = (!p.insecure_transport).then(|| agent.cfg.name.clone());
    let job = Some(format!("the migration to {}", spec.target));
    peer.call_raw(&Request::PeerMigrateOut { name: name.to_string(), uri: uri.clone(), tls_hostname, params: p.clone(), job })
        .await
        .context("start the migration on the source")?;
    jobs.emit(
        cell,
        vmove_api::EventKind::Info {
            message: format!(
                "memory migration to {uri} started ({}, downtime limit {} ms, bandwidth {})",
                if p.insecure_transport { "clear text" } else { "TLS" },
                p.max_downtime_ms,
                p.bandwidth_bytes_per_s.map_or("unlimited".to_string(), |b| format!("{} MiB/s", b >> 20))
            ),
        },
    );
    let started = Instant::now();
    let timeout = Duration::from_secs(p.timeout_s);
    let mut misses = 0;
    let mut dst_events = q.subscribe();
    let last = loop {
        if cell.cancelled() {
            bail!("cancelled by the operator during the memory phase; the guest keeps running on {}", spec.source.name);
        }
        if started.elapsed() > timeout {
            bail!(
                "timed out after {} s: memory did not converge (cancelled; the guest keeps running on {})",
                p.timeout_s,
                spec.source.name
            );
        }
        if q.is_closed() {
            bail!("the target QEMU exited during the migration");
        }
        match peer.call::<MigrationInfo>(&Request::PeerMigrateQuery { name: name.to_string() }).await {
            Ok(info) => {
                misses = 0;
                let pr = progress(&info);
                match pr.status.as_str() {
                    "completed" => break final_figures(peer, name, info).await,
                    "pre-switchover" => {
                        jobs.emit(cell, vmove_api::EventKind::Info { message: "paused at switchover (test hook)".into() });
                        cell.wait_resumed().await;
                        if cell.cancelled() {
                            bail!("cancelled by the operator at switchover; the guest keeps running on {}", spec.source.name);
                        }
                        peer.call_raw(&Request::PeerMigrateContinue { name: name.to_string() }).await.context("continue at switchover")?;
                    }
                    "failed" | "cancelled" => bail!(
                        "the source reports the migration {}: {}",
                        pr.status,
                        info.error_desc.clone().unwrap_or_else(|| "no reason given".into())
                    ),
                    _ => jobs.emit(cell, vmove_api::EventKind::Progress(pr)),
                }
            }
            Err(e) => {
                misses += 1;
                if let Ok(s) = q.query_status().await {
                    if s.running {
                        tracing::warn!("source unreachable ({e:#}) but the target runs: switchover happened");
                        break MigrationInfo::default();
                    }
                }
                if misses == 1 {
                    jobs.emit(cell, vmove_api::EventKind::Info { message: format!("source not answering: {e:#}") });
                }
            }
        }
        // Wait for the next poll, or for the target QEMU's MIGRATION event (it reports the
        // incoming side's completion at once).
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match dst_events.recv().await {
                    Ok(e) if e.migration_status().is_some() => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
        })
        .await;
    };
    // Switchover: the incoming QEMU resumes the guest by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if q.query_status().await.map(|s| s.running).unwrap_or(false) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the target QEMU did not resume the guest after the migration");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.set_state(name, GuestState::Running);
    q.announce_self(&AnnounceParameters::default()).await.context("announce-self")?;
    let pr = progress(&last);
    summary.migration_ms = last.total_time;
    summary.downtime_ms = last.downtime;
    summary.transferred_bytes = Some(pr.transferred_bytes);
    summary.passes = Some(pr.pass);
    if let Err(e) = peer.clone().with_timeout(Duration::from_secs(30)).call_raw(&Request::PeerMigrateFinish { name: name.to_string() }).await {
        jobs.emit(
            cell,
            vmove_api::EventKind::Info { message: format!("the source did not confirm the end of its QEMU ({e:#}); its agent fences it at restart") },
        );
    }
    // Announce once more now that the source QEMU and its tap are gone: a late frame
    // flushed from the paused source could otherwise have taught the switches the old port.
    q.announce_self(&AnnounceParameters::default()).await.context("announce-self")?;
    Ok(format!(
        "switched over to {} in {} ms, downtime {} ms, {} MiB sent in {} passes; announced",
        agent.cfg.name,
        last.total_time.unwrap_or(0),
        last.downtime.unwrap_or(0),
        pr.transferred_bytes >> 20,
        pr.pass
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_any_numbers_from_the_source() {
        let info: MigrationInfo = serde_json::from_value(json!({
            "status": "active",
            "ram": { "dirty-pages-rate": u64::MAX, "page-size": 4096, "mbps": 1e300, "remaining": u64::MAX }
        }))
        .unwrap();
        let p = progress(&info);
        assert_eq!(p.dirty_rate_bytes_per_s, u64::MAX);
        assert_eq!(p.eta_s, None);
    }
}
