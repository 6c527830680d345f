//! The data-disk writer: `vmove.disk=<MB/s>` of fresh data written onto the upper half of
//! the data disk (the disk log keeps the lower half), 1 MiB at a time with O_DIRECT, round
//! and round. It makes a disk that a storage migration must copy while the guest writes
//! it, as a database or a log-heavy service would.
//!
//! Each block holds its position and a pass number, so no two writes carry the same data
//! and none is all zeroes (a copy cannot skip it as unwritten).
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::disk::DEVICE;
use crate::{say, Shared};

/// One write.
pub const BLOCK: u64 = 1 << 20;

/// Where the writer writes: the disk's upper half, in whole blocks (`None`: too small).
pub fn region(disk_bytes: u64) -> Option<(u64, u64)> {
    let start = (disk_bytes / 2).div_ceil(BLOCK).checked_mul(BLOCK)?;
    let end = disk_bytes / BLOCK * BLOCK;
    (end > start).then_some((start, end))
}

/// The time between two block writes at `mb_s` MB/s (10^6 bytes per second).
pub fn period(mb_s: u32) -> Option<Duration> {
    (mb_s > 0).then(|| Duration::from_nanos(BLOCK.saturating_mul(1_000) / u64::from(mb_s)))
}

/// Fills `buf` for the block at `offset` in pass `pass`: every 8 bytes a word that mixes
/// both, never zero.
pub fn fill(buf: &mut [u8], offset: u64, pass: u64) {
    let mut x = offset ^ pass.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    for w in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&(x | 1).to_le_bytes());
    }
}

/// A 1 MiB buffer aligned for O_DIRECT.
#[repr(C, align(4096))]
struct Block([u8; BLOCK as usize]);

/// Starts the writer when `vmove.disk` > 0 and the disk has room (`disk_bytes`); says what
/// it does, and counts what it wrote (`disk_written_bytes` on the status page). Write errors
/// are said once and stop it; the disk log goes on either way.
pub fn start(shared: &Arc<Shared>, disk_bytes: u64) {
    let mb_s = shared.config.disk_mb_s;
    let shared = shared.clone();
    let (Some(every), Some((start, end))) = (period(mb_s), region(disk_bytes)) else {
        if mb_s > 0 {
            say(&format!("DISK NOTE no room for the {mb_s} MB/s writer on a {disk_bytes}-byte disk"));
        }
        return;
    };
    let r = std::thread::Builder::new().name("diskfill".into()).spawn(move || {
        let file = match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(DEVICE) {
            Ok(f) => f,
            Err(e) => return say(&format!("DISK NOTE writer: cannot open {DEVICE}: {e}")),
        };
        say(&format!("DISK WRITER {mb_s} MB/s over bytes {start}..{end}"));
        let mut buf = Box::new(Block([0; BLOCK as usize]));
        let (mut offset, mut pass, mut next) = (start, 0u64, Instant::now());
        loop {
            fill(&mut buf.0, offset, pass);
            if let Err(e) = file.write_all_at(&buf.0, offset) {
                return say(&format!("DISK NOTE writer stopped: write at {offset}: {e}"));
            }
            shared.stats.disk_written_bytes.fetch_add(BLOCK, Ordering::Relaxed);
            offset += BLOCK;
            if offset >= end {
                (offset, pass) = (start, pass + 1);
            }
            next += every;
            let now = Instant::now();
            match next.checked_duration_since(now) {
                Some(d) => std::thread::sleep(d),
                // Behind (the VM was paused, the disk slow): no burst to catch up.
                None => next = now,
            }
        }
    });
    if let Err(e) = r {
        say(&format!("DISK NOTE cannot start the writer: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_keeps_to_the_upper_half_in_whole_blocks() {
        assert_eq!(region(2048 << 20), Some((1024 << 20, 2048 << 20)));
        assert_eq!(region((256 << 20) + 4096), Some((129 << 20, 256 << 20)), "rounded inwards");
        assert_eq!(region(BLOCK), None);
        assert_eq!(region(0), None);
    }

    #[test]
    fn the_rate_sets_the_period() {
        assert_eq!(period(5), Some(Duration::from_nanos(209_715_200)));
        assert_eq!(period(0), None);
        assert!(period(u32::MAX).is_some());
    }

    #[test]
    fn every_block_differs_and_none_is_zero() {
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
        fill(&mut a, 1 << 20, 0);
        fill(&mut b, 2 << 20, 0);
        fill(&mut c, 1 << 20, 1);
        assert!(a != b && a != c && b != c);
        assert!(a.chunks_exact(8).all(|w| w != [0; 8]));
    }
}
