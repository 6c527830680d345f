//! Defining and undefining guests: names, MACs, networks, pools, memory, console ports.
use vmove_api::{GuestState, GuestStatus};
use vmove_model::GuestSpec;

use super::{status, Agent, Guest};
use crate::error::{fail, Result};
use crate::state::{guest_key, GuestDef, Intent};

/// The host-wide lock of [`Agent::define`] (a key no guest name can take).
const DEFINE_LOCK: &str = "/define";

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

impl Agent {
    /// Persists a guest definition after checking names, MACs, networks, pools and memory.
    pub async fn define(&self, mut spec: GuestSpec) -> Result<GuestStatus> {
        if !vmove_api::valid_name(&spec.name) {
            fail!(InvalidRequest, "invalid guest name {:?}: {}", spec.name, vmove_api::NAME_RULE);
        }
        if spec.vcpus == 0 || spec.memory_mib == 0 {
            fail!(InvalidRequest, "guest {}: vcpus and memory must be positive", spec.name);
        }
        for n in &spec.nics {
            if !valid_mac(&n.mac) {
                fail!(InvalidRequest, "guest {}: invalid MAC address {:?}", spec.name, n.mac);
            }
            if !self.cfg.networks.iter().any(|x| x.name == n.network) {
                fail!(InvalidRequest, "guest {}: network {} is not served by {}", spec.name, n.network, self.cfg.name);
            }
        }
        for d in &spec.disks {
            if !self.cfg.pools.iter().any(|p| p.name == d.pool) {
                fail!(InvalidRequest, "guest {}: storage pool {} is not on {}", spec.name, d.pool, self.cfg.name);
            }
            if !vmove_api::valid_name(&d.volume) {
                fail!(InvalidRequest, "guest {}: invalid volume name {:?}", spec.name, d.volume);
            }
        }
        let lock = self.op_lock(&spec.name);
        let _op = lock.lock().await;
        // One define at a time on this host, whatever the guest: the checks below (memory,
        // MACs, the console port chosen) hold only if no other define slips in between
        // them and the insert (two migrations arriving at once picked the same console
        // port). Not a guest name, so no guest's lock.
        let host_lock = self.op_lock(DEFINE_LOCK);
        let _define = host_lock.lock().await;
        spec.host = self.cfg.name.clone();
        {
            let g = self.lock_guests();
            if g.contains_key(&spec.name) {
                fail!(AlreadyExists, "guest name {} is already in use on {}", spec.name, self.cfg.name);
            }
            for other in g.values() {
                if let Some(m) = spec.macs().find(|m| other.spec.macs().any(|o| o.eq_ignore_ascii_case(m))) {
                    fail!(AlreadyExists, "MAC address {m} is already used by guest {} on {}", other.spec.name, self.cfg.name);
                }
            }
            let used = g.values().fold(0u64, |a, g| a.saturating_add(g.spec.memory_mib));
            let avail = self.memory_total_mib().saturating_sub(self.cfg.memory_reserve_mib).saturating_sub(used);
            if spec.memory_mib > avail {
                fail!(
                    NoCapacity,
                    "not enough memory on {}: guest {} needs {} MiB, {} MiB available (memory is never overcommitted)",
                    self.cfg.name,
                    spec.name,
                    spec.memory_mib,
                    avail
                );
            }
            let in_use: Vec<u16> = g.values().filter_map(|g| g.spec.console_port).collect();
            let (lo, hi) = self.cfg.console_ports;
            match spec.console_port {
                Some(p) if in_use.contains(&p) => fail!(AlreadyExists, "console port {p} is already in use on {}", self.cfg.name),
                Some(_) => {}
                None => match (lo..=hi).find(|p| !in_use.contains(p)) {
                    Some(p) => spec.console_port = Some(p),
                    None => fail!(NoCapacity, "no free console port on {}", self.cfg.name),
                },
            }
        }
        let t = self.journal_begin(Intent::Define { guest: spec.name.clone() }).await?;
        self.state.create(&guest_key(&spec.name), &GuestDef(spec.clone())).await?;
        let st = {
            let mut g = self.lock_guests();
            let guest = Guest { spec: spec.clone(), state: GuestState::Stopped, pid: None, started_ms: None, qmp: None };
            let st = status(&guest);
            g.insert(spec.name.clone(), guest);
            st
        };
        self.journal_done(t).await?;
        tracing::info!(guest = %spec.name, "defined");
        Ok(st)
    }

    /// Removes a stopped guest's definition, releasing its leases.
    pub async fn undefine(&self, name: &str) -> Result<()> {
        let lock = self.op_lock(name);
        let _op = lock.lock().await;
        let spec = self.stopped_spec(name)?;
        let t = self.journal_begin(Intent::Undefine { guest: name.to_string() }).await?;
        self.release_leases(&spec).await?;
        self.remove_definition(name).await?;
        self.journal_done(t).await?;
        tracing::info!(guest = %name, "undefined");
        Ok(())
    }

    /// Drops a stopped guest's definition without touching its leases (it moved away).
    pub async fn forget(&self, name: &str) -> Result<()> {
        let lock = self.op_lock(name);
        let _op = lock.lock().await;
        let spec = self.stopped_spec(name)?;
        let t = self.journal_begin(Intent::Undefine { guest: name.to_string() }).await?;
        self.unplug_taps(&spec).await;
        self.remove_definition(name).await?;
        self.journal_done(t).await?;
        tracing::info!(guest = %name, "forgotten (moved away)");
        Ok(())
    }

    /// Removes the definition from the state and the registry; keeps the last console log
    /// for forensics (`run/.<name>.previous/`).
    pub(crate) async fn remove_definition(&self, name: &str) -> Result<()> {
        self.state.delete(&guest_key(name)).await?;
        self.state.delete(&crate::state::run_key(name)).await?;
        let prev = self.cfg.run_dir.join(format!(".{name}.previous"));
        let _ = std::fs::remove_dir_all(&prev);
        let _ = std::fs::rename(self.run_dir(name), &prev);
        self.lock_guests().remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_mac;

    #[test]
    fn macs() {
        assert!(valid_mac("52:54:00:12:34:56"));
        assert!(!valid_mac("53:54:00:12:34:56"), "multicast bit");
        assert!(!valid_mac("52:54:00:12:34"));
    }
}
