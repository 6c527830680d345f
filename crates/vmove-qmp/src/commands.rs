//! Typed wrappers for the commands vmove uses.

use serde_json::{json, Value};

use crate::client::Qmp;
use crate::error::QmpError;
use crate::migration::{
    MigrationCapability, MigrationCapabilityStatus, MigrationInfo, MigrationStatus,
};
use crate::params::{AnnounceParameters, DirtyRateInfo, MigrateSetParameters, MigrationParameters};
use crate::types::{CpuInfoFast, StatusInfo, VersionInfo};

impl Qmp {
    async fn run_unit(&self, cmd: &str, args: Option<Value>) -> Result<(), QmpError> {
        self.execute(cmd, args).await.map(drop)
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute_as("query-status", None).await
    }

    /// `query-version`.
    pub async fn query_version(&self) -> Result<VersionInfo, QmpError> {
        self.execute_as("query-version", None).await
    }

    /// `query-cpus-fast`: vCPU threads and topology.
    pub async fn query_cpus_fast(&self) -> Result<Vec<CpuInfoFast>, QmpError> {
        self.execute_as("query-cpus-fast", None).await
    }

    /// `system_powerdown`: ACPI power button. Returns once QEMU accepted it,
    /// not when the guest is off (watch for the `SHUTDOWN` event).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.run_unit("system_powerdown", None).await
    }

    /// `quit`: QEMU exits. A connection that closes before the reply is
    /// read counts as success.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.run_unit("quit", None).await {
            Err(QmpError::Closed) => Ok(()),
            other => other,
        }
    }

    /// `stop`: pause guest CPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.run_unit("stop", None).await
    }

    /// `cont`: resume guest CPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.run_unit("cont", None).await
    }

    /// `blockdev-set-active` on every block node (QEMU 10): inactive nodes take no writes
    /// and hold no image locks, so another QEMU may open the images; `true` takes them back.
    /// The VM must be paused to inactivate.
    pub async fn blockdev_set_active(&self, active: bool) -> Result<(), QmpError> {
        self.run_unit("blockdev-set-active", Some(json!({ "active": active }))).await
    }

    /// `migrate` to `uri` (`tcp:HOST:PORT`, `unix:PATH`, `fd:NAME`, ...).
    /// Returns when the migration has started.
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.run_unit("migrate", Some(json!({ "uri": uri }))).await
    }

    /// `migrate` with `resume: true` (source side): reconnects a post-copy
    /// migration in `postcopy-paused` to `uri`, where the target listens after
    /// [`Qmp::migrate_recover`]. QEMU accepts the command even when the
    /// connection then fails; the source stays in `postcopy-paused` with
    /// `error-desc` set, and the call may be repeated.
    pub async fn migrate_resume(&self, uri: &str) -> Result<(), QmpError> {
        self.run_unit("migrate", Some(json!({ "uri": uri, "resume": true })))
            .await
    }

    /// `migrate-recover` (target side, only in `postcopy-paused`): listen on
    /// `uri` for the source's [`Qmp::migrate_resume`]. A second call replaces
    /// the listener, so the source must resume to the latest `uri`.
    /// Out-of-band when the connection negotiated it ([`Qmp::connect_oob`]):
    /// then the new listener runs in QEMU's monitor thread, so recovery works
    /// even when a vCPU holding QEMU's big lock waits for a missing page.
    pub async fn migrate_recover(&self, uri: &str) -> Result<(), QmpError> {
        self.run_maybe_oob("migrate-recover", Some(json!({ "uri": uri })))
            .await
    }

    /// `migrate-pause` (either side, only in `postcopy-active` or
    /// `postcopy-recover`): shuts the migration channels down; both QEMUs go to
    /// `postcopy-paused` and the guest keeps running on the target.
    /// Out-of-band when the connection negotiated it.
    pub async fn migrate_pause(&self) -> Result<(), QmpError> {
        self.run_maybe_oob("migrate-pause", None).await
    }

    async fn run_maybe_oob(&self, cmd: &str, args: Option<Value>) -> Result<(), QmpError> {
        if self.is_oob() {
            self.execute_oob(cmd, args).await.map(drop)
        } else {
            self.run_unit(cmd, args).await
        }
    }

    /// `migrate-incoming` on a QEMU started with `-incoming defer`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.run_unit("migrate-incoming", Some(json!({ "uri": uri })))
            .await
    }

    /// `migrate_cancel`.
    pub async fn migrate_cancel(&self) -> Result<(), QmpError> {
        self.run_unit("migrate_cancel", None).await
    }

    /// `migrate-start-postcopy` (needs the `postcopy-ram` capability).
    pub async fn migrate_start_postcopy(&self) -> Result<(), QmpError> {
        self.run_unit("migrate-start-postcopy", None).await
    }

    /// `migrate-continue`: leave a pause state such as `pre-switchover`.
    pub async fn migrate_continue(&self, state: MigrationStatus) -> Result<(), QmpError> {
        self.run_unit("migrate-continue", Some(json!({ "state": state })))
            .await
    }

    /// `migrate-set-capabilities`.
    pub async fn migrate_set_capabilities(
        &self,
        caps: &[(MigrationCapability, bool)],
    ) -> Result<(), QmpError> {
        let list: Vec<MigrationCapabilityStatus> = caps
            .iter()
            .map(|(capability, state)| MigrationCapabilityStatus {
                capability: capability.clone(),
                state: *state,
            })
            .collect();
        self.run_unit(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await
    }

    /// Whether this QEMU accepts `caps` together, decided by QEMU itself
    /// (combinations change between versions: QEMU 10.0 refuses `postcopy-ram`
    /// with `multifd`, and `dirty-limit` without KVM's dirty ring). Returns
    /// QEMU's reason when it refuses; when it accepts, the capabilities named
    /// in `caps` are put back as they were. Call it only when no migration
    /// runs (capabilities are fixed while one does).
    pub async fn refused_capabilities(
        &self,
        caps: &[(MigrationCapability, bool)],
    ) -> Result<Option<String>, QmpError> {
        let before = self.query_migrate_capabilities().await?;
        match self.migrate_set_capabilities(caps).await {
            Ok(()) => {}
            Err(QmpError::Qemu { desc, .. }) => return Ok(Some(desc)),
            Err(e) => return Err(e),
        }
        let restore: Vec<(MigrationCapability, bool)> = caps
            .iter()
            .map(|(cap, _)| {
                let was = before
                    .iter()
                    .any(|c| c.capability == *cap && c.state);
                (cap.clone(), was)
            })
            .collect();
        self.migrate_set_capabilities(&restore).await?;
        Ok(None)
    }

    /// `query-migrate-capabilities`.
    pub async fn query_migrate_capabilities(
        &self,
    ) -> Result<Vec<MigrationCapabilityStatus>, QmpError> {
        self.execute_as("query-migrate-capabilities", None).await
    }

    /// `migrate-set-parameters`; `None` fields are left unchanged.
    pub async fn migrate_set_parameters(
        &self,
        params: &MigrateSetParameters,
    ) -> Result<(), QmpError> {
        let args = serde_json::to_value(params)
            .map_err(|e| QmpError::Protocol(format!("cannot encode parameters: {e}")))?;
        self.run_unit("migrate-set-parameters", Some(args)).await
    }

    /// `query-migrate-parameters`.
    pub async fn query_migrate_parameters(&self) -> Result<MigrationParameters, QmpError> {
        self.execute_as("query-migrate-parameters", None).await
    }

    /// `query-migrate`.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        self.execute_as("query-migrate", None).await
    }

    /// `calc-dirty-rate` over `calc_time_s` seconds; poll
    /// [`Qmp::query_dirty_rate`] for the result.
    pub async fn calc_dirty_rate(&self, calc_time_s: u64) -> Result<(), QmpError> {
        self.run_unit("calc-dirty-rate", Some(json!({ "calc-time": calc_time_s })))
            .await
    }

    /// `calc-dirty-rate` over milliseconds (`calc-time-unit`, QEMU 8.2 and later; older
    /// QEMUs refuse the member).
    pub async fn calc_dirty_rate_ms(&self, calc_time_ms: u64) -> Result<(), QmpError> {
        self.run_unit("calc-dirty-rate", Some(json!({ "calc-time": calc_time_ms, "calc-time-unit": "millisecond" })))
            .await
    }

    /// `calc-dirty-rate` in `dirty-bitmap` mode over milliseconds: every page written counts
    /// (the default page sampling looks at 512 pages per GiB: a statistical figure). Not
    /// while a migration runs (both use the dirty log); under TCG it reads 0 (QEMU 10.0.2).
    pub async fn calc_dirty_rate_bitmap_ms(&self, calc_time_ms: u64) -> Result<(), QmpError> {
        self.run_unit(
            "calc-dirty-rate",
            Some(json!({ "calc-time": calc_time_ms, "calc-time-unit": "millisecond", "mode": "dirty-bitmap" })),
        )
        .await
    }

    /// `query-dirty-rate`.
    pub async fn query_dirty_rate(&self) -> Result<DirtyRateInfo, QmpError> {
        self.execute_as("query-dirty-rate", None).await
    }

    /// `announce-self`: gratuitous ARP/RARP from the guest NICs.
    pub async fn announce_self(&self, params: &AnnounceParameters) -> Result<(), QmpError> {
        let args = serde_json::to_value(params)
            .map_err(|e| QmpError::Protocol(format!("cannot encode announce parameters: {e}")))?;
        self.run_unit("announce-self", Some(args)).await
    }

    /// `closefd`: drop an fd passed with [`Qmp::getfd`].
    pub async fn closefd(&self, fdname: &str) -> Result<(), QmpError> {
        self.run_unit("closefd", Some(json!({ "fdname": fdname })))
            .await
    }

    /// `remove-fd`: drop one fd (or the whole set) added with
    /// [`Qmp::add_fd`].
    pub async fn remove_fd(&self, fdset_id: u64, fd: Option<i64>) -> Result<(), QmpError> {
        let mut args = json!({ "fdset-id": fdset_id });
        if let Some(fd) = fd {
            args["fd"] = fd.into();
        }
        self.run_unit("remove-fd", Some(args)).await
    }
}
