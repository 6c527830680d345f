//! Issue "Move guests whose disks are local to their host": a guest with a 256 MiB data
//! disk in the local pool moves live while its disk log is written (copied by NBD over TLS
//! and blockdev-mirror), cancel during the copy leaves nothing on the target, a target
//! pool without room fails the precheck, and an offline move copies the disk too. A guest
//! whose disk log is written faster than the (capped) link copies gets its mirrors switched
//! to write-blocking, and `--keep-source-volumes` keeps the source's copy.
mod common;

use std::time::Duration;

use common::faults::in_ns;
use common::*;


/// Creates and starts a lab guest with a data disk in the local pool and waits until it
/// answers TCP echo and its memory and disk log verify.
fn boot_local(lab: &Lab, name: &str, ip: &str, size: &str) {
    boot_local_with(lab, name, ip, size, &[]);
}

/// [`boot_local`] with more `guest create` arguments.
fn boot_local_with(lab: &Lab, name: &str, ip: &str, size: &str, more: &[&str]) {
    let nic = format!("lab-net,ip={ip}/24");
    let vol = format!("local/{name}-data.img:{size}");
    let dirty = BUSY_MB_S.to_string();
    let mut args = vec!["guest", "create", name, "--host", "host1", "--nic", &nic, "--dirty-rate", &dirty, "--disk", &vol, "--start"];
    args.extend(more);
    lab.ok(&args);
    lab.wait_tcp_echo(&format!("{ip}:7"), Duration::from_secs(120));
    lab.wait_log(name, "VERIFY OK and DISK OK", Duration::from_secs(90), |l| l.contains("VERIFY OK") && l.contains("DISK OK"));
}

fn job_id(out: &str) -> String {
    out.split("Action ID : ").nth(1).and_then(|r| r.split_whitespace().next()).expect("job id").to_string()
}

#[test]
fn a_guest_with_a_local_disk_moves_live_while_writing_its_disk_log() {
    let lab = Lab::up("ldlive", 2);
    // Besides its disk log, the guest writes 1 MB/s onto the disk's upper half.
    boot_local_with(&lab, "vm1", "192.0.2.61", "256M", &["--disk-rate", "1"]);
    assert!(lab.log("vm1").contains("DISK WRITER 1 MB/s over bytes 134217728..268435456"), "{}", lab.log("vm1"));
    lab.wait_log("vm1", "a few disk records", Duration::from_secs(60), |l| last_disk_ok(l).is_some_and(|n| n >= 3));
    let before = last_disk_ok(&lab.log("vm1")).unwrap();
    let out = lab.ok(&["migrate", "vm1", "--to", "host2", "--ignore-check", "predicted-convergence"]);
    let at = |s: &str| out.find(&format!("Step {s} completed successfully")).unwrap_or_else(|| panic!("{s} missing in {out}"));
    assert!(at("COPY_VOLUMES") < at("MIGRATE_GUEST"), "the copy before the memory: {out}");
    let job = lab.json(&["job", "show", &job_id(&out)]);
    let copying = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "progress" && e["status"] == "copying-volumes");
    assert!(copying, "progress of the copy in the job's events: {job}");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()], "runs on host2 only");
    assert_eq!(lab.cluster_host("vm1"), "host2");
    assert_eq!(lab.local_files("host2"), vec!["vm1-data.img".to_string()]);
    assert!(lab.local_files("host1").is_empty(), "the source's copy is gone: {:?}", lab.local_files("host1"));
    let log = lab.wait_log("vm1", "VERIFY OK and more DISK OK after the move", Duration::from_secs(90), |l| {
        l.matches("VERIFY OK").count() >= 2 && last_disk_ok(l).is_some_and(|n| n > before + 2)
    });
    assert!(!log.contains("VERIFY FAIL") && !log.contains("DISK FAIL"), "{log}");
    lab.tcp_echo("192.0.2.61:7").expect("guest answers on host2");
    // The whole log on the target's copy, records written on host1 before and during the
    // copy included, read back from the host after an ACPI stop (the guest syncs its last
    // record): every record valid, in order, more than before the move.
    let written = last_disk_ok(&lab.log("vm1")).unwrap();
    let st = lab.json(&["guest", "stop", "vm1"]);
    assert_eq!(st["state"], "stopped", "{st}");
    let scan = scan_log(&lab.local_dir("host2").join("vm1-data.img"));
    assert_eq!(scan.fail, None, "the copy's disk log verifies");
    assert!(scan.records >= written, "{} records on the copy, the guest reported {written}", scan.records);
    // The writer's blocks on the copy: every sector is one the guest wrote there (its
    // position and pass in it) or never written; none from elsewhere, none damaged.
    let blocks = check_written(&lab.local_dir("host2").join("vm1-data.img"), 128 << 20, 256 << 20);
    assert!(blocks >= 4, "only {blocks} MiB written on the copy");
}

/// Checks the data writer's region `[from, to)` of a disk image sector by sector against
/// what the writer writes (`vmove_guest::diskfill::fill`, passes 0 to 2); returns the
/// blocks written.
fn check_written(path: &std::path::Path, from: u64, to: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    use vmove_guest::diskfill::{fill, BLOCK};
    let f = std::fs::File::open(path).unwrap();
    let (mut buf, mut want) = (vec![0u8; BLOCK as usize], vec![vec![0u8; BLOCK as usize]; 3]);
    let mut written = 0;
    for off in (from..to).step_by(BLOCK as usize) {
        f.read_exact_at(&mut buf, off).unwrap();
        if buf.iter().all(|b| *b == 0) {
            continue;
        }
        written += 1;
        for (pass, w) in want.iter_mut().enumerate() {
            fill(w, off, pass as u64);
        }
        for (i, sector) in buf.chunks_exact(512).enumerate() {
            let ok = sector.iter().all(|b| *b == 0) || want.iter().any(|w| &w[i * 512..(i + 1) * 512] == sector);
            assert!(ok, "sector {} of the block at {off}: not the writer's data", i);
        }
    }
    written
}

/// Reads a data disk's log from the host.
fn scan_log(path: &std::path::Path) -> vmove_guest::disklog::Scan {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let capacity = f.metadata().unwrap().len() / vmove_guest::disklog::SECTOR as u64;
    vmove_guest::disklog::scan(|off, buf| f.read_at(buf, off), capacity).unwrap()
}

#[test]
fn cancel_during_the_copy_leaves_the_guest_on_the_source_and_nothing_on_the_target() {
    let lab = Lab::up("ldcancel", 2);
    boot_local(&lab, "vm1", "192.0.2.62", "256M");
    let pid = lab.qemu_pids("vm1");
    // 256 MiB at 2 MiB/s: the copy takes two minutes, long enough to cancel in it.
    let id = lab
        .ok(&["migrate", "vm1", "--to", "host2", "--bandwidth", "2M", "--ignore-check", "predicted-convergence", "--detach"])
        .trim()
        .to_string();
    wait_for("the copy to make progress", Duration::from_secs(90), || {
        let j = lab.json(&["job", "show", &id]);
        j["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "progress" && e["status"] == "copying-volumes" && e["transferred_bytes"].as_u64() > Some(0))
            .then_some(())
    });
    assert_eq!(lab.local_files("host2"), vec!["vm1-data.img".to_string()], "the copy exists during the mirror");
    lab.ok(&["job", "cancel", &id]);
    let o = lab.vmove(&["job", "watch", &id]);
    assert!(!o.status.success(), "a cancelled job does not succeed");
    let j = lab.json(&["job", "show", &id]);
    assert_eq!(j["status"], "cancelled", "{}", j["error"]);
    assert_eq!(lab.qemu_pids("vm1"), pid, "the same QEMU still runs on host1");
    assert_eq!(lab.cluster_host("vm1"), "host1");
    assert_eq!(lab.json(&["guest", "show", "vm1"])["state"], "running");
    assert!(lab.local_files("host2").is_empty(), "nothing left on the target: {:?}", lab.local_files("host2"));
    assert!(lab.qemu_hosts("vm1") == vec!["host1".to_string()], "no helper or guest QEMU on host2");
    assert!(
        processes_mentioning(&lab.local_dir("host2").display().to_string()).is_empty(),
        "no process holds the target's pool"
    );
    assert_eq!(lab.local_files("host1"), vec!["vm1-data.img".to_string()], "the source's disk untouched");
    let before = last_disk_ok(&lab.log("vm1")).unwrap_or(0);
    let log = lab.wait_log("vm1", "more DISK OK on host1", Duration::from_secs(60), |l| last_disk_ok(l).is_some_and(|n| n > before));
    assert!(!log.contains("DISK FAIL") && !log.contains("VERIFY FAIL"), "{log}");
    lab.tcp_echo("192.0.2.62:7").expect("guest answers on host1");
}

#[test]
fn a_target_pool_without_room_fails_the_precheck_and_an_offline_move_copies() {
    let lab = Lab::up("ldroom", 2);
    // A sparse 8 TiB disk: no lab machine has that much room in host2's local pool.
    lab.ok(&["guest", "create", "big", "--host", "host1", "--disk", "local/big-data.img:8T"]);
    std::fs::File::create(lab.local_dir("host1").join("big-data.img")).unwrap().set_len(8 << 40).unwrap();
    let e = lab.fails(&["migrate", "big", "--to", "host2", "--mode", "offline"]);
    assert!(e.contains("local-volume-space"), "{e}");
    let f = lab.json_fail(&["migrate", "big", "--to", "host2", "--mode", "offline"]);
    assert_eq!(verdict(&f, "local-volume-space"), "fail", "{f}");
    let reason = f["findings"].as_array().unwrap().iter().find(|x| x["id"] == "local-volume-space").unwrap()["reason"].to_string();
    assert!(reason.contains("pool local on host2 has") && reason.contains("MiB free") && reason.contains("need 8388608 MiB"), "{reason}");
    assert!(lab.local_files("host2").is_empty());

    // Offline: the stopped guest's disk is copied, the source's copy dropped.
    boot_local(&lab, "vm1", "192.0.2.63", "64M");
    lab.wait_log("vm1", "a few disk records", Duration::from_secs(60), |l| last_disk_ok(l).is_some_and(|n| n >= 3));
    let out = lab.ok(&["migrate", "vm1", "--to", "host2", "--mode", "offline"]);
    assert!(out.contains("Step COPY_VOLUMES completed successfully"), "{out}");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);
    assert_eq!(lab.local_files("host2"), vec!["vm1-data.img".to_string()]);
    assert_eq!(lab.local_files("host1"), vec!["big-data.img".to_string()], "vm1's source copy is gone");
    lab.wait_tcp_echo("192.0.2.63:7", Duration::from_secs(120));
    let log = lab.wait_log("vm1", "DISK OK on host2", Duration::from_secs(90), |l| last_disk_ok(l).is_some());
    assert!(!log.contains("DISK FAIL"), "{log}");
}

/// The job's info messages.
fn infos(lab: &Lab, id: &str) -> Vec<String> {
    let j = lab.json(&["job", "show", id]);
    j["events"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str().map(str::to_string)).collect()
}

#[test]
fn a_disk_written_faster_than_the_copy_gets_write_blocking_mirrors_and_the_source_copy_is_kept() {
    let lab = Lab::up("ldwblock", 2);
    boot_local_with(&lab, "vm1", "192.0.2.64", "64M", &["--memory", "256M"]);
    lab.wait_log("vm1", "a few disk records", Duration::from_secs(60), |l| last_disk_ok(l).is_some_and(|n| n >= 3));
    let before = last_disk_ok(&lab.log("vm1")).unwrap();
    // The agent learned its QEMU's block-job-change at start: the precheck says so.
    let f = lab.json(&["migrate", "vm1", "--to", "host2", "--ignore-check", "predicted-convergence", "--precheck"]);
    let caps = f["findings"].as_array().unwrap().iter().find(|x| x["id"] == "qemu-capabilities").unwrap().clone();
    assert_eq!(caps["verdict"], "pass", "{caps}");
    assert!(caps["reason"].as_str().unwrap().contains("; block-job-change on host1 (mirrors switch to write-blocking"), "{caps}");
    // Held before the copy, so that the prechecks measure the link uncapped.
    let id = lab
        .ok(&[
            "migrate", "vm1", "--to", "host2", "--keep-source-volumes", "--ignore-check", "predicted-convergence",
            "--pause-before", "COPY_VOLUMES", "--detach",
        ])
        .trim()
        .to_string();
    wait_for("the pause before COPY_VOLUMES", Duration::from_secs(90), || {
        infos(&lab, &id).iter().any(|m| m.starts_with("paused before COPY_VOLUMES")).then_some(())
    });
    // The link from host1 capped at 64 kbit/s (8 KB/s): the disk log dirties a 64 KiB
    // block of the mirror every 0.5 s, which the background copy can never catch up with.
    let ns = lab.host_ns("host1");
    let cap = ["tc", "qdisc", "replace", "dev", "mgmt0", "root", "tbf", "rate", "64kbit", "burst", "3kb", "latency", "1s"];
    assert!(in_ns(&ns, &cap), "tc on host1");
    lab.ok(&["job", "resume", &id]);
    let switched = wait_for("the switch to write-blocking", Duration::from_secs(90), || {
        infos(&lab, &id).into_iter().find(|m| m.ends_with("mirrors switched to write-blocking"))
    });
    assert!(switched.starts_with("the guest writes faster than the copy moves ("), "{switched}");
    // The link back to full speed: the write-blocking mirrors get in sync, the memory moves.
    assert!(in_ns(&ns, &["tc", "qdisc", "del", "dev", "mgmt0", "root"]), "tc del on host1");
    let o = lab.vmove(&["job", "watch", &id]);
    let j = lab.json(&["job", "show", &id]);
    assert!(o.status.success(), "{}: {}", j["status"], j["error"]);
    assert_eq!(j["status"], "succeeded", "{}", j["error"]);
    let msgs = infos(&lab, &id);
    let at = |p: &str| msgs.iter().position(|m| m.contains(p)).unwrap_or_else(|| panic!("{p} missing in {msgs:?}"));
    assert!(at("mirrors of the running guest") < at("mirrors switched to write-blocking"), "started in background, then switched: {msgs:?}");
    assert_eq!(msgs.iter().filter(|m| m.ends_with("mirrors switched to write-blocking")).count(), 1, "switched once: {msgs:?}");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()], "runs on host2 only");
    assert_eq!(lab.cluster_host("vm1"), "host2");
    // The disk log and the memory verify on host2, and the log goes on.
    let log = lab.wait_log("vm1", "VERIFY OK and more DISK OK after the move", Duration::from_secs(90), |l| {
        l.matches("VERIFY OK").count() >= 2 && last_disk_ok(l).is_some_and(|n| n > before + 2)
    });
    assert!(!log.contains("VERIFY FAIL") && !log.contains("DISK FAIL"), "{log}");
    // --keep-source-volumes: host1 keeps its copy, whole as it was at the switchover (its
    // log verifies), and no QEMU holds it any more.
    assert_eq!(lab.local_files("host1"), vec!["vm1-data.img".to_string()], "the source's copy is kept");
    assert_eq!(lab.local_files("host2"), vec!["vm1-data.img".to_string()]);
    let kept = lab.local_dir("host1").join("vm1-data.img");
    assert!(processes_mentioning(&kept.display().to_string()).is_empty(), "no process holds the kept copy");
    let scan = scan_log(&kept);
    assert_eq!(scan.fail, None, "the kept copy's disk log verifies");
    assert!(scan.records >= before, "{} records on the kept copy, {before} before the move", scan.records);
}
