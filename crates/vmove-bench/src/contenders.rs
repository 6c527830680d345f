//! The contenders: boot a guest on host1 their way, move it to host2, clean up.
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vmove_host::netns;
use vmove_host::qemu::{self, Launch, RunFiles};
use vmove_model::{BootSource, GuestSpec, NicSpec};
use vmove_qmp::{MigrationInfo, MigrationStatus, Qmp};

use crate::env::{Env, Libvirt};
use crate::model::{Contender, Sample};
use crate::parse;

mod by_vmove;
pub(crate) use by_vmove::{precheck, streamed, Streamed};

/// The guest a run boots.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    /// Name.
    pub name: String,
    /// Instance number (unique within the benchmark).
    pub n: u32,
    /// Address on lab-net.
    pub ip: Ipv4Addr,
    /// MAC (unique within the benchmark, so no bridge remembers a stale port).
    pub mac: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Dirty rate, MB/s.
    pub dirty_mb_s: u32,
    /// Working set, MiB.
    pub wss_mib: u32,
    /// A data disk in the hosts' local pools, MiB.
    pub disk_mib: Option<u64>,
    /// What the guest writes onto it, MB/s.
    pub disk_mb_s: u32,
}

impl GuestPlan {
    pub(crate) fn boot_opts(&self) -> vmove_lab::image::BootOpts {
        vmove_lab::image::BootOpts {
            name: self.name.clone(),
            ip: Some(format!("{}/24", self.ip)),
            dirty_mb_s: self.dirty_mb_s,
            wss_mib: self.wss_mib,
            disk_mb_s: self.disk_mb_s,
        }
    }
}

/// What a migration yielded.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Completed within the budget.
    pub converged: bool,
    /// What went wrong.
    pub error: Option<String>,
    /// Whole operation, ms.
    pub total_ms: Option<u64>,
    /// QEMU's (or libvirt's) migration time, ms.
    pub qemu_total_ms: Option<u64>,
    /// Downtime, ms.
    pub downtime_ms: Option<u64>,
    /// Bytes sent.
    pub transferred_bytes: Option<u64>,
    /// Bytes of the local disk copied, as the tool reports them.
    pub disk_bytes: Option<u64>,
    /// How long the disk copy took, ms (vmove).
    pub disk_copy_ms: Option<u64>,
    /// Non-zero guest memory, bytes.
    pub touched_bytes: Option<u64>,
    /// Passes.
    pub passes: Option<u64>,
    /// Remaining bytes over time.
    pub samples: Vec<Sample>,
    /// Extra facts.
    pub notes: Vec<String>,
    /// The target's `RESUME`, QEMU's timestamp, unix µs.
    pub resumed_us: Option<u64>,
}

/// Shared by all contenders.
pub struct Ctx<'a> {
    /// The lab.
    pub env: &'a Env,
    /// The libvirt daemons, if they run.
    pub libvirt: Option<&'a Libvirt>,
    /// Time budget of one migration.
    pub budget: Duration,
    /// Where consoles of damaged guests are kept.
    pub consoles: std::path::PathBuf,
}

/// A hand-started QEMU.
pub struct QemuProc {
    child: Child,
    qmp: Qmp,
    tap: String,
    ns: String,
}

/// A booted guest, as each contender holds it.
pub enum Running {
    /// Defined and run by vmove's agents.
    Vmove,
    /// QEMUs started by hand: the source, and the target once started.
    Qemu {
        /// On host1.
        src: Option<QemuProc>,
        /// On host2.
        dst: Option<QemuProc>,
    },
    /// A transient libvirt domain.
    Libvirt,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub(crate) async fn vmove(ctx: &Ctx<'_>, args: &[&str]) -> Result<String> {
    let o = tokio::process::Command::new(ctx.env.bin_dir.join("vmove"))
        .args(args)
        .env("VMOVE_CLUSTER", &ctx.env.info.cluster_file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("run vmove")?;
    if !o.status.success() {
        bail!("vmove {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

pub(crate) async fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let o = tokio::process::Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(uri)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("run virsh")?;
    if !o.status.success() {
        bail!("virsh {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}


// ------------------------------------------------------------------------- boot

/// Boots the guest on host1 the contender's way.
pub async fn boot(ctx: &Ctx<'_>, c: Contender, g: &GuestPlan) -> Result<Running> {
    match c {
        Contender::Vmove => {
            let nic = format!("lab-net,ip={}/24,mac={}", g.ip, g.mac);
            let mem = format!("{}M", g.memory_mib);
            let (dirty, wss, write) = (g.dirty_mb_s.to_string(), g.wss_mib.to_string(), g.disk_mb_s.to_string());
            let mut args = vec!["guest", "create", &g.name, "--host", "host1", "--memory", &mem, "--nic", &nic, "--dirty-rate", &dirty, "--wss", &wss];
            if g.disk_mb_s > 0 {
                args.extend(["--disk-rate", &write]);
            }
            let disk = g.disk_mib.map(|mib| crate::disks::vmove_disk_arg(g, mib));
            if let Some(d) = &disk {
                args.extend(["--disk", d]);
            }
            args.push("--start");
            vmove(ctx, &args).await?;
            Ok(Running::Vmove)
        }
        Contender::Qemu | Contender::Control => {
            let disk = match g.disk_mib {
                Some(mib) => {
                    let f = crate::disks::control_file(ctx.env, g);
                    crate::disks::create_raw(&f, mib)?;
                    Some(f)
                }
                None => None,
            };
            let src = spawn_qemu(ctx.env, 0, g, false, disk).await?;
            Ok(Running::Qemu { src: Some(src), dst: None })
        }
        Contender::Virsh | Contender::VirshTunnelled | Contender::VirshBest | Contender::VirshCopyStorage => {
            crate::libvirt::boot(ctx, g).await?;
            Ok(Running::Libvirt)
        }
    }
}

/// Starts QEMU by hand in host `idx`'s namespace with the agent's command line, a tap on
/// that host's lab-net, the data disk if any, and (for the target) `-incoming defer`.
async fn spawn_qemu(env: &Env, idx: usize, g: &GuestPlan, incoming: bool, disk: Option<std::path::PathBuf>) -> Result<QemuProc> {
    let ns = env.host_ns[idx].clone();
    let role = if incoming { "dst" } else { "src" };
    let tap = qemu_tap(g, role);
    {
        let tap = tap.clone();
        netns::run_in::<_, anyhow::Error>(&ns, move || {
            vmove_host::tap::create(&tap)?;
            vmove_host::net::runtime()?.block_on(async {
                let nl = vmove_host::net::Netlink::connect()?;
                nl.set_controller(&tap, "lab-net").await?;
                Ok(nl.set_up(&tap).await?)
            })
        })?;
    }
    let run_dir = env.dir().join("bench-qemu").join(format!("{}-{role}", g.name));
    std::fs::create_dir_all(&run_dir)?;
    let _ = std::fs::remove_file(RunFiles::qmp(&run_dir));
    let spec = GuestSpec {
        name: g.name.clone(),
        host: format!("host{}", idx + 1),
        vcpus: 1,
        memory_mib: g.memory_mib,
        cpu_model: "qemu64".into(),
        boot: BootSource::Lab { dirty_mb_s: g.dirty_mb_s, wss_mib: g.wss_mib, disk_mb_s: g.disk_mb_s },
        desired: Default::default(),
        nics: vec![NicSpec { network: "lab-net".into(), mac: g.mac.clone(), ip: Some(format!("{}/24", g.ip)) }],
        disks: vec![],
        console_port: None,
        group: None,
    };
    let launch = Launch {
        accel: "tcg".into(),
        run_dir: run_dir.clone(),
        direct_boot: Some((env.image.kernel.clone(), env.image.initrd.clone(), vmove_lab::image::cmdline(&g.boot_opts()))),
        disks: disk.map(|d| {
            let direct = qemu::supports_o_direct(&d);
            (d, direct)
        })
        .into_iter()
        .collect(),
        nics: vec![(tap.clone(), g.mac.clone())],
        incoming: incoming.then(|| "defer".to_string()),
        console_port: None,
    };
    let args = qemu::args(&spec, &launch);
    let log = std::fs::File::create(RunFiles::qemu_log(&run_dir))?;
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, qemu::QEMU_BIN])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start QEMU")?;
    match Qmp::connect_retry(&RunFiles::qmp(&run_dir), Duration::from_secs(20)).await {
        Ok(qmp) => Ok(QemuProc { child, qmp, tap, ns }),
        Err(e) => {
            let mut p = child;
            let _ = p.kill();
            let _ = p.wait();
            delete_tap(&ns, &tap);
            let log = qemu::tail(&RunFiles::qemu_log(&run_dir), 300);
            bail!("QEMU did not start: {e} ({})", log.trim())
        }
    }
}

fn delete_tap(ns: &str, tap: &str) {
    let tap = tap.to_string();
    let _ = netns::run_in::<_, anyhow::Error>(ns, move || Ok(vmove_host::tap::delete(&tap)?));
}

impl QemuProc {
    /// `quit`, then SIGKILL if it lingers; removes its tap.
    async fn stop(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.qmp.quit()).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        delete_tap(&self.ns, &self.tap);
    }
}

// ------------------------------------------------------------------------- migrate

/// How long the control run waits instead of migrating.
const CONTROL_WAIT: Duration = Duration::from_secs(3);

/// Moves the guest from host1 to host2 the contender's way.
pub async fn migrate(ctx: &Ctx<'_>, c: Contender, g: &GuestPlan, running: &mut Running) -> Outcome {
    let r = match (c, running) {
        (Contender::Vmove, _) => by_vmove::migrate_vmove(ctx, g).await,
        (Contender::Qemu, Running::Qemu { src, dst }) => migrate_qemu(ctx, g, src, dst).await,
        (Contender::Virsh | Contender::VirshTunnelled | Contender::VirshBest | Contender::VirshCopyStorage, _) => {
            crate::libvirt::migrate(ctx, c, g).await
        }
        (Contender::Control, _) => {
            tokio::time::sleep(CONTROL_WAIT).await;
            Ok(Outcome {
                converged: true,
                notes: vec![format!("no migration: the guest stayed on host1 for {} s", CONTROL_WAIT.as_secs())],
                ..Default::default()
            })
        }
        _ => Err(anyhow!("the guest was not booted by {}", c.id())),
    };
    r.unwrap_or_else(|e| Outcome { error: Some(format!("{e:#}")), ..Default::default() })
}

async fn migrate_qemu(ctx: &Ctx<'_>, g: &GuestPlan, src: &mut Option<QemuProc>, dst: &mut Option<QemuProc>) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut out = Outcome::default();
    let d = spawn_qemu(ctx.env, 1, g, true, None).await?;
    let port = 20000 + g.n;
    let uri = format!("tcp:{}:{port}", ctx.env.host_ip[1]);
    d.qmp.migrate_incoming(&uri).await.context("migrate-incoming")?;
    let dq = d.qmp.clone();
    *dst = Some(d);
    let s = src.as_ref().ok_or_else(|| anyhow!("no source QEMU"))?;
    let sq = s.qmp.clone();
    if let (Ok(p), Ok(caps)) = (sq.query_migrate_parameters().await, sq.query_migrate_capabilities().await) {
        let on: Vec<&str> = caps.iter().filter(|c| c.state).map(|c| c.capability.as_str()).collect();
        out.notes.push(format!(
            "QEMU defaults: max-bandwidth {} B/s, downtime-limit {} ms, tls-creds {:?}, capabilities on: [{}]",
            p.max_bandwidth_bytes_per_s.unwrap_or(0),
            p.downtime_limit_ms.unwrap_or(0),
            p.tls_creds.clone().unwrap_or_default(),
            on.join(", ")
        ));
    }
    let resumed = resume_time(&dq);
    sq.migrate(&uri).await.context("migrate")?;
    let started = Instant::now();
    let mut cancelled = false;
    let last: MigrationInfo = loop {
        let info = sq.query_migrate().await.context("query-migrate")?;
        if let Some(smp) = parse::qmp_sample(&info, ms(t0.elapsed())) {
            out.samples.push(smp);
        }
        match info.status_or_none() {
            MigrationStatus::Completed => break info,
            MigrationStatus::Failed | MigrationStatus::Cancelled => {
                if !cancelled {
                    out.error = Some(format!("migration {}: {}", info.status_or_none().as_str(), info.error_desc.clone().unwrap_or_default()));
                }
                break info;
            }
            _ => {}
        }
        if !cancelled && started.elapsed() > ctx.budget {
            let _ = sq.migrate_cancel().await;
            cancelled = true;
            out.error = Some(format!("not converged after {} s: cancelled", ctx.budget.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    out.touched_bytes = parse::qmp_touched(&last);
    out.passes = last.ram.as_ref().and_then(|r| r.dirty_sync_count);
    out.transferred_bytes = last.ram.as_ref().and_then(|r| r.transferred);
    out.qemu_total_ms = last.total_time;
    if last.status_or_none() == MigrationStatus::Completed {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dq.query_status().await.map(|s| s.running).unwrap_or(false) {
            if Instant::now() > deadline {
                bail!("the target QEMU did not resume the guest");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.converged = true;
        out.downtime_ms = last.downtime;
        tokio::time::sleep(Duration::from_millis(50)).await;
        out.resumed_us = *resumed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = src.take() {
            s.stop().await;
        }
    } else {
        // The guest keeps running on the source; the incoming QEMU goes.
        if !sq.query_status().await.map(|s| s.running).unwrap_or(true) {
            let _ = sq.cont().await;
        }
        if let Some(d) = dst.take() {
            d.stop().await;
        }
    }
    out.total_ms = Some(ms(t0.elapsed()));
    Ok(out)
}

/// Follows a QEMU's events; the first `RESUME`'s timestamp, unix µs.
fn resume_time(q: &Qmp) -> std::sync::Arc<std::sync::Mutex<Option<u64>>> {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mut rx = q.subscribe();
    let s = slot.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.event == "RESUME" => {
                    let at = e.timestamp.as_ref().and_then(|t| {
                        u64::try_from(t.seconds).ok()?.checked_mul(1_000_000)?.checked_add(u64::try_from(t.microseconds).ok()?)
                    });
                    *s.lock().unwrap_or_else(|p| p.into_inner()) = at;
                    break;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    });
    slot
}

/// The guest's tap on host1 and on host2, the contender's way (None: it does not migrate).
pub fn taps(c: Contender, g: &GuestPlan) -> Option<(String, String)> {
    match c {
        Contender::Vmove => {
            let t = vmove_host::tap::tap_name(&g.name, 0);
            Some((t.clone(), t))
        }
        Contender::Qemu => Some((qemu_tap(g, "src"), qemu_tap(g, "dst"))),
        Contender::Virsh | Contender::VirshTunnelled | Contender::VirshBest | Contender::VirshCopyStorage => {
            let t = crate::libvirt::tap(g);
            Some((t.clone(), t))
        }
        Contender::Control => None,
    }
}

fn qemu_tap(g: &GuestPlan, role: &str) -> String {
    format!("bq{}{}", g.n, &role[..1])
}

// ------------------------------------------------------------------------- console

/// The guest's serial console so far (both QEMUs' for a hand-driven pair).
pub async fn console(ctx: &Ctx<'_>, c: Contender, g: &GuestPlan) -> String {
    match c {
        Contender::Vmove => vmove(ctx, &["guest", "log", &g.name]).await.unwrap_or_default(),
        Contender::Qemu | Contender::Control => ["src", "dst"]
            .iter()
            .map(|role| {
                let p = RunFiles::serial_log(&ctx.env.dir().join("bench-qemu").join(format!("{}-{role}", g.name)));
                std::fs::read_to_string(p).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(""),
        Contender::Virsh | Contender::VirshTunnelled | Contender::VirshBest | Contender::VirshCopyStorage => {
            std::fs::read_to_string(ctx.env.dir().join("libvirt").join(format!("{}.serial.log", g.name))).unwrap_or_default()
        }
    }
}

// ------------------------------------------------------------------------- cleanup

/// Removes the guest wherever it is, and its data disk's files.
pub async fn cleanup(ctx: &Ctx<'_>, c: Contender, g: &GuestPlan, running: Running) {
    stop(ctx, c, g, running).await;
    if g.disk_mib.is_some() {
        crate::disks::remove(&crate::disks::leftovers(ctx.env, g));
    }
}

async fn stop(ctx: &Ctx<'_>, c: Contender, g: &GuestPlan, running: Running) {
    match (c, running) {
        (_, Running::Qemu { src, dst }) => {
            for p in [src, dst].into_iter().flatten() {
                p.stop().await;
            }
        }
        (Contender::Vmove, _) => {
            if let Err(e) = vmove(ctx, &["guest", "destroy", &g.name]).await {
                eprintln!("bench: cleanup of {}: {e:#}", g.name);
            }
        }
        (_, _) => {
            if let Some(lv) = ctx.libvirt {
                for u in &lv.uri {
                    let _ = virsh(u, &["destroy", &g.name]).await;
                }
            }
        }
    }
}
