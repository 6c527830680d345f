//! [`EtcdStore`]: the state store on etcd (feature `etcd`), for fleets.
//!
//! # Key layout
//!
//! Everything lives under a namespace (`/vmove/<cluster>/`), so that several clusters, and
//! parallel tests, share one etcd:
//!
//! ```text
//! <ns>kv/<key>                      key <key>: value as is, revision = etcd's mod_revision
//! <ns>log/<name>#<seq, 20 digits>   record <seq> of log <name> ('#' is never in a name,
//!                                   so log a's records never mix with log a/b's)
//! ```
//!
//! # Operations
//!
//! - `put` with [`Precondition::Any`] is a plain put; with `Absent` a transaction comparing
//!   `version == 0`, with `Revision(r)` one comparing `mod_revision == r`; the failure
//!   branch reads the key, for the [`StoreError::Conflict`]. `delete` likewise.
//! - `list` is a prefix range, read in pages at the first page's revision (one snapshot).
//! - `watch` is an etcd watch of the prefix from the revision after its creation; it ends
//!   when the stream fails (a consumer lists again and watches again).
//! - `append` sends the record to the store's appender task, which batches the appends
//!   queued meanwhile (per log, at most 100 records or 1 MiB a transaction) into a
//!   transaction that puts records `n..` if record `n` does not exist and record `n - 1`
//!   does; on conflict (another client appended) it learns the new end from the failure
//!   branch and tries again. `read_log` is a range read, `delete_log` a prefix delete.
//! - Leases ([`LeaseStore`]): etcd leases; `put_with_lease` attaches the key.
//!
//! Every call has a deadline ([`EtcdOptions::timeout`]); a call that misses it, or finds no
//! connection or no leader, is [`StoreError::Unreachable`]. The decision is made on the
//! client error's type and the gRPC status code, never on message text.
//!
//! # TLS
//!
//! The client authenticates with a certificate ([`EtcdTls`]); the etcd client's TLS is
//! tonic's rustls with the ring provider, the one rcgen and the agent API use (no second
//! crypto provider is linked, and none needs to be installed as the process default).
mod error;
mod lease;
mod log;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, KeyValue, KvClient,
    LeaseClient, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchClient, WatchOptions,
};
use tokio::sync::mpsc;

use crate::key::{check_size, validate_key, validate_prefix};
use crate::{Entry, LogRecord, LogWatch, Precondition, Result, StateStore, StoreError, Watch, WatchEvent};

pub(crate) use error::{deadline, map, map_lease, retry_deadline, retry_read_deadline};

/// Keys read per page of a range.
const PAGE: i64 = 128;
/// The largest response the client decodes (a page of the largest values).
const MAX_DECODE: usize = 200 << 20;

/// The client's certificate and the CA that signs the servers' (PEM).
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA certificate the servers' certificates must chain to.
    pub ca_pem: String,
    /// The client certificate.
    pub cert_pem: String,
    /// The client certificate's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").finish_non_exhaustive()
    }
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Endpoints, `https://host:port` (or `http://` without TLS).
    pub endpoints: Vec<String>,
    /// The client certificate; `None` for plain text (`http://` endpoints).
    pub tls: Option<EtcdTls>,
    /// The server name to verify in the servers' certificates, if not the endpoints' host.
    pub server_name: Option<String>,
    /// The namespace every key lives under: `/`, then key segments, then `/`
    /// (`/vmove/<cluster>/`).
    pub namespace: String,
    /// The deadline of each call (default 5 s).
    pub timeout: Duration,
    /// The deadline of a connection attempt (default 3 s).
    pub connect_timeout: Duration,
}

impl EtcdOptions {
    /// Options with the default deadlines.
    pub fn new(endpoints: Vec<String>, tls: Option<EtcdTls>, namespace: impl Into<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            tls,
            server_name: None,
            namespace: namespace.into(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// Checks a namespace: `/`, valid key segments, `/`.
fn validate_namespace(ns: &str) -> Result<()> {
    let inner = ns.strip_prefix('/').and_then(|s| s.strip_suffix('/'));
    match inner {
        Some(inner) => validate_key(inner).map_err(|_| StoreError::InvalidKey {
            key: ns.into(),
            reason: "a namespace is '/', key segments, '/' (e.g. /vmove/cluster1/)",
        }),
        None => Err(StoreError::InvalidKey { key: ns.into(), reason: "a namespace starts and ends with '/'" }),
    }
}

/// The end of the range of every key starting with `prefix` (ASCII: the last byte + 1).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub(crate) struct Inner {
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    ns: String,
    timeout: Duration,
    log: mpsc::UnboundedSender<log::Request>,
    keepers: Mutex<lease::Keepers>,
    members: Arc<Members>,
}

/// How to ask each member alone (for [`crate::LeaseStore::quorum_lost_everywhere`]).
pub(crate) struct Members {
    endpoints: Vec<String>,
    options: ConnectOptions,
}

/// The state store on etcd. Clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("namespace", &self.inner.ns).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects over TLS with a client certificate, with the default deadlines; checks
    /// that etcd answers.
    pub async fn connect(endpoints: &[String], tls: EtcdTls, namespace: &str) -> Result<EtcdStore> {
        Self::connect_with(EtcdOptions::new(endpoints.to_vec(), Some(tls), namespace)).await
    }

    /// Connects with these options; checks that etcd answers (a read of the namespace)
    /// ([`StoreError::Unreachable`] if it does not in time).
    pub async fn connect_with(opts: EtcdOptions) -> Result<EtcdStore> {
        validate_namespace(&opts.namespace)?;
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_keep_alive(Duration::from_secs(2), opts.timeout.min(Duration::from_secs(3)))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &opts.tls {
            let mut t = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            if let Some(name) = &opts.server_name {
                t = t.domain_name(name.clone());
            }
            co = co.with_tls(t);
        }
        let context = format!("connect to etcd at {}", opts.endpoints.join(","));
        let members = Arc::new(Members { endpoints: opts.endpoints.clone(), options: co.clone() });
        let client =
            deadline(opts.timeout, context.clone(), Client::connect(&opts.endpoints, Some(co)), map).await?;
        let kv = client.kv_client().max_decoding_message_size(MAX_DECODE);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(log::Appender::new(kv.clone(), opts.namespace.clone(), opts.timeout).run(rx));
        let store = EtcdStore {
            inner: Arc::new(Inner {
                kv,
                watch: client.watch_client().max_decoding_message_size(MAX_DECODE),
                lease: client.lease_client(),
                ns: opts.namespace,
                timeout: opts.timeout,
                log: tx,
                keepers: Mutex::default(),
                members,
            }),
        };
        let probe = GetOptions::new().with_prefix().with_count_only();
        let ns = store.inner.ns.clone();
        let probed = store
            .call(context.clone(), |mut kv| {
                let (ns, probe) = (ns.clone(), probe.clone());
                async move { kv.get(ns, Some(probe)).await }
            })
            .await;
        match probed {
            Ok(_) => Ok(store),
            // Say why, when the members can tell: they answer, but have no leader.
            Err(StoreError::Unreachable { .. })
                if crate::LeaseStore::quorum_lost_everywhere(&store, opts.connect_timeout).await =>
            {
                Err(StoreError::NoQuorum { context })
            }
            Err(e) => Err(e),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.ns
    }

    /// Starts an etcd watch of the raw key prefix `full` and forwards what `map_event` makes of
    /// each event until the receiver is dropped or the watch ends. Returns once the server
    /// has created the watch, so that every change after the call is seen.
    async fn forward<T: Send + 'static>(
        &self,
        full: String,
        context: String,
        map_event: impl Fn(&etcd_client::Event, &str) -> Option<T> + Send + 'static,
    ) -> Result<mpsc::UnboundedReceiver<T>> {
        let opts = WatchOptions::new().with_prefix().with_fragment();
        let mut wc = self.inner.watch.clone();
        let timeout = self.inner.timeout;
        let mut stream = deadline(timeout, context.clone(), wc.watch(full, Some(opts)), map).await?;
        loop {
            let msg = deadline(timeout, context.clone(), stream.message(), map).await?;
            match msg {
                Some(resp) if resp.created() => break,
                Some(_) => continue,
                None => return Err(error::timed_out(context, timeout)),
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => break,
                    m = stream.message() => m,
                };
                let resp = match msg {
                    Ok(Some(resp)) if !resp.canceled() => resp,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!("{context}: the watch ended: {e}");
                        break;
                    }
                };
                for ev in resp.events() {
                    if let Some(item) = map_event(ev, &context) {
                        if tx.send(item).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }

    /// A store on a namespace below this one (`<namespace><sub>`, `sub` being key segments
    /// ending in `/`, e.g. `hosts/host1/`) over the same connection. Its keys and logs are
    /// apart from this store's (which live under `<namespace>kv/` and `<namespace>log/`).
    pub fn sub_namespace(&self, sub: &str) -> Result<EtcdStore> {
        let ns = format!("{}{sub}", self.inner.ns);
        validate_namespace(&ns)?;
        if ["kv/", "log/"].iter().any(|p| sub.starts_with(p)) {
            return Err(StoreError::InvalidKey { key: sub.into(), reason: "kv/ and log/ hold the store's own keys" });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(log::Appender::new(self.inner.kv.clone(), ns.clone(), self.inner.timeout).run(rx));
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                kv: self.inner.kv.clone(),
                watch: self.inner.watch.clone(),
                lease: self.inner.lease.clone(),
                ns,
                timeout: self.inner.timeout,
                log: tx,
                keepers: Mutex::default(),
                members: self.inner.members.clone(),
            }),
        })
    }

    /// The etcd key of a store key.
    fn kv_key(&self, key: &str) -> String {
        format!("{}kv/{key}", self.inner.ns)
    }

    /// An etcd key-value as an entry (its key relative to the namespace).
    fn entry(&self, kv: &KeyValue) -> Result<Entry> {
        entry(&self.inner.ns, kv)
    }

    /// Runs a KV call with the deadline.
    async fn call<T, F>(&self, context: String, f: impl Fn(KvClient) -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        retry_read_deadline(self.inner.timeout, context, || f(self.inner.kv.clone()), map).await
    }

    /// Runs a transaction with the deadline (missing leases are [`StoreError::LeaseLost`]).
    async fn txn(&self, context: String, txn: Txn, lease: Option<i64>) -> Result<TxnResponse> {
        let kv = &self.inner.kv;
        let send = || {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        };
        retry_deadline(self.inner.timeout, context, send, |c, e| match lease {
            Some(l) => map_lease(c, l, e),
            None => map(c, e),
        })
        .await
    }

    /// The conflict of a failed transaction whose failure branch read the key.
    fn conflict(&self, key: &str, cond: Precondition, resp: &TxnResponse) -> StoreError {
        let actual = resp.op_responses().iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision() as u64)),
            _ => None,
        });
        StoreError::Conflict { key: key.into(), expected: cond, actual: actual.flatten() }
    }

    /// The compare of a precondition (`None` for [`Precondition::Any`]).
    fn compare(full: &str, cond: Precondition) -> Option<Compare> {
        match cond {
            Precondition::Any => None,
            Precondition::Absent => Some(Compare::version(full, CompareOp::Equal, 0)),
            Precondition::Revision(r) => {
                Some(Compare::mod_revision(full, CompareOp::Equal, i64::try_from(r).unwrap_or(i64::MAX)))
            }
        }
    }

    /// `put`, with or without a lease.
    pub(crate) async fn write(&self, key: &str, value: Vec<u8>, cond: Precondition, lease: Option<i64>) -> Result<u64> {
        validate_key(key)?;
        check_size(key, value.len())?;
        let full = self.kv_key(key);
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let context = format!("put {key}");
        let Some(cmp) = Self::compare(&full, cond) else {
            let kv = &self.inner.kv;
            let send = || {
                let (mut kv, full, value, opts) = (kv.clone(), full.clone(), value.clone(), opts.clone());
                async move { kv.put(full, value, opts).await }
            };
            let resp = retry_deadline(self.inner.timeout, context, send, |c, e| match lease {
                Some(l) => map_lease(c, l, e),
                None => map(c, e),
            })
            .await?;
            return Ok(resp.header().map_or(0, |h| h.revision() as u64));
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(full.clone(), value, opts)])
            .or_else([TxnOp::get(full, None)]);
        let resp = self.txn(context, txn, lease).await?;
        if !resp.succeeded() {
            return Err(self.conflict(key, cond, &resp));
        }
        Ok(resp.header().map_or(0, |h| h.revision() as u64))
    }

    /// Every etcd key-value in `[from, end)`, read in pages at one revision.
    pub(crate) async fn range(&self, context: &str, from: Vec<u8>, end: Vec<u8>) -> Result<Vec<KeyValue>> {
        read_range(&self.inner.kv, self.inner.timeout, context, from, end).await
    }
}

/// An etcd key-value as an entry (its key relative to the namespace `ns`).
fn entry(ns: &str, kv: &KeyValue) -> Result<Entry> {
    let prefix = format!("{ns}kv/");
    let key = kv
        .key()
        .strip_prefix(prefix.as_bytes())
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or_else(|| StoreError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: "an etcd key outside the namespace's keys".into(),
        })?;
    Ok(Entry { key: key.into(), value: kv.value().to_vec(), revision: kv.mod_revision() as u64 })
}

/// Every etcd key-value in `[from, end)`, read in pages at the first page's revision.
pub(crate) async fn read_range(
    kv: &KvClient,
    timeout: Duration,
    context: &str,
    mut from: Vec<u8>,
    end: Vec<u8>,
) -> Result<Vec<KeyValue>> {
    let mut out = Vec::new();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let send = || {
            let (mut client, from, opts) = (kv.clone(), from.clone(), opts.clone());
            async move { client.get(from, Some(opts)).await }
        };
        let mut resp = retry_read_deadline(timeout, context.to_string(), send, map).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        if let Some(last) = kvs.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        out.extend(kvs);
        if !more {
            return Ok(out);
        }
    }
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        validate_key(key)?;
        let full = self.kv_key(key);
        let resp = self
            .call(format!("get {key}"), |mut kv| {
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        resp.kvs().first().map(|kv| self.entry(kv)).transpose()
    }

    async fn put(&self, key: &str, value: Vec<u8>, cond: Precondition) -> Result<u64> {
        self.write(key, value, cond, None).await
    }

    async fn delete(&self, key: &str, cond: Precondition) -> Result<bool> {
        validate_key(key)?;
        let full = self.kv_key(key);
        let context = format!("delete {key}");
        let txn = match cond {
            Precondition::Any => {
                let resp = self
                    .call(context, |mut kv| {
                        let full = full.clone();
                        async move { kv.delete(full, None).await }
                    })
                    .await?;
                return Ok(resp.deleted() > 0);
            }
            // Nothing to delete if it holds.
            Precondition::Absent => {
                Txn::new().when([Compare::version(full.clone(), CompareOp::Equal, 0)]).or_else([TxnOp::get(full, None)])
            }
            Precondition::Revision(_) => Txn::new()
                .when(Self::compare(&full, cond).into_iter().collect::<Vec<_>>())
                .and_then([TxnOp::delete(full.clone(), None::<DeleteOptions>)])
                .or_else([TxnOp::get(full, None)]),
        };
        let resp = self.txn(context, txn, None).await?;
        if !resp.succeeded() {
            return Err(self.conflict(key, cond, &resp));
        }
        Ok(matches!(cond, Precondition::Revision(_)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        validate_prefix(prefix)?;
        let from = self.kv_key(prefix).into_bytes();
        let end = prefix_end(&from);
        let kvs = self.range(&format!("list {prefix}"), from, end).await?;
        kvs.iter().map(|kv| self.entry(kv)).collect()
    }

    async fn watch(&self, prefix: &str) -> Result<Watch> {
        validate_prefix(prefix)?;
        let ns = self.inner.ns.clone();
        let rx = self
            .forward(self.kv_key(prefix), format!("watch {prefix}"), move |ev, context| {
                let kv = ev.kv()?;
                let ev = match ev.event_type() {
                    etcd_client::EventType::Put => entry(&ns, kv).map(WatchEvent::Put),
                    etcd_client::EventType::Delete => entry(&ns, kv).map(|e| WatchEvent::Delete { key: e.key, revision: e.revision }),
                };
                ev.map_err(|e| tracing::warn!("{context}: {e}")).ok()
            })
            .await?;
        Ok(Watch::new(rx))
    }

    async fn watch_log(&self, log: &str) -> Result<LogWatch> {
        validate_key(log)?;
        let prefix = log::prefix(&self.inner.ns, log);
        let p = prefix.clone();
        let rx = self
            .forward(prefix, format!("watch log {log}"), move |ev, context| {
                let kv = ev.kv().filter(|_| ev.event_type() == etcd_client::EventType::Put)?;
                match log::parse_seq(&p, kv.key()) {
                    Some(seq) => Some(LogRecord { seq, record: kv.value().to_vec() }),
                    None => {
                        tracing::warn!("{context}: bad record key {}", String::from_utf8_lossy(kv.key()));
                        None
                    }
                }
            })
            .await?;
        Ok(LogWatch::new(rx))
    }

    async fn append(&self, log: &str, record: Vec<u8>) -> Result<u64> {
        validate_key(log)?;
        check_size(log, record.len())?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.inner.log.send(log::Request::Append { log: log.into(), record, reply }).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read_log(&self, log: &str, from_seq: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        validate_key(log)?;
        let prefix = log::prefix(&self.inner.ns, log);
        let end = prefix_end(prefix.as_bytes());
        let kvs = self.range(&format!("read log {log}"), log::record_key(&self.inner.ns, log, from_seq).into_bytes(), end).await?;
        kvs.into_iter()
            .map(|kv| {
                let seq = log::parse_seq(&prefix, kv.key()).ok_or_else(|| StoreError::Corrupt {
                    key: log.into(),
                    reason: format!("bad record key {}", String::from_utf8_lossy(kv.key())),
                })?;
                Ok((seq, kv.value().to_vec()))
            })
            .collect()
    }

    async fn delete_log(&self, log: &str) -> Result<()> {
        validate_key(log)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.inner.log.send(log::Request::Delete { log: log.into(), reply }).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_and_ranges() {
        for ns in ["/vmove/c1/", "/a/", "/x.y/z_w-1/"] {
            assert!(validate_namespace(ns).is_ok(), "{ns}");
        }
        for ns in ["", "/", "//", "vmove/", "/vmove", "/a//b/", "/.a/", "/a b/"] {
            assert!(validate_namespace(ns).is_err(), "{ns:?}");
        }
        assert_eq!(prefix_end(b"/ns/kv/"), b"/ns/kv0");
        // A sub-namespace's keys never fall in the range of its parent's keys or logs.
        let (keys, logs) = (b"/vmove/c1/kv/".to_vec(), b"/vmove/c1/log/".to_vec());
        let sub = b"/vmove/c1/hosts/host1/kv/guests/vm1".to_vec();
        assert!(!(keys.as_slice()..prefix_end(&keys).as_slice()).contains(&sub.as_slice()));
        assert!(!(logs.as_slice()..prefix_end(&logs).as_slice()).contains(&sub.as_slice()));
        assert_eq!(prefix_end(b"a#"), b"a$");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
