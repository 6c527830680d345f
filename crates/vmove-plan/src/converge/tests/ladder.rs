//! The ladder: when it escalates, what it asks for, and what it never does.
use vmove_model::Converge;

use super::{params, pre, qemu10, start_unknown, with_status, MB};
use crate::converge::{Action, Features, Ladder, Phase, Rung, Sample, Start, ThrottleParams};

/// Feeds `s` and returns the actions with the time they came.
fn feed(l: &mut Ladder, s: &Sample, log: &mut Vec<(u64, Action)>) {
    for a in l.observe(s) {
        log.push((s.at_ms, a));
    }
}

/// A short name for each action, to compare sequences.
fn name(a: &Action) -> String {
    match a {
        Action::SetDowntimeLimit { ms, .. } => format!("downtime {ms}"),
        Action::UnparkThrottle { params, .. } => format!("unpark {params:?}"),
        Action::RaiseThrottle { params, .. } => format!("raise {params:?}"),
        Action::StartPostcopy { .. } => "postcopy".into(),
        Action::PausePostcopy { .. } => "pausing post-copy".into(),
        Action::RecoverPostcopy { attempt, .. } => format!("recover {attempt}"),
        Action::Exhausted { .. } => "exhausted".into(),
        Action::Cancel { .. } => "cancel".into(),
    }
}

fn names(log: &[(u64, Action)]) -> Vec<(u64, String)> {
    log.iter().map(|(t, a)| (*t, name(a))).collect()
}

#[test]
fn none_keeps_its_limit_and_cancels_at_the_timeout() {
    let mut l = Ladder::new(&params(Converge::None, true), &qemu10(), &start_unknown());
    assert_eq!(l.rungs(), [Rung::Downtime { limit_ms: 300 }]);
    assert_eq!(l.rung().to_string(), "rung 1/1: downtime limit 300 ms");
    let mut log = Vec::new();
    for sec in 1..=700 {
        feed(&mut l, &pre(sec * 1000, sec, 200 * MB), &mut log);
    }
    assert_eq!(names(&log), [(7000, "exhausted".to_string()), (600_000, "cancel".to_string())]);
    let why = log[0].1.why();
    assert_eq!(
        why.reason,
        "stuck at rung 1/1: downtime limit 300 ms: the dirty set stayed at 190.7 MiB or more for 5 passes / 5.0 s (no drop of 10 % below 190.7 MiB); 300 ms carries 28.6 MiB at 95.4 MB/s, dirtied 190.7 MB/s; nothing left: the timeout cancels in 593 s"
    );
    assert_eq!((why.figures.window_passes, why.figures.window_ms, why.figures.window_low_bytes), (5, 5000, 200 * MB));
    assert_eq!(
        log[1].1.describe(),
        "cancelling: the timeout of 600 s passed at rung 1/1: downtime limit 300 ms without convergence; the guest stays on the source"
    );
}

#[test]
fn auto_climbs_downtime_then_throttle_then_postcopy() {
    let mut l = Ladder::new(&params(Converge::Auto, true), &qemu10(), &start_unknown());
    let d = |limit_ms| Rung::Downtime { limit_ms };
    let ac = |max_pct| Rung::AutoConverge { max_pct };
    assert_eq!(l.rungs(), [d(50), d(100), d(200), d(300), ac(50), ac(75), ac(99), Rung::Postcopy]);
    // A guest QEMU throttles by 20 points every second pass up to the ceiling; parked at 1 %.
    let (mut log, mut ceiling, mut pct) = (Vec::new(), 0u64, 1u64);
    for sec in 1..=60u64 {
        if ceiling > 0 && sec % 2 == 0 {
            pct = (pct + 20).min(ceiling);
        }
        let mut s = pre(sec * 1000, sec, 200 * MB);
        s.throttle_pct = Some(pct);
        let before = log.len();
        feed(&mut l, &s, &mut log);
        for (_, a) in &log[before..] {
            if let Action::UnparkThrottle { params, .. } | Action::RaiseThrottle { params, .. } = a {
                ceiling = u64::from(params.max_cpu_throttle_pct.unwrap_or(0));
            }
        }
    }
    let unpark = ThrottleParams {
        cpu_throttle_initial_pct: Some(20),
        cpu_throttle_increment_pct: Some(20),
        max_cpu_throttle_pct: Some(50),
        cpu_throttle_tailslow: Some(false),
        vcpu_dirty_limit_mb_per_s: None,
    };
    let raise = |m| ThrottleParams { max_cpu_throttle_pct: Some(m), ..ThrottleParams::default() };
    let expect: Vec<(u64, String)> = vec![
        (7000, "downtime 100".into()),
        (13000, "downtime 200".into()),
        (19000, "downtime 300".into()),
        (25000, format!("unpark {unpark:?}")),
        // Each rise of the throttle (26, 28, 30 s) restarts the window.
        (35000, format!("raise {:?}", raise(75))),
        (43000, format!("raise {:?}", raise(99))),
        (51000, "postcopy".into()),
    ];
    assert_eq!(names(&log), expect);
    assert_eq!(l.rung().to_string(), "rung 8/8: post-copy");
    assert_eq!(l.rung().downtime_limit_ms, 300);
    assert!(log[4].1.describe().starts_with("throttling harder (auto-converge up to 75 %): stuck at rung 5/8: auto-converge up to 50 %"), "{}", log[4].1.describe());
    assert_eq!(log[4].1.why().figures.throttle_pct, Some(50));

    // Post-copy: no timeout, recovery with back-off while paused.
    let mut log = Vec::new();
    let pc = |at, st| with_status(pre(at, 61, 50 * MB), st);
    feed(&mut l, &pc(52_000, Phase::Postcopy), &mut log);
    for at in (60_000..=75_000).step_by(500) {
        feed(&mut l, &pc(at, Phase::PostcopyPaused), &mut log);
    }
    feed(&mut l, &pc(76_000, Phase::PostcopyRecovering), &mut log);
    feed(&mut l, &pc(77_000, Phase::Postcopy), &mut log);
    feed(&mut l, &pc(80_000, Phase::PostcopyPaused), &mut log);
    feed(&mut l, &pc(81_000, Phase::PostcopyPaused), &mut log);
    feed(&mut l, &pc(700_000, Phase::Postcopy), &mut log);
    assert_eq!(
        names(&log),
        [
            (61_000, "recover 1".to_string()),
            (63_000, "recover 2".to_string()),
            (67_000, "recover 3".to_string()),
            (75_000, "recover 4".to_string()),
            (81_000, "recover 1".to_string()),
        ]
    );
    assert_eq!(
        log[1].1.describe(),
        "recovering post-copy (attempt 2): post-copy paused for 3.0 s with 23.8 MiB still on the source; the guest waits on the target for its missing pages"
    );
    assert_eq!(l.eta_ms(), Some(250));
    feed(&mut l, &pc(701_000, Phase::Completed), &mut log);
    feed(&mut l, &pc(702_000, Phase::PostcopyPaused), &mut log);
    assert_eq!(log.len(), 5);
    assert_eq!(l.eta_ms(), Some(0));
}

#[test]
fn post_copy_waits_for_a_moving_link() {
    let mut l = Ladder::new(&params(Converge::Postcopy, true), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    // 50 → 100 → 200 → 300 ms by 19 s; stuck again at 25 s, but nothing moves.
    for sec in 2..=30 {
        let mut s = pre(sec * 1000, sec, 200 * MB);
        if sec >= 24 {
            // No transfer: the dirty set comes from `remaining`.
            s.rate_bytes_per_s = 0;
            s.remaining_bytes = 200 * MB;
        }
        feed(&mut l, &s, &mut log);
    }
    assert_eq!(names(&log).last().map(|x| x.1.clone()), Some("downtime 300".to_string()));
    feed(&mut l, &pre(31_000, 31, 200 * MB), &mut log);
    assert_eq!(names(&log).last().cloned(), Some((31_000, "postcopy".to_string())));
}

#[test]
fn recovery_backoff_is_capped() {
    let mut l = Ladder::new(&params(Converge::Postcopy, true), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    for sec in 0..=200 {
        feed(&mut l, &with_status(pre(sec * 1000, 9, MB), Phase::PostcopyPaused), &mut log);
    }
    let times: Vec<u64> = log.iter().map(|(t, _)| t / 1000).collect();
    assert_eq!(times, [1, 3, 7, 15, 31, 61, 91, 121, 151, 181]);
}

#[test]
fn escalation_needs_a_whole_window_never_one_sample() {
    let mut l = Ladder::new(&params(Converge::Auto, false), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    // The bulk pass never counts, however long.
    for sec in 1..=30 {
        feed(&mut l, &pre(sec * 1000, 1, 900 * MB), &mut log);
    }
    // One high sample in a steady window changes nothing; the low stays the figure.
    for (sec, set) in [(31, 100), (32, 100), (33, 400), (34, 100), (35, 100), (36, 100)] {
        feed(&mut l, &pre(sec * 1000, sec - 29, set * MB), &mut log);
    }
    assert_eq!(names(&log), [(36_000, "downtime 100".to_string())]);
    assert_eq!(log[0].1.why().figures.window_low_bytes, 100 * MB);
    assert_eq!(log[0].1.why().figures.dirty_set_bytes, 100 * MB);
    // One low sample is progress: the window starts again from it.
    let mut log = Vec::new();
    for (sec, set) in [(37, 100), (38, 100), (39, 80), (40, 100), (41, 100), (42, 100), (43, 100)] {
        feed(&mut l, &pre(sec * 1000, sec - 29, set * MB), &mut log);
    }
    assert!(log.is_empty(), "{:?}", names(&log));
    feed(&mut l, &pre(44_000, 15, 100 * MB), &mut log);
    assert_eq!(names(&log), [(44_000, "downtime 200".to_string())]);
    assert_eq!(log[0].1.why().figures.window_low_bytes, 80 * MB);
}

#[test]
fn slow_progress_is_stuck_fast_progress_is_not() {
    let run = |factor: f64| {
        let mut l = Ladder::new(&params(Converge::Auto, false), &qemu10(), &start_unknown());
        let mut log = Vec::new();
        let mut set = 500.0 * MB as f64;
        for sec in 2..=40 {
            feed(&mut l, &pre(sec * 1000, sec, set as u64), &mut log);
            set *= factor;
        }
        names(&log).into_iter().map(|(t, _)| t).collect::<Vec<_>>()
    };
    // 5 % a pass: 10 % within two or three passes, never stuck.
    assert_eq!(run(0.95), Vec::<u64>::new());
    // 2 % a pass: 9.6 % after five passes, stuck at the end of the first window.
    assert_eq!(run(0.98)[0], 7000);
}

#[test]
fn windows_span_both_passes_and_time() {
    // Ten passes a second: five seconds.
    let mut l = Ladder::new(&params(Converge::Auto, false), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    for i in 0..100 {
        feed(&mut l, &pre(1000 + i * 100, 2 + i, 200 * MB), &mut log);
    }
    assert_eq!(log[0].0, 6000);
    // A pass every three seconds: three passes.
    let mut l = Ladder::new(&params(Converge::Auto, false), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    for i in 0..10 {
        feed(&mut l, &pre(1000 + i * 1000, 2 + i / 3, 200 * MB), &mut log);
    }
    assert_eq!(log[0].0, 10_000);
}

#[test]
fn a_set_within_reach_is_left_to_qemu() {
    // 25 MB fits 300 ms at 100 MB/s: QEMU switches over by itself.
    let mut l = Ladder::new(&params(Converge::None, false), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    for sec in 2..=100 {
        feed(&mut l, &pre(sec * 1000, sec, 25 * MB), &mut log);
    }
    assert!(log.is_empty(), "{:?}", names(&log));
}

#[test]
fn dirty_limit_rungs_follow_the_link() {
    let f = Features { dirty_limit: true, ..qemu10() };
    let st = Start { link_bytes_per_s: Some(200 * MB), vcpus: 2, ..start_unknown() };
    let mut l = Ladder::new(&params(Converge::Throttle, false), &f, &st);
    let dl = |mb_per_s| Rung::DirtyLimit { mb_per_s };
    assert_eq!(&l.rungs()[4..], [dl(47), dl(11), dl(2)]);
    let mut log = Vec::new();
    for sec in 2..=60 {
        feed(&mut l, &pre(sec * 1000, sec, 200 * MB), &mut log);
    }
    let limits: Vec<(String, Option<u64>)> = log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::UnparkThrottle { params, .. } => Some(("unpark".to_string(), params.vcpu_dirty_limit_mb_per_s)),
            Action::RaiseThrottle { params, .. } => Some(("raise".to_string(), params.vcpu_dirty_limit_mb_per_s)),
            _ => None,
        })
        .collect();
    assert_eq!(limits, [("unpark".into(), Some(47)), ("raise".into(), Some(11)), ("raise".into(), Some(2))]);
    assert!(log[3].1.describe().starts_with("throttling the guest (dirty-limit 47 MB/s per vCPU)"), "{}", log[3].1.describe());
    assert_eq!(name(&log.last().unwrap().1), "exhausted");
}

#[test]
fn the_timeout_cancels_pre_copy_once_even_after_asking_for_post_copy() {
    let mut l = Ladder::new(&params(Converge::Postcopy, true), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    feed(&mut l, &with_status(pre(1000, 0, 0), Phase::Setup), &mut log);
    for sec in 2..=700 {
        feed(&mut l, &pre(sec * 1000, sec, 200 * MB), &mut log);
    }
    // 50, 100, 200, 300 ms, post-copy asked at 25 s; QEMU never switched: cancelled.
    let n = names(&log);
    assert_eq!(n[3], (25_000, "postcopy".to_string()));
    assert_eq!(n[4], (600_000, "cancel".to_string()));
    assert_eq!(n.len(), 5);
    // A migration still in setup at the timeout is cancelled as well.
    let mut l = Ladder::new(&params(Converge::None, false), &qemu10(), &start_unknown());
    assert_eq!(l.observe(&with_status(pre(600_000, 0, 0), Phase::Setup)).len(), 1);
    // Switchover and unknown statuses are left alone.
    let mut l = Ladder::new(&params(Converge::None, false), &qemu10(), &start_unknown());
    assert!(l.observe(&with_status(pre(600_000, 9, 0), Phase::Switchover)).is_empty());
    assert!(l.observe(&with_status(pre(600_000, 9, 0), Phase::Other)).is_empty());
}

#[test]
fn phases_from_qemu() {
    let t = [
        ("setup", Phase::Setup),
        ("active", Phase::Precopy),
        ("pre-switchover", Phase::Switchover),
        ("device", Phase::Switchover),
        ("wait-unplug", Phase::Switchover),
        ("postcopy-active", Phase::Postcopy),
        ("postcopy-paused", Phase::PostcopyPaused),
        ("postcopy-recover-setup", Phase::PostcopyRecovering),
        ("postcopy-recover", Phase::PostcopyRecovering),
        ("completed", Phase::Completed),
        ("failed", Phase::Failed),
        ("cancelled", Phase::Cancelled),
        ("cancelling", Phase::Other),
        ("none", Phase::Other),
        ("x-teleporting", Phase::Other),
    ];
    for (wire, p) in t {
        assert_eq!(Phase::from_qemu(wire), p, "{wire}");
    }
    assert!(Phase::Failed.is_finished() && !Phase::Postcopy.is_finished());
    assert!(Phase::PostcopyPaused.is_postcopy() && !Phase::Switchover.is_postcopy());
}

#[test]
fn dirty_set_and_eta() {
    let mut s = pre(0, 3, 200 * MB);
    assert_eq!(s.dirty_set_bytes(), 200 * MB);
    s.expected_downtime_ms = 0;
    assert_eq!(s.dirty_set_bytes(), 100 * MB);
    let mut l = Ladder::new(&params(Converge::None, false), &qemu10(), &start_unknown());
    assert_eq!(l.eta_ms(), None);
    let mut s = pre(5000, 3, 200 * MB);
    s.dirty_rate_bytes_per_s = 50 * MB;
    l.observe(&s);
    // 200 → 100 → 50 → 25 MB (fits 300 ms at 100 MB/s): 2 + 1 + 0.5 s, then 250 ms.
    assert_eq!(l.eta_ms(), Some(3750));
    s.dirty_rate_bytes_per_s = 100 * MB;
    l.observe(&s);
    assert_eq!(l.eta_ms(), None);
    l.observe(&pre(6000, 1, 200 * MB));
    assert_eq!(l.eta_ms(), Some(1000));
}

#[test]
fn actions_serialize_tagged() {
    let mut l = Ladder::new(&params(Converge::Auto, false), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    for sec in 2..=7 {
        feed(&mut l, &pre(sec * 1000, sec, 200 * MB), &mut log);
    }
    let a = &log[0].1;
    let j = serde_json::to_value(a).unwrap();
    assert_eq!(j["action"], "set-downtime-limit");
    assert_eq!(j["ms"], 100);
    assert_eq!(j["why"]["figures"]["window_passes"], 5);
    assert_eq!(j["why"]["figures"]["downtime_limit_ms"], 50);
    assert_eq!(serde_json::from_value::<Action>(j).unwrap(), *a);
    let r = serde_json::to_value(l.rung()).unwrap();
    assert_eq!(r["rung"]["rung"], "downtime");
    assert_eq!(r["rung"]["limit_ms"], 100);
    assert_eq!((r["step"].clone(), r["of"].clone()), (2.into(), 7.into()));
}

#[test]
fn a_hung_post_copy_is_paused_once_per_stall() {
    let mut l = Ladder::new(&params(Converge::Postcopy, true), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    let pc = |at: u64, sent: u64| {
        let mut s = with_status(pre(at, 20, 40 * MB), Phase::Postcopy);
        s.transferred_bytes = sent;
        s
    };
    // Bytes move: nothing to do.
    for (i, at) in (10_000..=12_000).step_by(250).enumerate() {
        feed(&mut l, &pc(at, 500 * MB + i as u64 * MB), &mut log);
    }
    assert!(log.is_empty());
    // The link goes down at 12 s: nothing moves; the pause comes 3 s later, once.
    for at in (12_250..=15_000).step_by(250) {
        feed(&mut l, &pc(at, 508 * MB), &mut log);
    }
    assert_eq!(names(&log), [(15_000, "pausing post-copy".to_string())]);
    assert_eq!(
        log[0].1.describe(),
        "pausing post-copy: post-copy moved no byte for 3.0 s with 19.1 MiB still on the source: the link hangs"
    );
    // The pause failed (the target was not in post-copy yet): asked again 3 s later.
    l.pause_failed();
    for at in (15_250..=18_000).step_by(250) {
        feed(&mut l, &pc(at, 508 * MB), &mut log);
    }
    assert_eq!(names(&log), [(15_000, "pausing post-copy".to_string()), (18_000, "pausing post-copy".to_string())]);
    log.remove(1);
    // Once asked (and done), no more while nothing moves.
    for at in (18_250..=20_000).step_by(250) {
        feed(&mut l, &pc(at, 508 * MB), &mut log);
    }
    assert_eq!(log.len(), 1);
    // Paused, recovered, moving again, then a second stall: a second pause.
    feed(&mut l, &with_status(pc(20_250, 508 * MB), Phase::PostcopyPaused), &mut log);
    feed(&mut l, &with_status(pc(21_500, 508 * MB), Phase::PostcopyPaused), &mut log);
    feed(&mut l, &with_status(pc(22_000, 508 * MB), Phase::PostcopyRecovering), &mut log);
    feed(&mut l, &pc(22_250, 509 * MB), &mut log);
    for at in (22_500..=26_000).step_by(250) {
        feed(&mut l, &pc(at, 510 * MB), &mut log);
    }
    assert_eq!(
        names(&log),
        [(15_000, "pausing post-copy".to_string()), (21_500, "recover 1".to_string()), (25_500, "pausing post-copy".to_string())]
    );
}

/// A pre-copy sample of [`pre`] with `in_flight` bytes held by the source's kernel.
fn pre_in_flight(at_ms: u64, pass: u64, set: u64, in_flight: u64) -> Sample {
    Sample { in_flight_bytes: in_flight, ..pre(at_ms, pass, set) }
}

#[test]
fn bytes_in_flight_come_off_qemus_limit_so_that_the_pause_stays_within_the_rungs() {
    // 17 MB in the socket queues at 100 MB/s drain in 170 ms after QEMU stops the guest:
    // QEMU may plan only 130 of the 300 ms.
    let mut l = Ladder::new(&params(Converge::None, true), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    feed(&mut l, &pre_in_flight(250, 1, 400 * MB, 17 * MB), &mut log);
    assert_eq!(names(&log), [(250, "downtime 130".to_string())]);
    let Action::SetDowntimeLimit { ms, in_flight_ms, why } = &log[0].1 else { unreachable!() };
    assert_eq!((*ms, *in_flight_ms, why.figures.in_flight_bytes, why.figures.downtime_limit_ms), (130, 170, 17 * MB, 300));
    assert_eq!(
        log[0].1.describe(),
        "downtime limit 300 ms (QEMU's 130 ms, 170 ms kept for the bytes in flight): 16.2 MiB in flight (the source's socket queues) drain in 170 ms at 95.4 MB/s: QEMU's limit 130 ms keeps the pause within 300 ms"
    );
    // The same figures, or a change of less than a tenth, ask nothing more.
    for i in 2..=8 {
        feed(&mut l, &pre_in_flight(i * 250, 1, 400 * MB, 16 * MB), &mut log);
    }
    assert_eq!(log.len(), 1, "{:?}", names(&log));
    // The queues empty (the link became faster than QEMU): the highest drain of the last
    // eight samples still counts until it has left the window; then QEMU gets it all back.
    for i in 9..=15 {
        feed(&mut l, &pre_in_flight(i * 250, 1, 400 * MB, 0), &mut log);
    }
    assert_eq!(log.len(), 1, "{:?}", names(&log));
    feed(&mut l, &pre_in_flight(16 * 250, 1, 400 * MB, 0), &mut log);
    assert_eq!(names(&log)[1], (4000, "downtime 300".to_string()));
    assert_eq!(
        log[1].1.describe(),
        "downtime limit 300 ms: the bytes in flight drain at once now: QEMU's limit back to 300 ms"
    );
}

#[test]
fn a_rung_climbed_with_bytes_in_flight_gives_qemu_the_rungs_limit_less_their_drain() {
    let mut l = Ladder::new(&params(Converge::Auto, true), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    // 3 MB drain in 30 ms: the 50 ms rung leaves QEMU 20 ms.
    for sec in 1..=8 {
        feed(&mut l, &pre_in_flight(sec * 1000, sec, 200 * MB, 3 * MB), &mut log);
    }
    assert_eq!(names(&log), [(1000, "downtime 20".to_string()), (7000, "downtime 70".to_string())]);
    let Action::SetDowntimeLimit { in_flight_ms, why, .. } = &log[1].1 else { unreachable!() };
    assert_eq!(*in_flight_ms, 30);
    assert_eq!(l.rung().downtime_limit_ms, 100, "the rung is the operator's figure");
    assert!(why.reason.starts_with("stuck at rung 1/8: downtime limit 50 ms"), "{}", why.reason);
    assert!(why.reason.contains("20 ms carries 1.9 MiB"), "the window judged QEMU's limit: {}", why.reason);
}

#[test]
fn a_drain_longer_than_the_limit_leaves_qemu_its_floor_and_the_ladder_climbs() {
    let mut l = Ladder::new(&params(Converge::Throttle, false), &qemu10(), &start_unknown());
    let mut log = Vec::new();
    // A dirty set that fits 50 ms at 100 MB/s (4 MB), but 60 MB in flight need 600 ms: not
    // within reach of what QEMU may plan, so the rung is judged stuck as usual.
    for sec in 1..=8 {
        feed(&mut l, &pre_in_flight(sec * 1000, sec, 4 * MB, 60 * MB), &mut log);
    }
    let n = names(&log);
    assert_eq!(n[0], (1000, "downtime 10".to_string()), "{n:?}");
    assert_eq!(n[1], (7000, "downtime 10".to_string()), "{n:?}");
    let Action::SetDowntimeLimit { in_flight_ms, .. } = &log[1].1 else { unreachable!() };
    assert_eq!(*in_flight_ms, 90, "the 100 ms rung less QEMU's 10 ms floor");
}
