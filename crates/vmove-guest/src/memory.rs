//! The memory dirtier and the verifier.

use crate::pages::{Store, PAGE_SIZE};
use crate::{say, Shared};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time between the starts of two verification sweeps.
const SWEEP_PERIOD: Duration = Duration::from_secs(2);
/// Token bucket slice.
const SLICE: Duration = Duration::from_millis(100);
/// Failures printed per sweep.
const MAX_REPORTED: usize = 8;

/// Allocate and touch the working set, then start the dirtier and the verifier.
pub fn start(shared: &Arc<Shared>) {
    let mut wss_mib = u64::from(shared.config.wss_mib);
    if let Some(avail) = available_mib() {
        // Leave room for the kernel and the rest of us: running out of memory as PID 1
        // would panic the guest.
        let max = avail.saturating_sub(48);
        if wss_mib > max {
            say(&format!(
                "VMOVE WARN wss={wss_mib}MiB does not fit ({avail}MiB available): using {max}MiB"
            ));
            wss_mib = max;
        }
    }
    let npages = wss_mib * (1 << 20) / PAGE_SIZE as u64;
    let t = Instant::now();
    let store = Arc::new(Store::new(npages));
    say(&format!(
        "VMOVE MEMORY pages={} wss={}MiB filled in {} ms",
        npages,
        wss_mib,
        t.elapsed().as_millis()
    ));
    if shared.config.dirty_mb_s > 0 && npages > 0 {
        let (s, sh) = (store.clone(), shared.clone());
        spawn("dirtier", move || dirtier(&s, &sh));
    }
    let sh = shared.clone();
    spawn("verifier", move || verifier(&store, &sh));
}

/// MemAvailable from /proc/meminfo, MiB.
fn available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    if let Err(e) = std::thread::Builder::new().name(name.to_string()).spawn(f) {
        say(&format!("VMOVE WARN cannot start {name}: {e}"));
    }
}

/// Bytes to dirty per slice at `mb_s` MB/s.
pub fn bytes_per_slice(mb_s: u32) -> u64 {
    u64::from(mb_s) * 1_000_000 * SLICE.as_millis() as u64 / 1000
}

fn dirtier(store: &Store, shared: &Shared) {
    let per_slice = bytes_per_slice(shared.config.dirty_mb_s);
    let npages = store.npages();
    let page = PAGE_SIZE as u64;
    let mut tokens = 0u64;
    let mut cursor = 0u64;
    let mut next = Instant::now();
    loop {
        // Refill; allow one slice of catch-up at most.
        tokens = (tokens + per_slice).min(2 * per_slice);
        while tokens >= page {
            if let Err(f) = store.rewrite(cursor) {
                shared.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                say(&format!("VERIFY FAIL {f} (found by the dirtier)"));
            }
            shared.stats.pages_verified.fetch_add(1, Ordering::Relaxed);
            shared.stats.pages_dirtied.fetch_add(1, Ordering::Relaxed);
            tokens -= page;
            cursor += 1;
            if cursor == npages {
                cursor = 0;
            }
        }
        next += SLICE;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > SLICE * 10 {
            // Far behind (e.g. the VM was paused): do not try to catch up.
            next = now;
        }
    }
}

fn verifier(store: &Store, shared: &Shared) {
    let mut next = Instant::now() + SWEEP_PERIOD;
    loop {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let started = Instant::now();
        next = started.max(next) + SWEEP_PERIOD;
        let mut bad = 0u64;
        let mut reported = Vec::new();
        for r in 0..store.nregions() {
            let (f, n) = store.verify_region(r, MAX_REPORTED.saturating_sub(reported.len()));
            bad += n;
            reported.extend(f);
            // Let the dirtier in between regions.
            std::thread::yield_now();
        }
        let npages = store.npages();
        shared
            .stats
            .last_sweep_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        shared
            .stats
            .pages_verified
            .fetch_add(npages, Ordering::Relaxed);
        let sweeps = shared.stats.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        if bad == 0 {
            say(&format!("VERIFY OK {sweeps}"));
        } else {
            shared
                .stats
                .verify_failures
                .fetch_add(bad, Ordering::Relaxed);
            for f in &reported {
                say(&format!("VERIFY FAIL {f}"));
            }
            say(&format!(
                "VERIFY FAIL sweep={sweeps} bad_pages={bad} of {npages}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let m = "MemTotal:         501268 kB\nMemFree:          420000 kB\nMemAvailable:     430080 kB\n";
        assert_eq!(parse_mem_available(m), Some(420));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn rate() {
        assert_eq!(bytes_per_slice(0), 0);
        assert_eq!(bytes_per_slice(20), 2_000_000);
        // 20 MB/s is ~488 pages per slice.
        assert_eq!(bytes_per_slice(20) / PAGE_SIZE as u64, 488);
    }
}
