//! Experiments: post-copy when the link breaks, two real QEMU 10 processes on 127.0.0.1
//! with the lab guest under TCG, the link played by a TCP proxy that drops every
//! connection. Findings in docs/DESIGN.md, "Convergence: what QEMU 10 does". Not part of the
//! default suite (minutes); run as root after `cargo build`:
//!
//! ```sh
//! nice -n 5 cargo test -p vmove --test converge_postcopy -- --ignored --nocapture --test-threads 1
//! ```

#[path = "converge_qemu/harness.rs"]
mod harness;

use anyhow::{bail, Result};
use harness::{finished, free_port, line, load, wait_for, Guest, Pair, Proxy};
use std::time::{Duration, Instant};
use vmove_qmp::{MigrateSetParameters, MigrationInfo, MigrationStatus, QmpError};

/// Dirties its 128 MiB working set at 200 MB/s: never converges over a 40 MB/s link.
const BUSY: Guest = Guest { memory_mib: 512, dirty_mb_s: 200, wss_mib: 128 };
const LINK_BYTES_PER_S: u64 = 40_000_000;

fn paused(i: &MigrationInfo) -> bool {
    i.status_or_none().is_postcopy_paused()
}

/// Boots a pair set up for post-copy over TLS with preempt (as vmove's setup does), runs
/// pre-copy to pass 3 through a proxy, and starts post-copy.
async fn into_postcopy(tls: bool, preempt: bool) -> Result<(Pair, Proxy, Instant)> {
    let p = Pair::boot(BUSY).await?;
    p.caps(&[("events", true), ("postcopy-ram", true), ("postcopy-preempt", preempt)]).await?;
    if tls {
        p.tls().await?;
    }
    let params = MigrateSetParameters {
        downtime_limit_ms: Some(300),
        max_bandwidth_bytes_per_s: Some(LINK_BYTES_PER_S),
        // Slow background transfer, so that the link breaks with most pages missing.
        max_postcopy_bandwidth_bytes_per_s: Some(5_000_000),
        ..Default::default()
    };
    p.src.qmp.migrate_set_parameters(&params).await?;
    let proxy = Proxy::start().await?;
    p.start(Some(&proxy)).await?;
    let t0 = Instant::now();
    wait_for(&p.src.qmp, "pass 3", Duration::from_secs(120), |i| i.passes() >= 3).await?;
    p.src.qmp.migrate_start_postcopy().await?;
    Ok((p, proxy, t0))
}

/// Recovers a paused post-copy: `migrate-recover` on the target (out-of-band: the
/// harness's target connection negotiated it), retried while QEMU says it is not paused
/// yet; then `migrate` with `resume` on the source through the proxy.
async fn recover(p: &Pair, proxy: &Proxy) -> Result<Duration> {
    let port = free_port()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let t = Instant::now();
    loop {
        match p.dst.qmp.migrate_recover(&format!("tcp:127.0.0.1:{port}")).await {
            Ok(()) => break,
            Err(QmpError::Qemu { desc, .. }) if desc.contains("paused") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let via = proxy.set_target(port).await?;
    p.src.qmp.migrate_resume(&format!("tcp:127.0.0.1:{via}")).await?;
    wait_for(&p.src.qmp, "resumed", Duration::from_secs(30), |i| {
        i.status_or_none() == MigrationStatus::PostcopyActive || i.status_or_none().is_finished()
    })
    .await?;
    Ok(t.elapsed())
}

/// The link breaks once the target runs the guest: both sides pause, the guest waits on
/// the target, and recovery completes the migration. Under TCG the target's main loop can
/// be blocked (a vCPU holding the big lock waits for a missing page): its in-band QMP then
/// answers nothing, and only out-of-band `migrate-recover` gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_postcopy -- --ignored --nocapture"]
async fn link_loss_after_the_target_runs_is_recovered() -> Result<()> {
    let mut outcomes = Vec::new();
    for run in 0..3 {
        let (p, proxy, t0) = into_postcopy(true, true).await?;
        let l = load();
        wait_for(&p.dst.qmp, "target postcopy-active", Duration::from_secs(30), |i| i.status_or_none() == MigrationStatus::PostcopyActive).await?;
        let conns = proxy.cut();
        let tc = Instant::now();
        let sp = wait_for(&p.src.qmp, "source paused", Duration::from_secs(30), paused).await?;
        println!("{}", line(t0, &sp));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let inband = p.dst.qmp.execute_timeout("query-migrate", None, Duration::from_secs(3)).await;
        let wedged = matches!(inband, Err(QmpError::Timeout { .. }));
        let v0 = p.dst.verified();
        let took = recover(&p, &proxy).await?;
        let end = finished(&p.src.qmp, Duration::from_secs(180)).await?;
        let after = p.dst.qmp.execute_timeout("query-status", None, Duration::from_secs(10)).await.is_ok();
        p.dst.verify(v0, 2, Duration::from_secs(60)).await?;
        let o = format!(
            "run {run}: cut {conns} connections; target main loop {}; recovered {} ms after migrate-recover; completed {} ms after the cut; target in-band QMP afterwards {}; QEMU downtime {} ms; {l}",
            if wedged { "BLOCKED (in-band query-migrate unanswered for 3 s)" } else { "answering" },
            took.as_millis(),
            tc.elapsed().as_millis(),
            if after { "answers" } else { "still blocked" },
            end.downtime.unwrap_or(0),
        );
        println!("{o}");
        assert!(after);
        outcomes.push(o);
    }
    for o in outcomes {
        println!("FIGURES recovery {o}");
    }
    Ok(())
}

/// The link breaks at the switch itself, before the target has loaded the device state:
/// QEMU 10.0.2's target fails the incoming migration and exits, and the source, paused in
/// post-copy, refuses both `cont` and `migrate_cancel`: the guest runs nowhere. Cuts as soon
/// as the source reports `postcopy-active`; a run that misses the window recovers instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_postcopy -- --ignored --nocapture"]
async fn link_loss_at_the_switch_loses_the_guest() -> Result<()> {
    let mut hit = 0;
    for run in 0..3 {
        let (mut p, proxy, _t0) = into_postcopy(true, true).await?;
        let t = Instant::now();
        loop {
            let i = p.src.qmp.query_migrate().await?;
            if i.status_or_none() != MigrationStatus::Active {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("no switch to post-copy");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dst_before = p.dst.qmp.query_migrate().await.map(|i| i.status_or_none().to_string());
        proxy.cut();
        wait_for(&p.src.qmp, "source paused", Duration::from_secs(30), paused).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let exited = p.dst.child.try_wait()?;
        let Some(status) = exited else {
            let took = recover(&p, &proxy).await?;
            finished(&p.src.qmp, Duration::from_secs(180)).await?;
            println!("FIGURES switch-window run {run}: missed (target was {dst_before:?} at the cut, recovered in {} ms); {}", took.as_millis(), load());
            continue;
        };
        hit += 1;
        let cont = p.src.qmp.cont().await.err().map(|e| e.to_string());
        let cancel = p.src.qmp.migrate_cancel().await.err().map(|e| e.to_string());
        let st = p.src.qmp.query_status().await?;
        let v0 = p.src.verified();
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!(
            "FIGURES switch-window run {run}: target was {dst_before:?} at the cut and exited ({status}); source {:?} running={}; cont: {cont:?}; migrate_cancel: {cancel:?}; source guest printed {} VERIFY OK in 3 s; {}",
            st.status,
            st.running,
            p.src.verified() - v0,
            load()
        );
        assert!(cont.is_some() && cancel.is_some() && !st.running);
    }
    println!("FIGURES switch-window: hit in {hit} of 3 runs");
    Ok(())
}

/// `migrate-pause` on purpose, a resume to a dead port (the source stays paused with the
/// connect error), then the right one; and QEMU's refusals around post-copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "real QEMU, minutes: cargo test -p vmove --test converge_postcopy -- --ignored --nocapture"]
async fn pause_failed_resume_and_refusals() -> Result<()> {
    let p = Pair::boot(BUSY).await?;
    p.caps(&[("events", true), ("postcopy-ram", true)]).await?;
    let params = MigrateSetParameters {
        downtime_limit_ms: Some(300),
        max_bandwidth_bytes_per_s: Some(LINK_BYTES_PER_S),
        max_postcopy_bandwidth_bytes_per_s: Some(5_000_000),
        ..Default::default()
    };
    p.src.qmp.migrate_set_parameters(&params).await?;
    p.start(None).await?;
    wait_for(&p.src.qmp, "pass 3", Duration::from_secs(120), |i| i.passes() >= 3).await?;
    let e = p.src.qmp.migrate_pause().await.err().map(|e| e.to_string());
    println!("FIGURES migrate-pause during pre-copy: {e:?}");
    assert!(e.is_some());
    p.src.qmp.migrate_start_postcopy().await?;
    wait_for(&p.src.qmp, "postcopy-active", Duration::from_secs(30), |i| i.status_or_none() == MigrationStatus::PostcopyActive).await?;
    let again = p.src.qmp.migrate_start_postcopy().await.err().map(|e| e.to_string());
    let cancel = p.src.qmp.migrate_cancel().await.err().map(|e| e.to_string());
    println!("FIGURES during post-copy: migrate-start-postcopy again {again:?}; migrate_cancel {cancel:?}");
    assert!(cancel.is_some(), "QEMU cancelled a post-copy migration");
    p.dst.qmp.migrate_pause().await?;
    wait_for(&p.src.qmp, "source paused", Duration::from_secs(30), paused).await?;
    let port = free_port()?;
    p.dst.qmp.migrate_recover(&format!("tcp:127.0.0.1:{port}")).await?;
    let dst_after_recover = p.dst.qmp.query_migrate().await?.status_or_none();
    p.src.qmp.migrate_resume(&format!("tcp:127.0.0.1:{}", free_port()?)).await?;
    let failed = wait_for(&p.src.qmp, "failed resume", Duration::from_secs(30), |i| paused(i) && i.error_desc.as_deref().unwrap_or("").contains("connect")).await?;
    println!(
        "FIGURES target after migrate-recover: {dst_after_recover}; resume to a dead port: source {} ({:?})",
        failed.status_or_none(),
        failed.error_desc
    );
    p.src.qmp.migrate_resume(&format!("tcp:127.0.0.1:{port}")).await?;
    let end = finished(&p.src.qmp, Duration::from_secs(180)).await?;
    p.dst.verify(0, 2, Duration::from_secs(60)).await?;
    println!(
        "FIGURES migrate-pause on the target + failed resume + resume: completed, total {} ms, QEMU downtime {} ms (not the guest's pause); {}",
        end.total_time.unwrap_or(0),
        end.downtime.unwrap_or(0),
        load()
    );
    Ok(())
}
