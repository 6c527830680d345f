//! Console sessions (`guest_console`): the guest's serial console over the agent's mTLS
//! connection.
//!
//! Output comes from the guest's `serial.log` in its run directory, which QEMU's console
//! chardev writes whether or not anyone is attached: the session follows the file from an
//! offset (every byte has one, so a client can ask for exactly what it has not seen) and
//! sends each new chunk with its offset. Input goes to QEMU's console chardev: the guest's
//! console port on 127.0.0.1 (every guest gets one at define), or for a guest without a
//! port the unix socket `console.sock` in its run directory. QEMU serves one chardev
//! client at a time, so one session per guest holds the input (the writer); later
//! sessions get output only (`writable: false`), as do sessions whose chardev cannot be
//! reached.
//!
//! When the guest's QEMU here ends (a completed live migration out, a stop, a crash) the
//! session sends what is left of the log and an `end` line with the reason: the file stays
//! open, so every byte the source QEMU wrote reaches the client even after the run
//! directory was moved aside.
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vmove_api::server::Duplex;
use vmove_api::{ConsoleAttached, ConsoleEnd, ConsoleLine, ConsoleReplay, GuestState, Reply, CONSOLE_BEAT, CONSOLE_CHUNK};
use vmove_host::qemu::RunFiles;

use crate::error::{fail, AgentError, Result, ResultExt};
use crate::guests::Agent;

/// How often the log is read for new output (also right after QEMU wrote to the socket).
const POLL: Duration = Duration::from_millis(50);

/// At most this much of the log is replayed; older bytes are skipped (the first data
/// line's offset says from where).
pub const MAX_REPLAY: u64 = 1 << 20;

/// Where a session starts in a log of `len` bytes.
pub fn start_offset(replay: ConsoleReplay, len: u64) -> u64 {
    let wanted = match replay {
        ConsoleReplay::Live => len,
        ConsoleReplay::Tail(n) => len.saturating_sub(n),
        ConsoleReplay::From(o) => o.min(len),
    };
    wanted.max(len.saturating_sub(MAX_REPLAY))
}

/// Why the session ends, once the QEMU it followed is gone: from the guest as the agent
/// holds it now (`None`: no longer defined here) and whether its live migration out
/// completed (the source's last step marks it before it ends the QEMU).
pub fn end_reason(now: Option<GuestState>, migrated_out: bool) -> ConsoleEnd {
    match now {
        _ if migrated_out => ConsoleEnd::Moved,
        None => ConsoleEnd::Gone,
        Some(GuestState::Crashed) => ConsoleEnd::Crashed,
        Some(_) => ConsoleEnd::Stopped,
    }
}

/// The writer slot of one guest, released on drop.
struct Writer {
    slots: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
    }
}

/// QEMU's console chardev, for input.
enum Input {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn open_input(run: &Path, port: Option<u16>) -> Option<Input> {
    let t = Duration::from_secs(2);
    let r = match port {
        Some(p) => tokio::time::timeout(t, tokio::net::TcpStream::connect(("127.0.0.1", p))).await.map(|r| r.map(Input::Tcp)),
        None => tokio::time::timeout(t, tokio::net::UnixStream::connect(RunFiles::console(run))).await.map(|r| r.map(Input::Unix)),
    };
    match r {
        Ok(Ok(i)) => Some(i),
        Ok(Err(e)) => {
            tracing::info!(run = %run.display(), "console input unavailable (output only): {e}");
            None
        }
        Err(_) => {
            tracing::info!(run = %run.display(), "console input unavailable (output only): connect timed out");
            None
        }
    }
}

impl Input {
    fn split(&mut self) -> (Box<dyn AsyncRead + Unpin + Send + '_>, Box<dyn AsyncWrite + Unpin + Send + '_>) {
        match self {
            Input::Unix(s) => {
                let (r, w) = s.split();
                (Box::new(r), Box::new(w))
            }
            Input::Tcp(s) => {
                let (r, w) = s.split();
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// Reads what the log holds past `*offset` and sends it.
/// Returns whether it sent anything.
async fn pump(log: &mut std::fs::File, offset: &mut u64, out: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<bool> {
    let mut buf = vec![0u8; CONSOLE_CHUNK];
    let mut sent = false;
    loop {
        log.seek(SeekFrom::Start(*offset))?;
        let n = log.read(&mut buf)?;
        if n == 0 {
            return Ok(sent);
        }
        sent = true;
        send(out, &ConsoleLine::data(*offset, &buf[..n])).await?;
        *offset = offset.saturating_add(n as u64);
    }
}

async fn send(out: &mut (impl AsyncWrite + Unpin), line: &ConsoleLine) -> std::io::Result<()> {
    let mut b = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    b.push(b'\n');
    out.write_all(&b).await?;
    out.flush().await
}

/// Serves one session on `conn`. `Err`: refused before anything was sent (the caller
/// answers with it); `Ok`: the session ran and is over.
pub async fn serve(agent: &Arc<Agent>, name: &str, replay: ConsoleReplay, conn: &mut dyn Duplex) -> Result<()> {
    let (pid, state, port) = {
        let g = agent.lock_guests();
        let guest = g.get(name).ok_or_else(|| agent.no_such(name))?;
        (guest.pid, guest.state, guest.spec.console_port)
    };
    let Some(pid) = pid else {
        fail!(WrongState, "guest {name} is not running on {} ({})", agent.cfg.name, format!("{state:?}").to_lowercase());
    };
    // It runs here: a mark from an earlier move away is stale.
    agent.moved_out(name, true);
    let run = agent.run_dir(name);
    let path = RunFiles::serial_log(&run);
    let mut log = std::fs::File::open(&path).with_ctx(|| format!("open {}", path.display()))?;
    let len = log.metadata().with_ctx(|| format!("stat {}", path.display()))?.len();
    let mut offset = start_offset(replay, len);
    let slot = {
        let slots = agent.console_writers.clone();
        let free = slots.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
        free.then(|| Writer { slots, name: name.to_string() })
    };
    let mut input = match slot {
        Some(_) => open_input(&run, port).await,
        None => None,
    };
    // No chardev to write to (a guest started with a null chardev): leave the slot free.
    let slot = slot.filter(|_| input.is_some());
    let attached = ConsoleAttached { host: agent.cfg.name.clone(), guest: name.to_string(), offset, writable: input.is_some() };
    tracing::info!(guest = %name, offset, writable = attached.writable, "console attached");
    let mut reply = serde_json::to_vec(&Reply::ok(attached)).map_err(AgentError::from)?;
    reply.push(b'\n');
    let (mut from_client, mut to_client) = tokio::io::split(conn);
    if to_client.write_all(&reply).await.is_err() || to_client.flush().await.is_err() {
        return Ok(());
    }
    let (mut qemu_out, mut qemu_in) = match input.as_mut() {
        Some(i) => {
            let (r, w) = i.split();
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    let mut keys = vec![0u8; 4096];
    let mut echo = vec![0u8; 4096];
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet_since = std::time::Instant::now();
    let ended = loop {
        tokio::select! {
            n = from_client.read(&mut keys) => match n {
                Ok(n) if n > 0 => {
                    if let Some(w) = qemu_in.as_mut() {
                        if w.write_all(&keys[..n]).await.is_err() {
                            qemu_in = None;
                        }
                    }
                }
                _ => break None,
            },
            // QEMU writes its output to the socket too: drain it (the log is the source)
            // and take it as a sign that the log has grown.
            n = async { match qemu_out.as_mut() { Some(r) => r.read(&mut echo).await, None => std::future::pending().await } } => {
                if !matches!(n, Ok(n) if n > 0) {
                    qemu_out = None;
                }
                match pump(&mut log, &mut offset, &mut to_client).await {
                    Err(_) => break None,
                    Ok(true) => quiet_since = std::time::Instant::now(),
                    Ok(false) => {}
                }
            }
            _ = tick.tick() => {
                match pump(&mut log, &mut offset, &mut to_client).await {
                    Err(_) => break None,
                    Ok(true) => quiet_since = std::time::Instant::now(),
                    Ok(false) if quiet_since.elapsed() >= CONSOLE_BEAT => {
                        if send(&mut to_client, &ConsoleLine::Beat).await.is_err() {
                            break None;
                        }
                        quiet_since = std::time::Instant::now();
                    }
                    Ok(false) => {}
                }
                let now = agent.lock_guests().get(name).map(|g| (g.pid, g.state));
                if now.is_none_or(|(p, _)| p != Some(pid)) {
                    break Some(end_reason(now.map(|(_, s)| s), agent.moved_out(name, false)));
                }
            }
        }
    };
    if let Some(reason) = ended {
        // QEMU is gone: whatever it wrote is in the file.
        if pump(&mut log, &mut offset, &mut to_client).await.is_ok() {
            let _ = send(&mut to_client, &ConsoleLine::End { offset, reason }).await;
        }
        tracing::info!(guest = %name, ?reason, offset, "console session ended");
    }
    drop(slot);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(start_offset(ConsoleReplay::Live, 500), 500);
        assert_eq!(start_offset(ConsoleReplay::Tail(100), 500), 400);
        assert_eq!(start_offset(ConsoleReplay::Tail(1000), 500), 0);
        assert_eq!(start_offset(ConsoleReplay::From(120), 500), 120);
        assert_eq!(start_offset(ConsoleReplay::From(u64::MAX), 500), 500, "past the end: the end");
        let big = 10 * MAX_REPLAY;
        assert_eq!(start_offset(ConsoleReplay::From(0), big), big - MAX_REPLAY, "replay is capped");
    }

    #[test]
    fn reasons() {
        assert_eq!(end_reason(None, true), ConsoleEnd::Moved);
        assert_eq!(end_reason(Some(GuestState::Stopped), true), ConsoleEnd::Moved);
        assert_eq!(end_reason(None, false), ConsoleEnd::Gone);
        assert_eq!(end_reason(Some(GuestState::Crashed), false), ConsoleEnd::Crashed);
        assert_eq!(end_reason(Some(GuestState::Stopped), false), ConsoleEnd::Stopped);
    }
}
