//! The lab guest workload: runs as PID 1 inside the lab guest (exec'd by the initramfs'
//! `/init`), offers echo and HTTP services, dirties and verifies memory, appends to a log
//! on the data disk, and powers off on the ACPI power button.
//!
//! Status lines on the console (one per line):
//! - `VMOVE CONFIG name=<n> ip=<ip/prefix|none> dirty=<MB/s> wss=<MiB>`
//! - `VMOVE WARN <what>`
//! - `VMOVE READY <name>`
//! - `VERIFY OK <sweeps>` / `VERIFY FAIL <what>`
//! - `DISK OK <records>` / `DISK NOTE <what>` / `DISK FAIL <what>` / `DISK FULL <records>`
//! - `DISK WRITER <MB/s> MB/s over bytes <from>..<to>` (`vmove.disk`)
//! - `POWERING OFF`

pub mod cmdline;
pub mod crc32;
pub mod disklog;
pub mod pages;

mod disk;
pub mod diskfill;
mod memory;
mod net;
mod power;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Print one status line on the console (a single write, so that lines from different
/// threads do not interleave).
pub fn say(line: &str) {
    let mut s = String::with_capacity(line.len() + 1);
    s.push_str(line);
    s.push('\n');
    let out = std::io::stdout();
    let mut l = out.lock();
    let _ = l.write_all(s.as_bytes());
    let _ = l.flush();
}

/// Counters shared by the workers (shown by the HTTP page).
#[derive(Default)]
pub struct Stats {
    /// Completed verification sweeps.
    pub sweeps: AtomicU64,
    /// Duration of the last sweep, ms.
    pub last_sweep_ms: AtomicU64,
    /// Pages verified (sweeps and pre-rewrite checks).
    pub pages_verified: AtomicU64,
    /// Page verification failures.
    pub verify_failures: AtomicU64,
    /// Pages rewritten by the dirtier.
    pub pages_dirtied: AtomicU64,
    /// Records in the disk log (u64::MAX: no disk).
    pub disk_records: AtomicU64,
    /// Bytes the data writer (`vmove.disk`) has written since boot.
    pub disk_written_bytes: AtomicU64,
}

/// State shared by all workers.
pub struct Shared {
    /// The configuration from the kernel command line.
    pub config: cmdline::Config,
    /// Counters.
    pub stats: Stats,
}

/// System uptime in seconds (from /proc/uptime; 0 if unreadable).
pub fn uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Whether we are the init process of the guest (as opposed to a test run on a host).
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// Entry point. As PID 1 it never returns.
///
/// Refuses to run as anything but PID 1: on a host it would take over ports 7 and 80,
/// write to /dev/vda (maybe the host's system disk) and power the machine off.
pub fn run() {
    if !is_init() {
        eprintln!(
            "vmove-guest: not PID 1; this is the lab guest's init and must only run inside \
             the lab guest image (it writes /dev/vda and powers the machine off)"
        );
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        say(&format!("VMOVE PANIC {info}"));
    }));
    if std::panic::catch_unwind(start).is_err() {
        // Keep the guest up (exiting as PID 1 would panic the kernel) so that the console
        // shows what happened.
        say("VMOVE FATAL the workload failed to start");
    }
    // PID 1 must never exit; the power button thread ends everything.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn start() {
    let raw = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let config = cmdline::parse(&raw);
    for w in &config.warnings {
        say(&format!("VMOVE WARN {w}"));
    }
    say(&format!(
        "VMOVE CONFIG name={} ip={} dirty={} wss={}",
        config.name,
        config
            .ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "none".to_string()),
        config.dirty_mb_s,
        config.wss_mib
    ));
    let shared = Arc::new(Shared {
        config,
        stats: Stats::default(),
    });
    shared.stats.disk_records.store(u64::MAX, Ordering::Relaxed);

    // Memory first, so that the working set exists by the time we say READY.
    memory::start(&shared);
    let disk = disk::start(&shared);
    net::start(&shared);
    power::start(disk);
    say(&format!("VMOVE READY {}", shared.config.name));
}
