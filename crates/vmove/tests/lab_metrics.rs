//! Issue "Real hosts": watching a migration with the tools operators use. After a live
//! migration the target's Prometheus metrics pass `promtool check metrics` and count it
//! (one live migration succeeded, its downtime and passes observed once, the QEMU moved
//! from one host's gauge to the other's); `vmove job plot` draws it; an agent that
//! restarts counts its start and the guest it re-adopted.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::loopback::{http_get, promtool_check, sample};
use common::*;

/// A scrape of a lab host's metrics (the lab turns them on at the agent's IP, port 7451).
fn metrics(lab: &Lab, host: &str) -> String {
    let c = vmove_model::Cluster::load(&lab.cluster).unwrap();
    let api: SocketAddr = c.host(host).unwrap().address.parse().unwrap();
    let (status, _, body) = http_get(SocketAddr::new(api.ip(), 7451), "/metrics");
    assert!(status.contains(" 200 "), "{host}: {status}");
    promtool_check(&body);
    body
}

fn value(body: &str, series: &str) -> f64 {
    sample(body, series).unwrap_or_else(|| panic!("{series} missing:\n{body}"))
}

#[test]
fn a_live_migration_in_metrics_and_in_a_picture() {
    let lab = Lab::up("metrics", 2);
    lab.boot_guest("vm1", "host1", "192.0.2.31", BUSY_MB_S, false);
    assert_eq!(value(&metrics(&lab, "host1"), "vmove_qemu_processes"), 1.0);

    lab.ok(&["migrate", "vm1", "--to", "host2"]);
    let h2 = metrics(&lab, "host2");
    assert_eq!(value(&h2, "vmove_migrations_total{mode=\"live\",outcome=\"succeeded\"}"), 1.0);
    assert_eq!(value(&h2, "vmove_migrations_total{mode=\"live\",outcome=\"failed\"}"), 0.0);
    assert_eq!(value(&h2, "vmove_migration_downtime_seconds_count"), 1.0);
    assert!(value(&h2, "vmove_migration_downtime_seconds_sum") > 0.0, "{h2}");
    assert_eq!(value(&h2, "vmove_migration_passes_count"), 1.0);
    assert_eq!(value(&h2, "vmove_migration_duration_seconds_count{mode=\"live\"}"), 1.0);
    assert!(value(&h2, "vmove_migration_transferred_bytes_total") > 100.0 * 1048576.0, "{h2}");
    assert_eq!(value(&h2, "vmove_qemu_processes"), 1.0);
    assert_eq!(value(&h2, "vmove_guests{state=\"running\"}"), 1.0);
    assert_eq!(value(&h2, "vmove_jobs_in_flight"), 0.0);
    // The job's records and events went through the counted state store.
    assert!(value(&h2, "vmove_store_operations_total{store=\"file\",op=\"append\"}") >= 10.0, "{h2}");
    assert!(value(&h2, "vmove_store_operations_total{store=\"file\",op=\"put\"}") >= 5.0, "{h2}");
    assert!(value(&h2, "vmove_store_operation_seconds_total{store=\"file\",op=\"put\"}") > 0.0, "{h2}");
    assert_eq!(value(&metrics(&lab, "host1"), "vmove_qemu_processes"), 0.0);

    let jobs = lab.json(&["job", "list"]);
    let id = jobs[0]["id"].as_str().unwrap().to_string();
    let out = lab.dir.join("plot.svg");
    let said = lab.ok(&["job", "plot", &id, "--out", &out.display().to_string()]);
    assert!(said.contains(&out.display().to_string()) && said.contains("switchover at"), "{said}");
    let svg = std::fs::read_to_string(&out).unwrap();
    for text in ["remaining (MiB)", "transfer rate (MiB/s)", "dirty rate (MiB/s)", "switchover (downtime "] {
        assert!(svg.contains(text), "{text:?} missing from the plot");
    }

    // The agent restarts: it counts the start and the guest it re-adopted; the guest runs on.
    let dir = lab.dir.display().to_string();
    lab.ok(&["lab", "agent", "--dir", &dir, "host2", "kill"]);
    lab.ok(&["lab", "agent", "--dir", &dir, "host2", "start"]);
    let h2 = metrics(&lab, "host2");
    assert_eq!(value(&h2, "vmove_agent_starts_total"), 2.0);
    assert_eq!(value(&h2, "vmove_guests_readopted_total"), 1.0);
    assert_eq!(value(&h2, "vmove_qemu_processes"), 1.0);
    lab.wait_tcp_echo("192.0.2.31:7", Duration::from_secs(30));
}
