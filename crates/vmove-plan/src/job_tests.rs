//! The job state machine: every transition, cancel at every phase, a failed state write at
//! every phase, rollback and recovery, for each mode.
use super::*;

const OFFLINE: [Step; 9] = [
    Step::StopGuest,
    Step::CreateBridges,
    Step::DetachInterfaces,
    Step::DetachVolumes,
    Step::AttachVolumes,
    Step::CopyVolumes,
    Step::MigrateGuest,
    Step::AttachInterfaces,
    Step::StartupGuest,
];
const LIVE: [Step; 5] = [Step::AttachVolumes, Step::CreateBridges, Step::CopyVolumes, Step::MigrateGuest, Step::DetachVolumes];

fn rec(mode: Mode) -> MigrationRecord {
    MigrationRecord::new("vm1", mode, "host1", "198.51.100.2:7450")
}

fn whole(mode: Mode) -> JobMachine {
    JobMachine::migrate("host2-1", rec(mode), Step::plan(mode).to_vec(), None)
}

fn ended(m: &JobMachine) -> (EndStatus, String) {
    match m.phase() {
        JobPhase::Ended { status, reason } => (*status, reason.clone().unwrap_or_default()),
        p => panic!("not ended: {p:?}"),
    }
}

/// Drives `m` with every step succeeding; returns the steps run in order.
fn run_all(m: &mut JobMachine) -> Vec<Step> {
    let mut ran = vec![];
    loop {
        match m.action() {
            Action::CheckSource => {
                m.on(Input::SourceAnswered { was_running: true }).unwrap();
            }
            Action::Run(s) => {
                ran.push(s);
                m.on(Input::StepSucceeded).unwrap();
            }
            Action::Undo(s) => {
                ran.push(s);
                m.on(Input::UndoSucceeded).unwrap();
            }
            Action::WaitResume(_) => {
                m.on(Input::Resumed).unwrap();
            }
            Action::Done => return ran,
        }
    }
}

/// Runs `m` until it is about to run (or wait before) `step`.
fn run_until(m: &mut JobMachine, step: Step) {
    loop {
        match m.action() {
            Action::CheckSource => {
                m.on(Input::SourceAnswered { was_running: true }).unwrap();
            }
            Action::Run(s) | Action::WaitResume(s) if s == step => return,
            Action::Run(_) => {
                m.on(Input::StepSucceeded).unwrap();
            }
            Action::WaitResume(_) => {
                m.on(Input::Resumed).unwrap();
            }
            a => panic!("unexpected {a:?} before {step}"),
        }
    }
}

#[test]
fn every_mode_runs_its_plan_in_order_and_finishes_the_record() {
    for mode in [Mode::Offline, Mode::OfflineForce, Mode::Live] {
        let mut m = whole(mode);
        assert_eq!(m.action(), Action::CheckSource);
        let ran = run_all(&mut m);
        assert_eq!(ran, Step::plan(mode).to_vec(), "{mode:?}");
        assert_eq!(ended(&m).0, EndStatus::Succeeded);
        assert_eq!(m.record().completed, Step::plan(mode).to_vec());
        assert!(m.record().finished && !m.record().rolled_back);
        assert_eq!(m.record().was_running, Some(true));
        assert_eq!(m.guest_side(), Some(Side::Target));
    }
}

#[test]
fn a_known_source_state_skips_the_source_check() {
    let mut r = rec(Mode::Offline);
    r.was_running = Some(false);
    let m = JobMachine::migrate("j", r, vec![Step::StopGuest], None);
    assert_eq!(m.action(), Action::Run(Step::StopGuest));
}

#[test]
fn a_source_that_fails_ends_the_job_and_the_migration() {
    let mut m = whole(Mode::Offline);
    m.on(Input::SourceFailed { error: "host1: guest vm1 is already being migrated away".into() }).unwrap();
    assert_eq!(ended(&m), (EndStatus::Failed, "host1: guest vm1 is already being migrated away".into()));
    assert!(m.record().finished && m.record().rolled_back, "a new migration may start");
}

#[test]
fn completed_steps_are_skipped_with_a_note() {
    let mut r = rec(Mode::Offline);
    r.was_running = Some(true);
    r.completed = vec![Step::StopGuest, Step::CreateBridges];
    let mut m = JobMachine::migrate("j", r, OFFLINE.to_vec(), None);
    assert_eq!(m.action(), Action::Run(Step::DetachInterfaces));
    // A single --step run of a completed step is a no-op that succeeds.
    let mut r = rec(Mode::Offline);
    r.was_running = Some(true);
    r.completed = vec![Step::StopGuest];
    let mut one = JobMachine::migrate("j", r, vec![Step::StopGuest], None);
    assert_eq!(one.take_start_notes(), vec![Note::AlreadyDone(Step::StopGuest)]);
    assert_eq!(one.take_start_notes(), vec![], "taken once");
    assert_eq!(one.action(), Action::Done);
    assert_eq!(ended(&one).0, EndStatus::Succeeded);
    assert!(!one.record().finished, "one step of eight");
    assert!(m.on(Input::Resumed).is_err(), "resume while running is refused");
    assert!(one.on(Input::StepSucceeded).is_err(), "nothing runs after the end");
}

#[test]
fn the_pause_hook_holds_once_and_resumes() {
    let mut m = JobMachine::migrate("j", rec(Mode::Offline), OFFLINE.to_vec(), Some(Step::DetachVolumes));
    run_until(&mut m, Step::DetachVolumes);
    assert_eq!(m.action(), Action::WaitResume(Step::DetachVolumes));
    m.on(Input::Resumed).unwrap();
    assert_eq!(m.action(), Action::Run(Step::DetachVolumes));
    let rest = run_all(&mut m);
    assert_eq!(rest, OFFLINE[3..].to_vec());
}

#[test]
fn offline_cancel_before_every_step_stops_there_for_recover() {
    for (i, &step) in OFFLINE.iter().enumerate() {
        for mode in [Mode::Offline, Mode::OfflineForce] {
            let mut m = JobMachine::migrate("host2-7", rec(mode), OFFLINE.to_vec(), Some(step));
            run_until(&mut m, step);
            let notes = m.on(Input::CancelRequested).unwrap();
            let switched = OFFLINE[..i].contains(&Step::MigrateGuest);
            if switched {
                // Past the point of no return: ignored, the job goes on.
                assert_eq!(notes, vec![Note::CancelIgnored], "{step}");
                assert_eq!(m.action(), Action::Run(step));
                run_all(&mut m);
                assert_eq!(ended(&m).0, EndStatus::Succeeded);
            } else {
                assert_eq!(
                    ended(&m),
                    (EndStatus::Cancelled, format!("cancelled before {step}; run `vmove job recover host2-7` to roll back"))
                );
                assert_eq!(m.record().completed, OFFLINE[..i].to_vec());
                assert!(!m.record().finished);
            }
        }
    }
}

#[test]
fn cancel_while_a_step_runs_takes_effect_before_the_next_one() {
    let mut m = whole(Mode::Offline);
    run_until(&mut m, Step::DetachInterfaces);
    assert_eq!(m.on(Input::CancelRequested).unwrap(), vec![]);
    assert!(m.cancel_requested());
    m.on(Input::StepSucceeded).unwrap();
    assert_eq!(ended(&m).0, EndStatus::Cancelled);
    assert_eq!(m.record().completed, OFFLINE[..3].to_vec());
    // After MIGRATE_GUEST the cancel is ignored and said so.
    let mut m = whole(Mode::Offline);
    run_until(&mut m, Step::AttachInterfaces);
    assert_eq!(m.on(Input::CancelRequested).unwrap(), vec![Note::CancelIgnored]);
    run_all(&mut m);
    assert_eq!(ended(&m).0, EndStatus::Succeeded);
}

#[test]
fn live_cancel_before_every_step_before_the_switchover_rolls_back() {
    for (i, &step) in LIVE.iter().enumerate() {
        let mut m = JobMachine::migrate("j", rec(Mode::Live), LIVE.to_vec(), Some(step));
        run_until(&mut m, step);
        let notes = m.on(Input::CancelRequested).unwrap();
        if step == Step::DetachVolumes {
            assert_eq!(notes, vec![Note::CancelIgnored]);
            run_all(&mut m);
            assert_eq!(ended(&m).0, EndStatus::Succeeded);
            continue;
        }
        assert_eq!(notes, vec![Note::RollingBack(format!("cancelled before {step}"))]);
        let undone = run_all(&mut m);
        let mut want = LIVE[..i].to_vec();
        want.reverse();
        assert_eq!(undone, want, "{step}");
        let (status, why) = ended(&m);
        assert_eq!(status, EndStatus::Cancelled);
        assert!(why.ends_with("the target was cleaned up, the guest stays on the source"), "{why}");
        assert!(m.record().finished && m.record().rolled_back && m.record().completed.is_empty());
        assert_eq!(m.guest_side(), Some(Side::Source));
    }
}

#[test]
fn live_failure_or_timeout_in_the_memory_phase_undoes_it_and_the_earlier_steps() {
    for (kind, status) in [(FailKind::Error, EndStatus::Failed), (FailKind::TimedOut, EndStatus::Cancelled), (FailKind::Cancelled, EndStatus::Cancelled)] {
        let mut m = whole(Mode::Live);
        run_until(&mut m, Step::MigrateGuest);
        let notes = m.on(Input::StepFailed { error: "timed out after 6 s".into(), kind }).unwrap();
        assert_eq!(notes, vec![Note::RollingBack("MIGRATE_GUEST: timed out after 6 s".into())]);
        assert_eq!(m.action(), Action::Undo(Step::MigrateGuest), "the failed step's own work first");
        m.on(Input::UndoSucceeded).unwrap();
        assert_eq!(m.action(), Action::Undo(Step::CopyVolumes), "the mirrors after the memory migration");
        m.on(Input::UndoSucceeded).unwrap();
        assert_eq!(m.action(), Action::Undo(Step::CreateBridges));
        m.on(Input::UndoSucceeded).unwrap();
        assert_eq!(m.action(), Action::Undo(Step::AttachVolumes));
        m.on(Input::UndoSucceeded).unwrap();
        let (s, why) = ended(&m);
        assert_eq!(s, status, "{kind:?}");
        assert_eq!(why, "MIGRATE_GUEST: timed out after 6 s; the target was cleaned up, the guest stays on the source");
        assert!(m.record().finished && m.record().rolled_back);
    }
}

#[test]
fn a_failed_rollback_leaves_the_migration_for_recover() {
    let mut m = whole(Mode::Live);
    run_until(&mut m, Step::MigrateGuest);
    m.on(Input::StepFailed { error: "the target QEMU exited".into(), kind: FailKind::Error }).unwrap();
    m.on(Input::UndoFailed { error: "host1 (198.51.100.2:7450): cannot connect".into() }).unwrap();
    let (s, why) = ended(&m);
    assert_eq!(s, EndStatus::Failed);
    assert_eq!(why, "rollback of MIGRATE_GUEST failed: host1 (198.51.100.2:7450): cannot connect; run `vmove job recover host2-1` when the cause is fixed");
    assert!(!m.record().finished);
    assert_eq!(m.record().completed, vec![Step::AttachVolumes, Step::CreateBridges, Step::CopyVolumes]);
}

#[test]
fn offline_failure_stops_and_names_both_ways_out() {
    let mut m = whole(Mode::Offline);
    run_until(&mut m, Step::AttachVolumes);
    m.on(Input::StepFailed { error: "volume vm1-data.img is leased to host3".into(), kind: FailKind::Error }).unwrap();
    assert_eq!(
        ended(&m),
        (
            EndStatus::Failed,
            "ATTACH_VOLUMES failed: volume vm1-data.img is leased to host3; resume with --step ATTACH_VOLUMES or run `vmove job recover host2-1`".into()
        )
    );
    assert_eq!(m.record().completed, OFFLINE[..4].to_vec());
    // Live after the switchover: the same.
    let mut m = whole(Mode::Live);
    run_until(&mut m, Step::DetachVolumes);
    m.on(Input::StepFailed { error: "pool not writable".into(), kind: FailKind::Error }).unwrap();
    assert_eq!(ended(&m).0, EndStatus::Failed);
    assert!(m.record().switched_over());
}

#[test]
fn a_failed_state_write_stops_the_job_in_every_phase() {
    let phases: Vec<Box<dyn Fn() -> JobMachine>> = vec![
        Box::new(|| whole(Mode::Offline)),
        Box::new(|| {
            let mut m = whole(Mode::Offline);
            run_until(&mut m, Step::DetachVolumes);
            m
        }),
        Box::new(|| {
            let mut m = JobMachine::migrate("host2-1", rec(Mode::Offline), OFFLINE.to_vec(), Some(Step::MigrateGuest));
            run_until(&mut m, Step::MigrateGuest);
            m
        }),
        Box::new(|| {
            let mut m = whole(Mode::Live);
            run_until(&mut m, Step::MigrateGuest);
            m.on(Input::StepFailed { error: "x".into(), kind: FailKind::Error }).unwrap();
            m
        }),
        Box::new(|| {
            let mut r = rec(Mode::Offline);
            r.was_running = Some(true);
            r.completed = OFFLINE[..5].to_vec();
            JobMachine::recover("host2-1", r, false)
        }),
    ];
    for make in phases {
        let mut m = make();
        let before = m.record().clone();
        let at = match m.action() {
            Action::Run(s) | Action::Undo(s) | Action::WaitResume(s) => format!(" at {s}"),
            _ => String::new(),
        };
        m.on(Input::StateWriteFailed { error: "No space left on device".into() }).unwrap();
        let (s, why) = ended(&m);
        assert_eq!(s, EndStatus::Failed);
        assert_eq!(
            why,
            format!("cannot save the job's state (No space left on device): stopped{at}; run `vmove job recover host2-1` once the agent can write its state")
        );
        assert_eq!(m.record(), &before, "the record is left as it was: recoverable");
        assert_eq!(m.action(), Action::Done);
    }
}

#[test]
fn recovery_forward_runs_the_rest() {
    let mut r = rec(Mode::Offline);
    r.was_running = Some(true);
    r.completed = OFFLINE[..7].to_vec();
    let mut m = JobMachine::recover("j", r, true);
    assert_eq!(m.direction(), Direction::RecoverForward);
    assert_eq!(m.steps(), &OFFLINE[7..]);
    assert_eq!(run_all(&mut m), OFFLINE[7..].to_vec());
    assert_eq!(ended(&m).0, EndStatus::Succeeded);
    assert!(m.record().finished && !m.record().rolled_back);
}

#[test]
fn recovery_back_undoes_in_reverse_with_migrate_guest() {
    let mut r = rec(Mode::Offline);
    r.was_running = Some(true);
    r.completed = OFFLINE[..4].to_vec();
    let mut m = JobMachine::recover("j", r, false);
    assert_eq!(
        m.steps(),
        &[Step::MigrateGuest, Step::DetachVolumes, Step::DetachInterfaces, Step::CreateBridges, Step::StopGuest]
    );
    let undone = run_all(&mut m);
    assert_eq!(undone, m.steps().to_vec());
    assert_eq!(ended(&m).0, EndStatus::Succeeded);
    assert!(m.record().finished && m.record().rolled_back && m.record().completed.is_empty());
    assert_eq!(m.guest_side(), Some(Side::Source));
}

#[test]
fn recovery_failures_and_cancels() {
    let mut r = rec(Mode::Offline);
    r.was_running = Some(true);
    r.completed = OFFLINE[..7].to_vec();
    let mut m = JobMachine::recover("j", r.clone(), true);
    m.on(Input::StepFailed { error: "no QEMU".into(), kind: FailKind::Error }).unwrap();
    assert_eq!(ended(&m), (EndStatus::Failed, "recovery step ATTACH_INTERFACES failed: no QEMU".into()));
    let mut m = JobMachine::recover("j", r.clone(), true);
    m.on(Input::CancelRequested).unwrap();
    m.on(Input::StepSucceeded).unwrap();
    assert_eq!(ended(&m), (EndStatus::Cancelled, "recovery cancelled before STARTUP_GUEST; run `vmove job recover j` again".into()));
    let mut m = JobMachine::recover("j", r, false);
    m.on(Input::UndoSucceeded).unwrap();
    m.on(Input::UndoFailed { error: "host1 (198.51.100.2:7450): cannot connect".into() }).unwrap();
    let (s, why) = ended(&m);
    assert_eq!(s, EndStatus::Failed);
    assert!(why.starts_with("recovery step COPY_VOLUMES failed: "), "{why}");
}

#[test]
fn cancel_at_every_phase_of_every_mode_ends_or_is_ignored_never_errors() {
    for mode in [Mode::Offline, Mode::OfflineForce, Mode::Live] {
        let plan = Step::plan(mode);
        for k in 0..=plan.len() * 2 + 1 {
            // Walk k transitions, then cancel.
            let mut m = whole(mode);
            for _ in 0..k {
                match m.action() {
                    Action::CheckSource => {
                        m.on(Input::SourceAnswered { was_running: true }).unwrap();
                    }
                    Action::Run(_) => {
                        m.on(Input::StepSucceeded).unwrap();
                    }
                    _ => break,
                }
            }
            m.on(Input::CancelRequested).unwrap();
            // Whatever the phase, the job reaches its end by running or undoing steps.
            let mut guard = 0;
            while m.action() != Action::Done {
                guard += 1;
                assert!(guard < 50);
                match m.action() {
                    Action::Run(_) => m.on(Input::StepSucceeded).unwrap(),
                    Action::Undo(_) => m.on(Input::UndoSucceeded).unwrap(),
                    Action::WaitResume(_) => m.on(Input::Resumed).unwrap(),
                    Action::CheckSource => m.on(Input::SourceAnswered { was_running: true }).unwrap(),
                    Action::Done => vec![],
                };
            }
            let (s, _) = ended(&m);
            let switched = m.record().switched_over() && !m.record().rolled_back;
            assert!(s == EndStatus::Cancelled || (s == EndStatus::Succeeded && switched), "{mode:?} k={k}: {s:?}");
        }
    }
}

#[test]
fn phases_serialize_for_the_job_record() {
    let p = JobPhase::Running { step: Step::StopGuest };
    assert_eq!(serde_json::to_value(&p).unwrap(), serde_json::json!({"phase": "running", "step": "STOP_GUEST"}));
    let e = JobPhase::Ended { status: EndStatus::Cancelled, reason: Some("x".into()) };
    assert_eq!(serde_json::from_value::<JobPhase>(serde_json::to_value(&e).unwrap()).unwrap(), e);
}

#[test]
fn a_started_step_is_recorded_before_it_runs_and_recovery_covers_it() {
    let mut m = whole(Mode::Offline);
    run_until(&mut m, Step::DetachInterfaces);
    assert_eq!(m.record().in_progress, Some(Step::DetachInterfaces), "saved before the step runs");
    m.on(Input::StateWriteFailed { error: "EIO".into() }).unwrap();
    // The step may have done its work: a recovery back undoes it too.
    let back = JobMachine::recover("j", m.record().clone(), false);
    assert_eq!(back.steps(), &[Step::MigrateGuest, Step::DetachInterfaces, Step::CreateBridges, Step::StopGuest]);
    // ...and forward runs it again (steps are idempotent).
    let fwd = JobMachine::recover("j", m.record().clone(), true);
    assert_eq!(fwd.steps()[0], Step::DetachInterfaces);
    let mut back = back;
    run_all(&mut back);
    assert_eq!(back.record().in_progress, None);
}

#[test]
fn a_failure_past_the_point_of_no_return_is_never_rolled_back() {
    let mut m = whole(Mode::Live);
    run_until(&mut m, Step::MigrateGuest);
    let notes = m.on(Input::StepFailed { error: "the source QEMU died during post-copy".into(), kind: FailKind::PastNoReturn }).unwrap();
    assert_eq!(notes, vec![], "no rollback");
    let (s, why) = ended(&m);
    assert_eq!(s, EndStatus::Failed);
    assert!(why.starts_with("MIGRATE_GUEST failed past its point of no return (post-copy)"), "{why}");
    assert!(!m.record().finished && !m.record().rolled_back);
    assert_eq!(m.record().in_progress, Some(Step::MigrateGuest));
}
