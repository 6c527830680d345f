use super::*;

const SAMPLE: &str = r#"
[cluster]
name = "lab"
[tls]
ca = "pki/ca.pem"
cert = "pki/operator.pem"
key = "pki/operator.key"
[[hosts]]
name = "host2"
address = "198.51.100.3:7450"
accel = "tcg"
[[hosts]]
name = "host1"
address = "198.51.100.2:7450"
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
boot = { kind = "lab", dirty_mb_s = 5 }
nics = [{ network = "lab-net", mac = "52:54:00:00:00:01", ip = "192.0.2.10/24" }]
"#;

#[test]
fn load_save_roundtrip_is_stable() {
    let c = Cluster::parse(SAMPLE, Path::new("/x/cluster.toml")).unwrap();
    assert_eq!(c.hosts[0].accel, "tcg");
    assert_eq!(c.hosts[1].accel, "auto");
    assert_eq!(c.policy.live_timeout_s, 600);
    let text = c.to_toml();
    let c2 = Cluster::parse(&text, Path::new("/x/cluster.toml")).unwrap();
    assert_eq!(c2.to_toml(), text);
    assert!(text.find("host1").unwrap() < text.find("host2").unwrap());
    assert_eq!(c.resolve(Path::new("shared")), PathBuf::from("/x/shared"));
}

#[test]
fn policy_converge_defaults_to_auto_and_parses() {
    let c = Cluster::parse(SAMPLE, Path::new("c.toml")).unwrap();
    assert_eq!(c.policy.converge, Converge::Auto);
    assert!(!c.policy.allow_postcopy);
    let with = SAMPLE.replace("[tls]", "[policy]\nconverge = \"throttle\"\nallow_postcopy = true\n[tls]");
    let c = Cluster::parse(&with, Path::new("c.toml")).unwrap();
    assert_eq!(c.policy.converge, Converge::Throttle);
    assert!(c.policy.allow_postcopy);
    let text = c.to_toml();
    assert!(text.contains("converge = \"throttle\""), "{text}");
    let bad = SAMPLE.replace("[tls]", "[policy]\nconverge = \"fast\"\n[tls]");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("converge") || e.contains("fast"), "{e}");
}

#[test]
fn parse_error_names_the_line() {
    let bad = SAMPLE.replace("vcpus = 1", "vcpus = \"one\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.starts_with("c.toml: line "), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn dangling_references_are_invalid() {
    let bad = SAMPLE.replace("host = \"host1\"", "host = \"host9\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert_eq!(e, "c.toml: line 23: guests[vm1].host: no host named \"host9\"");
    let bad = SAMPLE.replace("network = \"lab-net\"", "network = \"nope\"");
    assert!(Cluster::parse(&bad, Path::new("c.toml")).is_err());
}

#[test]
fn validation_errors_name_the_line() {
    let bad = SAMPLE.replace("name = \"host1\"", "name = \"host2\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert_eq!(e, "c.toml: line 13: hosts.name: \"host2\" appears twice");
    let bad = SAMPLE.replace("accel = \"tcg\"", "accel = \"warp\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert_eq!(e, "c.toml: line 11: hosts[host2].accel: \"warp\" is not kvm, tcg or auto");
}

/// Found by the fuzzer (fuzz/corpus/cluster_file/crash-newline-in-name.toml): a name
/// with a `\n` escape put a newline in the validation error.
#[test]
fn validation_errors_stay_on_one_line() {
    let bad = SAMPLE.replace("name = \"vm1\"\nhost = \"host1\"", "name = \"v\\nm\\r1\\u0000\"\nhost = \"host9\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert_eq!(e, "c.toml: guests[v\\nm\\r1\\u{0}].host: no host named \"host9\"");
}

#[test]
fn group_roundtrips_and_is_validated() {
    let with = SAMPLE.replace("memory_mib = 512\n", "memory_mib = 512\ngroup = \"db\"\n");
    let c = Cluster::parse(&with, Path::new("c.toml")).unwrap();
    assert_eq!(c.guests[0].group.as_deref(), Some("db"));
    let text = c.to_toml();
    assert!(text.contains("group = \"db\"\n"), "{text}");
    let c2 = Cluster::parse(&text, Path::new("c.toml")).unwrap();
    assert_eq!(c2.guests, c.guests);
    assert_eq!(c2.to_toml(), text);
    let without = Cluster::parse(SAMPLE, Path::new("c.toml")).unwrap();
    assert_eq!(without.guests[0].group, None);
    assert!(!without.to_toml().contains("group"));
    let bad = with.replace("group = \"db\"", "group = \"../db\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert_eq!(
        e,
        "c.toml: line 26: guests[vm1].group: \"../db\" is not a valid name (1 to 64 letters, digits, '-', '_', '.')"
    );
    let bad = with.replace("group = \"db\"", "group = \"\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.starts_with("c.toml: line 26: guests[vm1].group: \"\" is not a valid name"), "{e}");
    let bad = with.replace("group = \"db\"", "groups = \"db\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.starts_with("c.toml: line ") && e.contains("unknown field `groups`"), "{e}");
}

#[test]
fn the_store_section_roundtrips_and_is_checked() {
    let plain = Cluster::parse(SAMPLE, Path::new("c.toml")).unwrap();
    assert!(plain.store.is_file());
    assert!(!plain.to_toml().contains("[store]"), "a file store says nothing");
    let with = SAMPLE.replace(
        "[[hosts]]\nname = \"host2\"",
        "[store]\nkind = \"etcd\"\nendpoints = [\"https://198.51.100.14:2379\"]\n[[hosts]]\nname = \"host2\"",
    );
    let c = Cluster::parse(&with, Path::new("c.toml")).unwrap();
    assert_eq!(c.store.kind, crate::StoreKind::Etcd);
    assert_eq!(c.store.namespace_for(&c.cluster.name), "/vmove/lab/");
    let again = Cluster::parse(&c.to_toml(), Path::new("c.toml")).unwrap();
    assert_eq!(again.store, c.store);
    let bad = with.replace("https://198.51.100.14:2379", "198.51.100.14:2379");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("store.endpoints: \"198.51.100.14:2379\" is not https://HOST:PORT"), "{e}");
    let bad = SAMPLE.replace("[cluster]", "[policy]\nlease_ttl_s = 1\n[cluster]");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("policy.lease_ttl_s: 1 is not within 2..=600 seconds"), "{e}");
}

#[test]
fn pools_are_shared_unless_local() {
    let text = SAMPLE.replace(
        "[[pools]]\nname = \"shared\"\npath = \"shared\"\n",
        "[[pools]]\nname = \"shared\"\npath = \"shared\"\n[[pools]]\nname = \"local\"\npath = \"/var/lib/vmove/local\"\nkind = \"local\"\n",
    );
    let c = Cluster::parse(&text, Path::new("c.toml")).unwrap();
    assert_eq!(c.pool("shared").map(|p| p.kind), Some(PoolKind::Shared));
    assert_eq!(c.pool("local").map(|p| p.kind), Some(PoolKind::Local));
    assert!(c.pool("local").unwrap().is_local());
    let out = c.to_toml();
    assert_eq!(out.matches("kind = \"local\"").count(), 1, "{out}");
    assert!(!out.contains("kind = \"shared\""), "the default is not written: {out}");
    let again = Cluster::parse(&out, Path::new("c.toml")).unwrap();
    assert_eq!(again.pool("local"), c.pool("local"));
    assert_eq!(again.pool("shared"), c.pool("shared"));
    let bad = text.replace("kind = \"local\"", "kind = \"nfs\"");
    let e = Cluster::parse(&bad, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("unknown variant `nfs`"), "{e}");
}

#[test]
fn natural_order() {
    assert!(natural_key("host9") < natural_key("host10"));
}
