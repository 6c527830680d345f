//! Building an image's tree: busybox and its applets, the kernel modules, the workload with
//! its shared libraries, `/init`; then the kernel and the initramfs.
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::cpio::{early_cpio, pack};
use super::MODULES;

pub(super) struct BuildInputs<'a> {
    pub(super) guest_bin: &'a Path,
    pub(super) kernel_dir: &'a Path,
    pub(super) kernel_version: &'a str,
    pub(super) busybox: &'a Path,
    pub(super) init: &'a str,
}

pub(super) fn build(i: &BuildInputs<'_>, root: &Path, out: &Path) -> Result<()> {
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "root",
        "lib/modules",
        "mnt",
    ] {
        fs::create_dir_all(root.join(d))?;
    }

    // busybox and its applets.
    let bb = root.join("bin/busybox");
    fs::copy(i.busybox, &bb).with_context(|| format!("cannot copy {}", i.busybox.display()))?;
    set_mode(&bb, 0o755)?;
    let list = Command::new(i.busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("cannot run {} --list-full", i.busybox.display()))?;
    if !list.status.success() {
        bail!(
            "{} --list-full failed: {}",
            i.busybox.display(),
            list.status
        );
    }
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    for a in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let rel = a.trim_start_matches('/');
        if rel == "bin/busybox" || rel.contains("..") {
            continue;
        }
        let p = root.join(rel);
        if p.exists() {
            continue;
        }
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        symlink("/bin/busybox", &p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    if !root.join("bin/sh").exists() {
        symlink("/bin/busybox", root.join("bin/sh"))?;
    }

    // Kernel modules.
    let mdir = i
        .kernel_dir
        .join("lib/modules")
        .join(i.kernel_version)
        .join("kernel");
    let mut found = BTreeMap::new();
    find_modules(&mdir, &mut found)
        .with_context(|| format!("cannot read the kernel modules in {}", mdir.display()))?;
    for m in MODULES {
        // Modules missing from the tree (built in, or renamed) are reported by /init.
        if let Some(src) = found.get(*m) {
            fs::copy(src, root.join("lib/modules").join(format!("{m}.ko")))
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }

    // The workload and its shared libraries.
    let gb = root.join("bin/vmove-guest");
    copy_stripped(i.guest_bin, &gb)?;
    set_mode(&gb, 0o755)?;
    for lib in shared_libs(i.guest_bin)? {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let dst = root.join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&lib, &dst).with_context(|| format!("cannot copy {}", lib.display()))?;
        set_mode(&dst, 0o755)?;
    }

    // /init and a few files.
    let init = root.join("init");
    fs::write(&init, i.init)?;
    set_mode(&init, 0o755)?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;

    // The kernel.
    let kernel = out.join("vmlinuz");
    let src = i.kernel_dir.join("vmlinuz");
    if fs::hard_link(&src, &kernel).is_err() {
        fs::copy(&src, &kernel).with_context(|| format!("cannot copy {}", src.display()))?;
    }

    // The initramfs: an uncompressed cpio with /dev/console (a device node, which needs
    // no privileges when written by hand), then the gzipped tree.
    let initrd = out.join("initrd.img");
    let mut f = File::create(&initrd)?;
    f.write_all(&early_cpio())?;
    f.flush()?;
    pack(root, f)?;
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", p.display()))
}

fn find_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            find_modules(&p, out)?;
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            if let Some(m) = name.strip_suffix(".ko") {
                out.insert(m.to_string(), p.clone());
            }
        }
    }
    Ok(())
}

/// Copy the guest binary without its debug info (`strip --strip-debug`; a plain copy if
/// strip is not available).
fn copy_stripped(src: &Path, dst: &Path) -> Result<()> {
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(dst)
        .arg(src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !stripped {
        fs::copy(src, dst).with_context(|| format!("cannot copy {}", src.display()))?;
    }
    Ok(())
}

/// The shared libraries (including the dynamic loader) a binary needs, from `ldd`.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // Static binaries make ldd fail with "not a dynamic executable".
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}{}", bin.display(), text, err);
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", bin.display()))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("library {} not found", name.trim());
                }
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // Skips the vDSO (no path).
        if target.starts_with('/') {
            let p = PathBuf::from(target);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_parsing() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }
}
