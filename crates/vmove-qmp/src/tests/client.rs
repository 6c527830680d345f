//! Connection behaviour against the fake server.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use serde_json::{json, Value};

use super::within;
use crate::fake::{Command, FakeQmp, Reply};
use crate::{MigrationStatus, Qmp, QmpError, RunState};

async fn connect(fake: &FakeQmp) -> Qmp {
    within("connect", Qmp::connect(fake.path(), Duration::from_secs(5)))
        .await
        .expect("connect to fake")
}

/// Reads commands from the fake's stream until one named `name` arrives.
async fn until_named(fake: &FakeQmp, name: &str) -> Command {
    fake.wait_command(name).await
}

#[tokio::test]
async fn greeting_parsed_and_capabilities_sent_first() {
    let fake = FakeQmp::builder().version(7, 2, 5).start().await.unwrap();
    let qmp = connect(&fake).await;
    let g = qmp.greeting();
    assert_eq!(g.version.triple(), (7, 2, 5));
    assert_eq!(g.version.package, "vmove-fake");
    assert_eq!(g.capabilities, vec!["oob".to_string()]);

    // Before anything else, the handshake command went out, with an id.
    let first = fake.commands();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].name, "qmp_capabilities");
    assert!(first[0].id.as_ref().is_some_and(Value::is_u64));
    assert_eq!(first[0].arguments, None);

    qmp.query_status().await.unwrap();
    assert_eq!(fake.command_names(), ["qmp_capabilities", "query-status"]);
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn replies_are_matched_by_id_out_of_order() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    fake.set_handler(|c| match c.name.as_str() {
        "cmd-a" | "cmd-b" => Reply::Ignore,
        _ => crate::fake::default_reply(c),
    });
    let (qa, qb) = (qmp.clone(), qmp.clone());
    let a = tokio::spawn(async move { qa.execute("cmd-a", Some(json!({"n": 1}))).await });
    let b = tokio::spawn(async move { qb.execute("cmd-b", None).await });

    // Both are pending at the fake; arrival order does not matter.
    let mut got = Vec::new();
    while got.len() < 2 {
        let c = fake.next_command().await;
        if c.name.starts_with("cmd-") {
            got.push(c);
        }
    }
    let find = |n: &str| got.iter().find(|c| c.name == n).unwrap().clone();
    let (ca, cb) = (find("cmd-a"), find("cmd-b"));
    assert_ne!(ca.id, cb.id);
    assert_eq!(qmp.pending_commands(), 2);

    // Answer b first, with an event in between, then a.
    assert!(fake.reply(cb.id.as_ref(), Reply::Return(json!({"who": "b"}))));
    assert!(fake.emit_event("STOP", json!({})));
    assert!(fake.reply(ca.id.as_ref(), Reply::Return(json!({"who": "a"}))));

    let ra = within("a", a).await.unwrap().unwrap();
    let rb = within("b", b).await.unwrap().unwrap();
    assert_eq!(ra, json!({"who": "a"}));
    assert_eq!(rb, json!({"who": "b"}));
    assert_eq!(qmp.pending_commands(), 0);
}

#[tokio::test]
async fn events_reach_every_subscriber() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    let mut s1 = qmp.subscribe();
    let mut s2 = qmp.clone().subscribe();
    fake.emit_event("MIGRATION", json!({"status": "active"}));
    fake.emit_event("MIGRATION_PASS", json!({"pass": 3}));

    for sub in [&mut s1, &mut s2] {
        let e1 = within("event 1", sub.recv()).await.unwrap();
        assert_eq!(e1.event, "MIGRATION");
        assert_eq!(e1.migration_status(), Some(MigrationStatus::Active));
        assert_eq!(e1.migration_pass(), None);
        assert!(e1.timestamp.is_some_and(|t| t.seconds > 0));
        let e2 = within("event 2", sub.recv()).await.unwrap();
        assert_eq!(e2.event, "MIGRATION_PASS");
        assert_eq!(e2.migration_pass(), Some(3));
        assert_eq!(e2.migration_status(), None);
    }
}

#[tokio::test]
async fn unknown_event_fields_and_enum_values_keep_the_connection() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    let mut sub = qmp.subscribe();

    fake.emit_event("VMOVE_FROM_THE_FUTURE", json!({"x": [1, 2]}));
    fake.emit_event("MIGRATION", json!({"status": "teleporting", "new": true}));
    let e = within("unknown event", sub.recv()).await.unwrap();
    assert_eq!(e.event, "VMOVE_FROM_THE_FUTURE");
    assert_eq!(e.data, json!({"x": [1, 2]}));
    let e = within("migration event", sub.recv()).await.unwrap();
    assert_eq!(
        e.migration_status(),
        Some(MigrationStatus::Other("teleporting".into()))
    );

    // A reply with unknown members, inside and outside "return".
    fake.set_handler(|c| match c.name.as_str() {
        "query-weird" => Reply::Lines(vec![format!(
            r#"{{"return": {{"a": 1, "zzz": [1]}}, "id": {}, "future-member": "x"}}"#,
            c.id.clone().unwrap()
        )]),
        _ => crate::fake::default_reply(c),
    });
    let v = qmp.execute("query-weird", None).await.unwrap();
    assert_eq!(v, json!({"a": 1, "zzz": [1]}));

    fake.push_reply(
        "query-status",
        Reply::Return(json!({
            "running": false,
            "singlestep": false,
            "status": "quantum-tunnelling",
            "brand-new": {"a": 1}
        })),
    );
    let st = qmp.query_status().await.unwrap();
    assert!(!st.running);
    assert_eq!(st.status, RunState::Other("quantum-tunnelling".into()));

    // The connection keeps working.
    fake.push_reply(
        "query-version",
        Reply::Return(
            json!({"qemu": {"major": 9, "minor": 1, "micro": 0, "nano": 7}, "package": "", "x": 1}),
        ),
    );
    let v = qmp.query_version().await.unwrap();
    assert_eq!(v.triple(), (9, 1, 0));
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn garbage_lines_are_skipped() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    let mut sub = qmp.subscribe();
    fake.send_raw("this is not json {{{");
    fake.send_raw("");
    fake.send_raw("[1, 2, 3]");
    fake.send_raw(r#"{"something": "else"}"#);
    fake.send_raw(r#"{"return": {}, "id": 99999}"#);
    fake.send_raw(r#"{"return": {}}"#);
    fake.send_raw(r#"{"return": {}, "id": "not-a-number"}"#);
    fake.send_raw("\u{1}\u{2} binary-ish \u{ff}");
    fake.emit_event("RESUME", json!({}));
    // Lines are processed in order: the event after the garbage arrives.
    let e = within("event after garbage", sub.recv()).await.unwrap();
    assert_eq!(e.event, "RESUME");
    assert_eq!(qmp.query_status().await.unwrap().status, RunState::Running);
}

#[tokio::test]
async fn qemu_error_reply_maps_to_qemu_error() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    fake.push_reply("migrate", Reply::error("GenericError", "Invalid uri 'x'"));
    let err = qmp.migrate("x").await.unwrap_err();
    match &err {
        QmpError::Qemu { class, desc } => {
            assert_eq!(class, "GenericError");
            assert_eq!(desc, "Invalid uri 'x'");
        }
        other => panic!("expected Qemu error, got {other:?}"),
    }
    assert!(err.is_qemu_class("GenericError"));
    assert_eq!(err.to_string(), "qemu GenericError: Invalid uri 'x'");
    let sent = fake.wait_command("migrate").await;
    assert_eq!(sent.arguments, Some(json!({"uri": "x"})));
    // Next command fine.
    qmp.migrate("tcp:127.0.0.1:4444").await.unwrap();
}

#[tokio::test]
async fn timeout_when_never_answered_and_connection_survives() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    fake.push_reply("slow", Reply::Ignore);
    let err = qmp
        .execute_timeout("slow", None, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QmpError::Timeout { cmd } if cmd == "slow"),
        "{err:?}"
    );
    assert_eq!(
        qmp.pending_commands(),
        0,
        "timeout removes the pending entry"
    );

    // A late reply for the forgotten id is dropped, not misdelivered.
    let slow = fake.wait_command("slow").await;
    fake.reply(slow.id.as_ref(), Reply::Return(json!({"late": true})));
    let v = qmp.execute("query-status", None).await.unwrap();
    assert_eq!(v["status"], "running");

    // The default timeout applies to execute().
    qmp.set_default_timeout(Duration::from_millis(50));
    assert_eq!(qmp.default_timeout(), Duration::from_millis(50));
    fake.push_reply("stop", Reply::Ignore);
    assert!(matches!(qmp.stop().await, Err(QmpError::Timeout { .. })));
    qmp.set_default_timeout(crate::DEFAULT_TIMEOUT);
    qmp.cont().await.unwrap();
}

#[tokio::test]
async fn dropping_a_waiting_caller_forgets_the_command() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    fake.push_reply("slow", Reply::Ignore);
    let q = qmp.clone();
    let task = tokio::spawn(async move { q.execute("slow", None).await });
    fake.wait_command("slow").await;
    assert_eq!(qmp.pending_commands(), 1);
    task.abort();
    let _ = task.await;
    assert_eq!(qmp.pending_commands(), 0);
    qmp.query_status().await.unwrap();
}

#[tokio::test]
async fn fds_are_passed_with_scm_rights() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;

    // getfd: we keep the read end, QEMU (the fake) gets the write end.
    let (r1, w1) = nix::unistd::pipe().unwrap();
    qmp.getfd(w1.as_fd(), "migfd").await.unwrap();
    drop(w1); // the fake holds its own copy
    let mut got = fake.take_fds();
    assert_eq!(got.len(), 1);
    let rfd = got.remove(0);
    assert_eq!(rfd.command, "getfd");
    assert_eq!(rfd.fdname.as_deref(), Some("migfd"));
    let mut through = std::fs::File::from(rfd.fd);
    through.write_all(b"hello qemu").unwrap();
    drop(through);
    let mut s = String::new();
    std::fs::File::from(r1).read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello qemu");
    let cmd = fake.wait_command("getfd").await;
    assert_eq!(cmd.fds, 1);
    assert_eq!(cmd.arguments, Some(json!({"fdname": "migfd"})));

    // add-fd: the fake gets the read end.
    let (r2, w2) = nix::unistd::pipe().unwrap();
    let info = qmp
        .add_fd(r2.as_fd(), Some(3), Some("disk0"))
        .await
        .unwrap();
    assert_eq!(info.fdset_id, 3);
    assert_eq!(info.fd, 20);
    drop(r2);
    let mut got = fake.take_fds();
    assert_eq!(got.len(), 1);
    let rfd = got.remove(0);
    assert_eq!(rfd.command, "add-fd");
    let mut w2 = std::fs::File::from(w2);
    w2.write_all(b"block data").unwrap();
    drop(w2);
    let mut s = String::new();
    std::fs::File::from(rfd.fd).read_to_string(&mut s).unwrap();
    assert_eq!(s, "block data");
    let cmd = fake.wait_command("add-fd").await;
    assert_eq!(
        cmd.arguments,
        Some(json!({"fdset-id": 3, "opaque": "disk0"}))
    );

    // Commands without fds carry none.
    qmp.query_status().await.unwrap();
    assert!(fake.take_fds().is_empty());
    assert_eq!(fake.wait_command("query-status").await.fds, 0);
}

#[tokio::test]
async fn close_fails_pending_commands_and_resolves_closed() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    fake.push_reply("hang", Reply::Ignore);
    let q = qmp.clone();
    let pending = tokio::spawn(async move { q.execute("hang", None).await });
    until_named(&fake, "hang").await;
    assert!(!qmp.is_closed());

    assert!(fake.disconnect());
    let res = within("pending after close", pending).await.unwrap();
    assert!(matches!(res, Err(QmpError::Closed)), "{res:?}");
    within("closed()", qmp.closed()).await;
    assert!(qmp.is_closed());
    // Resolves at once when already closed, and new commands fail fast.
    within("closed() again", qmp.closed()).await;
    let err = within("after close", qmp.query_status()).await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    // quit on a closed connection is fine.
    qmp.quit().await.unwrap();
}

#[tokio::test]
async fn reply_close_behaves_like_qemu_dying() {
    let fake = FakeQmp::start().await.unwrap();
    let qmp = connect(&fake).await;
    fake.push_reply("system_powerdown", Reply::Close);
    let err = qmp.system_powerdown().await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    within("closed()", qmp.closed()).await;
}

#[tokio::test]
async fn connect_retry_waits_for_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.sock");
    let p = path.clone();
    let conn = tokio::spawn(async move { Qmp::connect_retry(&p, Duration::from_secs(10)).await });
    // On the current-thread runtime the task runs its first (failing)
    // attempt here, before the socket exists.
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    let fake = FakeQmp::builder().socket_path(&path).start().await.unwrap();
    let qmp = within("connect_retry", conn).await.unwrap().unwrap();
    qmp.query_status().await.unwrap();
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn connect_retry_gives_up_and_connect_times_out_without_greeting() {
    let dir = tempfile::tempdir().unwrap();
    let err = Qmp::connect_retry(&dir.path().join("never.sock"), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QmpError::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );

    let silent = FakeQmp::builder().no_greeting().start().await.unwrap();
    let err = Qmp::connect(silent.path(), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, QmpError::Timeout { cmd } if cmd == "greeting"),
        "{err:?}"
    );

    let odd = FakeQmp::builder()
        .greeting(json!({"hello": "world"}))
        .start()
        .await
        .unwrap();
    let err = Qmp::connect(odd.path(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Protocol(_)), "{err:?}");
}

#[tokio::test]
async fn failed_capabilities_negotiation_fails_connect() {
    let fake = FakeQmp::start().await.unwrap();
    fake.push_reply("qmp_capabilities", Reply::error("CommandNotFound", "nope"));
    let err = Qmp::connect(fake.path(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_qemu_class("CommandNotFound"), "{err:?}");
}

/// Compile-time check: the futures can be spawned on a multi-thread runtime.
#[allow(dead_code)]
fn futures_are_send(q: &Qmp, fd: std::os::fd::BorrowedFd<'_>) {
    fn send<T: Send>(_: &T) {}
    send(&q.getfd(fd, "x"));
    send(&q.add_fd(fd, None, None));
    send(&q.query_migrate());
    send(&q.closed());
    send(&Qmp::connect_retry(
        std::path::Path::new("/x"),
        Duration::ZERO,
    ));
    fn sync<T: Send + Sync + Clone>(_: &T) {}
    sync(q);
}
