//! The migration link between two agents, measured before a move: the target listens on
//! its migration address with the same mutual TLS, the source streams data to it for a
//! moment, the target times what arrives. Results are kept per source host
//! (`links/<source>`) with the time they were taken, so a precheck reuses a recent one.
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vmove_api::{LinkInfo, PeerHost, Request};
use vmove_store::Record;

use crate::error::{fail, AgentError, Result, ResultExt};
use crate::guests::Agent;
use crate::peer::Peer;

/// How long the source streams.
pub const PROBE: Duration = Duration::from_millis(300);

/// A measured link, kept per source host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRec {
    /// Throughput, bytes/s.
    pub bytes_per_s: u64,
    /// When, unix ms.
    pub measured_ms: u64,
}

impl Record for LinkRec {
    const KIND: &'static str = "link";
    const VERSION: u32 = 1;
}

fn key(source: &str) -> String {
    format!("links/{source}")
}

fn ip_of(listen: &str) -> Result<&str> {
    match listen.rsplit_once(':') {
        Some((ip, _)) => Ok(ip),
        None => fail!(Internal, "bad listen address {listen}"),
    }
}

/// target: the link from `source` to this host, measured now or taken from a measurement
/// younger than `max_age`.
pub async fn measure(agent: &Arc<Agent>, peer: &dyn Peer, source: &PeerHost, max_age: Duration) -> Result<LinkInfo> {
    let now = crate::now_ms();
    if let Some(r) = agent.state.get::<LinkRec>(&key(&source.name)).await? {
        let age_ms = now.saturating_sub(r.measured_ms);
        if u128::from(age_ms) <= max_age.as_millis() {
            return Ok(info(agent, source, &r, now, true));
        }
    }
    let (ca, me) = crate::server::tls_files(&agent.cfg)?;
    let acceptor = TlsAcceptor::from(vmove_api::tls::server_config(&ca, &me).map_err(AgentError::host)?);
    let listener = TcpListener::bind((ip_of(&agent.cfg.listen)?, 0)).await.ctx("listen for the link probe")?;
    let addr = listener.local_addr()?;
    let receive = tokio::spawn(async move { receive(listener, acceptor).await });
    let req = Request::PeerLinkSend { addr: addr.to_string(), duration_ms: u64::try_from(PROBE.as_millis()).unwrap_or(300) };
    let sent = peer.call(&req, PROBE + Duration::from_secs(15)).await;
    let got = tokio::time::timeout(Duration::from_secs(15), receive)
        .await
        .map_err(|_| AgentError::new(vmove_api::ErrorCode::Timeout, "the link probe did not end"))?
        .map_err(|e| AgentError::internal(format!("link probe task: {e}")))?;
    sent?;
    let (bytes, took) = got?;
    let secs = took.as_secs_f64().max(1e-3);
    let r = LinkRec { bytes_per_s: (bytes as f64 / secs) as u64, measured_ms: crate::now_ms() };
    agent.state.put(&key(&source.name), &r).await?;
    Ok(info(agent, source, &r, r.measured_ms, false))
}

fn info(agent: &Agent, source: &PeerHost, r: &LinkRec, now: u64, cached: bool) -> LinkInfo {
    LinkInfo {
        source: source.name.clone(),
        target: agent.cfg.name.clone(),
        bytes_per_s: r.bytes_per_s,
        measured_ms: r.measured_ms,
        age_s: now.saturating_sub(r.measured_ms) / 1000,
        cached,
    }
}

/// Accepts the source's connection and times the bytes from the first to the end.
async fn receive(listener: TcpListener, acceptor: TlsAcceptor) -> Result<(u64, Duration)> {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .map_err(|_| AgentError::new(vmove_api::ErrorCode::Timeout, "the source did not connect for the link probe"))??;
    let _ = tcp.set_nodelay(true);
    let mut tls = acceptor.accept(tcp).await.ctx("link probe TLS")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    loop {
        let n = tls.read(&mut buf).await.ctx("link probe read")?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total = total.saturating_add(n as u64);
    }
    Ok((total, first.map_or(Duration::ZERO, |f| f.elapsed())))
}

/// source: streams zeros to the target's probe listener at `addr` for `duration`, over
/// mutual TLS with this host's certificate. Returns the bytes sent.
pub async fn send(agent: &Agent, target_name: Option<&str>, addr: &str, duration: Duration) -> Result<u64> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|_| AgentError::new(vmove_api::ErrorCode::InvalidRequest, format!("bad address {addr}")))?;
    let tcp = TcpStream::connect(sock).await.ctx("connect to the link probe")?;
    let _ = tcp.set_nodelay(true);
    // The target's certificate names its host and its IP: the IP is what we know here.
    let name = target_name.map_or_else(|| sock.ip().to_string(), str::to_string);
    let server = rustls::pki_types::ServerName::try_from(name).map_err(|_| AgentError::internal("server name"))?;
    let mut tls = TlsConnector::from(agent.peer_tls.clone()).connect(server, tcp).await.ctx("link probe TLS")?;
    let chunk = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        tls.write_all(&chunk).await.ctx("link probe write")?;
        sent = sent.saturating_add(chunk.len() as u64);
    }
    tls.shutdown().await.ctx("link probe close")?;
    // Read what the target still sends (TLS 1.3 session tickets) until it closes: a socket
    // closed with unread data resets the connection, and the target would lose the tail.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tls.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    Ok(sent)
}
