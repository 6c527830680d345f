//! The drain record: its state machine, the checks of a stored record, and its store
//! (ids, compare-and-swap, the runner's claim on files and on leases).
use std::sync::Arc;
use std::time::Duration;

use vmove_plan::Mode;
use vmove_store::{MemStore, Precondition, StateStore};

use super::record::*;
use super::report::{Outcome, Row};
use super::store::DrainStore;

fn rec() -> DrainRecord {
    let mut r = DrainRecord::new("drain-host1-1".into(), DrainKind::Drain, "host1", Mode::Live, 5);
    let rows = vec![
        planned_row("k1", "host1", Some("host2"), Mode::Live, Some(12), ""),
        planned_row("k2", "host1", Some("host3"), Mode::Live, Some(12), ""),
        planned_row("k3", "host1", None, Mode::Offline, None, "k3: no host fits"),
    ];
    r.set_plan(rows, 20).unwrap();
    r
}

fn row(guest: &str, to: &str, outcome: Outcome, jobs: &[&str]) -> Row {
    Row {
        guest: guest.into(),
        from: "host1".into(),
        to: Some(to.into()),
        mode: Mode::Live,
        outcome,
        attempts: 1,
        jobs: jobs.iter().map(|j| j.to_string()).collect(),
        started_ms: Some(1_000),
        ended_ms: Some(2_000),
        elapsed_ms: Some(1_000),
        downtime_ms: Some(40),
        predicted_s: Some(12),
        note: String::new(),
    }
}

fn state(r: &DrainRecord, g: &str) -> RowState {
    r.rows.iter().find(|x| x.guest == g).unwrap().state
}

#[test]
fn ids_name_kind_host_and_number() {
    assert_eq!(drain_id(DrainKind::Drain, "host1", 3), "drain-host1-3");
    assert_eq!(parse_id("drain-host1-3"), Some((DrainKind::Drain, "host1", 3)));
    assert_eq!(parse_id("evacuate-my-host-12"), Some((DrainKind::Evacuate, "my-host", 12)));
    for bad in ["host1-3", "drain-host1", "drain--3", "drain-host1-0", "drain-host1-03", "drain-host1-x", "drain-ho st-1", "evacuate-h-+1"] {
        assert_eq!(parse_id(bad), None, "{bad}");
    }
}

#[test]
fn a_drain_runs_its_moves_to_done() {
    let mut r = rec();
    assert_eq!(state(&r, "k1"), RowState::Pending);
    assert_eq!(state(&r, "k3"), RowState::NotPlaced);
    r.move_started("k1", "host2").unwrap();
    assert!(r.job_seen("k1", "host2-1").unwrap());
    assert!(!r.job_seen("k1", "host2-1").unwrap(), "once");
    assert_eq!(r.running_jobs(), vec![("k1", "host2-1")]);
    // Refused: a job of a move not running, a start of a running move, the end of a
    // move that never started.
    assert!(matches!(r.job_seen("k2", "host3-1"), Err(DrainError::Transition { from: RowState::Pending, .. })));
    assert!(matches!(r.move_started("k1", "host2"), Err(DrainError::Transition { from: RowState::Running, .. })));
    assert!(matches!(r.move_ended(&row("k2", "host3", Outcome::Moved, &[])), Err(DrainError::Transition { .. })));
    assert!(matches!(r.move_started("nope", "host2"), Err(DrainError::NoRow { .. })));
    r.move_ended(&row("k1", "host2", Outcome::Moved, &["host2-1"])).unwrap();
    assert_eq!(r.rows[0].jobs, vec!["host2-1"], "no job twice");
    assert_eq!(r.rows[0].downtime_ms, Some(40));
    // A retry: back to waiting on another target, then moved.
    r.move_started("k2", "host3").unwrap();
    r.job_seen("k2", "host3-1").unwrap();
    r.move_back("k2", "host2", "retry: host3: failed").unwrap();
    assert_eq!((state(&r, "k2"), r.rows[1].to.as_deref()), (RowState::Pending, Some("host2")));
    r.validate().unwrap();
}

#[test]
fn finish_needs_every_move_ended_and_an_ended_drain_never_changes() {
    let mut r = rec();
    r.move_started("k1", "host2").unwrap();
    assert!(matches!(r.finish(), Err(DrainError::Transition { .. })), "a move runs");
    r.move_ended(&row("k1", "host2", Outcome::Moved, &["host2-1"])).unwrap();
    r.move_started("k2", "host3").unwrap();
    r.move_ended(&row("k2", "host3", Outcome::Moved, &["host3-1"])).unwrap();
    assert_eq!(r.finish().unwrap(), DrainState::Incomplete, "k3 was not placed");
    assert!(r.ended_ms.is_some());
    r.validate().unwrap();
    assert!(matches!(r.request_cancel(), Err(DrainError::Ended { state: DrainState::Incomplete, .. })));
    assert!(matches!(r.finish(), Err(DrainError::Ended { .. })));
    assert!(matches!(r.found_moved("k3", "host2", &[], None, ""), Err(DrainError::Ended { .. })));

    let mut all = DrainRecord::new("drain-host1-2".into(), DrainKind::Drain, "host1", Mode::Live, 5);
    all.set_plan(vec![planned_row("k1", "host1", Some("host2"), Mode::Live, None, "")], 5).unwrap();
    all.move_started("k1", "host2").unwrap();
    all.move_ended(&row("k1", "host2", Outcome::Moved, &["host2-1"])).unwrap();
    assert_eq!(all.finish().unwrap(), DrainState::Done);
}

#[test]
fn a_cancel_leaves_the_rows_saying_who_moved_and_who_stayed() {
    let mut r = rec();
    r.move_started("k1", "host2").unwrap();
    r.job_seen("k1", "host2-1").unwrap();
    assert!(r.request_cancel().unwrap());
    assert!(!r.request_cancel().unwrap(), "asked once");
    // k1's job was past its switchover: it moved. k2 never started.
    r.move_ended(&row("k1", "host2", Outcome::Moved, &["host2-1"])).unwrap();
    assert_eq!(r.finish().unwrap(), DrainState::Cancelled);
    assert_eq!(r.moved(), vec!["k1"]);
    assert_eq!(state(&r, "k2"), RowState::Stayed);
    assert_eq!(r.rows[1].note, "cancelled before it started");
    assert_eq!(r.not_moved(), vec!["k2", "k3"]);
    r.validate().unwrap();

    // A running move cancelled in time stays; a pending one may be ended `stayed` by the runner.
    let mut r = rec();
    r.move_started("k1", "host2").unwrap();
    r.request_cancel().unwrap();
    r.move_ended(&row("k1", "host2", Outcome::Cancelled, &["host2-1"])).unwrap();
    r.move_ended(&row("k2", "host3", Outcome::Cancelled, &[])).unwrap();
    assert_eq!((state(&r, "k1"), state(&r, "k2")), (RowState::Stayed, RowState::Stayed));
    assert_eq!(r.finish().unwrap(), DrainState::Cancelled);
}

#[test]
fn a_takeover_settles_moves_and_plans_again_what_is_left() {
    let mut r = rec();
    r.move_started("k1", "host2").unwrap();
    r.job_seen("k1", "host2-1").unwrap();
    r.move_started("k2", "host3").unwrap();
    r.job_seen("k2", "host3-1").unwrap();
    // The runner died. k1 is found on host2 alone; k2's job rolled back: planned again.
    r.found_moved("k1", "host2", &["host2-1".to_string()], Some(55), "moved by job host2-1 while no runner watched").unwrap();
    assert_eq!(r.rows[0].jobs, vec!["host2-1"], "a job seen before is not added twice");
    r.set_plan(vec![planned_row("k2", "host1", Some("host2"), Mode::Live, Some(9), "")], 9).unwrap();
    assert_eq!((state(&r, "k1"), r.rows[0].downtime_ms), (RowState::Moved, Some(55)));
    assert_eq!((state(&r, "k2"), r.rows[1].to.as_deref()), (RowState::Pending, Some("host2")));
    assert_eq!(r.rows[1].jobs, vec!["host3-1"], "the earlier job is kept");
    // A plan never takes a moved guest back.
    r.set_plan(vec![planned_row("k1", "host1", Some("host3"), Mode::Live, None, "")], 9).unwrap();
    assert_eq!(state(&r, "k1"), RowState::Moved);
    r.move_started("k2", "host2").unwrap();
    r.lost("k2", "nowhere").unwrap();
    assert_eq!(state(&r, "k2"), RowState::Unknown);
    r.validate().unwrap();
    assert!(matches!(r.lost("k1", "x"), Err(DrainError::Transition { from: RowState::Moved, .. })));
}

#[test]
fn a_failed_drain_says_why_and_ends_its_rows() {
    let mut r = rec();
    r.move_started("k1", "host2").unwrap();
    r.fail("host1 did not answer").unwrap();
    assert_eq!((r.state, state(&r, "k1"), state(&r, "k2")), (DrainState::Failed, RowState::Unknown, RowState::Failed));
    assert_eq!(r.error.as_deref(), Some("host1 did not answer"));
    r.validate().unwrap();
}

/// Every stored field is range-checked when the record is read.
#[test]
fn stored_records_are_checked() {
    let good = rec();
    good.validate().unwrap();
    let bytes = vmove_store::encode_record("drains/drain-host1-1", &good).unwrap();
    let back: DrainRecord = vmove_store::decode_record("drains/drain-host1-1", &bytes).unwrap();
    assert_eq!(back, good);

    type Spoil = Box<dyn Fn(&mut DrainRecord)>;
    let bad: Vec<(&str, Spoil)> = vec![
        ("is not drain-host1-N", Box::new(|r| r.id = "drain-host2-1".into())),
        ("is not evacuate-host1-N", Box::new(|r| r.kind = DrainKind::Evacuate)),
        ("parallel 0", Box::new(|r| r.parallel = 0)),
        ("parallel 65", Box::new(|r| r.parallel = 65)),
        ("does not move guests", Box::new(|r| r.mode = Mode::OfflineForce)),
        ("updated before", Box::new(|r| r.updated_ms = r.created_ms - 1)),
        ("with ended_ms", Box::new(|r| r.ended_ms = Some(r.created_ms))),
        ("with ended_ms", Box::new(|r| r.state = DrainState::Done)),
        ("bad runner", Box::new(|r| r.runner = Some(Runner { pid: 0, machine: "m".into(), since_ms: 0 }))),
        ("predicted", Box::new(|r| r.predicted_total_s = Some(MAX_PREDICTED_S + 1))),
        ("two rows", Box::new(|r| r.rows[1].guest = "k1".into())),
        ("bad guest", Box::new(|r| r.rows[0].guest = "k 1".into())),
        ("bad job list", Box::new(|r| r.rows[0].jobs = vec!["host2-1".into(); MAX_JOBS_PER_ROW + 1])),
        ("downtime", Box::new(|r| r.rows[0].downtime_ms = Some(MAX_DOWNTIME_MS + 1))),
        ("ended before", Box::new(|r| {
            r.rows[0].started_ms = Some(5);
            r.rows[0].ended_ms = Some(4);
        })),
        ("running without a target", Box::new(|r| {
            r.rows[0].state = RowState::Running;
            r.rows[0].to = None;
        })),
        ("in a drain that ended", Box::new(|r| {
            r.state = DrainState::Cancelled;
            r.ended_ms = Some(r.created_ms);
        })),
        ("note", Box::new(|r| r.rows[0].note = "x".repeat(MAX_TEXT + 1))),
    ];
    for (want, f) in bad {
        let mut r = good.clone();
        f(&mut r);
        let e = r.validate().unwrap_err();
        assert!(matches!(&e, DrainError::Invalid { what, .. } if what.contains(want)), "{want}: {e}");
    }
    // A record that does not parse at all (a negative number, a wrong state).
    let text = String::from_utf8(bytes).unwrap();
    for (from, to) in [("\"parallel\":5", "\"parallel\":-5"), ("\"state\":\"running\"", "\"state\":\"sleeping\"")] {
        let broken = text.replacen(from, to, 1);
        assert!(vmove_store::decode_record::<DrainRecord>("k", broken.as_bytes()).is_err(), "{to}");
    }
}

async fn put_raw(store: &MemStore, r: &DrainRecord) {
    let key = vmove_registry::keys::drain(&r.id);
    store.put(&key, vmove_store::encode_record(&key, r).unwrap(), Precondition::Any).await.unwrap();
}

#[tokio::test]
async fn the_store_numbers_drains_writes_them_by_cas_and_refuses_bad_ones() {
    let mem = Arc::new(MemStore::new());
    let store = DrainStore::with_leases(mem.clone(), mem.clone());
    let make = |id: String| DrainRecord::new(id, DrainKind::Drain, "host1", Mode::Live, 5);
    let (a, ga) = store.create(DrainKind::Drain, "host1", true, make).await.unwrap();
    let (b, gb) = store.create(DrainKind::Drain, "host1", false, make).await.unwrap();
    let (c, _) = store
        .create(DrainKind::Evacuate, "host1", false, |id| DrainRecord::new(id, DrainKind::Evacuate, "host1", Mode::OfflineForce, 5))
        .await
        .unwrap();
    assert_eq!((a.id.as_str(), b.id.as_str(), c.id.as_str()), ("drain-host1-1", "drain-host1-2", "evacuate-host1-1"));
    assert!(ga.is_some() && gb.is_none());
    assert_eq!(a.runner.as_ref().map(|r| r.pid), Some(std::process::id()));
    assert!(store.runner_alive("drain-host1-1").await.unwrap());
    assert!(!store.runner_alive("drain-host1-2").await.unwrap());

    // Two writers (runner and `job cancel`) do not lose each other's changes.
    let (s1, s2) = (&store, &store);
    let (x, y) = tokio::join!(s1.update("drain-host1-2", |r| r.request_cancel()), s2.update("drain-host1-2", |r| {
        r.predicted_total_s = Some(7);
        Ok(())
    }));
    x.unwrap();
    y.unwrap();
    let now = store.must_get("drain-host1-2").await.unwrap();
    assert!(now.cancel_requested && now.predicted_total_s == Some(7));
    // A refused transition writes nothing.
    let before = mem.writes();
    assert!(store.update("drain-host1-2", |r| r.move_started("k9", "host2")).await.is_err());
    assert_eq!(mem.writes(), before);
    assert_eq!(store.list().await.unwrap().len(), 3);

    // A stored record out of range is refused when read, with its id.
    let mut bad = make("drain-host1-9".into());
    bad.parallel = 1000;
    put_raw(&mem, &bad).await;
    let e = store.get("drain-host1-9").await.unwrap_err();
    assert!(format!("{e:#}").contains("drain record drain-host1-9: parallel 1000 out of range"), "{e:#}");
    let mut bad = make("drain-host1-6".into());
    bad.per_host = 0;
    put_raw(&mem, &bad).await;
    let e = store.get("drain-host1-6").await.unwrap_err();
    assert!(format!("{e:#}").contains("drain record drain-host1-6: per_host 0 out of range"), "{e:#}");
    // A record written before --per-host existed reads with the default.
    let mut old = serde_json::to_value(make("drain-host1-4".into())).unwrap();
    old.as_object_mut().unwrap().remove("per_host");
    let back: DrainRecord = serde_json::from_value(old).unwrap();
    assert_eq!(back.per_host, 2);
    // A record under another drain's key.
    let moved = make("drain-host1-8".into());
    let key = vmove_registry::keys::drain("drain-host1-7");
    mem.put(&key, vmove_store::encode_record(&key, &moved).unwrap(), Precondition::Any).await.unwrap();
    assert!(store.get("drain-host1-7").await.is_err());
    assert!(store.must_get("drain-host1-5").await.is_err(), "no such drain");
}

#[tokio::test]
async fn a_runner_lease_that_expires_frees_the_drain() {
    let mem = Arc::new(MemStore::new());
    let store = DrainStore::with_leases(mem.clone(), mem.clone());
    let (_, g) = store.create(DrainKind::Drain, "host1", true, |id| DrainRecord::new(id, DrainKind::Drain, "host1", Mode::Live, 5)).await.unwrap();
    let g = g.unwrap();
    assert!(store.claim_runner("drain-host1-1").await.unwrap().is_none(), "held");
    let super::store::RunnerGuard::Lease(l) = &g else { panic!("a lease") };
    assert!(mem.expire_lease(l.id()));
    let taken = store.claim_runner("drain-host1-1").await.unwrap();
    assert!(taken.is_some(), "free once the runner's lease expired");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_runner_flock_is_exclusive_and_freed_with_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(vmove_store::FileStore::open(dir.path().join("vmove-drains")).unwrap());
    let store = DrainStore::with_files(fs, &dir.path().join("vmove-drains/runners"));
    let (_, g) = store.create(DrainKind::Drain, "host1", true, |id| DrainRecord::new(id, DrainKind::Drain, "host1", Mode::Live, 5)).await.unwrap();
    let g = g.unwrap();
    assert!(store.claim_runner("drain-host1-1").await.unwrap().is_none(), "another open file is refused");
    assert!(store.runner_alive("drain-host1-1").await.unwrap());
    drop(g);
    assert!(!store.runner_alive("drain-host1-1").await.unwrap(), "free once its holder closed it");
    let again = store.claim_runner("drain-host1-1").await.unwrap();
    assert!(again.is_some());
    // A second drain of the host gets the next number while the first is claimed.
    let (b, _) = store.create(DrainKind::Drain, "host1", true, |id| DrainRecord::new(id, DrainKind::Drain, "host1", Mode::Live, 5)).await.unwrap();
    assert_eq!(b.id, "drain-host1-2");
}

/// On a real etcd: records under `drains/`, the runner's key attached to its lease, freed
/// at once when the runner ends (revoked) and refused to a second claimant meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_the_runner_key_follows_its_lease() {
    use vmove_store::testing::TestEtcd;
    let etcd = TestEtcd::start().await.unwrap();
    let s = Arc::new(etcd.store(&TestEtcd::unique_namespace()).await.unwrap());
    let store = DrainStore::with_leases(s.clone(), s.clone());
    let (a, g) = store.create(DrainKind::Drain, "host1", true, |id| DrainRecord::new(id, DrainKind::Drain, "host1", Mode::Live, 5)).await.unwrap();
    assert_eq!(a.id, "drain-host1-1");
    assert!(store.claim_runner(&a.id).await.unwrap().is_none(), "held by the first runner");
    assert!(store.runner_alive(&a.id).await.unwrap());
    store.update(&a.id, |r| r.request_cancel()).await.unwrap();
    g.unwrap().release().await;
    assert!(!store.runner_alive(&a.id).await.unwrap(), "revoked with its lease");
    let taken = store.claim_runner(&a.id).await.unwrap();
    assert!(taken.is_some(), "taken over");
    let all = store.list().await.unwrap();
    assert_eq!((all.len(), all[0].cancel_requested), (1, true));
    if let Some(g) = taken {
        g.release().await;
    }
}

/// On etcd `job watch DRAIN-ID` wakes on its drain's changes (record, runner key), not on
/// another drain's whose id extends it, and not at all with the file store.
#[tokio::test(start_paused = true)]
async fn a_drain_watch_wakes_on_its_own_record_and_runner_only() {
    use super::store::Wake;
    let mem = Arc::new(MemStore::new());
    let store = DrainStore::with_leases(mem.clone(), mem.clone());
    let make = |id: String| DrainRecord::new(id, DrainKind::Drain, "host1", Mode::Live, 5);
    for _ in 0..10 {
        store.create(DrainKind::Drain, "host1", false, make).await.unwrap();
    }
    let mut w = store.watch("drain-host1-1").await.unwrap().expect("a watch on etcd");
    let quiet = Duration::from_secs(2);
    assert_eq!(w.changed(quiet).await, Wake::Quiet);
    store.create(DrainKind::Drain, "host1", false, make).await.unwrap();
    store.update("drain-host1-10", |r| r.request_cancel()).await.unwrap();
    assert_eq!(w.changed(quiet).await, Wake::Quiet, "drain-host1-1x is another drain");
    store.update("drain-host1-1", |r| r.request_cancel()).await.unwrap();
    assert_eq!(w.changed(quiet).await, Wake::Changed, "its record");
    let g = store.claim_runner("drain-host1-1").await.unwrap().expect("free");
    assert_eq!(w.changed(quiet).await, Wake::Changed, "its runner");
    let super::store::RunnerGuard::Lease(l) = &g else { panic!("a lease") };
    assert!(mem.expire_lease(l.id()));
    assert_eq!(w.changed(quiet).await, Wake::Changed, "its runner gone");

    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(vmove_store::FileStore::open(dir.path().join("vmove-drains")).unwrap());
    let files = DrainStore::with_files(fs, &dir.path().join("vmove-drains/runners"));
    assert!(files.watch("drain-host1-1").await.unwrap().is_none(), "the file store's runner is another process");
}
