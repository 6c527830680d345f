//! A guest's volumes (paths and leases) and network devices (bridges and taps).
use std::path::PathBuf;

use vmove_model::GuestSpec;

use super::Agent;
use crate::error::{fail, Result};
use crate::leases::{Lease, Leases, Take};

impl Agent {
    /// The leases of a pool.
    pub(crate) fn pool_leases(&self, pool: &str) -> Result<&Leases> {
        match self.leases.get(pool) {
            Some(l) => Ok(l),
            None => fail!(NotFound, "storage pool {pool} is not on {}", self.cfg.name),
        }
    }

    /// A volume's file.
    pub(crate) fn volume_path(&self, pool: &str, volume: &str) -> Result<PathBuf> {
        match self.cfg.pools.iter().find(|p| p.name == pool) {
            Some(p) => Ok(p.path.join(volume)),
            None => fail!(NotFound, "storage pool {pool} is not on {}", self.cfg.name),
        }
    }

    /// The records that hold a guest for a host: each volume's lease, and on etcd the
    /// guest's ownership (`owners/<guest>`), as `(leases, record name, what it is)`.
    fn holds<'a>(&'a self, spec: &'a GuestSpec) -> Result<Vec<(&'a Leases, &'a str, String)>> {
        let mut v = Vec::new();
        if let Some(o) = &self.owners {
            v.push((o, spec.name.as_str(), format!("guest {}", spec.name)));
        }
        for d in &spec.disks {
            v.push((self.pool_leases(&d.pool)?, d.volume.as_str(), format!("{}/{}", d.pool, d.volume)));
        }
        Ok(v)
    }

    /// Takes the leases of the guest's volumes (and on etcd its ownership) for this host.
    pub async fn attach_volumes(&self, spec: &GuestSpec, how: Take) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for (leases, name, what) in self.holds(spec)? {
            let l = leases.acquire(name, &self.cfg.name, &spec.name, how, &self.cfg.listen).await?;
            notes.push(format!("{what} (lease epoch {})", l.epoch));
        }
        Ok(notes)
    }

    /// Claims again, on this host's new etcd lease, what it holds of a guest (after its
    /// lease was lost, or at a restart): `leased` if another host holds any of it now.
    pub async fn reattach(&self, spec: &GuestSpec) -> Result<()> {
        for (leases, name, _) in self.holds(spec)? {
            leases.reattach(name, &self.cfg.name, &spec.name, &self.cfg.listen).await?;
        }
        Ok(())
    }

    /// Releases this host's leases (or incoming claims) of a spec's volumes, defined or not
    /// (on etcd also its ownership). Returns the volumes released.
    pub async fn release_leases(&self, spec: &GuestSpec) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for d in &spec.disks {
            if self.pool_leases(&d.pool)?.release(&d.volume, &self.cfg.name).await? {
                out.push(format!("{}/{}", d.pool, d.volume));
            }
        }
        if let Some(o) = &self.owners {
            o.release(&spec.name, &self.cfg.name).await?;
        }
        Ok(out)
    }

    /// Releases a stopped guest's leases (offline DETACH_VOLUMES on the source).
    pub async fn detach_volumes(&self, name: &str) -> Result<Vec<String>> {
        let spec = self.stopped_spec(name)?;
        self.release_leases(&spec).await
    }

    /// Lets this host open a guest's volumes for an incoming live migration from `source`:
    /// an `incoming` claim on a shared volume (the source still holds it; on etcd also names
    /// it the guest's incoming owner); a local volume is copied, and this host leases its new
    /// copy (in its own lease store) outright.
    pub async fn claim_incoming(&self, spec: &GuestSpec, source: &str) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        if let Some(o) = &self.owners {
            o.add_incoming(&spec.name, source, &self.cfg.name, &spec.name).await?;
        }
        for d in &spec.disks {
            let leases = self.pool_leases(&d.pool)?;
            out.push(if self.pool_is_local(&d.pool) {
                leases.acquire(&d.volume, &self.cfg.name, &spec.name, Take::Exclusive, &self.cfg.listen).await?
            } else {
                leases.add_incoming(&d.volume, source, &self.cfg.name, &spec.name).await?
            });
        }
        Ok(out)
    }

    /// Takes over the leases this host claimed as incoming (the switchover happened), and
    /// on etcd the guest's ownership.
    pub async fn take_incoming(&self, spec: &GuestSpec) -> Result<Vec<Lease>> {
        let mut out = Vec::new();
        if let Some(o) = &self.owners {
            o.switch_to_incoming(&spec.name, &self.cfg.name, &self.cfg.listen).await?;
        }
        for d in &spec.disks {
            out.push(self.pool_leases(&d.pool)?.switch_to_incoming(&d.volume, &self.cfg.name, &self.cfg.listen).await?);
        }
        Ok(out)
    }

    /// Another host holding the lease of one of the guest's volumes (or on etcd the guest),
    /// and its address.
    pub async fn volume_held_elsewhere(&self, spec: &GuestSpec) -> Result<Option<(String, Option<String>)>> {
        for (leases, name, _) in self.holds(spec)? {
            if let Some(l) = leases.read(name).await? {
                if l.holder != self.cfg.name && l.incoming.as_deref() != Some(&self.cfg.name) {
                    return Ok(Some((l.holder, l.holder_address)));
                }
            }
        }
        Ok(None)
    }

    /// Removes a stopped guest's taps.
    pub async fn detach_interfaces(&self, name: &str) -> Result<usize> {
        let spec = self.stopped_spec(name)?;
        self.unplug_taps(&spec).await;
        Ok(spec.nics.len())
    }

    /// The bridge of a network this host serves.
    pub(crate) fn bridge_of(&self, network: &str) -> Result<String> {
        match self.cfg.networks.iter().find(|x| x.name == network) {
            Some(n) => Ok(n.bridge.clone()),
            None => fail!(NotFound, "network {network} is not served by {}", self.cfg.name),
        }
    }

    /// Creates a bridge unless it exists; returns whether it created it.
    pub async fn ensure_bridge(&self, bridge: &str) -> Result<bool> {
        self.host.ensure_bridge(bridge).await
    }

    /// Creates the guest's taps and puts them on their networks' bridges. Returns
    /// `(tap, mac)` per NIC.
    pub async fn plug_taps(&self, spec: &GuestSpec) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (i, n) in spec.nics.iter().enumerate() {
            let bridge = self.bridge_of(&n.network)?;
            if !self.host.bridge_exists(&bridge).await? {
                fail!(Host, "bridge {bridge} does not exist on {}", self.cfg.name);
            }
            let t = vmove_host::tap::tap_name(&spec.name, i);
            self.host.plug_tap(&t, &bridge).await?;
            out.push((t, n.mac.clone()));
        }
        Ok(out)
    }

    /// Removes the guest's taps (logged, never fails: absent taps are fine).
    pub async fn unplug_taps(&self, spec: &GuestSpec) {
        for i in 0..spec.nics.len() {
            let t = vmove_host::tap::tap_name(&spec.name, i);
            if let Err(e) = self.host.unplug_tap(&t) {
                tracing::warn!(guest = %spec.name, "cannot remove tap {t}: {e}");
            }
        }
    }
}
