//! Shared harness of the lab end-to-end tests: a unique lab per test, torn down on drop
//! (also when the test fails), and helpers that poll for conditions with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod etcd;
pub mod faults;
pub mod loopback;

/// How fast busy test guests dirty memory, MB/s (over their 128 MiB working set). QEMU 10
/// tracks dirty pages under TCG correctly at this rate (7.2 did not; docs/DESIGN.md).
pub const BUSY_MB_S: u32 = 20;

/// The `vmove` binary under test.
pub fn vmove_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmove")
}

/// Where a lab keeps the cluster's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The cluster file and each agent's state directory.
    File,
    /// An etcd of 3 members inside the lab.
    Etcd,
}

/// Makes each named test function (`fn name(store: Store)`) a test on both stores:
/// `file::name` and `etcd::name`.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod file {
            $( #[test] fn $name() { super::$name(super::common::Store::File) } )*
        }
        mod etcd {
            $( #[test] fn $name() { super::$name(super::common::Store::Etcd) } )*
        }
    };
}

/// A lab brought up for one test.
pub struct Lab {
    pub dir: PathBuf,
    pub name: String,
    pub cluster: PathBuf,
    pub client_ns: String,
    down: bool,
}

impl Lab {
    /// `vmove lab up` in a fresh directory named after the test and the process.
    pub fn up(tag: &str, hosts: u8) -> Lab {
        Lab::up_with(tag, hosts, &[])
    }

    /// A lab on `store`: the file store, or an etcd of 3 members inside the lab (its tag
    /// gets an `e`, so that the two runs of a test are told apart in logs).
    pub fn up_on(store: Store, tag: &str, hosts: u8) -> Lab {
        match store {
            Store::File => Lab::up(tag, hosts),
            Store::Etcd => Lab::up_etcd(&format!("{tag}e"), hosts, 3),
        }
    }

    /// The same with the cluster's state in an etcd of `members` inside the lab.
    pub fn up_etcd(tag: &str, hosts: u8, members: u8) -> Lab {
        Lab::up_with(tag, hosts, &["--store", "etcd", "--etcd-members", &members.to_string()])
    }

    fn up_with(tag: &str, hosts: u8, extra: &[&str]) -> Lab {
        let name = format!("vt-{tag}-{}", std::process::id());
        let dir = PathBuf::from("/var/tmp").join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(vmove_bin())
            .args(["lab", "up", "--hosts", &hosts.to_string()])
            .args(extra)
            .arg("--dir")
            .arg(&dir)
            .output()
            .expect("run vmove");
        let mut lab =
            Lab { dir: dir.clone(), name: name.clone(), cluster: dir.join("cluster.toml"), client_ns: format!("{name}-client"), down: false };
        if !out.status.success() {
            lab.down();
            panic!("lab up failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), lab.cluster.display().to_string(), "lab up prints the cluster file");
        lab
    }

    /// The same lab, after the test brought it up again itself (`vmove lab up` on its
    /// directory): torn down on drop again.
    pub fn reopened(mut self) -> Lab {
        self.down = false;
        self
    }

    /// Runs `vmove` against this lab's cluster file.
    pub fn vmove(&self, args: &[&str]) -> Output {
        Command::new(vmove_bin()).args(args).env("VMOVE_CLUSTER", &self.cluster).output().expect("run vmove")
    }

    /// Runs `vmove` and returns stdout; panics with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.vmove(args);
        assert!(o.status.success(), "vmove {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `vmove` expecting failure; returns the one-line error.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.vmove(args);
        assert!(!o.status.success(), "vmove {args:?} should have failed: {}", String::from_utf8_lossy(&o.stdout));
        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
        assert_eq!(err.lines().count(), 1, "one-line error expected, got {err:?}");
        assert!(err.starts_with("vmove: "), "{err}");
        err
    }

    /// Runs `vmove --json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let s = self.ok(&a);
        serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("vmove {args:?}: bad JSON {e}: {s}"))
    }

    /// The guest's serial console.
    pub fn log(&self, guest: &str) -> String {
        self.ok(&["guest", "log", guest])
    }

    /// Polls the guest's console until `pred` holds; returns the log.
    pub fn wait_log(&self, guest: &str, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        wait_for(what, timeout, || {
            let l = self.log(guest);
            pred(&l).then_some(l)
        })
    }

    /// Tears the lab down now. When the test is failing, the agents' logs, state and guest
    /// consoles are copied to `<dir>.failed/` first (`lab down` removes them).
    pub fn down(&mut self) {
        if !self.down {
            self.down = true;
            if std::thread::panicking() {
                let keep = self.dir.with_extension("failed");
                let _ = std::fs::remove_dir_all(&keep);
                let _ = std::fs::create_dir_all(&keep);
                let _ = Command::new("cp").arg("-a").arg(self.dir.join("hosts")).arg(&keep).status();
                eprintln!("lab {}: logs kept in {}", self.name, keep.display());
                print_log_tails(&self.dir.join("hosts"));
            }
            let o = Command::new(vmove_bin()).args(["lab", "down", "--dir"]).arg(&self.dir).output();
            if let Ok(o) = o {
                if !o.status.success() {
                    eprintln!("lab down failed: {}", String::from_utf8_lossy(&o.stderr));
                }
            }
        }
    }

    /// The lab's host namespace for `hostN`.
    pub fn host_ns(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }

    /// TCP echo from the client namespace.
    pub fn tcp_echo(&self, addr: &str) -> anyhow::Result<Duration> {
        let a: SocketAddr = addr.parse()?;
        rt().block_on(vmove_lab::probe::tcp_echo(&self.client_ns, a, b"vmove e2e payload"))
    }

    /// UDP echo from the client namespace.
    pub fn udp_echo(&self, addr: &str) -> anyhow::Result<Duration> {
        let a: SocketAddr = addr.parse()?;
        rt().block_on(vmove_lab::probe::udp_echo(&self.client_ns, a, b"vmove e2e datagram"))
    }

    /// Waits until the guest answers TCP echo from the client.
    pub fn wait_tcp_echo(&self, addr: &str, timeout: Duration) {
        wait_for(&format!("TCP echo from {addr}"), timeout, || self.tcp_echo(addr).ok());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Polls `f` every 200 ms until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Live (non-zombie) processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || !vmove_host::proc::alive(pid) {
            continue;
        }
        if vmove_host::proc::cmdline(pid).iter().any(|a| a.contains(needle)) {
            v.push(pid);
        }
    }
    v
}

/// QEMU processes of a guest.
/// QEMU processes of a guest in the lab whose directory is `dir`.
pub fn qemu_pids_in(dir: &str, guest: &str) -> Vec<u32> {
    qemu_pids(guest).into_iter().filter(|p| vmove_host::proc::cmdline(*p).iter().any(|a| a.contains(dir))).collect()
}

pub fn qemu_pids(guest: &str) -> Vec<u32> {
    processes_mentioning(&format!("guest={guest},"))
        .into_iter()
        .filter(|p| vmove_host::proc::cmdline(*p).first().is_some_and(|a| a.ends_with("qemu-system-x86_64")))
        .collect()
}

/// The last `DISK OK <n>` count in a console log.
pub fn last_disk_ok(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| l.strip_prefix("DISK OK ").and_then(|n| n.trim().parse().ok()))
}

/// Asserts that nothing of a lab is left on the machine.
pub fn assert_nothing_left(name: &str, dir: &Path) {
    let ns: Vec<String> = vmove_host::netns::list(name);
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
    let procs = processes_mentioning(&dir.display().to_string());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let slots = std::fs::read_dir("/run/vmove/lab-slots")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|o| o == name))
        .count();
    assert_eq!(slots, 0, "lab slot still claimed");
    for item in ["lab.json", "cluster.toml", "pki", "shared", "hosts", "etcd"] {
        assert!(!dir.join(item).exists(), "{item} left in {}", dir.display());
    }
}

impl Lab {
    /// The lease of a volume of the shared pool (the record's data, from the pool's lease
    /// store: a header line, then `{"kind":"lease","version":1,"data":{...}}`).
    pub fn lease(&self, volume: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join("shared/.vmove-leases").join(format!("{volume}.json"))).ok()?;
        let (_, body) = text.split_once('\n')?;
        let v: Value = serde_json::from_str(body).ok()?;
        Some(v["data"].clone())
    }

    /// Where the cluster file puts a guest.
    pub fn cluster_host(&self, guest: &str) -> String {
        // Through the CLI: the cluster file, or the store the file names.
        let o = self.vmove(&["--json", "guest", "show", guest]);
        if !o.status.success() {
            return String::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("guest show --json");
        v["spec"]["host"].as_str().unwrap_or_default().to_string()
    }

    /// Creates and starts a lab-image guest with a NIC (and a data disk) and waits until it
    /// answers TCP echo and verifies its memory (and disk).
    pub fn boot_guest(&self, name: &str, host: &str, ip: &str, dirty: u32, disk: bool) {
        self.boot_guest_with(name, host, ip, dirty, disk, &[]);
    }

    /// [`Lab::boot_guest`] with more `guest create` arguments (`--memory 256M`, ...).
    pub fn boot_guest_with(&self, name: &str, host: &str, ip: &str, dirty: u32, disk: bool, more: &[&str]) {
        let nic = format!("lab-net,ip={ip}/24");
        let vol = format!("shared/{name}-data.img:32M");
        let dirty = dirty.to_string();
        let mut args = vec!["guest", "create", name, "--host", host, "--nic", &nic, "--dirty-rate", &dirty, "--start"];
        if disk {
            args.extend(["--disk", &vol]);
        }
        args.extend(more);
        self.ok(&args);
        self.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(120));
        self.wait_log(name, "VERIFY OK", Duration::from_secs(60), |l| l.contains("VERIFY OK") && (!disk || l.contains("DISK OK")));
    }

    /// The local pool's directory on a lab host.
    pub fn local_dir(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(host).join("local")
    }

    /// The volumes (files, not the lease store) in a host's local pool.
    pub fn local_files(&self, host: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.local_dir(host))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// The lab host whose namespace holds a process.
    pub fn host_of_pid(&self, pid: u32) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
        (1..=13).map(|i| format!("host{i}")).find(|h| {
            std::fs::metadata(vmove_host::netns::path(&self.host_ns(h))).is_ok_and(|n| n.ino() == m.ino() && n.dev() == m.dev())
        })
    }

    /// QEMU processes of a guest in this lab.
    pub fn qemu_pids(&self, guest: &str) -> Vec<u32> {
        qemu_pids_in(&self.dir.display().to_string(), guest)
    }

    /// Hosts where a QEMU of the guest runs.
    pub fn qemu_hosts(&self, guest: &str) -> Vec<String> {
        self.qemu_pids(guest).into_iter().filter_map(|p| self.host_of_pid(p)).collect()
    }

    /// `vmove --json ...` when it is expected to fail: the first JSON line of stdout.
    pub fn json_fail(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.vmove(&a);
        assert!(!o.status.success(), "vmove {args:?} should have failed");
        let out = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(out.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"))
    }
}

/// The verdict of one check in a precheck's JSON.
pub fn verdict(findings: &Value, id: &str) -> String {
    findings["findings"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["id"] == id))
        .and_then(|f| f["verdict"].as_str())
        .unwrap_or("missing")
        .to_string()
}

/// On a failing test, the ends of every agent's log and every QEMU's log go to stderr too:
/// CI keeps only the test's output, not the lab's directory.
fn print_log_tails(hosts: &Path) {
    let Ok(dirs) = std::fs::read_dir(hosts) else { return };
    let mut hosts: Vec<PathBuf> = dirs.filter_map(|e| e.ok().map(|e| e.path())).collect();
    hosts.sort();
    for h in hosts {
        let mut logs = vec![(h.join("vmoved.log"), 30)];
        if let Ok(guests) = std::fs::read_dir(h.join("run")) {
            logs.extend(guests.filter_map(|e| e.ok()).map(|e| (e.path().join("qemu.log"), 10)));
        }
        for (log, n) in logs {
            let Ok(text) = std::fs::read_to_string(&log) else { continue };
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last {} lines of {}", n.min(lines.len()), log.display());
            for l in &lines[lines.len().saturating_sub(n)..] {
                eprintln!("    {l}");
            }
        }
    }
}
