//! The fallback prediction of a move's duration, when the caller has none.
use serde::{Deserialize, Serialize};
use vmove_model::Policy;

use crate::mode::Mode;

/// Predicts how long a move takes from the guest's memory and the migration link.
///
/// - LIVE: `setup_s` + memory / (link − dirty rate), the dirty rate counted up to 90 % of
///   the link (a guest dirtying faster fails the convergence check anyway).
/// - OFFLINE and OFFLINEFORCE: `setup_s` + `offline_s` (stop, move the definition, start;
///   volumes live in shared pools, no memory is copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationModel {
    /// Migration link throughput, bytes per second.
    pub link_bytes_per_s: u64,
    /// Fixed cost of any move (prechecks, definition, leases), seconds.
    pub setup_s: u64,
    /// Stopping and starting the guest in the offline modes, seconds.
    pub offline_s: u64,
}

/// 1 Gbit/s.
pub const DEFAULT_LINK_BYTES_PER_S: u64 = 125_000_000;

impl Default for DurationModel {
    fn default() -> DurationModel {
        DurationModel {
            link_bytes_per_s: DEFAULT_LINK_BYTES_PER_S,
            setup_s: 5,
            offline_s: 60,
        }
    }
}

impl DurationModel {
    /// The default model with the policy's link throughput, when it gives one.
    pub fn for_policy(p: &Policy) -> DurationModel {
        DurationModel {
            link_bytes_per_s: p
                .migration_link_bytes_per_s
                .filter(|b| *b > 0)
                .unwrap_or(DEFAULT_LINK_BYTES_PER_S),
            ..DurationModel::default()
        }
    }

    /// Predicted seconds to move a guest of `memory_mib` in `mode`.
    pub fn predict_s(
        &self,
        memory_mib: u64,
        mode: Mode,
        dirty_rate_bytes_per_s: Option<u64>,
    ) -> u64 {
        match mode {
            Mode::Live => {
                let link = self.link_bytes_per_s.max(1);
                let net = link
                    .saturating_sub(dirty_rate_bytes_per_s.unwrap_or(0))
                    .max(link / 10)
                    .max(1);
                let bytes = u128::from(memory_mib) * 1_048_576;
                let copy_s = u64::try_from(bytes.div_ceil(u128::from(net))).unwrap_or(u64::MAX);
                self.setup_s.saturating_add(copy_s)
            }
            Mode::Offline | Mode::OfflineForce => self.setup_s.saturating_add(self.offline_s),
        }
    }
}
