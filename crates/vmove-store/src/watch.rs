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
