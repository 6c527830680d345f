//! Live migration, the source's half (`src`): what the source agent does when the target's
//! job calls it. The protocol between the two halves:
//!
//! ```text
//!  target agent (dst, runs the job)               source agent (src)
//!  define guest, QEMU -incoming defer
//!  caps + params + tls-creds(server)
//!  migrate-incoming tcp:DST:0 → bound port read back from query-migrate
//!  PeerMigrateOut ───────────────────────────▶   caps + params + tls-creds(client); migrate
//!  loop: PeerMigrateQuery ───────────────────▶   query-migrate → Progress
//!        (cancel / timeout → PeerMigrateCancel, kill the incoming QEMU: guest stays on src)
//!  completed: dst QEMU runs; announce-self
//!  PeerMigrateFinish ────────────────────────▶   quit the paused QEMU, remove taps, drop definition
//! ```
//! All calls travel on one kept-alive mTLS connection between the two agents.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vmove_api::{GuestState, MigrationParams};
use vmove_qmp::{MigrateSetParameters, MigrationCapability, MigrationInfo, MigrationStatus, Qmp};

use crate::error::{fail, Result, ResultExt};
use crate::guests::Agent;

/// "Unlimited" bandwidth, bytes/s (QEMU refuses values above SIZE_MAX / 1000).
const UNLIMITED_BYTES_PER_S: u64 = 1 << 40;
const TLS_ID: &str = "vmove-tls";

/// Capabilities for both sides, from the parameter set (only those this QEMU knows).
fn capabilities(agent: &Agent, p: &MigrationParams) -> Vec<(MigrationCapability, bool)> {
    let mut v = vec![
        (MigrationCapability::Events, true),
        (MigrationCapability::Multifd, p.multifd_channels > 0),
        (MigrationCapability::PostcopyRam, p.allow_postcopy),
        (MigrationCapability::PauseBeforeSwitchover, p.pause_before_switchover),
    ];
    v.retain(|(c, on)| *on || agent.qemu.has_capability(c.as_str()));
    v
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
pub(crate) fn tls_dir(agent: &Agent, run: &Path, role: &str) -> Result<PathBuf> {
    let dir = run.join(format!("tls-{role}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(&agent.cfg.ca, dir.join("ca-cert.pem")).ctx("copy the CA certificate")?;
    std::fs::copy(&agent.cfg.cert, dir.join(format!("{role}-cert.pem"))).ctx("copy the host certificate")?;
    std::fs::copy(&agent.cfg.key, dir.join(format!("{role}-key.pem"))).ctx("copy the host key")?;
    Ok(dir)
}

/// Sets TLS credentials, capabilities and parameters on one side (`role`: `server` on the
/// target, `client` on the source).
pub(crate) async fn setup_qemu(q: &Qmp, agent: &Agent, guest: &str, p: &MigrationParams, role: &str, tls_hostname: Option<String>) -> Result<()> {
    if !p.insecure_transport {
        let dir = tls_dir(agent, &agent.run_dir(guest), role)?;
        let _ = q.execute("object-del", Some(json!({ "id": TLS_ID }))).await;
        q.execute("object-add", Some(json!({ "qom-type": "tls-creds-x509", "id": TLS_ID, "dir": dir, "endpoint": role, "verify-peer": true })))
            .await
            .ctx("tls-creds-x509")?;
    }
    q.migrate_set_capabilities(&capabilities(agent, p)).await.ctx("migrate-set-capabilities")?;
    q.migrate_set_parameters(&parameters(p, tls_hostname)).await.ctx("migrate-set-parameters")?;
    Ok(())
}

/// src: starts the outgoing migration.
pub async fn migrate_out(agent: &Arc<Agent>, name: &str, uri: &str, tls_hostname: Option<String>, p: &MigrationParams) -> Result<()> {
    let (q, st) = agent.qmp_of(name)?;
    if st != GuestState::Running {
        fail!(WrongState, "guest {name} is {st:?} on {}, not running", agent.cfg.name);
    }
    setup_qemu(&q, agent, name, p, "client", tls_hostname).await?;
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
    q.migrate(uri).await.ctx("migrate")?;
    agent.set_state(name, GuestState::Running);
    Ok(())
}

/// src: the outgoing migration's state (with the passes its events counted).
pub async fn migrate_query(agent: &Agent, name: &str) -> Result<MigrationInfo> {
    let (q, _) = agent.qmp_of(name)?;
    let mut info = q.query_migrate().await?;
    let seen = agent.migration_events(name);
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    info.extra.insert("vmove-passes".into(), s.passes.into());
    info.extra.insert("vmove-event-status".into(), s.status.clone().into());
    Ok(info)
}

/// src: lets a migration held at the switchover go on.
pub async fn migrate_continue(agent: &Agent, name: &str) -> Result<()> {
    let (q, _) = agent.qmp_of(name)?;
    q.migrate_continue(MigrationStatus::PreSwitchover).await.ctx("migrate-continue")?;
    Ok(())
}

/// src: cancels the outgoing migration and waits until the guest runs here again.
pub async fn migrate_cancel(agent: &Agent, name: &str) -> Result<MigrationInfo> {
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
            fail!(WrongState, "too late to cancel: the migration of {name} has completed");
        }
        if Instant::now() > deadline {
            fail!(Timeout, "migration of {name} did not cancel within 30 s (status {s})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// src: after the switchover, ends the paused source QEMU and forgets the guest.
pub async fn migrate_finish(agent: &Arc<Agent>, name: &str) -> Result<()> {
    if agent.spec(name).is_none() {
        return Ok(());
    }
    if let Ok((q, _)) = agent.qmp_of(name) {
        let info = q.query_migrate().await?;
        if info.status.as_ref() != Some(&MigrationStatus::Completed) {
            fail!(WrongState, "the migration of {name} has not completed on {}; refusing to end the source", agent.cfg.name);
        }
    }
    agent.stop(name, true, Duration::from_secs(15)).await?;
    agent.forget(name).await
}
