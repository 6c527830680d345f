//! The data-disk log writer (on /dev/vda when present).

use crate::disklog::{self, Record, SECTOR};
use crate::{say, Shared};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The data disk.
pub const DEVICE: &str = "/dev/vda";
/// Time between two appends.
const APPEND_PERIOD: Duration = Duration::from_millis(500);
/// Time between two `DISK OK` lines.
const REPORT_PERIOD: Duration = Duration::from_secs(5);

/// Handle to stop the writer cleanly.
pub struct DiskHandle {
    stop: mpsc::Sender<()>,
    done: mpsc::Receiver<()>,
}

impl DiskHandle {
    /// Ask the writer to finish (it writes a last record and syncs) and wait for it.
    pub fn stop(self, timeout: Duration) -> bool {
        let _ = self.stop.send(());
        self.done.recv_timeout(timeout).is_ok()
    }
}

/// A sector buffer aligned for O_DIRECT.
#[repr(C, align(4096))]
struct Aligned([u8; 4096]);

struct Dev {
    file: File,
    direct: bool,
}

fn open(direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(DEVICE)
}

impl Dev {
    fn write_sector(&mut self, sector: u64, buf: &Aligned) -> io::Result<()> {
        let data = &buf.0[..SECTOR];
        match self.file.write_all_at(data, sector * SECTOR as u64) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                say(&format!(
                    "DISK NOTE O_DIRECT write failed ({e}): using buffered writes"
                ));
                self.file = open(false)?;
                self.direct = false;
                self.file.write_all_at(data, sector * SECTOR as u64)?;
            }
            r => r?,
        }
        self.file.sync_data()
    }
}

fn wait_for_device() -> bool {
    // virtio_blk was loaded by /init; give devtmpfs a moment if sysfs already has it.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if Path::new(DEVICE).exists() {
            return true;
        }
        if !Path::new("/sys/block/vda").exists() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Scan the log and start the writer. Returns None without a disk.
pub fn start(shared: &Arc<Shared>) -> Option<DiskHandle> {
    if !wait_for_device() {
        say("VMOVE DISK none");
        return None;
    }
    let (stop_tx, stop_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let mut dev = match open(true) {
        Ok(file) => Dev { file, direct: true },
        Err(_) => match open(false) {
            Ok(file) => Dev {
                file,
                direct: false,
            },
            Err(e) => {
                say(&format!("DISK FAIL cannot open {DEVICE}: {e}"));
                return None;
            }
        },
    };
    let size = match dev.file.seek(SeekFrom::End(0)) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("DISK FAIL cannot size {DEVICE}: {e}"));
            return None;
        }
    };
    // With the data writer (`vmove.disk`) the log keeps the lower half: it is full at the
    // writer's region.
    let capacity = match crate::diskfill::region(size) {
        Some((start, _)) if shared.config.disk_mb_s > 0 => start / SECTOR as u64,
        _ => size / SECTOR as u64,
    };
    // Read through a plain (page cache) descriptor: no alignment constraints.
    let scan = match File::open(DEVICE)
        .and_then(|f| disklog::scan(|off, buf| f.read_at(buf, off), capacity))
    {
        Ok(s) => s,
        Err(e) => {
            say(&format!("DISK FAIL cannot read {DEVICE}: {e}"));
            return None;
        }
    };
    if let Some(note) = &scan.note {
        say(&format!("DISK NOTE {note}"));
    }
    if let Some(fail) = &scan.fail {
        say(&format!("DISK FAIL {fail}"));
        shared
            .stats
            .disk_records
            .store(scan.records, Ordering::Relaxed);
        return None;
    }
    say(&format!("DISK OK {}", scan.records));
    crate::diskfill::start(shared, size);
    shared
        .stats
        .disk_records
        .store(scan.records, Ordering::Relaxed);
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("disk".to_string())
        .spawn(move || {
            writer(
                &mut dev,
                &sh,
                scan.records,
                scan.last_boot + 1,
                capacity,
                &stop_rx,
            );
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        say(&format!("DISK FAIL cannot start the writer: {e}"));
        return None;
    }
    Some(DiskHandle {
        stop: stop_tx,
        done: done_rx,
    })
}

fn writer(
    dev: &mut Dev,
    shared: &Shared,
    mut seq: u64,
    boot: u64,
    capacity: u64,
    stop: &mpsc::Receiver<()>,
) {
    let mut buf = Aligned([0u8; 4096]);
    let name = shared.config.name.clone();
    let mut last_report = Instant::now();
    let mut next = Instant::now();
    let mut full = false;
    let mut failed = false;
    loop {
        let now = Instant::now();
        let stopping = match stop.recv_timeout(next.saturating_duration_since(now)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        next += APPEND_PERIOD;
        let now = Instant::now();
        if next < now {
            // Behind (e.g. the VM was paused): no burst of catch-up records.
            next = now + APPEND_PERIOD;
        }
        if full || failed {
            if stopping {
                return;
            }
            continue;
        }
        if seq >= capacity {
            say(&format!("DISK FULL {seq}"));
            full = true;
            if stopping {
                return;
            }
            continue;
        }
        let event = if stopping { "poweroff" } else { "tick" };
        let rec = Record {
            seq,
            boot,
            timestamp_ns: now_ns(),
            payload: format!(
                "name={name} boot={boot} seq={seq} event={event} uptime={:.3}",
                crate::uptime_secs()
            )
            .into_bytes(),
        };
        disklog::encode_into(&rec, &mut buf.0[..SECTOR]);
        match dev.write_sector(seq, &buf) {
            Ok(()) => {
                seq += 1;
                shared.stats.disk_records.store(seq, Ordering::Relaxed);
            }
            Err(e) => {
                say(&format!("DISK FAIL write of record {seq}: {e}"));
                failed = true;
            }
        }
        if stopping {
            return;
        }
        if last_report.elapsed() >= REPORT_PERIOD {
            last_report = Instant::now();
            say(&format!("DISK OK {seq}"));
        }
    }
}
