//! Named network namespaces, compatible with `ip netns` (bind mounts under /run/netns).
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::net::NetlinkError;

/// Why a namespace could not be made, removed, opened or entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Not a valid namespace name.
    #[error("invalid namespace name {0:?}")]
    InvalidName(String),
    /// A file under `/run/netns` (or the thread's own namespace file).
    #[error("{what}")]
    Io {
        /// What was done (`create /run/netns/x`, `remove ...`, `open own namespace`).
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No namespace of that name.
    #[error("no network namespace {name}")]
    NotFound {
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `unshare` or the bind mount failed.
    #[error("create network namespace {name}: {step}")]
    Create {
        /// The namespace.
        name: String,
        /// `unshare(CLONE_NEWNET)` or `bind-mount the namespace`.
        step: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// `setns` failed.
    #[error("setns")]
    Setns(#[source] nix::Error),
    /// The thread that works inside the namespace panicked.
    #[error("thread in namespace panicked")]
    Panicked,
    /// Bringing the new namespace's loopback up failed.
    #[error(transparent)]
    Loopback(#[from] NetlinkError),
}

type Result<T> = std::result::Result<T, NetnsError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

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
        return Err(NetnsError::InvalidName(name.to_string()));
    }
    std::fs::create_dir_all(NETNS_DIR).map_err(io("create /run/netns"))?;
    let p = path(name);
    if p.exists() && is_nsfs(&p) {
        return Ok(());
    }
    std::fs::File::create(&p).map_err(io(format!("create {}", p.display())))?;
    let p2 = p.clone();
    let r = std::thread::spawn(move || -> std::result::Result<(), (&'static str, nix::Error)> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare(CLONE_NEWNET)", e))?;
        mount(Some("/proc/thread-self/ns/net"), &p2, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| ("bind-mount the namespace", e))?;
        Ok(())
    })
    .join()
    .map_err(|_| NetnsError::Panicked)?;
    if let Err((step, source)) = r {
        let _ = std::fs::remove_file(&p);
        return Err(NetnsError::Create { name: name.to_string(), step, source });
    }
    run_in(name, || {
        let rt = crate::net::runtime()?;
        Ok(rt.block_on(async { crate::net::Netlink::connect()?.set_up("lo").await })?)
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
    std::fs::remove_file(&p).map_err(io(format!("remove {}", p.display())))
}

/// Opens the namespace file (for `setns` or netlink `IFLA_NET_NS_FD`).
pub fn open(name: &str) -> Result<OwnedFd> {
    let f = std::fs::File::open(path(name)).map_err(|source| NetnsError::NotFound { name: name.to_string(), source })?;
    Ok(f.into())
}

/// Opens the namespace of the calling thread.
pub fn open_current() -> Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/thread-self/ns/net").map_err(io("open own namespace"))?.into())
}

/// Enters a namespace given by fd. For use in a forked child (`pre_exec`) or a dedicated thread.
pub fn enter(fd: &impl AsFd) -> nix::Result<()> {
    setns(fd, CloneFlags::CLONE_NEWNET)
}

/// Runs `f` on a new OS thread that has entered the named namespace. `f`'s error type is
/// the caller's; failing to enter the namespace becomes one through `From<NetnsError>`.
pub fn run_in<T, E>(name: &str, f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static) -> std::result::Result<T, E>
where
    T: Send + 'static,
    E: From<NetnsError> + Send + 'static,
{
    let fd = open(name)?;
    std::thread::spawn(move || {
        enter(&fd).map_err(NetnsError::Setns)?;
        f()
    })
    .join()
    .map_err(|_| NetnsError::Panicked)?
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
