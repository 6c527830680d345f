//! The drain's pure parts: arguments, which guests move how, and the runner's book-keeping
//! under the limits (simulated: moves end in an order the test chooses).
use std::collections::HashMap;

use vmove_api::{GuestState, GuestStatus, HostInfo, JobBrief, JobKind, JobStatus};
use vmove_plan::{DrainPlan, Limits, Mode, Placement, PlannedMove, Step};

use super::gather::{as_planned, drain_mode, drain_requests};
use super::report::{fmt_s, Outcome};
use super::run::Book;
use super::*;

fn mv(guest: &str, from: &str, to: &str, predicted_s: u64) -> PlannedMove {
    PlannedMove {
        guest: guest.into(),
        from: from.into(),
        to: to.into(),
        mode: Mode::Live,
        memory_mib: 256,
        vcpus: 1,
        group: None,
        console_port: None,
        predicted_s,
        notes: vec![],
    }
}

fn plan(moves: Vec<PlannedMove>, limits: Limits) -> DrainPlan {
    DrainPlan::new(Placement { moves, unplaced: vec![] }, limits).expect("limits")
}

fn guests(p: &[run::Pending]) -> Vec<&str> {
    p.iter().map(|p| p.planned.guest.as_str()).collect()
}

#[test]
fn parallel_and_fault_arguments() {
    assert_eq!(limits(5, 2).unwrap(), Limits::default());
    assert_eq!(limits(1, 2).unwrap().max_concurrent, 1);
    let four = limits(4, 4).unwrap();
    assert_eq!((four.max_concurrent, four.max_out_per_host, four.max_in_per_host), (4, 4, 4));
    assert_eq!(limits(0, 2).unwrap_err().to_string(), "--parallel 0 is out of range (1..=64)");
    assert_eq!(limits(65, 2).unwrap_err().to_string(), "--parallel 65 is out of range (1..=64)");
    assert_eq!(limits(4, 0).unwrap_err().to_string(), "--per-host 0 is out of range (1..=64)");
    assert_eq!(faults(&["vm3=migrate-guest".into()]).unwrap(), vec![("vm3".to_string(), Step::MigrateGuest)]);
    assert_eq!(faults(&["vm3".into()]).unwrap_err().to_string(), "--inject-fault \"vm3\": expected GUEST=STEP");
    assert!(faults(&["vm3=NOPE".into()]).unwrap_err().to_string().starts_with("--inject-fault \"vm3=NOPE\": unknown step"));
}

#[test]
fn running_guests_move_live_the_others_offline() {
    assert_eq!(drain_mode(GuestState::Running, Mode::Live), Mode::Live);
    for s in [GuestState::Stopped, GuestState::Paused, GuestState::Crashed, GuestState::Starting] {
        assert_eq!(drain_mode(s, Mode::Live), Mode::Offline, "{s:?}");
    }
    assert_eq!(drain_mode(GuestState::Running, Mode::Offline), Mode::Offline);
}

fn info_with(guests: &[(&str, GuestState)]) -> HostInfo {
    let file = crate::testutil::cluster();
    let spec = file.guests[0].clone();
    let v = serde_json::json!({
        "name": "host1", "agent_version": "0.1.0", "qemu_version": "10.0.2", "hardware_model": "lab",
        "hardware_generation": 1, "accel": "tcg", "cpu_model": "qemu64", "cpu_flags": [], "cpu_count": 2,
        "memory_total_mib": 6144, "memory_free_mib": 6000, "memory_reserve_mib": 256, "memory_committed_mib": 0,
        "memory_available_mib": 5888, "vcpus_committed": 0, "bridges": [], "pools": [], "console_ports_in_use": [],
        "console_port_range": [5900, 5999], "guests": [],
    });
    let mut info: HostInfo = serde_json::from_value(v).expect("inventory");
    assert_eq!(info.maintenance, None, "an agent without the field reports none");
    for (name, state) in guests {
        let mut s = spec.clone();
        s.name = name.to_string();
        info.guests.push(GuestStatus { spec: s, state: *state, pid: None, uptime_s: None });
    }
    info
}

#[test]
fn the_guests_of_a_drain_are_the_agents_and_the_files() {
    let file = crate::testutil::cluster(); // vm1 on host1 in the file
    let info = info_with(&[("db1", GuestState::Running), ("cold", GuestState::Stopped)]);
    let reqs = drain_requests(&file, "host1", &info, Mode::Live);
    let got: Vec<(&str, &str, Mode)> = reqs.iter().map(|r| (r.guest.as_str(), r.source.as_str(), r.mode)).collect();
    // vm1 is in the file only: requested, so that the planner says why it cannot move.
    assert_eq!(got, [("cold", "host1", Mode::Offline), ("db1", "host1", Mode::Live), ("vm1", "host1", Mode::Live)]);
    let reqs = drain_requests(&file, "host1", &info, Mode::Offline);
    assert!(reqs.iter().all(|r| r.mode == Mode::Offline));
}

/// Runs the book to its end, ending the running moves in start order, and checks the
/// limits at every start; returns the start order.
fn simulate(book: &mut Book, others: &[PlannedMove]) -> Vec<String> {
    let l = book.limits;
    let mut order = Vec::new();
    let mut fifo: Vec<String> = Vec::new();
    while !book.done() {
        for p in book.start(others) {
            order.push(p.planned.guest.clone());
            fifo.push(p.planned.guest.clone());
        }
        let all: Vec<&PlannedMove> = book.running.values().map(|p| &p.planned).chain(others.iter()).collect();
        assert!(all.len() <= l.max_concurrent, "{} at once", all.len());
        let mut out: HashMap<&str, usize> = HashMap::new();
        let mut inn: HashMap<&str, usize> = HashMap::new();
        for m in &all {
            *out.entry(&m.from).or_default() += 1;
            *inn.entry(&m.to).or_default() += 1;
        }
        assert!(out.values().all(|n| *n <= l.max_out_per_host), "out: {out:?}");
        assert!(inn.values().all(|n| *n <= l.max_in_per_host), "in: {inn:?}");
        assert!(!fifo.is_empty(), "nothing runs and nothing can start: {:?}", guests(&book.pending));
        let g = fifo.remove(0);
        let p = book.running.remove(&g).expect("running");
        book.finish(p, Outcome::Moved, String::new());
    }
    order
}

#[test]
fn the_book_never_exceeds_the_limits() {
    let moves = vec![
        mv("a", "host1", "host2", 50),
        mv("b", "host1", "host3", 40),
        mv("c", "host1", "host4", 30),
        mv("d", "host1", "host2", 20),
        mv("e", "host1", "host3", 10),
        mv("f", "host5", "host2", 10),
        mv("g", "host5", "host2", 10),
    ];
    let mut book = Book::new(&plan(moves.clone(), Limits::default()));
    let first = book.start(&[]);
    // 2 out of host1 (a, b), then host5's: f to host2 (host2 has a), g would be a third into host2.
    assert_eq!(guests(&first), ["a", "b", "f"]);
    assert_eq!(book.max_running, 3);
    let mut book = Book::new(&plan(moves, Limits::default()));
    let order = simulate(&mut book, &[]);
    assert_eq!(order, ["a", "b", "f", "g", "c", "e", "d"], "in the plan's order, as startable allows");
    assert_eq!(book.rows.len(), 7);
    assert!(book.rows.iter().all(|r| r.outcome == Outcome::Moved && r.attempts == 1));
}

#[test]
fn other_drains_moves_count_against_the_limits() {
    let moves = vec![mv("a", "host1", "host2", 10), mv("b", "host1", "host3", 10)];
    let mut book = Book::new(&plan(moves, Limits::default()));
    // Another drain already brings two guests into host2.
    let brief = |g: &str, from: &str, to: &str| JobBrief {
        id: format!("{to}-9"),
        kind: JobKind::Migrate,
        guest: g.into(),
        mode: Mode::Live,
        source: from.into(),
        target: to.into(),
        status: JobStatus::Running,
        current_step: None,
        created_ms: 0,
    };
    let others: Vec<PlannedMove> = [brief("x", "host6", "host2"), brief("y", "host7", "host2")].iter().map(as_planned).collect();
    assert_eq!(guests(&book.start(&others)), ["b"], "host2 is full");
    assert_eq!(guests(&book.pending), ["a"]);
    // A foreign job of one of our own running guests is not counted twice.
    let own = [brief("b", "host1", "host3")].iter().map(as_planned).collect::<Vec<_>>();
    assert_eq!(guests(&book.start(&own)), ["a"]);
    // Five moves elsewhere fill the cluster: nothing starts.
    let mut book = Book::new(&plan(vec![mv("c", "host1", "host2", 10)], Limits::default()));
    let busy: Vec<PlannedMove> = (0..5).map(|i| mv(&format!("z{i}"), &format!("h{i}"), &format!("t{i}"), 0)).collect();
    assert!(book.start(&busy).is_empty());
    assert_eq!(guests(&book.start(&busy[..4])), ["c"]);
}

#[test]
fn held_moves_wait_and_reserved_moves_are_the_unfinished_others() {
    let moves = vec![mv("a", "host1", "host2", 30), mv("b", "host1", "host3", 20), mv("c", "host1", "host4", 10)];
    let mut book = Book::new(&plan(moves, Limits { max_concurrent: 5, max_out_per_host: 3, max_in_per_host: 2 }));
    book.held.insert("a".into());
    assert_eq!(guests(&book.start(&[])), ["b", "c"]);
    let reserved: Vec<String> = book.reserved("b").into_iter().map(|m| m.guest).collect();
    let mut reserved = reserved;
    reserved.sort();
    assert_eq!(reserved, ["a", "c"]);
    book.held.clear();
    assert_eq!(guests(&book.start(&[])), ["a"]);
}

#[test]
fn unplaced_guests_become_rows_of_their_own() {
    let u = vmove_plan::Unplaced {
        guest: "big".into(),
        from: "host1".into(),
        mode: Mode::Live,
        reason: "big (8 GiB, 1 vCPU) fits no host: no host has 8 GiB available".into(),
        rejections: vec![],
    };
    let p = DrainPlan::new(Placement { moves: vec![mv("a", "host1", "host2", 5)], unplaced: vec![u] }, Limits::default()).unwrap();
    let book = Book::new(&p);
    assert_eq!(book.rows.len(), 1);
    assert_eq!((book.rows[0].guest.as_str(), book.rows[0].outcome), ("big", Outcome::NotPlaced));
    assert_eq!(guests(&book.pending), ["a"]);
}

#[test]
fn durations_print_short() {
    assert_eq!(fmt_s(0), "0s");
    assert_eq!(fmt_s(45), "45s");
    assert_eq!(fmt_s(120), "2m");
    assert_eq!(fmt_s(130), "2m10s");
    assert_eq!(fmt_s(61), "1m01s");
}

fn job(id: &str, steps: &[(&str, Option<u64>, Option<u64>)]) -> vmove_api::JobRecord {
    let guest = serde_json::to_value(&crate::testutil::cluster().guests[0]).unwrap();
    let steps: Vec<serde_json::Value> =
        steps.iter().map(|(s, a, b)| serde_json::json!({ "step": s, "status": "done", "started_ms": a, "ended_ms": b })).collect();
    serde_json::from_value(serde_json::json!({
        "version": 2, "id": id, "kind": { "kind": "migrate" },
        "spec": { "guest": guest, "mode": "offline", "source": { "name": "host1", "address": "198.51.100.2:7450" },
                  "target": "host2", "params": vmove_plan::MigrationParams::default() },
        "status": "succeeded", "steps": steps, "created_ms": 1, "events": [],
    }))
    .expect("job record")
}

#[test]
fn an_offline_moves_downtime_is_from_the_stop_to_the_start() {
    use super::report::offline_downtime_ms;
    let whole = job("host2-1", &[("STOP_GUEST", Some(1_000), Some(3_000)), ("MIGRATE_GUEST", Some(4_000), Some(4_500)), ("STARTUP_GUEST", Some(5_000), Some(7_250))]);
    assert_eq!(offline_downtime_ms(&whole, &whole), Some(6_250));
    // A job that failed after the stop, finished by its recovery.
    let failed = job("host2-1", &[("STOP_GUEST", Some(1_000), Some(3_000)), ("ATTACH_VOLUMES", Some(4_000), None)]);
    let recovery = job("host2-2", &[("ATTACH_VOLUMES", Some(9_000), Some(9_100)), ("STARTUP_GUEST", Some(9_200), Some(10_000))]);
    assert_eq!(offline_downtime_ms(&failed, &recovery), Some(9_000));
    assert_eq!(offline_downtime_ms(&failed, &failed), None, "never started again");
}

#[tokio::test]
async fn guests_already_moved_off_the_host_follow_the_agents() {
    let mut file = crate::testutil::cluster(); // vm1 on host1 in the file
    let on_host1 = info_with(&[("db1", GuestState::Running)]);
    let mut on_host2 = info_with(&[("vm1", GuestState::Running)]);
    on_host2.name = "host2".into();
    let inv = gather::Inventory { hosts: vec![("host1".into(), Ok(on_host1.clone())), ("host2".into(), Ok(on_host2))], running: vec![] };
    let ctx = Ctx::new(file.path.clone(), true);
    reconcile(&ctx, &mut file, &inv, "host1", false).await.expect("reconcile");
    assert_eq!(file.guest("vm1").unwrap().host, "host2", "moved by an earlier drain whose CLI died");
    assert!(drain_requests(&file, "host1", &on_host1, Mode::Live).iter().all(|r| r.guest != "vm1"), "not moved again");

    // Reported by no other agent: it stays, and the planner says why it cannot move.
    let mut file = crate::testutil::cluster();
    let inv = gather::Inventory { hosts: vec![("host1".into(), Ok(on_host1))], running: vec![] };
    reconcile(&ctx, &mut file, &inv, "host1", false).await.expect("reconcile");
    assert_eq!(file.guest("vm1").unwrap().host, "host1");
}
