//! The agent's journal: what it is about to do, written (fsync + rename) before doing it.
//!
//! Each intent is a file `journal/<seq>.json` holding a versioned [`Entry`]. It is written
//! before the action and removed once the action's outcome is durable elsewhere (the guest
//! record). A restarted agent finds the intents still present and reconciles each one
//! against what it sees (QEMU processes, taps, files).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Journal format version.
pub const VERSION: u32 = 1;

/// What the agent was about to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// Define (persist) a guest.
    Define {
        /// Guest.
        guest: String,
    },
    /// Start a guest's QEMU.
    Start {
        /// Guest.
        guest: String,
    },
    /// Stop a guest.
    Stop {
        /// Guest.
        guest: String,
        /// Forced.
        force: bool,
    },
    /// Remove a guest's definition.
    Undefine {
        /// Guest.
        guest: String,
    },
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Format version.
    pub version: u32,
    /// Sequence number.
    pub seq: u64,
    /// Unix time, ms.
    pub at_ms: u64,
    /// The intent.
    pub intent: Intent,
}

/// The journal directory.
pub struct Journal {
    dir: PathBuf,
    next: AtomicU64,
}

/// An open intent; [`Journal::done`] closes it.
#[derive(Debug)]
pub struct Ticket(u64);

impl Journal {
    /// Opens (creates) the journal under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Journal> {
        let dir = state_dir.join("journal");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let max = Self::read_dir(&dir)?.iter().map(|e| e.seq).max().unwrap_or(0);
        Ok(Journal { dir, next: AtomicU64::new(max + 1) })
    }

    fn read_dir(dir: &Path) -> Result<Vec<Entry>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json") {
                match std::fs::read_to_string(&p).ok().and_then(|t| serde_json::from_str::<Entry>(&t).ok()) {
                    Some(entry) => v.push(entry),
                    None => {
                        tracing::warn!("journal: dropping unreadable record {}", p.display());
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
        v.sort_by_key(|e| e.seq);
        Ok(v)
    }

    /// Writes an intent durably before acting.
    pub fn begin(&self, intent: Intent) -> Result<Ticket> {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let e = Entry { version: VERSION, seq, at_ms, intent };
        vmove_model::write_atomic(&self.path(seq), serde_json::to_string(&e)?.as_bytes())
            .context("journal write")?;
        Ok(Ticket(seq))
    }

    /// Closes an intent whose outcome is now durable.
    pub fn done(&self, t: Ticket) {
        let _ = std::fs::remove_file(self.path(t.0));
    }

    /// Intents left open by a previous run, oldest first.
    pub fn pending(&self) -> Result<Vec<Entry>> {
        Self::read_dir(&self.dir)
    }

    /// Removes a reconciled intent.
    pub fn forget(&self, seq: u64) {
        let _ = std::fs::remove_file(self.path(seq));
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:012}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_intents_survive_a_restart_and_closed_ones_do_not() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        let a = j.begin(Intent::Start { guest: "vm1".into() }).unwrap();
        let _b = j.begin(Intent::Stop { guest: "vm2".into(), force: true }).unwrap();
        j.done(a);
        drop(j);
        let j = Journal::open(d.path()).unwrap();
        let p = j.pending().unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].intent, Intent::Stop { guest: "vm2".into(), force: true });
        let c = j.begin(Intent::Undefine { guest: "vm3".into() }).unwrap();
        assert!(c.0 > p[0].seq, "sequence numbers keep increasing across restarts");
    }

    #[test]
    fn a_torn_record_is_dropped_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::open(d.path()).unwrap();
        std::fs::write(d.path().join("journal/000000000099.json"), b"{\"version\":1,\"se").unwrap();
        assert!(j.pending().unwrap().is_empty());
    }
}
