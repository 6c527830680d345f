//! The host inventory: CPU, memory, versions, QEMU features, bridges, pools, consoles,
//! guests.
use std::os::unix::fs::MetadataExt;

use vmove_api::{BridgeInfo, HostInfo, PoolInfo};
use vmove_model::inventory::VolumeInfo;

use crate::error::Result;
use crate::guests::Agent;

fn writable(p: &std::path::Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// A pool: kind, room on its file system, and for a local pool its volumes (the files
/// that do not start with a dot).
fn pool_info(p: &vmove_model::PoolEntry) -> PoolInfo {
    let (capacity_bytes, free_bytes) = match nix::sys::statvfs::statvfs(&p.path) {
        Ok(st) => (
            st.blocks().saturating_mul(st.fragment_size()),
            st.blocks_available().saturating_mul(st.fragment_size()),
        ),
        Err(_) => (0, 0),
    };
    let mut volumes = Vec::new();
    if p.is_local() {
        for e in std::fs::read_dir(&p.path).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(m) = e.metadata() else { continue };
            if name.starts_with('.') || !m.is_file() {
                continue;
            }
            volumes.push(VolumeInfo { name, size_bytes: m.len(), allocated_bytes: m.blocks().saturating_mul(512) });
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
    }
    PoolInfo {
        name: p.name.clone(),
        path: p.path.display().to_string(),
        writable: p.path.is_dir() && writable(&p.path),
        kind: p.kind,
        capacity_bytes,
        free_bytes,
        volumes,
    }
}

/// The whole inventory.
pub async fn host_info(agent: &Agent) -> Result<HostInfo> {
    let (cpu_model, cpu_flags, cpu_count) = agent.host.cpu();
    let (_, free) = agent.host.memory_mib();
    let total = agent.memory_total_mib();
    let (committed, vcpus) = agent.committed();
    let bridges = agent
        .host
        .bridges()
        .await?
        .into_iter()
        .map(|name| {
            let vlan = agent.cfg.networks.iter().find(|n| n.bridge == name).and_then(|n| n.vlan);
            BridgeInfo { name, vlan }
        })
        .collect();
    let pools = agent.cfg.pools.iter().map(pool_info).collect();
    Ok(HostInfo {
        name: agent.cfg.name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        qemu_version: agent.qemu.version.clone(),
        qemu: agent.qemu.clone(),
        hardware_model: agent.cfg.hardware_model.clone().unwrap_or_else(|| agent.host.hardware_model()),
        hardware_generation: agent.cfg.hardware_generation,
        accel: if agent.cfg.accel == agent.accel { agent.accel.clone() } else { format!("{} ({})", agent.cfg.accel, agent.accel) },
        cpu_model,
        cpu_flags,
        cpu_count,
        memory_total_mib: total,
        memory_free_mib: free.min(total),
        memory_reserve_mib: agent.cfg.memory_reserve_mib,
        memory_committed_mib: committed,
        memory_available_mib: total.saturating_sub(agent.cfg.memory_reserve_mib).saturating_sub(committed),
        vcpus_committed: vcpus,
        bridges,
        pools,
        console_ports_in_use: agent.console_ports(),
        console_port_range: agent.cfg.console_ports,
        guests: agent.list(),
        maintenance: agent.maintenance(),
        live_steps_ms: None,
        memory_model_pct: None,
    })
}
