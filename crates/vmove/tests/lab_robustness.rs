//! Issue "Faults and recovery", the rest: concurrent migrations of one guest are refused,
//! a migration to a host that is migrating the guest away is refused, malformed API
//! requests and requests with numbers out of range get clear errors while the agent keeps
//! serving, malformed cluster files get clear one-line errors.
mod common;

use std::time::Duration;

use common::*;
use vmove_api::{AgentClient, Health, Request};

fn operator(lab: &Lab, host: &str) -> AgentClient {
    let pki = lab.dir.join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let op = vmove_api::pki::CertPair::read(&pki, "operator").unwrap();
    let c = vmove_model::Cluster::load(&lab.cluster).unwrap();
    let addr = c.host(host).unwrap().address.parse().unwrap();
    AgentClient::new(addr, host, vmove_api::tls::client_config(&ca, &op).unwrap()).with_timeout(Duration::from_secs(10))
}

/// The last line of stderr of a command that must fail (warnings may come before it).
fn last_error(lab: &Lab, args: &[&str]) -> String {
    let o = lab.vmove(args);
    assert!(!o.status.success(), "vmove {args:?} should have failed");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let last = err.trim().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("vmove: "), "{err}");
    last
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn concurrent_and_crossing_migrations_are_refused() {
    let lab = Lab::up("conc", 3);
    lab.boot_guest("vm1", "host1", "192.0.2.51", 0, true);
    // A first migration, held between two steps.
    let id = lab.ok(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--pause-before", "DETACH_VOLUMES", "--detach"]).trim().to_string();
    wait_for("the pause", Duration::from_secs(60), || {
        let j = lab.json(&["job", "show", &id]);
        j["events"].as_array().unwrap().iter().any(|e| e["message"].as_str().is_some_and(|m| m.starts_with("paused"))).then_some(())
    });
    // A second one of the same guest: refused by the prechecks...
    let e = lab.fails(&["migrate", "vm1", "--to", "host2", "--mode", "offline"]);
    assert!(e.contains("no-outstanding-work"), "{e}");
    let e = lab.fails(&["migrate", "vm1", "--to", "host3", "--mode", "offline"]);
    assert!(e.contains("no-outstanding-work"), "{e}");
    // ...and by the agents themselves when the prechecks are overridden.
    let e = last_error(&lab, &["migrate", "vm1", "--to", "host2", "--mode", "offline", "--ignore-check", "no-outstanding-work"]);
    assert!(e.contains("already being migrated by job"), "{e}");
    let e = last_error(&lab, &["migrate", "vm1", "--to", "host3", "--mode", "offline", "--ignore-check", "no-outstanding-work"]);
    assert!(e.contains("already being migrated away from host1 by the migration to host2"), "{e}");
    // A migration to the host that is migrating the guest away: refused.
    let e = last_error(&lab, &[
        "migrate", "vm1", "--from", "host2", "--to", "host1", "--mode", "offline", "--ignore-check", "no-outstanding-work",
        "--ignore-check", "cluster-file-matches-source", "--ignore-check", "guest-name-free-on-target",
        "--ignore-check", "macs-free-on-target",
    ]);
    assert!(e.contains("host1 is itself migrating guest vm1 away"), "{e}");
    // The first migration still completes.
    lab.ok(&["job", "resume", &id]);
    lab.ok(&["job", "watch", &id]);
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);
    assert_eq!(lab.cluster_host("vm1"), "host2");
}

#[test]
fn malformed_api_requests_get_clear_errors_and_the_agent_keeps_serving() {
    let lab = Lab::up("mal", 1);
    let c = operator(&lab, "host1");
    let rt = rt();
    let shapes: Vec<Vec<u8>> = vec![
        b"\n".to_vec(),
        b"{\n".to_vec(),
        b"null\n".to_vec(),
        b"[]\n".to_vec(),
        b"42\n".to_vec(),
        b"\"health\"\n".to_vec(),
        b"{}\n".to_vec(),
        b"{\"op\":\"\"}\n".to_vec(),
        b"{\"op\":\"launch_missiles\"}\n".to_vec(),
        b"{\"op\":\"guest_start\"}\n".to_vec(),
        b"{\"op\":\"guest_start\",\"name\":5}\n".to_vec(),
        b"{\"op\":\"guest_start\",\"name\":\"vm1\",\"extra\":true}\n".to_vec(),
        b"{\"op\":\"guest_stop\",\"name\":\"x\",\"timeout_s\":-1}\n".to_vec(),
        b"{\"op\":\"guest_define\",\"spec\":{}}\n".to_vec(),
        b"{\"op\":\"job_submit\",\"spec\":{\"mode\":\"sideways\"}}\n".to_vec(),
        b"{\"op\":\"health\"".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01, b'\n'],
        b"\x00\x00\x00\x00\n".to_vec(),
        format!("{{\"op\":\"guest_show\",\"name\":\"{}\"}}\n", "x".repeat(100_000)).into_bytes(),
        vec![b'a'; (1 << 20) + 10],
    ];
    let mut n = 0;
    for i in 0..100 {
        let s = &shapes[i % shapes.len()];
        match rt.block_on(c.call_bytes(s)) {
            Ok(reply) => {
                assert!(!reply.ok, "request {i} ({:?}...) should fail", String::from_utf8_lossy(&s[..s.len().min(40)]));
                let e = reply.error.expect("an error");
                assert_eq!(e.code, vmove_api::ErrorCode::InvalidRequest, "request {i}: {e:?}");
                let e = e.message;
                assert!(!e.is_empty() && !e.contains('\n'), "request {i}: one-line error, got {e:?}");
                n += 1;
            }
            // A request that never ends (no newline) may simply be cut off: also fine.
            Err(e) => assert!(s.last() != Some(&b'\n'), "request {i}: {e:#}"),
        }
    }
    assert!(n >= 90, "{n} clear errors");
    let h: Health = rt.block_on(c.call(&Request::Health)).expect("the agent keeps serving");
    assert_eq!(h.host, "host1");
    lab.ok(&["host", "show", "host1"]);
}

/// Numbers that once could panic the agent (`Instant + u64::MAX s`, `calc_s + 10`,
/// `size_mib * 1024 * 1024`) and names or URIs it must never act on are refused at the API
/// boundary with a one-line error naming the field and its range; the agent keeps serving.
#[test]
fn out_of_range_numbers_are_refused_and_the_agent_keeps_serving() {
    let lab = Lab::up("range", 1);
    let c = operator(&lab, "host1");
    let rt = rt();
    let max = u64::MAX;
    let define = |disk: &str| {
        format!(
            r#"{{"op":"guest_define","spec":{{"name":"big","host":"host1","vcpus":1,"memory_mib":64,"boot":{{"kind":"disk"}},"disks":[{disk}]}}}}"#
        )
    };
    let cases: Vec<(String, String)> = vec![
        (
            format!(r#"{{"op":"guest_stop","name":"vm1","timeout_s":{max}}}"#),
            format!("invalid request: guest_stop: timeout_s {max} is out of range (1..=3600)"),
        ),
        (
            format!(r#"{{"op":"peer_stop_guest","name":"vm1","force":false,"timeout_s":{max}}}"#),
            format!("invalid request: peer_stop_guest: timeout_s {max} is out of range (1..=3600)"),
        ),
        (
            format!(r#"{{"op":"guest_dirty_rate","name":"vm1","calc_s":{}}}"#, max - 5),
            format!("invalid request: guest_dirty_rate: calc_s {} is out of range (1..=60)", max - 5),
        ),
        (
            define(&format!(r#"{{"pool":"shared","volume":"big.img","size_mib":{max}}}"#)),
            format!("invalid request: guest_define: spec.disks[0].size_mib {max} is out of range (1..=1073741824)"),
        ),
        (
            define(r#"{"pool":"shared","volume":"../../etc/big.img","size_mib":1}"#),
            "invalid request: guest_define: spec.disks[0].volume \"../../etc/big.img\" is not a valid name".into(),
        ),
        (
            r#"{"op":"peer_migrate_out","name":"vm1","uri":"exec:touch /tmp/vmove-pwned","params":{"timeout_s":600,"max_downtime_ms":300}}"#.into(),
            "invalid request: peer_migrate_out: uri \"exec:touch /tmp/vmove-pwned\" is not tcp:IP:PORT".into(),
        ),
    ];
    for (req, want) in &cases {
        let reply = rt.block_on(c.call_bytes(format!("{req}\n").as_bytes())).unwrap_or_else(|e| panic!("{req}: {e:#}"));
        assert!(!reply.ok, "{req} should be refused");
        let e = reply.error.expect("an error");
        assert_eq!(e.code, vmove_api::ErrorCode::InvalidRequest, "{req}: {e:?}");
        let e = e.message;
        assert!(e.starts_with(want.as_str()), "{req}:\n got {e:?}\nwant {want:?}");
        assert!(!e.contains('\n'));
    }
    let h: Health = rt.block_on(c.call(&Request::Health)).expect("the agent keeps serving");
    assert_eq!(h.host, "host1");
    let guests: Vec<vmove_api::GuestStatus> = rt.block_on(c.call(&Request::GuestList)).expect("guest list");
    assert!(guests.is_empty(), "nothing was defined: {guests:?}");
    assert!(!lab.dir.join("shared/big.img").exists());
}
