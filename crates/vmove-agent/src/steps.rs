//! The steps of a migration, run on the target host (`dst`), calling the source (`src`)
//! through peer requests. Each step is idempotent; each has an undo used by recovery.
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use vmove_api::{AgentClient, GuestState, GuestStatus, JobSpec, Request, Summary};
use vmove_host::lease::Take;
use vmove_plan::{Mode, Step};

use crate::jobs::{JobCell, Jobs, MigrationState};

/// Whether the guest ran on the source when the migration began.
pub async fn guest_was_running(jobs: &Jobs, spec: &JobSpec) -> Result<bool> {
    let name = &spec.guest.name;
    let claim = Some(format!("the migration to {}", spec.target));
    match jobs.peer(spec)?.call::<GuestStatus>(&Request::PeerGuest { name: name.clone(), claim }).await.map_err(anyhow::Error::from) {
        Ok(st) => {
            let running = matches!(st.state, GuestState::Running | GuestState::Paused | GuestState::Starting);
            if spec.mode == Mode::Live && !running {
                bail!("guest {name} is not running on {} ({:?}): live migration needs a running guest", spec.source.name, st.state);
            }
            Ok(running)
        }
        Err(e) if e.to_string().contains("already being migrated away") => Err(e),
        Err(e) if spec.mode == Mode::OfflineForce => {
            tracing::warn!("source {} unreachable ({e:#}); guest assumed {:?}", spec.source.name, spec.guest.desired);
            Ok(spec.guest.desired == vmove_model::DesiredState::Running)
        }
        Err(e) => Err(e.context(format!("source {} must answer for {} migration", spec.source.name, spec.mode.as_str()))),
    }
}

/// Recovery goes forward when the definition already moved, or when the source is not to
/// be relied on (OFFLINEFORCE); otherwise it rolls back to the source.
pub fn recover_forward(m: &MigrationState) -> bool {
    m.completed.contains(&Step::MigrateGuest) || m.mode == Mode::OfflineForce
}

/// A peer call that OFFLINEFORCE may skip when the source does not answer.
async fn src_call(jobs: &Jobs, spec: &JobSpec, req: Request, timeout: Duration) -> Result<Option<serde_json::Value>> {
    let c: AgentClient = jobs.peer(spec)?.with_timeout(timeout);
    match c.call_raw(&req).await.map_err(anyhow::Error::from) {
        Ok(v) => Ok(Some(v)),
        Err(e) if spec.mode == Mode::OfflineForce && is_unreachable(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_unreachable(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("cannot connect") || s.contains("no answer within") || s.contains("TLS handshake") || s.contains("connection closed")
}

const SKIPPED: &str = "source unreachable: skipped (OFFLINEFORCE goes on without it)";

/// Runs one step; returns a one-line note of what it did.
pub async fn run_step(
    jobs: &Jobs,
    cell: &JobCell,
    step: Step,
    spec: &JobSpec,
    mig: &MigrationState,
    summary: &mut Summary,
) -> Result<String> {
    let agent = &jobs.agent;
    let name = spec.guest.name.clone();
    let force = spec.mode == Mode::OfflineForce;
    let was_running = mig.was_running.unwrap_or(true);
    match step {
        Step::StopGuest => {
            if !was_running {
                return Ok("guest was not running".into());
            }
            let timeout = Duration::from_secs(spec.params.stop_timeout_s + 30);
            let req =
                Request::PeerStopGuest { name, force, timeout_s: spec.params.stop_timeout_s, job: Some(format!("the migration to {}", spec.target)) };
            Ok(match src_call(jobs, spec, req, timeout).await? {
                Some(_) if force => format!("guest killed on {}", spec.source.name),
                Some(_) => format!("guest shut down on {} (ACPI)", spec.source.name),
                None => SKIPPED.into(),
            })
        }
        Step::CreateBridges => {
            let mut notes = Vec::new();
            for n in &spec.guest.nics {
                let net = agent
                    .cfg
                    .networks
                    .iter()
                    .find(|x| x.name == n.network)
                    .ok_or_else(|| anyhow!("network {} is not served by {}", n.network, agent.cfg.name))?;
                let created = agent.ensure_bridge(&net.bridge).await?;
                notes.push(format!("{} {}", net.bridge, if created { "created" } else { "present" }));
            }
            if spec.mode == Mode::Live {
                let taps = agent.plug_taps(&spec.guest).await?;
                notes.push(format!("taps {}", taps.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join(", ")));
            }
            Ok(if notes.is_empty() { "no networks".into() } else { notes.join("; ") })
        }
        Step::DetachInterfaces => {
            Ok(match src_call(jobs, spec, Request::PeerDetachInterfaces { name }, Duration::from_secs(20)).await? {
                Some(n) => format!("{n} interface(s) detached on {}", spec.source.name),
                None => SKIPPED.into(),
            })
        }
        Step::DetachVolumes => {
            if spec.mode == Mode::Live {
                return crate::live::dst_detach_volumes(jobs, spec).await;
            }
            Ok(match src_call(jobs, spec, Request::PeerDetachVolumes { name }, Duration::from_secs(20)).await? {
                Some(v) => format!("released on {}: {}", spec.source.name, list_note(&v)),
                None => SKIPPED.into(),
            })
        }
        Step::AttachVolumes => {
            if spec.mode == Mode::Live {
                return crate::live::dst_attach_volumes(jobs, spec);
            }
            let how = if force { Take::Takeover } else { Take::Exclusive };
            let notes = agent.attach_volumes(&spec.guest, how)?;
            Ok(if notes.is_empty() { "no volumes".into() } else { format!("leased to {}: {}", agent.cfg.name, notes.join(", ")) })
        }
        Step::MigrateGuest => {
            if spec.mode == Mode::Live {
                return crate::live::dst_migrate(jobs, cell, spec, summary).await;
            }
            dst_take_definition(jobs, spec).await?;
            Ok(match src_call(jobs, spec, Request::PeerUndefine { name: name.clone() }, Duration::from_secs(20)).await? {
                Some(_) => format!("{name} defined on {}, undefined on {}", spec.target, spec.source.name),
                None => format!("{name} defined on {}; {} unreachable (it drops the guest when it returns)", spec.target, spec.source.name),
            })
        }
        Step::AttachInterfaces => {
            let taps = agent.plug_taps(&spec.guest).await?;
            Ok(format!("{} interface(s) on {}: {}", taps.len(), agent.cfg.name, taps.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join(", ")))
        }
        Step::StartupGuest => {
            if !was_running {
                return Ok("guest was stopped before the migration: left stopped".into());
            }
            let st = agent.show(&name)?;
            if st.pid.is_none() {
                agent.clone().start(&name).await?;
            }
            Ok(format!("guest running on {}", agent.cfg.name))
        }
        Step::PrecheckLiveMigration => bail!("PRECHECK_LIVEMIGRATION is not a job step"),
    }
}

/// Defines the guest on this host for a migration (idempotent).
pub async fn dst_take_definition(jobs: &Jobs, spec: &JobSpec) -> Result<()> {
    let agent = &jobs.agent;
    let mut g = spec.guest.clone();
    g.host = agent.cfg.name.clone();
    if let Some(existing) = agent.spec(&g.name) {
        if existing.macs().eq(g.macs()) && existing.disks == g.disks {
            return Ok(());
        }
        bail!("a different guest named {} is already defined on {}", g.name, agent.cfg.name);
    }
    if g.console_port.is_some_and(|p| agent.console_ports().contains(&p)) {
        g.console_port = None;
    }
    agent.define(g).await.map(|_| ()).context("define the guest on the target")
}

fn list_note(v: &serde_json::Value) -> String {
    match v.as_array() {
        Some(a) if a.is_empty() => "no leases held".into(),
        Some(a) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "),
        None => v.to_string(),
    }
}

/// Undoes a completed step (rollback to the source).
pub async fn undo_step(jobs: &Jobs, step: Step, spec: &JobSpec, mig: &MigrationState) -> Result<String> {
    let agent = &jobs.agent;
    let name = spec.guest.name.clone();
    let peer = jobs.peer(spec)?;
    match step {
        Step::MigrateGuest => {
            if spec.mode == Mode::Live {
                let _ = peer.call_raw(&Request::PeerMigrateCancel { name: name.clone() }).await;
                return crate::live::dst_abort_incoming(jobs, spec).await;
            }
            if let Some(g) = agent.spec(&name) {
                if agent.show(&name)?.pid.is_some() {
                    bail!("guest {name} runs on {}; recovery cannot roll it back", agent.cfg.name);
                }
                let _ = g;
                agent.undefine(&name).await?;
                Ok(format!("definition removed from {}", agent.cfg.name))
            } else {
                Ok("not defined on the target".into())
            }
        }
        Step::AttachVolumes => {
            let n = agent.release_leases(&spec.guest)?;
            Ok(format!("{n} lease(s) released on {}", agent.cfg.name))
        }
        Step::DetachVolumes => {
            let v = peer.call_raw(&Request::PeerAttachVolumes { name }).await?;
            Ok(format!("leases back on {}: {}", spec.source.name, list_note(&v)))
        }
        Step::DetachInterfaces => Ok(format!("the taps come back on {} when the guest starts", spec.source.name)),
        Step::CreateBridges => {
            if spec.mode == Mode::Live {
                agent.unplug_taps(&spec.guest).await;
            }
            Ok("bridges kept".into())
        }
        Step::StopGuest => {
            if mig.was_running == Some(false) {
                return Ok("guest was not running: left stopped".into());
            }
            let st: GuestStatus = peer.with_timeout(Duration::from_secs(60)).call(&Request::PeerStartGuest { name }).await?;
            Ok(format!("guest running again on {} (pid {})", spec.source.name, st.pid.unwrap_or(0)))
        }
        Step::AttachInterfaces | Step::StartupGuest | Step::PrecheckLiveMigration => {
            Ok("nothing to undo".into())
        }
    }
}
