//! Issue "vmoved host agent": guests on real QEMU with a NIC and a data disk, ACPI stop,
//! re-adoption after kill -9 of the agent, resource and uniqueness checks, mTLS refusal.
mod common;

use std::time::Duration;

use common::*;
use vmove_api::pki::{Ca, CertPair};
use vmove_api::client::ClientError;
use vmove_api::{AgentClient, ErrorCode, Health, Request};

#[test]
fn guest_lifecycle_disk_acpi_stop_and_agent_restart() {
    let lab = Lab::up("agent", 2);
    lab.ok(&[
        "guest", "create", "vm1", "--host", "host1", "--nic", "lab-net,ip=192.0.2.11/24", "--disk", "shared/vm1-data.img:32M",
        "--dirty-rate", "20", "--start",
    ]);
    lab.wait_tcp_echo("192.0.2.11:7", Duration::from_secs(120));
    lab.udp_echo("192.0.2.11:7").expect("UDP echo");
    let log = lab.wait_log("vm1", "VERIFY OK and DISK OK", Duration::from_secs(60), |l| {
        l.contains("VERIFY OK") && l.contains("DISK OK")
    });
    assert!(!log.contains("FAIL"), "{log}");

    // Uniqueness and resources are checked, each with one clear line.
    let e = lab.fails(&["guest", "create", "vm1", "--host", "host2"]);
    assert!(e.contains("vm1") && e.contains("already in use"), "{e}");
    let mac = lab.json(&["guest", "show", "vm1"])["spec"]["nics"][0]["mac"].as_str().unwrap().to_string();
    let e = lab.fails(&["guest", "create", "vm2", "--host", "host1", "--nic", &format!("lab-net,mac={mac}")]);
    assert!(e.contains(&mac) && e.contains("already used by guest vm1"), "{e}");
    let e = lab.fails(&["guest", "create", "big", "--host", "host1", "--memory", "64G"]);
    assert!(e.contains("not enough memory on host1"), "{e}");
    let e = lab.fails(&["guest", "create", "vm3", "--host", "host9"]);
    assert!(e.contains("no host named host9"), "{e}");

    // kill -9 the agent: the guest keeps running; the restarted agent re-adopts it.
    let pid = lab.json(&["guest", "show", "vm1"])["pid"].as_u64().unwrap() as u32;
    lab.ok(&["lab", "agent", "--dir", lab.dir.to_str().unwrap(), "host1", "kill"]);
    lab.tcp_echo("192.0.2.11:7").expect("guest answers while its agent is dead");
    lab.ok(&["lab", "agent", "--dir", lab.dir.to_str().unwrap(), "host1", "start"]);
    let st = lab.json(&["guest", "show", "vm1"]);
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["pid"].as_u64(), Some(u64::from(pid)), "same QEMU re-adopted");
    assert_eq!(lab.qemu_pids("vm1"), vec![pid], "exactly one QEMU for vm1");
    let all = lab.json(&["guest", "list"]);
    assert_eq!(all.as_array().unwrap().iter().filter(|g| g["guest"]["spec"]["name"] == "vm1").count(), 1);
    lab.tcp_echo("192.0.2.11:7").expect("echo after re-adoption");

    // Still controllable: ACPI stop through the restarted agent.
    let before = last_disk_ok(&lab.log("vm1")).unwrap_or(0);
    let st = lab.json(&["guest", "stop", "vm1"]);
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(lab.log("vm1").contains("POWERING OFF"), "stopped through the ACPI power button");
    assert!(lab.qemu_pids("vm1").is_empty(), "no QEMU after stop");

    // The disk log survives and grows across boots.
    lab.ok(&["guest", "start", "vm1"]);
    let log = lab.wait_log("vm1", "DISK OK after reboot", Duration::from_secs(90), |l| {
        l.matches("VMOVE READY vm1").count() >= 2
    });
    let after = log.rsplit("VMOVE READY vm1").nth(1).and_then(last_disk_ok).expect("DISK OK at second boot");
    assert!(after >= before && after > 0, "records {before} before the stop, {after} verified at reboot");
    assert!(!log.contains("DISK FAIL"), "{log}");

    lab.ok(&["guest", "destroy", "vm1"]);
    assert!(lab.qemu_pids("vm1").is_empty());
    lab.fails(&["guest", "show", "vm1"]);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The TLS alert the agent sent when it refused the handshake, if the refusal came as one
/// (tokio-rustls hands rustls' error over inside an `io::Error`).
fn tls_alert(e: &ClientError) -> Option<rustls::AlertDescription> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        let rustls_err = c
            .downcast_ref::<rustls::Error>()
            .or_else(|| c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|i| i.downcast_ref::<rustls::Error>()));
        if let Some(rustls::Error::AlertReceived(a)) = rustls_err {
            return Some(*a);
        }
        cur = c.source();
    }
    None
}

/// A refused handshake: a transport failure (`unreachable`) carrying the agent's alert.
#[track_caller]
fn assert_refused_handshake(r: Result<serde_json::Value, ClientError>, alert: rustls::AlertDescription, what: &str) {
    let e = r.expect_err(what);
    assert!(matches!(e, ClientError::Tls { .. } | ClientError::Io { .. }), "{what}: {e:?}");
    assert_eq!(e.code(), ErrorCode::Unreachable, "{what}: {e:?}");
    assert_eq!(tls_alert(&e), Some(alert), "{what}: {e:?}");
}

/// A call the agent answered with `forbidden`.
#[track_caller]
fn assert_forbidden(r: Result<serde_json::Value, ClientError>, what: &str) {
    match r {
        Err(ClientError::Remote { code: ErrorCode::Forbidden, message, .. }) => {
            assert!(message.contains("is not allowed for a"), "{what}: {message}")
        }
        other => panic!("{what}: expected forbidden, got {other:?}"),
    }
}

#[test]
fn mtls_refuses_clients_without_a_cluster_certificate() {
    use rustls::AlertDescription;
    let lab = Lab::up("mtls", 1);
    let pki = lab.dir.join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let addr = format!("{}:7450", lab.json(&["host", "list"])[0]["address"].as_str().unwrap().split(':').next().unwrap())
        .parse()
        .unwrap();
    let call = |cfg, req: Request| rt().block_on(AgentClient::new(addr, "host1", cfg).call::<serde_json::Value>(&req));

    // Positive control: the operator certificate works.
    let operator = CertPair::read(&pki, "operator").unwrap();
    let op_cfg = vmove_api::tls::client_config(&ca, &operator).unwrap();
    let ok = call(op_cfg.clone(), Request::Health).expect("operator call");
    let h: Health = serde_json::from_value(ok).unwrap();
    assert_eq!(h.caller, vmove_api::Role::Operator);

    // No client certificate: refused.
    let r = call(vmove_api::tls::anonymous_client_config(&ca).unwrap(), Request::Health);
    assert_refused_handshake(r, AlertDescription::CertificateRequired, "no certificate");

    // A certificate from another CA: refused.
    let other = Ca::generate("intruder").unwrap();
    let intruder = other.issue_operator("mallory").unwrap();
    let r = call(vmove_api::tls::client_config(&ca, &intruder).unwrap(), Request::Health);
    assert_refused_handshake(r, AlertDescription::UnknownCA, "a foreign CA's certificate");

    // An operator certificate of the cluster's own CA that has expired: refused.
    let lab_ca = Ca::load(CertPair::read(&pki, "ca").unwrap()).unwrap();
    let expired = lab_ca.issue_operator_valid_between("old-operator", (2020, 1, 1), (2021, 1, 1)).unwrap();
    let r = call(vmove_api::tls::client_config(&ca, &expired).unwrap(), Request::Health);
    assert_refused_handshake(r, AlertDescription::CertificateExpired, "an expired certificate");
    // ... and one not valid yet.
    let early = lab_ca.issue_operator_valid_between("early-operator", (2090, 1, 1), (2091, 1, 1)).unwrap();
    let r = call(vmove_api::tls::client_config(&ca, &early).unwrap(), Request::Health);
    assert_refused_handshake(r, AlertDescription::CertificateExpired, "a certificate not valid yet");

    // A host certificate may make peer calls only.
    // The host bundle that `vmove host add` wrote for host1 (what its agent serves with).
    let host = CertPair::read(&lab.dir.join("hosts").join("host1"), "host").unwrap();
    let cfg = vmove_api::tls::client_config(&ca, &host).unwrap();
    call(cfg.clone(), Request::HostInfo).expect("host_info is a peer call");
    for req in [Request::GuestList, Request::GuestStart { name: "vm1".into() }, Request::HostDrain, Request::JobShow { id: "j1".into() }] {
        let what = format!("host certificate making the operator call {}", req.op());
        assert_forbidden(call(cfg.clone(), req), &what);
    }

    // An operator certificate may not make the agents' calls to each other.
    let peer_calls = [
        Request::PeerGuest { name: "vm1".into(), claim: Some("host9".into()) },
        Request::PeerStopGuest { name: "vm1".into(), force: true, timeout_s: 1, job: None },
        Request::PeerDetachVolumes { name: "vm1".into() },
        Request::PeerUndefine { name: "vm1".into() },
        Request::PeerMigrateCancel { name: "vm1".into() },
        Request::PeerTakeFrames { name: "vm1".into() },
        Request::PeerMigrateFinish { name: "vm1".into() },
    ];
    for req in peer_calls {
        assert!(req.is_peer());
        let what = format!("operator certificate making the peer call {}", req.op());
        assert_forbidden(call(op_cfg.clone(), req.clone()), &what);
        // The same call with the host certificate passes the role check (there is no
        // guest vm1: it fails on its merits, or does nothing).
        match call(cfg.clone(), req) {
            Ok(_) => {}
            Err(ClientError::Remote { code, .. }) => assert_ne!(code, ErrorCode::Forbidden, "{what}"),
            Err(e) => panic!("{what}: with a host certificate: {e:?}"),
        }
    }
    // The refusals closed nothing: the agent still answers the operator.
    call(op_cfg, Request::Health).expect("health after the refusals");
}
