//! Limits, start times and makespans of small hand-computed cases.
use super::*;
use crate::mode::Mode;

fn mv(guest: &str, from: &str, to: &str, predicted_s: u64) -> PlannedMove {
    PlannedMove {
        guest: guest.into(),
        from: from.into(),
        to: to.into(),
        mode: Mode::Live,
        memory_mib: 1024,
        vcpus: 1,
        group: None,
        console_port: None,
        predicted_s,
        notes: vec![],
    }
}

/// `(guest, start_s, end_s)` of every scheduled move.
fn times(s: &Schedule) -> Vec<(&str, u64, u64)> {
    s.moves
        .iter()
        .map(|m| (m.planned.guest.as_str(), m.start_s, m.end_s))
        .collect()
}

const ONE_EACH: Limits = Limits {
    max_concurrent: 1,
    max_out_per_host: 1,
    max_in_per_host: 1,
};

#[test]
fn defaults_are_five_two_and_two() {
    assert_eq!(
        Limits::default(),
        Limits {
            max_concurrent: 5,
            max_out_per_host: 2,
            max_in_per_host: 2
        }
    );
}

#[test]
fn startable_obeys_the_cluster_limit() {
    let pending: Vec<PlannedMove> = (1..=7)
        .map(|i| mv(&format!("vm{i}"), &format!("s{i}"), &format!("t{i}"), 10))
        .collect();
    let none: [PlannedMove; 0] = [];
    assert_eq!(
        startable(&pending, &none, &Limits::default()),
        [0, 1, 2, 3, 4]
    );
    let running = [mv("r1", "s9", "t9", 10), mv("r2", "s8", "t8", 10)];
    assert_eq!(startable(&pending, &running, &Limits::default()), [0, 1, 2]);
}

#[test]
fn startable_obeys_the_per_host_limits_and_passes_over_blocked_moves() {
    let pending = [
        mv("a", "h1", "t1", 10),
        mv("b", "h1", "t2", 10),
        mv("c", "h1", "t3", 10), // third out of h1
        mv("d", "h2", "t1", 10),
        mv("e", "h3", "t1", 10), // third into t1
        mv("f", "h3", "t4", 10),
    ];
    let none: [PlannedMove; 0] = [];
    assert_eq!(startable(&pending, &none, &Limits::default()), [0, 1, 3, 5]);
    let running = [mv("r", "h2", "t4", 10)];
    assert_eq!(
        startable(&pending, &running, &Limits::default()),
        [0, 1, 3, 5]
    );
    // With h1 -> t1 running: a fills both h1 and t1, so b, c (out of h1), d, e (into t1) wait.
    let running = [mv("r", "h1", "t1", 10)];
    assert_eq!(startable(&pending, &running, &Limits::default()), [0, 5]);
}

#[test]
fn startable_never_starts_a_running_guest_again() {
    let pending = [mv("a", "h1", "t2", 10), mv("b", "h1", "t3", 10)];
    let running = [mv("a", "h1", "t1", 10)];
    assert_eq!(startable(&pending, &running, &Limits::default()), [1]);
}

#[test]
fn startable_with_references_and_zero_limits() {
    let owned = [mv("a", "h1", "t1", 10), mv("b", "h2", "t2", 10)];
    let refs: Vec<&PlannedMove> = owned.iter().collect();
    assert_eq!(startable(&refs, &refs[..0], &ONE_EACH), [0]);
    let zero = Limits {
        max_concurrent: 0,
        ..Limits::default()
    };
    assert_eq!(startable(&refs, &refs[..0], &zero), Vec::<usize>::new());
    assert_eq!(
        schedule(&owned, &zero),
        Err(LimitsError::Zero("the cluster's concurrent move limit"))
    );
    let zero = Limits {
        max_in_per_host: 0,
        ..Limits::default()
    };
    assert_eq!(
        zero.validate().unwrap_err().to_string(),
        "the per-host inbound move limit must be at least 1"
    );
}

#[test]
fn one_source_two_at_a_time_longest_first() {
    // Out of h1 two at a time: 40 and 30 at 0; 20 at 30 (ends 50); 10 at 40 (ends 50).
    let moves = [
        mv("a", "h1", "t1", 10),
        mv("b", "h1", "t2", 20),
        mv("c", "h1", "t3", 30),
        mv("d", "h1", "t4", 40),
    ];
    let s = schedule(&moves, &Limits::default()).unwrap();
    assert_eq!(
        times(&s),
        [("d", 0, 40), ("c", 0, 30), ("b", 30, 50), ("a", 40, 50)]
    );
    assert_eq!(s.makespan_s, 50);
}

#[test]
fn the_cluster_limit_makes_a_second_wave() {
    let moves: Vec<PlannedMove> = (1..=6)
        .map(|i| mv(&format!("vm{i}"), &format!("s{i}"), &format!("t{i}"), 10))
        .collect();
    let s = schedule(&moves, &Limits::default()).unwrap();
    assert_eq!(
        times(&s),
        [
            ("vm1", 0, 10),
            ("vm2", 0, 10),
            ("vm3", 0, 10),
            ("vm4", 0, 10),
            ("vm5", 0, 10),
            ("vm6", 10, 20)
        ]
    );
    assert_eq!(s.makespan_s, 20);
}

#[test]
fn the_inbound_limit_queues_at_the_target() {
    let moves = [
        mv("a", "h1", "t", 10),
        mv("b", "h2", "t", 10),
        mv("c", "h3", "t", 10),
        mv("d", "h4", "u", 5),
    ];
    let s = schedule(&moves, &Limits::default()).unwrap();
    assert_eq!(
        times(&s),
        [("a", 0, 10), ("b", 0, 10), ("d", 0, 5), ("c", 10, 20)]
    );
    assert_eq!(s.makespan_s, 20);
}

#[test]
fn one_at_a_time_adds_up_and_zero_lengths_pass() {
    let moves = [
        mv("a", "h1", "t1", 7),
        mv("b", "h2", "t2", 0),
        mv("c", "h3", "t3", 5),
    ];
    let s = schedule(&moves, &ONE_EACH).unwrap();
    assert_eq!(times(&s), [("a", 0, 7), ("c", 7, 12), ("b", 12, 12)]);
    assert_eq!(s.makespan_s, 12);
    let empty = schedule(&[], &Limits::default()).unwrap();
    assert_eq!((empty.moves.len(), empty.makespan_s), (0, 0));
}

#[test]
fn limits_are_never_exceeded() {
    // 60 moves out of 4 hosts into 6, pseudo-random durations.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let moves: Vec<PlannedMove> = (0..60)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let from = format!("s{}", x % 4);
            let to = format!("t{}", (x >> 8) % 6);
            mv(&format!("vm{i}"), &from, &to, 5 + (x >> 16) % 120)
        })
        .collect();
    for limits in [
        Limits::default(),
        ONE_EACH,
        Limits {
            max_concurrent: 8,
            max_out_per_host: 3,
            max_in_per_host: 1,
        },
    ] {
        let s = schedule(&moves, &limits).unwrap();
        assert_eq!(s.moves.len(), moves.len());
        let mut guests: Vec<&str> = s.moves.iter().map(|m| m.planned.guest.as_str()).collect();
        guests.sort_unstable();
        guests.dedup();
        assert_eq!(guests.len(), moves.len());
        let mut peak = 0;
        for m in &s.moves {
            let t = m.start_s;
            let at_t: Vec<&ScheduledMove> = s
                .moves
                .iter()
                .filter(|o| o.start_s <= t && t < o.end_s)
                .collect();
            peak = peak.max(at_t.len());
            assert!(at_t.len() <= limits.max_concurrent, "{limits:?} at {t}");
            for o in &at_t {
                let outs = at_t
                    .iter()
                    .filter(|p| p.planned.from == o.planned.from)
                    .count();
                let ins = at_t.iter().filter(|p| p.planned.to == o.planned.to).count();
                assert!(outs <= limits.max_out_per_host, "{limits:?} at {t}");
                assert!(ins <= limits.max_in_per_host, "{limits:?} at {t}");
            }
            assert_eq!(m.end_s, m.start_s + m.planned.predicted_s);
        }
        assert_eq!(
            peak,
            limits
                .max_concurrent
                .min(4 * limits.max_out_per_host)
                .min(6 * limits.max_in_per_host)
        );
        assert_eq!(s.makespan_s, s.moves.iter().map(|m| m.end_s).max().unwrap());
        assert!(s.moves.windows(2).all(|w| w[0].start_s <= w[1].start_s));
    }
}

#[test]
fn a_drain_plan_serializes_flat() {
    let placement = Placement {
        moves: vec![
            mv("a", "h1", "t1", 30),
            mv("b", "h1", "t2", 20),
            mv("c", "h1", "t1", 10),
        ],
        unplaced: vec![],
    };
    let d = DrainPlan::new(placement, Limits::default()).unwrap();
    assert_eq!(d.predicted_total_s, 30);
    assert_eq!(
        d.pending()
            .iter()
            .map(|m| m.guest.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let j = serde_json::to_value(&d).unwrap();
    assert_eq!(
        j["moves"][2],
        serde_json::json!({
            "guest": "c", "from": "h1", "to": "t1", "mode": "live", "memory_mib": 1024,
            "vcpus": 1, "predicted_s": 10, "start_s": 20, "end_s": 30
        })
    );
    assert_eq!(j["predicted_total_s"], 30);
    assert_eq!(
        j["limits"],
        serde_json::json!({"max_concurrent": 5, "max_out_per_host": 2, "max_in_per_host": 2})
    );
    let back: DrainPlan = serde_json::from_value(j).unwrap();
    assert_eq!(back, d);
}
