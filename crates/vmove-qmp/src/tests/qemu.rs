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

/// A `-machine none` QEMU and its QMP connection; `None` when QEMU is not installed.
async fn spawn_none(test: &str, dir: &std::path::Path) -> Option<(QemuGuard, Qmp)> {
    let sock = dir.join("qmp.sock");
    let log = std::fs::File::create(dir.join("qemu.log")).unwrap();
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
            eprintln!("SKIPPED {test}: {QEMU} not installed");
            return None;
        }
        Err(e) => panic!("spawn {QEMU}: {e}"),
    };
    let guard = QemuGuard(child);
    let qmp = match Qmp::connect_retry(&sock, Duration::from_secs(20)).await {
        Ok(q) => q,
        Err(e) => {
            let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
            panic!("connect to qemu: {e}\nqemu log:\n{log}");
        }
    };
    qmp.set_default_timeout(Duration::from_secs(10));
    Some((guard, qmp))
}

/// The convergence primitives against the real thing: which capability combinations
/// QEMU accepts, the parked throttle, and the post-copy commands' refusals when no
/// post-copy runs (two-QEMU migrations: `crates/vmove/tests/converge_qemu.rs`).
#[tokio::test]
async fn real_qemu_convergence_primitives() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_guard, qmp)) = spawn_none("real_qemu_convergence_primitives", dir.path()).await
    else {
        return;
    };
    let v = qmp.query_version().await.unwrap();
    use MigrationCapability as C;
    // Under TCG (what -machine none runs) dirty-limit is refused, with QEMU's reason.
    let why = qmp
        .refused_capabilities(&[(C::DirtyLimit, true)])
        .await
        .unwrap();
    assert!(why.as_deref().unwrap_or("").contains("dirty-ring-size"), "{why:?}");
    let why = qmp
        .refused_capabilities(&[(C::PostcopyRam, true), (C::Multifd, true)])
        .await
        .unwrap();
    if v.triple() < (10, 1, 0) {
        assert_eq!(why.as_deref(), Some("Postcopy is not yet compatible with multifd"), "{v}");
    }
    let why = qmp
        .refused_capabilities(&[(C::PostcopyRam, true), (C::PostcopyPreempt, true)])
        .await
        .unwrap();
    assert_eq!(why, None, "{v}");
    let why = qmp
        .refused_capabilities(&[(C::AutoConverge, true)])
        .await
        .unwrap();
    assert_eq!(why, None, "{v}");
    // Accepted combinations are put back: nothing stays enabled.
    let caps = qmp.query_migrate_capabilities().await.unwrap();
    assert!(caps.iter().all(|c| !c.state), "{caps:?}");

    // The parked throttle (1 %) and QEMU's own rule max >= initial.
    qmp.migrate_set_parameters(&MigrateSetParameters {
        cpu_throttle_initial_pct: Some(1),
        cpu_throttle_increment_pct: Some(1),
        max_cpu_throttle_pct: Some(1),
        cpu_throttle_tailslow: Some(false),
        vcpu_dirty_limit_mb_per_s: Some(1 << 20),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = qmp.query_migrate_parameters().await.unwrap();
    assert_eq!(
        (p.cpu_throttle_initial_pct, p.cpu_throttle_increment_pct, p.max_cpu_throttle_pct),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(p.vcpu_dirty_limit_mb_per_s, Some(1 << 20));
    assert!(p.x_vcpu_dirty_limit_period_ms.is_some(), "{p:?}");
    assert!(p.avail_switchover_bandwidth_bytes_per_s.is_some(), "{p:?}");
    let err = qmp
        .migrate_set_parameters(&MigrateSetParameters {
            cpu_throttle_initial_pct: Some(20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_cpu_throttle"), "{err}");

    // Out-of-band on a second connection: QEMU offers it, accepts it, and answers
    // exec-oob (here with its refusal, as nothing is paused).
    let sock = dir.path().join("qmp.sock");
    drop(qmp);
    let qmp = Qmp::connect_retry_oob(&sock, Duration::from_secs(20)).await.unwrap();
    assert!(qmp.is_oob(), "{:?}", qmp.greeting());
    let err = qmp.migrate_recover("tcp:127.0.0.1:1").await.unwrap_err();
    assert!(err.to_string().contains("postcopy is paused"), "{err}");
    // Post-copy commands outside post-copy: refused with a reason, never fatal.
    for (what, r) in [
        ("migrate-pause", qmp.migrate_pause().await),
        ("migrate-recover", qmp.migrate_recover("tcp:127.0.0.1:1").await),
        ("migrate resume", qmp.migrate_resume("tcp:127.0.0.1:1").await),
        ("migrate-start-postcopy", qmp.migrate_start_postcopy().await),
    ] {
        let err = r.unwrap_err();
        assert!(err.is_qemu_class("GenericError"), "{what}: {err:?}");
    }
    qmp.query_status().await.unwrap();
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

#[tokio::test]
async fn real_qemu_mirror_over_nbd() {
    use crate::{
        BlockJobEventKind, BlockdevMirror, JobStatus, MirrorCopyMode, MirrorSyncMode, NbdAddr,
        NbdClient, NbdExport, NbdServerStart,
    };
    use serde_json::json;

    let test = "real_qemu_mirror_over_nbd";
    let dir = tempfile::tempdir().unwrap();
    let (sdir, ddir) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir(&sdir).unwrap();
    std::fs::create_dir(&ddir).unwrap();
    let Some((_src_guard, qmp)) = spawn_none(test, &sdir).await else {
        return;
    };
    let Some((_dst_guard, dqmp)) = spawn_none(test, &ddir).await else {
        return;
    };
    let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    std::fs::write(&src, vec![0x5a_u8; 4 << 20]).unwrap();
    std::fs::File::create(&dst)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    for (q, name, path) in [(&qmp, "src", &src), (&dqmp, "dst", &dst)] {
        let opts = json!({"driver": "raw", "node-name": name,
                          "file": {"driver": "file", "filename": path, "locking": "on"}});
        q.blockdev_add(opts).await.unwrap();
    }
    let sock = dir.path().join("nbd.sock").display().to_string();
    let addr = NbdAddr::Unix { path: sock };
    dqmp.nbd_server_start(&NbdServerStart {
        addr: addr.clone(),
        tls_creds: None,
        tls_authz: None,
        max_connections: Some(2),
    })
    .await
    .unwrap();
    dqmp.block_export_add_nbd(&NbdExport {
        id: "exp-dst".into(),
        node_name: "dst".into(),
        name: Some("dst".into()),
        writable: true,
        allow_inactive: None,
    })
    .await
    .unwrap();
    assert_eq!(
        dqmp.query_block_exports().await.unwrap()[0].node_name,
        "dst"
    );
    qmp.blockdev_add_nbd(&NbdClient {
        node_name: "nbd-dst".into(),
        server: addr,
        export: "dst".into(),
        tls_creds: None,
        tls_hostname: None,
        reconnect_delay_s: None,
    })
    .await
    .unwrap();
    let mut events = qmp.subscribe();
    qmp.blockdev_mirror(&BlockdevMirror {
        job_id: Some("m".into()),
        device: "src".into(),
        target: "nbd-dst".into(),
        sync: MirrorSyncMode::Full,
        copy_mode: Some(MirrorCopyMode::Background),
        auto_dismiss: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
    let ready = qmp
        .wait_event(&mut events, Duration::from_secs(20), "m ready", |e| {
            e.block_job().filter(|b| b.kind == BlockJobEventKind::Ready)
        })
        .await
        .unwrap();
    assert_eq!(ready.job_id, "m");
    let jobs = qmp.query_block_jobs().await.unwrap();
    assert!(jobs[0].ready && jobs[0].remaining() == 0, "{jobs:?}");
    qmp.block_job_change_copy_mode("m", &MirrorCopyMode::WriteBlocking)
        .await
        .unwrap();
    let back = qmp
        .block_job_change_copy_mode("m", &MirrorCopyMode::Background)
        .await
        .unwrap_err();
    assert!(back.is_qemu_class("GenericError"), "{back:?}");
    qmp.block_job_set_speed("m", 0).await.unwrap();
    qmp.block_job_cancel("m", false).await.unwrap();
    let done = qmp
        .wait_event(&mut events, Duration::from_secs(20), "m completed", |e| {
            e.block_job().filter(|b| b.kind != BlockJobEventKind::Ready)
        })
        .await
        .unwrap();
    assert_eq!(
        (done.kind, done.error),
        (BlockJobEventKind::Completed, None)
    );
    let jobs = qmp.query_jobs().await.unwrap();
    assert_eq!(jobs[0].status, JobStatus::Concluded, "{jobs:?}");
    qmp.job_dismiss("m").await.unwrap();
    assert!(qmp.query_jobs().await.unwrap().is_empty());
    let missing = qmp.block_job_cancel("m", true).await.unwrap_err();
    assert!(missing.is_qemu_class("DeviceNotActive"), "{missing:?}");

    qmp.blockdev_del("nbd-dst").await.unwrap();
    let nodes = qmp.query_named_block_nodes().await.unwrap();
    assert!(nodes.iter().any(|n| n.node_name == "src" && n.drv == "raw"));
    assert!(!nodes.iter().any(|n| n.node_name == "nbd-dst"));
    let mut dst_events = dqmp.subscribe();
    dqmp.block_export_del("exp-dst", false).await.unwrap();
    let gone = dqmp
        .wait_event(
            &mut dst_events,
            Duration::from_secs(10),
            "export deleted",
            |e| e.block_export_deleted().map(str::to_string),
        )
        .await
        .unwrap();
    assert_eq!(gone, "exp-dst");
    dqmp.nbd_server_stop().await.unwrap();
    qmp.blockdev_del("src").await.unwrap();
    dqmp.blockdev_del("dst").await.unwrap();
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
}
