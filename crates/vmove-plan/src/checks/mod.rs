//! Prechecks: pure functions from what the cluster file says and what the agents report to
//! a list of findings, one per check, each with a stable id, a verdict and a one-line reason.
//!
//! [`run`] evaluates every check of the request's mode, in a stable order ([`CheckId::ALL`]
//! filtered by mode). A check that cannot be evaluated because a host did not answer fails
//! saying so, except where the mode makes that host irrelevant (the source in OFFLINEFORCE).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vmove_model::inventory::HostInfo;
use vmove_model::{Cluster, GuestSpec, Policy};

use crate::mode::Mode;
use crate::params::MigrationParams;

mod convergence;
pub use convergence::{convergence_outcome, predicted_memory_ms, Measured};
mod live;
mod placement;
pub mod qemu;
mod resources;
mod storage;
#[cfg(test)]
mod tests;

/// What the operator asked for: the guest, the hosts, the mode and the migration's
/// parameters (the same [`MigrationParams`] the target agent and both QEMUs get).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationRequest {
    /// Guest name.
    pub guest: String,
    /// Source host name.
    pub source: String,
    /// Target host name.
    pub target: String,
    /// Migration mode.
    pub mode: Mode,
    /// Timeout, downtime, bandwidth, transport, multifd, post-copy.
    pub params: MigrationParams,
}

impl MigrationRequest {
    /// A request with the timeout, downtime, post-copy permission and convergence policy of
    /// `policy`, no bandwidth limit, encrypted.
    pub fn new(
        guest: &str,
        source: &str,
        target: &str,
        mode: Mode,
        policy: &Policy,
    ) -> MigrationRequest {
        MigrationRequest {
            guest: guest.to_string(),
            source: source.to_string(),
            target: target.to_string(),
            mode,
            params: MigrationParams {
                timeout_s: policy.live_timeout_s,
                max_downtime_ms: policy.max_downtime_ms,
                allow_postcopy: policy.allow_postcopy,
                converge: policy.converge,
                ..MigrationParams::default()
            },
        }
    }
}

/// Whether a host's agent answered the inventory call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reach<'a> {
    /// It answered (mTLS authenticated) with its inventory.
    Answered(&'a HostInfo),
    /// It did not; a one-line reason.
    Unreachable(String),
}

impl<'a> Reach<'a> {
    /// The inventory, if the host answered.
    pub fn info(&self) -> Option<&'a HostInfo> {
        match self {
            Reach::Answered(h) => Some(h),
            Reach::Unreachable(_) => None,
        }
    }
}

/// Unfinished work that blocks a migration: a job that has not ended, a pending
/// reconfiguration. Matches the guest, a host, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// The guest concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
    /// The host concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What it is, one line (`job 7 MIGRATE GUEST vm2 running`).
    pub what: String,
}

/// Everything the prechecks look at.
#[derive(Debug, Clone)]
pub struct CheckInput<'a> {
    /// The cluster file.
    pub cluster: &'a Cluster,
    /// The request.
    pub request: &'a MigrationRequest,
    /// The source agent.
    pub source: Reach<'a>,
    /// The target agent.
    pub target: Reach<'a>,
    /// Unfinished jobs and pending work.
    pub busy: &'a [Busy],
    /// Guest memory dirty rate measured on the source, bytes per second (LIVE only).
    pub dirty_rate_bytes_per_s: Option<u64>,
    /// Measured or configured migration link throughput, bytes per second.
    pub link_bytes_per_s: Option<u64>,
}

/// A check's verdict. Ordered: `Pass < Warn < Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Satisfied.
    Pass,
    /// Satisfied, but worth knowing (the migration may proceed).
    Warn,
    /// Not satisfied: the migration must not proceed.
    Fail,
}

impl Verdict {
    /// `PASS`, `WARN`, `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which check.
    pub id: CheckId,
    /// Its verdict.
    pub verdict: Verdict,
    /// Why, one line, with the numbers and names compared.
    pub reason: String,
}

impl Finding {
    /// A finding.
    pub fn new(id: CheckId, verdict: Verdict, reason: impl Into<String>) -> Finding {
        Finding {
            id,
            verdict,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.verdict, self.id, self.reason)
    }
}

macro_rules! check_ids {
    ($( $(#[$doc:meta])* $v:ident = $s:literal, live: $live:literal; )*) => {
        /// A precheck's stable identity (serialized as its kebab-case id).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum CheckId { $( $(#[$doc])* $v, )* }

        impl CheckId {
            /// Every check, in evaluation order.
            pub const ALL: &'static [CheckId] = &[$(CheckId::$v,)*];

            /// The stable id, e.g. `guest-in-cluster-file`.
            pub fn as_str(self) -> &'static str {
                match self { $(CheckId::$v => $s,)* }
            }

            /// Whether the check belongs to LIVE migrations only.
            pub fn live_only(self) -> bool {
                match self { $(CheckId::$v => $live,)* }
            }
        }
    };
}

check_ids! {
    /// The guest is in the cluster file.
    GuestInClusterFile = "guest-in-cluster-file", live: false;
    /// The cluster file places the guest on the source, and the source agrees.
    ClusterFileMatchesSource = "cluster-file-matches-source", live: false;
    /// Source and target are both hosts of the cluster file.
    HostsInCluster = "hosts-in-cluster", live: false;
    /// Target and source are different hosts.
    TargetIsNotSource = "target-is-not-source", live: false;
    /// The source agent answered (not required for OFFLINEFORCE).
    SourceReachable = "source-reachable", live: false;
    /// The target agent answered.
    TargetReachable = "target-reachable", live: false;
    /// The target is not in maintenance (`vmove host drain`): it takes no migrations in.
    TargetNotInMaintenance = "target-not-in-maintenance", live: false;
    /// Every network of the guest has its bridge, with the same VLAN, on the target.
    NetworksOnTarget = "networks-on-target", live: false;
    /// Every storage pool of the guest is on the target and writable.
    PoolsOnTarget = "pools-on-target", live: false;
    /// The target's local pools have room for copies of the guest's local volumes.
    LocalVolumeSpace = "local-volume-space", live: false;
    /// No unfinished job or pending work on the guest, the source or the target.
    NoOutstandingWork = "no-outstanding-work", live: false;
    /// Target agent and QEMU versions are at least the source's.
    TargetVersions = "target-versions", live: false;
    /// The target has the guest's memory available.
    TargetMemory = "target-memory", live: false;
    /// The target's vCPUs stay within the policy's overcommit ratio.
    VcpuOvercommit = "vcpu-overcommit", live: false;
    /// No guest of that name on the target.
    GuestNameFreeOnTarget = "guest-name-free-on-target", live: false;
    /// None of the guest's MAC addresses is in use on the target.
    MacsFreeOnTarget = "macs-free-on-target", live: false;
    /// The target has a free console port for the guest.
    ConsolePortOnTarget = "console-port-on-target", live: false;
    /// The guest is running on the source.
    GuestRunning = "guest-running", live: true;
    /// Same hardware model and CPUs, or the source's CPU flags are a subset of the target's.
    SameHardwareAndCpu = "same-hardware-and-cpu", live: true;
    /// The migration stream is encrypted, as policy requires.
    EncryptedChannel = "encrypted-channel", live: true;
    /// Both hosts meet the policy's minimum agent version and hardware generation.
    PolicyMinimums = "policy-minimums", live: true;
    /// Both QEMUs have every migration capability the chosen migration needs.
    QemuCapabilities = "qemu-capabilities", live: true;
    /// The measured dirty rate and the link predict convergence within the timeout.
    PredictedConvergence = "predicted-convergence", live: true;
}

impl CheckId {
    /// The checks that [`run`] evaluates for `mode`, in order.
    pub fn for_mode(mode: Mode) -> Vec<CheckId> {
        CheckId::ALL
            .iter()
            .copied()
            .filter(|c| mode.is_live() || !c.live_only())
            .collect()
    }

    /// Parses a stable id.
    pub fn parse(s: &str) -> Option<CheckId> {
        CheckId::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A check id that [`CheckId::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown check id {input:?}")]
pub struct CheckIdParseError {
    /// What was given.
    pub input: String,
}

impl FromStr for CheckId {
    type Err = CheckIdParseError;
    fn from_str(s: &str) -> Result<CheckId, CheckIdParseError> {
        CheckId::parse(s).ok_or_else(|| CheckIdParseError { input: s.to_string() })
    }
}

impl Serialize for CheckId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CheckId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CheckId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A check's result before it gets its id: `Err` is a failure reason.
pub(crate) type Outcome = Result<(Verdict, String), String>;

/// What every check can look up.
pub(crate) struct Ctx<'a> {
    pub input: &'a CheckInput<'a>,
    pub req: &'a MigrationRequest,
    pub cluster: &'a Cluster,
    pub guest: Option<&'a GuestSpec>,
}

impl<'a> Ctx<'a> {
    /// The guest's definition in the cluster file.
    pub fn guest(&self) -> Result<&'a GuestSpec, String> {
        self.guest.ok_or_else(|| {
            format!(
                "not evaluated: guest {} is not in the cluster file",
                self.req.guest
            )
        })
    }

    /// The target's inventory.
    pub fn target(&self) -> Result<&'a HostInfo, String> {
        match &self.input.target {
            Reach::Answered(h) => Ok(h),
            Reach::Unreachable(why) => Err(format!(
                "not evaluated: target {} unreachable ({why})",
                self.req.target
            )),
        }
    }

    /// The source's inventory.
    pub fn source(&self) -> Result<&'a HostInfo, String> {
        match &self.input.source {
            Reach::Answered(h) => Ok(h),
            Reach::Unreachable(why) => Err(format!(
                "not evaluated: source {} unreachable ({why})",
                self.req.source
            )),
        }
    }

    /// When the source is unreachable and the mode does not need it: why, for a Pass.
    pub fn source_not_required(&self) -> Option<String> {
        match (&self.input.source, self.req.mode) {
            (Reach::Unreachable(why), Mode::OfflineForce) => Some(format!(
                "not required for OFFLINEFORCE (source {} unreachable: {why})",
                self.req.source
            )),
            _ => None,
        }
    }
}

type CheckFn = fn(&Ctx) -> Outcome;

fn check_fn(id: CheckId) -> CheckFn {
    match id {
        CheckId::GuestInClusterFile => placement::guest_in_cluster_file,
        CheckId::ClusterFileMatchesSource => placement::cluster_file_matches_source,
        CheckId::HostsInCluster => placement::hosts_in_cluster,
        CheckId::TargetIsNotSource => placement::target_is_not_source,
        CheckId::SourceReachable => placement::source_reachable,
        CheckId::TargetReachable => placement::target_reachable,
        CheckId::TargetNotInMaintenance => placement::target_not_in_maintenance,
        CheckId::NetworksOnTarget => resources::networks_on_target,
        CheckId::PoolsOnTarget => resources::pools_on_target,
        CheckId::LocalVolumeSpace => storage::local_volume_space,
        CheckId::NoOutstandingWork => placement::no_outstanding_work,
        CheckId::TargetVersions => resources::target_versions,
        CheckId::TargetMemory => resources::target_memory,
        CheckId::VcpuOvercommit => resources::vcpu_overcommit,
        CheckId::GuestNameFreeOnTarget => resources::guest_name_free_on_target,
        CheckId::MacsFreeOnTarget => resources::macs_free_on_target,
        CheckId::ConsolePortOnTarget => resources::console_port_on_target,
        CheckId::GuestRunning => live::guest_running,
        CheckId::SameHardwareAndCpu => live::same_hardware_and_cpu,
        CheckId::EncryptedChannel => live::encrypted_channel,
        CheckId::PolicyMinimums => live::policy_minimums,
        CheckId::QemuCapabilities => qemu::qemu_capabilities,
        CheckId::PredictedConvergence => convergence::predicted_convergence,
    }
}

/// Evaluates one check, whatever the mode.
pub fn run_one(input: &CheckInput, id: CheckId) -> Finding {
    run_one_for(input, input.cluster.guest(&input.request.guest), id)
}

/// [`run_one`] with the guest's definition already looked up (the placement planner
/// evaluates many targets for one guest of a large cluster file).
pub(crate) fn run_one_for(input: &CheckInput, guest: Option<&GuestSpec>, id: CheckId) -> Finding {
    let ctx = Ctx {
        input,
        req: input.request,
        cluster: input.cluster,
        guest,
    };
    let (verdict, reason) = check_fn(id)(&ctx).unwrap_or_else(|why| (Verdict::Fail, why));
    Finding {
        id,
        verdict,
        reason,
    }
}

/// Evaluates every check of the request's mode, in the order of [`CheckId::for_mode`].
pub fn run(input: &CheckInput) -> Vec<Finding> {
    CheckId::for_mode(input.request.mode)
        .into_iter()
        .map(|id| run_one(input, id))
        .collect()
}

/// Whether any finding failed.
pub fn any_failed(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.verdict == Verdict::Fail)
}

/// The worst verdict of `findings` (`Pass` when empty).
pub fn worst(findings: &[Finding]) -> Verdict {
    findings
        .iter()
        .map(|f| f.verdict)
        .max()
        .unwrap_or(Verdict::Pass)
}

/// `12 MB/s` or `1.5 MB/s` (MB = MiB, as the CLI's rates).
pub(crate) fn fmt_rate(bytes_per_s: u64) -> String {
    let tenths = (bytes_per_s as f64 / 1_048_576.0 * 10.0).round() as u64;
    if tenths % 10 == 0 {
        format!("{} MB/s", tenths / 10)
    } else {
        format!("{}.{} MB/s", tenths / 10, tenths % 10)
    }
}

/// `45s`, `10m`, `1m30s`, `2h5m`.
pub(crate) fn fmt_secs(s: u64) -> String {
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    match (h, m, sec) {
        (0, 0, _) => format!("{sec}s"),
        (0, _, 0) => format!("{m}m"),
        (0, _, _) => format!("{m}m{sec}s"),
        (_, 0, _) => format!("{h}h"),
        _ => format!("{h}h{m}m"),
    }
}

/// `1 NIC`, `2 NICs`.
pub(crate) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
