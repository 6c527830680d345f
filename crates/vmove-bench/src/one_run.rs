//! One run of one contender in one cell: boot the guest, wait until it is ready, measure
//! its dirty rate, start the probes, migrate, probe on, check the guest, clean up.
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::contenders::{self, Ctx, GuestPlan};
use crate::model::{CellSpec, Contender, RunResult};
use crate::{parse, probes, stats};

fn guest_plan(cell: &CellSpec, c: Contender, n: u32) -> GuestPlan {
    let short = match c {
        Contender::Vmove => "bv",
        Contender::Qemu => "bq",
        Contender::Virsh => "bl",
        Contender::VirshTunnelled => "bt",
        Contender::Control => "bc",
    };
    GuestPlan {
        name: format!("{short}-{n}"),
        n,
        ip: Ipv4Addr::new(192, 0, 2, (10 + (n - 1) % 240) as u8),
        mac: format!("52:54:00:b1:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
        memory_mib: cell.memory_mib,
        dirty_mb_s: cell.dirty_mb_s,
        wss_mib: cell.wss_mib,
    }
}

async fn http_page(ns: &str, addr: SocketAddr) -> Result<String> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || probes::http_get(&ns, addr, Duration::from_secs(2))).await?
}

/// Boots, settles, probes, migrates, probes on, cleans up.
pub(crate) async fn run_one(ctx: &Ctx<'_>, cell: &CellSpec, c: Contender, run: u32, n: u32) -> RunResult {
    let g = guest_plan(cell, c, n);
    let mut r = RunResult::new(cell.id(), c, run, g.name.clone(), cell.memory_mib << 20);
    ctx.env.flush_client_neighbours();
    let mut running = match contenders::boot(ctx, c, &g).await {
        Ok(x) => x,
        Err(e) => {
            r.error = Some(format!("boot: {e:#}"));
            // Whatever got half-made goes.
            contenders::cleanup(ctx, c, &g, contenders::Running::Libvirt).await;
            return r;
        }
    };
    if let Err(e) = measure(ctx, cell, c, &g, &mut running, &mut r).await {
        r.error = Some(match r.error.take() {
            Some(prev) => format!("{prev}; {e:#}"),
            None => format!("{e:#}"),
        });
    }
    contenders::cleanup(ctx, c, &g, running).await;
    r
}

async fn measure(ctx: &Ctx<'_>, cell: &CellSpec, c: Contender, g: &GuestPlan, running: &mut contenders::Running, r: &mut RunResult) -> Result<()> {
    let client = ctx.env.client_ns.clone();
    let http = SocketAddr::from((g.ip, 80));
    let echo = SocketAddr::from((g.ip, 7));
    // Ready: it serves HTTP and has verified its working set once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(page) = http_page(&client, http).await {
            if parse::status_field(&page, "verify_sweeps").unwrap_or(0) >= 1 {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the guest did not become ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The dirty rate it achieves.
    let p1 = http_page(&client, http).await.ok().and_then(|p| parse::status_field(&p, "pages_dirtied"));
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p2 = http_page(&client, http).await.ok().and_then(|p| parse::status_field(&p, "pages_dirtied"));
    if let (Some(a), Some(b)) = (p1, p2) {
        r.dirty_rate_mb_s = Some(b.saturating_sub(a) as f64 * 4096.0 / t1.elapsed().as_secs_f64() / 1e6);
    }
    // Probes.
    let udp = probes::UdpStream::start(&client, echo)?;
    let tcp = match probes::TcpEcho::start(&client, echo) {
        Ok(s) => Some(s),
        Err(e) => {
            r.notes.push(format!("no TCP session: {e:#}"));
            None
        }
    };
    let load = if cell.http_load { Some(probes::HttpLoad::start(&client, http, Duration::from_millis(20))?) } else { None };
    tokio::time::sleep(Duration::from_secs(1)).await;
    if udp.received() == 0 {
        r.notes.push("no UDP echo before the migration".into());
    }
    let t_mig = Instant::now();
    let out = contenders::migrate(ctx, c, g, running).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_end = Instant::now();
    let u = tokio::task::spawn_blocking(move || udp.stop()).await?;
    let t = match tcp {
        Some(s) => Some(tokio::task::spawn_blocking(move || s.stop()).await?),
        None => None,
    };
    let h = match load {
        Some(l) => Some(tokio::task::spawn_blocking(move || l.stop()).await?),
        None => None,
    };
    r.outage.udp_sent = u.sent;
    r.outage.udp_received = u.at_ms.len() as u64;
    r.outage.udp_longest_gap_ms = (!u.at_ms.is_empty()).then(|| stats::longest_gap(&u.at_ms, u.ms(t_mig), u.ms(t_end)));
    r.outage.udp_gaps = stats::gaps(&u.at_ms, u.ms(t_mig), u.ms(t_end), 20);
    if let Some((t, err)) = t {
        r.outage.tcp_longest_stall_ms = (!t.at_ms.is_empty()).then(|| stats::longest_gap(&t.at_ms, t.ms(t_mig), t.ms(t_end)));
        r.outage.tcp_error = err;
    }
    if let Some(h) = h {
        r.outage.http_ok = h.at_ms.len() as u64;
        r.outage.http_failed = h.failed;
        r.outage.http_longest_gap_ms = (!h.at_ms.is_empty()).then(|| stats::longest_gap(&h.at_ms, h.ms(t_mig), h.ms(t_end)));
        r.outage.http_gaps = stats::gaps(&h.at_ms, h.ms(t_mig), h.ms(t_end), 200);
    }
    r.converged = out.converged;
    r.error = out.error;
    r.total_ms = out.total_ms;
    r.qemu_total_ms = out.qemu_total_ms;
    r.downtime_ms = out.downtime_ms;
    r.transferred_bytes = out.transferred_bytes;
    r.touched_bytes = out.touched_bytes;
    r.passes = out.passes;
    r.samples = out.samples;
    r.notes.extend(out.notes);
    // Does it still answer (on the target, or on the source if it stayed)?
    let deadline = Instant::now() + Duration::from_secs(10);
    r.answers_after = loop {
        if vmove_lab::probe::tcp_echo(&client, echo, b"vmove-bench").await.is_ok() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = contenders::console(ctx, c, g).await;
    r.verify_ok = log.lines().filter(|l| l.starts_with("VERIFY OK")).count() as u64;
    r.damage = parse::damage(&log);
    if r.damage.is_some() || !r.answers_after {
        let _ = std::fs::create_dir_all(&ctx.consoles);
        let _ = std::fs::write(ctx.consoles.join(format!("{}.log", g.name)), &log);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Workload;

    #[test]
    fn guest_plans_are_unique_and_valid() {
        let cell = CellSpec::raw(512, Workload::Idle, 0, 1.0);
        let a = guest_plan(&cell, Contender::Vmove, 1);
        let b = guest_plan(&cell, Contender::Qemu, 300);
        assert_eq!(a.name, "bv-1");
        assert_eq!(a.ip, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(a.mac, "52:54:00:b1:00:01");
        assert_eq!(b.mac, "52:54:00:b1:01:2c");
        assert!((10..250).contains(&b.ip.octets()[3]));
        assert!(format!("bq{}d", 99_999).len() < 16, "tap names fit IFNAMSIZ");
    }
}
