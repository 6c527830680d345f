//! Parsing of QEMU 7.2 replies and serialization of arguments.

use serde_json::json;

use crate::{
    AnnounceParameters, DirtyRateInfo, DirtyRateStatus, Event, Greeting, MigrateSetParameters,
    MigrationCapability, MigrationInfo, MigrationStatus, RunState, StatusInfo,
};

/// `query-migrate` on a QEMU 7.2 source in the middle of precopy.
const ACTIVE_7_2: &str = r#"{
  "expected-downtime": 312,
  "status": "active",
  "setup-time": 14,
  "total-time": 2843,
  "ram": {
    "total": 4312399872,
    "postcopy-requests": 0,
    "dirty-sync-count": 2,
    "multifd-bytes": 0,
    "pages-per-second": 32768,
    "downtime-bytes": 0,
    "page-size": 4096,
    "remaining": 1712644096,
    "postcopy-bytes": 0,
    "mbps": 1073.741824,
    "transferred": 2600681472,
    "dirty-sync-missed-zero-copy": 0,
    "precopy-bytes": 2600681472,
    "duplicate": 412345,
    "dirty-pages-rate": 1520,
    "normal-bytes": 2593112064,
    "normal": 633084
  }
}"#;

/// `query-migrate` on a QEMU 7.2 source after success, with xbzrle on.
const COMPLETED_7_2: &str = r#"{
  "status": "completed",
  "setup-time": 14,
  "downtime": 48,
  "total-time": 10235,
  "ram": {
    "total": 4312399872,
    "postcopy-requests": 0,
    "dirty-sync-count": 5,
    "multifd-bytes": 0,
    "pages-per-second": 0,
    "downtime-bytes": 5242880,
    "page-size": 4096,
    "remaining": 0,
    "postcopy-bytes": 0,
    "mbps": 2245.38,
    "transferred": 4419723264,
    "dirty-sync-missed-zero-copy": 0,
    "precopy-bytes": 4414480384,
    "duplicate": 600321,
    "dirty-pages-rate": 0,
    "normal-bytes": 4402970624,
    "normal": 1074944
  },
  "xbzrle-cache": {
    "cache-size": 67108864,
    "bytes": 0,
    "pages": 0,
    "cache-miss": 0,
    "cache-miss-rate": 0,
    "encoding-rate": 0,
    "overflow": 0
  }
}"#;

#[test]
fn migration_info_active_7_2() {
    let info: MigrationInfo = serde_json::from_str(ACTIVE_7_2).unwrap();
    assert_eq!(info.status, Some(MigrationStatus::Active));
    assert!(info.status_or_none().is_in_progress());
    assert_eq!(info.expected_downtime, Some(312));
    assert_eq!(info.setup_time, Some(14));
    assert_eq!(info.total_time, Some(2843));
    assert_eq!(info.downtime, None);
    let ram = info.ram.unwrap();
    assert_eq!(ram.total, Some(4_312_399_872));
    assert_eq!(ram.remaining, Some(1_712_644_096));
    assert_eq!(ram.transferred, Some(2_600_681_472));
    assert_eq!(ram.dirty_sync_count, Some(2));
    assert_eq!(ram.dirty_pages_rate, Some(1520));
    assert_eq!(ram.page_size, Some(4096));
    assert_eq!(ram.precopy_bytes, Some(2_600_681_472));
    assert_eq!(ram.normal, Some(633_084));
    assert_eq!(ram.pages_per_second, Some(32768));
    assert!((ram.mbps.unwrap() - 1073.741824).abs() < 1e-9);
    assert!(
        ram.extra.is_empty(),
        "all 7.2 members are modelled: {:?}",
        ram.extra
    );
    assert!(info.extra.is_empty());
}

#[test]
fn migration_info_completed_7_2() {
    let info: MigrationInfo = serde_json::from_str(COMPLETED_7_2).unwrap();
    assert_eq!(info.status, Some(MigrationStatus::Completed));
    assert!(info.status_or_none().is_finished());
    assert_eq!(info.downtime, Some(48));
    assert_eq!(info.expected_downtime, None);
    let ram = info.ram.as_ref().unwrap();
    assert_eq!(ram.remaining, Some(0));
    assert_eq!(ram.downtime_bytes, Some(5_242_880));
    let x = info.xbzrle_cache.as_ref().unwrap();
    assert_eq!(x.cache_size, Some(67_108_864));
    assert_eq!(x.cache_miss_rate, Some(0.0));
}

#[test]
fn migration_info_lenient() {
    // Before the first migration.
    let info: MigrationInfo = serde_json::from_str("{}").unwrap();
    assert_eq!(info.status, None);
    assert_eq!(info.status_or_none(), MigrationStatus::None);

    // Failed, plus things from the future and odd numbers.
    let info: MigrationInfo = serde_json::from_value(json!({
        "status": "failed",
        "error-desc": "Unable to write to socket: Broken pipe",
        "total-time": -1,
        "downtime": 1.5,
        "ram": {"transferred": "lots", "zero-pages": 12},
        "dirty-limit-ring-full-time": 3,
        "x-future-member": 3,
        "blocked-reasons": ["vfio device"]
    }))
    .unwrap();
    assert_eq!(info.status, Some(MigrationStatus::Failed));
    assert_eq!(
        info.error_desc.as_deref(),
        Some("Unable to write to socket: Broken pipe")
    );
    assert_eq!(info.total_time, Some(0));
    assert_eq!(info.downtime, Some(1));
    let ram = info.ram.as_ref().unwrap();
    assert_eq!(ram.transferred, None);
    assert_eq!(ram.extra["zero-pages"], 12);
    assert_eq!(info.dirty_limit_ring_full_time_us, Some(3));
    assert_eq!(info.extra["x-future-member"], 3);
    assert_eq!(
        info.blocked_reasons.as_deref(),
        Some(&["vfio device".to_string()][..])
    );

    let info: MigrationInfo = serde_json::from_value(json!({"status": "beamed-up"})).unwrap();
    assert_eq!(
        info.status,
        Some(MigrationStatus::Other("beamed-up".into()))
    );
}

#[test]
fn lenient_enums_round_trip() {
    for s in MigrationStatus::KNOWN {
        let v = serde_json::to_value(s).unwrap();
        assert_eq!(serde_json::from_value::<MigrationStatus>(v).unwrap(), *s);
        assert!(s.is_known());
    }
    for c in MigrationCapability::KNOWN {
        assert_eq!(MigrationCapability::from_wire(c.as_str()), *c);
    }
    for r in RunState::KNOWN {
        assert_eq!(r.as_str().parse::<RunState>().unwrap(), *r);
    }
    let other = RunState::Other("quantum-tunnelling".into());
    assert_eq!(
        serde_json::to_value(&other).unwrap(),
        json!("quantum-tunnelling")
    );
    assert!(!other.is_known());
    assert_eq!(other.to_string(), "quantum-tunnelling");
    assert_eq!(
        serde_json::to_value(MigrationCapability::PauseBeforeSwitchover).unwrap(),
        json!("pause-before-switchover")
    );
    assert_eq!(
        MigrationCapability::from("zero-copy-send"),
        MigrationCapability::ZeroCopySend
    );
    assert_eq!(RunState::from("finish-migrate"), RunState::FinishMigrate);
}

#[test]
fn status_info_parses() {
    let st: StatusInfo =
        serde_json::from_value(json!({"running": true, "singlestep": false, "status": "running"}))
            .unwrap();
    assert!(st.running);
    assert_eq!(st.status, RunState::Running);
    let st: StatusInfo = serde_json::from_value(json!({"status": "postmigrate"})).unwrap();
    assert!(!st.running);
    assert_eq!(st.status, RunState::Postmigrate);
}

#[test]
fn set_parameters_serialize_only_given_fields_with_qemu_names() {
    let p = MigrateSetParameters {
        max_bandwidth_bytes_per_s: Some(125_000_000),
        downtime_limit_ms: Some(300),
        multifd_channels: Some(4),
        tls_creds: Some(String::new()),
        cpu_throttle_initial_pct: Some(20),
        announce_rounds: Some(5),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({
            "max-bandwidth": 125_000_000,
            "downtime-limit": 300,
            "multifd-channels": 4,
            "tls-creds": "",
            "cpu-throttle-initial": 20,
            "announce-rounds": 5
        })
    );
    assert_eq!(
        serde_json::to_value(MigrateSetParameters::default()).unwrap(),
        json!({})
    );

    // What query-migrate-parameters returns on 7.2 (abridged) reads back,
    // and unknown members are kept for a round trip.
    let q: MigrateSetParameters = serde_json::from_value(json!({
        "cpu-throttle-tailslow": false, "xbzrle-cache-size": 67108864,
        "cpu-throttle-initial": 20, "announce-max": 550, "decompress-threads": 2,
        "compress-threads": 8, "compress-level": 1, "multifd-channels": 2,
        "multifd-zstd-level": 1, "announce-initial": 50, "block-incremental": false,
        "compress-wait-thread": true, "downtime-limit": 300, "tls-authz": "",
        "multifd-compression": "none", "announce-rounds": 5, "announce-step": 100,
        "tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99,
        "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50,
        "max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10
    }))
    .unwrap();
    assert_eq!(q.max_bandwidth_bytes_per_s, Some(134_217_728));
    assert_eq!(q.downtime_limit_ms, Some(300));
    assert_eq!(q.announce_initial_ms, Some(50));
    assert_eq!(q.max_cpu_throttle_pct, Some(99));
    assert_eq!(q.extra["compress-level"], 1);
    assert_eq!(serde_json::to_value(&q).unwrap()["compress-threads"], 8);
}

#[test]
fn announce_parameters_default_matches_qemu() {
    assert_eq!(
        serde_json::to_value(AnnounceParameters::default()).unwrap(),
        json!({"initial": 50, "max": 550, "rounds": 5, "step": 100})
    );
}

#[test]
fn dirty_rate_info_parses() {
    let d: DirtyRateInfo = serde_json::from_value(json!({
        "status": "measured", "sample-pages": 512, "dirty-rate": 108,
        "mode": "page-sampling", "start-time": 1693900454, "calc-time": 1
    }))
    .unwrap();
    assert_eq!(d.status, DirtyRateStatus::Measured);
    assert_eq!(d.dirty_rate_mib_per_s, Some(108));
    assert_eq!(d.calc_time, Some(1));
    let d: DirtyRateInfo = serde_json::from_value(json!({"status": "unstarted"})).unwrap();
    assert_eq!(d.dirty_rate_mib_per_s, None);
}

#[test]
fn greeting_and_event_from_value() {
    let g = Greeting::from_value(&json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}})).unwrap();
    assert_eq!(g.version.triple(), (7, 2, 0));
    assert!(g.version.at_least(7, 0));
    assert!(!g.version.at_least(8, 0));
    assert_eq!(g.version.to_string(), "7.2.0 (Debian 1:7.2+dfsg-7)");
    assert!(Greeting::from_value(&json!({"return": {}})).is_none());

    let e = Event::from_value(&json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1700000000, "microseconds": 12}})).unwrap();
    assert!(e.is("SHUTDOWN"));
    assert_eq!(e.timestamp.unwrap().seconds, 1_700_000_000);
    #[derive(serde::Deserialize)]
    struct Shutdown {
        guest: bool,
    }
    assert!(e.data_as::<Shutdown>().unwrap().guest);
    let e = Event::from_value(&json!({"event": "STOP"})).unwrap();
    assert_eq!(e.data, serde_json::Value::Null);
    assert_eq!(e.timestamp, None);
    assert!(Event::from_value(&json!({"event": 5})).is_none());
}
