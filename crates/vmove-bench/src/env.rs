//! The benchmark's lab: bring-up and teardown, link measurement and caps, libvirtd per
//! host namespace, and what the machine is.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vmove_host::netns;
use vmove_lab::{LabInfo, LabOptions};

use crate::model::Machine;

/// The lab the benchmark runs on: two hosts (three for the drain benchmark) and the client.
pub struct Env {
    /// The lab.
    pub info: LabInfo,
    /// Where `vmove`, `vmoved`, `vmove-guest` live.
    pub bin_dir: PathBuf,
    /// The lab image (kernel, initrd).
    pub image: vmove_lab::image::GuestImage,
    /// The hosts' management addresses, host1 first.
    pub host_ip: Vec<Ipv4Addr>,
    /// The hosts' namespaces, host1 first.
    pub host_ns: Vec<String>,
    /// The client's namespace.
    pub client_ns: String,
}

impl Env {
    /// Builds the lab (taking down a leftover one of the same directory first).
    /// Its directory's name must start with `bench-`: it is wiped first (old consoles
    /// and logs would otherwise mix with the new ones).
    pub async fn up(dir: &Path, bin_dir: &Path) -> Result<Env> {
        Env::up_hosts(dir, bin_dir, 2).await
    }

    /// [`Env::up`] with `hosts` hosts (2 or more).
    pub async fn up_hosts(dir: &Path, bin_dir: &Path, hosts: u8) -> Result<Env> {
        if hosts < 2 {
            bail!("a benchmark lab needs at least 2 hosts, not {hosts}");
        }
        let name = vmove_lab::lab::lab_name(dir)?;
        if !name.starts_with("bench-") {
            bail!("the lab directory's name must start with bench- (it is wiped at the start): {}", dir.display());
        }
        if dir.join("lab.json").exists() || !netns::list(&name).is_empty() {
            eprintln!("bench: taking down a leftover lab at {}", dir.display());
            vmove_lab::down(dir)?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("wipe {}", dir.display()))?;
        }
        let opts = LabOptions {
            dir: dir.to_path_buf(),
            hosts,
            etcd: 0,
            vmoved: bin_dir.join("vmoved"),
            guest_bin: bin_dir.join("vmove-guest"),
        };
        let info = vmove_lab::up(&opts).await?;
        let env = Env::from_info(info, bin_dir);
        if env.is_err() {
            let _ = vmove_lab::down(dir);
        }
        env
    }

    fn from_info(info: LabInfo, bin_dir: &Path) -> Result<Env> {
        let cluster = vmove_model::Cluster::load(&info.cluster_file)?;
        let ip = |i: usize| -> Result<Ipv4Addr> {
            let h = cluster.hosts.get(i).ok_or_else(|| anyhow!("the lab has no host {}", i + 1))?;
            let a: SocketAddr = h.address.parse().with_context(|| format!("host address {}", h.address))?;
            match a.ip() {
                std::net::IpAddr::V4(v) => Ok(v),
                other => bail!("unexpected host address {other}"),
            }
        };
        let image = vmove_lab::image::ensure(
            &bin_dir.join("vmove-guest"),
            &vmove_lab::image::default_kernel_root(),
            &vmove_lab::image::default_cache_dir(),
        )?;
        Ok(Env {
            host_ip: (0..info.host_namespaces.len()).map(ip).collect::<Result<_>>()?,
            host_ns: info.host_namespaces.clone(),
            client_ns: info.client_namespace.clone(),
            bin_dir: bin_dir.to_path_buf(),
            image,
            info,
        })
    }

    /// The lab's directory.
    pub fn dir(&self) -> &Path {
        &self.info.dir
    }

    /// Every namespace of the lab.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = self.info.host_namespaces.clone();
        v.push(self.info.client_namespace.clone());
        v.push(self.info.switch_namespace.clone());
        v
    }

    /// Runs a command inside a namespace (`ip netns exec`), returns stdout; fails with stderr.
    pub fn ns_cmd(ns: &str, args: &[&str]) -> Result<String> {
        let o = Command::new("ip").args(["netns", "exec", ns]).args(args).output().with_context(|| format!("run {args:?} in {ns}"))?;
        if !o.status.success() {
            bail!("{} in {ns}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Caps both hosts' management links (egress) at `mbit` with a token bucket.
    pub fn cap_link(&self, mbit: u32) -> Result<()> {
        let bytes_per_s = u64::from(mbit) * 125_000;
        let burst = (bytes_per_s / 100).max(64 * 1024); // 10 ms worth
        for ns in &self.host_ns {
            Env::ns_cmd(
                ns,
                &["tc", "qdisc", "replace", "dev", "mgmt0", "root", "tbf", "rate", &format!("{mbit}mbit"), "burst", &burst.to_string(), "latency", "20ms"],
            )?;
        }
        Ok(())
    }

    /// Removes the caps.
    pub fn uncap_link(&self) -> Result<()> {
        for ns in &self.host_ns {
            let _ = Env::ns_cmd(ns, &["tc", "qdisc", "del", "dev", "mgmt0", "root"]);
        }
        Ok(())
    }

    /// A plain TCP copy host1 → host2 for `dur`; bytes/s as the receiver saw them.
    pub fn tcp_copy(&self, dur: Duration) -> Result<f64> {
        let dst_ip = self.host_ip[1];
        let listener = netns::run_in::<_, anyhow::Error>(&self.host_ns[1], move || Ok(TcpListener::bind((dst_ip, 0))?))?;
        let port = listener.local_addr()?.port();
        let rx = std::thread::spawn(move || -> Result<(u64, Duration)> {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = vec![0u8; 1 << 20];
            let (mut n, mut first) = (0u64, None);
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                n += k as u64;
            }
            Ok((n, first.map(|f| f.elapsed()).unwrap_or_default()))
        });
        let addr = SocketAddr::from((dst_ip, port));
        let mut s = netns::run_in::<_, anyhow::Error>(&self.host_ns[0], move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(3))?))?;
        let buf = vec![0x5au8; 1 << 20];
        let t = Instant::now();
        while t.elapsed() < dur {
            s.write_all(&buf)?;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        drop(s);
        let (n, d) = rx.join().map_err(|_| anyhow!("receiver panicked"))??;
        if d.is_zero() {
            bail!("nothing arrived");
        }
        Ok(n as f64 / d.as_secs_f64())
    }

    /// Bytes sent so far out of host `idx`'s management link (mgmt0, the migration link),
    /// as the kernel counts them in that namespace.
    pub fn link_tx_bytes(&self, idx: usize) -> Result<u64> {
        let ns = self.host_ns.get(idx).ok_or_else(|| anyhow!("the lab has no host {}", idx + 1))?;
        let text = Env::ns_cmd(ns, &["cat", "/sys/class/net/mgmt0/statistics/tx_bytes"])?;
        crate::parse::link_counter(&text).ok_or_else(|| anyhow!("mgmt0's tx_bytes in {ns}: not a number: {:?}", text.trim()))
    }

    /// The directory of host `idx`'s local pool (`hosts/hostN/local` in the lab).
    pub fn local_pool(&self, idx: usize) -> PathBuf {
        self.dir().join("hosts").join(format!("host{}", idx + 1)).join("local")
    }

    /// Flushes the client's neighbour table (a new guest may reuse an address).
    pub fn flush_client_neighbours(&self) {
        let _ = Env::ns_cmd(&self.client_ns, &["ip", "neigh", "flush", "all"]);
    }

    /// QEMU processes on the machine that are not inside this lab's namespaces.
    pub fn foreign_qemus(&self) -> Vec<String> {
        let ours: std::collections::HashSet<i32> = self.namespaces().iter().flat_map(|n| netns::pids_in(n)).collect();
        foreign_qemus(&ours)
    }
}

/// QEMU processes whose pid is not in `ours`, described briefly.
pub fn foreign_qemus(ours: &std::collections::HashSet<i32>) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if ours.contains(&pid) || !vmove_host::proc::alive(pid as u32) {
            continue;
        }
        let cmd = vmove_host::proc::cmdline(pid as u32);
        if !cmd.first().is_some_and(|a| a.contains("qemu-system")) {
            continue;
        }
        let name = cmd.iter().skip_while(|a| *a != "-name").nth(1).cloned().unwrap_or_default();
        let qmp = cmd.iter().skip_while(|a| *a != "-qmp").nth(1).cloned().unwrap_or_default();
        let place = qmp.trim_start_matches("unix:").split("/run/").next().unwrap_or("").to_string();
        v.push(format!("pid {pid} {} {place}", name.split(',').next().unwrap_or("")).trim().to_string());
    }
    v
}

/// What the machine is.
pub fn machine(libvirt: Option<String>) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let first_line = |bin: &str, arg: &str| {
        Command::new(bin)
            .arg(arg)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_default()
    };
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        memory_gib: crate::parse::mem_total_gib(&read("/proc/meminfo")).unwrap_or(0.0),
        cpu_model: crate::parse::cpu_model(&read("/proc/cpuinfo")).unwrap_or_default(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        qemu: first_line(vmove_host::qemu::QEMU_BIN, "--version"),
        libvirt,
        vmove: env!("CARGO_PKG_VERSION").to_string(),
        source: source_tree(),
    }
}

/// `<commit>` or `<commit> + uncommitted changes` of the tree this crate was built from.
fn source_tree() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = |args: &[&str]| {
        Command::new("git").arg("-C").arg(&repo).args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c} + uncommitted changes"),
            _ => c,
        },
        None => "unknown".into(),
    }
}

/// /proc/loadavg, first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

// ------------------------------------------------------------------------- libvirt

/// A libvirtd in each host namespace, each with its own configuration and state
/// (a private mount namespace bind-mounts per-host directories over /etc/libvirt,
/// /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt).
pub struct Libvirt {
    /// `qemu+tcp://<mgmt ip>/system` of every host, host1 first.
    pub uri: Vec<String>,
    /// libvirtd's version.
    pub version: String,
    children: Vec<Child>,
}

const LIBVIRT_DIRS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

/// What each libvirtd's configuration gets appended.
pub fn libvirtd_conf(listen: Ipv4Addr) -> String {
    format!(
        "\n# vmove-bench\nlisten_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\nlisten_addr = \"{listen}\"\n\
         log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n"
    )
}

/// What each libvirt QEMU driver configuration gets appended: QEMU as root, no security
/// driver, no cgroups, no per-VM mount namespace, QEMU's output to a file (no virtlogd).
pub fn qemu_conf() -> &'static str {
    "\n# vmove-bench\nuser = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
     security_driver = \"none\"\nnamespaces = [ ]\ncgroup_controllers = [ ]\nstdio_handler = \"file\"\n"
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin")]).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// `virsh -c URI args...`: stdout, or an error with stderr.
pub fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let o = Command::new("virsh").arg("-q").arg("-c").arg(uri).args(args).stdin(Stdio::null()).output().context("run virsh")?;
    if !o.status.success() {
        bail!("virsh {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl Libvirt {
    /// Starts a libvirtd in each host namespace and waits until all answer. Err: why not.
    pub fn start(env: &Env) -> Result<Libvirt> {
        if !which("libvirtd") || !which("virsh") {
            bail!("libvirtd/virsh are not installed (install them with `VMOVE_BENCH_LIBVIRT=1 bash scripts/install-deps`)");
        }
        let version = Command::new("libvirtd")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().rsplit(' ').next().unwrap_or("").to_string())
            .unwrap_or_default();
        for (_, target) in LIBVIRT_DIRS {
            std::fs::create_dir_all(target).with_context(|| format!("create {target}"))?;
        }
        let hosts = env.host_ns.len();
        let mut lv = Libvirt { uri: Vec::with_capacity(hosts), version, children: Vec::new() };
        for i in 0..hosts {
            let base = env.dir().join("libvirt").join(format!("host{}", i + 1));
            let _ = std::fs::remove_dir_all(&base);
            for (sub, _) in LIBVIRT_DIRS {
                std::fs::create_dir_all(base.join(sub))?;
            }
            let st = Command::new("cp").arg("-a").arg("/etc/libvirt/.").arg(base.join("etc")).status()?;
            if !st.success() {
                bail!("copy /etc/libvirt");
            }
            append(&base.join("etc/libvirtd.conf"), &libvirtd_conf(env.host_ip[i]))?;
            append(&base.join("etc/qemu.conf"), qemu_conf())?;
            let mut script = String::new();
            for (sub, target) in LIBVIRT_DIRS {
                script.push_str(&format!("mount --bind '{}' '{target}' && ", base.join(sub).display()));
            }
            script.push_str(&format!("exec libvirtd --listen --pid-file '{}'", base.join("libvirtd.pid").display()));
            let log = std::fs::File::create(base.join("libvirtd.out"))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &env.host_ns[i], "unshare", "-m", "--propagation", "private", "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start libvirtd")?;
            lv.children.push(child);
            lv.uri.push(format!("qemu+tcp://{}/system", env.host_ip[i]));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..hosts {
            loop {
                match virsh(&lv.uri[i], &["version"]) {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        let out = std::fs::read_to_string(env.dir().join(format!("libvirt/host{}/libvirtd.out", i + 1))).unwrap_or_default();
                        lv.stop();
                        bail!("libvirtd on host{} did not answer: {e:#} ({})", i + 1, out.trim());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        Ok(lv)
    }

    /// Stops the daemons (their QEMUs go with the lab).
    pub fn stop(&mut self) {
        for c in &mut self.children {
            vmove_host::proc::term(c.id());
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        self.stop();
    }
}

fn append(p: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(p).with_context(|| format!("open {}", p.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_configuration() {
        let c = libvirtd_conf(Ipv4Addr::new(198, 51, 100, 18));
        assert!(c.contains("listen_addr = \"198.51.100.18\""));
        assert!(c.contains("listen_tls = 0") && c.contains("auth_tcp = \"none\""));
        let q = qemu_conf();
        for k in ["security_driver = \"none\"", "cgroup_controllers = [ ]", "namespaces = [ ]", "stdio_handler = \"file\""] {
            assert!(q.contains(k), "{k}");
        }
    }
}
