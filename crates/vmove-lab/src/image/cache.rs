//! The image cache: content-hashed keys, build in a private temporary directory, rename
//! into place (so that concurrent callers agree on one image).
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::build::{build, BuildInputs};
use super::{busybox_path, init_script, GuestImage, FORMAT, MODULES};

/// 64-bit FNV-1a, for cache keys.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xCBF2_9CE4_8422_2325)
    }

    fn write(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        self.0 = h;
    }

    /// A length-prefixed field, so that field boundaries are part of the hash.
    fn field(&mut self, data: &[u8]) {
        self.write(&(data.len() as u64).to_le_bytes());
        self.write(data);
    }
}

fn hash_file(h: &mut Fnv, path: &Path) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    h.write(&len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    Ok(())
}

/// The cache key of an image.
fn cache_key(guest_bin: &Path, kernel_version: &str, init: &str) -> Result<String> {
    let mut h = Fnv::new();
    h.field(FORMAT.as_bytes());
    h.field(kernel_version.as_bytes());
    h.field(init.as_bytes());
    h.field(MODULES.join(",").as_bytes());
    hash_file(&mut h, guest_bin)?;
    Ok(format!("{:016x}", h.0))
}

/// Build the image once (cached) and return it.
pub fn ensure(guest_bin: &Path, kernel_root: &Path, cache_dir: &Path) -> Result<GuestImage> {
    let kdir = kernel_root.join("current");
    let vmlinuz = kdir.join("vmlinuz");
    let version_file = kdir.join("version");
    if !vmlinuz.is_file() || !version_file.is_file() {
        bail!(
            "guest kernel not found at {} (no vmlinuz or version): run scripts/install-deps",
            kdir.display()
        );
    }
    let kernel_version = fs::read_to_string(&version_file)
        .with_context(|| format!("cannot read {}", version_file.display()))?
        .trim()
        .to_string();
    if kernel_version.is_empty() {
        bail!(
            "guest kernel not found at {} (empty version file): run scripts/install-deps",
            kdir.display()
        );
    }
    let busybox = busybox_path();
    if !busybox.is_file() {
        bail!(
            "busybox not found at {}: run scripts/install-deps (package busybox-static)",
            busybox.display()
        );
    }
    if !guest_bin.is_file() {
        bail!(
            "guest binary not found at {}: build it with `cargo build -p vmove --bin vmove-guest`",
            guest_bin.display()
        );
    }
    let init = init_script();
    let key = cache_key(guest_bin, &kernel_version, &init)?;
    let dir = cache_dir.join(format!("guest-{key}"));
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        kernel_version: kernel_version.clone(),
    };
    if image.kernel.is_file() && image.initrd.is_file() {
        return Ok(image);
    }
    fs::create_dir_all(cache_dir)
        .with_context(|| format!("cannot create the image cache {}", cache_dir.display()))?;
    remove_stale_temps(cache_dir);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = cache_dir.join(format!(".tmp-guest-{key}-{}-{nanos}", std::process::id()));
    let _cleanup = RemoveOnDrop(tmp.clone());
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let out = tmp.join("out");
    fs::create_dir(&out)?;
    build(
        &BuildInputs {
            guest_bin,
            kernel_dir: &kdir,
            kernel_version: &kernel_version,
            busybox: &busybox,
            init: &init,
        },
        &tmp.join("root"),
        &out,
    )
    .with_context(|| format!("building the guest image in {}", tmp.display()))?;
    fs::write(out.join("key"), format!("{key}\n"))?;
    match fs::rename(&out, &dir) {
        Ok(()) => {}
        // Someone else won the race: theirs is as good as ours.
        Err(_) if image.kernel.is_file() && image.initrd.is_file() => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot move the image to {}", dir.display()))
        }
    }
    Ok(image)
}

/// Remove temporary build directories left by builds that died (older than an hour, so
/// that builds in progress are left alone).
fn remove_stale_temps(cache_dir: &Path) {
    let Ok(rd) = fs::read_dir(cache_dir) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(".tmp-guest-") {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if old {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::cpio::early_cpio;
    use crate::image::default_kernel_root;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn fnv_vectors() {
        let mut h = Fnv::new();
        h.write(b"");
        assert_eq!(h.0, 0xcbf2_9ce4_8422_2325);
        let mut h = Fnv::new();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv::new();
        h.write(b"foobar");
        assert_eq!(h.0, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let e = ensure(
            Path::new("/bin/true"),
            &tmp.path().join("nokernel"),
            &tmp.path().join("cache"),
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("guest kernel not found at"), "{msg}");
        assert!(msg.contains("run scripts/install-deps"), "{msg}");
    }

    #[test]
    fn ensure_builds_once_and_caches() {
        let kroot = default_kernel_root();
        if !kroot.join("current/vmlinuz").is_file() || !busybox_path().is_file() {
            eprintln!("skipping: no guest kernel or busybox (run scripts/install-deps)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        // Any dynamically linked program stands in for the guest binary.
        let bin = Path::new("/usr/bin/env");
        let images: Vec<GuestImage> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|_| s.spawn(|| ensure(bin, &kroot, &cache).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(images.windows(2).all(|w| w[0] == w[1]));
        let img = &images[0];
        assert!(img.kernel.is_file());
        assert!(img.initrd.is_file());
        assert_eq!(
            img.kernel_version,
            fs::read_to_string(kroot.join("current/version"))
                .unwrap()
                .trim()
        );
        // Exactly one image directory, no temporary leftovers.
        let names: Vec<String> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("guest-"));
        // Cached: a second call returns the same files untouched.
        let mtime = fs::metadata(&img.initrd).unwrap().modified().unwrap();
        assert_eq!(&ensure(bin, &kroot, &cache).unwrap(), img);
        assert_eq!(
            fs::metadata(&img.initrd).unwrap().modified().unwrap(),
            mtime
        );

        // The archive holds what /init needs.
        let raw = fs::read(&img.initrd).unwrap();
        let early = early_cpio();
        assert!(raw.starts_with(&early));
        let mut gz = Command::new("gzip")
            .args(["-dc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = gz.stdin.take().unwrap();
        let body = raw[early.len()..].to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&body));
        let cpio = gz.wait_with_output().unwrap().stdout;
        feeder.join().unwrap().unwrap();
        let mut list = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = list.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&cpio));
        let names = String::from_utf8(list.wait_with_output().unwrap().stdout).unwrap();
        feeder.join().unwrap().unwrap();
        let names: Vec<&str> = names.lines().collect();
        for want in [
            "init",
            "bin/busybox",
            "bin/sh",
            "sbin/insmod",
            "bin/vmove-guest",
            "lib/modules/virtio_net.ko",
            "lib/modules/evdev.ko",
            "lib64/ld-linux-x86-64.so.2",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }
}
