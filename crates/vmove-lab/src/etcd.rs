//! The lab's etcd (`lab up --store etcd --etcd-members N`): one `etcd` process per member,
//! each in a namespace of its own (`<lab>-etcd<j>`) on the management network, at the top
//! of the lab's /28 (198.51.100.(16s+15-j)), client port 2379 and peer port 2380 inside its
//! namespace (so parallel labs never collide), TLS for clients and peers with certificates
//! from the lab CA (`pki/etcd<j>.pem`), client certificates required (the agents' host
//! certificates, the operator's). Data and logs in `DIR/etcd/`. `lab down` kills them with
//! everything else in the lab's namespaces and removes the directory.
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vmove_api::pki::Ca;
use vmove_model::{StoreEntry, StoreKind};
use vmove_store::{EtcdOptions, EtcdStore};

use crate::topology::Plan;

/// The directory (under the lab directory) of the members' data and logs.
pub const DIR: &str = "etcd";

/// How long the members get to elect a leader and answer.
const READY: Duration = Duration::from_secs(60);

/// The `etcd` binary (`VMOVE_ETCD` names another).
fn etcd_bin() -> std::ffi::OsString {
    std::env::var_os("VMOVE_ETCD").unwrap_or_else(|| "etcd".into())
}

/// The `[store]` section of the lab's cluster file and agents.
pub fn store_entry(plan: &Plan) -> StoreEntry {
    StoreEntry {
        kind: StoreKind::Etcd,
        endpoints: (1..=plan.etcd).map(|j| plan.etcd_client_url(j)).collect(),
        namespace: Some(format!("/vmove/{}/", plan.name)),
        server_name: None,
    }
}

/// Issues the members' certificates and starts them; returns their pids.
pub fn start(plan: &Plan, ca: &Ca, dir: &Path) -> Result<Vec<u32>> {
    let pki = dir.join("pki");
    let data = dir.join(DIR);
    std::fs::create_dir_all(&data)?;
    let cluster: Vec<String> = (1..=plan.etcd).map(|j| format!("etcd{j}={}", plan.etcd_peer_url(j))).collect();
    let mut pids = Vec::new();
    for j in 1..=plan.etcd {
        let name = format!("etcd{j}");
        ca.issue_server(&name, plan.etcd_ip(j).into())?.write(&pki, &name)?;
        let (cert, key, ca_pem) = (pki.join(format!("{name}.pem")), pki.join(format!("{name}.key")), pki.join("ca.pem"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data.join(format!("{name}.log")))?;
        let mut cmd = Command::new(etcd_bin());
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data.join(&name).display()))
            .arg(format!("--listen-client-urls={}", plan.etcd_client_url(j)))
            .arg(format!("--advertise-client-urls={}", plan.etcd_client_url(j)))
            .arg(format!("--listen-peer-urls={}", plan.etcd_peer_url(j)))
            .arg(format!("--initial-advertise-peer-urls={}", plan.etcd_peer_url(j)))
            .arg(format!("--initial-cluster={}", cluster.join(",")))
            .arg(format!("--initial-cluster-token=vmove-lab-{}", plan.name))
            .arg("--initial-cluster-state=new")
            .arg(format!("--cert-file={}", cert.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--trusted-ca-file={}", ca_pem.display()))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", cert.display()))
            .arg(format!("--peer-key-file={}", key.display()))
            .arg(format!("--peer-trusted-ca-file={}", ca_pem.display()))
            .arg("--peer-client-cert-auth")
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let ns_fd = vmove_host::netns::open(&plan.etcd_ns(j))?;
        // SAFETY: setns and setsid are async-signal-safe syscalls; `ns_fd` stays open until
        // spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                vmove_host::netns::enter(&ns_fd).map_err(std::io::Error::from)?;
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd.spawn().context("start etcd (is etcd-server installed? scripts/install-deps)")?;
        pids.push(child.id());
    }
    Ok(pids)
}

/// Waits until the members answer a client over TLS (the operator's certificate), and
/// returns that client.
pub async fn wait_ready(plan: &Plan, dir: &Path) -> Result<EtcdStore> {
    let pki = dir.join("pki");
    let tls = vmove_registry::read_tls(&pki.join("ca.pem"), &pki.join("operator.pem"), &pki.join("operator.key"))?;
    let entry = store_entry(plan);
    let mut opts = EtcdOptions::new(entry.endpoints.clone(), Some(tls), entry.namespace.clone().unwrap_or_default());
    opts.timeout = Duration::from_secs(2);
    opts.connect_timeout = Duration::from_secs(2);
    let deadline = Instant::now() + READY;
    loop {
        match EtcdStore::connect_with(opts.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(dir.join(DIR).join("etcd1.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!("the lab's etcd did not answer within {READY:?}: {e} (etcd1.log: {})", tail.join(" | "))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
