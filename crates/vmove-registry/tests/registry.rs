//! The registry on the in-memory store (paused clock: leases expire in tokio time) and on
//! a real etcd with TLS: cluster import/export, migration claims, the job index, and
//! waiting for a dead host's lease.
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::file;
use vmove_api::{JobBrief, JobKind, JobStatus};
use vmove_model::Cluster;
use vmove_plan::Mode;
use vmove_registry::keys;
use vmove_registry::{
    claim_migration, dead_wait, export, import, list_jobs, list_members, load_cluster, put_guest, put_host, release_migration, remove_host,
    wait_host_dead, Import, JobIndex, Member, MigrationClaim, RegistryError,
};
use vmove_store::testing::TestEtcd;
use vmove_store::{put_record, Lease, LeasePolicy, LeaseStore, MemStore, Precondition, StateStore};

#[tokio::test]
async fn import_then_export_round_trips_and_guests_move_in_the_store() {
    let store = MemStore::new();
    let c = file();
    let e = load_cluster(&store, &c).await.unwrap_err();
    assert!(matches!(e, RegistryError::Empty { ref namespace } if namespace == "/vmove/lab/"), "{e}");
    assert_eq!(import(&store, &c, Import::New).await.unwrap(), 1);
    let out = export(&store, &c).await.unwrap();
    assert_eq!(out.to_toml(), c.to_toml(), "export gives back the imported file");
    let e = import(&store, &c, Import::New).await.unwrap_err();
    assert!(matches!(e, RegistryError::AlreadyImported { ref name, .. } if name == "lab"), "{e}");

    // A migration moves vm1: the store says so; a second operator with an old file sees it.
    let mut moved = c.guests[0].clone();
    moved.host = "host2".into();
    put_guest(&store, &moved).await.unwrap();
    let second_operator = Cluster { path: "/home/op2/cluster.toml".into(), ..file() };
    let seen = load_cluster(&store, &second_operator).await.unwrap();
    assert_eq!(seen.guest("vm1").map(|g| g.host.as_str()), Some("host2"));
    assert_eq!(seen.path, Path::new("/home/op2/cluster.toml"), "the operator's own file");

    // Replace: exactly the file's guests.
    let mut fewer = file();
    fewer.guests.clear();
    import(&store, &fewer, Import::Replace).await.unwrap();
    assert!(export(&store, &c).await.unwrap().guests.is_empty());
}

#[tokio::test]
async fn hosts_are_added_and_removed_in_the_store() {
    let store = MemStore::new();
    let c = file();
    let h3 = vmove_model::HostEntry { name: "host3".into(), address: "198.51.100.4:7450".into(), accel: "kvm".into() };
    let e = put_host(&store, &c, &h3).await.unwrap_err();
    assert!(matches!(e, RegistryError::Empty { .. }), "{e}");
    import(&store, &c, Import::New).await.unwrap();

    // Two operators add hosts at the same moment: both land (compare-and-swap, retried).
    let h4 = vmove_model::HostEntry { name: "host4".into(), address: "198.51.100.5:7450".into(), accel: "tcg".into() };
    let (a, b) = tokio::join!(put_host(&store, &c, &h3), put_host(&store, &c, &h4));
    a.unwrap();
    b.unwrap();
    let seen = load_cluster(&store, &c).await.unwrap();
    let names: Vec<&str> = seen.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["host1", "host2", "host3", "host4"]);

    // An address in use by another host: refused; a reissue replaces the entry.
    let clash = vmove_model::HostEntry { name: "host5".into(), ..h3.clone() };
    let e = put_host(&store, &c, &clash).await.unwrap_err();
    assert!(matches!(e, RegistryError::Invalid(ref m) if m.contains("host3")), "{e}");
    put_host(&store, &c, &vmove_model::HostEntry { accel: "tcg".into(), ..h3.clone() }).await.unwrap();
    assert_eq!(load_cluster(&store, &c).await.unwrap().host("host3").unwrap().accel, "tcg");

    // A host with guests stays; one without goes; an unknown one is named.
    let e = remove_host(&store, &c, "host1").await.unwrap_err();
    assert!(matches!(e, RegistryError::HostHasGuests { ref guests, .. } if guests == &["vm1".to_string()]), "{e}");
    assert_eq!(remove_host(&store, &c, "host4").await.unwrap().name, "host4");
    let e = remove_host(&store, &c, "host4").await.unwrap_err();
    assert!(matches!(e, RegistryError::NoHost(ref h) if h == "host4"), "{e}");
    let names: Vec<String> = load_cluster(&store, &c).await.unwrap().hosts.into_iter().map(|h| h.name).collect();
    assert_eq!(names, ["host1", "host2", "host3"]);
}

#[tokio::test]
async fn an_invalid_cluster_in_the_store_is_refused() {
    let store = MemStore::new();
    let c = file();
    import(&store, &c, Import::New).await.unwrap();
    let mut stray = c.guests[0].clone();
    stray.name = "vm2".into();
    stray.host = "host9".into();
    stray.nics[0].mac = "52:54:00:00:00:02".into();
    put_guest(&store, &stray).await.unwrap();
    let e = load_cluster(&store, &c).await.unwrap_err();
    assert!(matches!(e, RegistryError::Invalid(ref m) if m.contains("no host named \"host9\"")), "{e}");
}

fn claim(job: &str, target: &str) -> MigrationClaim {
    MigrationClaim {
        guest: "vm1".into(),
        job: job.into(),
        mode: "live".into(),
        source: "host1".into(),
        target: target.into(),
        since_ms: 1,
    }
}

/// Eight targets race for one guest: exactly one claim wins, the others are told which.
#[tokio::test]
async fn of_racing_claims_exactly_one_wins_and_the_others_name_it() {
    let m = MemStore::new();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                let (lease, _) = m.grant_lease(Duration::from_secs(10)).await.unwrap();
                let c = claim(&format!("host{i}-1"), &format!("host{i}"));
                let key = keys::migration("vm1");
                claim_migration(&m, &c, |b, cond| {
                    let (m, key) = (m.clone(), key.clone());
                    async move { m.put_with_lease(&key, b, cond, lease).await }
                })
                .await
            })
        })
        .collect();
    let mut winners = vec![];
    let mut named = vec![];
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => winners.push(()),
            Err(RegistryError::Claimed(c)) => named.push(c.job.clone()),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(named.len(), 7);
    let (holder, _) = vmove_store::get_record::<MigrationClaim>(&m, &keys::migration("vm1")).await.unwrap().unwrap();
    assert!(named.iter().all(|j| *j == holder.job), "every loser names the winner {}: {named:?}", holder.job);
    let msg = RegistryError::Claimed(Box::new(holder.clone())).to_string();
    assert_eq!(msg, format!("guest vm1 is already being migrated by job {} (live from host1 to {})", holder.job, holder.target));
    assert!(!release_migration(&m, "vm1", "someone-else").await.unwrap());
    assert!(release_migration(&m, "vm1", &holder.job).await.unwrap());
    assert!(m.get(&keys::migration("vm1")).await.unwrap().is_none());
}

/// A claim attached to a lease goes with it: a target that dies frees the guest.
#[tokio::test(start_paused = true)]
async fn a_claim_goes_when_its_lease_expires() {
    let m = MemStore::new();
    let lease = Lease::grant(Arc::new(m.clone()), LeasePolicy::default()).await.unwrap();
    let key = keys::migration("vm1");
    claim_migration(&m, &claim("host2-1", "host2"), |b, cond| lease.put(&key, b, cond)).await.unwrap();
    lease.abandon();
    vmove_store::wait_until_gone(&m, &key).await.unwrap();
    let lease2 = Lease::grant(Arc::new(m.clone()), LeasePolicy::default()).await.unwrap();
    claim_migration(&m, &claim("host3-1", "host3"), |b, cond| lease2.put(&key, b, cond)).await.unwrap();
}

#[tokio::test]
async fn the_job_index_lists_every_host_s_jobs_oldest_first() {
    let m = MemStore::new();
    for (id, created) in [("host2-1", 30), ("host1-1", 10), ("host3-7", 20)] {
        let b = JobBrief {
            id: id.into(),
            kind: JobKind::Migrate,
            guest: "vm1".into(),
            mode: Mode::Live,
            source: "host1".into(),
            target: "host2".into(),
            status: JobStatus::Succeeded,
            current_step: None,
            created_ms: created,
        };
        put_record(&m, &keys::job(id), &JobIndex(b), Precondition::Any).await.unwrap();
    }
    let ids: Vec<String> = list_jobs(&m).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(ids, ["host1-1", "host3-7", "host2-1"]);
}

fn member(host: &str, lease: i64) -> Member {
    Member { host: host.into(), address: "198.51.100.2:7450".into(), lease, ttl_s: 10, since_ms: 1, agent_version: "0.1.0".into() }
}

/// `wait_host_dead` on the paused clock: a host that stops renewing is dead once its lease
/// expired (about a TTL later, never before); one that renews is alive after the wait; one
/// that never was a member is dead at once.
#[tokio::test(start_paused = true)]
async fn waiting_for_a_host_s_lease() {
    let m = MemStore::new();
    let policy = LeasePolicy::default();
    let dead = Lease::grant(Arc::new(m.clone()), policy).await.unwrap();
    let alive = Lease::grant(Arc::new(m.clone()), policy).await.unwrap();
    for (h, l) in [("host1", &dead), ("host2", &alive)] {
        let b = vmove_store::encode_record(&keys::member(h), &member(h, l.id().0)).unwrap();
        l.put(&keys::member(h), b, Precondition::Absent).await.unwrap();
    }
    assert_eq!(list_members(&m).await.unwrap().len(), 2);
    let wait = dead_wait(&vmove_model::Policy::default());
    assert_eq!(wait, Duration::from_secs(25));

    dead.abandon(); // the agent died: nobody renews
    let d = wait_host_dead(&m, "host1", wait).await.unwrap();
    assert!(d.waited >= policy.ttl / 2 && d.waited <= policy.ttl, "expired after {:?}", d.waited);
    assert_eq!(d.last_seen.map(|m| m.host), Some("host1".to_string()));

    let e = wait_host_dead(&m, "host2", wait).await.unwrap_err();
    assert!(matches!(e, RegistryError::HostAlive { ref host, waited, .. } if host == "host2" && waited >= wait), "{e}");
    assert!(e.to_string().starts_with("host host2 is alive: its agent kept its lease for 25 s"), "{e}");

    let n = wait_host_dead(&m, "host9", wait).await.unwrap();
    assert_eq!((n.waited, n.last_seen), (Duration::ZERO, None));
}

/// The same on a real etcd: the server expires the lease of a holder that stopped
/// renewing, and the wait sees the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_host_s_lease_on_etcd() {
    let etcd = TestEtcd::start().await.unwrap();
    let store = Arc::new(etcd.store(&TestEtcd::unique_namespace()).await.unwrap());
    let policy = LeasePolicy::with_ttl(Duration::from_secs(2));
    let lease = Lease::grant(store.clone(), policy).await.unwrap();
    let b = vmove_store::encode_record(&keys::member("host1"), &member("host1", lease.id().0)).unwrap();
    lease.put(&keys::member("host1"), b, Precondition::Absent).await.unwrap();
    let e = wait_host_dead(store.as_ref(), "host1", Duration::from_millis(500)).await.unwrap_err();
    assert!(matches!(e, RegistryError::HostAlive { .. }), "{e}");
    lease.abandon();
    let d = wait_host_dead(store.as_ref(), "host1", Duration::from_secs(10)).await.unwrap();
    assert!(d.waited <= Duration::from_secs(4), "the server expired it after {:?}", d.waited);
    assert!(store.get(&keys::member("host1")).await.unwrap().is_none());
}
