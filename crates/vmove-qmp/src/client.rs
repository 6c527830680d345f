//! The connection: handshake, one reader task, one writer task, reply
//! matching by id, event fan-out and fd passing.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::QmpError;
use crate::message::{parse_line, Message};
use crate::types::{Event, Greeting};

/// Capacity of the event broadcast channel. A subscriber that falls this
/// far behind loses the oldest events (`RecvError::Lagged`).
pub const EVENT_CAPACITY: usize = 1024;

/// The longest pause between two attempts of [`Qmp::connect_retry`] (the pauses start at
/// 5 ms and double up to this).
pub const CONNECT_POLL_MAX: Duration = Duration::from_millis(20);

/// Default per-command timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest excerpt of a bad line that goes into the log.
const LOG_EXCERPT: usize = 200;

type ReplyResult = Result<Value, QmpError>;

/// A connection to one QEMU monitor. Cheap to clone; all clones share the
/// connection. The background tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Qmp {
    pub(crate) conn: Arc<Conn>,
}

pub(crate) struct Conn {
    shared: Arc<Shared>,
    greeting: Greeting,
    writer: mpsc::UnboundedSender<WriteReq>,
    next_id: AtomicU64,
    default_timeout_ns: AtomicU64,
    tasks: [JoinHandle<()>; 2],
    /// Out-of-band execution was negotiated (`qmp_capabilities` with `oob`).
    oob: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// State shared with the reader task.
struct Shared {
    pending: Mutex<PendingMap>,
    events: broadcast::Sender<Event>,
    closed: watch::Sender<bool>,
}

#[derive(Default)]
struct PendingMap {
    map: HashMap<u64, Pending>,
    closed: bool,
}

struct Pending {
    cmd: String,
    tx: oneshot::Sender<ReplyResult>,
}

struct WriteReq {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
    done: oneshot::Sender<io::Result<()>>,
}

/// Removes a pending entry when the request ends in any way (reply,
/// timeout, or the caller dropping the future).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().map.remove(&self.id);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PendingMap> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove calls), so poisoning is ignored.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, id: u64, cmd: &str) -> Result<oneshot::Receiver<ReplyResult>, QmpError> {
        let mut p = self.lock();
        if p.closed {
            return Err(QmpError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        p.map.insert(
            id,
            Pending {
                cmd: cmd.to_string(),
                tx,
            },
        );
        Ok(rx)
    }

    /// Marks the connection closed and fails every pending command.
    fn close(&self) {
        let drained: Vec<Pending> = {
            let mut p = self.lock();
            p.closed = true;
            p.map.drain().map(|(_, v)| v).collect()
        };
        for pending in drained {
            tracing::debug!(cmd = %pending.cmd, "qmp: connection closed with command pending");
            let _ = pending.tx.send(Err(QmpError::Closed));
        }
        self.closed.send_replace(true);
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Handles one received line. Never fails: anything odd is logged.
    fn dispatch_line(&self, raw: &[u8]) {
        tracing::trace!(line = %String::from_utf8_lossy(raw.trim_ascii()), "qmp <-");
        let (id, result) = match parse_line(raw) {
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, line = %excerpt(raw.trim_ascii()), "qmp: skipping malformed line");
                return;
            }
            // No receiver is fine: nobody is interested right now.
            Ok(Some(Message::Event(event))) => {
                let _ = self.events.send(event);
                return;
            }
            Ok(Some(Message::Greeting(_))) => {
                tracing::warn!("qmp: unexpected second greeting, ignored");
                return;
            }
            Ok(Some(Message::Unknown(_))) => {
                tracing::warn!(line = %excerpt(raw.trim_ascii()), "qmp: unknown message, ignored");
                return;
            }
            Ok(Some(Message::Reply { id, result })) => (id, result),
        };
        let Some(id) = id else {
            tracing::warn!(line = %excerpt(raw.trim_ascii()), "qmp: reply without a known id, dropped");
            return;
        };
        let Some(pending) = self.lock().map.remove(&id) else {
            tracing::warn!(id, "qmp: reply for unknown or timed-out id, dropped");
            return;
        };
        if pending.tx.send(result).is_err() {
            tracing::debug!(id, cmd = %pending.cmd, "qmp: reply arrived after caller left");
        }
    }
}

fn excerpt(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    match s.char_indices().nth(LOG_EXCERPT) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.into_owned(),
    }
}

async fn read_loop(mut rd: BufReader<OwnedReadHalf>, shared: Arc<Shared>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        match rd.read_until(b'\n', &mut buf).await {
            Ok(0) => {
                tracing::debug!("qmp: connection closed by peer");
                break;
            }
            Ok(_) => shared.dispatch_line(&buf),
            Err(e) => {
                tracing::debug!(error = %e, "qmp: read failed, closing");
                break;
            }
        }
    }
    shared.close();
}

async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<WriteReq>) {
    while let Some(req) = rx.recv().await {
        let res = write_msg(&mut w, &req.bytes, req.fd.as_ref().map(|f| f.as_raw_fd())).await;
        // The fd (our dup) is closed here, after the kernel took its copy.
        drop(req.fd);
        let _ = req.done.send(res);
    }
}

async fn write_msg(w: &mut OwnedWriteHalf, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut off = 0;
    if let Some(fd) = fd {
        off = send_with_fd(w.as_ref(), bytes, fd).await?;
    }
    w.write_all(&bytes[off..]).await?;
    w.flush().await
}

/// Sends (a first part of) `bytes` with `fd` attached as SCM_RIGHTS.
/// Returns how many bytes went out; the caller writes the rest.
async fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: RawFd) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        let res = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(bytes)];
            let fds = [fd];
            let cmsgs = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        });
        match res {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn timeout_err(cmd: &str) -> QmpError {
    QmpError::Timeout {
        cmd: cmd.to_string(),
    }
}

fn is_retryable_connect(e: &QmpError) -> bool {
    matches!(e, QmpError::Io(io) if matches!(
        io.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    ))
}

impl Qmp {
    /// Connects to the monitor socket at `path`, reads the greeting and
    /// leaves capabilities negotiation (`qmp_capabilities`). `timeout`
    /// bounds the whole handshake.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        Self::connect_with(path, timeout, false).await
    }

    /// Like [`Qmp::connect`], and enables out-of-band execution when QEMU
    /// offers it (every QEMU vmove supports does). Commands QEMU allows
    /// out-of-band then bypass the main loop: [`Qmp::migrate_recover`] and
    /// [`Qmp::migrate_pause`] use it, because a post-copy target whose link
    /// broke can have its main loop blocked behind a vCPU waiting for a
    /// missing page. Negotiate it when connecting to a QEMU that may become
    /// a post-copy target: a new connection to a blocked QEMU cannot
    /// negotiate anything.
    pub async fn connect_oob(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        Self::connect_with(path, timeout, true).await
    }

    async fn connect_with(path: &Path, timeout: Duration, oob: bool) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = tokio::time::timeout_at(deadline, UnixStream::connect(path))
            .await
            .map_err(|_| timeout_err("connect"))??;
        Self::handshake(stream, deadline, oob).await
    }

    /// Like [`Qmp::connect`] on an already connected stream (e.g. one end
    /// of a socketpair handed to QEMU with `-qmp fd`).
    pub async fn connect_stream(stream: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        Self::handshake(stream, Instant::now() + timeout, false).await
    }

    /// Connects, retrying while the socket does not exist yet or refuses
    /// connections (QEMU still starting), for at most `total`. When time
    /// runs out the last connection error is returned (an `Io` error for a
    /// missing socket, `Timeout` when QEMU accepted but never greeted).
    pub async fn connect_retry(path: &Path, total: Duration) -> Result<Qmp, QmpError> {
        Self::connect_retry_with(path, total, false).await
    }

    /// [`Qmp::connect_retry`] with out-of-band execution ([`Qmp::connect_oob`]).
    pub async fn connect_retry_oob(path: &Path, total: Duration) -> Result<Qmp, QmpError> {
        Self::connect_retry_with(path, total, true).await
    }

    async fn connect_retry_with(path: &Path, total: Duration, oob: bool) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + total;
        // A starting QEMU makes its socket 50-300 ms after exec: poll it often (a refused
        // connect costs microseconds), so that a migration's target is not left waiting
        // out a long backoff step after its QEMU is ready.
        let mut delay = Duration::from_millis(5);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match Self::connect_with(path, remaining, oob).await {
                Ok(q) => return Ok(q),
                Err(e) if is_retryable_connect(&e) && Instant::now() + delay < deadline => {
                    tracing::trace!(error = %e, path = %path.display(), "qmp: not ready, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(CONNECT_POLL_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn handshake(stream: UnixStream, deadline: Instant, want_oob: bool) -> Result<Qmp, QmpError> {
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let greeting = tokio::time::timeout_at(deadline, read_greeting(&mut rd))
            .await
            .map_err(|_| timeout_err("greeting"))??;
        tracing::debug!(version = %greeting.version, "qmp: greeting");

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            pending: Mutex::new(PendingMap::default()),
            events,
            closed,
        });
        let oob = want_oob && greeting.capabilities.iter().any(|c| c == "oob");
        let (wtx, wrx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(rd, shared.clone()));
        let writer = tokio::spawn(write_loop(wr, wrx));
        let qmp = Qmp {
            conn: Arc::new(Conn {
                shared,
                greeting,
                writer: wtx,
                next_id: AtomicU64::new(1),
                default_timeout_ns: AtomicU64::new(DEFAULT_TIMEOUT.as_nanos() as u64),
                tasks: [reader, writer],
                oob,
            }),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let args = oob.then(|| serde_json::json!({ "enable": ["oob"] }));
        qmp.execute_timeout("qmp_capabilities", args, remaining)
            .await?;
        Ok(qmp)
    }

    /// Whether out-of-band execution was negotiated ([`Qmp::connect_oob`]).
    pub fn is_oob(&self) -> bool {
        self.conn.oob
    }

    /// Runs a command out-of-band (`exec-oob`): QEMU handles it at once in
    /// its monitor thread, even while its main loop is blocked. Only for
    /// commands QEMU allows out-of-band (`migrate-recover`, `migrate-pause`,
    /// `x-oob-test`); fails without a request when out-of-band execution was
    /// not negotiated.
    pub async fn execute_oob(&self, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
        if !self.conn.oob {
            return Err(QmpError::Protocol(format!(
                "cannot run {cmd} out-of-band: not negotiated on this connection"
            )));
        }
        self.send_request(cmd, args, None, self.default_timeout(), true).await
    }

    /// The greeting QEMU sent (its version).
    pub fn greeting(&self) -> &Greeting {
        &self.conn.greeting
    }

    /// Sets the timeout used by [`Qmp::execute`] and the typed wrappers
    /// (default 30 s). Applies to all clones.
    pub fn set_default_timeout(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.conn.default_timeout_ns.store(ns, Ordering::Relaxed);
    }

    /// The current default timeout.
    pub fn default_timeout(&self) -> Duration {
        Duration::from_nanos(self.conn.default_timeout_ns.load(Ordering::Relaxed))
    }

    /// Runs a command with the default timeout and returns its raw
    /// `return` value.
    pub async fn execute(&self, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.request(cmd, args, None, self.default_timeout()).await
    }

    /// Runs a command with an explicit timeout. On timeout the command is
    /// forgotten (a late reply is dropped) and the connection stays usable.
    pub async fn execute_timeout(
        &self,
        cmd: &str,
        args: Option<Value>,
        t: Duration,
    ) -> Result<Value, QmpError> {
        self.request(cmd, args, None, t).await
    }

    /// Runs a command and decodes its result into `T`.
    pub async fn execute_as<T: serde::de::DeserializeOwned>(
        &self,
        cmd: &str,
        args: Option<Value>,
    ) -> Result<T, QmpError> {
        let v = self.execute(cmd, args).await?;
        serde_json::from_value(v).map_err(|source| QmpError::Decode {
            cmd: cmd.to_string(),
            source,
        })
    }

    /// Every event from now on, raw. Events that arrived before the call
    /// are not replayed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.conn.shared.events.subscribe()
    }

    /// Passes `fd` to QEMU with SCM_RIGHTS and names it `fdname` (`getfd`),
    /// e.g. for `migrate fd:NAME`.
    pub async fn getfd(&self, fd: BorrowedFd<'_>, fdname: &str) -> Result<(), QmpError> {
        let args = serde_json::json!({ "fdname": fdname });
        self.request("getfd", Some(args), Some(fd), self.default_timeout())
            .await
            .map(drop)
    }

    /// Passes `fd` to QEMU with SCM_RIGHTS into an fd set (`add-fd`); QEMU
    /// can then open it as `/dev/fdset/ID`.
    pub async fn add_fd(
        &self,
        fd: BorrowedFd<'_>,
        fdset_id: Option<u64>,
        opaque: Option<&str>,
    ) -> Result<crate::types::AddFdInfo, QmpError> {
        let mut args = Map::new();
        if let Some(id) = fdset_id {
            args.insert("fdset-id".into(), id.into());
        }
        if let Some(o) = opaque {
            args.insert("opaque".into(), o.into());
        }
        let v = self
            .request(
                "add-fd",
                Some(Value::Object(args)),
                Some(fd),
                self.default_timeout(),
            )
            .await?;
        serde_json::from_value(v).map_err(|source| QmpError::Decode {
            cmd: "add-fd".into(),
            source,
        })
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.shared.is_closed()
    }

    /// Resolves when the connection ends (QEMU exited or closed the
    /// monitor). Resolves at once if it already has.
    pub async fn closed(&self) {
        let mut rx = self.conn.shared.closed.subscribe();
        // The sender lives in `Shared`, which we hold: no error possible.
        let _ = rx.wait_for(|c| *c).await;
    }

    async fn request(
        &self,
        cmd: &str,
        args: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.send_request(cmd, args, fd, timeout, false).await
    }

    async fn send_request(
        &self,
        cmd: &str,
        args: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
        oob: bool,
    ) -> Result<Value, QmpError> {
        let id = self.conn.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        let key = if oob { "exec-oob" } else { "execute" };
        msg.insert(key.into(), cmd.into());
        if let Some(a) = args {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), id.into());
        let mut bytes = serde_json::to_vec(&msg)
            .map_err(|e| QmpError::Protocol(format!("cannot encode {cmd}: {e}")))?;
        bytes.push(b'\n');
        // Our own duplicate goes to the writer task, so the caller's fd
        // only has to live for this call.
        let fd = fd.map(|f| f.try_clone_to_owned()).transpose()?;

        let shared = &*self.conn.shared;
        let rx = shared.register(id, cmd)?;
        let _guard = PendingGuard { shared, id };
        tracing::trace!(cmd, id, "qmp ->");

        let exchange = async {
            let (done_tx, done_rx) = oneshot::channel();
            let req = WriteReq {
                bytes,
                fd,
                done: done_tx,
            };
            if self.conn.writer.send(req).is_err() {
                return Err(QmpError::Closed);
            }
            match done_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.write_error(e)),
                Err(_) => return Err(QmpError::Closed),
            }
            rx.await.unwrap_or(Err(QmpError::Closed))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!(cmd, id, ?timeout, "qmp: command timed out");
                Err(timeout_err(cmd))
            }
        }
    }

    fn write_error(&self, e: io::Error) -> QmpError {
        use io::ErrorKind::*;
        if self.is_closed() || matches!(e.kind(), BrokenPipe | ConnectionReset | NotConnected) {
            QmpError::Closed
        } else {
            QmpError::Io(e)
        }
    }

    /// Number of commands awaiting a reply (for tests and diagnostics).
    pub fn pending_commands(&self) -> usize {
        self.conn.shared.lock().map.len()
    }
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.conn.greeting.version.to_string())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Reads lines until the greeting; anything else first is a protocol error.
async fn read_greeting(rd: &mut BufReader<OwnedReadHalf>) -> Result<Greeting, QmpError> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if rd.read_until(b'\n', &mut buf).await? == 0 {
            return Err(QmpError::Closed);
        }
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| {
            QmpError::Protocol(format!("greeting is not JSON ({e}): {}", excerpt(line)))
        })?;
        return Greeting::from_value(&v)
            .ok_or_else(|| QmpError::Protocol(format!("not a QMP greeting: {}", excerpt(line))));
    }
}
