//! The conformance suite and the failure modes of the etcd store, against a real etcd with
//! TLS and client certificates (a throwaway one per test: `TestEtcd`).
use std::time::Duration;

use vmove_store::testing::{TestEtcd, TestPki};
use vmove_store::{conformance, EtcdOptions, EtcdStore, Precondition, StateStore, StoreError};

async fn etcd() -> TestEtcd {
    TestEtcd::start().await.unwrap_or_else(|e| panic!("start etcd: {e}"))
}

async fn store(etcd: &TestEtcd) -> EtcdStore {
    etcd.store(&TestEtcd::unique_namespace()).await.unwrap_or_else(|e| panic!("connect: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_and_two_handles() {
    let etcd = etcd().await;
    let ns = TestEtcd::unique_namespace();
    let a = etcd.store(&ns).await.unwrap();
    conformance::run_all(&a).await;
    // A second connection on the same namespace: two clients, one store.
    let ns2 = TestEtcd::unique_namespace();
    let (a, b) = (etcd.store(&ns2).await.unwrap(), etcd.store(&ns2).await.unwrap());
    conformance::run_two_handles(&a, &b).await;
}

/// Namespaces keep clusters apart in one etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_separate() {
    let etcd = etcd().await;
    let (a, b) = (store(&etcd).await, store(&etcd).await);
    a.put("guests/vm1", b"a".to_vec(), Precondition::Absent).await.unwrap();
    b.put("guests/vm1", b"b".to_vec(), Precondition::Absent).await.unwrap();
    a.append("jobs/j1", b"a".to_vec()).await.unwrap();
    assert_eq!(b.append("jobs/j1", b"b".to_vec()).await.unwrap(), 0);
    let mut wb = b.watch("").await.unwrap();
    a.put("guests/vm2", b"a".to_vec(), Precondition::Any).await.unwrap();
    let rb = b.put("guests/vm3", b"b".to_vec(), Precondition::Any).await.unwrap();
    assert_eq!(wb.recv().await.map(|e| (e.key().to_string(), e.revision())), Some(("guests/vm3".into(), rb)));
    assert_eq!(a.list("").await.unwrap().len(), 2);
    assert_eq!(b.get("guests/vm1").await.unwrap().unwrap().value, b"b");
    assert!(a.namespace() != b.namespace());
    let bad = EtcdStore::connect_with(etcd.options("no-slashes")).await;
    assert!(matches!(bad, Err(StoreError::InvalidKey { .. })), "{bad:?}");
}

/// A sub-namespace (a host's own keys below the cluster's) shares the connection and is
/// apart from its parent: the parent's lists, watches and logs never see its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_namespaces_are_apart_from_their_parent() {
    let etcd = etcd().await;
    let cluster = store(&etcd).await;
    let host = cluster.sub_namespace("hosts/host1/").unwrap();
    assert_eq!(host.namespace(), format!("{}hosts/host1/", cluster.namespace()));
    let mut w = cluster.watch("").await.unwrap();
    host.put("guests/vm1", b"h".to_vec(), Precondition::Absent).await.unwrap();
    host.append("jobs/host1-1", b"e".to_vec()).await.unwrap();
    let r = cluster.put("guests/vm1", b"c".to_vec(), Precondition::Absent).await.unwrap();
    assert_eq!(w.recv().await.map(|e| (e.key().to_string(), e.revision())), Some(("guests/vm1".into(), r)));
    assert_eq!(cluster.list("").await.unwrap().len(), 1);
    assert_eq!(host.list("").await.unwrap().len(), 1);
    assert!(cluster.read_log("jobs/host1-1", 0).await.unwrap().is_empty());
    assert_eq!(host.read_log("jobs/host1-1", 0).await.unwrap(), vec![(0, b"e".to_vec())]);
    assert_eq!(host.get("guests/vm1").await.unwrap().unwrap().value, b"h");
    for bad in ["hosts/host1", "kv/x/", "log/", "/a/", "a//"] {
        assert!(matches!(cluster.sub_namespace(bad), Err(StoreError::InvalidKey { .. })), "{bad}");
    }
}

/// Lists and log reads longer than a page (128 keys) come back whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lists_are_paged() {
    let etcd = etcd().await;
    let s = store(&etcd).await;
    let keys: Vec<String> = (0..300).map(|i| format!("many/k{i:03}")).collect();
    futures::future::join_all(keys.iter().map(|k| s.put(k, k.as_bytes().to_vec(), Precondition::Absent)))
        .await
        .into_iter()
        .for_each(|r| assert!(r.is_ok(), "{r:?}"));
    let listed = s.list("many/").await.unwrap();
    assert_eq!(listed.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), keys);
    assert!(listed.iter().all(|e| e.value == e.key.as_bytes()));
    assert_eq!(s.list("many/k2").await.unwrap().len(), 100);
    futures::future::join_all((0..300u32).map(|i| s.append("many", i.to_le_bytes().to_vec()))).await;
    let log = s.read_log("many", 10).await.unwrap();
    assert_eq!(log.len(), 290);
    assert!(log.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64 + 10));
}

/// A client whose certificate another CA signed is refused (client certificate
/// authentication), and so is one that does not trust the server's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_are_required() {
    let etcd = etcd().await;
    let other = TestPki::generate().unwrap();
    let mut untrusted_client = etcd.options("/t/");
    untrusted_client.tls = Some(vmove_store::EtcdTls { ca_pem: etcd.pki().ca_pem.clone(), ..other.client.clone() });
    untrusted_client.timeout = Duration::from_secs(2);
    let r = EtcdStore::connect_with(untrusted_client).await;
    assert!(r.is_err(), "a client certificate of another CA must be refused");
    let mut untrusted_server = etcd.options("/t/");
    untrusted_server.tls = Some(other.client);
    untrusted_server.timeout = Duration::from_secs(2);
    let r = EtcdStore::connect_with(untrusted_server).await;
    assert!(matches!(r, Err(StoreError::Backend { .. })), "the server's certificate is verified (not unreachable): {r:?}");
    let mut plain = EtcdOptions::new(vec![etcd.endpoint().replace("https", "http")], None, "/t/");
    plain.timeout = Duration::from_secs(2);
    assert!(EtcdStore::connect_with(plain).await.is_err(), "no plain text");
}

#[track_caller]
fn unreachable<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(matches!(&r, Err(e) if e.is_unreachable()), "{what}: expected Unreachable, got {r:?}");
}

/// etcd killed: every call ends in time with `Unreachable` (also those in flight, and
/// appends queued in the appender); open watches end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_etcd_gives_unreachable_not_a_hang() {
    let mut etcd = etcd().await;
    let mut opts = etcd.options(&TestEtcd::unique_namespace());
    opts.timeout = Duration::from_secs(2);
    let s = EtcdStore::connect_with(opts).await.unwrap();
    s.put("k", b"v".to_vec(), Precondition::Any).await.unwrap();
    let mut w = s.watch("").await.unwrap();
    // Appends in flight while etcd dies.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..10_000u32 {
                let r = s.append("busy", i.to_le_bytes().to_vec()).await;
                let failed = r.is_err();
                results.push(r);
                if failed {
                    break;
                }
            }
            results
        })
    };
    // Wait until some appends went through, then kill.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while s.read_log("busy", 0).await.unwrap().len() < 5 {
        assert!(tokio::time::Instant::now() < until, "no appends went through");
        tokio::task::yield_now().await;
    }
    let t = std::time::Instant::now();
    etcd.kill();
    let results = tokio::time::timeout(Duration::from_secs(10), writer).await.expect("appends hang").unwrap();
    let last = results.last().unwrap();
    assert!(matches!(last, Err(e) if e.is_unreachable()), "the append in flight: {last:?}");
    assert!(results.iter().all(|r| r.is_ok() || r.as_ref().is_err_and(StoreError::is_unreachable)));
    // Open watches end.
    let ended = tokio::time::timeout(Duration::from_secs(10), async { while w.recv().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the watch did not end");
    unreachable(s.get("k").await, "get");
    unreachable(s.put("k", vec![1], Precondition::Any).await, "put");
    unreachable(s.put("k", vec![1], Precondition::Absent).await, "put if absent");
    unreachable(s.delete("k", Precondition::Revision(1)).await, "delete");
    unreachable(s.list("").await, "list");
    unreachable(s.watch("").await.map(drop), "watch");
    unreachable(s.append("l", vec![1]).await, "append");
    unreachable(s.read_log("l", 0).await, "read_log");
    unreachable(s.delete_log("l").await, "delete_log");
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
}

/// A frozen etcd (the process stopped, connections open, no answers): each call gives up
/// at its deadline with `Unreachable`; when etcd goes on, so does the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_etcd_hits_the_deadline() {
    let etcd = etcd().await;
    let mut opts = etcd.options(&TestEtcd::unique_namespace());
    opts.timeout = Duration::from_millis(700);
    let s = EtcdStore::connect_with(opts).await.unwrap();
    let r1 = s.put("k", b"v".to_vec(), Precondition::Any).await.unwrap();
    etcd.freeze();
    let t = std::time::Instant::now();
    unreachable(s.get("k").await, "get");
    unreachable(s.put("k", vec![2], Precondition::Revision(r1)).await, "put");
    unreachable(s.append("l", vec![1]).await, "append");
    unreachable(s.watch("").await.map(drop), "watch");
    // Each call gives up at its deadline or sooner (HTTP/2 keep-alive pings find the
    // connection dead).
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "took {took:?}");
    etcd.thaw();
    // The put above may or may not have happened (fail-stop): read again, then go on.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let e = loop {
        match s.get("k").await {
            Ok(e) => break e.unwrap(),
            Err(e) if e.is_unreachable() && tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("after thaw: {e}"),
        }
    };
    s.put("k", vec![3], Precondition::Revision(e.revision)).await.unwrap();
}
