//! The agent side of the protocol: accept, TLS with a client certificate, then request
//! lines answered in order on the same connection until the client closes it (or leaves
//! it idle for [`IDLE_CLOSE`]). A streaming call (`job_watch`) sends event lines before its
//! final reply and ends the connection; `guest_console` hands the connection over to the
//! service ([`Service::console`]) and ends it when the session ends.
//!
//! Each request line is decoded and range-checked ([`crate::decode_request`]) and checked
//! against the caller's role ([`Request::allowed_for`]) here, so a [`Service`] only ever sees
//! requests that are well-formed, in range and allowed.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::{decode_request, DecodeError, ErrorCode, Reply, Request, Role, StreamLine};

/// An idle connection is closed after this long.
pub const IDLE_CLOSE: Duration = Duration::from_secs(60);

/// Longest request line accepted.
pub const MAX_REQUEST: u64 = 1 << 20;

/// Where a streaming call writes its event lines.
pub struct EventSink<'a> {
    w: &'a mut (dyn AsyncWrite + Unpin + Send),
}

impl<'a> EventSink<'a> {
    /// A sink writing to `w` (the server's connection; a buffer in tests).
    pub fn new(w: &'a mut (dyn AsyncWrite + Unpin + Send)) -> EventSink<'a> {
        EventSink { w }
    }

    /// Sends one line of a streaming reply.
    pub async fn send(&mut self, line: &StreamLine) -> std::io::Result<()> {
        let mut out = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        out.push(b'\n');
        self.w.write_all(&out).await?;
        self.w.flush().await
    }
}

/// A connection that a console session takes over (read and write).
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// What the agent does with a request.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// Handles one decoded, range-checked and allowed request. A streaming call writes its
    /// events to `events` first.
    async fn call(&self, req: Request, role: Role, events: &mut EventSink<'_>) -> Reply;

    /// Serves `guest_console` on the connection: writes its own reply line and then the
    /// session ([`crate::ConsoleLine`]s out, raw keystrokes in). Returns the error reply to
    /// send instead when the session could not start; the connection ends either way.
    async fn console(&self, name: String, replay: crate::ConsoleReplay, conn: &mut dyn Duplex) -> Option<Reply> {
        let _ = (name, replay, conn);
        Some(Reply::err(ErrorCode::InvalidRequest, "this server has no consoles"))
    }
}

/// Counters of a server (shown by `health`).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TLS connections accepted.
    pub connections: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
}

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, service: Arc<dyn Service>, stats: Arc<ServerStats>) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) if is_transient(&e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let (acceptor, service, stats) = (acceptor.clone(), service.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, service, stats).await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    // Out of descriptors (ENFILE, EMFILE) or a connection reset before accept: keep serving.
    matches!(e.raw_os_error(), Some(23 | 24))
        || matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::Interrupted)
}

async fn connection(acceptor: TlsAcceptor, tcp: TcpStream, service: Arc<dyn Service>, stats: Arc<ServerStats>) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let role = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(crate::tls::role_of);
    let mut conn = BufReader::new(tls);
    let mut first = true;
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(IDLE_CLOSE, (&mut conn).take(MAX_REQUEST).read_line(&mut line)).await;
        let (reply, last) = match read {
            Err(_) if first => (Reply::err(ErrorCode::InvalidRequest, format!("no request within {} s", IDLE_CLOSE.as_secs())), true),
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Err(e)) => (Reply::err(ErrorCode::InvalidRequest, format!("malformed request: {e}")), true),
            Ok(Ok(_)) if !line.ends_with('\n') => (
                Reply::err(
                    ErrorCode::InvalidRequest,
                    format!("malformed request: not one JSON line ending in a newline (at most {MAX_REQUEST} bytes)"),
                ),
                true,
            ),
            Ok(Ok(_)) => match (role.clone(), decode_request(line.trim_end())) {
                (None, _) => (Reply::err(ErrorCode::Forbidden, "certificate has no vmove role (operator.vmove or host.vmove)"), true),
                (Some(_), Err(DecodeError::Malformed(e))) => (Reply::err(ErrorCode::InvalidRequest, format!("malformed request: {e}")), false),
                (Some(_), Err(e)) => (Reply::err(ErrorCode::InvalidRequest, e.to_string()), false),
                (Some(role), Ok(req)) if !req.allowed_for(&role) => {
                    (Reply::err(ErrorCode::Forbidden, format!("{} is not allowed for a {role:?} certificate", req.op())), false)
                }
                (Some(_), Ok(Request::GuestConsole { name, replay })) => match service.console(name, replay, &mut conn).await {
                        Some(refused) => (refused, true),
                        None => {
                            stats.requests.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    },
                (Some(role), Ok(req)) => {
                    let streaming = matches!(req, Request::JobWatch { .. });
                    let mut sink = EventSink { w: conn.get_mut() };
                    (service.call(req, role, &mut sink).await, streaming)
                }
            },
        };
        first = false;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
        out.push(b'\n');
        conn.get_mut().write_all(&out).await?;
        conn.get_mut().flush().await?;
        if last {
            break;
        }
    }
    conn.get_mut().shutdown().await?;
    // Read what the client still sends (its close_notify) before closing, so that the
    // kernel does not answer it with a reset that would destroy the reply in flight.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}
