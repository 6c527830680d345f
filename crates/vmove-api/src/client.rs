//! The mTLS client of the agent API.
//!
//! A client keeps the connections it opened and reuses them for later calls (one request
//! line, one reply line, then the next request on the same connection), so an agent that
//! polls a peer every 250 ms pays for one TLS handshake, not four a second. Connections idle
//! for longer than [`IDLE_REUSE`] are dropped (the server closes them after
//! [`crate::server::IDLE_CLOSE`]). A call whose reused connection turns out to be closed
//! before any answer arrives is sent once more on a fresh connection.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::{ErrorCode, Reply, Request};

/// Idle connections older than this are not reused.
pub const IDLE_REUSE: Duration = Duration::from_secs(20);

/// At most this many idle connections are kept per client.
const MAX_IDLE: usize = 4;

/// Why a call failed. [`ClientError::code`] says what kind of failure it was; the text is
/// for people.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("{host} ({addr}): cannot connect")]
    Connect {
        /// Agent name.
        host: String,
        /// Agent address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, refused certificate, ...).
    #[error("{host} ({addr}): TLS handshake failed")]
    Tls {
        /// Agent name.
        host: String,
        /// Agent address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{host} ({addr}): no answer within {after:?}")]
    Timeout {
        /// Agent name.
        host: String,
        /// Agent address.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The connection closed before the answer.
    #[error("{host} ({addr}): connection closed without an answer")]
    Closed {
        /// Agent name.
        host: String,
        /// Agent address.
        addr: SocketAddr,
    },
    /// Reading or writing failed.
    #[error("{host} ({addr}): connection failed")]
    Io {
        /// Agent name.
        host: String,
        /// Agent address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not a reply.
    #[error("{host}: malformed answer")]
    Malformed {
        /// Agent name.
        host: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The result does not have the expected shape.
    #[error("{host}: unexpected answer to {op}")]
    Unexpected {
        /// Agent name.
        host: String,
        /// The call.
        op: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The agent refused or failed the call.
    #[error("{host}: {message}")]
    Remote {
        /// Agent name.
        host: String,
        /// What kind of failure.
        code: ErrorCode,
        /// The agent's one line.
        message: String,
    },
    /// The server name is not a valid TLS name.
    #[error("{host}: not a valid TLS server name")]
    ServerName {
        /// Agent name.
        host: String,
    },
}

impl ClientError {
    /// What kind of failure: `unreachable` for every transport failure, the agent's own
    /// code for a refused call.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Connect { .. }
            | ClientError::Tls { .. }
            | ClientError::Timeout { .. }
            | ClientError::Closed { .. }
            | ClientError::Io { .. } => ErrorCode::Unreachable,
            ClientError::Malformed { .. } | ClientError::Unexpected { .. } | ClientError::ServerName { .. } => {
                ErrorCode::Internal
            }
            ClientError::Remote { code, .. } => *code,
        }
    }

    /// Whether the agent could not be reached (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        self.code() == ErrorCode::Unreachable
    }
}

/// `error: cause: cause`, on one line.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

pub(crate) type Conn = BufReader<TlsStream<TcpStream>>;

/// A client of one agent. Clones share their idle connections.
#[derive(Clone)]
pub struct AgentClient {
    addr: SocketAddr,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    idle: Arc<Mutex<Vec<(Instant, Conn)>>>,
}

impl AgentClient {
    /// A client for the agent at `addr` whose certificate names `server_name`.
    pub fn new(addr: SocketAddr, server_name: &str, tls: Arc<rustls::ClientConfig>) -> AgentClient {
        AgentClient {
            addr,
            server_name: server_name.to_string(),
            tls,
            timeout: Duration::from_secs(30),
            idle: Arc::default(),
        }
    }

    /// Changes the per-call timeout (connect + answer). The clone shares the connections.
    pub fn with_timeout(mut self, t: Duration) -> AgentClient {
        self.timeout = t;
        self
    }

    /// The per-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's name.
    pub fn host(&self) -> &str {
        &self.server_name
    }

    /// Makes one call and returns the raw result.
    pub async fn call_raw(&self, req: &Request) -> Result<serde_json::Value, ClientError> {
        let mut line = serde_json::to_vec(req).map_err(|source| ClientError::Malformed { host: self.server_name.clone(), source })?;
        line.push(b'\n');
        let reply = tokio::time::timeout(self.timeout, self.exchange(&line)).await.map_err(|_| self.timed_out())??;
        self.result(reply)
    }

    /// Makes one call and decodes the result.
    pub async fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, ClientError> {
        let v = self.call_raw(req).await?;
        serde_json::from_value(v).map_err(|source| ClientError::Unexpected { host: self.server_name.clone(), op: req.op(), source })
    }

    /// Sends raw bytes as a request on a connection of its own and half-closes it (for
    /// tests of malformed input); returns the reply.
    pub async fn call_bytes(&self, bytes: &[u8]) -> Result<Reply, ClientError> {
        tokio::time::timeout(self.timeout, async {
            let mut c = self.connect().await?;
            c.get_mut().write_all(bytes).await.map_err(|e| self.io(e))?;
            c.get_mut().flush().await.map_err(|e| self.io(e))?;
            // Half-close: the agent sees the end of the request even without a newline.
            let _ = c.get_mut().shutdown().await;
            self.read_reply(&mut c).await
        })
        .await
        .map_err(|_| self.timed_out())?
    }

    pub(crate) fn result(&self, reply: Reply) -> Result<serde_json::Value, ClientError> {
        if reply.ok {
            return Ok(reply.result.unwrap_or(serde_json::Value::Null));
        }
        let (code, message) = match reply.error {
            Some(e) => (e.code, e.message),
            None => (ErrorCode::Internal, "failed without a reason".to_string()),
        };
        Err(ClientError::Remote { host: self.server_name.clone(), code, message })
    }

    pub(crate) fn timed_out(&self) -> ClientError {
        ClientError::Timeout { host: self.server_name.clone(), addr: self.addr, after: self.timeout }
    }

    pub(crate) fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io { host: self.server_name.clone(), addr: self.addr, source }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, c)) = idle.pop() {
            if at.elapsed() < IDLE_REUSE {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, c: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((Instant::now(), c));
        }
    }

    /// Sends a request line and reads its reply, on an idle connection if there is one.
    async fn exchange(&self, line: &[u8]) -> Result<Reply, ClientError> {
        if let Some(mut c) = self.take_idle() {
            match self.round_trip(&mut c, line).await {
                Ok(r) => {
                    self.put_idle(c);
                    return Ok(r);
                }
                // The server closed the idle connection before reading the request: resend.
                Err(ClientError::Closed { .. } | ClientError::Io { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut c = self.connect().await?;
        let r = self.round_trip(&mut c, line).await?;
        self.put_idle(c);
        Ok(r)
    }

    async fn round_trip(&self, c: &mut Conn, line: &[u8]) -> Result<Reply, ClientError> {
        c.get_mut().write_all(line).await.map_err(|e| self.io(e))?;
        c.get_mut().flush().await.map_err(|e| self.io(e))?;
        self.read_reply(c).await
    }

    async fn read_reply(&self, c: &mut Conn) -> Result<Reply, ClientError> {
        let mut buf = String::new();
        let n = c.read_line(&mut buf).await.map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(ClientError::Closed { host: self.server_name.clone(), addr: self.addr });
        }
        serde_json::from_str(buf.trim_end()).map_err(|source| ClientError::Malformed { host: self.server_name.clone(), source })
    }

    pub(crate) async fn connect(&self) -> Result<Conn, ClientError> {
        let (host, addr) = (self.server_name.clone(), self.addr);
        let tcp = TcpStream::connect(addr).await.map_err(|source| ClientError::Connect { host: host.clone(), addr, source })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.clone()).map_err(|_| ClientError::ServerName { host: host.clone() })?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Tls { host, addr, source })?;
        Ok(BufReader::new(tls))
    }

    /// Follows a job's event stream from `from_seq` until the job ends. `on_event` sees
    /// every event (heartbeats excluded). Fails if the stream stays silent for `idle`.
    pub async fn watch(
        &self,
        id: &str,
        from_seq: u64,
        idle: Duration,
        mut on_event: impl FnMut(&crate::JobEvent),
    ) -> Result<crate::JobRecord, ClientError> {
        let req = Request::JobWatch { id: id.to_string(), from_seq };
        let mut c = tokio::time::timeout(self.timeout, self.connect()).await.map_err(|_| self.timed_out())??;
        let mut line = serde_json::to_vec(&req).map_err(|source| ClientError::Malformed { host: self.server_name.clone(), source })?;
        line.push(b'\n');
        c.get_mut().write_all(&line).await.map_err(|e| self.io(e))?;
        c.get_mut().flush().await.map_err(|e| self.io(e))?;
        loop {
            let mut buf = String::new();
            let n = tokio::time::timeout(idle, c.read_line(&mut buf))
                .await
                .map_err(|_| ClientError::Timeout { host: self.server_name.clone(), addr: self.addr, after: idle })?
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(ClientError::Closed { host: self.server_name.clone(), addr: self.addr });
            }
            let l = serde_json::from_str::<crate::StreamLine>(buf.trim_end())
                .map_err(|source| ClientError::Malformed { host: self.server_name.clone(), source })?;
            match l {
                crate::StreamLine::Event { job_event } => {
                    if job_event.seq != crate::HEARTBEAT_SEQ {
                        on_event(&job_event);
                    }
                }
                crate::StreamLine::Reply(r) => {
                    let v = self.result(r)?;
                    return serde_json::from_value(v).map_err(|source| ClientError::Unexpected {
                        host: self.server_name.clone(),
                        op: "job_watch",
                        source,
                    });
                }
            }
        }
    }
}
