//! What the agent does to the machine it runs on, behind one trait: QEMU processes and
//! their QMP sockets, bridges and taps, and the machine's own figures. [`RealHost`] drives
//! the real thing through `vmove-host`; the unit tests use `fake::FakeHost`, whose QEMUs
//! are `vmove_qmp::fake::FakeQmp` servers.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use vmove_host::net::Netlink;
use vmove_host::{proc, qemu, tap};
use vmove_qmp::Qmp;

use crate::error::{AgentError, Result, ResultExt};

/// Host operations.
#[async_trait]
pub trait HostOps: Send + Sync + 'static {
    /// Starts QEMU with `args` in `run_dir`, in its own session (it outlives the agent).
    async fn spawn_qemu(&self, args: &[String], run_dir: &Path) -> Result<u32>;
    /// Resolves when process `pid` has ended.
    fn wait_exit(&self, pid: u32) -> BoxFuture<'static, ()>;
    /// Connects to a QMP socket, retrying until `total` has passed.
    async fn connect_qmp(&self, socket: &Path, total: Duration) -> Result<Qmp>;
    /// Whether process `pid` lives.
    fn alive(&self, pid: u32) -> bool;
    /// Kills process `pid` (SIGKILL).
    fn kill(&self, pid: u32);
    /// QEMU processes whose pid file lies under `run_dir`, by guest name.
    fn scan_qemus(&self, run_dir: &Path) -> HashMap<String, u32>;
    /// Whether `pid` is the QEMU of guest `name`.
    fn is_qemu_of(&self, pid: u32, name: &str) -> bool;
    /// Whether a bridge exists.
    async fn bridge_exists(&self, name: &str) -> Result<bool>;
    /// Creates a bridge unless it exists; returns whether it created it.
    async fn ensure_bridge(&self, name: &str) -> Result<bool>;
    /// Every bridge of the host.
    async fn bridges(&self) -> Result<Vec<String>>;
    /// Creates a persistent tap, puts it on `bridge` and sets it up.
    async fn plug_tap(&self, tap: &str, bridge: &str) -> Result<()>;
    /// Deletes a tap (absent is fine).
    fn unplug_tap(&self, tap: &str) -> Result<()>;
    /// `(total, available)` memory, MiB.
    fn memory_mib(&self) -> (u64, u64);
    /// `(CPU model, flags, logical CPUs)`.
    fn cpu(&self) -> (String, Vec<String>, u32);
    /// The hardware model (DMI product name).
    fn hardware_model(&self) -> String;
    /// A listening TCP socket on `ip` with a port the kernel chose (for a server that a
    /// QEMU takes over with `getfd`: no port chosen and released in between).
    fn listen_tcp(&self, ip: std::net::IpAddr) -> Result<std::net::TcpListener>;
}

/// The real host.
#[derive(Default)]
pub struct RealHost {
    children: Mutex<HashMap<u32, Child>>,
}

#[async_trait]
impl HostOps for RealHost {
    async fn spawn_qemu(&self, args: &[String], run_dir: &Path) -> Result<u32> {
        let child = qemu::spawn(qemu::QEMU_BIN, args, run_dir)?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|p| p.into_inner()).insert(pid, child);
        Ok(pid)
    }

    fn wait_exit(&self, pid: u32) -> BoxFuture<'static, ()> {
        let child = self.children.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        Box::pin(async move {
            match child {
                Some(mut c) => {
                    let _ = tokio::task::spawn_blocking(move || c.wait()).await;
                }
                // Adopted after a restart: not our child, so poll.
                None => {
                    while proc::alive(pid) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    }

    async fn connect_qmp(&self, socket: &Path, total: Duration) -> Result<Qmp> {
        // Out-of-band where QEMU offers it: a post-copy target blocked on a missing page
        // still answers `migrate-recover` out of band, and it cannot be negotiated later.
        Ok(Qmp::connect_retry_oob(socket, total).await?)
    }

    fn alive(&self, pid: u32) -> bool {
        proc::alive(pid)
    }

    fn kill(&self, pid: u32) {
        proc::kill9(pid);
    }

    fn scan_qemus(&self, run_dir: &Path) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        let Ok(rd) = std::fs::read_dir("/proc") else { return out };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let args = proc::cmdline(pid);
            if !args.first().is_some_and(|a| a.ends_with(qemu::QEMU_BIN)) || !proc::alive(pid) {
                continue;
            }
            let pidfile = args.windows(2).find(|w| w[0] == "-pidfile").map(|w| PathBuf::from(&w[1]));
            if !pidfile.is_some_and(|p| p.starts_with(run_dir)) {
                continue;
            }
            if let Some(n) = guest_of_args(&args) {
                out.insert(n, pid);
            }
        }
        out
    }

    fn is_qemu_of(&self, pid: u32, name: &str) -> bool {
        proc::alive(pid) && guest_of_args(&proc::cmdline(pid)).as_deref() == Some(name)
    }

    async fn bridge_exists(&self, name: &str) -> Result<bool> {
        Ok(Netlink::connect()?.link(name).await?.is_some())
    }

    async fn ensure_bridge(&self, name: &str) -> Result<bool> {
        let nl = Netlink::connect()?;
        let existed = nl.link(name).await?.is_some();
        nl.ensure_bridge(name).await.ctx(format!("bridge {name}"))?;
        Ok(!existed)
    }

    async fn bridges(&self) -> Result<Vec<String>> {
        let nl = Netlink::connect()?;
        Ok(nl.links().await?.into_iter().filter(|l| l.kind.as_deref() == Some("bridge")).map(|l| l.name).collect())
    }

    async fn plug_tap(&self, t: &str, bridge: &str) -> Result<()> {
        let nl = Netlink::connect()?;
        tap::create(t).ctx(format!("tap {t}"))?;
        nl.set_controller(t, bridge).await.ctx(format!("tap {t} on {bridge}"))?;
        nl.set_up(t).await.ctx(format!("tap {t} up"))?;
        Ok(())
    }

    fn unplug_tap(&self, t: &str) -> Result<()> {
        tap::delete(t).map_err(|e| AgentError::host(format!("remove tap {t}: {e:#}")))
    }

    fn memory_mib(&self) -> (u64, u64) {
        let m = procfs_meminfo();
        (m.0, m.1)
    }

    fn cpu(&self) -> (String, Vec<String>, u32) {
        let t = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let get = |k: &str| {
            t.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let count = u32::try_from(t.lines().filter(|l| l.starts_with("processor")).count()).unwrap_or(u32::MAX);
        let flags = get("flags").split_whitespace().map(String::from).collect();
        (get("model name"), flags, count.max(1))
    }

    fn hardware_model(&self) -> String {
        std::fs::read_to_string("/sys/class/dmi/id/product_name").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
    }

    fn listen_tcp(&self, ip: std::net::IpAddr) -> Result<std::net::TcpListener> {
        std::net::TcpListener::bind(std::net::SocketAddr::new(ip, 0)).ctx(format!("listen on {ip}"))
    }
}

/// `(MemTotal, MemAvailable)` in MiB.
fn procfs_meminfo() -> (u64, u64) {
    let t = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        t.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The guest a QEMU command line belongs to (`-name guest=<name>,...`).
pub fn guest_of_args(args: &[String]) -> Option<String> {
    args.windows(2)
        .find(|w| w[0] == "-name")
        .and_then(|w| w[1].strip_prefix("guest=").map(|r| r.split(',').next().unwrap_or("").to_string()))
        .filter(|n| !n.is_empty())
}
