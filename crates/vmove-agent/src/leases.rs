//! Exclusive volume leases: which one host may run QEMU on a volume.
//!
//! A lease is a record per volume in a [`StateStore`] that every host of the pool sees: by
//! default a [`vmove_store::FileStore`] in the pool itself (`<pool>/.vmove-leases/`, changes
//! serialised across hosts by the store's lock), or the cluster's etcd
//! (`leases/<pool>/<volume>`, [`Leases::on_fleet`]). Every change is a compare-and-swap on
//! the record's revision, so two hosts can never both take one volume. The same records,
//! one per guest under `owners/`, say which host may run a guest on etcd.
//!
//! On etcd every record is attached to its holder's etcd lease ([`Lease::holder_lease`]):
//! written by the holder with its own lease, and by another host (a live-migration target
//! adding its `incoming` claim) with the holder's. So a holder that dies or loses etcd
//! loses its records when its lease expires, and a takeover never replaces a record whose
//! holder's lease is alive: forced migrations wait for the holder's lease to expire (the
//! record is then gone) rather than take an operator's word.
//!
//! A lease is taken before a guest starts and before a migration target attaches the
//! volume; it is released when the source detaches it. A live-migration target holds an
//! `incoming` claim until the switchover hands it the lease. Forced offline migration takes
//! a lease over from a dead host and bumps its epoch: when that host comes back, its agent
//! sees that the lease is someone else's and never starts the guest there again.
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmove_store::{get_record, put_record, LeaseId, Precondition, Record, StateStore, StoreError};

use crate::error::{fail, AgentError, Result};
use crate::fleet::Fleet;

/// How many times a compare-and-swap is retried when another host changed the lease.
const CAS_TRIES: usize = 16;

/// A lease record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Host allowed to write the volume.
    pub holder: String,
    /// Guest the volume belongs to.
    pub guest: String,
    /// Bumped on every forced takeover.
    pub epoch: u64,
    /// A live-migration target that may open the volume while `holder` still runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<String>,
    /// Unix time of the last change, ms.
    pub since_ms: u64,
    /// The holder's agent address, so that other hosts can ask it about the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_address: Option<String>,
    /// On etcd: the holder's etcd lease, to which the record is attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_lease: Option<i64>,
}

impl Record for Lease {
    const KIND: &'static str = "lease";
    const VERSION: u32 = 1;
}

/// How to take a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Only if free or already ours.
    Exclusive,
    /// Take it over from whoever holds it (forced offline migration), bumping the epoch.
    Takeover,
}

/// The leases of one pool.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn StateStore>,
    prefix: String,
    fleet: Option<Arc<Fleet>>,
}

/// What a change decides, given the current lease.
enum Change {
    Put(Lease),
    Delete,
    Keep,
}

impl Leases {
    /// The leases kept in `store` under `prefix` (empty for a pool's own store).
    pub fn new(store: Arc<dyn StateStore>, prefix: &str) -> Leases {
        Leases { store, prefix: prefix.to_string(), fleet: None }
    }

    /// The same store's records under `prefix` below these (on the file store, the guests'
    /// ownership, `owners/`, beside a shared pool's volume leases).
    pub fn under(&self, prefix: &str) -> Leases {
        Leases { store: self.store.clone(), prefix: format!("{}{prefix}", self.prefix), fleet: self.fleet.clone() }
    }

    /// The leases kept in the cluster's store under `prefix` (`leases/<pool>/`, `owners/`),
    /// attached to their holders' etcd leases.
    pub fn on_fleet(fleet: Arc<Fleet>, prefix: &str) -> Leases {
        Leases { store: fleet.store().clone(), prefix: prefix.to_string(), fleet: Some(fleet) }
    }

    /// Writes a record: on etcd attached to the holder's lease (this host's own, in force,
    /// when it is the holder).
    async fn write(&self, key: &str, mut l: Lease, cond: Precondition) -> vmove_store::Result<()> {
        let Some(f) = &self.fleet else {
            return put_record(self.store.as_ref(), key, &l, cond).await.map(|_| ());
        };
        let own = l.holder == f.host();
        if own {
            l.holder_lease = Some(f.lease_id().0);
        }
        let Some(id) = l.holder_lease else {
            return put_record(self.store.as_ref(), key, &l, cond).await.map(|_| ());
        };
        let bytes = vmove_store::encode_record(key, &l)?;
        match f.lease_store().put_with_lease(key, bytes, cond, LeaseId(id)).await {
            // This host's own lease expired a moment ago and the agent has not noticed yet
            // (its keep-alive will, and grant a new one): written on the new lease instead
            // of failing with the old one's id.
            Err(vmove_store::StoreError::LeaseLost { lease }) if own && lease == id => {
                let new = wait_new_lease(f, LeaseId(id)).await.ok_or(vmove_store::StoreError::LeaseLost { lease })?;
                tracing::info!(old = %LeaseId(id), new = %new, key, "written on this host's new lease");
                l.holder_lease = Some(new.0);
                let bytes = vmove_store::encode_record(key, &l)?;
                f.lease_store().put_with_lease(key, bytes, cond, new).await.map(|_| ())
            }
            r => r.map(|_| ()),
        }
    }

    fn key(&self, volume: &str) -> String {
        format!("{}{volume}", self.prefix)
    }

    /// The current lease of a volume.
    pub async fn read(&self, volume: &str) -> Result<Option<Lease>> {
        Ok(get_record::<Lease>(self.store.as_ref(), &self.key(volume)).await?.map(|(l, _)| l))
    }

    /// Reads, decides, writes with compare-and-swap; retries when another host won.
    async fn change(&self, volume: &str, f: impl Fn(Option<Lease>) -> Result<(Change, Option<Lease>)>) -> Result<Option<Lease>> {
        let key = self.key(volume);
        for _ in 0..CAS_TRIES {
            let cur = get_record::<Lease>(self.store.as_ref(), &key).await?;
            let cond = cur.as_ref().map_or(Precondition::Absent, |(_, r)| Precondition::Revision(*r));
            let (change, out) = f(cur.map(|(l, _)| l))?;
            let r = match change {
                Change::Keep => return Ok(out),
                Change::Put(l) => self.write(&key, l, cond).await,
                Change::Delete => self.store.delete(&key, cond).await.map(|_| ()),
            };
            match r {
                Ok(()) => return Ok(out),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(AgentError::from(e).context(format!("lease of {volume}"))),
            }
        }
        fail!(Busy, "lease of {volume}: changed by other hosts {CAS_TRIES} times in a row")
    }

    /// Takes the lease for `host` (recording its agent address). Returns the lease in force.
    pub async fn acquire(&self, volume: &str, host: &str, guest: &str, how: Take, address: &str) -> Result<Lease> {
        let now = crate::now_ms();
        let attached = self.fleet.is_some();
        let l = self
            .change(volume, |cur| {
                let new = match cur {
                    None => Lease {
                        holder: host.into(),
                        guest: guest.into(),
                        epoch: 1,
                        incoming: None,
                        since_ms: now,
                        holder_address: None,
                        holder_lease: None,
                    },
                    Some(c) if c.holder == host => Lease { incoming: None, since_ms: now, ..c },
                    // On etcd a record exists only while its holder's lease does: the holder
                    // is alive, whatever the operator says.
                    Some(c) if how == Take::Takeover && attached && c.holder_lease.is_some() => fail!(
                        Leased,
                        "volume {volume} is leased to {} (guest {}), whose lease is alive: a takeover waits until it \
                         expires (`vmove cluster wait-dead {}`)",
                        c.holder,
                        c.guest,
                        c.holder
                    ),
                    Some(c) if how == Take::Takeover => Lease {
                        holder: host.into(),
                        guest: guest.into(),
                        epoch: c.epoch.saturating_add(1),
                        incoming: None,
                        since_ms: now,
                        holder_address: None,
                        holder_lease: None,
                    },
                    Some(c) => fail!(Leased, "volume {volume} is leased to {} (guest {}); it cannot be used on {host}", c.holder, c.guest),
                };
                let new = Lease { holder_address: Some(address.to_string()), ..new };
                Ok((Change::Put(new.clone()), Some(new)))
            })
            .await?;
        l.ok_or_else(|| AgentError::internal("lease change returned nothing"))
    }

    /// Releases the lease if `host` holds it, or its incoming claim. Returns whether it did.
    pub async fn release(&self, volume: &str, host: &str) -> Result<bool> {
        let done = self
            .change(volume, |cur| {
                Ok(match cur {
                    Some(c) if c.holder == host => (Change::Delete, Some(c)),
                    Some(mut c) if c.incoming.as_deref() == Some(host) => {
                        c.incoming = None;
                        (Change::Put(c.clone()), Some(c))
                    }
                    _ => (Change::Keep, None),
                })
            })
            .await?;
        Ok(done.is_some())
    }

    /// Lets `target` open the volume for an incoming live migration while `holder` runs it.
    pub async fn add_incoming(&self, volume: &str, holder: &str, target: &str, guest: &str) -> Result<Lease> {
        let now = crate::now_ms();
        let l = self
            .change(volume, |cur| {
                let mut c = cur.unwrap_or(Lease {
                    holder: holder.into(),
                    guest: guest.into(),
                    epoch: 1,
                    incoming: None,
                    since_ms: now,
                    holder_address: None,
                    holder_lease: None,
                });
                if c.holder == target {
                    return Ok((Change::Keep, Some(c)));
                }
                if c.holder != holder {
                    fail!(Leased, "volume {volume} is leased to {}, not to the source {holder}", c.holder);
                }
                c.incoming = Some(target.into());
                c.since_ms = now;
                Ok((Change::Put(c.clone()), Some(c)))
            })
            .await?;
        l.ok_or_else(|| AgentError::internal("lease change returned nothing"))
    }

    /// Claims a record again after this host's etcd lease was lost (the record vanished with
    /// it) or replaced (a restart): this host's record is attached to its new lease, a
    /// missing one is created for it, another host's is refused (`leased`). A record whose
    /// incoming host this is stays as it is (the holder keeps it).
    pub async fn reattach(&self, volume: &str, host: &str, guest: &str, address: &str) -> Result<Lease> {
        let now = crate::now_ms();
        let l = self
            .change(volume, |cur| {
                let l = match cur {
                    None => Lease {
                        holder: host.into(),
                        guest: guest.into(),
                        epoch: 1,
                        incoming: None,
                        since_ms: now,
                        holder_address: Some(address.into()),
                        holder_lease: None,
                    },
                    Some(c) if c.incoming.as_deref() == Some(host) => return Ok((Change::Keep, Some(c))),
                    Some(c) if c.holder == host => c,
                    Some(c) => fail!(Leased, "{volume} is now leased to {} (guest {})", c.holder, c.guest),
                };
                Ok((Change::Put(l.clone()), Some(l)))
            })
            .await?;
        l.ok_or_else(|| AgentError::internal("lease change returned nothing"))
    }

    /// Hands the lease to the incoming host at the switchover.
    pub async fn switch_to_incoming(&self, volume: &str, target: &str, address: &str) -> Result<Lease> {
        let now = crate::now_ms();
        let l = self
            .change(volume, |cur| {
                let Some(c) = cur else { fail!(NotFound, "volume {volume} has no lease") };
                if c.holder == target {
                    return Ok((Change::Keep, Some(c)));
                }
                if c.incoming.as_deref() != Some(target) {
                    fail!(Leased, "volume {volume}: {target} is not its incoming host");
                }
                let l = Lease {
                    holder: target.into(),
                    incoming: None,
                    since_ms: now,
                    holder_address: Some(address.into()),
                    holder_lease: None,
                    ..c
                };
                Ok((Change::Put(l.clone()), Some(l)))
            })
            .await?;
        l.ok_or_else(|| AgentError::internal("lease change returned nothing"))
    }
}

/// Waits (at most two lease TTLs) for the agent to replace its lease `old`, which the store
/// says is gone; `None` if it has not by then.
async fn wait_new_lease(f: &Fleet, old: LeaseId) -> Option<LeaseId> {
    let deadline = tokio::time::Instant::now() + f.policy().ttl * 2;
    loop {
        let id = f.lease_id();
        if id != old {
            return Some(id);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmove_api::ErrorCode;
    use vmove_store::MemStore;

    fn leases() -> Leases {
        Leases::new(Arc::new(MemStore::new()), "")
    }

    #[tokio::test]
    async fn exclusive_then_takeover_bumps_epoch() {
        let p = leases();
        let a = p.acquire("v.img", "host1", "vm1", Take::Exclusive, "h1:1").await.unwrap();
        assert_eq!((a.holder.as_str(), a.epoch, a.holder_address.as_deref()), ("host1", 1, Some("h1:1")));
        let e = p.acquire("v.img", "host2", "vm1", Take::Exclusive, "h2:1").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Leased);
        assert_eq!(e.message, "volume v.img is leased to host1 (guest vm1); it cannot be used on host2");
        let b = p.acquire("v.img", "host2", "vm1", Take::Takeover, "h2:1").await.unwrap();
        assert_eq!((b.holder.as_str(), b.epoch), ("host2", 2));
        assert!(!p.release("v.img", "host1").await.unwrap(), "the old holder cannot release it");
        assert_eq!(p.read("v.img").await.unwrap().unwrap().holder, "host2");
        assert!(p.release("v.img", "host2").await.unwrap());
        assert_eq!(p.read("v.img").await.unwrap(), None);
    }

    #[tokio::test]
    async fn incoming_then_switch_or_let_go() {
        let p = leases();
        p.acquire("v.img", "host1", "vm1", Take::Exclusive, "h1:1").await.unwrap();
        assert!(p.switch_to_incoming("v.img", "host2", "h2:1").await.is_err());
        p.add_incoming("v.img", "host1", "host2", "vm1").await.unwrap();
        let l = p.switch_to_incoming("v.img", "host2", "h2:1").await.unwrap();
        assert_eq!((l.holder.as_str(), l.incoming, l.holder_address.as_deref()), ("host2", None, Some("h2:1")));
        p.acquire("w.img", "host1", "vm1", Take::Exclusive, "h1:1").await.unwrap();
        p.add_incoming("w.img", "host1", "host2", "vm1").await.unwrap();
        assert!(p.release("w.img", "host2").await.unwrap());
        assert_eq!(p.read("w.img").await.unwrap().unwrap().incoming, None);
        let e = p.add_incoming("w.img", "host3", "host2", "vm1").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Leased);
    }

    #[tokio::test]
    async fn racing_hosts_never_both_win() {
        let store: Arc<dyn StateStore> = Arc::new(MemStore::new());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let p = Leases::new(store.clone(), "");
                tokio::spawn(async move { p.acquire("v.img", &format!("host{i}"), "vm1", Take::Exclusive, "a:1").await.is_ok() })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn a_failed_write_is_an_error_not_a_lease() {
        let m = Arc::new(MemStore::new());
        m.fail_writes(vmove_store::FailPolicy::All);
        let p = Leases::new(m, "");
        let e = p.acquire("v.img", "host1", "vm1", Take::Exclusive, "a:1").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::StateWrite);
    }
}
