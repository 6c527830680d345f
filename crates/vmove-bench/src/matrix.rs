//! One benchmark run: the lab up, the link measured, every cell of the matrix with the
//! contenders taking turns, the report written after every run, the lab down at the end.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::contenders::Ctx;
use crate::env::{self, Env, Libvirt};
use crate::model::{CellSpec, Contender, NotApplicable, Report, RunResult, Settings, Workload};
use crate::outputs::{write_json, write_outputs};
use crate::{stats, Plan, RunArgs};

/// Takes the lab down when dropped (normal end, error, panic).
pub(crate) struct LabGuard(pub(crate) Option<PathBuf>);

impl LabGuard {
    pub(crate) fn down(&mut self) {
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

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Runs `work` to its end, or until the process is interrupted (Ctrl-C, SIGTERM): the
/// caller still writes the report of what was done and takes the lab down.
pub(crate) async fn interruptible(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (Ctrl-C)")),
        _ = sigterm.recv() => Err(anyhow!("terminated")),
    }
}

/// Checks what a run needs before it starts: the binaries (in `bin_dir`, default: next to
/// this one), the `--docs` file if any, and creates the output directory. Returns the
/// binaries' directory.
pub(crate) fn prepare(bin_dir: Option<&Path>, docs: Option<&Path>, out: &Path) -> Result<std::path::PathBuf> {
    let bin_dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()?.parent().map(Path::to_path_buf).ok_or_else(|| anyhow!("no binary directory"))?,
    };
    for b in ["vmove", "vmoved", "vmove-guest"] {
        if !bin_dir.join(b).is_file() {
            bail!("{} not found: run `cargo build` first (or pass --bin-dir)", bin_dir.join(b).display());
        }
    }
    if let Some(d) = docs {
        if !d.is_file() {
            bail!("--docs {}: no such file (give docs/benchmarks.md, from the repository's root)", d.display());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    Ok(bin_dir)
}

/// Runs the benchmark that `a` asks for and writes its report.
pub(crate) async fn run(a: RunArgs) -> Result<()> {
    let p = crate::plan(&a)?;
    let bin_dir = crate::matrix::prepare(a.bin_dir.as_deref(), a.docs.as_deref(), &a.out)?;
    let t_start = Instant::now();
    let mut report = Report {
        started: now_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        settings: Settings {
            runs: p.runs,
            budget_s: a.budget,
            near_fraction: a.near_fraction,
            near_wss_mib: a.near_wss,
            link_factor: a.link_factor,
            quick: a.quick,
            local_disk_mib: a.local_disk_mib,
        },
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
    let result = interruptible(matrix(&a, &p, &env, &mut report)).await;
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
    let goals = crate::goals::markdown(&report, "##");
    if goals.is_empty() {
        eprintln!("bench: no goals to judge (no vmove run)");
    } else {
        println!("{goals}");
    }
    if let Some(d) = &a.docs {
        if report.runs.is_empty() {
            eprintln!("bench: no runs, {} left as it was", d.display());
        } else {
            crate::outputs::write_docs(d, &report)?;
        }
    }
    result
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
        let opted_in = std::env::var(LIBVIRT_OPT_IN).is_ok_and(|v| v == "1");
        let started = if opted_in {
            tokio::task::block_in_place(|| Libvirt::start(env))
        } else {
            Err(anyhow!("{}", not_opted_in()))
        };
        match started {
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

    let raw_cells: Vec<CellSpec> =
        p.workloads.iter().filter(|w| !w.on_capped_link()).flat_map(|&w| p.memory.iter().map(move |&m| raw_cell(a, m, w, raw))).collect();
    let capped: Vec<Workload> = p.workloads.iter().copied().filter(|w| w.on_capped_link()).collect();
    let turns = |local: bool| p.runs as usize * contenders.iter().filter(|c| c.not_applicable(local).is_none()).count();
    let total = raw_cells.iter().map(|c| turns(c.disk_mib.is_some())).sum::<usize>() + capped.len() * p.memory.len() * turns(false);
    if raw_cells.iter().any(|c| c.disk_mib.is_some()) {
        report.remarks.push(local_disk_remark(a));
    }
    let mut done = 0usize;
    let mut n = 0u32;
    for cell in raw_cells {
        report.cells.push(cell.clone());
        run_cell(&ctx, &cell, p.runs, &contenders, report, &a.out, &mut n, &mut done, total).await?;
    }
    if !capped.is_empty() {
        env.cap_link(a.link_cap_mbit)?;
        let r = async {
            let (capped_samples, bw) = measure_link(env, a.copy_secs)?;
            eprintln!("bench: link capped at {} Mbit/s: {:.0} MB/s", a.link_cap_mbit, bw / 1e6);
            relink(env, report).await;
            report.links.cap_mbit = Some(a.link_cap_mbit);
            report.links.capped_samples = capped_samples;
            report.links.capped_bytes_per_s = Some(bw);
            report.remarks.push(capped_remark(a, raw, bw));
            for &w in &capped {
                let factor = if w == Workload::TwoXLink { a.link_factor } else { a.near_fraction };
                let dirty = (bw * factor / 1e6).round() as u32;
                eprintln!("bench: {} dirty rate {dirty} MB/s", w.id());
                for &m in &p.memory {
                    let cell = CellSpec {
                        memory_mib: m,
                        workload: w,
                        dirty_mb_s: dirty,
                        wss_mib: a.near_wss,
                        http_load: false,
                        link_cap_mbit: Some(a.link_cap_mbit),
                        link_bytes_per_s: bw,
                        disk_mib: None,
                        disk_write_mb_s: 0,
                    };
                    report.cells.push(cell.clone());
                    run_cell(&ctx, &cell, p.runs, &contenders, report, &a.out, &mut n, &mut done, total).await?;
                }
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

/// The environment variable that opts the libvirt contenders in.
pub(crate) const LIBVIRT_OPT_IN: &str = "VMOVE_BENCH_LIBVIRT";

/// Why the libvirt contenders are left out when not opted in.
pub(crate) fn not_opted_in() -> String {
    format!(
        "skipped: the libvirt contenders are opt-in; set {LIBVIRT_OPT_IN}=1 (libvirt 11.3 from bookworm-backports, \
         installed by `{LIBVIRT_OPT_IN}=1 bash scripts/install-deps`)"
    )
}

/// Has vmove's target agent measure the link again now (its precheck reuses a measurement
/// up to 10 minutes old, and the benchmark just changed the link's cap): what an operator
/// would do after changing a link.
async fn relink(env: &Env, report: &mut Report) {
    let r = async {
        let cluster = vmove_model::Cluster::load(&env.info.cluster_file)?;
        let src = cluster.hosts.first().ok_or_else(|| anyhow!("no host1"))?;
        let source = vmove_api::PeerHost { name: src.name.clone(), address: src.address.clone() };
        let clients = vmove_api::operator_clients(&cluster)?;
        let dst = cluster.hosts.get(1).ok_or_else(|| anyhow!("no host2"))?;
        let (_, c) = clients.into_iter().find(|(n, _)| *n == dst.name).ok_or_else(|| anyhow!("no client for {}", dst.name))?;
        let c = c.with_timeout(Duration::from_secs(30));
        let l: vmove_api::LinkInfo = c.call(&vmove_api::Request::LinkMeasure { source, max_age_s: 0 }).await?;
        anyhow::Ok(l.bytes_per_s)
    }
    .await;
    match r {
        Ok(b) => eprintln!("bench: vmove measured the capped link at {:.0} MB/s", b as f64 / 1e6),
        Err(e) => report.remarks.push(format!("vmove could not re-measure the capped link: {e:#}")),
    }
}

/// A cell on the raw link: the HTTP workload dirties `--http-dirty`, the local-disk one
/// nothing while it writes `--local-disk-write` MB/s onto its `--local-disk-mib` data disk,
/// the others nothing.
fn raw_cell(a: &RunArgs, memory_mib: u64, w: Workload, raw: f64) -> CellSpec {
    match w {
        Workload::Http20 => CellSpec::raw(memory_mib, w, a.http_dirty, raw),
        Workload::LocalDisk => CellSpec::raw(memory_mib, w, 0, raw).with_disk(a.local_disk_mib, a.local_disk_write),
        _ => CellSpec::raw(memory_mib, w, 0, raw),
    }
}

fn local_disk_remark(a: &RunArgs) -> String {
    format!(
        "Local-disk cells: the guest's data disk is a sparse raw file of {} on host1's own directory, not shared. \
         vmove: in its `local` pool (`guest create --disk local/NAME-data.img:{}M`), copied by its COPY_VOLUMES \
         step (an NBD export over TLS on the target, blockdev-mirror on the source) before the memory. \
         virsh-copy-storage: a file in the source libvirtd's /var/lib/libvirt/images (each host's own directory), \
         with one of the same size and format pre-created on the target by `qemu-img create -f raw` before the \
         run (not timed); libvirt copies it over NBD (no TLS) with QEMU's block mirror. The control's guest has \
         the same disk on host1. The guest writes {} MB/s of fresh data (1 MiB O_DIRECT writes, `vmove.disk`) \
         onto the disk's upper half and its disk log (one 512-byte synced record every 500 ms) onto the lower \
         half; its memory is idle. The rest of the disk is unwritten, which both tools copy as zeroes. *On the link*: the bytes out of host1's management \
         link (the migration link) while the contender's command ran, as the kernel counts them — memory, disk, \
         TLS and control traffic alike.",
        crate::model::size_mib(a.local_disk_mib),
        a.local_disk_mib,
        a.local_disk_write
    )
}

fn capped_remark(a: &RunArgs, raw: f64, bw: f64) -> String {
    format!(
        "Capped-link workloads: the raw lab link moves {:.0} MB/s on a plain TCP copy — more than the guest's \
         dirtier can rewrite under TCG and more than any contender migrates on 2 CPUs (there the CPU, not the \
         link, is the bottleneck). So these cells run on a link capped at {} Mbit/s by tc tbf on both hosts' \
         mgmt0 (every contender crosses the same cap; the client's probes use the guest network, not capped), \
         measured at {:.0} MB/s. The 2x-link workload dirties {:.1}× that, the near-link workload {:.0}% of it, \
         over a {} MiB working set. vmove's agents were told to measure the link again after the cap was set.",
        raw / 1e6,
        a.link_cap_mbit,
        bw / 1e6,
        a.link_factor,
        a.near_fraction * 100.0,
        a.near_wss
    )
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
    let mut playing = Vec::new();
    for &c in contenders {
        match c.not_applicable(cell.disk_mib.is_some()) {
            Some(why) => {
                eprintln!("bench: {} not applicable in {}: {why}", c.id(), cell.id());
                report.not_applicable.push(NotApplicable { cell: cell.id(), contender: c, why: why.to_string() });
            }
            None => playing.push(c),
        }
    }
    write_json(out, report)?;
    for run in 1..=runs {
        let k = playing.len();
        for i in 0..k {
            let c = playing[(i + run as usize - 1) % k];
            let foreign = ctx.env.foreign_qemus();
            report.conditions.other_qemu_max = report.conditions.other_qemu_max.max(foreign.len());
            if !foreign.is_empty() {
                report.conditions.runs_with_other_qemu += 1;
            }
            *n += 1;
            let r = crate::one_run::run_one(ctx, cell, c, run, *n).await;
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
        "{} run {} {}: {} total {} ms, blackout {} ms, downtime {} ms, UDP lost {}, UDP gap {} ms, TCP stall {} ms, TCP retransmits {}, sent {} MiB{}{}{}",
        r.cell,
        r.run,
        r.contender.id(),
        match (r.contender.migrates(), r.converged) {
            (false, _) => "no migration,",
            (true, true) => "converged",
            (true, false) => "NOT converged",
        },
        o(r.total_ms),
        o(r.wire.blackout_ms().map(|b| b.round() as u64)),
        o(r.downtime_ms),
        o(r.outage.lost_at_switchover()),
        o(r.outage.udp_longest_gap_ms),
        o(r.outage.tcp_longest_stall_ms),
        o(r.outage.tcp_retransmits),
        o(r.transferred_bytes.map(|b| b >> 20)),
        match (r.disk_bytes, r.link_bytes, r.disk_records) {
            (None, None, None) => String::new(),
            (d, l, rec) => format!(
                ", disk {} MiB, on the link {} MiB, disk log carried {}",
                o(d.map(|b| b >> 20)),
                o(l.map(|b| b >> 20)),
                rec.map(|(before, on)| format!("{on}/{before}")).unwrap_or_else(|| "–".into())
            ),
        },
        r.error.as_ref().map(|e| format!(" — {e}")).unwrap_or_default(),
        r.damage.as_ref().map(|d| format!(" — GUEST DAMAGED: {d}")).unwrap_or_default()
    )
}
