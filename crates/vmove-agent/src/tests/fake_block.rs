//! The fake QEMU's block layer, for the copy of local volumes: NBD servers and exports on
//! a target's storage helper, NBD client nodes and mirror jobs on a source (its guest's
//! QEMU or its helper), with QEMU's events. A mirror gets ready after a few
//! `query-block-jobs`; a ready one cancelled without force copies the source's file into
//! the target's (the files the `-blockdev` nodes name), as the real final sync does.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use vmove_qmp::fake::{Command, Reply};

use super::fake::{Proc, World};

/// A mirror job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The disk node it copies (`disk{i}`).
    pub node: String,
    /// Its NBD client node.
    pub target: String,
    pub len: u64,
    pub offset: u64,
    pub ready: bool,
    pub concluded: bool,
    pub write_blocking: bool,
    pub error: Option<String>,
}

/// One fake QEMU's block state.
#[derive(Debug, Default)]
pub struct Block {
    /// NBD client nodes: node → export name.
    pub nbd_nodes: BTreeMap<String, String>,
    /// Mirror jobs by id.
    pub jobs: BTreeMap<String, Job>,
    /// Whether the NBD server runs.
    pub nbd_server: bool,
    /// Exports: id → node.
    pub exports: BTreeMap<String, String>,
}

/// The file a `-blockdev` node of a command line names.
pub fn node_file(args: &[String], node: &str) -> Option<PathBuf> {
    args.windows(2).filter(|w| w[0] == "-blockdev").find_map(|w| {
        let v: Value = serde_json::from_str(&w[1]).ok()?;
        (v["node-name"] == node).then(|| v["file"]["filename"].as_str().map(PathBuf::from))?
    })
}

/// `vm1`, `vm1+copy`, `vm1+nbd` → `vm1`.
fn base(guest: &str) -> &str {
    guest.split('+').next().unwrap_or(guest)
}

impl World {
    fn emit(me: &Proc, name: &str, data: Value) {
        if let Some(f) = me.qmp.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            f.emit_event(name, data);
        }
    }

    /// The target helper serving `me`'s guest, if its NBD server runs.
    fn nbd_server_for(&self, me: &Proc) -> Option<Arc<Proc>> {
        let want = format!("{}+nbd", base(&me.guest));
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs.values().find(|p| p.guest == want && p.is_alive() && p.block().nbd_server).cloned()
    }

    /// Block commands; `None` for the others.
    pub(crate) fn handle_block(&self, me: &Arc<Proc>, c: &Command) -> Option<Reply> {
        let arg = |k: &str| c.arg_str(k).unwrap_or("").to_string();
        Some(match c.name.as_str() {
            "nbd-server-start" => {
                me.block().nbd_server = true;
                Reply::ok()
            }
            "nbd-server-stop" => {
                let mut b = me.block();
                b.nbd_server = false;
                b.exports.clear();
                Reply::ok()
            }
            "block-export-add" => {
                me.block().exports.insert(arg("id"), arg("node-name"));
                Reply::ok()
            }
            "block-export-del" => {
                let id = arg("id");
                if me.block().exports.remove(&id).is_none() {
                    return Some(Reply::error("GenericError", &format!("Export '{id}' is not found")));
                }
                World::emit(me, "BLOCK_EXPORT_DELETED", json!({ "id": id }));
                Reply::ok()
            }
            "query-block-exports" => {
                let b = me.block();
                Reply::Return(b.exports.iter().map(|(id, n)| json!({"id": id, "type": "nbd", "node-name": n, "shutting-down": false})).collect())
            }
            "blockdev-add" => {
                let Some(a) = &c.arguments else { return Some(Reply::error("GenericError", "no arguments")) };
                if a["driver"] != "nbd" {
                    return Some(Reply::ok());
                }
                if self.nbd_server_for(me).is_none() {
                    return Some(Reply::error("GenericError", "Failed to connect to the NBD server: Connection refused"));
                }
                let node = a["node-name"].as_str().unwrap_or("").to_string();
                me.block().nbd_nodes.insert(node, a["export"].as_str().unwrap_or("").to_string());
                Reply::ok()
            }
            "blockdev-del" => {
                let node = arg("node-name");
                let mut b = me.block();
                if b.jobs.values().any(|j| j.target == node && !j.concluded) {
                    return Some(Reply::error("GenericError", &format!("Node '{node}' is busy: block device is in use by block job: mirror")));
                }
                if b.nbd_nodes.remove(&node).is_none() {
                    return Some(Reply::error("GenericError", &format!("Failed to find node with node-name='{node}'")));
                }
                Reply::ok()
            }
            "query-named-block-nodes" => {
                let b = me.block();
                Reply::Return(b.nbd_nodes.keys().map(|n| json!({"node-name": n, "drv": "nbd", "file": "nbd://"})).collect())
            }
            "blockdev-mirror" => {
                let (node, target, id) = (arg("device"), arg("target"), arg("job-id"));
                if !me.block().nbd_nodes.contains_key(&target) {
                    return Some(Reply::error("GenericError", &format!("Cannot find device='' nor node-name='{target}'")));
                }
                let len = node_file(&me.args, &node).and_then(|f| std::fs::metadata(f).ok()).map_or(1 << 20, |m| m.len().max(1));
                let write_blocking = arg("copy-mode") == "write-blocking";
                let job = Job { node, target, len, offset: 0, ready: false, concluded: false, write_blocking, error: None };
                me.block().jobs.insert(id, job);
                Reply::ok()
            }
            "block-job-change" => {
                if self.no_block_job_change.load(Ordering::SeqCst) {
                    return Some(Reply::error("CommandNotFound", "The command block-job-change has not been found"));
                }
                if let Some(j) = me.block().jobs.get_mut(&arg("id")) {
                    j.write_blocking = true;
                }
                Reply::ok()
            }
            "query-commands" => {
                if self.no_query_commands.load(Ordering::SeqCst) {
                    return Some(Reply::error("CommandNotFound", "The command query-commands has not been found"));
                }
                let mut v = vec![json!({"name": "blockdev-mirror"}), json!({"name": "query-commands"})];
                if !self.no_block_job_change.load(Ordering::SeqCst) {
                    v.push(json!({"name": "block-job-change"}));
                }
                Reply::Return(Value::Array(v))
            }
            "query-block-jobs" => self.query_block_jobs(me),
            "block-job-cancel" => self.cancel(me, &arg("device"), c.arguments.as_ref().is_some_and(|a| a["force"] == true)),
            "job-dismiss" => {
                me.block().jobs.remove(&arg("id"));
                Reply::ok()
            }
            _ => return None,
        })
    }

    /// Every query moves each running job on by a share of its length (none while the
    /// world stalls mirrors that are not write-blocking); a job that reaches its length
    /// is ready. A world set to fail mirrors fails them.
    fn query_block_jobs(&self, me: &Arc<Proc>) -> Reply {
        let steps = u64::from(self.mirror_steps.load(Ordering::SeqCst).max(1));
        let stall = self.stall_mirrors.load(Ordering::SeqCst);
        let fail = self.mirror_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut ready_now = vec![];
        let mut out = vec![];
        {
            let mut b = me.block();
            for (id, j) in b.jobs.iter_mut() {
                if !j.concluded {
                    if let Some(e) = &fail {
                        (j.concluded, j.error) = (true, Some(e.clone()));
                    } else if !stall || j.write_blocking {
                        j.offset = (j.offset + j.len.div_ceil(steps)).min(j.len);
                        if j.offset == j.len && !j.ready {
                            j.ready = true;
                            ready_now.push((id.clone(), j.len));
                        }
                    } else {
                        // The guest dirties as fast as the copy goes: the length grows.
                        j.len += 4096;
                    }
                }
                let status = if j.concluded { "concluded" } else if j.ready { "ready" } else { "running" };
                let mut v = json!({
                    "type": "mirror", "device": id, "len": j.len, "offset": j.offset, "busy": false, "paused": false,
                    "speed": 0, "io-status": "ok", "ready": j.ready, "status": status, "auto-finalize": true,
                    "auto-dismiss": false, "actively-synced": j.write_blocking && j.ready,
                });
                if let Some(e) = &j.error {
                    v["error"] = e.clone().into();
                }
                out.push(v);
            }
        }
        for (id, len) in ready_now {
            World::emit(me, "BLOCK_JOB_READY", json!({"type": "mirror", "device": id, "len": len, "offset": len, "speed": 0}));
        }
        Reply::Return(Value::Array(out))
    }

    /// A ready job cancelled without force completes: the source's file is copied into the
    /// target's. Any other cancel abandons the job.
    fn cancel(&self, me: &Arc<Proc>, id: &str, force: bool) -> Reply {
        let job = {
            let mut b = me.block();
            let Some(j) = b.jobs.get_mut(id) else {
                return Reply::error("DeviceNotActive", &format!("No active block job on device '{id}'"));
            };
            if j.concluded {
                return Reply::error("GenericError", &format!("Job '{id}' in state 'concluded' cannot accept command verb 'cancel'"));
            }
            j.concluded = true;
            if !j.ready || force {
                j.error = Some("Operation canceled".into());
            }
            j.clone()
        };
        if job.error.is_some() {
            World::emit(me, "BLOCK_JOB_CANCELLED", json!({"type": "mirror", "device": id, "len": job.len, "offset": job.offset, "speed": 0}));
            return Reply::ok();
        }
        if let (Some(t), Some(from)) = (self.nbd_server_for(me), node_file(&me.args, &job.node)) {
            if let Some(to) = node_file(&t.args, &job.node) {
                if let Err(e) = std::fs::copy(&from, &to) {
                    tracing::warn!("fake final sync {} -> {}: {e}", from.display(), to.display());
                }
            }
        }
        World::emit(me, "BLOCK_JOB_COMPLETED", json!({"type": "mirror", "device": id, "len": job.len, "offset": job.len, "speed": 0}));
        Reply::ok()
    }
}
