//! One run of one contender in one cell: boot the guest, wait until it is ready, measure
//! its dirty rate, start the probes, migrate, probe on, check the guest, clean up.
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::contenders::{self, Ctx, GuestPlan};
use crate::model::{CellSpec, Contender, RunResult};
use crate::wire::{self, TapWatch};
use crate::{parse, probes, stats};

/// How long after the migration command ends the probes go on.
const AFTER: Duration = Duration::from_secs(2);
/// UDP requests sent in the last this-many ms of the window are not counted as lost or not
/// (their echo may still be on its way when the probe stops).
const LATE_MS: u64 = 300;
/// The switchover's UDP window reaches this far before the guest's last frame on the source
/// and after its first answer on the target.
const SWITCH_MARGIN_MS: u64 = 50;

fn guest_plan(cell: &CellSpec, c: Contender, n: u32) -> GuestPlan {
    let short = match c {
        Contender::Vmove => "bv",
        Contender::Qemu => "bq",
        Contender::Virsh => "bl",
        Contender::VirshTunnelled => "bt",
        Contender::VirshBest => "bb",
        Contender::Control => "bc",
        Contender::VirshCopyStorage => "bs",
    };
    GuestPlan {
        name: format!("{short}-{n}"),
        n,
        ip: Ipv4Addr::new(192, 0, 2, (10 + (n - 1) % 240) as u8),
        mac: format!("52:54:00:b1:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
        memory_mib: cell.memory_mib,
        dirty_mb_s: cell.dirty_mb_s,
        wss_mib: cell.wss_mib,
        disk_mib: cell.disk_mib,
        disk_mb_s: cell.disk_write_mb_s,
    }
}

/// Whether the guest's status page says it is ready: it has verified its working set once
/// and, with a data disk, written a record of its disk log.
pub(crate) fn ready(page: &str, disk: bool) -> bool {
    parse::status_field(page, "verify_sweeps").unwrap_or(0) >= 1 && (!disk || parse::status_field(page, "disk_records").unwrap_or(0) >= 1)
}

pub(crate) async fn http_page(ns: &str, addr: SocketAddr) -> Result<String> {
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
    // Ready: it serves HTTP and has verified its working set once (and written its disk log).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_page = String::new();
    loop {
        if let Ok(page) = http_page(&client, http).await {
            if ready(&page, g.disk_mib.is_some()) {
                break;
            }
            last_page = page;
        }
        if Instant::now() > deadline {
            let disk = parse::status_text(&last_page, "disk_records").unwrap_or_else(|| "unknown".into());
            bail!("the guest did not become ready within 120 s (disk records: {disk})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The dirty rate it achieves (and what its data writer writes).
    let page1 = http_page(&client, http).await.ok();
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let page2 = http_page(&client, http).await.ok();
    let field = |p: &Option<String>, f: &str| p.as_deref().and_then(|p| parse::status_field(p, f));
    let secs = t1.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (field(&page1, "pages_dirtied"), field(&page2, "pages_dirtied")) {
        r.dirty_rate_mb_s = Some(b.saturating_sub(a) as f64 * 4096.0 / secs / 1e6);
    }
    if cell.disk_write_mb_s > 0 {
        if let (Some(a), Some(b)) = (field(&page1, "disk_written_bytes"), field(&page2, "disk_written_bytes")) {
            r.disk_write_mb_s = Some(b.saturating_sub(a) as f64 / secs / 1e6);
        }
    }
    // vmove's prediction, as its precheck prints it.
    if c == Contender::Vmove {
        match contenders::precheck(ctx, g).await {
            Ok(p) => r.prediction = Some(p),
            Err(e) => r.notes.push(format!("no prediction: {e:#}")),
        }
    }
    // The disk-log records written so far: on host2's copy after the move.
    let records_before = match g.disk_mib {
        Some(_) => http_page(&client, http).await.ok().and_then(|p| parse::status_field(&p, "disk_records")),
        None => None,
    };
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
    // The wire: the guest's tap in each host namespace.
    let mut watches = Vec::new();
    if let Some((src_tap, dst_tap)) = contenders::taps(c, g) {
        for (ns, tap) in [(&ctx.env.host_ns[0], src_tap), (&ctx.env.host_ns[1], dst_tap)] {
            match TapWatch::start(ns, &tap) {
                Ok(w) => watches.push(w),
                Err(e) => r.notes.push(format!("no frame watch on {tap} in {ns}: {e:#}")),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if udp.received() == 0 {
        r.notes.push("no UDP echo before the migration".into());
    }
    let tx_before = link_tx(ctx, c, r);
    let t_mig = Instant::now();
    let out = contenders::migrate(ctx, c, g, running).await;
    if let (Some(a), Some(b)) = (tx_before, link_tx(ctx, c, r)) {
        r.link_bytes = Some(b.saturating_sub(a));
    }
    tokio::time::sleep(AFTER).await;
    let t_end = Instant::now();
    let u = tokio::task::spawn_blocking(move || udp.stop()).await?;
    let frames = tokio::task::spawn_blocking(move || watches.into_iter().map(TapWatch::stop).collect::<Vec<_>>()).await?;
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
    let (in_window, lost) = stats::lost(&u.sent_at_ms, &u.echoed, u.ms(t_mig), u.ms(t_end).saturating_sub(LATE_MS));
    r.outage.udp_window_sent = in_window;
    r.outage.udp_lost = (in_window > 0).then_some(lost);
    if let Some((t, err, retrans)) = t {
        r.outage.tcp_longest_stall_ms = (!t.at_ms.is_empty()).then(|| stats::longest_gap(&t.at_ms, t.ms(t_mig), t.ms(t_end)));
        r.outage.tcp_error = err;
        r.outage.tcp_retransmits = retrans;
    }
    if let Some(h) = h {
        r.outage.http_ok = h.at_ms.len() as u64;
        r.outage.http_failed = h.failed;
        r.outage.http_longest_gap_ms = (!h.at_ms.is_empty()).then(|| stats::longest_gap(&h.at_ms, h.ms(t_mig), h.ms(t_end)));
        r.outage.http_gaps = stats::gaps(&h.at_ms, h.ms(t_mig), h.ms(t_end), 200);
    }
    if let [(src_tap, src), (dst_tap, dst)] = &frames[..] {
        let sw = wire::switchover(src, dst);
        r.wire = crate::model::Wire {
            src_tap: Some(src_tap.clone()),
            dst_tap: Some(dst_tap.clone()),
            src_frames: src.len() as u64,
            dst_frames: dst.len() as u64,
            src_last_frame_us: sw.src_last_us,
            dst_first_frame_us: sw.dst_first_us,
            dst_rarp_us: sw.dst_rarp_us,
            dst_resumed_us: out.resumed_us,
        };
    }
    r.converged = out.converged;
    r.error = out.error;
    r.command_ms = out.total_ms;
    // Total: the command's start to the guest answering on the target — the first UDP echo
    // after the guest's first frame on the target tap.
    if out.converged {
        r.total_ms = match r.wire.dst_first_frame_us {
            Some(first) => stats::first_at_or_after(&u.at_ms, u.ms_of_unix(first)).map(|a| a.saturating_sub(u.ms(t_mig))),
            None => None,
        };
        if r.total_ms.is_none() && c.migrates() {
            r.notes.push("total unknown: no frame from the guest on the target tap, or no UDP echo after it".into());
        }
    }
    if !c.migrates() {
        r.total_ms = None;
    }
    // Lost at the switchover: requests sent from just before the guest's last frame on the
    // source to just after its first answer on the target.
    if let (Some(last), Some(first)) = (r.wire.src_last_frame_us, r.wire.dst_first_frame_us) {
        let late = u.ms(t_end).saturating_sub(LATE_MS);
        let from = u.ms_of_unix(last).saturating_sub(SWITCH_MARGIN_MS);
        let answered = stats::first_at_or_after(&u.at_ms, u.ms_of_unix(first)).unwrap_or(late);
        let (n, lost) = stats::lost(&u.sent_at_ms, &u.echoed, from, (answered + SWITCH_MARGIN_MS).min(late));
        r.outage.udp_lost_switchover = (n > 0).then_some(lost);
    }
    r.qemu_total_ms = out.qemu_total_ms;
    r.downtime_ms = out.downtime_ms;
    r.transferred_bytes = out.transferred_bytes;
    r.disk_bytes = out.disk_bytes;
    r.disk_copy_ms = out.disk_copy_ms;
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
    if let (true, Some(before), Some(copy)) = (r.converged, records_before, crate::disks::target_file(ctx.env, c, g)) {
        match tokio::task::block_in_place(|| crate::disks::written_sectors(&copy, before)) {
            Ok(carried) => {
                r.disk_records = Some((before, carried));
                if carried < before && r.damage.is_none() {
                    r.damage = Some(format!("DISK COPY: {carried} of the {before} disk-log records written on host1 are on host2's copy"));
                }
            }
            Err(e) => r.notes.push(format!("host2's copy of the disk not read: {e:#}")),
        }
    }
    if r.damage.is_some() || !r.answers_after {
        let _ = std::fs::create_dir_all(&ctx.consoles);
        let _ = std::fs::write(ctx.consoles.join(format!("{}.log", g.name)), &log);
    }
    Ok(())
}

/// host1's management link's byte counter, for a contender that migrates (a failure to
/// read it is a note, not a failed run).
fn link_tx(ctx: &Ctx<'_>, c: Contender, r: &mut RunResult) -> Option<u64> {
    if !c.migrates() {
        return None;
    }
    match tokio::task::block_in_place(|| ctx.env.link_tx_bytes(0)) {
        Ok(b) => Some(b),
        Err(e) => {
            r.notes.push(format!("no byte count on the migration link: {e:#}"));
            None
        }
    }
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
        assert_eq!(a.disk_mib, None);
        let disk = guest_plan(&CellSpec::raw(512, Workload::LocalDisk, 0, 1.0).with_disk(2048, 5), Contender::VirshCopyStorage, 7);
        assert_eq!((disk.name.as_str(), disk.disk_mib, disk.dirty_mb_s, disk.disk_mb_s), ("bs-7", Some(2048), 0, 5));
    }

    #[test]
    fn ready_with_and_without_a_disk() {
        let page = |sweeps: &str, disk: &str| format!("name: g\nverify_sweeps: {sweeps}\npages_dirtied: 5\ndisk_records: {disk}\n");
        assert!(ready(&page("1", "none"), false));
        assert!(!ready(&page("0", "none"), false));
        assert!(!ready(&page("1", "none"), true), "a guest that found no data disk is not ready");
        assert!(!ready(&page("1", "0"), true));
        assert!(ready(&page("2", "3"), true));
    }
}
