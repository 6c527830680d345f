//! The target's half of the copy of local volumes: the new files, the storage helper that
//! serves them over NBD, and what LIVE MIGRATE_GUEST asks of it (every mirror in sync
//! before the memory phase, the copy finished at the pre-switchover pause).
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use vmove_api::{LocalVolume, MirrorReport, Request, VolumeRef};
use vmove_host::qemu::{self, DiskNames};
use vmove_qmp::{NbdAddr, NbdExport, NbdServerStart};

use super::{copies_key, mib, CopyRec, NBD_AUTHZ, NBD_LISTENER, NBD_TLS};
use crate::error::{fail, AgentError, Result, ResultExt};
use crate::guests::Agent;
use crate::peer::call;
use crate::steps::StepCx;

/// How long the source may take to finish its mirrors (the final sync of a ready mirror
/// copies only what the guest wrote since its last pass).
pub(crate) const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the helper may take to quit before it is killed.
const HELPER_GRACE: Duration = Duration::from_secs(5);

/// The target's helper for `guest`'s copies.
pub fn helper_name(guest: &str) -> String {
    qemu::helper_name(guest, "nbd")
}

fn vref(v: &LocalVolume) -> VolumeRef {
    VolumeRef { pool: v.pool.clone(), volume: v.volume.clone() }
}

/// Refuses when a local pool of this host lacks room for the copies (numbers in the
/// message), per pool.
pub fn check_room(agent: &Agent, vols: &[LocalVolume]) -> Result<()> {
    let mut pools: Vec<(&str, u64)> = Vec::new();
    for v in vols {
        let size = v.size_bytes.unwrap_or(0);
        match pools.iter_mut().find(|(p, _)| *p == v.pool) {
            Some((_, n)) => *n = n.saturating_add(size),
            None => pools.push((&v.pool, size)),
        }
    }
    for (pool, need) in pools {
        let dir = agent.volume_path(pool, "")?;
        let st = nix::sys::statvfs::statvfs(&dir).map_err(|e| AgentError::host(format!("statvfs {}: {e}", dir.display())))?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        if need > free {
            fail!(
                NoCapacity,
                "pool {pool} on {} has {} free, the copies need {}",
                agent.name(),
                mib(free),
                mib(need)
            );
        }
    }
    Ok(())
}

/// Records the copies, then creates each file empty with the source's size (sparse). A
/// file that exists and is not one of this migration's copies is refused, never
/// overwritten.
pub async fn create_copies(agent: &Agent, guest: &str, source: &str, vols: &[LocalVolume]) -> Result<()> {
    let key = copies_key(guest);
    let mut rec = agent.state.get::<CopyRec>(&key).await?.unwrap_or(CopyRec { source: source.to_string(), volumes: vec![] });
    for v in vols {
        let path = agent.volume_path(&v.pool, &v.volume)?;
        let ours = rec.volumes.contains(&vref(v));
        if path.exists() && !ours {
            fail!(
                AlreadyExists,
                "volume {}/{} already exists on {} (not made by this migration): remove it or give the disk another name",
                v.pool,
                v.volume,
                agent.name()
            );
        }
        if !ours {
            rec.volumes.push(vref(v));
        }
    }
    agent.state.put(&key, &rec).await?;
    for v in vols {
        let path = agent.volume_path(&v.pool, &v.volume)?;
        let f = std::fs::File::create(&path).with_ctx(|| format!("create {}", path.display()))?;
        f.set_len(v.size_bytes.unwrap_or(0)).with_ctx(|| format!("size {}", path.display()))?;
    }
    Ok(())
}

/// Starts the helper on the copies and serves them: an NBD server on a socket bound on
/// this host's management address (TLS with the cluster CA, admitting only `source`'s
/// certificate, unless `tls` is off), one writable export per disk. Returns `IP:PORT`.
pub async fn serve(agent: &Agent, guest: &str, source: &str, vols: &[LocalVolume], tls: bool) -> Result<String> {
    let name = helper_name(guest);
    let mut disks: Vec<(usize, PathBuf)> = Vec::new();
    for v in vols {
        disks.push((v.disk as usize, agent.volume_path(&v.pool, &v.volume)?));
    }
    let h = agent.start_helper(&name, &disks).await?;
    let served = async {
        let q = &h.qmp;
        let ip = agent
            .cfg
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| AgentError::internal(format!("bad listen address {}", agent.cfg.listen)))?
            .ip();
        let listener = agent.host.listen_tcp(ip)?;
        let port = listener.local_addr().ctx("the NBD listener's port")?.port();
        let (creds, authz) = if tls {
            let dir = crate::migrate_src::tls_dir(agent, &h.run_dir, "server")?;
            q.object_add_tls_creds_x509(NBD_TLS, &dir.display().to_string(), "server", true).await.ctx("tls-creds-x509")?;
            q.object_add_authz_simple(NBD_AUTHZ, &format!("CN={source}")).await.ctx("authz-simple")?;
            (Some(NBD_TLS.to_string()), Some(NBD_AUTHZ.to_string()))
        } else {
            (None, None)
        };
        q.getfd(listener.as_fd(), NBD_LISTENER).await.ctx("getfd")?;
        let start = NbdServerStart { addr: NbdAddr::Fd { name: NBD_LISTENER.into() }, tls_creds: creds, tls_authz: authz, max_connections: None };
        q.nbd_server_start(&start).await.ctx("nbd-server-start")?;
        drop(listener);
        for (i, _) in &disks {
            let n = DiskNames::of(*i);
            let export = NbdExport { id: n.export.clone(), node_name: n.node, name: Some(n.export), writable: true, allow_inactive: None };
            q.block_export_add_nbd(&export).await.ctx("block-export-add")?;
        }
        Ok::<_, AgentError>(SocketAddr::new(ip, port).to_string())
    }
    .await;
    if served.is_err() {
        agent.stop_helper(&name, Duration::ZERO).await?;
    }
    served
}

/// Stops serving: the NBD server (and its exports) down, then the helper ends (its image
/// locks with it), so the incoming QEMU can take the copies. Nothing to do without a helper.
pub async fn unserve(agent: &Agent, guest: &str, grace: bool) -> Result<()> {
    let name = helper_name(guest);
    if let Some(h) = agent.helper(&name) {
        if grace {
            h.qmp.nbd_server_stop().await.ctx("nbd-server-stop")?;
        }
    }
    agent.stop_helper(&name, if grace { HELPER_GRACE } else { Duration::ZERO }).await
}

/// Deletes the copies this host made for `guest` (as recorded), then the record. Returns
/// what it deleted.
pub async fn delete_copies(agent: &Agent, guest: &str) -> Result<Vec<String>> {
    let key = copies_key(guest);
    let Some(rec) = agent.state.get::<CopyRec>(&key).await? else { return Ok(vec![]) };
    let mut gone = Vec::new();
    for v in &rec.volumes {
        let path = agent.volume_path(&v.pool, &v.volume)?;
        match std::fs::remove_file(&path) {
            Ok(()) => gone.push(format!("{}/{}", v.pool, v.volume)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::host(format!("delete {}: {e}", path.display()))),
        }
    }
    agent.state.delete(&key).await?;
    Ok(gone)
}

/// LIVE MIGRATE_GUEST, before the memory phase: whether this migration copies volumes,
/// and if so, that every mirror is in sync (COPY_VOLUMES made them so; one that failed
/// since fails the step before anything else happens).
pub async fn copies_in_sync(cx: &StepCx<'_>) -> Result<bool> {
    if cx.agent().local_disks(&cx.spec.guest).is_empty() || cx.agent().state.get::<CopyRec>(&copies_key(cx.guest())).await?.is_none() {
        return Ok(false);
    }
    if cx.agent().helper(&helper_name(cx.guest())).is_none() {
        fail!(WrongState, "the copies of {}'s local volumes are not served on {} (run COPY_VOLUMES again)", cx.guest(), cx.agent().name());
    }
    let r: MirrorReport = call(cx.peer, &Request::PeerMirrorQuery { name: cx.guest().into() }, crate::peer::PEER_TIMEOUT).await?;
    if let Some(j) = r.failed() {
        fail!(Qemu, "the copy of disk{} failed on {}: {}", j.disk, cx.spec.source.name, j.error.clone().unwrap_or_else(|| j.status.clone()));
    }
    if !r.all_ready() {
        fail!(WrongState, "the local volumes of {} are not in sync on {} (run COPY_VOLUMES again)", cx.guest(), cx.agent().name());
    }
    Ok(true)
}

/// LIVE MIGRATE_GUEST at the pre-switchover pause (source CPUs stopped, its disks still
/// active, no device state sent): the source finishes every mirror (a cancel of a ready
/// job copies what is still dirty and ends it without a pivot) and drops its NBD nodes;
/// then the NBD server stops and the helper ends, releasing the copies, which the incoming
/// QEMU activates at the switchover. It must happen here, before the target resumes: a
/// mirror cancelled after the switchover could still write into the disk of a running
/// guest (docs/DESIGN.md, "Local volumes").
pub async fn finish_at_switchover(cx: &StepCx<'_>) -> Result<MirrorReport> {
    let r: MirrorReport = call(cx.peer, &Request::PeerMirrorFinish { name: cx.guest().into() }, FINISH_TIMEOUT)
        .await
        .map_err(|e| e.context("finish the copy of the local volumes at the switchover"))?;
    unserve(cx.agent(), cx.guest(), true).await?;
    Ok(r)
}

/// After the point of no return (LIVE DETACH_VOLUMES, OFFLINE MIGRATE_GUEST): the copies
/// are the guest's volumes now (their record goes), and the source drops its own (deletes
/// them, or releases them with `--keep-source-volumes`). What fails at the source is a note:
/// the guest has moved.
pub async fn moved(cx: &StepCx<'_>) -> Result<Option<String>> {
    let local = cx.agent().local_disks(&cx.spec.guest);
    if local.is_empty() {
        return Ok(None);
    }
    cx.agent().state.delete(&copies_key(cx.guest())).await?;
    let volumes: Vec<VolumeRef> = local.iter().map(|(_, d)| VolumeRef { pool: d.pool.clone(), volume: d.volume.clone() }).collect();
    let keep = cx.spec.params.keep_source_volumes;
    let req = Request::PeerDropVolumes { name: cx.guest().into(), volumes, keep };
    let src = &cx.spec.source.name;
    Ok(Some(match cx.src_call(req, crate::peer::PEER_TIMEOUT).await {
        Ok(Some(v)) => {
            let list = crate::steps::list_note(&v);
            if keep {
                format!("{src} keeps its copies of the local volumes (released): {list}")
            } else {
                format!("{src} deleted its copies of the local volumes: {list}")
            }
        }
        Ok(None) => format!("{src} unreachable: its copies of the local volumes stay there (remove them when it is back)"),
        Err(e) => format!("{src} did not drop its copies of the local volumes ({}): remove them by hand", e.message),
    }))
}
