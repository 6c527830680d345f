//! What both QEMUs get before `migrate`, and the first downtime limit.
use vmove_model::Converge;

use super::{params, qemu10, start_unknown, MB};
use crate::converge::{
    initial_downtime_ms, setup, Features, Start, ThrottleKind, ThrottleParams,
    DIRTY_LIMIT_PARKED_MB_PER_S,
};

fn caps(v: &[(String, bool)]) -> Vec<String> {
    v.iter().filter(|(_, on)| *on).map(|(n, _)| n.clone()).collect()
}

#[test]
fn none_is_todays_migration() {
    let p = params(Converge::None, true);
    let s = setup(&p, &qemu10(), &start_unknown());
    assert_eq!(s.throttle, None);
    assert!(!s.postcopy && !s.preempt);
    assert_eq!(s.multifd_channels, 2);
    assert_eq!(s.initial_downtime_ms, 300);
    assert!(s.parked_throttle.is_empty());
    assert_eq!(caps(&s.source_capabilities), ["events", "multifd", "return-path", "switchover-ack"]);
    assert_eq!(caps(&s.target_capabilities), ["events", "multifd", "return-path", "switchover-ack"]);
    // Off capabilities are listed too, so a QEMU reused from an earlier attempt is reset.
    assert!(s.source_capabilities.contains(&("auto-converge".to_string(), false)));
    assert!(s.source_capabilities.contains(&("postcopy-ram".to_string(), false)));
    assert!(s.notes.is_empty(), "{:?}", s.notes);
}

#[test]
fn auto_with_postcopy_drops_multifd_where_qemu_cannot_combine() {
    let p = params(Converge::Auto, true);
    let s = setup(&p, &qemu10(), &start_unknown());
    assert_eq!(s.throttle, Some(ThrottleKind::AutoConverge));
    assert!(s.postcopy && s.preempt);
    assert_eq!(s.multifd_channels, 0);
    assert_eq!(
        s.notes,
        ["a single stream instead of 2 multifd channels: post-copy may be needed and these QEMUs cannot combine it with multifd"]
    );
    assert_eq!(
        caps(&s.source_capabilities),
        ["events", "postcopy-ram", "postcopy-preempt", "return-path", "switchover-ack", "auto-converge"]
    );
    // The throttle acts on the source only.
    assert_eq!(
        caps(&s.target_capabilities),
        ["events", "postcopy-ram", "postcopy-preempt", "return-path", "switchover-ack"]
    );
    assert_eq!(
        s.parked_throttle,
        ThrottleParams {
            cpu_throttle_initial_pct: Some(1),
            cpu_throttle_increment_pct: Some(1),
            max_cpu_throttle_pct: Some(1),
            cpu_throttle_tailslow: Some(false),
            vcpu_dirty_limit_mb_per_s: None,
        }
    );
    // A QEMU that combines them keeps multifd.
    let f = Features { multifd_with_postcopy: true, ..qemu10() };
    assert_eq!(setup(&p, &f, &start_unknown()).multifd_channels, 2);
    // Without the policy's permission there is no post-copy rung, and multifd stays.
    let s = setup(&params(Converge::Auto, false), &qemu10(), &start_unknown());
    assert!(!s.postcopy);
    assert_eq!(s.multifd_channels, 2);
    assert_eq!(s.notes, ["no post-copy rung: the cluster policy does not allow post-copy (allow_postcopy)"]);
}

#[test]
fn dirty_limit_is_preferred_where_kvm_has_a_dirty_ring() {
    let f = Features { dirty_limit: true, ..qemu10() };
    let s = setup(&params(Converge::Throttle, false), &f, &start_unknown());
    assert_eq!(s.throttle, Some(ThrottleKind::DirtyLimit));
    // dirty-limit and auto-converge exclude each other in QEMU: one on, the other off.
    assert!(s.source_capabilities.contains(&("dirty-limit".to_string(), true)));
    assert!(s.source_capabilities.contains(&("auto-converge".to_string(), false)));
    assert!(!s.target_capabilities.iter().any(|(n, _)| n == "dirty-limit"));
    assert_eq!(s.parked_throttle.vcpu_dirty_limit_mb_per_s, Some(DIRTY_LIMIT_PARKED_MB_PER_S));
    assert_eq!(s.parked_throttle.max_cpu_throttle_pct, None);
}

#[test]
fn missing_features_are_noted() {
    let f = Features { auto_converge: false, postcopy_ram: false, ..qemu10() };
    let s = setup(&params(Converge::Auto, true), &f, &start_unknown());
    assert_eq!(s.throttle, None);
    assert!(!s.postcopy);
    assert_eq!(
        s.notes,
        [
            "no throttle rung: the source QEMU has neither auto-converge nor dirty-limit",
            "no post-copy rung: a QEMU lacks postcopy-ram"
        ]
    );
    // Without return-path there is no switchover-ack either.
    let f = Features { return_path: false, ..qemu10() };
    let s = setup(&params(Converge::None, false), &f, &start_unknown());
    assert!(!s.source_capabilities.iter().any(|(n, _)| n == "switchover-ack" || n == "return-path"));
}

#[test]
fn the_first_downtime_limit() {
    let st = |link: Option<u64>, dirty: Option<u64>, ws: Option<u64>| Start {
        memory_bytes: 1000 * MB,
        working_set_bytes: ws,
        link_bytes_per_s: link,
        dirty_rate_bytes_per_s: dirty,
        vcpus: 1,
    };
    let auto = params(Converge::Auto, false);
    // none: the maximum, always.
    assert_eq!(initial_downtime_ms(&params(Converge::None, false), &st(Some(100 * MB), Some(0), None)), 300);
    // Unknown figures: the floor.
    assert_eq!(initial_downtime_ms(&auto, &start_unknown()), 50);
    assert_eq!(initial_downtime_ms(&auto, &st(Some(100 * MB), None, None)), 50);
    // An idle guest converges at the floor.
    assert_eq!(initial_downtime_ms(&auto, &st(Some(100 * MB), Some(0), None)), 50);
    // 100 MB/s, 200 MB/s dirtied over 20 MB: the set stays 20 MB, which needs 200 ms.
    assert_eq!(initial_downtime_ms(&auto, &st(Some(100 * MB), Some(200 * MB), Some(20 * MB))), 200);
    // ... over 25 MB: 250 ms, so the 300 ms maximum (rungs 50, 100, 200, 300).
    assert_eq!(initial_downtime_ms(&auto, &st(Some(100 * MB), Some(200 * MB), Some(25 * MB))), 300);
    // Never converging: the maximum.
    assert_eq!(initial_downtime_ms(&auto, &st(Some(100 * MB), Some(200 * MB), None)), 300);
    // Explicit: taken, but never above the maximum.
    let p = crate::MigrationParams { initial_downtime_ms: Some(20), ..auto.clone() };
    assert_eq!(initial_downtime_ms(&p, &start_unknown()), 20);
    let p = crate::MigrationParams { initial_downtime_ms: Some(2000), ..auto.clone() };
    assert_eq!(initial_downtime_ms(&p, &start_unknown()), 300);
    // A maximum below the floor wins.
    let p = crate::MigrationParams { max_downtime_ms: 30, ..auto };
    assert_eq!(initial_downtime_ms(&p, &start_unknown()), 30);
}

#[test]
fn the_first_limit_respects_the_start_budget() {
    // 1 GB at 100 MB/s dirtying 90 MB/s: the set shrinks 10 % a pass; the model's
    // total hardly depends on the limit (the passes before the last dominate).
    let st = Start {
        memory_bytes: 1000 * MB,
        working_set_bytes: None,
        link_bytes_per_s: Some(100 * MB),
        dirty_rate_bytes_per_s: Some(90 * MB),
        vcpus: 1,
    };
    let w = crate::converge::Workload { memory_bytes: 1000 * MB, dirty_rate_bytes_per_s: 90 * MB, working_set_bytes: None };
    let t = |ms| crate::converge::precopy(&w, 100 * MB, ms).map(|r| (r.passes, r.total_ms));
    // 50 ms: 0.9ⁿ · 900 MB ≤ 5 MB at n = 50; 10 s bulk + 90 s · (1 − 0.9⁵⁰) + 46 ms.
    assert_eq!(t(50), Some((51, 99_583)));
    assert_eq!((t(100), t(200), t(300)), (Some((44, 99_128)), Some((38, 98_358)), Some((34, 97_497))));
    let with_timeout = |timeout_s| crate::MigrationParams { timeout_s, ..params(Converge::Auto, false) };
    // A quarter of 400 s is 100 s: the floor fits.
    assert_eq!(initial_downtime_ms(&with_timeout(400), &st), 50);
    // A quarter of 396 s is 99 s: 200 ms is the lowest rung that fits.
    assert_eq!(initial_downtime_ms(&with_timeout(396), &st), 200);
    // A quarter of 300 s is 75 s: none fits, the maximum.
    assert_eq!(initial_downtime_ms(&with_timeout(300), &st), 300);
}
