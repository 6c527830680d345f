//! Test support (feature `etcd-test`): a throwaway etcd with TLS.
//!
//! [`TestEtcd::start`] runs the `etcd` binary (Debian's `etcd-server`, installed by
//! `scripts/install-deps`; `VMOVE_ETCD` names another) on 127.0.0.1 with free ports, a data
//! directory in `/dev/shm` (no fsync cost) or the temp directory, server TLS and client
//! certificate authentication from a throwaway CA ([`TestPki`], rcgen), and waits until it
//! answers. Dropping it kills the process and removes the directory, also when a test
//! panics; if the test process dies, the kernel kills etcd (`PR_SET_PDEATHSIG` on the
//! thread that started it, which lives as long as the `TestEtcd`).
//!
//! ```ignore
//! let etcd = TestEtcd::start().await?;
//! let store = etcd.store(&TestEtcd::unique_namespace()).await?;
//! ```
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{EtcdOptions, EtcdStore, EtcdTls, Result, StoreError};

/// How long etcd gets to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with fresh ports (another process may take a port between our probe and
/// etcd's bind).
const START_ATTEMPTS: usize = 3;

fn backend(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend { context: context.into(), source: Box::new(e) }
}

/// A throwaway CA with a server certificate (`localhost`, 127.0.0.1) and a client
/// certificate.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM).
    pub server_cert_pem: String,
    /// The server key (PEM).
    pub server_key_pem: String,
    /// The client certificate and the CA, for [`EtcdStore::connect`].
    pub client: EtcdTls,
}

fn validity(p: &mut CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
}

impl TestPki {
    /// A new CA and its two certificates.
    pub fn generate() -> Result<TestPki> {
        let err = |e: rcgen::Error| backend("generate test certificates", e);
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, "vmove test etcd CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut p);
        let ca_key = KeyPair::generate().map_err(err)?;
        let ca = p.self_signed(&ca_key).map_err(err)?;
        let leaf = |sans: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
            let mut p = CertificateParams::new(sans).map_err(err)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            p.extended_key_usages = vec![eku];
            validity(&mut p);
            if cn == "localhost" {
                p.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            }
            let key = KeyPair::generate().map_err(err)?;
            let cert = p.signed_by(&key, &ca, &ca_key).map_err(err)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) =
            leaf(vec!["localhost".into()], "localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (cert_pem, key_pem) = leaf(vec![], "vmove-test-client", ExtendedKeyUsagePurpose::ClientAuth)?;
        let ca_pem = ca.pem();
        Ok(TestPki { client: EtcdTls { ca_pem: ca_pem.clone(), cert_pem, key_pem }, ca_pem, server_cert_pem, server_key_pem })
    }
}

/// The thread that owns the etcd process (so that `PR_SET_PDEATHSIG` fires when the test
/// process dies, not when some worker thread ends).
struct Guard {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Exited = Arc<Mutex<Option<ExitStatus>>>;

fn spawn_guarded(mut cmd: Command, exited: Exited) -> Result<(u32, Guard)> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (pid_tx, pid_rx) = mpsc::channel();
    let (stop, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("test-etcd".into())
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                    return;
                }
            };
            let _ = pid_tx.send(Ok(child.id()));
            let mut status = None;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(Duration::from_millis(50)) {
                if status.is_none() {
                    if let Ok(Some(st)) = child.try_wait() {
                        status = Some(st);
                        *exited.lock().unwrap_or_else(|p| p.into_inner()) = Some(st);
                    }
                }
            }
            if status.is_none() {
                let _ = child.kill();
                if let Ok(st) = child.wait() {
                    *exited.lock().unwrap_or_else(|p| p.into_inner()) = Some(st);
                }
            }
        })
        .map_err(|e| StoreError::io("start the test etcd's thread", e))?;
    let guard = Guard { stop, thread: Some(thread) };
    match pid_rx.recv() {
        Ok(Ok(pid)) => Ok((pid, guard)),
        Ok(Err(e)) => Err(StoreError::io("run etcd (is etcd-server installed? scripts/install-deps)", e)),
        Err(_) => Err(StoreError::Closed),
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io(format!("write {}", path.display()), e))?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| StoreError::io(format!("write {}", path.display()), e))
}

/// Two free ports on 127.0.0.1 (client, peer).
fn free_ports() -> Result<(u16, u16)> {
    let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| StoreError::io("find a free port", e));
    let (a, b) = (bind()?, bind()?);
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| StoreError::io("find a free port", e));
    Ok((port(&a)?, port(&b)?))
}

/// The name of a test etcd's directory: this, the test process's pid, `-`, random.
const DIR_PREFIX: &str = "vmove-test-etcd-";

/// Removes the directories of test processes that died without cleaning up (killed, or
/// aborted): tmpfs holds them in memory.
fn remove_orphans(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A throwaway etcd process with TLS; see the [module docs](self).
pub struct TestEtcd {
    endpoint: String,
    pki: TestPki,
    pid: u32,
    guard: Option<Guard>,
    exited: Exited,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEtcd").field("endpoint", &self.endpoint).field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl TestEtcd {
    /// Starts an etcd and waits until it answers over TLS.
    pub async fn start() -> Result<TestEtcd> {
        let pki = TestPki::generate()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(pki.clone()).await {
                Ok(etcd) => return Ok(etcd),
                Err(e) => {
                    tracing::warn!("test etcd did not start: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(StoreError::Closed))
    }

    async fn start_once(pki: TestPki) -> Result<TestEtcd> {
        let shm = Path::new("/dev/shm");
        remove_orphans(shm);
        let prefix = format!("{DIR_PREFIX}{}-", std::process::id());
        let dir = match tempfile::Builder::new().prefix(&prefix).tempdir_in(shm) {
            Ok(d) => d,
            Err(_) => tempfile::Builder::new()
                .prefix(&prefix)
                .tempdir()
                .map_err(|e| StoreError::io("create the test etcd's directory", e))?,
        };
        let path = |name: &str| dir.path().join(name);
        write_file(&path("ca.pem"), &pki.ca_pem)?;
        write_file(&path("server.pem"), &pki.server_cert_pem)?;
        write_file(&path("server.key"), &pki.server_key_pem)?;
        let log = std::fs::File::create(path("etcd.log")).map_err(|e| StoreError::io("create etcd.log", e))?;
        let (client_port, peer_port) = free_ports()?;
        let client_url = format!("https://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let bin = std::env::var_os("VMOVE_ETCD").unwrap_or_else(|| "etcd".into());
        let mut cmd = Command::new(bin);
        cmd.arg("--name=vmove-test")
            .arg(format!("--data-dir={}", path("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=vmove-test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg(format!("--cert-file={}", path("server.pem").display()))
            .arg(format!("--key-file={}", path("server.key").display()))
            .arg(format!("--trusted-ca-file={}", path("ca.pem").display()))
            .arg("--client-cert-auth")
            // A single member: short timeouts start it sooner (and allow 1 s leases).
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let exited = Exited::default();
        let (pid, guard) = spawn_guarded(cmd, exited.clone())?;
        let etcd = TestEtcd { endpoint: client_url, pki, pid, guard: Some(guard), exited, dir };
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    /// Waits until etcd answers a TLS client, or fails if it exits or takes too long.
    async fn wait_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut opts = self.options("/vmove-test/ready/");
        opts.timeout = Duration::from_secs(1);
        opts.connect_timeout = Duration::from_secs(1);
        loop {
            let status = *self.exited.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(st) = status {
                return Err(StoreError::io(
                    format!("etcd exited ({st}) while starting; its log:\n{}", self.log()),
                    std::io::Error::other("etcd exited"),
                ));
            }
            match EtcdStore::connect_with(opts.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(StoreError::Backend {
                        context: format!("etcd did not answer within {START_TIMEOUT:?}; its log:\n{}", self.log()),
                        source: Box::new(e),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The client URL (`https://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The CA and certificates.
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The client's TLS settings.
    pub fn tls(&self) -> EtcdTls {
        self.pki.client.clone()
    }

    /// Connection options for a namespace (default deadlines).
    pub fn options(&self, namespace: &str) -> EtcdOptions {
        EtcdOptions::new(vec![self.endpoint.clone()], Some(self.tls()), namespace)
    }

    /// A store on a namespace.
    pub async fn store(&self, namespace: &str) -> Result<EtcdStore> {
        EtcdStore::connect_with(self.options(namespace)).await
    }

    /// A namespace no other call of this process returns (`/vmove-test/<pid>-<n>/`).
    pub fn unique_namespace() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        format!("/vmove-test/{}-{}/", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    /// etcd's process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills etcd (SIGKILL) and waits for it; the directory stays until drop.
    pub fn kill(&mut self) {
        drop(self.guard.take());
    }

    /// Stops etcd (SIGSTOP) and waits until every thread of it has stopped (up to 5 s):
    /// connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.stopped() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether every thread of etcd is stopped (state `T` in `/proc/<pid>/task/*/stat`).
    fn stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else { return false };
        tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // "<tid> (<comm>) <state> ...": the state follows the last ')'.
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    }

    /// Lets a frozen etcd go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let exited = self.exited.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if self.guard.is_some() && !exited {
            if let Ok(pid) = libc::pid_t::try_from(self.pid) {
                // SAFETY: kill(2) on the pid of our own child, which has not been reaped
                // (the guard thread records the status when it reaps), so the pid is not
                // reused; kill(2) touches no memory.
                unsafe {
                    libc::kill(pid, sig);
                }
            }
        }
    }

    /// etcd's log (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}
