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
    /// Each frame starts with its virtio-net header (from agents that keep it; without it a
    /// frame whose checksum the guest was to finish arrives broken and is dropped there).
    #[serde(default)]
    pub vnet_hdr: bool,
}

/// The frames sent to the guest's own MAC (unicast: flooded frames reach the target too)
/// at or after `t_us`, per NIC, and the time of the latest of them.
pub fn carry(w: &[TapWatch], t_us: u64) -> (Vec<Carried>, Option<u64>) {
    use base64::Engine;
    let mut latest = None;
    let carried = w
        .iter()
        .map(|t| {
            let mac = mac_bytes(&t.mac);
            let frames = t
                .to_guest_since(t_us)
                .into_iter()
                .filter(|f| mac.is_some_and(|m| f.bytes.get(..6) == Some(&m[..])))
                .inspect(|f| latest = latest.max(Some(f.at_us)))
                .map(|f| base64::engine::general_purpose::STANDARD.encode(f.with_header()))
                .collect();
            Carried { nic: t.nic, frames, vnet_hdr: true }
        })
        .filter(|c| !c.frames.is_empty())
        .collect();
    (carried, latest)
}

fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut it = mac.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    it.next().is_none().then_some(out)
}

/// Hands carried frames to the guest through its taps on this host; returns how many. What
/// the peer sent is bounded here: NICs the guest has, and at most twice what a source keeps
/// ([`vmove_host::frames::CARRY_BYTES`]) in all.
pub fn deliver(spec: &GuestSpec, carried: &[Carried]) -> usize {
    let mut n = 0;
    for (c, frames) in decode(spec, carried) {
        let tap = vmove_host::tap::tap_name(&spec.name, c.nic);
        match vmove_host::frames::inject(&tap, &frames) {
            Ok(k) => n += k,
            Err(e) => tracing::warn!(guest = %spec.name, "cannot hand carried frames to {tap}: {e}"),
        }
    }
    n
}

/// The carried frames to inject, per NIC of the guest, each with a virtio-net header; frames
/// that are not base64, NICs the guest does not have and frames past the bound are dropped.
fn decode<'a>(spec: &GuestSpec, carried: &'a [Carried]) -> Vec<(&'a Carried, Vec<Vec<u8>>)> {
    use base64::Engine;
    let mut budget = vmove_host::frames::CARRY_BYTES.saturating_mul(2);
    let mut out = Vec::new();
    for c in carried.iter().filter(|c| c.nic < spec.nics.len()) {
        let mut frames = Vec::new();
        for f in &c.frames {
            let Ok(mut f) = base64::engine::general_purpose::STANDARD.decode(f) else { continue };
            if !c.vnet_hdr {
                f.splice(0..0, [0u8; vmove_host::frames::VNET_HDR_LEN]);
            }
            let Some(left) = budget.checked_sub(f.len()) else { break };
            budget = left;
            frames.push(f);
        }
        out.push((c, frames));
    }
    out
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

/// How long before its `STOP` event the source QEMU may already have stopped reading the
/// guest's taps, µs: the migration's final stage takes QEMU's big lock (which its main loop,
/// the taps' reader, needs) and only then stops the vCPUs and says `STOP`.
pub const STOP_MARGIN_US: u64 = 5_000;

/// From when frames that reached the source are carried: those after the guest's last
/// frame there (QEMU's main loop was still reading the taps when it wrote that one), at
/// most [`STOP_MARGIN_US`] before `STOP`. A frame QEMU read in that margin reaches the guest
/// twice, which IP allows; without the margin it would not reach it at all.
pub fn carry_from(stopped_us: u64, last_frame_us: Option<u64>) -> u64 {
    let earliest = stopped_us.saturating_sub(STOP_MARGIN_US);
    last_frame_us.map_or(earliest, |l| l.saturating_add(1).max(earliest)).min(stopped_us)
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
    /// Not an event: the frames for the guest up to this time were handed to the target
    /// already (source side, [`Agent::hand_over_frames`]).
    pub handed_over_us: Option<u64>,
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

    /// The frames for the guest that reached this source since its vCPUs stopped and were
    /// not handed over yet. Only once the migration completed (before, the guest may run here
    /// again and read them itself).
    pub(crate) fn hand_over_frames(&self, guest: &str) -> Vec<Carried> {
        let map = self.outgoing_watch.lock().unwrap_or_else(|p| p.into_inner());
        let Some((watches, times)) = map.get(guest) else { return vec![] };
        let mut t = times.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stopped) = t.stopped_us else { return vec![] };
        let first = carry_from(stopped, last_before(watches, stopped));
        let from = t.handed_over_us.map_or(first, |h| h.saturating_add(1).max(first));
        let (carried, latest) = carry(watches, from);
        if latest.is_some() {
            t.handed_over_us = latest;
        }
        carried
    }

    /// Takes them back (finish, cancel).
    pub(crate) fn take_outgoing(&self, guest: &str) -> Option<Outgoing> {
        self.outgoing_watch.lock().unwrap_or_else(|p| p.into_inner()).remove(guest)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;
    use vmove_host::frames::{CARRY_BYTES, VNET_HDR_LEN};

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn carried_frames_are_bounded_and_get_a_header_when_the_source_sent_none() {
        let spec = crate::tests::guest("g", "host1");
        let frame = vec![7u8; 60];
        let with_hdr = [&[1u8; VNET_HDR_LEN][..], &frame].concat();
        let carried = vec![
            Carried { nic: 0, frames: vec![b64(&with_hdr), "not base64!".into()], vnet_hdr: true },
            // A NIC the guest does not have.
            Carried { nic: 3, frames: vec![b64(&with_hdr)], vnet_hdr: true },
            // From an agent that carried frames without their header.
            Carried { nic: 0, frames: vec![b64(&frame)], vnet_hdr: false },
        ];
        let d = decode(&spec, &carried);
        let got: Vec<(usize, Vec<Vec<u8>>)> = d.into_iter().map(|(c, f)| (c.nic, f)).collect();
        assert_eq!(got, vec![(0, vec![with_hdr.clone()]), (0, vec![[&[0u8; VNET_HDR_LEN][..], &frame].concat()])]);

        // A peer that sends more than twice what a source keeps is cut at the bound.
        let big = vec![0u8; 64 * 1024];
        let many = vec![Carried { nic: 0, frames: vec![b64(&big); 40], vnet_hdr: true }];
        let kept = decode(&spec, &many).into_iter().map(|(_, f)| f.len()).sum::<usize>();
        assert_eq!(kept, 2 * CARRY_BYTES / big.len());
        // The old wire form (no `vnet_hdr`) still decodes.
        let old: Carried = serde_json::from_str(r#"{"nic":0,"frames":[]}"#).unwrap();
        assert!(!old.vnet_hdr);
    }

    #[test]
    fn frames_are_carried_from_the_guests_last_frame_at_most_a_margin_before_stop() {
        let stop = 1_000_000;
        // The guest sent its last frame 1.5 ms before STOP: what came after may still sit in the tap.
        assert_eq!(carry_from(stop, Some(stop - 1_500)), stop - 1_499);
        // It was quiet for longer: only the margin.
        assert_eq!(carry_from(stop, Some(stop - 90_000)), stop - STOP_MARGIN_US);
        assert_eq!(carry_from(stop, None), stop - STOP_MARGIN_US);
        // A frame after STOP (a late one flushed out): never later than STOP.
        assert_eq!(carry_from(stop, Some(stop + 10)), stop);
        assert_eq!(carry_from(10, None), 0);
    }
}
