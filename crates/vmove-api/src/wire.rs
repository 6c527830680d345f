//! Wire types of the agent API.
use serde::{Deserialize, Serialize};
use vmove_model::GuestSpec;
pub use vmove_model::inventory::{BridgeInfo, GuestState, GuestStatus, HostInfo, Maintenance, PoolInfo};

/// Who is calling, from the client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The operator (`vmove`).
    #[default]
    Operator,
    /// Another host's agent.
    Host,
}

/// One API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness and identity.
    Health,
    /// The host inventory.
    HostInfo,
    /// Put this host in maintenance (`vmove host drain`): no new guests, no guest starts,
    /// no migrations in; the guests already here keep running. Idempotent.
    HostDrain,
    /// End this host's maintenance (`vmove host undrain`). Idempotent.
    HostUndrain,
    /// Persist a guest definition on this host (checks resources and uniqueness).
    GuestDefine {
        /// The definition.
        spec: GuestSpec,
    },
    /// Start a defined guest.
    GuestStart {
        /// Guest name.
        name: String,
    },
    /// Stop a guest: ACPI powerdown and wait, or kill with `force`.
    GuestStop {
        /// Guest name.
        name: String,
        /// Kill instead of ACPI powerdown.
        #[serde(default)]
        force: bool,
        /// How long to wait for a graceful stop, seconds.
        #[serde(default = "default_stop_timeout")]
        timeout_s: u64,
    },
    /// Remove a stopped guest's definition (its volumes stay).
    GuestUndefine {
        /// Guest name.
        name: String,
    },
    /// All guests on this host.
    GuestList,
    /// One guest.
    GuestShow {
        /// Guest name.
        name: String,
    },
    /// Measure a running guest's memory dirty rate (QEMU calc-dirty-rate).
    GuestDirtyRate {
        /// Guest name.
        name: String,
        /// Measurement period, seconds.
        #[serde(default = "default_calc_s")]
        calc_s: u64,
        /// Measurement period in milliseconds instead (QEMUs that cannot measure in
        /// milliseconds measure whole seconds, rounded up).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calc_ms: Option<u64>,
    },
    /// Start a migration job on this (the target) host.
    JobSubmit {
        /// What to do.
        spec: crate::JobSpec,
    },
    /// One job.
    JobShow {
        /// Job id.
        id: String,
    },
    /// Every job this host runs or ran.
    JobList,
    /// A job's events from `from_seq` on, streamed until the job ends.
    JobWatch {
        /// Job id.
        id: String,
        /// First event to send.
        #[serde(default)]
        from_seq: u64,
    },
    /// Cancel a job before its point of no return.
    JobCancel {
        /// Job id.
        id: String,
    },
    /// Let a job paused by a test hook go on.
    JobResume {
        /// Job id.
        id: String,
    },
    /// Bring a failed job's guest back to running in exactly one place.
    JobRecover {
        /// Job id.
        id: String,
    },
    /// Peer: one guest's status. With `claim`, the calling migration (named by its target)
    /// claims the guest on the source; a different migration is refused until it ends.
    PeerGuest {
        /// Guest name.
        name: String,
        /// The migration claiming the guest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim: Option<String>,
    },
    /// Measure the migration link from `source` to this (the target) host, or return a
    /// measurement younger than `max_age_s`.
    LinkMeasure {
        /// The source host.
        source: crate::PeerHost,
        /// Reuse a measurement at most this old, seconds (0: measure now).
        #[serde(default)]
        max_age_s: u64,
    },
    /// Peer: stream data to the target's link probe at `addr` for `duration_ms`.
    PeerLinkSend {
        /// The target's probe listener, `IP:PORT`.
        addr: String,
        /// How long to stream, ms.
        duration_ms: u64,
    },
    /// Peer: the migration `claim` is over (rolled back): the source releases the guest.
    PeerRelease {
        /// Guest name.
        name: String,
        /// The migration that held it.
        claim: String,
    },
    /// Peer: stop a guest (migration source).
    PeerStopGuest {
        /// Guest name.
        name: String,
        /// Kill instead of ACPI.
        force: bool,
        /// Graceful stop timeout, seconds.
        timeout_s: u64,
        /// The migration job asking (the source refuses a second one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
    },
    /// Peer: remove a stopped guest's taps.
    PeerDetachInterfaces {
        /// Guest name.
        name: String,
    },
    /// Peer: release a stopped guest's volume leases.
    PeerDetachVolumes {
        /// Guest name.
        name: String,
    },
    /// Peer: take a guest's volume leases back (rollback).
    PeerAttachVolumes {
        /// Guest name.
        name: String,
    },
    /// Peer: start a guest again (rollback).
    PeerStartGuest {
        /// Guest name.
        name: String,
    },
    /// Peer: remove a stopped guest's definition (it moved).
    PeerUndefine {
        /// Guest name.
        name: String,
    },
    /// Peer: start the outgoing live migration on the source QEMU.
    PeerMigrateOut {
        /// Guest name.
        name: String,
        /// Target URI, `tcp:IP:PORT`.
        uri: String,
        /// Target name in its certificate (TLS), or none for clear text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls_hostname: Option<String>,
        /// Parameters.
        params: crate::MigrationParams,
        /// The migration job asking (the source refuses a second one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
        /// How the target set the migration up (capabilities, first downtime limit, the
        /// parked throttle); without it the source derives them from `params`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        setup: Option<crate::SourceSetup>,
    },
    /// Peer: change the outgoing migration's downtime limit or throttle (the convergence
    /// ladder).
    PeerMigrateTune {
        /// Guest name.
        name: String,
        /// New downtime limit, ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        downtime_limit_ms: Option<u64>,
        /// New throttle parameters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        throttle: Option<vmove_plan::converge::ThrottleParams>,
    },
    /// Peer: switch the outgoing migration to post-copy.
    PeerMigrateStartPostcopy {
        /// Guest name.
        name: String,
    },
    /// Peer: resume a paused post-copy migration to the target's new `uri`.
    PeerMigrateResume {
        /// Guest name.
        name: String,
        /// The target's recovery listener, `tcp:IP:PORT`.
        uri: String,
    },
    /// Peer: the outgoing migration's progress.
    PeerMigrateQuery {
        /// Guest name.
        name: String,
    },
    /// Peer: let a migration held at switchover go on.
    PeerMigrateContinue {
        /// Guest name.
        name: String,
    },
    /// Peer: cancel the outgoing migration; the guest keeps running on the source.
    PeerMigrateCancel {
        /// Guest name.
        name: String,
    },
    /// Peer: after switchover, the frames for the guest that reached the source since its
    /// vCPUs stopped (the target hands them to the guest).
    PeerTakeFrames {
        /// Guest name.
        name: String,
    },
    /// Peer: after switchover, end the source QEMU, remove taps, drop the definition.
    PeerMigrateFinish {
        /// Guest name.
        name: String,
    },
    /// Peer: the guest's volumes in this host's local pools and their sizes (the target
    /// creates its copies with them).
    PeerLocalVolumes {
        /// Guest name.
        name: String,
    },
    /// Peer: start copying the guest's local volumes into the target's NBD exports: a
    /// mirror job per disk (`vmove-mirror-disk{i}` into NBD node `vmove-nbd-disk{i}`, export
    /// `vmove-export-disk{i}`). LIVE mirrors from the running guest's QEMU; OFFLINE from a
    /// storage helper the source starts on the stopped guest's volumes.
    PeerMirrorStart {
        /// Guest name.
        name: String,
        /// The disks to copy: indices in the guest's disk list (each in a local pool).
        disks: Vec<u32>,
        /// The target's NBD server, `IP:PORT`.
        nbd: String,
        /// Target name in its certificate (TLS), or none for clear text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls_hostname: Option<String>,
        /// From the running guest (LIVE) or from its stopped volumes (OFFLINE).
        live: bool,
        /// Bandwidth cap of each job, bytes/s (none: unlimited).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth_bytes_per_s: Option<u64>,
        /// The migration job asking (the source refuses a second one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
    },
    /// Peer: the guest's mirror jobs.
    PeerMirrorQuery {
        /// Guest name.
        name: String,
    },
    /// Peer: switch every mirror of the guest to write-blocking (the guest writes faster
    /// than the copy moves).
    PeerMirrorWriteBlocking {
        /// Guest name.
        name: String,
    },
    /// Peer: finish the copy: every ready mirror copies what is still dirty and ends (a
    /// cancel, never a pivot), the NBD client nodes go. LIVE: at the pre-switchover pause.
    PeerMirrorFinish {
        /// Guest name.
        name: String,
    },
    /// Peer: abandon the copy: every mirror is cancelled at once, the NBD client nodes
    /// (and an OFFLINE storage helper) go; the guest's own volumes are untouched.
    PeerMirrorAbort {
        /// Guest name.
        name: String,
    },
    /// Peer: the guest moved (its copies on the target are its volumes now): release this
    /// host's leases of its local volumes and delete them (unless `keep`). Refused for a
    /// volume that a guest defined here uses.
    PeerDropVolumes {
        /// Guest name.
        name: String,
        /// The volumes, in local pools of this host.
        volumes: Vec<crate::VolumeRef>,
        /// Keep the files (release the leases only).
        #[serde(default)]
        keep: bool,
    },
    /// The tail of a guest's serial console log.
    GuestLog {
        /// Guest name.
        name: String,
        /// At most this many bytes from the end.
        #[serde(default = "default_log_bytes")]
        max_bytes: u64,
    },
    /// Attach to a guest's serial console (a streaming call, operator only): the reply
    /// ([`crate::ConsoleAttached`]) comes first, then the connection carries
    /// [`crate::ConsoleLine`]s from the agent and raw keystrokes from the client.
    GuestConsole {
        /// Guest name.
        name: String,
        /// What of the console log to send before live output.
        #[serde(default)]
        replay: crate::ConsoleReplay,
    },
}

fn default_stop_timeout() -> u64 {
    120
}
fn default_calc_s() -> u64 {
    1
}
fn default_log_bytes() -> u64 {
    64 * 1024
}

impl Request {
    /// Whether a caller with `role` may make this call. Operators may make every call but
    /// the agents' calls to each other (`peer_*`): a peer call acts on a migration's behalf
    /// (stop the source, release its leases, ...) and only an agent may make it.
    pub fn allowed_for(&self, role: &Role) -> bool {
        match role {
            Role::Operator => !self.is_peer(),
            Role::Host => matches!(
                self,
                Request::Health
                    | Request::HostInfo
                    | Request::JobList
                    // A live move's job samples the guest's dirty rate on the source while
                    // its own QEMU starts (read-only, like the inventory).
                    | Request::GuestDirtyRate { .. }
                    | Request::PeerGuest { .. }
                    | Request::PeerRelease { .. }
                    | Request::PeerLinkSend { .. }
                    | Request::PeerStopGuest { .. }
                    | Request::PeerDetachInterfaces { .. }
                    | Request::PeerDetachVolumes { .. }
                    | Request::PeerAttachVolumes { .. }
                    | Request::PeerStartGuest { .. }
                    | Request::PeerUndefine { .. }
                    | Request::PeerMigrateOut { .. }
                    | Request::PeerMigrateTune { .. }
                    | Request::PeerMigrateStartPostcopy { .. }
                    | Request::PeerMigrateResume { .. }
                    | Request::PeerMigrateQuery { .. }
                    | Request::PeerMigrateCancel { .. }
                    | Request::PeerMigrateContinue { .. }
                    | Request::PeerTakeFrames { .. }
                    | Request::PeerMigrateFinish { .. }
                    | Request::PeerLocalVolumes { .. }
                    | Request::PeerMirrorStart { .. }
                    | Request::PeerMirrorQuery { .. }
                    | Request::PeerMirrorWriteBlocking { .. }
                    | Request::PeerMirrorFinish { .. }
                    | Request::PeerMirrorAbort { .. }
                    | Request::PeerDropVolumes { .. }
            ),
        }
    }

    /// Whether this is one agent's call to another (`peer_*`).
    pub fn is_peer(&self) -> bool {
        self.op().starts_with("peer_")
    }

    /// The call's name, for logs and errors.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Health => "health",
            Request::HostInfo => "host_info",
            Request::HostDrain => "host_drain",
            Request::HostUndrain => "host_undrain",
            Request::GuestDefine { .. } => "guest_define",
            Request::GuestStart { .. } => "guest_start",
            Request::GuestStop { .. } => "guest_stop",
            Request::GuestUndefine { .. } => "guest_undefine",
            Request::GuestList => "guest_list",
            Request::GuestShow { .. } => "guest_show",
            Request::GuestLog { .. } => "guest_log",
            Request::GuestConsole { .. } => "guest_console",
            Request::GuestDirtyRate { .. } => "guest_dirty_rate",
            Request::JobSubmit { .. } => "job_submit",
            Request::JobShow { .. } => "job_show",
            Request::JobList => "job_list",
            Request::JobWatch { .. } => "job_watch",
            Request::JobCancel { .. } => "job_cancel",
            Request::JobRecover { .. } => "job_recover",
            Request::JobResume { .. } => "job_resume",
            Request::PeerGuest { .. } => "peer_guest",
            Request::PeerRelease { .. } => "peer_release",
            Request::LinkMeasure { .. } => "link_measure",
            Request::PeerLinkSend { .. } => "peer_link_send",
            Request::PeerStopGuest { .. } => "peer_stop_guest",
            Request::PeerDetachInterfaces { .. } => "peer_detach_interfaces",
            Request::PeerDetachVolumes { .. } => "peer_detach_volumes",
            Request::PeerAttachVolumes { .. } => "peer_attach_volumes",
            Request::PeerStartGuest { .. } => "peer_start_guest",
            Request::PeerUndefine { .. } => "peer_undefine",
            Request::PeerMigrateOut { .. } => "peer_migrate_out",
            Request::PeerMigrateTune { .. } => "peer_migrate_tune",
            Request::PeerMigrateStartPostcopy { .. } => "peer_migrate_start_postcopy",
            Request::PeerMigrateResume { .. } => "peer_migrate_resume",
            Request::PeerMigrateQuery { .. } => "peer_migrate_query",
            Request::PeerMigrateCancel { .. } => "peer_migrate_cancel",
            Request::PeerMigrateContinue { .. } => "peer_migrate_continue",
            Request::PeerTakeFrames { .. } => "peer_take_frames",
            Request::PeerMigrateFinish { .. } => "peer_migrate_finish",
            Request::PeerLocalVolumes { .. } => "peer_local_volumes",
            Request::PeerMirrorStart { .. } => "peer_mirror_start",
            Request::PeerMirrorQuery { .. } => "peer_mirror_query",
            Request::PeerMirrorWriteBlocking { .. } => "peer_mirror_write_blocking",
            Request::PeerMirrorFinish { .. } => "peer_mirror_finish",
            Request::PeerMirrorAbort { .. } => "peer_mirror_abort",
            Request::PeerDropVolumes { .. } => "peer_drop_volumes",
        }
    }
}

/// What kind of failure a call met: code decides, text informs. Stable on the wire
/// (snake_case); a code this build does not know reads as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value is out of range.
    InvalidRequest,
    /// The caller's certificate may not make this call.
    Forbidden,
    /// No such guest, job or record.
    NotFound,
    /// A guest, name, MAC or port is already in use.
    AlreadyExists,
    /// Another job or migration holds the guest (a claim, a running job).
    Busy,
    /// The guest or job is in the wrong state for the call (running, stopped, ended).
    WrongState,
    /// Not enough memory, ports or other capacity on the host.
    NoCapacity,
    /// A peer agent could not be reached (connect, TLS, no answer in time).
    Unreachable,
    /// A volume is leased to another host.
    Leased,
    /// QEMU refused or failed.
    Qemu,
    /// A host operation failed (netlink, taps, files).
    Host,
    /// The agent could not save its state: the job stopped where it was.
    StateWrite,
    /// The operation timed out.
    Timeout,
    /// The operation was cancelled.
    Cancelled,
    /// Test hooks are not available on this agent.
    Disabled,
    /// The host already runs as many migrations as the request allows (`JobSpec::max_incoming`):
    /// nothing is wrong, try again when one has ended.
    AtLimit,
    /// The operation failed past its point of no return (a post-copy migration): it can
    /// be neither rolled back nor retried as it was.
    PastNoReturn,
    /// A precheck that the job decides itself failed (`predicted-convergence` when
    /// `vmove migrate` leaves the dirty-rate sample to the job): nothing was moved.
    PrecheckFailed,
    /// Anything else (a bug, an unexpected answer).
    Internal,
    /// A code from a newer agent.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Busy => "busy",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::Leased => "leased",
            ErrorCode::Qemu => "qemu",
            ErrorCode::Host => "host",
            ErrorCode::StateWrite => "state_write",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Disabled => "disabled",
            ErrorCode::AtLimit => "at_limit",
            ErrorCode::PastNoReturn => "past_no_return",
            ErrorCode::PrecheckFailed => "precheck_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call's error on the wire: `{"code":"not_found","message":"no guest named vm9 on host2"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of failure (decides).
    pub code: ErrorCode,
    /// One line for people (informs).
    pub message: String,
}

/// The final answer to a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the call succeeded.
    pub ok: bool,
    /// The result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(v: impl Serialize) -> Reply {
        match serde_json::to_value(v) {
            Ok(result) => Reply { ok: true, result: Some(result), error: None },
            Err(e) => Reply::err(ErrorCode::Internal, format!("cannot encode result: {e}")),
        }
    }
    /// A failed reply (the message is made one line).
    pub fn err(code: ErrorCode, msg: impl Into<String>) -> Reply {
        let msg: String = msg.into();
        Reply { ok: false, result: None, error: Some(WireError { code, message: msg.replace('\n', " ") }) }
    }
}
