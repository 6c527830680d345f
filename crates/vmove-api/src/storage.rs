//! Wire types of the storage copy: what a source reports about a guest's local volumes and
//! the mirror jobs that copy them into the target's NBD exports.
use serde::{Deserialize, Serialize};

/// A guest's volume in a local pool of the source (`peer_local_volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalVolume {
    /// The disk's index in the guest's disk list (its node `disk{i}`).
    pub disk: u32,
    /// Pool.
    pub pool: String,
    /// Volume (file) name.
    pub volume: String,
    /// Size, bytes: the copy is created with the same size. `None`: the volume has no
    /// file on the source yet (a guest that never started): nothing to copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// A volume named by its pool (`peer_drop_volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRef {
    /// Pool.
    pub pool: String,
    /// Volume (file) name.
    pub volume: String,
}

/// One mirror job copying a disk (from the source QEMU's `query-block-jobs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorJob {
    /// The disk's index in the guest's disk list.
    pub disk: u32,
    /// QEMU's job status (`running`, `ready`, `concluded`, ...).
    pub status: String,
    /// Bytes to copy in all (grows with the guest's writes).
    pub len: u64,
    /// Bytes copied.
    pub offset: u64,
    /// In sync: may be finished.
    pub ready: bool,
    /// Write-blocking and in sync: every guest write reaches both sides before it
    /// completes (QEMU's `actively-synced`).
    pub actively_synced: bool,
    /// Why the job failed, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The source's answer to `peer_mirror_start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorStarted {
    /// The guest.
    pub mirroring: String,
    /// The mirrors run write-blocking from the start: the source's QEMU cannot switch them
    /// later (no `block-job-change`, QEMU before 8.2). Absent from older agents: `false`.
    #[serde(default)]
    pub write_blocking: bool,
}

/// Every mirror job of a guest's copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorReport {
    /// One per copied disk, in disk order.
    pub jobs: Vec<MirrorJob>,
}

impl MirrorReport {
    /// Bytes to copy in all.
    pub fn len(&self) -> u64 {
        self.jobs.iter().fold(0u64, |a, j| a.saturating_add(j.len))
    }

    /// Bytes copied.
    pub fn offset(&self) -> u64 {
        self.jobs.iter().fold(0u64, |a, j| a.saturating_add(j.offset.min(j.len)))
    }

    /// Bytes still to copy.
    pub fn remaining(&self) -> u64 {
        self.len().saturating_sub(self.offset())
    }

    /// Whether there is no job.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether every job is in sync.
    pub fn all_ready(&self) -> bool {
        !self.jobs.is_empty() && self.jobs.iter().all(|j| j.ready && j.error.is_none())
    }

    /// The first job that failed or ended without being asked to.
    pub fn failed(&self) -> Option<&MirrorJob> {
        self.jobs.iter().find(|j| j.error.is_some() || matches!(j.status.as_str(), "concluded" | "null" | "aborting"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(disk: u32, len: u64, offset: u64, ready: bool) -> MirrorJob {
        MirrorJob { disk, status: if ready { "ready" } else { "running" }.into(), len, offset, ready, ..Default::default() }
    }

    #[test]
    fn report_sums_and_states() {
        let r = MirrorReport { jobs: vec![job(0, 100, 40, false), job(2, 50, 60, true)] };
        assert_eq!((r.len(), r.offset(), r.remaining()), (150, 90, 60));
        assert!(!r.all_ready());
        assert_eq!(r.failed(), None);
        let r = MirrorReport { jobs: vec![job(0, 100, 100, true), job(2, 50, 50, true)] };
        assert!(r.all_ready());
        assert!(!MirrorReport::default().all_ready(), "no job is not a finished copy");
        let mut bad = job(1, 10, 5, false);
        bad.status = "concluded".into();
        bad.error = Some("Input/output error".into());
        let r = MirrorReport { jobs: vec![job(0, 1, 1, true), bad.clone()] };
        assert_eq!(r.failed(), Some(&bad));
        assert!(!r.all_ready());
    }
}
