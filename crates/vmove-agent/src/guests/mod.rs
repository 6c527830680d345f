//! Guests on this host: the registry ([`Agent`]), definitions ([`define`]), QEMU runs
//! ([`run`]), and their volumes and network devices ([`devices`]).
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmove_api::server::ServerStats;
use vmove_api::{AgentClient, GuestState, GuestStatus};
use vmove_model::inventory::{Maintenance, QemuFeatures};
use vmove_model::{AgentConfig, GuestSpec};
use vmove_qmp::Qmp;

use crate::error::{fail, AgentError, Result};
use crate::fleet::Fleet;
use crate::host::HostOps;
use crate::leases::Leases;
use crate::state::{intent_key, Intent, IntentRec, MaintenanceRec, State, MAINTENANCE_KEY};

pub mod define;
pub mod devices;
pub mod run;

/// A guest as the agent holds it.
pub(crate) struct Guest {
    pub(crate) spec: GuestSpec,
    pub(crate) state: GuestState,
    pub(crate) pid: Option<u32>,
    pub(crate) started_ms: Option<u64>,
    pub(crate) qmp: Option<Qmp>,
}

/// What QEMU's MIGRATION and MIGRATION_PASS events said about an outgoing migration.
#[derive(Debug, Default)]
pub struct MigrationEvents {
    /// Last MIGRATION_PASS number.
    pub passes: u64,
    /// Last MIGRATION status.
    pub status: String,
    /// Where the migration's connections go (from its URI): whose send queues hold the
    /// bytes in flight.
    pub peer: Option<std::net::SocketAddr>,
}

/// Everything an [`Agent`] is made of (the real ones from `vmoved`'s configuration, fakes
/// in unit tests).
pub struct Parts {
    /// Configuration.
    pub cfg: AgentConfig,
    /// `kvm` or `tcg` (resolved from `auto`).
    pub accel: String,
    /// What the host's QEMU can do.
    pub qemu: QemuFeatures,
    /// The host.
    pub host: Arc<dyn HostOps>,
    /// The agent's state.
    pub state: State,
    /// Volume leases, by pool name.
    pub leases: BTreeMap<String, Leases>,
    /// TLS configuration for calls to other agents (this host's certificate).
    pub peer_tls: Arc<rustls::ClientConfig>,
    /// On etcd: this host's lease and the cluster's shared store (`None`: file store).
    pub fleet: Option<Arc<Fleet>>,
}

/// The agent's state.
pub struct Agent {
    pub(crate) cfg: AgentConfig,
    pub(crate) accel: String,
    pub(crate) qemu: QemuFeatures,
    pub(crate) host: Arc<dyn HostOps>,
    pub(crate) state: State,
    pub(crate) leases: BTreeMap<String, Leases>,
    pub(crate) peer_tls: Arc<rustls::ClientConfig>,
    pub(crate) fleet: Option<Arc<Fleet>>,
    /// Who may run each guest (`owners/<guest>`, records like volume leases): on etcd in the
    /// cluster's store, on files beside the first shared pool's volume leases.
    pub(crate) owners: Option<Leases>,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    guests: Mutex<BTreeMap<String, Guest>>,
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    events: Mutex<HashMap<String, Arc<Mutex<MigrationEvents>>>>,
    peers: Mutex<HashMap<String, AgentClient>>,
    journal_seq: AtomicU64,
    pub(crate) helpers: crate::storage::helper::Helpers,
    maintenance: Mutex<Option<Maintenance>>,
    pub(crate) outgoing_watch: Mutex<HashMap<String, crate::frames::Outgoing>>,
    /// Guests whose console input a session holds (one writer per guest).
    pub(crate) console_writers: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Guests whose live migration out completed here (for console sessions).
    moved_out: Mutex<std::collections::HashSet<String>>,
}

impl Agent {
    /// An agent over `parts`, with the guest definitions found in its state.
    pub async fn new(parts: Parts) -> Result<Agent> {
        let mut guests = BTreeMap::new();
        for (_, crate::state::GuestDef(spec)) in parts.state.list::<crate::state::GuestDef>("guests/").await? {
            guests.insert(spec.name.clone(), Guest { spec, state: GuestState::Stopped, pid: None, started_ms: None, qmp: None });
        }
        let journal_seq = parts
            .state
            .store()
            .list("journal/")
            .await?
            .iter()
            .filter_map(|e| e.key.rsplit('/').next().and_then(|s| s.parse::<u64>().ok()))
            .max()
            .unwrap_or(0);
        let starts = crate::metrics::count_start(&parts.state).await?;
        let maintenance = parts.state.get::<MaintenanceRec>(MAINTENANCE_KEY).await?.map(|m| m.0);
        let owners = match &parts.fleet {
            Some(f) => Some(Leases::on_fleet(f.clone(), vmove_registry::keys::owners())),
            // On the file store: beside the volume leases of the first shared pool by name
            // (every host of a cluster has the same shared pools), so that a guest without
            // a disk there is held too: the host it was forced away from learns it at its
            // return. None without a shared pool.
            None => parts.cfg.pools.iter().filter(|p| !p.is_local()).map(|p| &p.name).min().and_then(|n| parts.leases.get(n)).map(|l| l.under("owners/")),
        };
        Ok(Agent {
            cfg: parts.cfg,
            accel: parts.accel,
            qemu: parts.qemu,
            host: parts.host,
            state: parts.state.in_fleet(parts.fleet.clone()),
            leases: parts.leases,
            peer_tls: parts.peer_tls,
            owners,
            fleet: parts.fleet,
            stats: Arc::default(),
            metrics: Arc::new(crate::metrics::Metrics::new(starts)),
            guests: Mutex::new(guests),
            op_locks: Mutex::default(),
            events: Mutex::default(),
            peers: Mutex::default(),
            journal_seq: AtomicU64::new(journal_seq + 1),
            helpers: Default::default(),
            maintenance: Mutex::new(maintenance),
            outgoing_watch: Mutex::default(),
            console_writers: Arc::default(),
            moved_out: Mutex::default(),
        })
    }

    /// Since when the host is in maintenance, if it is.
    pub fn maintenance(&self) -> Option<Maintenance> {
        *self.maintenance.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses `what` while the host is in maintenance (`wrong_state`).
    pub fn refuse_in_maintenance(&self, what: &str) -> Result<()> {
        if self.maintenance().is_some() {
            fail!(
                WrongState,
                "{} is in maintenance: {what} refused (guests already here keep running; `vmove host undrain {}` ends it)",
                self.cfg.name,
                self.cfg.name
            );
        }
        Ok(())
    }

    /// Puts the host in maintenance (`on`) or ends it; saved before it takes effect.
    /// Returns the new state and whether it changed. Callers that must not race with job
    /// submissions go through [`crate::jobs::Jobs::set_maintenance`].
    pub(crate) async fn set_maintenance(&self, on: bool) -> Result<(Option<Maintenance>, bool)> {
        let now = self.maintenance();
        match (on, now) {
            (true, Some(_)) | (false, None) => Ok((now, false)),
            (true, None) => {
                let m = Maintenance { since_ms: crate::now_ms() };
                self.state.put(MAINTENANCE_KEY, &MaintenanceRec(m)).await?;
                *self.maintenance.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
                tracing::info!("maintenance begins: no new guests, no migrations in");
                Ok((Some(m), true))
            }
            (false, Some(_)) => {
                self.state.delete(MAINTENANCE_KEY).await?;
                *self.maintenance.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!("maintenance ends");
                Ok((None, true))
            }
        }
    }

    /// This host's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// On etcd: this host's lease and the cluster's store.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    pub(crate) fn lock_guests(&self) -> MutexGuard<'_, BTreeMap<String, Guest>> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn op_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.op_locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    /// A client of another agent (kept, so its connections are reused), with this host's
    /// certificate.
    pub fn peer_client(&self, name: &str, address: &str) -> Result<AgentClient> {
        let addr: std::net::SocketAddr =
            address.parse().map_err(|_| AgentError::new(vmove_api::ErrorCode::InvalidRequest, format!("bad agent address {address} of {name}")))?;
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!("{name}@{address}");
        Ok(peers.entry(key).or_insert_with(|| AgentClient::new(addr, name, self.peer_tls.clone())).clone())
    }

    /// Marks `guest` as moved away (its outgoing live migration completed; the source
    /// QEMU is about to end): its console sessions end with `moved`.
    pub(crate) fn mark_moved_out(&self, guest: &str) {
        self.moved_out.lock().unwrap_or_else(|p| p.into_inner()).insert(guest.to_string());
    }

    /// Whether `guest` was marked moved away; `clear`: forget the mark (a guest that runs
    /// here again).
    pub(crate) fn moved_out(&self, guest: &str, clear: bool) -> bool {
        let mut m = self.moved_out.lock().unwrap_or_else(|p| p.into_inner());
        if clear {
            m.remove(guest)
        } else {
            m.contains(guest)
        }
    }

    /// The event record of a guest's outgoing migration.
    pub fn migration_events(&self, guest: &str) -> Arc<Mutex<MigrationEvents>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).entry(guest.to_string()).or_default().clone()
    }

    /// Every guest's status.
    pub fn list(&self) -> Vec<GuestStatus> {
        self.lock_guests().values().map(status).collect()
    }

    /// One guest's status.
    pub fn show(&self, name: &str) -> Result<GuestStatus> {
        self.lock_guests().get(name).map(status).ok_or_else(|| self.no_such(name))
    }

    pub(crate) fn no_such(&self, name: &str) -> AgentError {
        AgentError::not_found(format!("no guest named {name} on {}", self.cfg.name))
    }

    /// A defined guest's spec.
    pub fn spec(&self, name: &str) -> Option<GuestSpec> {
        self.lock_guests().get(name).map(|g| g.spec.clone())
    }

    /// A defined guest's spec, refusing while QEMU runs.
    pub fn stopped_spec(&self, name: &str) -> Result<GuestSpec> {
        let g = self.lock_guests();
        let guest = g.get(name).ok_or_else(|| self.no_such(name))?;
        if guest.pid.is_some() {
            fail!(WrongState, "guest {name} is running on {}", self.cfg.name);
        }
        Ok(guest.spec.clone())
    }

    /// Memory and vCPUs of every defined guest.
    pub fn committed(&self) -> (u64, u32) {
        let g = self.lock_guests();
        let mem = g.values().fold(0u64, |a, g| a.saturating_add(g.spec.memory_mib));
        let cpus = g.values().fold(0u32, |a, g| a.saturating_add(g.spec.vcpus));
        (mem, cpus)
    }

    /// Console ports of defined guests.
    pub fn console_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.lock_guests().values().filter_map(|g| g.spec.console_port).collect();
        v.sort_unstable();
        v
    }

    /// The guest's QMP connection and state.
    pub fn qmp_of(&self, name: &str) -> Result<(Qmp, GuestState)> {
        let g = self.lock_guests();
        let guest = g.get(name).ok_or_else(|| self.no_such(name))?;
        match &guest.qmp {
            Some(q) if guest.pid.is_some() => Ok((q.clone(), guest.state)),
            _ => fail!(WrongState, "guest {name} has no running QEMU on {}", self.cfg.name),
        }
    }

    /// The pid of the guest's QEMU here.
    pub fn pid_of(&self, name: &str) -> Result<u32> {
        let g = self.lock_guests();
        let guest = g.get(name).ok_or_else(|| self.no_such(name))?;
        guest.pid.ok_or_else(|| crate::error::AgentError::new(vmove_api::ErrorCode::WrongState, format!("guest {name} has no QEMU on {}", self.cfg.name)))
    }

    /// The guest's run directory.
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.cfg.run_dir.join(name)
    }

    /// Records a new run state.
    pub fn set_state(&self, name: &str, st: GuestState) {
        if let Some(g) = self.lock_guests().get_mut(name) {
            g.state = st;
        }
    }

    pub(crate) fn memory_total_mib(&self) -> u64 {
        let real = self.host.memory_mib().0;
        self.cfg.memory_limit_mib.map_or(real, |l| l.min(real))
    }

    /// Writes an intent before acting on it; returns its ticket.
    pub(crate) async fn journal_begin(&self, intent: Intent) -> Result<u64> {
        let seq = self.journal_seq.fetch_add(1, Ordering::SeqCst);
        self.state.put(&intent_key(seq), &IntentRec { at_ms: crate::now_ms(), intent }).await?;
        Ok(seq)
    }

    /// Closes an intent once its outcome is durable.
    pub(crate) async fn journal_done(&self, seq: u64) -> Result<()> {
        self.state.delete(&intent_key(seq)).await
    }
}

pub(crate) fn status(g: &Guest) -> GuestStatus {
    GuestStatus {
        spec: g.spec.clone(),
        state: g.state,
        pid: g.pid,
        uptime_s: g.started_ms.map(|s| crate::now_ms().saturating_sub(s) / 1000),
    }
}
