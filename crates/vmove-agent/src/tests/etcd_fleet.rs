//! The agent on etcd, played by a shared `MemStore` with leases: ownership and volume
//! leases attached to each host's lease, one migration per guest in the cluster, the job
//! index and placement, and self-fencing when a host's link to the store is cut.
use std::future::Future;
use std::time::{Duration, Instant};

use vmove_api::{ErrorCode, GuestState, JobStatus};
use vmove_plan::Mode;
use vmove_registry::keys;
use vmove_store::{get_record, LeasePolicy, StateStore};

use super::fake::Run;
use super::*;
use crate::leases::Lease as VolumeLease;

/// A short TTL, so that tests see leases go late (1 s) and expire (2 s) quickly.
fn policy() -> LeasePolicy {
    LeasePolicy::with_ttl(Duration::from_secs(2))
}

/// Polls `f` until it gives `Some`, for at most `within`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The run states of a guest's living QEMUs, by host.
fn runs(c: &Cluster, guest: &str) -> Vec<(String, Run)> {
    let mut v: Vec<(String, Run)> = c.world.qemus(guest).into_iter().map(|(h, _, r)| (h, r)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

async fn record(c: &Cluster, key: &str) -> Option<VolumeLease> {
    get_record::<VolumeLease>(c.pool.as_ref(), key).await.expect("read").map(|(l, _)| l)
}

fn lease_of(c: &Cluster, host: &str) -> i64 {
    c.host(host).agent().fleet().expect("fleet").lease_id().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_migrations_move_ownership_leases_and_placement() {
    let c = Cluster::new_fleet(2, 2, policy()).await;
    let g = c.boot("vm1", "host1").await;
    let o = record(&c, "owners/vm1").await.expect("owner");
    assert_eq!((o.holder.as_str(), o.holder_lease), ("host1", Some(lease_of(&c, "host1"))));
    let v = record(&c, "leases/shared/vm1-data.img").await.expect("volume lease");
    assert_eq!((v.holder.as_str(), v.holder_lease), ("host1", Some(lease_of(&c, "host1"))));

    let r = c.run(c.spec(&g, "host1", "host2", Mode::Offline)).await;
    assert_status(&r, JobStatus::Succeeded);
    for key in ["owners/vm1", "leases/shared/vm1-data.img"] {
        let l = record(&c, key).await.expect(key);
        assert_eq!((l.holder.as_str(), l.holder_lease), ("host2", Some(lease_of(&c, "host2"))), "{key}");
    }
    let (placed, _) = get_record::<vmove_registry::GuestEntry>(c.pool.as_ref(), &keys::guest("vm1")).await.unwrap().expect("placement");
    assert_eq!(placed.0.host, "host2", "the store says where the guest is, whoever watched the job");
    assert!(c.pool.get(&keys::migration("vm1")).await.unwrap().is_none(), "the claim ends with the job");
    let jobs = vmove_registry::list_jobs(c.pool.as_ref()).await.unwrap();
    assert_eq!(jobs.iter().map(|j| (j.id.as_str(), j.status)).collect::<Vec<_>>(), vec![(r.id.as_str(), JobStatus::Succeeded)]);

    // Live, back: the incoming claim is written on host2's record with host2's lease, and
    // the switchover hands ownership to host1.
    let r = c.run(c.spec(&g, "host2", "host1", Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(c.placement("vm1"), (vec!["host1".to_string()], vec!["host1".to_string()]));
    for key in ["owners/vm1", "leases/shared/vm1-data.img"] {
        let l = record(&c, key).await.expect(key);
        assert_eq!((l.holder.as_str(), l.incoming, l.holder_lease), ("host1", None, Some(lease_of(&c, "host1"))), "{key}");
    }
    let ids: Vec<String> = vmove_registry::list_jobs(c.pool.as_ref()).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), 2, "every job of the cluster in one index: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_owned_by_a_live_host_cannot_start_elsewhere_nor_be_taken_over() {
    let c = Cluster::new_fleet(2, 1, policy()).await;
    let g = c.boot("vm1", "host1").await;
    // Another definition of vm1 on host2 (an operator's mistake): it may not run there.
    c.host("host2").agent().define(g.clone()).await.unwrap();
    let e = c.host("host2").agent().start("vm1").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Leased, "{}", e.message);
    let e = c.host("host2").agent().attach_volumes(&g, crate::leases::Take::Takeover).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Leased);
    assert!(e.message.contains("whose lease is alive"), "{}", e.message);
    assert_eq!(runs(&c, "vm1"), vec![("host1".to_string(), Run::Running)]);
}

/// Two targets accept a migration of the same guest at the same moment: exactly one job
/// starts; the other is refused with the winner's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrations_of_one_guest_exactly_one_starts() {
    let c = Cluster::new_fleet(3, 4, policy()).await;
    let g = c.boot("vm1", "host1").await;
    let (a, b) = (c.spec(&g, "host1", "host2", Mode::Live), c.spec(&g, "host1", "host3", Mode::Live));
    let (ra, rb) = tokio::join!(c.host("host2").jobs().submit(a), c.host("host3").jobs().submit(b));
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (Ok(_), Ok(_)) => panic!("both migrations started"),
        (Err(x), Err(y)) => panic!("neither started: {x} / {y}"),
    };
    assert_eq!(lost.code, ErrorCode::Busy);
    assert!(lost.message.contains(&format!("already being migrated by job {}", won.id)), "{}", lost.message);
    let r = c.wait_end(&won.spec.target, &won.id).await;
    assert_status(&r, JobStatus::Succeeded);
    // Ended: the guest may be migrated again.
    let again = c.spec(&g, &won.spec.target, "host1", Mode::Offline);
    assert_status(&c.run(again).await, JobStatus::Succeeded);
}

/// Cut off from the store, a host pauses its guests while its lease is still held, and
/// lets them run again when renewals get through before it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_pauses_its_guests_before_its_lease_expires() {
    let c = Cluster::new_fleet(2, 1, policy()).await;
    c.boot("vm1", "host1").await;
    c.boot("vm2", "host2").await;
    let lease = c.host("host1").agent().fleet().unwrap().lease_id();
    c.host("host1").link.as_ref().unwrap().set_cut(true);
    until("vm1 paused on host1", Duration::from_secs(5), || async {
        (runs(&c, "vm1") == vec![("host1".to_string(), Run::Paused)]).then_some(())
    })
    .await;
    assert!(c.pool.leases().contains(&lease), "paused while the lease is still held");
    assert!(c.pool.get("owners/vm1").await.unwrap().is_some(), "nobody else may take it yet");
    assert_eq!(c.host("host1").agent().show("vm1").unwrap().state, GuestState::Paused);
    assert_eq!(runs(&c, "vm2"), vec![("host2".to_string(), Run::Running)], "other hosts run on");

    c.host("host1").link.as_ref().unwrap().set_cut(false);
    until("vm1 running again", Duration::from_secs(5), || async {
        (runs(&c, "vm1") == vec![("host1".to_string(), Run::Running)]).then_some(())
    })
    .await;
    assert_eq!(c.host("host1").agent().fleet().unwrap().lease_id(), lease, "the same lease: it never lapsed");
    assert_eq!(c.host("host1").agent().show("vm1").unwrap().state, GuestState::Running);
}

/// A guest asked to shut down while the fence held it (a migration's STOP_GUEST came while
/// its host was cut off) is let run when the fence lifts: paused, it would never see the
/// power button and the stop would wait out its timeout (the fault matrix found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_asked_to_shut_down_while_fenced_runs_again_when_the_fence_lifts() {
    let c = Cluster::new_fleet(2, 1, policy()).await;
    c.boot("vm1", "host1").await;
    c.host("host1").link.as_ref().unwrap().set_cut(true);
    until("vm1 paused on host1", Duration::from_secs(5), || async {
        (runs(&c, "vm1") == vec![("host1".to_string(), Run::Paused)]).then_some(())
    })
    .await;
    // What `stop` records as it presses the power button.
    c.host("host1").agent().set_state("vm1", GuestState::ShuttingDown);
    c.host("host1").link.as_ref().unwrap().set_cut(false);
    until("vm1 running again, to see the power button", Duration::from_secs(5), || async {
        (runs(&c, "vm1") == vec![("host1".to_string(), Run::Running)]).then_some(())
    })
    .await;
    assert_eq!(c.host("host1").agent().show("vm1").unwrap().state, GuestState::ShuttingDown, "still shutting down");
}

/// The lease of a cut-off host expires; `wait_host_dead` sees it; a forced migration
/// starts the guest on host2. When host1 is back it gets a new lease, finds the guest
/// taken, and kills its paused copy: exactly one copy runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_taken_while_its_host_was_cut_off_is_killed_there_when_it_returns() {
    let c = Cluster::new_fleet(2, 1, policy()).await;
    let g = c.boot("vm1", "host1").await;
    let old = c.host("host1").agent().fleet().unwrap().lease_id();
    c.host("host1").link.as_ref().unwrap().set_cut(true);
    c.host("host1").up.store(false, Ordering::SeqCst);
    let dead = vmove_registry::wait_host_dead(c.pool.as_ref(), "host1", Duration::from_secs(10)).await.unwrap();
    assert!(dead.waited > Duration::ZERO && dead.waited <= Duration::from_secs(3), "expired after {:?}", dead.waited);
    assert_eq!(runs(&c, "vm1"), vec![("host1".to_string(), Run::Paused)], "paused before the lease went");
    assert!(c.pool.get("owners/vm1").await.unwrap().is_none(), "its keys went with its lease");
    // Lost: host1 lets the disks go (no writes, no image locks) while it stays paused.
    let pid = c.world.qemus("vm1")[0].1;
    until("host1 inactivates vm1's disks", Duration::from_secs(5), || async {
        let cmds = c.world.commands(pid);
        cmds.iter()
            .any(|x| x.name == "blockdev-set-active" && x.arguments == Some(serde_json::json!({"active": false})))
            .then_some(())
    })
    .await;

    let r = c.run(c.spec(&g, "host1", "host2", Mode::OfflineForce)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(record(&c, "owners/vm1").await.map(|l| l.holder), Some("host2".to_string()));

    c.host("host1").link.as_ref().unwrap().set_cut(false);
    c.host("host1").up.store(true, Ordering::SeqCst);
    until("host1's copy killed", Duration::from_secs(5), || async {
        (runs(&c, "vm1") == vec![("host2".to_string(), Run::Running)]).then_some(())
    })
    .await;
    let new = c.host("host1").agent().fleet().unwrap().lease_id();
    assert_ne!(new, old, "host1 has a new lease");
    let m = get_record::<vmove_registry::Member>(c.pool.as_ref(), &keys::member("host1")).await.unwrap().expect("member again");
    assert_eq!(m.0.lease, new.0);
    assert_eq!(record(&c, "owners/vm1").await.map(|l| l.holder), Some("host2".to_string()), "host2 keeps it");
}

/// A lease that expired while nobody took the guests: the host claims them again on a new
/// lease and lets them run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_nobody_used_is_replaced_and_the_guests_run_on() {
    let c = Cluster::new_fleet(2, 1, policy()).await;
    c.boot("vm1", "host1").await;
    let old = c.host("host1").agent().fleet().unwrap().lease_id();
    c.host("host1").link.as_ref().unwrap().set_cut(true);
    vmove_registry::wait_host_dead(c.pool.as_ref(), "host1", Duration::from_secs(10)).await.unwrap();
    c.host("host1").link.as_ref().unwrap().set_cut(false);
    until("vm1 running again on a new lease", Duration::from_secs(5), || async {
        let back = runs(&c, "vm1") == vec![("host1".to_string(), Run::Running)];
        let owner = record(&c, "owners/vm1").await;
        let new = c.host("host1").agent().fleet().unwrap().lease_id();
        (back && new != old && owner.is_some_and(|o| o.holder == "host1" && o.holder_lease == Some(new.0))).then_some(())
    })
    .await;
    let v = record(&c, "leases/shared/vm1-data.img").await.expect("volume lease claimed again");
    assert_eq!(v.holder, "host1");
    let pid = c.world.qemus("vm1")[0].1;
    let active: Vec<_> = c.world.commands(pid).into_iter().filter(|x| x.name == "blockdev-set-active").map(|x| x.arguments).collect();
    assert_eq!(active, vec![Some(serde_json::json!({"active": false})), Some(serde_json::json!({"active": true}))], "disks let go, then taken back");
}

/// A guest held at its migration's switchover (QEMU `finish-migrate`: its vCPUs stopped by
/// the migration) when its host is cut off: the fence did not pause it, so it never lets it
/// run, which would run the source while the migration completes into the target. The
/// fault matrix's `switchover: SrcCutFromEtcd`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_held_at_its_switchover_is_never_let_run_by_the_fence() {
    let c = Cluster::new_fleet(2, 1, policy()).await;
    let g = c.boot("vm1", "host1").await;
    boot_nth(&c, "vm2", "host1", 2).await;
    let mut spec = c.spec(&g, "host1", "host2", Mode::Live);
    spec.pause_at_switchover = true;
    let rec = c.host("host2").jobs().submit(spec).await.expect("submit");
    c.wait_info("host2", &rec.id, "paused at switchover").await;
    assert!(runs(&c, "vm1").contains(&("host1".to_string(), Run::FinishMigrate)), "{:?}", runs(&c, "vm1"));

    c.host("host1").link.as_ref().unwrap().set_cut(true);
    until("vm2 paused by the fence", Duration::from_secs(5), || async {
        (runs(&c, "vm2") == vec![("host1".to_string(), Run::Paused)]).then_some(())
    })
    .await;
    c.host("host1").link.as_ref().unwrap().set_cut(false);
    until("vm2 running again", Duration::from_secs(5), || async {
        (runs(&c, "vm2") == vec![("host1".to_string(), Run::Running)]).then_some(())
    })
    .await;
    // The fence goes through the guests in name order: vm1 was handled before vm2.
    assert!(!commands_on(&c, "vm1", "host1").iter().any(|x| x.name == "cont"), "the fence let the source run at its switchover");
    assert!(runs(&c, "vm1").contains(&("host1".to_string(), Run::FinishMigrate)), "{:?}", runs(&c, "vm1"));

    c.host("host2").jobs().resume(&rec.id).expect("resume");
    let r = c.wait_end("host2", &rec.id).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(runs(&c, "vm1"), vec![("host2".to_string(), Run::Running)]);
}

/// A migration cancelled at its switchover while the source's host is cut off: QEMU runs
/// the source's guest again as the migration ends, and the fence, looking again while the
/// lease is late, pauses it before the lease can expire; it runs when the lease is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_cancelled_while_its_source_is_fenced_leaves_the_guest_paused_until_the_lease_is_back() {
    // Late after 3 s, expired after 6 s: the fence has 3 s to see the guest run again.
    let c = Cluster::new_fleet(2, 1, LeasePolicy::with_ttl(Duration::from_secs(6))).await;
    let g = c.boot("vm1", "host1").await;
    boot_nth(&c, "vm2", "host1", 2).await;
    let lease = c.host("host1").agent().fleet().unwrap().lease_id();
    let mut spec = c.spec(&g, "host1", "host2", Mode::Live);
    spec.pause_at_switchover = true;
    let rec = c.host("host2").jobs().submit(spec).await.expect("submit");
    c.wait_info("host2", &rec.id, "paused at switchover").await;

    c.host("host1").link.as_ref().unwrap().set_cut(true);
    until("vm2 paused by the fence", Duration::from_secs(10), || async {
        (runs(&c, "vm2") == vec![("host1".to_string(), Run::Paused)]).then_some(())
    })
    .await;
    c.host("host2").jobs().cancel(&rec.id).await.expect("cancel");
    c.wait_end("host2", &rec.id).await;
    until("vm1 paused again on host1", Duration::from_secs(10), || async {
        runs(&c, "vm1").contains(&("host1".to_string(), Run::Paused)).then_some(())
    })
    .await;
    assert!(c.pool.leases().contains(&lease), "paused while the lease is still held");

    c.host("host1").link.as_ref().unwrap().set_cut(false);
    until("vm1 and vm2 running on host1", Duration::from_secs(10), || async {
        (runs(&c, "vm1") == vec![("host1".to_string(), Run::Running)] && runs(&c, "vm2") == vec![("host1".to_string(), Run::Running)])
            .then_some(())
    })
    .await;
}

/// Right after this host's lease expired, before its agent noticed (the fault matrix's
/// `guest create` just after an 8-s cut): what it takes then (a new guest's ownership and
/// volume lease) is written on its new lease, not refused with the old lease's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_right_after_the_hosts_lease_expired_goes_on_its_new_lease() {
    // A TTL long enough that the write's wait for the new lease (two TTLs) outlasts the
    // agent noticing the expiry even on a loaded machine (with 2 s it once took over 4 s).
    let c = Cluster::new_fleet(2, 1, LeasePolicy::with_ttl(Duration::from_secs(6))).await;
    let fleet = c.host("host1").agent().fleet().unwrap().clone();
    let old = fleet.lease_id();
    assert!(c.pool.expire_lease(old));
    c.boot("vm1", "host1").await;
    let new = fleet.lease_id();
    assert_ne!(new, old);
    let l = record(&c, "leases/shared/vm1-data.img").await.expect("the volume's lease");
    assert_eq!((l.holder.as_str(), l.holder_lease), ("host1", Some(new.0)));
    assert_eq!(runs(&c, "vm1"), vec![("host1".to_string(), Run::Running)]);
}
