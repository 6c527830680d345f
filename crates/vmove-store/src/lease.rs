//! Leases that expire: keys attached to a lease vanish when its holder stops renewing it.
//!
//! This is how ownership becomes self-expiring (a guest's owner, a volume lease, a host's
//! membership): an agent grants a lease with a TTL ([`LeasePolicy::ttl`], 10 s by default),
//! keeps it alive from a background task ([`Lease`]), and puts its ownership keys *attached
//! to* the lease with [`Precondition::Absent`] (two holders never both hold one key). When
//! the agent dies or loses the store, the server expires the lease and deletes the keys;
//! others wait for that with [`wait_until_gone`].
//!
//! # The holder's clock and the server's
//!
//! A renewal sent at `t` that the server answers with TTL `T` keeps the lease until at
//! least `t + T` on the server (the server restarts the countdown when the request
//! arrives, which is after `t`). [`Lease::held_until`] is that bound: until then the
//! holder surely holds its keys. After it the holder must assume they are gone. When
//! exactly the server expires the lease is not known to the holder (a new etcd leader
//! restarts every countdown, for one), so nobody else decides by the clock: they wait for
//! the key's deletion.
//!
//! # Self-fencing
//!
//! [`Lease::health`] goes [`LeaseHealth::RenewingLate`] when the lease is held for less
//! than [`LeasePolicy::fence_margin`] more (TTL/2 by default: renewals, every TTL/5, have
//! failed for TTL/2), and back to [`Alive`](LeaseHealth::Alive) when a renewal succeeds
//! again; it goes [`Lost`](LeaseHealth::Lost) for good when `held_until` passes or the
//! server says the lease is gone. The agent pauses its guests on `RenewingLate` (it still
//! holds them for the margin, long enough to pause) and gives them up on `Lost`.
//!
//! # Quorum lost
//!
//! When renewals fail, the keeper asks the store whether it can prove that the store has
//! no quorum anywhere ([`LeaseStore::quorum_lost_everywhere`]: a majority of members answer
//! and none has a leader). While it can, the lease cannot expire and its keys cannot be
//! taken, so the hold is extended ([`QUORUM_PROOF_SLACK`] short of a TTL from the moment
//! before the proof was asked): the health stays `Alive` and the guests run on. The
//! moment the proof fails (the members stop answering: this holder may be the one cut
//! off), the hold runs out as usual and the fence comes in time.
//!
//! The file store has no leases: its volume leases stay files under `flock`, which are
//! released when the holder's process dies (not when its host is cut off). The in-memory
//! store has them ([`crate::MemStore`], with fault hooks), so the agent's use of leases can
//! be unit-tested; `EtcdStore` (feature `etcd`) has them on the server.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{Precondition, Result, StateStore, StoreError, WatchEvent};

/// A lease's identifier (etcd's lease ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A store with leases.
///
/// Rules (beside those of [`StateStore`]): a key put with a lease is deleted (a
/// [`WatchEvent::Delete`]) when the lease expires or is revoked; a put of the key without a
/// lease (or with another) detaches it from the old one; operations on a lease that is gone
/// fail with [`StoreError::LeaseLost`].
#[async_trait]
pub trait LeaseStore: StateStore {
    /// Grants a new lease of (at least) `ttl`; returns it and the TTL the store granted
    /// (etcd rounds up to whole seconds and has a minimum).
    async fn grant_lease(&self, ttl: Duration) -> Result<(LeaseId, Duration)>;

    /// Renews a lease once: restarts its countdown at the TTL it was granted, which it
    /// returns. [`StoreError::LeaseLost`] if the lease is gone.
    async fn renew_lease(&self, lease: LeaseId) -> Result<Duration>;

    /// Revokes a lease: its keys are deleted now. Revoking a lease that is gone is `Ok`.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// How long the store will keep the lease without another renewal (the server's
    /// view), `None` if it is gone.
    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>>;

    /// Writes a value attached to a lease if `cond` holds; returns the new revision.
    /// [`StoreError::LeaseLost`] if the lease is gone (nothing written).
    async fn put_with_lease(&self, key: &str, value: Vec<u8>, cond: Precondition, lease: LeaseId) -> Result<u64>;

    /// Whether this holder can prove that the store has no quorum anywhere now: a majority
    /// of its members answered, and none of them has a leader. Then no write can commit,
    /// so nobody can take a key of this holder's, and no lease can expire (a leader expires
    /// leases, and a new leader gives every lease its whole TTL again). `false` when it
    /// cannot tell (members that do not answer may have a quorum among themselves).
    async fn quorum_lost_everywhere(&self, _timeout: Duration) -> bool {
        false
    }
}

/// How much shorter than a TTL the hold is extended by a proof that the store has no
/// quorum: a leader elected just before the members were asked, that they had not heard
/// of yet, gave the lease its TTL from its election.
pub const QUORUM_PROOF_SLACK: Duration = Duration::from_secs(1);

/// How a [`Lease`] is kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// The lease's TTL (default 10 s).
    pub ttl: Duration,
    /// How often it is renewed (default TTL/5: a failed renewal leaves 3/10 of the TTL,
    /// 3 s of 10, before the fence, enough for etcd to elect a new leader when its leader
    /// dies).
    pub renew_every: Duration,
    /// How soon a failed renewal is tried again (default TTL/10).
    pub retry_every: Duration,
    /// [`LeaseHealth::RenewingLate`] once the lease is held for less than this (default
    /// TTL/2): the time left to fence.
    pub fence_margin: Duration,
    /// The longest one renewal may take (default TTL/5).
    pub call_timeout: Duration,
}

impl LeasePolicy {
    /// The default policy for a TTL: renew every TTL/5, retry every TTL/10, late (fence)
    /// once held for less than TTL/2, each renewal given TTL/5.
    pub fn with_ttl(ttl: Duration) -> LeasePolicy {
        LeasePolicy { ttl, renew_every: ttl / 5, retry_every: ttl / 10, fence_margin: ttl / 2, call_timeout: ttl / 5 }
    }
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy::with_ttl(Duration::from_secs(10))
    }
}

/// How a [`Lease`]'s renewal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseHealth {
    /// Renewed on time: held for at least [`LeasePolicy::fence_margin`] more.
    Alive,
    /// Renewals fail: held for less than the fence margin. Fence now (pause what the
    /// lease guards); back to `Alive` if a renewal succeeds in time.
    RenewingLate,
    /// Gone for good (expired, revoked, or not renewed in time): its keys are gone or
    /// about to be. Grant a new lease and claim again.
    Lost,
}

#[derive(Debug)]
struct Shared {
    id: LeaseId,
    ttl: Duration,
    held_until: Mutex<Option<Instant>>,
    health: watch::Sender<LeaseHealth>,
}

impl Shared {
    fn held_until(&self) -> Option<Instant> {
        *self.held_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_held_until(&self, at: Option<Instant>) {
        *self.held_until.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    fn set_health(&self, h: LeaseHealth) {
        self.health.send_if_modified(|cur| {
            let changed = *cur != h && *cur != LeaseHealth::Lost;
            if changed {
                tracing::info!("lease {}: {:?} -> {h:?}", self.id, *cur);
                *cur = h;
            }
            changed
        });
    }

    fn lose(&self) {
        self.set_held_until(None);
        self.set_health(LeaseHealth::Lost);
    }
}

/// A lease kept alive by a background task, with its health.
///
/// Dropping it stops the renewals (the lease then expires on the server after its TTL);
/// [`Lease::revoke`] ends it at once.
pub struct Lease {
    store: Arc<dyn LeaseStore>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.shared.id).field("health", &self.health()).finish_non_exhaustive()
    }
}

impl Lease {
    /// Grants a lease of `policy.ttl` and starts keeping it alive.
    pub async fn grant(store: Arc<dyn LeaseStore>, policy: LeasePolicy) -> Result<Lease> {
        let sent = Instant::now();
        let (id, ttl) = store.grant_lease(policy.ttl).await?;
        let (health, _) = watch::channel(LeaseHealth::Alive);
        let shared = Arc::new(Shared { id, ttl, held_until: Mutex::new(Some(sent + ttl)), health });
        let task = tokio::spawn(keep_alive(store.clone(), shared.clone(), policy));
        Ok(Lease { store, shared, task })
    }

    /// The lease's ID.
    pub fn id(&self) -> LeaseId {
        self.shared.id
    }

    /// The TTL the store granted.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The health now.
    pub fn health(&self) -> LeaseHealth {
        *self.shared.health.borrow()
    }

    /// The health, as a watch that changes when the health does.
    pub fn subscribe(&self) -> watch::Receiver<LeaseHealth> {
        self.shared.health.subscribe()
    }

    /// Until when the lease is surely held (the last successful renewal's send time plus
    /// its TTL); `None` once lost.
    pub fn held_until(&self) -> Option<Instant> {
        self.shared.held_until()
    }

    /// How long the lease is surely held from now (zero once lost).
    pub fn remaining(&self) -> Duration {
        self.held_until().map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()))
    }

    /// Writes a key attached to this lease if `cond` holds (use [`Precondition::Absent`]
    /// to claim a key: of two claimants exactly one wins).
    pub async fn put(&self, key: &str, value: Vec<u8>, cond: Precondition) -> Result<u64> {
        self.store.put_with_lease(key, value, cond, self.shared.id).await
    }

    /// Stops the renewals and revokes the lease: its keys are deleted now.
    pub async fn revoke(self) -> Result<()> {
        self.task.abort();
        self.shared.lose();
        self.store.revoke_lease(self.shared.id).await
    }

    /// Stops the renewals without revoking: the lease expires on the server after its TTL
    /// (as if this holder died). Its health goes `Lost` at once.
    pub fn abandon(self) {
        self.task.abort();
        self.shared.lose();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The keep-alive task: renews every `renew_every`, retries every `retry_every` after a
/// failure, and moves the health as the hold time runs out.
async fn keep_alive(store: Arc<dyn LeaseStore>, shared: Arc<Shared>, policy: LeasePolicy) {
    let id = shared.id;
    let mut next_attempt = Instant::now() + policy.renew_every;
    // The last failed renewal was followed by a proof that the store has no quorum.
    let mut no_quorum = false;
    loop {
        let Some(held) = shared.held_until() else { return };
        let now = Instant::now();
        if now >= held {
            tracing::warn!("lease {id}: not renewed in time, lost");
            shared.lose();
            // Best effort: if the server still has it, its keys go now rather than later.
            let _ = tokio::time::timeout(policy.call_timeout, store.revoke_lease(id)).await;
            return;
        }
        let late_at = held.checked_sub(policy.fence_margin).unwrap_or(now);
        if now >= late_at {
            shared.set_health(LeaseHealth::RenewingLate);
        }
        // The next point where the health may change.
        let change_at = if now < late_at { late_at } else { held };
        if now < next_attempt {
            tokio::time::sleep_until(next_attempt.min(change_at)).await;
            continue;
        }
        // Without a quorum a renewal only fails: try it briefly, then ask the members again.
        let give = if no_quorum { policy.retry_every.min(policy.call_timeout) } else { policy.call_timeout };
        let deadline = (now + give).min(change_at);
        match tokio::time::timeout_at(deadline, store.renew_lease(id)).await {
            Ok(Ok(ttl)) => {
                no_quorum = false;
                let held = now + ttl;
                shared.set_held_until(Some(held));
                if held.saturating_duration_since(Instant::now()) >= policy.fence_margin {
                    shared.set_health(LeaseHealth::Alive);
                }
                next_attempt = now + policy.renew_every;
            }
            Ok(Err(StoreError::LeaseLost { .. })) => {
                tracing::warn!("lease {id}: the store says it is gone");
                shared.lose();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!("lease {id}: renewal failed: {e}");
                next_attempt = now + policy.retry_every;
                no_quorum = hold_while_no_quorum(store.as_ref(), &shared, &policy).await;
            }
            Err(_) => {
                tracing::warn!("lease {id}: renewal did not answer in time");
                next_attempt = now + policy.retry_every;
                no_quorum = hold_while_no_quorum(store.as_ref(), &shared, &policy).await;
            }
        }
    }
}

/// After a failed renewal: if the store proves that it has no quorum anywhere, the lease
/// is held until `asked + TTL - QUORUM_PROOF_SLACK` at least, `asked` being the moment the
/// members were asked (see the module's "Quorum lost"). Returns whether it proved it.
async fn hold_while_no_quorum(store: &dyn LeaseStore, shared: &Shared, policy: &LeasePolicy) -> bool {
    if shared.held_until().is_none() {
        return false;
    }
    let asked = Instant::now();
    // Quick: this runs when the fence may be due.
    let wait = policy.retry_every.min(policy.call_timeout);
    if !matches!(tokio::time::timeout(wait, store.quorum_lost_everywhere(wait)).await, Ok(true)) {
        return false;
    }
    let Some(held) = shared.held_until() else { return false };
    let Some(until) = (asked + shared.ttl).checked_sub(QUORUM_PROOF_SLACK) else { return false };
    if Instant::now() >= held {
        return false; // too late: the hold ran out while asking
    }
    if until > held {
        tracing::warn!("lease {}: the store has no quorum anywhere: no one can take this lease's keys; held on", shared.id);
        shared.set_held_until(Some(until));
        if until.saturating_duration_since(Instant::now()) >= policy.fence_margin {
            shared.set_health(LeaseHealth::Alive);
        }
    }
    true
}

/// Waits until `key` does not exist (returns at once if it does not): the way to wait for
/// a dead holder's lease to expire. Wrap it in a timeout to bound the wait. A watch that
/// ends (the store was unreachable) is started again; errors of the store are returned.
pub async fn wait_until_gone<S: StateStore + ?Sized>(store: &S, key: &str) -> Result<()> {
    loop {
        // Watch first, then look: a deletion between the two is not missed.
        let mut w = store.watch(key).await?;
        if store.get(key).await?.is_none() {
            return Ok(());
        }
        while let Some(ev) = w.recv().await {
            if matches!(&ev, WatchEvent::Delete { key: k, .. } if k == key) {
                return Ok(());
            }
        }
        tracing::debug!("watch of {key} ended; watching again");
    }
}
