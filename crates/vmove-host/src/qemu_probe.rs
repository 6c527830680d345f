//! What the host's QEMU can do, learned once when the agent starts.
//!
//! The agent runs its QEMU binary with `-machine none` (no guest, no accelerator work) and
//! asks it over QMP: `query-version`, `query-migrate-capabilities`,
//! `query-migrate-parameters`, `query-commands` (only those of `QMP_COMMANDS` are kept).
//! Migrations then decide by these features (a capability that
//! the chosen migration needs and one side lacks fails a precheck), never by the version
//! number, except for the floor below which vmove does not run at all.
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use vmove_model::inventory::{QemuFeatures, QMP_COMMANDS};
use vmove_qmp::{MigrationCapability, MigrationCapabilityStatus, Qmp, QmpError, VersionInfo};

/// Why the host's QEMU could not be probed, or is not good enough.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The scratch directory or the QEMU process.
    #[error("{what}")]
    Io {
        /// `create <dir>` or `start <binary>`.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A QMP exchange failed.
    #[error("{what}")]
    Qmp {
        /// `connect to QMP`, `query-version`, ...
        what: &'static str,
        /// The cause.
        #[source]
        source: QmpError,
    },
    /// The probe failed and QEMU said why on standard error (its last line).
    #[error("{stderr}")]
    Said {
        /// QEMU's last line on standard error.
        stderr: String,
        /// The failure.
        #[source]
        source: Box<ProbeError>,
    },
    /// QEMU did not answer in time.
    #[error("{bin} did not answer its QMP queries within {timeout:?}")]
    Timeout {
        /// The binary.
        bin: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The QEMU is older than [`MIN_QEMU`].
    #[error("QEMU {version} is too old: vmove needs QEMU {}.{} or newer (migration capabilities and TLS it relies on)", MIN_QEMU.0, MIN_QEMU.1)]
    TooOld {
        /// Its version.
        version: String,
    },
}

fn qmp(what: &'static str) -> impl FnOnce(QmpError) -> ProbeError {
    move |source| ProbeError::Qmp { what, source }
}

/// The oldest QEMU vmove runs with (`major`, `minor`).
pub const MIN_QEMU: (u64, u64) = (7, 2);

/// How long the probe may take in all.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `bin -machine none` with a QMP socket under `scratch` and learns its features.
pub async fn probe(bin: &str, scratch: &Path) -> Result<QemuFeatures, ProbeError> {
    std::fs::create_dir_all(scratch)
        .map_err(|source| ProbeError::Io { what: format!("create {}", scratch.display()), source })?;
    let sock = scratch.join("probe-qmp.sock");
    let _ = std::fs::remove_file(&sock);
    let mut child = tokio::process::Command::new(bin)
        .args(["-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProbeError::Io { what: format!("start {bin}"), source })?;
    let result = tokio::time::timeout(PROBE_TIMEOUT, async {
        let q = Qmp::connect_retry(&sock, PROBE_TIMEOUT).await.map_err(qmp("connect to QMP"))?;
        let version = q.query_version().await.map_err(qmp("query-version"))?;
        let caps = q.query_migrate_capabilities().await.map_err(qmp("query-migrate-capabilities"))?;
        let params = q.execute("query-migrate-parameters", None).await.map_err(qmp("query-migrate-parameters"))?;
        let mut f = features_from(&version, &caps, &params);
        let cmds = q.execute("query-commands", None).await.map_err(qmp("query-commands"))?;
        f.qmp_commands = Some(commands_from(&cmds));
        if f.has_capability("postcopy-ram") && f.has_capability("multifd") {
            let both = [(MigrationCapability::PostcopyRam, true), (MigrationCapability::Multifd, true)];
            f.postcopy_with_multifd = q.refused_capabilities(&both).await.map_err(qmp("migrate-set-capabilities"))?.is_none();
        }
        let _ = q.quit().await;
        Ok::<_, ProbeError>(f)
    })
    .await;
    let _ = child.start_kill();
    let out = child.wait_with_output().await.ok();
    let _ = std::fs::remove_file(&sock);
    match result {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => {
            let stderr = out.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_default();
            let last = stderr.lines().last().unwrap_or("").to_string();
            if last.is_empty() {
                Err(e)
            } else {
                Err(ProbeError::Said { stderr: last, source: Box::new(e) })
            }
        }
        Err(_) => Err(ProbeError::Timeout { bin: bin.to_string(), timeout: PROBE_TIMEOUT }),
    }
}

/// The features, from QEMU's replies (pure).
pub fn features_from(version: &VersionInfo, caps: &[MigrationCapabilityStatus], params: &serde_json::Value) -> QemuFeatures {
    let mut migration_capabilities: Vec<String> = caps.iter().map(|c| c.capability.as_str().to_string()).collect();
    migration_capabilities.sort();
    migration_capabilities.dedup();
    let mut migration_parameters: Vec<(String, String)> = params
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect()
        })
        .unwrap_or_default();
    migration_parameters.sort();
    QemuFeatures {
        version: format!("{}.{}.{}", version.qemu.major, version.qemu.minor, version.qemu.micro),
        package: version.package.clone(),
        migration_capabilities,
        migration_parameters,
        postcopy_with_multifd: false,
        qmp_commands: None,
    }
}

/// The commands of [`QMP_COMMANDS`] in a `query-commands` reply, sorted (pure).
pub fn commands_from(reply: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| QMP_COMMANDS.contains(n))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Refuses a QEMU older than [`MIN_QEMU`], with the reason in one line.
pub fn check_minimum(f: &QemuFeatures) -> Result<(), ProbeError> {
    let mut it = f.version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if (major, minor) < MIN_QEMU {
        return Err(ProbeError::TooOld { version: f.version.clone() });
    }
    Ok(())
}

#[cfg(test)]
#[path = "qemu_probe_tests.rs"]
mod tests;
