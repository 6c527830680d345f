//! Issue 15's drain benchmark (`vmove-bench drain`): a 3-host lab, N guests on host1,
//! drained by vmove (`vmove --json host drain host1 [--parallel P]`) and by a sequential
//! `virsh migrate --live` loop over the same kind of guests to the same targets, each
//! guest probed by the client (UDP echo) and watched on its target's tap.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::contenders::{self, virsh, vmove, Ctx, GuestPlan};
use crate::drain_cli::{self, DrainArgs, DrainPlan};
use crate::drain_model::{self as dm, DrainConfig, DrainReport, DrainRun, DrainSettings, GuestResult, VmoveDrainLine};
use crate::env::{self, Env, Libvirt};
use crate::matrix::{not_opted_in, now_rfc3339, LabGuard, LIBVIRT_OPT_IN};
use crate::model::Contender;
use crate::one_run::{http_page, ready};
use crate::probes::UdpStream;
use crate::wire::TapWatch;
use crate::{drain_report, parse};

/// The drained host and the targets (the lab's host1, host2, host3).
const HOSTS: u8 = 3;
/// How long the probes go on after the command(s) ended.
const AFTER: Duration = Duration::from_secs(2);
/// How often a frame watch looks for a target's tap until it exists (2N watches at once).
const TAP_POLL: Duration = Duration::from_millis(25);
/// How long N freshly booted guests may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(300);

/// Runs the drain benchmark that `a` asks for and writes its report.
pub(crate) async fn run(a: DrainArgs) -> Result<()> {
    let p = drain_cli::plan(&a)?;
    let bin_dir = crate::matrix::prepare(a.bin_dir.as_deref(), a.docs.as_deref(), &a.out)?;
    let t_start = Instant::now();
    let mut report = DrainReport {
        started: now_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        settings: DrainSettings {
            guests: p.guests.clone(),
            memory_mib: a.memory,
            dirty_mb_s: a.dirty_rate,
            wss_mib: a.wss,
            runs: p.runs,
            configs: p.configs.clone(),
            probe_interval_ms: a.probe_interval_ms,
            budget_s: a.budget,
        },
        ..Default::default()
    };
    report.conditions.load_before = env::loadavg();
    report.conditions.other_qemu_before = env::foreign_qemus(&Default::default());
    eprintln!(
        "bench: load {}; other QEMUs on the machine: {}",
        report.conditions.load_before,
        report.conditions.other_qemu_before.len()
    );
    let env = Env::up_hosts(&a.lab_dir, &bin_dir, HOSTS).await?;
    let mut guard = LabGuard(Some(env.dir().to_path_buf()));
    eprintln!("bench: lab {} up ({HOSTS} hosts)", env.info.name);
    let result = crate::matrix::interruptible(series(&a, &p, &env, &mut report)).await;
    if let Err(e) = &result {
        report.remarks.push(format!("The benchmark stopped early: {e:#}. The report holds the drains done until then."));
    }
    report.conditions.load_after = env::loadavg();
    report.conditions.other_qemu_after = env.foreign_qemus();
    report.duration_s = t_start.elapsed().as_secs();
    drop(env);
    guard.down();
    drain_report::write_outputs(&a.out, &report)?;
    eprintln!("bench: report in {}", a.out.display());
    println!("{}", drain_report::table(&report));
    if let Some(d) = &a.docs {
        if report.runs.is_empty() {
            eprintln!("bench: no drains, {} left as it was", d.display());
        } else {
            drain_report::write_docs(d, &report)?;
        }
    }
    result
}

async fn series(a: &DrainArgs, p: &DrainPlan, env: &Env, report: &mut DrainReport) -> Result<()> {
    let mut configs = p.configs.clone();
    let libvirt = if configs.iter().any(|c| c.is_libvirt()) {
        let opted_in = std::env::var(LIBVIRT_OPT_IN).is_ok_and(|v| v == "1");
        let started = if opted_in { tokio::task::block_in_place(|| Libvirt::start(env)) } else { Err(anyhow!("{}", not_opted_in())) };
        match started {
            Ok(lv) => Some(lv),
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!("bench: the virsh loop is left out: {why}");
                report.left_out.push((DrainConfig::VirshLoop, why));
                configs.retain(|c| !c.is_libvirt());
                None
            }
        }
    } else {
        None
    };
    report.machine = env::machine(libvirt.as_ref().map(|l| l.version.clone()));
    drain_report::write_json(&a.out, report)?;
    let ctx = Ctx { env, libvirt: libvirt.as_ref(), budget: Duration::from_secs(a.budget), consoles: a.out.join("consoles") };
    // vmove's plan for N guests, by guest position: the virsh loop's targets.
    let mut plans: HashMap<u32, Vec<String>> = HashMap::new();
    let mut n = 0u32;
    let total = p.guests.len() * p.runs as usize * configs.len();
    let mut done = 0usize;
    for &guests in &p.guests {
        for run in 1..=p.runs {
            for cfg in drain_cli::order(&configs, run) {
                let foreign = env.foreign_qemus();
                report.conditions.other_qemu_max = report.conditions.other_qemu_max.max(foreign.len());
                if !foreign.is_empty() {
                    report.conditions.runs_with_other_qemu += 1;
                }
                let r = drain_one(&ctx, a, guests, cfg, run, &mut n, &mut plans).await;
                done += 1;
                eprintln!("[{done}/{total}] {}", drain_report::line(&r));
                report.runs.push(r);
                drain_report::write_json(&a.out, report)?;
            }
        }
    }
    if libvirt.is_some() {
        report.remarks.push(
            "libvirt runs QEMU with its own command line (same binary, machine type, CPU model, memory, kernel, initrd, \
             kernel command line and virtio NIC), one libvirtd per host namespace (private mount namespaces, no cgroups, \
             no security driver); native migration names the target's address with --migrateuri."
                .to_string(),
        );
    }
    Ok(())
}

fn guest_plan(a: &DrainArgs, cfg: DrainConfig, n: u32) -> GuestPlan {
    let short = if cfg.is_libvirt() { "dl" } else { "dv" };
    GuestPlan {
        name: format!("{short}-{n}"),
        n,
        ip: Ipv4Addr::new(192, 0, 2, (10 + (n - 1) % 240) as u8),
        mac: format!("52:54:00:b2:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
        memory_mib: a.memory,
        dirty_mb_s: a.dirty_rate,
        wss_mib: a.wss,
        disk_mib: None,
        disk_mb_s: 0,
    }
}

/// The guest's tap on every host, the configuration's way.
fn tap(cfg: DrainConfig, g: &GuestPlan) -> String {
    match cfg {
        DrainConfig::Vmove { .. } => vmove_host::tap::tap_name(&g.name, 0),
        DrainConfig::VirshLoop => crate::libvirt::tap(g),
    }
}

/// `host2` → 1.
fn host_index(host: &str) -> Option<usize> {
    host.strip_prefix("host")?.parse::<usize>().ok()?.checked_sub(1)
}

/// Boots, settles, probes, drains, probes on, cleans up: one drain of host1.
async fn drain_one(
    ctx: &Ctx<'_>,
    a: &DrainArgs,
    guests: u32,
    cfg: DrainConfig,
    run: u32,
    n: &mut u32,
    plans: &mut HashMap<u32, Vec<String>>,
) -> DrainRun {
    let mut r = DrainRun::new(guests, cfg, run);
    let gs: Vec<GuestPlan> = (0..guests)
        .map(|_| {
            *n += 1;
            guest_plan(a, cfg, *n)
        })
        .collect();
    ctx.env.flush_client_neighbours();
    if let Err(e) = measure(ctx, a, cfg, &gs, plans, &mut r).await {
        r.error = Some(match r.error.take() {
            Some(prev) => format!("{prev}; {e:#}"),
            None => format!("{e:#}"),
        });
    }
    r.totals();
    cleanup(ctx, cfg, &gs, &mut r).await;
    r
}

async fn boot(ctx: &Ctx<'_>, cfg: DrainConfig, g: &GuestPlan) -> Result<()> {
    match cfg {
        DrainConfig::Vmove { .. } => contenders::boot(ctx, Contender::Vmove, g).await.map(|_| ()),
        DrainConfig::VirshLoop => crate::libvirt::boot(ctx, g).await,
    }
}

async fn measure(
    ctx: &Ctx<'_>,
    a: &DrainArgs,
    cfg: DrainConfig,
    gs: &[GuestPlan],
    plans: &mut HashMap<u32, Vec<String>>,
    r: &mut DrainRun,
) -> Result<()> {
    let client = ctx.env.client_ns.clone();
    for g in gs {
        boot(ctx, cfg, g).await.with_context(|| format!("boot {}", g.name))?;
    }
    // Ready: every guest serves HTTP and has verified its working set once.
    let deadline = Instant::now() + READY_WITHIN;
    let mut waiting: Vec<&GuestPlan> = gs.iter().collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for g in waiting {
            match http_page(&client, SocketAddr::from((g.ip, 80))).await {
                Ok(page) if ready(&page, false) => {}
                _ => still.push(g),
            }
        }
        waiting = still;
        if !waiting.is_empty() && Instant::now() > deadline {
            let names: Vec<&str> = waiting.iter().map(|g| g.name.as_str()).collect();
            bail!("guests not ready within {} s: {}", READY_WITHIN.as_secs(), names.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    r.dirty_rate_mb_s = dirty_rate(&client, gs).await;
    // The loop's targets: vmove's plan for as many guests, else alternating.
    let loop_targets = match cfg {
        DrainConfig::VirshLoop => Some(match plans.get(&r.guests) {
            Some(t) => {
                r.notes.push(format!("targets from vmove's plan: {}", t.join(" ")));
                t.clone()
            }
            None => {
                let t = dm::alternating_targets(gs.len(), &["host2", "host3"]);
                r.notes.push(format!("no vmove plan for {} guests: targets alternate, {}", r.guests, t.join(" ")));
                t
            }
        }),
        DrainConfig::Vmove { .. } => None,
    };
    // Probes: a UDP echo stream per guest, a frame watch on its tap on every target.
    let every = Duration::from_millis(a.probe_interval_ms);
    let mut udp = Vec::new();
    for g in gs {
        match UdpStream::start_every(&client, SocketAddr::from((g.ip, 7)), every) {
            Ok(u) => udp.push(u),
            Err(e) => {
                // The streams started so far stop (their threads would send on).
                tokio::task::spawn_blocking(move || udp.into_iter().for_each(|u| drop(u.stop()))).await?;
                return Err(e).with_context(|| format!("UDP probe of {}", g.name));
            }
        }
    }
    let mut watches = Vec::new();
    for g in gs {
        for h in 1..ctx.env.host_ns.len() {
            match TapWatch::start_polling(&ctx.env.host_ns[h], &tap(cfg, g), TAP_POLL) {
                Ok(w) => watches.push((g.name.clone(), h, w)),
                Err(e) => r.notes.push(format!("no frame watch for {} on host{}: {e:#}", g.name, h + 1)),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (g, u) in gs.iter().zip(&udp) {
        if u.received() == 0 {
            r.notes.push(format!("no UDP echo from {} before the drain", g.name));
        }
    }
    let t0 = Instant::now();
    let moved = match (cfg, &loop_targets) {
        (DrainConfig::Vmove { parallel }, _) => vmove_drain(ctx, parallel, gs, plans, r).await,
        (DrainConfig::VirshLoop, Some(t)) => virsh_loop(ctx, gs, t, r).await,
        (DrainConfig::VirshLoop, None) => Err(anyhow!("no targets for the loop")),
    };
    r.command_ms = Some(t0.elapsed().as_millis() as u64);
    tokio::time::sleep(AFTER).await;
    let t_end = Instant::now();
    let arrivals = tokio::task::spawn_blocking(move || udp.into_iter().map(UdpStream::stop).collect::<Vec<_>>()).await?;
    let frames = tokio::task::spawn_blocking(move || watches.into_iter().map(|(g, h, w)| (g, h, w.stop().1)).collect::<Vec<_>>()).await?;
    let mut per_guest = moved?;
    for ((g, res), u) in gs.iter().zip(per_guest.iter_mut()).zip(&arrivals) {
        let first = res.to.as_deref().and_then(host_index).and_then(|h| {
            frames.iter().find(|(name, at, _)| *name == g.name && *at == h).and_then(|(_, _, f)| f.iter().find(|x| !x.is_rarp()))
        });
        let frame_ms = first.map(|f| u.ms_of_unix(f.at_us));
        dm::client_view(res, &u.at_ms, u.ms(t0), u.ms(t_end), frame_ms);
        res.udp_sent = u.sent;
        res.udp_received = u.at_ms.len() as u64;
        if res.outcome == "moved" && res.answered_ms.is_none() {
            r.notes.push(format!("{}: no frame on its target's tap, or no UDP echo after it", g.name));
        }
    }
    r.per_guest = per_guest;
    Ok(())
}

/// The mean dirty rate the guests achieve (their status pages 2 s apart), MB/s.
async fn dirty_rate(client: &str, gs: &[GuestPlan]) -> Option<f64> {
    let mut first = Vec::new();
    for g in gs {
        first.push(http_page(client, SocketAddr::from((g.ip, 80))).await.ok().and_then(|p| parse::status_field(&p, "pages_dirtied")));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rates = Vec::new();
    for (g, a) in gs.iter().zip(first) {
        let b = http_page(client, SocketAddr::from((g.ip, 80))).await.ok().and_then(|p| parse::status_field(&p, "pages_dirtied"));
        if let (Some(a), Some(b)) = (a, b) {
            rates.push(b.saturating_sub(a) as f64 * 4096.0 / t.elapsed().as_secs_f64() / 1e6);
        }
    }
    (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
}

/// `vmove --json host drain host1 [--parallel P --per-host P]`: each guest's row of its
/// report. The per-host limit follows P so that P moves can leave host1 at once (with the
/// default per-host limit of 2, `--parallel 4` would run 2); no P: vmove's defaults.
async fn vmove_drain(
    ctx: &Ctx<'_>,
    parallel: Option<u32>,
    gs: &[GuestPlan],
    plans: &mut HashMap<u32, Vec<String>>,
    r: &mut DrainRun,
) -> Result<Vec<GuestResult>> {
    let mut args = vec!["--json".to_string(), "host".into(), "drain".into(), "host1".into()];
    if let Some(p) = parallel {
        args.extend(["--parallel".into(), p.to_string(), "--per-host".into(), p.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let contenders::Streamed { mut child, mut lines, err_task } = contenders::streamed(ctx.env, &args)?;
    let names: Vec<String> = gs.iter().map(|g| g.name.clone()).collect();
    let (mut id, mut report) = (None, None);
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            match dm::vmove_drain_line(&line) {
                Some(VmoveDrainLine::Drain(d)) => id = Some(d),
                Some(VmoveDrainLine::Plan { targets, predicted_total_s }) => {
                    r.predicted_s = Some(predicted_total_s);
                    if let Some(t) = dm::targets_by_position(&names, &targets) {
                        plans.entry(r.guests).or_insert(t);
                    }
                }
                Some(VmoveDrainLine::Report(rep)) => report = Some(rep),
                None => {}
            }
        }
    };
    if tokio::time::timeout(ctx.budget, read).await.is_err() {
        let _ = child.kill().await;
        if let Some(d) = &id {
            let _ = vmove(ctx, &["job", "cancel", d]).await;
            r.notes.push(format!("{d} cancelled after the budget"));
        }
        bail!("vmove host drain did not end within {} s", ctx.budget.as_secs());
    }
    let status = child.wait().await?;
    let err = err_task.await.unwrap_or_default();
    if let Some(d) = id {
        r.notes.push(format!("drain {d}"));
    }
    let rep = report.ok_or_else(|| anyhow!("no report from vmove host drain: {}", err.trim()))?;
    if !status.success() {
        r.error = Some(format!("vmove host drain failed: {}", err.trim()));
    }
    r.predicted_s = Some(rep.predicted_total_s);
    r.vmove_total_ms = Some(rep.actual_total_ms);
    r.max_running = Some(rep.max_running);
    Ok(gs
        .iter()
        .map(|g| match rep.rows.iter().find(|x| x.guest == g.name) {
            Some(x) => GuestResult {
                guest: g.name.clone(),
                to: x.to.clone(),
                outcome: x.outcome.clone(),
                move_ms: x.elapsed_ms,
                downtime_ms: x.downtime_ms,
                ..Default::default()
            },
            None => GuestResult { guest: g.name.clone(), outcome: "not in vmove's report".into(), ..Default::default() },
        })
        .collect())
}

/// `virsh migrate --live GUEST qemu+tcp://TARGET/system --migrateuri tcp://TARGET`, one
/// guest after the other; then each completed job's downtime from the target's libvirtd.
async fn virsh_loop(ctx: &Ctx<'_>, gs: &[GuestPlan], targets: &[String], r: &mut DrainRun) -> Result<Vec<GuestResult>> {
    let lv = crate::libvirt::libvirt(ctx)?;
    let deadline = Instant::now() + ctx.budget;
    let mut out = Vec::new();
    let mut over = false;
    for (g, to) in gs.iter().zip(targets) {
        let mut res = GuestResult { guest: g.name.clone(), to: Some(to.clone()), outcome: "not tried".into(), ..Default::default() };
        let h = host_index(to).filter(|h| *h >= 1 && *h < lv.uri.len()).ok_or_else(|| anyhow!("no target {to}"))?;
        if over {
            out.push(res);
            continue;
        }
        let args = crate::libvirt::migrate_args(Contender::Virsh, &g.name, &lv.uri[h], ctx.env.host_ip[h]);
        let t = Instant::now();
        let cmd = tokio::process::Command::new("virsh")
            .arg("-c")
            .arg(&lv.uri[0])
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), cmd).await {
            Ok(Ok(o)) if o.status.success() => res.outcome = "moved".into(),
            Ok(Ok(o)) => {
                res.outcome = "failed".into();
                r.notes.push(format!("{}: {}", g.name, String::from_utf8_lossy(&o.stderr).trim()));
            }
            Ok(Err(e)) => return Err(e).context("run virsh migrate"),
            Err(_) => {
                let _ = virsh(&lv.uri[0], &["domjobabort", &g.name]).await;
                res.outcome = "failed".into();
                r.error = Some(format!("the virsh loop did not end within {} s", ctx.budget.as_secs()));
                over = true;
            }
        }
        res.move_ms = Some(t.elapsed().as_millis() as u64);
        out.push(res);
    }
    r.max_running = Some(1);
    for (res, h) in out.iter_mut().zip(targets.iter().map(|t| host_index(t))) {
        if let (true, Some(h)) = (res.outcome == "moved", h) {
            if let Ok(text) = virsh(&lv.uri[h], &["domjobinfo", &res.guest, "--completed", "--rawstats"]).await {
                res.downtime_ms = parse::virsh_rawstats(&text).get("downtime").copied();
            }
        }
    }
    Ok(out)
}

/// Ends maintenance and removes the guests wherever they are.
async fn cleanup(ctx: &Ctx<'_>, cfg: DrainConfig, gs: &[GuestPlan], r: &mut DrainRun) {
    match cfg {
        DrainConfig::Vmove { .. } => {
            if let Err(e) = vmove(ctx, &["host", "undrain", "host1"]).await {
                r.notes.push(format!("undrain: {e:#}"));
            }
            for g in gs {
                if let Err(e) = vmove(ctx, &["guest", "destroy", &g.name]).await {
                    eprintln!("bench: cleanup of {}: {e:#}", g.name);
                }
            }
        }
        DrainConfig::VirshLoop => {
            if let Some(lv) = ctx.libvirt {
                for g in gs {
                    for u in &lv.uri {
                        let _ = virsh(u, &["destroy", &g.name]).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_and_hosts() {
        let a = DrainArgs {
            guests: vec![4],
            parallel: vec!["1".into()],
            contenders: vec!["vmove".into()],
            runs: 1,
            memory: 256,
            dirty_rate: 2,
            wss: 64,
            probe_interval_ms: 5,
            budget: 600,
            out: "x".into(),
            docs: None,
            lab_dir: "/var/tmp/bench-x".into(),
            bin_dir: None,
        };
        let v = guest_plan(&a, DrainConfig::Vmove { parallel: None }, 1);
        let l = guest_plan(&a, DrainConfig::VirshLoop, 300);
        assert_eq!((v.name.as_str(), v.ip, v.mac.as_str(), v.memory_mib), ("dv-1", Ipv4Addr::new(192, 0, 2, 10), "52:54:00:b2:00:01", 256));
        assert_eq!((l.name.as_str(), l.mac.as_str()), ("dl-300", "52:54:00:b2:01:2c"));
        assert_eq!(tap(DrainConfig::VirshLoop, &l), "bl300");
        assert_eq!(tap(DrainConfig::Vmove { parallel: Some(2) }, &v), vmove_host::tap::tap_name("dv-1", 0));
        assert_eq!((host_index("host1"), host_index("host3")), (Some(0), Some(2)));
        assert_eq!((host_index("host0"), host_index("nope"), host_index("hostx")), (None, None, None));
    }
}
