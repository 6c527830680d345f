//! A fake host for unit tests: its QEMUs are `FakeQmp` servers that play the part of a
//! QEMU (run states, power button, outgoing and incoming migrations, cancel), its bridges
//! and taps are sets. Hosts of one test share a [`World`], through which a source's
//! `migrate` reaches the target's `migrate-incoming`.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::watch;
use vmove_host::qemu::RunFiles;
use vmove_qmp::fake::{default_reply, Command, FakeQmp, Reply};
use vmove_qmp::Qmp;

use crate::error::{AgentError, Result};
use crate::host::{guest_of_args, HostOps};

/// A fake QEMU's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Running,
    Paused,
    InMigrate,
    /// An outgoing migration's final stage (held there at pre-switchover).
    FinishMigrate,
    PostMigrate,
}

impl Run {
    fn status(self) -> &'static str {
        match self {
            Run::Running => "running",
            Run::Paused => "paused",
            Run::InMigrate => "inmigrate",
            Run::FinishMigrate => "finish-migrate",
            Run::PostMigrate => "postmigrate",
        }
    }
}

/// An outgoing migration as the fake source sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    None,
    /// Active, with how many `query-migrate` calls are left before it completes.
    Active { uri: String, left: u32 },
    /// Held before the switchover (capability `pause-before-switchover`) until
    /// `migrate-continue`.
    PreSwitchover { uri: String },
    Completed,
    Cancelled,
}

/// One fake QEMU process.
pub struct Proc {
    pub pid: u32,
    pub guest: String,
    pub host: String,
    /// Its command line.
    pub args: Vec<String>,
    /// Its block layer (exports, NBD nodes, mirror jobs).
    pub block: Mutex<super::fake_block::Block>,
    pub run: Mutex<Run>,
    pub out: Mutex<Out>,
    pub listen: Mutex<Option<String>>,
    /// The capability `pause-before-switchover` is on.
    pub pause_before_switchover: AtomicBool,
    /// The commands it received, kept when it exits.
    saved: Mutex<Vec<Command>>,
    exited: watch::Sender<bool>,
    pub qmp: Mutex<Option<FakeQmp>>,
}

impl Proc {
    fn set_run(&self, r: Run) {
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }
    fn get_run(&self) -> Run {
        *self.run.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn exit(&self) {
        if let Some(f) = self.qmp.lock().unwrap_or_else(|p| p.into_inner()).take() {
            *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = f.commands();
            f.disconnect();
        }
        self.exited.send_replace(true);
    }
    fn alive(&self) -> bool {
        !*self.exited.borrow()
    }
    /// Whether the process lives.
    pub fn is_alive(&self) -> bool {
        self.alive()
    }
    /// Its block layer.
    pub fn block(&self) -> std::sync::MutexGuard<'_, super::fake_block::Block> {
        self.block.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the fake hosts of one test share.
#[derive(Default)]
pub struct World {
    pids: AtomicU32,
    /// Every QEMU ever started, by pid.
    pub procs: Mutex<BTreeMap<u32, Arc<Proc>>>,
    /// Incoming migrations, by URI.
    incoming: Mutex<HashMap<String, Arc<Proc>>>,
    /// `query-migrate` calls a migration takes before it completes.
    pub passes: AtomicU32,
    /// `query-block-jobs` calls a mirror takes to get ready.
    pub mirror_steps: AtomicU32,
    /// Mirrors make no progress until they are write-blocking (the guest writes faster).
    pub stall_mirrors: AtomicBool,
    /// Mirrors fail with this error at the next query.
    pub mirror_error: Mutex<Option<String>>,
    /// QEMU before 8.2: no `block-job-change`.
    pub no_block_job_change: AtomicBool,
    /// `query-commands` unknown (the agent cannot tell what its QEMU has).
    pub no_query_commands: AtomicBool,
}

impl World {
    /// A world whose migrations complete after `passes` queries.
    pub fn new(passes: u32) -> Arc<World> {
        let w = World { pids: AtomicU32::new(1000), passes: AtomicU32::new(passes), mirror_steps: AtomicU32::new(2), ..Default::default() };
        Arc::new(w)
    }

    /// Living QEMUs of a guest, as `(host, pid, run state)`.
    pub fn qemus(&self, guest: &str) -> Vec<(String, u32, Run)> {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.guest == guest && p.alive())
            .map(|p| (p.host.clone(), p.pid, p.get_run()))
            .collect()
    }

    /// The commands a process received (also once it has exited).
    pub fn commands(&self, pid: u32) -> Vec<Command> {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = procs.get(&pid) else { return vec![] };
        let live = p.qmp.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|f| f.commands());
        live.unwrap_or_else(|| p.saved.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn handle(self: &Arc<World>, me: &Arc<Proc>, c: &Command) -> Reply {
        if let Some(r) = self.handle_block(me, c) {
            return r;
        }
        match c.name.as_str() {
            "query-status" => {
                let r = me.get_run();
                Reply::Return(json!({"running": r == Run::Running, "status": r.status()}))
            }
            "system_powerdown" | "quit" => {
                let me = me.clone();
                // The guest powers off a moment after the button.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    me.exit();
                });
                Reply::ok()
            }
            "migrate-incoming" => {
                let uri = c.arg_str("uri").unwrap_or("").to_string();
                let uri = match uri.strip_suffix(":0") {
                    Some(base) => format!("{base}:{}", 40000 + me.pid),
                    None => uri,
                };
                *me.listen.lock().unwrap_or_else(|p| p.into_inner()) = Some(uri.clone());
                self.incoming.lock().unwrap_or_else(|p| p.into_inner()).insert(uri, me.clone());
                Reply::ok()
            }
            "migrate" => {
                let uri = c.arg_str("uri").unwrap_or("").to_string();
                if !self.incoming.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&uri) {
                    return Reply::error("GenericError", &format!("Failed to connect to '{uri}'"));
                }
                let left = self.passes.load(Ordering::SeqCst);
                *me.out.lock().unwrap_or_else(|p| p.into_inner()) = Out::Active { uri, left };
                Reply::ok()
            }
            "migrate_cancel" => {
                let mut out = me.out.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(*out, Out::Active { .. } | Out::PreSwitchover { .. }) {
                    *out = Out::Cancelled;
                    // As QEMU: a guest that ran before its migration runs again.
                    if me.get_run() == Run::FinishMigrate {
                        me.set_run(Run::Running);
                    }
                }
                Reply::ok()
            }
            "migrate-set-capabilities" => {
                let on = c.arguments.as_ref().and_then(|a| a["capabilities"].as_array().cloned()).unwrap_or_default().iter().any(|x| {
                    x["capability"] == "pause-before-switchover" && x["state"] == true
                });
                me.pause_before_switchover.store(on, Ordering::SeqCst);
                Reply::ok()
            }
            "migrate-continue" => {
                let mut out = me.out.lock().unwrap_or_else(|p| p.into_inner());
                match out.clone() {
                    Out::PreSwitchover { uri } => {
                        *out = Out::Active { uri, left: 0 };
                        Reply::ok()
                    }
                    _ => Reply::error("GenericError", "Migration not in expected state: none"),
                }
            }
            "cont" => {
                me.set_run(Run::Running);
                Reply::ok()
            }
            "stop" => {
                if me.get_run() == Run::Running {
                    me.set_run(Run::Paused);
                }
                Reply::ok()
            }
            "query-migrate" => self.query_migrate(me),
            "query-dirty-rate" => Reply::Return(json!({"status": "measured", "dirty-rate": 3})),
            _ => default_reply(c),
        }
    }

    fn query_migrate(&self, me: &Arc<Proc>) -> Reply {
        if let Some(uri) = me.listen.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            let port = uri.rsplit(':').next().unwrap_or("0").to_string();
            let status = if me.get_run() == Run::InMigrate { "active" } else { "completed" };
            return Reply::Return(json!({"status": status, "socket-address": [{"type": "inet", "host": "127.0.0.1", "port": port}]}));
        }
        let mut out = me.out.lock().unwrap_or_else(|p| p.into_inner());
        let ram = json!({"transferred": 1_000_000, "remaining": 500_000, "total": 2_000_000, "mbps": 100.0, "dirty-sync-count": 2, "page-size": 4096, "dirty-pages-rate": 10});
        match out.clone() {
            Out::None => Reply::Return(json!({})),
            Out::Cancelled => Reply::Return(json!({"status": "cancelled"})),
            Out::Completed => Reply::Return(json!({"status": "completed", "total-time": 321, "downtime": 12, "ram": ram})),
            Out::PreSwitchover { .. } => Reply::Return(json!({"status": "pre-switchover", "total-time": 300, "ram": ram})),
            Out::Active { uri, left: 0 } if me.pause_before_switchover.swap(false, Ordering::SeqCst) => {
                *out = Out::PreSwitchover { uri };
                // As QEMU: the vCPUs stop for the switchover (a `stop` changes nothing now;
                // a `cont` would run them).
                if me.get_run() == Run::Running {
                    me.set_run(Run::FinishMigrate);
                }
                Reply::Return(json!({"status": "pre-switchover", "total-time": 300, "ram": ram}))
            }
            Out::Active { uri, left: 0 } => {
                *out = Out::Completed;
                me.set_run(Run::PostMigrate);
                if let Some(t) = self.incoming.lock().unwrap_or_else(|p| p.into_inner()).remove(&uri) {
                    t.set_run(Run::Running);
                    *t.listen.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Reply::Return(json!({"status": "completed", "total-time": 321, "downtime": 12, "ram": ram}))
            }
            Out::Active { uri, left } => {
                *out = Out::Active { uri, left: left - 1 };
                Reply::Return(json!({"status": "active", "total-time": 100, "ram": ram}))
            }
        }
    }
}

/// A fake host.
pub struct FakeHost {
    pub name: String,
    pub world: Arc<World>,
    pub bridges: Mutex<BTreeSet<String>>,
    pub taps: Mutex<BTreeMap<String, String>>,
}

impl FakeHost {
    pub fn new(name: &str, world: Arc<World>) -> FakeHost {
        FakeHost { name: name.into(), world, bridges: Mutex::new(BTreeSet::from(["lab-net".to_string()])), taps: Mutex::default() }
    }

    fn proc(&self, pid: u32) -> Option<Arc<Proc>> {
        self.world.procs.lock().unwrap_or_else(|p| p.into_inner()).get(&pid).cloned()
    }

    /// This host's taps.
    pub fn tap_names(&self) -> Vec<String> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

#[async_trait]
impl HostOps for FakeHost {
    async fn spawn_qemu(&self, args: &[String], run_dir: &Path) -> Result<u32> {
        std::fs::create_dir_all(run_dir)?;
        let sock = RunFiles::qmp(run_dir);
        let _ = std::fs::remove_file(&sock);
        let guest = guest_of_args(args).ok_or_else(|| AgentError::internal("no -name guest=..."))?;
        let pid = self.world.pids.fetch_add(1, Ordering::SeqCst);
        let incoming = args.iter().any(|a| a == "-incoming");
        let proc = Arc::new(Proc {
            pid,
            guest,
            host: self.name.clone(),
            args: args.to_vec(),
            block: Mutex::default(),
            run: Mutex::new(if incoming { Run::InMigrate } else { Run::Running }),
            out: Mutex::new(Out::None),
            listen: Mutex::new(None),
            pause_before_switchover: AtomicBool::new(false),
            saved: Mutex::default(),
            exited: watch::channel(false).0,
            qmp: Mutex::new(None),
        });
        let (w, p) = (self.world.clone(), Arc::downgrade(&proc));
        let fake = FakeQmp::builder()
            .version(10, 0, 2)
            .socket_path(&sock)
            .handler(move |c| match p.upgrade() {
                Some(me) => w.handle(&me, c),
                None => Reply::Close,
            })
            .start()
            .await?;
        *proc.qmp.lock().unwrap_or_else(|p| p.into_inner()) = Some(fake);
        self.world.procs.lock().unwrap_or_else(|p| p.into_inner()).insert(pid, proc);
        Ok(pid)
    }

    fn wait_exit(&self, pid: u32) -> BoxFuture<'static, ()> {
        let rx = self.proc(pid).map(|p| p.exited.subscribe());
        Box::pin(async move {
            if let Some(mut rx) = rx {
                while !*rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        })
    }

    async fn connect_qmp(&self, socket: &Path, total: Duration) -> Result<Qmp> {
        Ok(Qmp::connect_retry_oob(socket, total).await?)
    }

    fn alive(&self, pid: u32) -> bool {
        self.proc(pid).is_some_and(|p| p.alive())
    }

    fn kill(&self, pid: u32) {
        if let Some(p) = self.proc(pid) {
            p.exit();
        }
    }

    fn scan_qemus(&self, _run_dir: &Path) -> HashMap<String, u32> {
        let procs = self.world.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs.values().filter(|p| p.host == self.name && p.alive()).map(|p| (p.guest.clone(), p.pid)).collect()
    }

    fn is_qemu_of(&self, pid: u32, name: &str) -> bool {
        self.proc(pid).is_some_and(|p| p.alive() && p.guest == name && p.host == self.name)
    }

    async fn bridge_exists(&self, name: &str) -> Result<bool> {
        Ok(self.bridges.lock().unwrap_or_else(|p| p.into_inner()).contains(name))
    }

    async fn ensure_bridge(&self, name: &str) -> Result<bool> {
        Ok(self.bridges.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string()))
    }

    async fn bridges(&self) -> Result<Vec<String>> {
        Ok(self.bridges.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect())
    }

    async fn plug_tap(&self, tap: &str, bridge: &str) -> Result<()> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner()).insert(tap.into(), bridge.into());
        Ok(())
    }

    fn unplug_tap(&self, tap: &str) -> Result<()> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner()).remove(tap);
        Ok(())
    }

    fn memory_mib(&self) -> (u64, u64) {
        (8192, 6000)
    }

    fn cpu(&self) -> (String, Vec<String>, u32) {
        ("Fake CPU".into(), vec!["fpu".into(), "sse2".into()], 4)
    }

    fn hardware_model(&self) -> String {
        "fake".into()
    }

    /// Fake hosts' addresses are not this machine's: listen on the loopback.
    fn listen_tcp(&self, _ip: std::net::IpAddr) -> Result<std::net::TcpListener> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
    }
}
