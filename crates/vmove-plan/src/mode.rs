//! Migration modes: `OFFLINE`, `OFFLINEFORCE`, `LIVE` (oedacli `MIGRATE GUEST`'s `MODE=` argument).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a guest is moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Graceful shutdown on the source, move, start on the target.
    Offline,
    /// No graceful shutdown: kill the guest if the source answers, skip it if not, fence the
    /// volumes. Resurrects a guest from a failed host.
    OfflineForce,
    /// Pre-copy live migration: the guest keeps running apart from a brief switchover.
    Live,
}

/// A migration mode that [`Mode::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown migration mode {input:?}: expected offline, offlineforce (or offline-force) or live"
)]
pub struct ModeParseError {
    /// What was given.
    pub input: String,
}

impl Mode {
    /// Every mode, in oedacli's order.
    pub const ALL: [Mode; 3] = [Mode::Offline, Mode::OfflineForce, Mode::Live];

    /// Parses `offline`, `offlineforce`, `offline-force` (or `offline_force`) and `live`,
    /// case-insensitive.
    pub fn parse(s: &str) -> Result<Mode, ModeParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "offline" => Ok(Mode::Offline),
            "offlineforce" | "offline-force" | "offline_force" => Ok(Mode::OfflineForce),
            "live" => Ok(Mode::Live),
            _ => Err(ModeParseError {
                input: s.to_string(),
            }),
        }
    }

    /// The oedacli name: `OFFLINE`, `OFFLINEFORCE`, `LIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Offline => "OFFLINE",
            Mode::OfflineForce => "OFFLINEFORCE",
            Mode::Live => "LIVE",
        }
    }

    /// The lower-case name used on the wire: `offline`, `offlineforce`, `live`.
    pub fn wire_name(self) -> &'static str {
        match self {
            Mode::Offline => "offline",
            Mode::OfflineForce => "offlineforce",
            Mode::Live => "live",
        }
    }

    /// The CLI's spelling (`vmove migrate --mode`): `offline`, `offline-force`, `live`.
    pub fn cli_name(self) -> &'static str {
        match self {
            Mode::Offline => "offline",
            Mode::OfflineForce => "offline-force",
            Mode::Live => "live",
        }
    }

    /// Whether this is a live migration.
    pub fn is_live(self) -> bool {
        self == Mode::Live
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ModeParseError;
    fn from_str(s: &str) -> Result<Mode, ModeParseError> {
        Mode::parse(s)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.wire_name())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let s = String::deserialize(d)?;
        Mode::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_case_insensitively() {
        assert_eq!(Mode::parse("offline"), Ok(Mode::Offline));
        assert_eq!(Mode::parse("OFFLINE"), Ok(Mode::Offline));
        assert_eq!(Mode::parse("offlineforce"), Ok(Mode::OfflineForce));
        assert_eq!(Mode::parse("OfflineForce"), Ok(Mode::OfflineForce));
        assert_eq!(Mode::parse("offline-force"), Ok(Mode::OfflineForce));
        assert_eq!(Mode::parse("OFFLINE_FORCE"), Ok(Mode::OfflineForce));
        assert_eq!(Mode::parse("Live"), Ok(Mode::Live));
        assert_eq!("live".parse::<Mode>(), Ok(Mode::Live));
    }

    #[test]
    fn parse_error_names_the_accepted_values() {
        let e = Mode::parse("hot").unwrap_err();
        assert_eq!(
            e,
            ModeParseError {
                input: "hot".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "unknown migration mode \"hot\": expected offline, offlineforce (or offline-force) or live"
        );
    }

    #[test]
    fn names() {
        let names: Vec<_> = Mode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["OFFLINE", "OFFLINEFORCE", "LIVE"]);
        assert_eq!(Mode::OfflineForce.to_string(), "OFFLINEFORCE");
        assert_eq!(Mode::OfflineForce.cli_name(), "offline-force");
        assert!(Mode::Live.is_live() && !Mode::Offline.is_live());
    }

    #[test]
    fn serde_is_lower_case() {
        assert_eq!(
            serde_json::to_string(&Mode::OfflineForce).unwrap(),
            "\"offlineforce\""
        );
        assert_eq!(serde_json::to_string(&Mode::Live).unwrap(), "\"live\"");
        for m in Mode::ALL {
            let j = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Mode>(&j).unwrap(), m);
        }
        assert_eq!(
            serde_json::from_str::<Mode>("\"offline-force\"").unwrap(),
            Mode::OfflineForce
        );
        assert!(serde_json::from_str::<Mode>("\"warp\"").is_err());
    }
}
