//! Block layer types for live storage copy: mirror jobs, NBD server and exports, block
//! nodes and the block job events, after QEMU 10.0's `qapi/block-core.json`,
//! `qapi/job.json` and `qapi/block-export.json`.
//!
//! Arguments serialize with QEMU's names and omit what is `None`; replies tolerate
//! missing and unknown members (kept in `extra`) and unknown enum values.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::lenient::{lenient_enum, num};
use crate::types::Event;

lenient_enum! {
    /// `JobType`.
    pub enum JobType {
        /// Block commit.
        Commit => "commit",
        /// Block stream.
        Stream => "stream",
        /// Drive / blockdev mirror.
        Mirror => "mirror",
        /// Backup.
        Backup => "backup",
        /// Image creation.
        Create => "create",
        /// Image amend.
        Amend => "amend",
        /// Snapshot load.
        SnapshotLoad => "snapshot-load",
        /// Snapshot save.
        SnapshotSave => "snapshot-save",
        /// Snapshot delete.
        SnapshotDelete => "snapshot-delete",
    }
}

lenient_enum! {
    /// `JobStatus`: the job's state machine.
    pub enum JobStatus {
        /// Erroneous state.
        Undefined => "undefined",
        /// Created, not started.
        Created => "created",
        /// Working.
        Running => "running",
        /// Paused by the user.
        Paused => "paused",
        /// Mirror: source and target in sync; waits for complete or cancel.
        Ready => "ready",
        /// Ready, but paused (e.g. during a drain).
        Standby => "standby",
        /// Done, waiting for the other jobs of its transaction.
        Waiting => "waiting",
        /// Done, waiting for `job-finalize` (auto-finalize off).
        Pending => "pending",
        /// Being cancelled or failing.
        Aborting => "aborting",
        /// Finished, waiting for `job-dismiss` (auto-dismiss off).
        Concluded => "concluded",
        /// Gone.
        Null => "null",
    }
}

impl JobStatus {
    /// Finished: nothing more will happen to the job (concluded or gone).
    pub fn is_finished(&self) -> bool {
        matches!(self, JobStatus::Concluded | JobStatus::Null)
    }
}

lenient_enum! {
    /// `MirrorSyncMode`.
    pub enum MirrorSyncMode {
        /// Only the top image.
        Top => "top",
        /// The whole disk (what a storage copy wants).
        Full => "full",
        /// Only new writes.
        None => "none",
        /// Bitmap-based (backup).
        Incremental => "incremental",
        /// Bitmap-based.
        Bitmap => "bitmap",
    }
}

lenient_enum! {
    /// `MirrorCopyMode`.
    pub enum MirrorCopyMode {
        /// Copy dirty areas in the background; guest writes only mark them dirty.
        Background => "background",
        /// Guest writes also go to the target synchronously, so the copy converges
        /// whatever the guest's write rate (QEMU 3.0+; switchable at runtime from
        /// background with `block-job-change` since 8.2, never back).
        WriteBlocking => "write-blocking",
    }
}

/// `blockdev-mirror` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BlockdevMirror {
    /// Job id (defaults to `device` in QEMU); used by every later job command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Device (BlockBackend) name or node name of the source's root node.
    pub device: String,
    /// Node name of the target (e.g. an NBD client node).
    pub target: String,
    /// What to copy.
    pub sync: MirrorSyncMode,
    /// Bandwidth limit, bytes/s (0 or absent: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<u64>,
    /// Dirty bitmap granularity, bytes (power of two, 512 B to 64 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granularity: Option<u64>,
    /// Copy buffer size, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buf_size: Option<u64>,
    /// `report`, `ignore`, `stop`, `enospc` or `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_source_error: Option<String>,
    /// Same choices as `on_source_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_target_error: Option<String>,
    /// Name of the filter node the job inserts above `device`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_node_name: Option<String>,
    /// Background (default) or write-blocking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_mode: Option<MirrorCopyMode>,
    /// Finalize by itself (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_finalize: Option<bool>,
    /// Disappear once concluded (default true); with false the job stays
    /// `concluded` (with its error) until `job-dismiss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_dismiss: Option<bool>,
}

/// A socket address for NBD: TCP or a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    /// TCP host (name or address) and port.
    Inet {
        /// Host to listen on / connect to.
        host: String,
        /// Port.
        port: u16,
    },
    /// A unix socket path.
    Unix {
        /// Socket path.
        path: String,
    },
    /// A socket passed to QEMU beforehand with `getfd` under this name (an NBD server on
    /// a listening socket its caller bound: no port chosen and released in between).
    Fd {
        /// The `fdname` given to `getfd`.
        name: String,
    },
}

impl NbdAddr {
    /// QEMU's `SocketAddress` (flat), as `blockdev-add` of an `nbd` node takes it.
    pub fn flat(&self) -> Value {
        match self {
            NbdAddr::Inet { host, port } => {
                json!({"type": "inet", "host": host, "port": port.to_string()})
            }
            NbdAddr::Unix { path } => json!({"type": "unix", "path": path}),
            NbdAddr::Fd { name } => json!({"type": "fd", "str": name}),
        }
    }

    /// QEMU's `SocketAddressLegacy` (`{"type":..,"data":{..}}`), as `nbd-server-start`
    /// takes it.
    pub fn legacy(&self) -> Value {
        match self {
            NbdAddr::Inet { host, port } => {
                json!({"type": "inet", "data": {"host": host, "port": port.to_string()}})
            }
            NbdAddr::Unix { path } => json!({"type": "unix", "data": {"path": path}}),
            NbdAddr::Fd { name } => json!({"type": "fd", "data": {"str": name}}),
        }
    }
}

/// `nbd-server-start` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdServerStart {
    /// Where to listen.
    pub addr: NbdAddr,
    /// Id of a `tls-creds-x509` object with `endpoint=server` (None: clear text).
    pub tls_creds: Option<String>,
    /// Id of an `authz-*` object deciding which client certificates may connect.
    pub tls_authz: Option<String>,
    /// Most clients at once (QEMU's default: unlimited).
    pub max_connections: Option<u32>,
}

impl NbdServerStart {
    /// The QMP arguments.
    pub fn to_args(&self) -> Value {
        let mut a = Map::new();
        a.insert("addr".into(), self.addr.legacy());
        if let Some(c) = &self.tls_creds {
            a.insert("tls-creds".into(), c.as_str().into());
        }
        if let Some(z) = &self.tls_authz {
            a.insert("tls-authz".into(), z.as_str().into());
        }
        if let Some(m) = self.max_connections {
            a.insert("max-connections".into(), m.into());
        }
        Value::Object(a)
    }
}

/// `block-export-add` of `type: nbd`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NbdExport {
    /// Export id (for `block-export-del` and `BLOCK_EXPORT_DELETED`).
    pub id: String,
    /// The block node to export (a node name: a `-drive id` is refused).
    pub node_name: String,
    /// The name NBD clients ask for (default: the node name).
    pub name: Option<String>,
    /// Clients may write.
    pub writable: bool,
    /// Export an inactive node without activating it (QEMU 10.0+). Absent: the
    /// export activates the node, which is what a migration target wants.
    pub allow_inactive: Option<bool>,
}

impl NbdExport {
    /// The QMP arguments.
    pub fn to_args(&self) -> Value {
        let mut a = json!({
            "type": "nbd",
            "id": self.id,
            "node-name": self.node_name,
            "writable": self.writable,
        });
        if let Some(n) = &self.name {
            a["name"] = n.as_str().into();
        }
        if let Some(i) = self.allow_inactive {
            a["allow-inactive"] = i.into();
        }
        a
    }
}

/// `blockdev-add` of an `nbd` client node (the mirror's target on the source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdClient {
    /// The new node's name.
    pub node_name: String,
    /// The server to connect to.
    pub server: NbdAddr,
    /// The export's name.
    pub export: String,
    /// Id of a `tls-creds-x509` object with `endpoint=client` (None: clear text).
    pub tls_creds: Option<String>,
    /// Name the server's certificate must carry (default: the server's host).
    pub tls_hostname: Option<String>,
    /// Seconds to wait for a lost connection to come back before failing requests.
    pub reconnect_delay_s: Option<u32>,
}

impl NbdClient {
    /// The QMP arguments of `blockdev-add`.
    pub fn to_args(&self) -> Value {
        let mut a = json!({
            "driver": "nbd",
            "node-name": self.node_name,
            "server": self.server.flat(),
            "export": self.export,
        });
        if let Some(c) = &self.tls_creds {
            a["tls-creds"] = c.as_str().into();
        }
        if let Some(h) = &self.tls_hostname {
            a["tls-hostname"] = h.as_str().into();
        }
        if let Some(d) = self.reconnect_delay_s {
            a["reconnect-delay"] = d.into();
        }
        a
    }
}

/// One entry of `query-block-jobs` (`BlockJobInfo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BlockJobInfo {
    /// Kind of job.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// The job id (QEMU still calls it `device`).
    pub device: String,
    /// Bytes to copy in all (grows with guest writes during a mirror).
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub len: u64,
    /// Bytes copied.
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub offset: u64,
    /// Doing I/O right now.
    #[serde(deserialize_with = "num::bool_or_false")]
    pub busy: bool,
    /// Paused by the user.
    #[serde(deserialize_with = "num::bool_or_false")]
    pub paused: bool,
    /// Bandwidth limit, bytes/s (0: unlimited).
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub speed: u64,
    /// `ok`, `failed` or `nospace`.
    pub io_status: String,
    /// Mirror: in sync, may be completed or cancelled.
    #[serde(deserialize_with = "num::bool_or_false")]
    pub ready: bool,
    /// State.
    pub status: JobStatus,
    /// Finalizes by itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_finalize: Option<bool>,
    /// Disappears once concluded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_dismiss: Option<bool>,
    /// Why the job failed, once concluded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Mirror (QEMU 8.2+): write-blocking mode is on and the target is in sync, so
    /// every guest write now reaches both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actively_synced: Option<bool>,
    /// Members this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BlockJobInfo {
    /// Bytes still to copy (`len - offset`).
    pub fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.offset)
    }
}

/// One entry of `query-jobs` (`JobInfo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct JobInfo {
    /// Job id.
    pub id: String,
    /// Kind of job.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// State.
    pub status: JobStatus,
    /// Progress, in units of `total_progress` (bytes for a mirror).
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub current_progress: u64,
    /// Estimated total.
    #[serde(deserialize_with = "num::u64_or_zero")]
    pub total_progress: u64,
    /// Why the job failed (also `Operation canceled` after a cancel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Members this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `query-block-exports`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BlockExportInfo {
    /// Export id.
    pub id: String,
    /// `nbd`, `fuse`, ...
    #[serde(rename = "type")]
    pub export_type: String,
    /// Exported node.
    pub node_name: String,
    /// Being removed (waits for clients to disconnect).
    #[serde(deserialize_with = "num::bool_or_false")]
    pub shutting_down: bool,
    /// Members this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Cache settings of a block node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BlockdevCacheInfo {
    /// Write cache on (writeback).
    #[serde(deserialize_with = "num::bool_or_false")]
    pub writeback: bool,
    /// O_DIRECT.
    #[serde(deserialize_with = "num::bool_or_false")]
    pub direct: bool,
    /// Flushes are ignored.
    #[serde(deserialize_with = "num::bool_or_false")]
    pub no_flush: bool,
}

/// A block node (`BlockDeviceInfo`, from `query-named-block-nodes` and the
/// `inserted` member of `query-block`); only what vmove looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BlockNodeInfo {
    /// Node name (`#blockNNN` when QEMU made it up).
    pub node_name: String,
    /// Driver: `raw`, `file`, `nbd`, `mirror_top`, ...
    pub drv: String,
    /// The file or URI behind it.
    pub file: String,
    /// Read-only.
    #[serde(deserialize_with = "num::bool_or_false")]
    pub ro: bool,
    /// Active (false on a migration target before activation, and on a source after
    /// the switchover).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Cache settings.
    pub cache: BlockdevCacheInfo,
    /// Members this crate does not model (`image`, throttling, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BlockNodeInfo {
    /// The image's virtual size, bytes, when QEMU reports it.
    pub fn virtual_size(&self) -> Option<u64> {
        self.extra.get("image")?.get("virtual-size")?.as_u64()
    }
}

/// One entry of `query-block` (`BlockInfo`): a BlockBackend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BlockInfo {
    /// BlockBackend name (`-drive id`; empty for backends of `-blockdev` devices).
    pub device: String,
    /// QOM path of the device it is attached to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    /// The root node, when a medium is inserted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockNodeInfo>,
    /// Members this crate does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Which block job event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockJobEventKind {
    /// `BLOCK_JOB_READY`: a mirror is in sync.
    Ready,
    /// `BLOCK_JOB_COMPLETED`: the job ended; with `error` it failed. A ready mirror
    /// cancelled without `force` ends with this too (target in sync, no pivot).
    Completed,
    /// `BLOCK_JOB_CANCELLED`: cancelled before ready, or with `force`.
    Cancelled,
    /// `BLOCK_JOB_ERROR`: an I/O error (the job may go on, per its error policy).
    Error,
    /// `BLOCK_JOB_PENDING`: waiting for `job-finalize`.
    Pending,
}

/// A decoded `BLOCK_JOB_*` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockJobEvent {
    /// Which event.
    pub kind: BlockJobEventKind,
    /// The job id (`device`, or `id` for `BLOCK_JOB_PENDING`).
    pub job_id: String,
    /// Kind of job, when the event says.
    pub job_type: Option<JobType>,
    /// Bytes to copy in all.
    pub len: Option<u64>,
    /// Bytes copied.
    pub offset: Option<u64>,
    /// Error message (`BLOCK_JOB_COMPLETED` of a failed job).
    pub error: Option<String>,
    /// `read` or `write` (`BLOCK_JOB_ERROR`).
    pub operation: Option<String>,
    /// `ignore`, `report` or `stop` (`BLOCK_JOB_ERROR`).
    pub action: Option<String>,
}

impl Event {
    /// Decodes `BLOCK_JOB_READY`, `_COMPLETED`, `_CANCELLED`, `_ERROR` and `_PENDING`.
    pub fn block_job(&self) -> Option<BlockJobEvent> {
        let kind = match self.event.as_str() {
            "BLOCK_JOB_READY" => BlockJobEventKind::Ready,
            "BLOCK_JOB_COMPLETED" => BlockJobEventKind::Completed,
            "BLOCK_JOB_CANCELLED" => BlockJobEventKind::Cancelled,
            "BLOCK_JOB_ERROR" => BlockJobEventKind::Error,
            "BLOCK_JOB_PENDING" => BlockJobEventKind::Pending,
            _ => return None,
        };
        let s = |k: &str| self.data.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str| self.data.get(k).and_then(Value::as_u64);
        Some(BlockJobEvent {
            kind,
            job_id: s("device").or_else(|| s("id")).unwrap_or_default(),
            job_type: s("type").map(|t| JobType::from_wire(&t)),
            len: n("len"),
            offset: n("offset"),
            error: s("error"),
            operation: s("operation"),
            action: s("action"),
        })
    }

    /// For `JOB_STATUS_CHANGE`: the job id and its new status.
    pub fn job_status_change(&self) -> Option<(String, JobStatus)> {
        if self.event != "JOB_STATUS_CHANGE" {
            return None;
        }
        let id = self.data.get("id")?.as_str()?.to_string();
        let status = JobStatus::from_wire(self.data.get("status")?.as_str()?);
        Some((id, status))
    }

    /// For `BLOCK_EXPORT_DELETED`: the export id.
    pub fn block_export_deleted(&self) -> Option<&str> {
        if self.event != "BLOCK_EXPORT_DELETED" {
            return None;
        }
        self.data.get("id")?.as_str()
    }
}
