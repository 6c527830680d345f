//! The mTLS client of the agent API.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{Reply, Request};

/// Why a call to an agent failed. Messages name the agent (`host2 (198.51.100.3:7450): ...`).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No TCP connection.
    #[error("{server} ({addr}): cannot connect")]
    Connect {
        /// The agent's name.
        server: String,
        /// Its address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No TCP connection within the timeout.
    #[error("{server} ({addr}): cannot connect within {timeout:?}")]
    ConnectTimeout {
        /// The agent's name.
        server: String,
        /// Its address.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The agent's name is not a valid TLS server name.
    #[error("{server}: not a valid TLS server name")]
    ServerName {
        /// The agent's name.
        server: String,
    },
    /// The TLS handshake failed (wrong CA, certificate refused, ...).
    #[error("{server} ({addr}): TLS handshake failed")]
    Handshake {
        /// The agent's name.
        server: String,
        /// Its address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed while sending or receiving.
    #[error("{server} ({addr}): connection failed")]
    Io {
        /// The agent's name.
        server: String,
        /// Its address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent closed the connection before answering.
    #[error("{server} ({addr}): connection closed without an answer")]
    Closed {
        /// The agent's name.
        server: String,
        /// Its address.
        addr: SocketAddr,
    },
    /// No answer within the timeout.
    #[error("{server} ({addr}): no answer within {timeout:?}")]
    Timeout {
        /// The agent's name.
        server: String,
        /// Its address.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The agent answered `{"ok":false,"error":...}`.
    #[error("{server}: {message}")]
    Refused {
        /// The agent's name.
        server: String,
        /// The agent's one-line error.
        message: String,
    },
    /// The request could not be encoded.
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
    /// The answer is not what the protocol says.
    #[error("{server}: {what}")]
    Malformed {
        /// The agent's name.
        server: String,
        /// `malformed answer`, `unexpected answer to guest_show`, ...
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A job's event stream stayed silent too long.
    #[error("{server}: no news from job {id} for {idle:?} (agent or link down?)")]
    Silent {
        /// The agent's name.
        server: String,
        /// The job.
        id: String,
        /// How long it was silent.
        idle: Duration,
    },
    /// The agent ended a job's event stream before the job ended.
    #[error("{server}: the agent closed the stream of job {id}")]
    StreamClosed {
        /// The agent's name.
        server: String,
        /// The job.
        id: String,
    },
}

impl CallError {
    /// Whether the agent was not reached or did not answer (as opposed to an answer that
    /// refused the request).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CallError::Connect { .. }
                | CallError::ConnectTimeout { .. }
                | CallError::Handshake { .. }
                | CallError::Io { .. }
                | CallError::Closed { .. }
                | CallError::Timeout { .. }
        )
    }
}

/// A client of one agent.
#[derive(Clone)]
pub struct AgentClient {
    addr: SocketAddr,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl AgentClient {
    /// A client for the agent at `addr` whose certificate names `server_name`.
    pub fn new(addr: SocketAddr, server_name: &str, tls: Arc<rustls::ClientConfig>) -> AgentClient {
        AgentClient { addr, server_name: server_name.to_string(), tls, timeout: Duration::from_secs(30) }
    }

    /// Changes the per-call timeout (connect + answer).
    pub fn with_timeout(mut self, t: Duration) -> AgentClient {
        self.timeout = t;
        self
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn connect_err(&self) -> impl FnOnce(std::io::Error) -> CallError + '_ {
        move |source| CallError::Connect { server: self.server_name.clone(), addr: self.addr, source }
    }

    fn io_err(&self) -> impl Fn(std::io::Error) -> CallError + '_ {
        move |source| CallError::Io { server: self.server_name.clone(), addr: self.addr, source }
    }

    fn malformed(&self, what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> CallError {
        let (server, what) = (self.server_name.clone(), what.into());
        move |source| CallError::Malformed { server, what, source }
    }

    fn timeout_err(&self) -> CallError {
        CallError::Timeout { server: self.server_name.clone(), addr: self.addr, timeout: self.timeout }
    }

    fn refused(&self, error: Option<String>) -> CallError {
        CallError::Refused { server: self.server_name.clone(), message: error.unwrap_or_else(|| "failed".into()) }
    }

    /// Makes one call and returns the raw result.
    pub async fn call_raw(&self, req: &Request) -> Result<serde_json::Value, CallError> {
        let fut = self.call_inner(req);
        let reply = tokio::time::timeout(self.timeout, fut).await.map_err(|_| self.timeout_err())??;
        if reply.ok {
            Ok(reply.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(self.refused(reply.error))
        }
    }

    /// Makes one call and decodes the result.
    pub async fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, CallError> {
        let v = self.call_raw(req).await?;
        serde_json::from_value(v).map_err(self.malformed(format!("unexpected answer to {}", req.op())))
    }

    async fn call_inner(&self, req: &Request) -> Result<Reply, CallError> {
        let mut line = serde_json::to_vec(req).map_err(CallError::Encode)?;
        line.push(b'\n');
        self.send_bytes(&line).await
    }

    /// Sends raw bytes as a request (for tests of malformed input) and returns the reply.
    pub async fn call_bytes(&self, bytes: &[u8]) -> Result<Reply, CallError> {
        tokio::time::timeout(self.timeout, self.send_bytes(bytes)).await.map_err(|_| self.timeout_err())?
    }

    async fn tls(&self, tcp: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>, CallError> {
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|_| CallError::ServerName { server: self.server_name.clone() })?;
        TlsConnector::from(self.tls.clone()).connect(name, tcp).await.map_err(|source| CallError::Handshake {
            server: self.server_name.clone(),
            addr: self.addr,
            source,
        })
    }

    async fn send_bytes(&self, line: &[u8]) -> Result<Reply, CallError> {
        let tcp = TcpStream::connect(self.addr).await.map_err(self.connect_err())?;
        tcp.set_nodelay(true).map_err(self.connect_err())?;
        let tls = self.tls(tcp).await?;
        let (rd, mut wr) = tokio::io::split(tls);
        wr.write_all(line).await.map_err(self.io_err())?;
        wr.flush().await.map_err(self.io_err())?;
        // Half-close: the agent sees the end of the request even without a newline.
        let _ = wr.shutdown().await;
        let mut rd = BufReader::new(rd);
        let mut buf = String::new();
        let n = rd.read_line(&mut buf).await.map_err(self.io_err())?;
        if n == 0 {
            return Err(CallError::Closed { server: self.server_name.clone(), addr: self.addr });
        }
        serde_json::from_str(buf.trim_end()).map_err(self.malformed("malformed answer"))
    }
}

impl AgentClient {
    /// Follows a job's event stream from `from_seq` until the job ends. `on_event` sees
    /// every event (heartbeats excluded). Fails if the stream stays silent for `idle`.
    pub async fn watch(
        &self,
        id: &str,
        from_seq: u64,
        idle: Duration,
        mut on_event: impl FnMut(&crate::JobEvent),
    ) -> Result<crate::JobRecord, CallError> {
        let req = Request::JobWatch { id: id.to_string(), from_seq };
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| CallError::ConnectTimeout {
                server: self.server_name.clone(),
                addr: self.addr,
                timeout: self.timeout,
            })?
            .map_err(self.connect_err())?;
        let tls = self.tls(tcp).await?;
        let (rd, mut wr) = tokio::io::split(tls);
        let mut line = serde_json::to_vec(&req).map_err(CallError::Encode)?;
        line.push(b'\n');
        wr.write_all(&line).await.map_err(self.io_err())?;
        wr.flush().await.map_err(self.io_err())?;
        let mut rd = BufReader::new(rd);
        loop {
            let mut buf = String::new();
            let n = tokio::time::timeout(idle, rd.read_line(&mut buf))
                .await
                .map_err(|_| CallError::Silent { server: self.server_name.clone(), id: id.to_string(), idle })?
                .map_err(self.io_err())?;
            if n == 0 {
                return Err(CallError::StreamClosed { server: self.server_name.clone(), id: id.to_string() });
            }
            match serde_json::from_str::<crate::StreamLine>(buf.trim_end()).map_err(self.malformed("malformed stream line"))? {
                crate::StreamLine::Event { job_event } => {
                    if job_event.seq != crate::HEARTBEAT_SEQ {
                        on_event(&job_event);
                    }
                }
                crate::StreamLine::Reply(r) if r.ok => {
                    return serde_json::from_value(r.result.unwrap_or_default()).map_err(self.malformed("job record"));
                }
                crate::StreamLine::Reply(r) => return Err(self.refused(r.error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(addr: SocketAddr) -> AgentClient {
        let ca = crate::pki::Ca::generate("t").unwrap();
        let op = ca.issue_operator("op").unwrap();
        let tls = crate::tls::client_config(&ca.pair().cert_pem, &op).unwrap();
        AgentClient::new(addr, "host1", tls).with_timeout(Duration::from_secs(2))
    }

    #[tokio::test]
    async fn no_agent_is_unreachable_and_named() {
        // A port nobody listens on: bind, learn it, close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = client(addr).call_raw(&Request::Health).await.unwrap_err();
        assert!(matches!(e, CallError::Connect { .. }), "{e:?}");
        assert!(e.is_unreachable());
        assert_eq!(e.to_string(), format!("host1 ({addr}): cannot connect"));
        assert!(std::error::Error::source(&e).is_some(), "the cause is attached, not repeated");
    }

    #[test]
    fn a_refusal_is_not_unreachability() {
        let e = CallError::Refused { server: "host2".into(), message: "no guest named vm1".into() };
        assert!(!e.is_unreachable());
        assert_eq!(e.to_string(), "host2: no guest named vm1");
    }
}
