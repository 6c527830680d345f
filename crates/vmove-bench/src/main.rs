//! `vmove-bench`: the migration benchmark. Builds a two-host lab, runs a matrix of guest
//! sizes × workloads with every contender taking turns (vmove, the same QEMU driven by hand
//! with QEMU's defaults, libvirt's `virsh migrate` plain, with its best convergence, and
//! tunnelled), measures what the network and the client see, checks the release's goals,
//! and writes `report.md`, `report.json` and SVG plots. Not part of the test suite; see
//! README "Benchmarks" and docs/benchmarks.md "How to run".
#![warn(missing_docs)]

mod contenders;
mod disk_report;
mod disks;
mod drain_bench;
mod drain_cli;
mod drain_model;
mod drain_report;
mod env;
mod goals;
mod libvirt;
mod matrix;
mod model;
mod one_run;
mod outputs;
mod parse;
mod plot;
mod probes;
mod report;
mod section;
mod stats;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::model::{Contender, Workload};

#[derive(Parser)]
#[command(
    name = "vmove-bench",
    about = "Migration benchmark: vmove against hand-driven QEMU defaults and libvirt, on a lab it builds",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

const AFTER_HELP: &str = "\
The full run (issue 14's matrix; about 2 hours on 2 CPUs; run it alone on the machine, as root,
from the repository's root). Build, copy the binaries out of target/ (so that other builds
cannot replace them mid-run), then the one command:

  export CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0
  nice -n 10 cargo build --workspace --bins
  mkdir -p /var/tmp/bench-bin && cp target/debug/{vmove,vmoved,vmove-guest,vmove-bench} /var/tmp/bench-bin/
  VMOVE_BENCH_LIBVIRT=1 nice -n 10 /var/tmp/bench-bin/vmove-bench --out /var/tmp/bench-report-full \\
      --lab-dir /var/tmp/bench-lab --docs docs/benchmarks.md

It prints the goals (vmove's figures as ratios against the other contenders of the same run),
writes report.md, report.json, section.md and plots into --out, and puts the dated section
(\"## Migration benchmark (issue 14): DATE HH:MM (QEMU x.y.z)\") into docs/benchmarks.md.

Defaults: contenders vmove, qemu, virsh, virsh-best, control (virsh-tunnelled and
virsh-copy-storage on request); 512 and 2048 MiB guests; idle, http-20 and 2x-link (local-disk
on request); 5 runs per cell; 150 s budget. The libvirt contenders (virsh, virsh-best,
virsh-tunnelled, virsh-copy-storage) are opt-in: without VMOVE_BENCH_LIBVIRT=1 they are left
out, with a note in the report. libvirt 11.3 comes from
bookworm-backports: VMOVE_BENCH_LIBVIRT=1 bash scripts/install-deps.

A short check: --quick (1 run, 512 MiB, idle and http-20), or e.g.
  --runs 1 --memory 512 --workloads idle --contenders vmove,qemu,control
  --runs 1 --memory 512 --workloads 2x-link --contenders vmove,virsh-best

Issue 17's local-disk benchmark: a 512 MiB guest with a 2 GiB data disk in the hosts' local
pools (not shared), vmove against virsh migrate --live --copy-storage-all (3 runs; the dated
section is \"## Migration benchmark (issue 17, local disk): DATE (QEMU x.y.z)\"):

  VMOVE_BENCH_LIBVIRT=1 nice -n 10 /var/tmp/bench-bin/vmove-bench --runs 3 --memory 512 \\
      --workloads local-disk --local-disk-mib 2048 --local-disk-write 5 \\
      --contenders vmove,virsh-copy-storage --out /var/tmp/bench-report-localdisk \\
      --lab-dir /var/tmp/bench-lab-localdisk --docs docs/benchmarks.md

In a local-disk cell the guest writes --local-disk-write MB/s of fresh data onto its data
disk's upper half (O_DIRECT, 1 MiB blocks) and its disk log onto the lower half; its memory
is idle. qemu (QEMU by hand) and the plain libvirt contenders cannot move a local disk: they
are reported as not applicable there (control runs, with the disk).

Issue 15's drain benchmark (a subcommand; a 3-host lab; N guests of 512 MiB on host1 dirtying
2 MB/s each, drained by `vmove host drain host1` with --parallel 1, 2, 4 and its default, and by
a sequential `virsh migrate --live` loop to the same targets; 3 runs; an estimated 35-60 minutes; the dated
section is \"## Drain benchmark (issue 15): DATE (QEMU x.y.z)\"):

  VMOVE_BENCH_LIBVIRT=1 nice -n 10 /var/tmp/bench-bin/vmove-bench drain --guests 4,8 \\
      --parallel 1,2,4,default --contenders vmove,virsh --runs 3 --out /var/tmp/bench-report-drain \\
      --lab-dir /var/tmp/bench-lab-drain --docs docs/benchmarks.md";

#[derive(Subcommand)]
enum Cmd {
    /// Re-renders report.md and the plots of a report directory from its report.json.
    Render {
        /// The report directory.
        dir: PathBuf,
        /// Also put the dated section into this Markdown file (docs/benchmarks.md).
        #[arg(long)]
        docs: Option<PathBuf>,
    },
    /// Issue 15's drain benchmark: N guests on host1 of a 3-host lab, drained by `vmove host
    /// drain` (--parallel values) and by a sequential `virsh migrate --live` loop to the same
    /// targets; drain time, the sum of the client's outages, vmove's prediction.
    Drain(drain_cli::DrainArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Runs per cell and contender.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// A tiny matrix to develop with: 1 run, 512 MiB; idle and HTTP + 20 MB/s unless --workloads names others.
    #[arg(long)]
    quick: bool,
    /// Report directory (report.md, report.json, section.md, plots).
    #[arg(long, default_value = "bench-report")]
    out: PathBuf,
    /// Also put the dated report section (goals as ratios, figures) into this Markdown
    /// file, docs/benchmarks.md: before the older reports, or in place of a section with the
    /// same heading (the same start, to the minute).
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Lab directory (built at the start, taken down at the end).
    #[arg(long, default_value = "/var/tmp/bench-lab")]
    lab_dir: PathBuf,
    /// Guest sizes, MiB.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = [512u64, 2048])]
    memory: Vec<u64>,
    /// Workloads: idle, http-20, 2x-link (dirtying twice the capped link), near-link (dirtying --near-fraction of it),
    /// local-disk (a --local-disk-mib data disk in the hosts' local pools, not shared).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = Workload::DEFAULT.map(|w| w.id().to_string()))]
    workloads: Vec<String>,
    /// Contenders: vmove, qemu, virsh, virsh-best, virsh-tunnelled, virsh-copy-storage
    /// (`--copy-storage-all`, local-disk cells), control (no migration).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = Contender::DEFAULT.map(|c| c.id().to_string()))]
    contenders: Vec<String>,
    /// Time budget of one migration, seconds; beyond it the migration is cancelled and counts as not converged.
    #[arg(long, default_value_t = 150)]
    budget: u64,
    /// Cap of the migration link (tc tbf on both hosts' mgmt0) for the 2x-link and near-link workloads, Mbit/s.
    /// 200: a 1-vCPU TCG guest cannot dirty twice a faster link while it is being migrated.
    #[arg(long, default_value_t = 200)]
    link_cap_mbit: u32,
    /// Near-link dirty rate as a fraction of the capped link's measured throughput.
    #[arg(long, default_value_t = 0.9)]
    near_fraction: f64,
    /// 2x-link dirty rate as a multiple of the capped link's measured throughput.
    #[arg(long, default_value_t = 2.0)]
    link_factor: f64,
    /// Working set of the 2x-link and near-link workloads, MiB.
    #[arg(long, default_value_t = 64)]
    near_wss: u32,
    /// Dirty rate of the HTTP workload, MB/s.
    #[arg(long, default_value_t = 20)]
    http_dirty: u32,
    /// Size of the local-disk workload's data disk (a raw file in each host's local pool), MiB.
    #[arg(long, default_value_t = 2048)]
    local_disk_mib: u64,
    /// What the local-disk workload's guest writes onto its data disk, MB/s (it also writes
    /// its disk log: one 512-byte synced record every 500 ms).
    #[arg(long, default_value_t = 5)]
    local_disk_write: u32,
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
        Some(Cmd::Render { dir, docs }) => outputs::render(&dir, docs.as_deref()),
        Some(Cmd::Drain(a)) => runtime().and_then(|rt| rt.block_on(drain_bench::run(a))),
        None => runtime().and_then(|rt| rt.block_on(matrix::run(cli.run))),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmove-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

struct Plan {
    runs: u32,
    memory: Vec<u64>,
    workloads: Vec<Workload>,
    contenders: Vec<Contender>,
}

/// The local-disk workload's smallest data disk, MiB (the disk log needs a few records).
const MIN_DISK_MIB: u64 = 1;
/// ... and its largest, MiB (1 TiB: a sparse file, but the copy walks all of it).
const MAX_DISK_MIB: u64 = 1 << 20;

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
        // Without --workloads: the two raw-link workloads; with it: as given.
        if p.workloads == Workload::DEFAULT {
            p.workloads = vec![Workload::Idle, Workload::Http20];
        }
    }
    if p.runs == 0 || p.memory.is_empty() || p.workloads.is_empty() || p.contenders.is_empty() {
        bail!("nothing to run");
    }
    if !(0.0..=2.0).contains(&a.near_fraction) {
        bail!("--near-fraction must be between 0 and 2");
    }
    if !(0.1..=10.0).contains(&a.link_factor) {
        bail!("--link-factor must be between 0.1 and 10");
    }
    if p.workloads.contains(&Workload::LocalDisk) && !(MIN_DISK_MIB..=MAX_DISK_MIB).contains(&a.local_disk_mib) {
        bail!("--local-disk-mib must be between {MIN_DISK_MIB} and {MAX_DISK_MIB}");
    }
    Ok(p)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_values_after_one_flag() {
        for argv in [
            &["vmove-bench", "--workloads", "http-20", "2x-link", "--contenders", "vmove", "qemu", "--memory", "512", "2048"][..],
            &["vmove-bench", "--workloads", "http-20,2x-link", "--contenders", "vmove,qemu", "--memory", "512,2048"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert!(cli.cmd.is_none(), "{argv:?}: no subcommand");
            let p = plan(&cli.run).unwrap();
            assert_eq!(p.workloads, vec![Workload::Http20, Workload::TwoXLink], "{argv:?}");
            assert_eq!(p.contenders, vec![Contender::Vmove, Contender::Qemu], "{argv:?}");
            assert_eq!(p.memory, vec![512, 2048], "{argv:?}");
        }
        let cli = Cli::try_parse_from(["vmove-bench", "render", "/tmp/r"]).unwrap();
        assert!(matches!(cli.cmd, Some(Cmd::Render { .. })));
    }

    #[test]
    fn the_drain_subcommand() {
        let cli = Cli::try_parse_from(["vmove-bench", "drain", "--guests", "4", "8", "--parallel", "1", "2", "4", "--runs", "1"]).unwrap();
        let Some(Cmd::Drain(a)) = cli.cmd else { panic!("not the drain subcommand") };
        let p = drain_cli::plan(&a).unwrap();
        assert_eq!((p.guests.clone(), p.runs, p.configs.len()), (vec![4, 8], 1, 4), "3 vmove configurations and the virsh loop");
        assert_eq!(a.lab_dir, PathBuf::from("/var/tmp/bench-drain-lab"));
        assert!(Cli::try_parse_from(["vmove-bench", "drain", "--memory", "512", "--quick"]).is_err(), "the matrix's flags are not the drain's");
        assert!(Cli::try_parse_from(["vmove-bench", "--runs", "1", "drain"]).is_err(), "no matrix flags before the subcommand");
    }

    #[test]
    fn quick_is_tiny() {
        let cli = Cli::try_parse_from(["vmove-bench", "--quick"]).unwrap();
        let p = plan(&cli.run).unwrap();
        assert_eq!((p.runs, p.memory.clone()), (1, vec![512]));
        assert_eq!(p.workloads, vec![Workload::Idle, Workload::Http20]);
        assert_eq!(p.contenders, Contender::DEFAULT.to_vec());
        assert!(!p.contenders.contains(&Contender::VirshTunnelled) && p.contenders.contains(&Contender::VirshBest));
        let full = Cli::try_parse_from(["vmove-bench"]).unwrap();
        let p = plan(&full.run).unwrap();
        assert_eq!((p.runs, p.memory.len()), (5, 2));
        assert_eq!(p.workloads, vec![Workload::Idle, Workload::Http20, Workload::TwoXLink]);
        let q = Cli::try_parse_from(["vmove-bench", "--quick", "--workloads", "2x-link"]).unwrap();
        assert_eq!(plan(&q.run).unwrap().workloads, vec![Workload::TwoXLink], "--quick keeps the workloads asked for");
        let t = Cli::try_parse_from(["vmove-bench", "--contenders", "virsh-tunnelled"]).unwrap();
        assert_eq!(plan(&t.run).unwrap().contenders, vec![Contender::VirshTunnelled]);
        assert!(Cli::try_parse_from(["vmove-bench", "--contenders", "vmove,nope"]).map(|c| plan(&c.run)).unwrap().is_err());
        assert!(matches!(Cli::try_parse_from(["vmove-bench", "render", "x"]).unwrap().cmd, Some(Cmd::Render { .. })));
    }

    #[test]
    fn local_disk_options() {
        let cli = Cli::try_parse_from([
            "vmove-bench", "--runs", "3", "--memory", "512", "--workloads", "local-disk", "--local-disk-mib", "2048",
            "--local-disk-write", "5", "--contenders", "vmove,virsh-copy-storage",
        ])
        .unwrap();
        let p = plan(&cli.run).unwrap();
        assert_eq!(p.workloads, vec![Workload::LocalDisk]);
        assert_eq!(p.contenders, vec![Contender::Vmove, Contender::VirshCopyStorage]);
        assert_eq!((cli.run.local_disk_mib, cli.run.local_disk_write), (2048, 5));
        let d = Cli::try_parse_from(["vmove-bench", "--workloads", "local-disk"]).unwrap();
        assert_eq!((d.run.local_disk_mib, d.run.local_disk_write), (2048, 5), "the issue's disk and rate by default");
        assert!(!Contender::DEFAULT.contains(&Contender::VirshCopyStorage) && !Workload::DEFAULT.contains(&Workload::LocalDisk));
        let zero = Cli::try_parse_from(["vmove-bench", "--workloads", "local-disk", "--local-disk-mib", "0"]).unwrap();
        let e = plan(&zero.run).map(|_| ()).unwrap_err().to_string();
        assert!(e.starts_with("--local-disk-mib must be between 1 and"), "{e}");
        let other = Cli::try_parse_from(["vmove-bench", "--workloads", "idle", "--local-disk-mib", "0"]).unwrap();
        assert!(plan(&other.run).is_ok(), "the disk size only matters with the local-disk workload");
        assert!(Cli::try_parse_from(["vmove-bench", "--local-disk-mib", "lots"]).is_err(), "clap refuses a non-number");
    }
}
