//! `vmove guest console NAME`: the guest's serial console through the agents, like `virsh
//! console`, that follows the guest across live migrations (docs/console.md).
//!
//! One session is one `guest_console` stream from the agent of the guest's host. When it
//! ends ([`decide::Ended`]) the client finds where the guest is now (the cluster, then
//! every agent if the cluster still names the old host) and reattaches by itself
//! ([`decide::decide`]), replaying the new host's log from what it has not seen.
mod decide;
mod escape;
mod term;

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures::future::join_all;
use serde_json::json;
use tokio::sync::mpsc;
use vmove_api::{ConsoleRead, ConsoleReplay, GuestStatus, Request};

use crate::ctx::Ctx;
use decide::{decide, Ended, Found, Next};

/// How long the client looks for the guest after a session ended (a live migration's
/// end, an agent restart) before it gives up.
const FIND_FOR: Duration = Duration::from_secs(120);

/// How often it asks meanwhile.
const FIND_EVERY: Duration = Duration::from_millis(300);

/// Notices on stderr: one line each, `[vmove: ...]`, or JSON lines with `--json`.
struct Notices {
    json: bool,
    raw: bool,
}

impl Notices {
    fn say(&self, text: &str, event: serde_json::Value) {
        let line = if self.json { event.to_string() } else { format!("[vmove: {text}]") };
        let end = if self.raw { "\r\n" } else { "\n" };
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "{line}{end}");
        let _ = e.flush();
    }
}

/// Keystrokes from stdin, read by a thread of their own (a blocked read must not hold up
/// the end of the program). The channel closes at the end of stdin.
fn keystrokes() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        loop {
            let n = match std::io::Read::read(&mut std::io::stdin().lock(), &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    rx
}

/// Where guest `name` is: the cluster's host and its state there; when the cluster names
/// `stale` (the host a session just ended on) without a running copy, every other agent
/// is asked for one.
async fn find(ctx: &Ctx, name: &str, stale: &str) -> Result<Option<Found>> {
    let cluster = ctx.cluster().await?;
    let Some(g) = cluster.guest(name) else { return Ok(None) };
    let clients = ctx.clients(&cluster)?;
    let ask = |host: String, c: vmove_api::AgentClient| async move {
        let st: Option<GuestStatus> = c.call(&Request::GuestShow { name: name.to_string() }).await.ok();
        Found { host, state: st.map(|s| s.state) }
    };
    let named = match clients.iter().find(|(h, _)| *h == g.host) {
        Some((h, c)) => ask(h.clone(), c.clone()).await,
        None => Found { host: g.host.clone(), state: None },
    };
    let running = |f: &Found| matches!(f.state, Some(vmove_api::GuestState::Running | vmove_api::GuestState::Paused));
    if named.host != stale || running(&named) {
        return Ok(Some(named));
    }
    let others = join_all(clients.into_iter().filter(|(h, _)| *h != g.host).map(|(h, c)| ask(h, c))).await;
    Ok(Some(others.into_iter().find(running).unwrap_or(named)))
}

/// `vmove guest console NAME [--replay N]`.
pub async fn run(ctx: &Ctx, name: &str, replay_bytes: u64) -> Result<()> {
    let max = vmove_api::limits::CONSOLE_REPLAY_BYTES;
    if !max.contains(&replay_bytes) {
        bail!("--replay {replay_bytes}: at most {} bytes", max.end());
    }
    // `kill` (SIGTERM) ends the session the way Ctrl-] does: the terminal is restored.
    // Caught from the start, before anything is announced: a SIGTERM sent as soon as the
    // attach notice is seen must find the handler in place.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let cluster = ctx.cluster().await?;
    let mut host =
        cluster.guest(name).map(|g| g.host.clone()).ok_or_else(|| anyhow!("no guest named {name} in {}", ctx.truth(&cluster)))?;
    let tty = std::io::stdin().is_terminal();
    let replay = if replay_bytes > 0 { ConsoleReplay::Tail(replay_bytes) } else { ConsoleReplay::Live };
    // The first attach fails with one line (unknown guest, stopped guest) before the
    // terminal changes.
    let mut session = ctx.client(&cluster, &host)?.console(name, replay).await?;
    let _raw = if tty { Some(term::RawMode::enter()?) } else { None };
    let say = Notices { json: ctx.json, raw: tty };
    let (a, ..) = &session;
    let ro = if a.writable { "" } else { ", read-only: another session holds its input" };
    say.say(
        &format!("console of {name} on {host}{ro}{}", if tty { " (Ctrl-] to leave)" } else { "" }),
        json!({ "event": "attached", "guest": name, "host": host, "offset": a.offset, "writable": a.writable }),
    );
    let mut keys = Some(keystrokes());
    loop {
        let (a, mut reader, mut writer) = session;
        let mut seen = a.offset;
        let ended = loop {
            tokio::select! {
                k = async { match keys.as_mut() { Some(k) => k.recv().await, None => std::future::pending().await } } => match k {
                    Some(k) => {
                        let (send, esc) = if tty { escape::split_escape(&k) } else { (&k[..], false) };
                        // A lost connection shows on the reading side.
                        let _ = writer.send(send).await;
                        if esc {
                            writer.close().await;
                            say.say("console closed (Ctrl-])", json!({ "event": "detached", "guest": name, "host": host, "reason": "escape" }));
                            return Ok(());
                        }
                    }
                    // End of stdin: a terminal closed ends the session; a script's input
                    // ended only stops the input.
                    None if tty => return Ok(()),
                    None => keys = None,
                },
                _ = term.recv() => {
                    writer.close().await;
                    say.say("console closed (SIGTERM)", json!({ "event": "detached", "guest": name, "host": host, "reason": "sigterm" }));
                    return Ok(());
                }
                r = reader.next() => match r? {
                    ConsoleRead::Data { offset, bytes } => {
                        let mut out = std::io::stdout().lock();
                        match out.write_all(&bytes).and_then(|()| out.flush()) {
                            // Whoever read stdout is gone (`| grep -m1 ...`): the session is over.
                            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                            r => r?,
                        }
                        seen = offset.saturating_add(bytes.len() as u64);
                    }
                    ConsoleRead::End { offset, reason } => {
                        seen = seen.max(offset);
                        break Ended::Agent(reason);
                    }
                    ConsoleRead::Lost => break Ended::Lost,
                },
            }
        };
        let deadline = Instant::now() + FIND_FOR;
        session = loop {
            let found = find(ctx, name, &host).await.unwrap_or_else(|_| Some(Found { host: host.clone(), state: None }));
            match decide(name, &host, seen, ended, found.as_ref()) {
                Next::Exit(why) => {
                    say.say(&format!("{why}, console closed"), json!({ "event": "ended", "guest": name, "host": host, "reason": why }));
                    return Ok(());
                }
                Next::Wait => {}
                Next::Reattach { host: to, replay, moved } => {
                    let cluster = ctx.cluster().await?;
                    if let Ok(s) = ctx.client(&cluster, &to)?.console(name, replay).await {
                        let text = if moved {
                            format!("guest {name} moved to {to}, console reattached")
                        } else {
                            format!("console of {name} on {to} reattached")
                        };
                        say.say(
                            &text,
                            json!({ "event": "reattached", "guest": name, "from": host, "to": to, "moved": moved, "offset": s.0.offset, "writable": s.0.writable }),
                        );
                        host = to;
                        break s;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("lost the console of {name}: not found running anywhere within {} s (last on {host})", FIND_FOR.as_secs());
            }
            tokio::time::sleep(FIND_EVERY).await;
        };
    }
}
