//! Unit tests of the agent: several agents in one process, each over a [`fake::FakeHost`]
//! and an in-memory store, calling each other through in-process peers that go through the
//! same request decoding as the network. No QEMU, no namespaces.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use vmove_api::{ErrorCode, JobRecord, JobSpec, JobStatus, PeerHost, Request, Role};
use vmove_model::{AgentConfig, BootSource, DiskSpec, GuestSpec, NetworkEntry, NicSpec, PoolEntry};
use vmove_plan::{MigrationParams, Mode, Step};
use vmove_store::{MemStore, StateStore};

use crate::dispatch::Api;
use crate::error::{AgentError, Result};
use crate::guests::{Agent, Parts};
use crate::jobs::{Jobs, PeerFactory};
use crate::leases::Leases;
use crate::peer::Peer;
use crate::state::State;

mod console;
pub mod fake;
mod fake_block;
mod faults;
mod etcd_fleet;
mod fleet;
pub mod link;
mod local_volumes;
mod metrics;
mod migrations;

use fake::{FakeHost, World};

/// An agent reached in-process: requests are encoded and decoded (range checks included)
/// as on the wire, and the peer can be made unreachable.
pub struct LocalPeer {
    name: String,
    api: Arc<Api>,
    up: Arc<AtomicBool>,
}

#[async_trait]
impl Peer for LocalPeer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn call(&self, req: &Request, _timeout: Duration) -> Result<serde_json::Value> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(AgentError::new(ErrorCode::Unreachable, format!("{}: cannot connect", self.name)));
        }
        let line = serde_json::to_string(req)?;
        let req = vmove_api::decode_request(&line).map_err(|e| AgentError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        self.api.handle(req, Role::Host).await.map_err(|e| e.context(&self.name))
    }
}

/// One host of a test cluster.
pub struct Host {
    pub name: String,
    pub api: Arc<Api>,
    pub fake: Arc<FakeHost>,
    pub store: Arc<MemStore>,
    pub up: Arc<AtomicBool>,
    /// On etcd: this host's link to the cluster's store.
    pub link: Option<Arc<link::Link>>,
    /// Its local pool `local` (a directory of its own) and that pool's lease store.
    pub local_dir: std::path::PathBuf,
    pub local_leases: Arc<MemStore>,
}

impl Host {
    pub fn agent(&self) -> &Arc<Agent> {
        &self.api.agent
    }
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.api.jobs
    }
}

/// A cluster of agents in one process.
pub struct Cluster {
    pub world: Arc<World>,
    pub hosts: Vec<Host>,
    /// The pool's lease store, or on etcd (`fleet`) the cluster's store.
    pub pool: Arc<MemStore>,
    /// The hosts' lease policy, when the cluster keeps its state "on etcd" (`pool`).
    pub fleet: Option<vmove_store::LeasePolicy>,
    registry: Registry,
    _dir: tempfile::TempDir,
}

type Registry = Arc<Mutex<HashMap<String, (Arc<Api>, Arc<AtomicBool>)>>>;

fn peer_tls() -> Arc<rustls::ClientConfig> {
    let ca = vmove_api::pki::Ca::generate("t").expect("CA");
    let me = ca.issue_host("h", "127.0.0.1".parse().expect("ip")).expect("cert");
    vmove_api::tls::client_config(&ca.pair().cert_pem, &me).expect("tls")
}

impl Cluster {
    /// `n` hosts whose migrations complete after `passes` progress queries.
    pub async fn new(n: usize, passes: u32) -> Cluster {
        Cluster::build(n, passes, None).await
    }

    /// The same, with the cluster's state "on etcd": `pool` is the cluster's shared store
    /// (with leases), every agent joins it with a lease of `policy`, keeps its volume
    /// leases under `leases/shared/` and guest ownership under `owners/`, and fences.
    pub async fn new_fleet(n: usize, passes: u32, policy: vmove_store::LeasePolicy) -> Cluster {
        Cluster::build(n, passes, Some(policy)).await
    }

    async fn build(n: usize, passes: u32, fleet: Option<vmove_store::LeasePolicy>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let world = World::new(passes);
        let pool = Arc::new(MemStore::new());
        let registry: Registry = Arc::default();
        let tls = peer_tls();
        let mut hosts = Vec::new();
        for i in 1..=n {
            let name = format!("host{i}");
            let fake = Arc::new(FakeHost::new(&name, world.clone()));
            let store = Arc::new(MemStore::new());
            let h = host(&dir, &name, fake.clone(), store.clone(), pool.clone(), fleet, tls.clone(), registry.clone()).await;
            hosts.push(h);
        }
        Cluster { world, hosts, pool, fleet, registry, _dir: dir }
    }

    /// The leases of the pool as the agents keep them.
    pub fn pool_leases(&self) -> Leases {
        match self.fleet {
            Some(_) => Leases::new(self.pool.clone(), &vmove_registry::keys::volume_leases("shared")),
            None => Leases::new(self.pool.clone(), ""),
        }
    }

    /// The jobs of `host` as a restarted agent opens them (jobs that were running are
    /// marked failed).
    pub async fn reopen_jobs(&self, host: &str) -> Arc<Jobs> {
        Jobs::open_with(self.host(host).agent().clone(), peers(self.registry.clone())).await.expect("reopen jobs")
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).expect("host")
    }

    /// Defines and starts a guest on `host`.
    pub async fn boot(&self, name: &str, host: &str) -> GuestSpec {
        let spec = guest(name, host);
        let a = self.host(host).agent();
        a.define(spec.clone()).await.expect("define");
        a.start(name).await.expect("start");
        spec
    }

    /// A job spec moving `guest` from `from` to `to`.
    pub fn spec(&self, guest: &GuestSpec, from: &str, to: &str, mode: Mode) -> JobSpec {
        JobSpec {
            guest: guest.clone(),
            mode,
            source: PeerHost { name: from.into(), address: addr(from) },
            target: to.into(),
            step: None,
            params: MigrationParams { timeout_s: 30, ..MigrationParams::default() },
            inject_fault: None,
            pause_before: None,
            pause_at_switchover: false,
            max_incoming: None,
            dirty_rate_bytes_per_s: None,
            link_bytes_per_s: None,
            convergence_check: Default::default(),
        }
    }

    /// Submits a job on the target and waits for its end.
    pub async fn run(&self, spec: JobSpec) -> JobRecord {
        let target = spec.target.clone();
        let rec = self.host(&target).jobs().submit(spec).await.expect("submit");
        self.wait_end(&target, &rec.id).await
    }

    /// Waits until a job has ended.
    pub async fn wait_end(&self, host: &str, id: &str) -> JobRecord {
        let cell = self.host(host).jobs().get(id).expect("job");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = cell.snapshot();
            if r.status.is_final() {
                return r;
            }
            assert!(Instant::now() < deadline, "job {id} did not end: {:?}", r.events.last());
            let mut rx = cell.events.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    }

    /// Waits until a job has emitted an info message starting with `prefix`.
    pub async fn wait_info(&self, host: &str, id: &str, prefix: &str) {
        let cell = self.host(host).jobs().get(id).expect("job");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = cell.snapshot();
            if r.events.iter().any(|e| matches!(&e.kind, vmove_api::EventKind::Info { message } if message.starts_with(prefix))) {
                return;
            }
            assert!(!r.status.is_final(), "job {id} ended before {prefix:?}: {:?}", r.error);
            assert!(Instant::now() < deadline, "no {prefix:?} in job {id}");
            let mut rx = cell.events.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    }

    /// Where the guest is defined, and where its QEMU runs (living, not migrated away).
    pub fn placement(&self, guest: &str) -> (Vec<String>, Vec<String>) {
        let defined = self.hosts.iter().filter(|h| h.agent().spec(guest).is_some()).map(|h| h.name.clone()).collect();
        let running = self
            .world
            .qemus(guest)
            .into_iter()
            .filter(|(_, _, r)| *r == fake::Run::Running)
            .map(|(h, _, _)| h)
            .collect();
        (defined, running)
    }

    /// The lease holder of a volume.
    pub async fn holder(&self, volume: &str) -> Option<String> {
        self.pool_leases().read(volume).await.expect("lease").map(|l| l.holder)
    }
}

fn addr(host: &str) -> String {
    let n: u8 = host.trim_start_matches("host").parse().unwrap_or(1);
    format!("198.51.100.{}:7450", n + 1)
}

/// Defines and starts guest `n` on `host`, with its own MAC, IP and volume.
pub async fn boot_nth(c: &Cluster, name: &str, host: &str, n: u8) -> GuestSpec {
    let mut spec = guest(name, host);
    spec.nics[0].mac = format!("52:54:00:00:01:{n:02x}");
    spec.nics[0].ip = Some(format!("192.0.2.{}/24", 100 + n));
    let a = c.host(host).agent();
    a.define(spec.clone()).await.expect("define");
    a.start(name).await.expect("start");
    spec
}

/// The commands of the guest's living QEMU on `host`.
pub fn commands_on(c: &Cluster, guest: &str, host: &str) -> Vec<vmove_qmp::fake::Command> {
    let (_, pid, _) = c.world.qemus(guest).into_iter().find(|(h, _, _)| h == host).expect("QEMU");
    c.world.commands(pid)
}

/// A lab-image guest with one NIC and one data disk.
pub fn guest(name: &str, host: &str) -> GuestSpec {
    GuestSpec {
        name: name.into(),
        host: host.into(),
        vcpus: 1,
        memory_mib: 512,
        cpu_model: "qemu64".into(),
        boot: BootSource::Lab { dirty_mb_s: 0, wss_mib: 64, disk_mb_s: 0 },
        desired: Default::default(),
        nics: vec![NicSpec { network: "lab-net".into(), mac: "52:54:00:00:00:11".into(), ip: Some("192.0.2.10/24".into()) }],
        disks: vec![DiskSpec { pool: "shared".into(), volume: format!("{name}-data.img"), size_mib: Some(1) }],
        console_port: None,
        group: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn host(
    dir: &tempfile::TempDir,
    name: &str,
    fake: Arc<FakeHost>,
    store: Arc<MemStore>,
    pool: Arc<MemStore>,
    fleet: Option<vmove_store::LeasePolicy>,
    tls: Arc<rustls::ClientConfig>,
    registry: Registry,
) -> Host {
    let base = dir.path().join(name);
    let shared = dir.path().join("shared");
    let local_dir = base.join("local");
    std::fs::create_dir_all(&shared).expect("pool dir");
    std::fs::create_dir_all(&local_dir).expect("local pool dir");
    std::fs::create_dir_all(&base).expect("host dir");
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(base.join(f), "not a real PEM: the fake QEMU does not read it").expect("tls file");
    }
    let local_leases = Arc::new(MemStore::new());
    let cfg = AgentConfig {
        name: name.into(),
        listen: addr(name),
        accel: "tcg".into(),
        state_dir: base.join("state"),
        run_dir: base.join("run"),
        ca: base.join("ca.pem"),
        cert: base.join("cert.pem"),
        key: base.join("key.pem"),
        memory_reserve_mib: 256,
        memory_limit_mib: None,
        hardware_model: None,
        hardware_generation: 1,
        console_ports: (5900, 5999),
        lab_kernel: Some("/k".into()),
        lab_initrd: Some("/i".into()),
        allow_fault_injection: true,
        metrics_listen: None,
        pools: vec![PoolEntry::shared("shared", shared), PoolEntry::local("local", local_dir.clone())],
        networks: vec![NetworkEntry { name: "lab-net".into(), bridge: "lab-net".into(), vlan: None, cidr: None }],
        store: Default::default(),
        lease_ttl_s: 10,
    };
    let (fleet, leases, link) = match fleet {
        Some(policy) => {
            let link = Arc::new(link::Link::new((*pool).clone()));
            let f = crate::fleet::Fleet::join(link.clone(), name, &cfg.listen, policy).await.expect("join");
            (Some(f.clone()), Leases::on_fleet(f, &vmove_registry::keys::volume_leases("shared")), Some(link))
        }
        None => (None, Leases::new(pool, ""), None),
    };
    let parts = Parts {
        cfg,
        accel: "tcg".into(),
        qemu: Default::default(),
        host: fake.clone(),
        state: State::new(store.clone() as Arc<dyn StateStore>),
        leases: BTreeMap::from([
            ("shared".to_string(), leases),
            ("local".to_string(), Leases::new(local_leases.clone(), "")),
        ]),
        peer_tls: tls,
        fleet,
    };
    let agent = Arc::new(Agent::new(parts).await.expect("agent"));
    let jobs = Jobs::open_with(agent.clone(), peers(registry.clone())).await.expect("jobs");
    if agent.fleet().is_some() {
        tokio::spawn(crate::fleet::fence::run(jobs.clone()));
    }
    let api = Arc::new(Api { agent, jobs });
    let up = Arc::new(AtomicBool::new(true));
    registry.lock().unwrap_or_else(|p| p.into_inner()).insert(name.into(), (api.clone(), up.clone()));
    Host { name: name.into(), api, fake, store, up, link, local_dir, local_leases }
}

fn peers(reg: Registry) -> PeerFactory {
    Box::new(move |h: &PeerHost| {
        let r = reg.lock().unwrap_or_else(|p| p.into_inner());
        let (api, up) = r.get(&h.name).cloned().ok_or_else(|| AgentError::not_found(format!("no host {}", h.name)))?;
        Ok(Arc::new(LocalPeer { name: h.name.clone(), api, up }) as Arc<dyn Peer>)
    })
}

/// The steps of a job and their statuses, as strings.
pub fn steps_of(r: &JobRecord) -> Vec<(Step, vmove_api::StepStatus)> {
    r.steps.iter().map(|s| (s.step, s.status)).collect()
}

/// Asserts a job's status, printing its error otherwise.
pub fn assert_status(r: &JobRecord, want: JobStatus) {
    assert_eq!(r.status, want, "job {}: {:?}\n{:#?}", r.id, r.error, r.events);
}
