//! Capability parsing against the real replies of QEMU 7.2.22 and 10.0.2 (Debian's
//! packages, `-machine none`: query-version, query-migrate-capabilities,
//! query-migrate-parameters, one reply per line).
use super::*;

fn replies(text: &str) -> QemuFeatures {
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["return"].clone())
        .collect();
    let version: VersionInfo = serde_json::from_value(lines[0].clone()).expect("version");
    let caps: Vec<MigrationCapabilityStatus> = serde_json::from_value(lines[1].clone()).expect("caps");
    features_from(&version, &caps, &lines[2])
}

fn qemu72() -> QemuFeatures {
    replies(include_str!("testdata/qemu-7.2.22-replies.jsonl"))
}

fn qemu10() -> QemuFeatures {
    replies(include_str!("testdata/qemu-10.0.2-replies.jsonl"))
}

#[test]
fn qemu_7_2_features() {
    let f = qemu72();
    assert_eq!(f.version, "7.2.22");
    assert_eq!(f.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
    assert_eq!(f.migration_capabilities.len(), 21);
    for c in ["events", "multifd", "postcopy-ram", "postcopy-preempt", "return-path", "auto-converge", "pause-before-switchover"] {
        assert!(f.has_capability(c), "7.2 has {c}");
    }
    for c in ["switchover-ack", "dirty-limit", "mapped-ram"] {
        assert!(!f.has_capability(c), "7.2 lacks {c}");
    }
    assert!(f.has_parameter("tls-creds"));
    assert!(f.has_parameter("downtime-limit"));
    assert!(!f.has_parameter("vcpu-dirty-limit"));
    assert!(f.migration_parameters.contains(&("downtime-limit".into(), "300".into())));
    assert!(f.migration_parameters.contains(&("max-bandwidth".into(), "134217728".into())));
    assert!(check_minimum(&f).is_ok());
}

#[test]
fn qemu_10_0_features() {
    let f = qemu10();
    assert_eq!(f.version, "10.0.2");
    for c in ["events", "multifd", "postcopy-ram", "postcopy-preempt", "return-path", "switchover-ack", "dirty-limit", "mapped-ram"] {
        assert!(f.has_capability(c), "10.0 has {c}");
    }
    // Removed upstream after 7.2.
    assert!(!f.has_capability("compress") && !f.has_capability("block"));
    assert!(f.has_parameter("vcpu-dirty-limit"));
    assert!(f.has_parameter("tls-creds"));
    let mut sorted = f.migration_capabilities.clone();
    sorted.sort();
    assert_eq!(sorted, f.migration_capabilities, "sorted for stable output");
    assert!(check_minimum(&f).is_ok());
}

#[test]
fn below_the_floor_is_refused_with_a_reason() {
    let mut f = qemu72();
    f.version = "7.1.0".into();
    let e = check_minimum(&f).expect_err("7.1 refused").to_string();
    assert_eq!(e, "QEMU 7.1.0 is too old: vmove needs QEMU 7.2 or newer (migration capabilities and TLS it relies on)");
    f.version = "6.2.0".into();
    assert!(check_minimum(&f).is_err());
    f.version = "8.0.0".into();
    assert!(check_minimum(&f).is_ok());
}

#[tokio::test]
async fn probe_real_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = probe("qemu-system-x86_64", dir.path()).await.expect("probe");
    assert!(f.has_capability("events"), "{f:?}");
    assert!(check_minimum(&f).is_ok(), "{f:?}");
    // QEMU 10.0 refuses post-copy together with multifd.
    assert!(!f.postcopy_with_multifd, "{f:?}");
}

#[tokio::test]
async fn probe_of_a_missing_binary_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = probe("/nonexistent/qemu", dir.path()).await.expect_err("no binary");
    assert!(format!("{e:#}").contains("start /nonexistent/qemu"), "{e:#}");
}

#[test]
fn commands_kept_are_those_vmove_may_do_without() {
    // QEMU 10.0 has block-job-change (since 8.2); 7.2 does not.
    let q10 = serde_json::json!([{"name": "blockdev-mirror"}, {"name": "block-job-change"}, {"name": "query-commands"}]);
    assert_eq!(commands_from(&q10), vec!["block-job-change".to_string()]);
    let q72 = serde_json::json!([{"name": "blockdev-mirror"}, {"name": "query-commands"}]);
    let f = QemuFeatures { qmp_commands: Some(commands_from(&q72)), ..qemu72() };
    assert_eq!(f.has_command("block-job-change"), Some(false));
    assert_eq!(qemu72().has_command("block-job-change"), None, "not asked: unknown");
    assert!(commands_from(&serde_json::json!({"unexpected": 1})).is_empty());
}
