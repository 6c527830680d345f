//! Requests to actions: every request the server has decoded, range-checked and allowed
//! for the caller's role becomes one call on the agent, its jobs or a live-migration half.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use vmove_api::server::{EventSink, Service};
use vmove_api::{GuestLog, Health, MaintenanceState, Reply, Request, Role, WireError};

use crate::claims::claim;
use crate::error::{fail, Result};
use crate::guests::Agent;
use crate::jobs::Jobs;
use crate::leases::Take;
use crate::storage::src;

/// The agent's API.
pub struct Api {
    /// The agent.
    pub agent: Arc<Agent>,
    /// Its jobs.
    pub jobs: Arc<Jobs>,
}

#[async_trait]
impl Service for Api {
    async fn call(&self, req: Request, role: Role, events: &mut EventSink<'_>) -> Reply {
        if let Request::JobWatch { id, from_seq } = &req {
            return match self.jobs.get(id) {
                Err(e) => reply_err(e),
                Ok(cell) => match crate::jobs::watch::watch_events(&cell, *from_seq, events).await {
                    Ok(rec) => Reply::ok(rec),
                    Err(e) => Reply::err(vmove_api::ErrorCode::Internal, format!("stream failed: {e}")),
                },
            };
        }
        let op = req.op();
        match self.handle(req, role).await {
            Ok(v) => Reply { ok: true, result: Some(v), error: None },
            Err(e) => {
                tracing::info!(op, code = %e.code, "refused: {}", e.message);
                reply_err(e)
            }
        }
    }

    async fn console(&self, name: String, replay: vmove_api::ConsoleReplay, conn: &mut dyn vmove_api::server::Duplex) -> Option<Reply> {
        crate::console::serve(&self.agent, &name, replay, conn).await.err().map(reply_err)
    }
}

fn reply_err(e: crate::error::AgentError) -> Reply {
    let w: WireError = e.into();
    Reply::err(w.code, w.message)
}

fn ok(v: impl serde::Serialize) -> Result<Value> {
    Ok(serde_json::to_value(v)?)
}

impl Api {
    /// `host_drain` (`on`) and `host_undrain`.
    async fn maintenance(&self, on: bool) -> Result<Value> {
        let (maintenance, changed) = self.jobs.set_maintenance(on).await?;
        ok(MaintenanceState { host: self.agent.cfg.name.clone(), maintenance, changed })
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request, role: Role) -> Result<Value> {
        let (agent, jobs) = (&self.agent, &self.jobs);
        match req {
            Request::Health => ok(Health {
                host: agent.cfg.name.clone(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                caller: role,
                connections_accepted: agent.stats.connections.load(std::sync::atomic::Ordering::Relaxed),
                requests_served: agent.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            }),
            Request::HostInfo => {
                let mut info = crate::inventory::host_info(agent).await?;
                info.live_steps_ms = self.jobs.live_steps_ms();
                info.memory_model_pct = self.jobs.memory_model_pct();
                ok(info)
            }
            Request::HostDrain => self.maintenance(true).await,
            Request::HostUndrain => self.maintenance(false).await,
            // Maintenance: no new guests, and no guest starts (the host is being emptied).
            // Migrations' own defines and a rollback's start on the source are not refused.
            Request::GuestDefine { spec } => {
                agent.refuse_in_maintenance(&format!("a new guest ({})", spec.name))?;
                ok(agent.define(spec).await?)
            }
            Request::GuestStart { name } => {
                agent.refuse_in_maintenance(&format!("starting guest {name}"))?;
                ok(agent.start(&name).await?)
            }
            // An operator's stop is not a migration: it claims nothing.
            Request::GuestStop { name, force, timeout_s } => ok(agent.stop(&name, force, Duration::from_secs(timeout_s)).await?),
            Request::GuestUndefine { name } => {
                agent.undefine(&name).await?;
                agent.unclaim(&name).await?;
                ok(json!({ "undefined": name }))
            }
            Request::GuestList => ok(agent.list()),
            Request::GuestShow { name } => ok(agent.show(&name)?),
            Request::GuestLog { name, max_bytes } => ok(GuestLog { text: agent.log(&name, max_bytes)? }),
            Request::GuestDirtyRate { name, calc_s, calc_ms } => {
                let period = calc_ms.map_or(Duration::from_secs(calc_s), Duration::from_millis);
                ok(agent.dirty_rate(&name, period).await?)
            }
            Request::JobSubmit { spec } => ok(jobs.submit(spec).await?),
            Request::JobShow { id } => ok(jobs.get(&id)?.snapshot()),
            Request::JobList => ok(jobs.list()),
            Request::JobWatch { .. } => fail!(InvalidRequest, "job_watch is a streaming call"),
            Request::GuestConsole { .. } => fail!(InvalidRequest, "guest_console is a streaming call"),
            Request::JobCancel { id } => ok(jobs.cancel(&id).await?),
            Request::JobRecover { id } => ok(jobs.recover(&id).await?),
            Request::JobResume { id } => {
                if !crate::hooks::enabled(agent) {
                    fail!(Disabled, "test hooks (pause, fault injection) are disabled on {}", agent.cfg.name);
                }
                ok(jobs.resume(&id)?)
            }
            Request::PeerGuest { name, claim: by } => {
                let st = agent.show(&name)?;
                if let Some(by) = by {
                    claim(jobs, &name, &by).await?;
                }
                ok(st)
            }
            Request::LinkMeasure { source, max_age_s } => {
                let peer = jobs.peer_for(&source)?;
                ok(crate::links::measure(agent, peer.as_ref(), &source, Duration::from_secs(max_age_s)).await?)
            }
            Request::PeerLinkSend { addr, duration_ms } => {
                ok(crate::links::send(agent, None, &addr, Duration::from_millis(duration_ms)).await?)
            }
            Request::PeerRelease { name, claim: by } => {
                if agent.claimed_by(&name).await?.as_deref() == Some(by.as_str()) {
                    agent.unclaim(&name).await?;
                }
                ok(json!({ "released": name }))
            }
            Request::PeerStopGuest { name, force, timeout_s, job } => {
                claim(jobs, &name, &job.unwrap_or_else(|| "a migration job".into())).await?;
                ok(agent.stop(&name, force, Duration::from_secs(timeout_s)).await?)
            }
            Request::PeerDetachInterfaces { name } => ok(agent.detach_interfaces(&name).await?),
            Request::PeerDetachVolumes { name } => ok(agent.detach_volumes(&name).await?),
            Request::PeerAttachVolumes { name } => {
                let spec = agent.stopped_spec(&name)?;
                ok(agent.attach_volumes(&spec, Take::Exclusive).await?)
            }
            Request::PeerStartGuest { name } => {
                agent.unclaim(&name).await?;
                if agent.show(&name)?.pid.is_some() {
                    ok(agent.show(&name)?)
                } else {
                    ok(agent.start(&name).await?)
                }
            }
            Request::PeerUndefine { name } => {
                if agent.spec(&name).is_some() {
                    agent.undefine(&name).await?;
                }
                agent.unclaim(&name).await?;
                ok(json!({ "undefined": name }))
            }
            Request::PeerMigrateOut { name, uri, tls_hostname, params, job, setup } => {
                let by = job.unwrap_or_else(|| uri.clone());
                claim(jobs, &name, &by).await?;
                let side = setup.as_ref().map_or_else(
                    || crate::migrate_src::SideSetup::from_params(&params),
                    crate::migrate_src::SideSetup::from_source_setup,
                );
                if let Err(e) = crate::migrate_src::migrate_out(agent, &name, &uri, tls_hostname, &params, &side).await {
                    agent.unclaim(&name).await?;
                    return Err(e);
                }
                ok(json!({ "started": uri }))
            }
            Request::PeerMigrateQuery { name } => ok(crate::migrate_src::migrate_query(agent, &name).await?),
            Request::PeerMigrateTune { name, downtime_limit_ms, throttle } => {
                crate::migrate_src::migrate_tune(agent, &name, downtime_limit_ms, throttle).await?;
                ok(json!({ "tuned": name }))
            }
            Request::PeerMigrateStartPostcopy { name } => {
                crate::migrate_src::migrate_start_postcopy(agent, &name).await?;
                ok(json!({ "postcopy": name }))
            }
            Request::PeerMigrateResume { name, uri } => {
                crate::migrate_src::migrate_resume(agent, &name, &uri).await?;
                ok(json!({ "resumed": uri }))
            }
            Request::PeerMigrateContinue { name } => {
                crate::migrate_src::migrate_continue(agent, &name).await?;
                ok(json!({ "continued": name }))
            }
            Request::PeerMigrateCancel { name } => {
                let r = crate::migrate_src::migrate_cancel(agent, &name).await;
                if r.is_ok() {
                    agent.unclaim(&name).await?;
                }
                ok(r?)
            }
            Request::PeerTakeFrames { name } => ok(crate::migrate_src::take_frames(agent, &name).await?),
            Request::PeerMigrateFinish { name } => {
                let side = crate::migrate_src::migrate_finish(agent, &name).await?;
                agent.unclaim(&name).await?;
                ok(side)
            }
            Request::PeerLocalVolumes { name } => ok(src::local_volumes(agent, &name)?),
            Request::PeerMirrorStart { name, disks, nbd, tls_hostname, live, bandwidth_bytes_per_s, job } => {
                claim(jobs, &name, &job.unwrap_or_else(|| format!("a copy to {nbd}"))).await?;
                let write_blocking = src::mirror_start(agent, &name, &disks, &nbd, tls_hostname, live, bandwidth_bytes_per_s).await?;
                ok(vmove_api::MirrorStarted { mirroring: name, write_blocking })
            }
            Request::PeerMirrorQuery { name } => ok(src::mirror_query(agent, &name).await?),
            Request::PeerMirrorWriteBlocking { name } => {
                src::mirror_write_blocking(agent, &name).await?;
                ok(json!({ "write_blocking": name }))
            }
            Request::PeerMirrorFinish { name } => ok(src::mirror_finish(agent, &name).await?),
            Request::PeerMirrorAbort { name } => {
                src::mirror_abort(agent, &name).await?;
                ok(json!({ "abandoned": name }))
            }
            Request::PeerDropVolumes { name, volumes, keep } => ok(src::drop_volumes(agent, &name, &volumes, keep).await?),
        }
    }
}
