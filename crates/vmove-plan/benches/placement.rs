//! Placement benchmark (not a timed test): a synthetic cluster of 100 hosts and 2,000
//! guests, every guest to be moved, planned a few times; prints the median wall time and
//! how many guests were placed. The goal is well under one second.
//!
//! ```sh
//! nice -n 10 cargo bench -p vmove-plan --bench placement
//! ```
//!
//! The cluster: `host1`..`host25` drained (their guests move LIVE, or OFFLINE for 30 %),
//! `host26`..`host30` unreachable (their guests move OFFLINEFORCE), `host31`..`host100`
//! the targets: 1 TiB, 16 GiB reserve, 64 or 96 CPUs, already 0-40 % used, two CPU models
//! (the sources' CPU flags are a subset of both), six networks of which each target lacks
//! one, four pools of which each target lacks one, `postcopy-ram` on half of them.
//! Guests: 1-64 GiB (and ten of 1000 GiB, too big for all but the emptiest hosts), 1-8 vCPUs, one or two NICs, one or two disks, a console port each
//! (often taken on the target), 10 % in anti-affinity groups of five, 5 % of the live ones
//! needing `postcopy-ram`.
use std::path::PathBuf;
use std::time::Instant;

use vmove_model::inventory::{BridgeInfo, GuestState, GuestStatus, HostInfo, PoolInfo};
use vmove_model::{
    BootSource, Cluster, ClusterMeta, DesiredState, DiskSpec, GuestSpec, HostEntry, NetworkEntry,
    NicSpec, Policy, PoolEntry, PoolKind, TlsFiles,
};
use vmove_plan::{plan, DrainPlan, HostView, Limits, Mode, MoveRequest, PlacementInput};

const HOSTS: usize = 100;
const GUESTS: usize = 2_000;
const DRAINED: usize = 25;
const DEAD: usize = 5;
const RUNS: usize = 5;
const NETWORKS: usize = 6;
const POOLS: usize = 4;

/// xorshift64: a reproducible stream without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn host_info(i: usize, rng: &mut Rng) -> HostInfo {
    let total = 1024 * 1024;
    let reserve = 16 * 1024;
    let target = i > DRAINED + DEAD;
    let used = if target {
        rng.below(40) * (total - reserve) / 100
    } else {
        0
    };
    let cpus: u32 = if i % 3 == 0 { 96 } else { 64 };
    let flags = 10 + u64::from(target && i % 2 == 0);
    HostInfo {
        name: format!("host{i}"),
        agent_version: "0.1.0".into(),
        qemu_version: "8.2.2".into(),
        qemu: vmove_model::inventory::QemuFeatures {
            version: "8.2.2".into(),
            package: String::new(),
            migration_capabilities: ["events", "multifd", "return-path"].map(String::from).to_vec(),
            migration_parameters: vec![("tls-creds".into(), String::new())],
            postcopy_with_multifd: false,
            qmp_commands: None,
        },
        hardware_model: "Server X".into(),
        hardware_generation: 1,
        accel: "kvm".into(),
        cpu_model: if target && i % 2 == 0 {
            "Xeon-B"
        } else {
            "Xeon-A"
        }
        .into(),
        cpu_flags: (0..flags).map(|f| format!("flag{f}")).collect(),
        cpu_count: cpus,
        memory_total_mib: total,
        memory_free_mib: total - reserve - used,
        memory_reserve_mib: reserve,
        memory_committed_mib: used,
        memory_available_mib: total - reserve - used,
        vcpus_committed: if target {
            rng.below(u64::from(cpus)) as u32
        } else {
            0
        },
        bridges: (0..NETWORKS)
            .filter(|n| !target || *n != i % NETWORKS)
            .map(|n| BridgeInfo {
                name: format!("br{n}"),
                vlan: Some(100 + n as u16),
            })
            .collect(),
        pools: (0..POOLS)
            .filter(|p| !target || *p != i % POOLS)
            .map(|p| PoolInfo {
                name: format!("pool{p}"),
                path: format!("/srv/pool{p}"),
                writable: true,
                kind: PoolKind::Shared,
                capacity_bytes: 1 << 40,
                free_bytes: 1 << 39,
                volumes: vec![],
            })
            .collect(),
        console_ports_in_use: (5900..5900 + rng.below(30) as u16).collect(),
        console_port_range: (5900, 5999),
        guests: vec![],
        maintenance: None,
        live_steps_ms: None,
        memory_model_pct: None,
    }
}

fn guest(k: usize, host: usize, port: u16, rng: &mut Rng) -> GuestSpec {
    let memory_gib = match k % 200 {
        7 => 1000,
        _ => [1, 2, 2, 4, 4, 4, 8, 8, 16, 32, 64][rng.below(11) as usize],
    };
    let nets = 1 + rng.below(2) as usize;
    let disks = 1 + rng.below(2) as usize;
    let first_net = rng.below(NETWORKS as u64) as usize;
    let first_pool = rng.below(POOLS as u64) as usize;
    GuestSpec {
        name: format!("vm{k}"),
        host: format!("host{host}"),
        vcpus: 1 + rng.below(8) as u32,
        memory_mib: memory_gib * 1024,
        cpu_model: "host".into(),
        boot: BootSource::Disk,
        desired: DesiredState::Running,
        nics: (0..nets)
            .map(|n| NicSpec {
                network: format!("net{}", (first_net + n) % NETWORKS),
                mac: format!(
                    "52:54:{n:02x}:{:02x}:{:02x}:{:02x}",
                    k >> 16,
                    (k >> 8) & 0xff,
                    k & 0xff
                ),
                ip: None,
            })
            .collect(),
        disks: (0..disks)
            .map(|d| DiskSpec {
                pool: format!("pool{}", (first_pool + d) % POOLS),
                volume: format!("vm{k}-{d}.img"),
                size_mib: None,
            })
            .collect(),
        console_port: Some(port),
        group: (k % 10 == 0).then(|| format!("group{}", k / 50)),
    }
}

struct World {
    cluster: Cluster,
    infos: Vec<HostInfo>,
    requests: Vec<MoveRequest>,
}

fn world() -> World {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut infos: Vec<HostInfo> = (1..=HOSTS).map(|i| host_info(i, &mut rng)).collect();
    let mut guests = Vec::with_capacity(GUESTS);
    let mut requests = Vec::with_capacity(GUESTS);
    let sources = DRAINED + DEAD;
    for k in 0..GUESTS {
        let h = 1 + k % sources;
        let port = 5900 + (k / sources) as u16;
        let g = guest(k, h, port, &mut rng);
        let info = &mut infos[h - 1];
        info.memory_committed_mib += g.memory_mib;
        info.vcpus_committed += g.vcpus;
        info.console_ports_in_use.push(port);
        info.guests.push(GuestStatus {
            spec: g.clone(),
            state: GuestState::Running,
            pid: Some(1000 + k as u32),
            uptime_s: Some(86_400),
        });
        let mode = match (h > DRAINED, rng.below(10)) {
            (true, _) => Mode::OfflineForce,
            (false, 0..=2) => Mode::Offline,
            _ => Mode::Live,
        };
        let mut r = MoveRequest::new(&g.name, &g.host, mode);
        if mode == Mode::Live && rng.below(20) == 0 {
            r.required_capabilities = vec!["postcopy-ram".into()];
        }
        requests.push(r);
        guests.push(g);
    }
    let cluster = Cluster {
        cluster: ClusterMeta {
            name: "bench".into(),
        },
        tls: TlsFiles {
            ca: "ca.pem".into(),
            cert: "op.pem".into(),
            key: "op.key".into(),
        },
        policy: Policy {
            migration_link_bytes_per_s: Some(1_250_000_000),
            ..Policy::default()
        },
        hosts: (1..=HOSTS)
            .map(|i| HostEntry {
                name: format!("host{i}"),
                address: format!("10.0.{}.{}:7450", i / 250, i % 250),
                accel: "kvm".into(),
            })
            .collect(),
        networks: (0..NETWORKS)
            .map(|n| NetworkEntry {
                name: format!("net{n}"),
                bridge: format!("br{n}"),
                vlan: Some(100 + n as u16),
                cidr: None,
            })
            .collect(),
        pools: (0..POOLS)
            .map(|p| PoolEntry::shared(&format!("pool{p}"), format!("/srv/pool{p}")))
            .collect(),
        store: Default::default(),
        guests,
        path: PathBuf::from("/bench/cluster.toml"),
    };
    World {
        cluster,
        infos,
        requests,
    }
}

fn input(w: &World) -> PlacementInput<'_> {
    let hosts = w
        .infos
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let n = i + 1;
            let mut v = if n > DRAINED && n <= DRAINED + DEAD {
                HostView::unreachable(&info.name, "connection refused")
            } else {
                HostView::answered(info)
            };
            v.drained = n <= DRAINED;
            if n % 2 == 1 {
                v.qemu_capabilities = vec!["multifd".into(), "postcopy-ram".into()];
            }
            v
        })
        .collect();
    PlacementInput::new(&w.cluster, hosts)
}

fn main() {
    let w = world();
    let mut times_ms = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let inp = input(&w);
        let t = Instant::now();
        let p = plan(&inp, &w.requests);
        times_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        last = Some(p);
    }
    let Some(p) = last else {
        return;
    };
    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let notes = p.moves.iter().filter(|m| !m.notes.is_empty()).count();
    println!(
        "placement: {HOSTS} hosts, {GUESTS} guests to move: {} placed, {} unplaced, {notes} with notes",
        p.moves.len(),
        p.unplaced.len()
    );
    println!(
        "placement: median {median:.1} ms over {RUNS} runs (min {:.1}, max {:.1})",
        sorted[0],
        sorted[sorted.len() - 1]
    );
    if let Some(u) = p.unplaced.first() {
        println!("first unplaced: {}", u.reason);
    }
    let t = Instant::now();
    match DrainPlan::new(p, Limits::default()) {
        Ok(d) => println!(
            "schedule: {} moves in {:.1} ms, predicted drain {} s with limits 5/2/2",
            d.moves.len(),
            t.elapsed().as_secs_f64() * 1000.0,
            d.predicted_total_s
        ),
        Err(e) => println!("schedule: {e}"),
    }
}
