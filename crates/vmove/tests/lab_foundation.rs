//! Issue "Foundation": a 3-host lab comes up with mTLS agents, a lab-image guest on host1
//! answers TCP and UDP echo from the client namespace and verifies its memory, and
//! `lab down` leaves nothing behind.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn lab_up_three_hosts_guest_echo_and_clean_teardown() {
    let mut lab = Lab::up("found", 3);
    let root_link = {
        let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lab.dir.join("lab.json")).unwrap()).unwrap();
        info["root_link"].as_str().unwrap().to_string()
    };

    let hosts = lab.json(&["host", "list"]);
    let hosts = hosts.as_array().expect("array");
    assert_eq!(hosts.len(), 3);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["name"], format!("host{}", i + 1));
        assert_eq!(h["reachable"], true, "{h}");
        assert!(h["info"]["bridges"].as_array().unwrap().iter().any(|b| b["name"] == "lab-net"), "lab-net bridge on {h}");
    }

    lab.ok(&["guest", "create", "vm1", "--host", "host1", "--nic", "lab-net,ip=192.0.2.10/24", "--dirty-rate", "5", "--start"]);
    lab.wait_tcp_echo("192.0.2.10:7", Duration::from_secs(120));
    lab.udp_echo("192.0.2.10:7").expect("UDP echo");
    let log = lab.wait_log("vm1", "VERIFY OK", Duration::from_secs(60), |l| l.contains("VERIFY OK"));
    assert!(!log.contains("VERIFY FAIL"), "{log}");
    assert!(log.contains("VMOVE READY vm1"));

    let (name, dir) = (lab.name.clone(), lab.dir.clone());
    lab.down();
    assert_nothing_left(&name, &dir);
    assert!(!std::path::Path::new("/sys/class/net").join(&root_link).exists(), "root link {root_link} left");
    // idempotent, also when nothing is there any more
    let o = std::process::Command::new(vmove_bin()).args(["lab", "down", "--dir"]).arg(&dir).output().unwrap();
    assert!(o.status.success(), "second lab down: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn lab_down_cleans_up_a_half_made_lab() {
    // A crash during `lab up` leaves namespaces and no lab.json: down still removes them.
    let name = format!("vt-half-{}", std::process::id());
    let dir = std::path::PathBuf::from("/var/tmp").join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    for ns in ["switch", "host1", "client"] {
        vmove_host::netns::create(&format!("{name}-{ns}")).unwrap();
    }
    assert_eq!(vmove_host::netns::list(&name).len(), 3);
    let o = std::process::Command::new(vmove_bin()).args(["lab", "down", "--dir"]).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_nothing_left(&name, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lab_up_on_an_old_lab_directory_starts_clean() {
    // A lab whose agents held a guest and a volume lease, left behind as if the machine had
    // crashed (files still there, namespaces gone): the next `lab up` inherits none of it.
    let mut lab = Lab::up("old", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.15", 0, true);
    let keep = lab.dir.with_extension("keep");
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(&keep).unwrap();
    for item in ["hosts", "shared"] {
        assert!(Command::new("cp").arg("-a").arg(lab.dir.join(item)).arg(&keep).status().unwrap().success());
    }
    lab.down();
    assert_nothing_left(&lab.name, &lab.dir);
    std::fs::create_dir_all(&lab.dir).unwrap();
    for item in ["hosts", "shared"] {
        assert!(Command::new("cp").arg("-a").arg(keep.join(item)).arg(&lab.dir).status().unwrap().success());
    }
    let _ = std::fs::remove_dir_all(&keep);
    assert!(lab.dir.join("shared/vm1-data.img").exists());

    let out = Command::new(vmove_bin()).args(["lab", "up", "--hosts", "2", "--dir"]).arg(&lab.dir).output().unwrap();
    let mut lab = lab.reopened();
    assert!(out.status.success(), "lab up on the old directory: {}", String::from_utf8_lossy(&out.stderr));
    for h in ["host1", "host2"] {
        let g = lab.json(&["guest", "list", "--host", h]);
        assert!(g.as_array().unwrap().is_empty(), "{h} inherited guests: {g}");
    }
    assert!(!lab.dir.join("shared/vm1-data.img").exists(), "the old volume is gone");
    // The same guest and volume, now on host2: no lease from the old lab stands in the way.
    lab.boot_guest("vm1", "host2", "192.0.2.15", 0, true);
    lab.down();
}

#[test]
fn the_demo_runs_twice_in_a_row() {
    let dir = std::path::PathBuf::from("/var/tmp").join(format!("vt-demo-{}", std::process::id()));
    struct Down(std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(vmove_bin()).args(["lab", "down", "--dir"]).arg(&self.0).output();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _guard = Down(dir.clone());
    for run in 1..=2 {
        let o = Command::new(vmove_bin()).args(["lab", "demo", "--dir"]).arg(&dir).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "demo run {run} failed: {}\n{out}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("the connection survived"), "run {run}: {out}");
        assert!(out.contains("VERIFY OK"), "run {run}: {out}");
        assert!(!dir.join("hosts").exists() && !dir.join("shared").exists(), "run {run} left its lab behind");
    }
}
