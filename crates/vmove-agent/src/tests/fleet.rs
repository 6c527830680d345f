//! Many moves at once (drains and evacuations): several migrations into one agent at the
//! same time, the per-host limit of migrations in, and maintenance.
use vmove_api::{ErrorCode, JobStatus, MaintenanceState, Request, Role};
use vmove_plan::{Mode, Step};
use vmove_store::get_record;

use super::*;
use crate::state::{MaintenanceRec, MAINTENANCE_KEY};

/// Submits a live migration to `to` that waits before MIGRATE_GUEST, and waits until it does.
async fn submit_paused(c: &Cluster, g: &GuestSpec, from: &str, to: &str, max_incoming: Option<u32>) -> String {
    let mut spec = c.spec(g, from, to, Mode::Live);
    spec.pause_before = Some(Step::MigrateGuest);
    spec.max_incoming = max_incoming;
    let rec = c.host(to).jobs().submit(spec).await.expect("submit");
    c.wait_info(to, &rec.id, "paused before MIGRATE_GUEST").await;
    rec.id
}

async fn call(h: &Host, req: Request) -> Result<serde_json::Value> {
    h.api.handle(req, Role::Operator).await
}

#[tokio::test]
async fn three_live_migrations_into_one_target_at_once() {
    let c = Cluster::new(4, 3).await;
    let guests = [
        (boot_nth(&c, "vm1", "host1", 1).await, "host1"),
        (boot_nth(&c, "vm2", "host1", 2).await, "host1"),
        (boot_nth(&c, "vm3", "host2", 3).await, "host2"),
    ];
    let mut ids = Vec::new();
    for (g, from) in &guests {
        ids.push(submit_paused(&c, g, from, "host4", None).await);
    }
    // All three are under way on host4 at the same time, each its own task.
    assert_eq!(c.host("host4").jobs().running(), 3);
    for id in &ids {
        c.host("host4").jobs().resume(id).expect("resume");
    }
    let mut recs = Vec::new();
    for id in &ids {
        recs.push(c.wait_end("host4", id).await);
    }
    for r in &recs {
        assert_status(r, JobStatus::Succeeded);
    }
    // They overlapped: every job was created before any ended.
    let last_created = recs.iter().map(|r| r.created_ms).max().unwrap_or(0);
    let first_ended = recs.iter().filter_map(|r| r.ended_ms).min().unwrap_or(0);
    assert!(last_created <= first_ended, "jobs ran one after another: {last_created} > {first_ended}");
    for (g, _) in &guests {
        assert_eq!(c.placement(&g.name), (vec!["host4".to_string()], vec!["host4".to_string()]), "{}", g.name);
        assert_eq!(c.holder(&format!("{}-data.img", g.name)).await.as_deref(), Some("host4"));
    }
    let info = crate::inventory::host_info(c.host("host4").agent()).await.expect("inventory");
    assert_eq!((info.guests.len(), info.memory_committed_mib, info.vcpus_committed), (3, 3 * 512, 3));
    let mut ports = info.console_ports_in_use.clone();
    ports.dedup();
    assert_eq!(ports.len(), 3, "one console port each: {ports:?}");
    assert_eq!(c.host("host4").fake.tap_names().len(), 3);
    assert!(c.host("host1").fake.tap_names().is_empty() && c.host("host2").fake.tap_names().is_empty());
}

#[tokio::test]
async fn max_incoming_refuses_with_at_limit_until_one_has_arrived() {
    let c = Cluster::new(3, 2).await;
    let g1 = boot_nth(&c, "vm1", "host1", 1).await;
    let g2 = boot_nth(&c, "vm2", "host1", 2).await;
    let g3 = boot_nth(&c, "vm3", "host2", 3).await;
    let a = submit_paused(&c, &g1, "host1", "host3", Some(2)).await;
    let b = submit_paused(&c, &g2, "host1", "host3", Some(2)).await;
    let mut third = c.spec(&g3, "host2", "host3", Mode::Live);
    third.max_incoming = Some(2);
    let e = c.host("host3").jobs().submit(third.clone()).await.expect_err("a third one is over the limit");
    assert_eq!(e.code, ErrorCode::AtLimit, "{}", e.message);
    assert_eq!(e.message, "host3 already receives 2 guests (limit 2); try again when one has arrived");
    assert_eq!(c.host("host3").jobs().running(), 2, "nothing was started for the refused one");
    // Without a limit the agent takes it (an operator's own migration).
    let mut unlimited = third.clone();
    unlimited.max_incoming = None;
    unlimited.pause_before = Some(Step::MigrateGuest);
    let u = c.host("host3").jobs().submit(unlimited).await.expect("no limit asked");
    c.host("host3").jobs().cancel(&u.id).await.expect("cancel");
    assert_status(&c.wait_end("host3", &u.id).await, JobStatus::Cancelled);
    c.host("host3").jobs().resume(&a).expect("resume");
    assert_status(&c.wait_end("host3", &a).await, JobStatus::Succeeded);
    let r = c.run(third).await;
    assert_status(&r, JobStatus::Succeeded);
    c.host("host3").jobs().resume(&b).expect("resume");
    assert_status(&c.wait_end("host3", &b).await, JobStatus::Succeeded);
}

#[tokio::test]
async fn a_drained_target_refuses_new_guests_and_migrations_in() {
    let c = Cluster::new(2, 2).await;
    let g1 = boot_nth(&c, "vm1", "host1", 1).await;
    let stays = boot_nth(&c, "stays", "host2", 2).await;
    let mut cold = guest("cold", "host2");
    cold.nics[0].mac = "52:54:00:00:01:03".into();
    c.host("host2").agent().define(cold.clone()).await.expect("define");
    // An offline migration to host2 accepted before the drain, one step at a time.
    let mut first = c.spec(&g1, "host1", "host2", Mode::Offline);
    first.step = Some(Step::StopGuest);
    assert_status(&c.run(first.clone()).await, JobStatus::Succeeded);

    let h2 = c.host("host2");
    let v = call(h2, Request::HostDrain).await.expect("drain");
    let st: MaintenanceState = serde_json::from_value(v).expect("result");
    assert!(st.changed && st.maintenance.is_some() && st.host == "host2", "{st:?}");
    let again: MaintenanceState = serde_json::from_value(call(h2, Request::HostDrain).await.expect("drain")).expect("result");
    assert_eq!((again.changed, again.maintenance), (false, st.maintenance), "idempotent");
    let info = crate::inventory::host_info(h2.agent()).await.expect("inventory");
    assert_eq!(info.maintenance, st.maintenance, "reported in the inventory");
    let saved = get_record::<MaintenanceRec>(h2.store.as_ref(), MAINTENANCE_KEY).await.expect("read").map(|(r, _)| r.0);
    assert_eq!(saved, st.maintenance, "kept in the state store");

    // A new migration in, a new guest and a guest start are refused with wrong_state.
    let g_vm4 = {
        let mut g = guest("vm4", "host1");
        g.nics[0].mac = "52:54:00:00:01:04".into();
        c.host("host1").agent().define(g.clone()).await.expect("define");
        c.host("host1").agent().start("vm4").await.expect("start");
        g
    };
    let e = h2.jobs().submit(c.spec(&g_vm4, "host1", "host2", Mode::Live)).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::WrongState);
    assert_eq!(
        e.message,
        "host2 is in maintenance: a migration of vm4 to host2 refused (guests already here keep running; \
         `vmove host undrain host2` ends it)"
    );
    let mut new_guest = guest("new", "host2");
    new_guest.nics[0].mac = "52:54:00:00:01:05".into();
    let e = call(h2, Request::GuestDefine { spec: new_guest.clone() }).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::WrongState, "{}", e.message);
    let e = call(h2, Request::GuestStart { name: "cold".into() }).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::WrongState, "{}", e.message);
    assert!(h2.agent().spec("new").is_none());
    // The guest already there keeps running, and may leave (a drain's move out).
    assert_eq!(c.placement("stays").1, vec!["host2".to_string()]);
    assert_status(&c.run(c.spec(&stays, "host2", "host1", Mode::Live)).await, JobStatus::Succeeded);
    // The migration accepted before the drain may finish.
    for step in &Step::plan(Mode::Offline)[1..] {
        let mut s = first.clone();
        s.step = Some(*step);
        assert_status(&c.run(s).await, JobStatus::Succeeded);
    }
    assert_eq!(c.placement("vm1"), (vec!["host2".to_string()], vec!["host2".to_string()]));

    // Undrain: everything is accepted again.
    let v: MaintenanceState = serde_json::from_value(call(h2, Request::HostUndrain).await.expect("undrain")).expect("result");
    assert_eq!((v.changed, v.maintenance), (true, None));
    assert!(get_record::<MaintenanceRec>(h2.store.as_ref(), MAINTENANCE_KEY).await.expect("read").is_none());
    assert_status(&c.run(c.spec(&g_vm4, "host1", "host2", Mode::Live)).await, JobStatus::Succeeded);
    call(h2, Request::GuestDefine { spec: new_guest }).await.expect("define after undrain");
    call(h2, Request::GuestStart { name: "cold".into() }).await.expect("start after undrain");
}

#[tokio::test]
async fn maintenance_survives_an_agent_restart() {
    let c = Cluster::new(1, 1).await;
    let h = c.host("host1");
    call(h, Request::HostDrain).await.expect("drain");
    let parts = Parts {
        cfg: h.agent().cfg.clone(),
        accel: "tcg".into(),
        qemu: Default::default(),
        host: h.fake.clone(),
        state: State::new(h.store.clone() as Arc<dyn StateStore>),
        leases: BTreeMap::new(),
        peer_tls: h.agent().peer_tls.clone(),
        fleet: None,
    };
    let restarted = Agent::new(parts).await.expect("agent");
    assert_eq!(restarted.maintenance(), h.agent().maintenance());
    assert!(restarted.maintenance().is_some());
}

/// The runner marks a job's record ended a moment before it appends JobEnded with the
/// summary (QEMU's downtime): a watcher woken in between (by the outage breakdown's event, a
/// heartbeat) waits for that event instead of returning a record without it (a drain's
/// table then lacked the move's downtime).
#[tokio::test]
async fn a_watcher_woken_as_the_job_ends_gets_its_summary() {
    use vmove_api::{EventKind, JobEvent, JobKind, JobRecord, Summary};
    let c = Cluster::new(2, 2).await;
    let g = guest("vm1", "host1");
    let rec = JobRecord {
        version: 2,
        id: "host2-1".into(),
        kind: JobKind::Migrate,
        spec: c.spec(&g, "host1", "host2", Mode::Live),
        status: JobStatus::Running,
        steps: vec![],
        created_ms: 1,
        ended_ms: None,
        error: None,
        events: vec![],
        guest_host: None,
        outage: None,
    };
    let cell = std::sync::Arc::new(crate::jobs::JobCell::new(rec));
    let ender = cell.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        crate::jobs::end_record(&ender, JobStatus::Succeeded, None);
        ender.events.send_modify(|_| {});
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let n = {
            let mut r = ender.lock();
            let summary = Summary { downtime_ms: Some(42), ..Summary::default() };
            let seq = r.events.len() as u64;
            r.events.push(JobEvent { seq, at_ms: 2, kind: EventKind::JobEnded { status: JobStatus::Succeeded, error: None, summary } });
            r.events.len() as u64
        };
        ender.events.send_replace(n);
    });
    let mut buf: Vec<u8> = Vec::new();
    let rec = crate::jobs::watch::watch_events(&cell, 0, &mut vmove_api::server::EventSink::new(&mut buf)).await.expect("watch");
    let downtime = rec.events.iter().find_map(|e| match &e.kind {
        EventKind::JobEnded { summary, .. } => summary.downtime_ms,
        _ => None,
    });
    assert_eq!(downtime, Some(42), "{rec:?}");
    assert!(String::from_utf8_lossy(&buf).contains("job_ended"), "streamed too");
}

#[tokio::test]
async fn guests_defined_at_once_get_their_own_console_port_and_memory() {
    let c = Cluster::new(1, 2).await;
    let a = c.host("host1").agent().clone();
    // Eight defines at once (migrations arriving together), none naming a console port.
    let defines = (1..=8u8).map(|n| {
        let a = a.clone();
        let mut spec = guest(&format!("vm{n}"), "host1");
        spec.nics[0].mac = format!("52:54:00:00:02:{n:02x}");
        spec.memory_mib = 64;
        async move { a.define(spec).await }
    });
    for r in futures::future::join_all(defines).await {
        r.expect("define");
    }
    let ports = a.console_ports();
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!((ports.len(), distinct.len()), (8, 8), "one console port each: {ports:?}");
}
