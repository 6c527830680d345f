//! Unit tests. Sequencing uses the fake's command stream and event
//! channels; timeouts are only failure guards.

mod block;
mod client;
mod converge;
mod parse;
mod qemu;
mod wrappers;

use std::future::Future;
use std::time::Duration;

/// Failure guard for awaits that must complete.
pub(crate) const GUARD: Duration = Duration::from_secs(10);

/// Awaits `f`, panicking if it takes longer than [`GUARD`].
pub(crate) async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not complete within {GUARD:?}"),
    }
}
