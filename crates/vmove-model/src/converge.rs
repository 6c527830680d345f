//! How a live migration that does not converge on its own is helped along.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Convergence policy of a live migration (`migrate --converge`, `[policy] converge`).
///
/// Every policy but `none` starts with a low downtime limit and raises it, up to the
/// maximum downtime, while the migration is stuck; they differ in what comes after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Converge {
    /// A fixed downtime limit (the maximum); the timeout cancels. What vmove did before
    /// convergence policies existed, and what a request without a policy means.
    #[default]
    None,
    /// Raise the downtime limit, then throttle the guest (QEMU auto-converge, or
    /// dirty-limit where KVM has a dirty ring); the timeout cancels.
    Throttle,
    /// Raise the downtime limit, then switch to post-copy (needs `allow_postcopy`).
    Postcopy,
    /// Raise the downtime limit, then throttle, then switch to post-copy if the
    /// policy allows it; the timeout cancels what is still pre-copy.
    Auto,
}

impl Converge {
    /// Every policy, mildest first.
    pub const ALL: [Converge; 4] = [
        Converge::None,
        Converge::Throttle,
        Converge::Postcopy,
        Converge::Auto,
    ];

    /// `none`, `throttle`, `postcopy`, `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Converge::None => "none",
            Converge::Throttle => "throttle",
            Converge::Postcopy => "postcopy",
            Converge::Auto => "auto",
        }
    }

    /// Whether the downtime limit starts low and climbs (every policy but `none`).
    pub fn climbs_downtime(self) -> bool {
        self != Converge::None
    }

    /// Whether the guest may be throttled.
    pub fn may_throttle(self) -> bool {
        matches!(self, Converge::Throttle | Converge::Auto)
    }

    /// Whether the migration may switch to post-copy (if the cluster policy allows it).
    pub fn may_postcopy(self) -> bool {
        matches!(self, Converge::Postcopy | Converge::Auto)
    }
}

impl fmt::Display for Converge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a convergence policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown convergence policy {0:?} (none, throttle, postcopy, auto)")]
pub struct ConvergeParseError(pub String);

impl FromStr for Converge {
    type Err = ConvergeParseError;

    fn from_str(s: &str) -> Result<Converge, ConvergeParseError> {
        let w = s.trim().to_ascii_lowercase();
        Converge::ALL
            .into_iter()
            .find(|c| c.as_str() == w || (w == "post-copy" && *c == Converge::Postcopy))
            .ok_or_else(|| ConvergeParseError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_serde() {
        for c in Converge::ALL {
            assert_eq!(c.as_str().parse::<Converge>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(j, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Converge>(&j).unwrap(), c);
        }
        assert_eq!(" AUTO ".parse::<Converge>(), Ok(Converge::Auto));
        assert_eq!("post-copy".parse::<Converge>(), Ok(Converge::Postcopy));
        let e = "fast".parse::<Converge>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown convergence policy \"fast\" (none, throttle, postcopy, auto)"
        );
        assert!(serde_json::from_str::<Converge>("\"fast\"").is_err());
        assert_eq!(Converge::default(), Converge::None);
    }

    #[test]
    fn rungs_per_policy() {
        let t = |c: Converge| (c.climbs_downtime(), c.may_throttle(), c.may_postcopy());
        assert_eq!(t(Converge::None), (false, false, false));
        assert_eq!(t(Converge::Throttle), (true, true, false));
        assert_eq!(t(Converge::Postcopy), (true, false, true));
        assert_eq!(t(Converge::Auto), (true, true, true));
    }
}
