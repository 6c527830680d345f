//! Two real QEMUs on 127.0.0.1 with the guest command line of `vmove_host::qemu::args`,
//! a throwaway cluster CA for their TLS, and the QMP steps of a live storage copy.
//! Every QEMU is killed when its handle drops (also when a test panics, which prints the
//! QEMU's log); every file lives in the test's temporary directory.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::json;
use vmove_host::qemu::{self, DiskNames, Launch, RunFiles};
use vmove_model::{BootSource, DiskSpec, GuestSpec};
use vmove_qmp::{
    BlockJobEvent, BlockJobEventKind, BlockdevMirror, Event, MigrateSetParameters,
    MigrationCapability, MigrationStatus, MirrorCopyMode, MirrorSyncMode, NbdAddr, NbdClient,
    NbdExport, NbdServerStart, Qmp,
};

/// Size of the test volume.
pub const SIZE: usize = 64 << 20;
/// Failure guard for anything we wait for (a loaded machine is slow, not stuck).
pub const GUARD: Duration = Duration::from_secs(90);
/// The one TLS credentials object per QEMU, used by NBD and by the migration alike.
pub const TLS: &str = "vmove-tls";
/// Admits only the source host's certificate to the NBD server.
pub const AUTHZ: &str = "vmove-nbd-authz";
/// The guest device's backend, for writes that take the guest's path.
const GUEST_DISK: &str = "/machine/peripheral/vblk0/virtio-backend";

/// A QEMU process, killed on drop (its log printed when a test panics).
pub struct Proc {
    child: Child,
    run: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = qemu::tail(&RunFiles::qemu_log(&self.run), 2000);
            eprintln!("--- {} ---\n{log}", self.run.display());
        }
    }
}

/// A running QEMU and its QMP connection.
pub struct Vm {
    /// Its QMP connection.
    pub qmp: Qmp,
    proc: Proc,
}

impl Vm {
    /// The QEMU's own log.
    pub fn log(&self) -> String {
        qemu::tail(&RunFiles::qemu_log(&self.proc.run), 4000)
    }

    /// Kills the QEMU now.
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// False (with a note) when QEMU is not installed: the test is skipped.
pub fn have_qemu(test: &str) -> bool {
    match std::process::Command::new(qemu::QEMU_BIN)
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!("SKIPPED {test}: {} not runnable", qemu::QEMU_BIN);
            false
        }
    }
}

fn spec() -> GuestSpec {
    GuestSpec {
        name: "vm1".into(),
        host: "src".into(),
        vcpus: 1,
        memory_mib: 32,
        cpu_model: "qemu64".into(),
        // No kernel: the firmware finds nothing to boot and idles; the disk is data.
        boot: BootSource::Lab {
            dirty_mb_s: 0,
            wss_mib: 0,
            disk_mb_s: 0,
        },
        desired: Default::default(),
        nics: vec![],
        disks: vec![DiskSpec {
            pool: "local".into(),
            volume: "vm1.img".into(),
            size_mib: Some((SIZE >> 20) as u64),
        }],
        console_port: None,
        group: None,
    }
}

/// How the source QEMU opens its disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SourceLine {
    /// Today's command line (`-blockdev` with node `disk0`).
    Blockdev,
    /// The former `-drive id=disk0` line (a QEMU an older agent started).
    LegacyDrive,
}

/// Starts a guest QEMU on `disk` with `run` as run directory.
pub async fn start(run: &Path, disk: &Path, incoming: bool, line: SourceLine) -> Vm {
    let direct = qemu::supports_o_direct(disk);
    let mut launch = Launch {
        accel: "tcg".into(),
        run_dir: run.to_path_buf(),
        direct_boot: None,
        disks: vec![(disk.to_path_buf(), direct)],
        nics: vec![],
        incoming: incoming.then(|| "defer".to_string()),
        console_port: None,
    };
    if line == SourceLine::LegacyDrive {
        launch.disks.clear();
    }
    let mut args = qemu::args(&spec(), &launch);
    if line == SourceLine::LegacyDrive {
        let cache = if direct { "none" } else { "writeback" };
        args.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=disk0,cache={cache},file.locking=on",
                disk.display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=disk0,id=vblk0".into(),
        ]);
    }
    let child = qemu::spawn(qemu::QEMU_BIN, &args, run).expect("start qemu");
    let proc = Proc {
        child,
        run: run.to_path_buf(),
    };
    let qmp = match Qmp::connect_retry(&RunFiles::qmp(run), Duration::from_secs(30)).await {
        Ok(q) => q,
        Err(e) => panic!("qmp of {}: {e}", run.display()),
    };
    qmp.set_default_timeout(Duration::from_secs(30));
    Vm { qmp, proc }
}

/// Starts a storage helper (`-machine none`, the disk as node `disk0`), as a target agent
/// runs one to serve its new copy.
pub async fn start_helper(run: &Path, disk: &Path) -> Vm {
    let direct = qemu::supports_o_direct(disk);
    let args = qemu::helper_args(
        &qemu::helper_name("vm1", "nbd"),
        run,
        &[(0, disk.to_path_buf(), direct)],
    );
    let child = qemu::spawn(qemu::QEMU_BIN, &args, run).expect("start helper qemu");
    let proc = Proc {
        child,
        run: run.to_path_buf(),
    };
    let qmp = match Qmp::connect_retry(&RunFiles::qmp(run), Duration::from_secs(30)).await {
        Ok(q) => q,
        Err(e) => panic!("qmp of {}: {e}", run.display()),
    };
    qmp.set_default_timeout(Duration::from_secs(30));
    Vm { qmp, proc }
}

impl Vm {
    /// Waits until the QEMU has exited (failure guard [`GUARD`]).
    pub fn wait_exit(&mut self) {
        let deadline = Instant::now() + GUARD;
        loop {
            if self.proc.child.try_wait().expect("try_wait").is_some() {
                return;
            }
            assert!(Instant::now() < deadline, "QEMU did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Target: like [`target_serve`], but the NBD server listens on a socket bound here and
/// passed to QEMU with `getfd` (no port chosen and released in between).
pub async fn target_serve_fd(q: &Qmp, tls_dir: &Path, listener: &std::net::TcpListener) {
    let n = names();
    let dir = tls_dir.to_str().expect("utf-8 path");
    q.object_add_tls_creds_x509(TLS, dir, "server", true)
        .await
        .expect("tls-creds server");
    q.object_add_authz_simple(AUTHZ, "CN=src")
        .await
        .expect("authz");
    q.getfd(std::os::fd::AsFd::as_fd(listener), "vmove-nbd-listener")
        .await
        .expect("getfd");
    q.nbd_server_start(&NbdServerStart {
        addr: NbdAddr::Fd {
            name: "vmove-nbd-listener".into(),
        },
        tls_creds: Some(TLS.into()),
        tls_authz: Some(AUTHZ.into()),
        max_connections: None,
    })
    .await
    .expect("nbd-server-start on a passed socket");
    q.block_export_add_nbd(&NbdExport {
        id: n.export.clone(),
        node_name: n.node,
        name: Some(n.export),
        writable: true,
        allow_inactive: None,
    })
    .await
    .expect("block-export-add");
}

/// The volumes and TLS credentials of one test, in its own temporary directory.
pub struct Setup {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// The source's volume (a pattern).
    pub src_img: PathBuf,
    /// The target's volume (created empty, same size).
    pub dst_img: PathBuf,
    /// `tls-creds-x509` directory of the target (endpoint server).
    pub server_tls: PathBuf,
    /// `tls-creds-x509` directory of the source (endpoint client).
    pub client_tls: PathBuf,
    /// Client credentials of another host of the same CA (`intruder`).
    pub intruder_tls: PathBuf,
}

/// Block `i` (4 KiB) of the pattern holds `i` as four little-endian bytes, repeated (so
/// a block in the wrong place shows, and block 0 carries no boot signature).
pub fn pattern() -> Vec<u8> {
    let mut v = Vec::with_capacity(SIZE);
    for i in 0..(SIZE / 4096) as u32 {
        v.extend_from_slice(&i.to_le_bytes().repeat(1024));
    }
    v
}

/// A fresh directory with a pattern volume for the source, an empty one of the same size
/// for the target (as the target agent creates it), and a throwaway CA's host
/// certificates for `dst` (server), `src` (client) and `intruder` (client), all also for
/// 127.0.0.1.
pub fn setup() -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("vmove-storage-copy")
        .tempdir()
        .expect("tempdir");
    let (src_img, dst_img) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    std::fs::write(&src_img, pattern()).expect("write src.img");
    let f = std::fs::File::create(&dst_img).expect("create dst.img");
    f.set_len(SIZE as u64).expect("size dst.img");
    let ca = vmove_api::pki::Ca::generate("storage-test").expect("CA");
    let ip = "127.0.0.1".parse().expect("ip");
    let mut dirs = Vec::new();
    for (host, role) in [("dst", "server"), ("src", "client"), ("intruder", "client")] {
        let pair = ca.issue_host(host, ip).expect("host cert");
        let d = dir.path().join(format!("tls-{host}"));
        std::fs::create_dir(&d).expect("tls dir");
        std::fs::write(d.join("ca-cert.pem"), &ca.pair().cert_pem).expect("ca");
        std::fs::write(d.join(format!("{role}-cert.pem")), &pair.cert_pem).expect("cert");
        std::fs::write(d.join(format!("{role}-key.pem")), &pair.key_pem).expect("key");
        dirs.push(d);
    }
    let intruder_tls = dirs.pop().expect("intruder");
    let client_tls = dirs.pop().expect("client");
    let server_tls = dirs.pop().expect("server");
    Setup {
        src_img,
        dst_img,
        server_tls,
        client_tls,
        intruder_tls,
        dir,
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn names() -> DiskNames {
    DiskNames::of(0)
}

/// Target: TLS server credentials, the NBD server (TLS, only the source's certificate
/// admitted), and a writable export of the disk's node.
pub async fn target_serve(q: &Qmp, tls_dir: &Path, port: u16) {
    let n = names();
    let dir = tls_dir.to_str().expect("utf-8 path");
    q.object_add_tls_creds_x509(TLS, dir, "server", true)
        .await
        .expect("tls-creds server");
    q.object_add_authz_simple(AUTHZ, "CN=src")
        .await
        .expect("authz");
    q.nbd_server_start(&NbdServerStart {
        addr: NbdAddr::Inet {
            host: "127.0.0.1".into(),
            port,
        },
        tls_creds: Some(TLS.into()),
        tls_authz: Some(AUTHZ.into()),
        max_connections: None,
    })
    .await
    .expect("nbd-server-start");
    q.block_export_add_nbd(&NbdExport {
        id: n.export.clone(),
        node_name: n.node,
        name: Some(n.export),
        writable: true,
        allow_inactive: None,
    })
    .await
    .expect("block-export-add");
}

/// Target: removes the export (waiting until it is gone) and stops the NBD server.
pub async fn target_unserve(q: &Qmp) {
    let n = names();
    let mut ev = q.subscribe();
    q.block_export_del(&n.export, false)
        .await
        .expect("block-export-del");
    q.wait_event(&mut ev, GUARD, "BLOCK_EXPORT_DELETED", |e| {
        (e.block_export_deleted() == Some(n.export.as_str())).then_some(())
    })
    .await
    .expect("export deleted");
    q.nbd_server_stop().await.expect("nbd-server-stop");
    assert!(q.query_block_exports().await.expect("exports").is_empty());
}

/// Source: TLS client credentials (object `creds`) and the NBD client node for the
/// target's export.
pub async fn source_connect(
    q: &Qmp,
    creds: &str,
    tls_dir: &Path,
    port: u16,
) -> Result<(), vmove_qmp::QmpError> {
    let n = names();
    let dir = tls_dir.to_str().expect("utf-8 path");
    q.object_add_tls_creds_x509(creds, dir, "client", true)
        .await
        .expect("tls-creds client");
    q.blockdev_add_nbd(&NbdClient {
        node_name: n.nbd_client,
        server: NbdAddr::Inet {
            host: "127.0.0.1".into(),
            port,
        },
        export: n.export,
        tls_creds: Some(creds.into()),
        tls_hostname: Some("dst".into()),
        reconnect_delay_s: None,
    })
    .await
}

/// Source: starts the full mirror of the disk into the NBD node, in background mode.
pub async fn source_mirror(q: &Qmp, speed: Option<u64>) {
    let n = names();
    q.blockdev_mirror(&BlockdevMirror {
        job_id: Some(n.job),
        device: n.node,
        target: n.nbd_client,
        sync: MirrorSyncMode::Full,
        copy_mode: Some(MirrorCopyMode::Background),
        speed,
        ..Default::default()
    })
    .await
    .expect("blockdev-mirror");
}

/// The next event of the mirror job among `kinds` (failure guard [`GUARD`]).
pub async fn job_event(
    q: &Qmp,
    ev: &mut tokio::sync::broadcast::Receiver<Event>,
    kinds: &[BlockJobEventKind],
) -> BlockJobEvent {
    let job = names().job;
    q.wait_event(ev, GUARD, &format!("{job} {kinds:?}"), |e| {
        e.block_job()
            .filter(|b| b.job_id == job && kinds.contains(&b.kind))
    })
    .await
    .expect("block job event")
}

/// Source: the mirror's end after a failure or cancel: no job, no NBD node, no filter
/// left above the disk, which still is the guest's, active, on its own file.
pub async fn source_untouched(q: &Qmp, img: &Path) {
    assert!(q.query_block_jobs().await.expect("jobs").is_empty());
    let nodes = q.query_named_block_nodes().await.expect("nodes");
    assert!(
        nodes
            .iter()
            .all(|n| n.drv != "nbd" && n.drv != "mirror_top"),
        "{nodes:?}"
    );
    let block = q.query_block().await.expect("query-block");
    let root = block[0].inserted.as_ref().expect("a disk");
    assert_eq!(root.file, img.display().to_string());
    assert_eq!(root.active, Some(true));
    assert!(q.query_status().await.expect("status").running);
}

impl Vm {
    /// Runs a `qemu-io` command on the guest's disk device through HMP and returns what
    /// it printed (QEMU prints it on its stdout, i.e. into `qemu.log`).
    async fn qemu_io(&self, cmd: &str) -> String {
        let log = RunFiles::qemu_log(&self.proc.run);
        let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let line = format!("qemu-io -d {GUEST_DISK} \"{cmd}\"");
        let out = self
            .qmp
            .execute(
                "human-monitor-command",
                Some(json!({ "command-line": line })),
            )
            .await
            .expect("human-monitor-command");
        let out = out.as_str().unwrap_or_default();
        assert!(out.is_empty(), "qemu-io {cmd}: {out}");
        let text = std::fs::read(&log).expect("qemu.log");
        String::from_utf8_lossy(&text[before as usize..]).into_owned()
    }

    /// Writes `len` bytes of `pattern` at `off` through the guest's disk device (the
    /// path a guest write takes: virtio-blk's backend, then the mirror's filter if any).
    pub async fn guest_write(&self, pattern: u8, off: usize, len: usize) {
        let out = self
            .qemu_io(&format!("write -P {pattern:#x} {off} {len}"))
            .await;
        assert!(
            out.starts_with(&format!("wrote {len}/{len} bytes")),
            "qemu-io write: {out}"
        );
    }

    /// Reads back through the guest's disk device and checks the pattern.
    pub async fn guest_read_check(&self, pattern: u8, off: usize, len: usize) {
        let out = self
            .qemu_io(&format!("read -P {pattern:#x} {off} {len}"))
            .await;
        assert!(
            out.starts_with(&format!("read {len}/{len} bytes")),
            "qemu-io read: {out}"
        );
    }
}

/// Both sides' migration settings: TLS with the same credentials object as NBD,
/// unlimited bandwidth, events, and on the source `pause-before-switchover`.
pub async fn migration_setup(src: &Qmp, dst: &Qmp, pause_before_switchover: bool) {
    src.migrate_set_capabilities(&[
        (MigrationCapability::Events, true),
        (
            MigrationCapability::PauseBeforeSwitchover,
            pause_before_switchover,
        ),
    ])
    .await
    .expect("src caps");
    dst.migrate_set_capabilities(&[(MigrationCapability::Events, true)])
        .await
        .expect("dst caps");
    for (q, host) in [(src, Some("dst".to_string())), (dst, None)] {
        q.migrate_set_parameters(&MigrateSetParameters {
            tls_creds: Some(TLS.into()),
            tls_hostname: host,
            max_bandwidth_bytes_per_s: Some(1 << 40),
            ..Default::default()
        })
        .await
        .expect("migrate-set-parameters");
    }
}

/// Waits for the migration to reach `want`; a finished migration that is not `want`
/// fails the test.
pub async fn migration_reaches(
    q: &Qmp,
    ev: &mut tokio::sync::broadcast::Receiver<Event>,
    want: MigrationStatus,
) {
    let got = q
        .wait_event(ev, GUARD, want.as_str(), |e| {
            e.migration_status()
                .filter(|s| *s == want || s.is_finished())
        })
        .await
        .expect("migration event");
    assert_eq!(got, want, "migration ended {got}");
}

/// Waits until the QEMU runs the guest (the target resumes by itself after switchover).
pub async fn until_running(q: &Qmp) {
    let deadline = Instant::now() + GUARD;
    let mut ev = q.subscribe();
    while !q.query_status().await.expect("status").running {
        assert!(Instant::now() < deadline, "guest not resumed");
        let _ = q
            .wait_event(&mut ev, Duration::from_secs(1), "RESUME", |e| {
                e.is("RESUME").then_some(())
            })
            .await;
    }
}

/// The offset of the first differing byte, if any.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    let block = a
        .chunks(4096)
        .zip(b.chunks(4096))
        .position(|(x, y)| x != y)?;
    let at = a[block * 4096..]
        .iter()
        .zip(&b[block * 4096..])
        .position(|(x, y)| x != y)?;
    Some(block * 4096 + at)
}

/// CRC-32 of a file.
pub fn crc(path: &Path) -> u32 {
    crc32fast::hash(&std::fs::read(path).expect("read volume"))
}
