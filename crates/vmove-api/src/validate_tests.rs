use std::ops::RangeInclusive;

use vmove_model::{BootSource, GuestSpec};

use super::*;
use crate::fixtures::{guest, job};
use crate::JobSpec;

fn define(f: impl Fn(&mut GuestSpec)) -> Request {
    let mut spec = guest();
    f(&mut spec);
    Request::GuestDefine { spec }
}

fn submit(f: impl Fn(&mut JobSpec)) -> Request {
    let mut spec = job();
    f(&mut spec);
    Request::JobSubmit { spec }
}

fn migrate_out(f: impl Fn(&mut MigrationParams)) -> Request {
    let mut params = MigrationParams::default();
    f(&mut params);
    Request::PeerMigrateOut { name: "vm1".into(), uri: "tcp:198.51.100.3:49152".into(), tls_hostname: None, params, job: None, setup: None }
}

/// In range (the bounds and a value between) passes; one beyond each bound, and the
/// largest value of the field's type, fail naming the op, the field, the value and the range.
/// `type_max` is the largest value the field's type holds.
fn check(op: &str, field: &str, range: RangeInclusive<u64>, type_max: u64, make: impl Fn(u64) -> Request) {
    let (lo, hi) = (*range.start(), *range.end());
    for v in [lo, hi, lo + (hi - lo) / 2] {
        assert_eq!(make(v).validate(), Ok(()), "{op} {field} {v}");
    }
    let mut bad = vec![];
    if lo > 0 {
        bad.push(lo - 1);
    }
    if hi < type_max {
        bad.extend([hi + 1, type_max]);
    }
    assert!(!bad.is_empty() || range == (0..=type_max), "{field}: nothing out of range to test");
    for v in bad {
        let e = make(v).validate().expect_err(&format!("{op} {field} {v} must be refused"));
        assert_eq!(e.to_string(), format!("{op}: {field} {v} is out of range ({lo}..={hi})"));
    }
}

const U8: u64 = u8::MAX as u64;
const U16: u64 = u16::MAX as u64;
const U32: u64 = u32::MAX as u64;

#[test]
fn the_example_of_the_issue() {
    let r = Request::GuestStop { name: "vm1".into(), force: false, timeout_s: u64::MAX };
    assert_eq!(
        r.validate().unwrap_err().to_string(),
        "guest_stop: timeout_s 18446744073709551615 is out of range (1..=3600)"
    );
}

#[test]
fn stop_timeouts() {
    check("guest_stop", "timeout_s", limits::STOP_TIMEOUT_S, u64::MAX, |v| Request::GuestStop {
        name: "vm1".into(),
        force: true,
        timeout_s: v,
    });
    check("peer_stop_guest", "timeout_s", limits::STOP_TIMEOUT_S, u64::MAX, |v| Request::PeerStopGuest {
        name: "vm1".into(),
        force: false,
        timeout_s: v,
        job: None,
    });
}

#[test]
fn dirty_rate_period() {
    check("guest_dirty_rate", "calc_s", limits::CALC_S, u64::MAX, |v| Request::GuestDirtyRate { name: "vm1".into(), calc_s: v, calc_ms: None });
    check("guest_dirty_rate", "calc_ms", limits::CALC_MS, u64::MAX, |v| Request::GuestDirtyRate { name: "vm1".into(), calc_s: 1, calc_ms: Some(v) });
    check("peer_link_send", "duration_ms", limits::LINK_PROBE_MS, u64::MAX, |v| Request::PeerLinkSend { addr: "198.51.100.3:4000".into(), duration_ms: v });
}

#[test]
fn log_bytes() {
    check("guest_log", "max_bytes", limits::LOG_MAX_BYTES, u64::MAX, |v| Request::GuestLog { name: "vm1".into(), max_bytes: v });
}

#[test]
fn console_requests() {
    check("guest_console", "replay.tail", limits::CONSOLE_REPLAY_BYTES, u64::MAX, |v| Request::GuestConsole {
        name: "vm1".into(),
        replay: crate::ConsoleReplay::Tail(v),
    });
    // An offset is the client's own position in a log it has seen: any value, clamped by the agent.
    assert_eq!(Request::GuestConsole { name: "vm1".into(), replay: crate::ConsoleReplay::From(u64::MAX) }.validate(), Ok(()));
    let r = decode_request(r#"{"op":"guest_console","name":"vm1"}"#).unwrap();
    assert_eq!(r, Request::GuestConsole { name: "vm1".into(), replay: crate::ConsoleReplay::Live });
    assert!(decode_request(r#"{"op":"guest_console","name":"vm1","replay":{"from":-1}}"#).is_err());
    assert!(decode_request(r#"{"op":"guest_console","name":"vm1","replay":"all"}"#).is_err());
    let bad = Request::GuestConsole { name: "../x".into(), replay: crate::ConsoleReplay::Live };
    assert!(matches!(bad.validate(), Err(InvalidRequest::BadName { .. })));
    assert!(!bad.allowed_for(&crate::Role::Host), "a host certificate may not open a console");
    assert!(bad.allowed_for(&crate::Role::Operator));
}

#[test]
fn watch_from_seq() {
    check("job_watch", "from_seq", limits::FROM_SEQ, u64::MAX, |v| Request::JobWatch { id: "host2-1".into(), from_seq: v });
}

#[test]
fn guest_definition_numbers() {
    let op = "guest_define";
    check(op, "spec.vcpus", limits::VCPUS, U32, |v| define(|g| g.vcpus = v as u32));
    check(op, "spec.memory_mib", limits::MEMORY_MIB, u64::MAX, |v| define(|g| g.memory_mib = v));
    check(op, "spec.disks[0].size_mib", limits::DISK_SIZE_MIB, u64::MAX, |v| define(|g| g.disks[0].size_mib = Some(v)));
    check(op, "spec.console_port", limits::CONSOLE_PORT, U16, |v| define(|g| g.console_port = Some(v as u16)));
    check(op, "spec.boot.dirty_mb_s", limits::DIRTY_MB_S, U32, |v| {
        define(|g| g.boot = BootSource::Lab { dirty_mb_s: v as u32, wss_mib: 64, disk_mb_s: 0 })
    });
    check(op, "spec.boot.wss_mib", limits::WSS_MIB, U32, |v| define(|g| g.boot = BootSource::Lab { dirty_mb_s: 0, wss_mib: v as u32, disk_mb_s: 0 }));
    // The second disk is named in the path.
    let r = define(|g| {
        let mut d = g.disks[0].clone();
        d.volume = "second.img".into();
        d.size_mib = Some(u64::MAX);
        g.disks.push(d);
    });
    assert!(r.validate().unwrap_err().to_string().starts_with("guest_define: spec.disks[1].size_mib 18446744073709551615 "));
    // Absent optional values are fine.
    assert_eq!(define(|g| { g.disks[0].size_mib = None; g.console_port = None; g.boot = BootSource::Disk }).validate(), Ok(()));
}

#[test]
fn disk_sizes_in_bytes_fit_a_file_offset() {
    let max = *limits::DISK_SIZE_MIB.end();
    assert!(max.checked_mul(1024 * 1024).is_some_and(|b| b <= i64::MAX as u64));
    assert!((*limits::MEMORY_MIB.end()).checked_mul(1024 * 1024).is_some());
}

#[test]
fn job_numbers_are_checked_inside_the_job() {
    let op = "job_submit";
    check(op, "spec.guest.memory_mib", limits::MEMORY_MIB, u64::MAX, |v| submit(|j| j.guest.memory_mib = v));
    check(op, "spec.guest.vcpus", limits::VCPUS, U32, |v| submit(|j| j.guest.vcpus = v as u32));
    check(op, "spec.guest.disks[0].size_mib", limits::DISK_SIZE_MIB, u64::MAX, |v| submit(|j| j.guest.disks[0].size_mib = Some(v)));
    check(op, "spec.guest.console_port", limits::CONSOLE_PORT, U16, |v| submit(|j| j.guest.console_port = Some(v as u16)));
    check(op, "spec.params.timeout_s", limits::MIGRATION_TIMEOUT_S, u64::MAX, |v| submit(|j| j.params.timeout_s = v));
    check(op, "spec.params.max_downtime_ms", limits::MAX_DOWNTIME_MS, u64::MAX, |v| submit(|j| j.params.max_downtime_ms = v));
    // An idle guest dirties nothing: a measured rate of 0 is a measurement.
    check(op, "spec.dirty_rate_bytes_per_s", limits::MEASURED_BYTES_PER_S, u64::MAX, |v| submit(|j| j.dirty_rate_bytes_per_s = Some(v)));
    check(op, "spec.link_bytes_per_s", limits::MEASURED_BYTES_PER_S, u64::MAX, |v| submit(|j| j.link_bytes_per_s = Some(v)));
    check(op, "spec.params.bandwidth_bytes_per_s", limits::BANDWIDTH_BYTES_PER_S, u64::MAX, |v| {
        submit(|j| j.params.bandwidth_bytes_per_s = Some(v))
    });
    check(op, "spec.params.multifd_channels", limits::MULTIFD_CHANNELS, U8, |v| submit(|j| j.params.multifd_channels = v as u8));
    check(op, "spec.params.stop_timeout_s", limits::STOP_TIMEOUT_S, u64::MAX, |v| submit(|j| j.params.stop_timeout_s = v));
    check(op, "spec.max_incoming", limits::MAX_INCOMING, U32, |v| submit(|j| j.max_incoming = Some(v as u32)));
    assert_eq!(submit(|j| j.params.bandwidth_bytes_per_s = None).validate(), Ok(()));
    assert_eq!(submit(|j| j.max_incoming = None).validate(), Ok(()));
}

#[test]
fn migration_numbers_of_the_peer_call() {
    let op = "peer_migrate_out";
    check(op, "params.timeout_s", limits::MIGRATION_TIMEOUT_S, u64::MAX, |v| migrate_out(|p| p.timeout_s = v));
    check(op, "params.max_downtime_ms", limits::MAX_DOWNTIME_MS, u64::MAX, |v| migrate_out(|p| p.max_downtime_ms = v));
    check(op, "params.bandwidth_bytes_per_s", limits::BANDWIDTH_BYTES_PER_S, u64::MAX, |v| {
        migrate_out(|p| p.bandwidth_bytes_per_s = Some(v))
    });
    check(op, "params.multifd_channels", limits::MULTIFD_CHANNELS, U8, |v| migrate_out(|p| p.multifd_channels = v as u8));
    check(op, "params.stop_timeout_s", limits::STOP_TIMEOUT_S, u64::MAX, |v| migrate_out(|p| p.stop_timeout_s = v));
}

#[test]
fn defaults_are_in_range() {
    assert_eq!(submit(|_| {}).validate(), Ok(()));
    assert_eq!(migrate_out(|_| {}).validate(), Ok(()));
    for line in [
        r#"{"op":"guest_stop","name":"vm1"}"#,
        r#"{"op":"guest_dirty_rate","name":"vm1"}"#,
        r#"{"op":"guest_log","name":"vm1"}"#,
        r#"{"op":"job_watch","id":"host2-1"}"#,
        r#"{"op":"health"}"#,
    ] {
        assert!(decode_request(line).is_ok(), "{line}");
    }
}

#[test]
fn names_that_become_file_names() {
    assert!(valid_name("vm-1.example_2"));
    assert!(valid_name(&"a".repeat(64)));
    for bad in ["", "../etc", ".hidden", "a/b", "a b", "vm\u{e9}", "a\0", &"a".repeat(65)] {
        assert!(!valid_name(bad), "{bad:?}");
    }
    let e = Request::GuestStart { name: "../../etc/passwd".into() }.validate().unwrap_err();
    assert_eq!(e.to_string(), format!("guest_start: name \"../../etc/passwd\" is not a valid name ({NAME_RULE})"));
    let e = define(|g| g.name = "a/b".into()).validate().unwrap_err();
    assert!(e.to_string().starts_with("guest_define: spec.name \"a/b\" is not a valid name"), "{e}");
    let e = define(|g| g.disks[0].volume = "../x.img".into()).validate().unwrap_err();
    assert!(e.to_string().starts_with("guest_define: spec.disks[0].volume \"../x.img\" is not a valid name"), "{e}");
    let e = submit(|j| j.guest.name = "../../jobs/x".into()).validate().unwrap_err();
    assert!(e.to_string().starts_with("job_submit: spec.guest.name "), "{e}");
    for r in [
        Request::PeerUndefine { name: "..".into() },
        Request::PeerGuest { name: "".into(), claim: None },
        Request::GuestLog { name: "/".into(), max_bytes: 10 },
        Request::PeerStopGuest { name: ".x".into(), force: true, timeout_s: 10, job: None },
    ] {
        assert!(matches!(r.validate(), Err(InvalidRequest::BadName { .. })), "{r:?}");
    }
    // A long name is cut in the message: one short line.
    let e = Request::GuestShow { name: "x".repeat(100_000) }.validate().unwrap_err().to_string();
    assert!(e.len() < 200 && e.contains("xxx\"...") && !e.contains('\n'), "{e}");
}

#[test]
fn addresses_and_uris() {
    assert_eq!(define(|g| g.nics[0].ip = Some("10.0.0.1/32".into())).validate(), Ok(()));
    assert_eq!(define(|g| g.nics[0].ip = None).validate(), Ok(()));
    for bad in ["10.0.0.1", "10.0.0.1/33", "10.0.0.1/", "10.0.0.1/+8", "10.0.0.1/24 init=/bin/sh", "::1/64", ""] {
        let e = define(|g| g.nics[0].ip = Some(bad.into())).validate().unwrap_err();
        assert!(e.to_string().starts_with("guest_define: spec.nics[0].ip "), "{bad}: {e}");
    }
    for bad in ["exec:touch /tmp/x", "tcp:198.51.100.3", "tcp:198.51.100.3:0", "unix:/tmp/s", "tcp:host2:4444"] {
        let r = Request::PeerMigrateOut { name: "vm1".into(), uri: bad.into(), tls_hostname: None, params: Default::default(), job: None, setup: None };
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            format!("peer_migrate_out: uri {bad:?} is not tcp:IP:PORT"),
        );
    }
    let r = Request::PeerMigrateOut { name: "vm1".into(), uri: "tcp:[::1]:4444".into(), tls_hostname: None, params: Default::default(), job: None, setup: None };
    assert_eq!(r.validate(), Ok(()));
    for bad in ["198.51.100.2", "198.51.100.2:0", "host1:7450"] {
        let e = submit(|j| j.source.address = bad.into()).validate().unwrap_err();
        assert_eq!(e.to_string(), format!("job_submit: spec.source.address {bad:?} is not IP:PORT"));
    }
}

#[test]
fn decode_parses_then_validates() {
    let e = decode_request("{\"op\":\"guest_stop\",\"name\":\"x\",\"timeout_s\":18446744073709551615}\n").unwrap_err();
    assert_eq!(e.to_string(), "invalid request: guest_stop: timeout_s 18446744073709551615 is out of range (1..=3600)");
    let e = decode_request("{\"op\":\"guest_stop\",\"name\":\"x\",\"timeout_s\":-1}").unwrap_err();
    assert!(matches!(e, DecodeError::Malformed(_)) && e.to_string().starts_with("malformed request: "), "{e}");
    let e = decode_request("{\"op\":\"guest_start\",\"name\":\"vm1\",\"extra\":true}").unwrap_err();
    assert!(e.to_string().starts_with("malformed request: unknown field `extra`"), "{e}");
    assert!(matches!(decode_request("{\"op\":\"guest_start\",\"name\":\"vm1\"}\n"), Ok(Request::GuestStart { .. })));
    // Every request the CLI and the agents send decodes back to itself.
    for r in [submit(|_| {}), migrate_out(|_| {}), define(|_| {}), Request::PeerGuest { name: "vm1".into(), claim: Some("the migration to host2".into()) }] {
        assert_eq!(decode_request(&serde_json::to_string(&r).unwrap()).unwrap(), r);
    }
}

fn mirror_start(f: impl Fn(&mut Request)) -> Request {
    let mut r = Request::PeerMirrorStart {
        name: "vm1".into(),
        disks: vec![0, 1],
        nbd: "198.51.100.3:40123".into(),
        tls_hostname: Some("host2".into()),
        live: true,
        bandwidth_bytes_per_s: None,
        job: Some("the migration to host2".into()),
    };
    f(&mut r);
    r
}

#[test]
fn storage_copy_calls() {
    assert_eq!(mirror_start(|_| {}).validate(), Ok(()));
    check("peer_mirror_start", "disks[1]", limits::DISK_INDEX, U32, |v| {
        mirror_start(|r| {
            if let Request::PeerMirrorStart { disks, .. } = r {
                disks[1] = u32::try_from(v).unwrap_or(u32::MAX);
            }
        })
    });
    check("peer_mirror_start", "bandwidth_bytes_per_s", limits::BANDWIDTH_BYTES_PER_S, u64::MAX, |v| {
        mirror_start(|r| {
            if let Request::PeerMirrorStart { bandwidth_bytes_per_s, .. } = r {
                *bandwidth_bytes_per_s = Some(v);
            }
        })
    });
    let none = mirror_start(|r| {
        if let Request::PeerMirrorStart { disks, .. } = r {
            disks.clear();
        }
    });
    assert_eq!(none.validate().unwrap_err().to_string(), "peer_mirror_start: disks.len 0 is out of range (1..=256)");
    let many = mirror_start(|r| {
        if let Request::PeerMirrorStart { disks, .. } = r {
            *disks = vec![0; 257];
        }
    });
    assert_eq!(many.validate().unwrap_err().to_string(), "peer_mirror_start: disks.len 257 is out of range (1..=256)");
    for bad in ["198.51.100.3", "198.51.100.3:0", "host2:40123", "unix:/tmp/x"] {
        let r = mirror_start(|r| {
            if let Request::PeerMirrorStart { nbd, .. } = r {
                *nbd = bad.into();
            }
        });
        assert_eq!(r.validate().unwrap_err().to_string(), format!("peer_mirror_start: nbd {bad:?} is not IP:PORT"));
    }
    let r = mirror_start(|r| {
        if let Request::PeerMirrorStart { tls_hostname, .. } = r {
            *tls_hostname = Some("host2,tls-creds=x".into());
        }
    });
    assert!(matches!(r.validate(), Err(InvalidRequest::BadName { .. })), "{r:?}");
    let drop = |pool: &str, volume: &str| Request::PeerDropVolumes {
        name: "vm1".into(),
        volumes: vec![crate::VolumeRef { pool: pool.into(), volume: volume.into() }],
        keep: false,
    };
    assert_eq!(drop("local", "vm1-data.img").validate(), Ok(()));
    let e = drop("local", "../shared/x.img").validate().unwrap_err();
    assert!(e.to_string().starts_with("peer_drop_volumes: volumes[0].volume \"../shared/x.img\" is not a valid name"), "{e}");
    let e = drop("..", "x.img").validate().unwrap_err();
    assert!(e.to_string().starts_with("peer_drop_volumes: volumes[0].pool"), "{e}");
    let e = Request::PeerDropVolumes { name: "vm1".into(), volumes: vec![], keep: true }.validate().unwrap_err();
    assert_eq!(e.to_string(), "peer_drop_volumes: volumes.len 0 is out of range (1..=256)");
    for r in [
        Request::PeerLocalVolumes { name: "..".into() },
        Request::PeerMirrorQuery { name: "a/b".into() },
        Request::PeerMirrorWriteBlocking { name: "".into() },
        Request::PeerMirrorFinish { name: ".x".into() },
        Request::PeerMirrorAbort { name: "x y".into() },
    ] {
        assert!(matches!(r.validate(), Err(InvalidRequest::BadName { .. })), "{r:?}");
        assert!(r.allowed_for(&crate::Role::Host), "{r:?}: a peer call");
    }
    let r = mirror_start(|_| {});
    assert!(r.allowed_for(&crate::Role::Host));
    assert_eq!(decode_request(&serde_json::to_string(&r).unwrap()).unwrap(), r);
}

#[test]
fn maintenance_calls_are_for_operators_only() {
    for (line, want) in [(r#"{"op":"host_drain"}"#, Request::HostDrain), (r#"{"op":"host_undrain"}"#, Request::HostUndrain)] {
        let r = decode_request(line).unwrap();
        assert_eq!(r, want);
        assert_eq!(serde_json::to_string(&r).unwrap(), line);
        assert!(r.allowed_for(&crate::Role::Operator), "{line}");
        assert!(!r.allowed_for(&crate::Role::Host), "a peer may not put a host in maintenance: {line}");
    }
    assert_eq!(Request::HostDrain.op(), "host_drain");
    assert_eq!(Request::HostUndrain.op(), "host_undrain");
}

#[test]
fn a_job_without_max_incoming_reads_as_before() {
    let mut v = serde_json::to_value(job()).unwrap();
    assert!(v.get("max_incoming").is_none(), "not sent when absent: {v}");
    v["max_incoming"] = 2.into();
    let j: JobSpec = serde_json::from_value(v).unwrap();
    assert_eq!(j.max_incoming, Some(2));
    let code: crate::ErrorCode = serde_json::from_str("\"at_limit\"").unwrap();
    assert_eq!((code, code.as_str()), (crate::ErrorCode::AtLimit, "at_limit"));
}

#[test]
fn peer_calls_are_for_hosts_only_and_operator_calls_for_operators_only() {
    use crate::Role;
    let peer = [
        r#"{"op":"peer_guest","name":"vm1"}"#,
        r#"{"op":"peer_release","name":"vm1","claim":"host2"}"#,
        r#"{"op":"peer_stop_guest","name":"vm1","force":true,"timeout_s":5}"#,
        r#"{"op":"peer_detach_volumes","name":"vm1"}"#,
        r#"{"op":"peer_start_guest","name":"vm1"}"#,
        r#"{"op":"peer_undefine","name":"vm1"}"#,
        r#"{"op":"peer_migrate_cancel","name":"vm1"}"#,
        r#"{"op":"peer_take_frames","name":"vm1"}"#,
        r#"{"op":"peer_migrate_finish","name":"vm1"}"#,
        r#"{"op":"peer_mirror_abort","name":"vm1"}"#,
    ];
    for line in peer {
        let r = decode_request(line).unwrap();
        assert!(r.is_peer(), "{line}");
        assert!(r.allowed_for(&Role::Host), "{line}");
        assert!(!r.allowed_for(&Role::Operator), "an operator may not make a peer call: {line}");
    }
    let operator = [r#"{"op":"guest_list"}"#, r#"{"op":"job_show","id":"j1"}"#, r#"{"op":"guest_start","name":"vm1"}"#];
    for line in operator {
        let r = decode_request(line).unwrap();
        assert!(!r.is_peer() && r.allowed_for(&Role::Operator) && !r.allowed_for(&Role::Host), "{line}");
    }
    for r in [Request::Health, Request::HostInfo, Request::JobList] {
        assert!(!r.is_peer() && r.allowed_for(&Role::Operator) && r.allowed_for(&Role::Host), "{r:?}: both");
    }
    assert!(migrate_out(|_| {}).is_peer());
    assert!(!migrate_out(|_| {}).allowed_for(&Role::Operator));
}
