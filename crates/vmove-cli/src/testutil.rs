//! A cluster file for unit tests: two hosts, `lab-net`, `shared`, `vm1` on host1.
use std::path::Path;

use vmove_model::Cluster;

/// The text; its TLS key is absolute (for the tests of saving elsewhere).
pub const SAMPLE: &str = r#"
[cluster]
name = "lab"
[tls]
ca = "pki/ca.pem"
cert = "pki/operator.pem"
key = "/etc/vmove/operator.key"
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
path = "/var/tmp/shared"
[[guests]]
name = "vm1"
host = "host1"
vcpus = 1
memory_mib = 512
boot = { kind = "lab" }
"#;

/// [`SAMPLE`], as loaded from `/lab/cluster.toml`.
pub fn cluster() -> Cluster {
    Cluster::parse(SAMPLE, Path::new("/lab/cluster.toml")).unwrap_or_else(|e| panic!("{e}"))
}
