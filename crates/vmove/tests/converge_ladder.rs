//! The convergence ladder (`vmove_plan::converge::Ladder`) driving two real QEMUs: the
//! loop the agent runs — apply the setup, poll `query-migrate`, carry out each action —
//! written out once, against QEMU 10 and the lab guest under TCG. Not part of the default
//! suite (minutes); run as root after `cargo build`:
//!
//! ```sh
//! nice -n 5 cargo test -p vmove --test converge_ladder -- --ignored --nocapture --test-threads 1
//! ```

#[path = "converge_qemu/harness.rs"]
mod harness;

use anyhow::{bail, Result};
use harness::{finished, free_port, line, load, sample, Guest, Pair, Proxy};
use std::time::{Duration, Instant};
use vmove_model::Converge;
use vmove_plan::converge::{Action, Features, Ladder, Phase, Setup, Start, ThrottleParams};
use vmove_plan::MigrationParams;
use vmove_qmp::{MigrateSetParameters, MigrationCapability as C, Qmp};

/// 200 MB/s over 64 MiB on a 40 MB/s link: no downtime limit up to 300 ms carries it.
const BUSY: Guest = Guest { memory_mib: 512, dirty_mb_s: 200, wss_mib: 64 };
const LINK_BYTES_PER_S: u64 = 40_000_000;
/// How often the agent polls the source.
const POLL: Duration = Duration::from_millis(500);

/// What the two QEMUs can, asked of them (dirty-limit and the multifd + post-copy
/// combination can only be asked, not read from a list).
async fn features(src: &Qmp, dst: &Qmp) -> Result<Features> {
    let has = |caps: &[vmove_qmp::MigrationCapabilityStatus], c: C| caps.iter().any(|x| x.capability == c);
    let (s, d) = (src.query_migrate_capabilities().await?, dst.query_migrate_capabilities().await?);
    let both = |c: C| has(&s, c.clone()) && has(&d, c);
    let combo = [(C::PostcopyRam, true), (C::Multifd, true)];
    Ok(Features {
        auto_converge: has(&s, C::AutoConverge),
        dirty_limit: src.refused_capabilities(&[(C::DirtyLimit, true)]).await?.is_none(),
        postcopy_ram: both(C::PostcopyRam),
        postcopy_preempt: both(C::PostcopyPreempt),
        multifd_with_postcopy: src.refused_capabilities(&combo).await?.is_none() && dst.refused_capabilities(&combo).await?.is_none(),
        return_path: both(C::ReturnPath),
        switchover_ack: both(C::SwitchoverAck),
    })
}

/// The ladder's throttle parameters as QEMU's.
fn throttle(t: &ThrottleParams) -> MigrateSetParameters {
    MigrateSetParameters {
        cpu_throttle_initial_pct: t.cpu_throttle_initial_pct.map(u64::from),
        cpu_throttle_increment_pct: t.cpu_throttle_increment_pct.map(u64::from),
        max_cpu_throttle_pct: t.max_cpu_throttle_pct.map(u64::from),
        cpu_throttle_tailslow: t.cpu_throttle_tailslow,
        vcpu_dirty_limit_mb_per_s: t.vcpu_dirty_limit_mb_per_s,
        ..Default::default()
    }
}

/// Applies the setup: capabilities per side, then the source's parameters.
async fn apply(p: &Pair, s: &Setup) -> Result<()> {
    let caps = |v: &[(String, bool)]| v.iter().map(|(n, on)| (C::from_wire(n), *on)).collect::<Vec<_>>();
    p.src.qmp.migrate_set_capabilities(&caps(&s.source_capabilities)).await?;
    p.dst.qmp.migrate_set_capabilities(&caps(&s.target_capabilities)).await?;
    let params = MigrateSetParameters {
        downtime_limit_ms: Some(s.initial_downtime_ms),
        max_bandwidth_bytes_per_s: Some(LINK_BYTES_PER_S),
        max_postcopy_bandwidth_bytes_per_s: Some(0),
        ..throttle(&s.parked_throttle)
    };
    p.src.qmp.migrate_set_parameters(&params).await?;
    Ok(())
}

/// The link, as the agent sees it in the post-copy test: a proxy that is down for a while.
struct Link {
    proxy: Proxy,
    down_until: Option<Instant>,
}

/// Carries out one action; `RecoverPostcopy` reconnects through the proxy once it is up.
async fn act(p: &Pair, a: &Action, link: Option<&Link>) -> Result<()> {
    let src = &p.src.qmp;
    match a {
        Action::SetDowntimeLimit { ms, .. } => src.migrate_set_parameters(&MigrateSetParameters { downtime_limit_ms: Some(*ms), ..Default::default() }).await?,
        Action::UnparkThrottle { params, .. } | Action::RaiseThrottle { params, .. } => src.migrate_set_parameters(&throttle(params)).await?,
        Action::StartPostcopy { .. } => src.migrate_start_postcopy().await?,
        Action::PausePostcopy { .. } => p.dst.qmp.migrate_pause().await?,
        Action::RecoverPostcopy { .. } => {
            let Some(link) = link else { bail!("post-copy paused without a broken link") };
            // The target listens anew; the source resumes to it (through the link).
            let port = free_port()?;
            p.dst.qmp.migrate_recover(&format!("tcp:127.0.0.1:{port}")).await?;
            let up = link.down_until.is_none_or(|t| Instant::now() >= t);
            link.proxy.set_target(if up { port } else { free_port()? }).await?;
            src.migrate_resume(&format!("tcp:127.0.0.1:{}", link.proxy.port)).await?;
            println!("    link {}", if up { "up: resuming" } else { "still down: the resume will fail" });
        }
        Action::Exhausted { .. } => {}
        Action::Cancel { .. } => src.migrate_cancel().await?,
    }
    Ok(())
}

/// Runs the migration under the ladder until it finishes; returns the actions taken.
async fn drive(p: &Pair, ladder: &mut Ladder, mut link: Option<Link>, cut_in_postcopy: bool) -> Result<Vec<String>> {
    let t0 = Instant::now();
    let mut log = Vec::new();
    let mut cut = false;
    loop {
        let i = p.src.qmp.query_migrate().await?;
        let s = sample(&i, t0.elapsed().as_millis() as u64);
        let actions = ladder.observe(&s);
        if !actions.is_empty() || s.status.is_finished() {
            println!("{}  [{}; eta {:?} ms]", line(t0, &i), ladder.rung(), ladder.eta_ms());
        }
        for a in &actions {
            println!("  ACTION {}", a.describe());
            log.push(format!("{:.1}s {}", t0.elapsed().as_secs_f64(), a.describe()));
            act(p, a, link.as_ref()).await?;
        }
        if s.status.is_finished() {
            break;
        }
        if cut_in_postcopy && !cut && s.status == Phase::Postcopy {
            if let Some(l) = link.as_mut() {
                cut = true;
                l.down_until = Some(Instant::now() + Duration::from_millis(2500));
                println!("  CUT the link ({} connections) for 2.5 s", l.proxy.cut());
                log.push(format!("{:.1}s link cut for 2.5 s", t0.elapsed().as_secs_f64()));
            }
        }
        if t0.elapsed() > Duration::from_secs(400) {
            bail!("no end within 400 s");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(log)
}

async fn boot_and_ladder(converge: Converge, allow_postcopy: bool) -> Result<(Pair, Ladder)> {
    let p = Pair::boot(BUSY).await?;
    let f = features(&p.src.qmp, &p.dst.qmp).await?;
    let params = MigrationParams {
        converge,
        allow_postcopy,
        timeout_s: 300,
        max_downtime_ms: 300,
        multifd_channels: 2,
        ..MigrationParams::default()
    };
    let start = Start { memory_bytes: u64::from(BUSY.memory_mib) << 20, working_set_bytes: None, link_bytes_per_s: Some(LINK_BYTES_PER_S), dirty_rate_bytes_per_s: None, vcpus: 1 };
    let ladder = Ladder::new(&params, &f, &start);
    println!("features {f:?}\nsetup {:?}\nrungs {:?}\n{}", ladder.setup(), ladder.rungs(), load());
    apply(&p, ladder.setup()).await?;
    Ok((p, ladder))
}

/// converge=auto without post-copy: the downtime limit climbs to 300 ms, then
/// auto-converge is unparked and raised until the guest is slow enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_ladder -- --ignored --nocapture"]
async fn ladder_auto_throttles_a_busy_guest_into_convergence() -> Result<()> {
    let (p, mut ladder) = boot_and_ladder(Converge::Auto, false).await?;
    p.start(None).await?;
    let log = drive(&p, &mut ladder, None, false).await?;
    let end = finished(&p.src.qmp, Duration::from_secs(5)).await?;
    p.dst.verify(0, 2, Duration::from_secs(60)).await?;
    println!(
        "FIGURES ladder auto: completed in {} ms, downtime {} ms, {} passes, at {}; {}\n  {}",
        end.total_time.unwrap_or(0),
        end.downtime.unwrap_or(0),
        end.passes(),
        ladder.rung(),
        load(),
        log.join("\n  ")
    );
    assert!(log.iter().any(|l| l.contains("downtime limit 300 ms")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("throttling the guest")), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("cancelling")), "{log:?}");
    Ok(())
}

/// converge=postcopy over TLS (single stream + preempt, as the setup decides): the limit
/// climbs, then post-copy; the link breaks for 2.5 s during post-copy and the ladder's
/// recovery attempts bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_ladder -- --ignored --nocapture"]
async fn ladder_postcopy_survives_a_broken_link() -> Result<()> {
    let (p, mut ladder) = boot_and_ladder(Converge::Postcopy, true).await?;
    assert_eq!(ladder.setup().multifd_channels, 0, "QEMU 10.0 cannot combine multifd and post-copy");
    p.tls().await?;
    // Slow post-copy background transfer, so the cut lands mid-way.
    p.src.qmp.migrate_set_parameters(&MigrateSetParameters { max_postcopy_bandwidth_bytes_per_s: Some(5_000_000), ..Default::default() }).await?;
    let proxy = Proxy::start().await?;
    p.start(Some(&proxy)).await?;
    let link = Link { proxy, down_until: None };
    let log = drive(&p, &mut ladder, Some(link), true).await?;
    let end = finished(&p.src.qmp, Duration::from_secs(5)).await?;
    p.dst.verify(0, 2, Duration::from_secs(60)).await?;
    println!(
        "FIGURES ladder postcopy: completed in {} ms, {} passes, {} MB post-copy, at {}; {}\n  {}",
        end.total_time.unwrap_or(0),
        end.passes(),
        end.ram.as_ref().and_then(|r| r.postcopy_bytes).unwrap_or(0) / 1_000_000,
        ladder.rung(),
        load(),
        log.join("\n  ")
    );
    assert!(log.iter().any(|l| l.contains("switching to post-copy")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("recovering post-copy")), "{log:?}");
    Ok(())
}
