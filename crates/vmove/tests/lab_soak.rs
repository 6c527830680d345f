//! Issue "Reliability at fleet scale", the long run: one guest that rewrites its memory
//! (20 MB/s) and appends to its disk log, checking both all the time, migrated live back
//! and forth between two hosts. Around every move: no `VERIFY FAIL`, `DISK FAIL` or kernel
//! oops on its console (`guest log` shows what the guest printed on its current host, so
//! reading it before and after each move sees nearly all of it); after it: exactly one QEMU, on the target, the cluster says so, and
//! every tenth move the guest answers TCP echo. At the end: the guest verified its memory
//! and its disk after the last move, and the distribution of QEMU's downtime and of the
//! command's time is printed.
//!
//! The default suite makes 4 moves; the long run (200 moves, about 10 minutes, run it
//! alone) is
//! `cargo nextest run -p vmove --test lab_soak --run-ignored only --no-capture`.
mod common;

use std::time::{Duration, Instant};

use common::*;

/// What one move cost.
struct Move {
    downtime_ms: u64,
    command_ms: u64,
}

/// The job's end from `vmove --json migrate`'s event lines.
fn job_ended(out: &str) -> serde_json::Value {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["event"].clone())
        .find(|e| e["event"] == "job_ended")
        .unwrap_or_else(|| panic!("no job_ended event in:\n{out}"))
}

/// The guest's console must show no failure.
fn console_clean(lab: &Lab, when: &str) -> String {
    let log = lab.log("vm1");
    for bad in ["VERIFY FAIL", "DISK FAIL", "Oops", "Kernel panic"] {
        assert!(!log.contains(bad), "{bad} on the console {when}:\n{log}");
    }
    log
}

fn soak(tag: &str, moves: usize) -> Vec<Move> {
    let lab = Lab::up(tag, 2);
    let ip = "192.0.2.81";
    lab.boot_guest("vm1", "host1", ip, BUSY_MB_S, true);
    let mut done = Vec::with_capacity(moves);
    for i in 0..moves {
        let to = if i % 2 == 0 { "host2" } else { "host1" };
        console_clean(&lab, &format!("before move {}", i + 1));
        let t = Instant::now();
        let out = lab.ok(&["--json", "migrate", "vm1", "--to", to]);
        let command_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        let end = job_ended(&out);
        assert_eq!(end["status"], "succeeded", "move {}: {end}", i + 1);
        let downtime_ms = end["summary"]["downtime_ms"].as_u64().unwrap_or_else(|| panic!("move {}: no downtime: {end}", i + 1));
        assert_eq!(lab.qemu_hosts("vm1"), vec![to.to_string()], "move {}: one QEMU, on {to}", i + 1);
        assert_eq!(lab.cluster_host("vm1"), to, "move {}", i + 1);
        console_clean(&lab, &format!("after move {}", i + 1));
        if (i + 1) % 10 == 0 {
            lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(30));
        }
        done.push(Move { downtime_ms, command_ms });
    }
    // Memory and disk verified again after the last move: both lines after what the
    // console showed then (the console is read as a tail, so by its last bytes).
    let before = console_clean(&lab, "at the end");
    let mark: String = before.chars().rev().take(120).collect::<Vec<_>>().into_iter().rev().collect();
    lab.wait_log("vm1", "VERIFY OK and DISK OK after the last move", Duration::from_secs(90), |l| {
        // Nothing shown yet (the console of a guest that has just arrived is empty): all
        // of it is new.
        let new = if mark.is_empty() { l } else { l.rfind(&mark).map_or(l, |at| &l[at + mark.len()..]) };
        new.contains("VERIFY OK") && new.contains("DISK OK")
    });
    console_clean(&lab, "at the end");
    lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(30));
    // host2 has taken live moves: its inventory reports vmove's own time around their
    // memory phase, and the next move's prediction adds it.
    let steps = lab.json(&["host", "show", "host2"])["live_steps_ms"].as_u64().expect("host2 reports live_steps_ms");
    let slowest = done.iter().step_by(2).map(|m| m.command_ms).max().unwrap_or(0);
    assert!(steps > 0 && steps < slowest, "{steps} ms of vmove's steps, moves into host2 took up to {slowest} ms");
    if lab.cluster_host("vm1") == "host1" {
        let f = lab.json(&["migrate", "vm1", "--to", "host2", "--precheck"]);
        let conv = f["findings"].as_array().and_then(|a| a.iter().find(|x| x["id"] == "predicted-convergence")).map(|x| x["reason"].to_string());
        assert!(conv.as_deref().is_some_and(|r| r.contains("vmove's steps")), "{f}");
    }
    done
}

/// `p`-th percentile (nearest rank) of sorted values.
fn pct(sorted: &[u64], p: usize) -> u64 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn report(moves: &[Move]) {
    let mut down: Vec<u64> = moves.iter().map(|m| m.downtime_ms).collect();
    let mut cmd: Vec<u64> = moves.iter().map(|m| m.command_ms).collect();
    down.sort_unstable();
    cmd.sort_unstable();
    for (what, v) in [("QEMU downtime", &down), ("vmove migrate", &cmd)] {
        eprintln!(
            "soak: {} moves, {what} ms: min {} p50 {} p90 {} p99 {} max {}",
            v.len(),
            v[0],
            pct(v, 50),
            pct(v, 90),
            pct(v, 99),
            v[v.len() - 1]
        );
    }
}

#[test]
fn soak_four_live_moves_of_a_busy_guest() {
    let moves = soak("soak4", 4);
    assert_eq!(moves.len(), 4);
    report(&moves);
}

#[test]
#[ignore = "the long run: 200 live moves, about 10 minutes; run it alone"]
fn soak_full_two_hundred_live_moves() {
    let moves = soak("soak200", 200);
    assert_eq!(moves.len(), 200);
    report(&moves);
}
