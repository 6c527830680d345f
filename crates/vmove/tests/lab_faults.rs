//! Issue "Faults and recovery": faults injected at every step of offline and live
//! migration (and during the memory phase and at switchover), then recovery as an operator
//! would do it (`vmove job recover`, agent restarts), then the invariants: the guest runs
//! in exactly one place (or, when the fault killed its only copy, is cleanly stopped and
//! starts again), the cluster file and both agents agree, the data disk and memory verify,
//! nothing is left behind.
//!
//! The default suite runs a representative subset; `VMOVE_FAULT_MATRIX=full` runs every
//! case (`bash scripts/fault-matrix`). Each run appends its table to
//! `target/fault-matrix.md`.
mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    KillSrcAgent,
    KillDstAgent,
    KillSrcQemu,
    KillDstQemu,
    LinkDown,
    PoolUnwritable,
    Cancel,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum At {
    Before(&'static str),
    MemoryPhase,
    Switchover,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    mode: &'static str,
    at: At,
    fault: Fault,
}

impl Case {
    fn name(&self) -> String {
        let at = match self.at {
            At::Before(s) => format!("before {s}"),
            At::MemoryPhase => "memory phase".into(),
            At::Switchover => "switchover".into(),
        };
        format!("{} {at}: {:?}", self.mode, self.fault)
    }
}

const OFFLINE_STEPS: [&str; 8] = [
    "STOP_GUEST",
    "CREATE_BRIDGES",
    "DETACH_INTERFACES",
    "DETACH_VOLUMES",
    "ATTACH_VOLUMES",
    "MIGRATE_GUEST",
    "ATTACH_INTERFACES",
    "STARTUP_GUEST",
];
const ALL_FAULTS: [Fault; 7] = [
    Fault::KillSrcAgent,
    Fault::KillDstAgent,
    Fault::KillSrcQemu,
    Fault::KillDstQemu,
    Fault::LinkDown,
    Fault::PoolUnwritable,
    Fault::Cancel,
];

fn full() -> bool {
    std::env::var("VMOVE_FAULT_MATRIX").is_ok_and(|v| v == "full")
}

/// Whether the fault has something to act on at that point.
fn applies(c: &Case) -> bool {
    match (c.mode, c.at, c.fault) {
        // offline: the source QEMU exists only before STOP_GUEST, the target's only after STARTUP_GUEST
        ("offline", At::Before(s), Fault::KillSrcQemu) => s == "STOP_GUEST",
        ("offline", _, Fault::KillDstQemu) => false,
        // live: no target QEMU before MIGRATE_GUEST; no source QEMU after it
        ("live", At::Before("ATTACH_VOLUMES" | "CREATE_BRIDGES"), Fault::KillDstQemu) => false,
        ("live", At::Before("DETACH_VOLUMES"), Fault::KillSrcQemu) => false,
        _ => true,
    }
}

fn offline_cases() -> Vec<Case> {
    if full() {
        OFFLINE_STEPS
            .iter()
            .flat_map(|s| ALL_FAULTS.iter().map(move |f| Case { mode: "offline", at: At::Before(s), fault: *f }))
            .filter(applies)
            .collect()
    } else {
        vec![
            Case { mode: "offline", at: At::Before("STOP_GUEST"), fault: Fault::KillSrcQemu },
            Case { mode: "offline", at: At::Before("DETACH_VOLUMES"), fault: Fault::KillSrcAgent },
            Case { mode: "offline", at: At::Before("MIGRATE_GUEST"), fault: Fault::KillDstAgent },
            Case { mode: "offline", at: At::Before("ATTACH_VOLUMES"), fault: Fault::PoolUnwritable },
            Case { mode: "offline", at: At::Before("DETACH_INTERFACES"), fault: Fault::LinkDown },
            Case { mode: "offline", at: At::Before("CREATE_BRIDGES"), fault: Fault::Cancel },
        ]
    }
}

fn live_cases() -> Vec<Case> {
    if full() {
        let points =
            [At::Before("ATTACH_VOLUMES"), At::Before("CREATE_BRIDGES"), At::MemoryPhase, At::Switchover, At::Before("DETACH_VOLUMES")];
        points
            .iter()
            .flat_map(|a| ALL_FAULTS.iter().map(move |f| Case { mode: "live", at: *a, fault: *f }))
            .filter(applies)
            .collect()
    } else {
        vec![
            Case { mode: "live", at: At::MemoryPhase, fault: Fault::KillDstQemu },
            Case { mode: "live", at: At::MemoryPhase, fault: Fault::KillSrcAgent },
            Case { mode: "live", at: At::Switchover, fault: Fault::KillDstAgent },
            Case { mode: "live", at: At::Switchover, fault: Fault::LinkDown },
            Case { mode: "live", at: At::Before("DETACH_VOLUMES"), fault: Fault::KillDstQemu },
            Case { mode: "live", at: At::Before("DETACH_VOLUMES"), fault: Fault::Cancel },
        ]
    }
}

struct Row {
    case: String,
    outcome: String,
    recover_ms: u128,
}

fn job(lab: &Lab, id: &str) -> serde_json::Value {
    lab.json(&["job", "show", id])
}

fn has_event(j: &serde_json::Value, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    j["events"].as_array().is_some_and(|a| a.iter().any(pred))
}

fn in_ns(ns: &str, args: &[&str]) -> bool {
    Command::new("ip").args(["netns", "exec", ns]).args(args).status().is_ok_and(|s| s.success())
}

fn qemu_on(lab: &Lab, g: &str, host: &str) -> Vec<u32> {
    lab.qemu_pids(g).into_iter().filter(|p| lab.host_of_pid(*p).as_deref() == Some(host)).collect()
}

fn run_case(lab: &Lab, n: usize, c: &Case) -> Row {
    let g = format!("f{n}");
    let ip = format!("192.0.2.{}", 100 + n);
    let dir = lab.dir.to_str().unwrap().to_string();
    let live = c.mode == "live";
    lab.boot_guest(&g, "host1", &ip, if live { BUSY_MB_S } else { 0 }, true);
    let before = last_disk_ok(&lab.log(&g)).unwrap_or(0);

    let mut args: Vec<String> = ["migrate", &g, "--to", "host2", "--mode", c.mode, "--detach"].iter().map(|s| s.to_string()).collect();
    match c.at {
        At::Before(s) => args.extend(["--pause-before".into(), s.into()]),
        At::MemoryPhase => args.extend(
            ["--bandwidth", "5M", "--ignore-check", "predicted-convergence", "--timeout", "45s", "--multifd", "0"].map(String::from),
        ),
        At::Switchover => args.push("--pause-at-switchover".into()),
    }
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let id = lab.ok(&argv).trim().to_string();
    wait_for(&format!("{} to reach its point", c.name()), Duration::from_secs(90), || {
        let j = job(lab, &id);
        let reached = match c.at {
            At::MemoryPhase => has_event(&j, |e| e["event"] == "progress" && e["transferred_bytes"].as_u64() > Some(8 << 20)),
            _ => has_event(&j, |e| e["message"].as_str().is_some_and(|m| m.starts_with("paused"))),
        };
        assert!(reached || j["status"] == "running", "job ended before the point: {}", j["error"]);
        reached.then_some(())
    });

    let t0 = Instant::now();
    let switch = format!("{}-switch", lab.name);
    let leases = lab.dir.join("shared/.vmove-leases");
    match c.fault {
        Fault::KillSrcAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, "host1", "kill"]);
        }
        Fault::KillDstAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, "host2", "kill"]);
        }
        Fault::KillSrcQemu => qemu_on(lab, &g, "host1").into_iter().for_each(vmove_host::proc::kill9),
        Fault::KillDstQemu => qemu_on(lab, &g, "host2").into_iter().for_each(vmove_host::proc::kill9),
        Fault::LinkDown => assert!(in_ns(&switch, &["ip", "link", "set", "h1m", "down"])),
        Fault::PoolUnwritable => {
            std::fs::create_dir_all(&leases).unwrap();
            assert!(Command::new("chattr").arg("+i").arg(&leases).status().unwrap().success());
        }
        Fault::Cancel => {
            lab.ok(&["job", "cancel", &id]);
        }
    }
    if c.fault == Fault::LinkDown {
        std::thread::sleep(Duration::from_secs(3));
    }
    if c.at != At::MemoryPhase && !matches!(c.fault, Fault::KillDstAgent | Fault::Cancel) {
        let _ = lab.vmove(&["job", "resume", &id]);
    }
    if c.fault == Fault::LinkDown {
        assert!(in_ns(&switch, &["ip", "link", "set", "h1m", "up"]));
    }
    if c.fault != Fault::KillDstAgent {
        wait_for("the job to end", Duration::from_secs(120), || (job(lab, &id)["status"] != "running").then_some(()));
    }
    // Restore what the fault broke.
    match c.fault {
        Fault::KillSrcAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, "host1", "start"]);
        }
        Fault::KillDstAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, "host2", "start"]);
        }
        Fault::PoolUnwritable => assert!(Command::new("chattr").arg("-i").arg(&leases).status().unwrap().success()),
        _ => {}
    }
    // Recover as an operator would.
    let status = job(lab, &id)["status"].as_str().unwrap_or("").to_string();
    let mut notes = vec![format!("job {status}")];
    if status != "succeeded" {
        let o = lab.vmove(&["job", "recover", &id]);
        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
        notes.push(if o.status.success() {
            "recovered".into()
        } else if err.contains("nothing to recover") {
            "nothing to recover".into()
        } else {
            panic!("{}: job recover failed: {err}", c.name())
        });
    }
    let host = lab.cluster_host(&g);
    if lab.qemu_hosts(&g).is_empty() {
        lab.ok(&["guest", "start", &g]);
        notes.push("only copy killed: restarted".into());
    }
    // Invariants.
    assert_eq!(lab.qemu_hosts(&g), vec![host.clone()], "{}: runs exactly on {host}", c.name());
    for h in ["host1", "host2"] {
        let defined = lab
            .json(&["guest", "list", "--host", h])
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["guest"]["spec"]["name"] == g.as_str());
        assert_eq!(defined, h == host, "{}: {g} defined on {h}? the cluster file says {host}", c.name());
    }
    lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(90));
    let log = lab.wait_log(&g, "DISK OK after recovery", Duration::from_secs(60), |l| last_disk_ok(l).is_some());
    assert!(!log.contains("DISK FAIL") && !log.contains("VERIFY FAIL"), "{}: {log}", c.name());
    assert!(last_disk_ok(&log).unwrap_or(0) >= before, "{}: disk records lost", c.name());
    let other = if host == "host1" { "host2" } else { "host1" };
    let tap = vmove_host::tap::tap_name(&g, 0);
    assert!(!in_ns(&lab.host_ns(other), &["test", "-e", &format!("/sys/class/net/{tap}")]), "{}: tap left on {other}", c.name());
    let lease = lab.lease(&format!("{g}-data.img")).unwrap_or_else(|| panic!("{}: no lease of {g}-data.img", c.name()));
    assert_eq!(lease["holder"], host.as_str(), "{}: lease {lease}", c.name());
    assert!(lease.get("incoming").is_none(), "{}: incoming claim left: {lease}", c.name());
    let recover_ms = t0.elapsed().as_millis();
    lab.ok(&["guest", "destroy", &g]);
    Row { case: c.name(), outcome: format!("runs on {host} ({})", notes.join(", ")), recover_ms }
}

fn report(title: &str, rows: &[Row]) {
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

fn matrix(tag: &str, title: &str, cases: Vec<Case>) {
    let lab = Lab::up(tag, 2);
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let t = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(&lab, i + 1, c))) {
            Ok(row) => rows.push(row),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let line = msg.lines().next().unwrap_or("").to_string();
                failed.push(format!("{}: {line}", c.name()));
                rows.push(Row { case: c.name(), outcome: format!("FAILED: {line}"), recover_ms: t.elapsed().as_millis() });
                // Leave the lab usable for the next case.
                let _ = lab.vmove(&["guest", "destroy", &format!("f{}", i + 1)]);
            }
        }
    }
    report(title, &rows);
    assert!(failed.is_empty(), "{} case(s) failed:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn fault_matrix_offline() {
    matrix("foff", "Offline migration faults", offline_cases());
}

#[test]
fn fault_matrix_live() {
    matrix("flive", "Live migration faults", live_cases());
}
