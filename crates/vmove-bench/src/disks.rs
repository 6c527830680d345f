//! The local-disk cells' data disks: where each contender's guest keeps its disk (vmove's
//! `local` pool, libvirt's per-host images directory, the control's file in host1's local
//! pool), creating the raw images the way an operator would (`qemu-img create -f raw`) and
//! removing them after the run.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::contenders::GuestPlan;
use crate::env::Env;
use crate::model::Contender;

/// The lab guest's disk log: record `n` in sector `n`, sectors of this size.
pub const SECTOR: usize = 512;

/// The data disk's file name (vmove's volume name in the `local` pool too).
pub fn file_name(g: &GuestPlan) -> String {
    format!("{}-data.img", g.name)
}

/// `guest create`'s `--disk` for vmove: `local/NAME-data.img:SIZEM`.
pub fn vmove_disk_arg(g: &GuestPlan, mib: u64) -> String {
    format!("local/{}:{mib}M", file_name(g))
}

/// Where libvirt's QEMU sees the disk on either host: its per-host `/var/lib/libvirt`
/// (bind-mounted from the lab's `libvirt/hostN/lib`) holds `images/`, so the same path
/// names each host's own file.
pub fn libvirt_path(g: &GuestPlan) -> PathBuf {
    Path::new("/var/lib/libvirt/images").join(file_name(g))
}

/// The file behind [`libvirt_path`] on host `idx`, as seen from outside libvirtd's mount namespace.
pub fn libvirt_file(env: &Env, idx: usize, g: &GuestPlan) -> PathBuf {
    env.dir().join("libvirt").join(format!("host{}", idx + 1)).join("lib/images").join(file_name(g))
}

/// The control guest's disk: a file in host1's local pool.
pub fn control_file(env: &Env, g: &GuestPlan) -> PathBuf {
    env.local_pool(0).join(file_name(g))
}

/// Every file a guest's data disk may have left behind, whatever the contender.
pub fn leftovers(env: &Env, g: &GuestPlan) -> Vec<PathBuf> {
    let mut v = vec![env.local_pool(0).join(file_name(g)), env.local_pool(1).join(file_name(g))];
    v.extend((0..2).map(|i| libvirt_file(env, i, g)));
    v
}

/// host2's copy of the guest's data disk after a move, the contender's way (None: it does
/// not copy disks).
pub fn target_file(env: &Env, c: Contender, g: &GuestPlan) -> Option<PathBuf> {
    match c {
        Contender::Vmove => Some(env.local_pool(1).join(file_name(g))),
        Contender::VirshCopyStorage => Some(libvirt_file(env, 1, g)),
        _ => None,
    }
}

/// How many of the sectors in `buf` hold something (are not all zeroes).
pub fn nonzero_sectors(buf: &[u8]) -> u64 {
    buf.chunks(SECTOR).filter(|s| s.iter().any(|b| *b != 0)).count() as u64
}

/// How many of the first `n` sectors of a disk image hold something: the disk-log records
/// written before a move that its copy carries.
pub fn written_sectors(file: &Path, n: u64) -> Result<u64> {
    use std::io::Read;
    let len = n.checked_mul(SECTOR as u64).ok_or_else(|| anyhow::anyhow!("{n} sectors: too many"))?;
    let mut buf = Vec::new();
    std::fs::File::open(file)
        .with_context(|| format!("open {}", file.display()))?
        .take(len)
        .read_to_end(&mut buf)
        .with_context(|| format!("read {}", file.display()))?;
    Ok(nonzero_sectors(&buf))
}

/// `qemu-img create -f raw FILE SIZEM` (a sparse raw image, as vmove's volumes are).
pub fn create_raw(file: &Path, mib: u64) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(file)
        .arg(format!("{mib}M"))
        .stdin(Stdio::null())
        .output()
        .context("run qemu-img (Debian's qemu-utils)")?;
    if !o.status.success() {
        bail!("qemu-img create {}: {}", file.display(), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// Removes the files (those that do not exist are fine).
pub fn remove(files: &[PathBuf]) {
    for f in files {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("bench: cannot remove {}: {e}", f.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let g = GuestPlan {
            name: "bv-3".into(),
            n: 3,
            ip: std::net::Ipv4Addr::new(192, 0, 2, 12),
            mac: "52:54:00:b1:00:03".into(),
            memory_mib: 512,
            dirty_mb_s: 5,
            wss_mib: 64,
            disk_mib: Some(2048),
            disk_mb_s: 5,
        };
        assert_eq!(vmove_disk_arg(&g, 2048), "local/bv-3-data.img:2048M");
        assert_eq!(libvirt_path(&g), Path::new("/var/lib/libvirt/images/bv-3-data.img"));
        let mut buf = vec![0u8; SECTOR * 4];
        buf[SECTOR * 2 + 100] = 1;
        buf[SECTOR * 3] = 0xff;
        assert_eq!(nonzero_sectors(&buf), 2);
        assert_eq!(nonzero_sectors(&[]), 0);
    }

    #[test]
    fn a_raw_image_of_the_asked_size() {
        let dir = std::env::temp_dir().join(format!("vmove-bench-disks-{}", std::process::id()));
        let f = dir.join("sub/x-data.img");
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipping: no qemu-img");
            return;
        }
        create_raw(&f, 4).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 4 << 20);
        assert_eq!(written_sectors(&f, 8).unwrap(), 0, "a new image is all zeroes");
        {
            use std::os::unix::fs::FileExt;
            let h = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            for sector in [0u64, 1, 5] {
                h.write_all_at(b"rec", sector * SECTOR as u64 + 7).unwrap();
            }
        }
        assert_eq!(written_sectors(&f, 8).unwrap(), 3);
        assert_eq!(written_sectors(&f, 2).unwrap(), 2, "only the first n sectors count");
        assert_eq!(written_sectors(&f, 1 << 40).unwrap(), 3, "past the end: what there is");
        remove(std::slice::from_ref(&f));
        remove(std::slice::from_ref(&f));
        assert!(!f.exists());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(create_raw(Path::new("/proc/no/such/x.img"), 4).is_err());
        assert!(written_sectors(&f, 1).is_err(), "a missing copy is an error, not zero records");
        assert!(written_sectors(&f, u64::MAX).is_err());
    }
}
