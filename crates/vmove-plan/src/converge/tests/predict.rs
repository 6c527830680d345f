//! The prediction, against cases computed by hand (figures in decimal MB).
use vmove_model::Converge;

use super::{qemu10, MB};
use crate::converge::{precopy, predict, ConvergePolicy, Features, Precopy, Rung, Workload};

fn w(memory_mb: u64, dirty_mb_s: u64, ws_mb: Option<u64>) -> Workload {
    Workload { memory_bytes: memory_mb * MB, dirty_rate_bytes_per_s: dirty_mb_s * MB, working_set_bytes: ws_mb.map(|x| x * MB) }
}

fn policy(converge: Converge, allow_postcopy: bool, features: Features) -> ConvergePolicy {
    ConvergePolicy { converge, max_downtime_ms: 300, initial_downtime_ms: None, timeout_s: 600, allow_postcopy, features, vcpus: 1 }
}

#[test]
fn precopy_geometric_cases() {
    // 1000 MB at 100 MB/s, 10 MB/s dirtied, 100 ms: bulk 10 s; 100 MB in 1 s; then 10 MB
    // fits 100 ms (10 MB): 2 passes, 11.1 s, 100 ms down.
    assert_eq!(precopy(&w(1000, 10, None), 100 * MB, 100), Some(Precopy { passes: 2, total_ms: 11_100, downtime_ms: 100 }));
    // Idle: the bulk pass and nothing to send at the switchover.
    assert_eq!(precopy(&w(1000, 0, None), 100 * MB, 50), Some(Precopy { passes: 1, total_ms: 10_000, downtime_ms: 0 }));
    // Dirtying twice the link over a 50 MB working set: the set stays 50 MB; it fits
    // 500 ms at once, never 300 ms.
    assert_eq!(precopy(&w(1000, 200, Some(50)), 100 * MB, 500), Some(Precopy { passes: 1, total_ms: 10_500, downtime_ms: 500 }));
    assert_eq!(precopy(&w(1000, 200, Some(50)), 100 * MB, 300), None);
    // Dirtying as fast as the link, no working set: never.
    assert_eq!(precopy(&w(1000, 100, None), 100 * MB, 300), None);
    // No link: never.
    assert_eq!(precopy(&w(1000, 0, None), 0, 300), None);
}

#[test]
fn converging_guests_need_no_help() {
    // The lab's busy guest (20 MB/s over 128 MB) on a 4 GB/s link: the 128 ms bulk pass
    // leaves 2.56 MB, which fits the floor's 50 ms (200 MB) at once: 0.64 ms down.
    let p = predict(&w(512, 20, Some(128)), 4000 * MB, &policy(Converge::Auto, false, qemu10()));
    assert!(p.converges);
    assert_eq!(p.rung_needed, Some(Rung::Downtime { limit_ms: 50 }));
    assert_eq!((p.passes, p.downtime_ms, p.throttle_pct, p.suggestion), (1, 1, 0, None));
    assert_eq!(p.total_ms, 129);
    // The same under none: the 300 ms limit from the start.
    let p = predict(&w(512, 20, Some(128)), 4000 * MB, &policy(Converge::None, false, qemu10()));
    assert_eq!(p.rung_needed, Some(Rung::Downtime { limit_ms: 300 }));
    assert_eq!(p.passes, 1);
}

#[test]
fn none_times_out_and_suggests_throttle() {
    // 1000 MB at 100 MB/s dirtying 200 MB/s over 200 MB: the set stays 200 MB (2 s a
    // pass). After the 10 s bulk pass, 295 passes fill the 600 s; cancelled at 600 s.
    let work = w(1000, 200, Some(200));
    let p = predict(&work, 100 * MB, &policy(Converge::None, false, qemu10()));
    assert!(!p.converges);
    assert_eq!((p.passes, p.total_ms, p.rung_needed), (296, 600_000, None));
    assert_eq!(p.suggestion, Some(Converge::Throttle));
}

#[test]
fn auto_converges_by_throttling() {
    // Same guest under auto without post-copy. No downtime rung can carry 200 MB, so the
    // ladder starts at 300 ms. Stuck from the 12 s sample to the 16 s one (3 passes,
    // 6 s): unparked (ceiling 50). The throttle steps every second pass: 20, 40, 50 % by
    // pass 10; stuck again at 34 s: ceiling 75. Pass 14: 70 % (60 MB/s, 120 MB), pass 15:
    // 72 MB, pass 16: 75 % (50 MB/s) 36 MB, pass 17: 18 MB fits 30 MB: 180 ms down at
    // 38.28 s + 0.18 s.
    let p = predict(&w(1000, 200, Some(200)), 100 * MB, &policy(Converge::Auto, false, qemu10()));
    assert!(p.converges, "{p:?}");
    assert_eq!(p.rung_needed, Some(Rung::AutoConverge { max_pct: 75 }));
    assert_eq!((p.passes, p.throttle_pct, p.downtime_ms), (17, 75, 180));
    assert!(p.total_ms.abs_diff(38_460) <= 1, "{}", p.total_ms);
    assert_eq!(p.suggestion, None);
}

#[test]
fn postcopy_when_nothing_else_can() {
    // No throttle on the source: 300 ms, stuck by 16 s (pass 4 done), post-copy sends the
    // 200 MB left in 2 s after a 50 ms switchover.
    let no_throttle = Features { auto_converge: false, ..qemu10() };
    let work = w(1000, 200, Some(200));
    let p = predict(&work, 100 * MB, &policy(Converge::Auto, true, no_throttle));
    assert!(p.converges);
    assert_eq!(p.rung_needed, Some(Rung::Postcopy));
    assert_eq!((p.passes, p.total_ms, p.downtime_ms), (4, 18_050, 50));
    // Post-copy not allowed by the cluster policy: no rung left, the timeout cancels; the
    // suggestion names postcopy (which needs allow_postcopy).
    let p = predict(&work, 100 * MB, &policy(Converge::Auto, false, no_throttle));
    assert!(!p.converges);
    assert_eq!(p.suggestion, Some(Converge::Postcopy));
    // Neither QEMU has postcopy-ram: nothing would do.
    let neither = Features { postcopy_ram: false, ..no_throttle };
    let p = predict(&work, 100 * MB, &policy(Converge::None, true, neither));
    assert_eq!((p.converges, p.suggestion), (false, None));
}

#[test]
fn dirty_limit_in_the_model() {
    // KVM with a dirty ring, 2 vCPUs, 100 MB/s link: the first rung limits each vCPU to
    // half the link shared by the vCPUs, 23 MiB/s (48 MB/s in all): converges there.
    let f = Features { dirty_limit: true, ..qemu10() };
    let pol = ConvergePolicy { vcpus: 2, ..policy(Converge::Throttle, false, f) };
    let p = predict(&w(1000, 200, Some(200)), 100 * MB, &pol);
    assert!(p.converges, "{p:?}");
    assert_eq!(p.rung_needed, Some(Rung::DirtyLimit { mb_per_s: 23 }));
    assert_eq!(p.throttle_pct, 0);
}

#[test]
fn a_bulk_pass_longer_than_the_timeout_is_cancelled() {
    let p = predict(&w(100_000, 0, None), 100 * MB, &policy(Converge::Auto, true, qemu10()));
    assert!(!p.converges);
    assert_eq!((p.passes, p.total_ms), (1, 600_000));
    // Post-copy starts only after a stuck window of pre-copy: not within this timeout.
    assert_eq!(p.suggestion, None);
}

#[test]
fn no_link_never_converges() {
    let p = predict(&w(1000, 0, None), 0, &policy(Converge::Auto, true, qemu10()));
    assert_eq!((p.converges, p.passes, p.suggestion), (false, 0, None));
}

