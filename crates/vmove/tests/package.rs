//! The Debian package's make-up (`[package.metadata.deb]` of crates/vmove/Cargo.toml):
//! both binaries, the systemd unit as the design says (restart on failure, guests kept
//! running), a placeholder configuration that is what `vmove host add` writes for the
//! packaged paths, the install guide. Building the package itself: `bash scripts/package
//! --check` (a release build; it also runs the packaged agent).
use std::path::Path;

use vmove_api::bootstrap::{agent_config, AgentLayout, HostOptions};
use vmove_model::{AgentConfig, Cluster};

fn manifest() -> toml::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap()
}

fn deb() -> toml::Value {
    manifest()["package"]["metadata"]["deb"].clone()
}

#[test]
fn the_package_ships_both_binaries_the_unit_the_config_and_the_guide() {
    let d = deb();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let assets: Vec<(String, String, String)> = d["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a[0].as_str().unwrap().into(), a[1].as_str().unwrap().into(), a[2].as_str().unwrap().into()))
        .collect();
    let has = |src: &str, dst: &str, mode: &str| assets.iter().any(|a| a.0 == src && a.1 == dst && a.2 == mode);
    assert!(has("target/release/vmove", "usr/bin/", "755"), "{assets:?}");
    assert!(has("target/release/vmoved", "usr/bin/", "755"), "{assets:?}");
    assert!(has("debian/agent.toml", "etc/vmove/agent.toml", "644"), "{assets:?}");
    assert!(has("../../docs/install.md", "usr/share/doc/vmove/install.md", "644"), "{assets:?}");
    assert!(!assets.iter().any(|a| a.0.contains("vmove-guest")), "the lab workload is not packaged");
    assert!(has("debian/generated/man/*.1", "usr/share/man/man1/", "644"), "{assets:?}");
    assert!(has("debian/generated/vmove.bash", "usr/share/bash-completion/completions/vmove", "644"), "{assets:?}");
    // Made by scripts/package from the release binary; not in the repository.
    for (src, _, _) in assets.iter().filter(|a| !a.0.starts_with("target/") && !a.0.starts_with("debian/generated/")) {
        assert!(dir.join(src).exists(), "asset {src} is missing");
    }
    assert_eq!(d["conf-files"].as_array().unwrap()[0].as_str(), Some("/etc/vmove/agent.toml"));
    let scripts = dir.join(d["maintainer-scripts"].as_str().unwrap());
    let units = &d["systemd-units"];
    assert_eq!(units["unit-name"].as_str(), Some("vmoved"));
    assert!(scripts.join("vmoved.service").exists(), "cargo-deb finds <unit-name>.service there");
    for s in std::fs::read_dir(&scripts).unwrap().flatten() {
        let name = s.file_name().to_string_lossy().into_owned();
        if ["preinst", "postinst", "prerm", "postrm"].contains(&name.as_str()) {
            assert!(std::fs::read_to_string(s.path()).unwrap().contains("#DEBHELPER#"), "{name} lacks #DEBHELPER#");
        }
    }
    let depends = d["depends"].as_str().unwrap();
    assert!(depends.contains("qemu-system-x86") && depends.contains("qemu-utils"), "{depends}");
    // The package's vmoved is built without the test hooks.
    let default = manifest()["features"].get("default").cloned();
    assert!(default.is_none_or(|f| !f.as_array().unwrap().iter().any(|x| x.as_str() == Some("fault-injection"))));
}

#[test]
fn the_unit_restarts_the_agent_and_leaves_the_guests_running() {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/vmoved.service")).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "ExecStart=/usr/bin/vmoved --config /etc/vmove/agent.toml",
        "Restart=on-failure",
        "KillMode=process",
        "RuntimeDirectory=vmove",
        "RuntimeDirectoryPreserve=yes",
        "StateDirectory=vmove",
        "ConditionPathExists=/etc/vmove/host.key",
        "WantedBy=multi-user.target",
    ] {
        assert!(lines.contains(&want), "{want:?} missing from vmoved.service");
    }
    // QEMU goes into a session of its own: with KillMode=process it outlives the agent.
    let qemu = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmove-host/src/qemu.rs")).unwrap();
    assert!(qemu.contains("setsid()"), "QEMU is no longer started in its own session");
}

#[test]
fn the_default_config_is_what_host_add_writes_for_the_packaged_paths() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/agent.toml");
    let packaged = AgentConfig::load(&path).unwrap();
    let empty = Cluster::parse("[cluster]\nname = \"c\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n", Path::new("/c/cluster.toml")).unwrap();
    let o = HostOptions {
        name: packaged.name.clone(),
        address: packaged.listen.parse().unwrap(),
        accel: "kvm".into(),
        layout: AgentLayout::default(),
        metrics_listen: None,
        reissue: false,
    };
    assert_eq!(packaged, agent_config(&empty, &o));
    assert_eq!(packaged.accel, "kvm");
    assert!(!packaged.allow_fault_injection && packaged.metrics_listen.is_none());
}
