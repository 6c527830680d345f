//! Issue "Cluster file and prechecks": `migrate --precheck` and PRECHECK_LIVEMIGRATION
//! against real agents, for a pass and for each kind of failure.
mod common;

use std::time::Duration;

use common::*;
use vmove_api::{AgentClient, Request};

#[test]
fn prechecks_pass_fail_and_warn_against_real_agents() {
    let lab = Lab::up("pre", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.21", 0, false);

    // The file and the agents agree.
    assert!(lab.ok(&["cluster", "check"]).contains("matches the agents"));
    // A precheck that passes changes nothing and exits 0.
    let f = lab.json(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--precheck"]);
    assert_eq!(f["passed"], true, "{f}");
    assert_eq!(verdict(&f, "target-memory"), "pass");
    assert_eq!(lab.cluster_host("vm1"), "host1");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()], "nothing moved");
    let live = lab.json(&["migrate", "vm1", "--to", "host2", "--step", "PRECHECK_LIVEMIGRATION"]);
    assert_eq!(live["passed"], true, "{live}");
    assert_eq!(verdict(&live, "guest-running"), "pass");
    assert_eq!(verdict(&live, "encrypted-channel"), "pass");
    // The link and the dirty rate were measured: convergence is predicted, not guessed.
    let conv = reason(&live, "predicted-convergence");
    assert!(!conv.contains("not measured"), "{conv}");
    // An idle guest: pre-copy at the first downtime limit, within the timeout.
    assert!(conv.starts_with("about ") && conv.contains("downtime about") && conv.contains("within the timeout"), "{conv}");
    let text = lab.ok(&["migrate", "vm1", "--to", "host2", "--precheck"]);
    let line = text.lines().find(|l| l.starts_with("link host1 -> host2: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with(" s ago)"), "a recent measurement is reused: {line}");
    let mbs: f64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(mbs > 10.0, "{line}");

    // vCPUs past the target's physical count: a warning, not a failure.
    lab.ok(&["guest", "create", "wide", "--host", "host1", "--vcpus", "3", "--memory", "256M"]);
    let f = lab.json(&["migrate", "wide", "--to", "host2", "--mode", "offline", "--precheck"]);
    assert_eq!(f["passed"], true, "{f}");
    assert_eq!(verdict(&f, "vcpu-overcommit"), "warn");

    // A live precheck of a stopped guest fails.
    let f = lab.json_fail(&["migrate", "wide", "--to", "host2", "--step", "PRECHECK_LIVEMIGRATION"]);
    assert_eq!(verdict(&f, "guest-running"), "fail", "{f}");

    // Memory: the target has less free memory than the guest needs.
    lab.ok(&["guest", "create", "filler", "--host", "host2", "--memory", "5600M"]);
    let f = lab.json_fail(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--precheck"]);
    assert_eq!(verdict(&f, "target-memory"), "fail", "{f}");
    lab.ok(&["guest", "destroy", "filler"]);

    // The guest's name is already used on the target (defined there behind the file's back).
    let pki = lab.dir.join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let op = vmove_api::pki::CertPair::read(&pki, "operator").unwrap();
    let c = vmove_model::Cluster::load(&lab.cluster).unwrap();
    let h2 = c.host("host2").unwrap().address.parse().unwrap();
    let client = AgentClient::new(h2, "host2", vmove_api::tls::client_config(&ca, &op).unwrap());
    let mut dup = c.guest("wide").unwrap().clone();
    dup.name = "vm1".into();
    dup.nics.clear();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(client.call::<serde_json::Value>(&Request::GuestDefine { spec: dup })).unwrap();
    let f = lab.json_fail(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--precheck"]);
    assert_eq!(verdict(&f, "guest-name-free-on-target"), "fail", "{f}");
    // ...which is drift, and `cluster check` says where.
    let d = lab.json_fail(&["cluster", "check"]);
    let drift = d["drift"].as_array().unwrap();
    assert!(drift.iter().any(|x| x["kind"] == "duplicate" && x["guest"] == "vm1"), "{d}");
    rt.block_on(client.call::<serde_json::Value>(&Request::GuestUndefine { name: "vm1".into() })).unwrap();

    // A missing bridge on the target.
    let ns = lab.host_ns("host2");
    let st = std::process::Command::new("ip").args(["netns", "exec", &ns, "ip", "link", "del", "lab-net"]).status().unwrap();
    assert!(st.success());
    let f = lab.json_fail(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--precheck"]);
    assert_eq!(verdict(&f, "networks-on-target"), "fail", "{f}");
    // ...and a whole migration stops on it, changing nothing.
    let e = lab.fails(&["migrate", "vm1", "--to", "host2", "--mode", "offline"]);
    assert!(e.contains("precheck failed") && e.contains("networks-on-target"), "{e}");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()]);
    lab.tcp_echo("192.0.2.21:7").expect("guest untouched");
    let _ = Duration::from_secs(0);
}

fn reason(f: &serde_json::Value, id: &str) -> String {
    f["findings"].as_array().unwrap().iter().find(|x| x["id"] == id).map(|x| x["reason"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}
