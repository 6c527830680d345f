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

/// The bytes a process has written to its established TCP connections (to `peer` only,
/// when given) that its kernel still holds unacknowledged: the sum of their send queues
/// (`tx_queue` of `/proc/net/tcp`, in the process's network namespace). For a migrating
/// QEMU, what it counts as sent but the target has not received yet.
pub fn send_backlog(pid: u32, peer: Option<std::net::SocketAddr>) -> std::io::Result<u64> {
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
        .filter(|e| e.state == procfs::net::TcpState::Established && mine.contains(&e.inode))
        .filter(|e| peer.is_none_or(|a| same_endpoint(e.remote_address, a)))
        .map(|e| u64::from(e.tx_queue))
        .sum())
}

/// Whether two socket addresses name the same endpoint (an IPv4 peer may show as
/// IPv4-mapped IPv6 on a dual-stack socket).
fn same_endpoint(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    let canon = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
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

    #[test]
    fn send_backlog_counts_what_a_peer_has_not_taken_on_that_connection_only() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let _c2 = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let pid = std::process::id();
        assert_eq!(super::send_backlog(pid, Some(addr)).unwrap(), 0, "nothing written yet");
        // The peer never reads: once its receive window is full, the rest stays queued here.
        c.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match c.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let queued = super::send_backlog(pid, Some(addr)).unwrap();
        assert!(queued > 0 && queued <= written, "queued {queued} of {written}");
        assert_eq!(super::send_backlog(pid, Some(other.local_addr().unwrap())).unwrap(), 0);
        assert!(super::send_backlog(pid, None).unwrap() >= queued);
        let v6 = std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), addr.port());
        assert!(super::same_endpoint(v6, addr));
        assert!(super::send_backlog(u32::MAX, None).is_err());
    }
}
