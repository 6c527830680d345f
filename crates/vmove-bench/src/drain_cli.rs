//! `vmove-bench drain`: the options of issue 15's drain benchmark, and the configurations
//! they ask for (pure).
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::drain_model::DrainConfig;

/// The most guests on host1 (their addresses and the lab's memory).
pub const MAX_GUESTS: u32 = 32;
/// vmove's own bound of `--parallel`.
pub const MAX_PARALLEL: u32 = 64;

/// The options of `vmove-bench drain`.
#[derive(Args, Clone, Debug)]
pub struct DrainArgs {
    /// Guests on host1 (N), one drain series per value.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = [4u32, 8])]
    pub guests: Vec<u32>,
    /// vmove's --parallel values; `default` runs `vmove host drain` without the flag
    /// (its cluster limit 5, 2 out of and 2 into any host).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = ["1".to_string(), "2".into(), "4".into(), "default".into()])]
    pub parallel: Vec<String>,
    /// Contenders: vmove (one configuration per --parallel value), virsh (a sequential
    /// `virsh migrate --live` loop; needs VMOVE_BENCH_LIBVIRT=1).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = ["vmove".to_string(), "virsh".into()])]
    pub contenders: Vec<String>,
    /// Drains per configuration and guest count.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// What each guest dirties, MB/s (0: idle), over a --wss working set.
    #[arg(long, default_value_t = 2)]
    pub dirty_rate: u32,
    /// Each guest's working set, MiB.
    #[arg(long, default_value_t = 64)]
    pub wss: u32,
    /// One UDP echo request per guest every this many ms, from the client namespace.
    #[arg(long, default_value_t = 5)]
    pub probe_interval_ms: u64,
    /// Budget of one drain, seconds; beyond it the drain is stopped and counts as not completed.
    #[arg(long, default_value_t = 600)]
    pub budget: u64,
    /// Report directory (drain.json, report.md, section.md).
    #[arg(long, default_value = "bench-drain-report")]
    pub out: PathBuf,
    /// Also put the dated section into this Markdown file (docs/benchmarks.md).
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// Lab directory (3 hosts; built at the start, taken down at the end; its name starts with bench-).
    #[arg(long, default_value = "/var/tmp/bench-drain-lab")]
    pub lab_dir: PathBuf,
    /// Where vmove, vmoved and vmove-guest are (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// What a drain benchmark runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainPlan {
    /// Guest counts.
    pub guests: Vec<u32>,
    /// Configurations, vmove's first, in the order of run 1 (later runs rotate it).
    pub configs: Vec<DrainConfig>,
    /// Runs per configuration and guest count.
    pub runs: u32,
}

/// `--parallel`'s value: a number 1..=64, or `default` (None).
pub fn parse_parallel(s: &str) -> Result<Option<u32>> {
    if s.trim() == "default" {
        return Ok(None);
    }
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=MAX_PARALLEL).contains(&p) => Ok(Some(p)),
        _ => bail!("--parallel: expected 1..={MAX_PARALLEL} or default, not {s:?}"),
    }
}

/// Checks the options; the configurations they ask for.
pub fn plan(a: &DrainArgs) -> Result<DrainPlan> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if a.guests.is_empty() {
        bail!("--guests: nothing to run");
    }
    if let Some(n) = a.guests.iter().find(|n| !(1..=MAX_GUESTS).contains(*n)) {
        bail!("--guests {n} is out of range (1..={MAX_GUESTS})");
    }
    if !(64..=16384).contains(&a.memory) {
        bail!("--memory {} is out of range (64..=16384 MiB)", a.memory);
    }
    if a.wss == 0 || u64::from(a.wss) >= a.memory {
        bail!("--wss {} must be at least 1 and below the guest's memory ({} MiB)", a.wss, a.memory);
    }
    if a.dirty_rate > 1000 {
        bail!("--dirty-rate {} is out of range (0..=1000 MB/s)", a.dirty_rate);
    }
    if !(1..=1000).contains(&a.probe_interval_ms) {
        bail!("--probe-interval-ms {} is out of range (1..=1000)", a.probe_interval_ms);
    }
    if !(10..=86400).contains(&a.budget) {
        bail!("--budget {} is out of range (10..=86400 s)", a.budget);
    }
    let mut configs = Vec::new();
    let mut virsh = false;
    for c in &a.contenders {
        match c.trim() {
            "vmove" => {
                for p in &a.parallel {
                    let cfg = DrainConfig::Vmove { parallel: parse_parallel(p)? };
                    if !configs.contains(&cfg) {
                        configs.push(cfg);
                    }
                }
            }
            "virsh" => virsh = true,
            other => bail!("--contenders: unknown contender {other:?} (vmove, virsh)"),
        }
    }
    if virsh {
        configs.push(DrainConfig::VirshLoop);
    }
    if configs.is_empty() {
        bail!("nothing to run");
    }
    let mut guests = Vec::new();
    for n in &a.guests {
        if !guests.contains(n) {
            guests.push(*n);
        }
    }
    Ok(DrainPlan { guests, configs, runs: a.runs })
}

/// The configurations in the order of run `run` (from 1): the first run's order, rotated
/// by one per run, as the migration benchmark's contenders take turns.
pub fn order(configs: &[DrainConfig], run: u32) -> Vec<DrainConfig> {
    let k = configs.len();
    if k == 0 {
        return Vec::new();
    }
    (0..k).map(|i| configs[(i + run.saturating_sub(1) as usize) % k]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: DrainArgs,
    }

    fn args(argv: &[&str]) -> DrainArgs {
        let mut v = vec!["t"];
        v.extend(argv);
        T::try_parse_from(v).unwrap().a
    }

    #[test]
    fn the_issues_configurations_by_default() {
        let a = args(&[]);
        let p = plan(&a).unwrap();
        assert_eq!(p.guests, vec![4, 8]);
        assert_eq!((a.memory, a.runs, a.dirty_rate, a.wss), (512, 3, 2, 64));
        let v = |p| DrainConfig::Vmove { parallel: p };
        assert_eq!(p.configs, vec![v(Some(1)), v(Some(2)), v(Some(4)), v(None), DrainConfig::VirshLoop]);
        for argv in [&["--guests", "4", "8", "--parallel", "1", "2"][..], &["--guests", "4,8", "--parallel", "1,2"][..]] {
            let p = plan(&args(argv)).unwrap();
            assert_eq!(p.guests, vec![4, 8], "{argv:?}");
            assert_eq!(p.configs, vec![v(Some(1)), v(Some(2)), DrainConfig::VirshLoop], "{argv:?}");
        }
        let only = plan(&args(&["--contenders", "virsh", "--guests", "2", "2"])).unwrap();
        assert_eq!((only.configs, only.guests), (vec![DrainConfig::VirshLoop], vec![2]));
        let dup = plan(&args(&["--contenders", "vmove", "--parallel", "2,2,default,default"])).unwrap();
        assert_eq!(dup.configs, vec![v(Some(2)), v(None)]);
    }

    #[test]
    fn bad_options_are_one_clear_line() {
        let e = |argv: &[&str]| plan(&args(argv)).unwrap_err().to_string();
        assert_eq!(e(&["--parallel", "0"]), "--parallel: expected 1..=64 or default, not \"0\"");
        assert_eq!(e(&["--parallel", "many"]), "--parallel: expected 1..=64 or default, not \"many\"");
        assert_eq!(e(&["--parallel", "65"]), "--parallel: expected 1..=64 or default, not \"65\"");
        assert_eq!(e(&["--guests", "0"]), "--guests 0 is out of range (1..=32)");
        assert_eq!(e(&["--guests", "4,33"]), "--guests 33 is out of range (1..=32)");
        assert_eq!(e(&["--runs", "0"]), "--runs must be at least 1");
        assert_eq!(e(&["--contenders", "vmove,qemu"]), "--contenders: unknown contender \"qemu\" (vmove, virsh)");
        assert_eq!(e(&["--memory", "32"]), "--memory 32 is out of range (64..=16384 MiB)");
        assert_eq!(e(&["--memory", "256", "--wss", "256"]), "--wss 256 must be at least 1 and below the guest's memory (256 MiB)");
        assert_eq!(e(&["--probe-interval-ms", "0"]), "--probe-interval-ms 0 is out of range (1..=1000)");
        assert!(e(&["--budget", "1"]).starts_with("--budget 1 is out of range"));
        assert!(e(&["--dirty-rate", "5000"]).starts_with("--dirty-rate 5000"));
        assert!(plan(&args(&["--parallel", "default", "--contenders", "vmove"])).is_ok());
        assert!(T::try_parse_from(["t", "--guests", "x"]).is_err(), "clap refuses a non-number");
        assert!(T::try_parse_from(["t", "--probe-interval-ms", "-1"]).is_err());
    }

    #[test]
    fn the_order_rotates_with_the_run() {
        let c = plan(&args(&["--parallel", "1,2"])).unwrap().configs;
        assert_eq!(order(&c, 1), c);
        assert_eq!(order(&c, 2), vec![c[1], c[2], c[0]]);
        assert_eq!(order(&c, 4), c, "every 3 runs the same order");
        assert_eq!(order(&c, 0), c);
        assert!(order(&[], 3).is_empty());
    }
}
