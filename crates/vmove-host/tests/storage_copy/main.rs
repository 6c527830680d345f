//! Live storage copy of a local volume between two real QEMUs (127.0.0.1, TLS from a
//! throwaway CA), without agents: the QMP sequence that `docs/DESIGN.md` ("Local
//! volumes: live storage copy") describes, and what cancel and failure leave behind.
//!
//! The guest boots nothing (no kernel: the firmware idles); guest writes go through the
//! guest's virtio-blk backend with HMP `qemu-io -d`, the same path a guest write takes.
//! Figures are printed (`--nocapture`): copy rate over TLS, the pause at switchover,
//! QEMU's downtime.

mod harness;

use std::time::Instant;

use harness::*;
use vmove_host::qemu::DiskNames;
use vmove_qmp::{BlockJobEventKind as Kind, JobStatus, MigrationStatus, MirrorCopyMode};

/// The pattern with these `(pattern, offset, len)` writes applied.
fn expected(writes: &[(u8, usize, usize)]) -> Vec<u8> {
    let mut v = pattern();
    for &(p, off, len) in writes {
        v[off..off + len].fill(p);
    }
    v
}

async fn copy_and_migrate(test: &str, line: SourceLine) {
    if !have_qemu(test) {
        return;
    }
    let n = DiskNames::of(0);
    let s = setup();
    let src = start(&s.dir.path().join("run-src"), &s.src_img, false, line).await;
    let dst = start(
        &s.dir.path().join("run-dst"),
        &s.dst_img,
        true,
        SourceLine::Blockdev,
    )
    .await;
    let (sq, dq) = (&src.qmp, &dst.qmp);

    // The incoming QEMU holds its disk inactive; the writable export activates it.
    let active = |nodes: Vec<vmove_qmp::BlockNodeInfo>| {
        nodes
            .into_iter()
            .find(|x| x.node_name == n.node)
            .and_then(|x| x.active)
    };
    assert_eq!(
        active(dq.query_named_block_nodes().await.unwrap()),
        Some(false)
    );
    let nbd_port = free_port();
    target_serve(dq, &s.server_tls, nbd_port).await;
    assert_eq!(
        active(dq.query_named_block_nodes().await.unwrap()),
        Some(true)
    );

    source_connect(sq, TLS, &s.client_tls, nbd_port)
        .await
        .expect("nbd client");
    let mut sev = sq.subscribe();
    let t0 = Instant::now();
    source_mirror(sq, None).await;
    let mut writes = vec![(0xa1, 1 << 20, 64 << 10)];
    src.guest_write(0xa1, 1 << 20, 64 << 10).await; // while the bulk copy runs
    let ready = job_event(
        sq,
        &mut sev,
        &[Kind::Ready, Kind::Completed, Kind::Cancelled],
    )
    .await;
    assert_eq!(ready.kind, Kind::Ready, "{ready:?}");
    let copy = t0.elapsed();

    // Ready, background mode: a guest write only marks its blocks dirty...
    writes.push((0xb2, 8 << 20, 1 << 20));
    src.guest_write(0xb2, 8 << 20, 1 << 20).await;
    // ...write-blocking from here: every guest write reaches both sides before it
    // completes, so the copy keeps up whatever the guest's write rate.
    sq.block_job_change_copy_mode(&n.job, &MirrorCopyMode::WriteBlocking)
        .await
        .expect("block-job-change");
    writes.push((0xc3, 16 << 20, 1 << 20));
    src.guest_write(0xc3, 16 << 20, 1 << 20).await;

    // Memory, as the agent migrates today, plus pause-before-switchover on the source.
    migration_setup(sq, dq, true).await;
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    dq.migrate_incoming(&uri).await.expect("migrate-incoming");
    let m0 = Instant::now();
    sq.migrate(&uri).await.expect("migrate");
    // A write during the memory migration, once it is `active`: not during its TLS
    // handshake, which QEMU 10 runs blocking in the target's main loop, so the NBD
    // server does not answer meanwhile, and HMP qemu-io (unlike a guest) waits for the
    // write in the source's main loop, the loop that has to drive the handshake.
    migration_reaches(sq, &mut sev, MigrationStatus::Active).await;
    writes.push((0xd4, 24 << 20, 1 << 20));
    src.guest_write(0xd4, 24 << 20, 1 << 20).await;
    migration_reaches(sq, &mut sev, MigrationStatus::PreSwitchover).await;

    // Switchover point: source CPUs stopped, devices not yet sent, disks still active.
    let p0 = Instant::now();
    assert!(!sq.query_status().await.unwrap().running);
    assert!(!dq.query_status().await.unwrap().running);
    // Cancel (not complete): a ready mirror copies what is still dirty, then ends with
    // BLOCK_JOB_COMPLETED and no pivot; the source stays on its own disk.
    sq.block_job_cancel(&n.job, false)
        .await
        .expect("block-job-cancel");
    let end = job_event(sq, &mut sev, &[Kind::Completed, Kind::Cancelled]).await;
    assert_eq!(
        (end.kind, end.error.as_deref()),
        (Kind::Completed, None),
        "{end:?}"
    );
    sq.blockdev_del(&n.nbd_client).await.expect("blockdev-del");
    target_unserve(dq).await;
    assert!(
        !dq.query_status().await.unwrap().running,
        "target resumed early"
    );
    sq.migrate_continue(MigrationStatus::PreSwitchover)
        .await
        .expect("migrate-continue");
    let pause = p0.elapsed();
    migration_reaches(sq, &mut sev, MigrationStatus::Completed).await;
    until_running(dq).await;
    let migration = m0.elapsed();
    let info = sq.query_migrate().await.unwrap();

    // The target's guest runs on exactly the target's file; the source let go of its.
    let block = dq.query_block().await.unwrap();
    let root = block[0].inserted.as_ref().expect("target disk");
    assert_eq!(
        (root.node_name.as_str(), root.file.as_str(), root.active),
        (n.node.as_str(), s.dst_img.to_str().unwrap(), Some(true))
    );
    let src_root = sq.query_block().await.unwrap()[0].inserted.clone().unwrap();
    assert_eq!(src_root.active, Some(false));

    // Byte for byte: the source has every write, the target equals the source.
    let a = std::fs::read(&s.src_img).unwrap();
    let b = std::fs::read(&s.dst_img).unwrap();
    assert_eq!(
        first_difference(&a, &expected(&writes)),
        None,
        "source lost a write"
    );
    assert_eq!(first_difference(&a, &b), None, "target differs from source");
    let (ca, cb) = (crc(&s.src_img), crc(&s.dst_img));
    assert_eq!(ca, cb);

    // And the target's guest writes into that file.
    dst.guest_write(0xe5, 32 << 20, 4096).await;
    dst.guest_read_check(0xe5, 32 << 20, 4096).await;
    let b = std::fs::read(&s.dst_img).unwrap();
    assert!(b[32 << 20..(32 << 20) + 4096].iter().all(|x| *x == 0xe5));
    let log = dst.log();
    assert!(!log.contains("conflict"), "target QEMU log: {log}");

    let mb_s = SIZE as f64 / 1e6 / copy.as_secs_f64();
    eprintln!(
        "FIGURES {test}: mirror {} MiB over TLS to ready in {} ms = {mb_s:.0} MB/s; \
         pause at switchover (cancel + final sync + NBD teardown) {} ms; memory migration \
         {} ms, QEMU downtime {} ms; crc32 {ca:08x} = {cb:08x}",
        SIZE >> 20,
        copy.as_millis(),
        pause.as_millis(),
        migration.as_millis(),
        info.downtime.unwrap_or(0),
    );
}

#[tokio::test]
async fn local_volume_moves_with_the_guest() {
    copy_and_migrate("local_volume_moves_with_the_guest", SourceLine::Blockdev).await;
}

/// A source QEMU started with the former `-drive id=disk0` line (by an older agent):
/// `blockdev-mirror` takes the backend name as `device`, the device state migrates into
/// a target with `-blockdev`.
#[tokio::test]
async fn local_volume_moves_from_a_legacy_drive_source() {
    copy_and_migrate(
        "local_volume_moves_from_a_legacy_drive_source",
        SourceLine::LegacyDrive,
    )
    .await;
}

/// Cancel in the middle of the copy: the source runs on and writes its own disk, the
/// NBD node and the mirror filter are gone, and the target's export comes down, so the
/// target's QEMU and volume can go. Also: a certificate of the same CA for another host
/// is refused by the NBD server (`tls-authz`).
#[tokio::test]
async fn cancel_mid_copy_leaves_the_source_alone() {
    if !have_qemu("cancel_mid_copy_leaves_the_source_alone") {
        return;
    }
    let n = DiskNames::of(0);
    let s = setup();
    let src = start(
        &s.dir.path().join("run-src"),
        &s.src_img,
        false,
        SourceLine::Blockdev,
    )
    .await;
    let mut dst = start(
        &s.dir.path().join("run-dst"),
        &s.dst_img,
        true,
        SourceLine::Blockdev,
    )
    .await;
    let (sq, dq) = (&src.qmp, &dst.qmp);
    let nbd_port = free_port();
    target_serve(dq, &s.server_tls, nbd_port).await;

    let refused = source_connect(sq, "intruder-tls", &s.intruder_tls, nbd_port).await;
    assert!(
        refused.is_err(),
        "the NBD server admitted another host's certificate"
    );
    source_connect(sq, TLS, &s.client_tls, nbd_port)
        .await
        .expect("nbd client");

    let mut sev = sq.subscribe();
    source_mirror(sq, Some(4 << 20)).await; // 16 s for the whole disk: we cancel long before
    sq.wait_event(&mut sev, GUARD, "mirror running", |e| {
        e.job_status_change()
            .filter(|(id, st)| *id == n.job && *st == JobStatus::Running)
    })
    .await
    .expect("mirror running");
    src.guest_write(0x5c, 2 << 20, 64 << 10).await;
    sq.block_job_cancel(&n.job, false).await.expect("cancel");
    let end = job_event(
        sq,
        &mut sev,
        &[Kind::Completed, Kind::Cancelled, Kind::Ready],
    )
    .await;
    assert_eq!(end.kind, Kind::Cancelled, "{end:?}");
    assert!(end.offset < end.len, "cancelled mid-copy: {end:?}");
    sq.blockdev_del(&n.nbd_client).await.expect("blockdev-del");
    source_untouched(sq, &s.src_img).await;
    src.guest_write(0x6d, 4 << 20, 64 << 10).await;
    src.guest_read_check(0x6d, 4 << 20, 64 << 10).await;
    let a = std::fs::read(&s.src_img).unwrap();
    let want = expected(&[(0x5c, 2 << 20, 64 << 10), (0x6d, 4 << 20, 64 << 10)]);
    assert_eq!(first_difference(&a, &want), None);

    target_unserve(dq).await;
    dst.kill();
    std::fs::remove_file(&s.dst_img).unwrap();
    assert!(sq.query_status().await.unwrap().running);
}

/// The target dies in the middle of the copy: a forced cancel ends the job at once
/// (without waiting for the NBD client to notice), and the source is as before.
#[tokio::test]
async fn target_death_mid_copy_is_cancelled_at_once() {
    if !have_qemu("target_death_mid_copy_is_cancelled_at_once") {
        return;
    }
    let n = DiskNames::of(0);
    let s = setup();
    let src = start(
        &s.dir.path().join("run-src"),
        &s.src_img,
        false,
        SourceLine::Blockdev,
    )
    .await;
    let mut dst = start(
        &s.dir.path().join("run-dst"),
        &s.dst_img,
        true,
        SourceLine::Blockdev,
    )
    .await;
    let sq = &src.qmp;
    let nbd_port = free_port();
    target_serve(&dst.qmp, &s.server_tls, nbd_port).await;
    source_connect(sq, TLS, &s.client_tls, nbd_port)
        .await
        .expect("nbd client");
    let mut sev = sq.subscribe();
    source_mirror(sq, Some(4 << 20)).await;
    sq.wait_event(&mut sev, GUARD, "mirror running", |e| {
        e.job_status_change()
            .filter(|(id, st)| *id == n.job && *st == JobStatus::Running)
    })
    .await
    .expect("mirror running");
    dst.kill();
    let t = Instant::now();
    sq.block_job_cancel(&n.job, true).await.expect("cancel");
    let end = job_event(sq, &mut sev, &[Kind::Completed, Kind::Cancelled]).await;
    let took = t.elapsed();
    sq.blockdev_del(&n.nbd_client).await.expect("blockdev-del");
    source_untouched(sq, &s.src_img).await;
    src.guest_write(0x7e, 0, 4096).await;
    eprintln!(
        "FIGURES target death: forced cancel ended the job ({:?}) in {} ms",
        end.kind,
        took.as_millis()
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "forced cancel took {took:?}"
    );
}

/// A volume in a shared pool (no copy): both QEMUs open the same file with `-blockdev`
/// and image locking; the incoming one starts with the disk inactive (no write lock) and
/// takes it over at switchover, when the source lets go.
#[tokio::test]
async fn shared_volume_live_migration_with_blockdev() {
    if !have_qemu("shared_volume_live_migration_with_blockdev") {
        return;
    }
    let n = DiskNames::of(0);
    let s = setup();
    let src = start(
        &s.dir.path().join("run-src"),
        &s.src_img,
        false,
        SourceLine::Blockdev,
    )
    .await;
    let dst = start(
        &s.dir.path().join("run-dst"),
        &s.src_img,
        true,
        SourceLine::Blockdev,
    )
    .await;
    let (sq, dq) = (&src.qmp, &dst.qmp);
    let state = |b: Vec<vmove_qmp::BlockInfo>| {
        let r = b[0].inserted.clone().expect("disk");
        (r.node_name, r.active)
    };
    assert_eq!(
        state(dq.query_block().await.unwrap()),
        (n.node.clone(), Some(false))
    );
    assert_eq!(
        state(sq.query_block().await.unwrap()),
        (n.node.clone(), Some(true))
    );
    let (server, client) = (
        s.server_tls.to_str().unwrap(),
        s.client_tls.to_str().unwrap(),
    );
    dq.object_add_tls_creds_x509(TLS, server, "server", true)
        .await
        .unwrap();
    sq.object_add_tls_creds_x509(TLS, client, "client", true)
        .await
        .unwrap();
    migration_setup(sq, dq, false).await;
    src.guest_write(0x11, 0, 4096).await;
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    dq.migrate_incoming(&uri).await.unwrap();
    let mut sev = sq.subscribe();
    sq.migrate(&uri).await.unwrap();
    migration_reaches(sq, &mut sev, MigrationStatus::Completed).await;
    until_running(dq).await;
    assert_eq!(
        state(dq.query_block().await.unwrap()),
        (n.node.clone(), Some(true))
    );
    assert_eq!(
        state(sq.query_block().await.unwrap()),
        (n.node.clone(), Some(false))
    );
    dst.guest_read_check(0x11, 0, 4096).await;
    dst.guest_write(0x22, 4096, 4096).await;
    let a = std::fs::read(&s.src_img).unwrap();
    assert_eq!(
        first_difference(&a, &expected(&[(0x11, 0, 4096), (0x22, 4096, 4096)])),
        None
    );
}

/// Every mirror ready, the memory migration held at pre-switchover, and the migration
/// must stop (cancel, a failure on the target): `migrate_cancel` resumes the guest on
/// the source, a forced cancel drops the ready mirror without its final sync, and the
/// source is as before the copy; the target's QEMU ends by itself.
#[tokio::test]
async fn abort_at_pre_switchover_keeps_the_guest_on_the_source() {
    if !have_qemu("abort_at_pre_switchover_keeps_the_guest_on_the_source") {
        return;
    }
    let n = DiskNames::of(0);
    let s = setup();
    let src = start(
        &s.dir.path().join("run-src"),
        &s.src_img,
        false,
        SourceLine::Blockdev,
    )
    .await;
    let mut dst = start(
        &s.dir.path().join("run-dst"),
        &s.dst_img,
        true,
        SourceLine::Blockdev,
    )
    .await;
    let (sq, dq) = (&src.qmp, &dst.qmp);
    let nbd_port = free_port();
    target_serve(dq, &s.server_tls, nbd_port).await;
    source_connect(sq, TLS, &s.client_tls, nbd_port)
        .await
        .expect("nbd client");
    let mut sev = sq.subscribe();
    source_mirror(sq, None).await;
    let ready = job_event(
        sq,
        &mut sev,
        &[Kind::Ready, Kind::Completed, Kind::Cancelled],
    )
    .await;
    assert_eq!(ready.kind, Kind::Ready, "{ready:?}");
    migration_setup(sq, dq, true).await;
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    dq.migrate_incoming(&uri).await.expect("migrate-incoming");
    sq.migrate(&uri).await.expect("migrate");
    migration_reaches(sq, &mut sev, MigrationStatus::PreSwitchover).await;

    sq.migrate_cancel().await.expect("migrate_cancel");
    migration_reaches(sq, &mut sev, MigrationStatus::Cancelled).await;
    sq.block_job_cancel(&n.job, true)
        .await
        .expect("forced cancel");
    let end = job_event(sq, &mut sev, &[Kind::Completed, Kind::Cancelled]).await;
    assert_eq!(end.kind, Kind::Cancelled, "{end:?}");
    sq.blockdev_del(&n.nbd_client).await.expect("blockdev-del");
    until_running(sq).await;
    source_untouched(sq, &s.src_img).await;
    src.guest_write(0x42, 0, 64 << 10).await;
    let a = std::fs::read(&s.src_img).unwrap();
    assert_eq!(
        first_difference(&a, &expected(&[(0x42, 0, 64 << 10)])),
        None
    );

    // A failed incoming migration ends the target's QEMU (its `exit-on-error` default),
    // export and NBD server with it: only its volume is left to delete.
    tokio::time::timeout(GUARD, dq.closed())
        .await
        .expect("target QEMU exits");
    dst.kill();
    std::fs::remove_file(&s.dst_img).unwrap();
}

/// The copy as the agent runs it: the target serves its new file from a storage helper
/// (`-machine none`, NBD over TLS on a socket the agent bound and passed with `getfd`),
/// and the incoming guest QEMU opens the same file inactive (no lock taken) while the
/// helper writes it, as a target opens a shared volume the source still runs. At
/// pre-switchover the mirror is finished and the helper quits (its lock goes with it);
/// then the incoming QEMU activates the file at the switchover.
#[tokio::test]
async fn local_volume_moves_through_a_storage_helper() {
    let test = "local_volume_moves_through_a_storage_helper";
    if !have_qemu(test) {
        return;
    }
    let n = DiskNames::of(0);
    let s = setup();
    let src = start(
        &s.dir.path().join("run-src"),
        &s.src_img,
        false,
        SourceLine::Blockdev,
    )
    .await;
    let mut helper = start_helper(&s.dir.path().join("run-nbd"), &s.dst_img).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nbd_port = listener.local_addr().expect("addr").port();
    target_serve_fd(&helper.qmp, &s.server_tls, &listener).await;
    drop(listener);
    let sq = &src.qmp;
    source_connect(sq, TLS, &s.client_tls, nbd_port)
        .await
        .expect("nbd client");
    let mut sev = sq.subscribe();
    let t0 = Instant::now();
    source_mirror(sq, None).await;
    let mut writes = vec![(0xa1, 1 << 20, 64 << 10)];
    src.guest_write(0xa1, 1 << 20, 64 << 10).await;
    let ready = job_event(
        sq,
        &mut sev,
        &[Kind::Ready, Kind::Completed, Kind::Cancelled],
    )
    .await;
    assert_eq!(ready.kind, Kind::Ready, "{ready:?}");
    let copy = t0.elapsed();

    // The incoming QEMU opens the file the helper holds (and writes) with its lock.
    let dst = start(
        &s.dir.path().join("run-dst"),
        &s.dst_img,
        true,
        SourceLine::Blockdev,
    )
    .await;
    let dq = &dst.qmp;
    let root = dq.query_block().await.unwrap()[0].inserted.clone().expect("disk");
    assert_eq!(root.active, Some(false), "the incoming disk waits inactive");
    writes.push((0xb2, 8 << 20, 1 << 20));
    src.guest_write(0xb2, 8 << 20, 1 << 20).await;

    dq.object_add_tls_creds_x509(TLS, s.server_tls.to_str().unwrap(), "server", true)
        .await
        .expect("tls-creds of the incoming QEMU");
    migration_setup(sq, dq, true).await;
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    dq.migrate_incoming(&uri).await.expect("migrate-incoming");
    sq.migrate(&uri).await.expect("migrate");
    migration_reaches(sq, &mut sev, MigrationStatus::Active).await;
    writes.push((0xd4, 24 << 20, 1 << 20));
    src.guest_write(0xd4, 24 << 20, 1 << 20).await;
    migration_reaches(sq, &mut sev, MigrationStatus::PreSwitchover).await;

    let p0 = Instant::now();
    sq.block_job_cancel(&n.job, false)
        .await
        .expect("block-job-cancel");
    let end = job_event(sq, &mut sev, &[Kind::Completed, Kind::Cancelled]).await;
    assert_eq!((end.kind, end.error.as_deref()), (Kind::Completed, None), "{end:?}");
    sq.blockdev_del(&n.nbd_client).await.expect("blockdev-del");
    target_unserve(&helper.qmp).await;
    helper.qmp.quit().await.expect("quit");
    helper.wait_exit();
    sq.migrate_continue(MigrationStatus::PreSwitchover)
        .await
        .expect("migrate-continue");
    let pause = p0.elapsed();
    migration_reaches(sq, &mut sev, MigrationStatus::Completed).await;
    until_running(dq).await;
    let info = sq.query_migrate().await.unwrap();

    let root = dq.query_block().await.unwrap()[0].inserted.clone().expect("disk");
    assert_eq!(
        (root.file.as_str(), root.active),
        (s.dst_img.to_str().unwrap(), Some(true))
    );
    let a = std::fs::read(&s.src_img).unwrap();
    let b = std::fs::read(&s.dst_img).unwrap();
    assert_eq!(first_difference(&a, &expected(&writes)), None, "source lost a write");
    assert_eq!(first_difference(&a, &b), None, "target differs from source");
    dst.guest_write(0xe5, 32 << 20, 4096).await;
    dst.guest_read_check(0xe5, 32 << 20, 4096).await;
    dst.guest_read_check(0xd4, 24 << 20, 1 << 20).await;
    let log = dst.log();
    assert!(!log.contains("conflict") && !log.contains("lock"), "target QEMU log: {log}");
    eprintln!(
        "FIGURES {test}: mirror {} MiB to ready in {} ms; pause at switchover (cancel + \
         final sync + helper down) {} ms; QEMU downtime {} ms",
        SIZE >> 20,
        copy.as_millis(),
        pause.as_millis(),
        info.downtime.unwrap_or(0)
    );
}
