//! Statistics over runs (pure).
use crate::model::{CellSpec, Contender, RunResult};

/// The median of the values (mean of the middle two for an even count); None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// `a / b`, when both are known and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// The longest time without an arrival inside `[start, end]`, counting the stretch from
/// `start` to the first arrival and from the last arrival to `end`. `arrivals` are sorted
/// times (any unit); arrivals outside the window are ignored.
pub fn longest_gap(arrivals: &[u64], start: u64, end: u64) -> u64 {
    if end <= start {
        return 0;
    }
    let mut last = start;
    let mut longest = 0;
    for &a in arrivals.iter().filter(|a| **a >= start && **a <= end) {
        longest = longest.max(a - last);
        last = a;
    }
    longest.max(end - last)
}

/// Every stretch of at least `min` without an arrival inside `[start, end]`, as
/// `(start of the gap − start, length)`, in arrival order (the window's edges count).
pub fn gaps(arrivals: &[u64], start: u64, end: u64, min: u64) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    if end <= start {
        return v;
    }
    let mut last = start;
    for &a in arrivals.iter().filter(|a| **a >= start && **a <= end) {
        if a - last >= min {
            v.push((last - start, a - last));
        }
        last = a;
    }
    if end - last >= min {
        v.push((last - start, end - last));
    }
    v
}

/// Requests sent in `[from, to]` (ms since the probe's start; `sent_at[seq]` is when
/// request `seq` went out) and how many of them never came back (`echoed`: the sequence
/// numbers that did).
pub fn lost(sent_at: &[u64], echoed: &[u64], from: u64, to: u64) -> (u64, u64) {
    let mut back = vec![false; sent_at.len()];
    for &s in echoed {
        if let Some(b) = usize::try_from(s).ok().and_then(|i| back.get_mut(i)) {
            *b = true;
        }
    }
    let inside: Vec<usize> = (0..sent_at.len()).filter(|&i| sent_at[i] >= from && sent_at[i] <= to).collect();
    let lost = inside.iter().filter(|&&i| !back[i]).count();
    (inside.len() as u64, lost as u64)
}

/// The first arrival at or after `t` (same unit as `arrivals`, sorted).
pub fn first_at_or_after(arrivals: &[u64], t: u64) -> Option<u64> {
    arrivals.iter().copied().find(|a| *a >= t)
}

/// Whether a run's TCP connection waited out a retransmission timeout: its longest stall is
/// more than 20 ms longer than the longest UDP gap (both are what the client saw).
pub fn waited_rto(r: &RunResult) -> Option<bool> {
    Some(r.outage.tcp_longest_stall_ms? > r.outage.udp_longest_gap_ms? + 20)
}

/// The predicted time over the measured total (vmove's prediction), when both are known.
pub fn prediction_ratio(r: &RunResult) -> Option<f64> {
    let p = r.prediction.as_ref()?.predicted_s?;
    let m = r.total_ms? as f64 / 1000.0;
    (m > 0.0).then(|| p / m)
}

/// Medians of one contender in one cell: times, downtime and bytes over the runs that
/// converged; the client's outage over those whose guest also survived (not damaged, still
/// answering: a dead guest's "outage" only ends with the measurement window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Runs.
    pub runs: usize,
    /// Runs that converged.
    pub converged: usize,
    /// Command start to the guest answering on the target, s.
    pub total_s: Option<f64>,
    /// The contender's command, wall clock, s.
    pub command_s: Option<f64>,
    /// Blackout on the wire (guest's last frame on the source tap → first on the target), ms.
    pub blackout_ms: Option<f64>,
    /// The guest's last frame on the source → the target's first RARP, ms.
    pub rarp_ms: Option<f64>,
    /// The target's cold start (its RESUME → the guest's first frame there), ms.
    pub cold_start_ms: Option<f64>,
    /// UDP requests never answered at the switchover (median over the surviving runs).
    pub udp_lost: Option<f64>,
    /// UDP requests never answered in the whole window, from the command's start (median).
    pub udp_lost_window: Option<f64>,
    /// Surviving runs that lost no UDP request, of those that counted.
    pub no_loss_runs: (usize, usize),
    /// Surviving runs whose TCP connection waited out a retransmission timeout, of those measured.
    pub rto_runs: (usize, usize),
    /// Surviving runs in which the client's TCP retransmitted a segment.
    pub retransmit_runs: usize,
    /// Predicted ÷ measured total (vmove), median.
    pub predicted_over_measured: Option<f64>,
    /// Runs whose prediction was within ±30 % of the measured total, of those with both.
    pub predicted_within: (usize, usize),
    /// QEMU's total-time, s.
    pub qemu_s: Option<f64>,
    /// QEMU's downtime, ms.
    pub downtime_ms: Option<f64>,
    /// Longest UDP gap, ms.
    pub udp_gap_ms: Option<f64>,
    /// Longest TCP stall, ms.
    pub tcp_stall_ms: Option<f64>,
    /// Longest HTTP gap, ms.
    pub http_gap_ms: Option<f64>,
    /// Bytes sent / guest memory.
    pub sent_over_memory: Option<f64>,
    /// Memory bytes sent, as the tool reports them.
    pub memory_sent_bytes: Option<f64>,
    /// Bytes of the local disk copied, as the tool reports them.
    pub disk_bytes: Option<f64>,
    /// The disk copy until the mirrors were in sync, s (vmove).
    pub disk_copy_s: Option<f64>,
    /// Bytes out of host1's management link while the command ran.
    pub link_bytes: Option<f64>,
    /// Dirty rate achieved before the migration (all runs), MB/s.
    pub dirty_mb_s: Option<f64>,
    /// Runs in which the TCP connection broke.
    pub tcp_broken: usize,
    /// Runs after which the guest did not answer.
    pub dead_after: usize,
    /// Runs whose guest was damaged (console: oops, failed verification).
    pub damaged: usize,
}

fn med<F: Fn(&RunResult) -> Option<f64>>(runs: &[&RunResult], f: F) -> Option<f64> {
    median(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
}

/// Summarises the runs of `contender` in `cell`.
pub fn summarize(runs: &[RunResult], cell: &str, contender: Contender) -> Summary {
    let all: Vec<&RunResult> = runs.iter().filter(|r| r.cell == cell && r.contender == contender).collect();
    let ok: Vec<&RunResult> = all.iter().copied().filter(|r| r.converged).collect();
    let alive: Vec<&RunResult> = ok.iter().copied().filter(|r| r.answers_after && r.damage.is_none()).collect();
    Summary {
        runs: all.len(),
        converged: ok.len(),
        total_s: med(&ok, |r| r.total_ms.map(|m| m as f64 / 1000.0)),
        command_s: med(&ok, |r| r.command_ms.map(|m| m as f64 / 1000.0)),
        blackout_ms: med(&ok, |r| r.wire.blackout_ms()),
        rarp_ms: med(&ok, |r| r.wire.rarp_ms()),
        cold_start_ms: med(&ok, |r| r.wire.cold_start_ms()),
        udp_lost: med(&alive, |r| r.outage.lost_at_switchover().map(|n| n as f64)),
        udp_lost_window: med(&alive, |r| r.outage.udp_lost.map(|n| n as f64)),
        no_loss_runs: (
            alive.iter().filter(|r| r.outage.lost_at_switchover() == Some(0)).count(),
            alive.iter().filter(|r| r.outage.lost_at_switchover().is_some()).count(),
        ),
        rto_runs: (
            alive.iter().filter(|r| waited_rto(r) == Some(true)).count(),
            alive.iter().filter(|r| waited_rto(r).is_some()).count(),
        ),
        retransmit_runs: alive.iter().filter(|r| r.outage.tcp_retransmits.is_some_and(|n| n > 0)).count(),
        predicted_over_measured: med(&ok, prediction_ratio),
        predicted_within: (
            ok.iter().filter_map(|r| prediction_ratio(r)).filter(|x| (0.7..=1.3).contains(x)).count(),
            ok.iter().filter_map(|r| prediction_ratio(r)).count(),
        ),
        qemu_s: med(&ok, |r| r.qemu_total_ms.map(|m| m as f64 / 1000.0)),
        downtime_ms: med(&ok, |r| r.downtime_ms.map(|m| m as f64)),
        udp_gap_ms: med(&alive, |r| r.outage.udp_longest_gap_ms.map(|m| m as f64)),
        tcp_stall_ms: med(&alive, |r| r.outage.tcp_longest_stall_ms.map(|m| m as f64)),
        http_gap_ms: med(&alive, |r| r.outage.http_longest_gap_ms.map(|m| m as f64)),
        sent_over_memory: med(&ok, |r| {
            r.transferred_bytes.filter(|_| r.memory_bytes > 0).map(|b| b as f64 / r.memory_bytes as f64)
        }),
        memory_sent_bytes: med(&ok, |r| r.transferred_bytes.map(|b| b as f64)),
        disk_bytes: med(&ok, |r| r.disk_bytes.map(|b| b as f64)),
        disk_copy_s: med(&ok, |r| r.disk_copy_ms.map(|m| m as f64 / 1000.0)),
        link_bytes: med(&ok, |r| r.link_bytes.map(|b| b as f64)),
        dirty_mb_s: med(&all, |r| r.dirty_rate_mb_s),
        tcp_broken: all.iter().filter(|r| r.outage.tcp_error.is_some()).count(),
        dead_after: all.iter().filter(|r| !r.answers_after).count(),
        damaged: all.iter().filter(|r| r.damage.is_some()).count(),
    }
}

/// The physical limit of a cell: the guest's touched memory (median over the runs that
/// report it) and the time to move it at the link's measured rate, s.
pub fn physical_limit(runs: &[RunResult], cell: &CellSpec) -> (Option<f64>, Option<f64>) {
    let id = cell.id();
    let touched = median(&runs.iter().filter(|r| r.cell == id).filter_map(|r| r.touched_bytes.map(|b| b as f64)).collect::<Vec<_>>());
    let secs = touched.and_then(|t| (cell.link_bytes_per_s > 0.0).then(|| t / cell.link_bytes_per_s));
    (touched, secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outage, Workload};

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(6.0), Some(3.0)), Some(2.0));
        assert_eq!(ratio(Some(6.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn gaps_count_the_window_edges() {
        assert_eq!(longest_gap(&[], 10, 30), 20);
        assert_eq!(longest_gap(&[10, 11, 12, 40, 41], 10, 42), 28);
        // open at the end: nothing came back after 12
        assert_eq!(longest_gap(&[10, 11, 12], 10, 100), 88);
        // open at the start
        assert_eq!(longest_gap(&[50, 51], 0, 52), 50);
        // arrivals outside the window are ignored
        assert_eq!(longest_gap(&[1, 2, 20, 21, 200], 15, 25), 5);
        assert_eq!(longest_gap(&[1], 5, 5), 0);
    }

    #[test]
    fn lost_requests_in_the_window() {
        // requests 0..6 sent at 0, 10, ..., 50 ms; 2 and 3 never came back, 5 came back twice
        let sent = [0, 10, 20, 30, 40, 50];
        assert_eq!(lost(&sent, &[0, 1, 4, 5, 5], 5, 45), (4, 2));
        assert_eq!(lost(&sent, &[0, 1, 2, 3, 4, 5, 99], 0, 50), (6, 0));
        assert_eq!(lost(&[], &[], 0, 10), (0, 0));
        assert_eq!(first_at_or_after(&[1, 5, 9], 5), Some(5));
        assert_eq!(first_at_or_after(&[1, 5, 9], 10), None);
    }

    #[test]
    fn rto_and_prediction() {
        let mut r = run("a", Contender::Vmove, true, 10_000, 100);
        assert_eq!(waited_rto(&r), None, "no TCP figure");
        r.outage.tcp_longest_stall_ms = Some(120);
        assert_eq!(waited_rto(&r), Some(false));
        r.outage.tcp_longest_stall_ms = Some(121);
        assert_eq!(waited_rto(&r), Some(true));
        assert_eq!(prediction_ratio(&r), None);
        r.prediction = Some(crate::model::Prediction { predicted_s: Some(12.0), ..Default::default() });
        assert_eq!(prediction_ratio(&r), Some(1.2));
        let s = summarize(&[r], "a", Contender::Vmove);
        assert_eq!((s.predicted_within, s.rto_runs), ((1, 1), (1, 1)));
    }

    #[test]
    fn gap_lists() {
        assert_eq!(gaps(&[10, 11, 12, 40, 41], 10, 100, 20), vec![(2, 28), (31, 59)]);
        assert_eq!(gaps(&[10, 11], 0, 12, 5), vec![(0, 10)]);
        assert!(gaps(&[1, 2, 3], 1, 3, 5).is_empty());
    }

    fn run(cell: &str, c: Contender, converged: bool, total_ms: u64, udp: u64) -> RunResult {
        let mut r = RunResult::new(cell.into(), c, 1, "g".into(), 1000);
        r.converged = converged;
        r.total_ms = Some(total_ms);
        r.transferred_bytes = Some(1500);
        r.touched_bytes = Some(400);
        r.answers_after = true;
        r.outage = Outage { udp_longest_gap_ms: Some(udp), ..Default::default() };
        r
    }

    #[test]
    fn summaries_use_converged_runs_only() {
        let runs = vec![
            run("a", Contender::Vmove, true, 1000, 10),
            run("a", Contender::Vmove, true, 3000, 30),
            run("a", Contender::Vmove, false, 99000, 1),
            {
                let mut dead = run("a", Contender::Vmove, true, 2000, 5000);
                dead.damage = Some("Oops".into());
                dead
            },
            run("a", Contender::Qemu, true, 5000, 50),
            run("b", Contender::Vmove, true, 7000, 70),
        ];
        let s = summarize(&runs, "a", Contender::Vmove);
        assert_eq!((s.runs, s.converged, s.damaged), (4, 3, 1));
        assert_eq!(s.total_s, Some(2.0));
        assert_eq!(s.udp_gap_ms, Some(20.0), "the damaged run's outage is not in the median");
        assert_eq!(s.sent_over_memory, Some(1.5));
        assert_eq!(s.dead_after, 0);
        let none = summarize(&runs, "a", Contender::Virsh);
        assert_eq!((none.runs, none.total_s), (0, None));
    }

    #[test]
    fn physical_limit_is_touched_memory_over_link_rate() {
        let cell = CellSpec::raw(512, Workload::Idle, 0, 200.0);
        let runs = vec![run("512M-idle", Contender::Qemu, true, 1, 1), run("other", Contender::Qemu, true, 1, 1)];
        assert_eq!(physical_limit(&runs, &cell), (Some(400.0), Some(2.0)));
    }
}
