//! Fixtures for the planner's tests.
//!
//! A [`World`] is a cluster `lab` of identical hosts `host1`..`hostN` (16 GiB total, 1 GiB
//! reserve, so 15 GiB usable; 8 CPUs; QEMU 8.2.2; both bridges, pool `shared` writable;
//! console ports 5900-5999), networks `lab-net` (untagged) and `prod` (VLAN 100), pool
//! `shared`, policy defaults (vCPU ratio 4). Guests are added to the cluster file and to
//! their host's inventory (running). Tests drain, break or load the hosts they are about.
use std::collections::BTreeMap;
use std::path::PathBuf;

use vmove_model::inventory::{BridgeInfo, GuestState, GuestStatus, HostInfo, PoolInfo};
use vmove_model::{
    BootSource, Cluster, ClusterMeta, DesiredState, DiskSpec, GuestSpec, HostEntry, NetworkEntry,
    NicSpec, Policy, PoolEntry, PoolKind, TlsFiles,
};

use super::*;
use crate::checks::{Busy, Reach};
use crate::mode::Mode;

mod accounting;
mod rules;
mod spread;
mod unplaced;

pub(crate) const GIB: u64 = 1024;

pub(crate) fn host_info(name: &str) -> HostInfo {
    HostInfo {
        name: name.into(),
        agent_version: "0.1.0".into(),
        qemu_version: "8.2.2".into(),
        qemu: vmove_model::inventory::QemuFeatures {
            version: "8.2.2".into(),
            package: String::new(),
            migration_capabilities: ["events", "multifd", "return-path", "switchover-ack"]
                .map(String::from)
                .to_vec(),
            migration_parameters: vec![("tls-creds".into(), String::new())],
            postcopy_with_multifd: false,
            qmp_commands: None,
        },
        hardware_model: "Lab KVM".into(),
        hardware_generation: 1,
        accel: "kvm".into(),
        cpu_model: "Xeon-E5".into(),
        cpu_flags: vec!["fpu".into(), "sse2".into(), "avx2".into()],
        cpu_count: 8,
        memory_total_mib: 16 * GIB,
        memory_free_mib: 15 * GIB,
        memory_reserve_mib: GIB,
        memory_committed_mib: 0,
        memory_available_mib: 15 * GIB,
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
        pools: vec![PoolInfo {
            name: "shared".into(),
            path: "/srv/shared".into(),
            writable: true,
            kind: PoolKind::Shared,
            capacity_bytes: 100 << 30,
            free_bytes: 50 << 30,
            volumes: vec![],
        }],
        console_ports_in_use: vec![],
        console_port_range: (5900, 5999),
        guests: vec![],
        maintenance: None,
        live_steps_ms: None,
        memory_model_pct: None,
    }
}

/// Counts a defined guest in an inventory, as an agent does.
pub(crate) fn define(info: &mut HostInfo, spec: &GuestSpec) {
    info.memory_committed_mib += spec.memory_mib;
    info.memory_available_mib = info.memory_available_mib.saturating_sub(spec.memory_mib);
    info.vcpus_committed += spec.vcpus;
    if let Some(p) = spec.console_port {
        info.console_ports_in_use.push(p);
    }
    info.guests.push(GuestStatus {
        spec: spec.clone(),
        state: GuestState::Running,
        pid: Some(4242),
        uptime_s: None,
    });
}

/// A cluster, its hosts' inventories and what the caller says about them.
pub(crate) struct World {
    pub cluster: Cluster,
    pub infos: BTreeMap<String, HostInfo>,
    pub drained: Vec<String>,
    pub down: BTreeMap<String, String>,
    pub caps: BTreeMap<String, Vec<String>>,
    pub busy: Vec<Busy>,
    pub link: Option<u64>,
    macs: u32,
}

impl World {
    /// `n` identical empty hosts.
    pub fn new(n: usize) -> World {
        let names: Vec<String> = (1..=n).map(|i| format!("host{i}")).collect();
        let cluster = Cluster {
            cluster: ClusterMeta { name: "lab".into() },
            tls: TlsFiles {
                ca: "ca.pem".into(),
                cert: "op.pem".into(),
                key: "op.key".into(),
            },
            policy: Policy::default(),
            hosts: names
                .iter()
                .enumerate()
                .map(|(i, n)| HostEntry {
                    name: n.clone(),
                    address: format!("198.51.100.{}:7450", i + 2),
                    accel: "kvm".into(),
                })
                .collect(),
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
            pools: vec![PoolEntry::shared("shared", "/srv/shared")],
            store: Default::default(),
            guests: vec![],
            path: PathBuf::from("/lab/cluster.toml"),
        };
        World {
            cluster,
            infos: names.iter().map(|n| (n.clone(), host_info(n))).collect(),
            drained: vec![],
            down: BTreeMap::new(),
            caps: BTreeMap::new(),
            busy: vec![],
            link: None,
            macs: 0,
        }
    }

    /// A guest on `host` with one NIC on `lab-net` (a fresh MAC) and one disk in `shared`,
    /// no console port, running; in the cluster file and the host's inventory.
    pub fn guest(&mut self, name: &str, host: &str, memory_mib: u64, vcpus: u32) -> &mut World {
        self.macs += 1;
        let spec = GuestSpec {
            name: name.into(),
            host: host.into(),
            vcpus,
            memory_mib,
            cpu_model: "qemu64".into(),
            boot: BootSource::Disk,
            desired: DesiredState::Running,
            nics: vec![NicSpec {
                network: "lab-net".into(),
                mac: format!(
                    "52:54:00:00:{:02x}:{:02x}",
                    self.macs >> 8,
                    self.macs & 0xff
                ),
                ip: None,
            }],
            disks: vec![DiskSpec {
                pool: "shared".into(),
                volume: format!("{name}.img"),
                size_mib: None,
            }],
            console_port: None,
            group: None,
        };
        self.put(spec)
    }

    /// Adds a definition to the file and its host's inventory.
    pub fn put(&mut self, spec: GuestSpec) -> &mut World {
        if let Some(info) = self.infos.get_mut(&spec.host) {
            define(info, &spec);
        }
        self.cluster.guests.push(spec);
        self
    }

    /// Puts the last guest added in `group` (in the file).
    pub fn grouped(&mut self, group: &str) -> &mut World {
        if let Some(g) = self.cluster.guests.last_mut() {
            g.group = Some(group.into());
        }
        self
    }

    /// The definition of a guest in the file.
    pub fn spec(&mut self, name: &str) -> &mut GuestSpec {
        self.cluster
            .guests
            .iter_mut()
            .find(|g| g.name == name)
            .expect("no such guest in the fixture")
    }

    /// A host's inventory.
    pub fn host(&mut self, name: &str) -> &mut HostInfo {
        self.infos
            .get_mut(name)
            .expect("no such host in the fixture")
    }

    /// Marks hosts drained.
    pub fn drain(&mut self, hosts: &[&str]) -> &mut World {
        self.drained.extend(hosts.iter().map(|h| h.to_string()));
        self
    }

    /// What the planner is given.
    pub fn input(&self) -> PlacementInput<'_> {
        let hosts = self
            .infos
            .iter()
            .map(|(name, info)| HostView {
                name: name.clone(),
                reach: match self.down.get(name) {
                    Some(why) => Reach::Unreachable(why.clone()),
                    None => Reach::Answered(info),
                },
                drained: self.drained.contains(name),
                qemu_capabilities: self.caps.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        let mut input = PlacementInput::new(&self.cluster, hosts);
        input.busy = &self.busy;
        input.link_bytes_per_s = self.link;
        input
    }

    /// Plans `requests`.
    pub fn plan(&self, requests: &[MoveRequest]) -> Placement {
        plan(&self.input(), requests)
    }

    /// Plans the move of every guest of `host` in `mode`.
    pub fn plan_host(&self, host: &str, mode: Mode) -> Placement {
        self.plan(&MoveRequest::for_host(&self.cluster, host, mode))
    }
}

/// `(guest, to)` of every move.
pub(crate) fn targets(p: &Placement) -> Vec<(&str, &str)> {
    p.moves
        .iter()
        .map(|m| (m.guest.as_str(), m.to.as_str()))
        .collect()
}

/// A rejection, shortly.
pub(crate) fn rej(host: Option<&str>, rule: Rule, reason: &str) -> Rejection {
    Rejection {
        host: host.map(String::from),
        rule,
        reason: reason.into(),
    }
}

/// A precheck rule.
pub(crate) fn check(id: crate::checks::CheckId) -> Rule {
    Rule::Check(id)
}
