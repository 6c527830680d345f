//! Whole migrations between in-process agents, and the regression tests of the defects a
//! review found.
use vmove_api::{EventKind, JobStatus, Request, Role, StepStatus};
use vmove_plan::{Mode, Step};
use vmove_store::{get_record, StateStore};

use super::*;
use crate::state::{claim_key, job_key, Claim, JobRec};

#[tokio::test]
async fn offline_migration_moves_definition_lease_and_qemu() {
    let c = Cluster::new(2, 1).await;
    let g = c.boot("vm1", "host1").await;
    assert_eq!(c.holder("vm1-data.img").await.as_deref(), Some("host1"));
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Offline)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert!(steps_of(&r).iter().all(|(_, s)| *s == StepStatus::Done), "{:?}", steps_of(&r));
    assert_eq!(c.placement("vm1"), (vec!["host2".to_string()], vec!["host2".to_string()]));
    assert_eq!(c.holder("vm1-data.img").await.as_deref(), Some("host2"));
    assert_eq!(r.guest_host.as_deref(), Some("host2"));
    assert!(c.host("host1").fake.tap_names().is_empty(), "source taps removed");
    assert_eq!(c.host("host2").fake.tap_names().len(), 1);
}

#[tokio::test]
async fn offlineforce_goes_on_without_a_dead_source_and_takes_the_lease_over() {
    let c = Cluster::new(2, 1).await;
    let g = c.boot("vm1", "host1").await;
    c.host("host1").up.store(false, Ordering::SeqCst);
    let r = c.run(c.spec(&g, "host1", "host2", Mode::OfflineForce)).await;
    assert_status(&r, JobStatus::Succeeded);
    let skipped = r.steps.iter().filter(|s| s.note.as_deref() == Some(crate::steps::SKIPPED)).count();
    assert_eq!(skipped, 3, "STOP_GUEST, DETACH_INTERFACES, DETACH_VOLUMES skipped: {:?}", r.steps);
    assert_eq!(c.holder("vm1-data.img").await.as_deref(), Some("host2"));
    let l = Leases::new(c.pool.clone(), "").read("vm1-data.img").await.unwrap().unwrap();
    assert_eq!(l.epoch, 2, "taken over");
    // A plain OFFLINE migration would not go on without the source.
    let c2 = Cluster::new(2, 1).await;
    let g = c2.boot("vm2", "host1").await;
    c2.host("host1").up.store(false, Ordering::SeqCst);
    let r = c2.run(c2.spec(&g, "host1", "host2", Mode::Offline)).await;
    assert_status(&r, JobStatus::Failed);
    assert!(r.error.as_deref().unwrap_or("").contains("source host1 must answer"), "{:?}", r.error);
}

#[tokio::test]
async fn live_migration_switches_over_and_ends_the_source() {
    let c = Cluster::new(2, 2).await;
    let g = c.boot("vm1", "host1").await;
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(c.placement("vm1"), (vec!["host2".to_string()], vec!["host2".to_string()]));
    assert_eq!(c.holder("vm1-data.img").await.as_deref(), Some("host2"));
    assert!(r.events.iter().any(|e| matches!(e.kind, EventKind::Progress(_))), "progress events");
    match &r.events.last().map(|e| &e.kind) {
        Some(EventKind::JobEnded { summary, .. }) => {
            assert_eq!((summary.downtime_ms, summary.migration_ms), (Some(12), Some(321)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.host("host1").agent().claimed_by("vm1").await.unwrap(), None, "claim ended with the migration");
}

#[tokio::test]
async fn incoming_migrations_listen_on_a_port_qemu_chose() {
    // Defect 4: the target handed QEMU a port it had bound and released (a race).
    let c = Cluster::new(2, 1).await;
    let g = c.boot("vm1", "host1").await;
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    let (_, pid, _) = c.world.qemus("vm1").into_iter().find(|(h, _, _)| h == "host2").expect("target QEMU");
    let cmds = c.world.commands(pid);
    let inc = cmds.iter().find(|c| c.name == "migrate-incoming").expect("migrate-incoming");
    assert_eq!(inc.arg_str("uri"), Some("tcp:198.51.100.3:0"), "port 0: QEMU binds it");
    let started = r
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Info { message } if message.starts_with("memory migration to") => Some(message.clone()),
            _ => None,
        })
        .expect("start message");
    assert!(started.contains(&format!("tcp:198.51.100.3:{}", 40000 + pid)), "{started}");
}

#[tokio::test]
async fn an_operators_stop_claims_nothing() {
    // Defect 1: `guest stop` marked the guest as being migrated away, for ever.
    let c = Cluster::new(2, 1).await;
    let g = c.boot("vm1", "host1").await;
    let api = &c.host("host1").api;
    api.handle(Request::GuestStop { name: "vm1".into(), force: false, timeout_s: 10 }, Role::Operator).await.unwrap();
    assert_eq!(c.host("host1").agent().claimed_by("vm1").await.unwrap(), None);
    api.handle(Request::GuestStart { name: "vm1".into() }, Role::Operator).await.unwrap();
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
}

#[tokio::test]
async fn source_claims_are_kept_in_the_store_and_refuse_a_second_migration() {
    let c = Cluster::new(3, 1).await;
    c.boot("vm1", "host1").await;
    let api = &c.host("host1").api;
    let first = Request::PeerGuest { name: "vm1".into(), claim: Some("the migration to host2".into()) };
    api.handle(first.clone(), Role::Host).await.unwrap();
    api.handle(first, Role::Host).await.expect("the same migration may ask again");
    let second = Request::PeerGuest { name: "vm1".into(), claim: Some("the migration to host3".into()) };
    let e = api.handle(second, Role::Host).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Busy);
    assert_eq!(e.message, "guest vm1 is already being migrated away from host1 by the migration to host2");
    let store: &dyn StateStore = c.host("host1").store.as_ref();
    let (claim, _) = get_record::<Claim>(store, &claim_key("vm1")).await.unwrap().expect("persisted");
    assert_eq!(claim.by, "the migration to host2");
    // And a migration *to* host1 is refused while host1 migrates it away.
    let g = guest("vm1", "host3");
    let e = c.host("host1").jobs().submit(c.spec(&g, "host3", "host1", Mode::Offline)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Busy);
}

#[tokio::test]
async fn job_events_go_to_an_append_only_log_not_into_the_record() {
    // Defect 5: every event rewrote the whole job record.
    let c = Cluster::new(2, 6).await;
    let g = c.boot("vm1", "host1").await;
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    let store: &dyn StateStore = c.host("host2").store.as_ref();
    let (JobRec(saved), _) = get_record::<JobRec>(store, &job_key(&r.id)).await.unwrap().expect("record");
    assert!(saved.events.is_empty(), "the record holds no events");
    let log = store.read_log(&format!("jobs/{}", r.id), 0).await.unwrap();
    assert_eq!(log.len(), r.events.len(), "one log record per event");
    assert!(r.events.len() >= 12, "{}", r.events.len());
    for (i, (seq, _)) in log.iter().enumerate() {
        assert_eq!(*seq, i as u64);
    }
    // A restarted agent reads the same job back.
    let jobs = Jobs::open_with(c.host("host2").agent().clone(), Box::new(|_| Err(AgentError::internal("no peers")))).await.unwrap();
    assert_eq!(jobs.get(&r.id).unwrap().snapshot(), r);
}

#[tokio::test]
async fn single_steps_resume_and_a_completed_step_is_a_no_op() {
    let c = Cluster::new(2, 1).await;
    let g = c.boot("vm1", "host1").await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Offline);
    spec.step = Some(Step::MigrateGuest);
    let e = c.host("host2").jobs().submit(spec.clone()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::WrongState, "{}", e.message);
    for s in Step::plan(Mode::Offline) {
        spec.step = Some(*s);
        let r = c.run(spec.clone()).await;
        assert_status(&r, JobStatus::Succeeded);
        if *s == Step::StopGuest {
            let again = c.run(spec.clone()).await;
            assert_eq!(steps_of(&again), vec![(Step::StopGuest, StepStatus::AlreadyDone)]);
        }
    }
    assert_eq!(c.placement("vm1"), (vec!["host2".to_string()], vec!["host2".to_string()]));
}

#[tokio::test]
async fn a_live_migration_that_times_out_leaves_the_guest_on_the_source() {
    let c = Cluster::new(2, 1000).await;
    let g = c.boot("vm1", "host1").await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Live);
    spec.params.timeout_s = 1;
    let r = c.run(spec).await;
    assert_status(&r, JobStatus::Cancelled);
    let e = r.error.unwrap_or_default();
    assert!(e.starts_with("MIGRATE_GUEST: timed out after 1 s"), "{e}");
    assert!(e.ends_with("the target was cleaned up, the guest stays on the source"), "{e}");
    assert_eq!(c.placement("vm1"), (vec!["host1".to_string()], vec!["host1".to_string()]));
    assert_eq!(c.holder("vm1-data.img").await.as_deref(), Some("host1"));
    let l = Leases::new(c.pool.clone(), "").read("vm1-data.img").await.unwrap().unwrap();
    assert_eq!(l.incoming, None, "incoming claim dropped");
    assert!(c.host("host2").fake.tap_names().is_empty());
    assert_eq!(c.host("host1").agent().claimed_by("vm1").await.unwrap(), None);
}

#[tokio::test]
async fn the_job_decides_predicted_convergence_from_the_dirty_rate_it_samples() {
    let c = Cluster::new(2, 2).await;
    let g = c.boot("vm1", "host1").await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Live);
    spec.params.converge = vmove_plan::Converge::None;
    spec.link_bytes_per_s = Some(1 << 20);
    spec.convergence_check = vmove_api::ConvergenceCheck::InJob;
    // The fake source's QEMU dirties 3 MB/s: more than the 1 MiB/s link.
    let r = c.run(spec.clone()).await;
    assert_status(&r, JobStatus::Failed);
    let e = r.error.clone().unwrap_or_default();
    assert!(e.contains("precheck failed: predicted-convergence: will not converge under converge=none"), "{e}");
    assert_eq!(c.placement("vm1"), (vec!["host1".to_string()], vec!["host1".to_string()]));
    assert!(c.host("host2").fake.tap_names().is_empty(), "target cleaned up");
    assert_eq!(c.host("host1").agent().claimed_by("vm1").await.unwrap(), None);
    // Ignored by the operator: a note in the job, and the move goes on.
    spec.convergence_check = vmove_api::ConvergenceCheck::InJobIgnored;
    let r = c.run(spec).await;
    assert_status(&r, JobStatus::Succeeded);
    let noted = r.events.iter().any(|e| {
        matches!(&e.kind, EventKind::Info { message } if message.starts_with("precheck predicted-convergence: ignored by the operator: will not converge"))
    });
    assert!(noted, "{:?}", r.events);
    assert_eq!(c.placement("vm1"), (vec!["host2".to_string()], vec!["host2".to_string()]));
}

#[tokio::test]
async fn the_tls_server_gets_a_fixed_dh_group_so_qemu_does_not_generate_one() {
    let c = Cluster::new(2, 2).await;
    let g = c.boot("vm1", "host1").await;
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    let server = c.host("host2").agent().run_dir("vm1").join("tls-server");
    let dh = std::fs::read_to_string(server.join("dh-params.pem")).expect("dh-params.pem next to the server's certificate");
    assert!(dh.starts_with("-----BEGIN DH PARAMETERS-----\nMIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n"), "{dh}");
    assert!(server.join("server-cert.pem").exists() && server.join("ca-cert.pem").exists());
}

/// A guest without a disk forced away from a dead host (an evacuation): its ownership
/// record, beside the shared pool's volume leases, names the target, so that the dead host
/// learns at its return that the guest moved (its restart reconciliation drops the stale
/// definition once the holder confirms). It used to keep it: nothing was leased.
#[tokio::test]
async fn a_guest_without_disks_forced_away_is_held_by_its_target() {
    let c = Cluster::new(2, 1).await;
    let mut g = guest("vm1", "host1");
    g.disks.clear();
    c.host("host1").agent().define(g.clone()).await.expect("define");
    c.host("host1").agent().start("vm1").await.expect("start");
    assert_eq!(c.host("host2").agent().volume_held_elsewhere(&g).await.unwrap().map(|h| h.0).as_deref(), Some("host1"));
    c.host("host1").up.store(false, Ordering::SeqCst);
    let r = c.run(c.spec(&g, "host1", "host2", Mode::OfflineForce)).await;
    assert_status(&r, JobStatus::Succeeded);
    let held = c.host("host1").agent().volume_held_elsewhere(&g).await.unwrap();
    assert_eq!(held.map(|h| h.0).as_deref(), Some("host2"), "host1 sees that host2 holds vm1");
    // A live move and an offline one carry it like a volume lease.
    let c = Cluster::new(2, 2).await;
    c.host("host1").agent().define(g.clone()).await.expect("define");
    c.host("host1").agent().start("vm1").await.expect("start");
    assert_status(&c.run(c.spec(&g, "host1", "host2", Mode::Live)).await, JobStatus::Succeeded);
    assert_eq!(c.host("host1").agent().volume_held_elsewhere(&g).await.unwrap().map(|h| h.0).as_deref(), Some("host2"));
    assert_status(&c.run(c.spec(&g, "host2", "host1", Mode::Offline)).await, JobStatus::Succeeded);
    assert_eq!(c.host("host2").agent().volume_held_elsewhere(&g).await.unwrap().map(|h| h.0).as_deref(), Some("host1"));
    assert_eq!(c.placement("vm1"), (vec!["host1".to_string()], vec!["host1".to_string()]));
}
