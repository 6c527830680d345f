//! What the local-disk cells add to the report (pure): the bytes each contender sent beside
//! the client's outage and the total, and the contenders that could not take their turn.
use std::fmt::Write;

use crate::model::{size_mib, Contender, Report};
use crate::report::num;
use crate::stats::{median, summarize};

fn mib(b: Option<f64>) -> String {
    num(b.map(|x| x / 1048576.0), 0)
}

/// The local-disk cells' table (empty without such a cell): per contender, the medians of
/// the total, the client's outage, QEMU's downtime, and the bytes sent — the disk and the
/// memory as each tool reports them, and what left host1's migration link.
pub fn table(r: &Report) -> String {
    let cells: Vec<_> = r.cells.iter().filter(|c| c.disk_mib.is_some()).collect();
    if cells.is_empty() {
        return String::new();
    }
    let head = [
        "guest",
        "disk",
        "contender",
        "converged",
        "total s",
        "disk copy s",
        "UDP gap ms",
        "TCP stall ms",
        "QEMU downtime ms",
        "disk copied MiB",
        "memory sent MiB",
        "on the link MiB",
        "link ÷ (disk + RAM)",
        "disk log carried",
        "guest wrote MB/s",
    ];
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}|", (0..head.len()).map(|i| if i < 3 { "---" } else { "---:" }).collect::<Vec<_>>().join("|"));
    for cell in cells {
        let id = cell.id();
        let disk = size_mib(cell.disk_mib.unwrap_or(0));
        let whole = (cell.disk_mib.unwrap_or(0) + cell.memory_mib) as f64 * 1048576.0;
        for &c in &r.contenders {
            let row: Vec<String> = match r.not_applicable.iter().find(|n| n.cell == id && n.contender == c) {
                Some(_) => {
                    let mut v = vec!["not applicable".to_string()];
                    v.resize(head.len() - 3, String::new());
                    v
                }
                None => {
                    let s = summarize(&r.runs, &id, c);
                    if s.runs == 0 || !c.migrates() {
                        continue;
                    }
                    vec![
                        format!("{}/{}", s.converged, s.runs),
                        num(s.total_s, 1),
                        num(s.disk_copy_s, 1),
                        num(s.udp_gap_ms, 0),
                        num(s.tcp_stall_ms, 0),
                        num(s.downtime_ms, 0),
                        mib(s.disk_bytes),
                        mib(s.memory_sent_bytes),
                        mib(s.link_bytes),
                        num(s.link_bytes.map(|b| b / whole), 2),
                        carried(r, &id, c),
                        num(median(&r.runs.iter().filter(|x| x.cell == id && x.contender == c).filter_map(|x| x.disk_write_mb_s).collect::<Vec<_>>()), 1),
                    ]
                }
            };
            let _ = writeln!(out, "| {} MiB | {disk} | {} | {} |", cell.memory_mib, c.id(), row.join(" | "));
        }
    }
    out
}

/// In how many runs host2's copy held every disk-log record written on host1 before the
/// move, of those checked: `3/3 runs`, or `–`.
fn carried(r: &Report, cell: &str, c: Contender) -> String {
    let checked: Vec<(u64, u64)> = r.runs.iter().filter(|x| x.cell == cell && x.contender == c).filter_map(|x| x.disk_records).collect();
    if checked.is_empty() {
        return "–".into();
    }
    format!("{}/{} runs", checked.iter().filter(|(before, on)| on >= before).count(), checked.len())
}

/// The legend of [`table`].
pub const LEGEND: &str = "Medians over the converged runs (client outage over those whose guest survived). *disk copy*: \
     vmove's COPY_VOLUMES until every mirror was in sync (libvirt reports no such figure). *disk copied* and \
     *memory sent*: as each tool reports them (vmove's job summary; libvirt's `disk_processed` and \
     `memory_processed`); a sparse disk's unwritten extent counts in full there while crossing the link as \
     zero writes. *on the link*: bytes out of host1's management link while the contender's command ran \
     (kernel counters: memory, disk, TLS and control traffic alike). *disk log carried*: runs in which host2's \
     copy of the disk, read from the host after the move, held every disk-log record the guest had written on \
     host1 before the probes started (a run where it did not counts as a damaged guest). *guest wrote*: what \
     the guest's data writer achieved in the 2 s before the move (its status page's `disk_written_bytes`).";

/// One line per contender that could not take its turn, with the cells and why.
pub fn not_applicable_lines(r: &Report) -> String {
    let mut out = String::new();
    let mut seen: Vec<(Contender, &str)> = Vec::new();
    for n in &r.not_applicable {
        if seen.contains(&(n.contender, n.why.as_str())) {
            continue;
        }
        seen.push((n.contender, n.why.as_str()));
        let cells: Vec<&str> =
            r.not_applicable.iter().filter(|m| m.contender == n.contender && m.why == n.why).map(|m| m.cell.as_str()).collect();
        let _ = writeln!(out, "- **{}** in {}: {}", n.contender.id(), cells.join(", "), n.why);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CellSpec, NotApplicable, RunResult, Workload};

    fn report() -> Report {
        let cell = CellSpec::raw(512, Workload::LocalDisk, 0, 1e9).with_disk(2048, 5);
        let mut runs = Vec::new();
        for (c, link) in [(Contender::Vmove, 300u64 << 20), (Contender::VirshCopyStorage, 500 << 20)] {
            let mut x = RunResult::new(cell.id(), c, 1, "g".into(), 512 << 20);
            x.converged = true;
            x.answers_after = true;
            x.total_ms = Some(9000);
            x.disk_bytes = Some(2048 << 20);
            x.disk_copy_ms = (c == Contender::Vmove).then_some(6500);
            x.transferred_bytes = Some(150 << 20);
            x.link_bytes = Some(link);
            x.outage.udp_longest_gap_ms = Some(200);
            x.disk_records = Some((20, if c == Contender::Vmove { 20 } else { 3 }));
            runs.push(x);
        }
        runs.push(RunResult::new(cell.id(), Contender::Control, 1, "c".into(), 512 << 20));
        let na = |c: Contender| NotApplicable { cell: cell.id(), contender: c, why: c.not_applicable(true).unwrap_or("").to_string() };
        Report {
            contenders: vec![Contender::Vmove, Contender::Qemu, Contender::VirshCopyStorage, Contender::Control],
            not_applicable: vec![na(Contender::Qemu)],
            cells: vec![CellSpec::raw(512, Workload::Idle, 0, 1e9), cell],
            runs,
            ..Default::default()
        }
    }

    #[test]
    fn rows_of_the_local_disk_cells() {
        let t = table(&report());
        assert!(t.contains("| 512 MiB | 2 GiB | vmove | 1/1 | 9.0 | 6.5 | 200 | – | – | 2048 | 150 | 300 | 0.12 | 1/1 runs |"), "{t}");
        assert!(t.contains("| 512 MiB | 2 GiB | virsh-copy-storage | 1/1 | 9.0 | – | 200 | – | – | 2048 | 150 | 500 | 0.20 | 0/1 runs |"), "{t}");
        assert!(t.contains("| 512 MiB | 2 GiB | qemu | not applicable |"), "{t}");
        assert!(!t.contains("control"), "the control sends nothing: {t}");
        let widths: Vec<usize> = t.lines().map(|l| l.matches('|').count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "ragged table:\n{t}");
        let mut none = report();
        none.cells.retain(|c| c.disk_mib.is_none());
        assert_eq!(table(&none), "", "no local-disk cell, no table");
    }

    #[test]
    fn who_can_move_a_local_disk() {
        let can = |local: bool| Contender::ALL.into_iter().filter(|c| c.not_applicable(local).is_none()).collect::<Vec<_>>();
        assert_eq!(can(true), vec![Contender::Vmove, Contender::VirshCopyStorage, Contender::Control]);
        assert_eq!(can(false).len(), Contender::ALL.len() - 1, "every contender but the storage copy");
        assert!(Contender::VirshCopyStorage.is_libvirt() && Contender::VirshCopyStorage.migrates());
        assert_eq!(Contender::parse("virsh-copy-storage"), Some(Contender::VirshCopyStorage));
        assert_eq!(Workload::parse("local-disk"), Some(Workload::LocalDisk));
        assert!(!Workload::LocalDisk.on_capped_link());
    }

    #[test]
    fn a_local_disk_cell_says_what_it_is() {
        let cell = CellSpec::raw(512, Workload::LocalDisk, 0, 1e9).with_disk(2048, 5);
        assert_eq!(cell.id(), "512M-local-disk");
        let d = cell.describe();
        assert!(d.starts_with("512 MiB guest, a 2 GiB data disk in each host's local pool (not shared)"), "{d}");
        assert!(d.contains("written at 5 MB/s (and the disk log), memory idle, raw lab link"), "{d}");
        assert_eq!(size_mib(256), "256 MiB");
        let json = serde_json::to_string(&CellSpec::raw(512, Workload::Idle, 0, 1e9)).unwrap();
        assert!(!json.contains("disk_mib"), "older cells keep their JSON: {json}");
        let back: CellSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.disk_mib, None);
    }

    #[test]
    fn not_applicable_once_per_contender_and_reason() {
        let mut r = report();
        let mut second = r.not_applicable[0].clone();
        second.cell = "2048M-local-disk".into();
        r.not_applicable.push(second);
        let l = not_applicable_lines(&r);
        assert_eq!(l.lines().count(), 1, "{l}");
        assert!(l.starts_with("- **qemu** in 512M-local-disk, 2048M-local-disk: QEMU by hand moves memory only"), "{l}");
        assert_eq!(not_applicable_lines(&Report::default()), "");
    }
}
