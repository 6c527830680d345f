//! The lab on etcd (`vmove lab up --store etcd --etcd-members 3`): the representative
//! subset of the lab tests with the cluster's state in an etcd cluster inside the lab's
//! namespaces — live and offline migrations, one truth for two operators, export and
//! import, two CLIs racing for one guest (then `host remove` and `host add` on etcd), and a host cut off from etcd that pauses its
//! guest before its lease expires and loses it to a forced evacuation that waits for the
//! lease.
mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{last_disk_ok, wait_for, Lab, BUSY_MB_S};
use serde_json::Value;

/// Runs `vmove --cluster FILE args`: an operator with another cluster file.
fn vmove_with(file: &std::path::Path, args: &[&str]) -> Output {
    Command::new(common::vmove_bin()).arg("--cluster").arg(file).args(args).output().expect("run vmove")
}

fn ok_with(file: &std::path::Path, args: &[&str]) -> String {
    let o = vmove_with(file, args);
    assert!(o.status.success(), "vmove {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A directory of a second operator, removed at the end.
fn operator_dir(lab: &Lab, tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("{}-{tag}-", lab.name)).tempdir_in("/var/tmp").expect("operator dir")
}

fn job_ids(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|j| j["id"].as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Live and offline migrations on etcd; a detached job seen by a second operator (its own
/// cluster file, exported from the store); the cluster file as export and import.
#[test]
fn etcd_migrations_one_truth_for_two_operators_and_export_import() {
    let lab = Lab::up_etcd("etcdmig", 2, 3);
    let members = lab.json(&["cluster", "members"]);
    let hosts: Vec<&str> = members.as_array().unwrap().iter().filter_map(|m| m["host"].as_str()).collect();
    assert_eq!(hosts, ["host1", "host2"], "every agent holds a lease: {members}");

    lab.boot_guest("vm1", "host1", "192.0.2.61", BUSY_MB_S, true);
    let out = lab.ok(&["migrate", "vm1", "--to", "host2"]);
    assert!(out.contains("Done"), "{out}");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);
    lab.wait_log("vm1", "VERIFY OK after the live migration", Duration::from_secs(60), |l| {
        l.matches("VERIFY OK").count() >= 2 && !l.contains("VERIFY FAIL")
    });

    // A second operator, with a cluster file exported from the store into its own directory.
    let op2 = operator_dir(&lab, "op2");
    let op2_file = op2.path().join("cluster.toml");
    lab.ok(&["cluster", "export", "--out", op2_file.to_str().unwrap()]);
    // The first operator detaches; nobody follows the job on this machine.
    let id = lab.ok(&["migrate", "vm1", "--to", "host1", "--mode", "offline", "--detach"]).trim().to_string();
    let listed = serde_json::from_str::<Value>(&ok_with(&op2_file, &["--json", "job", "list"])).unwrap();
    assert!(job_ids(&listed).contains(&id), "the second operator sees job {id}: {listed}");
    let watched = ok_with(&op2_file, &["job", "watch", &id]);
    assert!(watched.contains("Done"), "{watched}");
    // Where the guest is: one truth, whatever either operator's file said.
    let shown = serde_json::from_str::<Value>(&ok_with(&op2_file, &["--json", "guest", "show", "vm1"])).unwrap();
    assert_eq!(shown["spec"]["host"], "host1", "{shown}");
    assert_eq!(lab.json(&["guest", "show", "vm1"])["spec"]["host"], "host1");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()]);
    let log = lab.wait_log("vm1", "DISK OK after the offline migration", Duration::from_secs(120), |l| last_disk_ok(l).is_some());
    assert!(!log.contains("DISK FAIL"), "{log}");
    let file = vmove_model::Cluster::load(&lab.cluster).unwrap();
    assert!(file.guests.is_empty(), "the cluster file is a bootstrap: the guests are in etcd");
    assert!(lab.ok(&["cluster", "check"]).contains("the cluster in etcd matches the agents"));

    // Export, then import into a new namespace, then export again: the same file.
    let a = op2.path().join("a.toml");
    lab.ok(&["cluster", "export", "--out", a.to_str().unwrap()]);
    let text = std::fs::read_to_string(&a).unwrap();
    assert!(text.contains("name = \"vm1\"") && text.contains("host = \"host1\""), "{text}");
    let b = op2.path().join("b.toml");
    let mut copy = vmove_model::Cluster::parse(&text, &b).unwrap();
    copy.store.namespace = Some(format!("/vmove/{}-copy/", lab.name));
    let b_text = copy.to_toml();
    std::fs::write(&b, &b_text).unwrap();
    assert!(ok_with(&b, &["cluster", "import"]).contains("1 guests"));
    let again = vmove_with(&b, &["cluster", "import"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds cluster"), "{again:?}");
    let c = op2.path().join("c.toml");
    ok_with(&b, &["cluster", "export", "--out", c.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&c).unwrap(), b_text, "export . import is the identity");
}

/// Two operators start a migration of the same guest at the same moment (to two targets):
/// exactly one job starts; the other CLI fails naming the job that won. Both skip the
/// outstanding-work precheck so that the store's claim decides, whoever is faster, and both
/// hold their job before its first step (`--pause-before STOP_GUEST`) so that the winner
/// cannot finish, and let the guest's claim go, before the loser asks: the outcome does not
/// depend on how fast either CLI runs.
#[test]
fn etcd_two_clis_racing_for_one_guest() {
    let lab = Lab::up_etcd("etcdrace", 3, 3);
    lab.boot_guest("vm1", "host1", "192.0.2.62", 0, false);
    let spawn = |to: &str| {
        Command::new(common::vmove_bin())
            .args(["migrate", "vm1", "--to", to, "--mode", "offline", "--ignore-check", "no-outstanding-work"])
            .args(["--pause-before", "STOP_GUEST", "--detach"])
            .env("VMOVE_CLUSTER", &lab.cluster)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run vmove")
    };
    let (a, b) = (spawn("host2"), spawn("host3"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (won, lost) = match (a.status.success(), b.status.success()) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        _ => panic!("exactly one must start: {a:?} / {b:?}"),
    };
    let id = String::from_utf8_lossy(&won.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&lost.stderr);
    assert!(err.contains(&format!("already being migrated by job {id}")), "the loser names the winner {id}: {err}");
    let jobs = lab.json(&["job", "list"]);
    assert_eq!(job_ids(&jobs), vec![id.clone()], "one job in the whole cluster: {jobs}");
    // While the winner holds the guest, a third try (to the loser's target) is refused the
    // same way.
    let target = id.rsplit_once('-').unwrap().0.to_string();
    let other = if target == "host2" { "host3" } else { "host2" };
    let again = lab.vmove(&["migrate", "vm1", "--to", other, "--mode", "offline", "--ignore-check", "no-outstanding-work"]);
    assert!(!again.status.success(), "a second job started: {again:?}");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains(&format!("already being migrated by job {id}")), "{err}");
    lab.ok(&["job", "resume", &id]);
    assert!(lab.ok(&["job", "watch", &id]).contains("Done"));
    assert_eq!(job_ids(&lab.json(&["job", "list"])), vec![id.clone()], "still one job");
    assert_eq!(lab.qemu_hosts("vm1"), vec![target.clone()]);

    // `host remove` and `host add` change the cluster in etcd, which every operator reads.
    // A second operator's file (exported), so that the lab's own host bundles stay.
    let op2 = operator_dir(&lab, "hosts");
    let op2_file = op2.path().join("cluster.toml");
    lab.ok(&["cluster", "export", "--out", op2_file.to_str().unwrap()]);
    let address = vmove_model::Cluster::load(&lab.cluster).unwrap().host(other).unwrap().address.clone();
    let e = vmove_with(&op2_file, &["host", "remove", &target]);
    assert!(!e.status.success(), "a host with a guest in the store was removed");
    assert!(String::from_utf8_lossy(&e.stderr).contains("has guests in the cluster's store (vm1)"), "{e:?}");
    ok_with(&op2_file, &["host", "remove", other]);
    let hosts = |v: Value| -> Vec<String> { v.as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap().to_string()).collect() };
    let listed = hosts(lab.json(&["host", "list"]));
    assert!(!listed.contains(&other.to_string()), "the lab's operator no longer sees {other}: {listed:?}");
    let bundle = op2.path().join("bundle");
    ok_with(&op2_file, &["host", "add", other, "--address", &address, "--accel", "tcg", "--out", bundle.to_str().unwrap()]);
    assert!(bundle.join("agent.toml").exists() && bundle.join("host.pem").exists());
    let v = lab.json(&["host", "list"]);
    let back = v.as_array().unwrap().iter().find(|h| h["name"] == other).unwrap_or_else(|| panic!("{other} not back: {v}"));
    assert_eq!(back["reachable"], true, "its agent answers again: {back}");
    assert_eq!(lab.json(&["cluster", "members"]).as_array().unwrap().len(), 3);
}

/// One etcd member (the leader) killed while a live migration is held at its switchover:
/// the other two elect a new leader, the agents' clients move to them, and the migration
/// completes; no agent's lease lapses and no guest is fenced on the way.
#[test]
fn etcd_member_killed_mid_migration() {
    let lab = Lab::up_etcd("etcdkill", 2, 3);
    lab.boot_guest("vm1", "host1", "192.0.2.64", BUSY_MB_S, false);
    let id = lab.ok(&["migrate", "vm1", "--to", "host2", "--pause-at-switchover", "--detach"]).trim().to_string();
    wait_for("the job held at its switchover", Duration::from_secs(120), || {
        let j = lab.json(&["job", "show", &id]);
        assert_eq!(j["status"], "running", "the job ended before its switchover: {j}");
        j["events"].as_array()?.iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with("paused"))).then_some(())
    });
    let leader = common::etcd::kill_leader(&lab).url;
    let killed = Instant::now();
    // The CLI's own calls may find etcd electing a new leader for a moment (its call then
    // fails as unreachable): what is tested is the migration and the agents' leases, so
    // the operator's commands are simply given again.
    let again = |args: &[&str]| {
        wait_for("the command to go through once etcd has a leader", Duration::from_secs(60), || {
            let o = lab.vmove(args);
            if o.status.success() {
                return Some(String::from_utf8_lossy(&o.stdout).into_owned());
            }
            eprintln!("{args:?} failed (tried again): {}", String::from_utf8_lossy(&o.stderr).trim());
            None
        })
    };
    again(&["job", "resume", &id]);
    let out = again(&["job", "watch", &id]);
    assert!(out.contains("Done"), "{out}");
    eprintln!("etcd leader {leader} killed; the migration ended {:?} later", killed.elapsed());
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);
    assert_eq!(lab.json(&["guest", "show", "vm1"])["state"], "running", "not fenced");
    let members = lab.json(&["cluster", "members"]);
    let hosts: Vec<&str> = members.as_array().unwrap().iter().filter_map(|m| m["host"].as_str()).collect();
    assert_eq!(hosts, ["host1", "host2"], "both leases lived through the election: {members}");
    lab.wait_log("vm1", "VERIFY OK after the live migration", Duration::from_secs(60), |l| {
        l.matches("VERIFY OK").count() >= 2 && !l.contains("VERIFY FAIL")
    });
}

/// The lab host's namespace runs a command.
fn in_ns(ns: &str, args: &[&str]) {
    let st = Command::new("ip").args(["netns", "exec", ns]).args(args).status().expect("ip netns exec");
    assert!(st.success(), "{ns}: {args:?}");
}

/// Samples every QEMU of `guest` in the lab every 200 ms until stopped: the intervals in
/// which more than one of them ran guest code, and how many intervals saw two QEMUs.
struct RunSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(Vec<String>, u32, u32)>,
}

impl RunSampler {
    fn start(lab: &Lab, guest: &'static str) -> RunSampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), lab.dir.display().to_string());
        let handle = std::thread::spawn(move || {
            let (mut both_ran, mut two_seen, mut samples) = (Vec::new(), 0u32, 0u32);
            let mut last: std::collections::BTreeMap<u32, u64> = Default::default();
            while !flag.load(Ordering::SeqCst) {
                let pids = common::qemu_pids_in(&dir, guest);
                let now: std::collections::BTreeMap<u32, u64> =
                    pids.iter().filter_map(|p| Some((*p, vmove_host::proc::vcpu_ticks(*p)?))).collect();
                let ran: Vec<u32> = now.iter().filter(|(p, t)| last.get(p).is_some_and(|l| *t > l)).map(|(p, _)| *p).collect();
                // Counted when two QEMUs exist and one of them is seen running: the
                // sampler can tell a running copy from a paused one.
                if now.len() > 1 && ran.len() == 1 {
                    two_seen += 1;
                }
                if ran.len() > 1 {
                    both_ran.push(format!("sample {samples}: QEMUs {ran:?} both ran guest code"));
                }
                samples += 1;
                last = now;
                std::thread::sleep(Duration::from_millis(200));
            }
            (both_ran, two_seen, samples)
        });
        RunSampler { stop, handle }
    }

    /// Stops sampling: (intervals where two QEMUs ran, samples that saw two QEMUs with one of
    /// them running, samples).
    fn finish(self) -> (Vec<String>, u32, u32) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().expect("the sampler")
    }
}

/// A host cut off from etcd pauses its guest before its lease expires (QEMU's run state,
/// as `query-status` reports it); cut off from everything, its lease expires, `cluster
/// wait-dead` sees it, and a forced migration starts the guest on host2 with its disk
/// intact. When host1 comes back it finds the guest taken and kills its paused copy:
/// exactly one copy runs. From the cut to the end, both hosts' QEMUs of the guest are
/// sampled every 200 ms (their vCPU threads' CPU time): never do two of them run guest
/// code in the same interval.
#[test]
fn etcd_fenced_host_pauses_then_its_guest_is_evacuated() {
    let lab = Lab::up_etcd("etcdfence", 2, 3);
    lab.boot_guest("vm1", "host1", "192.0.2.63", BUSY_MB_S, true);
    let etcd_ips = common::etcd::ips(&lab);
    assert_eq!(etcd_ips.len(), 3);
    let ns = lab.host_ns("host1");
    let before = last_disk_ok(&lab.log("vm1")).unwrap_or(0);

    // Cut host1 off etcd only: its agent still answers the operator.
    let sampler = RunSampler::start(&lab, "vm1");
    let cut = Instant::now();
    for ip in &etcd_ips {
        in_ns(&ns, &["iptables", "-A", "OUTPUT", "-d", ip, "-j", "DROP"]);
    }
    wait_for("vm1 paused on host1", Duration::from_secs(15), || {
        (lab.json(&["guest", "show", "vm1"])["state"] == "paused").then_some(())
    });
    let paused_after = cut.elapsed();
    let members = lab.json(&["cluster", "members"]);
    assert!(
        members.as_array().unwrap().iter().any(|m| m["host"] == "host1"),
        "paused {paused_after:?} after the cut, while host1's lease is still alive: {members}"
    );
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()], "paused, not killed");

    // Now cut off from everything; its lease expires.
    in_ns(&ns, &["ip", "link", "set", "mgmt0", "down"]);
    let dead = lab.json(&["cluster", "wait-dead", "host1"]);
    let expired_after = cut.elapsed();
    assert_eq!(dead["dead"], true, "{dead}");
    assert!(expired_after > paused_after, "paused {paused_after:?}, expired {expired_after:?}");

    // The evacuation of host1 (what `host evacuate` does per guest once the lease is gone).
    let out = lab.ok(&["migrate", "vm1", "--to", "host2", "--mode", "offline-force"]);
    assert!(out.contains("source unreachable"), "{out}");
    assert_eq!(lab.json(&["guest", "show", "vm1"])["spec"]["host"], "host2");
    lab.wait_tcp_echo("192.0.2.63:7", Duration::from_secs(120));
    let log = lab.wait_log("vm1", "DISK OK on host2", Duration::from_secs(120), |l| last_disk_ok(l).is_some());
    assert!(!log.contains("DISK FAIL"), "{log}");
    assert!(last_disk_ok(&log).unwrap_or(0) >= before, "disk records lost: {before} before, {log}");
    let on = lab.qemu_hosts("vm1");
    assert_eq!(on.len(), 2, "host1's copy is still there, paused and cut off: {on:?}");

    // host1 comes back: a new lease, the guest taken, its copy killed.
    in_ns(&ns, &["ip", "link", "set", "mgmt0", "up"]);
    in_ns(&ns, &["iptables", "-F", "OUTPUT"]);
    wait_for("host1's copy killed", Duration::from_secs(60), || (lab.qemu_hosts("vm1") == ["host2"]).then_some(()));
    wait_for("host1 a member again", Duration::from_secs(30), || {
        lab.json(&["cluster", "members"]).as_array().unwrap().iter().any(|m| m["host"] == "host1").then_some(())
    });
    assert_eq!(lab.json(&["guest", "show", "vm1"])["state"], "running");
    lab.wait_tcp_echo("192.0.2.63:7", Duration::from_secs(30));
    let (both_ran, two_seen, samples) = sampler.finish();
    assert!(both_ran.is_empty(), "two copies ran at once: {both_ran:?}");
    assert!(two_seen >= 5, "the sampler saw one copy run beside the other ({two_seen} of {samples} samples)");
    eprintln!("sampled {samples} times, {two_seen} with two QEMUs of vm1 and one running: never both running");
}

/// The lab's etcd members' namespaces drop each other's peer traffic (port 2380): every
/// member lives and answers clients, none has a leader (check-quorum steps the leader
/// down), so no write can commit anywhere. The agents prove it (a majority answers, none
/// has a leader) and do not fence: the guest runs on through several lease TTLs. The CLI
/// refuses to start a migration with a clear error. When the members see each other again,
/// nothing is lost: both leases lived, and the guest migrates, its disk and memory intact.
#[test]
fn etcd_quorum_lost_guests_run_on_and_nothing_is_lost() {
    let lab = Lab::up_etcd("etcdquorum", 2, 3);
    lab.boot_guest("vm1", "host1", "192.0.2.65", BUSY_MB_S, true);
    let members = common::etcd::members(&lab);
    let serial = lab.dir.join("hosts/host1/run/vm1/serial.log");
    let records = || last_disk_ok(&std::fs::read_to_string(&serial).unwrap_or_default()).unwrap_or(0);
    wait_for("the guest's disk log", Duration::from_secs(60), || (records() > 0).then_some(()));
    common::etcd::leader(&lab);

    let rules = |op: &str| {
        for (_, ns) in &members {
            in_ns(ns, &["iptables", op, "INPUT", "-p", "tcp", "--dport", "2380", "-j", "DROP"]);
            in_ns(ns, &["iptables", op, "OUTPUT", "-p", "tcp", "--dport", "2380", "-j", "DROP"]);
        }
    };
    rules("-A");
    let cut = Instant::now();
    wait_for("every etcd member without a leader", Duration::from_secs(30), || {
        let st = common::etcd::status(&lab);
        (st.len() == 3 && st.iter().all(|(_, leader, _)| *leader == 0)).then_some(())
    });
    eprintln!("no etcd leader {:?} after the members lost each other", cut.elapsed());
    // The CLI needs the store: it says why it cannot go on (once the leader stepped down).
    let err = wait_for("the migration refused for the lost quorum", Duration::from_secs(30), || {
        let o = lab.vmove(&["migrate", "vm1", "--to", "host2"]);
        assert!(!o.status.success(), "a migration started without an etcd quorum");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        eprintln!("{:?} after the cut: {}", cut.elapsed(), err.trim());
        err.contains("etcd has lost its quorum").then_some(err)
    });
    assert!(err.lines().count() == 1 && err.contains("running guests keep running"), "{err}");

    // Three TTLs (10 s each) without a quorum: the guest writes its disk all along (a
    // paused guest writes nothing; a DISK OK line every 5 s).
    let mut last = records();
    let mut checks = 0;
    while cut.elapsed() < Duration::from_secs(32) {
        std::thread::sleep(Duration::from_secs(6));
        let now = records();
        assert!(now > last, "the guest stopped writing {:?} after the quorum was lost ({last} -> {now})", cut.elapsed());
        last = now;
        checks += 1;
    }
    assert!(checks >= 4);
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()]);

    rules("-D");
    common::etcd::leader(&lab);
    let members_now = lab.json(&["cluster", "members"]);
    let hosts: Vec<&str> = members_now.as_array().unwrap().iter().filter_map(|m| m["host"].as_str()).collect();
    assert_eq!(hosts, ["host1", "host2"], "both leases lived through the outage: {members_now}");
    assert_eq!(lab.json(&["guest", "show", "vm1"])["state"], "running");
    let out = lab.ok(&["migrate", "vm1", "--to", "host2"]);
    assert!(out.contains("Done"), "{out}");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);
    let log = lab.wait_log("vm1", "DISK OK and VERIFY OK on host2", Duration::from_secs(90), |l| {
        l.matches("VERIFY OK").count() >= 2 && last_disk_ok(l).is_some_and(|n| n > last)
    });
    assert!(!log.contains("DISK FAIL") && !log.contains("VERIFY FAIL"), "{log}");
}
