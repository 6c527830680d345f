//! The initramfs archive: a hand-written newc head holding `/dev/console`, then
//! `cpio -o -H newc | gzip` of the tree.
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One entry of a newc cpio archive.
fn newc_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32)) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        if mode & 0o170000 == 0o040000 { 2 } else { 1 },
        0, // mtime
        0, // filesize
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// A small uncompressed cpio archive with `/dev` and `/dev/console` (char 5:1), so that
/// the kernel can give `/init` a console before devtmpfs is mounted.
pub(super) fn early_cpio() -> Vec<u8> {
    let mut v = Vec::new();
    newc_entry(&mut v, 1, "dev", 0o040755, (0, 0));
    newc_entry(&mut v, 2, "dev/console", 0o020600, (5, 1));
    newc_entry(&mut v, 0, "TRAILER!!!", 0, (0, 0));
    while v.len() % 512 != 0 {
        v.push(0);
    }
    v
}

fn list_tree(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        out.push(r.clone());
        if e.file_type()?.is_dir() {
            list_tree(root, &r, out)?;
        }
    }
    Ok(())
}

/// `cpio -o -H newc | gzip` of the tree at `root`, appended to `dst`.
pub(super) fn pack(root: &Path, dst: File) -> Result<()> {
    let mut files = Vec::new();
    list_tree(root, Path::new(""), &mut files)?;
    let mut list = Vec::new();
    for f in &files {
        list.extend_from_slice(f.as_os_str().as_encoded_bytes());
        list.push(b'\n');
    }
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run cpio (install the cpio package: scripts/install-deps)")?;
    let cpio_out = cpio.stdout.take().context("cpio stdout")?;
    let gzip = Command::new("gzip")
        .args(["-6", "-n", "-c"])
        .stdin(Stdio::from(cpio_out))
        .stdout(Stdio::from(dst))
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    let mut stdin = cpio.stdin.take().context("cpio stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&list));
    let cpio_res = cpio.wait_with_output().context("waiting for cpio")?;
    let gzip_res = gzip.wait_with_output().context("waiting for gzip")?;
    let written = writer.join();
    if !cpio_res.status.success() {
        bail!(
            "cpio failed ({}): {}",
            cpio_res.status,
            String::from_utf8_lossy(&cpio_res.stderr)
        );
    }
    if !gzip_res.status.success() {
        bail!(
            "gzip failed ({}): {}",
            gzip_res.status,
            String::from_utf8_lossy(&gzip_res.stderr)
        );
    }
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("writing the file list to cpio"),
        Err(_) => bail!("the cpio feeder thread panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_archive_layout() {
        let v = early_cpio();
        assert_eq!(v.len() % 512, 0);
        assert!(v.starts_with(b"070701"));
        let s = String::from_utf8_lossy(&v);
        assert!(s.contains("dev/console\0"));
        assert!(s.contains("TRAILER!!!\0"));
        // Header of dev/console: mode 020600, rdev 5:1.
        let at = s.find("dev/console").unwrap() - 110;
        let hdr = &s[at..at + 110];
        assert_eq!(&hdr[14..22], "00002180");
        assert_eq!(&hdr[78..86], "00000005");
        assert_eq!(&hdr[86..94], "00000001");
    }
}
