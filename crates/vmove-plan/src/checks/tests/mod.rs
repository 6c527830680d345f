//! Fixtures shared by the per-check tests, and tests of [`run`] as a whole.
//!
//! The fixture: cluster `lab` with `host1` and `host2`, networks `lab-net` (bridge `lab-net`,
//! untagged) and `prod` (bridge `br-prod`, VLAN 100), pool `shared`, and guest `vm1` on
//! `host1` (2 vCPUs, 512 MiB, one NIC on `lab-net`, one disk in `shared`, console port 5900),
//! running there. Both hosts answer, identical, and everything passes.
use std::path::PathBuf;

use vmove_model::inventory::{BridgeInfo, GuestState, GuestStatus, HostInfo, PoolInfo, QemuFeatures};
use vmove_model::{
    BootSource, Cluster, ClusterMeta, DesiredState, DiskSpec, GuestSpec, HostEntry, NetworkEntry,
    NicSpec, Policy, PoolEntry, PoolKind, TlsFiles,
};

use super::*;

mod live;
mod placement;
mod qemu;
mod resources;
mod storage;

pub(crate) const MIB: u64 = 1_048_576;

/// A guest definition: 2 vCPUs, 512 MiB, one NIC on `lab-net`, one disk in `shared`.
pub(crate) fn guest_spec(name: &str, host: &str, mac: &str) -> GuestSpec {
    GuestSpec {
        name: name.into(),
        host: host.into(),
        vcpus: 2,
        memory_mib: 512,
        cpu_model: "qemu64".into(),
        boot: BootSource::Lab {
            dirty_mb_s: 0,
            wss_mib: 64,
            disk_mb_s: 0,
        },
        desired: DesiredState::Running,
        nics: vec![NicSpec {
            network: "lab-net".into(),
            mac: mac.into(),
            ip: None,
        }],
        disks: vec![DiskSpec {
            pool: "shared".into(),
            volume: format!("{name}.img"),
            size_mib: None,
        }],
        console_port: Some(5900),
        group: None,
    }
}

/// A guest as an agent reports it.
pub(crate) fn status(spec: GuestSpec, state: GuestState) -> GuestStatus {
    let pid = (state == GuestState::Running).then_some(4242);
    GuestStatus {
        spec,
        state,
        pid,
        uptime_s: None,
    }
}

/// A two-host cluster file holding `vm1` on `host1`.
pub(crate) fn two_host_cluster() -> Cluster {
    let host = |name: &str, ip: &str| HostEntry {
        name: name.into(),
        address: format!("{ip}:7450"),
        accel: "tcg".into(),
    };
    Cluster {
        cluster: ClusterMeta { name: "lab".into() },
        tls: TlsFiles {
            ca: "ca.pem".into(),
            cert: "op.pem".into(),
            key: "op.key".into(),
        },
        policy: Policy::default(),
        hosts: vec![host("host1", "198.51.100.2"), host("host2", "198.51.100.3")],
        networks: vec![
            NetworkEntry {
                name: "lab-net".into(),
                bridge: "lab-net".into(),
                vlan: None,
                cidr: None,
            },
            NetworkEntry {
                name: "prod".into(),
                bridge: "br-prod".into(),
                vlan: Some(100),
                cidr: None,
            },
        ],
        pools: vec![
            PoolEntry::shared("shared", "/srv/shared"),
            PoolEntry::local("local", "/var/lib/vmove/local"),
        ],
        store: Default::default(),
        guests: vec![guest_spec("vm1", "host1", "52:54:00:00:00:0a")],
        path: PathBuf::from("/lab/cluster.toml"),
    }
}

/// QEMU features with these migration capabilities and the `tls-creds` parameter.
pub(crate) fn qemu_features(version: &str, caps: &[&str]) -> QemuFeatures {
    QemuFeatures {
        version: version.into(),
        package: String::new(),
        migration_capabilities: caps.iter().map(|c| c.to_string()).collect(),
        migration_parameters: vec![("tls-creds".into(), String::new())],
            postcopy_with_multifd: false,
            qmp_commands: None,
    }
}

/// A host inventory with no guests: agent 0.1.0, QEMU 8.2.2, 8 CPUs, 2048 MiB available,
/// both cluster bridges, pool `shared` writable, console ports 5900-5999 free. Tests adjust
/// the fields they are about.
pub(crate) fn host_info(name: &str) -> HostInfo {
    HostInfo {
        name: name.into(),
        agent_version: "0.1.0".into(),
        qemu_version: "8.2.2".into(),
        qemu: qemu_features("8.2.2", &["auto-converge", "events", "multifd", "postcopy-preempt", "postcopy-ram", "return-path", "pause-before-switchover", "switchover-ack"]),
        hardware_model: "Lab KVM".into(),
        hardware_generation: 1,
        accel: "tcg".into(),
        cpu_model: "Xeon-E5".into(),
        cpu_flags: vec!["fpu".into(), "sse2".into(), "avx2".into()],
        cpu_count: 8,
        memory_total_mib: 4096,
        memory_free_mib: 3000,
        memory_reserve_mib: 256,
        memory_committed_mib: 1792,
        memory_available_mib: 2048,
        vcpus_committed: 0,
        bridges: vec![
            BridgeInfo {
                name: "lab-net".into(),
                vlan: None,
            },
            BridgeInfo {
                name: "br-prod".into(),
                vlan: Some(100),
            },
        ],
        pools: vec![
            PoolInfo {
                name: "shared".into(),
                path: "/srv/shared".into(),
                writable: true,
                kind: PoolKind::Shared,
                capacity_bytes: 100 << 30,
                free_bytes: 50 << 30,
                volumes: vec![],
            },
            PoolInfo {
                name: "local".into(),
                path: "/var/lib/vmove/local".into(),
                writable: true,
                kind: PoolKind::Local,
                capacity_bytes: 10 << 30,
                free_bytes: 1 << 30,
                volumes: vec![],
            },
        ],
        console_ports_in_use: vec![],
        console_port_range: (5900, 5999),
        guests: vec![],
        maintenance: None,
        live_steps_ms: None,
        memory_model_pct: None,
    }
}

/// Everything a check looks at, owned, so that a test can change one thing.
pub(crate) struct Fx {
    pub cluster: Cluster,
    pub req: MigrationRequest,
    pub src: HostInfo,
    pub tgt: HostInfo,
    /// `Some(reason)`: the source does not answer.
    pub src_down: Option<String>,
    /// `Some(reason)`: the target does not answer.
    pub tgt_down: Option<String>,
    pub busy: Vec<Busy>,
    pub dirty: Option<u64>,
    pub link: Option<u64>,
}

impl Fx {
    /// `vm1` from `host1` to `host2` in `mode`; everything passes.
    pub fn new(mode: Mode) -> Fx {
        let cluster = two_host_cluster();
        let req = MigrationRequest::new("vm1", "host1", "host2", mode, &cluster.policy);
        let mut src = host_info("host1");
        src.guests
            .push(status(cluster.guests[0].clone(), GuestState::Running));
        src.console_ports_in_use = vec![5900];
        src.vcpus_committed = 2;
        Fx {
            cluster,
            req,
            src,
            tgt: host_info("host2"),
            src_down: None,
            tgt_down: None,
            busy: vec![],
            dirty: None,
            link: None,
        }
    }

    fn input(&self) -> CheckInput<'_> {
        let reach = |info, down: &Option<String>| match down {
            Some(why) => Reach::Unreachable(why.clone()),
            None => Reach::Answered(info),
        };
        CheckInput {
            cluster: &self.cluster,
            request: &self.req,
            source: reach(&self.src, &self.src_down),
            target: reach(&self.tgt, &self.tgt_down),
            busy: &self.busy,
            dirty_rate_bytes_per_s: self.dirty,
            link_bytes_per_s: self.link,
        }
    }

    /// Every check of the mode.
    pub fn run(&self) -> Vec<Finding> {
        run(&self.input())
    }

    /// One check.
    pub fn check(&self, id: CheckId) -> Finding {
        run_one(&self.input(), id)
    }

    /// The guest's definition in the cluster file.
    pub fn guest(&mut self) -> &mut GuestSpec {
        &mut self.cluster.guests[0]
    }
}

/// A finding, shortly.
pub(crate) fn f(id: CheckId, verdict: Verdict, reason: &str) -> Finding {
    Finding::new(id, verdict, reason)
}

fn ids(findings: &[Finding]) -> Vec<&'static str> {
    findings.iter().map(|f| f.id.as_str()).collect()
}

const COMMON: [&str; 17] = [
    "guest-in-cluster-file",
    "cluster-file-matches-source",
    "hosts-in-cluster",
    "target-is-not-source",
    "source-reachable",
    "target-reachable",
    "target-not-in-maintenance",
    "networks-on-target",
    "pools-on-target",
    "local-volume-space",
    "no-outstanding-work",
    "target-versions",
    "target-memory",
    "vcpu-overcommit",
    "guest-name-free-on-target",
    "macs-free-on-target",
    "console-port-on-target",
];

const LIVE_ONLY: [&str; 6] = [
    "guest-running",
    "same-hardware-and-cpu",
    "encrypted-channel",
    "policy-minimums",
    "qemu-capabilities",
    "predicted-convergence",
];

#[test]
fn offline_modes_run_the_common_checks_in_order_and_pass() {
    for mode in [Mode::Offline, Mode::OfflineForce] {
        let out = Fx::new(mode).run();
        assert_eq!(ids(&out), COMMON);
        assert!(out.iter().all(|f| f.verdict == Verdict::Pass), "{out:#?}");
        assert!(!any_failed(&out));
        assert_eq!(worst(&out), Verdict::Pass);
    }
}

#[test]
fn live_adds_the_live_checks_at_the_end() {
    let mut fx = Fx::new(Mode::Live);
    fx.dirty = Some(10 * MIB);
    fx.link = Some(100 * MIB);
    let out = fx.run();
    let want: Vec<&str> = COMMON.iter().chain(LIVE_ONLY.iter()).copied().collect();
    assert_eq!(ids(&out), want);
    assert!(out.iter().all(|f| f.verdict == Verdict::Pass), "{out:#?}");
    fx.dirty = None;
    let out = fx.run();
    assert_eq!(worst(&out), Verdict::Warn);
    assert!(!any_failed(&out));
}

#[test]
fn offlineforce_with_a_dead_source_passes() {
    let mut fx = Fx::new(Mode::OfflineForce);
    fx.src_down = Some("connection refused".into());
    let out = fx.run();
    assert!(!any_failed(&out), "{out:#?}");
    fx.req.mode = Mode::Offline;
    let out = fx.run();
    let failed: Vec<&str> = out
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .map(|f| f.id.as_str())
        .collect();
    assert_eq!(
        failed,
        [
            "cluster-file-matches-source",
            "source-reachable",
            "target-versions"
        ]
    );
    assert_eq!(worst(&out), Verdict::Fail);
}

#[test]
fn every_reason_is_one_line_without_a_trailing_period() {
    let mut fx = Fx::new(Mode::Live);
    let mut all = fx.run();
    fx.src_down = Some("timed out".into());
    fx.tgt_down = Some("connection refused".into());
    fx.req.guest = "vm9".into();
    fx.req.target = "host1".into();
    fx.req.params.insecure_transport = true;
    all.extend(fx.run());
    for f in &all {
        assert!(!f.reason.is_empty() && !f.reason.contains('\n'), "{f:?}");
        assert!(!f.reason.ends_with('.'), "{f:?}");
    }
    assert!(any_failed(&all));
}

#[test]
fn check_ids_are_stable_strings() {
    assert_eq!(CheckId::ALL.len(), COMMON.len() + LIVE_ONLY.len());
    for id in CheckId::ALL {
        assert_eq!(CheckId::parse(id.as_str()), Some(*id));
        assert_eq!(id.as_str().parse::<CheckId>(), Ok(*id));
        let j = serde_json::to_string(id).unwrap();
        assert_eq!(j, format!("\"{}\"", id.as_str()));
        assert_eq!(serde_json::from_str::<CheckId>(&j).unwrap(), *id);
        assert_eq!(id.live_only(), LIVE_ONLY.contains(&id.as_str()));
    }
    assert_eq!(CheckId::parse("nope"), None);
    let e = "nope".parse::<CheckId>().unwrap_err();
    assert_eq!(e.to_string(), "unknown check id \"nope\"");
    assert_eq!(CheckId::for_mode(Mode::OfflineForce).len(), COMMON.len());
    assert_eq!(CheckId::for_mode(Mode::Live).len(), COMMON.len() + LIVE_ONLY.len());
}

#[test]
fn finding_serializes_flat() {
    let x = f(
        CheckId::TargetMemory,
        Verdict::Fail,
        "host2 has 256 MiB available",
    );
    let j = serde_json::to_string(&x).unwrap();
    assert_eq!(
        j,
        r#"{"id":"target-memory","verdict":"fail","reason":"host2 has 256 MiB available"}"#
    );
    assert_eq!(serde_json::from_str::<Finding>(&j).unwrap(), x);
    assert_eq!(
        x.to_string(),
        "FAIL target-memory: host2 has 256 MiB available"
    );
}

#[test]
fn request_defaults_come_from_policy() {
    let p = Policy::default();
    let r = MigrationRequest::new("vm1", "host1", "host2", Mode::Live, &p);
    assert_eq!(
        (
            r.params.timeout_s,
            r.params.max_downtime_ms,
            r.params.bandwidth_bytes_per_s,
            r.params.insecure_transport
        ),
        (600, 300, None, false)
    );
    assert_eq!((r.params.converge, r.params.allow_postcopy), (vmove_model::Converge::Auto, false));
    let p = Policy { converge: vmove_model::Converge::Throttle, allow_postcopy: true, ..p };
    let r = MigrationRequest::new("vm1", "host1", "host2", Mode::Live, &p);
    assert_eq!((r.params.converge, r.params.allow_postcopy), (vmove_model::Converge::Throttle, true));
    // A request from an older sender (no converge) means none.
    let mut j = serde_json::to_value(&r.params).unwrap();
    j.as_object_mut().unwrap().remove("converge");
    let old: crate::MigrationParams = serde_json::from_value(j).unwrap();
    assert_eq!(old.converge, vmove_model::Converge::None);
    assert_eq!(old.initial_downtime_ms, None);
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["mode"], "live");
}

#[test]
fn formatting_helpers() {
    assert_eq!(fmt_rate(100 * MIB), "100 MB/s");
    assert_eq!(fmt_rate(3 * MIB / 2), "1.5 MB/s");
    assert_eq!(fmt_secs(45), "45s");
    assert_eq!(fmt_secs(600), "10m");
    assert_eq!(fmt_secs(90), "1m30s");
    assert_eq!(fmt_secs(7500), "2h5m");
    assert_eq!(fmt_secs(7200), "2h");
}
