//! Restart reconciliation: what a restarted agent finds (QEMU processes, run records,
//! leases, journal intents) and how it settles it. It never starts a guest by itself.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use vmove_api::GuestState;
use vmove_host::{proc, qemu};
use vmove_host::qemu::RunFiles;
use vmove_qmp::Qmp;

use crate::guests::{now_ms, Agent, RunRecord};
use crate::journal::Intent;

impl Agent {
    /// After a restart: re-adopt running QEMUs, clean up after dead ones, finish or drop
    /// the intents left in the journal. Never starts a second QEMU for a guest.
    pub async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let ours = self.scan_qemus();
        let names: Vec<String> = self.lock_guests().keys().cloned().collect();
        for name in &names {
            let record: Option<RunRecord> = std::fs::read_to_string(self.run_record_path(name))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let pid = ours.get(name).copied().or(record.as_ref().map(|r| r.pid).filter(|p| {
                proc::alive(*p) && proc::cmdline(*p).iter().any(|a| a.starts_with(&format!("guest={name},")))
            }));
            match pid {
                Some(pid) => self.adopt(name, pid, record.map(|r| r.started_ms)).await,
                None => {
                    if record.is_some() {
                        tracing::warn!(guest = %name, "QEMU is gone since the last run; guest is stopped");
                    }
                    let _ = std::fs::remove_file(self.run_record_path(name));
                    let spec = self.lock_guests().get(name).map(|g| g.spec.clone());
                    if let Some(spec) = spec {
                        self.unplug_taps(&spec).await;
                    }
                }
            }
        }
        for name in &names {
            let Some((holder, addr)) = self.volume_held_elsewhere(name) else { continue };
            // Drop the guest only when the lease holder confirms it has the guest: a
            // migration that stopped half-way must not lose the only definition.
            if !self.holder_has(name, &holder, addr.as_deref()).await {
                tracing::warn!(guest = %name, "its volumes are leased to {holder}, which does not confirm having it: keeping the definition (the lease stops it from starting here)");
                continue;
            }
            let running = self.lock_guests().get(name).and_then(|g| g.pid);
            if let Some(pid) = running {
                tracing::warn!(guest = %name, pid, "its volumes are leased to {holder}: fencing this copy");
                proc::kill9(pid);
                self.wait_stopped(name, pid, Duration::from_secs(10)).await.ok();
            }
            tracing::warn!(guest = %name, "moved to {holder} while this agent was down; dropping the local definition");
            let spec = self.lock_guests().get(name).map(|g| g.spec.clone());
            if let Some(spec) = spec {
                self.unplug_taps(&spec).await;
            }
            self.remove_definition(name)?;
        }
        for (name, pid) in ours {
            if !names.contains(&name) {
                tracing::warn!(guest = %name, pid, "QEMU of an undefined guest: killing it");
                proc::kill9(pid);
            }
        }
        for e in self.journal.pending()? {
            tracing::info!(seq = e.seq, intent = ?e.intent, "reconciling an unfinished intent");
            if let Intent::Undefine { guest } = &e.intent {
                let running = self.lock_guests().get(guest).is_some_and(|g| g.pid.is_some());
                if !running {
                    self.remove_definition(guest)?;
                }
            }
            self.journal.forget(e.seq);
        }
        Ok(())
    }

    /// Another host that holds the lease of one of the guest's volumes, and its address.
    pub fn volume_held_elsewhere(&self, name: &str) -> Option<(String, Option<String>)> {
        let spec = self.spec(name)?;
        spec.disks.iter().find_map(|d| {
            let path = self.volume_path(&d.pool, &d.volume).ok()?;
            let l = vmove_host::lease::read(path.parent()?, &d.volume).ok()??;
            (l.holder != self.cfg.name && l.incoming.as_deref() != Some(&self.cfg.name)).then_some((l.holder, l.holder_address))
        })
    }

    /// Whether another host's agent confirms that it has the guest defined.
    async fn holder_has(&self, name: &str, holder: &str, addr: Option<&str>) -> bool {
        let Some(addr) = addr.and_then(|a| a.parse().ok()) else { return false };
        let c = vmove_api::AgentClient::new(addr, holder, self.peer_tls.clone()).with_timeout(Duration::from_secs(5));
        c.call_raw(&vmove_api::Request::PeerGuest { name: name.to_string(), claim: None }).await.is_ok()
    }

    /// QEMU processes started by this agent (their pid file is in our run dir), by guest.
    fn scan_qemus(&self) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        let run = self.cfg.run_dir.display().to_string();
        let Ok(rd) = std::fs::read_dir("/proc") else { return out };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let args = proc::cmdline(pid);
            if !args.first().is_some_and(|a| a.ends_with(qemu::QEMU_BIN)) || !proc::alive(pid) {
                continue;
            }
            let pidfile = args.windows(2).find(|w| w[0] == "-pidfile").map(|w| w[1].clone());
            if !pidfile.is_some_and(|p| Path::new(&p).starts_with(&run)) {
                continue;
            }
            let name = args
                .windows(2)
                .find(|w| w[0] == "-name")
                .and_then(|w| w[1].strip_prefix("guest=").map(|r| r.split(',').next().unwrap_or("").to_string()));
            if let Some(n) = name {
                out.insert(n, pid);
            }
        }
        out
    }

    async fn adopt(self: &Arc<Self>, name: &str, pid: u32, started_ms: Option<u64>) {
        let run_dir = self.run_dir(name);
        let qmp = Qmp::connect(&RunFiles::qmp(&run_dir), Duration::from_secs(5)).await;
        if let Ok(q) = &qmp {
            if q.query_status().await.is_ok_and(|s| s.status.as_str() == "postmigrate") {
                tracing::warn!(guest = %name, pid, "QEMU finished migrating the guest away while this agent was down: ending it");
                proc::kill9(pid);
                for _ in 0..100 {
                    if !proc::alive(pid) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = std::fs::remove_file(self.run_record_path(name));
                if let Some(spec) = self.spec(name) {
                    self.unplug_taps(&spec).await;
                }
                let _ = self.remove_definition(name);
                return;
            }
        }
        if let Ok(q) = &qmp {
            // An outgoing migration that nobody drives any more (this agent restarted):
            // cancel it, so the guest runs here again instead of staying paused.
            let st = q.query_migrate().await.ok().and_then(|i| i.status).map(|s| s.as_str().to_string()).unwrap_or_default();
            if matches!(st.as_str(), "setup" | "active" | "pre-switchover" | "device") {
                tracing::warn!(guest = %name, "cancelling an outgoing migration ({st}) left from before the restart");
                let _ = q.migrate_cancel().await;
                for _ in 0..100 {
                    let s = q.query_migrate().await.ok().and_then(|i| i.status).map(|s| s.as_str().to_string()).unwrap_or_default();
                    if !matches!(s.as_str(), "setup" | "active" | "pre-switchover" | "device" | "cancelling") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if q.query_status().await.is_ok_and(|s| !s.running && s.status.as_str() != "postmigrate") {
                    let _ = q.cont().await;
                }
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
        let started_ms = started_ms.unwrap_or_else(now_ms);
        let _ = vmove_model::write_atomic(
            &self.run_record_path(name),
            serde_json::to_string(&RunRecord { pid, started_ms }).unwrap_or_default().as_bytes(),
        );
        {
            let mut g = self.lock_guests();
            if let Some(guest) = g.get_mut(name) {
                guest.pid = Some(pid);
                guest.state = state;
                guest.started_ms = Some(started_ms);
                guest.qmp = qmp.ok();
            }
        }
        tracing::info!(guest = %name, pid, ?state, "re-adopted QEMU");
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            while proc::alive(pid) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            me.on_exit(&name, pid).await;
        });
    }
}
