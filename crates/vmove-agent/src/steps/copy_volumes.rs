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
use vmove_api::{ErrorCode, EventKind, LocalVolume, MirrorReport, MirrorStarted, Progress, Request};
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
        let started: MirrorStarted = call(cx.peer, &start, PEER_TIMEOUT).await.map_err(|e| e.context(format!("start the mirrors on {src}")))?;
        let message = format!(
            "copying {} of local volumes from {src} to {nbd} ({}, {})",
            mib(vols.iter().filter_map(|v| v.size_bytes).sum()),
            if tls { "NBD over TLS" } else { "NBD in clear text" },
            match (live, started.write_blocking) {
                (false, _) => "the guest is stopped",
                (true, false) => "mirrors of the running guest",
                (true, true) => "write-blocking mirrors of the running guest: its QEMU has no block-job-change to switch them later",
            }
        );
        cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
        let r = match follow(cx, live && !started.write_blocking, t0).await {
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

/// When the mirrors switch to write-blocking: once the bytes still to copy have made no
/// new low for [`STALL`] (the guest dirties the disks as fast as the copy moves, or
/// faster), and only once.
#[derive(Debug)]
pub(crate) struct Stall {
    best: u64,
    best_at: Instant,
    switched: bool,
}

impl Stall {
    /// A watch that may switch (`may_switch`: LIVE, on mirrors not already write-blocking).
    pub(crate) fn new(now: Instant, may_switch: bool) -> Stall {
        Stall { best: u64::MAX, best_at: now, switched: !may_switch }
    }

    /// Takes the bytes still to copy at `now`; true when the mirrors should switch now.
    pub(crate) fn observe(&mut self, remaining: u64, now: Instant) -> bool {
        if remaining < self.best {
            (self.best, self.best_at) = (remaining, now);
            return false;
        }
        if self.switched || now.saturating_duration_since(self.best_at) <= STALL {
            return false;
        }
        self.switched = true;
        true
    }
}

/// Follows the mirrors until every one is in sync: progress events, the switch to
/// write-blocking when the copy does not gain on the guest's writes (`may_switch`: LIVE
/// with mirrors started in background mode), cancel and timeout.
async fn follow(cx: &StepCx<'_>, may_switch: bool, t0: Instant) -> Result<MirrorReport> {
    let agent = cx.agent();
    let src = &cx.spec.source.name;
    let timeout = Duration::from_secs(cx.spec.params.timeout_s);
    let mut stall = Stall::new(Instant::now(), may_switch);
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
        if stall.observe(remaining, now) {
            cx.peer.call(&Request::PeerMirrorWriteBlocking { name: cx.guest().into() }, PEER_TIMEOUT).await?;
            let message = format!(
                "the guest writes faster than the copy moves ({} still to copy, no less for {} s): mirrors switched to write-blocking",
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
        status: Progress::COPYING_VOLUMES.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(500);

    /// Feeds `remaining` one per [`TICK`]; the ticks at which the watch says switch.
    fn switches(may_switch: bool, remaining: &[u64]) -> Vec<usize> {
        let t0 = Instant::now();
        let mut w = Stall::new(t0, may_switch);
        let at = |i: usize| t0 + TICK * u32::try_from(i).expect("tick");
        remaining.iter().enumerate().filter(|(i, r)| w.observe(**r, at(*i))).map(|(i, _)| i).collect()
    }

    #[test]
    fn a_copy_that_keeps_shrinking_never_switches() {
        let shrinking: Vec<u64> = (0..40).rev().map(|i| i * 4096 + 1).collect();
        assert_eq!(switches(true, &shrinking), Vec::<usize>::new());
    }

    #[test]
    fn remaining_bytes_that_stop_shrinking_switch_once_after_the_stall_window() {
        // 8 MiB left, then the guest dirties as fast as the copy goes: it hovers above.
        let mut r = vec![64 << 20, 32 << 20, 8 << 20];
        r.extend([9 << 20, 8 << 20, 10 << 20, 9 << 20, 8 << 20, 11 << 20, 9 << 20, 12 << 20, 10 << 20, 9 << 20, 8 << 20]);
        // The low was at tick 2; STALL (3 s) is 6 ticks: the switch comes at tick 9 (> 3 s), once.
        assert_eq!(switches(true, &r), vec![9]);
    }

    #[test]
    fn a_new_low_restarts_the_window() {
        // Lows at ticks 0, 5 and 10 (each under 3 s after the last): no switch; then flat.
        let mut r = vec![100; 16];
        r[5] = 90;
        for x in r.iter_mut().skip(6) {
            *x = 95;
        }
        r[10] = 80;
        for x in r.iter_mut().skip(11) {
            *x = 85;
        }
        assert_eq!(switches(true, &r), Vec::<usize>::new(), "within 3 s of each low");
        r.extend([85; 4]);
        assert_eq!(switches(true, &r), vec![17]);
    }

    #[test]
    fn mirrors_that_cannot_or_need_not_switch_never_do() {
        // OFFLINE, or LIVE mirrors started write-blocking.
        assert_eq!(switches(false, &[10; 30]), Vec::<usize>::new());
    }
}
