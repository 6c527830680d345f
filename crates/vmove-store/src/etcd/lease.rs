//! etcd leases: grant, renew (over a keep-alive stream kept per lease), revoke, TTL, and
//! puts attached to a lease.
use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use super::{deadline, map, map_lease, retry_deadline, EtcdStore};
use crate::{LeaseId, LeaseStore, Precondition, Result, StoreError};

/// The open keep-alive streams, by lease.
pub(crate) type Keepers = HashMap<i64, (LeaseKeeper, LeaseKeepAliveStream)>;

/// The TTL to ask for: whole seconds, rounded up, at least 1.
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl EtcdStore {
    /// A keep-alive stream of the lease: the open one, or a new one (opening renews once).
    async fn keeper(&self, lease: LeaseId) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
        let open = self.inner.keepers.lock().unwrap_or_else(|p| p.into_inner()).remove(&lease.0);
        if let Some(k) = open {
            return Ok(k);
        }
        let context = format!("renew lease {lease}");
        // A stream opened on a dead member's endpoint fails at once: open another.
        let open = async {
            loop {
                let mut lc = self.inner.lease.clone();
                match lc.keep_alive(lease.0).await {
                    Err(e) if super::error::connect_failed(&e) => tokio::time::sleep(Duration::from_millis(20)).await,
                    r => return r,
                }
            }
        };
        match tokio::time::timeout(self.inner.timeout, open).await {
            Ok(Ok(k)) => Ok(k),
            // The client refuses a stream whose first answer has TTL 0 (the lease is
            // gone); ask the server for the lease itself rather than read the message.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => match self.lease_time_to_live(lease).await? {
                None => Err(StoreError::LeaseLost { lease: lease.0 }),
                Some(_) => Err(StoreError::Backend { context, source: "the keep-alive stream failed".into() }),
            },
            Ok(Err(e)) => Err(map_lease(context, lease.0, e)),
            Err(_) => Err(super::error::timed_out(context, self.inner.timeout)),
        }
    }

    async fn renew(&self, lease: LeaseId) -> Result<Duration> {
        let (mut keeper, mut stream) = self.keeper(lease).await?;
        let context = format!("renew lease {lease}");
        let exchange = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let resp = deadline(self.inner.timeout, context.clone(), exchange, |c, e| map_lease(c, lease.0, e)).await?;
        match resp {
            // TTL 0: the server does not know the lease.
            Some(r) if r.ttl() <= 0 => Err(StoreError::LeaseLost { lease: lease.0 }),
            Some(r) => {
                self.inner.keepers.lock().unwrap_or_else(|p| p.into_inner()).insert(lease.0, (keeper, stream));
                Ok(secs(r.ttl()))
            }
            None => Err(StoreError::Unreachable { context, source: "the keep-alive stream ended".into() }),
        }
    }
}

/// What one member said of its leader: `Some(true)` it has one, `Some(false)` it has none,
/// `None` it did not answer in time.
async fn member_has_leader(endpoint: &str, options: &etcd_client::ConnectOptions, timeout: Duration) -> Option<bool> {
    let ask = async {
        let mut c = etcd_client::Client::connect([endpoint], Some(options.clone().with_connect_timeout(timeout))).await.ok()?;
        c.status().await.ok()
    };
    let status = tokio::time::timeout(timeout, ask).await.ok().flatten()?;
    Some(status.leader() != 0)
}

/// Whether `answers` (one per member: `None` silent, `Some(has_leader)`) prove that no
/// quorum exists: a majority of the `members` answered, and none of them has a leader.
pub(crate) fn no_quorum_proved(members: usize, answers: &[Option<bool>]) -> bool {
    let answered: Vec<bool> = answers.iter().flatten().copied().collect();
    members > 0 && answered.len() > members / 2 && answered.iter().all(|has| !has)
}

#[async_trait]
impl LeaseStore for EtcdStore {
    async fn quorum_lost_everywhere(&self, timeout: Duration) -> bool {
        let m = &self.inner.members;
        let asks = m.endpoints.iter().map(|e| member_has_leader(e, &m.options, timeout));
        let answers = futures::future::join_all(asks).await;
        let proved = no_quorum_proved(m.endpoints.len(), &answers);
        tracing::info!(?answers, proved, "etcd members asked for their leader");
        proved
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<(LeaseId, Duration)> {
        let context = format!("grant a lease of {ttl:?}");
        let send = || {
            let mut lc = self.inner.lease.clone();
            async move { lc.grant(ttl_secs(ttl), None).await }
        };
        let resp = retry_deadline(self.inner.timeout, context, send, map).await?;
        Ok((LeaseId(resp.id()), secs(resp.ttl())))
    }

    async fn renew_lease(&self, lease: LeaseId) -> Result<Duration> {
        // A stream that failed is dropped (not put back) and the next renewal opens another.
        self.renew(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner.keepers.lock().unwrap_or_else(|p| p.into_inner()).remove(&lease.0);
        let mut lc = self.inner.lease.clone();
        let context = format!("revoke lease {lease}");
        match deadline(self.inner.timeout, context, lc.revoke(lease.0), |c, e| map_lease(c, lease.0, e)).await {
            Ok(_) | Err(StoreError::LeaseLost { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<Duration>> {
        let context = format!("time to live of lease {lease}");
        let send = || {
            let mut lc = self.inner.lease.clone();
            async move { lc.time_to_live(lease.0, None).await }
        };
        match retry_deadline(self.inner.timeout, context, send, |c, e| map_lease(c, lease.0, e)).await {
            // TTL -1: the server does not know the lease.
            Ok(r) if r.ttl() < 0 => Ok(None),
            Ok(r) => Ok(Some(secs(r.ttl()))),
            Err(StoreError::LeaseLost { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_with_lease(&self, key: &str, value: Vec<u8>, cond: Precondition, lease: LeaseId) -> Result<u64> {
        self.write(key, value, cond, Some(lease.0)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(ttl_secs(Duration::from_secs(10)), 10);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(secs(-1), Duration::ZERO);
    }

    #[test]
    fn only_a_leaderless_majority_proves_that_no_quorum_exists() {
        // 3 members: two leaderless answers prove it; a silent third may not change it.
        assert!(no_quorum_proved(3, &[Some(false), Some(false), None]));
        assert!(no_quorum_proved(3, &[Some(false), Some(false), Some(false)]));
        // One member answering: the two silent ones may have a quorum (this host may be
        // the one cut off).
        assert!(!no_quorum_proved(3, &[Some(false), None, None]));
        // Any member with a leader: a quorum may exist.
        assert!(!no_quorum_proved(3, &[Some(false), Some(false), Some(true)]));
        assert!(!no_quorum_proved(1, &[Some(true)]));
        assert!(no_quorum_proved(1, &[Some(false)]));
        // 4 members: 2 answers are not a majority.
        assert!(!no_quorum_proved(4, &[Some(false), Some(false), None, None]));
        assert!(no_quorum_proved(4, &[Some(false), Some(false), Some(false), None]));
        assert!(!no_quorum_proved(0, &[]));
    }
}
