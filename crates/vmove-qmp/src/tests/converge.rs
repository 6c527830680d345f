//! The convergence primitives: post-copy recovery commands, throttle and
//! dirty-limit parameters, capability probing, and QEMU 10.0.2's own
//! `query-migrate` replies through throttling, post-copy, a pause and a
//! recovery (captured from two real QEMUs migrating the lab guest).

use std::time::Duration;

use serde_json::{json, Value};

use super::within;
use crate::fake::{FakeQmp, Reply};
use crate::{MigrateSetParameters, MigrationCapability, MigrationInfo, MigrationStatus, Qmp};

async fn connect(fake: &FakeQmp) -> Qmp {
    within("connect", Qmp::connect(fake.path(), Duration::from_secs(5)))
        .await
        .unwrap()
}

fn sent(fake: &FakeQmp) -> Vec<(String, Option<Value>)> {
    fake.commands()
        .into_iter()
        .filter(|c| c.name != "qmp_capabilities")
        .map(|c| (c.name, c.arguments))
        .collect()
}

#[tokio::test]
async fn postcopy_recovery_commands() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    qmp.migrate_start_postcopy().await.unwrap();
    qmp.migrate_pause().await.unwrap();
    qmp.migrate_recover("tcp:10.0.0.2:4445").await.unwrap();
    qmp.migrate_resume("tcp:10.0.0.2:4445").await.unwrap();
    assert_eq!(
        sent(&fake),
        vec![
            ("migrate-start-postcopy".to_string(), None),
            ("migrate-pause".to_string(), None),
            (
                "migrate-recover".to_string(),
                Some(json!({"uri": "tcp:10.0.0.2:4445"}))
            ),
            (
                "migrate".to_string(),
                Some(json!({"uri": "tcp:10.0.0.2:4445", "resume": true}))
            ),
        ]
    );

    // QEMU's refusals come back as errors with its reason, the connection lives on.
    fake.push_reply(
        "migrate-recover",
        Reply::error(
            "GenericError",
            "Migrate recover can only be run when postcopy is paused.",
        ),
    );
    let err = qmp.migrate_recover("tcp:10.0.0.2:1").await.unwrap_err();
    assert!(err.is_qemu_class("GenericError"), "{err:?}");
    assert!(err.to_string().contains("postcopy is paused"), "{err}");
    fake.push_reply(
        "migrate_cancel",
        Reply::error(
            "GenericError",
            "Postcopy migration in progress, cannot cancel.",
        ),
    );
    assert!(qmp.migrate_cancel().await.is_err());
    qmp.migrate_pause().await.unwrap();
}

#[tokio::test]
async fn out_of_band_recovery_when_negotiated() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = within("connect", Qmp::connect_oob(fake.path(), Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(qmp.is_oob());
    qmp.migrate_recover("tcp:10.0.0.2:4446").await.unwrap();
    qmp.migrate_pause().await.unwrap();
    // Everything else stays in-band.
    qmp.migrate_resume("tcp:10.0.0.2:4446").await.unwrap();
    let cmds: Vec<(String, bool, Option<Value>)> = fake
        .commands()
        .into_iter()
        .map(|c| (c.name, c.oob, c.arguments))
        .collect();
    assert_eq!(
        cmds,
        vec![
            ("qmp_capabilities".to_string(), false, Some(json!({"enable": ["oob"]}))),
            ("migrate-recover".to_string(), true, Some(json!({"uri": "tcp:10.0.0.2:4446"}))),
            ("migrate-pause".to_string(), true, None),
            ("migrate".to_string(), false, Some(json!({"uri": "tcp:10.0.0.2:4446", "resume": true}))),
        ]
    );
    // The raw message uses QEMU's key.
    assert_eq!(fake.commands()[1].raw["exec-oob"], "migrate-recover");

    // Not negotiated: execute_oob refuses without sending; the wrappers stay in-band.
    let plain = FakeQmp::start().await.unwrap();
    let q = connect(&plain).await;
    assert!(!q.is_oob());
    let err = q.execute_oob("migrate-pause", None).await.unwrap_err();
    assert!(matches!(err, crate::QmpError::Protocol(_)), "{err:?}");
    q.migrate_pause().await.unwrap();
    assert_eq!(
        plain.commands().iter().map(|c| (c.name.as_str(), c.oob)).collect::<Vec<_>>(),
        [("qmp_capabilities", false), ("migrate-pause", false)]
    );
    assert_eq!(plain.commands()[0].arguments, None);

    // A QEMU that does not offer oob: connect_oob falls back to in-band.
    let old = FakeQmp::builder()
        .greeting(json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": []}}))
        .start()
        .await
        .unwrap();
    let q = within("connect", Qmp::connect_oob(old.path(), Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(!q.is_oob());
    assert_eq!(old.commands()[0].arguments, None);
}

#[tokio::test]
async fn throttle_and_dirty_limit_parameters_use_qemu_names() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    // Parked auto-converge, then unparked, then dirty-limit.
    qmp.migrate_set_parameters(&MigrateSetParameters {
        cpu_throttle_initial_pct: Some(1),
        cpu_throttle_increment_pct: Some(1),
        max_cpu_throttle_pct: Some(1),
        cpu_throttle_tailslow: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    qmp.migrate_set_parameters(&MigrateSetParameters {
        max_cpu_throttle_pct: Some(50),
        cpu_throttle_increment_pct: Some(20),
        throttle_trigger_threshold_pct: Some(50),
        ..Default::default()
    })
    .await
    .unwrap();
    qmp.migrate_set_parameters(&MigrateSetParameters {
        vcpu_dirty_limit_mb_per_s: Some(16),
        x_vcpu_dirty_limit_period_ms: Some(1000),
        avail_switchover_bandwidth_bytes_per_s: Some(0),
        max_postcopy_bandwidth_bytes_per_s: Some(0),
        downtime_limit_ms: Some(50),
        ..Default::default()
    })
    .await
    .unwrap();
    let args: Vec<Value> = sent(&fake).into_iter().filter_map(|(_, a)| a).collect();
    assert_eq!(
        args,
        vec![
            json!({"cpu-throttle-initial": 1, "cpu-throttle-increment": 1,
                   "cpu-throttle-tailslow": false, "max-cpu-throttle": 1}),
            json!({"throttle-trigger-threshold": 50, "cpu-throttle-increment": 20,
                   "max-cpu-throttle": 50}),
            json!({"downtime-limit": 50, "max-postcopy-bandwidth": 0,
                   "vcpu-dirty-limit": 16, "x-vcpu-dirty-limit-period": 1000,
                   "avail-switchover-bandwidth": 0}),
        ]
    );

    // QEMU 10.0.2's query-migrate-parameters members are typed now.
    fake.push_reply(
        "query-migrate-parameters",
        Reply::Return(json!({"vcpu-dirty-limit": 1, "x-vcpu-dirty-limit-period": 1000,
            "avail-switchover-bandwidth": 0, "max-cpu-throttle": 99, "mode": "normal"})),
    );
    let p = qmp.query_migrate_parameters().await.unwrap();
    assert_eq!(p.vcpu_dirty_limit_mb_per_s, Some(1));
    assert_eq!(p.x_vcpu_dirty_limit_period_ms, Some(1000));
    assert_eq!(p.avail_switchover_bandwidth_bytes_per_s, Some(0));
    assert_eq!(p.max_cpu_throttle_pct, Some(99));
    assert_eq!(p.extra.get("mode"), Some(&json!("normal")));
}

#[tokio::test]
async fn refused_capabilities_reports_qemus_reason_or_restores() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    // Refused: QEMU's reason, nothing to restore.
    fake.push_reply(
        "query-migrate-capabilities",
        Reply::Return(json!([{"capability": "multifd", "state": false}])),
    );
    fake.push_reply(
        "migrate-set-capabilities",
        Reply::error("GenericError", "Postcopy is not yet compatible with multifd"),
    );
    let caps = [
        (MigrationCapability::PostcopyRam, true),
        (MigrationCapability::Multifd, true),
    ];
    let why = qmp.refused_capabilities(&caps).await.unwrap();
    assert_eq!(
        why.as_deref(),
        Some("Postcopy is not yet compatible with multifd")
    );
    // Accepted: the named capabilities go back to what they were.
    fake.push_reply(
        "query-migrate-capabilities",
        Reply::Return(json!([{"capability": "multifd", "state": true},
                             {"capability": "postcopy-ram", "state": false}])),
    );
    assert_eq!(qmp.refused_capabilities(&caps).await.unwrap(), None);
    let sets: Vec<Value> = sent(&fake)
        .into_iter()
        .filter(|(n, _)| n == "migrate-set-capabilities")
        .filter_map(|(_, a)| a)
        .collect();
    assert_eq!(sets.len(), 3, "{sets:?}");
    assert_eq!(
        sets[2],
        json!({"capabilities": [{"capability": "postcopy-ram", "state": false},
                                {"capability": "multifd", "state": true}]})
    );
    // Other failures (here: QEMU gone) are errors.
    fake.push_reply("query-migrate-capabilities", Reply::Close);
    assert!(qmp.refused_capabilities(&caps).await.is_err());
}

/// QEMU 10.0.2, source: pre-copy throttled by auto-converge (30 %).
const SRC_THROTTLED_10_0: &str = r#"{"expected-downtime": 3324, "cpu-throttle-percentage": 30, "status": "active", "setup-time": 8, "total-time": 8896, "ram": {"total": 537403392, "postcopy-requests": 0, "dirty-sync-count": 3, "multifd-bytes": 0, "pages-per-second": 9920, "downtime-bytes": 0, "page-size": 4096, "remaining": 127225856, "postcopy-bytes": 0, "mbps": 325.69488, "transferred": 358314276, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 358313159, "duplicate": 76644, "dirty-pages-rate": 9200, "normal-bytes": 356925440, "normal": 87140}}"#;
/// QEMU 10.0.2, source: post-copy active, the target pulling pages.
const SRC_POSTCOPY_10_0: &str = r#"{"cpu-throttle-percentage": 30, "status": "postcopy-active", "setup-time": 8, "downtime": 1, "total-time": 9948, "ram": {"total": 537403392, "postcopy-requests": 14285, "dirty-sync-count": 4, "multifd-bytes": 0, "pages-per-second": 10540, "downtime-bytes": 0, "page-size": 4096, "remaining": 62992384, "postcopy-bytes": 64359030, "mbps": 346.05071999999996, "transferred": 422703412, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 358313159, "duplicate": 76644, "dirty-pages-rate": 9200, "normal-bytes": 421158912, "normal": 102822}}"#;
/// QEMU 10.0.2, source: post-copy paused by `migrate-pause`.
const SRC_PAUSED_10_0: &str = r#"{"cpu-throttle-percentage": 30, "status": "postcopy-paused", "setup-time": 8, "error-desc": "Postcopy migration is paused by the user", "downtime": 1, "total-time": 10949, "ram": {"total": 537403392, "postcopy-requests": 14285, "dirty-sync-count": 4, "multifd-bytes": 0, "pages-per-second": 10540, "downtime-bytes": 0, "page-size": 4096, "remaining": 62992384, "postcopy-bytes": 64359030, "mbps": 346.05071999999996, "transferred": 422703412, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 358313159, "duplicate": 76644, "dirty-pages-rate": 9200, "normal-bytes": 421158912, "normal": 102822}}"#;
/// QEMU 10.0.2, source: completed after the recovery.
const SRC_COMPLETED_10_0: &str = r#"{"status": "completed", "setup-time": 8, "downtime": 1, "total-time": 11828, "ram": {"total": 537403392, "postcopy-requests": 24650, "dirty-sync-count": 4, "multifd-bytes": 0, "pages-per-second": 17500, "downtime-bytes": 0, "page-size": 4096, "remaining": 0, "postcopy-bytes": 127474516, "mbps": 328.8115776649746, "transferred": 485819106, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 358313159, "duplicate": 76644, "dirty-pages-rate": 0, "normal-bytes": 484151296, "normal": 118201}}"#;
/// QEMU 10.0.2, target: post-copy paused (the target reports little).
const DST_PAUSED_10_0: &str = r#"{"status": "postcopy-paused", "socket-address": [{"port": "58787", "ipv4": true, "host": "127.0.0.1", "type": "inet"}]}"#;

fn info(text: &str) -> MigrationInfo {
    serde_json::from_str(text).unwrap()
}

#[test]
fn qemu_10_replies_through_throttle_postcopy_pause_and_recovery() {
    let t = info(SRC_THROTTLED_10_0);
    assert_eq!(t.status, Some(MigrationStatus::Active));
    assert_eq!(t.cpu_throttle_percentage, Some(30));
    assert_eq!(t.expected_downtime, Some(3324));
    assert_eq!(t.passes(), 3);
    assert_eq!(t.remaining_bytes(), 127_225_856);
    assert_eq!(t.transferred_bytes(), 358_314_276);
    assert_eq!(t.rate_bytes_per_s(), 40_711_860);
    assert_eq!(t.dirty_rate_bytes_per_s(), 9200 * 4096);
    assert!(t.extra.is_empty(), "{:?}", t.extra);
    assert!(!t.status_or_none().is_postcopy());

    let p = info(SRC_POSTCOPY_10_0);
    assert!(p.status_or_none().is_postcopy());
    assert!(!p.status_or_none().is_postcopy_paused());
    let ram = p.ram.clone().unwrap();
    assert_eq!(ram.postcopy_requests, Some(14285));
    assert_eq!(ram.precopy_bytes, Some(358_313_159));
    assert_eq!(ram.postcopy_bytes, Some(64_359_030));
    assert!(p.status_or_none().is_in_progress());

    let paused = info(SRC_PAUSED_10_0);
    assert!(paused.status_or_none().is_postcopy_paused());
    assert!(paused.status_or_none().is_postcopy());
    assert_eq!(
        paused.error_desc.as_deref(),
        Some("Postcopy migration is paused by the user")
    );
    let d = info(DST_PAUSED_10_0);
    assert!(d.status_or_none().is_postcopy_paused());
    assert_eq!(d.remaining_bytes(), 0);
    assert_eq!(d.rate_bytes_per_s(), 0);

    let c = info(SRC_COMPLETED_10_0);
    assert!(c.status_or_none().is_finished());
    assert_eq!(c.ram.unwrap().postcopy_bytes, Some(127_474_516));
    assert_eq!(c.cpu_throttle_percentage, None);
}

#[test]
fn new_statuses_and_dirty_limit_fields_are_lenient() {
    for (wire, postcopy) in [
        ("postcopy-active", true),
        ("postcopy-paused", true),
        ("postcopy-recover-setup", true),
        ("postcopy-recover", true),
        ("device", false),
        ("wait-unplug", false),
        ("x-future-state", false),
    ] {
        let s = MigrationStatus::from_wire(wire);
        assert_eq!(s.is_postcopy(), postcopy, "{wire}");
        assert_eq!(s.as_str(), wire);
    }
    assert!(MigrationStatus::from_wire("device").is_in_progress());
    assert!(!MigrationStatus::from_wire("x-future-state").is_known());
    let i = info(
        r#"{"status": "active", "dirty-limit-throttle-time-per-round": 1500,
            "dirty-limit-ring-full-time": "junk", "blocked-reasons": ["vfio"],
            "ram": {"mbps": -5, "dirty-pages-rate": 10}}"#,
    );
    assert_eq!(i.dirty_limit_throttle_time_per_round_us, Some(1500));
    assert_eq!(i.dirty_limit_ring_full_time_us, None);
    assert_eq!(i.blocked_reasons, Some(vec!["vfio".to_string()]));
    assert_eq!(i.rate_bytes_per_s(), 0);
    assert_eq!(i.dirty_rate_bytes_per_s(), 40960);
}
