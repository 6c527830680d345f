//! Range checks at the API boundary: every number a request carries, and every name the
//! agent uses as a file name, is checked before the agent acts on it ([`Request::validate`],
//! [`decode_request`]). The ranges are in [`limits`].
use std::net::SocketAddr;
use std::ops::RangeInclusive;

use vmove_model::{BootSource, GuestSpec};

use crate::{JobSpec, MigrationParams, Request};

/// The allowed ranges, inclusive. Units are in the names.
pub mod limits {
    use std::ops::RangeInclusive;

    /// Graceful (ACPI) stop timeout, seconds (`guest_stop`, `peer_stop_guest`, a migration's
    /// `stop_timeout_s`): up to an hour; `force` kills at once anyway.
    pub const STOP_TIMEOUT_S: RangeInclusive<u64> = 1..=3600;
    /// Live migration timeout, seconds: up to a day.
    pub const MIGRATION_TIMEOUT_S: RangeInclusive<u64> = 1..=86_400;
    /// Maximum downtime at switchover, ms: QEMU's own `downtime-limit` range (2000 s).
    pub const MAX_DOWNTIME_MS: RangeInclusive<u64> = 1..=2_000_000;
    /// Bandwidth cap, bytes/s: up to 1 TiB/s, what the agent sends for "unlimited"
    /// (QEMU refuses values above SIZE_MAX / 1000).
    pub const BANDWIDTH_BYTES_PER_S: RangeInclusive<u64> = 1..=1 << 40;
    /// A measured rate (dirty rate, link): an idle guest dirties nothing.
    pub const MEASURED_BYTES_PER_S: RangeInclusive<u64> = 0..=1 << 40;
    /// multifd channels (0 = a single stream); each is a connection and a thread per side.
    pub const MULTIFD_CHANNELS: RangeInclusive<u64> = 0..=64;
    /// Dirty rate measurement period, seconds: QEMU's `calc-dirty-rate` range.
    pub const CALC_S: RangeInclusive<u64> = 1..=60;
    /// How old a reused link measurement may be, seconds.
    pub const LINK_MAX_AGE_S: RangeInclusive<u64> = 0..=86_400;
    /// How long a link probe streams, ms.
    pub const LINK_PROBE_MS: RangeInclusive<u64> = 50..=10_000;
    /// A throttle percentage (QEMU's range).
    pub const THROTTLE_PCT: RangeInclusive<u64> = 1..=99;
    /// A per-vCPU dirty limit, MB/s.
    pub const DIRTY_LIMIT_MB_PER_S: RangeInclusive<u64> = 1..=1_000_000;
    /// Dirty-rate measurement period in milliseconds.
    pub const CALC_MS: RangeInclusive<u64> = 100..=60_000;
    /// Console log tail, bytes: up to 16 MiB (it travels in one reply line).
    pub const LOG_MAX_BYTES: RangeInclusive<u64> = 1..=16 << 20;
    /// Console log replayed before live output (`guest_console` `tail`), bytes.
    pub const CONSOLE_REPLAY_BYTES: RangeInclusive<u64> = 0..=1 << 20;
    /// First job event to stream: far above any job's event count (a day of 1 s progress
    /// events is 86,400), below the heartbeat's sequence number.
    pub const FROM_SEQ: RangeInclusive<u64> = 0..=100_000_000;
    /// Guest vCPUs: the `pc` machine's maximum.
    pub const VCPUS: RangeInclusive<u64> = 1..=255;
    /// Guest memory, MiB: up to 4 TiB.
    pub const MEMORY_MIB: RangeInclusive<u64> = 1..=4 << 20;
    /// Size of a volume created for a disk, MiB: up to 1 PiB (its size in bytes fits in
    /// u64 and in a file offset with a wide margin).
    pub const DISK_SIZE_MIB: RangeInclusive<u64> = 1..=1 << 30;
    /// Serial console TCP port (0 is no port).
    pub const CONSOLE_PORT: RangeInclusive<u64> = 1..=65_535;
    /// Lab workload dirty rate, MB/s: 100 GB/s is beyond any memory bandwidth.
    pub const DIRTY_MB_S: RangeInclusive<u64> = 0..=100_000;
    /// A lab guest's data-disk write rate, MB/s.
    pub const DISK_MB_S: RangeInclusive<u64> = 0..=10_000;
    /// Lab workload working set, MiB: at most the largest guest memory.
    pub const WSS_MIB: RangeInclusive<u64> = 0..=4 << 20;
    /// A job's `max_incoming`: migrations arriving at one host at once.
    pub const MAX_INCOMING: RangeInclusive<u64> = 1..=1024;
    /// Length of a guest or volume name (a file name on the host).
    pub const NAME_LEN: RangeInclusive<usize> = 1..=64;
    /// A disk's index in a guest's disk list (`disk{i}`): far more disks than a guest has.
    pub const DISK_INDEX: RangeInclusive<u64> = 0..=255;
    /// How many disks or volumes one storage-copy call names.
    pub const DISK_COUNT: RangeInclusive<u64> = 1..=256;
}

/// What a name must look like.
pub const NAME_RULE: &str = "1 to 64 letters, digits, '-', '_', '.', not starting with '.'";

/// Whether a guest or volume name is safe as a file name: 1 to 64 ASCII letters, digits,
/// `-`, `_`, `.`, not starting with `.` (so never `..` or a hidden file, never a `/`).
pub fn valid_name(n: &str) -> bool {
    limits::NAME_LEN.contains(&n.len())
        && !n.starts_with('.')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A request that parses but carries a value out of its range. One line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// A number outside its range.
    #[error("{op}: {field} {value} is out of range ({}..={})", .allowed.start(), .allowed.end())]
    OutOfRange {
        /// The call (`guest_stop`).
        op: &'static str,
        /// The field, with its path inside the request (`spec.disks[0].size_mib`).
        field: String,
        /// The value given.
        value: u64,
        /// The allowed range.
        allowed: RangeInclusive<u64>,
    },
    /// A name that cannot be a file name.
    #[error("{op}: {field} {value} is not a valid name ({NAME_RULE})")]
    BadName {
        /// The call.
        op: &'static str,
        /// The field.
        field: String,
        /// The name given, quoted and cut to a readable length.
        value: String,
    },
    /// A value that is not of the expected form.
    #[error("{op}: {field} {value} is not {expected}")]
    BadValue {
        /// The call.
        op: &'static str,
        /// The field.
        field: String,
        /// The value given, quoted and cut to a readable length.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not a request.
    #[error("malformed request: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A request with a value out of range.
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
}

/// Parses one request line (trailing newline allowed) and checks every value in it.
pub fn decode_request(line: &str) -> Result<Request, DecodeError> {
    let req: Request = serde_json::from_str(line)?;
    req.validate()?;
    Ok(req)
}

/// Quoted and at most 70 characters, for messages.
fn shown(s: &str) -> String {
    match s.char_indices().nth(70) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// Collects the checks of one request.
struct Check {
    op: &'static str,
}

impl Check {
    fn range(&self, field: impl Into<String>, value: u64, allowed: RangeInclusive<u64>) -> Result<(), InvalidRequest> {
        if allowed.contains(&value) {
            Ok(())
        } else {
            Err(InvalidRequest::OutOfRange { op: self.op, field: field.into(), value, allowed })
        }
    }

    fn name(&self, field: impl Into<String>, value: &str) -> Result<(), InvalidRequest> {
        if valid_name(value) {
            Ok(())
        } else {
            Err(InvalidRequest::BadName { op: self.op, field: field.into(), value: shown(value) })
        }
    }

    fn bad(&self, field: impl Into<String>, value: &str, expected: &'static str) -> InvalidRequest {
        InvalidRequest::BadValue { op: self.op, field: field.into(), value: shown(value), expected }
    }

    fn guest(&self, at: &str, g: &GuestSpec) -> Result<(), InvalidRequest> {
        self.name(format!("{at}.name"), &g.name)?;
        self.range(format!("{at}.vcpus"), u64::from(g.vcpus), limits::VCPUS)?;
        self.range(format!("{at}.memory_mib"), g.memory_mib, limits::MEMORY_MIB)?;
        if let BootSource::Lab { dirty_mb_s, wss_mib, disk_mb_s } = g.boot {
            self.range(format!("{at}.boot.dirty_mb_s"), u64::from(dirty_mb_s), limits::DIRTY_MB_S)?;
            self.range(format!("{at}.boot.disk_mb_s"), u64::from(disk_mb_s), limits::DISK_MB_S)?;
            self.range(format!("{at}.boot.wss_mib"), u64::from(wss_mib), limits::WSS_MIB)?;
        }
        for (i, n) in g.nics.iter().enumerate() {
            if let Some(ip) = &n.ip {
                if !ipv4_with_prefix(ip) {
                    return Err(self.bad(format!("{at}.nics[{i}].ip"), ip, "an IPv4 address with a prefix, e.g. 192.0.2.10/24"));
                }
            }
        }
        for (i, d) in g.disks.iter().enumerate() {
            self.name(format!("{at}.disks[{i}].volume"), &d.volume)?;
            if let Some(size) = d.size_mib {
                self.range(format!("{at}.disks[{i}].size_mib"), size, limits::DISK_SIZE_MIB)?;
            }
        }
        if let Some(p) = g.console_port {
            self.range(format!("{at}.console_port"), u64::from(p), limits::CONSOLE_PORT)?;
        }
        if let Some(grp) = &g.group {
            self.name(format!("{at}.group"), grp)?;
        }
        Ok(())
    }

    fn params(&self, at: &str, p: &MigrationParams) -> Result<(), InvalidRequest> {
        self.range(format!("{at}.timeout_s"), p.timeout_s, limits::MIGRATION_TIMEOUT_S)?;
        self.range(format!("{at}.max_downtime_ms"), p.max_downtime_ms, limits::MAX_DOWNTIME_MS)?;
        if let Some(b) = p.bandwidth_bytes_per_s {
            self.range(format!("{at}.bandwidth_bytes_per_s"), b, limits::BANDWIDTH_BYTES_PER_S)?;
        }
        self.range(format!("{at}.multifd_channels"), u64::from(p.multifd_channels), limits::MULTIFD_CHANNELS)?;
        self.range(format!("{at}.stop_timeout_s"), p.stop_timeout_s, limits::STOP_TIMEOUT_S)
    }

    fn throttle(&self, at: &str, t: &vmove_plan::converge::ThrottleParams) -> Result<(), InvalidRequest> {
        for (f, v) in [
            ("cpu_throttle_initial_pct", t.cpu_throttle_initial_pct),
            ("cpu_throttle_increment_pct", t.cpu_throttle_increment_pct),
            ("max_cpu_throttle_pct", t.max_cpu_throttle_pct),
        ] {
            if let Some(v) = v {
                self.range(format!("{at}.{f}"), u64::from(v), limits::THROTTLE_PCT)?;
            }
        }
        if let Some(mb) = t.vcpu_dirty_limit_mb_per_s {
            self.range(format!("{at}.vcpu_dirty_limit_mb_per_s"), mb, limits::DIRTY_LIMIT_MB_PER_S)?;
        }
        Ok(())
    }

    fn setup(&self, at: &str, s: &crate::SourceSetup) -> Result<(), InvalidRequest> {
        if s.capabilities.len() > 64 {
            return Err(self.bad(format!("{at}.capabilities"), &s.capabilities.len().to_string(), "at most 64 capabilities"));
        }
        for (i, (name, _)) in s.capabilities.iter().enumerate() {
            let ok = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(self.bad(format!("{at}.capabilities[{i}]"), name, "a QEMU capability name (a-z, 0-9, '-')"));
            }
        }
        self.range(format!("{at}.multifd_channels"), u64::from(s.multifd_channels), limits::MULTIFD_CHANNELS)?;
        self.range(format!("{at}.downtime_limit_ms"), s.downtime_limit_ms, limits::MAX_DOWNTIME_MS)?;
        self.throttle(&format!("{at}.throttle"), &s.throttle)
    }

    fn job(&self, at: &str, j: &JobSpec) -> Result<(), InvalidRequest> {
        for (f, v) in [("dirty_rate_bytes_per_s", j.dirty_rate_bytes_per_s), ("link_bytes_per_s", j.link_bytes_per_s)] {
            if let Some(v) = v {
                self.range(format!("{at}.{f}"), v, limits::MEASURED_BYTES_PER_S)?;
            }
        }
        self.guest(&format!("{at}.guest"), &j.guest)?;
        if !socket_addr(&j.source.address) {
            return Err(self.bad(format!("{at}.source.address"), &j.source.address, "IP:PORT"));
        }
        if let Some(n) = j.max_incoming {
            self.range(format!("{at}.max_incoming"), u64::from(n), limits::MAX_INCOMING)?;
        }
        self.params(&format!("{at}.params"), &j.params)
    }
}

/// `a.b.c.d/p` with p in 0..=32 (what the lab image takes on its kernel command line).
fn ipv4_with_prefix(s: &str) -> bool {
    let Some((a, p)) = s.split_once('/') else { return false };
    a.parse::<std::net::Ipv4Addr>().is_ok()
        && !p.is_empty()
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u8>().is_ok_and(|p| p <= 32)
}

/// `IP:PORT` with a port other than 0.
fn socket_addr(s: &str) -> bool {
    s.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0)
}

impl Request {
    /// Checks every number against its range in [`limits`], and every guest and volume
    /// name against [`valid_name`]. The agent refuses a request that fails.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let c = Check { op: self.op() };
        match self {
            Request::Health
            | Request::HostInfo
            | Request::HostDrain
            | Request::HostUndrain
            | Request::GuestList
            | Request::JobList => Ok(()),
            Request::GuestDefine { spec } => c.guest("spec", spec),
            Request::JobSubmit { spec } => c.job("spec", spec),
            Request::GuestStop { name, timeout_s, .. } | Request::PeerStopGuest { name, timeout_s, .. } => {
                c.name("name", name)?;
                c.range("timeout_s", *timeout_s, limits::STOP_TIMEOUT_S)
            }
            Request::LinkMeasure { source, max_age_s } => {
                c.name("source.name", &source.name)?;
                if !socket_addr(&source.address) {
                    return Err(c.bad("source.address", &source.address, "IP:PORT"));
                }
                c.range("max_age_s", *max_age_s, limits::LINK_MAX_AGE_S)
            }
            Request::PeerLinkSend { addr, duration_ms } => {
                if !socket_addr(addr) {
                    return Err(c.bad("addr", addr, "IP:PORT"));
                }
                c.range("duration_ms", *duration_ms, limits::LINK_PROBE_MS)
            }
            Request::GuestDirtyRate { name, calc_s, calc_ms } => {
                c.name("name", name)?;
                if let Some(ms) = calc_ms {
                    c.range("calc_ms", *ms, limits::CALC_MS)?;
                }
                c.range("calc_s", *calc_s, limits::CALC_S)
            }
            Request::GuestLog { name, max_bytes } => {
                c.name("name", name)?;
                c.range("max_bytes", *max_bytes, limits::LOG_MAX_BYTES)
            }
            Request::GuestConsole { name, replay } => {
                c.name("name", name)?;
                match replay {
                    crate::ConsoleReplay::Tail(n) => c.range("replay.tail", *n, limits::CONSOLE_REPLAY_BYTES),
                    crate::ConsoleReplay::Live | crate::ConsoleReplay::From(_) => Ok(()),
                }
            }
            Request::JobWatch { from_seq, .. } => c.range("from_seq", *from_seq, limits::FROM_SEQ),
            Request::JobShow { .. } | Request::JobCancel { .. } | Request::JobResume { .. } | Request::JobRecover { .. } => {
                Ok(())
            }
            Request::PeerMigrateOut { name, uri, params, setup, .. } => {
                c.name("name", name)?;
                if !uri.strip_prefix("tcp:").is_some_and(socket_addr) {
                    return Err(c.bad("uri", uri, "tcp:IP:PORT"));
                }
                if let Some(s) = setup {
                    c.setup("setup", s)?;
                }
                c.params("params", params)
            }
            Request::PeerMirrorStart { name, disks, nbd, tls_hostname, bandwidth_bytes_per_s, .. } => {
                c.name("name", name)?;
                c.range("disks.len", disks.len() as u64, limits::DISK_COUNT)?;
                for (i, d) in disks.iter().enumerate() {
                    c.range(format!("disks[{i}]"), u64::from(*d), limits::DISK_INDEX)?;
                }
                if !socket_addr(nbd) {
                    return Err(c.bad("nbd", nbd, "IP:PORT"));
                }
                if let Some(h) = tls_hostname {
                    c.name("tls_hostname", h)?;
                }
                if let Some(b) = bandwidth_bytes_per_s {
                    c.range("bandwidth_bytes_per_s", *b, limits::BANDWIDTH_BYTES_PER_S)?;
                }
                Ok(())
            }
            Request::PeerDropVolumes { name, volumes, .. } => {
                c.name("name", name)?;
                c.range("volumes.len", volumes.len() as u64, limits::DISK_COUNT)?;
                for (i, v) in volumes.iter().enumerate() {
                    c.name(format!("volumes[{i}].pool"), &v.pool)?;
                    c.name(format!("volumes[{i}].volume"), &v.volume)?;
                }
                Ok(())
            }
            Request::PeerMigrateTune { name, downtime_limit_ms, throttle } => {
                c.name("name", name)?;
                if let Some(ms) = downtime_limit_ms {
                    c.range("downtime_limit_ms", *ms, limits::MAX_DOWNTIME_MS)?;
                }
                if let Some(t) = throttle {
                    c.throttle("throttle", t)?;
                }
                Ok(())
            }
            Request::PeerMigrateResume { name, uri } => {
                c.name("name", name)?;
                if !uri.strip_prefix("tcp:").is_some_and(socket_addr) {
                    return Err(c.bad("uri", uri, "tcp:IP:PORT"));
                }
                Ok(())
            }
            Request::PeerMigrateStartPostcopy { name } => c.name("name", name),
            Request::GuestStart { name }
            | Request::GuestUndefine { name }
            | Request::GuestShow { name }
            | Request::PeerGuest { name, .. }
            | Request::PeerRelease { name, .. }
            | Request::PeerDetachInterfaces { name }
            | Request::PeerDetachVolumes { name }
            | Request::PeerAttachVolumes { name }
            | Request::PeerStartGuest { name }
            | Request::PeerUndefine { name }
            | Request::PeerMigrateQuery { name }
            | Request::PeerMigrateContinue { name }
            | Request::PeerMigrateCancel { name }
            | Request::PeerTakeFrames { name }
            | Request::PeerMigrateFinish { name }
            | Request::PeerLocalVolumes { name }
            | Request::PeerMirrorQuery { name }
            | Request::PeerMirrorWriteBlocking { name }
            | Request::PeerMirrorFinish { name }
            | Request::PeerMirrorAbort { name } => c.name("name", name),
        }
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
