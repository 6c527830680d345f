//! Frame watches on a guest's taps around a live migration's switchover (both sides), and
//! the QEMU events that time it: the source's `STOP`, the target's `MIGRATION` completed and
//! `RESUME`. Together they give every live move its outage breakdown
//! ([`vmove_api::Outage`]).
use std::sync::{Arc, Mutex};

use vmove_host::frames::FrameWatch;

use vmove_model::GuestSpec;
use vmove_qmp::{Event, Qmp};

use crate::guests::Agent;

/// A frame watch on one of a guest's taps.
pub struct TapWatch {
    /// The NIC's index in the guest's spec.
    pub nic: usize,
    /// The NIC's MAC, lower case.
    pub mac: String,
    /// The watch.
    pub watch: FrameWatch,
}

impl std::ops::Deref for TapWatch {
    type Target = FrameWatch;
    fn deref(&self) -> &FrameWatch {
        &self.watch
    }
}

impl std::ops::DerefMut for TapWatch {
    fn deref_mut(&mut self) -> &mut FrameWatch {
        &mut self.watch
    }
}

/// Watches on every tap of a guest (taps that do not exist are skipped, with a warning).
pub fn watch_taps(spec: &GuestSpec) -> Vec<TapWatch> {
    spec.nics
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let tap = vmove_host::tap::tap_name(&spec.name, i);
            let watch = FrameWatch::start(&tap).map_err(|e| tracing::warn!(guest = %spec.name, "no frame watch on {tap}: {e}")).ok()?;
            Some(TapWatch { nic: i, mac: n.mac.to_ascii_lowercase(), watch })
        })
        .collect()
}

/// Frames for one NIC, carried from the source to the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    /// The NIC's index in the guest's spec.
    pub nic: usize,
    /// The frames, base64.
    pub frames: Vec<String>,
}

/// The frames sent to the guest's own MAC (unicast: flooded frames reach the target too)
/// at or after `t_us`, per NIC.
pub fn carry(w: &[TapWatch], t_us: u64) -> Vec<Carried> {
    use base64::Engine;
    w.iter()
        .map(|t| {
            let mac = mac_bytes(&t.mac);
            let frames = t
                .to_guest_since(t_us)
                .into_iter()
                .filter(|f| mac.is_some_and(|m| f.bytes.get(..6) == Some(&m[..])))
                .map(|f| base64::engine::general_purpose::STANDARD.encode(f.bytes))
                .collect();
            Carried { nic: t.nic, frames }
        })
        .filter(|c| !c.frames.is_empty())
        .collect()
}

fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut it = mac.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    it.next().is_none().then_some(out)
}

/// Hands carried frames to the guest through its taps on this host; returns how many.
pub fn deliver(spec: &GuestSpec, carried: &[Carried]) -> usize {
    use base64::Engine;
    let mut n = 0;
    for c in carried {
        let frames: Vec<Vec<u8>> = c.frames.iter().filter_map(|f| base64::engine::general_purpose::STANDARD.decode(f).ok()).collect();
        let tap = vmove_host::tap::tap_name(&spec.name, c.nic);
        match vmove_host::frames::inject(&tap, &frames) {
            Ok(k) => n += k,
            Err(e) => tracing::warn!(guest = %spec.name, "cannot hand carried frames to {tap}: {e}"),
        }
    }
    n
}

/// The latest of the guests' last frames at or before `t_us` over several taps.
pub fn last_before(w: &[TapWatch], t_us: u64) -> Option<u64> {
    w.iter().filter_map(|w| w.last_before(t_us)).map(|f| f.at_us).max()
}

/// The earliest first frame at or after `t_us` over several taps.
pub fn first_after(w: &[TapWatch], t_us: u64) -> Option<u64> {
    w.iter().filter_map(|w| w.first_after(t_us)).map(|f| f.at_us).min()
}

/// The earliest RARP at or after `t_us` over several taps.
pub fn first_rarp_after(w: &[TapWatch], t_us: u64) -> Option<u64> {
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
pub type Outgoing = (Vec<TapWatch>, Arc<Mutex<EventTimes>>);

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
    pub(crate) fn keep_outgoing(&self, guest: &str, w: Vec<TapWatch>, times: Arc<Mutex<EventTimes>>) {
        self.outgoing_watch.lock().unwrap_or_else(|p| p.into_inner()).insert(guest.to_string(), (w, times));
    }

    /// Takes them back (finish, cancel).
    pub(crate) fn take_outgoing(&self, guest: &str) -> Option<Outgoing> {
        self.outgoing_watch.lock().unwrap_or_else(|p| p.into_inner()).remove(guest)
    }
}
