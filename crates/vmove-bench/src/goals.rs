//! The release's goals, checked per cell against the other contenders of the same run
//! (pure): each goal's figure for vmove, what it is compared with, the ratio, and met /
//! not met.
use std::fmt::Write;

use crate::model::{CellSpec, Contender, Report, Workload};
use crate::report::num;
use crate::stats::{ratio, summarize, Summary};

/// One goal in one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalRow {
    /// Which goal ([`GOALS`]).
    pub goal: usize,
    /// The cell's id.
    pub cell: String,
    /// vmove's figure.
    pub vmove: String,
    /// What it is compared with.
    pub against: String,
    /// vmove ÷ the comparison, where the goal is a ratio.
    pub ratio: Option<f64>,
    /// Met (None: no figures to judge).
    pub met: Option<bool>,
}

/// The goals, in report order: what each asks.
pub const GOALS: [&str; 7] = [
    "blackout on the wire ≤ 0.5× QEMU by hand's",
    "no UDP request lost in ≥ 4 of 5 runs",
    "TCP never waits out an RTO (stall ≤ UDP gap + 20 ms)",
    "client UDP gap (median) ≤ 0.8× the best other contender's",
    "total ≤ 1.1× QEMU by hand's (idle and HTTP cells)",
    "2x-link: converges in every run, no damaged guest, where QEMU's defaults do not",
    "predicted total within ±30 % of the measured total",
];

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0} ms")).unwrap_or_else(|| "–".into())
}

fn best(others: &[(Contender, Summary)], f: impl Fn(&Summary) -> Option<f64>) -> Option<(Contender, f64)> {
    others.iter().filter_map(|(c, s)| f(s).map(|v| (*c, v))).min_by(|a, b| a.1.total_cmp(&b.1))
}

fn count(c: Contender, k: usize, n: usize) -> String {
    format!("{}: {k}/{n}", c.id())
}

/// Every goal's rows for one cell.
pub fn cell_goals(r: &Report, cell: &CellSpec) -> Vec<GoalRow> {
    let id = cell.id();
    let v = summarize(&r.runs, &id, Contender::Vmove);
    if v.runs == 0 {
        return Vec::new();
    }
    let others: Vec<(Contender, Summary)> = r
        .contenders
        .iter()
        .filter(|c| c.migrates() && **c != Contender::Vmove)
        .map(|&c| (c, summarize(&r.runs, &id, c)))
        .filter(|(_, s)| s.runs > 0)
        .collect();
    let qemu = others.iter().find(|(c, _)| *c == Contender::Qemu).map(|(_, s)| s);
    let row = |goal, vmove: String, against: String, ratio: Option<f64>, met: Option<bool>| GoalRow {
        goal,
        cell: id.clone(),
        vmove,
        against,
        ratio,
        met,
    };
    let mut rows = Vec::new();
    // 0: blackout vs QEMU by hand.
    let q_black = qemu.and_then(|q| q.blackout_ms);
    let rb = ratio(v.blackout_ms, q_black);
    let best_black = best(&others, |s| s.blackout_ms).map(|(c, x)| format!(" (best: {} {x:.0} ms)", c.id())).unwrap_or_default();
    rows.push(row(0, ms(v.blackout_ms), format!("qemu {}{best_black}", ms(q_black)), rb, rb.map(|x| x <= 0.5)));
    // 1: frames lost.
    let (k, n) = v.no_loss_runs;
    let against = others.iter().map(|(c, s)| count(*c, s.no_loss_runs.0, s.no_loss_runs.1)).collect::<Vec<_>>().join(", ");
    rows.push(row(1, format!("{k}/{n} runs without loss"), against, None, (n > 0).then_some(k * 5 >= n * 4)));
    // 2: RTO.
    let (k, n) = v.rto_runs;
    let against = others.iter().map(|(c, s)| count(*c, s.rto_runs.0, s.rto_runs.1)).collect::<Vec<_>>().join(", ");
    rows.push(row(2, format!("{k}/{n} runs waited out an RTO"), against, None, (n > 0).then_some(k == 0)));
    // 3: UDP gap vs the best other.
    let b = best(&others, |s| s.udp_gap_ms);
    let ru = ratio(v.udp_gap_ms, b.map(|x| x.1));
    rows.push(row(
        3,
        ms(v.udp_gap_ms),
        b.map(|(c, x)| format!("{} {x:.0} ms", c.id())).unwrap_or_else(|| "–".into()),
        ru,
        ru.map(|x| x <= 0.8),
    ));
    // 4: total vs QEMU by hand, raw-link cells.
    if matches!(cell.workload, Workload::Idle | Workload::Http20) {
        let q = qemu.and_then(|q| q.total_s);
        let rt = ratio(v.total_s, q);
        let s = |x: Option<f64>| x.map(|t| format!("{t:.2} s")).unwrap_or_else(|| "–".into());
        rows.push(row(4, s(v.total_s), format!("qemu {}", s(q)), rt, rt.map(|x| x <= 1.1)));
    }
    // 5: 2x-link convergence.
    if cell.workload == Workload::TwoXLink {
        let clean = |s: &Summary| s.converged == s.runs && s.damaged == 0 && s.dead_after == 0;
        let show = |s: &Summary| format!("{}/{} converged, {} damaged, {} unreachable", s.converged, s.runs, s.damaged, s.dead_after);
        let against = match qemu {
            Some(q) if clean(q) => format!("qemu {} (QEMU's defaults did too)", show(q)),
            Some(q) => format!("qemu {}", show(q)),
            None => "qemu not run".into(),
        };
        rows.push(row(5, show(&v), against, None, Some(clean(&v))));
    }
    // 6: prediction.
    let (k, n) = v.predicted_within;
    let what = format!("{k}/{n} within ±30 % (median predicted ÷ measured {})", num(v.predicted_over_measured, 2));
    rows.push(row(6, what, "the measured total".into(), v.predicted_over_measured, (n > 0).then_some(k == n)));
    rows
}

fn verdict(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "n/a",
    }
}

/// The goals section (`heading`: its Markdown heading marks, `##` in `report.md`): a
/// summary per goal, then every cell's figures and ratios.
pub fn markdown(r: &Report, heading: &str) -> String {
    let rows: Vec<GoalRow> = r.cells.iter().flat_map(|c| cell_goals(r, c)).collect();
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let _ = writeln!(out, "{heading} Goals\n");
    let _ = writeln!(
        out,
        "Each goal is vmove's figure against the other contenders of this same run (medians over the converged \
         runs; outage figures over the runs whose guest survived). A goal is met when it is met in every cell \
         where it could be judged.\n"
    );
    let _ = writeln!(out, "| goal | verdict | cells met |\n|---|---|---:|");
    for (i, g) in GOALS.iter().enumerate() {
        let mine: Vec<&GoalRow> = rows.iter().filter(|x| x.goal == i).collect();
        let judged: Vec<bool> = mine.iter().filter_map(|x| x.met).collect();
        let all = (!judged.is_empty()).then(|| judged.iter().all(|m| *m));
        let _ = writeln!(out, "| {g} | {} | {}/{} |", verdict(all), judged.iter().filter(|m| **m).count(), judged.len());
    }
    let _ = writeln!(out, "\n| goal | cell | vmove | against | ratio | verdict |\n|---|---|---|---|---:|---|");
    for x in &rows {
        let _ = writeln!(out, "| {} | {} | {} | {} | {} | {} |", GOALS[x.goal], x.cell, x.vmove, x.against, num(x.ratio, 2), verdict(x.met));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outage, Prediction, RunResult, Wire};

    #[allow(clippy::too_many_arguments)]
    fn run(cell: &CellSpec, c: Contender, i: u32, blackout_ms: u64, udp: u64, tcp: u64, total_ms: u64, lost: u64) -> RunResult {
        let mut x = RunResult::new(cell.id(), c, i, format!("g{i}"), 512 << 20);
        x.converged = true;
        x.answers_after = true;
        x.total_ms = Some(total_ms);
        x.wire = Wire { src_last_frame_us: Some(1_000_000), dst_first_frame_us: Some(1_000_000 + blackout_ms * 1000), ..Default::default() };
        x.outage = Outage { udp_longest_gap_ms: Some(udp), tcp_longest_stall_ms: Some(tcp), udp_lost: Some(lost), ..Default::default() };
        x
    }

    fn report(cells: Vec<CellSpec>, runs: Vec<RunResult>) -> Report {
        Report { contenders: vec![Contender::Vmove, Contender::Qemu, Contender::Virsh, Contender::Control], cells, runs, ..Default::default() }
    }

    #[test]
    fn goals_against_the_same_run() {
        let cell = CellSpec::raw(512, Workload::Idle, 0, 1e9);
        let mut runs = Vec::new();
        for i in 1..=5 {
            let mut v = run(&cell, Contender::Vmove, i, 40, 60, 70, 2000, u64::from(i == 3));
            v.prediction = Some(Prediction { predicted_s: Some(if i == 5 { 4.0 } else { 2.2 }), ..Default::default() });
            runs.push(v);
            runs.push(run(&cell, Contender::Qemu, i, 100, 120, 330, 1900, 5));
            runs.push(run(&cell, Contender::Virsh, i, 90, 80, 300, 2500, 4));
        }
        let r = report(vec![cell.clone()], runs);
        let g = cell_goals(&r, &cell);
        let by = |i: usize| g.iter().find(|x| x.goal == i).unwrap();
        assert_eq!((by(0).ratio, by(0).met), (Some(0.4), Some(true)));
        assert_eq!(by(0).against, "qemu 100 ms (best: virsh 90 ms)");
        assert_eq!(by(1).vmove, "4/5 runs without loss");
        assert_eq!(by(1).met, Some(true));
        assert_eq!(by(1).against, "qemu: 0/5, virsh: 0/5");
        assert_eq!(by(2).met, Some(true), "70 ≤ 60 + 20");
        assert_eq!(by(2).against, "qemu: 5/5, virsh: 5/5");
        assert_eq!((by(3).ratio, by(3).met), (Some(0.75), Some(true)), "60 against virsh's 80");
        assert_eq!(by(4).met, Some(true), "2.0 ≤ 1.1 × 1.9");
        assert!(g.iter().all(|x| x.goal != 5), "not a 2x-link cell");
        assert_eq!(by(6).met, Some(false), "one run predicted 4 s for 2 s");
        let md = markdown(&r, "##");
        assert!(md.starts_with("## Goals\n"), "{md}");
        assert!(md.contains("| predicted total within ±30 % of the measured total | **not met** | 0/1 |"), "{md}");
        assert!(md.contains("| blackout on the wire ≤ 0.5× QEMU by hand's | met | 1/1 |"), "{md}");
        assert!(md.contains("| 2x-link: converges in every run, no damaged guest, where QEMU's defaults do not | n/a | 0/0 |"), "{md}");
    }

    #[test]
    fn two_x_link_convergence() {
        let cell = CellSpec { workload: Workload::TwoXLink, link_cap_mbit: Some(1000), ..CellSpec::raw(512, Workload::Idle, 240, 1.2e8) };
        let mut runs = Vec::new();
        for i in 1..=5 {
            runs.push(run(&cell, Contender::Vmove, i, 300, 400, 410, 30_000, 0));
            let mut q = run(&cell, Contender::Qemu, i, 0, 0, 0, 0, 0);
            q.converged = false;
            runs.push(q);
        }
        let r = report(vec![cell.clone()], runs.clone());
        let g = cell_goals(&r, &cell);
        let two = g.iter().find(|x| x.goal == 5).unwrap();
        assert_eq!(two.met, Some(true));
        assert_eq!(two.against, "qemu 0/5 converged, 0 damaged, 0 unreachable");
        assert_eq!(g.iter().find(|x| x.goal == 0).unwrap().met, None, "QEMU has no blackout to compare");
        runs[0].damage = Some("Oops".into());
        let g = cell_goals(&report(vec![cell.clone()], runs), &cell);
        assert_eq!(g.iter().find(|x| x.goal == 5).unwrap().met, Some(false));
        assert!(cell_goals(&report(vec![cell.clone()], vec![]), &cell).is_empty(), "no vmove runs, no goals");
    }
}
