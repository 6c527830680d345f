//! LIVE-only checks.
use super::*;

#[test]
fn offline_modes_have_no_live_checks() {
    for mode in [Mode::Offline, Mode::OfflineForce] {
        assert!(Fx::new(mode).run().iter().all(|f| !f.id.live_only()));
    }
}

mod guest_running {
    use super::*;
    const ID: CheckId = CheckId::GuestRunning;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Live);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "vm1 is running on host1 (pid 4242)")
        );
    }

    #[test]
    fn fails_when_stopped() {
        let mut fx = Fx::new(Mode::Live);
        fx.src.guests[0] = status(fx.cluster.guests[0].clone(), GuestState::Stopped);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "vm1 is stopped on host1: LIVE needs a running guest (use MODE=OFFLINE)"
            )
        );
    }

    #[test]
    fn fails_when_absent_or_unreachable() {
        let mut fx = Fx::new(Mode::Live);
        fx.src.guests.clear();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "host1 does not report vm1: LIVE needs a running guest"
            )
        );
        fx.src_down = Some("connection refused".into());
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "not evaluated: source host1 unreachable (connection refused)"
            )
        );
    }
}

mod same_hardware_and_cpu {
    use super::*;
    const ID: CheckId = CheckId::SameHardwareAndCpu;

    #[test]
    fn passes_for_identical_hosts() {
        let fx = Fx::new(Mode::Live);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "host1 and host2: same hardware (Lab KVM), 8 CPUs, CPU model Xeon-E5"
            )
        );
    }

    #[test]
    fn passes_when_the_source_flags_are_a_subset() {
        let mut fx = Fx::new(Mode::Live);
        fx.tgt.cpu_count = 16;
        fx.tgt.cpu_flags.push("avx512f".into());
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "host1 and host2 differ (CPUs 8 vs 16), but host1's CPU flags are a subset of host2's")
        );
    }

    #[test]
    fn fails_listing_at_most_five_missing_flags() {
        let mut fx = Fx::new(Mode::Live);
        fx.src.cpu_flags = [
            "fpu", "sse2", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "vmx", "aes",
        ]
        .map(String::from)
        .to_vec();
        fx.tgt.cpu_model = "EPYC".into();
        fx.tgt.cpu_flags = vec!["fpu".into(), "sse2".into()];
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "host1 and host2 differ (CPU model Xeon-E5 vs EPYC) and host2 lacks 7 of host1's CPU flags: \
                 avx, avx2, avx512f, avx512bw, avx512vl (+2 more)"
            )
        );
    }
}

mod encrypted_channel {
    use super::*;
    const ID: CheckId = CheckId::EncryptedChannel;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Live);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "migration stream encrypted with TLS (cluster CA certificates)"
            )
        );
    }

    #[test]
    fn fails_when_policy_requires_encryption() {
        let mut fx = Fx::new(Mode::Live);
        fx.req.params.insecure_transport = true;
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "policy requires an encrypted migration channel, but insecure transport was requested")
        );
    }

    #[test]
    fn warns_when_policy_allows_insecure() {
        let mut fx = Fx::new(Mode::Live);
        fx.req.params.insecure_transport = true;
        fx.cluster.policy.require_encrypted_migration = false;
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Warn,
                "insecure transport: the migration stream is not encrypted (policy allows it)"
            )
        );
    }
}

mod policy_minimums {
    use super::*;
    const ID: CheckId = CheckId::PolicyMinimums;

    #[test]
    fn passes() {
        let mut fx = Fx::new(Mode::Live);
        fx.cluster.policy.min_hardware_generation = 2;
        fx.src.hardware_generation = 3;
        fx.tgt.hardware_generation = 3;
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "agents host1 0.1.0, host2 0.1.0 >= 0.1.0; hardware generations host1 3, host2 3 >= 2")
        );
    }

    #[test]
    fn fails_below_the_minimums() {
        let mut fx = Fx::new(Mode::Live);
        fx.cluster.policy.min_agent_version = "0.1.10".into();
        fx.cluster.policy.min_hardware_generation = 2;
        fx.src.agent_version = "0.1.10".into();
        fx.src.hardware_generation = 3;
        fx.tgt.agent_version = "0.1.9".into();
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "below policy minimums: host2 agent 0.1.9 < 0.1.10; host2 hardware generation 1 < 2")
        );
    }
}

mod predicted_convergence {
    use super::*;
    use vmove_model::Converge;
    const ID: CheckId = CheckId::PredictedConvergence;

    /// A guest booted from its disk: its working set is unknown, all of its memory counts.
    fn unknown_working_set(fx: &mut Fx) {
        fx.cluster.guests[0].boot = vmove_model::BootSource::Disk;
    }

    #[test]
    fn passes_within_the_timeout() {
        let mut fx = Fx::new(Mode::Live);
        unknown_working_set(&mut fx);
        fx.link = Some(100 * MIB);
        fx.dirty = Some(20 * MIB);
        // 5.12 s bulk, 102.4 MiB in 1.02 s, 20.5 MiB in 0.2 s, 4.1 MiB fits 50 ms.
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "about 6.4s in 3 passes to copy 512 MiB at 100 MB/s with 20 MB/s dirtied, downtime about 41 ms (limit 50 ms), within the timeout of 10m; converge=auto")
        );
        fx.req.params.converge = Converge::None;
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "about 6.3s in 2 passes to copy 512 MiB at 100 MB/s with 20 MB/s dirtied, downtime about 205 ms (limit 300 ms), within the timeout of 10m")
        );
    }

    #[test]
    fn adds_vmoves_own_steps_as_measured_on_the_target() {
        let mut fx = Fx::new(Mode::Live);
        unknown_working_set(&mut fx);
        fx.link = Some(100 * MIB);
        fx.dirty = Some(20 * MIB);
        fx.tgt.live_steps_ms = Some(480);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "about 6.9s in 3 passes (memory 6.4s, vmove's steps 0.5s) to copy 512 MiB at 100 MB/s with 20 MB/s dirtied, downtime about 41 ms (limit 50 ms), within the timeout of 10m; converge=auto")
        );
        // A figure beyond any measurement of the steps is not taken.
        fx.tgt.live_steps_ms = Some(vmove_model::inventory::LIVE_STEPS_MAX_MS + 1);
        assert!(fx.check(ID).reason.starts_with("about 6.4s in 3 passes to copy"), "{:?}", fx.check(ID));
    }

    #[test]
    fn scales_the_memory_phase_by_what_the_target_measured_of_the_model() {
        let mut fx = Fx::new(Mode::Live);
        unknown_working_set(&mut fx);
        fx.link = Some(100 * MIB);
        fx.dirty = Some(20 * MIB);
        fx.tgt.memory_model_pct = Some(150);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "about 9.6s in 3 passes (memory, the model ×1.50 as measured) to copy 512 MiB at 100 MB/s with 20 MB/s dirtied, downtime about 41 ms (limit 50 ms), within the timeout of 10m; converge=auto")
        );
        fx.tgt.live_steps_ms = Some(480);
        assert!(
            fx.check(ID).reason.starts_with("about 11s in 3 passes (memory 9.6s, the model ×1.50 as measured; vmove's steps 0.5s)"),
            "{:?}",
            fx.check(ID)
        );
        // A ratio outside the range is a move that went wrong, not a calibration.
        for pct in [0, 19, 1_001, u32::MAX] {
            fx.tgt.memory_model_pct = Some(pct);
            assert!(fx.check(ID).reason.starts_with("about 6.9s in 3 passes (memory 6.4s, vmove's steps 0.5s)"), "{pct}: {:?}", fx.check(ID));
        }
    }

    #[test]
    fn none_fails_when_dirtying_outpaces_the_link_and_names_a_policy_that_would_do() {
        let mut fx = Fx::new(Mode::Live);
        unknown_working_set(&mut fx);
        fx.req.params.converge = Converge::None;
        fx.link = Some(100 * MIB);
        fx.req.params.bandwidth_bytes_per_s = Some(50 * MIB);
        fx.dirty = Some(60 * MIB);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "will not converge under converge=none: 512 MiB at 50 MB/s with 60 MB/s dirtied; it would time out after 10m; converge=throttle would (about 1m40s in 15 passes, the guest throttled to 50 %)")
        );
    }

    #[test]
    fn auto_warns_when_only_throttling_converges() {
        let mut fx = Fx::new(Mode::Live);
        unknown_working_set(&mut fx);
        fx.req.params.bandwidth_bytes_per_s = Some(50 * MIB);
        fx.dirty = Some(60 * MIB);
        // Unknown working set: all 512 MiB count, 10 s a pass; 300 ms from the start, stuck
        // after three passes, then auto-converge up to 50 %.
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Warn, "converges only by throttling the guest (auto-converge to 50 %): about 1m40s in 15 passes to copy 512 MiB at 50 MB/s with 60 MB/s dirtied, downtime about 229 ms")
        );
    }

    #[test]
    fn post_copy_when_the_source_cannot_throttle() {
        let mut fx = Fx::new(Mode::Live);
        unknown_working_set(&mut fx);
        fx.src.qemu.migration_capabilities.retain(|c| c != "auto-converge");
        fx.req.params.bandwidth_bytes_per_s = Some(50 * MIB);
        fx.dirty = Some(60 * MIB);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "will not converge under converge=auto: 512 MiB at 50 MB/s with 60 MB/s dirtied; it would time out after 10m; converge=postcopy would (about 52s in 4 passes), but the cluster policy does not allow post-copy (allow_postcopy)")
        );
        fx.req.params.allow_postcopy = true;
        assert_eq!(fx.check(ID), f(ID, Verdict::Warn, "converges only in post-copy, after 4 passes of pre-copy: about 52s to copy 512 MiB at 50 MB/s with 60 MB/s dirtied; the guest is lost if either host fails during post-copy"));
    }

    #[test]
    fn a_lab_guest_declares_its_working_set() {
        // The lab guest rewrites 64 MiB of its 512: the passes after the bulk one are short,
        // the throttle rungs come sooner than for a guest whose working set is unknown.
        let mut fx = Fx::new(Mode::Live);
        fx.req.params.bandwidth_bytes_per_s = Some(50 * MIB);
        fx.dirty = Some(60 * MIB);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Warn, "converges only by throttling the guest (auto-converge to 50 %): about 22s in 11 passes to copy 512 MiB at 50 MB/s with 60 MB/s dirtied, downtime about 221 ms")
        );
        unknown_working_set(&mut fx);
        assert!(fx.check(ID).reason.contains("about 1m40s in 15 passes"), "{:?}", fx.check(ID));
    }

    #[test]
    fn fails_when_the_bulk_pass_outlasts_the_timeout() {
        let mut fx = Fx::new(Mode::Live);
        fx.req.params.timeout_s = 5;
        fx.req.params.bandwidth_bytes_per_s = Some(100 * MIB);
        fx.dirty = Some(20 * MIB);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "will not converge under converge=auto: 512 MiB at 100 MB/s with 20 MB/s dirtied; it would time out after 5s; no convergence policy would")
        );
    }

    #[test]
    fn warns_when_not_measured() {
        let mut fx = Fx::new(Mode::Live);
        fx.link = Some(100 * MIB);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Warn, "not measured: dirty rate of vm1 unknown")
        );
        fx.dirty = Some(MIB);
        fx.link = None;
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Warn, "not measured: link throughput unknown")
        );
    }
}
