//! LIVE: whether the migration converges under its convergence policy, predicted from the
//! measured dirty rate and link throughput ([`crate::converge::predict`]).
use vmove_model::inventory::HostInfo;
use vmove_model::{Converge, GuestSpec};

use crate::converge::{predict, ConvergePolicy, Features, Prediction, Rung, Workload};

use super::{fmt_rate, fmt_secs, Ctx, Outcome, Verdict};
use crate::MigrationParams;

/// What the two QEMUs can, from the inventories; what every QEMU from 7.2 on has when an
/// agent did not report its QEMU (auto-converge, post-copy). Dirty-limit is only known
/// when the guest's own QEMU is asked at migration time, so the model throttles with
/// auto-converge.
fn features(c: &Ctx) -> Features {
    let hosts: Vec<&HostInfo> = [c.source().ok(), c.target().ok()].into_iter().flatten().collect();
    let known = hosts.len() == 2 && hosts.iter().all(|h| h.qemu.known());
    let all = |cap: &str| !known || hosts.iter().all(|h| h.qemu.has_capability(cap));
    let src = |cap: &str| c.source().ok().filter(|h| h.qemu.known()).is_none_or(|h| h.qemu.has_capability(cap));
    Features {
        auto_converge: src("auto-converge"),
        dirty_limit: false,
        postcopy_ram: all("postcopy-ram"),
        postcopy_preempt: all("postcopy-preempt"),
        multifd_with_postcopy: false,
        return_path: all("return-path"),
        switchover_ack: all("switchover-ack"),
    }
}

/// A predicted time: tenths of a second below 10 s (`1.7s`), whole seconds above (`38s`, `1m40s`).
fn about(ms: u64) -> String {
    let tenths = ms.saturating_add(50) / 100;
    if tenths < 100 {
        format!("{}.{}s", tenths / 10, tenths % 10)
    } else {
        fmt_secs(ms.div_ceil(1000))
    }
}

/// What the target measured of its last live moves in, which the prediction adds to its
/// model: vmove's own steps around the memory phase, and how long QEMU's memory phase took
/// against the model's figure for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measured {
    /// vmove's own time around the memory phase, ms ([`HostInfo::live_steps_ms`]).
    pub steps_ms: Option<u64>,
    /// QEMU's memory phase ÷ the model's, percent ([`HostInfo::memory_model_pct`]).
    pub memory_pct: Option<u32>,
}

impl Measured {
    /// A target's figures ([`Measured::new`]).
    pub fn of(target: &HostInfo) -> Measured {
        Measured::new(target.live_steps_ms, target.memory_model_pct)
    }

    /// The figures, each taken only within its range.
    pub fn new(steps_ms: Option<u64>, memory_pct: Option<u32>) -> Measured {
        Measured {
            steps_ms: steps_ms.filter(|&ms| ms <= vmove_model::inventory::LIVE_STEPS_MAX_MS),
            memory_pct: memory_pct.filter(|p| vmove_model::inventory::MEMORY_MODEL_PCT.contains(p)),
        }
    }
}

/// The model's memory phase scaled by what the target measured of it.
fn calibrated(mut p: Prediction, m: Measured) -> Prediction {
    if let Some(pct) = m.memory_pct {
        let scaled = u128::from(p.total_ms).saturating_mul(u128::from(pct)) / 100;
        p.total_ms = u64::try_from(scaled).unwrap_or(u64::MAX);
    }
    p
}

/// `about 38s in 17 passes`, or with what the target measured
/// `about 1.7s in 1 pass (memory 1.2s, the model ×1.60 as measured; vmove's steps 0.5s)`.
fn took(p: &Prediction, m: Measured) -> String {
    let passes = if p.passes == 1 { "1 pass".to_string() } else { format!("{} passes", p.passes) };
    let scale = m.memory_pct.map(|pct| format!(", the model ×{}.{:02} as measured", pct / 100, pct % 100)).unwrap_or_default();
    match (m.steps_ms, m.memory_pct) {
        (Some(s), _) => format!(
            "about {} in {passes} (memory {}{scale}{} vmove's steps {})",
            about(p.total_ms.saturating_add(s)),
            about(p.total_ms),
            if scale.is_empty() { "," } else { ";" },
            about(s)
        ),
        (None, Some(_)) => format!("about {} in {passes} (memory{scale})", about(p.total_ms)),
        (None, None) => format!("about {} in {passes}", about(p.total_ms)),
    }
}

pub(crate) fn predicted_convergence(c: &Ctx) -> Outcome {
    let g = c.guest()?;
    let disk = super::storage::copy_bytes(c);
    let measured = c.target().ok().map(Measured::of).unwrap_or_default();
    convergence_outcome(g, &c.req.params, features(c), c.input.dirty_rate_bytes_per_s, c.input.link_bytes_per_s, disk, measured)
}

/// The link the memory moves over: the smaller of the cap and the measured throughput.
fn effective_link(params: &MigrationParams, link: Option<u64>) -> Option<u64> {
    match (params.bandwidth_bytes_per_s, link) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The guest as the model sees it, dirtying `d` bytes/s.
fn workload(g: &GuestSpec, d: u64) -> Workload {
    // The memory the guest keeps rewriting: declared by the lab's workload; unknown (all of
    // it, the pessimistic case) for any other guest.
    let working_set_bytes = match g.boot {
        vmove_model::BootSource::Lab { wss_mib, .. } => Some(u64::from(wss_mib).saturating_mul(1_048_576)),
        vmove_model::BootSource::Disk => None,
    };
    Workload { memory_bytes: g.memory_mib.saturating_mul(1_048_576), dirty_rate_bytes_per_s: d, working_set_bytes }
}

/// The model's own figure for QEMU's memory phase (uncalibrated), ms, when it converges and
/// both the dirty rate and the link are known: what a job records to calibrate the model.
pub fn predicted_memory_ms(g: &GuestSpec, params: &MigrationParams, features: Features, dirty: Option<u64>, link: Option<u64>) -> Option<u64> {
    let (d, b) = (dirty?, effective_link(params, link)?);
    let p = predict(&workload(g, d), b, &ConvergePolicy::from_params(params, features, g.vcpus));
    p.converges.then_some(p.total_ms)
}

/// The `predicted-convergence` check from its figures: the guest, the move's parameters,
/// what both QEMUs can, the measured dirty rate and link (bytes/s), and the bytes of local
/// volumes to copy first. The agent that runs a live move decides the check with it when
/// the operator's command left the dirty rate to the job (measured while the target's
/// QEMU starts). `measured`: vmove's own time around the memory phase, as measured on the
/// target's last live moves ([`HostInfo::live_steps_ms`]), added to the predicted total;
/// the model's memory phase is scaled by what those moves measured of it
/// ([`HostInfo::memory_model_pct`]). `Err`: the check fails, with the reason.
pub fn convergence_outcome(
    g: &GuestSpec,
    params: &MigrationParams,
    features: Features,
    dirty: Option<u64>,
    link: Option<u64>,
    disk: u64,
    measured: Measured,
) -> Result<(Verdict, String), String> {
    let steps_ms = measured.steps_ms;
    let link = effective_link(params, link);
    let (d, b) = match (dirty, link) {
        (Some(d), Some(b)) => (d, b),
        (None, None) => return Ok((Verdict::Warn, "not measured: dirty rate and link throughput unknown".into())),
        (None, _) => return Ok((Verdict::Warn, format!("not measured: dirty rate of {} unknown", g.name))),
        (_, None) => return Ok((Verdict::Warn, "not measured: link throughput unknown".into())),
    };
    let w = workload(g, d);
    // Local volumes are copied before the memory phase (COPY_VOLUMES), over the same link;
    // the mirrors keep up with the guest's disk writes (write-blocking when they do not).
    let disk_secs = u64::try_from(u128::from(disk).div_ceil(u128::from(b.max(1)))).unwrap_or(u64::MAX);
    let first = if disk > 0 {
        let copy = format!("{} of local volumes at {}", super::storage::mib(disk), fmt_rate(b));
        if disk_secs > params.timeout_s {
            return Err(format!(
                "predicted {} to copy {copy} exceeds the timeout of {}",
                fmt_secs(disk_secs),
                fmt_secs(params.timeout_s)
            ));
        }
        format!("; before the memory, {copy} (about {})", fmt_secs(disk_secs))
    } else {
        String::new()
    };
    let policy = ConvergePolicy::from_params(params, features, g.vcpus);
    let p = calibrated(predict(&w, b, &policy), measured);
    let what = format!("{} MiB at {} with {} dirtied", g.memory_mib, fmt_rate(b), fmt_rate(d));
    let timeout = fmt_secs(params.timeout_s);
    let cv = params.converge;
    if !p.converges {
        let mut msg = format!("will not converge under converge={cv}: {what}; it would time out after {timeout}");
        match p.suggestion {
            Some(s) => {
                let alt = calibrated(predict(&w, b, &ConvergePolicy { converge: s, allow_postcopy: true, ..policy }), measured);
                msg.push_str(&format!("; converge={s} would ({}", took(&alt, measured)));
                if let Some(Rung::AutoConverge { .. }) = alt.rung_needed {
                    msg.push_str(&format!(", the guest throttled to {} %", alt.throttle_pct));
                }
                msg.push(')');
                if alt.rung_needed == Some(Rung::Postcopy) && !params.allow_postcopy {
                    msg.push_str(", but the cluster policy does not allow post-copy (allow_postcopy)");
                }
            }
            None => msg.push_str("; no convergence policy would"),
        }
        return Err(msg);
    }
    let downtime = format!("downtime about {} ms", p.downtime_ms);
    let (verdict, reason) = match p.rung_needed {
        Some(Rung::Downtime { limit_ms }) => (
            Verdict::Pass,
            format!(
                "{} to copy {what}, {downtime} (limit {limit_ms} ms), within the timeout of {timeout}{}",
                took(&p, measured),
                if cv == Converge::None { String::new() } else { format!("; converge={cv}") }
            ),
        ),
        Some(Rung::AutoConverge { .. }) => (
            Verdict::Warn,
            format!(
                "converges only by throttling the guest (auto-converge to {} %): {} to copy {what}, {downtime}",
                p.throttle_pct,
                took(&p, measured)
            ),
        ),
        Some(Rung::DirtyLimit { mb_per_s }) => (
            Verdict::Warn,
            format!("converges only by limiting each vCPU to {mb_per_s} MB/s: {} to copy {what}, {downtime}", took(&p, measured)),
        ),
        Some(Rung::Postcopy) | None => (
            Verdict::Warn,
            format!(
                "converges only in post-copy, after {} of pre-copy: about {} to copy {what}; the guest is lost if either host fails during post-copy",
                if p.passes == 1 { "1 pass".to_string() } else { format!("{} passes", p.passes) },
                about(p.total_ms.saturating_add(steps_ms.unwrap_or(0)))
            ),
        ),
    };
    // The whole move counts the disk bytes and the memory bytes (each phase has its own
    // timeout in the agent, as here).
    let all = if disk > 0 {
        format!(
            "; in all about {} for {} of disk and {} MiB of memory",
            fmt_secs(disk_secs.saturating_add(p.total_ms.saturating_add(steps_ms.unwrap_or(0)).div_ceil(1000))),
            super::storage::mib(disk),
            g.memory_mib
        )
    } else {
        String::new()
    };
    Ok((verdict, format!("{reason}{first}{all}")))
}
