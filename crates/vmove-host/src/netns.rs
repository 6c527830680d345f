//! Named network namespaces, compatible with `ip netns` (bind mounts under /run/netns).
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// The bind-mount path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Whether the namespace exists (its path is a mounted namespace file).
pub fn exists(name: &str) -> bool {
    let p = path(name);
    p.exists() && is_nsfs(&p)
}

fn is_nsfs(p: &std::path::Path) -> bool {
    nix::sys::statfs::statfs(p).map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC).unwrap_or(false)
}

/// Creates a named namespace with its loopback up; succeeds if it already exists.
pub fn create(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(anyhow!("invalid namespace name {name:?}"));
    }
    std::fs::create_dir_all(NETNS_DIR).context("create /run/netns")?;
    let p = path(name);
    if p.exists() && is_nsfs(&p) {
        return Ok(());
    }
    std::fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
    let p2 = p.clone();
    let r = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(Some("/proc/thread-self/ns/net"), &p2, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .context("bind-mount the namespace")?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?;
    if let Err(e) = r {
        let _ = std::fs::remove_file(&p);
        return Err(e.context(format!("create network namespace {name}")));
    }
    run_in(name, || {
        let rt = crate::net::runtime()?;
        rt.block_on(async { crate::net::Netlink::connect()?.set_up("lo").await })
    })
}

/// Deletes a named namespace; succeeds if it does not exist. Links inside it go with it once
/// no process holds it.
pub fn delete(name: &str) -> Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    let _ = umount2(&p, MntFlags::MNT_DETACH);
    std::fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))
}

/// Opens the namespace file (for `setns` or netlink `IFLA_NET_NS_FD`).
pub fn open(name: &str) -> Result<OwnedFd> {
    let f = std::fs::File::open(path(name)).with_context(|| format!("no network namespace {name}"))?;
    Ok(f.into())
}

/// Opens the namespace of the calling thread.
pub fn open_current() -> Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/thread-self/ns/net").context("open own namespace")?.into())
}

/// Enters a namespace given by fd. For use in a forked child (`pre_exec`) or a dedicated thread.
pub fn enter(fd: &impl AsFd) -> nix::Result<()> {
    setns(fd, CloneFlags::CLONE_NEWNET)
}

/// Runs `f` on a new OS thread that has entered the named namespace.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let fd = open(name)?;
    std::thread::spawn(move || {
        enter(&fd).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in namespace panicked"))?
}

/// Identity of a namespace file, comparable with `/proc/PID/ns/net`.
fn ns_id(p: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Pids of the processes inside the named namespace.
pub fn pids_in(name: &str) -> Vec<i32> {
    let Some(id) = ns_id(&path(name)) else { return vec![] };
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| ns_id(&PathBuf::from(format!("/proc/{pid}/ns/net"))) == Some(id))
        .collect()
}

/// Named namespaces whose names start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else { return vec![] };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}
