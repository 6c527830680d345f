//! The checks of a drain record read from the store ([`DrainRecord::validate`]): names,
//! ranges, and states that hold together.
use vmove_plan::Mode;

use super::record::*;
use super::MAX_PARALLEL;

type Result<T> = std::result::Result<T, DrainError>;

impl DrainRecord {
    fn invalid(&self, what: impl Into<String>) -> DrainError {
        DrainError::Invalid { id: self.id.clone(), what: what.into() }
    }

    /// Checks a record read from the store: names, ranges, and that its states hold
    /// together.
    pub fn validate(&self) -> Result<()> {
        match parse_id(&self.id) {
            Some((k, h, _)) if k == self.kind && h == self.host => {}
            _ => return Err(self.invalid(format!("id {:?} is not {}-{}-N", self.id, self.kind.as_str(), self.host))),
        }
        if !(1..=MAX_PARALLEL).contains(&usize::try_from(self.parallel).unwrap_or(usize::MAX)) {
            return Err(self.invalid(format!("parallel {} out of range (1..={MAX_PARALLEL})", self.parallel)));
        }
        if !(1..=MAX_PARALLEL).contains(&usize::try_from(self.per_host).unwrap_or(usize::MAX)) {
            return Err(self.invalid(format!("per_host {} out of range (1..={MAX_PARALLEL})", self.per_host)));
        }
        if (self.kind == DrainKind::Evacuate) != (self.mode == Mode::OfflineForce) {
            return Err(self.invalid(format!("a {} does not move guests {}", self.kind.as_str(), self.mode.as_str())));
        }
        if self.rows.len() > MAX_ROWS {
            return Err(self.invalid(format!("{} rows (at most {MAX_ROWS})", self.rows.len())));
        }
        if self.takeovers > MAX_TAKEOVERS || self.inject_fault.len() > MAX_ROWS {
            return Err(self.invalid("takeovers or faults out of range"));
        }
        if self.error.as_ref().is_some_and(|e| e.len() > MAX_TEXT) {
            return Err(self.invalid("error too long"));
        }
        if self.updated_ms < self.created_ms {
            return Err(self.invalid("updated before it was created"));
        }
        match (self.state.ended(), self.ended_ms) {
            (true, Some(e)) if e >= self.created_ms => {}
            (false, None) => {}
            _ => return Err(self.invalid(format!("state {} with ended_ms {:?}", self.state, self.ended_ms))),
        }
        if self.runner.as_ref().is_some_and(|r| r.pid == 0 || r.machine.is_empty() || r.machine.len() > 255) {
            return Err(self.invalid("bad runner"));
        }
        if self.predicted_total_s.is_some_and(|p| p > MAX_PREDICTED_S) {
            return Err(self.invalid("predicted duration out of range"));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.rows {
            if !seen.insert(r.guest.as_str()) {
                return Err(self.invalid(format!("{} has two rows", r.guest)));
            }
            self.validate_row(r)?;
        }
        Ok(())
    }

    fn validate_row(&self, r: &DrainRow) -> Result<()> {
        let bad = |what: &str| self.invalid(format!("{}: {what}", r.guest));
        if !super::record::valid_name(&r.guest) || !super::record::valid_name(&r.from) || r.to.as_deref().is_some_and(|t| !super::record::valid_name(t)) {
            return Err(bad("bad guest or host name"));
        }
        if r.jobs.len() > MAX_JOBS_PER_ROW || r.jobs.iter().any(|j| !super::record::valid_name(j)) {
            return Err(bad("bad job list"));
        }
        if usize::try_from(r.attempts).unwrap_or(usize::MAX) > MAX_JOBS_PER_ROW || r.note.len() > MAX_TEXT {
            return Err(bad("attempts or note out of range"));
        }
        if r.downtime_ms.is_some_and(|d| d > MAX_DOWNTIME_MS) || r.predicted_s.is_some_and(|p| p > MAX_PREDICTED_S) {
            return Err(bad("downtime or prediction out of range"));
        }
        if let (Some(a), Some(b)) = (r.started_ms, r.ended_ms) {
            if b < a {
                return Err(bad("ended before it started"));
            }
        }
        if r.state == RowState::Running && r.to.is_none() {
            return Err(bad("running without a target"));
        }
        if self.state.ended() && !r.state.ended() {
            return Err(bad(&format!("{} in a drain that ended {}", r.state, self.state)));
        }
        Ok(())
    }
}
