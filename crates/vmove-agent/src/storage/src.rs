//! The source's half of the copy of local volumes: what it reports, the mirror jobs that
//! copy into the target's NBD exports (from the running guest's QEMU, LIVE, or from a
//! storage helper on the stopped guest's volumes, OFFLINE), finishing or abandoning them,
//! and dropping its own copies once the guest has moved. Everything about the mirrors is
//! read back from QEMU (`query-block-jobs`, `query-named-block-nodes`), so an agent that
//! restarted still finds them.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmove_api::{GuestState, LocalVolume, MirrorJob, MirrorReport, VolumeRef};
use vmove_host::qemu::{self, DiskNames};
use vmove_qmp::{BlockJobInfo, BlockdevMirror, MirrorCopyMode, MirrorSyncMode, NbdAddr, NbdClient, Qmp};

use super::NBD_TLS;
use crate::error::{fail, AgentError, Result, ResultExt};
use crate::guests::Agent;

/// How long a forced cancel may take (measured: tens of ms, even with a dead target).
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a ready mirror may take to copy what is still dirty and end.
const FINISH_TIMEOUT: Duration = Duration::from_secs(110);
/// How long an offline helper may take to quit before it is killed.
const HELPER_GRACE: Duration = Duration::from_secs(5);

/// The source's helper for a stopped guest's volumes.
pub fn helper_name(guest: &str) -> String {
    qemu::helper_name(guest, "copy")
}

/// The disk index of one of our jobs or NBD nodes (`vmove-mirror-disk3` → 3).
fn disk_of(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.parse().ok()
}

const JOB_PREFIX: &str = "vmove-mirror-disk";
const NODE_PREFIX: &str = "vmove-nbd-disk";

/// The guest's volumes in this host's local pools, with their sizes (`None`: no file yet).
pub fn local_volumes(agent: &Agent, name: &str) -> Result<Vec<LocalVolume>> {
    let spec = agent.spec(name).ok_or_else(|| agent.no_such(name))?;
    let mut out = Vec::new();
    for (i, d) in agent.local_disks(&spec) {
        let path = agent.volume_path(&d.pool, &d.volume)?;
        let size_bytes = match std::fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(AgentError::host(format!("stat {}: {e}", path.display()))),
        };
        let disk = u32::try_from(i).map_err(|_| AgentError::internal("disk index"))?;
        out.push(LocalVolume { disk, pool: d.pool.clone(), volume: d.volume.clone(), size_bytes });
    }
    Ok(out)
}

/// The QEMU that copies `name`'s volumes: its offline helper if one runs, else the guest's
/// own QEMU; `None` when neither runs.
fn copier(agent: &Agent, name: &str) -> Option<Qmp> {
    if let Some(h) = agent.helper(&helper_name(name)) {
        return Some(h.qmp.clone());
    }
    agent.qmp_of(name).ok().map(|(q, _)| q)
}

/// Our mirror jobs on `q`.
async fn jobs(q: &Qmp) -> Result<Vec<BlockJobInfo>> {
    let all = q.query_block_jobs().await.ctx("query-block-jobs")?;
    Ok(all.into_iter().filter(|j| disk_of(&j.device, JOB_PREFIX).is_some()).collect())
}

fn report(jobs: &[BlockJobInfo]) -> MirrorReport {
    let mut jobs: Vec<MirrorJob> = jobs
        .iter()
        .map(|j| MirrorJob {
            disk: disk_of(&j.device, JOB_PREFIX).unwrap_or(0),
            status: j.status.as_str().to_string(),
            len: j.len,
            offset: j.offset,
            ready: j.ready,
            actively_synced: j.actively_synced.unwrap_or(false),
            error: j.error.clone(),
        })
        .collect();
    jobs.sort_by_key(|j| j.disk);
    MirrorReport { jobs }
}

/// Starts a mirror of each of `disks` into the target's exports at `nbd`. LIVE: from the
/// running guest's QEMU; OFFLINE: from a helper on the stopped guest's volumes. Mirrors
/// left from an earlier attempt are abandoned first. On failure nothing is left running.
///
/// The mirrors start in background mode; LIVE on a QEMU without `block-job-change` (before
/// 8.2, asked of the guest's own QEMU, which may be older than the host's binary) they
/// start write-blocking, since they could not be switched later. Returns whether they did.
pub async fn mirror_start(
    agent: &Agent,
    name: &str,
    disks: &[u32],
    nbd: &str,
    tls_hostname: Option<String>,
    live: bool,
    speed: Option<u64>,
) -> Result<bool> {
    let spec = agent.spec(name).ok_or_else(|| agent.no_such(name))?;
    let local = agent.local_disks(&spec);
    for d in disks {
        if !local.iter().any(|(i, _)| *i == *d as usize) {
            fail!(InvalidRequest, "disk {d} of {name} is not in a local pool of {}: it is never copied", agent.name());
        }
    }
    let addr: SocketAddr = nbd.parse().map_err(|_| AgentError::new(vmove_api::ErrorCode::InvalidRequest, format!("bad NBD address {nbd}")))?;
    mirror_abort(agent, name).await?;
    let q = if live {
        let (q, st) = agent.qmp_of(name)?;
        if st != GuestState::Running {
            fail!(WrongState, "guest {name} is {st:?} on {}, not running: a live copy mirrors a running guest", agent.name());
        }
        q
    } else {
        agent.stopped_spec(name)?;
        let mut files: Vec<(usize, PathBuf)> = Vec::new();
        for (i, d) in &local {
            if disks.iter().any(|x| *x as usize == *i) {
                files.push((*i, agent.volume_path(&d.pool, &d.volume)?));
            }
        }
        agent.start_helper(&helper_name(name), &files).await?.qmp.clone()
    };
    let write_blocking = live && lacks_block_job_change(&q).await;
    let copy_mode = if write_blocking { MirrorCopyMode::WriteBlocking } else { MirrorCopyMode::Background };
    let run = agent.run_dir(&if live { name.to_string() } else { helper_name(name) });
    let started = async {
        let _ = q.object_del(NBD_TLS).await;
        if tls_hostname.is_some() {
            let dir = crate::migrate_src::tls_dir(agent, &run, "client")?;
            q.object_add_tls_creds_x509(NBD_TLS, &dir.display().to_string(), "client", true).await.ctx("tls-creds-x509")?;
        }
        for d in disks {
            let n = DiskNames::of(*d as usize);
            let client = NbdClient {
                node_name: n.nbd_client.clone(),
                server: NbdAddr::Inet { host: addr.ip().to_string(), port: addr.port() },
                export: n.export.clone(),
                tls_creds: tls_hostname.as_ref().map(|_| NBD_TLS.to_string()),
                tls_hostname: tls_hostname.clone(),
                reconnect_delay_s: None,
            };
            q.blockdev_add_nbd(&client).await.with_ctx(|| format!("connect disk{d} to the target's NBD server {nbd}"))?;
            let mirror = BlockdevMirror {
                job_id: Some(n.job.clone()),
                device: n.node.clone(),
                target: n.nbd_client.clone(),
                sync: MirrorSyncMode::Full,
                copy_mode: Some(copy_mode.clone()),
                speed,
                auto_dismiss: Some(false),
                ..Default::default()
            };
            q.blockdev_mirror(&mirror).await.with_ctx(|| format!("blockdev-mirror of disk{d}"))?;
        }
        Ok::<_, AgentError>(())
    }
    .await;
    if let Err(e) = started {
        let _ = mirror_abort(agent, name).await;
        return Err(e);
    }
    tracing::info!(guest = %name, ?disks, nbd, live, write_blocking, "mirrors started");
    Ok(write_blocking)
}

/// Whether `q` says it has no `block-job-change`. A QEMU that does not answer
/// `query-commands` as expected is taken to have it (a switch then fails with the reason).
async fn lacks_block_job_change(q: &Qmp) -> bool {
    match q.execute("query-commands", None).await {
        Ok(v) => v.as_array().is_some_and(|cmds| !cmds.iter().any(|c| c["name"] == "block-job-change")),
        Err(_) => false,
    }
}

/// The guest's mirror jobs.
pub async fn mirror_query(agent: &Agent, name: &str) -> Result<MirrorReport> {
    match copier(agent, name) {
        Some(q) => Ok(report(&jobs(&q).await?)),
        None => Ok(MirrorReport::default()),
    }
}

/// Switches every running mirror to write-blocking: from now on a guest write completes
/// only once it reached both sides, so the copy converges whatever the write rate.
pub async fn mirror_write_blocking(agent: &Agent, name: &str) -> Result<()> {
    let Some(q) = copier(agent, name) else { fail!(WrongState, "no copy of {name} runs on {}", agent.name()) };
    for j in jobs(&q).await? {
        if !j.status.is_finished() {
            match q.block_job_change_copy_mode(&j.device, &MirrorCopyMode::WriteBlocking).await {
                Err(e) if e.is_qemu_class("CommandNotFound") => fail!(
                    Qemu,
                    "the guest writes faster than the copy moves, and the QEMU of {name} on {} cannot switch its mirrors to write-blocking (block-job-change needs QEMU 8.2 or later)",
                    agent.name()
                ),
                r => r.with_ctx(|| format!("block-job-change {}", j.device))?,
            };
        }
    }
    Ok(())
}

/// Waits until none of our jobs on `q` runs any more; returns them as they ended.
async fn until_ended(q: &Qmp, timeout: Duration, what: &str) -> Result<Vec<BlockJobInfo>> {
    let deadline = Instant::now() + timeout;
    let mut events = q.subscribe();
    loop {
        let now = jobs(q).await?;
        if now.iter().all(|j| j.status.is_finished()) {
            return Ok(now);
        }
        if Instant::now() > deadline {
            fail!(Timeout, "{what}: the mirror jobs did not end within {} s", timeout.as_secs());
        }
        // Woken by the jobs' events, or after a short while at most.
        let _ = tokio::time::timeout(Duration::from_millis(50), events.recv()).await;
    }
}

/// Dismisses our concluded jobs, deletes our NBD client nodes and the credentials.
async fn clean(q: &Qmp) -> Result<()> {
    for j in jobs(q).await? {
        let _ = q.job_dismiss(&j.device).await;
    }
    for n in q.query_named_block_nodes().await.ctx("query-named-block-nodes")? {
        if disk_of(&n.node_name, NODE_PREFIX).is_some() {
            q.blockdev_del(&n.node_name).await.with_ctx(|| format!("blockdev-del {}", n.node_name))?;
        }
    }
    let _ = q.object_del(NBD_TLS).await;
    Ok(())
}

/// Finishes the copy: every mirror must be ready; each is cancelled without force, which
/// copies what is still dirty and ends it with no pivot (the guest stays on its own disk;
/// never `block-job-complete`). Then the NBD nodes go, and an offline helper quits.
/// Returns the jobs as they ended.
pub async fn mirror_finish(agent: &Agent, name: &str) -> Result<MirrorReport> {
    let Some(q) = copier(agent, name) else { fail!(WrongState, "no copy of {name} runs on {}", agent.name()) };
    let before = report(&jobs(&q).await?);
    if before.is_empty() {
        fail!(WrongState, "no mirror of {name} runs on {}", agent.name());
    }
    if let Some(j) = before.failed() {
        fail!(Qemu, "the copy of disk{} of {name} failed: {}", j.disk, j.error.clone().unwrap_or_else(|| j.status.clone()));
    }
    if !before.all_ready() {
        fail!(WrongState, "not every mirror of {name} is in sync yet");
    }
    for j in &before.jobs {
        q.block_job_cancel(&format!("{JOB_PREFIX}{}", j.disk), false).await.with_ctx(|| format!("finish the mirror of disk{}", j.disk))?;
    }
    let ended = report(&until_ended(&q, FINISH_TIMEOUT, "finish the copy").await?);
    if let Some(j) = ended.jobs.iter().find(|j| j.error.is_some()) {
        fail!(Qemu, "the final sync of disk{} of {name} failed: {}", j.disk, j.error.clone().unwrap_or_default());
    }
    clean(&q).await?;
    agent.stop_helper(&helper_name(name), HELPER_GRACE).await?;
    tracing::info!(guest = %name, bytes = ended.len(), "copy finished");
    Ok(ended)
}

/// Abandons the copy: every mirror is cancelled with force (at once, without a final
/// sync), the NBD nodes go, an offline helper is killed. The guest's own volumes are as
/// they were. Nothing to do when no copy runs.
pub async fn mirror_abort(agent: &Agent, name: &str) -> Result<()> {
    if let Some(q) = copier(agent, name) {
        for j in jobs(&q).await? {
            if !j.status.is_finished() {
                let _ = q.block_job_cancel(&j.device, true).await;
            }
        }
        until_ended(&q, ABORT_TIMEOUT, "abandon the copy").await?;
        clean(&q).await?;
    }
    agent.stop_helper(&helper_name(name), Duration::ZERO).await
}

/// The guest moved: releases this host's leases of `volumes` (local pools only) and
/// deletes them unless `keep`. Refused for a volume that a guest defined here uses.
pub async fn drop_volumes(agent: &Agent, name: &str, volumes: &[VolumeRef], keep: bool) -> Result<Vec<String>> {
    for v in volumes {
        if !agent.pool_is_local(&v.pool) {
            fail!(InvalidRequest, "pool {} is not a local pool of {}: its volumes are never dropped", v.pool, agent.name());
        }
        if let Some(g) = agent.list().into_iter().find(|g| g.spec.disks.iter().any(|d| d.pool == v.pool && d.volume == v.volume)) {
            fail!(WrongState, "volume {}/{} belongs to guest {}, defined on {}", v.pool, v.volume, g.spec.name, agent.name());
        }
    }
    let mut out = Vec::new();
    for v in volumes {
        agent.pool_leases(&v.pool)?.release(&v.volume, agent.name()).await?;
        if !keep {
            let path = agent.volume_path(&v.pool, &v.volume)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::host(format!("delete {}: {e}", path.display()))),
            }
        }
        out.push(format!("{}/{}", v.pool, v.volume));
    }
    tracing::info!(guest = %name, keep, volumes = ?out, "dropped the copies of a guest that moved");
    Ok(out)
}
