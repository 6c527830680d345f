//! The lab's etcd members as the tests see them: their URLs and namespaces (from
//! `lab.json`), `etcdctl` with the operator's certificate, the leader, killing a member
//! and starting it again.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{wait_for, Lab};

/// The lab's etcd members: (client URL, namespace), as `lab up` recorded them.
pub fn members(lab: &Lab) -> Vec<(String, String)> {
    let info: Value = serde_json::from_str(&std::fs::read_to_string(lab.dir.join("lab.json")).unwrap()).unwrap();
    let strs = |k: &str| -> Vec<String> { info[k].as_array().unwrap().iter().filter_map(|u| u.as_str().map(String::from)).collect() };
    strs("etcd_endpoints").into_iter().zip(strs("etcd_namespaces")).collect()
}

/// The members' IP addresses.
pub fn ips(lab: &Lab) -> Vec<String> {
    members(lab).into_iter().filter_map(|(u, _)| u.strip_prefix("https://")?.split(':').next().map(String::from)).collect()
}

/// `etcdctl` with the operator's certificate against every member.
pub fn etcdctl(lab: &Lab, args: &[&str]) -> Option<Vec<u8>> {
    let urls: Vec<String> = members(lab).into_iter().map(|(u, _)| u).collect();
    let pki = lab.dir.join("pki");
    let o = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", urls.join(",")))
        .arg(format!("--cacert={}", pki.join("ca.pem").display()))
        .arg(format!("--cert={}", pki.join("operator.pem").display()))
        .arg(format!("--key={}", pki.join("operator.key").display()))
        .arg("--command-timeout=3s")
        .args(args)
        .output()
        .ok()?;
    o.status.success().then_some(o.stdout)
}

/// `etcdctl endpoint status` of every member: (endpoint, the member's leader, its own ID)
/// of those that answered.
pub fn status(lab: &Lab) -> Vec<(String, u64, u64)> {
    let out = etcdctl(lab, &["endpoint", "status", "-w", "json"]).unwrap_or_default();
    let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let st = &m["Status"];
            Some((m["Endpoint"].as_str()?.to_string(), st["leader"].as_u64().unwrap_or(0), st["header"]["member_id"].as_u64()?))
        })
        .collect()
}

/// The client URL of the etcd member that leads.
pub fn leader(lab: &Lab) -> String {
    wait_for("an etcd leader", Duration::from_secs(30), || status(lab).into_iter().find_map(|(url, leader, me)| (leader == me).then_some(url)))
}

/// The processes in a namespace.
fn pids_in(ns: &str) -> Vec<u32> {
    let o = Command::new("ip").args(["netns", "pids", ns]).output().expect("ip netns pids");
    String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// A member killed by [`kill_leader`]: what it takes to start it again.
pub struct Killed {
    pub url: String,
    ns: String,
    argv: Vec<String>,
}

/// Kills (-9) the member that leads; returns how to start it again.
pub fn kill_leader(lab: &Lab) -> Killed {
    let url = leader(lab);
    let (_, ns) = members(lab).into_iter().find(|(u, _)| *u == url).expect("the leader is a lab member");
    let pids = pids_in(&ns);
    let argv = pids
        .iter()
        .map(|p| vmove_host::proc::cmdline(*p))
        .find(|a| a.first().is_some_and(|b| b.ends_with("etcd")))
        .unwrap_or_else(|| panic!("no etcd in {ns}"));
    pids.into_iter().for_each(vmove_host::proc::kill9);
    Killed { url, ns, argv }
}

impl Killed {
    /// Starts the member again in its namespace, on its data directory (it rejoins the
    /// cluster), its log appended to where `lab up` put it; waits until it answers.
    pub fn restart(self, lab: &Lab) {
        let name = self.argv.iter().find_map(|a| a.strip_prefix("--name=")).unwrap_or("etcd").to_string();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(lab.dir.join("etcd").join(format!("{name}.log"))).expect("etcd log");
        // `setsid -f`: the member runs on in its own session; `ip` returns at once.
        let st = Command::new("ip")
            .args(["netns", "exec", &self.ns, "setsid", "-f"])
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .expect("start etcd again");
        assert!(st.success(), "etcd did not start again in {}", self.ns);
        wait_for("the restarted etcd member to answer", Duration::from_secs(60), || {
            status(lab).into_iter().any(|(u, leader, _)| u == self.url && leader != 0).then_some(())
        });
    }
}

/// A volume's lease as kept in etcd (`kv/leases/<pool>/<volume>` under the lab's namespace):
/// the record's data.
pub fn lease(lab: &Lab, pool: &str, volume: &str) -> Option<Value> {
    let key = format!("/vmove/{}/kv/leases/{pool}/{volume}", lab.name);
    let out = etcdctl(lab, &["get", &key, "--print-value-only"])?;
    // A record: a header line (`vmove-store 1 revision=... crc32=...`), then its JSON.
    let text = String::from_utf8(out).ok()?;
    let body = if text.starts_with('{') { text.as_str() } else { text.split_once('\n')?.1 };
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    Some(if v.get("data").is_some() { v["data"].clone() } else { v })
}
