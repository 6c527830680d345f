//! Restart reconciliation: what a restarted agent finds (QEMU processes, run records,
//! leases, journal intents) and how it settles it. It never starts a guest by itself.
use std::sync::Arc;
use std::time::Duration;

use vmove_api::{GuestState, Request};
use vmove_host::qemu::RunFiles;

use crate::error::Result;
use crate::guests::Agent;
use crate::state::{run_key, Intent, IntentRec, RunRec};

impl Agent {
    /// After a restart: re-adopt running QEMUs, clean up after dead ones, finish or drop
    /// the intents left in the journal. Never starts a second QEMU for a guest.
    pub async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let ours = self.host.scan_qemus(&self.cfg.run_dir);
        let names: Vec<String> = self.lock_guests().keys().cloned().collect();
        for name in &names {
            let record = self.state.get::<RunRec>(&run_key(name)).await?;
            let pid = ours.get(name).copied().or(record.as_ref().map(|r| r.pid).filter(|p| self.host.is_qemu_of(*p, name)));
            match pid {
                Some(pid) => self.adopt(name, pid, record.map(|r| r.started_ms)).await?,
                None => {
                    if record.is_some() {
                        tracing::warn!(guest = %name, "QEMU is gone since the last run; guest is stopped");
                        self.state.delete(&run_key(name)).await?;
                    }
                    if let Some(spec) = self.spec(name) {
                        self.unplug_taps(&spec).await;
                    }
                }
            }
        }
        for name in &names {
            let Some(spec) = self.spec(name) else { continue };
            let Some((holder, addr)) = self.volume_held_elsewhere(&spec).await? else { continue };
            // Drop the guest only when the lease holder confirms it has the guest: a
            // migration that stopped half-way must not lose the only definition.
            if !self.holder_has(name, &holder, addr.as_deref()).await {
                tracing::warn!(guest = %name, "its volumes are leased to {holder}, which does not confirm having it: keeping the definition (the lease stops it from starting here)");
                continue;
            }
            let running = self.lock_guests().get(name).and_then(|g| g.pid);
            if let Some(pid) = running {
                tracing::warn!(guest = %name, pid, "its volumes are leased to {holder}: fencing this copy");
                self.host.kill(pid);
                let _ = self.wait_stopped(name, pid, Duration::from_secs(10)).await;
            }
            tracing::warn!(guest = %name, "moved to {holder} while this agent was down; dropping the local definition");
            self.unplug_taps(&spec).await;
            self.remove_definition(name).await?;
            self.unclaim(name).await?;
        }
        for (name, pid) in ours {
            if !names.contains(&name) {
                tracing::warn!(guest = %name, pid, "QEMU of an undefined guest: killing it");
                self.host.kill(pid);
            }
        }
        for (key, e) in self.state.list::<IntentRec>("journal/").await? {
            tracing::info!(key, intent = ?e.intent, "reconciling an unfinished intent");
            if let Intent::Undefine { guest } = &e.intent {
                let running = self.lock_guests().get(guest).is_some_and(|g| g.pid.is_some());
                if !running && self.spec(guest).is_some() {
                    self.remove_definition(guest).await?;
                }
            }
            self.state.delete(&key).await?;
        }
        Ok(())
    }

    /// Whether another host's agent confirms that it has the guest defined.
    async fn holder_has(&self, name: &str, holder: &str, addr: Option<&str>) -> bool {
        let Some(addr) = addr else { return false };
        let Ok(c) = self.peer_client(holder, addr) else { return false };
        c.with_timeout(Duration::from_secs(5)).call_raw(&Request::PeerGuest { name: name.to_string(), claim: None }).await.is_ok()
    }

    async fn adopt(self: &Arc<Self>, name: &str, pid: u32, started_ms: Option<u64>) -> Result<()> {
        let qmp = self.host.connect_qmp(&RunFiles::qmp(&self.run_dir(name)), Duration::from_secs(5)).await;
        if let Ok(q) = &qmp {
            if q.query_status().await.is_ok_and(|s| s.status.as_str() == "postmigrate") {
                tracing::warn!(guest = %name, pid, "QEMU finished migrating the guest away while this agent was down: ending it");
                self.host.kill(pid);
                for _ in 0..100 {
                    if !self.host.alive(pid) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                self.state.delete(&run_key(name)).await?;
                if let Some(spec) = self.spec(name) {
                    self.unplug_taps(&spec).await;
                }
                self.remove_definition(name).await?;
                self.unclaim(name).await?;
                return Ok(());
            }
            // An outgoing migration that nobody drives any more (this agent restarted):
            // cancel it, so the guest runs here again instead of staying paused.
            let active = |s: &str| matches!(s, "setup" | "active" | "pre-switchover" | "device");
            let st = q.query_migrate().await.ok().and_then(|i| i.status).map(|s| s.as_str().to_string()).unwrap_or_default();
            if active(&st) {
                tracing::warn!(guest = %name, "cancelling an outgoing migration ({st}) left from before the restart");
                let _ = q.migrate_cancel().await;
                for _ in 0..100 {
                    let s = q.query_migrate().await.ok().and_then(|i| i.status).map(|s| s.as_str().to_string()).unwrap_or_default();
                    if !active(&s) && s != "cancelling" {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if q.query_status().await.is_ok_and(|s| !s.running && s.status.as_str() != "postmigrate") {
                    let _ = q.cont().await;
                }
                self.unclaim(name).await?;
            }
        }
        let state = match &qmp {
            Ok(q) => match q.query_status().await {
                Ok(s) if s.running => GuestState::Running,
                Ok(s) if s.status.as_str() == "inmigrate" => GuestState::Incoming,
                Ok(_) => GuestState::Paused,
                Err(_) => GuestState::Running,
            },
            Err(e) => {
                tracing::warn!(guest = %name, "adopted QEMU {pid} without QMP: {e}");
                GuestState::Running
            }
        };
        let started_ms = started_ms.unwrap_or_else(crate::now_ms);
        self.state.put(&run_key(name), &RunRec { pid, started_ms }).await?;
        if let Some(guest) = self.lock_guests().get_mut(name) {
            guest.pid = Some(pid);
            guest.state = state;
            guest.started_ms = Some(started_ms);
            guest.qmp = qmp.ok();
        }
        tracing::info!(guest = %name, pid, ?state, "re-adopted QEMU");
        self.metrics.readopted();
        let exit = self.host.wait_exit(pid);
        self.watch_exit(name, pid, exit);
        Ok(())
    }
}
