//! The job runner under faults, without QEMU: cancel at every phase of every mode, a failed
//! state write at every write of a migration, recovery both ways. After each: the guest is
//! defined on exactly one host and runs there (or nowhere, when it was stopped), and the
//! lease of its volume is that host's.
use vmove_api::JobStatus;
use vmove_plan::{Mode, Step};
use vmove_store::FailPolicy;

use super::*;

/// The invariant after any fault and recovery.
async fn one_copy(c: &Cluster, guest: &str) -> String {
    one_copy_at(c, guest, "").await
}

async fn one_copy_at(c: &Cluster, guest: &str, case: &str) -> String {
    let (defined, running) = c.placement(guest);
    assert_eq!(defined.len(), 1, "{case}: {guest} defined on {defined:?}");
    assert_eq!(running, defined, "{case}: {guest} runs where it is defined");
    let holder = c.holder(&format!("{guest}-data.img")).await;
    assert_eq!(holder.as_deref(), Some(defined[0].as_str()), "lease follows the guest");
    let incoming = Leases::new(c.pool.clone(), "").read(&format!("{guest}-data.img")).await.unwrap().and_then(|l| l.incoming);
    assert_eq!(incoming, None, "no incoming claim left");
    defined[0].clone()
}

/// Recovers a job that did not succeed; returns the recovery's record, if one ran.
async fn recover(c: &Cluster, host: &str, id: &str) -> Option<JobRecord> {
    match c.host(host).jobs().recover(id).await {
        Ok(rec) => Some(c.wait_end(host, &rec.id).await),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::WrongState, "{}", e.message);
            assert!(e.message.starts_with("nothing to recover"), "{}", e.message);
            None
        }
    }
}

#[tokio::test]
async fn cancel_before_every_step_of_every_mode() {
    for mode in [Mode::Offline, Mode::OfflineForce, Mode::Live] {
        for &step in Step::plan(mode) {
            let c = Cluster::new(2, 2).await;
            let g = c.boot("vm1", "host1").await;
            let mut spec = c.spec(&g, "host1", "host2", mode);
            spec.pause_before = Some(step);
            let rec = c.host("host2").jobs().submit(spec).await.expect("submit");
            c.wait_info("host2", &rec.id, &format!("paused before {step}")).await;
            c.host("host2").jobs().cancel(&rec.id).await.expect("cancel");
            let r = c.wait_end("host2", &rec.id).await;
            let past = Step::plan(mode).iter().position(|s| *s == step) > Step::plan(mode).iter().position(|s| *s == Step::MigrateGuest);
            if past {
                assert_status(&r, JobStatus::Succeeded);
                assert_eq!(one_copy(&c, "vm1").await, "host2", "{mode:?} {step}");
                continue;
            }
            assert_status(&r, JobStatus::Cancelled);
            let rec = recover(&c, "host2", &r.id).await;
            if let Some(rr) = &rec {
                assert_status(rr, JobStatus::Succeeded);
            }
            let at = one_copy(&c, "vm1").await;
            let want = if mode == Mode::OfflineForce { "host2" } else { "host1" };
            assert_eq!(at, want, "{mode:?} cancelled before {step}");
            assert_eq!(rec.is_none(), mode == Mode::Live, "{mode:?}: live rolls back by itself");
        }
    }
}

#[tokio::test]
async fn cancel_during_the_memory_phase_rolls_back() {
    let c = Cluster::new(2, 10_000).await;
    let g = c.boot("vm1", "host1").await;
    let rec = c.host("host2").jobs().submit(c.spec(&g, "host1", "host2", Mode::Live)).await.expect("submit");
    c.wait_info("host2", &rec.id, "memory migration to").await;
    c.host("host2").jobs().cancel(&rec.id).await.expect("cancel");
    let r = c.wait_end("host2", &rec.id).await;
    assert_status(&r, JobStatus::Cancelled);
    assert!(r.error.as_deref().unwrap_or("").starts_with("MIGRATE_GUEST: cancelled by the operator"), "{:?}", r.error);
    assert_eq!(one_copy(&c, "vm1").await, "host1");
    assert!(recover(&c, "host2", &r.id).await.is_none());
}

#[tokio::test]
async fn a_failure_in_every_offline_step_then_recover_back_or_forward() {
    for &step in Step::plan(Mode::Offline) {
        let c = Cluster::new(2, 1).await;
        let g = c.boot("vm1", "host1").await;
        let mut spec = c.spec(&g, "host1", "host2", Mode::Offline);
        spec.inject_fault = Some(step);
        let r = c.run(spec).await;
        assert_status(&r, JobStatus::Failed);
        assert!(r.error.as_deref().unwrap_or("").contains(&format!("resume with --step {step}")), "{:?}", r.error);
        let rr = recover(&c, "host2", &r.id).await.expect("a recovery runs");
        assert_status(&rr, JobStatus::Succeeded);
        let plan = Step::plan(Mode::Offline);
        let past = plan.iter().position(|s| *s == step) > plan.iter().position(|s| *s == Step::MigrateGuest);
        let at = one_copy(&c, "vm1").await;
        assert_eq!(at, if past { "host2" } else { "host1" }, "failed at {step}");
        // The recovery's record says where the guest is (the CLI updates the cluster file
        // from it): forward as well as back.
        assert_eq!(rr.guest_host.as_deref(), Some(at.as_str()), "the recovery of a failure at {step}");
    }
}

#[tokio::test]
async fn a_failed_state_write_at_every_write_stops_the_job_and_stays_recoverable() {
    for mode in [Mode::Offline, Mode::Live] {
        // Count the writes of a clean run.
        let clean = Cluster::new(2, 2).await;
        let g = clean.boot("vm1", "host1").await;
        let before = clean.host("host2").store.writes();
        let r = clean.run(clean.spec(&g, "host1", "host2", mode)).await;
        assert_status(&r, JobStatus::Succeeded);
        let writes = clean.host("host2").store.writes() - before;
        assert!(writes > 10, "{writes}");
        for k in 0..writes {
            let c = Cluster::new(2, 2).await;
            let g = c.boot("vm1", "host1").await;
            let store = c.host("host2").store.clone();
            store.fail_writes(FailPolicy::After(k));
            let spec = c.spec(&g, "host1", "host2", mode);
            let job = match c.host("host2").jobs().submit(spec).await {
                Ok(rec) => Some(c.wait_end("host2", &rec.id).await),
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::StateWrite, "write {k}: {}", e.message);
                    None
                }
            };
            if let Some(r) = &job {
                if r.status != JobStatus::Succeeded {
                    assert_status(r, JobStatus::Failed);
                    assert!(r.error.as_deref().unwrap_or("").starts_with("cannot save the job's state"), "write {k}: {:?}", r.error);
                }
            }
            // The disk comes back; a restarted agent marks the job failed; recover.
            store.fail_writes(FailPolicy::Never);
            let jobs = c.reopen_jobs("host2").await;
            if let Some(r) = &job {
                let st = jobs.get(&r.id).expect("job still known").snapshot();
                assert!(st.status.is_final(), "write {k}: {:?}", st.status);
                if st.status != JobStatus::Succeeded {
                    match jobs.recover(&r.id).await {
                        Ok(rec) => {
                            let cell = jobs.get(&rec.id).unwrap();
                            let end = wait_cell(&cell).await;
                            assert_status(&end, JobStatus::Succeeded);
                        }
                        Err(e) => assert!(e.message.starts_with("nothing to recover"), "write {k}: {}", e.message),
                    }
                }
            }
            let case = format!("{mode:?}, write {k} of {writes} failing: job {:?}", job.as_ref().map(|j| (j.status, j.error.clone())));
            one_copy_at(&c, "vm1", &case).await;
        }
    }
}

async fn wait_cell(cell: &crate::jobs::JobCell) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = cell.snapshot();
        if r.status.is_final() {
            return r;
        }
        assert!(Instant::now() < deadline, "job did not end");
        let mut rx = cell.events.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

/// The source cut off from its store at the switchover (the etcd matrix's
/// `switchover: SrcCutFromEtcd`): it refuses to end its QEMU while it cannot write its
/// state. The target asks again until it can, so that no paused copy stays on the source.
#[tokio::test]
async fn a_source_that_cannot_save_its_state_at_the_switchover_ends_its_qemu_once_it_can() {
    let c = Cluster::new(2, 2).await;
    let g = c.boot("vm1", "host1").await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Live);
    spec.pause_at_switchover = true;
    let rec = c.host("host2").jobs().submit(spec).await.expect("submit");
    c.wait_info("host2", &rec.id, "paused at switchover").await;
    let source_store = c.host("host1").store.clone();
    source_store.fail_writes(FailPolicy::All);
    c.host("host2").jobs().resume(&rec.id).expect("resume");
    c.wait_info("host2", &rec.id, "the source has not ended its QEMU yet").await;
    source_store.fail_writes(FailPolicy::Never);
    let r = c.wait_end("host2", &rec.id).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(one_copy(&c, "vm1").await, "host2");
}
