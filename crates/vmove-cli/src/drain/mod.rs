//! `vmove host drain|undrain|evacuate`: empty a host for maintenance, or rescue every
//! guest of a dead one, many moves at once (docs/drain.md).
//!
//! - [`gather`]: the inventories, running jobs, guests to move and dirty rates the planner
//!   ([`vmove_plan::plan`]) looks at; the seam for better duration predictions.
//! - [`run`]: the runner (limits counted over every migration in the cluster, moves
//!   followed side by side, one retry on another target); [`one_move`]: one attempt.
//! - [`report`]: the plan, progress lines and the final table; [`dead`]: whether a host
//!   is dead ([`dead::host_is_dead`]).
//! - The drain as a job of its own: [`record`] (the drain record and its state machine),
//!   [`store`] (where records are kept, the runner's claim), [`journal`] (the runner's
//!   writes), [`job`] (running a record, first or after a takeover), [`watch`] (`job
//!   watch|show|cancel|list` of drains).
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use vmove_api::{GuestState, MaintenanceState, Request};
use vmove_model::{parse_duration_ms, Cluster};
use vmove_plan::{DrainPlan, Limits, Mode, MoveRequest, Step};

use crate::args::{DrainArgs, EvacuateArgs};
use crate::ctx::Ctx;

pub mod dead;
pub mod gather;
pub mod job;
pub mod journal;
pub mod one_move;
pub mod record;
mod record_check;
#[cfg(test)]
mod record_tests;
pub mod report;
pub mod run;
pub mod store;
#[cfg(test)]
mod tests;
pub mod watch;

use record::{DrainKind, DrainRecord};
use store::DrainStore;

use gather::Inventory;

/// The most moves a drain may run at once (`--parallel`).
pub const MAX_PARALLEL: usize = 64;
/// The longest grace period of `evacuate`.
pub const MAX_GRACE_MS: u64 = 3_600_000;

/// `--parallel N --per-host M` as the drain's limits: N moves in the cluster, M out of and M
/// into any one host.
pub fn limits(parallel: usize, per_host: usize) -> Result<Limits> {
    if !(1..=MAX_PARALLEL).contains(&parallel) {
        bail!("--parallel {parallel} is out of range (1..={MAX_PARALLEL})");
    }
    if !(1..=MAX_PARALLEL).contains(&per_host) {
        bail!("--per-host {per_host} is out of range (1..={MAX_PARALLEL})");
    }
    let l = Limits { max_concurrent: parallel, max_out_per_host: per_host, max_in_per_host: per_host };
    l.validate()?;
    Ok(l)
}

/// `--inject-fault GUEST=STEP`.
pub fn faults(args: &[String]) -> Result<Vec<(String, Step)>> {
    args.iter()
        .map(|a| {
            let (g, s) = a.split_once('=').ok_or_else(|| anyhow!("--inject-fault {a:?}: expected GUEST=STEP"))?;
            Ok((g.to_string(), Step::parse(s).map_err(|e| anyhow!("--inject-fault {a:?}: {e}"))?))
        })
        .collect()
}

fn known_host(cluster: &Cluster, host: &str) -> Result<()> {
    match cluster.host(host) {
        Some(_) => Ok(()),
        None => bail!("no host named {host} in {}", cluster.path.display()),
    }
}

fn dirty_rates(reqs: &[MoveRequest]) -> HashMap<String, u64> {
    reqs.iter().filter_map(|r| r.dirty_rate_bytes_per_s.map(|d| (r.guest.clone(), d))).collect()
}

fn say(ctx: &Ctx, text: &str, json: serde_json::Value) {
    if ctx.json {
        crate::out::json(&json);
    } else {
        println!("{text}");
    }
}

/// `vmove host drain`: a drain record (docs/drain.md "The drain as a job"), run by this
/// process (or a detached one with `--detach`); a running drain of the host whose runner
/// died is taken over instead.
pub async fn drain(ctx: &Ctx, a: DrainArgs) -> Result<()> {
    let cluster = ctx.cluster().await?;
    let host = a.host.as_str();
    known_host(&cluster, host)?;
    let wanted = Mode::parse(&a.mode).map_err(|e| anyhow!("--mode: {e}"))?;
    if wanted == Mode::OfflineForce {
        bail!("--mode: a drain moves guests live or offline; offline-force is `vmove host evacuate`");
    }
    let limits = limits(a.parallel, a.per_host)?;
    faults(&a.inject_fault)?;
    if a.dry_run {
        return dry_run(ctx, cluster, host, wanted, limits).await;
    }
    let store = Arc::new(DrainStore::open(ctx, &cluster).await?);
    if let Some(r) = take_over_running(ctx, &store, DrainKind::Drain, host).await? {
        return r;
    }
    let parallel = u32::try_from(a.parallel)?;
    let per_host = u32::try_from(a.per_host)?;
    let (rec, guard) = store
        .create(DrainKind::Drain, host, !a.detach, |id| {
            let mut r = DrainRecord::new(id, DrainKind::Drain, host, wanted, parallel);
            r.inject_fault = a.inject_fault.clone();
            r.per_host = per_host;
            r
        })
        .await?;
    let Some(guard) = guard else { return job::detach(ctx, &store, &rec).await };
    let (rec, rep) = job::run_claimed(ctx, store, &rec.id, guard, false).await?;
    job::finish_cli(ctx, &rec, rep.as_ref())
}

/// One drain (evacuation) of a host at a time: a running one whose runner lives is
/// refused (watch it); one whose runner died is taken over by this process.
async fn take_over_running(ctx: &Ctx, store: &Arc<DrainStore>, kind: DrainKind, host: &str) -> Result<Option<Result<()>>> {
    let Some(old) = store.list().await?.into_iter().find(|r| r.kind == kind && r.host == host && !r.state.ended()) else {
        return Ok(None);
    };
    let Some(guard) = store.claim_runner(&old.id).await? else {
        let who = old.runner.as_ref().map_or("another process".to_string(), |r| format!("process {} on {}", r.pid, r.machine));
        bail!("{} of {host} is running ({who}): `vmove job watch {}`, or `vmove job cancel {}`", old.id, old.id, old.id);
    };
    say(
        ctx,
        &format!("{} of {host} was left by its runner: this process takes it over", old.id),
        serde_json::json!({ "takeover": { "drain": old.id, "runner": old.runner } }),
    );
    let (rec, rep) = job::run_claimed(ctx, store.clone(), &old.id, guard, true).await?;
    Ok(Some(job::finish_cli(ctx, &rec, rep.as_ref())))
}

/// `host drain --dry-run`: the plan and its prediction; nothing changes.
async fn dry_run(ctx: &Ctx, cluster: Cluster, host: &str, wanted: Mode, limits: Limits) -> Result<()> {
    let mut cluster = cluster;
    let inv = Inventory::gather(ctx, &cluster).await?;
    let Some(info) = inv.info(host) else {
        bail!(
            "{host} did not answer ({}); a dead host is evacuated: `vmove host evacuate {host}`",
            inv.unreachable(host).unwrap_or("no answer")
        );
    };
    reconcile(ctx, &mut cluster, &inv, host, false).await?;
    let was_running: HashSet<String> = info.guests.iter().filter(|g| g.state == GuestState::Running).map(|g| g.spec.name.clone()).collect();
    let mut reqs = gather::drain_requests(&cluster, host, info, wanted);
    gather::measure_dirty_rates(ctx, &cluster, &mut reqs).await;
    gather::predict(&cluster, &mut reqs, &was_running);
    let plan = plan(&cluster, &inv, host, &reqs, limits)?;
    report::plan(ctx.json, "drain", host, &plan);
    Ok(())
}

/// Waits until no migration into or out of `host` runs any more, at most the policy's
/// live timeout and a minute: into it, those accepted before its maintenance (another
/// drain's, an operator's); out of it, those of an earlier drain of `host` whose CLI died
/// (the jobs run on their targets' agents whatever became of the CLI), or an operator's.
async fn wait_for_moves(ctx: &Ctx, cluster: &Cluster, host: &str) -> Result<()> {
    let limit = Duration::from_secs(cluster.policy.live_timeout_s.saturating_add(60));
    let start = std::time::Instant::now();
    let mut said = false;
    // etcd: a job that ends updates the job index; that wakes the wait at once.
    let mut changes = match cluster.store.is_file() {
        true => None,
        false => Some(vmove_store::StateStore::watch(ctx.store(cluster).await?.as_ref(), vmove_registry::keys::JOBS).await.context("watch the job index")?),
    };
    loop {
        let jobs = Inventory::running_jobs(ctx, cluster).await;
        let moves: Vec<String> = jobs
            .iter()
            .filter(|j| j.target == host || j.source == host)
            .map(|j| if j.target == host { format!("{} brings {} in", j.id, j.guest) } else { format!("{} takes {} to {}", j.id, j.guest, j.target) })
            .collect();
        if moves.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= limit {
            bail!("{host} still has migrations running after {}s ({}); {host} stays in maintenance", limit.as_secs(), moves.join(", "));
        }
        if !said {
            said = true;
            let text = format!("waiting for the migrations into and out of {host} to end: {}", moves.join(", "));
            say(ctx, &text, serde_json::json!({ "waiting": moves }));
        }
        match &mut changes {
            Some(w) => {
                if let Ok(None) = tokio::time::timeout(Duration::from_secs(2), w.recv()).await {
                    changes = None;
                }
            }
            None => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// Guests the cluster file puts on `host` that its agent no longer reports and exactly one
/// other agent does: moved already (by an earlier drain whose CLI died before it updated the
/// file, by an operator). The file follows the agents (`save`: not on a dry run) and the
/// drain says which guests they are; they are not moved again.
///
/// A host that does not answer (an evacuation's) reports no guest.
async fn reconcile(ctx: &Ctx, cluster: &mut Cluster, inv: &Inventory, host: &str, save: bool) -> Result<()> {
    let on_host: Vec<&str> = inv.info(host).map(|i| i.guests.iter().map(|g| g.spec.name.as_str()).collect()).unwrap_or_default();
    let mut moved: Vec<(String, String)> = Vec::new();
    for g in cluster.guests.iter().filter(|g| g.host == host) {
        if on_host.contains(&g.name.as_str()) {
            continue;
        }
        let now: Vec<&str> = inv
            .hosts
            .iter()
            .filter(|(n, _)| n != host)
            .filter_map(|(n, r)| r.as_ref().ok().filter(|i| i.guests.iter().any(|x| x.spec.name == g.name)).map(|_| n.as_str()))
            .collect();
        if let [one] = now[..] {
            moved.push((g.name.clone(), one.to_string()));
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    for (g, h) in &moved {
        if let Some(x) = cluster.guest_mut(g) {
            x.host = h.clone();
        }
    }
    if save {
        ctx.update_cluster(|c| {
            let mut changed = false;
            for (g, h) in &moved {
                if let Some(x) = c.guest_mut(g).filter(|x| x.host == host) {
                    x.host = h.clone();
                    changed = true;
                }
            }
            changed
        })
        .await?;
    }
    let list: Vec<String> = moved.iter().map(|(g, h)| format!("{g} (on {h})")).collect();
    let text = format!("already moved off {host}: {}", list.join(", "));
    let json: Vec<serde_json::Value> = moved.iter().map(|(g, h)| serde_json::json!({ "guest": g, "host": h })).collect();
    say(ctx, &text, serde_json::json!({ "already_moved": json }));
    Ok(())
}

/// Places `reqs` off `host` over `inv` and schedules the moves.
fn plan(cluster: &Cluster, inv: &Inventory, host: &str, reqs: &[MoveRequest], limits: Limits) -> Result<DrainPlan> {
    let busy = inv.busy();
    let input = inv.input(cluster, inv.views(&[host]), &busy);
    Ok(DrainPlan::new(vmove_plan::plan(&input, reqs), limits)?)
}

/// `vmove host undrain`.
pub async fn undrain(ctx: &Ctx, host: &str) -> Result<()> {
    let cluster = ctx.cluster().await?;
    known_host(&cluster, host)?;
    let st: MaintenanceState = ctx.client(&cluster, host)?.call(&Request::HostUndrain).await?;
    let text = if st.changed { format!("{host} is no longer in maintenance") } else { format!("{host} was not in maintenance") };
    say(ctx, &text, serde_json::json!({ "maintenance": st }));
    Ok(())
}

/// `vmove host evacuate`: once the host is known dead, an evacuation record run by this
/// process; a running evacuation of the host whose runner died is taken over instead.
pub async fn evacuate(ctx: &Ctx, a: EvacuateArgs) -> Result<()> {
    let cluster = ctx.cluster().await?;
    let host = a.host.as_str();
    known_host(&cluster, host)?;
    let grace_ms = parse_duration_ms(&a.grace).map_err(|e| anyhow!("--grace: {e}"))?;
    if grace_ms > MAX_GRACE_MS {
        bail!("--grace {} is longer than an hour", a.grace);
    }
    let limits = job::evacuation_limits(a.parallel)?;
    if a.dry_run {
        let inv = Inventory::gather(ctx, &cluster).await?;
        let mut reqs = MoveRequest::for_host(&cluster, host, Mode::OfflineForce);
        gather::predict(&cluster, &mut reqs, &HashSet::new());
        let plan = plan(&cluster, &inv, host, &reqs, limits)?;
        report::plan(ctx.json, "evacuate", host, &plan);
        return Ok(());
    }
    let store = Arc::new(DrainStore::open(ctx, &cluster).await?);
    if let Some(r) = take_over_running(ctx, &store, DrainKind::Evacuate, host).await? {
        return r;
    }
    let grace = if a.force { Duration::ZERO } else { Duration::from_millis(grace_ms) };
    if !a.force && !ctx.json {
        println!("making sure {host} is dead (up to {}s)...", grace.as_secs());
    }
    match dead::host_is_dead(&cluster, host, grace).await {
        dead::Verdict::Alive(why) => bail!("{host} is not dead: {why}"),
        dead::Verdict::Unsure(why) if !a.force => {
            bail!("not sure {host} is dead: {why}; make sure its guests are down (power it off), then use --force")
        }
        dead::Verdict::Unsure(why) => {
            say(ctx, &format!("{host} taken for dead on the operator's word (--force); seen: {why}"), serde_json::json!({ "forced": why }))
        }
        dead::Verdict::Dead(why) => say(ctx, &format!("{host} is dead: {why}"), serde_json::json!({ "dead": why })),
    }
    let parallel = u32::try_from(a.parallel)?;
    let (rec, guard) = store
        .create(DrainKind::Evacuate, host, true, |id| DrainRecord::new(id, DrainKind::Evacuate, host, Mode::OfflineForce, parallel))
        .await?;
    let guard = guard.ok_or_else(|| anyhow!("evacuation {}: no runner claim", rec.id))?;
    say(ctx, &format!("evacuation {}", rec.id), serde_json::json!({ "drain": rec.id }));
    let (rec, rep) = job::run_claimed(ctx, store, &rec.id, guard, false).await?;
    job::finish_cli(ctx, &rec, rep.as_ref())
}
