//! The registry's error.
use std::path::PathBuf;
use std::time::Duration;

use vmove_store::StoreError;

use crate::MigrationClaim;

/// Results of the registry.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The store failed (unreachable, a write that may not have happened, damaged data).
    #[error("the cluster's store")]
    Store(#[from] StoreError),
    /// A TLS file could not be read.
    #[error("read the {what} {}", path.display())]
    Read {
        /// `CA certificate`, `client certificate` or `client key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster file does not say etcd.
    #[error("the cluster file keeps its state in files, not in etcd (no [store] kind = \"etcd\")")]
    NotEtcd,
    /// The store holds no cluster definition yet.
    #[error("the store (namespace {namespace}) holds no cluster yet: seed it with `vmove cluster import FILE`")]
    Empty {
        /// The namespace.
        namespace: String,
    },
    /// `import` into a store that holds a cluster already.
    #[error("the store (namespace {namespace}) already holds cluster {name}: export it, or import with --replace")]
    AlreadyImported {
        /// The namespace.
        namespace: String,
        /// The cluster it holds.
        name: String,
    },
    /// The store's cluster definition is not valid (names a missing host, ...).
    #[error("the cluster in the store is not valid: {0}")]
    Invalid(String),
    /// Another job migrates the guest.
    #[error(
        "guest {} is already being migrated by job {} ({} from {} to {})",
        .0.guest, .0.job, .0.mode, .0.source, .0.target
    )]
    Claimed(Box<MigrationClaim>),
    /// A host is still a member (its agent renews its lease) after the wait.
    #[error("host {host} is alive: its agent kept its lease for {} s (lease {lease:x}, TTL {ttl_s} s)", waited.as_secs())]
    HostAlive {
        /// The host.
        host: String,
        /// How long it was watched.
        waited: Duration,
        /// Its lease.
        lease: i64,
        /// Its lease's TTL, seconds.
        ttl_s: u64,
    },
    /// `host remove` of a host the store still places guests on.
    #[error("{host} has guests in the cluster's store ({}): migrate or destroy them first", guests.join(", "))]
    HostHasGuests {
        /// The host.
        host: String,
        /// Its guests.
        guests: Vec<String>,
    },
    /// `host remove` of a host the store does not know.
    #[error("the cluster's store has no host named {0}")]
    NoHost(String),
    /// A change to the cluster definition lost the compare-and-swap race this many times.
    #[error("the cluster definition kept changing under {0} attempts to update it: try again")]
    Contended(u32),
    /// A host's store holds no job of this id.
    #[error("{host} has no job {id}")]
    NoJob {
        /// The host.
        host: String,
        /// The job.
        id: String,
    },
    /// A followed job's host lost its membership (its agent died or lost etcd) before the
    /// job ended.
    #[error("{host} left the cluster (its agent's lease expired) while job {id} was running; once it is back: `vmove job show {id}`, `vmove job recover {id}`")]
    HostGone {
        /// The host.
        host: String,
        /// The job.
        id: String,
    },
}

impl RegistryError {
    /// The store error underneath, if this is one.
    pub fn store(&self) -> Option<&StoreError> {
        match self {
            RegistryError::Store(e) => Some(e),
            _ => None,
        }
    }
}
