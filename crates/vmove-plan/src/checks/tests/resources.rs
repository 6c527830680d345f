//! Networks, pools, versions, memory, vCPUs, name, MACs, console port.
use super::*;

mod networks_on_target {
    use super::*;
    const ID: CheckId = CheckId::NetworksOnTarget;

    fn with_prod_nic() -> Fx {
        let mut fx = Fx::new(Mode::Offline);
        fx.guest().nics.push(NicSpec {
            network: "prod".into(),
            mac: "52:54:00:00:00:0b".into(),
            ip: None,
        });
        fx
    }

    #[test]
    fn passes() {
        let fx = with_prod_nic();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "bridges on host2: lab-net (untagged), br-prod (VLAN 100)"
            )
        );
    }

    #[test]
    fn fails_for_a_missing_bridge_and_a_wrong_vlan() {
        let mut fx = with_prod_nic();
        fx.tgt.bridges = vec![BridgeInfo {
            name: "br-prod".into(),
            vlan: Some(200),
        }];
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "on host2: bridge lab-net (network lab-net) missing; bridge br-prod is VLAN 200, network prod is VLAN 100"
            )
        );
    }

    #[test]
    fn fails_when_the_target_is_unreachable() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt_down = Some("timed out".into());
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "not evaluated: target host2 unreachable (timed out)"
            )
        );
    }
}

mod pools_on_target {
    use super::*;
    const ID: CheckId = CheckId::PoolsOnTarget;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "pools on host2, writable: shared")
        );
    }

    #[test]
    fn fails_when_read_only() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.pools[0].writable = false;
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "on host2: pool shared (/srv/shared) is not writable"
            )
        );
    }

    #[test]
    fn fails_when_missing() {
        let mut fx = Fx::new(Mode::Live);
        fx.tgt.pools.clear();
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "on host2: pool shared missing")
        );
    }
}

mod target_versions {
    use super::*;
    const ID: CheckId = CheckId::TargetVersions;

    #[test]
    fn passes_comparing_numerically() {
        let mut fx = Fx::new(Mode::Offline);
        fx.src.qemu_version = "8.9.1".into();
        fx.tgt.qemu_version = "8.10.0".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "host2 vs host1: agent 0.1.0 >= 0.1.0, QEMU 8.10.0 >= 8.9.1"
            )
        );
    }

    #[test]
    fn fails_for_an_older_target() {
        let mut fx = Fx::new(Mode::Offline);
        fx.src.agent_version = "0.2.0".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "agent 0.1.0 on host2 is older than 0.2.0 on host1"
            )
        );
    }

    #[test]
    fn fails_for_a_version_it_cannot_read() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.qemu_version = "unknown".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "cannot compare QEMU versions \"unknown\" and \"8.2.2\""
            )
        );
    }

    #[test]
    fn is_skipped_for_offlineforce_with_a_dead_source() {
        let mut fx = Fx::new(Mode::OfflineForce);
        fx.src_down = Some("no route to host".into());
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "not compared: not required for OFFLINEFORCE (source host1 unreachable: no route to host)")
        );
        fx.req.mode = Mode::Offline;
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "not evaluated: source host1 unreachable (no route to host)"
            )
        );
    }
}

mod target_memory {
    use super::*;
    const ID: CheckId = CheckId::TargetMemory;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "host2 has 2048 MiB available, vm1 needs 512 MiB"
            )
        );
    }

    #[test]
    fn fails_short_of_memory() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.memory_available_mib = 256;
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "host2 has 256 MiB available, vm1 needs 512 MiB (memory is never overcommitted)"
            )
        );
    }

    #[test]
    fn fails_without_a_guest_definition() {
        let mut fx = Fx::new(Mode::Offline);
        fx.req.guest = "vm9".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "not evaluated: guest vm9 is not in the cluster file"
            )
        );
    }
}

mod vcpu_overcommit {
    use super::*;
    const ID: CheckId = CheckId::VcpuOvercommit;

    #[test]
    fn passes_within_the_physical_cpus() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.vcpus_committed = 4;
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "6 vCPUs on 8 CPUs of host2 with vm1's 2, no overcommit"
            )
        );
    }

    #[test]
    fn warns_when_overcommitted_within_policy() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.vcpus_committed = 10;
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Warn,
                "overcommitted: 12 vCPUs on 8 CPUs of host2 (ratio 4 allows 32)"
            )
        );
    }

    #[test]
    fn fails_beyond_the_policy_ratio() {
        let mut fx = Fx::new(Mode::Offline);
        fx.cluster.policy.vcpu_overcommit_ratio = 1.5;
        fx.tgt.vcpus_committed = 11;
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "overcommitted beyond policy: 13 vCPUs on 8 CPUs of host2, ratio 1.5 allows 12"
            )
        );
    }
}

mod guest_name_free_on_target {
    use super::*;
    const ID: CheckId = CheckId::GuestNameFreeOnTarget;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "no guest named vm1 on host2")
        );
    }

    #[test]
    fn fails_when_taken() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.guests.push(status(
            guest_spec("vm1", "host2", "52:54:00:00:00:99"),
            GuestState::Stopped,
        ));
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "host2 already has a guest named vm1 (stopped)"
            )
        );
    }
}

mod macs_free_on_target {
    use super::*;
    const ID: CheckId = CheckId::MacsFreeOnTarget;

    #[test]
    fn passes() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.guests.push(status(
            guest_spec("vm7", "host2", "52:54:00:00:00:07"),
            GuestState::Running,
        ));
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "vm1's MAC 52:54:00:00:00:0a free on host2"
            )
        );
    }

    #[test]
    fn fails_comparing_case_insensitively() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.guests.push(status(
            guest_spec("vm7", "host2", "52:54:00:00:00:0A"),
            GuestState::Running,
        ));
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "in use on host2: 52:54:00:00:00:0a (vm7)"
            )
        );
    }
}

mod console_port_on_target {
    use super::*;
    const ID: CheckId = CheckId::ConsolePortOnTarget;

    #[test]
    fn passes_keeping_the_port() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "vm1 keeps console port 5900 on host2 (100 of 100 free)"
            )
        );
    }

    #[test]
    fn passes_with_another_port_when_its_own_is_taken() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.console_ports_in_use = vec![5900, 5901];
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "vm1's console port 5900 is taken on host2: it gets 5902 (98 of 100 free)"
            )
        );
    }

    #[test]
    fn fails_when_all_ports_are_taken() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt.console_port_range = (5900, 5901);
        fx.tgt.console_ports_in_use = vec![5900, 5901];
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "no free console port on host2 (range 5900-5901, 2 in use)"
            )
        );
    }
}
