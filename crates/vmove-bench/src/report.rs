//! `report.md` from a [`Report`] (pure).
use std::fmt::Write;

use crate::model::{CellSpec, Contender, Report, Workload};
use crate::stats::{physical_limit, ratio, summarize, Summary};

/// A number with `d` decimals, or `–`.
pub fn num(v: Option<f64>, d: usize) -> String {
    match v {
        Some(x) => format!("{x:.d$}"),
        None => "–".to_string(),
    }
}

fn mb_s(bytes_per_s: f64) -> String {
    format!("{:.0} MB/s ({:.2} Gbit/s)", bytes_per_s / 1e6, bytes_per_s * 8.0 / 1e9)
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / 1048576.0)
}

/// The file name of a cell's plot.
pub fn plot_file(cell: &CellSpec) -> String {
    format!("remaining-{}.svg", cell.id())
}

/// A Markdown table; the first `left` columns are text (left-aligned), the rest numbers.
fn table(out: &mut String, head: &[String], left: usize, rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}|", (0..head.len()).map(|i| if i < left { "---" } else { "---:" }).collect::<Vec<_>>().join("|"));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
}

fn converged(s: &Summary, ct: Contender) -> String {
    let mut c = if ct.migrates() { format!("{}/{}", s.converged, s.runs) } else { format!("n/a ({} runs)", s.runs) };
    let mut why = Vec::new();
    if s.damaged > 0 {
        why.push(format!("{} crashed", s.damaged));
    }
    if s.dead_after > 0 {
        why.push(format!("{} unreachable", s.dead_after));
    }
    if !why.is_empty() {
        let _ = write!(c, " ({})", why.join(", "));
    }
    c
}

fn tcp(s: &Summary) -> String {
    let mut t = num(s.tcp_stall_ms, 0);
    let mut why = Vec::new();
    if s.rto_runs.0 > 0 {
        why.push(format!("{} RTO", s.rto_runs.0));
    }
    if s.retransmit_runs > 0 {
        why.push(format!("{} retransmitted", s.retransmit_runs));
    }
    if s.tcp_broken > 0 {
        why.push(format!("{} broke", s.tcp_broken));
    }
    if !why.is_empty() {
        let _ = write!(t, " ({})", why.join(", "));
    }
    t
}

/// Median lost UDP requests, and in how many runs none was lost.
fn lost(s: &Summary) -> String {
    match s.no_loss_runs {
        (_, 0) => "–".into(),
        (k, n) => format!("{} ({k}/{n} none)", num(s.udp_lost, 0)),
    }
}

fn workload_label(cell: &CellSpec) -> String {
    match cell.workload {
        Workload::Idle => "idle".to_string(),
        Workload::Http20 => format!("HTTP + {} MB/s", cell.dirty_mb_s),
        Workload::NearLink => format!("{} MB/s on {} Mbit/s", cell.dirty_mb_s, cell.link_cap_mbit.unwrap_or(0)),
        Workload::TwoXLink => format!("2× link: {} MB/s on {} Mbit/s", cell.dirty_mb_s, cell.link_cap_mbit.unwrap_or(0)),
        Workload::LocalDisk => {
            format!("{} local disk written {} MB/s", crate::model::size_mib(cell.disk_mib.unwrap_or(0)), cell.disk_write_mb_s)
        }
    }
}

/// The compact table of every cell and contender (also what docs/benchmarks.md shows).
pub fn overview(r: &Report) -> String {
    let mut out = String::new();
    let head: Vec<String> = [
        "guest",
        "workload",
        "contender",
        "converged",
        "total s",
        "blackout ms",
        "UDP lost",
        "UDP gap ms",
        "TCP stall ms",
        "QEMU downtime ms",
        "sent / RAM",
        "× limit",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rows = Vec::new();
    for cell in &r.cells {
        let id = cell.id();
        let (_, limit) = physical_limit(&r.runs, cell);
        let work = workload_label(cell);
        for &c in &r.contenders {
            let s = summarize(&r.runs, &id, c);
            if r.not_applicable.iter().any(|n| n.cell == id && n.contender == c) {
                let mut row = vec![format!("{} MiB", cell.memory_mib), work.clone(), c.id().to_string(), "not applicable".into()];
                row.resize(head.len(), String::new());
                rows.push(row);
                continue;
            }
            if s.runs == 0 {
                continue;
            }
            rows.push(vec![
                format!("{} MiB", cell.memory_mib),
                work.clone(),
                c.id().to_string(),
                converged(&s, c),
                num(s.total_s, 1),
                num(s.blackout_ms, 0),
                lost(&s),
                num(s.udp_gap_ms, 0),
                tcp(&s),
                num(s.downtime_ms, 0),
                num(s.sent_over_memory, 2),
                num(ratio(s.total_s, limit), 1),
            ]);
        }
        rows.push(vec![
            format!("{} MiB", cell.memory_mib),
            work,
            "*physical limit*".into(),
            String::new(),
            num(limit, 2),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            "1.0".into(),
        ]);
    }
    table(&mut out, &head, 3, &rows);
    out
}

/// Every migrating contender's median cold start of the target: `vmove 80 ms, qemu –`.
fn cold_starts(sums: &[(Contender, Summary)]) -> String {
    sums.iter()
        .filter(|(c, _)| c.migrates())
        .map(|(c, s)| format!("{} {}", c.id(), s.cold_start_ms.map(|x| format!("{x:.0} ms")).unwrap_or_else(|| "–".into())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per cell: the target's cold start, median per contender.
pub fn cold_start_lines(r: &Report) -> String {
    let mut out = String::new();
    for cell in &r.cells {
        let id = cell.id();
        let sums: Vec<(Contender, Summary)> =
            r.contenders.iter().map(|&c| (c, summarize(&r.runs, &id, c))).filter(|(_, s)| s.runs > 0).collect();
        if sums.iter().any(|(c, _)| c.migrates()) {
            let _ = writeln!(out, "- {}: {}", cell.describe(), cold_starts(&sums));
        }
    }
    out
}

/// One line per contender: what it runs (and the contenders left out, and why).
pub fn contender_lines(r: &Report) -> String {
    let mut out = String::new();
    for &ct in &r.contenders {
        let _ = writeln!(out, "- **{}** — {}", ct.id(), contender_what(ct));
    }
    for (ct, why) in &r.left_out {
        let _ = writeln!(out, "- **{}** — left out: {why}", ct.id());
    }
    out
}

/// The legend of [`overview`].
pub const OVERVIEW_LEGEND: &str = "*total*: from the contender's command start to the guest answering on the target (the first UDP echo \
     after the guest's first frame on the target tap). *blackout*: the guest's last frame on the source tap to \
     its first frame on the target tap. *UDP lost*: median of UDP echo requests sent at the switchover (from 50 ms \
     before the guest's last frame on the source to 50 ms after its first answer on the target; the whole \
     window for the control) that never came back, and in how many runs none was lost. *UDP gap* and *TCP stall* are what the client saw; \
     \"RTO\": runs whose TCP stall exceeded the UDP gap by more than 20 ms (a retransmission timeout waited \
     out); \"retransmitted\": runs in which the client's TCP retransmitted a segment (the kernel's count); a stall \
     beyond the UDP gap without one is the guest's echo thread starting late, not a timeout. *sent / RAM* is bytes sent over guest memory; *× limit* is total time over the physical limit. \
     \"crashed\": the guest's console shows a kernel oops or a failed memory or disk-log verification, or host2's \
     copy of its local disk lacks disk-log records written before the move; \"unreachable\": it \
     did not answer TCP echo afterwards.";

fn contender_what(ct: Contender) -> &'static str {
    match ct {
        Contender::Vmove => "`vmove migrate GUEST --to host2 --timeout BUDGET` with its defaults; includes its prechecks and job steps. Before each move the benchmark also runs `vmove migrate --precheck --json` for its prediction (not timed)",
        Contender::Qemu => "the same QEMU command line as vmove's agent, started by hand in the host namespaces; QMP `migrate-incoming` on the target, plain `migrate tcp:…` on the source, nothing else set (QEMU defaults: 128 MiB/s cap, 300 ms downtime limit, no TLS, no multifd)",
        Contender::Virsh => "`virsh migrate --live GUEST qemu+tcp://host2/system --migrateuri tcp://host2` with a libvirtd in each host namespace (libvirt's defaults: unlimited bandwidth, QEMU's 300 ms downtime limit, no TLS, no multifd)",
        Contender::VirshTunnelled => "`virsh migrate --live --p2p --tunnelled GUEST qemu+tcp://host2/system`: the stream goes through the libvirtd connection",
        Contender::VirshBest => "`virsh migrate --live --auto-converge --postcopy --postcopy-after-precopy GUEST qemu+tcp://host2/system --migrateuri tcp://host2`: libvirt's best convergence (QEMU throttles the guest during pre-copy; post-copy starts after the first pass)",
        Contender::Control => "no migration: a guest started like the hand-driven one, probed the same way while it stays on host1 for 3 s — the probes' floor, and how often a guest breaks without any migration",
        Contender::VirshCopyStorage => "`virsh migrate --live --copy-storage-all GUEST qemu+tcp://host2/system --migrateuri tcp://host2` (local-disk cells): the same transport as plain virsh; libvirt copies the guest's data disk over NBD (no TLS) with QEMU's block mirror into a raw image of the same size pre-created on the target with `qemu-img create -f raw`, then moves the memory",
    }
}

fn cell_section(out: &mut String, r: &Report, cell: &CellSpec) {
    let id = cell.id();
    let _ = writeln!(out, "### {}\n", cell.describe());
    let (touched, limit) = physical_limit(&r.runs, cell);
    let sums: Vec<(Contender, Summary)> =
        r.contenders.iter().map(|&c| (c, summarize(&r.runs, &id, c))).filter(|(_, s)| s.runs > 0).collect();
    let mut head: Vec<String> = [
        "contender",
        "converged",
        "total s",
        "command s",
        "QEMU migration s",
        "QEMU downtime ms",
        "blackout ms",
        "RARP ms",
        "UDP gap ms",
        "UDP lost",
        "UDP lost (window)",
        "TCP stall ms",
    ]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if cell.http_load {
        head.push("HTTP gap ms".into());
    }
    head.extend(["sent / RAM".to_string(), "dirty MB/s seen".to_string(), "× limit".to_string()]);
    let mut rows = Vec::new();
    for (c, s) in &sums {
        let mut row = vec![
            c.label().to_string(),
            converged(s, *c),
            num(s.total_s, 2),
            num(s.command_s, 2),
            num(s.qemu_s, 2),
            num(s.downtime_ms, 0),
            num(s.blackout_ms, 0),
            num(s.rarp_ms, 0),
            num(s.udp_gap_ms, 0),
            lost(s),
            num(s.udp_lost_window, 0),
            tcp(s),
        ];
        if cell.http_load {
            row.push(num(s.http_gap_ms, 0));
        }
        row.extend([num(s.sent_over_memory, 2), num(s.dirty_mb_s, 0), num(ratio(s.total_s, limit), 1)]);
        rows.push(row);
    }
    let mut lim = vec!["*physical limit*".to_string(), String::new(), num(limit, 2)];
    lim.resize(head.len() - 3, String::new());
    lim.extend([num(touched.map(|t| t / (cell.memory_mib as f64 * 1048576.0)), 2), String::new(), "1.0".into()]);
    rows.push(lim);
    table(out, &head, 1, &rows);
    for n in r.not_applicable.iter().filter(|n| n.cell == id) {
        let _ = write!(out, "\nNot applicable here: **{}** — {}.\n", n.contender.id(), n.why);
    }
    let _ = writeln!(
        out,
        "\nPhysical limit: the guest's touched memory ({}; guest RAM minus zero pages, median of what QEMU and libvirt \
         reported) at the link's measured {}.\n",
        touched.map(mib).unwrap_or_else(|| "unknown".into()),
        mb_s(cell.link_bytes_per_s)
    );
    let _ = writeln!(out, "Target's cold start (its RESUME → the guest's first frame on the target tap), median: {}.\n", cold_starts(&sums));
    let preds: Vec<String> = r
        .runs
        .iter()
        .filter(|x| x.cell == id)
        .filter_map(|x| {
            let p = x.prediction.as_ref()?;
            Some(format!(
                "- run {}: predicted {} (`{}: {}`), measured total {}{}",
                x.run,
                p.predicted_s.map(|v| format!("{v:.1} s")).unwrap_or_else(|| "no time".into()),
                p.verdict,
                p.reason,
                x.total_ms.map(|t| format!("{:.1} s", t as f64 / 1000.0)).unwrap_or_else(|| "–".into()),
                crate::stats::prediction_ratio(x).map(|q| format!(" (predicted ÷ measured {q:.2})")).unwrap_or_default()
            ))
        })
        .collect();
    if !preds.is_empty() {
        let _ = writeln!(out, "vmove's prediction (its precheck's predicted-convergence finding):\n\n{}\n", preds.join("\n"));
    }
    let movers: Vec<&(Contender, Summary)> = sums.iter().filter(|(c, _)| c.migrates()).collect();
    if movers.len() > 1 {
        for (what, get) in [
            ("total time", (|s: &Summary| s.total_s) as fn(&Summary) -> Option<f64>),
            ("client outage (longest UDP gap)", |s: &Summary| s.udp_gap_ms),
        ] {
            let _ = writeln!(out, "Ratios of median {what}, row ÷ column:\n");
            let mut head = vec![String::new()];
            head.extend(movers.iter().map(|(c, _)| c.id().to_string()));
            let rows: Vec<Vec<String>> = movers
                .iter()
                .map(|(c, a)| {
                    let mut row = vec![c.id().to_string()];
                    row.extend(movers.iter().map(|(_, b)| num(ratio(get(a), get(b)), 2)));
                    row
                })
                .collect();
            table(out, &head, 1, &rows);
            out.push('\n');
        }
    }
    let failed: Vec<String> = r
        .runs
        .iter()
        .filter(|x| x.cell == id && (!x.converged || x.error.is_some() || !x.answers_after || x.damage.is_some()))
        .map(|x| {
            let mut what = vec![match (x.contender.migrates(), x.converged) {
                (false, _) => "no migration".to_string(),
                (true, true) => "converged".to_string(),
                (true, false) => "did not converge".to_string(),
            }];
            if let Some(e) = &x.error {
                what.push(e.clone());
            }
            if !x.answers_after {
                what.push("the guest did not answer afterwards".into());
            }
            if let Some(d) = &x.damage {
                what.push(format!("guest console: `{d}`"));
            }
            format!("- {} run {} ({}): {}", x.contender.id(), x.run, x.guest, what.join(" — "))
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "Runs that did not go well:\n\n{}\n", failed.join("\n"));
    }
    let _ = writeln!(out, "![remaining bytes over time, {}]({})\n", id, plot_file(cell));
}

/// The whole `report.md`.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let c = &r.conditions;
    let _ = writeln!(out, "# vmove migration benchmark\n");
    let _ = writeln!(
        out,
        "Started {} UTC, took {} min. Command:\n\n```sh\n{}\n```\n",
        r.started,
        r.duration_s.div_ceil(60),
        r.command
    );
    let _ = writeln!(out, "## Machine and conditions\n");
    let _ = writeln!(out, "- {} CPUs ({}), {:.1} GiB memory, kernel {}", m.nproc, m.cpu_model, m.memory_gib, m.kernel);
    let _ = writeln!(
        out,
        "- {}; libvirt {}; vmove {} (source {})",
        m.qemu,
        m.libvirt.as_deref().unwrap_or("not installed"),
        m.vmove,
        if m.source.is_empty() { "unknown" } else { &m.source }
    );
    let _ = writeln!(out, "- guests run under TCG (no KVM), 1 vCPU, the lab image; migration between two lab host namespaces over their veth management link");
    let _ = writeln!(out, "- load average before: {}; after: {}", c.load_before, c.load_after);
    let foreign = |v: &Vec<String>| if v.is_empty() { "none".to_string() } else { format!("{} ({})", v.len(), v.join("; ")) };
    let _ = writeln!(out, "- other QEMU processes (not this benchmark's) before: {}", foreign(&c.other_qemu_before));
    let _ = writeln!(out, "- other QEMU processes at the end: {}", foreign(&c.other_qemu_after));
    let _ = writeln!(
        out,
        "- runs during which another QEMU was running on the machine: {} of {} (at most {} at once)\n",
        c.runs_with_other_qemu,
        r.runs.len(),
        c.other_qemu_max
    );
    let _ = writeln!(out, "## Links\n");
    let _ = writeln!(
        out,
        "- raw lab link (veth through a bridge): {} — median of {} plain TCP copies host1 → host2",
        mb_s(r.links.raw_bytes_per_s),
        r.links.raw_samples.len()
    );
    if let (Some(cap), Some(bw)) = (r.links.cap_mbit, r.links.capped_bytes_per_s) {
        let _ = writeln!(
            out,
            "- capped link for the 2x-link and near-link workloads: tc tbf {cap} Mbit/s on both hosts' mgmt0 → {} — median of {} copies",
            mb_s(bw),
            r.links.capped_samples.len()
        );
    }
    out.push('\n');
    let _ = writeln!(out, "## Contenders\n");
    out.push_str(&contender_lines(r));
    let _ = writeln!(
        out,
        "\nEvery run boots a fresh guest on host1 for each contender, lets it settle, starts the client probes \
         (UDP echo every 1 ms, one TCP echo connection exchanging every 1 ms, HTTP GETs every 20 ms in the HTTP \
         workload), starts a frame watch (packet socket, kernel timestamps) on the guest's tap in each host \
         namespace, migrates it to host2, keeps probing 2 s more, and removes it. Contenders take turns (the \
         starting contender rotates with the run). A migration that has not completed after {} s is cancelled and \
         counts as not converged. Medians are over the converged runs of {} per cell. Every figure is measured \
         from outside the contender, the same way for all (only QEMU's own figures — migration time, downtime, \
         bytes — and the target's RESUME time come from each tool).\n",
        r.settings.budget_s, r.settings.runs
    );
    out.push_str(&crate::goals::markdown(r, "##"));
    let _ = writeln!(out, "## Overview\n");
    out.push_str(&overview(r));
    let _ = writeln!(out, "\n{OVERVIEW_LEGEND}\n");
    let disk = crate::disk_report::table(r);
    if !disk.is_empty() {
        let _ = writeln!(out, "## Local disk: time, outage and bytes sent\n\n{disk}\n{}\n", crate::disk_report::LEGEND);
    }
    let na = crate::disk_report::not_applicable_lines(r);
    if !na.is_empty() {
        let _ = writeln!(out, "## Not applicable\n\nContenders that could not take their turn in a cell:\n\n{na}");
    }
    let damaged: Vec<String> = r
        .runs
        .iter()
        .filter_map(|x| {
            x.damage.as_ref().map(|d| format!("- {} run {} of {} ({}): `{d}`", x.contender.id(), x.run, x.cell, x.guest))
        })
        .collect();
    if !damaged.is_empty() {
        let count = |migrates: bool| {
            let of: Vec<_> = r.runs.iter().filter(|x| x.contender.migrates() == migrates).collect();
            (of.iter().filter(|x| x.damage.is_some()).count(), of.iter().filter(|x| !x.answers_after).count(), of.len())
        };
        let (md, mu, mn) = count(true);
        let (cd, cu, cn) = count(false);
        let _ = writeln!(
            out,
            "## Damaged guests\n\nMigrated guests: {md} of {mn} runs left a guest whose console shows a kernel oops or a \
             failed memory verification, {mu} a guest that did not answer afterwards. Control (no migration): {cd} of {cn} \
             damaged, {cu} not answering. Consoles of these runs are under `consoles/`.\n\n{}\n",
            damaged.join("\n")
        );
    }
    if !r.remarks.is_empty() {
        let _ = writeln!(out, "## Remarks\n");
        for rm in &r.remarks {
            let _ = writeln!(out, "- {rm}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## Cells\n");
    for cell in &r.cells {
        cell_section(&mut out, r, cell);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outage, RunResult};

    fn report() -> Report {
        let cell = CellSpec::raw(512, Workload::Http20, 20, 1e9);
        let mut runs = Vec::new();
        for (c, total, udp) in [(Contender::Vmove, 2000, 120), (Contender::Qemu, 4000, 240)] {
            let mut x = RunResult::new(cell.id(), c, 1, "g".into(), 512 << 20);
            x.converged = true;
            x.answers_after = true;
            x.total_ms = Some(total);
            x.downtime_ms = Some(50);
            x.transferred_bytes = Some(256 << 20);
            x.touched_bytes = Some(100_000_000);
            x.outage = Outage { udp_longest_gap_ms: Some(udp), tcp_longest_stall_ms: Some(udp + 1), http_longest_gap_ms: Some(300), ..Default::default() };
            runs.push(x);
        }
        let mut bad = RunResult::new(cell.id(), Contender::Qemu, 2, "g".into(), 512 << 20);
        bad.error = Some("timed out".into());
        bad.damage = Some("BUG: oops".into());
        runs.push(bad);
        Report {
            started: "2026-11-22T03:00:00Z".into(),
            command: "vmove-bench --quick".into(),
            contenders: vec![Contender::Vmove, Contender::Qemu],
            left_out: vec![(Contender::Virsh, "libvirtd not installed".into())],
            cells: vec![cell],
            runs,
            remarks: vec!["a remark".into()],
            ..Default::default()
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(num(Some(1.234), 1), "1.2");
        assert_eq!(num(None, 1), "–");
    }

    #[test]
    fn overview_has_medians_limits_and_ratios() {
        let r = report();
        let o = overview(&r);
        assert!(o.contains("| 512 MiB | HTTP + 20 MB/s | vmove | 1/1 | 2.0 | – | – | 120 | 121 | 50 | 0.50 | 20.0 |"), "{o}");
        assert!(o.contains("| qemu | 1/2 (1 crashed, 1 unreachable) | 4.0 |"), "{o}");
        // touched 1e8 bytes at 1e9 B/s = 0.1 s
        assert!(o.contains("*physical limit* |  | 0.10 |"), "{o}");
    }

    #[test]
    fn contenders_not_applicable_are_shown_not_dropped() {
        let mut r = report();
        let cell = CellSpec::raw(512, Workload::LocalDisk, 0, 1e9).with_disk(256, 5);
        let why = Contender::Qemu.not_applicable(true).unwrap_or("").to_string();
        r.not_applicable.push(crate::model::NotApplicable { cell: cell.id(), contender: Contender::Qemu, why });
        r.cells.push(cell);
        let o = overview(&r);
        assert!(o.contains("| 512 MiB | 256 MiB local disk written 5 MB/s | qemu | not applicable |"), "{o}");
        let md = markdown(&r);
        assert!(md.contains("## Not applicable"), "{md}");
        assert!(md.contains("Not applicable here: **qemu** — QEMU by hand moves memory only"), "{md}");
        assert!(md.contains("## Local disk: time, outage and bytes sent"), "{md}");
        for block in md.split("\n\n").filter(|b| b.starts_with('|')) {
            let widths: Vec<usize> = block.lines().map(|l| l.matches('|').count()).collect();
            assert!(widths.iter().all(|w| *w == widths[0]), "ragged table:\n{block}");
        }
    }

    #[test]
    fn markdown_has_every_section() {
        let md = markdown(&report());
        for want in [
            "# vmove migration benchmark",
            "## Machine and conditions",
            "## Links",
            "**virsh** — left out: libvirtd not installed",
            "## Overview",
            "- a remark",
            "### 512 MiB guest, HTTP served while dirtying 20 MB/s of a 64 MiB working set, raw lab link",
            "| HTTP gap ms |",
            "Ratios of median total time, row ÷ column:",
            "| vmove | 1.00 | 0.50 |",
            "| qemu | 2.00 | 1.00 |",
            "- qemu run 2 (g): did not converge — timed out — the guest did not answer afterwards — guest console: `BUG: oops`",
            "## Damaged guests",
            "Migrated guests: 1 of 3 runs left a guest",
            "![remaining bytes over time, 512M-http-20](remaining-512M-http-20.svg)",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        // every table row has as many cells as its header
        for block in md.split("\n\n").filter(|b| b.starts_with('|')) {
            let widths: Vec<usize> = block.lines().map(|l| l.matches('|').count()).collect();
            assert!(widths.iter().all(|w| *w == widths[0]), "ragged table:\n{block}");
        }
    }
}
