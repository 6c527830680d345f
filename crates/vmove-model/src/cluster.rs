//! The cluster file: load, validate, save.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::converge::Converge;
use crate::guest::GuestSpec;
use crate::store::StoreEntry;

/// Errors from loading or saving a cluster file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line-numbered message.
        message: String,
    },
    /// The file parses but is inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// `[cluster]`: identity of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMeta {
    /// Cluster name.
    pub name: String,
}

/// `[tls]`: the operator's credentials, paths relative to the cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// The operator certificate (PEM).
    pub cert: PathBuf,
    /// The operator private key (PEM).
    pub key: PathBuf,
}

/// `[policy]`: cluster-wide migration policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// vCPUs may be overcommitted up to this many times the physical CPU count.
    pub vcpu_overcommit_ratio: f64,
    /// Memory every host keeps for itself, MiB.
    pub host_memory_reserve_mib: u64,
    /// Live migration timeout, seconds.
    pub live_timeout_s: u64,
    /// Maximum downtime at switchover, milliseconds.
    pub max_downtime_ms: u64,
    /// Minimum agent version for live migration.
    pub min_agent_version: String,
    /// Minimum host hardware generation for live migration.
    pub min_hardware_generation: u32,
    /// Whether the live migration channel must be encrypted.
    pub require_encrypted_migration: bool,
    /// Whether post-copy is allowed. Off by default: a post-copy migration whose source
    /// or target dies loses the guest (each side holds part of its memory).
    pub allow_postcopy: bool,
    /// How live migrations that do not converge on their own are helped along
    /// (`migrate --converge` overrides it). Default `auto`: the downtime limit climbs,
    /// then the guest is throttled, then post-copy where `allow_postcopy` permits.
    pub converge: Converge,
    /// Throughput of the migration link, bytes/s, when known (for the convergence check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_link_bytes_per_s: Option<u64>,
    /// TTL of every agent's etcd lease, seconds (etcd store only): an agent that cannot
    /// renew it pauses its guests with half of it left, and others may take its guests
    /// once it has expired.
    pub lease_ttl_s: u64,
}

/// The shortest and longest lease TTL, seconds.
pub const LEASE_TTL_RANGE_S: std::ops::RangeInclusive<u64> = 2..=600;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            vcpu_overcommit_ratio: 4.0,
            host_memory_reserve_mib: 256,
            live_timeout_s: 600,
            max_downtime_ms: 300,
            min_agent_version: "0.1.0".into(),
            min_hardware_generation: 0,
            require_encrypted_migration: true,
            allow_postcopy: false,
            converge: Converge::Auto,
            migration_link_bytes_per_s: None,
            lease_ttl_s: 10,
        }
    }
}

/// `[[hosts]]`: one KVM host and its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// Host name.
    pub name: String,
    /// Agent address, `IP:PORT` on the management network.
    pub address: String,
    /// Accelerator: `kvm`, `tcg` or `auto`.
    #[serde(default = "default_accel")]
    pub accel: String,
}

fn default_accel() -> String {
    "auto".into()
}

/// `[[networks]]`: a guest L2 network, present on hosts as a bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkEntry {
    /// Network name.
    pub name: String,
    /// Bridge name on every host.
    pub bridge: String,
    /// VLAN id (none = untagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Subnet, for information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
}

/// What kind of storage a pool is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// One directory every host sees (NFS, a cluster file system): a volume is the same
    /// file on every host and moves by handing over its lease, never by copying.
    #[default]
    Shared,
    /// A directory on each host that only that host sees (local NVMe, say): a volume is
    /// that host's file, and a migration copies it to the target.
    Local,
}

impl PoolKind {
    /// `shared` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Shared => "shared",
            PoolKind::Local => "local",
        }
    }

    fn is_shared(&self) -> bool {
        *self == PoolKind::Shared
    }
}

/// `[[pools]]`: a storage pool. A `shared` pool (the default) is one directory every host
/// sees; a `local` pool is a directory on each host (each agent's configuration names its
/// own; in the cluster file the path is what the hosts use by convention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    /// Pool name.
    pub name: String,
    /// Directory.
    pub path: PathBuf,
    /// Shared by every host, or local to each.
    #[serde(default, skip_serializing_if = "PoolKind::is_shared")]
    pub kind: PoolKind,
}

impl PoolEntry {
    /// A shared pool.
    pub fn shared(name: &str, path: impl Into<PathBuf>) -> PoolEntry {
        PoolEntry { name: name.into(), path: path.into(), kind: PoolKind::Shared }
    }

    /// A pool local to each host.
    pub fn local(name: &str, path: impl Into<PathBuf>) -> PoolEntry {
        PoolEntry { name: name.into(), path: path.into(), kind: PoolKind::Local }
    }

    /// Whether the pool is local to each host.
    pub fn is_local(&self) -> bool {
        self.kind == PoolKind::Local
    }
}

/// The whole cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Identity.
    pub cluster: ClusterMeta,
    /// Operator credentials.
    pub tls: TlsFiles,
    /// Policy.
    #[serde(default)]
    pub policy: Policy,
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    /// Networks.
    #[serde(default)]
    pub networks: Vec<NetworkEntry>,
    /// Storage pools.
    #[serde(default)]
    pub pools: Vec<PoolEntry>,
    /// Where the cluster's state lives (the file itself unless it says etcd).
    #[serde(default, skip_serializing_if = "StoreEntry::is_file")]
    pub store: StoreEntry,
    /// Guests.
    #[serde(default)]
    pub guests: Vec<GuestSpec>,
    /// Where the file was loaded from (not serialized).
    #[serde(skip)]
    pub path: PathBuf,
}

impl Cluster {
    /// Loads and validates a cluster file.
    pub fn load(path: &Path) -> Result<Cluster, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        Cluster::parse(&text, path)
    }

    /// Parses and validates cluster file text; `path` is used for messages and relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Cluster, ModelError> {
        let mut c: Cluster = toml::from_str(text).map_err(|e| ModelError::Parse {
            path: path.into(),
            message: one_line_toml_error(text, &e),
        })?;
        c.path = path.to_path_buf();
        c.validate().map_err(|message| ModelError::Invalid {
            path: path.into(),
            message: match locate(text, &message) {
                Some(line) => format!("line {line}: {}", one_line(&message)),
                None => one_line(&message),
            },
        })?;
        Ok(c)
    }

    /// Writes the file atomically (temp file, fsync, rename), in a stable order.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = self.to_toml();
        write_atomic(path, text.as_bytes()).map_err(|source| ModelError::Io { path: path.into(), source })
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut c = self.clone();
        c.hosts.sort_by_key(|h| natural_key(&h.name));
        c.networks.sort_by(|a, b| a.name.cmp(&b.name));
        c.pools.sort_by(|a, b| a.name.cmp(&b.name));
        c.guests.sort_by(|a, b| a.name.cmp(&b.name));
        let body = toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# serialization failed: {e}\n"));
        format!("# vmove cluster file\n{body}")
    }

    /// Checks references and uniqueness.
    pub fn validate(&self) -> Result<(), String> {
        self.store.validate("store")?;
        if !LEASE_TTL_RANGE_S.contains(&self.policy.lease_ttl_s) {
            return Err(format!(
                "policy.lease_ttl_s: {} is not within {}..={} seconds",
                self.policy.lease_ttl_s,
                LEASE_TTL_RANGE_S.start(),
                LEASE_TTL_RANGE_S.end()
            ));
        }
        unique(self.hosts.iter().map(|h| h.name.as_str()), "hosts", "name")?;
        unique(self.networks.iter().map(|n| n.name.as_str()), "networks", "name")?;
        unique(self.pools.iter().map(|p| p.name.as_str()), "pools", "name")?;
        unique(self.guests.iter().map(|g| g.name.as_str()), "guests", "name")?;
        unique(self.guests.iter().flat_map(|g| g.macs()), "guests", "nics.mac")?;
        for h in &self.hosts {
            if h.address.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!("hosts[{}].address: {:?} is not IP:PORT", h.name, h.address));
            }
            if !matches!(h.accel.as_str(), "kvm" | "tcg" | "auto") {
                return Err(format!("hosts[{}].accel: {:?} is not kvm, tcg or auto", h.name, h.accel));
            }
        }
        for g in &self.guests {
            if self.host(&g.host).is_none() {
                return Err(format!("guests[{}].host: no host named {:?}", g.name, g.host));
            }
            if g.vcpus == 0 || g.memory_mib == 0 {
                return Err(format!("guests[{}]: vcpus and memory_mib must be positive", g.name));
            }
            if let Some(group) = g.group.as_deref().filter(|x| !crate::guest::valid_name(x)) {
                return Err(format!(
                    "guests[{}].group: {group:?} is not a valid name (1 to 64 letters, digits, '-', '_', '.')",
                    g.name
                ));
            }
            for n in &g.nics {
                if self.network(&n.network).is_none() {
                    return Err(format!("guests[{}].nics.network: no network named {:?}", g.name, n.network));
                }
            }
            for d in &g.disks {
                if self.pool(&d.pool).is_none() {
                    return Err(format!("guests[{}].disks.pool: no pool named {:?}", g.name, d.pool));
                }
            }
        }
        Ok(())
    }

    /// The host entry with this name.
    pub fn host(&self, name: &str) -> Option<&HostEntry> {
        self.hosts.iter().find(|h| h.name == name)
    }
    /// The network with this name.
    pub fn network(&self, name: &str) -> Option<&NetworkEntry> {
        self.networks.iter().find(|n| n.name == name)
    }
    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Option<&PoolEntry> {
        self.pools.iter().find(|p| p.name == name)
    }
    /// The guest with this name.
    pub fn guest(&self, name: &str) -> Option<&GuestSpec> {
        self.guests.iter().find(|g| g.name == name)
    }
    /// The guest with this name, mutable.
    pub fn guest_mut(&mut self, name: &str) -> Option<&mut GuestSpec> {
        self.guests.iter_mut().find(|g| g.name == name)
    }
    /// Inserts or replaces a guest.
    pub fn upsert_guest(&mut self, spec: GuestSpec) {
        match self.guest_mut(&spec.name) {
            Some(g) => *g = spec,
            None => self.guests.push(spec),
        }
    }
    /// Resolves a path given in the file relative to the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

/// The line of the value a validation message is about. Messages name the place as
/// `table[name].field` or `table.field: "value"`.
fn locate(text: &str, message: &str) -> Option<usize> {
    let place = message.split(':').next()?;
    let (table, rest) = place.split_once(['[', '.'])?;
    let (entry, field) = match rest.split_once("].") {
        Some((entry, field)) => (Some(entry), field),
        None => (None, rest.trim_end_matches(']')),
    };
    let field = field.rsplit('.').next()?;
    let quoted = message.split('"').nth(1);
    let header = format!("[[{table}]]");
    let mut in_table = false;
    let mut in_entry = entry.is_none();
    let mut candidate = None;
    let last = message.ends_with("appears twice");
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = t == header;
            in_entry = entry.is_none();
            continue;
        }
        if !in_table {
            continue;
        }
        if let Some(e) = entry {
            if t.starts_with("name") && t.contains(&format!("\"{e}\"")) {
                in_entry = true;
                if field == "name" {
                    candidate.get_or_insert(i + 1);
                }
            }
        }
        let names_field = t.starts_with(field) || t.contains(&format!("{field} ="));
        let has_value = quoted.is_none_or(|q| t.contains(&format!("\"{q}\"")));
        if in_entry && names_field && has_value {
            if last {
                candidate = Some(i + 1);
                continue;
            }
            if entry.is_some() || quoted.is_some() {
                return Some(i + 1);
            }
            candidate.get_or_insert(i + 1);
        }
    }
    candidate
}

fn unique<'a>(items: impl Iterator<Item = &'a str>, table: &str, field: &str) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for i in items {
        if !seen.insert(i) {
            return Err(format!("{table}.{field}: {i:?} appears twice"));
        }
    }
    Ok(())
}

/// `host10` sorts after `host9`.
fn natural_key(s: &str) -> (String, u64) {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, tail) = s.split_at(s.len() - digits);
    (head.to_string(), tail.parse().unwrap_or(0))
}

/// Control characters (a name may hold a `\n` escape) written as escapes: one line.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

/// Writes a file atomically: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
