//! Issue 19, item 3 "Load": live migrations running side by side while many clients poll
//! the agents through the mTLS API (`job show`, `host list`, `guest list`). Every
//! migration completes and its guest verifies, no request fails; the report gives the
//! API's latency (p50, p99, max) and each agent's memory (VmRSS) before and after.
//!
//! The default suite runs a small variant (2 hosts, 2 migrations, 10 clients, about
//! 20 requests/s). The full one (4 hosts, 8 migrations, 50 clients, about 100 requests/s)
//! takes minutes and wants a quiet machine for meaningful latencies:
//!
//! ```text
//! cargo nextest run -p vmove --test lab_load --run-ignored only --no-capture
//! ```
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::*;
use vmove_api::pki::CertPair;
use vmove_api::{one_line, AgentClient, Request};

/// One load run.
struct Load {
    tag: &'static str,
    hosts: u8,
    /// Guests per host; each migrates to the next host (the last host's to host1).
    guests_per_host: u8,
    /// Concurrent API clients.
    clients: usize,
    /// Requests per second, all clients together.
    rate_per_s: u32,
    /// Guest memory (`guest create --memory`).
    memory: &'static str,
    /// The guests' dirty rate, MB/s: small, so that every migration converges on the
    /// shared cores and the memory verifies.
    dirty_mb_s: u32,
    /// How long the migrations may take, all of them.
    migrations_within: Duration,
    /// The clients poll this long before the migrations start...
    lead: Duration,
    /// ... and at least this long in all.
    min_load: Duration,
}

#[test]
fn load_small_two_migrations_ten_clients() {
    let r = Load {
        tag: "loads",
        hosts: 2,
        guests_per_host: 1,
        clients: 10,
        rate_per_s: 20,
        memory: "128M",
        dirty_mb_s: 2,
        migrations_within: Duration::from_secs(300),
        lead: Duration::from_secs(5),
        min_load: Duration::from_secs(20),
    }
    .run();
    assert!(r.requests > 0, "the clients made requests");
    assert_eq!(r.at_once, 2, "the two migrations ran side by side");
}

#[test]
#[ignore = "minutes long; wants a quiet machine: cargo nextest run -p vmove --test lab_load --run-ignored only --no-capture"]
fn load_full_eight_migrations_fifty_clients() {
    let r = Load {
        tag: "loadf",
        hosts: 4,
        guests_per_host: 2,
        clients: 50,
        rate_per_s: 100,
        memory: "256M",
        dirty_mb_s: 2,
        migrations_within: Duration::from_secs(1500),
        lead: Duration::from_secs(20),
        min_load: Duration::from_secs(120),
    }
    .run();
    // About the rate asked for (the clients keep their own pace; a slow answer delays
    // only that client's next request).
    assert!(r.at_once >= 4, "the migrations ran side by side: at most {} at once", r.at_once);
    let rate = r.requests as f64 / r.load_secs;
    assert!(rate > 50.0, "{rate:.0} requests/s");
}

/// What a run measured.
struct Report {
    requests: usize,
    /// The most migrations that ran at once (by the agents' job records).
    at_once: usize,
    load_secs: f64,
}

/// One guest and its move.
struct Move {
    guest: String,
    ip: String,
    from: String,
    to: String,
}

/// What each client recorded: per operation, the latencies of the answered calls; and
/// the failures.
#[derive(Default)]
struct Record {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    /// The same latencies by connection: kept between requests, or new for each.
    by_connection: BTreeMap<&'static str, Vec<Duration>>,
    failures: Vec<String>,
}

impl Load {
    fn moves(&self) -> Vec<Move> {
        let mut v = Vec::new();
        for h in 1..=self.hosts {
            for k in 1..=self.guests_per_host {
                let n = (h - 1) * self.guests_per_host + k;
                v.push(Move {
                    guest: format!("ld{n}"),
                    ip: format!("192.0.2.{}", 100 + u32::from(n)),
                    from: format!("host{h}"),
                    to: format!("host{}", h % self.hosts + 1),
                });
            }
        }
        v
    }

    fn run(self) -> Report {
        let load_at_start = loadavg();
        let lab = Lab::up(self.tag, self.hosts);
        let moves = self.moves();
        let (dirty, nic_ips) = (self.dirty_mb_s.to_string(), moves.iter().map(|m| format!("lab-net,ip={}/24", m.ip)).collect::<Vec<_>>());
        for (m, nic) in moves.iter().zip(&nic_ips) {
            lab.ok(&["guest", "create", &m.guest, "--host", &m.from, "--memory", self.memory, "--nic", nic, "--dirty-rate", &dirty, "--start"]);
        }
        for m in &moves {
            lab.wait_tcp_echo(&format!("{}:7", m.ip), Duration::from_secs(300));
            lab.wait_log(&m.guest, "VERIFY OK", Duration::from_secs(120), |l| l.contains("VERIFY OK"));
        }

        // The agents and their memory before the load.
        let info = vmove_lab::lab::LabInfo::load(&lab.dir).expect("lab.json");
        let hosts: Vec<String> = (1..=self.hosts).map(|h| format!("host{h}")).collect();
        let pids: Vec<u32> =
            hosts.iter().map(|h| vmove_lab::lab::agent_pid(&info, h).unwrap_or_else(|| panic!("no agent on {h}"))).collect();
        let rss_before: Vec<u64> = pids.iter().map(|p| vm_rss_kib(*p)).collect();

        // The clients start polling; the migrations start while they do.
        let api = Api::new(&lab, &hosts);
        let jobs: Arc<RwLock<Vec<(String, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let load_started = Instant::now();
        let clients = {
            let (api, jobs, stop) = (api.clone(), jobs.clone(), stop.clone());
            let (n, rate) = (self.clients, self.rate_per_s);
            std::thread::spawn(move || run_clients(api, n, rate, jobs, stop))
        };
        std::thread::sleep(self.lead);
        let submitted: Vec<(String, &Move)> = std::thread::scope(|s| {
            let handles: Vec<_> = moves
                .iter()
                .map(|m| {
                    let lab = &lab;
                    s.spawn(move || {
                        let out = lab.ok(&["migrate", &m.guest, "--to", &m.to, "--detach"]);
                        (out.trim().to_string(), m)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("migrate --detach")).collect()
        });
        jobs.write().unwrap().extend(submitted.iter().map(|(id, m)| (id.clone(), m.to.clone())));
        let moves_started = Instant::now();

        // Follow each job to its end (`vmove job watch`, which also records the move in
        // the cluster file), all at once.
        let (tx, rx) = mpsc::channel();
        for (id, m) in &submitted {
            let (tx, id, guest) = (tx.clone(), id.clone(), m.guest.clone());
            let cluster = lab.cluster.clone();
            std::thread::spawn(move || {
                let o = Command::new(vmove_bin()).args(["job", "watch", &id]).env("VMOVE_CLUSTER", cluster).output();
                let _ = tx.send((guest, id, o));
            });
        }
        drop(tx);
        let deadline = moves_started + self.migrations_within;
        let mut ended = Vec::new();
        while ended.len() < submitted.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((guest, id, o)) => {
                    let o = o.expect("run vmove job watch");
                    let secs = moves_started.elapsed().as_secs_f64();
                    assert!(o.status.success(), "job {id} ({guest}) did not succeed: {}", String::from_utf8_lossy(&o.stderr));
                    ended.push((guest, id, secs));
                }
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    panic!("migrations not over within {:?}; ended: {ended:?}", self.migrations_within)
                }
            }
        }
        let moves_secs = moves_started.elapsed().as_secs_f64();
        if let Some(left) = self.min_load.checked_sub(load_started.elapsed()) {
            std::thread::sleep(left);
        }
        stop.store(true, Ordering::Relaxed);
        let record = clients.join().expect("clients");
        let load_secs = load_started.elapsed().as_secs_f64();

        // Every guest moved, runs once on its target and verifies its memory there.
        let mut spans = Vec::new();
        for (id, m) in &submitted {
            let j = lab.json(&["job", "show", id]);
            assert_eq!(j["status"], "succeeded", "{j}");
            spans.push((j["created_ms"].as_u64().expect("created_ms"), j["ended_ms"].as_u64().expect("ended_ms")));
            assert_eq!(lab.qemu_hosts(&m.guest), vec![m.to.clone()], "{} runs on {} only", m.guest, m.to);
            assert_eq!(lab.cluster_host(&m.guest), m.to);
            let log = lab.wait_log(&m.guest, "VERIFY OK after the move", Duration::from_secs(120), |l| l.matches("VERIFY OK").count() >= 2);
            assert!(!log.contains("VERIFY FAIL"), "{}: {log}", m.guest);
        }
        // The same agents served throughout (none restarted), and their memory after.
        for (h, p) in hosts.iter().zip(&pids) {
            assert_eq!(vmove_lab::lab::agent_pid(&info, h), Some(*p), "the agent of {h} is the one that started");
        }
        let rss_after: Vec<u64> = pids.iter().map(|p| vm_rss_kib(*p)).collect();
        let load_at_end = loadavg();

        let requests = record.latencies.values().map(Vec::len).sum::<usize>() + record.failures.len();
        eprintln!("LOAD {}: {} hosts, {} live migrations, {} clients at {} requests/s asked", self.tag, self.hosts, moves.len(), self.clients, self.rate_per_s);
        eprintln!("  migrations: all {} succeeded in {moves_secs:.1} s, at most {} at once; each ended at (s): {ended:?}", moves.len(), most_at_once(&spans));
        eprintln!("  requests: {requests} in {load_secs:.1} s ({:.1}/s), {} failed", requests as f64 / load_secs, record.failures.len());
        let all: Vec<Duration> = record.latencies.values().flatten().copied().collect();
        eprintln!("  latency all: {}", summary(&all));
        for (what, v) in record.latencies.iter().chain(&record.by_connection) {
            eprintln!("  latency {what}: {}", summary(v));
        }
        for ((h, b), a) in hosts.iter().zip(&rss_before).zip(&rss_after) {
            eprintln!("  agent {h}: VmRSS {b} KiB before, {a} KiB after");
        }
        eprintln!("  load average: {load_at_start} at start, {load_at_end} at end");
        assert!(record.failures.is_empty(), "{} failed requests, first ones: {:#?}", record.failures.len(), &record.failures[..record.failures.len().min(10)]);
        Report { requests, at_once: most_at_once(&spans), load_secs }
    }
}

/// Clients of every agent, with the operator's certificate.
#[derive(Clone)]
struct Api {
    hosts: Vec<(String, SocketAddr)>,
    tls: Arc<rustls::ClientConfig>,
}

impl Api {
    fn new(lab: &Lab, hosts: &[String]) -> Api {
        let pki = lab.dir.join("pki");
        let ca = std::fs::read_to_string(pki.join("ca.pem")).expect("ca.pem");
        let tls = vmove_api::tls::client_config(&ca, &CertPair::read(&pki, "operator").expect("operator certificate")).expect("TLS");
        let cluster = vmove_model::Cluster::load(&lab.cluster).expect("cluster file");
        let hosts = hosts
            .iter()
            .map(|h| {
                let a = cluster.host(h).unwrap_or_else(|| panic!("no {h} in the cluster file")).address.clone();
                (h.clone(), a.parse().unwrap_or_else(|e| panic!("{h}'s address {a}: {e}")))
            })
            .collect();
        Api { hosts, tls }
    }

    fn client(&self, i: usize) -> AgentClient {
        let (name, addr) = &self.hosts[i % self.hosts.len()];
        AgentClient::new(*addr, name, self.tls.clone())
    }

    fn index(&self, host: &str) -> usize {
        self.hosts.iter().position(|(h, _)| h == host).unwrap_or(0)
    }
}

/// `n` clients making `rate` requests a second in all until `stop`. Each client turns
/// through job_show (of a job at its target, once there are jobs), host_info and
/// guest_list, over the agents in turn. Even clients keep their connections (like an agent
/// polling a peer); odd ones open one per request (like a `vmove` command).
fn run_clients(api: Api, n: usize, rate: u32, jobs: Arc<RwLock<Vec<(String, String)>>>, stop: Arc<AtomicBool>) -> Record {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let record = Arc::new(Mutex::new(Record::default()));
    let period = Duration::from_secs_f64(n as f64 / f64::from(rate));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..n {
            let (api, jobs, stop, record) = (api.clone(), jobs.clone(), stop.clone(), record.clone());
            tasks.push(tokio::spawn(async move {
                // Spread the clients over one period.
                tokio::time::sleep(period.mul_f64(c as f64 / n as f64)).await;
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let keep: Vec<AgentClient> = (0..api.hosts.len()).map(|i| api.client(i)).collect();
                let mut turn = c;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    turn += 1;
                    let job = {
                        let j = jobs.read().unwrap_or_else(|p| p.into_inner());
                        (!j.is_empty()).then(|| j[turn / 3 % j.len()].clone())
                    };
                    let (host, req) = match (turn % 3, job) {
                        (0, Some((id, target))) => (api.index(&target), Request::JobShow { id }),
                        (1, _) => (turn / 3, Request::HostInfo),
                        _ => (turn / 3, Request::GuestList),
                    };
                    let (client, conn) =
                        if c % 2 == 0 { (keep[host % keep.len()].clone(), "kept connection") } else { (api.client(host), "new connection") };
                    let t0 = Instant::now();
                    let r = client.call_raw(&req).await;
                    let took = t0.elapsed();
                    let mut rec = record.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(_) => {
                            rec.latencies.entry(req.op()).or_default().push(took);
                            rec.by_connection.entry(conn).or_default().push(took);
                        }
                        Err(e) => rec.failures.push(format!("client {c} {} at {}: {}", req.op(), client.host(), one_line(&e))),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
    });
    Arc::try_unwrap(record).ok().expect("clients done").into_inner().unwrap_or_else(|p| p.into_inner())
}

/// The most jobs that ran at once, from their (created, ended) times.
fn most_at_once(spans: &[(u64, u64)]) -> usize {
    spans.iter().map(|(t, _)| spans.iter().filter(|(a, b)| a <= t && t < b).count()).max().unwrap_or(0)
}

/// `n=… p50=… p99=… max=…` in milliseconds.
fn summary(v: &[Duration]) -> String {
    let mut s: Vec<Duration> = v.to_vec();
    s.sort();
    if s.is_empty() {
        return "n=0".into();
    }
    let at = |pct: usize| s[(s.len() * pct / 100).min(s.len() - 1)].as_secs_f64() * 1000.0;
    format!("n={} p50={:.1} ms p99={:.1} ms max={:.1} ms", s.len(), at(50), at(99), at(100))
}

/// A process's resident memory, KiB (`VmRSS` of /proc/PID/status).
fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("status of {pid}: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}
