//! Leases: the lease checks against the in-memory store (paused clock) and a real etcd,
//! and the health a holder fences on when the store goes away.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use vmove_store::testing::TestEtcd;
use vmove_store::{
    conformance, Lease, LeaseHealth, LeasePolicy, LeaseStore, MemStore, Precondition, StateStore, WatchEvent,
};

/// Waits (at most `within`) until the health is `want`; panics if it goes `Lost` instead.
async fn health(h: &mut watch::Receiver<LeaseHealth>, want: LeaseHealth, within: Duration) {
    let r = tokio::time::timeout(within, h.wait_for(|x| *x == want || *x == LeaseHealth::Lost)).await;
    let got = match r {
        Ok(Ok(got)) => *got,
        Ok(Err(_)) => panic!("the lease's health channel closed"),
        Err(_) => panic!("not {want:?} within {within:?}"),
    };
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn mem_store_leases() {
    let m = MemStore::new();
    conformance::lease::run_all(Arc::new(m.clone()), Arc::new(m), Duration::from_secs(10)).await;
}

/// The fencing rule on the in-memory store, on tokio's paused clock: renewals failing for
/// TTL/2 make the lease `RenewingLate` while it is still held; a renewal brings it back;
/// failing until the hold time passes loses it, and the store deletes its keys.
#[tokio::test(start_paused = true)]
async fn mem_store_fencing() {
    let m = MemStore::new();
    let policy = LeasePolicy::default();
    let ttl = policy.ttl;
    let lease = Lease::grant(Arc::new(m.clone()), policy).await.unwrap();
    lease.put("owners/vm1", b"host1".to_vec(), Precondition::Absent).await.unwrap();
    let mut h = lease.subscribe();

    let cut = Instant::now();
    m.fail_lease_renewals(true);
    health(&mut h, LeaseHealth::RenewingLate, ttl).await;
    let late = cut.elapsed();
    assert!(late <= ttl / 2, "late {late:?} after the cut (renewed at most TTL/5 before it)");
    assert!(lease.remaining() > Duration::ZERO && lease.remaining() <= ttl / 2, "{:?}", lease.remaining());
    assert!(m.get("owners/vm1").await.unwrap().is_some(), "still held: time to fence");

    m.fail_lease_renewals(false);
    health(&mut h, LeaseHealth::Alive, ttl).await;
    assert!(lease.remaining() > ttl / 2);

    let mut w = m.watch("owners/").await.unwrap();
    let cut = Instant::now();
    m.fail_lease_renewals(true);
    health(&mut h, LeaseHealth::RenewingLate, ttl).await;
    health(&mut h, LeaseHealth::Lost, ttl).await;
    assert!(cut.elapsed() <= ttl, "lost {:?} after the cut", cut.elapsed());
    assert_eq!(lease.held_until(), None);
    let ev = tokio::time::timeout(ttl, w.recv()).await.unwrap().unwrap();
    assert!(matches!(&ev, WatchEvent::Delete { key, .. } if key == "owners/vm1"), "{ev:?}");
    assert!(m.leases().is_empty());
}

/// A lease the store expired (or another party revoked) is `Lost` at the next renewal.
/// A store without quorum anywhere (proved: a majority of members answer, none has a
/// leader): renewals fail, yet the lease is never late and never lost, so the guests it
/// guards run on; nobody can take its keys (writes fail too); when quorum returns the
/// renewals go through again. A holder cut off from the store (no proof) fences as before.
#[tokio::test(start_paused = true)]
async fn mem_store_quorum_lost_everywhere_is_no_reason_to_fence() {
    let m = MemStore::new();
    let policy = LeasePolicy::default();
    let ttl = policy.ttl;
    let lease = Lease::grant(Arc::new(m.clone()), policy).await.unwrap();
    lease.put("owners/vm1", b"host1".to_vec(), Precondition::Absent).await.unwrap();
    let h = lease.subscribe();

    m.lose_quorum(true);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = {
        let (mut h, seen) = (h.clone(), seen.clone());
        tokio::spawn(async move {
            while h.changed().await.is_ok() {
                seen.lock().unwrap().push(*h.borrow());
            }
        })
    };
    // Ten TTLs without a quorum.
    tokio::time::sleep(ttl * 10).await;
    assert_eq!(*seen.lock().unwrap(), Vec::<LeaseHealth>::new(), "the health never left Alive");
    assert_eq!(lease.health(), LeaseHealth::Alive);
    assert!(lease.remaining() >= policy.fence_margin, "{:?}", lease.remaining());
    let taken = m.put("owners/vm1", b"host2".to_vec(), Precondition::Any).await;
    assert!(taken.is_err(), "a write without quorum went through");
    assert_eq!(m.get("owners/vm1").await.unwrap().unwrap().value, b"host1");

    // Quorum back: renewals work, the key is still this holder's.
    m.lose_quorum(false);
    tokio::time::sleep(ttl).await;
    assert_eq!(lease.health(), LeaseHealth::Alive);
    assert!(m.leases().contains(&lease.id()));
    assert_eq!(m.get("owners/vm1").await.unwrap().unwrap().value, b"host1");

    // Cut off instead (no proof): late, as before.
    let mut h = h;
    m.fail_lease_renewals(true);
    health(&mut h, LeaseHealth::RenewingLate, ttl).await;
    watcher.abort();
}

#[tokio::test(start_paused = true)]
async fn mem_store_expired_by_the_store() {
    let m = MemStore::new();
    let lease = Lease::grant(Arc::new(m.clone()), LeasePolicy::default()).await.unwrap();
    let mut h = lease.subscribe();
    assert!(m.expire_lease(lease.id()));
    health(&mut h, LeaseHealth::Lost, LeasePolicy::default().ttl / 2).await;
    assert_eq!(lease.remaining(), Duration::ZERO);
}

async fn etcd() -> TestEtcd {
    TestEtcd::start().await.unwrap_or_else(|e| panic!("start etcd: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leases() {
    let etcd = etcd().await;
    let ns = TestEtcd::unique_namespace();
    let a = Arc::new(etcd.store(&ns).await.unwrap());
    let b = Arc::new(etcd.store(&ns).await.unwrap());
    conformance::lease::run_all(a, b, Duration::from_secs(2)).await;
}

/// etcd killed: the holder's lease goes `RenewingLate`, then `Lost` once its hold time
/// has passed, never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_lease_goes_late_then_lost() {
    let mut etcd = etcd().await;
    let s = Arc::new(etcd.store(&TestEtcd::unique_namespace()).await.unwrap());
    let policy = LeasePolicy::with_ttl(Duration::from_secs(2));
    let lease = Lease::grant(s, policy).await.unwrap();
    lease.put("hosts/host1", b"alive".to_vec(), Precondition::Absent).await.unwrap();
    let mut h = lease.subscribe();
    etcd.kill();
    let held = lease.held_until().unwrap();
    health(&mut h, LeaseHealth::RenewingLate, Duration::from_secs(10)).await;
    assert!(lease.remaining() <= policy.fence_margin);
    health(&mut h, LeaseHealth::Lost, Duration::from_secs(10)).await;
    assert!(Instant::now() >= held, "lost before its hold time passed");
}

/// etcd stalls (frozen) for longer than the fence margin but less than the TTL: the lease
/// goes `RenewingLate`, then `Alive` again once etcd answers, and its keys stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stall_late_then_alive() {
    let etcd = etcd().await;
    let s = Arc::new(etcd.store(&TestEtcd::unique_namespace()).await.unwrap());
    let lease = Lease::grant(s.clone(), LeasePolicy::with_ttl(Duration::from_secs(4))).await.unwrap();
    lease.put("owners/vm1", b"host1".to_vec(), Precondition::Absent).await.unwrap();
    let mut h = lease.subscribe();
    etcd.freeze();
    health(&mut h, LeaseHealth::RenewingLate, Duration::from_secs(10)).await;
    etcd.thaw();
    health(&mut h, LeaseHealth::Alive, Duration::from_secs(10)).await;
    assert_eq!(s.get("owners/vm1").await.unwrap().map(|e| e.value), Some(b"host1".to_vec()));
    assert!(s.lease_time_to_live(lease.id()).await.unwrap().is_some());
}
