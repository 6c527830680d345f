//! Local volumes: room on the target, a source to copy from; and their bytes in the
//! predicted convergence.
use vmove_model::inventory::VolumeInfo;

use super::*;

/// `vm1` with a 256 MiB data disk `local/vm1-data.img` (besides its shared one), which
/// the source's local pool holds.
fn with_local_disk(mode: Mode) -> Fx {
    let mut fx = Fx::new(mode);
    fx.guest().disks.push(DiskSpec {
        pool: "local".into(),
        volume: "vm1-data.img".into(),
        size_mib: Some(256),
    });
    fx.src.pools[1].volumes.push(VolumeInfo {
        name: "vm1-data.img".into(),
        size_bytes: 256 * MIB,
        allocated_bytes: 3 * MIB,
    });
    fx.src.qemu.qmp_commands = Some(vec!["block-job-change".into()]);
    fx
}

mod local_volume_space {
    use super::*;
    const ID: CheckId = CheckId::LocalVolumeSpace;

    #[test]
    fn passes_without_local_volumes() {
        let fx = Fx::new(Mode::Live);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "vm1 has no volumes in local pools: nothing to copy")
        );
    }

    #[test]
    fn passes_with_room_and_names_the_numbers() {
        let fx = with_local_disk(Mode::Live);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "copies 256 MiB to pool local on host2 (1024 MiB free): local/vm1-data.img 256 MiB"
            )
        );
    }

    #[test]
    fn fails_without_room_with_the_numbers() {
        let mut fx = with_local_disk(Mode::Offline);
        fx.tgt.pools[1].free_bytes = 100 * MIB;
        fx.guest().disks.push(DiskSpec {
            pool: "local".into(),
            volume: "vm1-logs.img".into(),
            size_mib: None,
        });
        fx.src.pools[1].volumes.push(VolumeInfo {
            name: "vm1-logs.img".into(),
            size_bytes: 64 * MIB + 1,
            allocated_bytes: 0,
        });
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "pool local on host2 has 100 MiB free, vm1's local volumes need 321 MiB there \
                 (local/vm1-data.img 256 MiB, local/vm1-logs.img 65 MiB)"
            )
        );
    }

    #[test]
    fn fails_when_the_target_has_the_volume_already() {
        let mut fx = with_local_disk(Mode::Live);
        fx.tgt.pools[1].volumes.push(VolumeInfo {
            name: "vm1-data.img".into(),
            size_bytes: MIB,
            allocated_bytes: MIB,
        });
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "local/vm1-data.img already exists on host2")
        );
    }

    #[test]
    fn fails_when_the_target_disagrees_on_the_pool() {
        let mut fx = with_local_disk(Mode::Live);
        fx.tgt.pools[1].kind = PoolKind::Shared;
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "pool local is local in the cluster file but shared on host2")
        );
        fx.tgt.pools.truncate(1);
        assert_eq!(fx.check(ID), f(ID, Verdict::Fail, "pool local missing on host2"));
    }

    #[test]
    fn a_volume_not_created_yet_needs_no_copy() {
        let mut fx = with_local_disk(Mode::Offline);
        fx.src.pools[1].volumes.clear();
        fx.tgt.pools[1].free_bytes = 0;
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "nothing to copy for local/vm1-data.img (not created on host1 yet)"
            )
        );
    }

    #[test]
    fn offlineforce_cannot_copy_from_a_dead_source() {
        let mut fx = with_local_disk(Mode::OfflineForce);
        fx.src_down = Some("connection refused".into());
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "vm1's local volume local/vm1-data.img lives on host1, which does not answer: \
                 it cannot be copied (OFFLINEFORCE cannot rescue local volumes)"
            )
        );
        // Without local volumes a dead source is fine.
        let mut fx = Fx::new(Mode::OfflineForce);
        fx.src_down = Some("connection refused".into());
        assert_eq!(fx.check(ID).verdict, Verdict::Pass);
    }

    #[test]
    fn other_modes_need_the_source_for_the_sizes() {
        let mut fx = with_local_disk(Mode::Live);
        fx.src_down = Some("timed out".into());
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "not evaluated: source host1 unreachable (timed out)")
        );
    }
}

mod predicted_convergence_with_disks {
    use super::*;
    const ID: CheckId = CheckId::PredictedConvergence;

    #[test]
    fn counts_the_local_volumes_before_the_memory() {
        // The lab guest's declared working set (64 MiB) shortens the passes after the bulk.
        let mut fx = with_local_disk(Mode::Live);
        fx.link = Some(100 * MIB);
        fx.dirty = Some(20 * MIB);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "about 5.9s in 3 passes to copy 512 MiB at 100 MB/s with 20 MB/s dirtied, downtime \
                 about 26 ms (limit 50 ms), within the timeout of 10m; converge=auto; before the \
                 memory, 256 MiB of local volumes at 100 MB/s (about 3s); in all about 9s for \
                 256 MiB of disk and 512 MiB of memory"
            )
        );
    }

    #[test]
    fn the_whole_move_counts_disk_bytes_and_memory_bytes() {
        // Twice the disk at half the link: the copy takes four times as long, the memory
        // twice, and the total is their sum.
        let mut fx = with_local_disk(Mode::Live);
        fx.src.pools[1].volumes[0].size_bytes = 512 * MIB;
        fx.link = Some(50 * MIB);
        fx.dirty = Some(0);
        let r = fx.check(ID);
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.reason);
        let secs = |after: &str| -> u64 {
            let rest = &r.reason[r.reason.find(after).unwrap_or_else(|| panic!("{after} in {}", r.reason)) + after.len()..];
            rest[..rest.find('s').expect("s")].parse().expect("seconds")
        };
        let (memory, disk, all) = (secs("about "), secs("(about "), secs("in all about "));
        assert!(r.reason.contains("before the memory, 512 MiB of local volumes at 50 MB/s"), "{}", r.reason);
        assert_eq!(disk, 11, "512 MiB at 50 MB/s: {}", r.reason);
        assert_eq!(all, disk + memory, "{}", r.reason);
        assert!(r.reason.ends_with(" for 512 MiB of disk and 512 MiB of memory"), "{}", r.reason);
        // No local volume: nothing but the memory.
        let mut fx = Fx::new(Mode::Live);
        fx.link = Some(50 * MIB);
        fx.dirty = Some(0);
        assert!(!fx.check(ID).reason.contains("in all"), "{}", fx.check(ID).reason);
    }

    #[test]
    fn fails_when_the_copy_alone_outlasts_the_timeout() {
        let mut fx = with_local_disk(Mode::Live);
        fx.req.params.timeout_s = 2;
        fx.link = Some(100 * MIB);
        fx.dirty = Some(0);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "predicted 3s to copy 256 MiB of local volumes at 100 MB/s exceeds the timeout of 2s"
            )
        );
    }
}

mod qemu_capabilities_with_disks {
    use super::*;
    const ID: CheckId = CheckId::QemuCapabilities;

    #[test]
    fn local_volumes_need_the_pause_before_the_switchover() {
        let mut fx = with_local_disk(Mode::Live);
        assert_eq!(fx.check(ID).verdict, Verdict::Pass);
        fx.tgt.qemu.migration_capabilities.retain(|c| c != "pause-before-switchover");
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "host2's QEMU 8.2.2 lacks migration capability pause-before-switchover \
                 (finish the copy of local volumes)"
            )
        );
        // Without local volumes it is not needed.
        let mut fx = Fx::new(Mode::Live);
        fx.tgt.qemu.migration_capabilities.retain(|c| c != "pause-before-switchover");
        assert_eq!(fx.check(ID).verdict, Verdict::Pass);
    }

    #[test]
    fn the_source_qemu_switches_mirrors_to_write_blocking_or_starts_them_so() {
        let mut fx = with_local_disk(Mode::Live);
        let r = fx.check(ID);
        assert_eq!(r.verdict, Verdict::Pass);
        assert!(
            r.reason.ends_with("; block-job-change on host1 (mirrors switch to write-blocking when the guest writes faster than the copy)"),
            "{}",
            r.reason
        );
        // A source QEMU before 8.2: the documented fallback, a warning.
        fx.src.qemu.qmp_commands = Some(vec![]);
        let r = fx.check(ID);
        assert_eq!(r.verdict, Verdict::Warn);
        assert!(
            r.reason.ends_with(
                "; host1's QEMU 8.2.2 lacks block-job-change (QEMU 8.2+): the mirrors of the local volumes run \
                 write-blocking from the start, so every guest write waits for the target until the switchover"
            ),
            "{}",
            r.reason
        );
        // An agent that did not say: a warning naming what may fail.
        fx.src.qemu.qmp_commands = None;
        let r = fx.check(ID);
        assert_eq!(r.verdict, Verdict::Warn);
        assert!(r.reason.contains("not evaluated: host1 did not report its QEMU's commands"), "{}", r.reason);
        // Only the source's QEMU mirrors; the target's commands do not matter, and a missing
        // required capability still fails.
        fx.src.qemu.qmp_commands = Some(vec![]);
        fx.tgt.qemu.migration_capabilities.retain(|c| c != "events");
        assert_eq!(fx.check(ID).verdict, Verdict::Fail);
        // Without local volumes nothing is said about mirrors.
        let mut fx = Fx::new(Mode::Live);
        fx.src.qemu.qmp_commands = Some(vec![]);
        let r = fx.check(ID);
        assert_eq!(r.verdict, Verdict::Pass);
        assert!(!r.reason.contains("block-job-change"), "{}", r.reason);
    }
}
