//! Issue "Fleet operations": drain a busy host (planned targets, anti-affinity, limits,
//! a failed move retried elsewhere, a stopped guest moved offline), maintenance refusing
//! guests and migrations, undrain, and the evacuation of a host whose agent and guests
//! were killed; the drain as a job of its own: taken over by `job watch` after its CLI was
//! killed, and cancelled with `job cancel`.
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A 256 MiB lab guest on `host` with a NIC at `ip`; `extra` arguments of `guest create`
/// (`--dirty-rate`, `--group`, `--start`), and a data disk with `disk`.
fn create(lab: &Lab, name: &str, host: &str, ip: &str, disk: bool, extra: &[&str]) {
    let nic = format!("lab-net,ip={ip}/24");
    let vol = format!("shared/{name}-data.img:16M");
    let mut args = vec!["guest", "create", name, "--host", host, "--memory", "256M", "--nic", &nic];
    if disk {
        args.extend(["--disk", &vol]);
    }
    args.extend_from_slice(extra);
    lab.ok(&args);
}

/// Every JSON line of a `--json` run.
fn lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {e}: {l}"))).collect()
}

/// The first line that has `key`.
fn find<'a>(v: &'a [Value], key: &str) -> &'a Value {
    v.iter().find(|l| l.get(key).is_some()).map(|l| &l[key]).unwrap_or_else(|| panic!("no {key:?} line"))
}

/// The most jobs that ran at once, in all and per source and target, from the agents' own
/// job records (created and ended times).
fn overlap(jobs: &[Value]) -> (usize, usize, usize) {
    let span = |j: &Value| (j["created_ms"].as_u64().unwrap(), j["ended_ms"].as_u64().unwrap());
    let mut most = (0, 0, 0);
    for j in jobs {
        let t = span(j).0;
        let at: Vec<&Value> = jobs.iter().filter(|k| span(k).0 <= t && t < span(k).1).collect();
        let per = |f: &dyn Fn(&Value) -> String| {
            let mut m: BTreeMap<String, usize> = BTreeMap::new();
            for k in &at {
                *m.entry(f(k)).or_default() += 1;
            }
            m.values().copied().max().unwrap_or(0)
        };
        let out = per(&|k| k["spec"]["source"]["name"].as_str().unwrap().to_string());
        let inn = per(&|k| k["spec"]["target"].as_str().unwrap().to_string());
        most = (most.0.max(at.len()), most.1.max(out), most.2.max(inn));
    }
    most
}

const RUNNING: [(&str, &str); 4] = [("db1", "192.0.2.61"), ("db2", "192.0.2.62"), ("web1", "192.0.2.63"), ("web2", "192.0.2.64")];

#[test]
fn drain_a_busy_host_then_evacuate_a_dead_one() {
    let lab = Lab::up("drain", 4);
    // host1: two busy guests of group db, a busy web1 and an idle web2 with disks or not,
    // and a stopped guest; host2 holds db3 of group db (so db1 and db2 avoid host2).
    let busy = BUSY_MB_S.to_string();
    let busy = ["--dirty-rate", busy.as_str(), "--start"];
    create(&lab, "db1", "host1", "192.0.2.61", true, &[&busy[..], &["--group", "db"]].concat());
    create(&lab, "db2", "host1", "192.0.2.62", false, &[&busy[..], &["--group", "db"]].concat());
    create(&lab, "web1", "host1", "192.0.2.63", true, &busy);
    create(&lab, "web2", "host1", "192.0.2.64", false, &["--start"]);
    create(&lab, "cold", "host1", "192.0.2.65", true, &[]);
    create(&lab, "db3", "host2", "192.0.2.66", false, &["--group", "db", "--start"]);
    for (g, ip) in RUNNING {
        lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(180));
        lab.wait_log(g, "VERIFY OK", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    }
    lab.wait_log("db1", "DISK OK", Duration::from_secs(60), |l| last_disk_ok(l).is_some());

    // --dry-run: the plan, and nothing changes.
    let dry = lines(&lab.ok(&["--json", "host", "drain", "host1", "--dry-run"]));
    let plan = find(&dry, "plan").clone();
    assert!(dry.iter().all(|l| l.get("maintenance").is_none()), "no maintenance on a dry run");
    let moves = plan["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 5, "{plan}");
    assert!(plan["unplaced"].as_array().unwrap().is_empty(), "{plan}");
    let planned: BTreeMap<&str, (&str, &str)> =
        moves.iter().map(|m| (m["guest"].as_str().unwrap(), (m["to"].as_str().unwrap(), m["mode"].as_str().unwrap()))).collect();
    assert_eq!(planned["cold"].1, "offline", "a stopped guest moves offline");
    assert!(RUNNING.iter().all(|(g, _)| planned[g].1 == "live"), "{planned:?}");
    assert_ne!(planned["db1"].0, planned["db2"].0, "anti-affinity: {planned:?}");
    assert!(planned["db1"].0 != "host2" && planned["db2"].0 != "host2", "db3 is on host2: {planned:?}");
    let predicted = plan["predicted_total_s"].as_u64().unwrap();
    assert!(predicted > 0);
    assert!(lab.json(&["host", "show", "host1"]).get("maintenance").is_none());
    assert!(lab.json(&["job", "list"]).as_array().unwrap().is_empty(), "a dry run starts no job");
    assert!(RUNNING.iter().all(|(g, _)| lab.cluster_host(g) == "host1"));
    let text = lab.ok(&["host", "drain", "host1", "--dry-run"]);
    assert!(text.contains("DRAIN host1: 5 to move, 0 not placed; predicted "), "{text}");

    // The drain, with web2's first move made to fail: it is retried on another target.
    let o = lab.vmove(&["--json", "host", "drain", "host1", "--inject-fault", "web2=MIGRATE_GUEST"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "drain failed: {}\n{out}", String::from_utf8_lossy(&o.stderr));
    let run = lines(&out);
    assert!(find(&run, "maintenance")["maintenance"].is_object());
    let plan = find(&run, "plan").clone();
    let web2_planned = plan["moves"].as_array().unwrap().iter().find(|m| m["guest"] == "web2").unwrap()["to"].clone();
    let report = find(&run, "report").clone();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{report}");
    assert!(rows.iter().all(|r| r["outcome"] == "moved"), "{report}");
    let web2 = rows.iter().find(|r| r["guest"] == "web2").unwrap();
    assert_eq!(web2["attempts"], 2, "{web2}");
    assert_ne!(web2["to"], web2_planned, "retried on another target: {web2}");
    assert!(web2["note"].as_str().unwrap().contains("injected fault"), "{web2}");
    assert!(run.iter().any(|l| l.get("retry").is_some()), "a retry line");
    assert!(rows.iter().filter(|r| r["mode"] == "live").all(|r| r["downtime_ms"].is_u64()), "QEMU's downtime: {report}");

    // Never more than the limits at once, by the agents' own job timestamps.
    let ids: Vec<String> = rows.iter().flat_map(|r| r["jobs"].as_array().unwrap().iter().map(|j| j.as_str().unwrap().to_string())).collect();
    assert_eq!(ids.len(), 6, "five moves and web2's failed first job: {ids:?}");
    let jobs: Vec<Value> = ids.iter().map(|id| lab.json(&["job", "show", id])).collect();
    let (all, out_most, in_most) = overlap(&jobs);
    eprintln!(
        "drain of 5 guests: predicted {predicted} s, took {} ms; at most {all} jobs at once ({out_most} out of one host, {in_most} into one); runner saw {}",
        report["actual_total_ms"], report["max_running"]
    );
    assert!(all <= 5 && out_most <= 2 && in_most <= 2, "limits broken: {all} {out_most} {in_most}");
    assert!(all >= 2, "the moves ran side by side");

    // Where everything is: off host1, one copy each, groups apart, healthy.
    let mut at = BTreeMap::new();
    for g in ["db1", "db2", "web1", "web2", "cold"] {
        let h = lab.cluster_host(g);
        assert_ne!(h, "host1", "{g}");
        at.insert(g, h);
    }
    assert_ne!(at["db1"], at["db2"]);
    assert!(at["db1"] != "host2" && at["db2"] != "host2");
    for (g, ip) in RUNNING {
        assert_eq!(lab.qemu_hosts(g), vec![at[g].clone()], "{g} runs once, where the file says");
        lab.tcp_echo(&format!("{ip}:7")).unwrap_or_else(|e| panic!("{g} answers: {e}"));
    }
    assert!(lab.qemu_hosts("cold").is_empty(), "a stopped guest stays stopped");
    assert_eq!(lab.json(&["guest", "show", "cold"])["state"], "stopped");
    for g in ["db1", "web1"] {
        let log = lab.wait_log(g, "VERIFY OK and DISK OK after the move", Duration::from_secs(90), |l| {
            l.contains("VERIFY OK") && last_disk_ok(l).is_some()
        });
        assert!(!log.contains("VERIFY FAIL") && !log.contains("DISK FAIL"), "{g}: {log}");
    }

    // host1 in maintenance: no new guest, no migration in (the precheck, and the agent).
    let hosts = lab.json(&["host", "list"]);
    let h1 = hosts.as_array().unwrap().iter().find(|h| h["name"] == "host1").unwrap();
    assert!(h1["info"]["maintenance"]["since_ms"].is_u64(), "{h1}");
    let e = lab.fails(&["guest", "create", "newbie", "--host", "host1", "--memory", "64M"]);
    assert!(e.contains("host1 is in maintenance"), "{e}");
    let e = lab.fails(&["migrate", "web2", "--to", "host1", "--precheck"]);
    assert!(e.contains("target-not-in-maintenance"), "{e}");
    let o = lab.vmove(&["migrate", "web2", "--to", "host1", "--ignore-check", "target-not-in-maintenance"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    let last = e.trim().lines().last().unwrap_or_default();
    assert!(last.starts_with("vmove: host1: host1 is in maintenance: a migration of web2 to host1 refused"), "the agent refuses: {e}");
    assert!(lab.ok(&["host", "drain", "host1", "--dry-run"]).contains("0 to move"), "empty now");

    // Undrain reopens it.
    assert!(lab.ok(&["host", "undrain", "host1"]).contains("host1 is no longer in maintenance"));
    assert!(lab.ok(&["host", "undrain", "host1"]).contains("host1 was not in maintenance"));
    lab.ok(&["guest", "create", "newbie", "--host", "host1", "--memory", "64M"]);
    lab.ok(&["guest", "destroy", "newbie"]);

    // Evacuate the host web1 went to, once its agent and its guests' QEMUs are killed.
    let victim = at["web1"].clone();
    let dir = lab.dir.to_str().unwrap().to_string();
    let on_victim: Vec<String> = lab
        .json(&["guest", "list", "--host", &victim])
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["guest"]["spec"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(on_victim.contains(&"web1".to_string()), "{on_victim:?}");
    let qemus: Vec<u32> = on_victim.iter().flat_map(|g| lab.qemu_pids(g)).filter(|p| lab.host_of_pid(*p).as_deref() == Some(&victim)).collect();
    lab.ok(&["lab", "agent", "--dir", &dir, &victim, "kill"]);
    for p in &qemus {
        vmove_host::proc::kill9(*p);
    }
    wait_for("the victim's QEMUs to die", Duration::from_secs(10), || qemus.iter().all(|p| !vmove_host::proc::alive(*p)).then_some(()));
    // Without --force: the machine still answers (connection refused), so not sure.
    let e = lab.fails(&["host", "evacuate", &victim, "--grace", "2s"]);
    assert!(e.contains(&format!("not sure {victim} is dead")) && e.contains("--force"), "{e}");
    let out = lab.ok(&["host", "evacuate", &victim, "--force"]);
    eprintln!("{out}");
    assert!(out.contains(&format!("EVACUATE {victim}")) && out.contains("offlineforce"), "{out}");
    for g in &on_victim {
        let h = lab.cluster_host(g);
        assert_ne!(h, victim, "{g} left {victim}: {out}");
        if let Some((_, ip)) = RUNNING.iter().find(|(n, _)| n == g) {
            assert_eq!(lab.qemu_hosts(g), vec![h.clone()], "{g} runs once, on {h}");
            lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(180));
        }
    }
    let log = lab.wait_log("web1", "DISK OK after the evacuation", Duration::from_secs(90), |l| {
        l.contains("VMOVE READY") && last_disk_ok(l).is_some()
    });
    assert!(!log.contains("DISK FAIL"), "{log}");
    // The victim comes back: it learns from the leases that its guests moved, runs none.
    lab.ok(&["lab", "agent", "--dir", &dir, &victim, "start"]);
    for g in &on_victim {
        assert!(!lab.qemu_hosts(g).contains(&victim), "{g} not started again on {victim}");
    }
}

/// Starts `vmove --json host drain HOST` and returns it once it has put the host in
/// maintenance (its first line).
fn start_drain(lab: &Lab, host: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(vmove_bin())
        .args(["--json", "host", "drain", host])
        .env("VMOVE_CLUSTER", &lab.cluster)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run vmove");
    let mut first = String::new();
    let out = child.stdout.as_mut().expect("stdout");
    std::io::BufReader::new(out).read_line(&mut first).expect("first line");
    assert!(first.contains("\"maintenance\""), "{host}: {first}");
    (child, first)
}

/// Waits for a drain started by [`start_drain`]; returns its report.
fn end_drain(host: &str, child: std::process::Child) -> Value {
    let o = child.wait_with_output().expect("wait");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "drain of {host} failed: {}\n{out}", String::from_utf8_lossy(&o.stderr));
    find(&lines(&out), "report").clone()
}

#[test]
fn two_drains_at_once_share_the_targets_within_the_limits() {
    let lab = Lab::up("drain2", 4);
    let guests = [("a1", "host1", 71), ("a2", "host1", 72), ("a3", "host1", 73), ("b1", "host2", 74), ("b2", "host2", 75), ("b3", "host2", 76)];
    for (g, h, n) in guests {
        create(&lab, g, h, &format!("192.0.2.{n}"), false, &["--start"]);
    }
    for (g, _, n) in guests {
        lab.wait_tcp_echo(&format!("192.0.2.{n}:7"), Duration::from_secs(180));
        lab.wait_log(g, "VERIFY OK", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    }
    let (d2, _) = start_drain(&lab, "host2");
    let (d1, _) = start_drain(&lab, "host1");
    let r2 = end_drain("host2", d2);
    let r1 = end_drain("host1", d1);
    for r in [&r1, &r2] {
        assert!(r["rows"].as_array().unwrap().iter().all(|x| x["outcome"] == "moved"), "{r}");
    }
    for (g, _, n) in guests {
        let h = lab.cluster_host(g);
        assert!(h == "host3" || h == "host4", "{g} on {h}: {r1}\n{r2}");
        assert_eq!(lab.qemu_hosts(g), vec![h], "{g} runs once, where the file says");
        lab.tcp_echo(&format!("192.0.2.{n}:7")).unwrap_or_else(|e| panic!("{g} answers: {e}"));
    }
    // Every job in the cluster, by the agents' own timestamps: never more than 2 into a host.
    let listed = lab.json(&["job", "list"]);
    let (drains, migrations): (Vec<&Value>, Vec<&Value>) = listed.as_array().unwrap().iter().partition(|j| j.get("drain").is_some());
    let states: Vec<&Value> = drains.iter().map(|d| &d["drain"]["state"]).collect();
    assert_eq!(states, vec!["done", "done"], "the two drains are listed: {drains:?}");
    let jobs: Vec<Value> = migrations.iter().map(|j| lab.json(&["job", "show", j["id"].as_str().unwrap()])).collect();
    assert!(jobs.len() >= 6, "{jobs:?}");
    let (all, out_most, in_most) = overlap(&jobs);
    eprintln!(
        "two drains of 3 guests each: {} jobs, at most {all} at once ({out_most} out of one host, {in_most} into one); took {} and {} ms",
        jobs.len(),
        r1["actual_total_ms"],
        r2["actual_total_ms"]
    );
    assert!(all <= 5 && out_most <= 2 && in_most <= 2, "limits broken: {all} {out_most} {in_most}");
    for h in ["host1", "host2"] {
        assert!(lab.json(&["host", "show", h])["maintenance"].is_object(), "{h} stays in maintenance");
    }
}

/// The CLI of a drain is killed once its first move has started: the moves it started go
/// on (they are jobs on their targets' agents); `host drain` run again waits for them,
/// says which guests they moved, moves the rest, and leaves every guest once elsewhere.
#[test]
fn a_drain_whose_cli_dies_is_run_again_to_the_end() {
    use std::io::BufRead;
    let lab = Lab::up("drainkill", 3);
    let busy = BUSY_MB_S.to_string();
    let guests = [("k1", "192.0.2.81"), ("k2", "192.0.2.82"), ("k3", "192.0.2.83")];
    for (g, ip) in guests {
        create(&lab, g, "host1", ip, false, &["--dirty-rate", &busy, "--start"]);
    }
    for (g, ip) in guests {
        lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(180));
        lab.wait_log(g, "VERIFY OK", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    }
    let mut child = std::process::Command::new(vmove_bin())
        .args(["--json", "host", "drain", "host1"])
        .env("VMOVE_CLUSTER", &lab.cluster)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run vmove");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        assert!(out.read_line(&mut l).expect("read") > 0, "the drain ended before a move started: {seen:?}");
        let v: Value = serde_json::from_str(l.trim()).expect("JSON line");
        let started = v.get("job").is_some() && v.get("event").is_some();
        seen.push(v);
        if started {
            break;
        }
    }
    child.kill().expect("kill the drain's CLI");
    child.wait().expect("reap");

    let o = lab.vmove(&["--json", "host", "drain", "host1"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "drain again: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    let run = lines(&text);
    let already: Vec<String> = run
        .iter()
        .filter_map(|l| l.get("already_moved"))
        .flat_map(|a| a.as_array().unwrap().iter().map(|x| x["guest"].as_str().unwrap().to_string()))
        .collect();
    assert!(!already.is_empty(), "the killed drain's moves are reported: {text}");
    let report = find(&run, "report").clone();
    let rows = report["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["outcome"] == "moved"), "{report}");
    let again: Vec<&str> = rows.iter().map(|r| r["guest"].as_str().unwrap()).collect();
    assert!(again.iter().all(|g| !already.iter().any(|a| a == g)), "moved once: {already:?} {again:?}");
    assert_eq!(already.len() + again.len(), 3, "{already:?} {again:?}");
    eprintln!("drain killed after its first move started; run again: {already:?} already moved, {again:?} moved in {} ms", report["actual_total_ms"]);
    for (g, ip) in guests {
        let h = lab.cluster_host(g);
        assert_ne!(h, "host1", "{g}");
        assert_eq!(lab.qemu_hosts(g), vec![h.clone()], "{g} runs once, where the file says");
        lab.tcp_echo(&format!("{ip}:7")).unwrap_or_else(|e| panic!("{g} answers: {e}"));
        lab.wait_log(g, "VERIFY OK after the move", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    }
    assert!(lab.ok(&["host", "drain", "host1", "--dry-run"]).contains("0 to move"), "empty now");
}

/// Starts `vmove --json host drain host1 ARGS`, reads its lines until its first move's job
/// has started, and returns the child (still running), the drain's id and that job's
/// guest and id. (The caller waits for the child; a failed assertion here leaves it to
/// the lab's teardown.)
#[allow(clippy::zombie_processes)]
fn drain_until_first_move(lab: &Lab, args: &[&str]) -> (std::process::Child, String, String, String) {
    run_until_first_move(lab, &["host", "drain", "host1"], args)
}

/// [`drain_until_first_move`] of any drain-like command (`host evacuate HOST --force`).
#[allow(clippy::zombie_processes)]
fn run_until_first_move(lab: &Lab, cmd: &[&str], args: &[&str]) -> (std::process::Child, String, String, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(vmove_bin())
        .arg("--json")
        .args(cmd)
        .args(args)
        .env("VMOVE_CLUSTER", &lab.cluster)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run vmove");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        assert!(out.read_line(&mut l).expect("read") > 0, "the drain ended before a move started: {seen:?}");
        let v: Value = serde_json::from_str(l.trim()).expect("JSON line");
        if v.get("job").is_some() && v.get("event").is_some() {
            let id = seen.iter().find_map(|x: &Value| x["drain"].as_str()).unwrap_or_else(|| panic!("the drain's id in {seen:?}")).to_string();
            let (guest, job) = (v["guest"].as_str().unwrap().to_string(), v["job"].as_str().unwrap().to_string());
            // Keep reading so that the drain never blocks on a full pipe.
            std::thread::spawn(move || for _ in out.lines() {});
            return (child, id, guest, job);
        }
        seen.push(v);
    }
}

/// `job show` (`shown`) says drain `id`'s runner is gone; `job watch` takes it over and ends
/// it `done` after one takeover, with 3 rows, all moved, `first` moved by `first_job` (the
/// killed runner's) alone. Returns the final record.
fn take_over(lab: &Lab, shown: &Value, id: &str, first: &str, first_job: &str) -> Value {
    assert_eq!((shown["state"].as_str(), shown["runner_alive"].as_bool()), (Some("running"), Some(false)), "{shown}");
    let o = lab.vmove(&["--json", "job", "watch", id]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "job watch {id}: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    let run = lines(&text);
    assert_eq!(find(&run, "takeover")["drain"], id, "{text}");
    let fin = find(&run, "final").clone();
    assert_eq!((fin["state"].as_str(), fin["takeovers"].as_u64()), (Some("done"), Some(1)), "{fin}");
    let rows = fin["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{fin}");
    assert!(rows.iter().all(|r| r["state"] == "moved"), "{fin}");
    let row = rows.iter().find(|r| r["guest"] == first).unwrap();
    assert_eq!(row["jobs"][0], first_job, "the killed runner's job is the first move's: {row}");
    fin
}

/// Three busy guests of 256 MiB on host1 of a 3-host lab.
fn three_busy(lab: &Lab, guests: &[(&str, &str); 3]) {
    let busy = BUSY_MB_S.to_string();
    for (g, ip) in guests {
        create(lab, g, "host1", ip, false, &["--dirty-rate", &busy, "--start"]);
    }
    for (g, ip) in guests {
        lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(180));
        lab.wait_log(g, "VERIFY OK", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    }
}

/// The drain is a job of its own: its CLI is killed (SIGKILL) once its first move has
/// started; `job show` says its runner is gone; `job watch DRAIN-ID` takes it over and runs
/// it to the end: every guest runs exactly once off host1, VERIFY OK, and the record says
/// which job moved each guest (the first move's job once: never moved twice).
fn a_drain_whose_cli_is_killed_is_taken_over_by_job_watch(store: Store) {
    let lab = Lab::up_on(store, "drainwatch", 3);
    let guests = [("w1", "192.0.2.91"), ("w2", "192.0.2.92"), ("w3", "192.0.2.93")];
    three_busy(&lab, &guests);
    let (mut child, id, first, first_job) = drain_until_first_move(&lab, &[]);
    child.kill().expect("SIGKILL the drain's CLI");
    child.wait().expect("reap");

    // The file store's claim (a flock) goes with the process; etcd's (a key on the runner's
    // lease) when the lease expires, at most its 10 s TTL later.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let shown = lab.json(&["job", "show", &id]);
        if shown["runner_alive"] == false || std::time::Instant::now() > deadline {
            break shown;
        }
        assert_eq!(store, Store::Etcd, "the flock went with the killed runner: {shown}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let fin = take_over(&lab, &shown, &id, &first, &first_job);
    let rows = fin["rows"].as_array().unwrap();
    eprintln!(
        "drain killed during {first}'s move ({first_job}); `job watch` took {id} over: {}",
        rows.iter().map(|r| format!("{} -> {} {}", r["guest"], r["to"], r["jobs"])).collect::<Vec<_>>().join(", ")
    );
    for (g, ip) in guests {
        let h = lab.cluster_host(g);
        assert_ne!(h, "host1", "{g}");
        let row = rows.iter().find(|r| r["guest"] == g).unwrap();
        assert_eq!(row["to"], h.as_str(), "{g}: the record says where it is");
        assert_eq!(lab.qemu_hosts(g), vec![h.clone()], "{g} runs exactly once, where the file says");
        lab.tcp_echo(&format!("{ip}:7")).unwrap_or_else(|e| panic!("{g} answers: {e}"));
        lab.wait_log(g, "VERIFY OK after the move", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    }
    let listed = lab.json(&["job", "list"]);
    let d = listed.as_array().unwrap().iter().find(|j| j["id"] == id.as_str()).expect("job list lists the drain");
    assert_eq!(d["drain"]["state"], "done");
}

/// `job cancel DRAIN-ID` during a drain (one move at a time): no move starts after it, the
/// move running is cancelled (or finishes if past its switchover); the drain ends
/// `cancelled`, its rows say who moved and who stayed, and every guest runs exactly once,
/// where its row says.
#[test]
fn a_cancelled_drain_leaves_every_guest_running_once() {
    let lab = Lab::up("draincancel", 3);
    let guests = [("c1", "192.0.2.94"), ("c2", "192.0.2.95"), ("c3", "192.0.2.96")];
    three_busy(&lab, &guests);
    let (child, id, first, _) = drain_until_first_move(&lab, &["--parallel", "1"]);
    let c = lab.json(&["job", "cancel", &id]);
    assert_eq!((c["cancel_requested"].as_bool(), c["runner_alive"].as_bool()), (Some(true), Some(true)), "{c}");
    let o = child.wait_with_output().expect("wait for the drain");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("cancelled"), "the drain's CLI says it was cancelled: {err}");

    let rec = lab.json(&["job", "show", &id]);
    assert_eq!(rec["state"], "cancelled", "{rec}");
    let rows = rec["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rec}");
    let mut stayed = 0;
    for (g, ip) in guests {
        let row = rows.iter().find(|r| r["guest"] == g).unwrap();
        let where_ = match row["state"].as_str().unwrap() {
            "moved" => row["to"].as_str().unwrap().to_string(),
            "stayed" => {
                stayed += 1;
                "host1".to_string()
            }
            s => panic!("{g}: {s}: {rec}"),
        };
        assert_eq!(lab.cluster_host(g), where_, "{g}: the file agrees with the record");
        assert_eq!(lab.qemu_hosts(g), vec![where_.clone()], "{g} runs exactly once");
        lab.tcp_echo(&format!("{ip}:7")).unwrap_or_else(|e| panic!("{g} answers: {e}"));
        lab.wait_log(g, "VERIFY OK", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    }
    assert!(stayed >= 1, "one move at a time: the guests after {first} never started: {rec}");
    eprintln!("cancelled during {first}'s move: {}", rows.iter().map(|r| format!("{} {}", r["guest"], r["state"])).collect::<Vec<_>>().join(", "));
    let e = lab.fails(&["job", "cancel", &id]);
    assert!(e.contains("has ended (cancelled)"), "{e}");
}

/// `host drain --detach` prints the drain's id and returns at once; the detached runner
/// runs the drain, and `job watch DRAIN-ID` (the runner alive: no takeover) streams the
/// table, with the running moves' figures, to the end.
fn a_detached_drain_is_watched_to_its_end(store: Store) {
    let lab = Lab::up_on(store, "draindetach", 3);
    let guests = [("d1", "192.0.2.97"), ("d2", "192.0.2.98")];
    for (g, ip) in guests {
        create(&lab, g, "host1", ip, false, &["--start"]);
    }
    for (g, ip) in guests {
        lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(180));
        lab.wait_log(g, "VERIFY OK", Duration::from_secs(90), |l| l.contains("VERIFY OK"));
    }
    let started = lab.json(&["host", "drain", "host1", "--detach"]);
    let id = started["drain"].as_str().expect("the drain's id").to_string();
    assert_eq!(started["detached"], true, "{started}");
    let o = lab.vmove(&["--json", "job", "watch", &id]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "job watch {id}: {}\n{text}", String::from_utf8_lossy(&o.stderr));
    let run = lines(&text);
    assert!(run.iter().all(|l| l.get("takeover").is_none()), "the detached runner runs it: {text}");
    assert!(run.iter().any(|l| l["state"] == "running" && l["rows"].is_array()), "live table lines: {text}");
    let fin = find(&run, "final").clone();
    assert_eq!((fin["state"].as_str(), fin["takeovers"].as_u64()), (Some("done"), Some(0)), "{fin}");
    for (g, ip) in guests {
        let h = lab.cluster_host(g);
        assert_ne!(h, "host1", "{g}");
        assert_eq!(lab.qemu_hosts(g), vec![h.clone()], "{g} runs exactly once");
        lab.tcp_echo(&format!("{ip}:7")).unwrap_or_else(|e| panic!("{g} answers: {e}"));
    }
    let e = lab.fails(&["job", "cancel", &id]);
    assert!(e.contains("has ended (done)"), "{e}");
}

/// An evacuation is a job of its own too: host1's agent and guests killed, `host evacuate
/// --force --parallel 1` killed (SIGKILL) once its first move has started, `job watch` takes
/// it over: every guest comes up exactly once off host1, and the record names the killed
/// runner's job for the first guest (never moved twice).
#[test]
fn an_evacuation_whose_cli_is_killed_is_taken_over_by_job_watch() {
    let lab = Lab::up("evacwatch", 3);
    let guests = [("e1", "192.0.2.81"), ("e2", "192.0.2.82"), ("e3", "192.0.2.83")];
    for (g, ip) in guests {
        create(&lab, g, "host1", ip, true, &["--start"]);
    }
    for (g, ip) in guests {
        lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(180));
        lab.wait_log(g, "DISK OK", Duration::from_secs(90), |l| last_disk_ok(l).is_some());
    }
    let qemus: Vec<u32> = guests.iter().flat_map(|(g, _)| lab.qemu_pids(g)).collect();
    let dir = lab.dir.to_str().unwrap().to_string();
    lab.ok(&["lab", "agent", "--dir", &dir, "host1", "kill"]);
    for p in &qemus {
        vmove_host::proc::kill9(*p);
    }
    wait_for("host1's QEMUs to die", Duration::from_secs(10), || qemus.iter().all(|p| !vmove_host::proc::alive(*p)).then_some(()));

    let (mut child, id, first, first_job) = run_until_first_move(&lab, &["host", "evacuate", "host1", "--force"], &["--parallel", "1"]);
    assert!(id.starts_with("evacuate-host1-"), "{id}");
    child.kill().expect("SIGKILL the evacuation's CLI");
    child.wait().expect("reap");
    let fin = take_over(&lab, &lab.json(&["job", "show", &id]), &id, &first, &first_job);
    let rows = fin["rows"].as_array().unwrap();
    for (g, ip) in guests {
        let row = rows.iter().find(|r| r["guest"] == g).unwrap();
        let h = lab.cluster_host(g);
        assert_ne!(h, "host1", "{g}");
        assert_eq!(row["to"], h.as_str(), "{g}: the record says where it is");
        assert_eq!(lab.qemu_hosts(g), vec![h.clone()], "{g} runs exactly once, where the file says");
        lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(180));
        let log = lab.wait_log(g, "DISK OK after the evacuation", Duration::from_secs(90), |l| {
            l.contains("VMOVE READY") && last_disk_ok(l).is_some()
        });
        assert!(!log.contains("DISK FAIL"), "{g}: {log}");
    }
    eprintln!("evacuation killed during {first}'s move ({first_job}); `job watch` took {id} over");
}

// These run on the file store and on etcd (`file::NAME`, `etcd::NAME`): on etcd the runner's
// claim is a lease, and `job watch` wakes on the drain record's etcd watch.
on_both_stores!(a_drain_whose_cli_is_killed_is_taken_over_by_job_watch, a_detached_drain_is_watched_to_its_end);
