//! etcd and gRPC errors as [`StoreError`]s, decided by error type and status code (never
//! by message text), and the deadline every call gets.
use std::future::Future;
use std::time::Duration;

use etcd_client::Error as E;
use tonic::Code;

use crate::StoreError;

/// Calls `f` on each error of the chain under `e` (and `e` itself), looking inside
/// `io::Error`s at the error they wrap; stops at the first `true`.
fn any_cause(e: &(dyn std::error::Error + 'static), f: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if f(c) {
            return true;
        }
        if let Some(inner) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if any_cause(inner, f) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// Whether TLS failed (a certificate refused on either side, or bytes that are not TLS):
/// a configuration error, not an unreachable server. rustls reports these as I/O errors of
/// kind `InvalidData`. (With TLS 1.3 a server that refuses the client's certificate may
/// just close the connection, which looks like an unreachable server.)
fn tls_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(e, &|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData))
}

/// Whether a gRPC status means the server could not be reached or did not answer: no
/// connection, no leader, a deadline, or a transport failure carried in a status. A status
/// the server sent has no `source()`; one with a source was made on this side from a
/// transport error (a connection reset or closed mid-call, whatever its code).
fn status_unreachable(s: &tonic::Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => true,
        _ => std::error::Error::source(s).is_some(),
    }
}

/// Whether an etcd client error means the store could not be reached.
pub(crate) fn is_unreachable(e: &E) -> bool {
    // The client's error has no `source()`: look under the variants that carry one.
    let cause: Option<&(dyn std::error::Error + 'static)> = match e {
        E::TransportError(t) => Some(t),
        E::GRpcStatus(s) => Some(s),
        E::IoError(io) => Some(io),
        _ => None,
    };
    if cause.is_some_and(tls_failed) {
        return false;
    }
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => status_unreachable(s),
        _ => false,
    }
}

/// A client error as a store error: unreachable, or a backend failure.
pub(crate) fn map(context: impl Into<String>, e: E) -> StoreError {
    let context = context.into();
    if is_unreachable(&e) {
        StoreError::Unreachable { context, source: Box::new(e) }
    } else {
        StoreError::Backend { context, source: Box::new(e) }
    }
}

/// Whether the server said the lease does not exist (gRPC `NotFound`: etcd's
/// `ErrGRPCLeaseNotFound`, the only `NotFound` of the KV and lease APIs).
pub(crate) fn is_lease_not_found(e: &E) -> bool {
    matches!(e, E::GRpcStatus(s) if s.code() == Code::NotFound)
}

/// Like [`map`], with a missing lease as [`StoreError::LeaseLost`].
pub(crate) fn map_lease(context: impl Into<String>, lease: i64, e: E) -> StoreError {
    if is_lease_not_found(&e) {
        StoreError::LeaseLost { lease }
    } else {
        map(context, e)
    }
}

/// The error of a call that did not finish in time.
pub(crate) fn timed_out(context: impl Into<String>, after: Duration) -> StoreError {
    let source = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {after:?}"));
    StoreError::Unreachable { context: context.into(), source: Box::new(source) }
}

/// Whether the call failed to connect to the endpoint it was sent to (refused, or no route):
/// the request never left this side, so it is safe to send it again, also a write. With
/// several endpoints the client balances calls over them, and a dead member's endpoint
/// fails the calls given to it until it is back; another try goes to another endpoint.
pub(crate) fn connect_failed(e: &E) -> bool {
    use std::io::ErrorKind as K;
    let cause: &(dyn std::error::Error + 'static) = match e {
        E::TransportError(t) => t,
        E::GRpcStatus(s) => s,
        E::IoError(io) => io,
        _ => return false,
    };
    any_cause(cause, &|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(io.kind(), K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable)
        })
    })
}

/// Whether etcd itself answered that it cannot serve now (gRPC `Unavailable` from the
/// server: no leader, or the leader changed): a read may be asked again at once.
pub(crate) fn no_leader(e: &E) -> bool {
    matches!(e, E::GRpcStatus(s) if s.code() == Code::Unavailable && std::error::Error::source(s).is_none())
}

/// [`retry_deadline`] for reads and deletes, which may also be asked again when etcd is
/// electing a leader ([`no_leader`]).
pub(crate) async fn retry_read_deadline<T, F>(
    after: Duration,
    context: String,
    make: impl FnMut() -> F,
    map_err: impl FnOnce(String, E) -> StoreError,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, E>>,
{
    retry_while(after, context, make, map_err, |e| connect_failed(e) || no_leader(e)).await
}

/// [`deadline`] for a call that `make` can start again: a try that could not connect
/// ([`connect_failed`]) is made again (after 20 ms, at most until the deadline), so that a
/// dead etcd member costs a retry, not an error, while the others answer.
pub(crate) async fn retry_deadline<T, F>(
    after: Duration,
    context: String,
    make: impl FnMut() -> F,
    map_err: impl FnOnce(String, E) -> StoreError,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, E>>,
{
    retry_while(after, context, make, map_err, connect_failed).await
}

/// Makes the call again (after 20 ms) while its error is one `again` accepts, until the
/// deadline.
async fn retry_while<T, F>(
    after: Duration,
    context: String,
    mut make: impl FnMut() -> F,
    map_err: impl FnOnce(String, E) -> StoreError,
    again: impl Fn(&E) -> bool,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, E>>,
{
    let tries = async {
        loop {
            match make().await {
                Err(e) if again(&e) => tokio::time::sleep(Duration::from_millis(20)).await,
                r => return r,
            }
        }
    };
    deadline(after, context, tries, map_err).await
}

/// Runs one call with a deadline, mapping its error with `map_err`; a call that does not
/// finish in time is [`StoreError::Unreachable`] (the future is dropped: a write may still
/// happen).
pub(crate) async fn deadline<T>(
    after: Duration,
    context: String,
    fut: impl Future<Output = Result<T, E>>,
    map_err: impl FnOnce(String, E) -> StoreError,
) -> Result<T, StoreError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(map_err(context, e)),
        Err(_) => Err(timed_out(context, after)),
    }
}
