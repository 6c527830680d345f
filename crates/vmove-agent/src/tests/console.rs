//! Console sessions over in-memory connections: the reply, the log followed with offsets,
//! keystrokes to the chardev's port (a listener plays QEMU's), one writer, refusals, and
//! the `end` line when the guest moves away or stops.
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use vmove_api::{ConsoleAttached, ConsoleEnd, ConsoleLine, ConsoleReplay, Reply};
use vmove_host::qemu::RunFiles;

use super::*;

/// A session served on one end of an in-memory pipe; the test holds the other end.
struct Session {
    lines: BufReader<tokio::io::ReadHalf<DuplexStream>>,
    keys: tokio::io::WriteHalf<DuplexStream>,
    served: tokio::task::JoinHandle<std::result::Result<(), ErrorCode>>,
}

fn open(agent: &Arc<Agent>, replay: ConsoleReplay) -> Session {
    let (mine, theirs) = tokio::io::duplex(1 << 16);
    let agent = agent.clone();
    let served = tokio::spawn(async move {
        let mut theirs = theirs;
        crate::console::serve(&agent, "vm1", replay, &mut theirs).await.map_err(|e| e.code)
    });
    let (r, w) = tokio::io::split(mine);
    Session { lines: BufReader::new(r), keys: w, served }
}

impl Session {
    async fn line<T: serde::de::DeserializeOwned>(&mut self) -> T {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.lines.read_line(&mut l)).await.expect("a line in time").expect("read");
        serde_json::from_str(l.trim_end()).unwrap_or_else(|e| panic!("{e}: {l:?}"))
    }

    async fn attached(&mut self) -> ConsoleAttached {
        let r: Reply = self.line().await;
        assert!(r.ok, "{r:?}");
        serde_json::from_value(r.result.expect("result")).expect("ConsoleAttached")
    }

    /// Data lines until `want` has been seen; returns them.
    async fn until(&mut self, want: &str) -> Vec<(u64, Vec<u8>)> {
        let mut got = Vec::new();
        loop {
            let l: ConsoleLine = self.line().await;
            let ConsoleLine::Data { offset, .. } = &l else { panic!("end before {want:?}: {l:?} after {got:?}") };
            got.push((*offset, l.bytes().expect("base64")));
            if String::from_utf8_lossy(&got.iter().flat_map(|(_, b)| b.clone()).collect::<Vec<_>>()).contains(want) {
                return got;
            }
        }
    }
}

fn append(agent: &Agent, text: &str) {
    use std::io::Write;
    let run = agent.run_dir("vm1");
    std::fs::create_dir_all(&run).unwrap();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(RunFiles::serial_log(&run)).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[tokio::test]
async fn a_session_follows_the_log_sends_keys_and_ends_when_the_guest_moves() {
    let c = Cluster::new(2, 2).await;
    let g = c.boot("vm1", "host1").await;
    let a1 = c.host("host1").agent().clone();
    append(&a1, "VMOVE READY vm1\nVERIFY OK 1\n");
    // QEMU's console chardev (on the guest's console port), played by a listener.
    let port = a1.spec("vm1").and_then(|s| s.console_port).expect("define gives every guest a console port");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let mut s = open(&a1, ConsoleReplay::Tail(12));
    let at = s.attached().await;
    assert_eq!(at, ConsoleAttached { host: "host1".into(), guest: "vm1".into(), offset: 16, writable: true });
    assert_eq!(s.until("VERIFY OK 1\n").await, vec![(16, b"VERIFY OK 1\n".to_vec())], "the tail asked for, with its offset");
    append(&a1, "VERIFY OK 2\n");
    assert_eq!(s.until("VERIFY OK 2").await[0].0, 28, "live output continues at the next offset");

    // Keystrokes reach the chardev.
    let (mut qemu, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.unwrap().unwrap();
    s.keys.write_all(b"root\r").await.unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), qemu.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"root\r");

    // A second session: output only, from where it asks.
    let mut s2 = open(&a1, ConsoleReplay::From(28));
    let at2 = s2.attached().await;
    assert_eq!((at2.offset, at2.writable), (28, false), "one writer per guest");
    assert_eq!(s2.until("VERIFY OK 2").await, vec![(28, b"VERIFY OK 2\n".to_vec())]);
    drop(s2);

    // The guest moves live: the session sends what the source wrote, then `end: moved`.
    append(&a1, "VERIFY OK 3\n");
    let r = c.run(c.spec(&g, "host1", "host2", vmove_plan::Mode::Live)).await;
    assert_status(&r, JobStatus::Succeeded);
    assert_eq!(s.until("VERIFY OK 3").await.last().map(|d| d.0), Some(40));
    let end: ConsoleLine = s.line().await;
    assert_eq!(end, ConsoleLine::End { offset: 52, reason: ConsoleEnd::Moved });
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), s.served).await.unwrap().unwrap(), Ok(()));
    assert!(a1.console_writers.lock().unwrap().is_empty(), "the writer slot is released");

    // On the target: a new log from offset 0; a stop ends the session with `stopped`.
    let a2 = c.host("host2").agent().clone();
    append(&a2, "VERIFY OK 4\n");
    let mut t = open(&a2, ConsoleReplay::From(0));
    assert_eq!(t.attached().await.offset, 0);
    assert_eq!(t.until("VERIFY OK 4").await, vec![(0, b"VERIFY OK 4\n".to_vec())]);
    a2.stop("vm1", true, Duration::from_secs(5)).await.expect("stop");
    let end: ConsoleLine = t.line().await;
    assert_eq!(end, ConsoleLine::End { offset: 12, reason: ConsoleEnd::Stopped });

    // Refusals, answered before anything else: a stopped guest, an unknown one.
    assert_eq!(open(&a2, ConsoleReplay::Live).served.await.unwrap(), Err(ErrorCode::WrongState));
    assert_eq!(open(&a1, ConsoleReplay::Live).served.await.unwrap(), Err(ErrorCode::NotFound));
}

#[tokio::test]
async fn a_client_that_leaves_ends_the_session() {
    let c = Cluster::new(1, 2).await;
    c.boot("vm1", "host1").await;
    let a = c.host("host1").agent().clone();
    append(&a, "x\n");
    let mut s = open(&a, ConsoleReplay::Live);
    assert!(!s.attached().await.writable, "nothing listens on the console port: output only");
    s.keys.shutdown().await.unwrap();
    drop(s.keys);
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), s.served).await.expect("ends").unwrap(), Ok(()));
}
