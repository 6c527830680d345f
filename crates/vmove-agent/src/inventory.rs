//! The host inventory: CPU, memory, versions, bridges, pools, consoles, guests.
use anyhow::Result;
use vmove_api::{BridgeInfo, HostInfo, PoolInfo};
use vmove_host::net::Netlink;

use crate::guests::Agent;

/// `(MemTotal, MemAvailable)` in MiB, from /proc/meminfo.
pub fn meminfo() -> (u64, u64) {
    let t = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        t.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// `(model name, flags, logical CPUs)` from /proc/cpuinfo.
pub fn cpuinfo() -> (String, Vec<String>, u32) {
    let t = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let get = |k: &str| {
        t.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let count = t.lines().filter(|l| l.starts_with("processor")).count() as u32;
    let flags = get("flags").split_whitespace().map(String::from).collect();
    (get("model name"), flags, count.max(1))
}

fn hardware_model(agent: &Agent) -> String {
    agent.cfg.hardware_model.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/sys/class/dmi/id/product_name").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
    })
}

fn writable(p: &std::path::Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// The whole inventory.
pub async fn host_info(agent: &Agent) -> Result<HostInfo> {
    let (cpu_model, cpu_flags, cpu_count) = cpuinfo();
    let (_, free) = meminfo();
    let total = agent.memory_total_mib();
    let (committed, vcpus) = agent.committed();
    let nl = Netlink::connect()?;
    let bridges = nl
        .links()
        .await?
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|l| {
            let vlan = agent.cfg.networks.iter().find(|n| n.bridge == l.name).and_then(|n| n.vlan);
            BridgeInfo { name: l.name, vlan }
        })
        .collect();
    let pools = agent
        .cfg
        .pools
        .iter()
        .map(|p| PoolInfo { name: p.name.clone(), path: p.path.display().to_string(), writable: p.path.is_dir() && writable(&p.path) })
        .collect();
    Ok(HostInfo {
        name: agent.cfg.name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        qemu_version: agent.qemu_version.clone(),
        qemu: agent.qemu.clone(),
        hardware_model: hardware_model(agent),
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
    })
}
