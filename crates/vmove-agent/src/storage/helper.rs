//! Storage helpers: QEMUs with `-machine none` (no guest, no CPUs) that open some of a
//! guest's volumes as block nodes and are driven over QMP. A target runs `<guest>+nbd` to
//! serve its new copies over NBD; an offline source runs `<guest>+copy` to mirror a stopped
//! guest's volumes. They run in the agent's run directory (`<run>/<guest>+<role>/`), so an
//! agent that restarts kills them as QEMUs of no guest.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use vmove_host::qemu::{self, RunFiles};
use vmove_qmp::Qmp;

use crate::error::{fail, Result};
use crate::guests::Agent;

/// How long a helper may take to open its QMP socket.
const QMP_START: Duration = Duration::from_secs(20);

/// A running helper.
pub struct Helper {
    /// Its pid.
    pub pid: u32,
    /// Its QMP connection.
    pub qmp: Qmp,
    /// Its run directory.
    pub run_dir: PathBuf,
    exited: watch::Receiver<bool>,
}

impl Helper {
    /// Whether the process has ended.
    pub fn exited(&self) -> bool {
        *self.exited.borrow()
    }
}

/// The helpers of this agent, by name.
#[derive(Default)]
pub struct Helpers {
    map: Mutex<HashMap<String, Arc<Helper>>>,
}

impl Helpers {
    fn get(&self, name: &str) -> Option<Arc<Helper>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    fn insert(&self, name: &str, h: Arc<Helper>) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), h);
    }

    fn remove(&self, name: &str) -> Option<Arc<Helper>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(name)
    }

    /// Names of the running helpers.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        v.sort();
        v
    }
}

impl Agent {
    /// The running helper `name`, if any.
    pub fn helper(&self, name: &str) -> Option<Arc<Helper>> {
        self.helpers.get(name).filter(|h| !h.exited())
    }

    /// Starts helper `name` on `disks` (index in the guest's disk list, file); a helper of
    /// that name left from an earlier attempt is ended first.
    pub async fn start_helper(&self, name: &str, disks: &[(usize, PathBuf)]) -> Result<Arc<Helper>> {
        self.stop_helper(name, Duration::ZERO).await?;
        let run_dir = self.cfg.run_dir.join(name);
        let disks: Vec<(usize, PathBuf, bool)> = disks.iter().map(|(i, p)| (*i, p.clone(), qemu::supports_o_direct(p))).collect();
        let args = qemu::helper_args(name, &run_dir, &disks);
        let pid = self.host.spawn_qemu(&args, &run_dir).await?;
        let exit = self.host.wait_exit(pid);
        let (tx, exited) = watch::channel(false);
        tokio::spawn(async move {
            exit.await;
            tx.send_replace(true);
        });
        let qmp = match self.host.connect_qmp(&RunFiles::qmp(&run_dir), QMP_START).await {
            Ok(q) => q,
            Err(e) => {
                self.host.kill(pid);
                fail!(Qemu, "storage helper {name} did not start: {} ({})", qemu::last_words(&run_dir), e.message);
            }
        };
        let h = Arc::new(Helper { pid, qmp, run_dir, exited });
        self.helpers.insert(name, h.clone());
        tracing::info!(helper = %name, pid, "storage helper started");
        Ok(h)
    }

    /// Ends helper `name` and waits until it has exited (its files closed, its image locks
    /// released): `quit`, and SIGKILL once `grace` has passed (at once with zero). Nothing
    /// to do when it does not run.
    pub async fn stop_helper(&self, name: &str, grace: Duration) -> Result<()> {
        let Some(h) = self.helpers.remove(name) else { return Ok(()) };
        let mut exited = h.exited.clone();
        if !grace.is_zero() {
            let _ = h.qmp.quit().await;
            if tokio::time::timeout(grace, exited.wait_for(|e| *e)).await.is_ok() {
                tracing::info!(helper = %name, pid = h.pid, "storage helper ended");
                return Ok(());
            }
        }
        self.host.kill(h.pid);
        if tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| *e)).await.is_err() {
            fail!(Host, "storage helper {name} (pid {}) did not end after SIGKILL", h.pid);
        }
        tracing::info!(helper = %name, pid = h.pid, "storage helper killed");
        Ok(())
    }
}
