//! Cluster file, hosts, reachability and outstanding work.
use super::*;

mod guest_in_cluster_file {
    use super::*;
    const ID: CheckId = CheckId::GuestInClusterFile;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "vm1 in cluster lab: 2 vCPUs, 512 MiB, 1 NIC, 1 disk, on host1"
            )
        );
    }

    #[test]
    fn fails_for_an_unknown_guest() {
        let mut fx = Fx::new(Mode::Offline);
        fx.req.guest = "vm9".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "no guest named vm9 in the cluster file of cluster lab"
            )
        );
    }
}

mod cluster_file_matches_source {
    use super::*;
    const ID: CheckId = CheckId::ClusterFileMatchesSource;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "host1 reports vm1 defined (running), as the cluster file says"
            )
        );
    }

    #[test]
    fn fails_when_the_source_does_not_have_the_guest() {
        let mut fx = Fx::new(Mode::Offline);
        fx.src.guests.clear();
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Fail, "drift: the cluster file places vm1 on host1, but host1 does not report vm1 defined")
        );
    }

    #[test]
    fn fails_when_the_file_names_another_host() {
        let mut fx = Fx::new(Mode::Offline);
        fx.guest().host = "host2".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "drift: the cluster file places vm1 on host2, the request names host1 as source"
            )
        );
    }

    #[test]
    fn fails_when_the_definitions_differ() {
        let mut fx = Fx::new(Mode::Offline);
        fx.src.guests[0].spec.memory_mib = 1024;
        fx.src.guests[0].spec.nics[0].mac = "52:54:00:00:00:0b".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "drift: vm1 differs between the cluster file and host1: memory 512 MiB vs 1024 MiB, \
                 nics [lab-net/52:54:00:00:00:0a] vs [lab-net/52:54:00:00:00:0b]"
            )
        );
    }

    #[test]
    fn fails_when_the_source_is_unreachable_but_needed() {
        let mut fx = Fx::new(Mode::Offline);
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

    #[test]
    fn passes_for_offlineforce_with_a_dead_source() {
        let mut fx = Fx::new(Mode::OfflineForce);
        fx.src_down = Some("connection refused".into());
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "the cluster file places vm1 on host1; confirming it is not required for OFFLINEFORCE \
                 (source host1 unreachable: connection refused)"
            )
        );
    }
}

mod hosts_in_cluster {
    use super::*;
    const ID: CheckId = CheckId::HostsInCluster;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "host1 and host2 are hosts of cluster lab"
            )
        );
    }

    #[test]
    fn fails_for_a_foreign_target() {
        let mut fx = Fx::new(Mode::Offline);
        fx.req.target = "host9".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "not hosts of cluster lab: host9 (target)"
            )
        );
    }
}

mod target_is_not_source {
    use super::*;
    const ID: CheckId = CheckId::TargetIsNotSource;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "source host1 and target host2 are different hosts"
            )
        );
    }

    #[test]
    fn fails_when_they_are_the_same() {
        let mut fx = Fx::new(Mode::Live);
        fx.req.target = "host1".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "source and target are the same host, host1"
            )
        );
    }
}

mod source_reachable {
    use super::*;
    const ID: CheckId = CheckId::SourceReachable;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "source host1 answered (agent 0.1.0, QEMU 8.2.2)"
            )
        );
    }

    #[test]
    fn fails_when_unreachable() {
        let mut fx = Fx::new(Mode::Live);
        fx.src_down = Some("connection refused".into());
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "source host1 unreachable: connection refused"
            )
        );
    }

    #[test]
    fn is_not_required_for_offlineforce() {
        let mut fx = Fx::new(Mode::OfflineForce);
        fx.src_down = Some("connection refused".into());
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "not required for OFFLINEFORCE (source host1 unreachable: connection refused)"
            )
        );
    }

    #[test]
    fn fails_when_another_host_answers() {
        let mut fx = Fx::new(Mode::Offline);
        fx.src.name = "host7".into();
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "the agent reached for source host1 identifies itself as host7"
            )
        );
    }
}

mod target_reachable {
    use super::*;
    const ID: CheckId = CheckId::TargetReachable;

    #[test]
    fn passes() {
        let fx = Fx::new(Mode::Offline);
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "target host2 answered (agent 0.1.0, QEMU 8.2.2)"
            )
        );
    }

    #[test]
    fn fails_when_unreachable_even_for_offlineforce() {
        let mut fx = Fx::new(Mode::OfflineForce);
        fx.tgt_down = Some("TLS handshake failed: unknown CA".into());
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "target host2 unreachable: TLS handshake failed: unknown CA"
            )
        );
    }
}

mod target_not_in_maintenance {
    use super::*;
    use vmove_model::inventory::Maintenance;
    const ID: CheckId = CheckId::TargetNotInMaintenance;

    #[test]
    fn passes_for_a_target_in_service() {
        let fx = Fx::new(Mode::Live);
        assert_eq!(
            fx.check(ID),
            f(ID, Verdict::Pass, "target host2 is not in maintenance")
        );
    }

    #[test]
    fn fails_for_a_drained_target_in_every_mode() {
        for mode in [Mode::Live, Mode::Offline, Mode::OfflineForce] {
            let mut fx = Fx::new(mode);
            fx.tgt.maintenance = Some(Maintenance { since_ms: 1 });
            assert_eq!(
                fx.check(ID),
                f(
                    ID,
                    Verdict::Fail,
                    "target host2 is in maintenance (drained): it takes no migrations in until `vmove host undrain host2`"
                ),
                "{mode:?}"
            );
            assert!(any_failed(&fx.run()));
        }
    }

    #[test]
    fn a_source_in_maintenance_is_fine() {
        let mut fx = Fx::new(Mode::Live);
        fx.src.maintenance = Some(Maintenance { since_ms: 1 });
        assert_eq!(fx.check(ID).verdict, Verdict::Pass);
    }

    #[test]
    fn not_evaluated_when_the_target_is_unreachable() {
        let mut fx = Fx::new(Mode::Offline);
        fx.tgt_down = Some("connection refused".into());
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "not evaluated: target host2 unreachable (connection refused)"
            )
        );
    }
}

mod no_outstanding_work {
    use super::*;
    const ID: CheckId = CheckId::NoOutstandingWork;

    fn busy(guest: Option<&str>, host: Option<&str>, what: &str) -> Busy {
        Busy {
            guest: guest.map(Into::into),
            host: host.map(Into::into),
            what: what.into(),
        }
    }

    #[test]
    fn passes_when_only_others_are_busy() {
        let mut fx = Fx::new(Mode::Offline);
        fx.busy = vec![
            busy(Some("vm5"), None, "job 9 guest stop"),
            busy(None, Some("host3"), "pending reconfiguration"),
        ];
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Pass,
                "no unfinished job or pending work on vm1, host1 or host2"
            )
        );
    }

    #[test]
    fn fails_naming_the_work() {
        let mut fx = Fx::new(Mode::Offline);
        fx.busy = vec![
            busy(Some("vm1"), Some("host1"), "job 7 MIGRATE GUEST running"),
            busy(Some("vm5"), None, "job 9 guest stop"),
            busy(None, Some("host2"), "pending reconfiguration"),
        ];
        assert_eq!(
            fx.check(ID),
            f(
                ID,
                Verdict::Fail,
                "outstanding work: vm1 on host1: job 7 MIGRATE GUEST running; host2: pending reconfiguration"
            )
        );
    }
}
