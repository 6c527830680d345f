//! `vmoved`, the host agent: runs guests as QEMU processes, owns the host's taps and
//! volume leases, keeps its state in a store and serves the mTLS API. Module map:
//!
//! - [`guests`]: the guest registry (define, start, stop, devices) over [`host::HostOps`];
//! - [`jobs`]: migration jobs, each a [`vmove_plan::JobMachine`] run by [`jobs::runner`];
//! - [`steps`]: one module per step, each with its `run` and `undo`;
//! - [`migrate_dst`] and [`migrate_src`]: the two halves of live migration, named for the
//!   host they run on; [`peer`]: calls from target to source;
//! - [`state`]: typed records in a `vmove_store::StateStore`; [`leases`]: volume leases;
//!   [`claims`]: source claims; [`storage`]: copies of local volumes (both halves);
//!   [`fleet`]: on etcd, this host's lease, membership, migration claims, the job index,
//!   and self-fencing ([`fleet::fence`]);
//! - [`dispatch`] and [`server`]: the API; [`reconcile`]: restart; [`hooks`]: test hooks;
//!   [`metrics`]: Prometheus metrics.
#![warn(missing_docs)]

pub mod claims;
pub mod console;
pub mod dispatch;
pub mod error;
pub mod fleet;
pub mod frames;
pub mod guests;
pub mod hooks;
pub mod host;
pub mod inventory;
pub mod jobs;
pub mod leases;
pub mod links;
pub mod metrics;
pub mod migrate_dst;
pub mod migrate_src;
pub mod peer;
pub mod reconcile;
pub mod server;
pub mod state;
pub mod steps;
pub mod storage;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::error::{fail, AgentError, Result, ResultExt};

/// Now, unix ms.
pub fn now_ms() -> u64 {
    vmove_model::now_ms()
}

/// `vmoved` arguments.
#[derive(Parser, Debug)]
#[command(name = "vmoved", version, about = "vmove host agent")]
struct Args {
    /// Agent configuration file.
    #[arg(long, env = "VMOVED_CONFIG")]
    config: PathBuf,
}

/// Entry point of the `vmoved` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        // netlink-packet-route warns at every link dump that newer kernels send attributes
        // longer than it knows (IFLA_INET6_CONF): several lines per netlink call, no news.
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,netlink_packet_route=error".into()))
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmoved: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmoved: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `auto` → `kvm` if /dev/kvm opens, else `tcg`.
fn resolve_accel(accel: &str) -> Result<String> {
    Ok(match accel {
        "auto" => {
            if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() {
                "kvm".to_string()
            } else {
                "tcg".to_string()
            }
        }
        "kvm" | "tcg" => accel.to_string(),
        other => fail!(InvalidRequest, "accel {other:?} is not kvm, tcg or auto"),
    })
}

async fn run(args: Args) -> Result<()> {
    let cfg = vmove_model::AgentConfig::load(&args.config).map_err(AgentError::host)?;
    for d in [&cfg.state_dir, &cfg.run_dir] {
        std::fs::create_dir_all(d).with_ctx(|| format!("create {}", d.display()))?;
    }
    let accel = resolve_accel(&cfg.accel)?;
    let qemu = vmove_host::qemu_probe::probe(vmove_host::qemu::QEMU_BIN, &cfg.run_dir.join(".probe"))
        .await
        .map_err(|e| AgentError::host(format!("cannot learn what this host's QEMU can do: {e:#}")))?;
    vmove_host::qemu_probe::check_minimum(&qemu).map_err(|e| AgentError::host(format!("{e:#}")))?;
    tracing::info!(version = %qemu.version, capabilities = qemu.migration_capabilities.len(), "QEMU features learned");
    let opened = open_store(&cfg).await?;
    let (ca, me) = server::tls_files(&cfg)?;
    let peer_tls = vmove_api::tls::client_config(&ca, &me).map_err(AgentError::host)?;
    let parts = guests::Parts {
        cfg: cfg.clone(),
        accel,
        qemu,
        host: Arc::new(host::RealHost::default()),
        state: state::State::counted(opened.state),
        leases: opened.leases,
        peer_tls,
        fleet: opened.fleet,
    };
    let agent = Arc::new(guests::Agent::new(parts).await?);
    agent.reconcile().await?;
    let jobs = jobs::Jobs::open(agent.clone()).await?;
    if agent.fleet().is_some() {
        // Claims this host's guests again on its new lease, then fences by its health.
        tokio::spawn(fleet::fence::run(jobs.clone()));
    }
    let api = Arc::new(dispatch::Api { agent, jobs });
    if let Some(addr) = &cfg.metrics_listen {
        metrics::serve::start(api.clone(), addr).await?;
    }
    server::serve(api, &cfg).await
}

/// The agent's stores, as its configuration says.
struct Opened {
    state: Arc<dyn vmove_store::StateStore>,
    leases: BTreeMap<String, leases::Leases>,
    fleet: Option<Arc<fleet::Fleet>>,
}

/// Files (the state directory, lease files on each pool) or etcd (this host's namespace
/// for its own state, the cluster's for what it shares, a lease kept alive).
async fn open_store(cfg: &vmove_model::AgentConfig) -> Result<Opened> {
    let mut leases = BTreeMap::new();
    // A local pool's leases are this host's own (its copy of a volume is not another
    // host's), in lease files on the pool whatever the store.
    let file_leases = |p: &vmove_model::PoolEntry| -> Result<leases::Leases> {
        let s = vmove_store::FileStore::open(p.path.join(".vmove-leases"))
            .with_ctx(|| format!("open the leases of pool {}", p.name))?;
        Ok(leases::Leases::new(Arc::new(s), ""))
    };
    if cfg.store.kind == vmove_model::StoreKind::File {
        let store = vmove_store::FileStore::open(&cfg.state_dir).ctx("open the state store")?;
        for p in &cfg.pools {
            leases.insert(p.name.clone(), file_leases(p)?);
        }
        return Ok(Opened { state: Arc::new(store), leases, fleet: None });
    }
    let namespace = cfg.store.namespace.clone().unwrap_or_default();
    let tls = vmove_registry::read_tls(&cfg.ca, &cfg.cert, &cfg.key).map_err(|e| AgentError::host(vmove_api::one_line(&e)))?;
    let cluster = vmove_registry::open_etcd(&cfg.store, &namespace, tls)
        .await
        .map_err(|e| AgentError::host(format!("open the cluster's etcd: {}", vmove_api::one_line(&e))))?;
    let own = cluster.sub_namespace(&vmove_registry::keys::host_namespace(&cfg.name))?;
    let policy = vmove_store::LeasePolicy::with_ttl(std::time::Duration::from_secs(cfg.lease_ttl_s));
    let fleet = fleet::Fleet::join(Arc::new(cluster), &cfg.name, &cfg.listen, policy).await?;
    for p in &cfg.pools {
        let l = if p.is_local() {
            file_leases(p)?
        } else {
            leases::Leases::on_fleet(fleet.clone(), &vmove_registry::keys::volume_leases(&p.name))
        };
        leases.insert(p.name.clone(), l);
    }
    tracing::info!(namespace, endpoints = ?cfg.store.endpoints, "state on etcd");
    Ok(Opened { state: Arc::new(own), leases, fleet: Some(fleet) })
}
