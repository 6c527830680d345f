//! Prometheus metrics of `vmoved`, served over plain HTTP at `/metrics` on the
//! configuration's `metrics_listen` ([`serve`]; none by default).
//!
//! Fed by the end of every job ([`Metrics::job_ended`], from `jobs::runner::finish` and
//! from the jobs a restarted agent finds interrupted), the restart path
//! ([`Metrics::readopted`], from `reconcile`) and, at every scrape, the guest registry
//! and the job list ([`Live`]). The number of agent starts is kept in the state store
//! (`agent/starts`), so it counts restarts across the host's life.
use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use vmove_api::{JobKind, JobRecord, JobStatus, Summary};
use vmove_plan::Mode;
use vmove_store::Record;

use crate::error::Result;
use crate::state::State;

pub mod serve;
mod text;

pub use text::{Histogram, Text};

/// Whole migrations, seconds.
const DURATION_BOUNDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];
/// Downtime at the switchover, seconds.
const DOWNTIME_BOUNDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];
/// Memory passes of a live migration.
const PASS_BOUNDS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0];
/// Job outcomes, as labels.
const OUTCOMES: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// How many times an agent started on this state (`agent/starts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStarts {
    /// Starts so far, this one included.
    pub count: u64,
    /// The last start, unix ms.
    pub last_ms: u64,
}
impl Record for AgentStarts {
    const KIND: &'static str = "agent-starts";
    const VERSION: u32 = 1;
}

const STARTS_KEY: &str = "agent/starts";

/// Counts this start in the store; returns the number of starts, this one included.
pub async fn count_start(state: &State) -> Result<u64> {
    let count = state.get::<AgentStarts>(STARTS_KEY).await?.map_or(0, |s| s.count) + 1;
    state.put(STARTS_KEY, &AgentStarts { count, last_ms: crate::now_ms() }).await?;
    Ok(count)
}

#[derive(Debug)]
struct Inner {
    migrations: BTreeMap<(&'static str, &'static str), u64>,
    recoveries: BTreeMap<(&'static str, &'static str), u64>,
    step_jobs: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    duration: BTreeMap<&'static str, Histogram>,
    downtime: Histogram,
    passes: Histogram,
    bytes: u64,
    escalations: u64,
    readopted: u64,
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
    starts: u64,
    started_ms: u64,
}

/// What a scrape reads from the agent at that moment.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// This host.
    pub host: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// The host's QEMU version.
    pub qemu_version: String,
    /// Guests defined here, by state (`running`, `stopped`, ...).
    pub guests: BTreeMap<String, u64>,
    /// Guests with a QEMU process.
    pub qemu_processes: u64,
    /// Jobs running.
    pub jobs_in_flight: u64,
    /// The state store's kind (`file`, `etcd`) and what went through it.
    pub store: (String, Vec<vmove_store::OpStats>),
}

fn outcome(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Succeeded => "succeeded",
        JobStatus::Cancelled => "cancelled",
        JobStatus::Failed | JobStatus::Running => "failed",
    }
}

impl Metrics {
    /// Metrics of an agent that has started `starts` times on its state.
    pub fn new(starts: u64) -> Metrics {
        let mut migrations = BTreeMap::new();
        for m in Mode::ALL {
            for o in OUTCOMES {
                migrations.insert((m.wire_name(), o), 0);
            }
        }
        Metrics {
            inner: Mutex::new(Inner {
                migrations,
                recoveries: BTreeMap::new(),
                step_jobs: BTreeMap::new(),
                duration: Mode::ALL.iter().map(|m| (m.wire_name(), Histogram::new(DURATION_BOUNDS))).collect(),
                downtime: Histogram::new(DOWNTIME_BOUNDS),
                passes: Histogram::new(PASS_BOUNDS),
                bytes: 0,
                escalations: 0,
                readopted: 0,
            }),
            starts,
            started_ms: crate::now_ms(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job ended (its record has its final status and events; `summary` its figures).
    pub fn job_ended(&self, rec: &JobRecord, summary: &Summary) {
        let (mode, out) = (rec.spec.mode.wire_name(), outcome(rec.status));
        let mut m = self.lock();
        m.escalations += rec.events.iter().filter(|e| e.kind.escalation().is_some()).count() as u64;
        match (&rec.kind, rec.spec.step) {
            (JobKind::Recover { .. }, _) => *m.recoveries.entry((mode, out)).or_default() += 1,
            (JobKind::Migrate, Some(step)) => *m.step_jobs.entry((mode, step.name(), out)).or_default() += 1,
            (JobKind::Migrate, None) => {
                *m.migrations.entry((mode, out)).or_default() += 1;
                if rec.status == JobStatus::Succeeded {
                    if let Some(h) = m.duration.get_mut(mode) {
                        h.observe(summary.total_ms as f64 / 1000.0);
                    }
                }
            }
        }
        if rec.spec.mode == Mode::Live && rec.status == JobStatus::Succeeded {
            if let Some(d) = summary.downtime_ms {
                m.downtime.observe(d as f64 / 1000.0);
            }
            if let Some(p) = summary.passes {
                m.passes.observe(p as f64);
            }
        }
        m.bytes += summary.transferred_bytes.unwrap_or(0);
    }

    /// A running QEMU was re-adopted at start.
    pub fn readopted(&self) {
        self.lock().readopted += 1;
    }

    /// The text exposition of every metric.
    pub fn render(&self, live: &Live) -> String {
        let m = self.lock();
        let mut t = Text::default();
        t.family("vmove_agent_info", "gauge", "The agent: its version, host, accelerator and QEMU version (always 1).");
        let version = env!("CARGO_PKG_VERSION");
        let info = [("version", version), ("host", &live.host), ("accel", &live.accel), ("qemu_version", &live.qemu_version)];
        t.sample("vmove_agent_info", &info, 1.0);
        t.family("vmove_agent_starts_total", "counter", "Times an agent started on this host's state (restarts = starts - 1).");
        t.sample("vmove_agent_starts_total", &[], self.starts as f64);
        t.family("vmove_agent_start_time_seconds", "gauge", "When this agent process started, unix seconds.");
        t.sample("vmove_agent_start_time_seconds", &[], self.started_ms as f64 / 1000.0);
        t.family("vmove_guests_readopted_total", "counter", "Running QEMUs this agent re-adopted when it started.");
        t.sample("vmove_guests_readopted_total", &[], m.readopted as f64);
        t.family("vmove_guests", "gauge", "Guests defined on this host, by state.");
        for (state, n) in &live.guests {
            t.sample("vmove_guests", &[("state", state)], *n as f64);
        }
        t.family("vmove_qemu_processes", "gauge", "QEMU processes of this host's guests.");
        t.sample("vmove_qemu_processes", &[], live.qemu_processes as f64);
        t.family("vmove_jobs_in_flight", "gauge", "Jobs running on this host (the target of their migrations).");
        t.sample("vmove_jobs_in_flight", &[], live.jobs_in_flight as f64);
        let (kind, ops) = &live.store;
        t.family("vmove_store_operations_total", "counter", "Operations on this agent's state store (jobs, events, migration records, claims), by operation.");
        for o in ops {
            t.sample("vmove_store_operations_total", &[("store", kind), ("op", o.op)], o.calls as f64);
        }
        t.family("vmove_store_operation_seconds_total", "counter", "Time spent in operations on this agent's state store, by operation.");
        for o in ops {
            t.sample("vmove_store_operation_seconds_total", &[("store", kind), ("op", o.op)], o.nanos as f64 / 1e9);
        }
        t.family("vmove_migrations_total", "counter", "Migrations (whole plans) this host ran as target, by mode and outcome.");
        for ((mode, out), n) in &m.migrations {
            t.sample("vmove_migrations_total", &[("mode", mode), ("outcome", out)], *n as f64);
        }
        t.family("vmove_step_jobs_total", "counter", "Single-step jobs (migrate --step) by mode, step and outcome.");
        for ((mode, step, out), n) in &m.step_jobs {
            t.sample("vmove_step_jobs_total", &[("mode", mode), ("step", step), ("outcome", out)], *n as f64);
        }
        t.family("vmove_recoveries_total", "counter", "Recoveries of failed jobs (job recover) by mode and outcome.");
        for ((mode, out), n) in &m.recoveries {
            t.sample("vmove_recoveries_total", &[("mode", mode), ("outcome", out)], *n as f64);
        }
        t.family("vmove_migration_duration_seconds", "histogram", "Duration of the migrations that succeeded, by mode.");
        for (mode, h) in &m.duration {
            t.histogram("vmove_migration_duration_seconds", &[("mode", mode)], h);
        }
        t.family("vmove_migration_downtime_seconds", "histogram", "Downtime of the live migrations that succeeded, QEMU's figure.");
        t.histogram("vmove_migration_downtime_seconds", &[], &m.downtime);
        t.family("vmove_migration_passes", "histogram", "Memory passes of the live migrations that succeeded.");
        t.histogram("vmove_migration_passes", &[], &m.passes);
        t.family("vmove_migration_transferred_bytes_total", "counter", "Bytes live migrations sent to this host.");
        t.sample("vmove_migration_transferred_bytes_total", &[], m.bytes as f64);
        t.family("vmove_migration_escalations_total", "counter", "Escalations of the convergence ladder in live migrations.");
        t.sample("vmove_migration_escalations_total", &[], m.escalations as f64);
        t.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_combination_of_whole_migrations_starts_at_zero() {
        let text = Metrics::new(1).render(&Live::default());
        for mode in ["live", "offline", "offlineforce"] {
            for o in OUTCOMES {
                assert!(text.contains(&format!("vmove_migrations_total{{mode=\"{mode}\",outcome=\"{o}\"}} 0\n")), "{text}");
            }
        }
        assert!(text.contains("vmove_agent_starts_total 1\n"));
        assert!(text.contains("vmove_migration_downtime_seconds_count 0\n"));
    }
}
