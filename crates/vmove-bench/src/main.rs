//! `vmove-bench`: the migration benchmark of issue 8. Builds a two-host lab, runs a matrix
//! of guest sizes × workloads with every contender taking turns (vmove, the same QEMU
//! driven by hand with QEMU's defaults, libvirt's `virsh migrate` native and tunnelled),
//! measures what the client sees, and writes `report.md`, `report.json` and SVG plots.
//! Not part of the test suite; see README "Benchmarks".
#![warn(missing_docs)]

mod contenders;
mod env;
mod model;
mod parse;
mod plot;
mod probes;
mod report;
mod stats;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::contenders::{Ctx, GuestPlan};
use crate::env::{Env, Libvirt};
use crate::model::{CellSpec, Contender, Report, RunResult, Settings, Workload};

#[derive(Parser)]
#[command(name = "vmove-bench", about = "Migration benchmark: vmove against hand-driven QEMU defaults and libvirt, on a lab it builds", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Re-renders report.md and the plots of a report directory from its report.json.
    Render {
        /// The report directory.
        dir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Runs per cell and contender.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// A tiny matrix to develop with: 1 run, 512 MiB, idle and HTTP + 20 MB/s.
    #[arg(long)]
    quick: bool,
    /// Report directory.
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    /// Lab directory (built at the start, taken down at the end).
    #[arg(long, default_value = "/var/tmp/bench-lab")]
    lab_dir: PathBuf,
    /// Guest sizes, MiB.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = [512u64, 2048])]
    memory: Vec<u64>,
    /// Workloads: idle, http-20, near-link.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = Workload::ALL.map(|w| w.id().to_string()))]
    workloads: Vec<String>,
    /// Contenders: vmove, qemu, virsh, virsh-tunnelled, control (no migration).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = Contender::ALL.map(|c| c.id().to_string()))]
    contenders: Vec<String>,
    /// Time budget of one migration, seconds; beyond it the migration is cancelled and counts as not converged.
    #[arg(long, default_value_t = 150)]
    budget: u64,
    /// Cap of the migration link (tc tbf on both hosts' mgmt0) for the near-link workload, Mbit/s.
    #[arg(long, default_value_t = 1000)]
    link_cap_mbit: u32,
    /// Near-link dirty rate as a fraction of the capped link's measured throughput.
    #[arg(long, default_value_t = 0.9)]
    near_fraction: f64,
    /// Working set of the near-link workload, MiB.
    #[arg(long, default_value_t = 256)]
    near_wss: u32,
    /// Dirty rate of the HTTP workload, MB/s.
    #[arg(long, default_value_t = 20)]
    http_dirty: u32,
    /// Seconds of each plain TCP copy that measures a link (3 copies per link).
    #[arg(long, default_value_t = 3)]
    copy_secs: u64,
    /// Where vmove, vmoved and vmove-guest are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::Render { dir }) => render(&dir),
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(cli.run))),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmove-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Takes the lab down when dropped (normal end, error, panic).
struct LabGuard(Option<PathBuf>);

impl LabGuard {
    fn down(&mut self) {
        if let Some(dir) = self.0.take() {
            match vmove_lab::down(&dir) {
                Ok(name) => eprintln!("bench: lab {name} down"),
                Err(e) => eprintln!("bench: lab down failed: {e:#} (run `vmove lab down --dir {}`)", dir.display()),
            }
        }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        self.down();
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

struct Plan {
    runs: u32,
    memory: Vec<u64>,
    workloads: Vec<Workload>,
    contenders: Vec<Contender>,
}

fn plan(a: &RunArgs) -> Result<Plan> {
    let mut p = Plan {
        runs: a.runs,
        memory: a.memory.clone(),
        workloads: a
            .workloads
            .iter()
            .map(|w| Workload::parse(w).ok_or_else(|| anyhow!("--workloads: unknown workload {w:?}")))
            .collect::<Result<_>>()?,
        contenders: a
            .contenders
            .iter()
            .map(|c| Contender::parse(c).ok_or_else(|| anyhow!("--contenders: unknown contender {c:?}")))
            .collect::<Result<_>>()?,
    };
    if a.quick {
        p.runs = 1;
        p.memory = vec![512];
        p.workloads = vec![Workload::Idle, Workload::Http20];
    }
    if p.runs == 0 || p.memory.is_empty() || p.workloads.is_empty() || p.contenders.is_empty() {
        bail!("nothing to run");
    }
    if !(0.0..=2.0).contains(&a.near_fraction) {
        bail!("--near-fraction must be between 0 and 2");
    }
    Ok(p)
}

async fn run(a: RunArgs) -> Result<()> {
    let p = plan(&a)?;
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().map(Path::to_path_buf).ok_or_else(|| anyhow!("no binary directory"))?,
    };
    for b in ["vmove", "vmoved", "vmove-guest"] {
        if !bin_dir.join(b).is_file() {
            bail!("{} not found: run `cargo build` first (or pass --bin-dir)", bin_dir.join(b).display());
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let t_start = Instant::now();
    let mut report = Report {
        started: now_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        settings: Settings { runs: p.runs, budget_s: a.budget, near_fraction: a.near_fraction, near_wss_mib: a.near_wss, quick: a.quick },
        contenders: p.contenders.clone(),
        ..Default::default()
    };
    report.conditions.load_before = env::loadavg();
    report.conditions.other_qemu_before = env::foreign_qemus(&Default::default());
    eprintln!(
        "bench: load {}; other QEMUs on the machine: {}",
        report.conditions.load_before,
        report.conditions.other_qemu_before.len()
    );
    let env = Env::up(&a.lab_dir, &bin_dir).await?;
    let mut guard = LabGuard(Some(env.dir().to_path_buf()));
    eprintln!("bench: lab {} up", env.info.name);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = matrix(&a, &p, &env, &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C)")),
        _ = sigterm.recv() => Err(anyhow!("terminated")),
    };
    if let Err(e) = &result {
        report.remarks.push(format!("The benchmark stopped early: {e:#}. The report holds the runs done until then."));
    }
    report.conditions.load_after = env::loadavg();
    report.conditions.other_qemu_after = env.foreign_qemus();
    report.duration_s = t_start.elapsed().as_secs();
    drop(env);
    guard.down();
    write_outputs(&a.out, &report)?;
    eprintln!("bench: report in {}", a.out.display());
    result
}

fn render(dir: &Path) -> Result<()> {
    let p = dir.join("report.json");
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?)
        .with_context(|| format!("parse {}", p.display()))?;
    write_outputs(dir, &r)?;
    eprintln!("bench: rendered {}", dir.join("report.md").display());
    Ok(())
}

fn write_json(out: &Path, r: &Report) -> Result<()> {
    vmove_model::write_atomic(&out.join("report.json"), serde_json::to_string_pretty(r)?.as_bytes())?;
    Ok(())
}

fn write_outputs(out: &Path, r: &Report) -> Result<()> {
    write_json(out, r)?;
    for cell in &r.cells {
        let id = cell.id();
        let mut series = Vec::new();
        for &c in &r.contenders {
            if !c.migrates() {
                continue;
            }
            let mine: Vec<&RunResult> = r.runs.iter().filter(|x| x.cell == id && x.contender == c).collect();
            if let Some(run) = mine.iter().find(|x| x.converged).or(mine.first()) {
                let label = format!("{} (run {}{})", c.id(), run.run, if run.converged { "" } else { ", not converged" });
                series.push((c, label, run.samples.clone()));
            }
        }
        let svg = plot::remaining_svg(&format!("Remaining bytes: {}", cell.describe()), &series)?;
        std::fs::write(out.join(report::plot_file(cell)), svg)?;
    }
    std::fs::write(out.join("report.md"), report::markdown(r))?;
    Ok(())
}

/// Median of `n` plain TCP copies host1 → host2.
fn measure_link(env: &Env, secs: u64) -> Result<(Vec<f64>, f64)> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(tokio::task::block_in_place(|| env.tcp_copy(Duration::from_secs(secs)))?);
    }
    let m = stats::median(&v).ok_or_else(|| anyhow!("no link measurement"))?;
    Ok((v, m))
}

async fn matrix(a: &RunArgs, p: &Plan, env: &Env, report: &mut Report) -> Result<()> {
    let mut contenders = p.contenders.clone();
    let libvirt = if contenders.iter().any(|c| c.is_libvirt()) {
        match tokio::task::block_in_place(|| Libvirt::start(env)) {
            Ok(lv) => Some(lv),
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!("bench: libvirt contenders left out: {why}");
                for c in contenders.iter().filter(|c| c.is_libvirt()) {
                    report.left_out.push((*c, why.clone()));
                }
                contenders.retain(|c| !c.is_libvirt());
                None
            }
        }
    } else {
        None
    };
    report.contenders = contenders.clone();
    report.machine = env::machine(libvirt.as_ref().map(|l| l.version.clone()));
    let (raw_samples, raw) = measure_link(env, a.copy_secs)?;
    eprintln!("bench: raw link {:.0} MB/s", raw / 1e6);
    report.links.raw_samples = raw_samples;
    report.links.raw_bytes_per_s = raw;
    write_json(&a.out, report)?;
    let ctx = Ctx { env, libvirt: libvirt.as_ref(), budget: Duration::from_secs(a.budget), consoles: a.out.join("consoles") };

    let raw_cells: Vec<CellSpec> = p
        .workloads
        .iter()
        .filter(|w| **w != Workload::NearLink)
        .flat_map(|&w| {
            p.memory.iter().map(move |&m| CellSpec {
                memory_mib: m,
                workload: w,
                dirty_mb_s: if w == Workload::Http20 { a.http_dirty } else { 0 },
                wss_mib: 64,
                http_load: w == Workload::Http20,
                link_cap_mbit: None,
                link_bytes_per_s: raw,
            })
        })
        .collect();
    let near = p.workloads.contains(&Workload::NearLink);
    let per_cell = p.runs as usize * contenders.len();
    let total = (raw_cells.len() + if near { p.memory.len() } else { 0 }) * per_cell;
    let mut done = 0usize;
    let mut n = 0u32;
    for cell in raw_cells {
        report.cells.push(cell.clone());
        run_cell(&ctx, &cell, p.runs, &contenders, report, &a.out, &mut n, &mut done, total).await?;
    }
    if near {
        env.cap_link(a.link_cap_mbit)?;
        let (capped_samples, capped) = measure_link(env, a.copy_secs)?;
        let dirty = (capped * a.near_fraction / 1e6).round() as u32;
        eprintln!("bench: link capped at {} Mbit/s: {:.0} MB/s; near-link dirty rate {dirty} MB/s", a.link_cap_mbit, capped / 1e6);
        report.links.cap_mbit = Some(a.link_cap_mbit);
        report.links.capped_samples = capped_samples;
        report.links.capped_bytes_per_s = Some(capped);
        report.remarks.push(format!(
            "Near-link workload: the raw lab link moves {:.0} MB/s on a plain TCP copy — more than the guest's \
             dirtier can rewrite under TCG and more than any contender migrates on 2 CPUs (there the CPU, not the \
             link, is the bottleneck). So the near-link cells run on a link capped at {} Mbit/s by tc tbf on both \
             hosts' mgmt0 (every contender crosses the same cap), measured at {:.0} MB/s, and the guest dirties \
             {:.0}% of that, {dirty} MB/s, over a {} MiB working set (larger than the 300 ms downtime limit can \
             carry, so convergence takes many passes).",
            raw / 1e6,
            a.link_cap_mbit,
            capped / 1e6,
            a.near_fraction * 100.0,
            a.near_wss
        ));
        let r = async {
            for &m in &p.memory {
                let cell = CellSpec {
                    memory_mib: m,
                    workload: Workload::NearLink,
                    dirty_mb_s: dirty,
                    wss_mib: a.near_wss,
                    http_load: false,
                    link_cap_mbit: Some(a.link_cap_mbit),
                    link_bytes_per_s: capped,
                };
                report.cells.push(cell.clone());
                run_cell(&ctx, &cell, p.runs, &contenders, report, &a.out, &mut n, &mut done, total).await?;
            }
            anyhow::Ok(())
        }
        .await;
        env.uncap_link()?;
        r?;
    }
    if libvirt.is_some() {
        report.remarks.push(
            "libvirt runs QEMU with its own command line (same binary, machine type, CPU model, memory, kernel, \
             initrd, kernel command line and virtio NIC; libvirt adds its defaults). Its libvirtds run one per host \
             namespace, each in a private mount namespace with its own /etc, /run, /var/lib, /var/log and \
             /var/cache/libvirt, without cgroups, security driver or virtlogd. Native migration names the target \
             address with --migrateuri, since every namespace shares one host name."
                .to_string(),
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_cell(
    ctx: &Ctx<'_>,
    cell: &CellSpec,
    runs: u32,
    contenders: &[Contender],
    report: &mut Report,
    out: &Path,
    n: &mut u32,
    done: &mut usize,
    total: usize,
) -> Result<()> {
    for run in 1..=runs {
        let k = contenders.len();
        for i in 0..k {
            let c = contenders[(i + run as usize - 1) % k];
            let foreign = ctx.env.foreign_qemus();
            report.conditions.other_qemu_max = report.conditions.other_qemu_max.max(foreign.len());
            if !foreign.is_empty() {
                report.conditions.runs_with_other_qemu += 1;
            }
            *n += 1;
            let r = run_one(ctx, cell, c, run, *n).await;
            *done += 1;
            eprintln!("[{}/{}] {}", done, total, line(&r));
            report.runs.push(r);
            write_json(out, report)?;
        }
    }
    Ok(())
}

fn line(r: &RunResult) -> String {
    let o = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "–".into());
    format!(
        "{} run {} {}: {} total {} ms, downtime {} ms, UDP gap {} ms, TCP stall {} ms, sent {} MiB{}{}",
        r.cell,
        r.run,
        r.contender.id(),
        if r.converged { "converged" } else { "NOT converged" },
        o(r.total_ms),
        o(r.downtime_ms),
        o(r.outage.udp_longest_gap_ms),
        o(r.outage.tcp_longest_stall_ms),
        o(r.transferred_bytes.map(|b| b >> 20)),
        r.error.as_ref().map(|e| format!(" — {e}")).unwrap_or_default(),
        r.damage.as_ref().map(|d| format!(" — GUEST DAMAGED: {d}")).unwrap_or_default()
    )
}

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
async fn run_one(ctx: &Ctx<'_>, cell: &CellSpec, c: Contender, run: u32, n: u32) -> RunResult {
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

    #[test]
    fn guest_plans_are_unique_and_valid() {
        let cell = CellSpec {
            memory_mib: 512,
            workload: Workload::Idle,
            dirty_mb_s: 0,
            wss_mib: 64,
            http_load: false,
            link_cap_mbit: None,
            link_bytes_per_s: 1.0,
        };
        let a = guest_plan(&cell, Contender::Vmove, 1);
        let b = guest_plan(&cell, Contender::Qemu, 300);
        assert_eq!(a.name, "bv-1");
        assert_eq!(a.ip, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(a.mac, "52:54:00:b1:00:01");
        assert_eq!(b.mac, "52:54:00:b1:01:2c");
        assert!((10..250).contains(&b.ip.octets()[3]));
        assert!(format!("bq{}d", 99_999).len() < 16, "tap names fit IFNAMSIZ");
    }

    #[test]
    fn several_values_after_one_flag() {
        for argv in [
            &["vmove-bench", "--workloads", "http-20", "near-link", "--contenders", "vmove", "qemu", "--memory", "512", "2048"][..],
            &["vmove-bench", "--workloads", "http-20,near-link", "--contenders", "vmove,qemu", "--memory", "512,2048"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert!(cli.cmd.is_none(), "{argv:?}: no subcommand");
            let p = plan(&cli.run).unwrap();
            assert_eq!(p.workloads, vec![Workload::Http20, Workload::NearLink], "{argv:?}");
            assert_eq!(p.contenders, vec![Contender::Vmove, Contender::Qemu], "{argv:?}");
            assert_eq!(p.memory, vec![512, 2048], "{argv:?}");
        }
        let cli = Cli::try_parse_from(["vmove-bench", "render", "/tmp/r"]).unwrap();
        assert!(matches!(cli.cmd, Some(Cmd::Render { .. })));
    }

    #[test]
    fn quick_is_tiny() {
        let cli = Cli::try_parse_from(["vmove-bench", "--quick"]).unwrap();
        let p = plan(&cli.run).unwrap();
        assert_eq!((p.runs, p.memory.clone()), (1, vec![512]));
        assert_eq!(p.workloads, vec![Workload::Idle, Workload::Http20]);
        assert_eq!(p.contenders, Contender::ALL.to_vec());
        let full = Cli::try_parse_from(["vmove-bench"]).unwrap();
        let p = plan(&full.run).unwrap();
        assert_eq!((p.runs, p.memory.len(), p.workloads.len()), (5, 2, 3));
        assert!(Cli::try_parse_from(["vmove-bench", "--contenders", "vmove,nope"]).map(|c| plan(&c.run)).unwrap().is_err());
        assert!(matches!(Cli::try_parse_from(["vmove-bench", "render", "x"]).unwrap().cmd, Some(Cmd::Render { .. })));
    }
}
