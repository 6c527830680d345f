//! Frame watches on a guest's taps around a live migration's switchover (both sides), and
//! the QEMU events that time it: the source's `STOP`, the target's `MIGRATION` completed and
//! `RESUME`. Together they give every live move its outage breakdown
//! ([`vmove_api::Outage`]).
use std::sync::{Arc, Mutex};

use vmove_host::frames::FrameWatch;
use vmove_model::GuestSpec;
use vmove_qmp::{Event, Qmp};

use crate::guests::Agent;

/// Watches on every tap of a guest (taps that do not exist are skipped, with a warning).
pub fn watch_taps(spec: &GuestSpec) -> Vec<FrameWatch> {
    (0..spec.nics.len())
        .filter_map(|i| {
            let tap = vmove_host::tap::tap_name(&spec.name, i);
            FrameWatch::start(&tap).map_err(|e| tracing::warn!(guest = %spec.name, "no frame watch on {tap}: {e}")).ok()
        })
        .collect()
}

/// The latest of the guests' last frames at or before `t_us` over several taps.
pub fn last_before(w: &[FrameWatch], t_us: u64) -> Option<u64> {
    w.iter().filter_map(|w| w.last_before(t_us)).map(|f| f.at_us).max()
}

/// The earliest first frame at or after `t_us` over several taps.
pub fn first_after(w: &[FrameWatch], t_us: u64) -> Option<u64> {
    w.iter().filter_map(|w| w.first_after(t_us)).map(|f| f.at_us).min()
}

/// The earliest RARP at or after `t_us` over several taps.
pub fn first_rarp_after(w: &[FrameWatch], t_us: u64) -> Option<u64> {
    w.iter().filter_map(|w| w.first_rarp_after(t_us)).map(|f| f.at_us).min()
}

/// An event's QEMU timestamp, unix µs.
pub fn event_us(e: &Event) -> Option<u64> {
    let t = e.timestamp.as_ref()?;
    let s = u64::try_from(t.seconds).ok()?;
    let us = u64::try_from(t.microseconds).ok()?;
    s.checked_mul(1_000_000)?.checked_add(us)
}

/// An outgoing migration's frame watches and source event times.
pub type Outgoing = (Vec<FrameWatch>, Arc<Mutex<EventTimes>>);

/// When QEMU said what, for the events that time a switchover.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventTimes {
    /// `STOP` (vCPUs stopped).
    pub stopped_us: Option<u64>,
    /// `RESUME` (vCPUs run).
    pub resumed_us: Option<u64>,
    /// `MIGRATION` with status `completed`.
    pub completed_us: Option<u64>,
}

/// Follows a QEMU's events and records the first `STOP`, `RESUME` and migration completion.
pub fn time_events(q: &Qmp) -> Arc<Mutex<EventTimes>> {
    let times = Arc::new(Mutex::new(EventTimes::default()));
    let mut rx = q.subscribe();
    let t = times.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let at = event_us(&e);
                    let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
                    match e.event.as_str() {
                        "STOP" if t.stopped_us.is_none() => t.stopped_us = at,
                        "RESUME" if t.resumed_us.is_none() => t.resumed_us = at,
                        "MIGRATION" if t.completed_us.is_none() && e.migration_status().is_some_and(|s| s.as_str() == "completed") => {
                            t.completed_us = at
                        }
                        _ => {}
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    });
    times
}

impl Agent {
    /// Keeps the frame watches and event times of an outgoing migration (source side).
    pub(crate) fn keep_outgoing(&self, guest: &str, w: Vec<FrameWatch>, times: Arc<Mutex<EventTimes>>) {
        self.outgoing_watch.lock().unwrap_or_else(|p| p.into_inner()).insert(guest.to_string(), (w, times));
    }

    /// Takes them back (finish, cancel).
    pub(crate) fn take_outgoing(&self, guest: &str) -> Option<Outgoing> {
        self.outgoing_watch.lock().unwrap_or_else(|p| p.into_inner()).remove(guest)
    }
}
