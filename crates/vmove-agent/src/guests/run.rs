//! Running guests: QEMU launch, stop, exit, dirty-rate measurement, console log.
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmove_api::{GuestState, GuestStatus};
use vmove_host::qemu::{self, Launch, RunFiles};
use vmove_model::{BootSource, GuestSpec};

use super::Agent;
use crate::error::{fail, AgentError, Result, ResultExt};
use crate::leases::Take;
use crate::state::{run_key, Intent, RunRec};

/// How long QEMU may take to open its QMP socket.
const QMP_START: Duration = Duration::from_secs(20);

impl Agent {
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
                fail!(WrongState, "guest {name} is already running on {}", self.cfg.name);
            }
            guest.spec.clone()
        };
        let t = self.journal_begin(Intent::Start { guest: name.to_string() }).await?;
        let r = self.launch(&spec, incoming).await;
        self.journal_done(t).await?;
        r?;
        self.show(name)
    }

    async fn disks(&self, spec: &GuestSpec) -> Result<Vec<(std::path::PathBuf, bool)>> {
        let mut disks = Vec::new();
        for d in &spec.disks {
            let path = self.volume_path(&d.pool, &d.volume)?;
            if !path.exists() {
                let Some(size_mib) = d.size_mib else {
                    fail!(NotFound, "volume {}/{} does not exist and has no size to create it with", d.pool, d.volume);
                };
                let Some(bytes) = size_mib.checked_mul(1024 * 1024) else {
                    fail!(InvalidRequest, "volume {}/{}: {size_mib} MiB is too large", d.pool, d.volume);
                };
                let f = std::fs::File::create(&path).with_ctx(|| format!("create volume {}", path.display()))?;
                f.set_len(bytes).with_ctx(|| format!("size volume {}", path.display()))?;
            }
            let direct = qemu::supports_o_direct(&path);
            disks.push((path, direct));
        }
        Ok(disks)
    }

    async fn launch(self: &Arc<Self>, spec: &GuestSpec, incoming: bool) -> Result<()> {
        let disks = self.disks(spec).await?;
        if !incoming {
            self.attach_volumes(spec, Take::Exclusive).await?;
        }
        let nics = self.plug_taps(spec).await?;
        let direct_boot = match &spec.boot {
            BootSource::Lab { dirty_mb_s, wss_mib, disk_mb_s } => {
                let (Some(k), Some(i)) = (&self.cfg.lab_kernel, &self.cfg.lab_initrd) else {
                    self.unplug_taps(spec).await;
                    fail!(InvalidRequest, "{} has no lab image configured", self.cfg.name);
                };
                let opts = vmove_host::boot::BootOpts {
                    name: spec.name.clone(),
                    ip: spec.nics.first().and_then(|n| n.ip.clone()),
                    dirty_mb_s: *dirty_mb_s,
                    wss_mib: *wss_mib,
                    disk_mb_s: *disk_mb_s,
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
        let pid = match self.host.spawn_qemu(&args, &run_dir).await {
            Ok(p) => p,
            Err(e) => {
                self.unplug_taps(spec).await;
                return Err(e);
            }
        };
        let started_ms = crate::now_ms();
        let exit = self.host.wait_exit(pid);
        let ready = async {
            self.state.put(&run_key(&spec.name), &RunRec { pid, started_ms }).await?;
            let q = self.host.connect_qmp(&RunFiles::qmp(&run_dir), QMP_START).await?;
            let st = q.query_status().await.ctx("query-status")?;
            Ok::<_, AgentError>((q, st))
        };
        let (qmp, st) = match ready.await {
            Ok(x) => x,
            Err(e) => {
                self.host.kill(pid);
                exit.await;
                let _ = self.state.delete(&run_key(&spec.name)).await;
                self.unplug_taps(spec).await;
                fail!(Qemu, "QEMU for {} did not start: {} ({})", spec.name, qemu::last_words(&run_dir), e.message);
            }
        };
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
                guest.qmp = Some(qmp);
            }
        }
        tracing::info!(guest = %spec.name, pid, "started");
        self.watch_exit(&spec.name, pid, exit);
        Ok(())
    }

    /// Calls [`Agent::on_exit`] when QEMU `pid` of guest `name` ends.
    pub(crate) fn watch_exit(self: &Arc<Self>, name: &str, pid: u32, exit: futures::future::BoxFuture<'static, ()>) {
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            exit.await;
            me.on_exit(&name, pid).await;
        });
    }

    /// Called once QEMU has exited.
    pub(crate) async fn on_exit(&self, name: &str, pid: u32) {
        let spec = {
            let mut g = self.lock_guests();
            let Some(guest) = g.get_mut(name) else { return };
            if guest.pid != Some(pid) {
                return;
            }
            guest.state = if matches!(guest.state, GuestState::ShuttingDown | GuestState::Stopped) {
                GuestState::Stopped
            } else {
                GuestState::Crashed
            };
            guest.pid = None;
            guest.qmp = None;
            guest.started_ms = None;
            guest.spec.clone()
        };
        if let Err(e) = self.state.delete(&run_key(name)).await {
            tracing::error!(guest = %name, "cannot remove the run record: {e}");
        }
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
                return Ok(super::status(guest));
            };
            guest.state = GuestState::ShuttingDown;
            (pid, guest.qmp.clone())
        };
        let t = self.journal_begin(Intent::Stop { guest: name.to_string(), force }).await?;
        let result = if force {
            self.host.kill(pid);
            self.wait_stopped(name, pid, Duration::from_secs(15)).await
        } else {
            let asked = match &qmp {
                Some(q) => q.system_powerdown().await.ctx("system_powerdown"),
                None => Err(AgentError::wrong_state(format!("no QMP connection to guest {name}"))),
            };
            match asked {
                Ok(()) => self.wait_stopped(name, pid, timeout).await.map_err(|_| {
                    AgentError::new(
                        vmove_api::ErrorCode::Timeout,
                        format!(
                            "guest {name} did not stop within {} s of the ACPI power button; it is still running (use --force to kill it)",
                            timeout.as_secs()
                        ),
                    )
                }),
                Err(e) => Err(e),
            }
        };
        if result.is_err() && !force {
            if let Some(guest) = self.lock_guests().get_mut(name) {
                if guest.pid == Some(pid) {
                    guest.state = GuestState::Running;
                }
            }
        }
        self.journal_done(t).await?;
        result?;
        self.show(name)
    }

    /// Waits until QEMU `pid` of `name` has exited (the registry says so).
    pub(crate) async fn wait_stopped(&self, name: &str, pid: u32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.lock_guests().get(name).is_none_or(|g| g.pid != Some(pid)) {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                fail!(Timeout, "guest {name} did not stop within {} s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Measures the guest's memory dirty rate over `period` (QEMU `calc-dirty-rate`, bytes/s:
    /// under KVM every page (`dirty-bitmap`); under TCG page sampling, since TCG's writes do
    /// not reach the dirty-rate bitmap (it measured 0 for a guest writing 40 MB/s); in
    /// milliseconds where QEMU can, else whole seconds).
    pub async fn dirty_rate(&self, name: &str, period: Duration) -> Result<u64> {
        let (q, _) = self.qmp_of(name)?;
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).clamp(100, 60_000);
        let bitmap = self.accel == "kvm";
        let waited = if (bitmap && q.calc_dirty_rate_bitmap_ms(ms).await.is_ok()) || q.calc_dirty_rate_ms(ms).await.is_ok() {
            Duration::from_millis(ms)
        } else {
            let s = ms.div_ceil(1000);
            q.calc_dirty_rate(s).await.ctx("calc-dirty-rate")?;
            Duration::from_secs(s)
        };
        tokio::time::sleep(waited).await;
        let deadline = Instant::now() + waited + Duration::from_secs(10);
        loop {
            let info = q.query_dirty_rate().await.ctx("query-dirty-rate")?;
            if info.status.as_str() == "measured" {
                return Ok(info.dirty_rate_mib_per_s.unwrap_or(0).saturating_mul(1 << 20));
            }
            if Instant::now() > deadline {
                fail!(Timeout, "dirty rate of {name} not measured within {} s", (waited + Duration::from_secs(10)).as_secs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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
