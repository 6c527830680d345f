//! The cluster file the registry's tests share.
#![allow(dead_code)]
use std::path::Path;

use vmove_model::Cluster;

pub const FILE: &str = r#"
[cluster]
name = "lab"
[tls]
ca = "pki/ca.pem"
cert = "pki/operator.pem"
key = "pki/operator.key"
[store]
kind = "etcd"
endpoints = ["https://198.51.100.14:2379"]
[[hosts]]
name = "host1"
address = "198.51.100.2:7450"
[[hosts]]
name = "host2"
address = "198.51.100.3:7450"
[[networks]]
name = "lab-net"
bridge = "lab-net"
[[pools]]
name = "shared"
path = "shared"
[[guests]]
name = "vm1"
host = "host1"
vcpus = 1
memory_mib = 512
boot = { kind = "lab" }
nics = [{ network = "lab-net", mac = "52:54:00:00:00:01", ip = "192.0.2.10/24" }]
"#;

/// [`FILE`], parsed.
pub fn file() -> Cluster {
    Cluster::parse(FILE, Path::new("/lab/cluster.toml")).unwrap()
}
