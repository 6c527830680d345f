//! A small recording QMP server for unit tests (feature `fake`).
//!
//! [`FakeQmp`] listens on `qmp.sock` in a fresh temporary directory, greets
//! every client like QEMU 7.2 does, records each command it receives, and
//! answers from (1) replies queued with [`FakeQmp::push_reply`] for that
//! command name, else (2) the handler closure. It can send events or raw
//! lines at any time and keeps file descriptors passed with SCM_RIGHTS.
//!
//! The default handler ([`default_reply`]) answers `qmp_capabilities` and
//! unknown commands with `{}`, and gives plausible answers to
//! `query-version`, `query-status`, `query-cpus-fast` and `add-fd`.
//!
//! ```ignore
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vmove_qmp::fake::{FakeQmp, Reply};
//! let fake = FakeQmp::start().await?;
//! fake.push_reply("migrate", Reply::error("GenericError", "no route"));
//! let qmp = vmove_qmp::Qmp::connect(fake.path(), std::time::Duration::from_secs(5)).await?;
//! assert!(qmp.migrate("tcp:127.0.0.1:1").await.is_err());
//! assert_eq!(fake.command_names(), ["qmp_capabilities", "migrate"]);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long the waiting helpers wait before panicking (failure guard).
pub const WAIT_GUARD: Duration = Duration::from_secs(10);

/// A command the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The `execute` (or `exec-oob`) member.
    pub name: String,
    /// Sent out-of-band (`exec-oob`).
    pub oob: bool,
    /// The `arguments` member.
    pub arguments: Option<Value>,
    /// The `id` member (echo it in manual replies).
    pub id: Option<Value>,
    /// The whole message.
    pub raw: Value,
    /// How many fds arrived with it (see [`FakeQmp::take_fds`]).
    pub fds: usize,
}

impl Command {
    /// A string argument, if present.
    pub fn arg_str(&self, name: &str) -> Option<&str> {
        self.arguments.as_ref()?.get(name)?.as_str()
    }
}

/// A file descriptor received with SCM_RIGHTS.
#[derive(Debug)]
pub struct ReceivedFd {
    /// The command it came with (`getfd`, `add-fd`, ...).
    pub command: String,
    /// Its `fdname` argument, if any.
    pub fdname: Option<String>,
    /// The descriptor, now owned by the test.
    pub fd: OwnedFd,
}

/// How the fake answers a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `{"return": VALUE, "id": ID}`.
    Return(Value),
    /// `{"error": {"class": .., "desc": ..}, "id": ID}`.
    Error {
        /// Error class.
        class: String,
        /// Description.
        desc: String,
    },
    /// Do not answer (answer later with [`FakeQmp::reply`], or never).
    Ignore,
    /// Send these lines verbatim (newlines are added).
    Lines(Vec<String>),
    /// Close the connection without answering (QEMU crashed / exited).
    Close,
}

impl Reply {
    /// `{"return": {}}`.
    pub fn ok() -> Reply {
        Reply::Return(json!({}))
    }

    /// An error reply.
    pub fn error(class: &str, desc: &str) -> Reply {
        Reply::Error {
            class: class.into(),
            desc: desc.into(),
        }
    }
}

type Handler = Arc<dyn Fn(&Command) -> Reply + Send + Sync>;

enum Out {
    Line(String),
    Close,
}

struct State {
    greeting: Option<Value>,
    handler: Mutex<Handler>,
    queued: Mutex<HashMap<String, VecDeque<Reply>>>,
    commands: Mutex<Vec<Command>>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    cmd_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Command>>,
    fds: Mutex<Vec<ReceivedFd>>,
    current: Mutex<Option<mpsc::UnboundedSender<Out>>>,
    conn_tasks: Mutex<Vec<JoinHandle<()>>>,
    connections: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builder for [`FakeQmp`].
pub struct FakeQmpBuilder {
    greeting: Option<Value>,
    handler: Option<Handler>,
    path: Option<PathBuf>,
}

impl FakeQmpBuilder {
    /// Greet with this QEMU version (default 7.2.0).
    pub fn version(mut self, major: u64, minor: u64, micro: u64) -> Self {
        self.greeting = Some(greeting_json(major, minor, micro));
        self
    }

    /// Greet with this exact JSON object.
    pub fn greeting(mut self, g: Value) -> Self {
        self.greeting = Some(g);
        self
    }

    /// Never send a greeting (to test handshake timeouts).
    pub fn no_greeting(mut self) -> Self {
        self.greeting = None;
        self
    }

    /// Answer with this handler instead of the default one.
    pub fn handler(mut self, f: impl Fn(&Command) -> Reply + Send + Sync + 'static) -> Self {
        self.handler = Some(Arc::new(f));
        self
    }

    /// Listen on this path instead of `qmp.sock` in a new temporary
    /// directory (the caller cleans it up).
    pub fn socket_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Binds the socket and starts accepting clients.
    pub async fn start(self) -> io::Result<FakeQmp> {
        let (dir, path) = match self.path {
            Some(p) => (None, p),
            None => {
                let dir = tempfile::Builder::new().prefix("vmove-fakeqmp").tempdir()?;
                let path = dir.path().join("qmp.sock");
                (Some(dir), path)
            }
        };
        let listener = UnixListener::bind(&path)?;
        let version = self
            .greeting
            .as_ref()
            .and_then(|g| g.pointer("/QMP/version").cloned())
            .unwrap_or_else(|| greeting_json(7, 2, 0)["QMP"]["version"].clone());
        let handler = self.handler.unwrap_or_else(|| default_handler(version));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            greeting: self.greeting,
            handler: Mutex::new(handler),
            queued: Mutex::new(HashMap::new()),
            commands: Mutex::new(Vec::new()),
            cmd_tx,
            cmd_rx: tokio::sync::Mutex::new(cmd_rx),
            fds: Mutex::new(Vec::new()),
            current: Mutex::new(None),
            conn_tasks: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(FakeQmp {
            path,
            _dir: dir,
            state,
            accept,
        })
    }
}

/// The recording fake QMP server. Dropping it stops it and closes the
/// client connection.
pub struct FakeQmp {
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for FakeQmp {
    fn drop(&mut self) {
        self.accept.abort();
        for t in lock(&self.state.conn_tasks).drain(..) {
            t.abort();
        }
    }
}

impl FakeQmp {
    /// Starts a fake with the default greeting (QEMU 7.2.0) and handler.
    pub async fn start() -> io::Result<FakeQmp> {
        Self::builder().start().await
    }

    /// A builder for custom greeting / handler.
    pub fn builder() -> FakeQmpBuilder {
        FakeQmpBuilder {
            greeting: Some(greeting_json(7, 2, 0)),
            handler: None,
            path: None,
        }
    }

    /// The socket path to connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the handler.
    pub fn set_handler(&self, f: impl Fn(&Command) -> Reply + Send + Sync + 'static) {
        *lock(&self.state.handler) = Arc::new(f);
    }

    /// Queues a canned reply for the next `cmd`; queued replies are used
    /// first, in order, before the handler.
    pub fn push_reply(&self, cmd: &str, reply: Reply) {
        lock(&self.state.queued)
            .entry(cmd.to_string())
            .or_default()
            .push_back(reply);
    }

    /// Every command received so far, in order.
    pub fn commands(&self) -> Vec<Command> {
        lock(&self.state.commands).clone()
    }

    /// The names of every command received so far.
    pub fn command_names(&self) -> Vec<String> {
        lock(&self.state.commands)
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// The next received command not yet returned by this method (a
    /// stream independent of [`FakeQmp::commands`]). Panics after
    /// [`WAIT_GUARD`].
    pub async fn next_command(&self) -> Command {
        let mut rx = self.state.cmd_rx.lock().await;
        match tokio::time::timeout(WAIT_GUARD, rx.recv()).await {
            Ok(Some(c)) => c,
            Ok(None) => panic!("fake qmp: command stream ended"),
            Err(_) => panic!("fake qmp: no command within {WAIT_GUARD:?}"),
        }
    }

    /// Like [`FakeQmp::next_command`], skipping commands with other names.
    pub async fn wait_command(&self, name: &str) -> Command {
        let deadline = tokio::time::Instant::now() + WAIT_GUARD;
        loop {
            let c = tokio::time::timeout_at(deadline, self.next_command())
                .await
                .unwrap_or_else(|_| panic!("fake qmp: no {name} within {WAIT_GUARD:?}"));
            if c.name == name {
                return c;
            }
        }
    }

    /// Sends a reply for a command the handler ignored. Returns false when
    /// no client is connected.
    pub fn reply(&self, id: Option<&Value>, reply: Reply) -> bool {
        match reply_lines(id, reply) {
            (lines, false) => lines.into_iter().all(|l| self.send(Out::Line(l))),
            (lines, true) => {
                lines.into_iter().all(|l| self.send(Out::Line(l))) && self.send(Out::Close)
            }
        }
    }

    /// Emits an event with the current time as timestamp.
    pub fn emit_event(&self, name: &str, data: Value) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let ev = json!({
            "event": name,
            "data": data,
            "timestamp": { "seconds": now.as_secs(), "microseconds": now.subsec_micros() },
        });
        self.send(Out::Line(ev.to_string()))
    }

    /// Sends one raw line (a newline is added) to the current client.
    pub fn send_raw(&self, line: &str) -> bool {
        self.send(Out::Line(line.to_string()))
    }

    /// Closes the current client connection.
    pub fn disconnect(&self) -> bool {
        self.send(Out::Close)
    }

    /// Takes every fd received so far.
    pub fn take_fds(&self) -> Vec<ReceivedFd> {
        std::mem::take(&mut *lock(&self.state.fds))
    }

    /// How many clients have connected so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    fn send(&self, out: Out) -> bool {
        match &*lock(&self.state.current) {
            Some(tx) => tx.send(out).is_ok(),
            None => false,
        }
    }
}

fn greeting_json(major: u64, minor: u64, micro: u64) -> Value {
    json!({"QMP": {
        "version": {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": "vmove-fake"},
        "capabilities": ["oob"],
    }})
}

/// The stock answer for a command: plausible QEMU 7.2 replies for
/// `query-version`, `query-status`, `query-migrate`, `query-cpus-fast`,
/// `add-fd`, and `{}` for everything else. Custom handlers can fall back
/// to it.
pub fn default_reply(c: &Command) -> Reply {
    match c.name.as_str() {
        "query-version" => Reply::Return(greeting_json(7, 2, 0)["QMP"]["version"].clone()),
        "query-status" => {
            Reply::Return(json!({"running": true, "singlestep": false, "status": "running"}))
        }
        "query-cpus-fast" => Reply::Return(json!([])),
        "add-fd" => {
            let set = c
                .arguments
                .as_ref()
                .and_then(|a| a.get("fdset-id"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Reply::Return(json!({"fdset-id": set, "fd": 20}))
        }
        _ => Reply::ok(),
    }
}

fn default_handler(version: Value) -> Handler {
    let next_fd = AtomicI64::new(20);
    Arc::new(move |c: &Command| match c.name.as_str() {
        "query-version" => Reply::Return(version.clone()),
        "add-fd" => match default_reply(c) {
            Reply::Return(mut v) => {
                v["fd"] = next_fd.fetch_add(1, Ordering::SeqCst).into();
                Reply::Return(v)
            }
            other => other,
        },
        _ => default_reply(c),
    })
}

/// Lines for a reply, and whether to close afterwards.
fn reply_lines(id: Option<&Value>, reply: Reply) -> (Vec<String>, bool) {
    let with_id = |mut v: Value| {
        if let Some(id) = id {
            v["id"] = id.clone();
        }
        v.to_string()
    };
    match reply {
        Reply::Return(v) => (vec![with_id(json!({ "return": v }))], false),
        Reply::Error { class, desc } => (
            vec![with_id(json!({"error": {"class": class, "desc": desc}}))],
            false,
        ),
        Reply::Ignore => (Vec::new(), false),
        Reply::Lines(lines) => (lines, false),
        Reply::Close => (Vec::new(), true),
    }
}

async fn accept_loop(listener: UnixListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "fake qmp: accept failed");
                return;
            }
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&state.current) = Some(tx);
        let task = tokio::spawn(serve(stream, state.clone(), rx));
        lock(&state.conn_tasks).push(task);
    }
}

async fn write_line(w: &mut OwnedWriteHalf, line: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

/// Reads once from the socket, collecting SCM_RIGHTS descriptors.
fn recv_chunk(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 16]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed `r` in our fd table for
                // this message; nothing else refers to it, so we own it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

async fn serve(stream: UnixStream, state: Arc<State>, mut out: mpsc::UnboundedReceiver<Out>) {
    let (rd, mut wr) = stream.into_split();
    if let Some(g) = &state.greeting {
        if write_line(&mut wr, &g.to_string()).await.is_err() {
            return;
        }
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            ready = rd.as_ref().readable() => {
                if ready.is_err() {
                    return;
                }
                let sock = rd.as_ref();
                let got = sock.try_io(Interest::READABLE, || recv_chunk(sock.as_raw_fd(), &mut chunk));
                let (n, new_fds) = match got {
                    Ok(v) => v,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                fds.extend(new_fds);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let (lines, close) = handle_line(&state, &line, &mut fds);
                    for l in lines {
                        if write_line(&mut wr, &l).await.is_err() {
                            return;
                        }
                    }
                    if close {
                        return;
                    }
                }
            }
            msg = out.recv() => match msg {
                Some(Out::Line(l)) => {
                    if write_line(&mut wr, &l).await.is_err() {
                        return;
                    }
                }
                Some(Out::Close) | None => return,
            },
        }
    }
}

/// Records one received line and computes the answer.
fn handle_line(state: &State, line: &[u8], fds: &mut Vec<OwnedFd>) -> (Vec<String>, bool) {
    let line = line.trim_ascii();
    if line.is_empty() {
        return (Vec::new(), false);
    }
    let Ok(raw) = serde_json::from_slice::<Value>(line) else {
        tracing::warn!("fake qmp: client sent a non-JSON line");
        return (Vec::new(), false);
    };
    let oob = raw.get("exec-oob").is_some();
    let Some(name) = raw
        .get(if oob { "exec-oob" } else { "execute" })
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        tracing::warn!(msg = %raw, "fake qmp: client sent a non-command");
        return (Vec::new(), false);
    };
    let cmd = Command {
        arguments: raw.get("arguments").cloned(),
        id: raw.get("id").cloned(),
        fds: fds.len(),
        name,
        oob,
        raw,
    };
    if !fds.is_empty() {
        let fdname = cmd.arg_str("fdname").map(str::to_string);
        let mut store = lock(&state.fds);
        for fd in fds.drain(..) {
            store.push(ReceivedFd {
                command: cmd.name.clone(),
                fdname: fdname.clone(),
                fd,
            });
        }
    }
    lock(&state.commands).push(cmd.clone());
    let _ = state.cmd_tx.send(cmd.clone());
    let queued = lock(&state.queued)
        .get_mut(&cmd.name)
        .and_then(VecDeque::pop_front);
    let reply = match queued {
        Some(r) => r,
        None => {
            let handler = lock(&state.handler).clone();
            handler(&cmd)
        }
    };
    reply_lines(cmd.id.as_ref(), reply)
}
