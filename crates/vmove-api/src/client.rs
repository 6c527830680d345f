//! The mTLS client of the agent API.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{Reply, Request};

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

    /// Makes one call and returns the raw result.
    pub async fn call_raw(&self, req: &Request) -> Result<serde_json::Value> {
        let fut = self.call_inner(req);
        let reply = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow!("{} ({}): no answer within {:?}", self.server_name, self.addr, self.timeout))??;
        if reply.ok {
            Ok(reply.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(anyhow!("{}: {}", self.server_name, reply.error.unwrap_or_else(|| "failed".into())))
        }
    }

    /// Makes one call and decodes the result.
    pub async fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T> {
        let v = self.call_raw(req).await?;
        serde_json::from_value(v).with_context(|| format!("{}: unexpected answer to {}", self.server_name, req.op()))
    }

    async fn call_inner(&self, req: &Request) -> Result<Reply> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.send_bytes(&line).await
    }

    /// Sends raw bytes as a request (for tests of malformed input) and returns the reply.
    pub async fn call_bytes(&self, bytes: &[u8]) -> Result<Reply> {
        tokio::time::timeout(self.timeout, self.send_bytes(bytes))
            .await
            .map_err(|_| anyhow!("{} ({}): no answer within {:?}", self.server_name, self.addr, self.timeout))?
    }

    async fn send_bytes(&self, line: &[u8]) -> Result<Reply> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("{} ({}): cannot connect", self.server_name, self.addr))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.server_name.clone()).context("server name")?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .with_context(|| format!("{} ({}): TLS handshake failed", self.server_name, self.addr))?;
        let (rd, mut wr) = tokio::io::split(tls);
        let fail = || format!("{} ({}): connection failed", self.server_name, self.addr);
        wr.write_all(line).await.with_context(fail)?;
        wr.flush().await.with_context(fail)?;
        // Half-close: the agent sees the end of the request even without a newline.
        let _ = wr.shutdown().await;
        let mut rd = BufReader::new(rd);
        let mut buf = String::new();
        let n = rd
            .read_line(&mut buf)
            .await
            .with_context(|| format!("{} ({}): connection failed", self.server_name, self.addr))?;
        if n == 0 {
            return Err(anyhow!("{} ({}): connection closed without an answer", self.server_name, self.addr));
        }
        serde_json::from_str(buf.trim_end()).with_context(|| format!("{}: malformed answer", self.server_name))
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
    ) -> Result<crate::JobRecord> {
        let req = Request::JobWatch { id: id.to_string(), from_seq };
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| anyhow!("{} ({}): cannot connect within {:?}", self.server_name, self.addr, self.timeout))?
            .with_context(|| format!("{} ({}): cannot connect", self.server_name, self.addr))?;
        let name = ServerName::try_from(self.server_name.clone()).context("server name")?;
        let tls = TlsConnector::from(self.tls.clone()).connect(name, tcp).await.context("TLS handshake failed")?;
        let (rd, mut wr) = tokio::io::split(tls);
        let mut line = serde_json::to_vec(&req)?;
        line.push(b'\n');
        wr.write_all(&line).await?;
        wr.flush().await?;
        let mut rd = BufReader::new(rd);
        loop {
            let mut buf = String::new();
            let n = tokio::time::timeout(idle, rd.read_line(&mut buf))
                .await
                .map_err(|_| anyhow!("{}: no news from job {id} for {:?} (agent or link down?)", self.server_name, idle))??;
            if n == 0 {
                return Err(anyhow!("{}: the agent closed the stream of job {id}", self.server_name));
            }
            match serde_json::from_str::<crate::StreamLine>(buf.trim_end())
                .with_context(|| format!("{}: malformed stream line", self.server_name))?
            {
                crate::StreamLine::Event { job_event } => {
                    if job_event.seq != crate::HEARTBEAT_SEQ {
                        on_event(&job_event);
                    }
                }
                crate::StreamLine::Reply(r) if r.ok => {
                    return serde_json::from_value(r.result.unwrap_or_default()).context("job record");
                }
                crate::StreamLine::Reply(r) => {
                    return Err(anyhow!("{}: {}", self.server_name, r.error.unwrap_or_else(|| "failed".into())))
                }
            }
        }
    }
}
