//! Log watches: the records appended to one log after the watch starts, in sequence order.
use std::time::Duration;

use futures::future::join_all;

use super::ok;
use crate::{LogRecord, LogWatch, StateStore, StoreError};

async fn next(w: &mut LogWatch) -> LogRecord {
    match tokio::time::timeout(Duration::from_secs(10), w.recv()).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("the log watch ended"),
        Err(_) => panic!("no log record within 10 s"),
    }
}

/// A log watch delivers each record appended to its log after it started, with its
/// sequence number, in order; nothing of other logs (a log whose name extends its name
/// included), of keys, or from before it started.
pub async fn log_watch(s: &dyn StateStore) {
    let l = "ct/logw/a";
    ok(s.append(l, b"before".to_vec()).await, "append");
    let mut w = ok(s.watch_log(l).await, "watch a log");
    let dropped = ok(s.watch_log(l).await, "watch a log");
    drop(dropped);
    ok(s.append("ct/logw/ab", b"other".to_vec()).await, "append to another log");
    ok(s.put("ct/logw/a", b"key".to_vec(), crate::Precondition::Any).await, "a key named like the log");
    assert_eq!(ok(s.append(l, b"one".to_vec()).await, "append"), 1);
    assert_eq!(next(&mut w).await, LogRecord { seq: 1, record: b"one".to_vec() });
    let seqs = join_all((0..50u32).map(|i| s.append(l, i.to_le_bytes().to_vec()))).await;
    let mut want: Vec<(u64, Vec<u8>)> = seqs.into_iter().enumerate().map(|(i, r)| (ok(r, "append"), (i as u32).to_le_bytes().to_vec())).collect();
    want.sort();
    let mut got = Vec::new();
    for _ in 0..50 {
        let r = next(&mut w).await;
        got.push((r.seq, r.record));
    }
    assert_eq!(got, want, "concurrent appends arrive in sequence order, each with its record");
    assert_eq!(got.first().map(|g| g.0), Some(2), "no gap, nothing twice");
    ok(s.delete_log(l).await, "delete");
    ok(s.delete_log("ct/logw/ab").await, "delete");
    // An append that has returned is never delivered to a watch started after it: the
    // store tells its watchers before it answers the appender.
    let l = "ct/logw/race";
    for round in 0..200u64 {
        let seq = ok(s.append(l, b"earlier".to_vec()).await, "append");
        let mut w = ok(s.watch_log(l).await, "watch a log");
        ok(s.append(l, round.to_le_bytes().to_vec()).await, "append");
        assert_eq!(next(&mut w).await, LogRecord { seq: seq + 1, record: round.to_le_bytes().to_vec() }, "round {round}");
    }
    ok(s.delete_log(l).await, "delete");
    assert!(matches!(s.watch_log("ct/logw/").await, Err(StoreError::InvalidKey { .. })), "a log name, not a prefix");
}
