//! The client's probes, run from its namespace: a 1 ms UDP echo stream, one TCP echo
//! connection exchanging every millisecond, HTTP requests, and one-off HTTP reads of the
//! guest's status page. Each records when answers arrive, so that gaps are measured over
//! the same window (from the migration command's start to 2 s after its end).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use vmove_host::netns;

/// Arrival times of echoes, ms since the probe started.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    /// When the probe started.
    pub base: Option<Instant>,
    /// Requests sent.
    pub sent: u64,
    /// Failed requests (HTTP).
    pub failed: u64,
    /// Arrival times, ms since `base`, ascending.
    pub at_ms: Vec<u64>,
    /// `base` as unix µs (UDP).
    pub base_unix_us: u64,
    /// When each request went out, ms since `base`, by sequence number (UDP).
    pub sent_at_ms: Vec<u64>,
    /// The sequence number each echo carried, in arrival order (UDP).
    pub echoed: Vec<u64>,
}

impl Arrivals {
    /// ms since `base` of an instant (0 before it).
    pub fn ms(&self, t: Instant) -> u64 {
        self.base.map(|b| t.saturating_duration_since(b).as_millis() as u64).unwrap_or(0)
    }

    /// ms since `base` of a unix time in µs (0 before it).
    pub fn ms_of_unix(&self, unix_us: u64) -> u64 {
        unix_us.saturating_sub(self.base_unix_us) / 1000
    }
}

/// A datagram to the guest's UDP echo every millisecond (or every `every`); records when echoes come back.
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sent_at: Arc<Mutex<Vec<u64>>>,
    arrivals: Arc<Mutex<Vec<(u64, u64)>>>,
    base: Instant,
    base_unix_us: u64,
    threads: Vec<JoinHandle<()>>,
}

impl UdpStream {
    /// Starts the stream from namespace `ns`.
    pub fn start(ns: &str, addr: SocketAddr) -> Result<UdpStream> {
        UdpStream::start_every(ns, addr, Duration::from_millis(1))
    }

    /// Starts a stream of one datagram every `every` (the drain benchmark probes many
    /// guests at once, more sparsely).
    pub fn start_every(ns: &str, addr: SocketAddr, every: Duration) -> Result<UdpStream> {
        let every = every.max(Duration::from_millis(1));
        let sock = netns::run_in::<_, anyhow::Error>(ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(addr)?;
            Ok(s)
        })?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let rx = sock.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let sent_at = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let base = Instant::now();
        let base_unix_us = vmove_host::frames::now_us();
        let (st, se, sa) = (stop.clone(), sent.clone(), sent_at.clone());
        let tx = std::thread::spawn(move || {
            let mut next = Instant::now();
            let mut seq = 0u64;
            while !st.load(Ordering::Relaxed) {
                let _ = sock.send(&seq.to_be_bytes());
                if let Ok(mut v) = sa.lock() {
                    v.push(base.elapsed().as_millis() as u64);
                }
                seq += 1;
                se.store(seq, Ordering::Relaxed);
                next += every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_millis(50) {
                    next = now;
                }
            }
        });
        let (st, arr) = (stop.clone(), arrivals.clone());
        let rxt = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    if n == 8 {
                        let t = base.elapsed().as_millis() as u64;
                        let seq = u64::from_be_bytes([buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]]);
                        if let Ok(mut a) = arr.lock() {
                            a.push((t, seq));
                        }
                    }
                }
            }
        });
        Ok(UdpStream { stop, sent, sent_at, arrivals, base, base_unix_us, threads: vec![tx, rxt] })
    }

    /// Echoes so far.
    pub fn received(&self) -> usize {
        self.arrivals.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Stops and returns what arrived.
    pub fn stop(self) -> Arrivals {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let got = self.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
        Arrivals {
            base: Some(self.base),
            sent: self.sent.load(Ordering::Relaxed),
            failed: 0,
            at_ms: got.iter().map(|(t, _)| *t).collect(),
            base_unix_us: self.base_unix_us,
            sent_at_ms: self.sent_at.lock().map(|a| a.clone()).unwrap_or_default(),
            echoed: got.iter().map(|(_, s)| *s).collect(),
        }
    }
}

/// One TCP connection to the guest's echo service, exchanging 8 bytes every millisecond.
/// Like `vmove_lab::probe::TcpSession`, but it records arrival times and keeps waiting
/// through stalls (a lost segment is retransmitted) until stopped; only a reset or EOF
/// breaks it.
pub struct TcpEcho {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Arrivals, Option<String>, Option<u64>)>,
}

/// Segments the connection retransmitted in all (the kernel's `tcpi_total_retrans`).
fn retransmits(s: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, a tcp_info buffer and its length.
    let rc = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, std::ptr::addr_of_mut!(info).cast(), &mut len) };
    (rc == 0).then_some(u64::from(info.tcpi_total_retrans))
}

impl TcpEcho {
    /// Connects from namespace `ns` and starts exchanging.
    pub fn start(ns: &str, addr: SocketAddr) -> Result<TcpEcho> {
        let mut s = netns::run_in::<_, anyhow::Error>(ns, move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(3))?))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let base = Instant::now();
            let mut a = Arrivals { base: Some(base), ..Default::default() };
            let mut err = None;
            'outer: while !st.load(Ordering::Relaxed) {
                let msg = a.sent.to_be_bytes();
                a.sent += 1;
                if let Err(e) = s.write_all(&msg) {
                    err = Some(format!("write after {} echoes: {e}", a.at_ms.len()));
                    break;
                }
                let mut got = [0u8; 8];
                let mut n = 0;
                while n < 8 {
                    match s.read(&mut got[n..]) {
                        Ok(0) => {
                            err = Some(format!("closed after {} echoes", a.at_ms.len()));
                            break 'outer;
                        }
                        Ok(k) => n += k,
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => {
                            if st.load(Ordering::Relaxed) {
                                break 'outer;
                            }
                        }
                        Err(e) => {
                            err = Some(format!("broke after {} echoes: {e}", a.at_ms.len()));
                            break 'outer;
                        }
                    }
                }
                if got != msg {
                    err = Some(format!("echo {} came back altered", a.sent - 1));
                    break;
                }
                a.at_ms.push(base.elapsed().as_millis() as u64);
                std::thread::sleep(Duration::from_millis(1));
            }
            let retrans = retransmits(&s);
            (a, err, retrans)
        });
        Ok(TcpEcho { stop, handle })
    }

    /// Stops and returns what arrived, why the connection broke if it did, and how many
    /// segments the client retransmitted.
    pub fn stop(self) -> (Arrivals, Option<String>, Option<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| (Arrivals::default(), Some("probe thread panicked".into()), None))
    }
}

/// One `GET /` from namespace-bound socket creation; returns the body of a 200 answer.
fn http_get_in_ns(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    crate::parse::http_ok_body(&text).map(str::to_string).ok_or_else(|| anyhow!("bad HTTP answer"))
}

/// One `GET /` of the guest's status page from namespace `ns`.
pub fn http_get(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<String> {
    netns::run_in(ns, move || http_get_in_ns(addr, timeout))
}

/// HTTP requests every `interval` from namespace `ns`; records when answers arrive.
pub struct HttpLoad {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Arrivals>,
}

impl HttpLoad {
    /// Starts the load.
    pub fn start(ns: &str, addr: SocketAddr, interval: Duration) -> Result<HttpLoad> {
        let fd = netns::open(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let base = Instant::now();
            let mut a = Arrivals { base: Some(base), ..Default::default() };
            if netns::enter(&fd).is_err() {
                return a;
            }
            while !st.load(Ordering::Relaxed) {
                let t = Instant::now();
                a.sent += 1;
                match http_get_in_ns(addr, Duration::from_secs(1)) {
                    Ok(_) => a.at_ms.push(base.elapsed().as_millis() as u64),
                    Err(_) => a.failed += 1,
                }
                if let Some(rest) = interval.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            a
        });
        Ok(HttpLoad { stop, handle })
    }

    /// Stops and returns what arrived.
    pub fn stop(self) -> Arrivals {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
