//! Issue "Foundation": a 3-host lab comes up with mTLS agents, a lab-image guest on host1
//! answers TCP and UDP echo from the client namespace and verifies its memory, and
//! `lab down` leaves nothing behind.
mod common;

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
