//! Logs on etcd: record keys, and the appender task that batches appends into
//! transactions (the layout and the rule are described in the parent module).
use std::collections::HashMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, KvClient, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse};
use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};

use super::{deadline, map, retry_deadline};
use crate::key::MAX_VALUE_BYTES;
use crate::{Result, StoreError};

/// Most records in one transaction (etcd allows 128 operations by default).
const MAX_RECORDS: usize = 100;
/// Most record bytes in one transaction (etcd takes requests up to 1.5 MiB by default);
/// a larger single record goes alone.
const MAX_BYTES: usize = MAX_VALUE_BYTES;
/// Most requests taken in one batch.
const MAX_BATCH: usize = 4096;
/// Most logs whose end the appender remembers.
const MAX_CACHED: usize = 1024;
/// Most attempts of one transaction against appends of other clients.
const MAX_ATTEMPTS: usize = 1000;

type Reply<T> = oneshot::Sender<Result<T>>;
/// Appends to one log waiting in a batch: each record and who to answer.
type Group = Vec<(Vec<u8>, Reply<u64>)>;

/// A request to the appender.
pub(crate) enum Request {
    /// Append a record, answer its sequence number.
    Append { log: String, record: Vec<u8>, reply: Reply<u64> },
    /// Delete a log.
    Delete { log: String, reply: Reply<()> },
}

/// The prefix of a log's record keys.
pub(crate) fn prefix(ns: &str, log: &str) -> String {
    format!("{ns}log/{log}#")
}

/// The key of record `seq` of a log.
pub(crate) fn record_key(ns: &str, log: &str, seq: u64) -> String {
    format!("{ns}log/{log}#{seq:020}")
}

/// The sequence number of a record key of the log whose prefix is `prefix`.
pub(crate) fn parse_seq(prefix: &str, key: &[u8]) -> Option<u64> {
    let digits = key.strip_prefix(prefix.as_bytes())?;
    if digits.len() != 20 {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The appender: one task per store, like the file store's writer thread.
pub(crate) struct Appender {
    kv: KvClient,
    ns: String,
    timeout: Duration,
    /// The next sequence number of logs, as of this appender's last transaction.
    next: HashMap<String, u64>,
}

impl Appender {
    pub(crate) fn new(kv: KvClient, ns: String, timeout: Duration) -> Appender {
        Appender { kv, ns, timeout, next: HashMap::new() }
    }

    /// Serves requests until every store handle is gone: takes every request queued while
    /// it was busy, runs each log's appends as one group (the groups of different logs
    /// concurrently), a delete after the appends queued before it.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut groups: Vec<(String, Group)> = Vec::new();
            for req in batch {
                match req {
                    Request::Append { log, record, reply } => match groups.iter_mut().find(|(l, _)| *l == log) {
                        Some((_, g)) => g.push((record, reply)),
                        None => groups.push((log, vec![(record, reply)])),
                    },
                    Request::Delete { log, reply } => {
                        if groups.iter().any(|(l, _)| *l == log) {
                            self.commit(std::mem::take(&mut groups)).await;
                        }
                        let _ = reply.send(self.delete(&log).await);
                    }
                }
            }
            self.commit(groups).await;
        }
    }

    /// Appends each log's group, the groups concurrently.
    async fn commit(&mut self, groups: Vec<(String, Group)>) {
        if self.next.len() > MAX_CACHED {
            self.next.clear();
        }
        let runs = groups.into_iter().map(|(log, group)| {
            let next = self.next.get(&log).copied();
            let (kv, ns, timeout) = (self.kv.clone(), self.ns.clone(), self.timeout);
            async move {
                let next = append_group(kv, &ns, timeout, &log, group, next).await;
                (log, next)
            }
        });
        for (log, next) in join_all(runs).await {
            match next {
                Some(n) => self.next.insert(log, n),
                None => self.next.remove(&log),
            };
        }
    }

    async fn delete(&mut self, log: &str) -> Result<()> {
        self.next.remove(log);
        let mut kv = self.kv.clone();
        let opts = DeleteOptions::new().with_prefix();
        let fut = kv.delete(prefix(&self.ns, log), Some(opts));
        deadline(self.timeout, format!("delete log {log}"), fut, map).await.map(drop)
    }
}

/// Appends a group of records to a log, in transactions of at most [`MAX_RECORDS`] records
/// and [`MAX_BYTES`], and answers each; returns the log's next sequence number, `None` if
/// it is unknown (after an error).
async fn append_group(
    mut kv: KvClient,
    ns: &str,
    timeout: Duration,
    log: &str,
    group: Group,
    mut next: Option<u64>,
) -> Option<u64> {
    let mut rest = group.into_iter().peekable();
    while rest.peek().is_some() {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some((r, _)) = rest.peek() {
            if !chunk.is_empty() && (chunk.len() >= MAX_RECORDS || bytes + r.len() > MAX_BYTES) {
                break;
            }
            bytes += r.len();
            chunk.extend(rest.next());
        }
        match append_chunk(&mut kv, ns, timeout, log, &chunk, next).await {
            Ok(first) => {
                let n = chunk.len() as u64;
                for (i, (_, reply)) in chunk.into_iter().enumerate() {
                    let _ = reply.send(Ok(first + i as u64));
                }
                next = Some(first + n);
            }
            Err(e) => {
                tracing::warn!("cannot append to log {log}: {e}");
                for (_, reply) in chunk.into_iter().chain(rest) {
                    let _ = reply.send(Err(e.duplicate()));
                }
                return None;
            }
        }
    }
    next
}

/// Puts records `n..` in one transaction, if the log has exactly `n` records; finds `n`
/// again (from the failure branch) when another client appended or deleted meanwhile.
/// Returns the first record's sequence number.
async fn append_chunk(
    kv: &mut KvClient,
    ns: &str,
    timeout: Duration,
    log: &str,
    chunk: &[(Vec<u8>, Reply<u64>)],
    next: Option<u64>,
) -> Result<u64> {
    let pre = prefix(ns, log);
    let last = || {
        let opts = GetOptions::new()
            .with_range(super::prefix_end(pre.as_bytes()))
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        TxnOp::get(pre.clone(), Some(opts))
    };
    let mut n = next;
    for _ in 0..MAX_ATTEMPTS {
        let Some(seq) = n else {
            // Unknown end: ask with a transaction that always fails.
            let txn = Txn::new().when([Compare::version(pre.clone(), CompareOp::Less, 0)]).or_else([last()]);
            let resp = retry_deadline(timeout, format!("append to log {log}"), || send(kv, &txn), map).await?;
            n = Some(end_of(&pre, log, &resp.op_responses())?);
            continue;
        };
        let mut when = vec![Compare::version(record_key(ns, log, seq), CompareOp::Equal, 0)];
        if seq > 0 {
            when.push(Compare::version(record_key(ns, log, seq - 1), CompareOp::Greater, 0));
        }
        let puts: Vec<TxnOp> =
            chunk.iter().enumerate().map(|(i, (r, _))| TxnOp::put(record_key(ns, log, seq + i as u64), r.clone(), None)).collect();
        let txn = Txn::new().when(when).and_then(puts).or_else([last()]);
        let resp = retry_deadline(timeout, format!("append to log {log}"), || send(kv, &txn), map).await?;
        if resp.succeeded() {
            return Ok(seq);
        }
        n = Some(end_of(&pre, log, &resp.op_responses())?);
    }
    Err(StoreError::Backend {
        context: format!("append to log {log}"),
        source: format!("{MAX_ATTEMPTS} attempts lost to other appenders").into(),
    })
}

/// The next sequence number of a log from the read of its last record key.
fn end_of(pre: &str, log: &str, responses: &[TxnOpResponse]) -> Result<u64> {
    let kvs = responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => Some(g.kvs()),
        _ => None,
    });
    match kvs.and_then(|k| k.first()) {
        None => Ok(0),
        Some(kv) => parse_seq(pre, kv.key()).map(|s| s + 1).ok_or_else(|| StoreError::Corrupt {
            key: log.into(),
            reason: format!("bad record key {}", String::from_utf8_lossy(kv.key())),
        }),
    }
}

/// Sends a transaction (again, for [`retry_deadline`]).
fn send(kv: &KvClient, txn: &Txn) -> impl std::future::Future<Output = Result<etcd_client::TxnResponse, etcd_client::Error>> {
    let (mut kv, txn) = (kv.clone(), txn.clone());
    async move { kv.txn(txn).await }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys() {
        let k = record_key("/ns/", "jobs/h2-3", 42);
        assert_eq!(k, "/ns/log/jobs/h2-3#00000000000000000042");
        let p = prefix("/ns/", "jobs/h2-3");
        assert_eq!(parse_seq(&p, k.as_bytes()), Some(42));
        assert_eq!(parse_seq(&p, record_key("/ns/", "jobs/h2-3", u64::MAX).as_bytes()), Some(u64::MAX));
        assert_eq!(parse_seq(&prefix("/ns/", "jobs"), k.as_bytes()), None, "another log's records");
        assert!(!record_key("/ns/", "a/b", 0).starts_with(&prefix("/ns/", "a")));
    }
}

