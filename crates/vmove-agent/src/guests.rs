//! Guests on this host: define, start, stop, undefine, adopt after a restart.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use vmove_api::{GuestState, GuestStatus};
use vmove_host::net::Netlink;
use vmove_host::qemu::{self, Launch, RunFiles};
use vmove_host::{proc, tap};
use vmove_model::{AgentConfig, BootSource, GuestSpec};
use vmove_qmp::Qmp;

use crate::journal::{Intent, Journal};

/// A guest as the agent holds it.
pub(crate) struct Guest {
    pub(crate) spec: GuestSpec,
    pub(crate) state: GuestState,
    pub(crate) pid: Option<u32>,
    pub(crate) started_ms: Option<u64>,
    pub(crate) qmp: Option<Qmp>,
}

/// What survives an agent restart about a running QEMU.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub(crate) pid: u32,
    pub(crate) started_ms: u64,
}

/// The agent's state.
pub struct Agent {
    pub(crate) cfg: AgentConfig,
    pub(crate) accel: String,
    pub(crate) qemu_version: String,
    pub(crate) qemu: vmove_model::inventory::QemuFeatures,
    pub(crate) peer_tls: Arc<rustls::ClientConfig>,
    pub(crate) journal: Journal,
    guests: Mutex<BTreeMap<String, Guest>>,
    op_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    outgoing: Mutex<HashMap<String, String>>,
    events: Mutex<HashMap<String, Arc<Mutex<MigrationEvents>>>>,
}

/// What QEMU's MIGRATION and MIGRATION_PASS events said about an outgoing migration.
#[derive(Debug, Default)]
pub struct MigrationEvents {
    /// Last MIGRATION_PASS number.
    pub passes: u64,
    /// Last MIGRATION status.
    pub status: String,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

impl Agent {
    /// Loads guest definitions and opens the journal.
    pub async fn new(cfg: AgentConfig) -> Result<Agent> {
        let accel = match cfg.accel.as_str() {
            "auto" => {
                if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() {
                    "kvm".to_string()
                } else {
                    "tcg".to_string()
                }
            }
            "kvm" | "tcg" => cfg.accel.clone(),
            other => bail!("accel {other:?} is not kvm, tcg or auto"),
        };
        let qemu = vmove_host::qemu_probe::probe(qemu::QEMU_BIN, &cfg.run_dir.join(".probe"))
            .await
            .context("cannot learn what this host's QEMU can do")?;
        vmove_host::qemu_probe::check_minimum(&qemu)?;
        tracing::info!(version = %qemu.version, capabilities = qemu.migration_capabilities.len(), "QEMU features learned");
        let qemu_version = qemu.version.clone();
        let journal = Journal::open(&cfg.state_dir)?;
        let peer_tls = {
            let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
            let me = vmove_api::pki::CertPair { cert_pem: read(&cfg.cert)?, key_pem: read(&cfg.key)? };
            vmove_api::tls::client_config(&read(&cfg.ca)?, &me)?
        };
        std::fs::create_dir_all(cfg.state_dir.join("guests"))?;
        let mut guests = BTreeMap::new();
        for e in std::fs::read_dir(cfg.state_dir.join("guests"))? {
            let p = e?.path();
            let is_spec = p.extension().is_some_and(|x| x == "json")
                && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".run.json"));
            if !is_spec {
                continue;
            }
            let spec: GuestSpec = serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("guest definition {}", p.display()))?;
            guests.insert(
                spec.name.clone(),
                Guest { spec, state: GuestState::Stopped, pid: None, started_ms: None, qmp: None },
            );
        }
        Ok(Agent {
            cfg,
            accel,
            qemu_version,
            qemu,
            peer_tls,
            journal,
            guests: Mutex::new(guests),
            op_locks: Mutex::new(HashMap::new()),
            outgoing: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn spec_path(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join("guests").join(format!("{name}.json"))
    }
    pub(crate) fn run_record_path(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join("guests").join(format!("{name}.run.json"))
    }
    pub(crate) fn run_dir(&self, name: &str) -> PathBuf {
        self.cfg.run_dir.join(name)
    }

    pub(crate) fn lock_guests(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Guest>> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn op_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.op_locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    /// Records that a guest is being migrated away from this host (to `target`), or not.
    pub fn set_outgoing(&self, guest: &str, target: Option<&str>) {
        let mut o = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
        match target {
            Some(t) => {
                o.insert(guest.to_string(), t.to_string());
            }
            None => {
                o.remove(guest);
            }
        }
    }

    /// The event record of a guest's outgoing migration.
    pub fn migration_events(&self, guest: &str) -> Arc<Mutex<MigrationEvents>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).entry(guest.to_string()).or_default().clone()
    }

    /// Where a guest is being migrated to from this host, if it is.
    pub fn outgoing_to(&self, guest: &str) -> Option<String> {
        self.outgoing.lock().unwrap_or_else(|p| p.into_inner()).get(guest).cloned()
    }

    /// Every guest's status.
    pub fn list(&self) -> Vec<GuestStatus> {
        self.lock_guests().values().map(status).collect()
    }

    /// One guest's status.
    pub fn show(&self, name: &str) -> Result<GuestStatus> {
        self.lock_guests().get(name).map(status).ok_or_else(|| self.no_such(name))
    }

    pub(crate) fn no_such(&self, name: &str) -> anyhow::Error {
        anyhow!("no guest named {name} on {}", self.cfg.name)
    }

    /// Memory and vCPUs of every defined guest.
    pub fn committed(&self) -> (u64, u32) {
        let g = self.lock_guests();
        (g.values().map(|g| g.spec.memory_mib).sum(), g.values().map(|g| g.spec.vcpus).sum())
    }

    /// Console ports of defined guests.
    pub fn console_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.lock_guests().values().filter_map(|g| g.spec.console_port).collect();
        v.sort_unstable();
        v
    }

    /// Persists a guest definition after checking names, MACs, networks, pools and memory.
    pub async fn define(&self, mut spec: GuestSpec) -> Result<GuestStatus> {
        if !valid_name(&spec.name) {
            bail!("invalid guest name {:?}: use letters, digits, '-', '_', '.' (at most 64)", spec.name);
        }
        if spec.vcpus == 0 || spec.memory_mib == 0 {
            bail!("guest {}: vcpus and memory must be positive", spec.name);
        }
        for n in &spec.nics {
            if !valid_mac(&n.mac) {
                bail!("guest {}: invalid MAC address {:?}", spec.name, n.mac);
            }
            if !self.cfg.networks.iter().any(|x| x.name == n.network) {
                bail!("guest {}: network {} is not served by {}", spec.name, n.network, self.cfg.name);
            }
        }
        for d in &spec.disks {
            if !self.cfg.pools.iter().any(|p| p.name == d.pool) {
                bail!("guest {}: storage pool {} is not on {}", spec.name, d.pool, self.cfg.name);
            }
            if !valid_name(&d.volume) {
                bail!("guest {}: invalid volume name {:?}", spec.name, d.volume);
            }
        }
        let lock = self.op_lock(&spec.name);
        let _op = lock.lock().await;
        spec.host = self.cfg.name.clone();
        {
            let g = self.lock_guests();
            if g.contains_key(&spec.name) {
                bail!("guest name {} is already in use on {}", spec.name, self.cfg.name);
            }
            for other in g.values() {
                if let Some(m) = spec.macs().find(|m| other.spec.macs().any(|o| o.eq_ignore_ascii_case(m))) {
                    bail!("MAC address {m} is already used by guest {} on {}", other.spec.name, self.cfg.name);
                }
            }
            let used: u64 = g.values().map(|g| g.spec.memory_mib).sum();
            let avail = self.memory_total_mib().saturating_sub(self.cfg.memory_reserve_mib).saturating_sub(used);
            if spec.memory_mib > avail {
                bail!(
                    "not enough memory on {}: guest {} needs {} MiB, {} MiB available (memory is never overcommitted)",
                    self.cfg.name, spec.name, spec.memory_mib, avail
                );
            }
            let in_use: Vec<u16> = g.values().filter_map(|g| g.spec.console_port).collect();
            let (lo, hi) = self.cfg.console_ports;
            match spec.console_port {
                Some(p) if in_use.contains(&p) => bail!("console port {p} is already in use on {}", self.cfg.name),
                Some(_) => {}
                None => {
                    spec.console_port = Some(
                        (lo..=hi)
                            .find(|p| !in_use.contains(p))
                            .ok_or_else(|| anyhow!("no free console port on {}", self.cfg.name))?,
                    )
                }
            }
        }
        let t = self.journal.begin(Intent::Define { guest: spec.name.clone() })?;
        vmove_model::write_atomic(&self.spec_path(&spec.name), serde_json::to_string_pretty(&spec)?.as_bytes())?;
        let st = {
            let mut g = self.lock_guests();
            let guest = Guest { spec: spec.clone(), state: GuestState::Stopped, pid: None, started_ms: None, qmp: None };
            let st = status(&guest);
            g.insert(spec.name.clone(), guest);
            st
        };
        self.journal.done(t);
        tracing::info!(guest = %spec.name, "defined");
        Ok(st)
    }

    pub(crate) fn memory_total_mib(&self) -> u64 {
        let real = crate::inventory::meminfo().0;
        self.cfg.memory_limit_mib.map_or(real, |l| l.min(real))
    }

    pub(crate) fn volume_path(&self, pool: &str, volume: &str) -> Result<PathBuf> {
        let p = self
            .cfg
            .pools
            .iter()
            .find(|p| p.name == pool)
            .ok_or_else(|| anyhow!("storage pool {pool} is not on {}", self.cfg.name))?;
        Ok(p.path.join(volume))
    }

    /// Starts a defined guest and waits until QEMU reports it running.
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<GuestStatus> {
        self.start_qemu(name, false).await
    }

    /// Starts a defined guest's QEMU waiting for an incoming migration (`-incoming defer`).
    pub async fn start_incoming(self: &Arc<Self>, name: &str) -> Result<GuestStatus> {
        self.start_qemu(name, true).await
    }

    async fn start_qemu(self: &Arc<Self>, name: &str, incoming: bool) -> Result<GuestStatus> {
        let lock = self.op_lock(name);
        let _op = lock.lock().await;
        let spec = {
            let g = self.lock_guests();
            let guest = g.get(name).ok_or_else(|| self.no_such(name))?;
            if guest.pid.is_some() {
                bail!("guest {name} is already running on {}", self.cfg.name);
            }
            guest.spec.clone()
        };
        let t = self.journal.begin(Intent::Start { guest: name.to_string() })?;
        let r = self.launch(&spec, incoming).await;
        self.journal.done(t);
        r?;
        self.show(name)
    }

    /// The guest's QMP connection and state.
    pub fn qmp_of(&self, name: &str) -> Result<(Qmp, GuestState)> {
        let g = self.lock_guests();
        let guest = g.get(name).ok_or_else(|| self.no_such(name))?;
        match &guest.qmp {
            Some(q) if guest.pid.is_some() => Ok((q.clone(), guest.state)),
            _ => bail!("guest {name} has no running QEMU on {}", self.cfg.name),
        }
    }

    /// The guest's run directory.
    pub fn run_dir_of(&self, name: &str) -> PathBuf {
        self.run_dir(name)
    }

    /// Records a new run state.
    pub fn set_state(&self, name: &str, st: GuestState) {
        if let Some(g) = self.lock_guests().get_mut(name) {
            g.state = st;
        }
    }

    /// Drops a stopped guest's definition without touching its leases (it moved away).
    pub async fn forget(&self, name: &str) -> Result<()> {
        let lock = self.op_lock(name);
        let _op = lock.lock().await;
        let spec = self.stopped_spec(name)?;
        let t = self.journal.begin(Intent::Undefine { guest: name.to_string() })?;
        self.unplug_taps(&spec).await;
        self.remove_definition(name)?;
        self.journal.done(t);
        tracing::info!(guest = %name, "forgotten (moved away)");
        Ok(())
    }

    async fn launch(self: &Arc<Self>, spec: &GuestSpec, incoming: bool) -> Result<()> {
        let mut disks = Vec::new();
        for d in &spec.disks {
            let path = self.volume_path(&d.pool, &d.volume)?;
            if !path.exists() {
                let size = d.size_mib.ok_or_else(|| {
                    anyhow!("volume {}/{} does not exist and has no size to create it with", d.pool, d.volume)
                })?;
                let f = std::fs::File::create(&path).with_context(|| format!("create volume {}", path.display()))?;
                f.set_len(size * 1024 * 1024)?;
            }
            let direct = qemu::supports_o_direct(&path);
            disks.push((path, direct));
        }
        if !incoming {
            self.attach_volumes(spec, vmove_host::lease::Take::Exclusive)?;
        }
        let nics = self.plug_taps(spec).await?;
        let direct_boot = match &spec.boot {
            BootSource::Lab { dirty_mb_s, wss_mib } => {
                let (Some(k), Some(i)) = (&self.cfg.lab_kernel, &self.cfg.lab_initrd) else {
                    bail!("{} has no lab image configured", self.cfg.name);
                };
                let opts = vmove_host::boot::BootOpts {
                    name: spec.name.clone(),
                    ip: spec.nics.first().and_then(|n| n.ip.clone()),
                    dirty_mb_s: *dirty_mb_s,
                    wss_mib: *wss_mib,
                };
                Some((k.clone(), i.clone(), vmove_host::boot::cmdline(&opts)))
            }
            BootSource::Disk => None,
        };
        let run_dir = self.run_dir(&spec.name);
        let launch = Launch {
            accel: self.accel.clone(),
            run_dir: run_dir.clone(),
            direct_boot,
            disks,
            nics,
            incoming: incoming.then(|| "defer".to_string()),
            console_port: spec.console_port,
        };
        let args = qemu::args(spec, &launch);
        let mut child = match qemu::spawn(qemu::QEMU_BIN, &args, &run_dir) {
            Ok(c) => c,
            Err(e) => {
                self.unplug_taps(spec).await;
                return Err(e.into());
            }
        };
        let pid = child.id();
        let started_ms = now_ms();
        vmove_model::write_atomic(
            &self.run_record_path(&spec.name),
            serde_json::to_string(&RunRecord { pid, started_ms })?.as_bytes(),
        )?;
        let qmp = match Qmp::connect_retry(&RunFiles::qmp(&run_dir), Duration::from_secs(20)).await {
            Ok(q) => q,
            Err(e) => {
                proc::kill9(pid);
                let _ = child.wait();
                let _ = std::fs::remove_file(self.run_record_path(&spec.name));
                self.unplug_taps(spec).await;
                let log = qemu::tail(&RunFiles::qemu_log(&run_dir), 400);
                let last = log.lines().last().unwrap_or("").trim().to_string();
                bail!("QEMU for {} did not start: {} ({e})", spec.name, if last.is_empty() { "no output" } else { &last });
            }
        };
        let st = qmp.query_status().await.context("query-status")?;
        {
            let mut g = self.lock_guests();
            if let Some(guest) = g.get_mut(&spec.name) {
                guest.pid = Some(pid);
                guest.started_ms = Some(started_ms);
                guest.state = if incoming {
                    GuestState::Incoming
                } else if st.running {
                    GuestState::Running
                } else {
                    GuestState::Paused
                };
                guest.qmp = Some(qmp.clone());
            }
        }
        tracing::info!(guest = %spec.name, pid, "started");
        let me = self.clone();
        let name = spec.name.clone();
        tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            me.on_exit(&name, pid).await;
        });
        Ok(())
    }

    /// Takes the leases of the guest's volumes for this host.
    pub fn attach_volumes(&self, spec: &GuestSpec, how: vmove_host::lease::Take) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for d in &spec.disks {
            let path = self.volume_path(&d.pool, &d.volume)?;
            let pool = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            let l = vmove_host::lease::acquire(&pool, &d.volume, &self.cfg.name, &spec.name, how)?;
            vmove_host::lease::record_address(&pool, &d.volume, &self.cfg.name, &self.cfg.listen)?;
            notes.push(format!("{}/{} (lease epoch {})", d.pool, d.volume, l.epoch));
        }
        Ok(notes)
    }

    /// Releases this host's leases of a stopped guest's volumes.
    pub fn detach_volumes(&self, name: &str) -> Result<Vec<String>> {
        let spec = self.stopped_spec(name)?;
        let mut notes = Vec::new();
        for d in &spec.disks {
            let path = self.volume_path(&d.pool, &d.volume)?;
            let pool = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            if vmove_host::lease::release(&pool, &d.volume, &self.cfg.name)? {
                notes.push(format!("{}/{}", d.pool, d.volume));
            }
        }
        Ok(notes)
    }

    /// Releases this host's leases (or incoming claims) of a spec's volumes, defined or not.
    pub fn release_leases(&self, spec: &GuestSpec) -> Result<usize> {
        let mut n = 0;
        for d in &spec.disks {
            let path = self.volume_path(&d.pool, &d.volume)?;
            let pool = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            if vmove_host::lease::release(&pool, &d.volume, &self.cfg.name)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Removes a stopped guest's taps.
    pub async fn detach_interfaces(&self, name: &str) -> Result<usize> {
        let spec = self.stopped_spec(name)?;
        self.unplug_taps(&spec).await;
        Ok(spec.nics.len())
    }

    /// A defined guest's spec, refusing while QEMU runs.
    pub fn stopped_spec(&self, name: &str) -> Result<GuestSpec> {
        let g = self.lock_guests();
        let guest = g.get(name).ok_or_else(|| self.no_such(name))?;
        if guest.pid.is_some() {
            bail!("guest {name} is running on {}", self.cfg.name);
        }
        Ok(guest.spec.clone())
    }

    /// A defined guest's spec.
    pub fn spec(&self, name: &str) -> Option<GuestSpec> {
        self.lock_guests().get(name).map(|g| g.spec.clone())
    }

    /// Creates a bridge unless it exists.
    pub async fn ensure_bridge(&self, bridge: &str) -> Result<bool> {
        let nl = Netlink::connect()?;
        let existed = nl.link(bridge).await?.is_some();
        nl.ensure_bridge(bridge).await?;
        Ok(!existed)
    }

    /// Creates the guest's taps and puts them on their networks' bridges.
    pub async fn plug_taps(&self, spec: &GuestSpec) -> Result<Vec<(String, String)>> {
        let nl = Netlink::connect()?;
        let mut out = Vec::new();
        for (i, n) in spec.nics.iter().enumerate() {
            let net = self
                .cfg
                .networks
                .iter()
                .find(|x| x.name == n.network)
                .ok_or_else(|| anyhow!("network {} is not served by {}", n.network, self.cfg.name))?;
            if nl.link(&net.bridge).await?.is_none() {
                bail!("bridge {} does not exist on {}", net.bridge, self.cfg.name);
            }
            let t = tap::tap_name(&spec.name, i);
            tap::create(&t)?;
            nl.set_controller(&t, &net.bridge).await?;
            nl.set_up(&t).await?;
            out.push((t, n.mac.clone()));
        }
        Ok(out)
    }

    pub(crate) async fn unplug_taps(&self, spec: &GuestSpec) {
        for i in 0..spec.nics.len() {
            let t = tap::tap_name(&spec.name, i);
            if let Err(e) = tap::delete(&t) {
                tracing::warn!(guest = %spec.name, "cannot remove tap {t}: {e:#}");
            }
        }
    }

    /// Called once QEMU has exited.
    pub(crate) async fn on_exit(&self, name: &str, pid: u32) {
        let spec = {
            let mut g = self.lock_guests();
            let Some(guest) = g.get_mut(name) else { return };
            if guest.pid != Some(pid) {
                return;
            }
            guest.state = if guest.state == GuestState::ShuttingDown || guest.state == GuestState::Stopped {
                GuestState::Stopped
            } else {
                GuestState::Crashed
            };
            guest.pid = None;
            guest.qmp = None;
            guest.started_ms = None;
            guest.spec.clone()
        };
        let _ = std::fs::remove_file(self.run_record_path(name));
        self.unplug_taps(&spec).await;
        tracing::info!(guest = %name, pid, "QEMU exited");
    }

    /// Stops a guest: ACPI powerdown and wait up to `timeout`, or kill with `force`.
    pub async fn stop(&self, name: &str, force: bool, timeout: Duration) -> Result<GuestStatus> {
        let lock = self.op_lock(name);
        let _op = lock.lock().await;
        let (pid, qmp) = {
            let mut g = self.lock_guests();
            let guest = g.get_mut(name).ok_or_else(|| self.no_such(name))?;
            let Some(pid) = guest.pid else {
                return Ok(status(guest));
            };
            guest.state = GuestState::ShuttingDown;
            (pid, guest.qmp.clone())
        };
        let t = self.journal.begin(Intent::Stop { guest: name.to_string(), force })?;
        let result = if force {
            proc::kill9(pid);
            self.wait_stopped(name, pid, Duration::from_secs(15)).await
        } else {
            match &qmp {
                Some(q) => {
                    q.system_powerdown().await.context("system_powerdown")?;
                }
                None => bail!("no QMP connection to guest {name}"),
            }
            self.wait_stopped(name, pid, timeout).await.map_err(|_| {
                anyhow!(
                    "guest {name} did not stop within {} s of the ACPI power button; it is still running (use --force to kill it)",
                    timeout.as_secs()
                )
            })
        };
        if result.is_err() && !force {
            let mut g = self.lock_guests();
            if let Some(guest) = g.get_mut(name) {
                if guest.pid == Some(pid) {
                    guest.state = GuestState::Running;
                }
            }
        }
        self.journal.done(t);
        result?;
        self.show(name)
    }

    pub(crate) async fn wait_stopped(&self, name: &str, pid: u32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let gone = self.lock_guests().get(name).is_none_or(|g| g.pid != Some(pid));
            if gone {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timeout");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes a stopped guest's definition.
    pub async fn undefine(&self, name: &str) -> Result<()> {
        let lock = self.op_lock(name);
        let _op = lock.lock().await;
        {
            let g = self.lock_guests();
            let guest = g.get(name).ok_or_else(|| self.no_such(name))?;
            if guest.pid.is_some() {
                bail!("guest {name} is running on {}; stop it first", self.cfg.name);
            }
        }
        let t = self.journal.begin(Intent::Undefine { guest: name.to_string() })?;
        let _ = self.detach_volumes(name);
        self.remove_definition(name)?;
        self.journal.done(t);
        tracing::info!(guest = %name, "undefined");
        Ok(())
    }

    pub(crate) fn remove_definition(&self, name: &str) -> Result<()> {
        let p = self.spec_path(name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
        }
        // Keep the last console log for forensics (`run/.<name>.previous/`).
        let prev = self.cfg.run_dir.join(format!(".{name}.previous"));
        let _ = std::fs::remove_dir_all(&prev);
        let _ = std::fs::rename(self.run_dir(name), &prev);
        self.lock_guests().remove(name);
        Ok(())
    }

    /// Measures the guest's memory dirty rate over `calc_s` seconds, bytes/s.
    pub async fn dirty_rate(&self, name: &str, calc_s: u64) -> Result<u64> {
        let (q, _) = self.qmp_of(name)?;
        q.calc_dirty_rate(calc_s.clamp(1, 60)).await.context("calc-dirty-rate")?;
        let deadline = Instant::now() + Duration::from_secs(calc_s + 10);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let info = q.query_dirty_rate().await.context("query-dirty-rate")?;
            if info.status.as_str() == "measured" {
                return Ok(info.dirty_rate_mib_per_s.unwrap_or(0) << 20);
            }
            if Instant::now() > deadline {
                bail!("dirty rate of {name} not measured within {} s", calc_s + 10);
            }
        }
    }

    /// The tail of a guest's serial console.
    pub fn log(&self, name: &str, max: u64) -> Result<String> {
        if !self.lock_guests().contains_key(name) {
            return Err(self.no_such(name));
        }
        Ok(qemu::tail(&RunFiles::serial_log(&self.run_dir(name)), max))
    }

}

pub(crate) fn status(g: &Guest) -> GuestStatus {
    GuestStatus {
        spec: g.spec.clone(),
        state: g.state,
        pid: g.pid,
        uptime_s: g.started_ms.map(|s| now_ms().saturating_sub(s) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs() {
        assert!(valid_name("vm-1.example_2"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
        assert!(valid_mac("52:54:00:12:34:56"));
        assert!(!valid_mac("53:54:00:12:34:56"), "multicast bit");
        assert!(!valid_mac("52:54:00:12:34"));
    }
}
