//! Typed wrappers for the block commands of a live storage copy (mirror over NBD), the
//! credential objects they use, and waiting for events with a deadline.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::block::{
    BlockExportInfo, BlockInfo, BlockJobInfo, BlockNodeInfo, BlockdevMirror, JobInfo,
    MirrorCopyMode, NbdClient, NbdExport, NbdServerStart,
};
use crate::client::Qmp;
use crate::error::QmpError;
use crate::types::Event;

fn encode<T: serde::Serialize>(cmd: &str, v: &T) -> Result<Value, QmpError> {
    serde_json::to_value(v).map_err(|e| QmpError::Protocol(format!("cannot encode {cmd}: {e}")))
}

impl Qmp {
    async fn unit(&self, cmd: &str, args: Value) -> Result<(), QmpError> {
        self.execute(cmd, Some(args)).await.map(drop)
    }

    /// `object-add` of a `tls-creds-x509` object: `dir` holds `ca-cert.pem` and
    /// `<endpoint>-cert.pem` / `<endpoint>-key.pem`; `endpoint` is `server` or `client`.
    pub async fn object_add_tls_creds_x509(
        &self,
        id: &str,
        dir: &str,
        endpoint: &str,
        verify_peer: bool,
    ) -> Result<(), QmpError> {
        let args = json!({"qom-type": "tls-creds-x509", "id": id, "dir": dir,
                          "endpoint": endpoint, "verify-peer": verify_peer});
        self.unit("object-add", args).await
    }

    /// `object-add` of an `authz-simple` object admitting one identity (for TLS, the
    /// client certificate's distinguished name, e.g. `CN=host1`).
    pub async fn object_add_authz_simple(&self, id: &str, identity: &str) -> Result<(), QmpError> {
        let args = json!({"qom-type": "authz-simple", "id": id, "identity": identity});
        self.unit("object-add", args).await
    }

    /// `object-del`.
    pub async fn object_del(&self, id: &str) -> Result<(), QmpError> {
        self.unit("object-del", json!({ "id": id })).await
    }

    /// `blockdev-add` with QEMU's own `BlockdevOptions` JSON.
    pub async fn blockdev_add(&self, options: Value) -> Result<(), QmpError> {
        self.unit("blockdev-add", options).await
    }

    /// `blockdev-add` of an NBD client node.
    pub async fn blockdev_add_nbd(&self, client: &NbdClient) -> Result<(), QmpError> {
        self.blockdev_add(client.to_args()).await
    }

    /// `blockdev-del`: removes a node added with `blockdev-add` (it must be unused).
    pub async fn blockdev_del(&self, node_name: &str) -> Result<(), QmpError> {
        self.unit("blockdev-del", json!({ "node-name": node_name }))
            .await
    }

    /// `nbd-server-start`. One NBD server per QEMU.
    pub async fn nbd_server_start(&self, args: &NbdServerStart) -> Result<(), QmpError> {
        self.unit("nbd-server-start", args.to_args()).await
    }

    /// `nbd-server-stop`: closes the listener and removes the exports it still has.
    pub async fn nbd_server_stop(&self) -> Result<(), QmpError> {
        self.execute("nbd-server-stop", None).await.map(drop)
    }

    /// `block-export-add` of an NBD export (the NBD server must run).
    pub async fn block_export_add_nbd(&self, export: &NbdExport) -> Result<(), QmpError> {
        self.unit("block-export-add", export.to_args()).await
    }

    /// `block-export-del`. `hard` disconnects clients; otherwise the export goes when
    /// its last client leaves. Either way `BLOCK_EXPORT_DELETED` says when it is gone.
    pub async fn block_export_del(&self, id: &str, hard: bool) -> Result<(), QmpError> {
        let mut args = json!({ "id": id });
        if hard {
            args["mode"] = "hard".into();
        }
        self.unit("block-export-del", args).await
    }

    /// `query-block-exports`.
    pub async fn query_block_exports(&self) -> Result<Vec<BlockExportInfo>, QmpError> {
        self.execute_as("query-block-exports", None).await
    }

    /// `blockdev-mirror`: starts a mirror job (`JOB_STATUS_CHANGE` created, running).
    pub async fn blockdev_mirror(&self, args: &BlockdevMirror) -> Result<(), QmpError> {
        self.unit("blockdev-mirror", encode("blockdev-mirror", args)?)
            .await
    }

    /// `block-job-cancel`. A mirror that is not ready ends with `BLOCK_JOB_CANCELLED`;
    /// a ready one first copies what is still dirty and ends with
    /// `BLOCK_JOB_COMPLETED` (the target is a copy as of now, the source keeps
    /// running on its own disk). `force` abandons a ready job at once
    /// (`BLOCK_JOB_CANCELLED`).
    pub async fn block_job_cancel(&self, job_id: &str, force: bool) -> Result<(), QmpError> {
        let mut args = json!({ "device": job_id });
        if force {
            args["force"] = true.into();
        }
        self.unit("block-job-cancel", args).await
    }

    /// `block-job-complete`: a ready mirror switches the guest onto its target (the
    /// pivot). Never what a storage migration wants on the source.
    pub async fn block_job_complete(&self, job_id: &str) -> Result<(), QmpError> {
        self.unit("block-job-complete", json!({ "device": job_id }))
            .await
    }

    /// `block-job-set-speed`: bandwidth limit, bytes/s (0: unlimited).
    pub async fn block_job_set_speed(&self, job_id: &str, speed: u64) -> Result<(), QmpError> {
        self.unit(
            "block-job-set-speed",
            json!({ "device": job_id, "speed": speed }),
        )
        .await
    }

    /// `block-job-change` of a mirror's copy mode (QEMU 8.2+; only background to
    /// write-blocking). Older QEMUs answer `CommandNotFound`.
    pub async fn block_job_change_copy_mode(
        &self,
        job_id: &str,
        mode: &MirrorCopyMode,
    ) -> Result<(), QmpError> {
        let args = json!({ "id": job_id, "type": "mirror", "copy-mode": mode });
        self.unit("block-job-change", args).await
    }

    /// `job-dismiss`: removes a concluded job (auto-dismiss off).
    pub async fn job_dismiss(&self, job_id: &str) -> Result<(), QmpError> {
        self.unit("job-dismiss", json!({ "id": job_id })).await
    }

    /// `query-block-jobs`.
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJobInfo>, QmpError> {
        self.execute_as("query-block-jobs", None).await
    }

    /// `query-jobs` (every job, including concluded ones that wait for dismissal).
    pub async fn query_jobs(&self) -> Result<Vec<JobInfo>, QmpError> {
        self.execute_as("query-jobs", None).await
    }

    /// `query-named-block-nodes` (`flat`: without the backing chains nested).
    pub async fn query_named_block_nodes(&self) -> Result<Vec<BlockNodeInfo>, QmpError> {
        self.execute_as("query-named-block-nodes", Some(json!({ "flat": true })))
            .await
    }

    /// `query-block`: the BlockBackends and their root nodes.
    pub async fn query_block(&self) -> Result<Vec<BlockInfo>, QmpError> {
        self.execute_as("query-block", None).await
    }

    /// Waits on `events` (from [`Qmp::subscribe`], taken *before* the command that
    /// causes the event) for the first event `pick` maps to `Some`, for at most
    /// `timeout`. Lagging is tolerated (the lost events are logged). Events already
    /// received are looked at before a closed connection ends the wait with
    /// [`QmpError::Closed`]; no such event in time is [`QmpError::Timeout`] naming
    /// `what`.
    pub async fn wait_event<T>(
        &self,
        events: &mut broadcast::Receiver<Event>,
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let next = tokio::select! {
                biased;
                r = events.recv() => r,
                _ = self.closed() => return Err(QmpError::Closed),
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(QmpError::Timeout { cmd: format!("event {what}") })
                }
            };
            match next {
                Ok(e) => {
                    if let Some(v) = pick(&e) {
                        return Ok(v);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, what, "qmp: event receiver lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return Err(QmpError::Closed),
            }
        }
    }
}
