//! Network services: echo on TCP and UDP port 7, a tiny HTTP server on port 80.

use crate::{say, Shared};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Echo port (TCP and UDP).
pub const ECHO_PORT: u16 = 7;
/// HTTP port.
pub const HTTP_PORT: u16 = 80;

/// Bind all services (synchronously, so that they listen when this returns) and serve
/// them from background threads.
pub fn start(shared: &Arc<Shared>) {
    match TcpListener::bind(("0.0.0.0", ECHO_PORT)) {
        Ok(l) => accept_loop("tcp-echo", l, |s| {
            let _ = tcp_echo(s);
        }),
        Err(e) => say(&format!("VMOVE WARN cannot listen on tcp/{ECHO_PORT}: {e}")),
    }
    match UdpSocket::bind(("0.0.0.0", ECHO_PORT)) {
        Ok(sock) => {
            let _ = std::thread::Builder::new()
                .name("udp-echo".to_string())
                .spawn(move || udp_echo(&sock));
        }
        Err(e) => say(&format!("VMOVE WARN cannot listen on udp/{ECHO_PORT}: {e}")),
    }
    match TcpListener::bind(("0.0.0.0", HTTP_PORT)) {
        Ok(l) => {
            let sh = shared.clone();
            accept_loop("http", l, move |s| {
                let _ = http(s, &sh);
            })
        }
        Err(e) => say(&format!("VMOVE WARN cannot listen on tcp/{HTTP_PORT}: {e}")),
    }
}

fn accept_loop<F>(name: &'static str, l: TcpListener, handler: F)
where
    F: Fn(TcpStream) + Send + Sync + Clone + 'static,
{
    let _ = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || loop {
            match l.accept() {
                Ok((s, _)) => {
                    let h = handler.clone();
                    if let Err(e) = std::thread::Builder::new()
                        .name(format!("{name}-conn"))
                        .spawn(move || h(s))
                    {
                        say(&format!("VMOVE WARN {name}: cannot start a thread: {e}"));
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        });
}

fn tcp_echo(mut s: TcpStream) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        s.write_all(&buf[..n])?;
    }
    s.shutdown(Shutdown::Write)
}

fn udp_echo(sock: &UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let _ = sock.send_to(&buf[..n], peer);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The text of the status page.
pub fn status_page(shared: &Shared) -> String {
    let st = &shared.stats;
    let disk = match st.disk_records.load(Ordering::Relaxed) {
        u64::MAX => "none".to_string(),
        n => n.to_string(),
    };
    format!(
        "vmove guest {name}\n\
         name: {name}\n\
         uptime_s: {uptime:.1}\n\
         dirty_mb_s: {dirty}\n\
         wss_mib: {wss}\n\
         verify_sweeps: {sweeps}\n\
         last_sweep_ms: {sweep_ms}\n\
         pages_verified: {verified}\n\
         verify_failures: {failures}\n\
         pages_dirtied: {dirtied}\n\
         disk_records: {disk}\n\
         disk_written_bytes: {written}\n",
        name = shared.config.name,
        uptime = crate::uptime_secs(),
        dirty = shared.config.dirty_mb_s,
        wss = shared.config.wss_mib,
        sweeps = st.sweeps.load(Ordering::Relaxed),
        sweep_ms = st.last_sweep_ms.load(Ordering::Relaxed),
        verified = st.pages_verified.load(Ordering::Relaxed),
        failures = st.verify_failures.load(Ordering::Relaxed),
        dirtied = st.pages_dirtied.load(Ordering::Relaxed),
        written = st.disk_written_bytes.load(Ordering::Relaxed),
    )
}

fn http(mut s: TcpStream, shared: &Shared) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 2048];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
        if req.len() > 16 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&req);
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("");
    let (status, body) = match method {
        "GET" | "HEAD" => ("200 OK", status_page(shared)),
        "" => return Ok(()),
        _ => ("405 Method Not Allowed", "method not allowed\n".to_string()),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    s.write_all(resp.as_bytes())?;
    let _ = s.shutdown(Shutdown::Write);
    Ok(())
}
