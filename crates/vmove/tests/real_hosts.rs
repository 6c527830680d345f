//! Issue "Real hosts": the path a real cluster takes, on loopback addresses instead of two
//! machines. `vmove cluster init` and `vmove host add` make the cluster and the host's
//! bundle, `vmoved --config <bundle>/agent.toml` serves from it (mutual TLS with the
//! bundle's certificates), its Prometheus metrics pass `promtool check metrics`, a
//! restarted agent counts its start, and `vmove host remove` takes the host out.
//!
//! `packaged_vmoved_refuses_test_hooks` checks the binaries of the Debian package (built
//! without the `fault-injection` feature): `bash scripts/package --check` runs it.
mod common;

use std::path::{Path, PathBuf};

use common::loopback::{promtool_check, sample, LoopbackAgent};
use common::vmove_bin;

fn allow_hooks(text: String) -> String {
    text.replace("allow_fault_injection = false", "allow_fault_injection = true")
}

#[test]
fn cluster_init_host_add_and_an_agent_from_the_bundle() {
    let vmoved = PathBuf::from(env!("CARGO_BIN_EXE_vmoved"));
    let mut a = LoopbackAgent::new(Path::new(vmove_bin()), &vmoved, 1, allow_hooks);
    for f in ["agent.toml", "ca.pem", "host.pem", "host.key"] {
        assert!(a.bundle.join(f).exists(), "{f} in the bundle");
    }
    assert!(!a.bundle.join("ca.key").exists(), "the CA key stays with the operator");
    a.start();
    let hosts: serde_json::Value = serde_json::from_str(&a.ok(&["--json", "host", "list"])).unwrap();
    assert_eq!(hosts[0]["name"], "kvm1");
    assert_eq!(hosts[0]["info"]["accel"], "tcg");

    let (status, headers, body) = a.get("/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(headers.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{headers}");
    promtool_check(&body);
    assert_eq!(sample(&body, "vmove_agent_starts_total"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "vmove_qemu_processes"), Some(0.0));
    assert_eq!(sample(&body, "vmove_jobs_in_flight"), Some(0.0));
    assert_eq!(sample(&body, "vmove_migrations_total{mode=\"live\",outcome=\"succeeded\"}"), Some(0.0));
    assert!(body.contains("vmove_agent_info{version=\"") && body.contains("host=\"kvm1\",accel=\"tcg\""), "{body}");
    assert!(a.get("/nothing").0.contains(" 404 "));

    // A test build honours hooks where the configuration allows them: the job is unknown.
    let o = a.vmove(&["job", "resume", "kvm1-99"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no job kvm1-99"), "{err}");

    // A restarted agent counts its start (kept in its state).
    a.kill();
    a.start();
    assert_eq!(sample(&a.get("/metrics").2, "vmove_agent_starts_total"), Some(2.0));

    a.kill();
    let out = a.ok(&["host", "remove", "kvm1"]);
    assert!(out.contains("host kvm1") && out.contains("removed"), "{out}");
    assert!(!a.bundle.exists(), "the bundle (with the host's key) is gone");
    let c = vmove_model::Cluster::load(&a.cluster).unwrap();
    assert!(c.hosts.is_empty());
}

#[test]
fn host_add_refuses_what_would_break_the_cluster() {
    let vmoved = PathBuf::from(env!("CARGO_BIN_EXE_vmoved"));
    let a = LoopbackAgent::new(Path::new(vmove_bin()), &vmoved, 2, |t| t);
    let fails = |args: &[&str]| {
        let o = a.vmove(args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    let e = fails(&["host", "add", "kvm1", "--address", "10.9.9.9"]);
    assert!(e.contains("has a host named kvm1 already") && e.contains("--reissue"), "{e}");
    let e = fails(&["host", "add", "kvm2", "--address", &a.address.to_string()]);
    assert!(e.contains("address of kvm1"), "{e}");
    let e = fails(&["host", "add", "kvm2", "--address", "10.9.9.9", "--accel", "warp"]);
    assert!(e.contains("accel \"warp\""), "{e}");
    let e = fails(&["cluster", "init", "--dir", &a.cluster.parent().unwrap().display().to_string()]);
    assert!(e.contains("holds a cluster already"), "{e}");
    let cluster_dir = a.cluster.parent().unwrap().to_path_buf();
    let e = fails(&["host", "remove", "kvm9"]);
    assert!(e.contains("no host named kvm9"), "{e}");
    // The operator's machine without the CA key issues nothing.
    std::fs::rename(cluster_dir.join("pki/ca.key"), a.dir.path().join("ca.key.away")).unwrap();
    let e = fails(&["host", "add", "kvm2", "--address", "10.9.9.9"]);
    assert!(e.contains("ca.key") && e.contains("cluster init"), "{e}");
}

/// The package's binaries (extracted from the .deb into VMOVE_PACKAGE_ROOT): the agent
/// refuses the test hooks even where its configuration allows them.
#[test]
#[ignore = "needs the Debian package: bash scripts/package --check"]
fn packaged_vmoved_refuses_test_hooks() {
    let root = PathBuf::from(std::env::var("VMOVE_PACKAGE_ROOT").expect("VMOVE_PACKAGE_ROOT: the extracted package"));
    let bin = root.join("usr/bin");
    let mut a = LoopbackAgent::new(&bin.join("vmove"), &bin.join("vmoved"), 3, allow_hooks);
    a.start();
    let o = a.vmove(&["job", "resume", "kvm1-1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("test hooks (pause, fault injection) are disabled on kvm1"), "{err}");
    promtool_check(&a.get("/metrics").2);
}
