//! The typed wrappers send the right command and arguments.

use std::time::Duration;

use serde_json::{json, Value};

use super::within;
use crate::fake::{FakeQmp, Reply};
use crate::{
    AnnounceParameters, MigrateSetParameters, MigrationCapability, MigrationStatus, Qmp, RunState,
};

#[tokio::test]
async fn typed_wrappers_send_expected_commands() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = within("connect", Qmp::connect(fake.path(), Duration::from_secs(5)))
        .await
        .unwrap();

    qmp.stop().await.unwrap();
    qmp.blockdev_set_active(false).await.unwrap();
    qmp.blockdev_set_active(true).await.unwrap();
    qmp.cont().await.unwrap();
    qmp.system_powerdown().await.unwrap();
    qmp.migrate("tcp:10.0.0.2:4444").await.unwrap();
    qmp.migrate_incoming("tcp:0.0.0.0:4444").await.unwrap();
    qmp.migrate_cancel().await.unwrap();
    qmp.migrate_start_postcopy().await.unwrap();
    qmp.migrate_continue(MigrationStatus::PreSwitchover)
        .await
        .unwrap();
    qmp.migrate_set_capabilities(&[
        (MigrationCapability::Events, true),
        (MigrationCapability::Multifd, false),
        (MigrationCapability::Other("future-cap".into()), true),
    ])
    .await
    .unwrap();
    qmp.migrate_set_parameters(&MigrateSetParameters {
        downtime_limit_ms: Some(500),
        ..Default::default()
    })
    .await
    .unwrap();
    qmp.calc_dirty_rate(2).await.unwrap();
    qmp.announce_self(&AnnounceParameters {
        interfaces: Some(vec!["net0".into()]),
        ..Default::default()
    })
    .await
    .unwrap();
    qmp.closefd("migfd").await.unwrap();
    qmp.remove_fd(3, Some(21)).await.unwrap();

    fake.push_reply(
        "query-cpus-fast",
        Reply::Return(json!([
            {"thread-id": 4242, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0},
             "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"},
            {"thread-id": 4243, "props": {"core-id": 0, "thread-id": 0, "socket-id": 1},
             "qom-path": "/machine/unattached/device[1]", "cpu-index": 1, "target": "x86_64"}
        ])),
    );
    let cpus = qmp.query_cpus_fast().await.unwrap();
    assert_eq!(cpus.len(), 2);
    assert_eq!(cpus[1].thread_id, 4243);
    assert_eq!(cpus[1].props.as_ref().unwrap().socket_id, Some(1));

    fake.push_reply(
        "query-dirty-rate",
        Reply::Return(json!({"status": "measuring", "sample-pages": 512, "mode": "page-sampling", "start-time": 5, "calc-time": 2})),
    );
    let d = qmp.query_dirty_rate().await.unwrap();
    assert_eq!(d.status, crate::DirtyRateStatus::Measuring);

    fake.push_reply(
        "query-migrate-capabilities",
        Reply::Return(json!([{"state": true, "capability": "events"}, {"state": false, "capability": "x-new"}])),
    );
    let caps = qmp.query_migrate_capabilities().await.unwrap();
    assert_eq!(caps[0].capability, MigrationCapability::Events);
    assert_eq!(
        caps[1].capability,
        MigrationCapability::Other("x-new".into())
    );

    fake.push_reply(
        "query-migrate-parameters",
        Reply::Return(json!({"max-bandwidth": 1000})),
    );
    let p = qmp.query_migrate_parameters().await.unwrap();
    assert_eq!(p.max_bandwidth_bytes_per_s, Some(1000));
    assert_eq!(qmp.query_migrate().await.unwrap().status, None);
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);
    assert_eq!(qmp.query_version().await.unwrap().triple(), (7, 2, 0));

    // A reply of the wrong shape is a Decode error; the connection lives on.
    fake.push_reply("query-cpus-fast", Reply::Return(json!("not a list")));
    let err = qmp.query_cpus_fast().await.unwrap_err();
    assert!(matches!(err, crate::QmpError::Decode { .. }), "{err:?}");
    qmp.quit().await.unwrap();

    let sent: Vec<(String, Option<Value>)> = fake
        .commands()
        .into_iter()
        .map(|c| (c.name, c.arguments))
        .collect();
    let expect: Vec<(&str, Option<Value>)> = vec![
        ("qmp_capabilities", None),
        ("stop", None),
        ("blockdev-set-active", Some(json!({"active": false}))),
        ("blockdev-set-active", Some(json!({"active": true}))),
        ("cont", None),
        ("system_powerdown", None),
        ("migrate", Some(json!({"uri": "tcp:10.0.0.2:4444"}))),
        ("migrate-incoming", Some(json!({"uri": "tcp:0.0.0.0:4444"}))),
        ("migrate_cancel", None),
        ("migrate-start-postcopy", None),
        ("migrate-continue", Some(json!({"state": "pre-switchover"}))),
        (
            "migrate-set-capabilities",
            Some(json!({"capabilities": [
                {"capability": "events", "state": true},
                {"capability": "multifd", "state": false},
                {"capability": "future-cap", "state": true}
            ]})),
        ),
        (
            "migrate-set-parameters",
            Some(json!({"downtime-limit": 500})),
        ),
        ("calc-dirty-rate", Some(json!({"calc-time": 2}))),
        (
            "announce-self",
            Some(
                json!({"initial": 50, "max": 550, "rounds": 5, "step": 100, "interfaces": ["net0"]}),
            ),
        ),
        ("closefd", Some(json!({"fdname": "migfd"}))),
        ("remove-fd", Some(json!({"fdset-id": 3, "fd": 21}))),
        ("query-cpus-fast", None),
        ("query-dirty-rate", None),
        ("query-migrate-capabilities", None),
        ("query-migrate-parameters", None),
        ("query-migrate", None),
        ("query-status", None),
        ("query-version", None),
        ("query-cpus-fast", None),
        ("quit", None),
    ];
    let expect: Vec<(String, Option<Value>)> = expect
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
    assert_eq!(sent, expect);

    // Ids are unique and increasing.
    let ids: Vec<u64> = fake
        .commands()
        .iter()
        .map(|c| c.id.as_ref().and_then(Value::as_u64).unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}
