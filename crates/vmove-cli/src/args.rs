//! Command-line arguments (the commands of README.md and docs/DESIGN.md).
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// vmove moves virtual machines between KVM hosts: offline, forced offline and live.
#[derive(Parser, Debug)]
#[command(name = "vmove", version)]
pub struct Cli {
    /// Cluster file.
    #[arg(long, global = true, env = "VMOVE_CLUSTER", default_value = "cluster.toml")]
    pub cluster: PathBuf,
    /// Machine-readable output (JSON; JSON lines for streams).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The lab: a cluster of network namespaces on this machine.
    #[command(subcommand)]
    Lab(LabCmd),
    /// Hosts and their inventory.
    #[command(subcommand)]
    Host(HostCmd),
    /// Guests.
    #[command(subcommand)]
    Guest(GuestCmd),
    /// Move a guest to another host: prechecks, then the steps of its mode.
    Migrate(MigrateArgs),
    /// Migration jobs.
    #[command(subcommand)]
    Job(JobCmd),
    /// Oracle Exadata's oedacli command language (LOAD FILE, MIGRATE GUEST, MERGE/DEPLOY ACTIONS, ...),
    /// interactive or from a script.
    Oedacli(OedacliArgs),
    /// The cluster's definition: drift against the agents, export and import (etcd),
    /// members and their leases.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Print a shell completion script: `vmove completions bash > /etc/bash_completion.d/vmove`.
    Completions {
        /// bash, zsh or fish.
        shell: Shell,
    },
    /// Write the manual pages (roff): vmove(1) and one page per command (vmove-migrate(1), ...).
    Manpage {
        /// Directory to write them to (made if missing); default: print vmove(1) on standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The shells `vmove completions` writes for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Make a new cluster in a directory: its CA, an operator certificate and a cluster
    /// file without hosts (add them with `vmove host add`).
    Init(InitArgs),
    /// Where the cluster (the file, or etcd when the file says so) and the agents' reports
    /// differ (drift); non-zero if they do.
    Check,
    /// Write the cluster held in etcd as a cluster file (hosts, policy, guests and where
    /// they are now; the TLS files and [store] of the cluster file in use).
    Export {
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Seed the etcd the cluster file names with the file's hosts, policy and guests.
    Import {
        /// Replace a cluster the store holds already (its guests become exactly the file's).
        #[arg(long)]
        replace: bool,
    },
    /// The hosts whose agents hold a lease in etcd.
    Members,
    /// Wait until a host's etcd lease has expired (its agent is dead or cut off, and its
    /// guests are paused and free to take); non-zero if the host is still alive.
    WaitDead {
        /// Host name.
        host: String,
        /// How long to wait (default: twice the lease TTL and 5 s).
        #[arg(long)]
        timeout: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory for the cluster file (DIR/cluster.toml) and its PKI (DIR/pki); made if
    /// missing. Keep it on the operator's machine: it holds the CA's key.
    #[arg(long)]
    pub dir: PathBuf,
    /// Cluster name (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Guest network, a bridge on every host: NAME[,bridge=BR][,vlan=N][,cidr=A/P]
    /// (bridge defaults to NAME); repeatable.
    #[arg(long)]
    pub network: Vec<String>,
    /// Storage pool, a directory every host sees at the same absolute path: NAME=PATH; or
    /// NAME=PATH,local: a directory of each host's own (its volumes are copied when a guest
    /// moves); repeatable.
    #[arg(long)]
    pub pool: Vec<String>,
}

#[derive(Args, Debug)]
pub struct OedacliArgs {
    /// Script file (`-`: standard input). Without it: an `oedacli> ` prompt when standard
    /// input is a terminal, else a script read from standard input.
    pub script: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Guest name.
    pub guest: String,
    /// Target host.
    #[arg(long)]
    pub to: String,
    /// Source host (default: where the cluster file says the guest is).
    #[arg(long)]
    pub from: Option<String>,
    /// live, offline or offline-force (offlineforce).
    #[arg(long, default_value = "live")]
    pub mode: String,
    /// Run exactly one step (STOP_GUEST or stop-guest), or PRECHECK_LIVEMIGRATION.
    #[arg(long)]
    pub step: Option<String>,
    /// Run the prechecks only; change nothing.
    #[arg(long)]
    pub precheck: bool,
    /// Cancel a live migration that has not finished after this long (default: policy, 10m).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Maximum downtime at switchover (default: policy, 300ms).
    #[arg(long)]
    pub max_downtime: Option<String>,
    /// Bandwidth cap, e.g. 100M (MiB/s) or 800Mbit (default: unlimited).
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// When memory does not converge: none, throttle, postcopy or auto (default: policy, auto).
    #[arg(long)]
    pub converge: Option<String>,
    /// Migrate memory in clear text (trusted networks, benchmarks).
    #[arg(long)]
    pub insecure_transport: bool,
    /// multifd channels (0 = one stream).
    #[arg(long, default_value_t = 2)]
    pub multifd: u8,
    /// Keep the source's copies of local volumes after the move (their leases are released;
    /// by default they are deleted once the guest runs on the target).
    #[arg(long)]
    pub keep_source_volumes: bool,
    /// Go on even if this check fails (its finding becomes a warning); repeatable.
    #[arg(long, value_name = "CHECK")]
    pub ignore_check: Vec<String>,
    /// Return the job id at once instead of following the job.
    #[arg(long)]
    pub detach: bool,
    /// Test hook: fail this step on purpose (lab agents only).
    #[arg(long, hide = true)]
    pub inject_fault: Option<String>,
    /// Test hook: wait before this step until `vmove job resume` (lab agents only).
    #[arg(long, hide = true)]
    pub pause_before: Option<String>,
    /// Test hook: hold a live migration at switchover until `vmove job resume`.
    #[arg(long, hide = true)]
    pub pause_at_switchover: bool,
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Every job on every host, and every drain and evacuation.
    List,
    /// One job and its steps; a drain's record.
    Show {
        /// Job id (HOST-N), or a drain's (drain-HOST-N, evacuate-HOST-N).
        id: String,
    },
    /// Draw a live migration's memory transfer as an SVG picture: remaining bytes,
    /// transfer rate and dirty rate over time, escalations and the switchover marked.
    Plot {
        /// Job id.
        id: String,
        /// Where to write the SVG (default: ID.svg in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Follow a job's events until it ends; a drain's (DRAIN-ID): its table, live, and if
    /// its runner died, take the drain over and run it to its end.
    Watch {
        /// Job id, or a drain's (drain-HOST-N, evacuate-HOST-N).
        id: String,
    },
    /// Cancel a job before its point of no return; a drain: no new move starts, the moves
    /// not switched over yet are cancelled.
    Cancel {
        /// Job id, or a drain's.
        id: String,
    },
    /// Bring a failed job's guest back to running in exactly one place.
    Recover {
        /// Job id.
        id: String,
    },
    /// Let a job held by a test hook go on.
    #[command(hide = true)]
    Resume {
        /// Job id.
        id: String,
    },
}

/// Default lab directory.
pub const DEFAULT_LAB_DIR: &str = "/var/tmp/vmove-lab";

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Build the lab and print its cluster file's path.
    Up {
        /// Lab directory; its last component names the lab.
        #[arg(long, default_value = DEFAULT_LAB_DIR)]
        dir: PathBuf,
        /// Number of hosts.
        #[arg(long, default_value_t = 3)]
        hosts: u8,
        /// Where the cluster's state lives: `file` (each agent's directory, lease files on
        /// the pool, the cluster file) or `etcd` (an etcd cluster inside the lab, TLS from
        /// the lab CA).
        #[arg(long, default_value = "file")]
        store: String,
        /// etcd members with `--store etcd` (default 3).
        #[arg(long)]
        etcd_members: Option<u8>,
    },
    /// Tear the lab down (idempotent).
    Down {
        /// Lab directory.
        #[arg(long, default_value = DEFAULT_LAB_DIR)]
        dir: PathBuf,
    },
    /// Kill or start a lab host's agent (for fault drills; guests keep running).
    Agent {
        /// Lab directory.
        #[arg(long, default_value = DEFAULT_LAB_DIR)]
        dir: PathBuf,
        /// Host name (host1, host2, ...).
        host: String,
        /// `kill` (SIGKILL) or `start`.
        action: String,
    },
    /// Lab up, a guest with a workload, a live migration watched by a client, lab down.
    Demo {
        /// Lab directory.
        #[arg(long, default_value = DEFAULT_LAB_DIR)]
        dir: PathBuf,
        /// Leave the lab up at the end.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Every host of the cluster, with reachability and resources.
    List,
    /// One host's inventory.
    Show {
        /// Host name.
        host: String,
    },
    /// Add a host: issue its certificate, add it to the cluster file, and write the bundle
    /// to install on it as /etc/vmove (agent.toml, ca.pem, host.pem, host.key).
    Add(HostAddArgs),
    /// Remove a host without guests from the cluster file, and its bundle.
    Remove {
        /// Host name.
        host: String,
    },
    /// Put a host in maintenance and move every guest off it: planned targets, moves in
    /// parallel under limits, each a migration job with its prechecks.
    Drain(DrainArgs),
    /// End a host's maintenance: it takes guests and migrations again.
    Undrain {
        /// Host name.
        host: String,
    },
    /// Restart every guest of a dead host elsewhere (OFFLINEFORCE; the host is not asked).
    Evacuate(EvacuateArgs),
}

#[derive(Args, Debug)]
pub struct HostAddArgs {
    /// Host name (letters, digits, '-'): the name in its certificate.
    pub name: String,
    /// The agent's address on the management network: IP or IP:PORT (port 7450 unless
    /// given). Its certificate names this IP.
    #[arg(long)]
    pub address: String,
    /// Accelerator: kvm, tcg or auto (auto falls back to TCG without /dev/kvm).
    #[arg(long, default_value = "kvm")]
    pub accel: String,
    /// Serve Prometheus metrics: IP:PORT, or PORT on the host's address (off unless given).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Where to write the bundle (default: hosts/NAME beside the cluster file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The agent's configuration directory on the host.
    #[arg(long, default_value = vmove_api::bootstrap::CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// The agent's state directory on the host.
    #[arg(long, default_value = vmove_api::bootstrap::STATE_DIR)]
    pub state_dir: PathBuf,
    /// The agent's runtime directory on the host.
    #[arg(long, default_value = vmove_api::bootstrap::RUN_DIR)]
    pub run_dir: PathBuf,
    /// The host is in the cluster file already: issue a new certificate and bundle (after
    /// a change of address, or of the cluster's pools and networks).
    #[arg(long)]
    pub reissue: bool,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// Host name.
    pub host: String,
    /// Print the plan and its predicted duration; change nothing (no maintenance either).
    #[arg(long)]
    pub dry_run: bool,
    /// Moves at once in the cluster (at most --per-host out of and into any host besides).
    #[arg(long, default_value_t = 5)]
    pub parallel: usize,
    /// Moves at once out of any one host, and into any one host.
    #[arg(long, default_value_t = 2)]
    pub per_host: usize,
    /// live or offline, for running guests (stopped guests always move offline).
    #[arg(long, default_value = "live")]
    pub mode: String,
    /// Print the drain's id and return; a background process runs the drain
    /// (`vmove job watch ID` follows it).
    #[arg(long, conflicts_with = "dry_run")]
    pub detach: bool,
    /// Test hook: the first attempt of GUEST's move fails STEP on purpose (lab agents
    /// only); repeatable, GUEST=STEP.
    #[arg(long, hide = true, value_name = "GUEST=STEP")]
    pub inject_fault: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EvacuateArgs {
    /// Host name.
    pub host: String,
    /// The operator says the host is dead (its guests are not running): no waiting.
    #[arg(long)]
    pub force: bool,
    /// How long the host must stay silent to count as dead without --force (e.g. 60s).
    #[arg(long, default_value = "60s")]
    pub grace: String,
    /// Print the plan and its predicted duration; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Moves at once in the cluster (at most 2 into any host besides).
    #[arg(long, default_value_t = 5)]
    pub parallel: usize,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Guest name.
    pub name: String,
    /// Host to define it on.
    #[arg(long)]
    pub host: String,
    /// Memory (512M, 2G).
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// QEMU CPU model.
    #[arg(long, default_value = "qemu64")]
    pub cpu_model: String,
    /// NIC: NET[,ip=A/P][,mac=M]; repeatable.
    #[arg(long)]
    pub nic: Vec<String>,
    /// Disk: POOL/VOLUME[:SIZE]; repeatable. SIZE creates the volume if missing.
    #[arg(long)]
    pub disk: Vec<String>,
    /// Boot image: `lab` (the lab image) or `disk` (the first disk).
    #[arg(long, default_value = "lab")]
    pub image: String,
    /// Lab image workload: memory dirty rate, MB/s.
    #[arg(long, default_value_t = 0)]
    pub dirty_rate: u32,
    /// Lab image workload: working set, MiB.
    #[arg(long, default_value_t = 64)]
    pub wss: u32,
    /// Lab image workload: write rate onto the guest's first disk, MB/s (its upper half,
    /// beside the disk log; 0: the disk log only).
    #[arg(long, default_value_t = 0)]
    pub disk_rate: u32,
    /// Start it once defined.
    #[arg(long)]
    pub start: bool,
    /// Anti-affinity group: drains and evacuations keep guests of one group on different hosts.
    #[arg(long)]
    pub group: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum GuestCmd {
    /// Define a guest on a host (checks resources, names and MACs).
    Create(CreateArgs),
    /// Guests, as the hosts report them.
    List {
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// One guest.
    Show {
        /// Guest name.
        name: String,
    },
    /// Start a guest.
    Start {
        /// Guest name.
        name: String,
    },
    /// Stop a guest through ACPI, or kill it with --force.
    Stop {
        /// Guest name.
        name: String,
        /// Kill instead of the ACPI power button.
        #[arg(long)]
        force: bool,
        /// How long to wait for a graceful stop (e.g. 2m).
        #[arg(long, default_value = "2m")]
        timeout: String,
    },
    /// Kill the guest if it runs and remove its definition (its volumes stay).
    Destroy {
        /// Guest name.
        name: String,
    },
    /// The guest's serial console log.
    Log {
        /// Guest name.
        name: String,
        /// At most this many bytes from the end.
        #[arg(long, default_value_t = 65536)]
        bytes: u64,
    },
    /// Attach to the guest's serial console through its agent; follows the guest across
    /// live migrations. Ctrl-] leaves (docs/console.md).
    Console {
        /// Guest name.
        name: String,
        /// First show the last N bytes of the console log (at most 1 MiB).
        #[arg(long, default_value_t = 0)]
        replay: u64,
    },
}
