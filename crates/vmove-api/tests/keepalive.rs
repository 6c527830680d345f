//! Connections between agents are kept open and reused: many calls, one TLS handshake; a
//! refused call carries its code; a connection the server closed is replaced.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use vmove_api::pki::Ca;
use vmove_api::server::{serve, EventSink, Service, ServerStats};
use vmove_api::{AgentClient, ErrorCode, Health, Reply, Request, Role};

struct Echo;

#[async_trait]
impl Service for Echo {
    async fn call(&self, req: Request, role: Role, _events: &mut EventSink<'_>) -> Reply {
        match req {
            Request::Health => Reply::ok(Health { host: "h1".into(), agent_version: "t".into(), caller: role, ..Default::default() }),
            Request::GuestShow { name } => Reply::err(ErrorCode::NotFound, format!("no guest named {name} on h1")),
            _ => Reply::err(ErrorCode::Internal, "unexpected"),
        }
    }
}

async fn start() -> (AgentClient, Arc<ServerStats>) {
    let ca = Ca::generate("t").unwrap();
    let ip = "127.0.0.1".parse().unwrap();
    let host = ca.issue_host("h1", ip).unwrap();
    let op = ca.issue_operator("op").unwrap();
    let acceptor = TlsAcceptor::from(vmove_api::tls::server_config(&ca.pair().cert_pem, &host).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ServerStats::default());
    tokio::spawn(serve(listener, acceptor, Arc::new(Echo), stats.clone()));
    let client = AgentClient::new(addr, "h1", vmove_api::tls::client_config(&ca.pair().cert_pem, &op).unwrap());
    (client, stats)
}

#[tokio::test]
async fn fifty_calls_use_one_connection() {
    let (c, stats) = start().await;
    for _ in 0..50 {
        let h: Health = c.call(&Request::Health).await.unwrap();
        assert_eq!(h.host, "h1");
    }
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1, "one TLS handshake for 50 calls");
    assert_eq!(stats.requests.load(Ordering::Relaxed), 50);
    // Clones share the connection.
    let c2 = c.clone().with_timeout(std::time::Duration::from_secs(5));
    let _: Health = c2.call(&Request::Health).await.unwrap();
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn refusals_carry_their_code_and_keep_the_connection() {
    let (c, stats) = start().await;
    let e = c.call_raw(&Request::GuestShow { name: "vm9".into() }).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert!(!e.is_unreachable());
    assert_eq!(e.to_string(), "h1: no guest named vm9 on h1");
    let _: Health = c.call(&Request::Health).await.unwrap();
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn concurrent_calls_open_more_connections_and_all_succeed() {
    let (c, stats) = start().await;
    let calls = (0..8).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.call::<Health>(&Request::Health).await })
    });
    for h in calls {
        assert_eq!(h.await.unwrap().unwrap().host, "h1");
    }
    let n = stats.connections.load(Ordering::Relaxed);
    assert!((1..=8).contains(&n), "{n}");
}

#[tokio::test]
async fn an_unreachable_agent_is_a_typed_error() {
    let (c, _) = start().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let tls = vmove_api::tls::anonymous_client_config(&Ca::generate("x").unwrap().pair().cert_pem).unwrap();
    let d = AgentClient::new(dead, "h1", tls);
    let e = d.call_raw(&Request::Health).await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert_eq!(e.code(), ErrorCode::Unreachable);
    drop(c);
}
