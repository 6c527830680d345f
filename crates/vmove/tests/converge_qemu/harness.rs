//! Two real QEMUs on 127.0.0.1 running the lab guest, a cuttable TCP proxy, TLS
//! credentials, and the conversion of `query-migrate` into the ladder's samples.
// Shared by two test crates; each uses part of it.
#![allow(dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener as TokioListener, TcpStream};
use tokio::task::JoinHandle;
use vmove_lab::image::{self, BootOpts, GuestImage};
use vmove_plan::converge::{Phase, Sample};
use vmove_qmp::{MigrateSetParameters, MigrationCapability, MigrationInfo, MigrationStatus, Qmp};

/// The lab image, built (or found in the cache) once per test process.
pub fn lab_image() -> Result<GuestImage> {
    static IMG: Mutex<Option<GuestImage>> = Mutex::new(None);
    let mut g = IMG.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = g.as_ref() {
        return Ok(i.clone());
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_vmove-guest"));
    let i = image::ensure(bin, &image::default_kernel_root(), &image::default_cache_dir())?;
    *g = Some(i.clone());
    Ok(i)
}

/// `load average 2.55 1.20 0.90`.
pub fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let f: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load {}", f.join(" "))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What the guest does.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    pub memory_mib: u32,
    pub dirty_mb_s: u32,
    pub wss_mib: u32,
}

/// One QEMU running the lab guest (TCG), killed when dropped.
pub struct Vm {
    pub child: Child,
    pub qmp: Qmp,
    serial: PathBuf,
    pub role: &'static str,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// Boots `role` in `dir`; `incoming`: `-incoming defer`.
    pub async fn boot(dir: &Path, role: &'static str, g: Guest, incoming: bool) -> Result<Vm> {
        let img = lab_image()?;
        let qmp_path = dir.join(format!("{role}.qmp"));
        let serial = dir.join(format!("{role}.serial"));
        let append = image::cmdline(&BootOpts {
            name: "conv".into(),
            ip: None,
            dirty_mb_s: g.dirty_mb_s,
            wss_mib: g.wss_mib,
            disk_mb_s: 0,
        });
        let mut cmd = Command::new("nice");
        cmd.args(["-n", "5", "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1"])
            .args(["-m", &format!("{}M", g.memory_mib), "-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&img.initrd)
            .arg("-append")
            .arg(&append)
            .arg("-chardev")
            .arg(format!("file,id=con0,path={}", serial.display()))
            .args(["-serial", "chardev:con0", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()));
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let err = std::fs::File::create(dir.join(format!("{role}.err")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context("start qemu-system-x86_64")?;
        // The target's connection negotiates out-of-band execution, as the agent's must:
        // post-copy recovery may need it (docs/DESIGN.md).
        let qmp = if incoming {
            Qmp::connect_retry_oob(&qmp_path, Duration::from_secs(30)).await?
        } else {
            Qmp::connect_retry(&qmp_path, Duration::from_secs(30)).await?
        };
        qmp.set_default_timeout(Duration::from_secs(20));
        Ok(Vm { child, qmp, serial, role })
    }

    /// The serial console so far.
    pub fn serial(&self) -> String {
        std::fs::read(&self.serial).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// `VERIFY OK` lines so far.
    pub fn verified(&self) -> usize {
        self.serial().lines().filter(|l| l.trim().starts_with("VERIFY OK")).count()
    }

    /// Waits until the guest printed `n` more `VERIFY OK` lines than `after`; fails on
    /// `VERIFY FAIL`, an oops or a panic.
    pub async fn verify(&self, after: usize, n: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.serial();
            if let Some(bad) = s.lines().find(|l| l.contains("VERIFY FAIL") || l.contains("Oops") || l.contains("Kernel panic") || l.contains("BUG:")) {
                bail!("{}: {bad}", self.role);
            }
            let ok = s.lines().filter(|l| l.trim().starts_with("VERIFY OK")).count();
            if ok >= after + n {
                return Ok(ok);
            }
            if Instant::now() > deadline {
                bail!("{}: {ok} VERIFY OK after {timeout:?} (wanted {})", self.role, after + n);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Source (running, verified once) and an incoming target.
pub struct Pair {
    pub src: Vm,
    pub dst: Vm,
    pub dir: tempfile::TempDir,
}

impl Pair {
    pub async fn boot(g: Guest) -> Result<Pair> {
        let dir = tempfile::tempdir()?;
        let src = Vm::boot(dir.path(), "src", g, false).await?;
        let dst = Vm::boot(dir.path(), "dst", g, true).await?;
        src.verify(0, 1, Duration::from_secs(180)).await?;
        Ok(Pair { src, dst, dir })
    }

    /// Capabilities by QEMU name on both sides.
    pub async fn caps(&self, caps: &[(&str, bool)]) -> Result<()> {
        let c = named(caps);
        self.src.qmp.migrate_set_capabilities(&c).await.context("source capabilities")?;
        self.dst.qmp.migrate_set_capabilities(&c).await.context("target capabilities")?;
        Ok(())
    }

    /// TLS with a fresh CA; one host certificate for both ends, as the agents do.
    pub async fn tls(&self) -> Result<()> {
        let ca = vmove_api::pki::Ca::generate("converge")?;
        let host = ca.issue_host("localhost", IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        for (vm, role) in [(&self.src, "client"), (&self.dst, "server")] {
            let d = self.dir.path().join(format!("tls-{role}"));
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("ca-cert.pem"), &ca.pair().cert_pem)?;
            std::fs::write(d.join(format!("{role}-cert.pem")), &host.cert_pem)?;
            std::fs::write(d.join(format!("{role}-key.pem")), &host.key_pem)?;
            vm.qmp
                .execute(
                    "object-add",
                    Some(serde_json::json!({"qom-type": "tls-creds-x509", "id": "tls0", "dir": d, "endpoint": role, "verify-peer": true})),
                )
                .await?;
            let hostname = (role == "client").then(|| "localhost".to_string());
            vm.qmp
                .migrate_set_parameters(&MigrateSetParameters { tls_creds: Some("tls0".into()), tls_hostname: hostname, ..Default::default() })
                .await?;
        }
        Ok(())
    }

    /// `migrate-incoming` on a fresh port and `migrate` to `via` (a proxy) or straight.
    pub async fn start(&self, via: Option<&Proxy>) -> Result<u16> {
        let port = free_port()?;
        self.dst.qmp.migrate_incoming(&format!("tcp:127.0.0.1:{port}")).await?;
        let to = match via {
            Some(p) => p.set_target(port).await?,
            None => port,
        };
        self.src.qmp.migrate(&format!("tcp:127.0.0.1:{to}")).await?;
        Ok(port)
    }
}

pub fn named(caps: &[(&str, bool)]) -> Vec<(MigrationCapability, bool)> {
    caps.iter().map(|(n, on)| (MigrationCapability::from_wire(n), *on)).collect()
}

/// Polls `q`'s `query-migrate` every 100 ms until `done` holds.
pub async fn wait_for(q: &Qmp, what: &str, timeout: Duration, done: impl Fn(&MigrationInfo) -> bool) -> Result<MigrationInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let i = q.query_migrate().await?;
        if done(&i) {
            return Ok(i);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?} (status {}, {:?})", i.status_or_none(), i.error_desc);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a finished migration and its final figures (QEMU fills `total-time` in a
/// moment after it says `completed`).
pub async fn finished(q: &Qmp, timeout: Duration) -> Result<MigrationInfo> {
    let i = wait_for(q, "migration end", timeout, |i| i.status_or_none().is_finished()).await?;
    if i.status_or_none() != MigrationStatus::Completed {
        bail!("migration {}: {:?}", i.status_or_none(), i.error_desc);
    }
    wait_for(q, "final figures", Duration::from_secs(5), |i| i.total_time.unwrap_or(0) > 0).await
}

/// The ladder's sample from the source's `query-migrate`.
pub fn sample(i: &MigrationInfo, at_ms: u64) -> Sample {
    Sample {
        at_ms,
        status: Phase::from_qemu(i.status_or_none().as_str()),
        pass: i.passes(),
        remaining_bytes: i.remaining_bytes(),
        transferred_bytes: i.transferred_bytes(),
        rate_bytes_per_s: i.rate_bytes_per_s(),
        dirty_rate_bytes_per_s: i.dirty_rate_bytes_per_s(),
        expected_downtime_ms: i.expected_downtime.unwrap_or(0),
        throttle_pct: i.cpu_throttle_percentage,
        // These QEMUs talk through the test's proxy, whose queues are not QEMU's.
        in_flight_bytes: 0,
    }
}

/// One line of figures.
pub fn line(t0: Instant, i: &MigrationInfo) -> String {
    let ram = i.ram.clone().unwrap_or_default();
    format!(
        "{:6.1}s {:>16} pass={:<3} rem={:6.1}MB dirty={:5.1}MB/s rate={:5.1}MB/s exp_dt={:>5}ms thr={:>3}% pre={}MB post={}MB req={}",
        t0.elapsed().as_secs_f64(),
        i.status_or_none().as_str(),
        i.passes(),
        i.remaining_bytes() as f64 / 1e6,
        i.dirty_rate_bytes_per_s() as f64 / 1e6,
        i.rate_bytes_per_s() as f64 / 1e6,
        i.expected_downtime.unwrap_or(0),
        i.cpu_throttle_percentage.unwrap_or(0),
        ram.precopy_bytes.unwrap_or(0) / 1_000_000,
        ram.postcopy_bytes.unwrap_or(0) / 1_000_000,
        ram.postcopy_requests.unwrap_or(0),
    )
}

/// A TCP proxy 127.0.0.1:port → 127.0.0.1:target that can be cut (every connection
/// closed, nothing accepted) to play a broken migration link.
pub struct Proxy {
    pub port: u16,
    target: Arc<Mutex<u16>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start() -> Result<Proxy> {
        let l = TokioListener::bind("127.0.0.1:0").await?;
        let port = l.local_addr()?.port();
        let target = Arc::new(Mutex::new(0u16));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (t, ts) = (target.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut a, _)) = l.accept().await {
                let to = *t.lock().unwrap_or_else(|p| p.into_inner());
                let Ok(mut b) = TcpStream::connect(("127.0.0.1", to)).await else { continue };
                let h = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
                ts.lock().unwrap_or_else(|p| p.into_inner()).push(h);
            }
        });
        Ok(Proxy { port, target, tasks, accept })
    }

    /// Where new connections go; returns the proxy's own port.
    pub async fn set_target(&self, port: u16) -> Result<u16> {
        *self.target.lock().map_err(|_| anyhow!("proxy lock"))? = port;
        Ok(self.port)
    }

    /// Closes every connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let mut t = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.len();
        for h in t.drain(..) {
            h.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
