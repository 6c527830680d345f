//! Issue 18, item 5: `vmove guest console` through a pseudo-terminal follows the guest
//! across a live migration (and its new host's agent restarting) without reconnecting by
//! hand, and Ctrl-] ends it.
mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::termios::{self, LocalFlags};

/// Everything the console wrote to the terminal, read by a thread of its own.
struct Screen(Arc<Mutex<Vec<u8>>>);

impl Screen {
    fn follow(master: OwnedFd) -> Screen {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut f = std::fs::File::from(master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the console and everything else holding the terminal has exited.
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Screen(seen)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Sweep numbers of the `VERIFY OK <n>` lines in `text`.
fn sweeps(text: &str) -> Vec<u64> {
    text.split("VERIFY OK ").skip(1).filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect()
}

#[test]
fn console_follows_a_live_migration_and_ctrl_bracket_leaves() {
    let lab = Lab::up("console", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.91", 5, false);

    // One-line errors: an unknown guest, a stopped guest.
    let e = lab.fails(&["guest", "console", "nosuch"]);
    assert!(e.contains("no guest named nosuch"), "{e}");
    lab.ok(&["guest", "create", "vm2", "--host", "host2", "--memory", "128M"]);
    let e = lab.fails(&["guest", "console", "vm2"]);
    assert!(e.contains("guest vm2 is not running on host2 (stopped)"), "{e}");

    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = pty.slave;
    let tty = || Stdio::from(slave.try_clone().expect("dup the pty"));
    let mut console = Command::new(vmove_bin())
        .args(["guest", "console", "vm1"])
        .env("VMOVE_CLUSTER", &lab.cluster)
        .stdin(tty())
        .stdout(tty())
        .stderr(tty())
        .spawn()
        .expect("run vmove guest console");
    let screen = Screen::follow(pty.master.try_clone().expect("dup the master"));
    let mut keyboard = std::fs::File::from(pty.master);

    // Output before the move, live (no replay asked): a sweep newer than the log's.
    wait_for("the attach notice", Duration::from_secs(30), || screen.text().contains("[vmove: console of vm1 on host1 (Ctrl-] to leave)]").then_some(()));
    let in_raw_mode = termios::tcgetattr(slave.as_fd()).expect("tcgetattr");
    assert!(!in_raw_mode.local_flags.contains(LocalFlags::ICANON), "the console puts the terminal in raw mode");
    let before = wait_for("a status line from host1", Duration::from_secs(60), || sweeps(&screen.text()).last().copied());
    // Keystrokes reach the guest: its console echoes them (the kernel's tty).
    keyboard.write_all(b"typed-on-host1").unwrap();
    wait_for("the echo from host1", Duration::from_secs(30), || screen.text().contains("typed-on-host1").then_some(()));

    // A second session meanwhile (not a terminal, --json): output only, the first holds the input.
    let mut second = Command::new(vmove_bin())
        .args(["--json", "guest", "console", "vm1"])
        .env("VMOVE_CLUSTER", &lab.cluster)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second console");
    let mut notice = String::new();
    let mut err = second.stderr.take().unwrap();
    wait_for("the second session's attach event", Duration::from_secs(30), || {
        let mut b = [0u8; 512];
        let n = err.read(&mut b).unwrap_or(0);
        notice.push_str(&String::from_utf8_lossy(&b[..n]));
        notice.contains('\n').then_some(())
    });
    let ev: serde_json::Value = serde_json::from_str(notice.lines().next().unwrap()).expect("a JSON line");
    assert_eq!((ev["event"].as_str(), ev["host"].as_str(), ev["writable"].as_bool()), (Some("attached"), Some("host1"), Some(false)), "{ev}");
    // SIGTERM ends a session the way Ctrl-] does.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_for("the second session to end", Duration::from_secs(20), || second.try_wait().expect("wait"));
    err.read_to_string(&mut notice).unwrap();
    assert!(status.success() && notice.contains(r#""event":"detached""#) && notice.contains(r#""reason":"sigterm""#), "{status}: {notice}");

    let out = lab.ok(&["migrate", "vm1", "--to", "host2"]);
    assert!(out.contains("Step MIGRATE_GUEST completed successfully"), "{out}");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);

    // The same session, reattached by itself, shows what the guest prints on host2.
    let notice = "[vmove: guest vm1 moved to host2, console reattached]";
    wait_for("the reattach notice", Duration::from_secs(120), || screen.text().contains(notice).then_some(()));
    let after = wait_for("a status line from host2", Duration::from_secs(90), || {
        let t = screen.text();
        let tail = &t[t.find(notice)?..];
        sweeps(tail).into_iter().find(|&n| n > before)
    });
    keyboard.write_all(b"typed-on-host2").unwrap();
    wait_for("the echo from host2", Duration::from_secs(30), || {
        let t = screen.text();
        t[t.find(notice)?..].contains("typed-on-host2").then_some(())
    });
    // An agent restart drops the connection: the session reattaches to the same host by
    // itself (the guest was re-adopted) and goes on from what it had seen.
    let dir = lab.dir.to_str().unwrap();
    lab.ok(&["lab", "agent", "--dir", dir, "host2", "kill"]);
    lab.ok(&["lab", "agent", "--dir", dir, "host2", "start"]);
    let again = "[vmove: console of vm1 on host2 reattached]";
    wait_for("the reattach after the agent restart", Duration::from_secs(120), || screen.text().contains(again).then_some(()));
    wait_for("a status line after the restart", Duration::from_secs(90), || {
        let t = screen.text();
        sweeps(&t[t.find(again)?..]).into_iter().find(|&n| n > after)
    });

    // The guest prints one line per sweep: across the switchover and the restart none is
    // lost and none shown twice (the source's log to its end, then the target's from its
    // start; after the restart, from the offset seen).
    let t = screen.text();
    let seen = sweeps(&t);
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "consecutive sweeps across the move: {seen:?}\n{t}");
    let n_before_notice = sweeps(&t[..t.find(notice).unwrap()]).into_iter().max().unwrap_or(0);
    eprintln!("console: sweeps {seen:?}: up to {n_before_notice} before the move, {after} after it on host2");

    // Ctrl-] ends the session; the terminal is back as it was.
    keyboard.write_all(&[0x1d]).unwrap();
    let status = wait_for("the console to end", Duration::from_secs(20), || console.try_wait().expect("wait"));
    assert!(status.success(), "{status}: {}", screen.text());
    let restored = termios::tcgetattr(slave.as_fd()).expect("tcgetattr");
    assert!(restored.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO), "terminal settings restored");
    wait_for("the closing notice", Duration::from_secs(5), || screen.text().contains("[vmove: console closed (Ctrl-])]").then_some(()));

    // A script's session (no terminal, --json) ends by itself when the guest stops.
    let mut script = Command::new(vmove_bin())
        .args(["--json", "guest", "console", "vm1"])
        .env("VMOVE_CLUSTER", &lab.cluster)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script console");
    let events = Arc::new(Mutex::new(String::new()));
    let (e, mut err) = (events.clone(), script.stderr.take().unwrap());
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        while let Ok(n) = err.read(&mut b) {
            if n == 0 {
                break;
            }
            e.lock().unwrap().push_str(&String::from_utf8_lossy(&b[..n]));
        }
    });
    wait_for("the script's attach event", Duration::from_secs(30), || events.lock().unwrap().contains(r#""event":"attached""#).then_some(()));
    lab.ok(&["guest", "stop", "vm1", "--force"]);
    let status = wait_for("the script's session to end", Duration::from_secs(30), || script.try_wait().expect("wait"));
    assert!(status.success(), "{status}");
    let ended = events.lock().unwrap().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).next_back().expect("events");
    assert_eq!((ended["event"].as_str(), ended["reason"].as_str()), (Some("ended"), Some("guest vm1 stopped")), "{ended}");
}
