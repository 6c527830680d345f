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
