//! Bootstrapping a cluster, the same way on real hosts and in the lab.
//!
//! - [`init_cluster`] (`vmove cluster init`): the cluster CA, an operator certificate and
//!   a cluster file without hosts, in one directory:
//!   `cluster.toml`, `pki/ca.pem`, `pki/ca.key`, `pki/operator.pem`, `pki/operator.key`.
//! - [`add_host`] (`vmove host add`): a host certificate, the host's entry in the cluster
//!   file, and the bundle its agent needs, written to a directory the operator copies to
//!   the host's `/etc/vmove/`: `agent.toml`, `ca.pem`, `host.pem`, `host.key`.
//! - [`remove_host`] (`vmove host remove`): the entry and the bundle go.
//!
//! The CA key stays where `init_cluster` wrote it (next to the CA certificate the cluster
//! file names): only the operator's machine can issue certificates.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use vmove_model::{AgentConfig, Cluster, ClusterMeta, HostEntry, ModelError, NetworkEntry, Policy, PoolEntry, StoreEntry, TlsFiles};

use crate::pki::{Ca, CertPair, PkiError};

/// Where a packaged agent keeps its configuration, certificates and key.
pub const CONFIG_DIR: &str = "/etc/vmove";
/// Where a packaged agent keeps its durable state.
pub const STATE_DIR: &str = "/var/lib/vmove";
/// Where a packaged agent keeps its runtime files (QMP sockets, pid files, logs).
pub const RUN_DIR: &str = "/run/vmove";
/// The agent configuration's file name in a bundle.
pub const AGENT_CONFIG: &str = "agent.toml";
/// The cluster file's name in a cluster directory.
pub const CLUSTER_FILE: &str = "cluster.toml";
/// The port of the metrics listener that `host add --metrics` picks by default.
pub const DEFAULT_METRICS_PORT: u16 = 7451;
/// The files of a host bundle, as the agent finds them in its configuration directory.
pub const BUNDLE_FILES: [&str; 4] = [AGENT_CONFIG, "ca.pem", "host.pem", "host.key"];

/// Why a cluster or a host could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A certificate could not be made, read or written.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The cluster file or an agent configuration could not be read or written.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A file or directory could not be made or removed.
    #[error("{what} {}", path.display())]
    Io {
        /// `create`, `remove`, ...
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The request conflicts with what is there (the message says what and what to do).
    #[error("{0}")]
    Refused(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError {
    let path = path.to_path_buf();
    move |source| BootstrapError::Io { what, path, source }
}

fn refused<T>(message: String) -> Result<T, BootstrapError> {
    Err(BootstrapError::Refused(message))
}

/// What `cluster init` is asked for.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Cluster name.
    pub name: String,
    /// Guest networks (bridges on every host).
    pub networks: Vec<NetworkEntry>,
    /// Storage pools (directories every host sees at the same path).
    pub pools: Vec<PoolEntry>,
    /// Where the cluster's state is kept: files (the default) or etcd.
    pub store: StoreEntry,
}

/// Makes a cluster in `dir`: the CA, an operator certificate and a cluster file without
/// hosts. Refuses a directory that holds a cluster file or a CA already.
pub fn init_cluster(dir: &Path, o: &InitOptions) -> Result<Cluster, BootstrapError> {
    if !crate::valid_name(&o.name) {
        return refused(format!("cluster name {:?}: {}", o.name, crate::NAME_RULE));
    }
    let path = dir.join(CLUSTER_FILE);
    let pki = dir.join("pki");
    for existing in [&path, &pki.join("ca.key")] {
        if existing.exists() {
            return refused(format!("{} exists: {} holds a cluster already", existing.display(), dir.display()));
        }
    }
    for p in &o.pools {
        if !p.path.is_absolute() {
            return refused(format!("pool {}: {} is not an absolute path (the hosts mount it there)", p.name, p.path.display()));
        }
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let ca = Ca::generate(&o.name)?;
    ca.pair().write(&pki, "ca")?;
    ca.issue_operator("operator")?.write(&pki, "operator")?;
    let cluster = Cluster {
        cluster: ClusterMeta { name: o.name.clone() },
        tls: TlsFiles { ca: "pki/ca.pem".into(), cert: "pki/operator.pem".into(), key: "pki/operator.key".into() },
        policy: Policy::default(),
        hosts: vec![],
        networks: o.networks.clone(),
        pools: o.pools.clone(),
        store: o.store.clone(),
        guests: vec![],
        path: path.clone(),
    };
    if let Err(message) = cluster.validate() {
        return Err(ModelError::Invalid { path, message }.into());
    }
    cluster.save(&path)?;
    Ok(cluster)
}

/// Where an agent finds its files on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLayout {
    /// Its configuration, the CA certificate, its certificate and key.
    pub config_dir: PathBuf,
    /// Durable state.
    pub state_dir: PathBuf,
    /// Runtime files.
    pub run_dir: PathBuf,
}

impl Default for AgentLayout {
    /// The packaged agent's: `/etc/vmove`, `/var/lib/vmove`, `/run/vmove`.
    fn default() -> Self {
        AgentLayout { config_dir: CONFIG_DIR.into(), state_dir: STATE_DIR.into(), run_dir: RUN_DIR.into() }
    }
}

/// What `host add` is asked for.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Host name (the certificate's name).
    pub name: String,
    /// The agent's address on the management network.
    pub address: SocketAddr,
    /// `kvm`, `tcg` or `auto`.
    pub accel: String,
    /// Where the agent's files are on the host.
    pub layout: AgentLayout,
    /// Serve Prometheus metrics there.
    pub metrics_listen: Option<SocketAddr>,
    /// Issue a new certificate and bundle for a host the cluster file has already.
    pub reissue: bool,
}

/// What `host add` made.
#[derive(Debug, Clone)]
pub struct HostBundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The files in it, in [`BUNDLE_FILES`] order.
    pub files: Vec<PathBuf>,
    /// The agent's configuration (also `dir/agent.toml`).
    pub config: AgentConfig,
    /// The host's entry in the cluster file.
    pub entry: HostEntry,
}

/// Where `host add` writes a host's bundle unless told otherwise: `hosts/<name>` beside the
/// cluster file.
pub fn default_bundle_dir(cluster: &Cluster, host: &str) -> PathBuf {
    cluster.path.parent().unwrap_or(Path::new(".")).join("hosts").join(host)
}

/// The agent configuration `host add` writes for a host of `cluster`: the cluster's pools
/// and networks, its memory reserve, the layout's paths, no test hooks.
pub fn agent_config(cluster: &Cluster, o: &HostOptions) -> AgentConfig {
    let files = &o.layout.config_dir;
    AgentConfig {
        name: o.name.clone(),
        listen: o.address.to_string(),
        accel: o.accel.clone(),
        state_dir: o.layout.state_dir.clone(),
        run_dir: o.layout.run_dir.clone(),
        ca: files.join("ca.pem"),
        cert: files.join("host.pem"),
        key: files.join("host.key"),
        memory_reserve_mib: cluster.policy.host_memory_reserve_mib,
        memory_limit_mib: None,
        hardware_model: None,
        hardware_generation: 0,
        console_ports: (5900, 5999),
        lab_kernel: None,
        lab_initrd: None,
        allow_fault_injection: false,
        metrics_listen: o.metrics_listen.map(|a| a.to_string()),
        pools: cluster.pools.iter().map(|p| PoolEntry { path: cluster.resolve(&p.path), ..p.clone() }).collect(),
        networks: cluster.networks.clone(),
        store: agent_store(cluster),
        lease_ttl_s: cluster.policy.lease_ttl_s,
    }
}

/// The `[store]` section of an agent of `cluster`: on etcd with the cluster's namespace
/// spelt out (the agent does not know the cluster's name).
fn agent_store(cluster: &Cluster) -> StoreEntry {
    if cluster.store.is_file() {
        return cluster.store.clone();
    }
    StoreEntry { namespace: Some(cluster.store.namespace_for(&cluster.cluster.name)), ..cluster.store.clone() }
}

/// A host name: what certificates and file names accept.
pub fn valid_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The cluster CA (certificate and key) of a cluster file: the key is the `.key` beside the
/// `.pem` the file names.
pub fn load_ca(cluster: &Cluster) -> Result<Ca, BootstrapError> {
    let pem = cluster.resolve(&cluster.tls.ca);
    let dir = pem.parent().unwrap_or(Path::new("."));
    let stem = pem.file_stem().and_then(|s| s.to_str()).unwrap_or("ca");
    let key = dir.join(format!("{stem}.key"));
    if !key.exists() {
        return refused(format!(
            "the cluster CA's key {} is not here: certificates are issued where `vmove cluster init` made the cluster",
            key.display()
        ));
    }
    Ok(Ca::load(CertPair::read(dir, stem)?)?)
}

/// Adds a host to the cluster file at `cluster_path` and writes its bundle to `bundle_dir`
/// (made 0700: it holds the host's key). `edit` may change the agent configuration before
/// it is written (the lab points it at its image and allows test hooks).
pub fn add_host(
    cluster_path: &Path,
    o: &HostOptions,
    bundle_dir: &Path,
    edit: impl FnOnce(&mut AgentConfig),
) -> Result<HostBundle, BootstrapError> {
    let mut cluster = Cluster::load(cluster_path)?;
    if !valid_host_name(&o.name) {
        return refused(format!("host name {:?}: use 1 to 63 letters, digits and '-' (not first or last)", o.name));
    }
    if !matches!(o.accel.as_str(), "kvm" | "tcg" | "auto") {
        return refused(format!("accel {:?} is not kvm, tcg or auto", o.accel));
    }
    if o.address.ip().is_unspecified() || o.address.port() == 0 {
        return refused(format!("address {}: give the host's own IP and a port (the certificate names the IP)", o.address));
    }
    let address = o.address.to_string();
    if let Some(other) = cluster.hosts.iter().find(|h| h.address == address && h.name != o.name) {
        return refused(format!("{address} is the address of {} already", other.name));
    }
    if cluster.host(&o.name).is_some() && !o.reissue {
        return refused(format!(
            "{} has a host named {} already (--reissue makes it a new certificate and bundle)",
            cluster_path.display(),
            o.name
        ));
    }
    let ca = load_ca(&cluster)?;
    let pair = ca.issue_host(&o.name, o.address.ip())?;
    let mut config = agent_config(&cluster, o);
    edit(&mut config);
    write_bundle(bundle_dir, &ca, &pair, &config)?;
    let entry = HostEntry { name: o.name.clone(), address, accel: o.accel.clone() };
    match cluster.hosts.iter_mut().find(|h| h.name == o.name) {
        Some(h) => *h = entry.clone(),
        None => cluster.hosts.push(entry.clone()),
    }
    cluster.save(cluster_path)?;
    let files = BUNDLE_FILES.iter().map(|f| bundle_dir.join(f)).collect();
    Ok(HostBundle { dir: bundle_dir.to_path_buf(), files, config, entry })
}

fn write_bundle(dir: &Path, ca: &Ca, host: &CertPair, config: &AgentConfig) -> Result<(), BootstrapError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("set the mode of", dir))?;
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, &ca.pair().cert_pem).map_err(io("write", &ca_pem))?;
    host.write(dir, "host")?;
    config.save(&dir.join(AGENT_CONFIG))?;
    Ok(())
}

/// What `host remove` did.
#[derive(Debug, Clone)]
pub struct RemovedHost {
    /// The entry that went.
    pub entry: HostEntry,
    /// The bundle directory removed with it (the default one), if there was one.
    pub bundle: Option<PathBuf>,
}

/// Removes a host from the cluster file, and its bundle from the default place. Refuses
/// while the cluster file has guests on it.
pub fn remove_host(cluster_path: &Path, name: &str) -> Result<RemovedHost, BootstrapError> {
    remove_host_from_file(cluster_path, name, GuestsIn::File)
}

/// Where the guests' placement is kept, for [`remove_host_from_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestsIn {
    /// The cluster file: refuse while it has guests on the host.
    File,
    /// A store that the caller checked already (etcd): the file's guest list is only the
    /// import seed; its guests on the host are dropped with it.
    Store,
}

/// [`remove_host`], with the guest check where the placement is kept.
pub fn remove_host_from_file(cluster_path: &Path, name: &str, guests_in: GuestsIn) -> Result<RemovedHost, BootstrapError> {
    let mut cluster = Cluster::load(cluster_path)?;
    let Some(entry) = cluster.host(name).cloned() else {
        return refused(format!("{} has no host named {name}", cluster_path.display()));
    };
    if guests_in == GuestsIn::Store {
        cluster.guests.retain(|g| g.host != name);
    }
    let guests: Vec<&str> = cluster.guests.iter().filter(|g| g.host == name).map(|g| g.name.as_str()).collect();
    if !guests.is_empty() {
        return refused(format!("{name} has guests in the cluster file ({}): migrate or destroy them first", guests.join(", ")));
    }
    cluster.hosts.retain(|h| h.name != name);
    cluster.save(cluster_path)?;
    let dir = default_bundle_dir(&cluster, name);
    let bundle = if dir.join(AGENT_CONFIG).exists() || dir.join("host.key").exists() {
        for f in BUNDLE_FILES {
            let p = dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io("remove", &p))?;
            }
        }
        // Only when nothing else is left (a lab host's state and run directories stay).
        let _ = std::fs::remove_dir(&dir);
        Some(dir)
    } else {
        None
    };
    Ok(RemovedHost { entry, bundle })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(name: &str, addr: &str) -> HostOptions {
        HostOptions {
            name: name.into(),
            address: addr.parse().unwrap(),
            accel: "kvm".into(),
            layout: AgentLayout::default(),
            metrics_listen: None,
            reissue: false,
        }
    }

    fn init(dir: &Path) -> Cluster {
        let o = InitOptions {
            name: "prod".into(),
            networks: vec![NetworkEntry { name: "guests".into(), bridge: "br0".into(), vlan: None, cidr: None }],
            pools: vec![PoolEntry::shared("shared", "/srv/vmove/shared")],
            ..Default::default()
        };
        init_cluster(dir, &o).unwrap()
    }

    #[test]
    fn init_makes_a_ca_an_operator_and_an_empty_cluster_file() {
        let d = tempfile::tempdir().unwrap();
        let c = init(d.path());
        let loaded = Cluster::load(&d.path().join(CLUSTER_FILE)).unwrap();
        assert_eq!(loaded.cluster.name, "prod");
        assert!(loaded.hosts.is_empty() && loaded.guests.is_empty());
        assert_eq!(loaded.pools, c.pools);
        for f in ["ca.pem", "ca.key", "operator.pem", "operator.key"] {
            assert!(d.path().join("pki").join(f).exists(), "{f}");
        }
        let e = init_cluster(d.path(), &InitOptions { name: "prod".into(), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("holds a cluster already"), "{e}");
        let e = init_cluster(
            &d.path().join("x"),
            &InitOptions { name: "x".into(), pools: vec![PoolEntry::shared("p", "rel")], ..Default::default() },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an absolute path"), "{e}");
    }

    #[test]
    fn add_host_writes_the_bundle_and_the_entry() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let c = init(d.path());
        let path = d.path().join(CLUSTER_FILE);
        let dir = default_bundle_dir(&c, "kvm1");
        let b = add_host(&path, &opts("kvm1", "10.0.0.11:7450"), &dir, |_| {}).unwrap();
        assert_eq!(b.files.len(), 4);
        for f in &b.files {
            assert!(f.exists(), "{}", f.display());
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("host.key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let cfg = AgentConfig::load(&dir.join(AGENT_CONFIG)).unwrap();
        assert_eq!(cfg, b.config);
        assert_eq!((cfg.accel.as_str(), cfg.listen.as_str()), ("kvm", "10.0.0.11:7450"));
        assert_eq!(cfg.cert, PathBuf::from("/etc/vmove/host.pem"));
        assert_eq!(cfg.state_dir, PathBuf::from(STATE_DIR));
        assert_eq!(cfg.run_dir, PathBuf::from(RUN_DIR));
        assert_eq!(cfg.pools, c.pools);
        assert_eq!(cfg.networks, c.networks);
        assert!(!cfg.allow_fault_injection && cfg.metrics_listen.is_none());
        let loaded = Cluster::load(&path).unwrap();
        assert_eq!(loaded.hosts, vec![HostEntry { name: "kvm1".into(), address: "10.0.0.11:7450".into(), accel: "kvm".into() }]);

        let e = add_host(&path, &opts("kvm1", "10.0.0.12:7450"), &dir, |_| {}).unwrap_err().to_string();
        assert!(e.contains("--reissue"), "{e}");
        let e = add_host(&path, &opts("kvm2", "10.0.0.11:7450"), &dir, |_| {}).unwrap_err().to_string();
        assert!(e.contains("address of kvm1"), "{e}");
        let e = add_host(&path, &opts("kvm_2", "10.0.0.12:7450"), &dir, |_| {}).unwrap_err().to_string();
        assert!(e.contains("host name"), "{e}");
        let e = add_host(&path, &opts("kvm2", "0.0.0.0:7450"), &dir, |_| {}).unwrap_err().to_string();
        assert!(e.contains("own IP"), "{e}");
        let mut re = opts("kvm1", "10.0.0.21:7450");
        re.reissue = true;
        re.metrics_listen = Some("10.0.0.21:7451".parse().unwrap());
        let b = add_host(&path, &re, &dir, |c| c.hardware_generation = 3).unwrap();
        assert_eq!(b.config.metrics_listen.as_deref(), Some("10.0.0.21:7451"));
        assert_eq!(AgentConfig::load(&dir.join(AGENT_CONFIG)).unwrap().hardware_generation, 3);
        assert_eq!(Cluster::load(&path).unwrap().hosts[0].address, "10.0.0.21:7450");
    }

    #[test]
    fn the_ca_key_stays_with_the_operator() {
        let d = tempfile::tempdir().unwrap();
        init(d.path());
        std::fs::remove_file(d.path().join("pki/ca.key")).unwrap();
        let path = d.path().join(CLUSTER_FILE);
        let e = add_host(&path, &opts("kvm1", "10.0.0.11:7450"), &d.path().join("b"), |_| {}).unwrap_err().to_string();
        assert!(e.contains("ca.key") && e.contains("cluster init"), "{e}");
        assert!(Cluster::load(&path).unwrap().hosts.is_empty());
    }

    #[test]
    fn remove_host_refuses_while_guests_are_there_and_removes_the_bundle() {
        let d = tempfile::tempdir().unwrap();
        let c = init(d.path());
        let path = d.path().join(CLUSTER_FILE);
        let dir = default_bundle_dir(&c, "kvm1");
        add_host(&path, &opts("kvm1", "10.0.0.11:7450"), &dir, |_| {}).unwrap();
        let mut with_guest = Cluster::load(&path).unwrap();
        let g: vmove_model::GuestSpec = serde_json::from_value(serde_json::json!({
            "name": "vm1", "host": "kvm1", "vcpus": 1, "memory_mib": 512, "boot": { "kind": "lab" }
        }))
        .unwrap();
        with_guest.guests.push(g);
        with_guest.save(&path).unwrap();
        let e = remove_host(&path, "kvm1").unwrap_err().to_string();
        assert!(e.contains("vm1") && e.contains("migrate or destroy"), "{e}");
        with_guest.guests.clear();
        with_guest.save(&path).unwrap();
        let r = remove_host(&path, "kvm1").unwrap();
        assert_eq!(r.bundle.as_deref(), Some(dir.as_path()));
        assert!(!dir.exists());
        assert!(Cluster::load(&path).unwrap().hosts.is_empty());
        assert!(remove_host(&path, "kvm1").unwrap_err().to_string().contains("no host named kvm1"));
    }
}
