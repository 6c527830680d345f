//! The dated report section for docs/benchmarks.md (pure): `section.md` in the report
//! directory, and, with `--docs FILE`, the same section put into that file — before the
//! older reports, or in place of a section with the same heading.
use std::fmt::Write;

use crate::model::Report;
use crate::report::{self, num};

/// `QEMU 10.0.2` from `QEMU emulator version 10.0.2 (Debian …)`.
pub(crate) fn qemu_short(v: &str) -> String {
    match v.split_whitespace().skip_while(|w| *w != "version").nth(1) {
        Some(n) => format!("QEMU {n}"),
        None if v.is_empty() => "QEMU unknown".into(),
        None => v.to_string(),
    }
}

/// The section's heading: `## Migration benchmark (issue 14): 2026-12-01 17:40 (QEMU 10.0.2)`
/// (the run's start, so that a second run on one day gets a section of its own), with
/// `, quick check` for a quick run; issue 17's when every cell has a local disk, both when
/// some do.
pub fn heading(r: &Report) -> String {
    let date = match (r.started.get(..10), hhmm(&r.started)) {
        (Some(d), t) if !t.is_empty() => format!("{d} {t}"),
        (Some(d), _) => d.to_string(),
        (None, _) => "undated".into(),
    };
    let mut what = qemu_short(&r.machine.qemu);
    if r.settings.quick {
        what.push_str(", quick check");
    }
    let local = r.cells.iter().filter(|c| c.disk_mib.is_some()).count();
    let issue = match local {
        0 => "issue 14",
        n if n == r.cells.len() => "issue 17, local disk",
        _ => "issues 14 and 17",
    };
    format!("## Migration benchmark ({issue}): {date} ({what})")
}

/// `03:17` from an RFC 3339 time.
pub(crate) fn hhmm(t: &str) -> &str {
    t.get(11..16).unwrap_or("")
}

/// A section's **Date** and **Machine** lines; `lab` ends the machine line.
pub(crate) fn date_and_machine(started: &str, duration_s: u64, m: &crate::model::Machine, lab: &str) -> String {
    format!(
        "- **Date:** {}, from {} UTC ({} min).\n- **Machine:** {} CPUs ({}), {:.1} GiB memory, kernel {}, {}, libvirt {}, \
         vmove {} (tree at {}). {lab}\n",
        started.get(..10).unwrap_or("undated"),
        hhmm(started),
        duration_s.div_ceil(60),
        m.nproc,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        m.qemu,
        m.libvirt.as_deref().unwrap_or("not used"),
        m.vmove,
        if m.source.is_empty() { "unknown" } else { &m.source }
    )
}

/// A section's **Remarks** list (empty without remarks).
pub(crate) fn remarks(remarks: &[String]) -> String {
    if remarks.is_empty() {
        return String::new();
    }
    let mut out = String::from("**Remarks.**\n\n");
    for rm in remarks {
        let _ = writeln!(out, "- {rm}");
    }
    out.push('\n');
    out
}

/// The whole section, Markdown, starting with [`heading`].
pub fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let c = &r.conditions;
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", heading(r));
    out.push_str(&date_and_machine(&r.started, r.duration_s, m, "Guests run under TCG (no KVM): 1 vCPU, the lab image."));
    let foreign = |v: &Vec<String>| if v.is_empty() { "none".to_string() } else { v.len().to_string() };
    let _ = writeln!(
        out,
        "- **Conditions:** load average {} before and {} after; foreign QEMUs before: {}, at the end: {}; runs \
         with a foreign QEMU running: {} of {} (at most {} at once).",
        c.load_before,
        c.load_after,
        foreign(&c.other_qemu_before),
        foreign(&c.other_qemu_after),
        c.runs_with_other_qemu,
        r.runs.len(),
        c.other_qemu_max
    );
    let _ = writeln!(
        out,
        "- **Settings:** {} run(s) per cell and contender in rotating order, a {} s budget per migration.",
        r.settings.runs, r.settings.budget_s
    );
    let _ = writeln!(out, "- **Command:**\n\n```sh\n{}\n```\n", r.command);
    let mut links = format!("**Links.** A plain TCP copy host1 → host2 moves {:.0} MB/s over the raw lab link", r.links.raw_bytes_per_s / 1e6);
    if let (Some(cap), Some(bw)) = (r.links.cap_mbit, r.links.capped_bytes_per_s) {
        let _ = write!(links, " and {:.0} MB/s with the {cap} Mbit/s cap (tc tbf on both hosts' mgmt0)", bw / 1e6);
    }
    let _ = writeln!(out, "{links} (medians of 3 copies).\n");
    let _ = writeln!(out, "**Contenders.**\n\n{}", report::contender_lines(r));
    out.push_str(&crate::goals::markdown(r, "###"));
    let _ = writeln!(out, "### Figures\n");
    out.push_str(&report::overview(r));
    let _ = writeln!(out, "\nMedians over the converged runs; client-outage medians over the runs whose guest survived. {}\n", report::OVERVIEW_LEGEND);
    let disk = crate::disk_report::table(r);
    if !disk.is_empty() {
        let _ = writeln!(out, "**Local disk: time, outage and bytes sent.**\n\n{disk}\n{}\n", crate::disk_report::LEGEND);
    }
    let na = crate::disk_report::not_applicable_lines(r);
    if !na.is_empty() {
        let _ = writeln!(out, "**Not applicable** (contenders that could not take their turn in a cell):\n\n{na}");
    }
    let cold = report::cold_start_lines(r);
    if !cold.is_empty() {
        let _ = writeln!(
            out,
            "**Target's cold start** (its RESUME → the guest's first frame on the target tap; under TCG the target \
             has no translated code yet), medians:\n\n{cold}"
        );
    }
    let preds: Vec<String> = r
        .cells
        .iter()
        .filter_map(|cell| {
            let s = crate::stats::summarize(&r.runs, &cell.id(), crate::model::Contender::Vmove);
            let (k, n) = s.predicted_within;
            (n > 0).then(|| {
                format!(
                    "- {}: {k}/{n} within ±30 %, median predicted ÷ measured {}",
                    cell.describe(),
                    num(s.predicted_over_measured, 2)
                )
            })
        })
        .collect();
    if !preds.is_empty() {
        let _ = writeln!(out, "**vmove's prediction against the measured total:**\n\n{}\n", preds.join("\n"));
    }
    out.push_str(&remarks(&r.remarks));
    let _ = writeln!(
        out,
        "The report directory (`report.md` with per-cell tables, ratio matrices and failures, `report.json` with \
         every run, plots) is not in the repository: run the command again, or `vmove-bench render DIR`.\n"
    );
    out
}

/// `doc` with `section` in it: in place of the section with the same first line (up to the
/// next `## ` heading), else before the first older report (`## Migration benchmark`), else
/// at the end.
pub fn insert(doc: &str, section: &str) -> String {
    let head = section.lines().next().unwrap_or("");
    let lines: Vec<&str> = doc.lines().collect();
    let section = section.trim_end();
    let mut out: Vec<&str> = Vec::new();
    if let Some(i) = lines.iter().position(|l| *l == head) {
        let end = lines[i + 1..].iter().position(|l| l.starts_with("## ")).map(|k| i + 1 + k).unwrap_or(lines.len());
        out.extend(&lines[..i]);
        out.push(section);
        if end < lines.len() {
            out.push("");
        }
        out.extend(&lines[end..]);
    } else if let Some(i) = lines.iter().position(|l| l.starts_with("## Migration benchmark")) {
        out.extend(&lines[..i]);
        out.push(section);
        out.push("");
        out.extend(&lines[i..]);
    } else {
        out.extend(&lines);
        if lines.last().is_some_and(|l| !l.is_empty()) {
            out.push("");
        }
        out.push(section);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CellSpec, Contender, Machine, RunResult, Workload};

    fn report() -> Report {
        let cell = CellSpec::raw(512, Workload::Idle, 0, 1e9);
        let mut runs = Vec::new();
        for c in [Contender::Vmove, Contender::Qemu] {
            let mut x = RunResult::new(cell.id(), c, 1, "g".into(), 512 << 20);
            x.converged = true;
            x.total_ms = Some(if c == Contender::Vmove { 1500 } else { 1000 });
            runs.push(x);
        }
        Report {
            started: "2026-12-01T17:40:00Z".into(),
            duration_s: 61,
            command: "vmove-bench --runs 1".into(),
            machine: Machine { qemu: "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)".into(), ..Default::default() },
            contenders: vec![Contender::Vmove, Contender::Qemu],
            left_out: vec![(Contender::Virsh, "skipped: opt-in".into())],
            cells: vec![cell],
            runs,
            ..Default::default()
        }
    }

    #[test]
    fn dated_section_with_goals() {
        let r = report();
        assert_eq!(heading(&r), "## Migration benchmark (issue 14): 2026-12-01 17:40 (QEMU 10.0.2)");
        let md = markdown(&r);
        assert!(md.starts_with("## Migration benchmark (issue 14): 2026-12-01 17:40 (QEMU 10.0.2)\n"), "{md}");
        assert!(md.contains("from 17:40 UTC (2 min)"), "{md}");
        assert!(md.contains("### Goals"), "{md}");
        assert!(md.contains("| total ≤ 1.1× QEMU by hand's (idle and HTTP cells) | 512M-idle | 1.50 s"), "{md}");
        assert!(md.contains("| qemu 1.00 s | 1.50 | **not met** |"), "{md}");
        assert!(md.contains("- **virsh** — left out: skipped: opt-in"), "{md}");
        assert!(!md.lines().any(|l| l.starts_with("## ") && !l.starts_with("## Migration benchmark")), "one level-2 heading");
        let mut q = r.clone();
        q.settings.quick = true;
        assert!(heading(&q).ends_with("(QEMU 10.0.2, quick check)"));
        let mut l = r.clone();
        l.cells = vec![CellSpec::raw(512, Workload::LocalDisk, 0, 1e9).with_disk(2048, 5)];
        assert_eq!(heading(&l), "## Migration benchmark (issue 17, local disk): 2026-12-01 17:40 (QEMU 10.0.2)");
        l.cells.push(CellSpec::raw(512, Workload::Idle, 0, 1e9));
        assert_eq!(heading(&l), "## Migration benchmark (issues 14 and 17): 2026-12-01 17:40 (QEMU 10.0.2)");
        // A second run of the same day gets its own section: it keeps the first.
        let mut later = r.clone();
        later.started = "2026-12-01T21:05:00Z".into();
        let doc = insert(&insert("# B\n", &markdown(&r)), &markdown(&later));
        assert!(doc.contains("2026-12-01 17:40") && doc.find("2026-12-01 21:05") < doc.find("2026-12-01 17:40"), "{doc}");
    }

    #[test]
    fn inserted_before_older_reports_and_replaced_in_place() {
        let doc = "# Benchmarks\n\n## How to run\n\ntext\n\n## Migration benchmark (issue 8): first report (QEMU 7.2)\n\nold\n";
        let a = "## Migration benchmark (issue 14): 2026-12-01 (QEMU 10.0.2)\n\nnew figures\n";
        let once = insert(doc, a);
        assert_eq!(
            once,
            "# Benchmarks\n\n## How to run\n\ntext\n\n## Migration benchmark (issue 14): 2026-12-01 (QEMU 10.0.2)\n\nnew figures\n\n\
             ## Migration benchmark (issue 8): first report (QEMU 7.2)\n\nold\n"
        );
        let b = "## Migration benchmark (issue 14): 2026-12-01 (QEMU 10.0.2)\n\nnewer figures\n";
        let twice = insert(&once, b);
        assert_eq!(twice, once.replace("new figures", "newer figures"), "same heading: replaced");
        let c = "## Migration benchmark (issue 14): 2026-12-02 (QEMU 10.0.2)\n\nnext day\n";
        let thrice = insert(&twice, c);
        assert!(thrice.find("2026-12-02").unwrap() < thrice.find("2026-12-01").unwrap(), "newest first");
        assert_eq!(insert("# B\n", a), format!("# B\n\n{a}"));
    }
}
