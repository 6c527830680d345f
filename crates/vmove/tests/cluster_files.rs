//! 100 malformed cluster files: each gets a clear one-line error naming the file (and the
//! line or field), a non-zero exit, and never a panic.
use std::process::Command;

const GOOD: &str = r#"[cluster]
name = "c"

[tls]
ca = "pki/ca.pem"
cert = "pki/operator.pem"
key = "pki/operator.key"

[policy]
live_timeout_s = 600

[[hosts]]
name = "host1"
address = "198.51.100.2:7450"
accel = "tcg"

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
nics = [{ network = "lab-net", mac = "52:54:00:00:00:01" }]
disks = [{ pool = "shared", volume = "vm1.img" }]
"#;

fn mutations() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let swaps: &[(&str, &str)] = &[
        ("name = \"c\"", "name = 5"),
        ("vcpus = 1", "vcpus = \"one\""),
        ("vcpus = 1", "vcpus = -1"),
        ("vcpus = 1", "vcpus = 0"),
        ("memory_mib = 512", "memory_mib = 0"),
        ("memory_mib = 512", "memory_mib = 5.5"),
        ("host = \"host1\"", "host = \"host9\""),
        ("network = \"lab-net\"", "network = \"nope\""),
        ("pool = \"shared\"", "pool = \"nope\""),
        ("address = \"198.51.100.2:7450\"", "address = \"not an address\""),
        ("address = \"198.51.100.2:7450\"", "address = \"198.51.100.2\""),
        ("accel = \"tcg\"", "accel = \"warp\""),
        ("kind = \"lab\"", "kind = \"floppy\""),
        ("boot = { kind = \"lab\" }", ""),
        ("name = \"host2\"", "name = \"host1\""),
        ("name = \"vm1\"", "nam = \"vm1\""),
        ("[tls]", "[tlz]"),
        ("[[hosts]]", "[hosts]"),
        ("live_timeout_s = 600", "live_timeout_s = \"ten minutes\""),
        ("live_timeout_s = 600", "live_timeot_s = 600"),
        ("ca = \"pki/ca.pem\"", ""),
        ("[cluster]", ""),
        ("mac = \"52:54:00:00:00:01\"", "mac = 1"),
        ("bridge = \"lab-net\"", "bridge = [1, 2]"),
        ("path = \"shared\"", "path = {}"),
        ("volume = \"vm1.img\"", "volume = false"),
        ("volume = \"vm1.img\"", "size = 3"),
        ("name = \"shared\"", "name = [\"shared\"]"),
        ("name = \"lab-net\"", "name = 1.5"),
        ("name = \"host1\"", "name = true"),
        ("key = \"pki/operator.key\"", "key = 7"),
        ("cert = \"pki/operator.pem\"", "cert = []"),
        ("[[pools]]", "[[poolz]]"),
        ("[[networks]]", "[networks]"),
        ("[[guests]]", "[[guest]]"),
        ("[policy]", "[policy]\nvcpu_overcommit_ratio = \"four\""),
        ("[policy]", "[policy]\nallow_postcopy = \"maybe\""),
        ("[policy]", "[policy]\nmax_downtime_ms = -300"),
        ("memory_mib = 512", "memory_mib = 512\nmemory_mib = 1024"),
        ("vcpus = 1", "vcpus = 1\ncolor = \"blue\""),
    ];
    for (a, b) in swaps {
        v.push(GOOD.replacen(a, b, 1));
    }
    // a guest twice, a MAC twice, a network twice
    v.push(format!("{GOOD}\n[[guests]]\nname = \"vm1\"\nhost = \"host2\"\nvcpus = 1\nmemory_mib = 512\nboot = {{ kind = \"lab\" }}\n"));
    v.push(format!(
        "{GOOD}\n[[guests]]\nname = \"vm2\"\nhost = \"host2\"\nvcpus = 1\nmemory_mib = 512\nboot = {{ kind = \"lab\" }}\nnics = [{{ network = \"lab-net\", mac = \"52:54:00:00:00:01\" }}]\n"
    ));
    v.push(format!("{GOOD}\n[[networks]]\nname = \"lab-net\"\nbridge = \"x\"\n"));
    // syntax damage
    for cut in [1usize, 7, 20, 33, 60, 97, 150, 222, 301, 400, 480, 560, 620] {
        let t: String = GOOD.chars().take(cut).collect();
        v.push(format!("{t}\n[[[\n"));
    }
    for junk in ["=", "[", "]]", "\"", "x = ", "= 3", "[[guests", "a.b.c = {", "\u{0}", "ü = 1"] {
        v.push(format!("{GOOD}\n{junk}\n"));
        v.push(format!("{junk}\n{GOOD}"));
    }
    v.push(String::new());
    v.push("\u{feff}\u{0}\u{1}binary".into());
    v.push("[cluster]\nname = \"c\"\n".into());
    // lines dropped one at a time (those that make it invalid)
    let lines: Vec<&str> = GOOD.lines().collect();
    for i in 0..lines.len() {
        let mut l = lines.clone();
        l.remove(i);
        let t = l.join("\n");
        if vmove_model::Cluster::parse(&t, std::path::Path::new("x.toml")).is_err() {
            v.push(t);
        }
    }
    v
}

#[test]
fn a_hundred_malformed_cluster_files_each_get_a_clear_error() {
    assert!(vmove_model::Cluster::parse(GOOD, std::path::Path::new("x.toml")).is_ok(), "the base file is valid");
    let cases = mutations();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in cases.iter().take(100).enumerate() {
        let f = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&f, text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_vmove")).arg("--cluster").arg(&f).args(["host", "list"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "case {i}: exit {:?}, stderr {err}\n---\n{text}", o.status.code());
        assert_eq!(err.trim().lines().count(), 1, "case {i}: one line: {err}");
        assert!(err.starts_with(&format!("vmove: {}: ", f.display())), "case {i}: names the file: {err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
}
