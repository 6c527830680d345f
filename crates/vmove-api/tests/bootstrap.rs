//! `cluster init` and `host add` make certificates that work together: an agent serving
//! with the bundle's files answers the operator client the cluster file describes, and the
//! host certificate also works as a peer's client certificate (role `host`), after the CA
//! was read back from its files (as every `host add` does).
use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use vmove_api::bootstrap::{add_host, default_bundle_dir, init_cluster, AgentLayout, HostOptions, InitOptions};
use vmove_api::pki::CertPair;
use vmove_api::server::{serve, EventSink, ServerStats, Service};
use vmove_api::{AgentClient, Health, Reply, Request, Role};
use vmove_model::{AgentConfig, Cluster};

struct Echo;

#[async_trait]
impl Service for Echo {
    async fn call(&self, _req: Request, role: Role, _events: &mut EventSink<'_>) -> Reply {
        Reply::ok(Health { host: "kvm1".into(), agent_version: "t".into(), caller: role, ..Default::default() })
    }
}

#[tokio::test]
async fn a_bundle_serves_the_operator_and_peers() {
    let d = tempfile::tempdir().unwrap();
    init_cluster(d.path(), &InitOptions { name: "c".into(), ..Default::default() }).unwrap();
    let path = d.path().join("cluster.toml");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = default_bundle_dir(&Cluster::load(&path).unwrap(), "kvm1");
    let layout = AgentLayout { config_dir: dir.clone(), state_dir: dir.join("state"), run_dir: dir.join("run") };
    let o = HostOptions { name: "kvm1".into(), address: addr, accel: "kvm".into(), layout, metrics_listen: None, reissue: false };
    add_host(&path, &o, &dir, |_| {}).unwrap();

    let cfg = AgentConfig::load(&dir.join("agent.toml")).unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let me = CertPair { cert_pem: read(&cfg.cert), key_pem: read(&cfg.key) };
    let acceptor = TlsAcceptor::from(vmove_api::tls::server_config(&read(&cfg.ca), &me).unwrap());
    tokio::spawn(serve(listener, acceptor, Arc::new(Echo), Arc::new(ServerStats::default())));

    let cluster = Cluster::load(&path).unwrap();
    let clients = vmove_api::operator_clients(&cluster).unwrap();
    assert_eq!(clients.len(), 1);
    let h: Health = clients[0].1.call(&Request::Health).await.unwrap();
    assert_eq!(h.caller, Role::Operator);

    let peer = AgentClient::new(addr, "kvm1", vmove_api::tls::client_config(&read(&cfg.ca), &me).unwrap());
    let h: Health = peer.call(&Request::Health).await.unwrap();
    assert_eq!(h.caller, Role::Host);
}
