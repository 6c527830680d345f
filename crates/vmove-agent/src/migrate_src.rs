//! Live migration, the source's half (`src`): what the source agent does when the target's
//! job calls it. The protocol between the two halves:
//!
//! ```text
//!  target agent (dst, runs the job)               source agent (src)
//!  define guest, QEMU -incoming defer
//!  caps + params + tls-creds(server)
//!  migrate-incoming tcp:DST:0 → bound port read back from query-migrate
//!  PeerMigrateOut ───────────────────────────▶   caps + params + tls-creds(client); migrate
//!  loop: PeerMigrateQuery ───────────────────▶   query-migrate → Progress
//!        (cancel / timeout → PeerMigrateCancel, kill the incoming QEMU: guest stays on src)
//!  completed: dst QEMU runs; announce-self
//!  PeerMigrateFinish ────────────────────────▶   quit the paused QEMU, remove taps, drop definition
//! ```
//! All calls travel on one kept-alive mTLS connection between the two agents.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use vmove_api::{GuestState, MigrationParams};
use vmove_plan::converge::ThrottleParams;
use vmove_qmp::{MigrateSetParameters, MigrationCapability, MigrationInfo, MigrationStatus, Qmp};

use crate::error::{fail, Result, ResultExt};
use crate::guests::{Agent, MigrationEvents};

/// "Unlimited" bandwidth, bytes/s (QEMU refuses values above SIZE_MAX / 1000).
const UNLIMITED_BYTES_PER_S: u64 = 1 << 40;
const TLS_ID: &str = "vmove-tls";

/// What one side's QEMU gets before a migration: capabilities, multifd channels, the first
/// downtime limit and (on the source) the parked throttle.
#[derive(Debug, Clone, Default)]
pub struct SideSetup {
    /// Capabilities, QEMU's names.
    pub capabilities: Vec<(String, bool)>,
    /// multifd channels (0: one stream).
    pub multifd_channels: u8,
    /// `downtime-limit`, ms.
    pub downtime_limit_ms: u64,
    /// The parked throttle (source).
    pub throttle: ThrottleParams,
}

impl SideSetup {
    /// What an older target that sends no setup means: capabilities from the parameters.
    pub fn from_params(p: &MigrationParams) -> SideSetup {
        let cap = |n: &str, on: bool| (n.to_string(), on);
        SideSetup {
            capabilities: vec![
                cap("events", true),
                cap("multifd", p.multifd_channels > 0),
                cap("postcopy-ram", p.allow_postcopy),
                cap("pause-before-switchover", p.pause_before_switchover),
            ],
            multifd_channels: p.multifd_channels,
            downtime_limit_ms: p.max_downtime_ms,
            throttle: ThrottleParams::default(),
        }
    }

    /// From the target's decision.
    pub fn from_source_setup(s: &vmove_api::SourceSetup) -> SideSetup {
        SideSetup {
            capabilities: s.capabilities.clone(),
            multifd_channels: s.multifd_channels,
            downtime_limit_ms: s.downtime_limit_ms,
            throttle: s.throttle,
        }
    }
}

/// Capabilities for `migrate-set-capabilities`: the ones to turn on, and the ones to turn
/// off that this QEMU knows (an older QEMU would refuse an unknown name).
fn capabilities(agent: &Agent, caps: &[(String, bool)]) -> Vec<(MigrationCapability, bool)> {
    caps.iter()
        .filter(|(n, on)| *on || agent.qemu.has_capability(n))
        .map(|(n, on)| (MigrationCapability::from_wire(n), *on))
        .collect()
}

/// QEMU parameters for one side.
fn parameters(p: &MigrationParams, s: &SideSetup, tls_hostname: Option<String>) -> MigrateSetParameters {
    let secure = !p.insecure_transport;
    let t = &s.throttle;
    MigrateSetParameters {
        max_bandwidth_bytes_per_s: Some(p.bandwidth_bytes_per_s.unwrap_or(UNLIMITED_BYTES_PER_S)),
        downtime_limit_ms: Some(s.downtime_limit_ms),
        multifd_channels: (s.multifd_channels > 0).then_some(u64::from(s.multifd_channels)),
        tls_creds: Some(if secure { TLS_ID.to_string() } else { String::new() }),
        tls_hostname: if secure { tls_hostname } else { Some(String::new()) },
        cpu_throttle_initial_pct: t.cpu_throttle_initial_pct.map(u64::from),
        cpu_throttle_increment_pct: t.cpu_throttle_increment_pct.map(u64::from),
        max_cpu_throttle_pct: t.max_cpu_throttle_pct.map(u64::from),
        cpu_throttle_tailslow: t.cpu_throttle_tailslow,
        vcpu_dirty_limit_mb_per_s: t.vcpu_dirty_limit_mb_per_s,
        ..Default::default()
    }
}

/// The Diffie-Hellman group QEMU's TLS server offers: RFC 7919's ffdhe2048, public and
/// standard. Without a `dh-params.pem` in its credential directory QEMU generates a fresh
/// 2048-bit group at every `tls-creds-x509` object-add: 0.3 to 1.2 s of prime search on the
/// lab's hosts, before every live move and every local-disk copy.
const FFDHE2048_PEM: &str = "-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
";

/// Writes QEMU's credential directory (`ca-cert.pem`, `<role>-cert.pem`, `<role>-key.pem`,
/// and for a server `dh-params.pem`).
pub(crate) fn tls_dir(agent: &Agent, run: &Path, role: &str) -> Result<PathBuf> {
    let dir = run.join(format!("tls-{role}"));
    std::fs::create_dir_all(&dir)?;
    if role == "server" {
        std::fs::write(dir.join("dh-params.pem"), FFDHE2048_PEM).ctx("write the DH parameters")?;
    }
    std::fs::copy(&agent.cfg.ca, dir.join("ca-cert.pem")).ctx("copy the CA certificate")?;
    std::fs::copy(&agent.cfg.cert, dir.join(format!("{role}-cert.pem"))).ctx("copy the host certificate")?;
    std::fs::copy(&agent.cfg.key, dir.join(format!("{role}-key.pem"))).ctx("copy the host key")?;
    Ok(dir)
}

/// Sets TLS credentials, capabilities and parameters on one side (`role`: `server` on the
/// target, `client` on the source).
pub(crate) async fn setup_qemu(
    q: &Qmp,
    agent: &Agent,
    guest: &str,
    p: &MigrationParams,
    side: &SideSetup,
    role: &str,
    tls_hostname: Option<String>,
) -> Result<()> {
    if !p.insecure_transport {
        let dir = tls_dir(agent, &agent.run_dir(guest), role)?;
        let _ = q.execute("object-del", Some(json!({ "id": TLS_ID }))).await;
        q.execute("object-add", Some(json!({ "qom-type": "tls-creds-x509", "id": TLS_ID, "dir": dir, "endpoint": role, "verify-peer": true })))
            .await
            .ctx("tls-creds-x509")?;
    }
    q.migrate_set_capabilities(&capabilities(agent, &side.capabilities)).await.ctx("migrate-set-capabilities")?;
    q.migrate_set_parameters(&parameters(p, side, tls_hostname)).await.ctx("migrate-set-parameters")?;
    Ok(())
}

/// src: starts the outgoing migration.
pub async fn migrate_out(agent: &Arc<Agent>, name: &str, uri: &str, tls_hostname: Option<String>, p: &MigrationParams, side: &SideSetup) -> Result<()> {
    let (q, st) = agent.qmp_of(name)?;
    if st != GuestState::Running {
        fail!(WrongState, "guest {name} is {st:?} on {}, not running", agent.cfg.name);
    }
    setup_qemu(&q, agent, name, p, side, "client", tls_hostname).await?;
    // The post-copy phase may use all the bandwidth it needs.
    if side.capabilities.iter().any(|(n, on)| n == "postcopy-ram" && *on) {
        let pb = MigrateSetParameters { max_postcopy_bandwidth_bytes_per_s: Some(0), ..Default::default() };
        q.migrate_set_parameters(&pb).await.ctx("max-postcopy-bandwidth")?;
    }
    // Time the switchover: the guest's frames on its taps and the source's STOP.
    if let Some(spec) = agent.spec(name) {
        agent.keep_outgoing(name, crate::frames::watch_taps(&spec), crate::frames::time_events(&q));
    }
    // Follow QEMU's MIGRATION and MIGRATION_PASS events for the target's queries.
    let mut events = q.subscribe();
    let seen = agent.migration_events(name);
    *seen.lock().unwrap_or_else(|p| p.into_inner()) = MigrationEvents { peer: uri_peer(uri), ..Default::default() };
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => {
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(pass) = e.migration_pass() {
                        s.passes = pass;
                    }
                    if let Some(st) = e.migration_status() {
                        s.status = st.as_str().to_string();
                        if matches!(s.status.as_str(), "completed" | "failed" | "cancelled") {
                            break;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    });
    q.migrate(uri).await.ctx("migrate")?;
    agent.set_state(name, GuestState::Running);
    Ok(())
}

/// src: the outgoing migration's state (with the passes its events counted).
pub async fn migrate_query(agent: &Agent, name: &str) -> Result<MigrationInfo> {
    let (q, _) = agent.qmp_of(name)?;
    let mut info = q.query_migrate().await?;
    let seen = agent.migration_events(name);
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    info.extra.insert("vmove-passes".into(), s.passes.into());
    info.extra.insert("vmove-event-status".into(), s.status.clone().into());
    let peer = s.peer;
    drop(s);
    // What QEMU counts as sent but the kernel still holds: the target's ladder keeps part
    // of the downtime limit for it. Best effort (no figure: the ladder assumes none).
    if let Some(bytes) = agent.pid_of(name).ok().and_then(|pid| vmove_host::proc::send_backlog(pid, peer).ok()) {
        info.extra.insert(IN_FLIGHT_KEY.into(), bytes.into());
    }
    Ok(info)
}

/// The member of a [`MigrationInfo`] answered to `PeerMigrateQuery` that carries the bytes
/// in flight on the migration's connections ([`vmove_host::proc::send_backlog`]).
pub const IN_FLIGHT_KEY: &str = "vmove-in-flight-bytes";

/// The address a migration URI connects to (`tcp:HOST:PORT`, HOST an IP address, IPv6 in
/// brackets); `None` for anything else.
fn uri_peer(uri: &str) -> Option<std::net::SocketAddr> {
    let (host, port) = uri.strip_prefix("tcp:")?.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Some(std::net::SocketAddr::new(host.parse().ok()?, port.parse().ok()?))
}

/// src: the convergence ladder changes the downtime limit or the throttle.
pub async fn migrate_tune(agent: &Agent, name: &str, downtime_limit_ms: Option<u64>, throttle: Option<ThrottleParams>) -> Result<()> {
    let (q, _) = agent.qmp_of(name)?;
    let t = throttle.unwrap_or_default();
    let p = MigrateSetParameters {
        downtime_limit_ms,
        cpu_throttle_initial_pct: t.cpu_throttle_initial_pct.map(u64::from),
        cpu_throttle_increment_pct: t.cpu_throttle_increment_pct.map(u64::from),
        max_cpu_throttle_pct: t.max_cpu_throttle_pct.map(u64::from),
        cpu_throttle_tailslow: t.cpu_throttle_tailslow,
        vcpu_dirty_limit_mb_per_s: t.vcpu_dirty_limit_mb_per_s,
        ..Default::default()
    };
    q.migrate_set_parameters(&p).await.ctx("migrate-set-parameters")
}

/// src: switches the outgoing migration to post-copy.
pub async fn migrate_start_postcopy(agent: &Agent, name: &str) -> Result<()> {
    let (q, _) = agent.qmp_of(name)?;
    q.migrate_start_postcopy().await.ctx("migrate-start-postcopy")
}

/// src: resumes a paused post-copy migration to the target's new listener.
pub async fn migrate_resume(agent: &Agent, name: &str, uri: &str) -> Result<()> {
    let (q, _) = agent.qmp_of(name)?;
    // The target paused a hung post-copy; this side may still wait on the dead connection
    // (a link that went down sends no reset): pause it too, so that it can resume.
    let status = || async { q.query_migrate().await.map(|i| i.status.map(|s| s.as_str().to_string()).unwrap_or_default()) };
    if status().await.ctx("query-migrate")? == "postcopy-active" {
        q.migrate_pause().await.ctx("migrate-pause")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while status().await.ctx("query-migrate")? != "postcopy-paused" {
            if Instant::now() > deadline {
                fail!(Qemu, "the source did not pause its post-copy");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    agent.migration_events(name).lock().unwrap_or_else(|p| p.into_inner()).peer = uri_peer(uri);
    q.migrate_resume(uri).await.ctx("migrate resume")
}

/// src: lets a migration held at the switchover go on.
pub async fn migrate_continue(agent: &Agent, name: &str) -> Result<()> {
    let (q, _) = agent.qmp_of(name)?;
    q.migrate_continue(MigrationStatus::PreSwitchover).await.ctx("migrate-continue")?;
    Ok(())
}

/// src: cancels the outgoing migration and waits until the guest runs here again.
pub async fn migrate_cancel(agent: &Agent, name: &str) -> Result<MigrationInfo> {
    let Ok((q, _)) = agent.qmp_of(name) else {
        // No QEMU here: nothing is migrating.
        return Ok(MigrationInfo::default());
    };
    let _ = q.migrate_cancel().await;
    agent.take_outgoing(name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = match q.query_migrate().await {
            Ok(info) => info,
            Err(vmove_qmp::QmpError::Closed) => {
                // QEMU itself went away: say so with its last words, not as a lost link.
                let last = vmove_host::qemu::last_words(&agent.run_dir(name));
                fail!(Qemu, "the QEMU of {name} on {} exited while its migration was being cancelled: {last}", agent.cfg.name);
            }
            Err(e) => return Err(e.into()),
        };
        let s = info.status.as_ref().map(|s| s.as_str().to_string()).unwrap_or_default();
        if matches!(s.as_str(), "cancelled" | "failed" | "none" | "") {
            if !q.query_status().await?.running {
                let _ = q.cont().await;
            }
            return Ok(info);
        }
        if s == "completed" {
            fail!(WrongState, "too late to cancel: the migration of {name} has completed");
        }
        if Instant::now() > deadline {
            fail!(Timeout, "migration of {name} did not cancel within 30 s (status {s})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the source saw of the switchover: when its vCPUs stopped and the guest's last
/// frame before that (unix µs).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SourceSide {
    /// QEMU `STOP` on the source.
    #[serde(default)]
    pub src_stopped_us: Option<u64>,
    /// The guest's last frame on the source's taps before that.
    #[serde(default)]
    pub src_last_frame_us: Option<u64>,
    /// Frames for the guest that reached the source after its vCPUs stopped: the target
    /// hands them to the guest, so they are not lost with the source's tap.
    #[serde(default)]
    pub carried: Vec<crate::frames::Carried>,
}

/// src: after the switchover, ends the paused source QEMU and forgets the guest. Returns
/// what the source saw of the switchover.
pub async fn migrate_finish(agent: &Arc<Agent>, name: &str) -> Result<SourceSide> {
    if agent.spec(name).is_none() {
        return Ok(SourceSide::default());
    }
    if let Ok((q, _)) = agent.qmp_of(name) {
        let info = q.query_migrate().await?;
        if info.status.as_ref() != Some(&MigrationStatus::Completed) {
            fail!(WrongState, "the migration of {name} has not completed on {}; refusing to end the source", agent.cfg.name);
        }
        agent.mark_moved_out(name);
    }
    // End the QEMU first: frames for the guest keep arriving (and are kept) until then.
    agent.stop(name, true, Duration::from_secs(15)).await?;
    // The frames not handed over yet (all of them if the target did not ask earlier).
    let carried = agent.hand_over_frames(name);
    let mut side = SourceSide { carried, ..Default::default() };
    if let Some((mut watches, times)) = agent.take_outgoing(name) {
        let stopped = times.lock().unwrap_or_else(|p| p.into_inner()).stopped_us;
        for w in &mut watches {
            w.stop();
        }
        side.src_stopped_us = stopped;
        side.src_last_frame_us = crate::frames::last_before(&watches, stopped.unwrap_or_else(vmove_host::frames::now_us));
    }
    agent.forget(name).await?;
    Ok(side)
}

/// Frames for the guest handed from the source to the target (`PeerTakeFrames`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct HandedFrames {
    /// Per NIC.
    #[serde(default)]
    pub carried: Vec<crate::frames::Carried>,
}

/// src: right after the switchover, the frames for the guest that reached this host since
/// its vCPUs stopped. The target asks as soon as its guest runs, so that they reach the
/// guest before (not after) what comes straight to the target; `PeerMigrateFinish` later
/// hands over the rest.
pub async fn take_frames(agent: &Arc<Agent>, name: &str) -> Result<HandedFrames> {
    let (q, _) = agent.qmp_of(name)?;
    let info = q.query_migrate().await?;
    if info.status.as_ref() != Some(&MigrationStatus::Completed) {
        fail!(WrongState, "the migration of {name} has not completed on {}; its frames stay here", agent.cfg.name);
    }
    Ok(HandedFrames { carried: agent.hand_over_frames(name) })
}

#[cfg(test)]
mod tests {
    use super::uri_peer;

    #[test]
    fn the_peer_of_a_migration_uri() {
        assert_eq!(uri_peer("tcp:192.0.2.11:49152"), Some("192.0.2.11:49152".parse().unwrap()));
        assert_eq!(uri_peer("tcp:[fd00::2]:4444"), Some("[fd00::2]:4444".parse().unwrap()));
        assert_eq!(uri_peer("tcp:host2:4444"), None, "a name is not resolved: no filter");
        assert_eq!(uri_peer("unix:/run/x.sock"), None);
        assert_eq!(uri_peer("tcp:192.0.2.11:99999"), None);
    }
}
