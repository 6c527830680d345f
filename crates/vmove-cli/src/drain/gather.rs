//! What the planner looks at, gathered from the agents: every host's inventory (or why it
//! did not answer), the jobs running in the cluster, the guests to move and their dirty
//! rates.
use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use vmove_api::{GuestState, HostInfo, JobBrief, JobStatus, Request};
use vmove_model::Cluster;
use vmove_plan::{Busy, HostView, Mode, MoveRequest, PlacementInput, PlannedMove};

use crate::ctx::Ctx;

/// How long one inventory call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster as the agents report it, at one moment.
pub struct Inventory {
    /// Every host of the cluster file, in file order: its inventory or why not.
    pub hosts: Vec<(String, Result<HostInfo, String>)>,
    /// Jobs running on any host.
    pub running: Vec<JobBrief>,
}

impl Inventory {
    /// Asks every agent of the cluster file for its inventory and its jobs, side by side.
    pub async fn gather(ctx: &Ctx, cluster: &Cluster) -> anyhow::Result<Inventory> {
        let clients: Vec<_> = ctx.clients(cluster)?.into_iter().map(|(n, c)| (n, c.with_timeout(CALL_TIMEOUT))).collect();
        let infos = join_all(clients.iter().map(|(_, c)| c.call::<HostInfo>(&Request::HostInfo))).await;
        let jobs = join_all(clients.iter().map(|(_, c)| c.call::<Vec<JobBrief>>(&Request::JobList))).await;
        let hosts = clients.iter().zip(infos).map(|((n, _), r)| (n.clone(), r.map_err(crate::out::one_line))).collect();
        let running = jobs.into_iter().flatten().flatten().filter(|j| j.status == JobStatus::Running).collect();
        Ok(Inventory { hosts, running })
    }

    /// Only the jobs running in the cluster (hosts that do not answer have none).
    pub async fn running_jobs(ctx: &Ctx, cluster: &Cluster) -> Vec<JobBrief> {
        let Ok(clients) = ctx.clients(cluster) else { return Vec::new() };
        let calls = clients.iter().map(|(_, c)| async move { c.clone().with_timeout(CALL_TIMEOUT).call::<Vec<JobBrief>>(&Request::JobList).await });
        join_all(calls).await.into_iter().flatten().flatten().filter(|j| j.status == JobStatus::Running).collect()
    }

    /// A host's inventory, if it answered.
    pub fn info(&self, host: &str) -> Option<&HostInfo> {
        self.hosts.iter().find(|(n, _)| n == host).and_then(|(_, r)| r.as_ref().ok())
    }

    /// Why a host did not answer, if it did not.
    pub fn unreachable(&self, host: &str) -> Option<&str> {
        self.hosts.iter().find(|(n, _)| n == host).and_then(|(_, r)| r.as_ref().err()).map(String::as_str)
    }

    /// The planner's view of every host; `drained` are drained whatever their agents say
    /// (the host being emptied, before or without its maintenance).
    pub fn views(&self, drained: &[&str]) -> Vec<HostView<'_>> {
        self.hosts
            .iter()
            .map(|(name, r)| {
                let mut v = match r {
                    Ok(info) => HostView::answered(info),
                    Err(why) => HostView::unreachable(name, why),
                };
                v.drained |= drained.contains(&name.as_str());
                v
            })
            .collect()
    }

    /// Unfinished work as the planner counts it: a guest already being moved is not moved
    /// again; work on hosts is left to the drain's limits (moves run side by side on purpose).
    pub fn busy(&self) -> Vec<Busy> {
        self.running
            .iter()
            .map(|j| Busy { guest: Some(j.guest.clone()), host: None, what: format!("job {} ({} of {})", j.id, j.mode.as_str(), j.guest) })
            .collect()
    }

    /// The planner's input over these inventories.
    pub fn input<'a>(&'a self, cluster: &'a Cluster, views: Vec<HostView<'a>>, busy: &'a [Busy]) -> PlacementInput<'a> {
        let mut input = PlacementInput::new(cluster, views);
        input.busy = busy;
        input
    }
}

/// How a drain moves a guest: LIVE when it runs and the operator asked for LIVE, OFFLINE
/// otherwise (a stopped, crashed or paused guest moves offline).
pub fn drain_mode(state: GuestState, wanted: Mode) -> Mode {
    match (wanted, state) {
        (Mode::Live, GuestState::Running) => Mode::Live,
        _ => Mode::Offline,
    }
}

/// The moves that empty `host`: every guest its agent reports (in the mode
/// [`drain_mode`] gives), and the guests the cluster file puts there that the agent does
/// not report (the planner says why they cannot move). Name order.
pub fn drain_requests(cluster: &Cluster, host: &str, info: &HostInfo, wanted: Mode) -> Vec<MoveRequest> {
    let mut by_name: BTreeMap<String, MoveRequest> = BTreeMap::new();
    for g in &info.guests {
        by_name.insert(g.spec.name.clone(), MoveRequest::new(&g.spec.name, host, drain_mode(g.state, wanted)));
    }
    for r in MoveRequest::for_host(cluster, host, wanted) {
        by_name.entry(r.guest.clone()).or_insert(r);
    }
    by_name.into_values().collect()
}

/// Measures the dirty rate of every LIVE request's guest on its source, side by side
/// (QEMU's calc-dirty-rate, 300 ms); a guest that cannot be measured keeps none.
pub async fn measure_dirty_rates(ctx: &Ctx, cluster: &Cluster, requests: &mut [MoveRequest]) {
    let calls = requests.iter().map(|r| async move {
        if r.mode != Mode::Live {
            return None;
        }
        let c = ctx.client(cluster, &r.source).ok()?.with_timeout(Duration::from_secs(15));
        c.call::<u64>(&Request::GuestDirtyRate { name: r.guest.clone(), calc_s: 1, calc_ms: Some(300) }).await.ok()
    });
    let rates = join_all(calls).await;
    for (r, rate) in requests.iter_mut().zip(rates) {
        r.dirty_rate_bytes_per_s = rate;
    }
}

/// The predicted duration of a move, seconds, when something better than the planner's
/// [`vmove_plan::DurationModel`] knows it; `None` leaves it to the model.
///
/// - LIVE with a measured dirty rate: the model's fixed setup cost and the convergence
///   ladder's prediction ([`vmove_plan::converge::predict`]) over the policy's link
///   throughput (the model's 1 Gbit/s when the policy names none), as QEMU 7.2+ can
///   (auto-converge, post-copy). A move the ladder says will not converge is predicted at
///   the policy's live timeout.
/// - OFFLINE of a guest that does not run (`running` false), OFFLINEFORCE off a dead host:
///   nothing to stop (a stopped guest is not started either), only the setup.
pub fn predicted_s(cluster: &Cluster, request: &MoveRequest, running: bool) -> Option<u64> {
    use vmove_plan::converge::{predict, ConvergePolicy, Features, Workload};
    let model = vmove_plan::DurationModel::for_policy(&cluster.policy);
    match request.mode {
        Mode::Live => {
            let dirty = request.dirty_rate_bytes_per_s?;
            let g = cluster.guest(&request.guest)?;
            let w = Workload { memory_bytes: g.memory_mib.saturating_mul(1_048_576), dirty_rate_bytes_per_s: dirty, working_set_bytes: None };
            let features = Features { auto_converge: true, postcopy_ram: true, return_path: true, ..Features::default() };
            let params = vmove_plan::MigrationParams::from_policy(&cluster.policy);
            let p = predict(&w, model.link_bytes_per_s, &ConvergePolicy::from_params(&params, features, g.vcpus));
            let copy_s = if p.converges { p.total_ms.div_ceil(1000) } else { params.timeout_s };
            Some(model.setup_s.saturating_add(copy_s))
        }
        Mode::Offline if !running => Some(model.setup_s),
        // An evacuation: the host is dead, nothing to stop; the target starts QEMU.
        Mode::OfflineForce => Some(model.setup_s),
        _ => None,
    }
}

/// Fills in [`predicted_s`] for every request; `running`: the guests that run now.
pub fn predict(cluster: &Cluster, requests: &mut [MoveRequest], running: &std::collections::HashSet<String>) {
    for r in requests.iter_mut() {
        r.predicted_s = predicted_s(cluster, r, running.contains(&r.guest));
    }
}

/// A running job of someone else (another drain, an operator) as the limits count it.
pub fn as_planned(j: &JobBrief) -> PlannedMove {
    PlannedMove::counted(&j.guest, &j.source, &j.target, j.mode)
}
