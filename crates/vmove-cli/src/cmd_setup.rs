//! Setting a cluster up: `vmove cluster init`, `vmove host add`, `vmove host remove`
//! (`vmove_api::bootstrap`, which `vmove lab up` calls too).
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use vmove_api::bootstrap::{self, AgentLayout, HostOptions, InitOptions};
use vmove_model::{NetworkEntry, PoolEntry};

use crate::args::{HostAddArgs, InitArgs};
use crate::ctx::Ctx;

/// `--network NAME[,bridge=BR][,vlan=N][,cidr=A/P]`.
pub fn parse_network(s: &str) -> Result<NetworkEntry> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or_default().trim();
    if !vmove_model::valid_name(name) {
        bail!("--network {s:?}: the name comes first (NAME[,bridge=BR][,vlan=N][,cidr=A/P])");
    }
    let mut n = NetworkEntry { name: name.into(), bridge: name.into(), vlan: None, cidr: None };
    for kv in parts {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--network {s:?}: {kv:?} is not KEY=VALUE"))?;
        match k.trim() {
            "bridge" if (1..=15).contains(&v.len()) => n.bridge = v.into(),
            "bridge" => bail!("--network {s:?}: a bridge name has 1 to 15 characters"),
            "vlan" => {
                let id: u16 = v.parse().ok().filter(|id| (1..=4094).contains(id)).ok_or_else(|| anyhow!("--network {s:?}: vlan {v:?} is not 1..=4094"))?;
                n.vlan = Some(id);
            }
            "cidr" => n.cidr = Some(v.into()),
            other => bail!("--network {s:?}: unknown key {other:?} (bridge, vlan, cidr)"),
        }
    }
    if n.bridge.len() > 15 {
        bail!("--network {s:?}: the bridge name {:?} is longer than 15 characters; give bridge=BR", n.bridge);
    }
    Ok(n)
}

/// `--pool NAME=PATH[,local]`: a pool every host sees at PATH, or (`,local`) a directory
/// of each host's own.
pub fn parse_pool(s: &str) -> Result<PoolEntry> {
    let (name, path) = s.split_once('=').ok_or_else(|| anyhow!("--pool {s:?}: expected NAME=PATH[,local]"))?;
    let (path, local) = match path.strip_suffix(",local") {
        Some(p) => (p, true),
        None => (path, false),
    };
    if !vmove_model::valid_name(name) {
        bail!("--pool {s:?}: {name:?} is not a valid name ({})", vmove_api::NAME_RULE);
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        bail!("--pool {s:?}: the path must be absolute (every host mounts the pool there)");
    }
    Ok(if local { PoolEntry::local(name, path) } else { PoolEntry::shared(name, path) })
}

/// `--address IP` or `IP:PORT`.
pub fn parse_address(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: IpAddr = s.parse().map_err(|_| anyhow!("--address {s:?} is not IP or IP:PORT"))?;
    Ok(SocketAddr::new(ip, vmove_api::DEFAULT_PORT))
}

/// `--metrics-listen IP:PORT` or `PORT` (on the host's address).
pub fn parse_metrics(s: &str, host: SocketAddr) -> Result<SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(host.ip(), port));
    }
    s.parse().map_err(|_| anyhow!("--metrics-listen {s:?} is not IP:PORT or PORT"))
}

fn dir_name(dir: &Path) -> Result<String> {
    let abs = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    abs.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: give the cluster a --name", dir.display()))
}

/// `vmove cluster init`.
pub fn init(ctx: &Ctx, a: InitArgs) -> Result<()> {
    let name = match a.name {
        Some(n) => n,
        None => dir_name(&a.dir)?,
    };
    let o = InitOptions {
        name,
        networks: a.network.iter().map(|s| parse_network(s)).collect::<Result<_>>()?,
        pools: a.pool.iter().map(|s| parse_pool(s)).collect::<Result<_>>()?,
        ..Default::default()
    };
    let c = bootstrap::init_cluster(&a.dir, &o)?;
    let file = std::path::absolute(&c.path)?;
    if ctx.json {
        crate::out::json(&serde_json::json!({ "ok": true, "cluster": c.cluster.name, "cluster_file": file }));
    } else {
        println!("cluster {} made: {} (CA and operator certificate in {})", c.cluster.name, file.display(), file.with_file_name("pki").display());
        println!("keep this directory on the operator's machine: pki/ca.key issues every host's certificate");
        println!("next: export VMOVE_CLUSTER={}; vmove host add NAME --address IP", file.display());
    }
    Ok(())
}

/// `vmove host add`: the host's certificate and bundle, its entry in the cluster file and,
/// when the cluster keeps its state in etcd, in the store's cluster definition too (what
/// every operator and agent reads).
pub async fn add(ctx: &Ctx, a: HostAddArgs) -> Result<()> {
    let cluster = ctx.file()?;
    let address = parse_address(&a.address)?;
    let metrics_listen = a.metrics_listen.as_deref().map(|m| parse_metrics(m, address)).transpose()?;
    let o = HostOptions {
        name: a.name.clone(),
        address,
        accel: a.accel,
        layout: AgentLayout { config_dir: a.config_dir, state_dir: a.state_dir, run_dir: a.run_dir },
        metrics_listen,
        reissue: a.reissue,
    };
    let dir = a.out.unwrap_or_else(|| bootstrap::default_bundle_dir(&cluster, &a.name));
    let b = bootstrap::add_host(&ctx.cluster_path, &o, &dir, |_| {})?;
    if !cluster.store.is_file() {
        let store = ctx.store(&cluster).await?;
        vmove_registry::put_host(store.as_ref(), &cluster, &b.entry).await.with_context(|| {
            format!("host {} is in {} and has its bundle, but not in etcd yet: run the command again", b.entry.name, ctx.cluster_path.display())
        })?;
    }
    let dir = std::path::absolute(&b.dir)?;
    if ctx.json {
        crate::out::json(&serde_json::json!({
            "ok": true, "host": b.entry, "bundle": dir, "files": b.files, "config": b.config,
        }));
        return Ok(());
    }
    println!("host {} added: {} (accel {}) in {}", b.entry.name, b.entry.address, b.entry.accel, ctx.cluster_path.display());
    let names: Vec<String> = b.files.iter().filter_map(|f| f.file_name()).map(|f| f.to_string_lossy().into_owned()).collect();
    println!("bundle: {} ({})", dir.display(), names.join(", "));
    let target = o.layout.config_dir.display();
    println!("install it on {} (as root there; the vmove package installed):", b.entry.name);
    println!("  scp -p {}/* root@{}:{target}/", dir.display(), address.ip());
    println!("  ssh root@{} systemctl enable --now vmoved", address.ip());
    if let Some(m) = &b.config.metrics_listen {
        println!("metrics: http://{m}/metrics");
    }
    Ok(())
}

/// `vmove host remove`: from the store's cluster definition first when the cluster is on
/// etcd (it refuses while the store places guests there), then from the cluster file.
pub async fn remove(ctx: &Ctx, host: &str) -> Result<()> {
    let file = ctx.file()?;
    let guests_in = if file.store.is_file() {
        bootstrap::GuestsIn::File
    } else {
        let store = ctx.store(&file).await?;
        match vmove_registry::remove_host(store.as_ref(), &file, host).await {
            // Gone from the store already (an earlier run that stopped half-way): go on.
            Ok(_) | Err(vmove_registry::RegistryError::NoHost(_)) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("remove {host} from etcd"))),
        }
        bootstrap::GuestsIn::Store
    };
    let r = bootstrap::remove_host_from_file(&ctx.cluster_path, host, guests_in)?;
    if ctx.json {
        crate::out::json(&serde_json::json!({ "ok": true, "removed": r.entry, "bundle_removed": r.bundle }));
        return Ok(());
    }
    println!("host {} ({}) removed from {}", r.entry.name, r.entry.address, ctx.cluster_path.display());
    if let Some(b) = r.bundle {
        println!("its bundle {} is gone", b.display());
    }
    println!(
        "its certificate stays valid for the cluster CA (vmove keeps no revocation list): stop vmoved on {} and remove /etc/vmove/host.key there",
        r.entry.name
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_pools_and_addresses_parse() {
        let n = parse_network("guests,bridge=br0,vlan=10,cidr=10.1.0.0/24").unwrap();
        assert_eq!((n.name.as_str(), n.bridge.as_str(), n.vlan, n.cidr.as_deref()), ("guests", "br0", Some(10), Some("10.1.0.0/24")));
        assert_eq!(parse_network("lab-net").unwrap().bridge, "lab-net");
        assert!(parse_network("guests,vlan=5000").unwrap_err().to_string().contains("1..=4094"));
        assert!(parse_network("guests,colour=red").unwrap_err().to_string().contains("unknown key"));
        assert!(parse_network("a-very-long-network-name").unwrap_err().to_string().contains("15 characters"));
        let p = parse_pool("shared=/srv/vmove/shared").unwrap();
        assert_eq!((p.name.as_str(), p.path.as_path()), ("shared", Path::new("/srv/vmove/shared")));
        assert!(parse_pool("shared=srv").unwrap_err().to_string().contains("absolute"));
        assert!(parse_pool("shared").is_err());
        assert_eq!(parse_address("10.0.0.1").unwrap(), "10.0.0.1:7450".parse().unwrap());
        assert_eq!(parse_address("10.0.0.1:8000").unwrap(), "10.0.0.1:8000".parse().unwrap());
        assert!(parse_address("kvm1").is_err());
        let h = "10.0.0.1:7450".parse().unwrap();
        assert_eq!(parse_metrics("7451", h).unwrap(), "10.0.0.1:7451".parse().unwrap());
        assert_eq!(parse_metrics("127.0.0.1:9000", h).unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert!(parse_metrics("x", h).is_err());
    }
}
