//! What the fault-matrix tests share (`lab_faults.rs`, `lab_faults_fleet.rs`): the rows of
//! the report and its table in `target/fault-matrix.md`, running cases so that one failing
//! case does not stop the others, and the commands that inject faults.
#![allow(dead_code)]

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use super::Lab;

/// Whether the full matrix runs (`VMOVE_FAULT_MATRIX=full`, `bash scripts/fault-matrix`);
/// otherwise the default suite's subset.
pub fn full() -> bool {
    std::env::var("VMOVE_FAULT_MATRIX").is_ok_and(|v| v == "full")
}

/// Only the cases whose name contains this (`VMOVE_FAULT_CASES`), to rerun one.
pub fn selected(name: &str) -> bool {
    std::env::var("VMOVE_FAULT_CASES").map_or(true, |f| f.split(',').any(|p| name.contains(p.trim())))
}

/// One line of the report.
pub struct Row {
    pub case: String,
    pub outcome: String,
    pub recover_ms: u128,
}

/// Prints the table and appends it to `target/fault-matrix.md`.
pub fn report(title: &str, rows: &[Row]) {
    let mut t = format!("\n### {title}\n\n| case | outcome | time to recover |\n|---|---|---|\n");
    for r in rows {
        t.push_str(&format!("| {} | {} | {:.1} s |\n", r.case, r.outcome, r.recover_ms as f64 / 1000.0));
    }
    eprintln!("{t}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fault-matrix.md");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(t.as_bytes());
    }
}

/// Runs every case named in `cases` (those [`selected`]) with `run`, catching a failing
/// case's panic so the others still run; `cleanup` is given the case's index after a
/// failure to leave the lab usable. Reports the table, then fails if any case failed.
pub fn run_all<C>(title: &str, cases: &[C], name: impl Fn(&C) -> String, run: impl Fn(usize, &C) -> Row, cleanup: impl Fn(usize)) {
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let n = name(c);
        if !selected(&n) {
            continue;
        }
        let t = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(i + 1, c))) {
            Ok(row) => rows.push(row),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let line = msg.lines().next().unwrap_or("").to_string();
                failed.push(format!("{n}: {line}"));
                rows.push(Row { case: n, outcome: format!("FAILED: {line}"), recover_ms: t.elapsed().as_millis() });
                cleanup(i + 1);
            }
        }
    }
    report(title, &rows);
    assert!(failed.is_empty(), "{} case(s) failed:\n{}", failed.len(), failed.join("\n"));
}

/// Runs a command in a lab namespace; whether it succeeded.
pub fn in_ns(ns: &str, args: &[&str]) -> bool {
    Command::new("ip").args(["netns", "exec", ns]).args(args).status().is_ok_and(|s| s.success())
}

/// `vmove --json job show ID`.
pub fn job(lab: &Lab, id: &str) -> serde_json::Value {
    lab.json(&["job", "show", id])
}

/// Prints a job's record and events if the case fails while this is alive: on etcd they
/// go with the lab, and the agents' logs do not have them.
pub struct ShowJobOnPanic<'a> {
    pub lab: &'a Lab,
    pub id: String,
}

impl Drop for ShowJobOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let o = self.lab.vmove(&["job", "show", &self.id]);
            eprintln!("--- job show {} at the failure:\n{}{}", self.id, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        }
    }
}

/// Whether a job's events have one that `pred` accepts.
pub fn has_event(j: &serde_json::Value, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    j["events"].as_array().is_some_and(|a| a.iter().any(pred))
}

/// The QEMUs of a guest on one lab host.
pub fn qemu_on(lab: &Lab, g: &str, host: &str) -> Vec<u32> {
    lab.qemu_pids(g).into_iter().filter(|p| lab.host_of_pid(*p).as_deref() == Some(host)).collect()
}

/// Whether a guest is defined on a host, as its agent says (`guest list --host`).
pub fn defined_on(lab: &Lab, g: &str, host: &str) -> bool {
    lab.json(&["guest", "list", "--host", host]).as_array().is_some_and(|a| a.iter().any(|x| x["guest"]["spec"]["name"] == g))
}
