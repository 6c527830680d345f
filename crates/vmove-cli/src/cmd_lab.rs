//! `vmove lab up|down|demo`.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vmove_lab::{LabInfo, LabOptions};
use vmove_model::{BootSource, DesiredState, DiskSpec, GuestSpec, NicSpec};
use vmove_plan::Mode;

use crate::args::LabCmd;
use crate::ctx::Ctx;
use crate::request::{guest_mac, CreateCommand, MigrateCommand};

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current executable")?;
    let dir = exe.parent().ok_or_else(|| anyhow!("executable has no directory"))?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found next to {} (build the workspace: cargo build)", exe.display())
}

/// Options for a lab in `dir`, with the binaries next to this one.
pub fn options(dir: &Path, hosts: u8, etcd: u8) -> Result<LabOptions> {
    Ok(LabOptions {
        dir: dir.to_path_buf(),
        hosts,
        etcd,
        vmoved: sibling_binary("vmoved")?,
        guest_bin: sibling_binary("vmove-guest")?,
    })
}

pub async fn run(ctx: &Ctx, cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up { dir, hosts, store, etcd_members } => {
            let t = Instant::now();
            let etcd = match store.as_str() {
                "file" if etcd_members.is_some() => bail!("--etcd-members needs --store etcd"),
                "file" => 0,
                "etcd" => etcd_members.unwrap_or(3),
                other => bail!("--store {other:?}: file or etcd"),
            };
            if store == "etcd" && etcd == 0 {
                bail!("--etcd-members must be at least 1");
            }
            let info = vmove_lab::up(&options(&dir, hosts, etcd)?).await?;
            if ctx.json {
                crate::out::json(&info);
            } else {
                let store = match info.etcd_endpoints.len() {
                    0 => "state in files".to_string(),
                    n => format!("state in etcd ({n} members: {})", info.etcd_endpoints.join(", ")),
                };
                eprintln!(
                    "lab {} up: {} hosts, {store}, client namespace {}, in {:.1} s",
                    info.name,
                    info.hosts,
                    info.client_namespace,
                    t.elapsed().as_secs_f64()
                );
                eprintln!("use it with: export VMOVE_CLUSTER={}", info.cluster_file.display());
                println!("{}", info.cluster_file.display());
            }
            Ok(())
        }
        LabCmd::Down { dir } => {
            let name = tokio::task::spawn_blocking(move || vmove_lab::down(&dir)).await??;
            if ctx.json {
                crate::out::json(&serde_json::json!({ "ok": true, "lab": name, "down": true }));
            } else {
                println!("lab {name} down");
            }
            Ok(())
        }
        LabCmd::Agent { dir, host, action } => {
            let pid = match action.as_str() {
                "kill" => {
                    let (d, h) = (dir.clone(), host.clone());
                    tokio::task::spawn_blocking(move || vmove_lab::lab::kill_agent(&d, &h)).await??
                }
                "start" => vmove_lab::lab::start_agent_again(&dir, &host, &sibling_binary("vmoved")?).await?,
                other => bail!("unknown action {other:?}: expected kill or start"),
            };
            if ctx.json {
                crate::out::json(&serde_json::json!({ "ok": true, "host": host, "action": action, "pid": pid }));
            } else {
                println!("agent on {host}: {action} (pid {pid})");
            }
            Ok(())
        }
        LabCmd::Demo { dir, keep } => demo(ctx, &dir, keep).await,
    }
}

async fn demo(ctx: &Ctx, dir: &Path, keep: bool) -> Result<()> {
    let _ = tokio::task::spawn_blocking({
        let d = dir.to_path_buf();
        move || vmove_lab::down(&d)
    })
    .await?;
    say(ctx, "lab up (3 hosts)");
    let info = vmove_lab::up(&options(dir, 3, 0)?).await?;
    let r = demo_body(ctx, &info).await;
    if !keep {
        say(ctx, "lab down");
        let d = dir.to_path_buf();
        tokio::task::spawn_blocking(move || vmove_lab::down(&d)).await??;
    }
    r
}

/// Draws the newest job of `guest` on `host` into `/var/tmp/vmove-demo-<job>.svg`.
async fn demo_plot(ctx: &Ctx, host: &str, guest: &str) -> Result<(String, PathBuf)> {
    let cluster = ctx.cluster().await?;
    let client = ctx.client(&cluster, host)?;
    let jobs: Vec<vmove_api::JobBrief> = client.call(&vmove_api::Request::JobList).await?;
    let id = jobs.iter().rev().find(|j| j.guest == guest).map(|j| j.id.clone()).ok_or_else(|| anyhow!("no job of {guest} on {host}"))?;
    let rec: vmove_api::JobRecord = client.call(&vmove_api::Request::JobShow { id: id.clone() }).await?;
    let (path, _) = crate::cmd_job::write_plot(&rec, &PathBuf::from(format!("/var/tmp/vmove-demo-{id}.svg")))?;
    Ok((id, path))
}

fn say(ctx: &Ctx, s: &str) {
    if ctx.json {
        crate::out::json(&serde_json::json!({ "demo": s }));
    } else {
        println!("==> {s}");
    }
}

async fn demo_body(ctx: &Ctx, info: &LabInfo) -> Result<()> {
    let sub = Ctx::new(info.cluster_file.clone(), ctx.json);
    say(ctx, "hosts");
    crate::cmd_host::run(&sub, crate::args::HostCmd::List).await?;
    say(ctx, "guest vm1 on host1: 512 MiB, 192.0.2.10 on lab-net, a data disk, dirtying 20 MB/s over a 128 MiB working set");
    let cluster = sub.cluster().await?;
    let spec = GuestSpec {
        name: "vm1".into(),
        host: "host1".into(),
        vcpus: 1,
        memory_mib: 512,
        cpu_model: "qemu64".into(),
        boot: BootSource::Lab { dirty_mb_s: 20, wss_mib: 128, disk_mb_s: 0 },
        desired: DesiredState::Running,
        nics: vec![NicSpec {
            network: "lab-net".into(),
            mac: guest_mac(&cluster, "vm1", 0, &[]),
            ip: Some("192.0.2.10/24".into()),
        }],
        disks: vec![DiskSpec { pool: "shared".into(), volume: "vm1-data.img".into(), size_mib: Some(64) }],
        console_port: None,
        group: None,
    };
    crate::cmd_guest::create(&sub, cluster, CreateCommand { spec }).await?;
    let addr = "192.0.2.10:7".parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while vmove_lab::probe::tcp_echo(&info.client_namespace, addr, b"hello").await.is_err() {
        if Instant::now() > deadline {
            bail!("guest vm1 did not answer TCP echo within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say(ctx, &format!("client {} opens one TCP connection to vm1 and echoes a message every 10 ms", info.client_namespace));
    let session = vmove_lab::probe::TcpSession::start(&info.client_namespace, addr, Duration::from_millis(10))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    say(ctx, "live migration of vm1 from host1 to host2 (TLS, multifd, downtime limit 300 ms)");
    let cluster = sub.cluster().await?;
    let migrate = MigrateCommand::new(&cluster.policy, "vm1", "host1", "host2", Mode::Live, None);
    let migrated = crate::cmd_migrate::run(&sub, &cluster, migrate).await;
    let before = session.echoed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while session.echoed() < before + 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rep = session.stop();
    migrated?;
    match &rep.error {
        None => say(
            ctx,
            &format!(
                "client: the connection survived (same connection, local port {}): {} echoes, longest gap {} ms",
                rep.local_port, rep.echoed, rep.longest_gap_ms
            ),
        ),
        Some(e) => say(ctx, &format!("client: the connection did NOT survive: {e}")),
    }
    if ctx.json {
        crate::out::json(&serde_json::json!({ "client": rep }));
    }
    let (job, svg) = demo_plot(&sub, "host2", "vm1").await?;
    say(ctx, &format!("job {job} as a picture (remaining bytes, transfer and dirty rate, the switchover): {}", svg.display()));
    say(ctx, "guests");
    crate::cmd_guest::run(&sub, crate::args::GuestCmd::List { host: None }).await?;
    // The verifier reports every few seconds; the target's console starts empty.
    let deadline = Instant::now() + Duration::from_secs(60);
    let verdict = loop {
        let log = crate::cmd_guest::log_text(&sub, "vm1").await?;
        if let Some(l) = log.lines().rev().find(|l| l.starts_with("VERIFY")) {
            break l.to_string();
        }
        if Instant::now() > deadline {
            bail!("vm1's memory verifier printed no verdict on host2 within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    say(ctx, &format!("vm1's memory verifier on host2: {verdict}"));
    if verdict.starts_with("VERIFY FAIL") {
        bail!("vm1's memory did not verify after the migration: {verdict}");
    }
    if rep.error.is_some() {
        bail!("the client's connection broke during the migration");
    }
    Ok(())
}
