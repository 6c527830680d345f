//! Before `migrate`: the incoming QEMU, what both QEMUs can do, the convergence ladder's
//! setup (capabilities, multifd, the first downtime limit, the parked throttle), and the
//! source told to start.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmove_api::{EventKind, HostInfo, Request, SourceSetup};
use vmove_model::BootSource;
use vmove_plan::converge::{Features, Start};
use vmove_plan::Ladder;
use vmove_qmp::Qmp;

use crate::error::{fail, Result, ResultExt};
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
    // The source's QEMU features, asked while this host's QEMU starts.
    let src_info = call::<HostInfo>(cx.peer, &Request::HostInfo, PEER_TIMEOUT);
    let (started, src_info) = tokio::join!(agent.start_incoming(&name), src_info);
    started?;
    let src_info = src_info.ctx("the source's QEMU features")?;
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
        dirty_rate_bytes_per_s: cx.spec.dirty_rate_bytes_per_s,
        vcpus: g.vcpus,
    };
    let ladder = Ladder::new(&p, &features(&src_info, &agent.qemu), &start);
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
    cx.peer.call(&out, PEER_TIMEOUT).await.ctx("start the migration on the source")?;
    let started = Instant::now();
    let message = format!(
        "memory migration to {uri} started ({}, {}, converge {}, {}, bandwidth {})",
        if p.insecure_transport { "clear text" } else { "TLS" },
        if setup.multifd_channels > 0 { format!("{} multifd channels", setup.multifd_channels) } else { "one stream".into() },
        p.converge,
        ladder.rung(),
        p.bandwidth_bytes_per_s.map_or("unlimited".to_string(), |b| format!("{} MiB/s", b >> 20))
    );
    cx.cell.emit(&agent.state, EventKind::Info { message }).await?;
    Ok(Prepared { q, ladder, started, watches, times, hook, copying })
}
