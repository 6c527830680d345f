//! COPY_VOLUMES: the guest's volumes in local pools are copied to the target (see
//! [`crate::storage`]). The target creates each copy (same size), serves it over NBD with
//! TLS from a storage helper, and the source mirrors every local disk into it until every
//! mirror is in sync, switching to write-blocking when the guest writes faster than the
//! copy moves.
//! - LIVE: the step ends with the mirrors in sync and running; MIGRATE_GUEST finishes them
//!   at its pre-switchover pause.
//! - OFFLINE (the guest is stopped): the source mirrors from a helper on its volumes, and
//!   the step finishes the copy itself.
//!
//! Undo: the mirrors are abandoned (forced cancel), the helper ends, the copies this
//! migration made are deleted. Shared volumes are never copied; a guest without local
//! volumes makes the step a no-op.
use std::time::{Duration, Instant};

use async_trait::async_trait;
use vmove_api::{ErrorCode, EventKind, LocalVolume, MirrorReport, Progress, Request};
use vmove_plan::Mode;

use super::{StepCx, StepWork};
use crate::error::{fail, Result};
use crate::peer::{call, PEER_TIMEOUT};
use crate::storage::{dst, mib};

/// How often the target asks the source about the mirrors.
const POLL: Duration = Duration::from_millis(500);
/// No new low of the bytes still to copy for this long: the guest writes faster than the
/// copy moves, and the mirrors switch to write-blocking.
pub(crate) const STALL: Duration = Duration::from_secs(3);
/// How long the source may not answer before the copy fails.
const MISSES: Duration = Duration::from_secs(15);

pub struct CopyVolumes;

#[async_trait]
impl StepWork for CopyVolumes {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let agent = cx.agent();
        let local: Vec<usize> = agent.local_disks(&cx.spec.guest).into_iter().map(|(i, _)| i).collect();
        if local.is_empty() {
            return Ok("no volumes in local pools: nothing to copy".into());
        }
        let src = cx.spec.source.name.clone();
        let vols: Vec<LocalVolume> = match call(cx.peer, &Request::PeerLocalVolumes { name: cx.guest().into() }, PEER_TIMEOUT).await {
            Ok(v) => v,
            Err(e) if e.is_unreachable() => {
                return Err(e.context(format!("the local volumes of {} are on {src}, which must answer to copy them", cx.guest())))
            }
            Err(e) => return Err(e),
        };
        let theirs: Vec<usize> = vols.iter().map(|v| v.disk as usize).collect();
        if theirs != local {
            fail!(
                InvalidRequest,
                "{src} and {} disagree on which disks of {} are in local pools ({theirs:?} vs {local:?}): check the pools' kinds",
                agent.name(),
                cx.guest()
            );
        }
        let vols: Vec<LocalVolume> = vols.into_iter().filter(|v| v.size_bytes.is_some()).collect();
        if vols.is_empty() {
            return Ok(format!("the local volumes have no file on {src} yet: nothing to copy"));
        }
        dst::check_room(agent, &vols)?;
        let tls = !cx.spec.params.insecure_transport;
        dst::create_copies(agent, cx.guest(), &src, &vols).await?;
        let nbd = dst::serve(agent, cx.guest(), &src, &vols, tls).await?;
        let live = cx.spec.mode == Mode::Live;
        let start = Request::PeerMirrorStart {
            name: cx.guest().into(),
            disks: vols.iter().map(|v| v.disk).collect(),
            nbd: nbd.clone(),
            tls_hostname: tls.then(|| agent.name().to_string()),
            live,
            bandwidth_bytes_per_s: cx.spec.params.bandwidth_bytes_per_s,
            job: Some(cx.claim()),
        };
        let t0 = Instant::now();
        cx.peer.call(&start, PEER_TIMEOUT).await.map_err(|e| e.context(format!("start the mirrors on {src}")))?;
        let message = format!(
            "copying {} of local volumes from {src} to {nbd} ({}, {})",
            mib(vols.iter().filter_map(|v| v.size_bytes).sum()),
            if tls { "NBD over TLS" } else { "NBD in clear text" },
            if live { "mirrors of the running guest" } else { "the guest is stopped" }
        );
        cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
        let r = match follow(cx, live, t0).await {
            Ok(r) => r,
            Err(e) => {
                // Nothing keeps copying once the step has failed (the copies stay for undo).
                let _ = cx.peer.call(&Request::PeerMirrorAbort { name: cx.guest().into() }, Duration::from_secs(60)).await;
                let _ = dst::unserve(agent, cx.guest(), false).await;
                return Err(e);
            }
        };
        let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        let rate = r.len().saturating_mul(1000) / ms.max(1);
        {
            let mut s = cx.summary.lock().unwrap_or_else(|p| p.into_inner());
            s.disk_bytes = Some(r.len());
            s.disk_copy_ms = Some(ms);
        }
        let what = vols.iter().map(|v| format!("{}/{}", v.pool, v.volume)).collect::<Vec<_>>().join(", ");
        if live {
            return Ok(format!(
                "{what} in sync on {} after {} in {ms} ms ({:.0} MB/s); the mirrors keep them in sync until the switchover",
                agent.name(),
                mib(r.len()),
                rate as f64 / 1e6
            ));
        }
        let done: MirrorReport = call(cx.peer, &Request::PeerMirrorFinish { name: cx.guest().into() }, dst::FINISH_TIMEOUT).await?;
        dst::unserve(agent, cx.guest(), true).await?;
        Ok(format!("{what} copied to {}: {} in {ms} ms ({:.0} MB/s)", agent.name(), mib(done.len()), rate as f64 / 1e6))
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        let agent = cx.agent();
        if agent.local_disks(&cx.spec.guest).is_empty() {
            return Ok("no volumes in local pools: nothing to undo".into());
        }
        let src = &cx.spec.source.name;
        let abort = cx.peer.call(&Request::PeerMirrorAbort { name: cx.guest().into() }, Duration::from_secs(60)).await;
        dst::unserve(agent, cx.guest(), false).await?;
        let gone = dst::delete_copies(agent, cx.guest()).await?;
        let deleted = if gone.is_empty() { "no copy to delete".to_string() } else { format!("copies deleted: {}", gone.join(", ")) };
        match abort {
            Ok(_) => Ok(format!("mirrors abandoned on {src}; {deleted}")),
            // The source's mirrors fail by themselves once the export is gone.
            Err(e) if e.is_unreachable() => Ok(format!("{src} unreachable: its mirrors end once the export is gone; {deleted}")),
            Err(e) => Err(e.context(format!("{deleted}, but {src} did not abandon its mirrors"))),
        }
    }
}

/// Follows the mirrors until every one is in sync: progress events, the switch to
/// write-blocking when the copy does not gain on the guest's writes (LIVE), cancel and
/// timeout.
async fn follow(cx: &StepCx<'_>, live: bool, t0: Instant) -> Result<MirrorReport> {
    let agent = cx.agent();
    let src = &cx.spec.source.name;
    let timeout = Duration::from_secs(cx.spec.params.timeout_s);
    let (mut best, mut best_at) = (u64::MAX, Instant::now());
    let mut write_blocking = false;
    let mut last: Option<(Instant, u64)> = None;
    let mut answered = Instant::now();
    loop {
        if cx.cell.cancelled() {
            fail!(Cancelled, "cancelled by the operator during the copy of the local volumes; the guest's volumes on {src} are untouched");
        }
        if t0.elapsed() > timeout {
            fail!(Timeout, "timed out after {} s: the local volumes did not get in sync (the copy was abandoned)", timeout.as_secs());
        }
        let r: MirrorReport = match call(cx.peer, &Request::PeerMirrorQuery { name: cx.guest().into() }, PEER_TIMEOUT).await {
            Ok(r) => r,
            Err(e) if e.code == ErrorCode::StateWrite => return Err(e),
            Err(e) if answered.elapsed() > MISSES => return Err(e.context(format!("{src} stopped answering about the copy"))),
            Err(_) => {
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        answered = Instant::now();
        if r.is_empty() {
            fail!(Qemu, "no mirror of {} runs on {src} any more", cx.guest());
        }
        if let Some(j) = r.failed() {
            fail!(Qemu, "the copy of disk{} failed on {src}: {}", j.disk, j.error.clone().unwrap_or_else(|| j.status.clone()));
        }
        let now = Instant::now();
        let rate = last.map_or(0, |(t, off)| {
            let dt = now.duration_since(t).as_millis().max(1);
            u64::try_from(u128::from(r.offset().saturating_sub(off)) * 1000 / dt).unwrap_or(u64::MAX)
        });
        last = Some((now, r.offset()));
        let remaining = r.remaining();
        cx.cell.emit(&agent.state, EventKind::Progress(progress(&r, rate, t0))).await?;
        if r.all_ready() {
            return Ok(r);
        }
        if remaining < best {
            (best, best_at) = (remaining, now);
        } else if live && !write_blocking && now.duration_since(best_at) > STALL {
            cx.peer.call(&Request::PeerMirrorWriteBlocking { name: cx.guest().into() }, PEER_TIMEOUT).await?;
            write_blocking = true;
            let message = format!(
                "the guest writes faster than the copy moves ({} still to copy after {} s): mirrors switched to write-blocking",
                mib(remaining),
                STALL.as_secs()
            );
            cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A progress event of the copy: status `copying-volumes`, bytes of the disks.
fn progress(r: &MirrorReport, rate: u64, t0: Instant) -> Progress {
    let remaining = r.remaining();
    Progress {
        status: "copying-volumes".into(),
        pass: 0,
        transferred_bytes: r.offset(),
        remaining_bytes: remaining,
        total_bytes: r.len(),
        rate_bytes_per_s: rate,
        dirty_rate_bytes_per_s: 0,
        expected_downtime_ms: 0,
        eta_s: (rate > 0).then(|| remaining / rate),
        elapsed_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
        rung: None,
        throttle_pct: None,
    }
}
