//! QEMU command lines (pure) and processes.
//!
//! Every guest gets a run directory holding `qmp.sock`, `console.sock`, `serial.log`,
//! `qemu.log` and `qemu.pid`. QEMU runs in its own session so that it outlives the agent;
//! a restarted agent re-adopts it from the pid file and the QMP socket.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use vmove_model::{BootSource, GuestSpec};

/// Why QEMU could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct SpawnError {
    /// What failed: `create <run dir>`, `open qemu.log` or `start <binary>`.
    pub what: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpawnError {
    let what = what.into();
    move |source| SpawnError { what, source }
}

/// The QEMU binary.
pub const QEMU_BIN: &str = "qemu-system-x86_64";

/// Everything host-specific that a QEMU command line needs besides the guest spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// `kvm` or `tcg` (already resolved from `auto`).
    pub accel: String,
    /// The guest's run directory.
    pub run_dir: PathBuf,
    /// Kernel, initrd and command line for direct kernel boot (the lab image).
    pub direct_boot: Option<(PathBuf, PathBuf, String)>,
    /// Disk image paths, in the guest's disk order, with whether O_DIRECT works there.
    pub disks: Vec<(PathBuf, bool)>,
    /// `(tap name, mac)` per NIC.
    pub nics: Vec<(String, String)>,
    /// `-incoming` argument (e.g. `defer`), for a migration target.
    pub incoming: Option<String>,
    /// Serial console TCP port (`None`: a unix socket in the run directory). Either way
    /// QEMU also writes all console output to `serial.log`.
    pub console_port: Option<u16>,
}

/// Files in a guest's run directory.
pub struct RunFiles;
impl RunFiles {
    /// QMP socket.
    pub fn qmp(run: &Path) -> PathBuf {
        run.join("qmp.sock")
    }
    /// The serial console's unix socket (QEMU listens; the agent's console sessions write
    /// keystrokes there), for guests without a TCP console port.
    pub fn console(run: &Path) -> PathBuf {
        run.join("console.sock")
    }
    /// Serial console log.
    pub fn serial_log(run: &Path) -> PathBuf {
        run.join("serial.log")
    }
    /// QEMU's own stdout/stderr.
    pub fn qemu_log(run: &Path) -> PathBuf {
        run.join("qemu.log")
    }
    /// Pid file.
    pub fn pid(run: &Path) -> PathBuf {
        run.join("qemu.pid")
    }
}

/// The QEMU arguments for a guest (without the binary).
pub fn args(spec: &GuestSpec, l: &Launch) -> Vec<String> {
    let run = &l.run_dir;
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("guest={},debug-threads=on", spec.name),
        "-machine".into(),
        "pc".into(),
        "-accel".into(),
        l.accel.clone(),
        "-cpu".into(),
        spec.cpu_model.clone(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", RunFiles::qmp(run).display()),
        "-pidfile".into(),
        RunFiles::pid(run).display().to_string(),
    ];
    let log = RunFiles::serial_log(run).display().to_string();
    let chardev = match l.console_port {
        Some(p) => format!("socket,id=con0,host=127.0.0.1,port={p},server=on,wait=off,telnet=off,logfile={log},logappend=on"),
        None => format!(
            "socket,id=con0,path={},server=on,wait=off,logfile={log},logappend=on",
            RunFiles::console(run).display()
        ),
    };
    a.extend(["-chardev".into(), chardev, "-serial".into(), "chardev:con0".into()]);
    if let Some((k, i, c)) = &l.direct_boot {
        a.extend([
            "-kernel".into(),
            k.display().to_string(),
            "-initrd".into(),
            i.display().to_string(),
            "-append".into(),
            c.clone(),
        ]);
    }
    for (i, (path, direct)) in l.disks.iter().enumerate() {
        let node = DiskNames::of(i).node;
        a.extend([
            "-blockdev".into(),
            blockdev(&node, path, *direct),
            "-device".into(),
            format!(
                "virtio-blk-pci,drive={node},id=vblk{i},write-cache=on{}",
                if i == 0 && spec.boot == BootSource::Disk { ",bootindex=1" } else { "" }
            ),
        ]);
    }
    for (i, (tap, mac)) in l.nics.iter().enumerate() {
        a.extend([
            "-netdev".into(),
            format!("tap,id=net{i},ifname={tap},script=no,downscript=no,vhost=off"),
            "-device".into(),
            format!("virtio-net-pci,netdev=net{i},mac={mac},id=vnic{i}"),
        ]);
    }
    if let Some(inc) = &l.incoming {
        a.extend(["-incoming".into(), inc.clone()]);
    }
    a
}

/// The QEMU arguments of a storage helper: a `-machine none` QEMU (no guest, no CPUs) that
/// opens some of a guest's volumes as `-blockdev` nodes named as the guest's own
/// ([`DiskNames::node`], by the disk's index `i`) and is driven over QMP in `run_dir`. A
/// migration target runs one to serve its new copies over NBD; an offline source runs one
/// to mirror a stopped guest's volumes. `name` (`-name guest=`) is never a valid guest name
/// (it holds a `+`), so nothing takes it for a guest's QEMU, and an agent that restarts
/// kills it as the QEMU of no guest.
pub fn helper_args(name: &str, run_dir: &Path, disks: &[(usize, PathBuf, bool)]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("guest={name},debug-threads=on"),
        "-machine".into(),
        "none".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", RunFiles::qmp(run_dir).display()),
        "-pidfile".into(),
        RunFiles::pid(run_dir).display().to_string(),
    ];
    for (i, path, direct) in disks {
        a.extend(["-blockdev".into(), blockdev(&DiskNames::of(*i).node, path, *direct)]);
    }
    a
}

/// The helper name of a guest's storage helper `role` (`nbd` on a target, `copy` on an
/// offline source): `<guest>+<role>`.
pub fn helper_name(guest: &str, role: &str) -> String {
    format!("{guest}+{role}")
}

/// The block layer names of a guest's disk `i`, the same on every host, so a source and
/// a target agree on them without asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskNames {
    /// The disk's node (`-blockdev node-name`, the virtio-blk's `drive`): what a mirror
    /// copies from on the source and what the NBD export serves on the target. QEMUs
    /// started with the older `-drive id=disk{i}` line name their backend the same, and
    /// `blockdev-mirror` takes either.
    pub node: String,
    /// The NBD export on the target: block export id and the name clients ask for.
    pub export: String,
    /// The NBD client node on the source (the mirror's target).
    pub nbd_client: String,
    /// The mirror job on the source.
    pub job: String,
}

impl DiskNames {
    /// The names of disk `i`.
    pub fn of(i: usize) -> DiskNames {
        DiskNames {
            node: format!("disk{i}"),
            export: format!("vmove-export-disk{i}"),
            nbd_client: format!("vmove-nbd-disk{i}"),
            job: format!("vmove-mirror-disk{i}"),
        }
    }
}

/// `-blockdev` JSON for a raw disk: a `raw` node named `node` over a `file` node (which
/// inherits the cache mode). Same semantics as the former
/// `-drive format=raw,cache=none|writeback,file.locking=on`: O_DIRECT when `direct`,
/// flushes honoured, image locking on; the guest's write cache is turned on at the
/// device (`write-cache=on`), as `-drive` did for both cache modes. JSON needs no
/// escaping of commas in paths.
fn blockdev(node: &str, path: &Path, direct: bool) -> String {
    serde_json::json!({
        "driver": "raw",
        "node-name": node,
        "cache": { "direct": direct, "no-flush": false },
        "file": { "driver": "file", "filename": path, "locking": "on" },
    })
    .to_string()
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs cannot).
pub fn supports_o_direct(file: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(file).is_ok()
}

/// Starts QEMU in its own session, output to `qemu.log`. Returns the child (the caller
/// waits on it) — QEMU keeps running if the caller dies.
pub fn spawn(bin: &str, args: &[String], run_dir: &Path) -> Result<Child, SpawnError> {
    std::fs::create_dir_all(run_dir).map_err(io(format!("create {}", run_dir.display())))?;
    let _ = std::fs::remove_file(RunFiles::qmp(run_dir));
    let _ = std::fs::remove_file(RunFiles::pid(run_dir));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(RunFiles::qemu_log(run_dir))
        .map_err(io("open qemu.log"))?;
    let log2 = log.try_clone().map_err(io("open qemu.log"))?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn().map_err(io(format!("start {bin}")))
}

/// The last line a QEMU wrote to its log (`qemu.log` in its run directory), or
/// `no output`: what a failure says about why QEMU went away.
pub fn last_words(run: &Path) -> String {
    let log = tail(&RunFiles::qemu_log(run), 400);
    log.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output").to_string()
}

/// The last `max` bytes of a file, as text.
pub fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmove_model::{DiskSpec, NicSpec};

    fn spec() -> GuestSpec {
        GuestSpec {
            name: "vm1".into(),
            host: "host1".into(),
            vcpus: 2,
            memory_mib: 512,
            cpu_model: "qemu64".into(),
            boot: BootSource::Lab { dirty_mb_s: 0, wss_mib: 64, disk_mb_s: 0 },
            desired: Default::default(),
            nics: vec![NicSpec { network: "lab-net".into(), mac: "52:54:00:00:00:01".into(), ip: None }],
            disks: vec![DiskSpec { pool: "shared".into(), volume: "d.img".into(), size_mib: Some(16) }],
            console_port: None,
            group: None,
        }
    }

    #[test]
    fn command_line_has_devices_and_sockets() {
        let l = Launch {
            accel: "tcg".into(),
            run_dir: "/run/x".into(),
            direct_boot: Some(("/k".into(), "/i".into(), "console=ttyS0".into())),
            disks: vec![("/pool/d.img".into(), false)],
            nics: vec![("vt1n0".into(), "52:54:00:00:00:01".into())],
            incoming: Some("defer".into()),
            console_port: Some(5901),
        };
        let a = args(&spec(), &l).join(" ");
        assert!(a.contains("-accel tcg"));
        assert!(a.contains("-smp 2 -m 512M"));
        assert!(a.contains("-qmp unix:/run/x/qmp.sock,server=on,wait=off"));
        assert!(a.contains("-device virtio-blk-pci,drive=disk0,id=vblk0,write-cache=on -netdev"));
        assert!(a.contains("tap,id=net0,ifname=vt1n0,script=no"));
        assert!(a.contains("mac=52:54:00:00:00:01"));
        assert!(a.contains("-chardev socket,id=con0,host=127.0.0.1,port=5901,server=on,wait=off,telnet=off,logfile=/run/x/serial.log"));
        assert!(a.ends_with("-incoming defer"));
        // Without a console port: a unix socket in the run directory (console sessions'
        // keystrokes), and the same log.
        let a = args(&spec(), &Launch { console_port: None, ..l }).join(" ");
        assert!(
            a.contains("-chardev socket,id=con0,path=/run/x/console.sock,server=on,wait=off,logfile=/run/x/serial.log,logappend=on -serial chardev:con0"),
            "{a}"
        );
    }

    #[test]
    fn helper_opens_volumes_under_the_guests_node_names() {
        let disks = vec![(2usize, PathBuf::from("/local/vm1-data.img"), true)];
        let a = helper_args(&helper_name("vm1", "nbd"), Path::new("/run/vm1+nbd"), &disks);
        let s = a.join(" ");
        assert!(s.starts_with("-name guest=vm1+nbd,debug-threads=on -machine none -nodefaults"), "{s}");
        assert!(s.contains("-qmp unix:/run/vm1+nbd/qmp.sock,server=on,wait=off -pidfile /run/vm1+nbd/qemu.pid"), "{s}");
        let bd: Vec<serde_json::Value> =
            a.windows(2).filter(|w| w[0] == "-blockdev").map(|w| serde_json::from_str(&w[1]).expect("JSON")).collect();
        assert_eq!(bd.len(), 1);
        assert_eq!(bd[0]["node-name"], "disk2");
        assert_eq!(bd[0]["file"]["filename"], "/local/vm1-data.img");
        assert!(!a.iter().any(|x| x == "-device" || x == "-incoming"));
    }

    /// Disks are `-blockdev` JSON with the node names of [`DiskNames`]: cache mode,
    /// locking, and paths with commas (which `-drive` would have split) all survive.
    #[test]
    fn disks_are_blockdevs_with_stable_node_names() {
        let mut s = spec();
        s.boot = BootSource::Disk;
        let l = Launch {
            accel: "kvm".into(),
            run_dir: "/run/x".into(),
            direct_boot: None,
            disks: vec![("/pool/a,b.img".into(), true), ("/pool/d.img".into(), false)],
            nics: vec![],
            incoming: None,
            console_port: None,
        };
        let a = args(&s, &l);
        let blockdevs: Vec<serde_json::Value> = a
            .windows(2)
            .filter(|w| w[0] == "-blockdev")
            .map(|w| serde_json::from_str(&w[1]).expect("-blockdev is JSON"))
            .collect();
        let expect = |node: &str, file: &str, direct: bool| {
            serde_json::json!({
                "driver": "raw", "node-name": node,
                "cache": {"direct": direct, "no-flush": false},
                "file": {"driver": "file", "filename": file, "locking": "on"},
            })
        };
        assert_eq!(blockdevs, [expect("disk0", "/pool/a,b.img", true), expect("disk1", "/pool/d.img", false)]);
        let devices: Vec<&String> = a.windows(2).filter(|w| w[0] == "-device").map(|w| &w[1]).collect();
        assert_eq!(
            devices,
            [
                "virtio-blk-pci,drive=disk0,id=vblk0,write-cache=on,bootindex=1",
                "virtio-blk-pci,drive=disk1,id=vblk1,write-cache=on"
            ]
        );
        assert!(!a.iter().any(|x| x == "-drive"));
        let n = DiskNames::of(1);
        assert_eq!(
            (n.node.as_str(), n.export.as_str(), n.nbd_client.as_str(), n.job.as_str()),
            ("disk1", "vmove-export-disk1", "vmove-nbd-disk1", "vmove-mirror-disk1")
        );
    }
}
