//! The lease checks: every [`LeaseStore`] must pass them.
//!
//! Each check uses its own keys under `ct/lease/` and waits for events with deadlines
//! (never a fixed sleep). `ttl` is the lease TTL to use: short (2 s on etcd, whose TTLs are
//! whole seconds; anything on the in-memory store, whose clock may be paused).
//! [`run_all`] runs the checks concurrently: it takes about two TTLs.
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{conflict, ok};
use crate::{wait_until_gone, Lease, LeaseHealth, LeasePolicy, LeaseStore, Precondition, StoreError, Watch, WatchEvent};

/// How long any expected change may take: a few TTLs plus slack for a loaded machine.
fn patience(ttl: Duration) -> Duration {
    ttl * 3 + Duration::from_secs(5)
}

/// The next event of a watch, within `within`.
async fn event(w: &mut Watch, within: Duration, what: &str) -> WatchEvent {
    match tokio::time::timeout(within, w.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("{what}: the watch ended"),
        Err(_) => panic!("{what}: no event within {within:?}"),
    }
}

#[track_caller]
fn lease_lost<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) {
    assert!(matches!(r, Err(StoreError::LeaseLost { .. })), "{what}: expected LeaseLost, got {r:?}");
}

/// Runs every check; `a` and `b` are two handles (clients) on one store.
pub async fn run_all(a: Arc<dyn LeaseStore>, b: Arc<dyn LeaseStore>, ttl: Duration) {
    futures::join!(
        attached_keys_expire(a.as_ref(), ttl),
        keep_alive_keeps_keys(a.clone(), ttl),
        revoke_and_detach(a.as_ref(), ttl),
        exclusive_claims(a.clone(), b.clone(), ttl),
    );
}

/// A key put with a lease that nobody renews is deleted after the TTL (a watch sees it);
/// the lease is gone for every operation afterwards.
pub async fn attached_keys_expire(s: &dyn LeaseStore, ttl: Duration) {
    let (k, plain) = ("ct/lease/expire/a", "ct/lease/expire/plain");
    let mut w = ok(s.watch("ct/lease/expire/").await, "watch");
    let start = Instant::now();
    let (id, granted) = ok(s.grant_lease(ttl).await, "grant");
    assert!(granted >= ttl, "granted {granted:?} for {ttl:?}");
    let left = ok(s.lease_time_to_live(id).await, "time to live");
    assert!(left.is_some_and(|d| d <= granted), "time to live of a new lease: {left:?}");
    let r = ok(s.put_with_lease(k, b"v".to_vec(), Precondition::Absent, id).await, "put with lease");
    ok(s.put(plain, b"v".to_vec(), Precondition::Any).await, "put");
    assert!(matches!(event(&mut w, patience(ttl), "put").await, WatchEvent::Put(e) if e.revision == r));
    event(&mut w, patience(ttl), "plain put").await;
    match event(&mut w, patience(ttl), "expiry").await {
        WatchEvent::Delete { key, revision } => assert!(key == k && revision > r, "{key} at {revision}"),
        other => panic!("expected the key's deletion, got {other:?}"),
    }
    let took = start.elapsed();
    assert!(took + Duration::from_millis(100) >= granted, "expired after {took:?}, TTL {granted:?}");
    assert_eq!(ok(s.get(k).await, "get"), None);
    assert!(ok(s.get(plain).await, "get").is_some(), "keys without the lease stay");
    assert_eq!(ok(s.lease_time_to_live(id).await, "time to live"), None);
    lease_lost(s.renew_lease(id).await, "renew an expired lease");
    lease_lost(s.put_with_lease(k, b"v".to_vec(), Precondition::Any, id).await, "put with an expired lease");
    assert_eq!(ok(s.get(k).await, "get"), None, "a put with a lost lease writes nothing");
    ok(s.revoke_lease(id).await, "revoke an expired lease");
}

/// A [`Lease`] kept alive keeps its keys past the TTL and is held further as it is
/// renewed; revoking it deletes them at once.
pub async fn keep_alive_keeps_keys(s: Arc<dyn LeaseStore>, ttl: Duration) {
    let k = "ct/lease/keep/a";
    let lease = ok(Lease::grant(s.clone(), LeasePolicy::with_ttl(ttl)).await, "grant");
    let first_hold = lease.held_until().unwrap_or_else(|| panic!("a new lease is held"));
    ok(lease.put(k, b"v".to_vec(), Precondition::Absent).await, "put");
    let mut w = ok(s.watch(k).await, "watch");
    let quiet = tokio::time::timeout(ttl * 2, w.recv()).await;
    assert!(quiet.is_err(), "the key changed while its lease was kept alive: {quiet:?}");
    // (Not necessarily `Alive` this instant: a machine that stalls the holder for TTL/2
    // makes it `RenewingLate` for a moment, rightly.)
    assert_ne!(lease.health(), LeaseHealth::Lost);
    assert!(lease.held_until().is_some_and(|t| t > first_hold), "renewals move the hold time on");
    assert!(ok(s.lease_time_to_live(lease.id()).await, "time to live").is_some());
    let mut health = lease.subscribe();
    ok(lease.revoke().await, "revoke");
    assert!(matches!(event(&mut w, patience(ttl), "revoke").await, WatchEvent::Delete { .. }));
    assert_eq!(*health.borrow_and_update(), LeaseHealth::Lost);
}

/// Revoking deletes a lease's keys at once; a put without the lease detaches a key.
pub async fn revoke_and_detach(s: &dyn LeaseStore, ttl: Duration) {
    let (a, b, c) = ("ct/lease/revoke/a", "ct/lease/revoke/b", "ct/lease/revoke/c");
    let (id, _) = ok(s.grant_lease(ttl * 10).await, "grant");
    for k in [a, b, c] {
        ok(s.put_with_lease(k, k.as_bytes().to_vec(), Precondition::Absent, id).await, "put with lease");
    }
    let rb = ok(s.get(b).await, "get").map(|e| e.revision).unwrap_or_else(|| panic!("{b} missing"));
    ok(s.put(b, b"mine now".to_vec(), Precondition::Revision(rb)).await, "put without the lease");
    let mut w = ok(s.watch("ct/lease/revoke/").await, "watch");
    ok(s.revoke_lease(id).await, "revoke");
    let mut gone = Vec::new();
    for _ in 0..2 {
        match event(&mut w, patience(ttl), "revoke").await {
            WatchEvent::Delete { key, .. } => gone.push(key),
            other => panic!("expected deletions, got {other:?}"),
        }
    }
    gone.sort();
    assert_eq!(gone, [a, c]);
    assert_eq!(ok(s.get(b).await, "get").map(|e| e.value), Some(b"mine now".to_vec()), "detached");
    assert_eq!(ok(s.list("ct/lease/revoke/").await, "list").len(), 1);
}

/// Two holders race for one key: exactly one gets it. The other waits until it is gone
/// (the winner stops renewing, as a dead host does), then claims it.
pub async fn exclusive_claims(a: Arc<dyn LeaseStore>, b: Arc<dyn LeaseStore>, ttl: Duration) {
    let k = "ct/lease/claim/owner";
    let la = ok(Lease::grant(a.clone(), LeasePolicy::with_ttl(ttl)).await, "grant a");
    let lb = ok(Lease::grant(b.clone(), LeasePolicy::with_ttl(ttl)).await, "grant b");
    let (ra, rb) = futures::join!(la.put(k, b"a".to_vec(), Precondition::Absent), lb.put(k, b"b".to_vec(), Precondition::Absent));
    assert!(ra.is_ok() != rb.is_ok(), "exactly one claim wins: {ra:?} {rb:?}");
    let (winner, loser, loser_store, won) = if ra.is_ok() { (la, lb, b, ra) } else { (lb, la, a, rb) };
    let rev = won.unwrap_or_default();
    conflict(loser.put(k, b"x".to_vec(), Precondition::Absent).await, k, Precondition::Absent, Some(rev));
    ok(wait_until_gone(loser_store.as_ref(), "ct/lease/claim/none").await, "a missing key");
    let waiter = wait_until_gone(loser_store.as_ref(), k);
    let start = Instant::now();
    let (waited, ()) = futures::join!(tokio::time::timeout(patience(ttl), waiter), async move { winner.abandon() });
    assert!(matches!(waited, Ok(Ok(()))), "wait until gone: {waited:?}");
    assert!(start.elapsed() + Duration::from_millis(100) >= ttl / 2, "gone after {:?}", start.elapsed());
    ok(loser.put(k, b"taken over".to_vec(), Precondition::Absent).await, "claim after the owner's lease expired");
    assert_ne!(loser.health(), LeaseHealth::Lost);
}
