//! The fault matrix of fleet operations and local-disk copies (docs/reliability.md): a
//! drain one of whose moves fails, an evacuation hit by a fault of its own, and the live
//! copy of a host-local disk hit at each of its phases. As in `lab_faults.rs`, each case
//! boots fresh guests, injects its fault at a known point, lets the operation end, restores
//! what the fault broke, recovers as an operator would (`vmove job recover`, `vmove guest
//! start`, the evacuation run again) and checks the invariants: every guest runs exactly
//! once, where the cluster says, defined on that host only, answers, its memory and disk
//! logs verify, nothing is left behind (taps, NBD helpers, copies of local disks, claims).
//!
//! The default suite runs one fleet case and two local-disk cases; `VMOVE_FAULT_MATRIX=full`
//! runs every case (4 and 25).
//! Each run appends its tables to `target/fault-matrix.md`.
mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faults::{defined_on, full, has_event, in_ns, job, qemu_on, run_all, Row};
use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Shared checks.

/// The last `VERIFY OK <sweeps>` count in a console log.
fn last_verify_ok(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| l.strip_prefix("VERIFY OK ").and_then(|n| n.trim().parse().ok()))
}

/// What a guest had verified before the fault.
#[derive(Clone, Debug)]
struct Before {
    guest: String,
    ip: String,
    disk: bool,
    verify: u64,
    disk_ok: u64,
}

fn before(lab: &Lab, g: &str, ip: &str, disk: bool) -> Before {
    let log = lab.log(g);
    Before { guest: g.into(), ip: ip.into(), disk, verify: last_verify_ok(&log).unwrap_or(0), disk_ok: last_disk_ok(&log).unwrap_or(0) }
}

/// The invariants of one guest after a case: it runs exactly once, on `want` (when given)
/// and where the cluster says; defined on that host only, as the agents say; it answers
/// TCP echo; its memory verifies (a later sweep than before, or a fresh one after a
/// `restarted` boot) and its disk log too, with no record lost; no tap on another host; the
/// lease of a shared disk held by its host with no incoming claim. Returns its host.
fn check_guest(lab: &Lab, hosts: &[&str], b: &Before, want: Option<&str>, restarted: bool) -> String {
    let g = b.guest.as_str();
    let host = lab.cluster_host(g);
    if host.is_empty() {
        let o = lab.vmove(&["--json", "guest", "show", g]);
        let file = std::fs::read_to_string(&lab.cluster).unwrap_or_default();
        let at = file.find(&format!("name = \"{g}\"")).map(|i| &file[i..(i + 200).min(file.len())]).unwrap_or("not in the file");
        panic!("{g}: guest show: {}{}; the cluster file: {at:?}", String::from_utf8_lossy(&o.stderr).trim(), String::from_utf8_lossy(&o.stdout).trim());
    }
    if let Some(w) = want {
        assert_eq!(host, w, "{g}: the cluster says {host}, the operation said {w}");
    }
    assert_eq!(lab.qemu_hosts(g), vec![host.clone()], "{g}: runs exactly once, on {host}");
    for h in hosts {
        assert_eq!(defined_on(lab, g, h), *h == host, "{g}: defined on {h}? the cluster says {host}");
    }
    lab.wait_tcp_echo(&format!("{}:7", b.ip), Duration::from_secs(180));
    let log = lab.wait_log(g, "VERIFY OK (and DISK OK) after the fault", Duration::from_secs(120), |l| {
        let mem = if restarted { l.contains("VERIFY OK") } else { last_verify_ok(l).is_some_and(|n| n > b.verify) };
        mem && (!b.disk || last_disk_ok(l).is_some())
    });
    assert!(!log.contains("DISK FAIL") && !log.contains("VERIFY FAIL"), "{g}: {log}");
    if b.disk {
        assert!(last_disk_ok(&log).unwrap_or(0) >= b.disk_ok, "{g}: disk records lost ({} before): {log}", b.disk_ok);
    }
    let tap = vmove_host::tap::tap_name(g, 0);
    for h in hosts.iter().filter(|h| **h != host) {
        assert!(!in_ns(&lab.host_ns(h), &["test", "-e", &format!("/sys/class/net/{tap}")]), "{g}: tap left on {h}");
    }
    if b.disk && lab.lease(&format!("{g}-data.img")).is_some() {
        let lease = lab.lease(&format!("{g}-data.img")).unwrap();
        assert_eq!(lease["holder"], host.as_str(), "{g}: lease {lease}");
        assert!(lease.get("incoming").is_none(), "{g}: incoming claim left: {lease}");
    }
    host
}

/// A `vmove --json ...` running in the background, its stdout lines collected as they come.
struct Streamed {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Streamed {
    fn start(lab: &Lab, args: &[&str]) -> Streamed {
        let mut child = Command::new(vmove_bin())
            .arg("--json")
            .args(args)
            .env("VMOVE_CLUSTER", &lab.cluster)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vmove");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let v = serde_json::from_str(l.trim()).unwrap_or(Value::String(l));
                l2.lock().unwrap().push(v);
            }
        });
        Streamed { child, lines, reader: Some(reader) }
    }

    /// Waits for the first line that `f` picks something out of.
    fn wait<T>(&self, what: &str, timeout: Duration, f: impl Fn(&Value) -> Option<T>) -> T {
        wait_for(what, timeout, || {
            let lines = self.lines.lock().unwrap();
            lines.iter().find_map(&f)
        })
    }

    /// Waits for the command to end: its exit status, its lines and its stderr.
    fn end(mut self, timeout: Duration) -> (bool, Vec<Value>, String) {
        let status = wait_for("the command to end", timeout, || self.child.try_wait().expect("try_wait"));
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let lines = self.lines.lock().unwrap().clone();
        (status.success(), lines, err)
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The first line that has `key`.
fn find<'a>(v: &'a [Value], key: &str) -> Option<&'a Value> {
    v.iter().find(|l| l.get(key).is_some()).map(|l| &l[key])
}

/// The first move a drain or an evacuation started: its guest, target and job.
fn first_move(s: &Streamed) -> (String, String, String) {
    let (guest, to) = s.wait("the first move to start", Duration::from_secs(180), |l| {
        let m = l.get("start")?;
        Some((m["guest"].as_str()?.to_string(), m["to"].as_str()?.to_string()))
    });
    let job = s.wait("the first move's job", Duration::from_secs(120), |l| {
        (l["guest"] == guest.as_str() && l.get("event").is_some()).then(|| l["job"].as_str().map(str::to_string)).flatten()
    });
    (guest, to, job)
}

/// How a job ended, from the job events of a drain's or an evacuation's lines (`?` if not
/// seen).
fn ended_in_stream(lines: &[Value], id: &str) -> String {
    lines
        .iter()
        .filter(|l| l["job"] == id && l["event"]["event"] == "job_ended")
        .find_map(|l| l["event"]["status"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A guest's QEMU log on a host (of its current QEMU, or of the last one that exited).
fn source_qemu_log(lab: &Lab, g: &str, host: &str) -> String {
    let run = lab.dir.join("hosts").join(host).join("run");
    [run.join(g).join("qemu.log"), run.join(format!(".{g}.previous")).join("qemu.log")]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().filter(|t| !t.trim().is_empty()))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn lab_dir(lab: &Lab) -> String {
    lab.dir.to_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------
// Fleet operations.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fleet {
    /// Drain: the target QEMU of the first move killed in its memory phase.
    DrainDstQemu,
    /// Drain: the target agent of the first move killed in its memory phase, back 3 s later.
    DrainDstAgent,
    /// Evacuation: the target agent of the first move killed once its job started, back 3 s
    /// later.
    EvacuateDstAgent,
    /// Evacuation: its CLI killed once its first move started; `job watch` takes it over.
    EvacuateCli,
}

impl Fleet {
    fn name(&self) -> String {
        match self {
            Fleet::DrainDstQemu => "drain host1: one move's target QEMU killed",
            Fleet::DrainDstAgent => "drain host1: one move's target agent killed",
            Fleet::EvacuateDstAgent => "evacuate host1: one move's target agent killed",
            Fleet::EvacuateCli => "evacuate host1: its CLI killed, job watch takes over",
        }
        .into()
    }
}

const FLEET_HOSTS: [&str; 3] = ["host1", "host2", "host3"];

/// The guests of case `n`: name, IP, whether it has a shared data disk.
fn fleet_guests(n: usize) -> Vec<(String, String, bool)> {
    (1..=3).map(|k| (format!("c{n}g{k}"), format!("192.0.2.{}", 150 + 10 * n + k), k != 2)).collect()
}

/// Creates and starts the case's busy guests on host1 (256 MiB each) and waits until they
/// answer and verify.
fn boot_fleet(lab: &Lab, guests: &[(String, String, bool)]) -> Vec<Before> {
    let busy = BUSY_MB_S.to_string();
    for (g, ip, disk) in guests {
        let nic = format!("lab-net,ip={ip}/24");
        let vol = format!("shared/{g}-data.img:16M");
        let mut args = vec!["guest", "create", g, "--host", "host1", "--memory", "256M", "--nic", &nic, "--dirty-rate", &busy, "--start"];
        if *disk {
            args.extend(["--disk", &vol]);
        }
        lab.ok(&args);
    }
    for (g, ip, disk) in guests {
        lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(180));
        lab.wait_log(g, "VERIFY OK (and DISK OK)", Duration::from_secs(120), |l| l.contains("VERIFY OK") && (!disk || l.contains("DISK OK")));
    }
    guests.iter().map(|(g, ip, d)| before(lab, g, ip, *d)).collect()
}

/// Caps (or uncaps) host1's management link, which carries its migrations.
fn cap_host1(lab: &Lab, rate: Option<&str>) {
    let ns = lab.host_ns("host1");
    match rate {
        Some(r) => {
            let cap = ["tc", "qdisc", "replace", "dev", "mgmt0", "root", "tbf", "rate", r, "burst", "32kb", "latency", "400ms"];
            assert!(in_ns(&ns, &cap), "tc on host1");
        }
        None => {
            let _ = Command::new("ip").args(["netns", "exec", &ns, "tc", "qdisc", "del", "dev", "mgmt0", "root"]).stderr(Stdio::null()).status();
        }
    }
}

/// Waits until a job's memory migration has moved 8 MiB (not the copy of local volumes).
fn wait_memory_phase(lab: &Lab, id: &str) {
    wait_for(&format!("job {id}'s memory phase"), Duration::from_secs(120), || {
        let j = job(lab, id);
        let reached = has_event(&j, |e| {
            e["event"] == "progress" && e["status"] != "copying-volumes" && e["transferred_bytes"].as_u64() > Some(8 << 20)
        });
        assert!(reached || j["status"] == "running", "job {id} ended before its memory phase: {}", j["error"]);
        reached.then_some(())
    });
}

fn run_fleet(lab: &Lab, n: usize, c: &Fleet) -> Row {
    match c {
        Fleet::DrainDstQemu | Fleet::DrainDstAgent => drain_case(lab, n, *c),
        Fleet::EvacuateDstAgent | Fleet::EvacuateCli => evacuate_case(lab, n, *c),
    }
}

/// A drain of host1 (one move at a time) whose first move is held in its memory phase by a
/// 5 MB/s cap on host1's link, then hit: its target QEMU killed (the job fails and the
/// guest stays on host1: the drain retries it on the other target) or its target agent
/// killed and started again 3 s later.
fn drain_case(lab: &Lab, n: usize, c: Fleet) -> Row {
    let guests = fleet_guests(n);
    let befores = boot_fleet(lab, &guests);
    let dir = lab_dir(lab);
    let s = Streamed::start(lab, &["host", "drain", "host1", "--parallel", "1"]);
    let (first, target, first_job) = first_move(&s);
    // The move's prechecks have run: hold its memory phase with a cap on the link.
    cap_host1(lab, Some("40mbit"));
    let hit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_memory_phase(lab, &first_job)));
    let t0 = Instant::now();
    match c {
        Fleet::DrainDstQemu => {
            let pids = if hit.is_ok() { qemu_on(lab, &first, &target) } else { vec![] };
            cap_host1(lab, None);
            if let Err(e) = hit {
                std::panic::resume_unwind(e);
            }
            assert!(!pids.is_empty(), "{}: no target QEMU of {first} on {target} in its memory phase", c.name());
            pids.into_iter().for_each(vmove_host::proc::kill9);
        }
        _ => {
            if hit.is_ok() {
                lab.ok(&["lab", "agent", "--dir", &dir, &target, "kill"]);
            }
            cap_host1(lab, None);
            if let Err(e) = hit {
                std::panic::resume_unwind(e);
            }
            std::thread::sleep(Duration::from_secs(3));
            lab.ok(&["lab", "agent", "--dir", &dir, &target, "start"]);
        }
    }
    let (ok, lines, err) = s.end(Duration::from_secs(600));
    let report = find(&lines, "report").cloned().unwrap_or_else(|| panic!("{}: no report (exit ok {ok}): {err}", c.name()));
    eprintln!("{}: {report}\n{err}", c.name());
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 3, "{report}");
    // (Not `job show`: see the end.)
    let first_status = ended_in_stream(&lines, &first_job);
    let mut notes = vec![format!("{first}'s job to {target} {first_status}")];
    let mut recovered = Vec::new();
    for r in &rows {
        let g = r["guest"].as_str().unwrap();
        let outcome = r["outcome"].as_str().unwrap_or("?");
        // An unknown outcome is the operator's to settle: recover its last job.
        if outcome == "unknown" {
            for id in r["jobs"].as_array().into_iter().flatten().filter_map(|j| j.as_str()) {
                if job(lab, id)["status"] != "succeeded" {
                    let o = lab.vmove(&["job", "recover", id]);
                    recovered.push(format!("{g}: job recover {id}: {}", if o.status.success() { "ok" } else { "refused" }));
                }
            }
        }
    }
    let mut at = Vec::new();
    let mut crashed = None;
    for b in &befores {
        let r = rows.iter().find(|r| r["guest"] == b.guest.as_str()).unwrap_or_else(|| panic!("no row of {}: {report}", b.guest));
        let outcome = r["outcome"].as_str().unwrap_or("?").to_string();
        let want = match outcome.as_str() {
            "moved" => r["to"].as_str().map(str::to_string),
            "failed" | "cancelled" => Some("host1".to_string()),
            _ => None,
        };
        // The fault may take the source QEMU down with it (QEMU 10.0.2 aborts on an
        // assertion when its multifd migration channel fails: the report): the operator
        // starts the guest again from its disk.
        let mut restarted = false;
        if lab.qemu_hosts(&b.guest).is_empty() {
            let why = source_qemu_log(lab, &b.guest, "host1");
            notes.push(format!("{}'s source QEMU died ({}): restarted", b.guest, why.lines().last().unwrap_or("no log")));
            eprintln!("{}: {} runs nowhere after the drain; its source QEMU's log: {why}", c.name(), b.guest);
            lab.ok(&["guest", "start", &b.guest]);
            restarted = true;
            crashed = Some(b.guest.clone());
        }
        let host = check_guest(lab, &FLEET_HOSTS, b, want.as_deref(), restarted);
        assert_ne!(outcome, "unknown", "{}: {} left unknown by the drain: {r}", c.name(), b.guest);
        at.push(format!("{} {outcome} to {host} ({} attempt(s))", b.guest, r["attempts"]));
    }
    // The drain's documented behaviour: a move that failed and left its guest where it was
    // is tried once more on another target.
    let r = rows.iter().find(|r| r["guest"] == first.as_str()).unwrap();
    if c == Fleet::DrainDstQemu && crashed.as_deref() == Some(first.as_str()) {
        assert_eq!(r["outcome"], "failed", "{}: a crashed guest cannot move live: {r}", c.name());
    } else if c == Fleet::DrainDstQemu {
        assert_eq!(first_status, "failed", "{}: the killed target's job {first_job}", c.name());
        assert_eq!((r["outcome"].as_str(), r["attempts"].as_u64()), (Some("moved"), Some(2)), "{}: retried elsewhere: {r}", c.name());
        assert_ne!(r["to"], target.as_str(), "{}: retried on another target: {r}", c.name());
    }
    assert!(ok, "{}: the drain failed: {err}", c.name());
    notes.push(at.join(", "));
    notes.extend(recovered);
    // The operator looks at the failed job: `job show` of a job superseded by a later move
    // must not put the guest back where that job left it in the cluster file.
    let shown = job(lab, &first_job);
    let now = lab.cluster_host(&first);
    assert_eq!(
        lab.qemu_hosts(&first),
        vec![now.clone()],
        "{}: after `job show {first_job}` (status {}, guest_host {}) the cluster file says {first} is on {now:?}",
        c.name(),
        shown["status"],
        shown["guest_host"]
    );
    let recover_ms = t0.elapsed().as_millis();
    for b in &befores {
        lab.ok(&["guest", "destroy", &b.guest]);
    }
    lab.ok(&["host", "undrain", "host1"]);
    Row { case: c.name(), outcome: notes.join("; "), recover_ms }
}

/// host1 dies (its agent and its guests' QEMUs killed); `host evacuate host1 --force
/// --parallel 1` runs and is hit once its first move's job has started.
fn evacuate_case(lab: &Lab, n: usize, c: Fleet) -> Row {
    let guests = fleet_guests(n);
    let befores = boot_fleet(lab, &guests);
    let dir = lab_dir(lab);
    let qemus: Vec<u32> = befores.iter().flat_map(|b| qemu_on(lab, &b.guest, "host1")).collect();
    lab.ok(&["lab", "agent", "--dir", &dir, "host1", "kill"]);
    qemus.iter().for_each(|p| vmove_host::proc::kill9(*p));
    wait_for("host1's QEMUs to die", Duration::from_secs(10), || qemus.iter().all(|p| !vmove_host::proc::alive(*p)).then_some(()));

    let s = Streamed::start(lab, &["host", "evacuate", "host1", "--force", "--parallel", "1"]);
    let (first, target, first_job) = first_move(&s);
    let id = s.wait("the evacuation's id", Duration::from_secs(10), |l| l["drain"].as_str().map(str::to_string));
    let t0 = Instant::now();
    let mut notes = Vec::new();
    let rows: Vec<Value> = match c {
        Fleet::EvacuateDstAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, &target, "kill"]);
            std::thread::sleep(Duration::from_secs(3));
            lab.ok(&["lab", "agent", "--dir", &dir, &target, "start"]);
            let (ok, lines, err) = s.end(Duration::from_secs(600));
            let report = find(&lines, "report").cloned().unwrap_or_else(|| panic!("no report (exit ok {ok}): {err}"));
            eprintln!("{}: {report}\n{err}", c.name());
            notes.push(format!("{first}'s job on {target} {}", ended_in_stream(&lines, &first_job)));
            report["rows"].as_array().cloned().unwrap_or_default()
        }
        _ => {
            drop(s); // SIGKILL of the CLI, its runner with it
            let shown = wait_for("the runner to be gone", Duration::from_secs(30), || {
                let v = job(lab, &id);
                (v["runner_alive"] == false).then_some(v)
            });
            assert_eq!(shown["state"], "running", "{shown}");
            let o = lab.vmove(&["--json", "job", "watch", &id]);
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            assert!(o.status.success(), "job watch {id}: {}\n{text}", String::from_utf8_lossy(&o.stderr));
            let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            assert!(find(&lines, "takeover").is_some(), "job watch took it over: {text}");
            let fin = find(&lines, "final").cloned().unwrap_or_else(|| panic!("no final record: {text}"));
            assert_eq!(fin["state"], "done", "{fin}");
            notes.push(format!("taken over by job watch, {}", fin["state"]));
            // The final record's rows say `state` where the report says `outcome`.
            fin["rows"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut r| {
                    r["outcome"] = r["state"].clone();
                    r
                })
                .collect()
        }
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    // Moves the evacuation did not finish: the operator recovers their jobs and runs the
    // evacuation again.
    let unfinished: Vec<&Value> = rows.iter().filter(|r| r["outcome"] != "moved").collect();
    if !unfinished.is_empty() {
        for r in &unfinished {
            for j in r["jobs"].as_array().into_iter().flatten().filter_map(|j| j.as_str()) {
                if job(lab, j)["status"] != "succeeded" {
                    let o = lab.vmove(&["job", "recover", j]);
                    notes.push(format!(
                        "{} {}: job recover {j}: {}",
                        r["guest"].as_str().unwrap_or("?"),
                        r["outcome"].as_str().unwrap_or("?"),
                        if o.status.success() { "ok".into() } else { String::from_utf8_lossy(&o.stderr).trim().to_string() }
                    ));
                }
            }
        }
        let o = lab.vmove(&["host", "evacuate", "host1", "--force"]);
        notes.push(format!("evacuated again: {}", if o.status.success() { "ok" } else { "FAILED" }));
        assert!(o.status.success(), "evacuate again: {}", String::from_utf8_lossy(&o.stderr));
    }
    // host1 comes back: it learns that its guests moved, runs none of them and cleans up
    // after them (taps).
    lab.ok(&["lab", "agent", "--dir", &dir, "host1", "start"]);
    let mut at = Vec::new();
    for b in &befores {
        let host = check_guest(lab, &FLEET_HOSTS, b, None, true);
        assert_ne!(host, "host1", "{}: {} left host1", c.name(), b.guest);
        at.push(format!("{} on {host}", b.guest));
    }
    notes.push(at.join(", "));
    let recover_ms = t0.elapsed().as_millis();
    for b in &befores {
        lab.ok(&["guest", "destroy", &b.guest]);
    }
    Row { case: c.name(), outcome: notes.join("; "), recover_ms }
}

/// After a failed fleet case: every agent up, host1 open, its guests gone.
fn fleet_cleanup(lab: &Lab, n: usize) {
    let dir = lab_dir(lab);
    cap_host1(lab, None);
    for h in FLEET_HOSTS {
        let _ = lab.vmove(&["lab", "agent", "--dir", &dir, h, "start"]);
    }
    for (g, _, _) in fleet_guests(n) {
        let _ = lab.vmove(&["guest", "destroy", &g]);
        lab.qemu_pids(&g).into_iter().for_each(vmove_host::proc::kill9);
    }
    let _ = lab.vmove(&["host", "undrain", "host1"]);
}

#[test]
fn fault_matrix_fleet() {
    let cases = if full() {
        vec![Fleet::DrainDstQemu, Fleet::DrainDstAgent, Fleet::EvacuateDstAgent, Fleet::EvacuateCli]
    } else {
        // One case keeps the default suite's share near a minute (the lab of 3 hosts and
        // its 3 guests take most of it).
        vec![Fleet::DrainDstQemu]
    };
    let lab = Lab::up("ffleet", 3);
    run_all("Fleet operation faults", &cases, Fleet::name, |n, c| run_fleet(&lab, n, c), |n| fleet_cleanup(&lab, n));
}

// ---------------------------------------------------------------------------------------
// Local-disk copies.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// The bulk copy of the disk (before the mirror is ready), slowed by `--bandwidth 4M`.
    BulkCopy,
    /// The mirror in sync, the memory phase running (held by a 5 MB/s cap on the link).
    Memory,
    /// At the switchover (`--pause-at-switchover`: the mirror not finished yet).
    Switchover,
    /// After the switchover (`--pause-before DETACH_VOLUMES`).
    AfterSwitchover,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum LFault {
    KillSrcAgent,
    KillDstAgent,
    KillSrcQemu,
    KillDstQemu,
    /// kill -9 of the target's storage helper (`<guest>+nbd`, the QEMU serving the copy).
    KillDstHelper,
    LinkDown,
    Cancel,
}

#[derive(Clone, Copy, Debug)]
struct LCase {
    at: Phase,
    fault: LFault,
}

impl LCase {
    fn name(&self) -> String {
        let at = match self.at {
            Phase::BulkCopy => "bulk copy",
            Phase::Memory => "mirror ready, memory phase",
            Phase::Switchover => "switchover",
            Phase::AfterSwitchover => "after switchover",
        };
        format!("local disk, {at}: {:?}", self.fault)
    }
}

/// Whether the fault has something to act on at that phase: the target's guest QEMU starts
/// with MIGRATE_GUEST (none during the bulk copy); the source's QEMU is gone after the
/// switchover; the target's NBD helper quits when the mirrors finish at the switchover,
/// after the hook's hold (so it is there at `Switchover`, gone after).
fn applies(c: &LCase) -> bool {
    !matches!(
        (c.at, c.fault),
        (Phase::BulkCopy, LFault::KillDstQemu) | (Phase::AfterSwitchover, LFault::KillSrcQemu | LFault::KillDstHelper)
    )
}

fn local_cases() -> Vec<LCase> {
    if full() {
        let faults = [
            LFault::KillSrcAgent,
            LFault::KillDstAgent,
            LFault::KillSrcQemu,
            LFault::KillDstQemu,
            LFault::KillDstHelper,
            LFault::LinkDown,
            LFault::Cancel,
        ];
        [Phase::BulkCopy, Phase::Memory, Phase::Switchover, Phase::AfterSwitchover]
            .iter()
            .flat_map(|a| faults.iter().map(move |f| LCase { at: *a, fault: *f }))
            .filter(applies)
            .collect()
    } else {
        vec![
            LCase { at: Phase::BulkCopy, fault: LFault::KillSrcAgent },
            LCase { at: Phase::Switchover, fault: LFault::KillDstHelper },
        ]
    }
}


/// The lease of a volume of a host's local pool (its own lease store, as the shared pool's).
fn local_lease(lab: &Lab, host: &str, volume: &str) -> Option<Value> {
    let text = std::fs::read_to_string(lab.local_dir(host).join(".vmove-leases").join(format!("{volume}.json"))).ok()?;
    let (_, body) = text.split_once('\n')?;
    let v: Value = serde_json::from_str(body).ok()?;
    Some(v["data"].clone())
}

/// Storage helpers of a guest in this lab (`<guest>+nbd`, `<guest>+copy`).
fn helpers(lab: &Lab, g: &str, role: &str) -> Vec<u32> {
    let dir = lab.dir.display().to_string();
    processes_mentioning(&format!("guest={g}+{role},"))
        .into_iter()
        .filter(|p| vmove_host::proc::cmdline(*p).iter().any(|a| a.contains(&dir)))
        .collect()
}

fn run_local(lab: &Lab, n: usize, c: &LCase) -> Row {
    let g = format!("l{n}");
    let ip = format!("192.0.2.{}", 150 + n);
    let vol = format!("{g}-data.img");
    let dir = lab_dir(lab);
    let hosts = ["host1", "host2"];
    let nic = format!("lab-net,ip={ip}/24");
    let disk = format!("local/{vol}:64M");
    let busy = BUSY_MB_S.to_string();
    lab.ok(&["guest", "create", &g, "--host", "host1", "--nic", &nic, "--dirty-rate", &busy, "--disk", &disk]);
    // The disk's upper half holds data (the disk log, from sector 0, never reaches it): the
    // mirror copies it byte by byte, where the zeroes of the sparse lower half cost nothing
    // on the link, so a cap on the link holds the bulk copy.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(lab.local_dir("host1").join(&vol)).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&vec![0x5a; 32 << 20], 32 << 20).unwrap();
    }
    lab.ok(&["guest", "start", &g]);
    lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(120));
    lab.wait_log(&g, "VERIFY OK and a few DISK OK", Duration::from_secs(120), |l| {
        l.contains("VERIFY OK") && last_disk_ok(l).is_some_and(|n| n >= 3)
    });
    let b = before(lab, &g, &ip, true);

    let mut args: Vec<&str> = vec!["migrate", &g, "--to", "host2", "--ignore-check", "predicted-convergence", "--detach"];
    match c.at {
        Phase::BulkCopy => args.extend(["--pause-before", "COPY_VOLUMES"]),
        Phase::Memory => args.extend(["--pause-before", "MIGRATE_GUEST", "--timeout", "60s"]),
        Phase::Switchover => args.push("--pause-at-switchover"),
        Phase::AfterSwitchover => args.extend(["--pause-before", "DETACH_VOLUMES"]),
    }
    let id = lab.ok(&args).trim().to_string();
    let paused = |j: &Value| has_event(j, |e| e["message"].as_str().is_some_and(|m| m.starts_with("paused")));
    wait_for(&format!("{} to reach its point", c.name()), Duration::from_secs(120), || {
        let j = job(lab, &id);
        assert!(paused(&j) || j["status"] == "running", "job ended before the point: {}", j["error"]);
        paused(&j).then_some(())
    });
    if c.at == Phase::BulkCopy {
        // Held before COPY_VOLUMES (the prechecks measured the link uncapped): the copy runs
        // under a 1 MB/s cap, lifted once the fault is in; hit 4 MiB into the data.
        cap_host1(lab, Some("8mbit"));
        lab.ok(&["job", "resume", &id]);
        wait_for("the bulk copy", Duration::from_secs(120), || {
            let j = job(lab, &id);
            let reached = has_event(&j, |e| {
                e["event"] == "progress" && e["status"] == "copying-volumes" && e["transferred_bytes"].as_u64() > Some(36 << 20)
            });
            assert!(reached || j["status"] == "running", "job ended before the copy: {}", j["error"]);
            reached.then_some(())
        });
        let j = job(lab, &id);
        let ready = has_event(&j, |e| e["event"] == "step_done" && e["step"] == "COPY_VOLUMES");
        assert!(!ready, "the copy is still running: {j}");
    }
    if c.at == Phase::Memory {
        // The mirror is in sync and the job held before MIGRATE_GUEST: the memory phase runs
        // under a 5 MB/s cap, lifted once the fault is in.
        cap_host1(lab, Some("40mbit"));
        lab.ok(&["job", "resume", &id]);
        wait_memory_phase(lab, &id);
    }

    let t0 = Instant::now();
    let switch = format!("{}-switch", lab.name);
    match c.fault {
        LFault::KillSrcAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, "host1", "kill"]);
        }
        LFault::KillDstAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, "host2", "kill"]);
        }
        LFault::KillSrcQemu => {
            let p = qemu_on(lab, &g, "host1");
            assert!(!p.is_empty(), "no source QEMU");
            p.into_iter().for_each(vmove_host::proc::kill9);
        }
        LFault::KillDstQemu => {
            let p = qemu_on(lab, &g, "host2");
            assert!(!p.is_empty(), "no target QEMU");
            p.into_iter().for_each(vmove_host::proc::kill9);
        }
        LFault::KillDstHelper => {
            let p = helpers(lab, &g, "nbd");
            assert!(!p.is_empty(), "no NBD helper on the target");
            p.into_iter().for_each(vmove_host::proc::kill9);
        }
        LFault::LinkDown => assert!(in_ns(&switch, &["ip", "link", "set", "h1m", "down"])),
        LFault::Cancel => {
            lab.ok(&["job", "cancel", &id]);
        }
    }
    if c.fault == LFault::LinkDown {
        std::thread::sleep(Duration::from_secs(3));
    }
    if matches!(c.at, Phase::Switchover | Phase::AfterSwitchover) && !matches!(c.fault, LFault::KillDstAgent | LFault::Cancel) {
        let _ = lab.vmove(&["job", "resume", &id]);
    }
    if c.fault == LFault::LinkDown {
        assert!(in_ns(&switch, &["ip", "link", "set", "h1m", "up"]));
    }
    cap_host1(lab, None);
    let mut silent = Duration::ZERO;
    if c.fault != LFault::KillDstAgent {
        silent = wait_job_end(lab, &id, &ip);
    }
    match c.fault {
        LFault::KillSrcAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, "host1", "start"]);
        }
        LFault::KillDstAgent => {
            lab.ok(&["lab", "agent", "--dir", &dir, "host2", "start"]);
            silent = wait_job_end(lab, &id, &ip);
        }
        _ => {}
    }
    let j = job(lab, &id);
    let status = j["status"].as_str().unwrap_or("").to_string();
    eprintln!("{}: job {id} {status}: {}", c.name(), j["error"]);
    let mut notes = vec![format!("job {status}")];
    if silent >= Duration::from_secs(3) {
        notes.push(format!("no TCP echo for {:.0} s while the job ran", silent.as_secs_f64()));
    }
    if status != "succeeded" {
        let o = lab.vmove(&["job", "recover", &id]);
        let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
        notes.push(if o.status.success() {
            "recovered".into()
        } else if err.contains("nothing to recover") {
            "nothing to recover".into()
        } else {
            panic!("{}: job recover failed: {err}", c.name())
        });
    }
    let mut restarted = false;
    if lab.qemu_hosts(&g).is_empty() {
        lab.ok(&["guest", "start", &g]);
        notes.push("only copy killed: restarted".into());
        restarted = true;
    }
    let host = check_guest(lab, &hosts, &b, None, restarted);
    let other = if host == "host1" { "host2" } else { "host1" };
    // A source that could not be told to drop its copy after the switchover (its agent
    // down): the job's note says to remove it by hand, and the operator does.
    let by_hand = has_event(&j, |e| e["note"].as_str().is_some_and(|n| n.contains("did not drop its copies")));
    if by_hand && host == "host2" && lab.local_files("host1").contains(&vol) {
        std::fs::remove_file(lab.local_dir("host1").join(&vol)).unwrap();
        let lease = local_lease(lab, "host1", &vol).map(|l| format!(", its lease on host1 left (holder {})", l["holder"])).unwrap_or_default();
        notes.push(format!("source copy left (the job: remove by hand): removed by hand{lease}"));
    }
    // The disk: on the guest's host, not on the other (no --keep-source-volumes), held by
    // nothing else; no NBD helper, no lease or incoming claim left on the other host (but
    // the stale lease of a copy removed by hand, reported above).
    // (`guest destroy` keeps volumes: earlier cases' files stay in the pools.)
    assert!(lab.local_files(&host).contains(&vol), "{}: no {vol} on {host}: {:?}", c.name(), lab.local_files(&host));
    assert!(!lab.local_files(other).contains(&vol), "{}: {vol} left on {other}", c.name());
    for role in ["nbd", "copy"] {
        assert!(helpers(lab, &g, role).is_empty(), "{}: a {role} helper left", c.name());
    }
    let other_dir = lab.local_dir(other).display().to_string();
    assert!(processes_mentioning(&other_dir).is_empty(), "{}: a process holds {other}'s pool", c.name());
    let lease = local_lease(lab, &host, &vol).unwrap_or_else(|| panic!("{}: no lease of {vol} on {host}", c.name()));
    assert_eq!(lease["holder"], host.as_str(), "{}: lease on {host}: {lease}", c.name());
    assert!(lease.get("incoming").is_none(), "{}: incoming claim left on {host}: {lease}", c.name());
    if let Some(l) = local_lease(lab, other, &vol).filter(|_| !by_hand) {
        assert!(l["holder"] != other && l.get("incoming").is_none(), "{}: lease left on {other}: {l}", c.name());
    }
    let recover_ms = t0.elapsed().as_millis();
    lab.ok(&["guest", "destroy", &g]);
    Row { case: c.name(), outcome: format!("runs on {host} ({})", notes.join(", ")), recover_ms }
}

/// Waits for a job to end, asking the guest for TCP echo meanwhile; returns the longest
/// time it went without an answer.
fn wait_job_end(lab: &Lab, id: &str, ip: &str) -> Duration {
    let addr = format!("{ip}:7");
    let (mut last_ok, mut worst) = (Instant::now(), Duration::ZERO);
    wait_for(&format!("job {id} to end"), Duration::from_secs(300), || {
        if lab.tcp_echo(&addr).is_ok() {
            last_ok = Instant::now();
        } else {
            worst = worst.max(last_ok.elapsed());
        }
        (job(lab, id)["status"] != "running").then_some(())
    });
    worst
}

/// After a failed local-disk case: agents up, link up and uncapped, the guest gone.
fn local_cleanup(lab: &Lab, n: usize) {
    let dir = lab_dir(lab);
    let _ = in_ns(&format!("{}-switch", lab.name), &["ip", "link", "set", "h1m", "up"]);
    cap_host1(lab, None);
    for h in ["host1", "host2"] {
        let _ = lab.vmove(&["lab", "agent", "--dir", &dir, h, "start"]);
    }
    let g = format!("l{n}");
    let _ = lab.vmove(&["guest", "destroy", &g]);
    lab.qemu_pids(&g).into_iter().for_each(vmove_host::proc::kill9);
    for role in ["nbd", "copy"] {
        helpers(lab, &g, role).into_iter().for_each(vmove_host::proc::kill9);
    }
}

#[test]
fn fault_matrix_localdisk() {
    let lab = Lab::up("flocal", 2);
    run_all("Local-disk copy faults", &local_cases(), LCase::name, |n, c| run_local(&lab, n, c), |n| local_cleanup(&lab, n));
}
