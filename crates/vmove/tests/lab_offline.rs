//! Issue "Offline and forced-offline migration": whole runs, step by step, OFFLINEFORCE
//! from a dead host, and recovery after an injected failure.
#[macro_use]
mod common;

use std::time::Duration;

use common::*;

fn disk_records(lab: &Lab, guest: &str) -> u64 {
    last_disk_ok(&lab.log(guest)).unwrap_or(0)
}

fn offline_migration_of_a_running_guest_with_a_data_disk(store: Store) {
    let lab = Lab::up_on(store, "off", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.31", BUSY_MB_S, true);
    lab.wait_log("vm1", "a few disk records", Duration::from_secs(60), |l| last_disk_ok(l).is_some_and(|n| n >= 3));
    let out = lab.ok(&["migrate", "vm1", "--to", "host2", "--mode", "offline"]);
    let before = {
        // the records written on host1 are verified at the next boot on host2
        let steps = ["STOP_GUEST", "CREATE_BRIDGES", "DETACH_INTERFACES", "DETACH_VOLUMES", "ATTACH_VOLUMES", "MIGRATE_GUEST", "ATTACH_INTERFACES", "STARTUP_GUEST"];
        let mut at = 0;
        for s in steps {
            let i = out.find(&format!("Step {s} completed successfully")).unwrap_or_else(|| panic!("{s} missing in {out}"));
            assert!(i > at, "steps out of order: {out}");
            at = i;
        }
        assert!(out.contains("Done [Elapsed = "), "{out}");
        3
    };
    assert_eq!(lab.cluster_host("vm1"), "host2");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()], "runs on host2 only");
    lab.wait_tcp_echo("192.0.2.31:7", Duration::from_secs(120));
    let log = lab.wait_log("vm1", "DISK OK on host2", Duration::from_secs(60), |l| last_disk_ok(l).is_some());
    assert!(!log.contains("DISK FAIL"), "{log}");
    assert!(disk_records(&lab, "vm1") > before, "more records than before the move");
    let hosts = lab.json(&["guest", "list"]);
    let places: Vec<&str> = hosts.as_array().unwrap().iter().filter(|g| g["guest"]["spec"]["name"] == "vm1").filter_map(|g| g["host"].as_str()).collect();
    assert_eq!(places, vec!["host2"]);
}

fn offline_migration_as_nine_steps_and_a_stopped_guest_stays_stopped(store: Store) {
    let lab = Lab::up_on(store, "step", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.32", 0, true);
    // Out of order: refused with the missing step named.
    let e = lab.fails(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--step", "MIGRATE_GUEST"]);
    assert!(e.contains("STOP_GUEST"), "{e}");
    // COPY_VOLUMES copies nothing here (the data disk is in the shared pool).
    let steps = ["stop-guest", "CREATE_BRIDGES", "detach-interfaces", "DETACH_VOLUMES", "attach_volumes", "COPY_VOLUMES", "MIGRATE_GUEST", "ATTACH_INTERFACES", "STARTUP_GUEST"];
    for (i, s) in steps.iter().enumerate() {
        lab.ok(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--step", s]);
        if i == 0 {
            assert!(lab.qemu_hosts("vm1").is_empty(), "stopped after STOP_GUEST");
            // A completed step again: a no-op.
            let out = lab.ok(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--step", "STOP_GUEST"]);
            assert!(out.contains("already completed"), "{out}");
        }
    }
    assert_eq!(lab.cluster_host("vm1"), "host2");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);
    lab.wait_tcp_echo("192.0.2.32:7", Duration::from_secs(120));

    // A stopped guest migrates and stays stopped.
    lab.ok(&["guest", "create", "cold", "--host", "host1", "--disk", "shared/cold.img:8M"]);
    lab.ok(&["migrate", "cold", "--to", "host2", "--mode", "offline"]);
    assert_eq!(lab.cluster_host("cold"), "host2");
    assert!(lab.qemu_hosts("cold").is_empty());
    assert_eq!(lab.json(&["guest", "show", "cold"])["state"], "stopped");
}

fn offlineforce_resurrects_a_guest_from_a_dead_host(store: Store) {
    let lab = Lab::up_on(store, "force", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.33", 0, true);
    let dir = lab.dir.to_str().unwrap().to_string();
    let qemu = lab.qemu_pids("vm1");
    assert_eq!(qemu.len(), 1);
    lab.ok(&["lab", "agent", "--dir", &dir, "host1", "kill"]);
    vmove_host::proc::kill9(qemu[0]);
    wait_for("host1's QEMU to die", Duration::from_secs(10), || (!vmove_host::proc::alive(qemu[0])).then_some(()));
    // Plain OFFLINE refuses without the source.
    let e = lab.fails(&["migrate", "vm1", "--to", "host2", "--mode", "offline"]);
    assert!(e.contains("source-reachable"), "{e}");
    if store == Store::Etcd {
        // On etcd nobody takes a guest on an operator's word: the dead host's lease (and
        // with it the guest's ownership) goes when etcd expires it.
        assert_eq!(lab.json(&["cluster", "wait-dead", "host1"])["dead"], true);
    }
    let out = lab.ok(&["migrate", "vm1", "--to", "host2", "--mode", "offlineforce"]);
    assert!(out.contains("source unreachable"), "{out}");
    assert_eq!(lab.cluster_host("vm1"), "host2");
    lab.wait_tcp_echo("192.0.2.33:7", Duration::from_secs(120));
    let log = lab.wait_log("vm1", "DISK OK on host2", Duration::from_secs(60), |l| last_disk_ok(l).is_some());
    assert!(!log.contains("DISK FAIL"), "{log}");
    // host1 comes back: its agent learns from the lease that the guest moved, and never starts it.
    lab.ok(&["lab", "agent", "--dir", &dir, "host1", "start"]);
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);
    let on_host1 = lab.json(&["guest", "list", "--host", "host1"]);
    assert!(on_host1.as_array().unwrap().iter().all(|g| g["guest"]["spec"]["name"] != "vm1"), "{on_host1}");
}

fn a_failure_in_attach_volumes_then_job_recover(store: Store) {
    let lab = Lab::up_on(store, "recov", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.34", 0, true);
    let o = lab.vmove(&["migrate", "vm1", "--to", "host2", "--mode", "offline", "--inject-fault", "ATTACH_VOLUMES"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Step ATTACH_VOLUMES FAILED: injected fault"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ATTACH_VOLUMES failed") && err.contains("job recover"), "{err}");
    assert!(lab.qemu_hosts("vm1").is_empty(), "stopped by STOP_GUEST");
    let jobs = lab.json(&["job", "list"]);
    let job = jobs.as_array().unwrap().iter().find(|j| j["status"] == "failed").expect("failed job");
    assert_eq!(job["current_step"], "ATTACH_VOLUMES");
    let id = job["id"].as_str().unwrap();
    let rec = lab.ok(&["job", "recover", id]);
    assert!(rec.contains("rolling back"), "{rec}");
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host1".to_string()], "running in exactly one place");
    assert_eq!(lab.cluster_host("vm1"), "host1");
    lab.wait_tcp_echo("192.0.2.34:7", Duration::from_secs(120));
    let log = lab.wait_log("vm1", "DISK OK after recovery", Duration::from_secs(60), |l| l.matches("VMOVE READY").count() >= 2);
    assert!(!log.contains("DISK FAIL"), "{log}");
    // The guest can migrate again afterwards.
    lab.ok(&["migrate", "vm1", "--to", "host2", "--mode", "offline"]);
    assert_eq!(lab.qemu_hosts("vm1"), vec!["host2".to_string()]);
}

// Every test here runs on the file store and on etcd (`file::NAME`, `etcd::NAME`).
on_both_stores!(offline_migration_of_a_running_guest_with_a_data_disk, offline_migration_as_nine_steps_and_a_stopped_guest_stays_stopped, offlineforce_resurrects_a_guest_from_a_dead_host, a_failure_in_attach_volumes_then_job_recover);
