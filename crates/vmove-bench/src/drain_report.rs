//! The drain benchmark's report (pure, but for the file writes): the table of every guest
//! count and configuration, `report.md`, the dated section for docs/benchmarks.md
//! (`## Drain benchmark (issue 15): DATE (QEMU x.y.z)`), and the progress line of a drain.
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::drain_model::{DrainConfig, DrainReport, DrainRun};
use crate::report::num;
use crate::section::qemu_short;
use crate::stats::{median, ratio};

/// Medians of one configuration at one guest count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// Drains.
    pub runs: usize,
    /// Of those, drains in which every guest moved and answered on its target.
    pub completed: usize,
    /// Drain time, s (completed drains).
    pub drain_s: Option<f64>,
    /// vmove's predicted duration, s.
    pub predicted_s: Option<f64>,
    /// Predicted over measured.
    pub predicted_over_measured: Option<f64>,
    /// The sum of the guests' longest UDP gaps, ms.
    pub outage_sum_ms: Option<f64>,
    /// The sum of every UDP gap of 20 ms or more, ms.
    pub gaps_sum_ms: Option<f64>,
    /// The most moves at once (the largest seen).
    pub max_running: Option<usize>,
    /// QEMU's downtimes, summed over the guests, ms.
    pub downtime_sum_ms: Option<f64>,
}

fn med(runs: &[&DrainRun], f: impl Fn(&DrainRun) -> Option<f64>) -> Option<f64> {
    median(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
}

/// The medians of `config` with `guests` guests, over its completed drains.
pub fn summarize(r: &DrainReport, guests: u32, config: DrainConfig) -> Row {
    let all: Vec<&DrainRun> = r.runs.iter().filter(|x| x.guests == guests && x.config == config).collect();
    let ok: Vec<&DrainRun> = all.iter().copied().filter(|x| x.completed).collect();
    Row {
        runs: all.len(),
        completed: ok.len(),
        drain_s: med(&ok, |x| x.drain_ms.map(|v| v as f64 / 1000.0)),
        predicted_s: med(&all, |x| x.predicted_s.map(|v| v as f64)),
        predicted_over_measured: med(&ok, DrainRun::predicted_over_measured),
        outage_sum_ms: med(&ok, |x| x.outage_sum_ms.map(|v| v as f64)),
        gaps_sum_ms: med(&ok, |x| x.gaps_sum_ms.map(|v| v as f64)),
        max_running: all.iter().filter_map(|x| x.max_running).max(),
        downtime_sum_ms: med(&ok, |x| x.per_guest.iter().map(|g| g.downtime_ms).sum::<Option<u64>>().map(|v| v as f64)),
    }
}

/// The configurations in the report's order (the settings', then any others the runs have).
fn configs(r: &DrainReport) -> Vec<DrainConfig> {
    let mut v: Vec<DrainConfig> = r.settings.configs.clone();
    for x in &r.runs {
        if !v.contains(&x.config) {
            v.push(x.config);
        }
    }
    v
}

/// The table of every guest count and configuration that ran.
pub fn table(r: &DrainReport) -> String {
    let mut out = String::new();
    let head = [
        "guests",
        "configuration",
        "completed",
        "drain s",
        "÷ --parallel 1",
        "predicted s",
        "predicted ÷ measured",
        "outage sum ms",
        "all gaps ms",
        "QEMU downtime sum ms",
        "most at once",
    ];
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}|", (0..head.len()).map(|i| if i < 2 { "---" } else { "---:" }).collect::<Vec<_>>().join("|"));
    for &n in &r.settings.guests {
        let base = summarize(r, n, DrainConfig::Vmove { parallel: Some(1) }).drain_s;
        for c in configs(r) {
            let s = summarize(r, n, c);
            if s.runs == 0 {
                continue;
            }
            let row = [
                n.to_string(),
                c.label(),
                format!("{}/{}", s.completed, s.runs),
                num(s.drain_s, 1),
                num(ratio(s.drain_s, base), 2),
                num(s.predicted_s, 0),
                num(s.predicted_over_measured, 2),
                num(s.outage_sum_ms, 0),
                num(s.gaps_sum_ms, 0),
                num(s.downtime_sum_ms, 0),
                s.max_running.map(|m| m.to_string()).unwrap_or_else(|| "–".into()),
            ];
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
    }
    out
}

/// The legend of [`table`].
pub const LEGEND: &str = "Medians over the completed drains (every guest moved and answered on its target). *drain*: from the \
     start of the command(s) (`vmove host drain`, or the first `virsh migrate` of the loop) to the last guest \
     answering on its target (its first UDP echo after its first frame on the target host's tap). *÷ --parallel 1*: \
     that over vmove --parallel 1's with as many guests. *predicted*: the plan's predicted duration, printed \
     before any move starts. *outage sum*: each guest's longest time without a UDP echo from the drain's start to \
     2 s after its end, summed over the guests. *all gaps*: every UDP gap of 20 ms or more, summed. *QEMU downtime \
     sum*: the tools' own downtime figures, summed. *most at once*: the most moves that ran at once (vmove's \
     report; the loop runs one).";

/// What `--parallel` means when one host is drained, and the measured effect.
pub fn parallel_lines(r: &DrainReport) -> String {
    let mut out = String::from(
        "A drain obeys three limits: `--parallel` moves in the cluster (default 5), and `--per-host` moves out of \
         any one host and into any one host (default 2). The benchmark runs `--parallel P` as `--parallel P \
         --per-host P`, so that P moves leave host1 at once; the default (no flags) runs at most 2, the limit out \
         of host1 binding before the cluster's 5. On this machine the moves also share its 2 CPUs with the guests themselves (TCG) and with \
         each other: a second move at once can only save wall time where a move waits on something other than the CPU \
         (setup round trips, the link, the target's start); where the CPU is the bottleneck two moves side by side take \
         about as long as one after the other, and each guest's switchover waits longer for the CPU. The measured drain \
         times (medians), and as a multiple of `--parallel 1`'s:\n\n",
    );
    for &n in &r.settings.guests {
        let base = summarize(r, n, DrainConfig::Vmove { parallel: Some(1) }).drain_s;
        let parts: Vec<String> = configs(r)
            .into_iter()
            .filter(|c| matches!(c, DrainConfig::Vmove { .. }))
            .filter_map(|c| {
                let s = summarize(r, n, c);
                (s.runs > 0).then(|| {
                    format!(
                        "{} {} s{}",
                        c.label(),
                        num(s.drain_s, 1),
                        ratio(s.drain_s, base).map(|q| format!(" (×{q:.2})")).unwrap_or_default()
                    )
                })
            })
            .collect();
        if !parts.is_empty() {
            let _ = writeln!(out, "- {n} guests: {}", parts.join(", "));
        }
    }
    out
}

/// `## Drain benchmark (issue 15): 2026-12-02 (QEMU 10.0.2)`.
pub fn heading(r: &DrainReport) -> String {
    format!("## Drain benchmark (issue 15): {} ({})", r.started.get(..10).unwrap_or("undated"), qemu_short(&r.machine.qemu))
}

/// What each configuration runs.
fn config_what(c: DrainConfig) -> String {
    match c {
        DrainConfig::Vmove { parallel: Some(p) } => format!("`vmove --json host drain host1 --parallel {p} --per-host {p}`"),
        DrainConfig::Vmove { parallel: None } => {
            "`vmove --json host drain host1`: its defaults (5 moves in the cluster, 2 out of and 2 into any host)".into()
        }
        DrainConfig::VirshLoop => "a sequential loop of `virsh migrate --live GUEST qemu+tcp://TARGET/system --migrateuri \
             tcp://TARGET` on host1's libvirtd, each guest to the target vmove's plan chose for the guest in the same \
             position (guests alike: same memory, dirty rate, boot order)"
            .into(),
    }
}

/// The dated section, Markdown, starting with [`heading`].
pub fn section(r: &DrainReport) -> String {
    let m = &r.machine;
    let c = &r.conditions;
    let s = &r.settings;
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", heading(r));
    out.push_str(&crate::section::date_and_machine(
        &r.started,
        r.duration_s,
        m,
        "A lab of 3 hosts (network namespaces); guests run under TCG (no KVM): 1 vCPU, the lab image.",
    ));
    let foreign = |v: &Vec<String>| if v.is_empty() { "none".to_string() } else { v.len().to_string() };
    let _ = writeln!(
        out,
        "- **Conditions:** load average {} at the start and {} at the end; foreign QEMUs at the start: {}, at the \
         end: {}; drains with a foreign QEMU running: {} of {}.",
        c.load_before,
        c.load_after,
        foreign(&c.other_qemu_before),
        foreign(&c.other_qemu_after),
        c.runs_with_other_qemu,
        r.runs.len()
    );
    let _ = writeln!(
        out,
        "- **Settings:** {} guests of {} MiB on host1 (targets host2 and host3), each dirtying {} MB/s of a {} MiB \
         working set; {} drain(s) per configuration in rotating order, fresh guests for every drain; a UDP echo \
         request to every guest every {} ms from the client namespace; a {} s budget per drain.",
        s.guests.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" and "),
        s.memory_mib,
        s.dirty_mb_s,
        s.wss_mib,
        s.runs,
        s.probe_interval_ms,
        s.budget_s
    );
    let _ = writeln!(out, "- **Command:**\n\n```sh\n{}\n```\n", r.command);
    let _ = writeln!(out, "**Configurations.**\n");
    for cfg in configs(r) {
        let _ = writeln!(out, "- **{}** — {}", cfg.label(), config_what(cfg));
    }
    for (cfg, why) in &r.left_out {
        let _ = writeln!(out, "- **{}** — left out: {why}", cfg.label());
    }
    let _ = writeln!(out, "\n{}\n{LEGEND}\n", table(r));
    let _ = writeln!(out, "**`--parallel` on 2 CPUs.** {}", parallel_lines(r));
    let failed: Vec<String> = r.runs.iter().filter(|x| !x.completed).map(failure).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "**Drains that did not complete:**\n\n{}\n", failed.join("\n"));
    }
    out.push_str(&crate::section::remarks(&r.remarks));
    let _ = writeln!(
        out,
        "The report directory (`report.md` with every drain's guests, `drain.json`) is not in the repository: run the \
         command again.\n"
    );
    out
}

fn failure(x: &DrainRun) -> String {
    let bad: Vec<String> = x.per_guest.iter().filter(|g| g.outcome != "moved").map(|g| format!("{} {}", g.guest, g.outcome)).collect();
    let mut what = Vec::new();
    if let Some(e) = &x.error {
        what.push(e.clone());
    }
    if !bad.is_empty() {
        what.push(format!("not moved: {}", bad.join(", ")));
    }
    if what.is_empty() {
        what.push("a guest never answered on its target".into());
    }
    format!("- {} guests, {}, run {}: {}", x.guests, x.config.label(), x.run, what.join(" — "))
}

/// `report.md`: the section, then every drain's guests.
pub fn markdown(r: &DrainReport) -> String {
    let mut out = section(r).replacen("## ", "# ", 1);
    let _ = writeln!(out, "## Every drain\n");
    for x in &r.runs {
        let _ = writeln!(out, "### {} guests, {}, run {}\n", x.guests, x.config.label(), x.run);
        let _ = writeln!(out, "{}\n", line(x));
        let _ = writeln!(out, "| guest | to | outcome | move s | QEMU downtime ms | on target at s | longest UDP gap ms | gaps ≥ 20 ms |");
        let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|");
        for g in &x.per_guest {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                g.guest,
                g.to.as_deref().unwrap_or("–"),
                g.outcome,
                num(g.move_ms.map(|v| v as f64 / 1000.0), 1),
                num(g.downtime_ms.map(|v| v as f64), 0),
                num(g.answered_ms.map(|v| v as f64 / 1000.0), 2),
                num(g.udp_gap_ms.map(|v| v as f64), 0),
                g.udp_gaps.len()
            );
        }
        if !x.notes.is_empty() {
            let _ = writeln!(out, "\n{}", x.notes.iter().map(|n| format!("- {n}")).collect::<Vec<_>>().join("\n"));
        }
        out.push('\n');
    }
    out
}

/// One drain, one line (progress and report).
pub fn line(x: &DrainRun) -> String {
    let o = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "–".into());
    format!(
        "{} guests {} run {}: {} drain {} ms (command {} ms, predicted {} s), outage sum {} ms, most at once {}{}",
        x.guests,
        x.config.label(),
        x.run,
        if x.completed { "completed," } else { "NOT completed," },
        o(x.drain_ms),
        o(x.command_ms),
        o(x.predicted_s),
        o(x.outage_sum_ms),
        o(x.max_running.map(|m| m as u64)),
        x.error.as_ref().map(|e| format!(" — {e}")).unwrap_or_default()
    )
}

/// Writes `drain.json`.
pub(crate) fn write_json(out: &Path, r: &DrainReport) -> Result<()> {
    vmove_model::write_atomic(&out.join("drain.json"), serde_json::to_string_pretty(r)?.as_bytes())?;
    Ok(())
}

/// Writes `drain.json`, `report.md` and `section.md`.
pub(crate) fn write_outputs(out: &Path, r: &DrainReport) -> Result<()> {
    write_json(out, r)?;
    std::fs::write(out.join("report.md"), markdown(r))?;
    std::fs::write(out.join("section.md"), section(r))?;
    Ok(())
}

/// Puts the dated section into `docs`: in place of the same heading, else before the older reports.
pub(crate) fn write_docs(docs: &Path, r: &DrainReport) -> Result<()> {
    let doc = std::fs::read_to_string(docs).with_context(|| format!("read {}", docs.display()))?;
    std::fs::write(docs, crate::section::insert(&doc, &section(r))).with_context(|| format!("write {}", docs.display()))?;
    eprintln!("bench: section \"{}\" written into {}", heading(r).trim_start_matches("## "), docs.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain_model::{DrainSettings, GuestResult};
    use crate::model::Machine;

    fn run(n: u32, c: DrainConfig, k: u32, drain: u64, gaps: &[u64]) -> DrainRun {
        let mut x = DrainRun::new(n, c, k);
        x.per_guest = gaps
            .iter()
            .enumerate()
            .map(|(i, g)| GuestResult {
                guest: format!("g{i}"),
                to: Some("host2".into()),
                outcome: "moved".into(),
                answered_ms: Some(drain - i as u64 * 100),
                udp_gap_ms: Some(*g),
                udp_gaps: vec![(0, *g)],
                downtime_ms: Some(50),
                ..Default::default()
            })
            .collect();
        if matches!(c, DrainConfig::Vmove { .. }) {
            x.predicted_s = Some(12);
            x.max_running = Some(if c == (DrainConfig::Vmove { parallel: Some(1) }) { 1 } else { 2 });
        }
        x.totals();
        x
    }

    fn report() -> DrainReport {
        let p1 = DrainConfig::Vmove { parallel: Some(1) };
        let p4 = DrainConfig::Vmove { parallel: Some(4) };
        let mut failed = run(2, p4, 2, 9000, &[100, 100]);
        failed.per_guest[1].outcome = "failed".into();
        failed.error = Some("vmove host drain failed: drain of host1 incomplete".into());
        failed.totals();
        DrainReport {
            started: "2026-12-02T04:30:00Z".into(),
            duration_s: 90,
            command: "vmove-bench drain --guests 2 --runs 2".into(),
            machine: Machine { qemu: "QEMU emulator version 10.0.2 (Debian)".into(), ..Default::default() },
            settings: DrainSettings {
                guests: vec![2],
                memory_mib: 256,
                dirty_mb_s: 2,
                wss_mib: 64,
                runs: 2,
                configs: vec![p1, p4, DrainConfig::VirshLoop],
                probe_interval_ms: 5,
                budget_s: 600,
            },
            runs: vec![
                run(2, p1, 1, 10000, &[300, 500]),
                run(2, p1, 2, 12000, &[300, 700]),
                run(2, p4, 1, 8000, &[400, 400]),
                failed,
                run(2, DrainConfig::VirshLoop, 1, 16000, &[600, 600]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn medians_per_configuration() {
        let r = report();
        let s = summarize(&r, 2, DrainConfig::Vmove { parallel: Some(1) });
        assert_eq!((s.runs, s.completed, s.drain_s, s.outage_sum_ms), (2, 2, Some(11.0), Some(900.0)));
        assert_eq!((s.predicted_s, s.max_running, s.downtime_sum_ms), (Some(12.0), Some(1), Some(100.0)));
        assert_eq!(s.predicted_over_measured, Some((1.2 + 1.0) / 2.0));
        let f = summarize(&r, 2, DrainConfig::Vmove { parallel: Some(4) });
        assert_eq!((f.runs, f.completed, f.drain_s), (2, 1, Some(8.0)), "the failed drain counts as a run only");
        assert_eq!(summarize(&r, 4, DrainConfig::VirshLoop), Row::default());
    }

    #[test]
    fn the_table_and_the_section() {
        let r = report();
        let t = table(&r);
        assert!(t.contains("| 2 | vmove --parallel 1 | 2/2 | 11.0 | 1.00 | 12 | 1.10 | 900 | 900 | 100 | 1 |"), "{t}");
        assert!(t.contains("| 2 | vmove --parallel 4 | 1/2 | 8.0 | 0.73 | 12 | 1.50 | 800 | 800 | 100 | 2 |"), "{t}");
        assert!(t.contains("| 2 | virsh loop | 1/1 | 16.0 | 1.45 | – | – | 1200 | 1200 | 100 | – |"), "{t}");
        let widths: Vec<usize> = t.lines().map(|l| l.matches('|').count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "ragged table:\n{t}");
        assert_eq!(heading(&r), "## Drain benchmark (issue 15): 2026-12-02 (QEMU 10.0.2)");
        let md = section(&r);
        assert!(md.starts_with("## Drain benchmark (issue 15): 2026-12-02 (QEMU 10.0.2)\n"), "{md}");
        assert!(md.contains("\n- **Date:** 2026-12-02, from 04:30 UTC (2 min).\n- **Machine:** "), "{md}");
        assert!(md.contains(". A lab of 3 hosts (network namespaces); guests run under TCG (no KVM): 1 vCPU, the lab image.\n"), "{md}");
        assert!(md.contains("- 2 guests: vmove --parallel 1 11.0 s (×1.00), vmove --parallel 4 8.0 s (×0.73)"), "{md}");
        assert!(md.contains("- 2 guests, vmove --parallel 4, run 2: vmove host drain failed: drain of host1 incomplete — not moved: g1 failed"), "{md}");
        assert!(!md.lines().any(|l| l.starts_with("## ") && !l.starts_with("## Drain benchmark")), "one level-2 heading");
        let doc = "# Benchmarks\n\n## How to run\n\nx\n\n## Migration benchmark (issue 14): 2026-12-01 (QEMU 10.0.2)\n\nold\n";
        let put = crate::section::insert(doc, &md);
        assert!(put.find("## Drain benchmark").unwrap() < put.find("## Migration benchmark").unwrap(), "before the older reports");
        assert_eq!(crate::section::insert(&put, &md), put, "the same day's section is replaced");
        let full = markdown(&r);
        assert!(full.starts_with("# Drain benchmark"), "{full}");
        assert!(full.contains("| g1 | host2 | failed | – | 50 | 8.90 | 100 | 1 |"), "{full}");
    }

    #[test]
    fn a_progress_line() {
        let r = report();
        let l = line(&r.runs[0]);
        assert_eq!(l, "2 guests vmove --parallel 1 run 1: completed, drain 10000 ms (command – ms, predicted 12 s), outage sum 800 ms, most at once 1");
        assert!(line(&r.runs[3]).contains("NOT completed") && line(&r.runs[3]).ends_with("incomplete"));
    }
}
