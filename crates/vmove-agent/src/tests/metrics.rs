//! The agent's metrics after whole migrations between in-process agents: the target counts
//! a live migration (outcome, downtime, passes, bytes), the QEMU gauge follows the guest,
//! failed and step jobs have their own series, escalations are counted, and a start is
//! kept in the store.
use vmove_api::{EventKind, JobEvent, JobStatus, Summary};
use vmove_plan::{Mode, Step};

use super::*;
use crate::metrics::serve::render;
use crate::metrics::Metrics;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

#[tokio::test]
async fn the_target_counts_a_live_migration_and_the_qemu_gauge_follows_the_guest() {
    let c = Cluster::new(2, 2).await;
    let g = c.boot("vm1", "host1").await;
    assert_eq!(value(&render(&c.host("host1").api), "vmove_qemu_processes"), 1.0);
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    let t = render(&c.host("host2").api);
    assert_eq!(value(&t, "vmove_migrations_total{mode=\"live\",outcome=\"succeeded\"}"), 1.0);
    assert_eq!(value(&t, "vmove_migrations_total{mode=\"offline\",outcome=\"succeeded\"}"), 0.0);
    assert_eq!(value(&t, "vmove_migration_downtime_seconds_count"), 1.0);
    assert_eq!(value(&t, "vmove_migration_downtime_seconds_sum"), 0.012, "the fake QEMU's 12 ms");
    assert_eq!(value(&t, "vmove_migration_downtime_seconds_bucket{le=\"0.01\"}"), 0.0);
    assert_eq!(value(&t, "vmove_migration_downtime_seconds_bucket{le=\"0.025\"}"), 1.0);
    assert_eq!(value(&t, "vmove_migration_passes_count"), 1.0);
    assert_eq!(value(&t, "vmove_migration_duration_seconds_count{mode=\"live\"}"), 1.0);
    assert_eq!(value(&t, "vmove_qemu_processes"), 1.0);
    assert_eq!(value(&t, "vmove_guests{state=\"running\"}"), 1.0);
    assert_eq!(value(&t, "vmove_jobs_in_flight"), 0.0);
    let s = render(&c.host("host1").api);
    assert_eq!(value(&s, "vmove_qemu_processes"), 0.0);
    assert_eq!(value(&s, "vmove_migrations_total{mode=\"live\",outcome=\"succeeded\"}"), 0.0, "the source counts nothing");

    // A failed offline migration (the source is down) and a single step.
    let g2 = c.boot("vm2", "host1").await;
    c.host("host1").up.store(false, Ordering::SeqCst);
    let r = c.run(c.spec(&g2, "host1", "host2", Mode::Offline)).await;
    assert_status(&r, JobStatus::Failed);
    c.host("host1").up.store(true, Ordering::SeqCst);
    let mut one = c.spec(&g2, "host1", "host2", Mode::Offline);
    one.step = Some(Step::StopGuest);
    let r = c.run(one).await;
    assert_status(&r, JobStatus::Succeeded);
    let t = render(&c.host("host2").api);
    assert_eq!(value(&t, "vmove_migrations_total{mode=\"offline\",outcome=\"failed\"}"), 1.0);
    assert_eq!(value(&t, "vmove_step_jobs_total{mode=\"offline\",step=\"STOP_GUEST\",outcome=\"succeeded\"}"), 1.0);
    assert_eq!(value(&t, "vmove_migration_duration_seconds_count{mode=\"offline\"}"), 0.0, "only successes are timed");
}

#[tokio::test]
async fn escalations_are_counted_from_the_jobs_events() {
    let esc = |action: &str| EventKind::Escalation { action: action.into(), rung: "rung 5/8".into(), figures: Default::default() };
    let c = Cluster::new(2, 1).await;
    let g = c.boot("vm1", "host1").await;
    let mut rec = c.run(c.spec(&g, "host1", "host2", Mode::Offline)).await;
    let at = |seq| JobEvent { seq, at_ms: 0, kind: EventKind::Info { message: String::new() } };
    rec.events = vec![
        JobEvent { kind: esc("throttling the guest (auto-converge up to 50 %): stuck"), ..at(0) },
        JobEvent { kind: esc("switching to post-copy: stuck"), ..at(1) },
        // An operator-facing text that merely names one is not an escalation.
        JobEvent { kind: EventKind::Info { message: "escalation: no, only a message".into() }, ..at(2) },
    ];
    let m = Metrics::new(1);
    m.job_ended(&rec, &Summary::default());
    let t = m.render(&Default::default());
    assert_eq!(value(&t, "vmove_migration_escalations_total"), 2.0);
}

#[tokio::test]
async fn starts_are_kept_in_the_store_and_interrupted_jobs_count_as_failed() {
    let c = Cluster::new(2, 1).await;
    let h = c.host("host2");
    assert_eq!(crate::metrics::count_start(&h.agent().state).await.unwrap(), 2, "the agent's own start was the first");
    assert_eq!(crate::metrics::count_start(&h.agent().state).await.unwrap(), 3);
    let g = c.boot("vm1", "host1").await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Offline);
    spec.pause_before = Some(Step::StartupGuest);
    let rec = h.jobs().submit(spec).await.unwrap();
    c.wait_info("host2", &rec.id, "paused before").await;
    // The agent "restarts": its jobs are opened again, the paused one marked failed.
    let jobs = c.reopen_jobs("host2").await;
    assert_eq!(jobs.get(&rec.id).unwrap().snapshot().status, JobStatus::Failed);
    let t = h.agent().metrics.render(&Default::default());
    assert_eq!(value(&t, "vmove_migrations_total{mode=\"offline\",outcome=\"failed\"}"), 1.0);
}
