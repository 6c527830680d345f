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
            deepen_receive_queue(&sock);
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

/// The UDP echo's receive queue, bytes. A guest that resumes after a migration's blackout
/// (under TCG, from cold) finds every request of the blackout waiting at once; with the
/// kernel's default queue (about 200 small datagrams) it would drop the rest itself, and
/// a client could not tell that from frames lost on the way.
pub const UDP_RECEIVE_QUEUE: libc::c_int = 8 << 20;

/// Sets the socket's receive queue to [`UDP_RECEIVE_QUEUE`] (beyond `rmem_max` as the init,
/// which is root; the kernel's limit otherwise).
fn deepen_receive_queue(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let v = UDP_RECEIVE_QUEUE;
    let set = |opt| {
        // SAFETY: a valid socket and a c_int option value of the length given.
        unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, opt, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) == 0 }
    };
    if !set(libc::SO_RCVBUFFORCE) && !set(libc::SO_RCVBUF) {
        say(&format!("VMOVE WARN cannot set the udp/{ECHO_PORT} receive queue: {}", io::Error::last_os_error()));
    }
}

/// A counter of the `Udp:` lines of `/proc/net/snmp` (`InDatagrams`, `RcvbufErrors`, ...).
pub fn udp_counter(snmp: &str, name: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
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
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let counter = |name| udp_counter(&snmp, name).map_or_else(|| "unknown".to_string(), |n| n.to_string());
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
         disk_written_bytes: {written}\n\
         udp_in_datagrams: {udp_in}\n\
         udp_rcvbuf_errors: {udp_drops}\n",
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
        udp_in = counter("InDatagrams"),
        udp_drops = counter("RcvbufErrors"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_counters_are_read_from_the_udp_lines_of_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 7557 0 12 7988 431 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    UdpLite: 0 0 0 0 0 0\n";
        assert_eq!(udp_counter(snmp, "InDatagrams"), Some(7557));
        assert_eq!(udp_counter(snmp, "RcvbufErrors"), Some(431));
        assert_eq!(udp_counter(snmp, "MemErrors"), None);
        assert_eq!(udp_counter("Udp: InDatagrams\n", "InDatagrams"), None);
        assert_eq!(udp_counter("", "InDatagrams"), None);
    }

    #[test]
    fn the_echo_socket_gets_a_deep_receive_queue() {
        let s = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        deepen_receive_queue(&s);
        use std::os::fd::AsRawFd;
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, a c_int buffer and its length.
        let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&mut v as *mut libc::c_int).cast(), &mut len) };
        assert_eq!(r, 0);
        // The kernel doubles what it is given; as root (tests and the guest's init) the force works.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(!root || v >= UDP_RECEIVE_QUEUE, "receive queue {v}");
    }
}
