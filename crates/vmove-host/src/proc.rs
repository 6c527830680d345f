//! Process helpers.
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the field after the parenthesised command name
            s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false)
        }
        Err(_) => false,
    }
}

/// The process's command line, NUL-separated arguments.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into()).collect())
        .unwrap_or_default()
}

/// The CPU time, in clock ticks, of a QEMU's vCPU threads (`CPU n/TCG`, `CPU n/KVM`: QEMU
/// names them so with `debug-threads=on`): it grows while the guest runs and stands still
/// while QEMU is paused. `None` when the process is gone or has no vCPU thread.
pub fn vcpu_ticks(pid: u32) -> Option<u64> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let mut total = None;
    for t in p.tasks().ok()?.flatten() {
        let Ok(stat) = t.stat() else { continue };
        if stat.comm.starts_with("CPU ") {
            total = Some(total.unwrap_or(0u64).saturating_add(stat.utime).saturating_add(stat.stime));
        }
    }
    total
}

/// Sends SIGKILL; ignores a process that is already gone.
pub fn kill9(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// Sends SIGTERM; ignores a process that is already gone.
pub fn term(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
}

/// The TCP addresses a process listens on (its own sockets, in its network namespace):
/// how to learn the port of a listener when its owner cannot be asked (a QEMU whose
/// main loop waits on a missing post-copy page does not answer `query-migrate`).
pub fn listening(pid: u32) -> std::io::Result<Vec<std::net::SocketAddr>> {
    use procfs::process::{FDTarget, Process};
    let io = |e: procfs::ProcError| std::io::Error::other(format!("/proc/{pid}: {e}"));
    let p = Process::new(i32::try_from(pid).map_err(std::io::Error::other)?).map_err(io)?;
    let mine: std::collections::HashSet<u64> = p
        .fd()
        .map_err(io)?
        .filter_map(|f| match f.ok()?.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    let mut entries = p.tcp().map_err(io)?;
    entries.extend(p.tcp6().unwrap_or_default());
    Ok(entries
        .into_iter()
        .filter(|e| e.state == procfs::net::TcpState::Listen && mine.contains(&e.inode))
        .map(|e| e.local_address)
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn listening_finds_this_process_listener_and_nothing_else() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let _connected = std::net::TcpStream::connect(addr).unwrap();
        let found = super::listening(std::process::id()).unwrap();
        assert!(found.contains(&addr), "{found:?}");
        assert!(found.iter().all(|a| a.port() != 0));
        drop(l);
        assert!(!super::listening(std::process::id()).unwrap().contains(&addr));
        assert!(super::listening(u32::MAX).is_err());
    }
}
