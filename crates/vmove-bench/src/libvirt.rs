//! The libvirt contenders: a transient domain like the other contenders' guests, moved with
//! `virsh migrate` (native, tunnelled, or with libvirt's best convergence: auto-converge and
//! post-copy after the first pass, or with a copy of the guest's local disk), and the
//! target's `RESUME` as QEMU timed it, read with `virsh qemu-monitor-event` on the target's
//! libvirtd.
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use vmove_host::qemu;

use crate::contenders::{virsh, Ctx, GuestPlan, Outcome};
use crate::env::Libvirt;
use crate::model::{Contender, Sample};
use crate::parse;

pub(crate) fn libvirt<'a>(ctx: &Ctx<'a>) -> Result<&'a Libvirt> {
    ctx.libvirt.ok_or_else(|| anyhow!("libvirt is not running"))
}

/// The guest's tap under libvirt, on both hosts (named in the domain XML, so that the frame
/// watches know it before libvirt creates it; the name travels with the migrated XML).
pub fn tap(g: &GuestPlan) -> String {
    format!("bl{}", g.n)
}

/// The data disk's `<disk>` element: a raw file, virtio (the guest's `/dev/vda`), with
/// vmove's cache mode (O_DIRECT where the file system has it, else the host's page cache;
/// the guest sees a write cache either way).
pub fn disk_xml(path: &std::path::Path, direct: bool) -> String {
    format!(
        "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw' cache='{}'/>\n      \
         <source file='{}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n",
        if direct { "none" } else { "writeback" },
        path.display()
    )
}

/// The libvirt domain: the same QEMU binary, machine, CPU model, memory, kernel, initrd,
/// command line, NIC model and data disk as the others (libvirt adds its own defaults besides).
pub fn domain_xml(ctx: &Ctx<'_>, g: &GuestPlan, serial: &std::path::Path, disk: &str) -> String {
    let img = &ctx.env.image;
    format!(
        "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>{mem}</memory>\n  <vcpu>1</vcpu>\n  <os>\n    \
         <type arch='x86_64' machine='pc'>hvm</type>\n    <kernel>{k}</kernel>\n    <initrd>{i}</initrd>\n    \
         <cmdline>{cmd}</cmdline>\n  </os>\n  <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>\n  \
         <devices>\n    <emulator>/usr/bin/{bin}</emulator>\n    <controller type='usb' model='none'/>\n    \
         <memballoon model='none'/>\n{disk}    <interface type='bridge'>\n      <source bridge='lab-net'/>\n      \
         <target dev='{tap}'/>\n      <mac address='{mac}'/>\n      <model type='virtio'/>\n    </interface>\n    \
         <serial type='file'><source path='{serial}' append='on'/></serial>\n  </devices>\n</domain>\n",
        name = g.name,
        mem = g.memory_mib,
        k = img.kernel.display(),
        i = img.initrd.display(),
        cmd = vmove_lab::image::cmdline(&g.boot_opts()),
        bin = qemu::QEMU_BIN,
        tap = tap(g),
        mac = g.mac,
        serial = serial.display(),
    )
}

/// Boots the transient domain on host1. With a data disk: a raw image in host1's images
/// directory, and one of the same size and format pre-created on host2 (libvirt's storage
/// copy needs it there; not timed).
pub async fn boot(ctx: &Ctx<'_>, g: &GuestPlan) -> Result<()> {
    let lv = libvirt(ctx)?;
    let dir = ctx.env.dir().join("libvirt");
    let disk = match g.disk_mib {
        Some(mib) => {
            for i in 0..2 {
                crate::disks::create_raw(&crate::disks::libvirt_file(ctx.env, i, g), mib)?;
            }
            disk_xml(&crate::disks::libvirt_path(g), qemu::supports_o_direct(&crate::disks::libvirt_file(ctx.env, 0, g)))
        }
        None => String::new(),
    };
    let xml = domain_xml(ctx, g, &dir.join(format!("{}.serial.log", g.name)), &disk);
    let file = dir.join(format!("{}.xml", g.name));
    std::fs::write(&file, xml)?;
    virsh(&lv.uri[0], &["create", &file.display().to_string()]).await?;
    Ok(())
}

/// `virsh migrate`'s arguments for a contender.
pub fn migrate_args(c: Contender, guest: &str, dst_uri: &str, dst_ip: std::net::Ipv4Addr) -> Vec<String> {
    let mut args: Vec<String> = vec!["migrate".into(), "--live".into()];
    match c {
        Contender::VirshTunnelled => args.extend(["--p2p".into(), "--tunnelled".into()]),
        Contender::VirshBest => {
            args.extend(["--auto-converge".into(), "--postcopy".into(), "--postcopy-after-precopy".into()])
        }
        Contender::VirshCopyStorage => args.push("--copy-storage-all".into()),
        _ => {}
    }
    args.extend([guest.to_string(), dst_uri.to_string()]);
    if c != Contender::VirshTunnelled {
        // The target's host name is the same in every namespace: name its address.
        args.extend(["--migrateuri".into(), format!("tcp://{dst_ip}")]);
    }
    args
}

/// The first `RESUME` that QEMU reports on the target's libvirtd, from a
/// `virsh qemu-monitor-event --loop` started before the migration (the domain does not
/// exist there yet, so it listens for every domain).
struct ResumeWatch {
    child: tokio::process::Child,
    resumed: Arc<Mutex<Option<u64>>>,
}

impl ResumeWatch {
    fn start(uri: &str, guest: &str) -> Result<ResumeWatch> {
        let mut child = tokio::process::Command::new("virsh")
            .args(["-c", uri, "qemu-monitor-event", "--event", "RESUME", "--loop"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("run virsh qemu-monitor-event")?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let resumed = Arc::new(Mutex::new(None));
        let (r, want) = (resumed.clone(), format!("domain '{guest}'"));
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some((ev, us)) = parse::monitor_event(&l).filter(|_| l.contains(&want)) {
                    let mut slot = r.lock().unwrap_or_else(|p| p.into_inner());
                    if ev == "RESUME" && slot.is_none() {
                        *slot = Some(us);
                    }
                }
            }
        });
        Ok(ResumeWatch { child, resumed })
    }

    async fn stop(mut self) -> Option<u64> {
        // Events come a moment after the fact: give the last one time to arrive.
        let deadline = Instant::now() + Duration::from_millis(1500);
        while self.resumed.lock().map(|r| r.is_none()).unwrap_or(false) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill().await;
        *self.resumed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Moves the domain to host2 the contender's way.
pub async fn migrate(ctx: &Ctx<'_>, c: Contender, g: &GuestPlan) -> Result<Outcome> {
    let lv = libvirt(ctx)?;
    let args = migrate_args(c, &g.name, &lv.uri[1], ctx.env.host_ip[1]);
    let resume = ResumeWatch::start(&lv.uri[1], &g.name);
    // The watcher must be listening before the target domain exists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let mut out = Outcome::default();
    let mut child = tokio::process::Command::new("virsh")
        .arg("-c")
        .arg(&lv.uri[0])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run virsh migrate")?;
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut aborted = false;
    // The storage copy's bytes, the most libvirt reported while the job ran.
    let mut disk_seen: Option<u64> = None;
    let hard = ctx.budget + Duration::from_secs(120);
    let status = loop {
        tokio::select! {
            st = child.wait() => break st?,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let now = t0.elapsed().as_millis() as u64;
                if let Ok(text) = virsh(&lv.uri[0], &["domjobinfo", &g.name, "--rawstats"]).await {
                    let st = parse::virsh_rawstats(&text);
                    if let Some(s) = parse::virsh_sample(&st, now) {
                        out.samples.push(s);
                    }
                    disk_seen = disk_seen.max(parse::virsh_disk_bytes(&st));
                }
                if !aborted && t0.elapsed() > ctx.budget {
                    // In post-copy an abort is refused (the guest runs on the target): it goes on.
                    let _ = virsh(&lv.uri[0], &["domjobabort", &g.name]).await;
                    aborted = true;
                    out.error = Some(format!("not converged after {} s: domjobabort", ctx.budget.as_secs()));
                }
                if t0.elapsed() > hard {
                    let _ = child.kill().await;
                    bail!("virsh migrate did not end within {} s", hard.as_secs());
                }
            }
        }
    };
    let total = t0.elapsed().as_millis() as u64;
    out.total_ms = Some(total);
    let err = err_task.await.unwrap_or_default();
    match resume {
        Ok(w) => out.resumed_us = w.stop().await,
        Err(e) => out.notes.push(format!("no RESUME watch on the target: {e:#}")),
    }
    if status.success() {
        out.converged = true;
        if aborted {
            out.error = None;
            out.notes.push(format!("completed after the {} s budget (the abort was refused)", ctx.budget.as_secs()));
            out.converged = false;
        }
        let text = virsh(&lv.uri[1], &["domjobinfo", &g.name, "--completed", "--rawstats"]).await?;
        let st = parse::virsh_rawstats(&text);
        out.downtime_ms = st.get("downtime").copied();
        out.qemu_total_ms = st.get("time_elapsed").copied();
        out.transferred_bytes = st.get("memory_processed").or_else(|| st.get("data_processed")).copied();
        out.disk_bytes = parse::virsh_disk_bytes(&st).max(disk_seen);
        let disk_keys: Vec<String> = st.iter().filter(|(k, _)| k.starts_with("disk_")).map(|(k, v)| format!("{k} {v}")).collect();
        if !disk_keys.is_empty() || disk_seen.is_some() {
            out.notes.push(format!(
                "libvirt's completed job: {}; the most seen while it ran: {}",
                disk_keys.join(", "),
                disk_seen.map(|b| b.to_string()).unwrap_or_else(|| "none".into())
            ));
        }
        out.passes = st.get("memory_iteration").copied();
        out.touched_bytes = parse::virsh_touched(&st);
        if let Some(p) = st.get("memory_postcopy_requests") {
            out.notes.push(format!("post-copy page requests: {p}"));
        }
        out.notes.push("migration time is libvirt's time_elapsed; downtime is libvirt's (from QEMU)".into());
        out.samples.push(Sample { t_ms: total, remaining_bytes: 0, transferred_bytes: out.transferred_bytes.unwrap_or(0) });
    } else if out.error.is_none() {
        out.error = Some(err.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virsh_arguments() {
        let ip = std::net::Ipv4Addr::new(198, 51, 100, 12);
        let j = |c| migrate_args(c, "g", "qemu+tcp://x/system", ip).join(" ");
        assert_eq!(j(Contender::Virsh), "migrate --live g qemu+tcp://x/system --migrateuri tcp://198.51.100.12");
        assert_eq!(
            j(Contender::VirshBest),
            "migrate --live --auto-converge --postcopy --postcopy-after-precopy g qemu+tcp://x/system --migrateuri tcp://198.51.100.12"
        );
        assert_eq!(j(Contender::VirshTunnelled), "migrate --live --p2p --tunnelled g qemu+tcp://x/system");
        assert_eq!(
            j(Contender::VirshCopyStorage),
            "migrate --live --copy-storage-all g qemu+tcp://x/system --migrateuri tcp://198.51.100.12",
            "the storage copy with the same transport as plain virsh"
        );
    }

    #[test]
    fn the_data_disk_in_the_domain() {
        let d = disk_xml(std::path::Path::new("/var/lib/libvirt/images/bs-1-data.img"), true);
        assert!(d.contains("<driver name='qemu' type='raw' cache='none'/>"), "{d}");
        assert!(d.contains("<source file='/var/lib/libvirt/images/bs-1-data.img'/>"), "{d}");
        assert!(d.contains("<target dev='vda' bus='virtio'/>"), "{d}");
        assert!(disk_xml(std::path::Path::new("/x.img"), false).contains("cache='writeback'"));
    }
}
