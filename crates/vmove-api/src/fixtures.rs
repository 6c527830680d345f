//! Test fixtures shared by the crate's unit tests.
use vmove_model::{BootSource, DiskSpec, GuestSpec, NicSpec};
use vmove_plan::Mode;

use crate::{JobSpec, MigrationParams, PeerHost};

/// A lab guest with a NIC and a data disk.
pub(crate) fn guest() -> GuestSpec {
    GuestSpec {
        name: "vm1".into(),
        host: "host1".into(),
        vcpus: 2,
        memory_mib: 512,
        cpu_model: "qemu64".into(),
        boot: BootSource::Lab { dirty_mb_s: 5, wss_mib: 64, disk_mb_s: 0 },
        desired: Default::default(),
        nics: vec![NicSpec { network: "lab-net".into(), mac: "52:54:00:00:00:01".into(), ip: Some("192.0.2.10/24".into()) }],
        disks: vec![DiskSpec { pool: "shared".into(), volume: "vm1-data.img".into(), size_mib: Some(64) }],
        console_port: Some(5900),
        group: None,
    }
}

/// A live move of [`guest`] from host1 to host2, the whole plan, no test hook.
pub(crate) fn job() -> JobSpec {
    JobSpec {
        guest: guest(),
        mode: Mode::Live,
        source: PeerHost { name: "host1".into(), address: "198.51.100.2:7450".into() },
        target: "host2".into(),
        step: None,
        params: MigrationParams::default(),
        inject_fault: None,
        pause_before: None,
        pause_at_switchover: false,
        max_incoming: None,
        dirty_rate_bytes_per_s: None,
        link_bytes_per_s: None,
        convergence_check: Default::default(),
    }
}
