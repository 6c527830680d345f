//! Against a real `qemu-system-x86_64 -machine none`.

use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::within;
use crate::{MigrateSetParameters, MigrationCapability, MigrationStatus, Qmp};

const QEMU: &str = "qemu-system-x86_64";

/// Kills QEMU when the test ends, whether it passed or not.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn real_qemu_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let log = std::fs::File::create(dir.path().join("qemu.log")).unwrap();
    let spawned = Command::new(QEMU)
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED real_qemu_roundtrip: {QEMU} not installed");
            return;
        }
        Err(e) => panic!("spawn {QEMU}: {e}"),
    };
    let mut guard = QemuGuard(child);

    let qmp = match Qmp::connect_retry(&sock, Duration::from_secs(20)).await {
        Ok(q) => q,
        Err(e) => {
            let log = std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default();
            panic!("connect to qemu: {e}\nqemu log:\n{log}");
        }
    };
    qmp.set_default_timeout(Duration::from_secs(10));

    let v = qmp.query_version().await.unwrap();
    assert!(v.qemu.major >= 7, "{v}");
    assert_eq!(v.triple(), qmp.greeting().version.triple());

    let st = qmp.query_status().await.unwrap();
    eprintln!("real qemu {v}: status {st:?}");
    assert!(st.status.is_known(), "{st:?}");

    let mig = qmp.query_migrate().await.unwrap();
    assert!(
        matches!(mig.status, None | Some(MigrationStatus::None)),
        "{mig:?}"
    );
    assert!(mig.extra.is_empty(), "{:?}", mig.extra);

    // Names and units are the ones QEMU accepts.
    qmp.migrate_set_capabilities(&[(MigrationCapability::Events, true)])
        .await
        .unwrap();
    let caps = qmp.query_migrate_capabilities().await.unwrap();
    assert!(caps
        .iter()
        .any(|c| c.capability == MigrationCapability::Events && c.state));
    assert!(
        caps.iter().all(|c| c.capability.is_known()),
        "unknown capability from qemu: {caps:?}"
    );
    qmp.migrate_set_parameters(&MigrateSetParameters {
        downtime_limit_ms: Some(321),
        max_bandwidth_bytes_per_s: Some(64 << 20),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = qmp.query_migrate_parameters().await.unwrap();
    assert_eq!(p.downtime_limit_ms, Some(321));
    assert_eq!(p.max_bandwidth_bytes_per_s, Some(64 << 20));

    // SCM_RIGHTS: QEMU refuses getfd/add-fd when no fd came with them.
    let (_r, w) = nix::unistd::pipe().unwrap();
    qmp.getfd(w.as_fd(), "vmove-test").await.unwrap();
    qmp.closefd("vmove-test").await.unwrap();
    let info = qmp.add_fd(w.as_fd(), None, Some("vmove")).await.unwrap();
    qmp.remove_fd(info.fdset_id, None).await.unwrap();

    let err = qmp.execute("no-such-command", None).await.unwrap_err();
    assert!(err.is_qemu_class("CommandNotFound"), "{err:?}");

    qmp.query_cpus_fast().await.unwrap();

    qmp.quit().await.unwrap();
    within("closed() after quit", qmp.closed()).await;
    assert!(qmp.is_closed());
    // QEMU exits on its own after quit; the guard kills it if not.
    let status = within("qemu exit", async {
        loop {
            if let Some(status) = guard.0.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(status.success(), "{status:?}");
}
