//! The drain benchmark's data (issue 15), what `drain.json` holds, and the pure parts:
//! vmove's JSON lines, and drain time and outage sums from the client's samples.
use serde::{Deserialize, Serialize};

use crate::model::{Conditions, Machine};
use crate::stats;

/// Who drains host1, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum DrainConfig {
    /// `vmove --json host drain host1 [--parallel P]` (None: vmove's default, no flag).
    Vmove {
        /// `--parallel`, if given.
        parallel: Option<u32>,
    },
    /// A sequential loop of `virsh migrate --live GUEST qemu+tcp://TARGET/system
    /// --migrateuri tcp://TARGET` over the same guests, each to vmove's planned target.
    VirshLoop,
}

impl DrainConfig {
    /// `vmove --parallel 2`, `vmove (default)`, `virsh loop`.
    pub fn label(self) -> String {
        match self {
            DrainConfig::Vmove { parallel: Some(p) } => format!("vmove --parallel {p}"),
            DrainConfig::Vmove { parallel: None } => "vmove (default)".into(),
            DrainConfig::VirshLoop => "virsh loop".into(),
        }
    }

    /// Whether libvirt runs it.
    pub fn is_libvirt(self) -> bool {
        self == DrainConfig::VirshLoop
    }
}

/// One guest of one drain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestResult {
    /// The guest's name.
    pub guest: String,
    /// Where it went (vmove's report, or the loop's target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// How its move ended: vmove's outcome (`moved`, `failed`, ...), `moved` or `failed` for virsh.
    pub outcome: String,
    /// The tool's own time for its move (vmove's row time, one `virsh migrate` wall clock), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_ms: Option<u64>,
    /// QEMU's downtime as the tool reports it, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// The guest's first frame on its target's tap, ms after the drain started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_frame_ms: Option<u64>,
    /// The guest answering on its target: the first UDP echo at or after that frame, ms
    /// after the drain started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_ms: Option<u64>,
    /// The longest time without a UDP echo from the drain's start to the probes' end, ms
    /// (the move's outage as the client saw it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_gap_ms: Option<u64>,
    /// Every UDP gap of 20 ms or more in that window: (start after the drain started, length), ms.
    #[serde(default)]
    pub udp_gaps: Vec<(u64, u64)>,
    /// UDP requests sent and echoes received in the window.
    pub udp_sent: u64,
    /// See `udp_sent`.
    pub udp_received: u64,
}

/// One drain of host1 by one configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainRun {
    /// Guests on host1.
    pub guests: u32,
    /// Who drained it.
    pub config: DrainConfig,
    /// Run number, from 1.
    pub run: u32,
    /// Every guest moved (and answered on its target).
    pub completed: bool,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The command(s)' wall clock: `vmove host drain`, or the whole `virsh migrate` loop, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_ms: Option<u64>,
    /// From the start of the command(s) to the last guest answering on its target, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_ms: Option<u64>,
    /// The sum over the guests of their longest UDP gap, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_sum_ms: Option<u64>,
    /// The sum over the guests of every UDP gap of 20 ms or more, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaps_sum_ms: Option<u64>,
    /// vmove's plan: its predicted duration, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_s: Option<u64>,
    /// vmove's own total, ms (its report's `actual_total_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmove_total_ms: Option<u64>,
    /// The most moves that ran at once (vmove's report; 1 for the loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<usize>,
    /// The dirty rate the guests achieved just before the drain, MB/s, mean over the guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate_mb_s: Option<f64>,
    /// Per guest, in boot order.
    pub per_guest: Vec<GuestResult>,
    /// Anything else worth keeping.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl DrainRun {
    /// A run that has measured nothing yet.
    pub fn new(guests: u32, config: DrainConfig, run: u32) -> DrainRun {
        DrainRun {
            guests,
            config,
            run,
            completed: false,
            error: None,
            command_ms: None,
            drain_ms: None,
            outage_sum_ms: None,
            gaps_sum_ms: None,
            predicted_s: None,
            vmove_total_ms: None,
            max_running: None,
            dirty_rate_mb_s: None,
            per_guest: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Fills in the drain time and the outage sums from the guests' figures.
    pub fn totals(&mut self) {
        self.drain_ms = drain_ms(&self.per_guest);
        self.outage_sum_ms = outage_sum_ms(&self.per_guest);
        self.gaps_sum_ms = gaps_sum_ms(&self.per_guest);
        self.completed = self.error.is_none() && self.drain_ms.is_some() && self.per_guest.iter().all(|g| g.outcome == "moved");
    }

    /// vmove's predicted duration over the measured drain time.
    pub fn predicted_over_measured(&self) -> Option<f64> {
        let p = self.predicted_s? as f64;
        let m = self.drain_ms? as f64 / 1000.0;
        (m > 0.0).then(|| p / m)
    }
}

/// The drain benchmark's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainSettings {
    /// Guest counts (N).
    pub guests: Vec<u32>,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Each guest's dirty rate, MB/s, over a working set of `wss_mib`.
    pub dirty_mb_s: u32,
    /// See `dirty_mb_s`.
    pub wss_mib: u32,
    /// Runs per configuration.
    pub runs: u32,
    /// The configurations, in the order of the first run.
    pub configs: Vec<DrainConfig>,
    /// One UDP echo request per guest every this many ms.
    pub probe_interval_ms: u64,
    /// Budget of one drain, s.
    pub budget_s: u64,
}

/// Everything `drain.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Start, UTC, RFC 3339.
    pub started: String,
    /// Wall time, s.
    pub duration_s: u64,
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Load and foreign QEMUs.
    pub conditions: Conditions,
    /// Settings.
    pub settings: DrainSettings,
    /// Configurations left out, and why.
    pub left_out: Vec<(DrainConfig, String)>,
    /// Every drain.
    pub runs: Vec<DrainRun>,
    /// Remarks.
    pub remarks: Vec<String>,
}

/// The last guest answering on its target, ms after the drain started; None unless every
/// guest did.
pub fn drain_ms(guests: &[GuestResult]) -> Option<u64> {
    if guests.is_empty() {
        return None;
    }
    guests.iter().map(|g| g.answered_ms).collect::<Option<Vec<u64>>>()?.into_iter().max()
}

/// The guests' longest UDP gaps, summed; None unless every guest has one.
pub fn outage_sum_ms(guests: &[GuestResult]) -> Option<u64> {
    if guests.is_empty() {
        return None;
    }
    guests.iter().map(|g| g.udp_gap_ms).sum()
}

/// Every UDP gap of 20 ms or more of every guest, summed.
pub fn gaps_sum_ms(guests: &[GuestResult]) -> Option<u64> {
    (!guests.is_empty()).then(|| guests.iter().flat_map(|g| g.udp_gaps.iter().map(|(_, len)| *len)).sum())
}

/// A guest's client-side figures from its UDP echo arrivals (ms since the probe started,
/// sorted): the window is `[start, end]` (the drain's start to the probes' end), and
/// `target_frame` the guest's first frame on its target's tap (same clock), if seen.
/// Fills `target_frame_ms`, `answered_ms` (relative to `start`), `udp_gap_ms` and `udp_gaps`.
pub fn client_view(g: &mut GuestResult, arrivals: &[u64], start: u64, end: u64, target_frame: Option<u64>) {
    g.udp_gap_ms = (!arrivals.is_empty() && end > start).then(|| stats::longest_gap(arrivals, start, end));
    g.udp_gaps = stats::gaps(arrivals, start, end, 20);
    g.target_frame_ms = target_frame.map(|t| t.saturating_sub(start));
    g.answered_ms =
        target_frame.and_then(|t| stats::first_at_or_after(arrivals, t)).filter(|a| *a <= end).map(|a| a.saturating_sub(start));
}

/// What vmove's `--json host drain` printed that the benchmark uses.
#[derive(Debug, Clone, PartialEq)]
pub enum VmoveDrainLine {
    /// `{"maintenance": ..., "drain": ID}`: the drain's id.
    Drain(String),
    /// `{"kind", "host", "plan": {...}}`: each guest's target, and the predicted duration.
    Plan {
        /// (guest, target), in the plan's order.
        targets: Vec<(String, String)>,
        /// The plan's `predicted_total_s`.
        predicted_total_s: u64,
    },
    /// `{"report": {...}}`: the end.
    Report(VmoveDrainReport),
}

/// The end of a vmove drain: its `{"report": ...}` line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmoveDrainReport {
    /// One row per guest.
    pub rows: Vec<VmoveRow>,
    /// The plan's prediction, s.
    pub predicted_total_s: u64,
    /// vmove's own total, ms.
    pub actual_total_ms: u64,
    /// The most moves at once.
    #[serde(default)]
    pub max_running: usize,
}

/// One row of vmove's drain report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmoveRow {
    /// The guest.
    pub guest: String,
    /// Where it went (or was last tried).
    #[serde(default)]
    pub to: Option<String>,
    /// `moved`, `failed`, `not_placed`, `unknown`, `cancelled`.
    pub outcome: String,
    /// From the first attempt's start to its end, ms.
    #[serde(default)]
    pub elapsed_ms: Option<u64>,
    /// QEMU's downtime, ms.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
}

#[derive(Deserialize)]
struct PlanMove {
    guest: String,
    to: String,
}

#[derive(Deserialize)]
struct PlanBody {
    moves: Vec<PlanMove>,
    predicted_total_s: u64,
}

/// One line of `vmove --json host drain`'s output, if it is one the benchmark uses.
pub fn vmove_drain_line(line: &str) -> Option<VmoveDrainLine> {
    let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    if let Some(r) = v.get("report") {
        return serde_json::from_value(r.clone()).ok().map(VmoveDrainLine::Report);
    }
    if let Some(p) = v.get("plan") {
        let p: PlanBody = serde_json::from_value(p.clone()).ok()?;
        return Some(VmoveDrainLine::Plan {
            targets: p.moves.into_iter().map(|m| (m.guest, m.to)).collect(),
            predicted_total_s: p.predicted_total_s,
        });
    }
    if v.get("maintenance").is_some() {
        return v.get("drain").and_then(|d| d.as_str()).map(|d| VmoveDrainLine::Drain(d.to_string()));
    }
    None
}

/// The targets of a plan by guest position: `names[i]`'s target, from `targets` (guest, to).
/// None when a guest has no target in the plan.
pub fn targets_by_position(names: &[String], targets: &[(String, String)]) -> Option<Vec<String>> {
    names.iter().map(|n| targets.iter().find(|(g, _)| g == n).map(|(_, t)| t.clone())).collect()
}

/// Targets when no vmove plan is at hand: host2, host3, host2, ... (the planner's spread
/// for identical guests on two empty targets).
pub fn alternating_targets(n: usize, targets: &[&str]) -> Vec<String> {
    if targets.is_empty() {
        return Vec::new();
    }
    (0..n).map(|i| targets[i % targets.len()].to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(answered: Option<u64>, gap: Option<u64>) -> GuestResult {
        GuestResult { guest: "g".into(), outcome: "moved".into(), answered_ms: answered, udp_gap_ms: gap, ..Default::default() }
    }

    #[test]
    fn drain_time_is_the_last_guest_answering() {
        let gs = [guest(Some(4000), Some(300)), guest(Some(9500), Some(450)), guest(Some(7000), Some(250))];
        assert_eq!(drain_ms(&gs), Some(9500));
        assert_eq!(outage_sum_ms(&gs), Some(1000));
        let mut missing = gs.to_vec();
        missing[1].answered_ms = None;
        assert_eq!(drain_ms(&missing), None, "a guest that never answered on its target: no drain time");
        missing[2].udp_gap_ms = None;
        assert_eq!(outage_sum_ms(&missing), None);
        assert_eq!(drain_ms(&[]), None);
        assert_eq!(outage_sum_ms(&[]), None);
        assert_eq!(gaps_sum_ms(&[]), None);
    }

    #[test]
    fn totals_and_the_prediction() {
        let mut r = DrainRun::new(2, DrainConfig::Vmove { parallel: Some(2) }, 1);
        r.per_guest = vec![guest(Some(3000), Some(200)), guest(Some(6000), Some(300))];
        r.per_guest[0].udp_gaps = vec![(100, 40), (2800, 200)];
        r.per_guest[1].udp_gaps = vec![(5700, 300)];
        r.predicted_s = Some(9);
        r.totals();
        assert!(r.completed);
        assert_eq!((r.drain_ms, r.outage_sum_ms, r.gaps_sum_ms), (Some(6000), Some(500), Some(540)));
        assert_eq!(r.predicted_over_measured(), Some(1.5));
        r.per_guest[1].outcome = "failed".into();
        r.totals();
        assert!(!r.completed, "a guest not moved: not completed");
        let mut v = DrainRun::new(2, DrainConfig::VirshLoop, 1);
        v.totals();
        assert!(!v.completed && v.predicted_over_measured().is_none());
    }

    #[test]
    fn a_guest_seen_by_the_client() {
        // Echoes every 5 ms from 0 to 1000, none until 1600 (the switchover), then every 5 ms.
        let mut arr: Vec<u64> = (0..=200).map(|i| i * 5).collect();
        arr.extend((0..=100).map(|i| 1600 + i * 5));
        let mut g = GuestResult::default();
        client_view(&mut g, &arr, 500, 2000, Some(1590));
        assert_eq!(g.udp_gap_ms, Some(600));
        assert_eq!(g.udp_gaps, vec![(500, 600)]);
        assert_eq!((g.target_frame_ms, g.answered_ms), (Some(1090), Some(1100)));
        let mut none = GuestResult::default();
        client_view(&mut none, &arr, 500, 2000, None);
        assert_eq!((none.answered_ms, none.udp_gap_ms), (None, Some(600)), "no frame on the target: not answered there");
        let mut late = GuestResult::default();
        client_view(&mut late, &arr, 500, 2000, Some(2100));
        assert_eq!(late.answered_ms, None, "nothing after the frame inside the window");
        let mut silent = GuestResult::default();
        client_view(&mut silent, &[], 0, 2000, Some(5));
        assert_eq!((silent.udp_gap_ms, silent.answered_ms), (None, None));
    }

    #[test]
    fn vmove_json_lines() {
        let drain = r#"{"maintenance":{"changed":true},"drain":"drain-host1-3"}"#;
        assert_eq!(vmove_drain_line(drain), Some(VmoveDrainLine::Drain("drain-host1-3".into())));
        let plan = r#"{"kind":"drain","host":"host1","plan":{"moves":[
            {"guest":"dv-1","from":"host1","to":"host2","mode":"LIVE","memory_mib":512,"vcpus":1,"predicted_s":7,"start_s":0,"end_s":7},
            {"guest":"dv-2","from":"host1","to":"host3","mode":"LIVE","memory_mib":512,"vcpus":1,"predicted_s":7,"notes":["x"],"start_s":0,"end_s":7}],
            "unplaced":[],"limits":{"max_concurrent":5,"max_out_per_host":2,"max_in_per_host":2},"predicted_total_s":7}}"#;
        let plan = plan.replace('\n', "");
        assert_eq!(
            vmove_drain_line(&plan),
            Some(VmoveDrainLine::Plan {
                targets: vec![("dv-1".into(), "host2".into()), ("dv-2".into(), "host3".into())],
                predicted_total_s: 7
            })
        );
        let report = r#"{"report":{"kind":"drain","host":"host1","rows":[
            {"guest":"dv-1","from":"host1","to":"host2","mode":"LIVE","outcome":"moved","attempts":1,"jobs":["host2-1"],"elapsed_ms":2300,"downtime_ms":41,"predicted_s":7},
            {"guest":"dv-2","from":"host1","mode":"LIVE","outcome":"not_placed","attempts":0,"jobs":[]}],
            "predicted_total_s":7,"actual_total_ms":5120,"max_running":2}}"#
            .replace('\n', "");
        let Some(VmoveDrainLine::Report(r)) = vmove_drain_line(&report) else { panic!("no report") };
        assert_eq!((r.predicted_total_s, r.actual_total_ms, r.max_running), (7, 5120, 2));
        assert_eq!(r.rows[0], VmoveRow { guest: "dv-1".into(), to: Some("host2".into()), outcome: "moved".into(), elapsed_ms: Some(2300), downtime_ms: Some(41) });
        assert_eq!((r.rows[1].to.as_deref(), r.rows[1].outcome.as_str()), (None, "not_placed"));
        for other in [r#"{"guest":"dv-1","job":"host2-1","event":{}}"#, "not json", "", r#"{"report":{"rows":"x"}}"#] {
            assert_eq!(vmove_drain_line(other), None, "{other}");
        }
    }

    #[test]
    fn targets_for_the_loop() {
        let names: Vec<String> = ["dv-1", "dv-2", "dv-3"].map(String::from).to_vec();
        let plan = vec![("dv-3".into(), "host3".into()), ("dv-1".into(), "host2".into()), ("dv-2".into(), "host3".into())];
        assert_eq!(targets_by_position(&names, &plan), Some(vec!["host2".into(), "host3".into(), "host3".into()]));
        assert_eq!(targets_by_position(&names, &plan[..2]), None, "a guest the plan did not place");
        assert_eq!(alternating_targets(3, &["host2", "host3"]), vec!["host2", "host3", "host2"]);
        assert!(alternating_targets(3, &[]).is_empty());
        assert_eq!(DrainConfig::Vmove { parallel: None }.label(), "vmove (default)");
        assert_eq!(DrainConfig::Vmove { parallel: Some(4) }.label(), "vmove --parallel 4");
        let json = serde_json::to_string(&DrainConfig::Vmove { parallel: Some(4) }).unwrap();
        assert_eq!(serde_json::from_str::<DrainConfig>(&json).unwrap(), DrainConfig::Vmove { parallel: Some(4) });
    }
}
