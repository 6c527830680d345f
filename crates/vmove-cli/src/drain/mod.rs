//! `vmove host drain|undrain|evacuate`: empty a host for maintenance, or rescue every
//! guest of a dead one, many moves at once (docs/drain.md).
//!
//! - [`gather`]: the inventories, running jobs, guests to move and dirty rates the planner
//!   ([`vmove_plan::plan`]) looks at; the seam for better duration predictions.
//! - [`run`]: the runner (limits counted over every migration in the cluster, moves
//!   followed side by side, one retry on another target); [`one_move`]: one attempt.
//! - [`report`]: the plan, progress lines and the final table; [`dead`]: whether a host
//!   is dead ([`dead::host_is_dead`]).
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use vmove_api::{GuestState, MaintenanceState, Request};
use vmove_model::{parse_duration_ms, Cluster};
use vmove_plan::{DrainPlan, Limits, Mode, MoveRequest, Step};

use crate::args::{DrainArgs, EvacuateArgs};
use crate::ctx::Ctx;

pub mod dead;
pub mod gather;
pub mod one_move;
pub mod report;
pub mod run;
#[cfg(test)]
mod tests;

use gather::Inventory;

/// The most moves a drain may run at once (`--parallel`).
pub const MAX_PARALLEL: usize = 64;
/// The longest grace period of `evacuate`.
pub const MAX_GRACE_MS: u64 = 3_600_000;

/// `--parallel N` as the drain's limits (2 out of and 2 into any host besides).
pub fn limits(parallel: usize) -> Result<Limits> {
    if !(1..=MAX_PARALLEL).contains(&parallel) {
        bail!("--parallel {parallel} is out of range (1..={MAX_PARALLEL})");
    }
    let l = Limits { max_concurrent: parallel, ..Limits::default() };
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

/// `vmove host drain`.
pub async fn drain(ctx: &Ctx, a: DrainArgs) -> Result<()> {
    let cluster = ctx.cluster().await?;
    let host = a.host.as_str();
    known_host(&cluster, host)?;
    let wanted = Mode::parse(&a.mode).map_err(|e| anyhow!("--mode: {e}"))?;
    if wanted == Mode::OfflineForce {
        bail!("--mode: a drain moves guests live or offline; offline-force is `vmove host evacuate`");
    }
    let limits = limits(a.parallel)?;
    let inject_fault = faults(&a.inject_fault)?;
    if !a.dry_run {
        let st: MaintenanceState = ctx
            .client(&cluster, host)?
            .call(&Request::HostDrain)
            .await
            .with_context(|| format!("cannot put {host} in maintenance (a dead host is evacuated: `vmove host evacuate {host}`)"))?;
        say(ctx, &format!("{host} is in maintenance: no new guests, no migrations in"), serde_json::json!({ "maintenance": st }));
    }
    let mut cluster = if a.dry_run {
        cluster
    } else {
        wait_for_moves(ctx, &cluster, host).await?;
        // Guests that arrived meanwhile are in the file now (another drain moved them).
        ctx.cluster().await?
    };
    let inv = Inventory::gather(ctx, &cluster).await?;
    let Some(info) = inv.info(host) else {
        bail!(
            "{host} did not answer ({}); a dead host is evacuated: `vmove host evacuate {host}`",
            inv.unreachable(host).unwrap_or("no answer")
        );
    };
    reconcile(ctx, &mut cluster, &inv, host, !a.dry_run).await?;
    let was_running: HashSet<String> = info.guests.iter().filter(|g| g.state == GuestState::Running).map(|g| g.spec.name.clone()).collect();
    let mut reqs = gather::drain_requests(&cluster, host, info, wanted);
    gather::measure_dirty_rates(ctx, &cluster, &mut reqs).await;
    gather::predict(&cluster, &mut reqs, &was_running);
    let plan = plan(&cluster, &inv, host, &reqs, limits)?;
    report::plan(ctx.json, "drain", host, &plan);
    if a.dry_run {
        return Ok(());
    }
    let spec = run::RunSpec { kind: "drain", host: host.to_string(), dirty: dirty_rates(&reqs), was_running, inject_fault };
    let rep = run::run(ctx, &cluster, &plan, spec).await;
    report::table(ctx.json, &rep);
    let not = rep.not_moved();
    if !not.is_empty() {
        bail!(
            "drain of {host} incomplete: {} of {} guests not moved ({}); {host} stays in maintenance",
            not.len(),
            rep.rows.len(),
            not.join(", ")
        );
    }
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
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Guests the cluster file puts on `host` that its agent no longer reports and exactly one
/// other agent does: moved already (by an earlier drain whose CLI died before it updated the
/// file, by an operator). The file follows the agents (`save`: not on a dry run) and the
/// drain says which guests they are; they are not moved again.
async fn reconcile(ctx: &Ctx, cluster: &mut Cluster, inv: &Inventory, host: &str, save: bool) -> Result<()> {
    let Some(info) = inv.info(host) else { return Ok(()) };
    let mut moved: Vec<(String, String)> = Vec::new();
    for g in cluster.guests.iter().filter(|g| g.host == host) {
        if info.guests.iter().any(|x| x.spec.name == g.name) {
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

/// `vmove host evacuate`.
pub async fn evacuate(ctx: &Ctx, a: EvacuateArgs) -> Result<()> {
    let cluster = ctx.cluster().await?;
    let host = a.host.as_str();
    known_host(&cluster, host)?;
    let grace_ms = parse_duration_ms(&a.grace).map_err(|e| anyhow!("--grace: {e}"))?;
    if grace_ms > MAX_GRACE_MS {
        bail!("--grace {} is longer than an hour", a.grace);
    }
    let base = limits(a.parallel)?;
    // A dead source does no work: only the cluster's and the targets' limits count.
    let limits = Limits { max_out_per_host: base.max_concurrent, ..base };
    if !a.dry_run {
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
    }
    let inv = Inventory::gather(ctx, &cluster).await?;
    let mut reqs = MoveRequest::for_host(&cluster, host, Mode::OfflineForce);
    gather::predict(&cluster, &mut reqs, &HashSet::new());
    let plan = plan(&cluster, &inv, host, &reqs, limits)?;
    report::plan(ctx.json, "evacuate", host, &plan);
    if a.dry_run {
        return Ok(());
    }
    let spec = run::RunSpec { kind: "evacuate", host: host.to_string(), dirty: HashMap::new(), was_running: HashSet::new(), inject_fault: vec![] };
    let rep = run::run(ctx, &cluster, &plan, spec).await;
    report::table(ctx.json, &rep);
    let not = rep.not_moved();
    if !not.is_empty() {
        bail!("evacuation of {host} incomplete: {} of {} guests not moved ({})", not.len(), rep.rows.len(), not.join(", "));
    }
    Ok(())
}
