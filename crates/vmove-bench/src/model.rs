//! What the benchmark measures and writes to `report.json` (plain data).
use serde::{Deserialize, Serialize};

/// A migration tool taking its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// `vmove migrate` with its defaults (TLS, 2 multifd channels, no bandwidth cap, 300 ms).
    Vmove,
    /// The same QEMU driven over QMP with QEMU's defaults: a plain `migrate tcp:...`.
    Qemu,
    /// `virsh migrate --live` (native: QEMU's own stream, managed by virsh).
    Virsh,
    /// `virsh migrate --live --p2p --tunnelled` (the stream goes through libvirtd).
    VirshTunnelled,
    /// `virsh migrate --live --auto-converge --postcopy --postcopy-after-precopy`: libvirt's
    /// best convergence (throttling during pre-copy, post-copy after the first pass).
    VirshBest,
    /// No migration: the hand-started guest stays where it is for as long as a migration
    /// takes (the probes' floor, and how often the guest breaks without a migration).
    Control,
    /// `virsh migrate --live --copy-storage-all`: libvirt copies the guest's local disk to a
    /// pre-created image on the target (NBD and QEMU's block mirror) and moves the memory.
    VirshCopyStorage,
}

impl Contender {
    /// Every contender, in report order.
    pub const ALL: [Contender; 7] = [
        Contender::Vmove,
        Contender::Qemu,
        Contender::Virsh,
        Contender::VirshBest,
        Contender::VirshTunnelled,
        Contender::VirshCopyStorage,
        Contender::Control,
    ];

    /// The contenders of a run without `--contenders` (tunnelled virsh and virsh with a
    /// storage copy are left out: pass them by name).
    pub const DEFAULT: [Contender; 5] =
        [Contender::Vmove, Contender::Qemu, Contender::Virsh, Contender::VirshBest, Contender::Control];

    /// Short name (command line, JSON, file names).
    pub fn id(self) -> &'static str {
        match self {
            Contender::Vmove => "vmove",
            Contender::Qemu => "qemu",
            Contender::Virsh => "virsh",
            Contender::VirshTunnelled => "virsh-tunnelled",
            Contender::VirshBest => "virsh-best",
            Contender::Control => "control",
            Contender::VirshCopyStorage => "virsh-copy-storage",
        }
    }

    /// What the report calls it.
    pub fn label(self) -> &'static str {
        match self {
            Contender::Vmove => "vmove migrate (defaults)",
            Contender::Qemu => "QEMU by hand (QEMU defaults)",
            Contender::Virsh => "virsh migrate --live",
            Contender::VirshTunnelled => "virsh migrate --live --tunnelled",
            Contender::VirshBest => "virsh migrate --live --auto-converge --postcopy --postcopy-after-precopy",
            Contender::Control => "no migration (control)",
            Contender::VirshCopyStorage => "virsh migrate --live --copy-storage-all",
        }
    }

    /// Parses [`Contender::id`].
    pub fn parse(s: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.id() == s)
    }

    /// Whether it migrates at all.
    pub fn migrates(self) -> bool {
        self != Contender::Control
    }

    /// Whether it needs libvirt.
    pub fn is_libvirt(self) -> bool {
        matches!(self, Contender::Virsh | Contender::VirshTunnelled | Contender::VirshBest | Contender::VirshCopyStorage)
    }

    /// Why it cannot take its turn in a cell whose guest has (or has not) a data disk in the
    /// hosts' local pools; None: it can.
    pub fn not_applicable(self, local_disk: bool) -> Option<&'static str> {
        match (self, local_disk) {
            (Contender::Qemu, true) => Some(
                "QEMU by hand moves memory only in this benchmark: a local disk would need an NBD export on the \
                 target and a drive-mirror on the source driven by hand, which it does not do",
            ),
            (Contender::Virsh | Contender::VirshBest | Contender::VirshTunnelled, true) => Some(
                "libvirt refuses to move a guest whose disk is not shared without a storage copy: that is \
                 virsh-copy-storage (`--copy-storage-all`)",
            ),
            (Contender::VirshCopyStorage, false) => Some("no local disk to copy: in this cell it would be plain virsh"),
            _ => None,
        }
    }
}

/// What the guest does during the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Nothing (the working set is allocated and read, never rewritten).
    Idle,
    /// HTTP requests from the client while the guest dirties 20 MB/s.
    Http20,
    /// Dirtying at a rate near the migration link's measured throughput (`--near-fraction`
    /// of the capped link; the QEMU 7.2 report's third workload).
    NearLink,
    /// Dirtying at twice the capped migration link's measured throughput (`--link-factor`):
    /// plain pre-copy cannot converge.
    TwoXLink,
    /// A data disk in the hosts' local pools (not shared; `--local-disk-mib`) with the lab
    /// guest's disk log written on it, while the guest dirties `--local-disk-dirty` MB/s.
    LocalDisk,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 5] =
        [Workload::Idle, Workload::Http20, Workload::NearLink, Workload::TwoXLink, Workload::LocalDisk];

    /// The workloads of a run without `--workloads`.
    pub const DEFAULT: [Workload; 3] = [Workload::Idle, Workload::Http20, Workload::TwoXLink];

    /// Short name.
    pub fn id(self) -> &'static str {
        match self {
            Workload::Idle => "idle",
            Workload::Http20 => "http-20",
            Workload::NearLink => "near-link",
            Workload::TwoXLink => "2x-link",
            Workload::LocalDisk => "local-disk",
        }
    }

    /// Whether its cells run on the capped link, dirtying in proportion to it.
    pub fn on_capped_link(self) -> bool {
        matches!(self, Workload::NearLink | Workload::TwoXLink)
    }

    /// Parses [`Workload::id`].
    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.id() == s)
    }
}

/// One cell of the matrix: a guest size and a workload, on one link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSpec {
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Workload.
    pub workload: Workload,
    /// The guest's dirty rate, MB/s.
    pub dirty_mb_s: u32,
    /// The guest's working set, MiB.
    pub wss_mib: u32,
    /// Whether the client sends HTTP requests during the migration.
    pub http_load: bool,
    /// The migration link's cap (tc tbf on both hosts' mgmt0), Mbit/s; None: the raw veth link.
    pub link_cap_mbit: Option<u32>,
    /// That link's throughput, measured by a plain TCP copy between the host namespaces, bytes/s.
    pub link_bytes_per_s: f64,
    /// The guest's data disk in the hosts' local pools (not shared), MiB; None: no data disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// What the guest writes onto that disk, MB/s.
    #[serde(default)]
    pub disk_write_mb_s: u32,
}

impl CellSpec {
    /// A cell on the raw (uncapped) link with the default 64 MiB working set; HTTP load
    /// for the HTTP workload.
    pub fn raw(memory_mib: u64, workload: Workload, dirty_mb_s: u32, link_bytes_per_s: f64) -> CellSpec {
        CellSpec {
            memory_mib,
            workload,
            dirty_mb_s,
            wss_mib: 64,
            http_load: workload == Workload::Http20,
            link_cap_mbit: None,
            link_bytes_per_s,
            disk_mib: None,
            disk_write_mb_s: 0,
        }
    }

    /// The same cell with a data disk of `mib` MiB in the hosts' local pools, written at
    /// `write_mb_s` MB/s.
    pub fn with_disk(self, mib: u64, write_mb_s: u32) -> CellSpec {
        CellSpec { disk_mib: Some(mib), disk_write_mb_s: write_mb_s, ..self }
    }

    /// `512M-idle`, `2048M-near-link`, ...
    pub fn id(&self) -> String {
        format!("{}M-{}", self.memory_mib, self.workload.id())
    }

    /// One line describing the cell.
    pub fn describe(&self) -> String {
        let guest = size_mib(self.memory_mib);
        let work = match self.workload {
            Workload::Idle => format!("idle (working set {} MiB, not rewritten)", self.wss_mib),
            Workload::Http20 => {
                format!("HTTP served while dirtying {} MB/s of a {} MiB working set", self.dirty_mb_s, self.wss_mib)
            }
            Workload::NearLink | Workload::TwoXLink => {
                format!("dirtying {} MB/s of a {} MiB working set", self.dirty_mb_s, self.wss_mib)
            }
            Workload::LocalDisk => format!(
                "a {} data disk in each host's local pool (not shared), written at {} MB/s (and the disk log), \
                 memory idle",
                size_mib(self.disk_mib.unwrap_or(0)),
                self.disk_write_mb_s
            ),
        };
        let link = match self.link_cap_mbit {
            Some(c) => format!("link capped at {c} Mbit/s"),
            None => "raw lab link".to_string(),
        };
        format!("{guest} guest, {work}, {link}")
    }
}

/// `512 MiB`, `2 GiB`.
pub fn size_mib(mib: u64) -> String {
    if mib >= 1024 && mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

/// One point of the remaining-bytes curve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Since the contender's command started, ms.
    pub t_ms: u64,
    /// RAM bytes still to send.
    pub remaining_bytes: u64,
    /// Bytes sent so far.
    pub transferred_bytes: u64,
}

/// What the client saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    /// UDP datagrams sent (one per ms).
    pub udp_sent: u64,
    /// UDP echoes received.
    pub udp_received: u64,
    /// Longest time without a UDP echo, ms (None: no echo at all).
    pub udp_longest_gap_ms: Option<u64>,
    /// UDP gaps of 20 ms or more: (start after the migration command started, length), ms.
    #[serde(default)]
    pub udp_gaps: Vec<(u64, u64)>,
    /// Longest stall of the TCP echo connection, ms.
    pub tcp_longest_stall_ms: Option<u64>,
    /// Why the TCP connection broke, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_error: Option<String>,
    /// Segments the client's TCP retransmitted over the run (`tcpi_total_retrans`): a
    /// segment lost, or not answered within the retransmission timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_retransmits: Option<u64>,
    /// HTTP requests answered (HTTP workload only).
    pub http_ok: u64,
    /// HTTP requests that failed.
    pub http_failed: u64,
    /// HTTP gaps of 200 ms or more: (start after the migration command started, length), ms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_gaps: Vec<(u64, u64)>,
    /// Longest time without an HTTP answer, ms (HTTP workload only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_longest_gap_ms: Option<u64>,
    /// UDP requests sent inside the measurement window (from the migration command's start
    /// to 300 ms before the probes stop, so that every one had time to come back).
    #[serde(default)]
    pub udp_window_sent: u64,
    /// Of those, requests never answered (frames lost at the switchover, or anywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_lost: Option<u64>,
    /// Requests never answered of those sent at the switchover: from 50 ms before the
    /// guest's last frame on the source tap to 50 ms after its first answer on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_lost_switchover: Option<u64>,
}

impl Outage {
    /// Lost at the switchover where the wire saw one, else lost in the whole window (the
    /// control, or a run without frame watches).
    pub fn lost_at_switchover(&self) -> Option<u64> {
        self.udp_lost_switchover.or(self.udp_lost)
    }
}

/// What the network saw: a packet-socket frame watch (kernel timestamps) on the guest's tap
/// in each host namespace, for every contender alike.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Wire {
    /// The tap watched on host1 (source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_tap: Option<String>,
    /// The tap watched on host2 (target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_tap: Option<String>,
    /// Frames from the guest seen on the source tap.
    pub src_frames: u64,
    /// Frames from the guest seen on the target tap (RARPs included).
    pub dst_frames: u64,
    /// The guest's last frame on the source tap before its first on the target, unix µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_last_frame_us: Option<u64>,
    /// The guest's first frame on the target tap (not a RARP), unix µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_first_frame_us: Option<u64>,
    /// The first RARP (QEMU's announce) on the target tap, unix µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_rarp_us: Option<u64>,
    /// The target's vCPUs run: QEMU's `RESUME` event on the target, unix µs (QEMU's own
    /// timestamp, read the contender's way: QMP, `virsh qemu-monitor-event`, vmove's job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_resumed_us: Option<u64>,
}

fn span_ms(from: Option<u64>, to: Option<u64>) -> Option<f64> {
    match (from, to) {
        (Some(a), Some(b)) => Some((b as f64 - a as f64) / 1000.0),
        _ => None,
    }
}

impl Wire {
    /// The guest's last frame on the source to its first on the target, ms.
    pub fn blackout_ms(&self) -> Option<f64> {
        span_ms(self.src_last_frame_us, self.dst_first_frame_us)
    }

    /// The guest's last frame on the source to the target's first RARP, ms.
    pub fn rarp_ms(&self) -> Option<f64> {
        span_ms(self.src_last_frame_us, self.dst_rarp_us)
    }

    /// The target's cold start: its `RESUME` to the guest's first frame there, ms.
    pub fn cold_start_ms(&self) -> Option<f64> {
        span_ms(self.dst_resumed_us, self.dst_first_frame_us)
    }
}

/// vmove's own prediction before the move: the `predicted-convergence` finding of
/// `vmove migrate --precheck --json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The finding's verdict (pass, warn, fail).
    pub verdict: String,
    /// Its reason, as printed.
    pub reason: String,
    /// The time it predicts for the move, s (its first "about …"), if it gives one for
    /// the move as asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_s: Option<f64>,
}

/// One migration by one contender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// [`CellSpec::id`].
    pub cell: String,
    /// Who.
    pub contender: Contender,
    /// Run number, from 1.
    pub run: u32,
    /// The guest's name.
    pub guest: String,
    /// Whether the migration completed within the time budget.
    pub converged: bool,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From the contender's command start to the guest answering on the target (the first UDP
    /// echo after the guest's first frame on the target tap), ms.
    pub total_ms: Option<u64>,
    /// The contender's command, wall clock, ms (it may end before or after the guest answers
    /// on the target: post-copy, cleanup of the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_ms: Option<u64>,
    /// QEMU's `total-time` of the memory migration, ms.
    pub qemu_total_ms: Option<u64>,
    /// QEMU's downtime, ms.
    pub downtime_ms: Option<u64>,
    /// Bytes sent.
    pub transferred_bytes: Option<u64>,
    /// Bytes of the local disk copied, as the tool reports them (vmove's job summary,
    /// libvirt's `disk_processed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// How long the disk copy took until the mirrors were in sync (vmove's job summary), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_copy_ms: Option<u64>,
    /// Bytes out of host1's management link (migration link) while the contender's command
    /// ran: memory, disk, TLS and control traffic alike, counted by the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_bytes: Option<u64>,
    /// Disk-log records the guest had written on host1 before the probes started, and how
    /// many of them hold data on host2's copy of the disk after the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_records: Option<(u64, u64)>,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Guest memory that is not zero pages (total − zero pages), bytes, where the tool reports it.
    pub touched_bytes: Option<u64>,
    /// Memory passes (dirty syncs).
    pub passes: Option<u64>,
    /// Dirty rate the guest achieved just before the migration, MB/s.
    pub dirty_rate_mb_s: Option<f64>,
    /// What the guest's data writer achieved just before the migration, MB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_write_mb_s: Option<f64>,
    /// The client's view.
    pub outage: Outage,
    /// The network's view of the switchover.
    #[serde(default)]
    pub wire: Wire,
    /// vmove's prediction (vmove only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
    /// Whether the guest answered TCP echo on the target afterwards (or on the source, if not converged).
    pub answers_after: bool,
    /// The first console line showing that the guest was damaged (oops, failed verification), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
    /// `VERIFY OK` lines on the console (memory sweeps that found every page intact).
    #[serde(default)]
    pub verify_ok: u64,
    /// Remaining bytes over time.
    pub samples: Vec<Sample>,
    /// Anything else worth keeping (parameters QEMU reported, ...).
    pub notes: Vec<String>,
}

impl RunResult {
    /// A run that has not measured anything yet.
    pub fn new(cell: String, contender: Contender, run: u32, guest: String, memory_bytes: u64) -> RunResult {
        RunResult {
            cell,
            contender,
            run,
            guest,
            converged: false,
            error: None,
            total_ms: None,
            command_ms: None,
            qemu_total_ms: None,
            downtime_ms: None,
            transferred_bytes: None,
            disk_bytes: None,
            disk_copy_ms: None,
            link_bytes: None,
            disk_records: None,
            disk_write_mb_s: None,
            memory_bytes,
            touched_bytes: None,
            passes: None,
            dirty_rate_mb_s: None,
            outage: Outage::default(),
            wire: Wire::default(),
            prediction: None,
            answers_after: false,
            damage: None,
            verify_ok: 0,
            samples: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// The machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `nproc`.
    pub nproc: usize,
    /// MemTotal, GiB.
    pub memory_gib: f64,
    /// CPU model name.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu: String,
    /// libvirtd's version, if installed.
    pub libvirt: Option<String>,
    /// vmove's version.
    pub vmove: String,
    /// The source tree the binaries came from: commit, and whether it had uncommitted changes.
    #[serde(default)]
    pub source: String,
}

/// What else ran on the machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conditions {
    /// /proc/loadavg before the first measurement.
    pub load_before: String,
    /// /proc/loadavg at the end.
    pub load_after: String,
    /// QEMU processes outside the benchmark's lab before it started (command line, shortened).
    pub other_qemu_before: Vec<String>,
    /// ...and at the end.
    pub other_qemu_after: Vec<String>,
    /// The largest number of foreign QEMUs seen between runs.
    pub other_qemu_max: usize,
    /// Runs during which at least one foreign QEMU existed.
    pub runs_with_other_qemu: usize,
}

/// The links.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Links {
    /// Raw lab link: plain TCP copies host1 → host2, bytes/s each.
    pub raw_samples: Vec<f64>,
    /// Their median.
    pub raw_bytes_per_s: f64,
    /// The cap for the near-link workload, Mbit/s.
    pub cap_mbit: Option<u32>,
    /// Capped link: plain TCP copies, bytes/s each.
    pub capped_samples: Vec<f64>,
    /// Their median.
    pub capped_bytes_per_s: Option<f64>,
}

/// Settings of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Runs per cell and contender.
    pub runs: u32,
    /// Time budget per migration, s (beyond it: cancelled, not converged).
    pub budget_s: u64,
    /// Near-link dirty rate as a fraction of the capped link's throughput.
    pub near_fraction: f64,
    /// Working set of the capped-link workloads, MiB.
    pub near_wss_mib: u32,
    /// 2x-link dirty rate as a multiple of the capped link's throughput.
    #[serde(default)]
    pub link_factor: f64,
    /// Quick mode.
    pub quick: bool,
    /// Size of the local-disk cells' data disk, MiB.
    #[serde(default)]
    pub local_disk_mib: u64,
}

/// A contender that could not take its turn in a cell, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotApplicable {
    /// [`CellSpec::id`].
    pub cell: String,
    /// Who.
    pub contender: Contender,
    /// Why.
    pub why: String,
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Start, UTC, RFC 3339.
    pub started: String,
    /// Wall time of the whole benchmark, s.
    pub duration_s: u64,
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Load and foreign QEMUs.
    pub conditions: Conditions,
    /// Settings.
    pub settings: Settings,
    /// Link measurements.
    pub links: Links,
    /// Contenders that took part.
    pub contenders: Vec<Contender>,
    /// Contenders left out, and why.
    pub left_out: Vec<(Contender, String)>,
    /// Contenders that could not take their turn in a cell, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applicable: Vec<NotApplicable>,
    /// The matrix.
    pub cells: Vec<CellSpec>,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// Remarks for the report (what was chosen and why, problems seen).
    pub remarks: Vec<String>,
}
