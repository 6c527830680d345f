//! Watches: a receiver of [`WatchEvent`]s, and the in-process fan-out the embedded stores
//! use.
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::WatchEvent;

/// The changes under a prefix, in revision order; also a [`futures::Stream`].
///
/// The channel is unbounded: drain the watch or drop it. It ends (`None`) when the store
/// side goes away (every handle dropped, or a remote watch failed); a consumer that must
/// not miss changes then lists again and starts a new watch.
#[derive(Debug)]
pub struct Watch {
    rx: UnboundedReceiver<WatchEvent>,
}

impl Watch {
    /// A watch fed by `rx` (for implementations: forward events into the sender).
    pub fn new(rx: UnboundedReceiver<WatchEvent>) -> Self {
        Watch { rx }
    }

    /// The next change; `None` once the watch has ended.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }

    /// The next change if one is already there.
    pub fn try_recv(&mut self) -> Option<WatchEvent> {
        self.rx.try_recv().ok()
    }
}

impl futures::Stream for Watch {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// Subscribers of one store, by prefix.
#[derive(Debug, Default)]
pub(crate) struct WatchHub {
    subs: Mutex<Vec<(String, UnboundedSender<WatchEvent>)>>,
}

impl WatchHub {
    fn subs(&self) -> std::sync::MutexGuard<'_, Vec<(String, UnboundedSender<WatchEvent>)>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new watch of `prefix`.
    pub(crate) fn subscribe(&self, prefix: &str) -> Watch {
        let (tx, rx) = unbounded_channel();
        self.subs().push((prefix.to_string(), tx));
        Watch::new(rx)
    }

    /// Sends an event to the watches whose prefix matches, dropping watches that are gone.
    /// Callers publish while they still serialise writes, so events arrive in revision
    /// order.
    pub(crate) fn publish(&self, ev: &WatchEvent) {
        self.subs().retain(|(prefix, tx)| {
            if ev.key().starts_with(prefix.as_str()) {
                tx.send(ev.clone()).is_ok()
            } else {
                !tx.is_closed()
            }
        });
    }
}

/// A record appended to a log, as a [`LogWatch`] delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its sequence number in the log.
    pub seq: u64,
    /// The record.
    pub record: Vec<u8>,
}

/// The records appended to one log, in sequence order; also a [`futures::Stream`].
///
/// Like [`Watch`], it ends (`None`) when the store side goes away; a consumer that must
/// not miss records reads the log after starting the watch, and again where the sequence
/// numbers it receives jump (see [`crate::StateStore::watch_log`]).
#[derive(Debug)]
pub struct LogWatch {
    rx: UnboundedReceiver<LogRecord>,
}

impl LogWatch {
    /// A log watch fed by `rx` (for implementations).
    pub fn new(rx: UnboundedReceiver<LogRecord>) -> Self {
        LogWatch { rx }
    }

    /// The next record; `None` once the watch has ended.
    pub async fn recv(&mut self) -> Option<LogRecord> {
        self.rx.recv().await
    }
}

impl futures::Stream for LogWatch {
    type Item = LogRecord;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LogRecord>> {
        self.rx.poll_recv(cx)
    }
}

/// Subscribers of one store's logs, by log name.
#[derive(Debug, Default)]
pub(crate) struct LogHub {
    subs: Mutex<Vec<(String, UnboundedSender<LogRecord>)>>,
}

impl LogHub {
    fn subs(&self) -> std::sync::MutexGuard<'_, Vec<(String, UnboundedSender<LogRecord>)>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new watch of `log`.
    pub(crate) fn subscribe(&self, log: &str) -> LogWatch {
        let (tx, rx) = unbounded_channel();
        self.subs().push((log.to_string(), tx));
        LogWatch::new(rx)
    }

    /// Sends records of `log` to its watches, dropping watches that are gone. Callers
    /// publish while they still serialise appends, so records arrive in sequence order.
    pub(crate) fn publish(&self, log: &str, records: impl IntoIterator<Item = LogRecord>) {
        let mut subs = self.subs();
        subs.retain(|(_, tx)| !tx.is_closed());
        if !subs.iter().any(|(l, _)| l == log) {
            return;
        }
        for r in records {
            for (_, tx) in subs.iter().filter(|(l, _)| l == log) {
                let _ = tx.send(r.clone());
            }
        }
    }
}
