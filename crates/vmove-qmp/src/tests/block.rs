//! Block wrappers: the commands they send (fake), the real replies and events of QEMU
//! 10.0.2 they parse (`testdata/qemu-10.0.2-block.jsonl`, recorded from a mirror over
//! NBD with TLS between two QEMUs), and event waiting.

use std::time::Duration;

use serde_json::{json, Value};

use super::within;
use crate::fake::{FakeQmp, Reply};
use crate::{
    BlockExportInfo, BlockInfo, BlockJobEventKind, BlockJobInfo, BlockNodeInfo, BlockdevMirror,
    Event, JobInfo, JobStatus, JobType, MirrorCopyMode, MirrorSyncMode, NbdAddr, NbdClient,
    NbdExport, NbdServerStart, Qmp, QmpError,
};

/// The recorded message with this label.
fn recorded(label: &str) -> Value {
    include_str!("testdata/qemu-10.0.2-block.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .find(|v| v["label"] == label)
        .unwrap_or_else(|| panic!("no recorded {label}"))["msg"]
        .clone()
}

fn ret<T: serde::de::DeserializeOwned>(label: &str) -> T {
    serde_json::from_value(recorded(label)["return"].clone()).expect(label)
}

fn event(label: &str) -> Event {
    Event::from_value(&recorded(label)).expect(label)
}

fn error_class(label: &str) -> (String, String) {
    let e = &recorded(label)["error"];
    (
        e["class"].as_str().unwrap().into(),
        e["desc"].as_str().unwrap().into(),
    )
}

#[test]
fn block_jobs_of_qemu_10() {
    let running: Vec<BlockJobInfo> = ret("query-block-jobs running");
    let j = &running[0];
    assert_eq!(j.job_type, JobType::Mirror);
    assert_eq!(j.device, "vmove-mirror-disk0");
    assert_eq!((j.len, j.offset, j.speed), (64 << 20, 16 << 20, 8 << 20));
    assert_eq!(j.remaining(), 48 << 20);
    assert_eq!(j.status, JobStatus::Running);
    assert!(!j.ready && !j.paused);
    assert_eq!(j.io_status, "ok");
    assert_eq!(
        (j.auto_finalize, j.auto_dismiss, j.actively_synced),
        (Some(true), Some(true), Some(false))
    );
    assert!(j.extra.is_empty(), "unmodelled: {:?}", j.extra);

    let ready: Vec<BlockJobInfo> = ret("query-block-jobs ready");
    assert!(ready[0].ready && ready[0].status == JobStatus::Ready);
    assert_eq!(ready[0].remaining(), 0);
    // Just after block-job-change to write-blocking and a guest write: the write went
    // to both sides (len and offset grew by it), but the job has not run its loop since
    // the change, so it does not count itself actively synced yet.
    let wb: Vec<BlockJobInfo> = ret("query-block-jobs ready write-blocking");
    assert_eq!((wb[0].len, wb[0].remaining()), ((64 << 20) + 4096, 0));
    assert_eq!(wb[0].actively_synced, Some(false));

    let gone: Vec<BlockJobInfo> = ret("query-block-jobs after cancel");
    assert!(gone.is_empty());

    let jobs: Vec<JobInfo> = ret("query-jobs running");
    assert_eq!(jobs[0].id, "vmove-mirror-disk0");
    assert_eq!(jobs[0].job_type, JobType::Mirror);
    assert_eq!(jobs[0].total_progress, 64 << 20);
    assert!(jobs[0].current_progress > 0 && jobs[0].error.is_none());
    let concluded: Vec<JobInfo> = ret("query-jobs concluded");
    assert_eq!(concluded[0].status, JobStatus::Concluded);
    assert!(concluded[0].status.is_finished());
    assert_eq!(concluded[0].error.as_deref(), Some("Operation canceled"));
}

#[test]
fn block_nodes_and_exports_of_qemu_10() {
    let nodes: Vec<BlockNodeInfo> = ret("query-named-block-nodes flat");
    let top = nodes.iter().find(|n| n.node_name == "disk0").unwrap();
    assert_eq!(top.drv, "raw");
    assert_eq!(top.active, Some(true));
    assert!(top.cache.writeback && !top.cache.direct);
    assert_eq!(top.virtual_size(), Some(64 << 20));
    assert!(nodes.iter().any(|n| n.drv == "file"));

    let block: Vec<BlockInfo> = ret("query-block");
    // A -blockdev disk: the backend has no name, the node has ours.
    assert_eq!(block[0].device, "");
    assert_eq!(
        block[0].qdev.as_deref(),
        Some("/machine/peripheral/vblk0/virtio-backend")
    );
    assert_eq!(block[0].inserted.as_ref().unwrap().node_name, "disk0");

    let exports: Vec<BlockExportInfo> = ret("query-block-exports");
    assert_eq!(exports[0].id, "vmove-export-disk0");
    assert_eq!(exports[0].export_type, "nbd");
    assert_eq!(exports[0].node_name, "disk0");
    assert!(!exports[0].shutting_down);
}

#[test]
fn block_job_events_of_qemu_10() {
    let r = event("event BLOCK_JOB_READY").block_job().unwrap();
    assert_eq!(r.kind, BlockJobEventKind::Ready);
    assert_eq!(r.job_id, "vmove-mirror-disk0");
    assert_eq!(r.job_type, Some(JobType::Mirror));
    assert_eq!((r.len, r.offset), (Some(64 << 20), Some(64 << 20)));

    let c = event("event BLOCK_JOB_COMPLETED after ready cancel")
        .block_job()
        .unwrap();
    assert_eq!((c.kind, c.error), (BlockJobEventKind::Completed, None));

    let failed = event("event BLOCK_JOB_COMPLETED with error")
        .block_job()
        .unwrap();
    assert_eq!(failed.kind, BlockJobEventKind::Completed);
    assert_eq!(failed.error.as_deref(), Some("Input/output error"));

    for label in [
        "event BLOCK_JOB_CANCELLED",
        "event BLOCK_JOB_CANCELLED after force cancel",
    ] {
        let x = event(label).block_job().unwrap();
        assert_eq!(x.kind, BlockJobEventKind::Cancelled, "{label}");
        assert!(x.offset < x.len, "{label}: cancelled mid-copy");
    }

    let e = event("event BLOCK_JOB_ERROR").block_job().unwrap();
    assert_eq!(e.kind, BlockJobEventKind::Error);
    assert_eq!(
        (e.operation.as_deref(), e.action.as_deref()),
        (Some("write"), Some("report"))
    );

    let s = event("event JOB_STATUS_CHANGE created");
    assert_eq!(
        s.job_status_change(),
        Some(("vmove-mirror-disk0".into(), JobStatus::Created))
    );
    assert!(s.block_job().is_none());
    let d = event("event BLOCK_EXPORT_DELETED");
    assert_eq!(d.block_export_deleted(), Some("vmove-export-disk0"));
    assert_eq!(s.block_export_deleted(), None);
}

#[test]
fn errors_of_qemu_10_that_callers_tell_apart() {
    // Cleanup is idempotent by recognising these.
    assert_eq!(
        error_class("block-job-cancel unknown job").0,
        "DeviceNotActive"
    );
    for label in [
        "blockdev-del unknown node",
        "nbd-server-stop not running",
        "block-export-del unknown",
        "block-export-add by drive id error",
        "block-job-change write-blocking to background error",
    ] {
        assert_eq!(error_class(label).0, "GenericError", "{label}");
    }
    assert!(
        error_class("block-job-change write-blocking to background error")
            .1
            .contains("not implemented")
    );
}

#[test]
fn lenient_block_job_info() {
    let j: BlockJobInfo = serde_json::from_value(json!({
        "type": "x-future-job", "device": "j", "len": -1, "offset": "junk",
        "status": "x-new-state", "ready": "yes", "x-extra": 1
    }))
    .unwrap();
    assert_eq!(j.job_type, JobType::Other("x-future-job".into()));
    assert_eq!(j.status, JobStatus::Other("x-new-state".into()));
    assert_eq!((j.len, j.offset, j.ready), (0, 0, false));
    assert_eq!(j.extra.get("x-extra"), Some(&json!(1)));
}

#[tokio::test]
async fn block_wrappers_send_expected_commands() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = within("connect", Qmp::connect(fake.path(), Duration::from_secs(5)))
        .await
        .unwrap();
    let tcp = NbdAddr::Inet {
        host: "192.0.2.7".into(),
        port: 10809,
    };
    qmp.object_add_tls_creds_x509("vmove-nbd-tls", "/run/x/tls-server", "server", true)
        .await
        .unwrap();
    qmp.object_add_authz_simple("vmove-nbd-authz", "CN=host1")
        .await
        .unwrap();
    qmp.nbd_server_start(&NbdServerStart {
        addr: tcp.clone(),
        tls_creds: Some("vmove-nbd-tls".into()),
        tls_authz: Some("vmove-nbd-authz".into()),
        max_connections: None,
    })
    .await
    .unwrap();
    qmp.nbd_server_start(&NbdServerStart {
        addr: NbdAddr::Unix {
            path: "/run/nbd.sock".into(),
        },
        tls_creds: None,
        tls_authz: None,
        max_connections: Some(4),
    })
    .await
    .unwrap();
    qmp.block_export_add_nbd(&NbdExport {
        id: "vmove-export-disk0".into(),
        node_name: "disk0".into(),
        name: Some("disk0".into()),
        writable: true,
        allow_inactive: None,
    })
    .await
    .unwrap();
    qmp.blockdev_add_nbd(&NbdClient {
        node_name: "vmove-nbd-disk0".into(),
        server: tcp,
        export: "disk0".into(),
        tls_creds: Some("vmove-nbd-tls".into()),
        tls_hostname: Some("host2".into()),
        reconnect_delay_s: None,
    })
    .await
    .unwrap();
    qmp.blockdev_mirror(&BlockdevMirror {
        job_id: Some("vmove-mirror-disk0".into()),
        device: "disk0".into(),
        target: "vmove-nbd-disk0".into(),
        sync: MirrorSyncMode::Full,
        copy_mode: Some(MirrorCopyMode::Background),
        speed: Some(100 << 20),
        auto_dismiss: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    qmp.block_job_change_copy_mode("vmove-mirror-disk0", &MirrorCopyMode::WriteBlocking)
        .await
        .unwrap();
    qmp.block_job_set_speed("vmove-mirror-disk0", 0)
        .await
        .unwrap();
    qmp.block_job_cancel("vmove-mirror-disk0", false)
        .await
        .unwrap();
    qmp.block_job_cancel("vmove-mirror-disk0", true)
        .await
        .unwrap();
    qmp.block_job_complete("vmove-mirror-disk0").await.unwrap();
    qmp.job_dismiss("vmove-mirror-disk0").await.unwrap();
    qmp.blockdev_del("vmove-nbd-disk0").await.unwrap();
    qmp.block_export_del("vmove-export-disk0", false)
        .await
        .unwrap();
    qmp.block_export_del("vmove-export-disk0", true)
        .await
        .unwrap();
    qmp.nbd_server_stop().await.unwrap();
    qmp.object_del("vmove-nbd-tls").await.unwrap();
    for cmd in [
        "query-block-jobs",
        "query-jobs",
        "query-named-block-nodes",
        "query-block",
        "query-block-exports",
    ] {
        fake.push_reply(cmd, Reply::Return(json!([])));
    }
    assert!(qmp.query_block_jobs().await.unwrap().is_empty());
    assert!(qmp.query_jobs().await.unwrap().is_empty());
    assert!(qmp.query_named_block_nodes().await.unwrap().is_empty());
    assert!(qmp.query_block().await.unwrap().is_empty());
    assert!(qmp.query_block_exports().await.unwrap().is_empty());

    let sent: Vec<(String, Value)> = fake
        .commands()
        .into_iter()
        .skip(1)
        .map(|c| (c.name, c.arguments.unwrap_or(Value::Null)))
        .collect();
    let job = json!({"device": "vmove-mirror-disk0"});
    let expect = vec![
        (
            "object-add",
            json!({"qom-type": "tls-creds-x509", "id": "vmove-nbd-tls", "dir": "/run/x/tls-server", "endpoint": "server", "verify-peer": true}),
        ),
        (
            "object-add",
            json!({"qom-type": "authz-simple", "id": "vmove-nbd-authz", "identity": "CN=host1"}),
        ),
        (
            "nbd-server-start",
            json!({"addr": {"type": "inet", "data": {"host": "192.0.2.7", "port": "10809"}}, "tls-creds": "vmove-nbd-tls", "tls-authz": "vmove-nbd-authz"}),
        ),
        (
            "nbd-server-start",
            json!({"addr": {"type": "unix", "data": {"path": "/run/nbd.sock"}}, "max-connections": 4}),
        ),
        (
            "block-export-add",
            json!({"type": "nbd", "id": "vmove-export-disk0", "node-name": "disk0", "name": "disk0", "writable": true}),
        ),
        (
            "blockdev-add",
            json!({"driver": "nbd", "node-name": "vmove-nbd-disk0", "server": {"type": "inet", "host": "192.0.2.7", "port": "10809"}, "export": "disk0", "tls-creds": "vmove-nbd-tls", "tls-hostname": "host2"}),
        ),
        (
            "blockdev-mirror",
            json!({"job-id": "vmove-mirror-disk0", "device": "disk0", "target": "vmove-nbd-disk0", "sync": "full", "speed": 104857600, "copy-mode": "background", "auto-dismiss": false}),
        ),
        (
            "block-job-change",
            json!({"id": "vmove-mirror-disk0", "type": "mirror", "copy-mode": "write-blocking"}),
        ),
        (
            "block-job-set-speed",
            json!({"device": "vmove-mirror-disk0", "speed": 0}),
        ),
        ("block-job-cancel", job.clone()),
        (
            "block-job-cancel",
            json!({"device": "vmove-mirror-disk0", "force": true}),
        ),
        ("block-job-complete", job),
        ("job-dismiss", json!({"id": "vmove-mirror-disk0"})),
        ("blockdev-del", json!({"node-name": "vmove-nbd-disk0"})),
        ("block-export-del", json!({"id": "vmove-export-disk0"})),
        (
            "block-export-del",
            json!({"id": "vmove-export-disk0", "mode": "hard"}),
        ),
        ("nbd-server-stop", Value::Null),
        ("object-del", json!({"id": "vmove-nbd-tls"})),
        ("query-block-jobs", Value::Null),
        ("query-jobs", Value::Null),
        ("query-named-block-nodes", json!({"flat": true})),
        ("query-block", Value::Null),
        ("query-block-exports", Value::Null),
    ];
    let expect: Vec<(String, Value)> = expect
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
    assert_eq!(sent, expect);
}

#[tokio::test]
async fn wait_event_picks_times_out_and_sees_close() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = within("connect", Qmp::connect(fake.path(), Duration::from_secs(5)))
        .await
        .unwrap();
    let mut events = qmp.subscribe();
    fake.emit_event("JOB_STATUS_CHANGE", json!({"id": "j", "status": "running"}));
    fake.emit_event(
        "BLOCK_JOB_READY",
        json!({"device": "other", "type": "mirror", "len": 1, "offset": 1, "speed": 0}),
    );
    fake.emit_event(
        "BLOCK_JOB_READY",
        json!({"device": "j", "type": "mirror", "len": 5, "offset": 5, "speed": 0}),
    );
    let ready = qmp
        .wait_event(&mut events, Duration::from_secs(10), "ready", |e| {
            e.block_job()
                .filter(|b| b.job_id == "j" && b.kind == BlockJobEventKind::Ready)
        })
        .await
        .unwrap();
    assert_eq!(ready.len, Some(5));

    let err = qmp
        .wait_event(&mut events, Duration::from_millis(50), "j cancelled", |e| {
            e.block_job()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QmpError::Timeout { cmd } if cmd == "event j cancelled"),
        "{err:?}"
    );

    // An event sent just before the connection closes is still seen; then Closed.
    fake.emit_event(
        "BLOCK_JOB_CANCELLED",
        json!({"device": "j", "type": "mirror", "len": 5, "offset": 2, "speed": 0}),
    );
    fake.disconnect();
    within("closed", qmp.closed()).await;
    let c = qmp
        .wait_event(&mut events, Duration::from_secs(10), "cancelled", |e| {
            e.block_job()
        })
        .await
        .unwrap();
    assert_eq!(c.kind, BlockJobEventKind::Cancelled);
    let err = qmp
        .wait_event(&mut events, Duration::from_secs(10), "anything", |_| {
            Some(())
        })
        .await
        .unwrap_err();
    assert!(err.is_closed(), "{err:?}");
}

/// A listening socket passed with `getfd`: QEMU's `SocketAddressLegacy` / `SocketAddress`
/// spell it `fd` with the name in `str`.
#[test]
fn nbd_address_of_a_passed_socket() {
    let a = NbdAddr::Fd {
        name: "vmove-nbd-listener".into(),
    };
    assert_eq!(
        a.legacy(),
        json!({"type": "fd", "data": {"str": "vmove-nbd-listener"}})
    );
    assert_eq!(a.flat(), json!({"type": "fd", "str": "vmove-nbd-listener"}));
    let start = NbdServerStart {
        addr: a,
        tls_creds: Some("vmove-tls".into()),
        tls_authz: Some("vmove-nbd-authz".into()),
        max_connections: None,
    };
    assert_eq!(
        start.to_args(),
        json!({"addr": {"type": "fd", "data": {"str": "vmove-nbd-listener"}}, "tls-creds": "vmove-tls", "tls-authz": "vmove-nbd-authz"})
    );
}
