//! COPY_VOLUMES and the moves of guests with volumes in local pools, between in-process
//! agents: live (mirrors finished at the pre-switchover pause), offline (a storage helper
//! on the source), cancel and failure at each point, a target without room, the leases of
//! local volumes, and what the source does with its own copies.
use std::time::Instant;

use vmove_api::{EventKind, JobStatus, Request, Role, StepStatus, VolumeRef};
use vmove_plan::{Mode, Step};

use super::*;

const VOL: &str = "vm1-local.img";

/// 1 MiB that a misplaced block would show.
fn pattern() -> Vec<u8> {
    (0..1u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// `name` with a 1 MiB volume in the local pool besides its shared one, started on
/// `host`, the local volume filled with [`pattern`].
async fn boot_local(c: &Cluster, name: &str, host: &str) -> GuestSpec {
    let mut spec = guest(name, host);
    spec.disks.push(DiskSpec { pool: "local".into(), volume: format!("{name}-local.img"), size_mib: Some(1) });
    let a = c.host(host).agent();
    a.define(spec.clone()).await.expect("define");
    a.start(name).await.expect("start");
    std::fs::write(c.host(host).local_dir.join(format!("{name}-local.img")), pattern()).expect("fill the local volume");
    spec
}

fn local_file(c: &Cluster, host: &str) -> std::path::PathBuf {
    c.host(host).local_dir.join(VOL)
}

async fn local_holder(c: &Cluster, host: &str) -> Option<String> {
    Leases::new(c.host(host).local_leases.clone(), "").read(VOL).await.expect("lease").map(|l| l.holder)
}

/// No storage helper of the guest lives, and its QEMUs hold no mirror or NBD node.
fn nothing_copies(c: &Cluster, guest: &str) {
    for role in ["nbd", "copy"] {
        assert!(c.world.qemus(&format!("{guest}+{role}")).is_empty(), "helper {guest}+{role} still runs");
    }
    let procs = c.world.procs.lock().unwrap_or_else(|p| p.into_inner());
    for p in procs.values().filter(|p| p.guest == guest && p.is_alive()) {
        let b = p.block();
        assert!(b.jobs.is_empty() && b.nbd_nodes.is_empty(), "{}: mirrors {:?}, NBD nodes {:?}", p.host, b.jobs, b.nbd_nodes);
    }
}

fn note_of(r: &JobRecord, step: Step) -> String {
    r.steps.iter().find(|s| s.step == step).and_then(|s| s.note.clone()).unwrap_or_default()
}

fn infos(r: &JobRecord) -> Vec<String> {
    r.events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Info { message } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn live_migration_copies_local_volumes_and_finishes_the_mirrors_before_the_switchover() {
    let c = Cluster::new(2, 2).await;
    let g = boot_local(&c, "vm1", "host1").await;
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(
        steps_of(&r).iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        Step::plan(Mode::Live).to_vec(),
        "COPY_VOLUMES between CREATE_BRIDGES and MIGRATE_GUEST"
    );
    assert!(note_of(&r, Step::CopyVolumes).starts_with("local/vm1-local.img in sync on host2 after 1 MiB"), "{}", note_of(&r, Step::CopyVolumes));
    assert_eq!(c.placement("vm1"), (vec!["host2".to_string()], vec!["host2".to_string()]));
    // The target runs on its own copy, byte for byte the source's; the source's is gone.
    assert_eq!(std::fs::read(local_file(&c, "host2")).expect("copy"), pattern());
    assert!(!local_file(&c, "host1").exists(), "the source deleted its copy");
    assert!(note_of(&r, Step::DetachVolumes).ends_with("host1 deleted its copies of the local volumes: local/vm1-local.img"), "{}", note_of(&r, Step::DetachVolumes));
    // Leases of local volumes live in each host's own store.
    assert_eq!(local_holder(&c, "host2").await.as_deref(), Some("host2"));
    assert_eq!(local_holder(&c, "host1").await, None, "the source released its copy's lease");
    assert_eq!(c.holder("vm1-data.img").await.as_deref(), Some("host2"), "the shared volume is handed over, never copied");
    nothing_copies(&c, "vm1");
    // Progress counted the disk bytes; the summary has them.
    let copying: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Progress(p) if p.status == "copying-volumes" => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert!(!copying.is_empty() && copying.iter().all(|p| p.total_bytes == 1 << 20), "{copying:?}");
    assert_eq!(copying.last().map(|p| p.remaining_bytes), Some(0));
    match r.events.last().map(|e| &e.kind) {
        Some(EventKind::JobEnded { summary, .. }) => {
            assert_eq!(summary.disk_bytes, Some(1 << 20));
            assert!(summary.disk_copy_ms.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_source_pauses_before_the_switchover_and_finishes_without_a_pivot() {
    let c = Cluster::new(2, 2).await;
    let g = boot_local(&c, "vm1", "host1").await;
    let (_, src_pid, _) = c.world.qemus("vm1").into_iter().next().expect("source QEMU");
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    let cmds = c.world.commands(src_pid);
    let names: Vec<&str> = cmds.iter().map(|c| c.name.as_str()).collect();
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("no {n} in {names:?}"));
    let caps = cmds.iter().find(|c| c.name == "migrate-set-capabilities").and_then(|c| c.arguments.clone()).expect("caps");
    assert!(caps.to_string().contains(r#"{"capability":"pause-before-switchover","state":true}"#), "{caps}");
    assert!(at("blockdev-add") < at("blockdev-mirror") && at("blockdev-mirror") < at("migrate"));
    assert!(at("migrate") < at("block-job-cancel") && at("block-job-cancel") < at("migrate-continue"), "{names:?}");
    assert!(at("blockdev-del") < at("migrate-continue"), "the NBD node goes before the switchover: {names:?}");
    let cancel = &cmds[at("block-job-cancel")];
    assert_eq!(cancel.arguments.as_ref().and_then(|a| a.get("force")), None, "a cancel that syncs, not a forced one");
    assert!(!names.contains(&"block-job-complete"), "never a pivot onto the target's disk");
    let mirror = cmds[at("blockdev-mirror")].arguments.clone().expect("args");
    assert_eq!((mirror["sync"].as_str(), mirror["copy-mode"].as_str()), (Some("full"), Some("background")));
    let nbd = cmds[at("blockdev-add")].arguments.clone().expect("args");
    assert_eq!((nbd["tls-creds"].as_str(), nbd["tls-hostname"].as_str()), (Some("vmove-nbd-tls"), Some("host2")));
}

#[tokio::test]
async fn keep_source_volumes_keeps_the_source_copy_released() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Live);
    spec.params.keep_source_volumes = true;
    let r = c.run(spec).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(std::fs::read(local_file(&c, "host1")).expect("kept"), pattern());
    assert_eq!(local_holder(&c, "host1").await, None, "kept, but no longer leased");
    assert!(note_of(&r, Step::DetachVolumes).ends_with("host1 keeps its copies of the local volumes (released): local/vm1-local.img"));
}

#[tokio::test]
async fn offline_migration_copies_local_volumes_from_a_storage_helper() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Offline)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert!(note_of(&r, Step::CopyVolumes).starts_with("local/vm1-local.img copied to host2: 1 MiB in "), "{}", note_of(&r, Step::CopyVolumes));
    assert_eq!(c.placement("vm1"), (vec!["host2".to_string()], vec!["host2".to_string()]));
    assert_eq!(std::fs::read(local_file(&c, "host2")).expect("copy"), pattern());
    assert!(!local_file(&c, "host1").exists());
    assert!(note_of(&r, Step::MigrateGuest).ends_with("host1 deleted its copies of the local volumes: local/vm1-local.img"));
    // The source's helper did the mirroring and is gone, as is the target's.
    let helper = c.world.procs.lock().unwrap_or_else(|p| p.into_inner()).values().find(|p| p.guest == "vm1+copy").map(|p| p.pid);
    let helper = helper.expect("a source helper ran");
    assert!(c.world.commands(helper).iter().any(|c| c.name == "blockdev-mirror"));
    nothing_copies(&c, "vm1");
    assert_eq!(local_holder(&c, "host2").await.as_deref(), Some("host2"));
}

#[tokio::test]
async fn a_guest_without_local_volumes_copies_nothing() {
    let c = Cluster::new(2, 1).await;
    let g = c.boot("vm1", "host1").await;
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(note_of(&r, Step::CopyVolumes), "no volumes in local pools: nothing to copy");
    assert!(c.world.qemus("vm1+nbd").is_empty() && c.world.procs.lock().unwrap_or_else(|p| p.into_inner()).values().all(|p| !p.guest.contains('+')));
}

/// After a cancel or a failure before the switchover: the guest runs on the source with
/// its local volume as it was, nothing is left on the target, nothing copies.
async fn left_on_the_source(c: &Cluster) {
    assert_eq!(c.placement("vm1"), (vec!["host1".to_string()], vec!["host1".to_string()]));
    assert_eq!(std::fs::read(local_file(c, "host1")).expect("source volume"), pattern());
    assert!(!local_file(c, "host2").exists(), "a copy left on the target");
    assert_eq!(local_holder(c, "host2").await, None, "a lease left on the target");
    assert_eq!(local_holder(c, "host1").await.as_deref(), Some("host1"));
    let rec = c.host("host2").agent().state.get::<crate::storage::CopyRec>(&crate::storage::copies_key("vm1")).await.expect("state");
    assert_eq!(rec, None, "the copy record is gone");
    nothing_copies(c, "vm1");
    assert_eq!(c.host("host1").agent().claimed_by("vm1").await.unwrap(), None);
}

#[tokio::test]
async fn cancel_during_the_copy_leaves_the_guest_on_the_source() {
    let c = Cluster::new(2, 2).await;
    let g = boot_local(&c, "vm1", "host1").await;
    c.world.stall_mirrors.store(true, Ordering::SeqCst);
    let rec = c.host("host2").jobs().submit(c.spec(&g, "host1", "host2", Mode::Live)).await.expect("submit");
    c.wait_info("host2", &rec.id, "copying 1 MiB of local volumes from host1").await;
    c.host("host2").jobs().cancel(&rec.id).await.expect("cancel");
    let r = c.wait_end("host2", &rec.id).await;
    assert_status(&r, JobStatus::Cancelled);
    assert!(r.error.as_deref().unwrap_or("").starts_with("COPY_VOLUMES: cancelled by the operator during the copy"), "{:?}", r.error);
    left_on_the_source(&c).await;
}

#[tokio::test]
async fn a_guest_writing_faster_than_the_copy_gets_write_blocking_mirrors() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    c.world.stall_mirrors.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert!(t.elapsed() >= crate::steps::copy_volumes::STALL, "switched only after the stall window");
    assert!(infos(&r).iter().any(|m| m.ends_with("mirrors switched to write-blocking")), "{:?}", infos(&r));
    assert!(commands_on(&c, "vm1", "host2").iter().all(|c| c.name != "block-job-change"), "asked of the source only");
    let cmds = c.world.commands(src_pid(&c));
    assert_eq!(cmds.iter().find(|c| c.name == "blockdev-mirror").and_then(|c| c.arg_str("copy-mode")), Some("background"));
    assert_eq!(cmds.iter().filter(|c| c.name == "block-job-change").count(), 1, "switched once (one disk)");
    assert_eq!(std::fs::read(local_file(&c, "host2")).expect("copy"), pattern());
}

#[tokio::test]
async fn a_guest_whose_copy_keeps_gaining_is_never_switched_to_write_blocking() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    // Twelve queries to get ready (about 6 s, twice the stall window), each a new low.
    c.world.mirror_steps.store(12, Ordering::SeqCst);
    let t = Instant::now();
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert!(t.elapsed() > crate::steps::copy_volumes::STALL, "the copy outlasted the stall window");
    assert!(!infos(&r).iter().any(|m| m.contains("write-blocking")), "{:?}", infos(&r));
    assert!(commands_on(&c, "vm1", "host2").iter().chain(&c.world.commands(src_pid(&c))).all(|c| c.name != "block-job-change"));
    assert_eq!(std::fs::read(local_file(&c, "host2")).expect("copy"), pattern());
}

/// The pid of the source's QEMU of the job's guest (it has exited after the move).
fn src_pid(c: &Cluster) -> u32 {
    let procs = c.world.procs.lock().unwrap_or_else(|p| p.into_inner());
    procs.values().find(|p| p.guest == "vm1" && p.host == "host1").map(|p| p.pid).expect("source QEMU")
}

#[tokio::test]
async fn a_source_qemu_without_block_job_change_mirrors_write_blocking_from_the_start() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    // The guest writes faster than the copy, and its QEMU could not switch the mirrors.
    c.world.stall_mirrors.store(true, Ordering::SeqCst);
    c.world.no_block_job_change.store(true, Ordering::SeqCst);
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert!(
        infos(&r).iter().any(|m| m.ends_with("(NBD over TLS, write-blocking mirrors of the running guest: its QEMU has no block-job-change to switch them later)")),
        "{:?}",
        infos(&r)
    );
    assert!(!infos(&r).iter().any(|m| m.ends_with("mirrors switched to write-blocking")), "nothing to switch: {:?}", infos(&r));
    let cmds = c.world.commands(src_pid(&c));
    let mirror = cmds.iter().find(|c| c.name == "blockdev-mirror").expect("blockdev-mirror");
    assert_eq!(mirror.arg_str("copy-mode"), Some("write-blocking"));
    assert!(cmds.iter().all(|c| c.name != "block-job-change"), "never asked");
    assert_eq!(std::fs::read(local_file(&c, "host2")).expect("copy"), pattern());
    assert!(!local_file(&c, "host1").exists());
}

#[tokio::test]
async fn a_qemu_that_cannot_say_and_cannot_switch_fails_the_copy_clearly_and_rolls_back() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    c.world.stall_mirrors.store(true, Ordering::SeqCst);
    c.world.no_block_job_change.store(true, Ordering::SeqCst);
    c.world.no_query_commands.store(true, Ordering::SeqCst);
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Failed);
    let e = r.error.as_deref().unwrap_or("");
    assert!(e.starts_with("COPY_VOLUMES: ") && e.contains("block-job-change needs QEMU 8.2 or later"), "{e}");
    c.world.stall_mirrors.store(false, Ordering::SeqCst);
    left_on_the_source(&c).await;
}

#[tokio::test]
async fn a_mirror_that_fails_rolls_the_target_back() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    *c.world.mirror_error.lock().unwrap_or_else(|p| p.into_inner()) = Some("Input/output error".into());
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Failed);
    assert!(r.error.as_deref().unwrap_or("").starts_with("COPY_VOLUMES: the copy of disk1 failed on host1: Input/output error"), "{:?}", r.error);
    *c.world.mirror_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    left_on_the_source(&c).await;
}

#[tokio::test]
async fn a_failure_after_the_copy_and_before_the_switchover_undoes_the_copy() {
    for at in [Step::MigrateGuest] {
        let c = Cluster::new(2, 1).await;
        let g = boot_local(&c, "vm1", "host1").await;
        let mut spec = c.spec(&g, "host1", "host2", Mode::Live);
        spec.inject_fault = Some(at);
        let r = c.run(spec).await;
        assert_status(&r, JobStatus::Failed);
        assert!(infos(&r).iter().any(|m| m.starts_with("undone COPY_VOLUMES: mirrors abandoned on host1; copies deleted: local/vm1-local.img")), "{:?}", infos(&r));
        left_on_the_source(&c).await;
    }
}

#[tokio::test]
async fn cancel_at_the_switchover_hook_undoes_the_copy() {
    let c = Cluster::new(2, 2).await;
    let g = boot_local(&c, "vm1", "host1").await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Live);
    spec.pause_at_switchover = true;
    let rec = c.host("host2").jobs().submit(spec).await.expect("submit");
    c.wait_info("host2", &rec.id, "paused at switchover").await;
    c.host("host2").jobs().cancel(&rec.id).await.expect("cancel");
    let r = c.wait_end("host2", &rec.id).await;
    assert_status(&r, JobStatus::Cancelled);
    left_on_the_source(&c).await;
}

#[tokio::test]
async fn a_target_without_room_fails_with_the_numbers() {
    let c = Cluster::new(2, 1).await;
    let mut spec = guest("vm1", "host1");
    // Sparse: 4 TiB that no test file system has free.
    spec.disks.push(DiskSpec { pool: "local".into(), volume: VOL.into(), size_mib: Some(4 << 20) });
    c.host("host1").agent().define(spec.clone()).await.expect("define");
    c.host("host1").agent().start("vm1").await.expect("start");
    let r = c.run(c.spec(&spec, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Failed);
    let e = r.error.unwrap_or_default();
    assert!(e.starts_with("COPY_VOLUMES: pool local on host2 has ") && e.contains(" MiB free, the copies need 4194304 MiB"), "{e}");
    assert!(!local_file(&c, "host2").exists());
    assert_eq!(c.placement("vm1"), (vec!["host1".to_string()], vec!["host1".to_string()]));
}

#[tokio::test]
async fn a_volume_already_on_the_target_is_never_overwritten() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    std::fs::write(local_file(&c, "host2"), b"someone else's").expect("write");
    let r = c.run(c.spec(&g, "host1", "host2", Mode::Live)).await;
    assert_status(&r, JobStatus::Failed);
    assert!(r.error.as_deref().unwrap_or("").starts_with("COPY_VOLUMES: volume local/vm1-local.img already exists on host2 (not made by this migration)"), "{:?}", r.error);
    assert_eq!(std::fs::read(local_file(&c, "host2")).expect("untouched"), b"someone else's", "undo deletes only its own copies");
}

#[tokio::test]
async fn offline_copy_one_step_at_a_time_and_recover_back() {
    let c = Cluster::new(2, 1).await;
    let g = boot_local(&c, "vm1", "host1").await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Offline);
    let mut last = None;
    for s in Step::plan(Mode::Offline).iter().take_while(|s| **s != Step::MigrateGuest) {
        spec.step = Some(*s);
        let r = c.run(spec.clone()).await;
        assert_status(&r, JobStatus::Succeeded);
        last = Some(r);
    }
    assert_eq!(std::fs::read(local_file(&c, "host2")).expect("copy"), pattern(), "COPY_VOLUMES alone made the copy");
    nothing_copies(&c, "vm1");
    let r = last.expect("ran");
    let back = c.host("host2").jobs().recover(&r.id).await.expect("recover");
    let back = c.wait_end("host2", &back.id).await;
    assert_status(&back, JobStatus::Succeeded);
    assert!(back.steps.iter().any(|s| s.step == Step::CopyVolumes && s.status == StepStatus::Done));
    left_on_the_source(&c).await;
}

#[tokio::test]
async fn the_source_drops_only_volumes_no_guest_of_its_own_uses() {
    let c = Cluster::new(2, 1).await;
    boot_local(&c, "vm1", "host1").await;
    let api = &c.host("host1").api;
    let drop = |pool: &str| Request::PeerDropVolumes {
        name: "vm1".into(),
        volumes: vec![VolumeRef { pool: pool.into(), volume: VOL.into() }],
        keep: false,
    };
    let e = api.handle(drop("local"), Role::Host).await.unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::WrongState, "volume local/vm1-local.img belongs to guest vm1, defined on host1"));
    let e = api.handle(drop("shared"), Role::Host).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e.message);
    assert!(local_file(&c, "host1").exists());
}

#[tokio::test]
async fn the_source_never_mirrors_a_shared_volume() {
    let c = Cluster::new(2, 1).await;
    c.boot("vm1", "host1").await;
    let api = &c.host("host1").api;
    // A target that took pool `shared` for a local one asks for disk 0.
    let start = Request::PeerMirrorStart {
        name: "vm1".into(),
        disks: vec![0],
        nbd: "127.0.0.1:1".into(),
        tls_hostname: None,
        live: true,
        bandwidth_bytes_per_s: None,
        job: Some("the migration to host2".into()),
    };
    let e = api.handle(start, Role::Host).await.unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (ErrorCode::InvalidRequest, "disk 0 of vm1 is not in a local pool of host1: it is never copied"));
    nothing_copies(&c, "vm1");
}
