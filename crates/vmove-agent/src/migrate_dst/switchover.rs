//! After the switchover: the target runs the guest; announce it, end the source, hand over
//! the frames that reached the source during the blackout, and put the outage breakdown
//! together (off the job's critical path).
use std::time::{Duration, Instant};

use vmove_api::{ErrorCode, EventKind, GuestState, Progress, Request};
use vmove_qmp::{AnnounceParameters, MigrationInfo, Qmp};

use crate::error::{fail, AgentError, Result, ResultExt};
use crate::peer::{call, PEER_TIMEOUT};
use crate::steps::StepCx;

/// A migration that completed: the target's QEMU, the source's last figures, and what
/// times the switchover on this side.
pub(super) struct Completed {
    pub q: Qmp,
    pub last: MigrationInfo,
    pub watches: Vec<crate::frames::TapWatch>,
    pub times: std::sync::Arc<std::sync::Mutex<crate::frames::EventTimes>>,
}

/// The port an incoming migration listens on, from `query-migrate`'s `socket-address`.
pub(super) async fn bound_port(q: &Qmp) -> Result<u16> {
    let info = q.query_migrate().await.ctx("query-migrate")?;
    let port = info
        .socket_address
        .iter()
        .flatten()
        .find_map(|a| a.get("port").and_then(|p| p.as_str().and_then(|s| s.parse::<u16>().ok()).or_else(|| p.as_u64().and_then(|n| u16::try_from(n).ok()))));
    port.filter(|p| *p != 0).ok_or_else(|| AgentError::new(ErrorCode::Qemu, "the incoming QEMU did not report the port it listens on"))
}

/// How long the breakdown waits after the switchover for the guest's first frame on the
/// target.
const FIRST_FRAME_WAIT: Duration = Duration::from_secs(3);

/// After the switchover: the target runs the guest; announce, end the source, announce again.
/// From here on the guest lives on the target: what fails now is a note, not a failure.
pub(super) async fn switched_over(cx: &StepCx<'_>, m: Completed) -> Result<String> {
    let Completed { q, last, watches, times } = m;
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
    // The frames that reached the source during the blackout, handed to the guest now: they
    // go into its tap's queue ahead of most of what comes straight here after the announce,
    // so that a TCP sender sees them answered in order instead of waiting out a timeout.
    let mut carried = match cx.peer.call(&Request::PeerTakeFrames { name: name.clone() }, Duration::from_secs(2)).await {
        Ok(v) => serde_json::from_value::<crate::migrate_src::HandedFrames>(v).map_or(0, |h| crate::frames::deliver(&cx.spec.guest, &h.carried)),
        Err(e) => {
            notes.push(format!("frames not handed over early: {e}"));
            0
        }
    };
    let pr = progress(&last);
    let src = match super::finish_source(cx, &name, Duration::ZERO).await {
        Ok(v) => serde_json::from_value::<crate::migrate_src::SourceSide>(v).unwrap_or_default(),
        Err(e) => {
            let message = format!("the source did not confirm the end of its QEMU ({e}); its agent fences it at restart");
            cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
            crate::migrate_src::SourceSide::default()
        }
    };
    // Frames for the guest that reached the source after the early hand-over: those too.
    carried += crate::frames::deliver(&cx.spec.guest, &src.carried);
    // Announce once more now that the source QEMU and its tap are gone: a late frame
    // flushed from the paused source could otherwise have taught the switches the old port.
    if let Err(e) = q.announce_self(&AnnounceParameters::default()).await {
        notes.push(format!("second announce-self failed: {e}"));
    }
    {
        let mut s = cx.summary.lock().unwrap_or_else(|p| p.into_inner());
        s.migration_ms = last.total_time;
        s.downtime_ms = last.downtime;
        s.transferred_bytes = Some(pr.transferred_bytes);
        s.passes = Some(pr.pass);
    }
    // The guest's first frame on the target may take a moment (a cold start under TCG): the
    // breakdown is completed in the background, off the job's critical path.
    let (cell, state) = (cx.cell.clone(), agent.state.clone());
    let downtime = last.downtime;
    tokio::spawn(async move {
        let mut outage = outage_after(watches, times, src, downtime).await;
        outage.carried_frames = u32::try_from(carried).unwrap_or(u32::MAX);
        cell.lock().outage = Some(outage.clone());
        let message = format!("outage: {}", outage.line());
        if let Err(e) = cell.save(&state).await.and(cell.emit(&state, EventKind::Info { message }).await) {
            tracing::warn!("cannot record the outage breakdown: {e}");
        }
    });
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

/// Waits (at most [`FIRST_FRAME_WAIT`] after the target resumed) for the guest's first
/// frame on the target, then puts the breakdown together.
async fn outage_after(
    mut watches: Vec<crate::frames::TapWatch>,
    times: std::sync::Arc<std::sync::Mutex<crate::frames::EventTimes>>,
    src: crate::migrate_src::SourceSide,
    qemu_downtime_ms: Option<u64>,
) -> vmove_api::Outage {
    let t = *times.lock().unwrap_or_else(|p| p.into_inner());
    let resumed = t.resumed_us.unwrap_or_else(vmove_host::frames::now_us);
    let until = Instant::now() + FIRST_FRAME_WAIT;
    while crate::frames::first_after(&watches, resumed).is_none() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for w in &mut watches {
        w.stop();
    }
    vmove_api::Outage {
        src_last_frame_us: src.src_last_frame_us,
        src_stopped_us: src.src_stopped_us,
        dst_loaded_us: t.completed_us,
        dst_resumed_us: t.resumed_us,
        dst_rarp_us: crate::frames::first_rarp_after(&watches, resumed),
        dst_first_frame_us: crate::frames::first_after(&watches, resumed),
        qemu_downtime_ms,
        carried_frames: 0,
    }
}

pub(super) fn progress(info: &MigrationInfo) -> Progress {
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
        rung: None,
        throttle_pct: info.cpu_throttle_percentage,
    }
}

/// QEMU marks a migration completed a moment before it fills in `total-time` and
/// `downtime`: ask again until they are there (up to a second).
pub(super) async fn final_figures(cx: &StepCx<'_>, mut info: MigrationInfo) -> MigrationInfo {
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
