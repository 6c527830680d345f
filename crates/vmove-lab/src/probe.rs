//! Probes run from a lab namespace (usually the client's): TCP and UDP echo.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One TCP echo round trip from inside namespace `ns`; returns its duration.
pub async fn tcp_echo(ns: &str, addr: SocketAddr, payload: &[u8]) -> Result<Duration> {
    let (ns, payload) = (ns.to_string(), payload.to_vec());
    tokio::task::spawn_blocking(move || {
        vmove_host::netns::run_in(&ns, move || {
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).context("connect")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&payload)?;
            let mut back = vec![0u8; payload.len()];
            s.read_exact(&mut back).context("read echo")?;
            if back != payload {
                bail!("echo returned different bytes");
            }
            Ok(t.elapsed())
        })
    })
    .await?
}

/// One UDP echo round trip from inside namespace `ns` (up to 5 tries of 1 s).
pub async fn udp_echo(ns: &str, addr: SocketAddr, payload: &[u8]) -> Result<Duration> {
    let (ns, payload) = (ns.to_string(), payload.to_vec());
    tokio::task::spawn_blocking(move || {
        vmove_host::netns::run_in(&ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut buf = vec![0u8; 2048];
            for _ in 0..5 {
                let t = Instant::now();
                s.send_to(&payload, addr)?;
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    if from == addr && buf[..n] == payload[..] {
                        return Ok(t.elapsed());
                    }
                }
            }
            bail!("no UDP echo from {addr}")
        })
    })
    .await?
}

/// What a long-lived echo session saw.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SessionReport {
    /// Messages sent.
    pub sent: u64,
    /// Messages echoed back intact.
    pub echoed: u64,
    /// Longest time between two echoes, ms.
    pub longest_gap_ms: u64,
    /// The client's local port (one connection from start to end).
    pub local_port: u16,
    /// Why the session ended early, if it did.
    pub error: Option<String>,
}

/// One TCP connection from a namespace to an echo service, exchanging a message every
/// `interval` until stopped.
pub struct TcpSession {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    echoed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    handle: std::thread::JoinHandle<SessionReport>,
}

impl TcpSession {
    /// Connects (from inside `ns`) and starts exchanging.
    pub fn start(ns: &str, addr: SocketAddr, interval: Duration) -> Result<TcpSession> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let fd = vmove_host::netns::open(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop2, echoed2) = (stop.clone(), echoed.clone());
        let handle = std::thread::spawn(move || {
            let mut rep = SessionReport::default();
            let setup = (|| -> Result<TcpStream> {
                vmove_host::netns::enter(&fd).context("setns")?;
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).context("connect")?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_nodelay(true)?;
                Ok(s)
            })();
            let mut s = match setup {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return rep;
                }
            };
            rep.local_port = s.local_addr().map(|a| a.port()).unwrap_or(0);
            let mut last = Instant::now();
            let mut buf = [0u8; 16];
            while !stop2.load(Ordering::Relaxed) {
                let msg = format!("{:016}", rep.sent);
                rep.sent += 1;
                let r = s.write_all(msg.as_bytes()).and_then(|_| s.read_exact(&mut buf));
                match r {
                    Ok(()) if buf == msg.as_bytes()[..16] => {
                        rep.echoed += 1;
                        echoed2.store(rep.echoed, Ordering::Relaxed);
                        rep.longest_gap_ms = rep.longest_gap_ms.max(last.elapsed().as_millis() as u64);
                        last = Instant::now();
                    }
                    Ok(()) => {
                        rep.error = Some(format!("echo {} came back altered", rep.sent - 1));
                        break;
                    }
                    Err(e) => {
                        rep.error = Some(format!("connection broke after {} echoes: {e}", rep.echoed));
                        break;
                    }
                }
                std::thread::sleep(interval);
            }
            rep
        });
        rx.recv().context("session thread")??;
        Ok(TcpSession { stop, echoed, handle })
    }

    /// Echoes so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the session and returns its report.
    pub fn stop(self) -> SessionReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| SessionReport { error: Some("session thread panicked".into()), ..Default::default() })
    }
}
