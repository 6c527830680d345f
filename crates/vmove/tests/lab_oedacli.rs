//! `vmove oedacli` runs examples 4-29 (offline migration), 4-30 (live-migration precheck)
//! and 4-31 (live migration) of Oracle Exadata's `MIGRATE GUEST` documentation with the
//! lab's names, as scripts; a script with an error stops with a one-line error naming the
//! token. The merged file is the planned state while the guest still runs on the source;
//! the deployed file is where the guest really runs afterwards.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use vmove_model::Cluster;

/// `vmove [--json] oedacli SCRIPT` in the lab's directory.
fn run_script(lab: &Lab, name: &str, script: &str, json: bool) -> Output {
    let path = lab.dir.join(name);
    std::fs::write(&path, script).unwrap();
    let mut c = Command::new(vmove_bin());
    if json {
        c.arg("--json");
    }
    c.arg("oedacli").arg(&path).current_dir(&lab.dir).env_remove("VMOVE_CLUSTER").output().expect("run vmove oedacli")
}

/// `vmove oedacli` reading its commands from a pipe, so that the test can look at the lab
/// between two commands.
struct Piped {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    transcript: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Piped {
    fn start(lab: &Lab) -> Piped {
        let mut child = Command::new(vmove_bin())
            .arg("oedacli")
            .current_dir(&lab.dir)
            .env_remove("VMOVE_CLUSTER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vmove oedacli");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Piped { stdin: child.stdin.take(), child, lines, transcript: Vec::new(), stderr: Some(stderr) }
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    /// Reads the transcript until a line contains `what`.
    fn until(&mut self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let done = l.contains(what);
                    self.transcript.push(l);
                    if done {
                        return;
                    }
                }
                Err(_) => panic!("no line with {what:?} after {timeout:?}; transcript:\n{}", self.transcript.join("\n")),
            }
        }
    }

    /// Closes stdin, waits for the end; the whole transcript and stderr.
    fn finish(mut self) -> (bool, String, String) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.transcript.push(l);
        }
        let err = self.stderr.take().unwrap().join().unwrap();
        (status.success(), self.transcript.join("\n"), err)
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_in(file: &Path, guest: &str) -> String {
    let c = Cluster::load(file).unwrap_or_else(|e| panic!("{e}"));
    c.guest(guest).map(|g| g.host.clone()).unwrap_or_default()
}

/// Asserts that `lines` appear in `out` in this order.
fn in_order(out: &str, lines: &[&str]) {
    let mut at = 0;
    for l in lines {
        let i = out[at..].find(l).unwrap_or_else(|| panic!("{l:?} missing (in order) in:\n{out}"));
        at += i + l.len();
    }
}

#[test]
fn example_4_29_offline_migration_and_script_errors() {
    let lab = Lab::up("oeda", 2);

    // A script with an error stops there, non-zero, with one line naming the token.
    let bad = "LOAD FILE NAME=cluster.toml\n\
               MIGRATE GUEST HOSTNAME=vm1 MODE=fast SRCHOST=host1 TGTHOST=host2\n\
               SAVE ACTION\n\
               SAVE FILE NAME=never.toml\n";
    let o = run_script(&lab, "bad.oeda", bad, false);
    assert!(!o.status.success(), "a bad MODE fails the script");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(err, "vmove: line 2: MODE=fast: expected OFFLINE, OFFLINEFORCE or LIVE");
    assert!(out.contains("oedacli> MIGRATE GUEST HOSTNAME=vm1 MODE=fast"), "{out}");
    assert!(!out.contains("SAVE ACTION") && !lab.dir.join("never.toml").exists(), "nothing after the error ran: {out}");
    // ...and with --json, the failing command's JSON line says so.
    let o = run_script(&lab, "bad.oeda", bad, true);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], false);
    assert_eq!(last["error"], "line 2: MODE=fast: expected OFFLINE, OFFLINEFORCE or LIVE");

    lab.boot_guest("vm1", "host1", "192.0.2.61", BUSY_MB_S, true);

    // --json: one line per command.
    let o = run_script(
        &lab,
        "json.oeda",
        "LOAD FILE NAME=cluster.toml\nMIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2\nSAVE ACTION\nLIST ACTIONS\n",
        true,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines.iter().all(|l| l["ok"] == true), "{out}");
    assert_eq!(lines[3]["command"], "LIST ACTIONS");
    assert_eq!(lines[3]["actions"][0]["state"], "saved");
    assert_eq!(lines[3]["actions"][0]["command"], "MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2");

    // Example 4-29, commands fed one by one.
    let mut cli = Piped::start(&lab);
    for c in [
        "LOAD FILE NAME=cluster.toml",
        "MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2",
        "SAVE ACTION",
        "MERGE ACTIONS",
        "SAVE FILE NAME=cluster.migration-merged.toml",
    ] {
        cli.send(c);
    }
    cli.until("File : cluster.migration-merged.toml saved OK", Duration::from_secs(60));
    assert_eq!(host_in(&lab.dir.join("cluster.migration-merged.toml"), "vm1"), "host2", "the planned state");
    assert_eq!(lab.cluster_host("vm1"), "host1", "the loaded file is unchanged");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()], "still runs on the source");
    cli.send("DEPLOY ACTIONS");
    cli.send("SAVE FILE NAME=cluster.migration-deployed.toml");
    cli.send("LIST ACTIONS");
    let (ok, out, err) = cli.finish();
    eprintln!("{out}");
    assert!(ok, "{err}");
    in_order(
        &out,
        &[
            "oedacli> LOAD FILE NAME=cluster.toml",
            "oedacli> MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2",
            "oedacli> SAVE ACTION",
            "oedacli> MERGE ACTIONS",
            "Merging MIGRATE GUEST",
            "Action Validated and Merged OK",
            "oedacli> SAVE FILE NAME=cluster.migration-merged.toml",
            "File : cluster.migration-merged.toml saved OK",
            "oedacli> DEPLOY ACTIONS",
            "Deploying Action ID : 1 MIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 TGTHOST=host2",
            "Deploying MIGRATE GUEST",
            "Step STOP_GUEST completed successfully",
            "Step MIGRATE_GUEST completed successfully",
            "Step STARTUP_GUEST completed successfully",
            "Done...",
            "Done [Elapsed = ",
            "oedacli> SAVE FILE NAME=cluster.migration-deployed.toml",
            "File : cluster.migration-deployed.toml saved OK",
            "oedacli> LIST ACTIONS",
            "deployed",
        ],
    );
    assert!(out.lines().any(|l| l.starts_with("Done [Elapsed = ") && l.contains(" mS [") && l.contains(" minutes] ")), "{out}");
    assert_eq!(host_in(&lab.dir.join("cluster.migration-deployed.toml"), "vm1"), "host2");
    assert_eq!(lab.cluster_host("vm1"), "host2", "the job updated the loaded file");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()], "really runs on the target");
    lab.wait_tcp_echo("192.0.2.61:7", Duration::from_secs(120));

    // MERGE refuses an action whose prechecks fail, naming the checks.
    lab.ok(&["guest", "stop", "vm1", "--force"]);
    let o = run_script(
        &lab,
        "stopped.oeda",
        "LOAD FILE NAME=cluster.toml\nMIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host2 TGTHOST=host1\nSAVE ACTION\nMERGE ACTIONS\nDEPLOY ACTIONS\n",
        false,
    );
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAIL guest-running"), "{out}");
    assert!(!out.contains("Action Validated and Merged OK") && !out.contains("Deploying"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(err, "vmove: line 4: MERGE ACTIONS: action 1 failed validation: guest-running");
}

#[test]
fn examples_4_30_and_4_31_live_precheck_and_live_migration() {
    let lab = Lab::up("oedalive", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.62", BUSY_MB_S, true);

    // Example 4-30, as a transcript replayed from a file (the prompts are ignored).
    let o = run_script(
        &lab,
        "precheck.oeda",
        "oedacli> LOAD FILE NAME=cluster.toml\n\
         oedacli> MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2 WHERE STEPNAME=PRECHECK_LIVEMIGRATION\n\
         oedacli> SAVE ACTION\n\
         oedacli> MERGE ACTIONS\n\
         oedacli> DEPLOY ACTIONS\n",
        false,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    in_order(
        &out,
        &[
            "oedacli> MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2 WHERE STEPNAME=PRECHECK_LIVEMIGRATION",
            "oedacli> MERGE ACTIONS",
            "Merging MIGRATE GUEST",
            "Action Validated and Merged OK",
            "oedacli> DEPLOY ACTIONS",
            "Deploying Action ID : 1 MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2 WHERE STEPNAME=PRECHECK_LIVEMIGRATION",
            "PRECHECK LIVE migration of vm1 from host1 to host2",
            "guest-running",
            "same-hardware-and-cpu",
            "encrypted-channel",
            "Done [Elapsed = ",
        ],
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert_eq!(lab.cluster_host("vm1"), "host1", "a precheck changes nothing");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()]);

    // Example 4-31, commands fed one by one.
    let mut cli = Piped::start(&lab);
    for c in [
        "LOAD FILE NAME=cluster.toml",
        "MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2",
        "SAVE ACTION",
        "MERGE ACTIONS",
        "SAVE FILE NAME=cluster.migration-merged.toml",
    ] {
        cli.send(c);
    }
    cli.until("File : cluster.migration-merged.toml saved OK", Duration::from_secs(60));
    assert_eq!(host_in(&lab.dir.join("cluster.migration-merged.toml"), "vm1"), "host2", "the planned state");
    assert_eq!(lab.cluster_host("vm1"), "host1");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()], "still runs on the source");
    cli.send("DEPLOY ACTIONS");
    cli.send("SAVE FILE NAME=cluster.migration-deployed.toml");
    cli.send("EXIT");
    cli.send("SAVE FILE NAME=after-exit.toml");
    let (ok, out, err) = cli.finish();
    eprintln!("{out}");
    assert!(ok, "{err}");
    in_order(
        &out,
        &[
            "oedacli> MERGE ACTIONS",
            "Merging MIGRATE GUEST",
            "Action Validated and Merged OK",
            "File : cluster.migration-merged.toml saved OK",
            "oedacli> DEPLOY ACTIONS",
            "Deploying Action ID : 1 MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST=host2",
            "Step ATTACH_VOLUMES completed successfully",
            "Step CREATE_BRIDGES completed successfully",
            "Step MIGRATE_GUEST completed successfully",
            "Step DETACH_VOLUMES completed successfully",
            "Done...",
            "Done [Elapsed = ",
            "File : cluster.migration-deployed.toml saved OK",
            "oedacli> EXIT",
        ],
    );
    assert!(!lab.dir.join("after-exit.toml").exists(), "EXIT ends the script");
    assert_eq!(host_in(&lab.dir.join("cluster.migration-deployed.toml"), "vm1"), "host2");
    assert_eq!(lab.cluster_host("vm1"), "host2");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()], "really runs on the target");
    lab.tcp_echo("192.0.2.62:7").expect("the guest answers on host2");
    let log = lab.wait_log("vm1", "VERIFY OK after the move", Duration::from_secs(60), |l| l.matches("VERIFY OK").count() >= 2);
    assert!(!log.contains("VERIFY FAIL") && !log.contains("DISK FAIL"), "{log}");
}

/// The vmove extension: a whole migration without TGTHOST; MERGE lets the drain's planner
/// choose the target, prints it and fixes it in the action; DEPLOY moves the guest there.
#[test]
fn migrate_guest_without_tgthost_lets_the_planner_choose() {
    let lab = Lab::up("oedaplan", 3);
    lab.boot_guest("vm1", "host1", "192.0.2.67", BUSY_MB_S, true);

    let o = run_script(
        &lab,
        "planner.oeda",
        "LOAD FILE NAME=cluster.toml\n\
         MIGRATE GUEST HOSTNAME=vm1 MODE=LIVE SRCHOST=host1\n\
         SAVE ACTION\n\
         MERGE ACTIONS\n\
         LIST ACTIONS\n\
         DEPLOY ACTIONS\n",
        false,
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    eprintln!("{out}");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let chosen = out
        .lines()
        .find_map(|l| l.strip_prefix("TGTHOST not given: the planner chose "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no choice printed:\n{out}"))
        .to_string();
    assert!(chosen == "host2" || chosen == "host3", "chose {chosen}");
    let fixed = format!("MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1 TGTHOST={chosen}");
    in_order(
        &out,
        &[
            "oedacli> MIGRATE GUEST HOSTNAME=vm1 MODE=LIVE SRCHOST=host1",
            "oedacli> MERGE ACTIONS",
            "Validating Action ID : 1 MIGRATE GUEST HOSTNAME=vm1 MODE=live SRCHOST=host1",
            &format!("TGTHOST not given: the planner chose {chosen} (the least loaded host"),
            &format!("Action ID : 1 is now {fixed}"),
            "Action Validated and Merged OK",
            "oedacli> LIST ACTIONS",
            &fixed,
            "oedacli> DEPLOY ACTIONS",
            &format!("Deploying Action ID : 1 {fixed}"),
            &format!("Deploying MIGRATE GUEST (job {chosen}-"),
            "Step MIGRATE_GUEST completed successfully",
            "Done [Elapsed = ",
        ],
    );
    assert_eq!(lab.qemu_hosts("vm1"), vec![chosen.clone()], "exactly one QEMU, on the chosen host");
    assert_eq!(lab.cluster_host("vm1"), chosen, "the job updated the loaded file");
    lab.tcp_echo("192.0.2.67:7").expect("the guest answers on the chosen host");

    // A single step still needs TGTHOST: one line, naming the step.
    let o = run_script(
        &lab,
        "step.oeda",
        "LOAD FILE NAME=cluster.toml\nMIGRATE GUEST HOSTNAME=vm1 MODE=offline SRCHOST=host1 WHERE STEPNAME=STOP_GUEST\n",
        false,
    );
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "vmove: line 2: STEPNAME=STOP_GUEST: a single step needs TGTHOST= (the planner chooses the target only for a whole migration)"
    );
}
