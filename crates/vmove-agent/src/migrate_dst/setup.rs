//! Before `migrate`: the incoming QEMU, what both QEMUs can do, the convergence ladder's
//! setup (capabilities, multifd, the first downtime limit, the parked throttle), and the
//! source told to start.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmove_api::{ConvergenceCheck, EventKind, HostInfo, Request, SourceSetup};
use vmove_model::BootSource;
use vmove_plan::converge::{Features, Start};
use vmove_plan::{Ladder, Mode};
use vmove_qmp::Qmp;

use crate::error::{fail, AgentError, Result, ResultExt};
use crate::jobs::{JobCell, Jobs};
use crate::frames::{EventTimes, TapWatch};
use crate::migrate_src::SideSetup;
use crate::peer::{call, PEER_TIMEOUT};
use crate::steps::StepCx;

/// A migration that has started.
pub(super) struct Prepared {
    /// The incoming QEMU (out-of-band negotiated where QEMU offers it).
    pub q: Qmp,
    /// The convergence ladder.
    pub ladder: Ladder,
    /// When `migrate` was asked of the source.
    pub started: Instant,
    /// Frame watches on the guest's taps here.
    pub watches: Vec<TapWatch>,
    /// This QEMU's switchover events.
    pub times: Arc<Mutex<EventTimes>>,
    /// The test hook `--pause-at-switchover` holds the migration at pre-switchover.
    pub hook: bool,
    /// Local volumes are copied: their mirrors are finished at pre-switchover.
    pub copying: bool,
}

/// The dirty-rate sample the job takes from its start, while its first steps run and the
/// target's QEMU starts, ms: about as long as those take on the lab's hosts (50 ms of steps,
/// 115 ms of QEMU start), so that the move waits little for it. The operator's
/// `--precheck` samples 300 ms.
const DIRTY_SAMPLE_MS: u64 = 200;

fn dirty_rate_request(guest: &str) -> Request {
    Request::GuestDirtyRate { name: guest.to_string(), calc_s: 1, calc_ms: Some(DIRTY_SAMPLE_MS) }
}

/// LIVE, when the job decides `predicted-convergence`: the source samples the guest's dirty
/// rate from the job's start, while the first steps run and the target's QEMU starts.
pub(crate) fn sample_dirty_rate_early(jobs: &Jobs, cell: &JobCell) {
    let spec = cell.snapshot().spec;
    let wanted = spec.mode == Mode::Live && spec.step.is_none() && spec.dirty_rate_bytes_per_s.is_none();
    if !wanted || spec.convergence_check.is_decided() {
        return;
    }
    let Ok(peer) = jobs.peer(&spec) else { return };
    let ask = dirty_rate_request(&spec.guest.name);
    let h = tokio::spawn(async move { call::<u64>(peer.as_ref(), &ask, PEER_TIMEOUT).await });
    *cell.dirty_sample.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
}

/// `predicted-convergence`, decided by the job from the dirty rate sampled while the
/// target's QEMU started (local volumes, if any, are copied by now). A failure fails the
/// step before the source is asked to migrate, unless the operator ignores the check.
async fn convergence_check(cx: &StepCx<'_>, features: Features, dirty: Option<u64>) -> Result<()> {
    let agent = cx.agent();
    let g = &cx.spec.guest;
    let measured = vmove_plan::Measured::new(cx.jobs.live_steps_ms(), cx.jobs.memory_model_pct());
    let outcome = vmove_plan::convergence_outcome(g, &cx.spec.params, features, dirty, cx.spec.link_bytes_per_s, 0, measured);
    let message = match outcome {
        Ok((verdict, reason)) => format!("precheck predicted-convergence: {}: {reason}", verdict.as_str()),
        Err(reason) if cx.spec.convergence_check == ConvergenceCheck::InJobIgnored => {
            format!("precheck predicted-convergence: ignored by the operator: {reason}")
        }
        Err(reason) => fail!(PrecheckFailed, "precheck failed: predicted-convergence: {reason}"),
    };
    cx.cell.emit(&agent.state, EventKind::Info { message }).await
}

/// What the two QEMUs can do for convergence.
fn features(src: &HostInfo, dst: &vmove_model::inventory::QemuFeatures) -> Features {
    let s = &src.qemu;
    let both = |c: &str| s.has_capability(c) && dst.has_capability(c);
    Features {
        auto_converge: s.has_capability("auto-converge"),
        // dirty-limit needs KVM started with a dirty ring, which vmove's QEMU command line
        // does not ask for (yet): never offered.
        dirty_limit: false,
        postcopy_ram: both("postcopy-ram"),
        postcopy_preempt: both("postcopy-preempt"),
        multifd_with_postcopy: s.postcopy_with_multifd && dst.postcopy_with_multifd,
        return_path: both("return-path"),
        switchover_ack: both("switchover-ack"),
    }
}

/// Starts the incoming QEMU and the migration.
pub(super) async fn prepare(cx: &StepCx<'_>) -> Result<Prepared> {
    let (agent, name) = (cx.agent(), cx.guest().to_string());
    let mut p = cx.spec.params.clone();
    let hook = crate::hooks::pause_at_switchover(agent, cx.spec);
    // Local volumes: the mirrors must be in sync now and are finished at the pause.
    let copying = crate::storage::dst::copies_in_sync(cx).await?;
    p.pause_before_switchover = hook || copying;
    // The source's QEMU features and, when the operator's prechecks left it to the job,
    // the guest's dirty rate: asked while this host's QEMU starts.
    let src_info = call::<HostInfo>(cx.peer, &Request::HostInfo, PEER_TIMEOUT);
    let early = cx.cell.dirty_sample.lock().unwrap_or_else(|p| p.into_inner()).take();
    let dirty = async {
        if cx.spec.convergence_check.is_decided() || cx.spec.dirty_rate_bytes_per_s.is_some() {
            return Ok(cx.spec.dirty_rate_bytes_per_s);
        }
        if let Some(h) = early {
            return h.await.map_err(|e| AgentError::internal(format!("the dirty-rate sample: {e}")))?.map(Some);
        }
        call::<u64>(cx.peer, &dirty_rate_request(&name), PEER_TIMEOUT).await.map(Some)
    };
    let t0 = Instant::now();
    let (started, src_info, dirty) = tokio::join!(agent.start_incoming(&name), src_info, dirty);
    let t_started = t0.elapsed();
    started?;
    let src_info = src_info.ctx("the source's QEMU features")?;
    let features = features(&src_info, &agent.qemu);
    let dirty = match dirty {
        Ok(d) => d,
        Err(e) => {
            let message = format!("the guest's dirty rate was not measured on {}: {}", cx.spec.source.name, e.message);
            cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
            None
        }
    };
    // The model's own figure for the memory phase, against which this move's will calibrate
    // the next predictions (`memory_model_pct`).
    let model_ms = vmove_plan::predicted_memory_ms(&cx.spec.guest, &cx.spec.params, features, dirty, cx.spec.link_bytes_per_s);
    cx.summary.lock().unwrap_or_else(|p| p.into_inner()).predicted_memory_ms = model_ms;
    if !cx.spec.convergence_check.is_decided() {
        convergence_check(cx, features, dirty).await?;
    }
    let (q, _) = agent.qmp_of(&name)?;
    // Time the switchover on this side: the target's events and the guest's first frames.
    let times = crate::frames::time_events(&q);
    let watches = crate::frames::watch_taps(&cx.spec.guest);
    let g = &cx.spec.guest;
    let start = Start {
        memory_bytes: g.memory_mib.saturating_mul(1 << 20),
        working_set_bytes: match g.boot {
            BootSource::Lab { wss_mib, .. } => Some(u64::from(wss_mib) << 20),
            BootSource::Disk => None,
        },
        link_bytes_per_s: cx.spec.link_bytes_per_s,
        dirty_rate_bytes_per_s: dirty,
        vcpus: g.vcpus,
    };
    let ladder = Ladder::new(&p, &features, &start);
    let setup = ladder.setup().clone();
    for note in &setup.notes {
        cx.cell.emit(&agent.state, EventKind::Info { message: format!("convergence: {note}") }).await?;
    }
    let here = SideSetup {
        capabilities: setup.target_capabilities.clone(),
        multifd_channels: setup.multifd_channels,
        downtime_limit_ms: setup.initial_downtime_ms,
        throttle: Default::default(),
    };
    let t1 = Instant::now();
    crate::migrate_src::setup_qemu(&q, agent, &name, &p, &here, "server", None).await?;
    let Some((ip, _)) = agent.cfg.listen.rsplit_once(':') else { fail!(Internal, "bad listen address {}", agent.cfg.listen) };
    // Port 0: QEMU binds a free port itself; read it back (no bind-and-release race).
    q.migrate_incoming(&format!("tcp:{ip}:0")).await.ctx("migrate-incoming")?;
    let port = super::switchover::bound_port(&q).await?;
    let uri = format!("tcp:{ip}:{port}");
    let tls_hostname = (!p.insecure_transport).then(|| agent.cfg.name.clone());
    let source_setup = SourceSetup {
        capabilities: setup.source_capabilities.clone(),
        multifd_channels: setup.multifd_channels,
        downtime_limit_ms: setup.initial_downtime_ms,
        throttle: setup.parked_throttle,
    };
    let out = Request::PeerMigrateOut {
        name: name.clone(),
        uri: uri.clone(),
        tls_hostname,
        params: p.clone(),
        job: Some(cx.claim()),
        setup: Some(source_setup),
    };
    let t_here = t1.elapsed();
    let t2 = Instant::now();
    cx.peer.call(&out, PEER_TIMEOUT).await.ctx("start the migration on the source")?;
    let started = Instant::now();
    let t_source = t2.elapsed();
    let message = format!(
        "memory migration to {uri} started ({}, {}, converge {}, {}, bandwidth {})",
        if p.insecure_transport { "clear text" } else { "TLS" },
        if setup.multifd_channels > 0 { format!("{} multifd channels", setup.multifd_channels) } else { "one stream".into() },
        p.converge,
        ladder.rung(),
        p.bandwidth_bytes_per_s.map_or("unlimited".to_string(), |b| format!("{} MiB/s", b >> 20))
    );
    let message = format!(
        "{message}; set up in {} ms: target QEMU started {} ms, its migration {} ms, the source's {} ms",
        t0.elapsed().as_millis(),
        t_started.as_millis(),
        t_here.as_millis(),
        t_source.as_millis()
    );
    cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
    Ok(Prepared { q, ladder, started, watches, times, hook, copying })
}
