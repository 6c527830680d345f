//! Experiments: what QEMU 10 does with the means of convergence, two real QEMUs on
//! 127.0.0.1 migrating the lab guest under TCG. The findings (with figures) are in
//! docs/DESIGN.md, "Convergence: what QEMU 10 does"; post-copy recovery is in
//! `converge_postcopy.rs`. Not part of the default suite (minutes each); run as root after
//! `cargo build`:
//!
//! ```sh
//! nice -n 5 cargo test -p vmove --test converge_qemu -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Every test asserts the behaviour vmove relies on and prints its figures with the load
//! average (figures vary with the machine's load).

#[path = "converge_qemu/harness.rs"]
mod harness;

use anyhow::{bail, Result};
use harness::{finished, line, load, named, wait_for, Guest, Pair};
use std::time::{Duration, Instant};
use vmove_qmp::{MigrateSetParameters, MigrationCapability as C, MigrationStatus};

/// Dirties its 128 MiB working set at 200 MB/s: never converges over a 40 MB/s link.
const BUSY: Guest = Guest { memory_mib: 512, dirty_mb_s: 200, wss_mib: 128 };
/// The link, played by `max-bandwidth`.
const LINK_BYTES_PER_S: u64 = 40_000_000;
const UNLIMITED: u64 = 1 << 40;

fn src_params(downtime_ms: u64, bandwidth: u64) -> MigrateSetParameters {
    MigrateSetParameters { downtime_limit_ms: Some(downtime_ms), max_bandwidth_bytes_per_s: Some(bandwidth), ..Default::default() }
}

/// Auto-converge parked at 1 % from the start (capabilities are fixed once `migrate`
/// runs), unparked at runtime with `migrate-set-parameters`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_qemu -- --ignored --nocapture"]
async fn throttle_parked_then_unparked() -> Result<()> {
    let p = Pair::boot(BUSY).await?;
    println!("throttle: {BUSY:?} over {LINK_BYTES_PER_S} B/s; {}", load());
    p.caps(&[("events", true)]).await?;
    p.src.qmp.migrate_set_capabilities(&named(&[("auto-converge", true)])).await?;
    let parked = MigrateSetParameters {
        cpu_throttle_initial_pct: Some(1),
        cpu_throttle_increment_pct: Some(1),
        max_cpu_throttle_pct: Some(1),
        cpu_throttle_tailslow: Some(false),
        ..src_params(300, LINK_BYTES_PER_S)
    };
    p.src.qmp.migrate_set_parameters(&parked).await?;
    p.start(None).await?;
    let t0 = Instant::now();
    let (mut last_pass, mut parked_max, mut unparked_at) = (0, 0, None::<(u64, u64)>);
    let mut after: Vec<(u64, u64, u64)> = Vec::new();
    let end = loop {
        let i = p.src.qmp.query_migrate().await?;
        if i.status_or_none().is_finished() {
            break i;
        }
        let thr = i.cpu_throttle_percentage.unwrap_or(0);
        if i.passes() != last_pass {
            last_pass = i.passes();
            println!("{}", line(t0, &i));
            match unparked_at {
                None => parked_max = parked_max.max(thr),
                Some(_) => after.push((i.passes(), thr, i.dirty_rate_bytes_per_s())),
            }
        }
        if unparked_at.is_none() && i.passes() >= 7 {
            p.src
                .qmp
                .migrate_set_parameters(&MigrateSetParameters {
                    cpu_throttle_increment_pct: Some(20),
                    max_cpu_throttle_pct: Some(99),
                    ..Default::default()
                })
                .await?;
            println!("UNPARKED at pass {} ({:.1} s): increment 20, max 99", i.passes(), t0.elapsed().as_secs_f64());
            unparked_at = Some((i.passes(), i.dirty_rate_bytes_per_s()));
        }
        if t0.elapsed() > Duration::from_secs(240) {
            bail!("no convergence within 240 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let end = if end.status_or_none() == MigrationStatus::Completed { finished(&p.src.qmp, Duration::from_secs(5)).await? } else { end };
    println!("{}", line(t0, &end));
    let (u_pass, u_dirty) = unparked_at.unwrap_or_default();
    let max_after = after.iter().map(|a| a.1).max().unwrap_or(0);
    let min_dirty = after.iter().map(|a| a.2).min().unwrap_or(u64::MAX);
    println!(
        "FIGURES throttle: parked max {parked_max} %; unparked at pass {u_pass} with {:.1} MB/s dirtied; throttle per pass {:?}; lowest dirty rate {:.1} MB/s; {} after {} ms, downtime {} ms, {} passes; {}",
        u_dirty as f64 / 1e6,
        after.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>(),
        min_dirty as f64 / 1e6,
        end.status_or_none(),
        end.total_time.unwrap_or(0),
        end.downtime.unwrap_or(0),
        end.passes(),
        load()
    );
    assert!(parked_max <= 1, "parked throttle rose to {parked_max} %");
    assert!(max_after >= 41, "unparked throttle only reached {max_after} %");
    assert_eq!(end.status_or_none(), MigrationStatus::Completed);
    assert!(min_dirty * 2 < u_dirty, "dirty rate did not fall: {min_dirty} vs {u_dirty}");
    p.dst.verify(0, 2, Duration::from_secs(60)).await?;
    Ok(())
}

/// dirty-limit: refused under TCG with QEMU's reason; with KVM and a dirty ring QEMU
/// accepts it (this machine's KVM cannot run the lab guest, so nothing is measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_qemu -- --ignored --nocapture"]
async fn dirty_limit_needs_kvm_with_a_dirty_ring() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for accel in ["tcg", "kvm", "kvm,dirty-ring-size=4096"] {
        if accel.starts_with("kvm") && !std::path::Path::new("/dev/kvm").exists() {
            println!("{accel}: no /dev/kvm");
            continue;
        }
        let sock = tmp.path().join(format!("{}.qmp", accel.len()));
        let mut child = std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "pc", "-accel", accel, "-S", "-nodefaults", "-display", "none", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let r = async {
            let q = vmove_qmp::Qmp::connect_retry(&sock, Duration::from_secs(20)).await?;
            let refused = q.refused_capabilities(&[(C::DirtyLimit, true)]).await?;
            let with_ac = q.refused_capabilities(&[(C::DirtyLimit, true), (C::AutoConverge, true)]).await?;
            let set = q.execute("set-vcpu-dirty-limit", Some(serde_json::json!({"dirty-rate": 10}))).await;
            anyhow::Ok((refused, with_ac, set.map(drop).map_err(|e| e.to_string())))
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let (refused, with_ac, set) = r?;
        println!("FIGURES dirty-limit {accel}: capability {refused:?}; with auto-converge {with_ac:?}; set-vcpu-dirty-limit {set:?}");
        if accel == "tcg" || accel == "kvm" {
            assert!(refused.unwrap_or_default().contains("dirty-ring-size"), "{accel}");
        } else {
            assert_eq!(refused, None);
            assert!(with_ac.unwrap_or_default().contains("conflicts with auto-converge"));
        }
    }
    Ok(())
}

/// One post-copy migration: pre-copy over the capped link until pass 3, then
/// `migrate-start-postcopy`; the figures of the post-copy phase.
async fn postcopy_once(name: &str, tls: bool, preempt: bool) -> Result<String> {
    let p = Pair::boot(BUSY).await?;
    let l = load();
    p.caps(&[("events", true), ("postcopy-ram", true), ("postcopy-preempt", preempt)]).await?;
    if tls {
        p.tls().await?;
    }
    p.src.qmp.migrate_set_parameters(&MigrateSetParameters { max_postcopy_bandwidth_bytes_per_s: Some(0), ..src_params(300, LINK_BYTES_PER_S) }).await?;
    p.start(None).await?;
    let t0 = Instant::now();
    wait_for(&p.src.qmp, "pass 3", Duration::from_secs(120), |i| i.passes() >= 3).await?;
    let before = p.dst.verified();
    let tp = Instant::now();
    p.src.qmp.migrate_start_postcopy().await?;
    let active = wait_for(&p.src.qmp, "postcopy-active", Duration::from_secs(30), |i| i.status_or_none() != MigrationStatus::Active).await?;
    let to_active = tp.elapsed();
    println!("{}", line(t0, &active));
    let end = finished(&p.src.qmp, Duration::from_secs(120)).await?;
    let phase = tp.elapsed();
    println!("{}", line(t0, &end));
    let running = p.dst.qmp.query_status().await?.running;
    let ram = end.ram.clone().unwrap_or_default();
    p.dst.verify(before, 2, Duration::from_secs(60)).await?;
    assert!(running, "{name}: target not running");
    Ok(format!(
        "{name:12} start→postcopy-active {:4} ms, post-copy phase {:5} ms, {} MB pre-copy + {} MB post-copy, {} page requests, QEMU downtime {} ms, total {} ms, {l}",
        to_active.as_millis(),
        phase.as_millis(),
        ram.precopy_bytes.unwrap_or(0) / 1_000_000,
        ram.postcopy_bytes.unwrap_or(0) / 1_000_000,
        ram.postcopy_requests.unwrap_or(0),
        end.downtime.unwrap_or(0),
        end.total_time.unwrap_or(0),
    ))
}

/// Which post-copy combinations QEMU 10.0 accepts, and post-copy itself with each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_qemu -- --ignored --nocapture"]
async fn postcopy_combinations_and_runs() -> Result<()> {
    let p = Pair::boot(Guest { dirty_mb_s: 0, ..BUSY }).await?;
    for combo in [
        vec![C::PostcopyRam, C::Multifd],
        vec![C::PostcopyRam, C::PostcopyPreempt, C::Multifd],
        vec![C::PostcopyPreempt],
        vec![C::PostcopyRam, C::PostcopyPreempt],
        vec![C::PostcopyRam, C::AutoConverge],
        vec![C::PostcopyRam, C::ReturnPath, C::SwitchoverAck],
        vec![C::SwitchoverAck],
    ] {
        let caps: Vec<(C, bool)> = combo.iter().map(|c| (c.clone(), true)).collect();
        let r = p.dst.qmp.refused_capabilities(&caps).await?;
        println!("FIGURES combination {:?}: {}", combo.iter().map(C::as_str).collect::<Vec<_>>(), r.as_deref().unwrap_or("accepted"));
    }
    let v = p.src.qmp.query_version().await?;
    if v.triple() < (10, 1, 0) {
        assert!(p.src.qmp.refused_capabilities(&[(C::PostcopyRam, true), (C::Multifd, true)]).await?.is_some());
    }
    drop(p);
    let mut lines = Vec::new();
    for (name, tls, preempt) in [("plain", false, false), ("preempt", false, true), ("tls", true, false), ("tls+preempt", true, true)] {
        lines.push(postcopy_once(name, tls, preempt).await?);
    }
    for l in lines {
        println!("FIGURES postcopy {l}");
    }
    Ok(())
}

/// `downtime-limit` changed during pre-copy: 100 → 200 → 300 → 600 ms every 8 s for a
/// guest whose dirty set needs about 420 ms at the link's rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_qemu -- --ignored --nocapture"]
async fn downtime_limit_at_runtime() -> Result<()> {
    let p = Pair::boot(Guest { wss_mib: 16, ..BUSY }).await?;
    println!("downtime ladder; {}", load());
    p.caps(&[("events", true)]).await?;
    let ladder = [100u64, 200, 300, 600];
    p.src.qmp.migrate_set_parameters(&src_params(ladder[0], LINK_BYTES_PER_S)).await?;
    p.start(None).await?;
    let t0 = Instant::now();
    let (mut k, mut step_at, mut seen) = (0usize, Instant::now(), Vec::new());
    let mut set_at = Instant::now();
    let end = loop {
        let i = p.src.qmp.query_migrate().await?;
        if i.status_or_none().is_finished() {
            break i;
        }
        if i.passes() >= 3 {
            seen.push((ladder[k], i.expected_downtime.unwrap_or(0)));
        }
        if step_at.elapsed() > Duration::from_secs(8) && k + 1 < ladder.len() {
            k += 1;
            step_at = Instant::now();
            set_at = Instant::now();
            p.src.qmp.migrate_set_parameters(&MigrateSetParameters { downtime_limit_ms: Some(ladder[k]), ..Default::default() }).await?;
            println!("{} -> downtime-limit {} ms", line(t0, &i), ladder[k]);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("no convergence within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after_set = set_at.elapsed();
    let end = if end.status_or_none() == MigrationStatus::Completed { finished(&p.src.qmp, Duration::from_secs(5)).await? } else { end };
    println!("{}", line(t0, &end));
    for lim in ladder {
        let e: Vec<u64> = seen.iter().filter(|s| s.0 == lim).map(|s| s.1).collect();
        let (lo, hi) = (e.iter().min().copied().unwrap_or(0), e.iter().max().copied().unwrap_or(0));
        println!("FIGURES downtime-limit {lim} ms: expected-downtime {lo}-{hi} ms over {} samples", e.len());
    }
    println!(
        "FIGURES downtime at runtime: {} at limit {} ms, {} ms after setting it; downtime {} ms, {} MB sent while paused, {} passes, total {} ms; {}",
        end.status_or_none(),
        ladder[k],
        after_set.as_millis(),
        end.downtime.unwrap_or(0),
        end.ram.as_ref().and_then(|r| r.downtime_bytes).unwrap_or(0) / 1_000_000,
        end.passes(),
        end.total_time.unwrap_or(0),
        load()
    );
    assert_eq!(end.status_or_none(), MigrationStatus::Completed);
    assert!(ladder[k] >= 300, "converged already at {} ms", ladder[k]);
    p.dst.verify(0, 2, Duration::from_secs(60)).await?;
    Ok(())
}

/// A configuration of `stream_options`: name, extra capabilities, TLS, multifd channels.
type StreamConfig = (&'static str, &'static [(&'static str, bool)], bool, u64);
/// Total ms, downtime ms and rate (Mbit/s) of one migration.
type Figures = (u64, u64, f64);

/// One quick migration (unlimited bandwidth) with these capabilities and streams.
async fn once(caps: &[(&str, bool)], tls: bool, multifd: u64) -> Result<Figures> {
    let p = Pair::boot(Guest { dirty_mb_s: 20, wss_mib: 64, memory_mib: 512 }).await?;
    p.caps(&[&[("events", true), ("multifd", multifd > 0)], caps].concat()).await?;
    if tls {
        p.tls().await?;
    }
    for q in [&p.src.qmp, &p.dst.qmp] {
        if multifd > 0 {
            q.migrate_set_parameters(&MigrateSetParameters { multifd_channels: Some(multifd), ..Default::default() }).await?;
        }
    }
    p.src.qmp.migrate_set_parameters(&src_params(300, UNLIMITED)).await?;
    p.start(None).await?;
    let end = finished(&p.src.qmp, Duration::from_secs(120)).await?;
    p.dst.verify(0, 1, Duration::from_secs(60)).await?;
    Ok((end.total_time.unwrap_or(0), end.downtime.unwrap_or(0), end.ram.and_then(|r| r.mbps).unwrap_or(0.0)))
}

/// return-path and switchover-ack on a plain guest; TLS single stream vs multifd vs a
/// single stream with post-copy enabled (what choosing post-copy costs pre-copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_qemu -- --ignored --nocapture"]
async fn stream_options() -> Result<()> {
    let configs: [StreamConfig; 6] = [
        ("plain", &[], false, 0),
        ("return-path", &[("return-path", true)], false, 0),
        ("rp+switchover-ack", &[("return-path", true), ("switchover-ack", true)], false, 0),
        ("tls single", &[], true, 0),
        ("tls multifd 2", &[], true, 2),
        ("tls postcopy+preempt", &[("postcopy-ram", true), ("postcopy-preempt", true)], true, 0),
    ];
    let mut results: Vec<(&str, Vec<Figures>, String)> = configs.iter().map(|c| (c.0, Vec::new(), String::new())).collect();
    for _run in 0..3 {
        for (k, (_, caps, tls, multifd)) in configs.iter().enumerate() {
            let r = once(caps, *tls, *multifd).await?;
            results[k].1.push(r);
            results[k].2 = load();
        }
    }
    for (name, runs, l) in results {
        let mut t: Vec<u64> = runs.iter().map(|r| r.0).collect();
        let mut d: Vec<u64> = runs.iter().map(|r| r.1).collect();
        let mut m: Vec<u64> = runs.iter().map(|r| r.2 as u64).collect();
        t.sort_unstable();
        d.sort_unstable();
        m.sort_unstable();
        println!("FIGURES {name:22} total {t:?} ms (median {}), downtime {d:?} ms (median {}), rate {m:?} Mbit/s; {l}", t[1], d[1]);
    }
    Ok(())
}
