//! `vmove lab up` / `vmove lab down`.
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use vmove_api::bootstrap::{self, AgentLayout, HostOptions, InitOptions};
use vmove_api::{Health, Request};
use vmove_model::{Cluster, NetworkEntry, PoolEntry};

use crate::topology::{self, Plan, GUEST_NET, MAX_ETCD, MAX_HOSTS, SLOTS};

/// Where slot claims live.
const SLOT_DIR: &str = "/run/vmove/lab-slots";

/// How long a slot claimed by a lab still coming up counts as taken without its switch
/// namespace (a lab up takes seconds; one that fails releases its slot).
const SLOT_SETUP: Duration = Duration::from_secs(120);

/// What `lab up` makes inside the lab directory (cluster file, PKI, the shared pool with its
/// volumes and leases, each host's agent configuration, state and run directories).
/// `lab down` removes all of it; `lab up` on a directory holding an old lab starts clean.
/// `vmove-drains` is the drain records of a file-store cluster (made by `vmove host drain`
/// beside the cluster file).
const LAB_ITEMS: &[&str] = &["lab.json", "cluster.toml", "pki", "shared", "hosts", "vmove-drains", crate::etcd::DIR];

/// Removes what an earlier lab left in `dir`, and `dir` itself when nothing else is in it.
fn remove_lab_files(dir: &Path) -> Result<()> {
    for item in LAB_ITEMS {
        let p = dir.join(item);
        let r = match std::fs::symlink_metadata(&p) {
            Err(_) => continue,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
        };
        r.with_context(|| format!("remove {}", p.display()))?;
    }
    // Only succeeds when empty: files of the operator's own stay, and so does the directory.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// What `lab up` is asked for.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Lab directory (its last component names the lab).
    pub dir: PathBuf,
    /// Number of hosts.
    pub hosts: u8,
    /// etcd members (0: the file store; else the cluster's state is in an etcd of this
    /// many members inside the lab).
    pub etcd: u8,
    /// The `vmoved` binary.
    pub vmoved: PathBuf,
    /// The `vmove-guest` binary (for the lab image).
    pub guest_bin: PathBuf,
}

/// A lab that is up; saved as `DIR/lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabInfo {
    /// Lab name.
    pub name: String,
    /// Lab directory.
    pub dir: PathBuf,
    /// Slot.
    pub slot: u8,
    /// Hosts.
    pub hosts: u8,
    /// The cluster file.
    pub cluster_file: PathBuf,
    /// Host namespaces, in host order.
    pub host_namespaces: Vec<String>,
    /// The client namespace.
    pub client_namespace: String,
    /// The switch namespace.
    pub switch_namespace: String,
    /// The root namespace's link to the management network.
    pub root_link: String,
    /// Agent pids, in host order.
    pub agent_pids: Vec<u32>,
    /// etcd members' namespaces (empty: the file store).
    #[serde(default)]
    pub etcd_namespaces: Vec<String>,
    /// etcd's client URLs.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
}

impl LabInfo {
    /// Reads `DIR/lab.json`.
    pub fn load(dir: &Path) -> Result<LabInfo> {
        let p = dir.join("lab.json");
        let t = std::fs::read_to_string(&p).with_context(|| format!("no lab at {} (no lab.json)", dir.display()))?;
        serde_json::from_str(&t).with_context(|| format!("{} is damaged", p.display()))
    }
}

/// The lab name for a directory.
pub fn lab_name(dir: &Path) -> Result<String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("{}: the lab directory needs a last path component", dir.display()))?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') || name.len() > 40 {
        bail!("lab name {name:?} (from {}): use at most 40 letters, digits, '-', '_', '.'", dir.display());
    }
    Ok(name.to_string())
}

fn claim_slot(name: &str) -> Result<u8> {
    claim_slot_in(Path::new(SLOT_DIR), name)
}

fn claim_slot_in(dir: &Path, name: &str) -> Result<u8> {
    std::fs::create_dir_all(dir)?;
    // One claim at a time on the machine: two labs coming up at once both saw a stale slot
    // (or each other's, not up yet) and both took it, with the same root link `vmvN`.
    let d = std::fs::File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    let _lock = nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| anyhow!("lock {}: {e}", dir.display()))?;
    for s in 0..SLOTS {
        let p = dir.join(s.to_string());
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(mut f) => {
                std::io::Write::write_all(&mut f, name.as_bytes())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&p).unwrap_or_default();
                // A lab is alive once its switch namespace exists, and while it comes up
                // (claimed in the last SLOT_SETUP, before it made that namespace).
                let young = std::fs::metadata(&p).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age < SLOT_SETUP);
                let alive = !owner.is_empty() && (young || vmove_host::netns::exists(&format!("{owner}-switch")));
                if owner == name || !alive {
                    std::fs::write(&p, name)?;
                    return Ok(s);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("all {SLOTS} lab slots are in use: take a lab down first")
}

fn release_slot(name: &str) {
    for s in 0..SLOTS {
        let p = Path::new(SLOT_DIR).join(s.to_string());
        if std::fs::read_to_string(&p).is_ok_and(|o| o == name) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Builds a lab: namespaces, networks, PKI, cluster file, agents. Returns when every agent
/// answers over mTLS.
pub async fn up(o: &LabOptions) -> Result<LabInfo> {
    if o.hosts == 0 || o.hosts > MAX_HOSTS {
        bail!("--hosts must be 1..={MAX_HOSTS}");
    }
    if o.etcd > MAX_ETCD || o.hosts.saturating_add(o.etcd) > MAX_HOSTS {
        bail!("--etcd-members must be 0..={MAX_ETCD}, and hosts + members at most {MAX_HOSTS} (they share the lab's /28)");
    }
    let name = lab_name(&o.dir)?;
    if let Ok(info) = LabInfo::load(&o.dir) {
        if vmove_host::netns::exists(&info.switch_namespace) {
            bail!("lab {name} is already up (cluster file {}); run `vmove lab down --dir {}` first", info.cluster_file.display(), o.dir.display());
        }
    }
    if vmove_host::netns::list(&name).iter().any(|n| topology::belongs_to(&name, n)) {
        bail!("namespaces of a lab named {name} exist already (another directory with the same name?); take it down first");
    }
    for bin in [&o.vmoved, &o.guest_bin] {
        if !bin.exists() {
            bail!("{} not found (build the workspace first)", bin.display());
        }
    }
    // An old lab's state (agents' guests and jobs, volume leases) must not leak into this one.
    remove_lab_files(&o.dir)?;
    std::fs::create_dir_all(&o.dir).with_context(|| format!("create {}", o.dir.display()))?;
    let dir = std::fs::canonicalize(&o.dir)?;
    let slot = claim_slot(&name)?;
    let plan = Plan { name: name.clone(), slot, hosts: o.hosts, etcd: o.etcd };
    let result = build_lab(&plan, &dir, o).await;
    if result.is_err() {
        let _ = topology::destroy(&name, Some(&plan.root_link()));
        release_slot(&name);
    }
    result
}

async fn build_lab(plan: &Plan, dir: &Path, opts: &LabOptions) -> Result<LabInfo> {
    let image = {
        let (bin, kroot, cache) =
            (opts.guest_bin.clone(), crate::image::default_kernel_root(), crate::image::default_cache_dir());
        tokio::task::spawn_blocking(move || crate::image::ensure(&bin, &kroot, &cache)).await??
    };
    let p2 = plan.clone();
    tokio::task::spawn_blocking(move || topology::build(&p2)).await??;

    // The same path as a real cluster: `cluster init`, then `host add` per host (bundles
    // in the lab directory instead of /etc/vmove), then the agents in their namespaces.
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared)?;
    // The local pool: each host's own directory hosts/NAME/local (the cluster file names
    // the pool with a placeholder path; each agent's configuration holds its own).
    let init = InitOptions {
        name: plan.name.clone(),
        networks: vec![NetworkEntry { name: GUEST_NET.into(), bridge: GUEST_NET.into(), vlan: None, cidr: Some("192.0.2.0/24".into()) }],
        pools: vec![PoolEntry::shared("shared", shared), PoolEntry::local("local", dir.join("hosts").join("HOST").join("local"))],
        store: if plan.etcd > 0 { crate::etcd::store_entry(plan) } else { Default::default() },
    };
    let made = bootstrap::init_cluster(dir, &init)?;
    let cluster_file = dir.join(bootstrap::CLUSTER_FILE);
    if plan.etcd > 0 {
        // The members' certificates come from the cluster's CA, as the hosts' do.
        crate::etcd::start(plan, &bootstrap::load_ca(&made)?, dir)?;
    }
    let mut pids = Vec::new();
    let mut cfgs = Vec::new();
    for i in 1..=plan.hosts {
        let hname = Plan::host_name(i);
        let hdir = dir.join("hosts").join(&hname);
        std::fs::create_dir_all(hdir.join("local"))?;
        let ip = IpAddr::V4(plan.host_ip(i));
        let o = HostOptions {
            name: hname.clone(),
            address: SocketAddr::new(ip, vmove_api::DEFAULT_PORT),
            accel: "tcg".into(),
            layout: AgentLayout { config_dir: hdir.clone(), state_dir: hdir.join("state"), run_dir: hdir.join("run") },
            metrics_listen: Some(SocketAddr::new(ip, bootstrap::DEFAULT_METRICS_PORT)),
            reissue: false,
        };
        bootstrap::add_host(&cluster_file, &o, &hdir, |cfg| {
            cfg.memory_limit_mib = Some(6144);
            cfg.hardware_model = Some("vmove-lab".into());
            cfg.hardware_generation = 1;
            cfg.lab_kernel = Some(image.kernel.clone());
            cfg.lab_initrd = Some(image.initrd.clone());
            cfg.allow_fault_injection = true;
            for p in cfg.pools.iter_mut().filter(|p| p.is_local()) {
                p.path = hdir.join("local");
            }
        })?;
        cfgs.push((hdir.join(bootstrap::AGENT_CONFIG), plan.host_ns(i), hdir.join("vmoved.log")));
    }
    let cluster = Cluster::load(&cluster_file)?;
    if plan.etcd > 0 {
        // The agents need etcd to start; operators need the cluster in it.
        let etcd = crate::etcd::wait_ready(plan, dir).await?;
        vmove_registry::import(&etcd, &cluster, vmove_registry::Import::Replace).await?;
    }
    for (cfg_path, ns, log) in &cfgs {
        pids.push(start_agent(&opts.vmoved, cfg_path, ns, log)?);
    }
    let info = LabInfo {
        name: plan.name.clone(),
        dir: dir.to_path_buf(),
        slot: plan.slot,
        hosts: plan.hosts,
        cluster_file: cluster_file.clone(),
        host_namespaces: (1..=plan.hosts).map(|i| plan.host_ns(i)).collect(),
        client_namespace: plan.client_ns(),
        switch_namespace: plan.switch_ns(),
        root_link: plan.root_link(),
        agent_pids: pids,
        etcd_namespaces: (1..=plan.etcd).map(|j| plan.etcd_ns(j)).collect(),
        etcd_endpoints: (1..=plan.etcd).map(|j| plan.etcd_client_url(j)).collect(),
    };
    vmove_model::write_atomic(&dir.join("lab.json"), serde_json::to_string_pretty(&info)?.as_bytes())?;
    wait_for_agents(&cluster, dir).await?;
    Ok(info)
}

/// Starts `vmoved` inside a namespace, in its own session, logging to `log`.
pub fn start_agent(vmoved: &Path, config: &Path, ns: &str, log: &Path) -> Result<u32> {
    let ns_fd = vmove_host::netns::open(ns)?;
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(vmoved);
    cmd.arg("--config").arg(config).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setns and setsid are async-signal-safe syscalls; `ns_fd` stays open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            vmove_host::netns::enter(&ns_fd).map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("start {}", vmoved.display()))?;
    Ok(child.id())
}

/// Waits until every agent answers (a loaded machine may take a while: the agent starts a
/// QEMU to learn its features); an agent that exits is reported at once with the last line
/// of its log.
async fn wait_for_agents(cluster: &Cluster, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let info = LabInfo::load(dir).ok();
    for (name, c) in vmove_api::operator_clients(cluster)? {
        let c = c.with_timeout(Duration::from_secs(2));
        loop {
            match c.call::<Health>(&Request::Health).await {
                Ok(_) => break,
                Err(e) => {
                    let exited = info.as_ref().is_some_and(|i| agent_pid(i, &name).is_none());
                    if exited || Instant::now() > deadline {
                        let log = dir.join("hosts").join(&name).join("vmoved.log");
                        let last = std::fs::read_to_string(&log)
                            .ok()
                            .and_then(|t| t.lines().rev().find(|l| !l.contains("IFLA_")).map(str::to_string))
                            .unwrap_or_default();
                        let what = if exited { "exited" } else { "did not come up" };
                        bail!("agent on {name} {what}: {:#}; last log line: {last}", anyhow::Error::from(e));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    Ok(())
}

/// Tears a lab down: kills agents and guests, removes namespaces and links, and removes
/// everything the lab made in its directory (agent state, volumes and their leases, PKI,
/// cluster file). Idempotent; works on half-built labs (without lab.json it goes by the
/// directory's name).
pub fn down(dir: &Path) -> Result<String> {
    let name = lab_name(dir)?;
    let info = LabInfo::load(dir).ok();
    let root_link = info.as_ref().map(|i| i.root_link.clone()).or_else(|| {
        (0..SLOTS)
            .find(|s| std::fs::read_to_string(Path::new(SLOT_DIR).join(s.to_string())).is_ok_and(|o| o == name))
            .map(|s| format!("vmv{s}"))
    });
    topology::destroy(&name, root_link.as_deref())?;
    release_slot(&name);
    remove_lab_files(dir)?;
    Ok(name)
}

/// The pid of the agent running in a lab host's namespace, if any.
pub fn agent_pid(info: &LabInfo, host: &str) -> Option<u32> {
    let ns = lab_host_ns(info, host).ok()?;
    vmove_host::netns::pids_in(&ns).into_iter().map(|p| p as u32).find(|p| {
        vmove_host::proc::alive(*p) && vmove_host::proc::cmdline(*p).first().is_some_and(|a| a.ends_with("vmoved"))
    })
}

fn lab_host_ns(info: &LabInfo, host: &str) -> Result<String> {
    let i: u8 = host
        .strip_prefix("host")
        .and_then(|n| n.parse().ok())
        .filter(|i| (1..=info.hosts).contains(i))
        .ok_or_else(|| anyhow!("lab {} has no host named {host}", info.name))?;
    Ok(info.host_namespaces[usize::from(i - 1)].clone())
}

/// Kills a lab host's agent with SIGKILL (its guests keep running).
pub fn kill_agent(dir: &Path, host: &str) -> Result<u32> {
    let info = LabInfo::load(dir)?;
    let pid = agent_pid(&info, host).ok_or_else(|| anyhow!("no agent runs on {host}"))?;
    vmove_host::proc::kill9(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while vmove_host::proc::alive(pid) {
        if Instant::now() > deadline {
            bail!("agent {pid} on {host} did not die");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// Starts a lab host's agent again (after a kill) and waits until it answers.
pub async fn start_agent_again(dir: &Path, host: &str, vmoved: &Path) -> Result<u32> {
    let info = LabInfo::load(dir)?;
    if let Some(pid) = agent_pid(&info, host) {
        bail!("the agent on {host} is already running (pid {pid})");
    }
    let hdir = info.dir.join("hosts").join(host);
    let pid = start_agent(vmoved, &hdir.join("agent.toml"), &lab_host_ns(&info, host)?, &hdir.join("vmoved.log"))?;
    let cluster = Cluster::load(&info.cluster_file)?;
    let one = Cluster { hosts: cluster.hosts.iter().filter(|h| h.name == host).cloned().collect(), ..cluster };
    wait_for_agents(&one, &info.dir).await?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab that has just claimed its slot has no switch namespace yet: another lab coming
    /// up then must take the next slot, not that one (two labs came up with one root link).
    #[test]
    fn a_slot_claimed_a_moment_ago_is_not_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = claim_slot_in(dir.path(), "vt-slot-test-a").unwrap();
        let b = claim_slot_in(dir.path(), "vt-slot-test-b").unwrap();
        assert_ne!(a, b);
        assert_eq!(claim_slot_in(dir.path(), "vt-slot-test-a").unwrap(), a, "its own slot again");
    }

    /// A slot left by a lab that is gone (claimed long ago, no switch namespace) is taken,
    /// by exactly one of several labs coming up at once.
    #[test]
    fn a_stale_slot_goes_to_one_of_the_labs_coming_up_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("0");
        std::fs::write(&stale, "vt-slot-test-gone").unwrap();
        let old = std::time::SystemTime::now() - SLOT_SETUP * 2;
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
        let path = dir.path();
        let slots: Vec<u8> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..6).map(|i| s.spawn(move || claim_slot_in(path, &format!("vt-slot-test-{i}")).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut distinct = slots.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), slots.len(), "two labs in one slot: {slots:?}");
        assert!(slots.contains(&0), "the stale slot was taken: {slots:?}");
    }
}
