//! Following a job through the store (`follow_job`): every event once and in order, the
//! final record, a job whose host left the cluster, one that ended without its last event;
//! on the in-memory store and on a real etcd, the host's keys in its own sub-namespace.
mod common;

use std::sync::Arc;
use std::time::Duration;

use vmove_api::{EventKind, JobEvent, JobKind, JobRecord, JobSpec, JobStatus, PeerHost, Progress, Summary};
use vmove_plan::{MigrationParams, Mode};
use vmove_registry::jobs::{job_key, job_log};
use vmove_registry::{follow_job, keys, JobRec, Member, RegistryError};
use vmove_store::testing::TestEtcd;
use vmove_store::{put_record, MemStore, Precondition, StateStore};

fn job(status: JobStatus) -> JobRecord {
    let guest = common::file().guests[0].clone();
    JobRecord {
        version: 2,
        id: "host2-3".into(),
        kind: JobKind::Migrate,
        spec: JobSpec {
            guest,
            mode: Mode::Live,
            source: PeerHost { name: "host1".into(), address: "198.51.100.2:7450".into() },
            target: "host2".into(),
            step: None,
            params: MigrationParams::default(),
            inject_fault: None,
            pause_before: None,
            pause_at_switchover: false,
            max_incoming: None,
            dirty_rate_bytes_per_s: None,
            link_bytes_per_s: None,
            convergence_check: Default::default(),
        },
        status,
        steps: vec![],
        created_ms: 1,
        ended_ms: None,
        error: None,
        events: vec![],
        guest_host: None,
        outage: None,
    }
}

fn member(host: &str) -> Member {
    Member { host: host.into(), address: "198.51.100.3:7450".into(), lease: 7, ttl_s: 10, since_ms: 1, agent_version: "0.1.0".into() }
}

fn kinds(n: u64) -> Vec<EventKind> {
    (0..n)
        .map(|i| match i {
            0 => EventKind::JobStarted { action: "MIGRATE GUEST".into() },
            i if i + 1 == n => EventKind::JobEnded { status: JobStatus::Succeeded, error: None, summary: Summary { downtime_ms: Some(42), ..Summary::default() } },
            i => EventKind::Progress(Progress { pass: i, transferred_bytes: i << 20, ..Progress::default() }),
        })
        .collect()
}

/// Appends an event as the agent does: a JobEnded event after the final record.
async fn append(host: &dyn StateStore, seq: u64, kind: EventKind) {
    if matches!(kind, EventKind::JobEnded { .. }) {
        put_record(host, &job_key("host2-3"), &JobRec(job(JobStatus::Succeeded)), Precondition::Any).await.unwrap();
    }
    let e = JobEvent { seq, at_ms: 1_000 + seq, kind };
    assert_eq!(host.append(&job_log("host2-3"), serde_json::to_vec(&e).unwrap()).await.unwrap(), seq);
}

/// The agent's side: the record, `before` events, then the rest while the follower runs
/// (the record ends before the last event, as the agent's runner does).
async fn run_job(cluster: Arc<dyn StateStore>, host: Arc<dyn StateStore>, before: u64, total: u64) -> (Vec<JobEvent>, JobRecord) {
    put_record(cluster.as_ref(), &keys::member("host2"), &member("host2"), Precondition::Any).await.unwrap();
    put_record(host.as_ref(), &job_key("host2-3"), &JobRec(job(JobStatus::Running)), Precondition::Any).await.unwrap();
    let all = kinds(total);
    for (i, k) in all.iter().take(before as usize).enumerate() {
        append(host.as_ref(), i as u64, k.clone()).await;
    }
    let writer = host.clone();
    let rest: Vec<(u64, EventKind)> = all.into_iter().enumerate().skip(before as usize).map(|(i, k)| (i as u64, k)).collect();
    let agent = tokio::spawn(async move {
        for (seq, k) in rest {
            append(writer.as_ref(), seq, k).await;
            tokio::task::yield_now().await;
        }
    });
    let mut seen = Vec::new();
    let rec = follow_job(cluster.as_ref(), host.as_ref(), "host2", "host2-3", |e| seen.push(e.clone())).await.unwrap();
    agent.await.unwrap();
    (seen, rec)
}

fn check(seen: &[JobEvent], rec: &JobRecord, total: u64) {
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), (0..total).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(rec.status, JobStatus::Succeeded);
    assert_eq!(rec.events, seen, "the final record carries the events");
    assert!(matches!(&seen[seen.len() - 1].kind, EventKind::JobEnded { summary, .. } if summary.downtime_ms == Some(42)));
}

#[tokio::test]
async fn a_job_is_followed_from_its_first_event_to_its_end() {
    for before in [0, 3, 200] {
        let (cluster, host) = (Arc::new(MemStore::new()), Arc::new(MemStore::new()));
        let (seen, rec) = run_job(cluster, host, before, 200).await;
        check(&seen, &rec, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_followed_through_etcd_watches() {
    let etcd = TestEtcd::start().await.unwrap();
    let cluster = etcd.store(&TestEtcd::unique_namespace()).await.unwrap();
    let host: Arc<dyn StateStore> = Arc::new(cluster.sub_namespace(&keys::host_namespace("host2")).unwrap());
    let (seen, rec) = run_job(Arc::new(cluster), host, 5, 120).await;
    check(&seen, &rec, 120);
}

#[tokio::test(start_paused = true)]
async fn a_job_whose_host_left_the_cluster_is_reported() {
    let (cluster, host) = (MemStore::new(), MemStore::new());
    put_record(&host, &job_key("host2-3"), &JobRec(job(JobStatus::Running)), Precondition::Any).await.unwrap();
    append(&host, 0, EventKind::JobStarted { action: "MIGRATE GUEST".into() }).await;
    let mut n = 0;
    let e = follow_job(&cluster, &host, "host2", "host2-3", |_| n += 1).await.unwrap_err();
    assert!(matches!(&e, RegistryError::HostGone { host, id } if host == "host2" && id == "host2-3"), "{e}");
    assert_eq!(n, 1, "the events stored were shown first");
}

#[tokio::test(start_paused = true)]
async fn a_job_that_ended_without_its_last_event_ends_after_a_grace() {
    let (cluster, host) = (MemStore::new(), MemStore::new());
    put_record(&cluster, &keys::member("host2"), &member("host2"), Precondition::Any).await.unwrap();
    put_record(&host, &job_key("host2-3"), &JobRec(job(JobStatus::Failed)), Precondition::Any).await.unwrap();
    append(&host, 0, EventKind::JobStarted { action: "MIGRATE GUEST".into() }).await;
    let start = tokio::time::Instant::now();
    let rec = follow_job(&cluster, &host, "host2", "host2-3", |_| {}).await.unwrap();
    assert_eq!((rec.status, rec.events.len()), (JobStatus::Failed, 1));
    assert!(start.elapsed() >= Duration::from_secs(3), "waited for the JobEnded event first");
}

#[tokio::test]
async fn an_unknown_job_is_a_typed_error() {
    let (cluster, host) = (MemStore::new(), MemStore::new());
    let e = follow_job(&cluster, &host, "host2", "host2-9", |_| {}).await.unwrap_err();
    assert!(matches!(&e, RegistryError::NoJob { id, .. } if id == "host2-9"), "{e}");
}
