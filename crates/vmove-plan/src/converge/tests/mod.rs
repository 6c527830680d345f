//! Unit tests of the convergence logic: setup, ladder, prediction.
mod ladder;
mod predict;
mod setup;

use vmove_model::Converge;

use super::{Features, Phase, Sample, Start};
use crate::params::MigrationParams;

pub(super) const MB: u64 = 1_000_000;

/// Every feature QEMU 10.0 has under TCG: auto-converge, post-copy with preempt, no
/// dirty-limit, no multifd with post-copy.
pub(super) fn qemu10() -> Features {
    Features {
        auto_converge: true,
        dirty_limit: false,
        postcopy_ram: true,
        postcopy_preempt: true,
        multifd_with_postcopy: false,
        return_path: true,
        switchover_ack: true,
    }
}

pub(super) fn params(converge: Converge, allow_postcopy: bool) -> MigrationParams {
    MigrationParams {
        converge,
        allow_postcopy,
        timeout_s: 600,
        max_downtime_ms: 300,
        ..MigrationParams::default()
    }
}

/// 1 GB guest, figures unknown.
pub(super) fn start_unknown() -> Start {
    Start {
        memory_bytes: 1000 * MB,
        working_set_bytes: None,
        link_bytes_per_s: None,
        dirty_rate_bytes_per_s: None,
        vcpus: 2,
    }
}

/// A pre-copy sample whose dirty set (from the expected downtime) is `set` bytes at
/// 100 MB/s, dirtying 200 MB/s.
pub(super) fn pre(at_ms: u64, pass: u64, set: u64) -> Sample {
    Sample {
        at_ms,
        status: Phase::Precopy,
        pass,
        remaining_bytes: set / 2,
        transferred_bytes: 0,
        rate_bytes_per_s: 100 * MB,
        dirty_rate_bytes_per_s: 200 * MB,
        expected_downtime_ms: set / (100 * MB / 1000),
        throttle_pct: None,
        in_flight_bytes: 0,
    }
}

pub(super) fn with_status(mut s: Sample, status: Phase) -> Sample {
    s.status = status;
    s
}
