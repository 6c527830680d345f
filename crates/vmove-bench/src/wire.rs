//! The network's view of a switchover, the same for every contender: a frame watch
//! ([`vmove_host::frames::FrameWatch`], kernel timestamps, RARPs told apart) on the guest's
//! tap in each host namespace. The target's tap only appears once the contender starts the
//! incoming QEMU, so each watch polls for its tap's name until it exists; the watch keeps
//! only its last few thousand frames, so its frames are copied out every 50 ms.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use vmove_host::frames::{Frame, FrameWatch};
use vmove_host::netns;

/// A watch on one tap in one namespace, started before the tap may exist.
pub struct TapWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Frame>>,
    tap: String,
}

impl TapWatch {
    /// Watches `tap` in namespace `ns` from the moment it exists until [`TapWatch::stop`].
    pub fn start(ns: &str, tap: &str) -> Result<TapWatch> {
        TapWatch::start_polling(ns, tap, Duration::from_millis(5))
    }

    /// [`TapWatch::start`], looking for the tap every `poll` until it exists (the drain
    /// benchmark watches many taps that appear, if at all, seconds after the start).
    pub fn start_polling(ns: &str, tap: &str, poll: Duration) -> Result<TapWatch> {
        let fd = netns::open(ns)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let name = tap.to_string();
        let handle = std::thread::Builder::new().name(format!("wire-{tap}")).spawn(move || {
            let mut acc = Vec::new();
            if netns::enter(&fd).is_err() {
                return acc;
            }
            let mut watch: Option<FrameWatch> = None;
            loop {
                let stopping = st.load(Ordering::Relaxed);
                match &watch {
                    None => watch = FrameWatch::start(&name).ok(),
                    Some(w) => merge(&mut acc, &w.frames()),
                }
                if stopping {
                    break;
                }
                std::thread::sleep(if watch.is_some() { Duration::from_millis(50) } else { poll });
            }
            if let Some(mut w) = watch {
                w.stop();
                merge(&mut acc, &w.frames());
            }
            acc
        })?;
        Ok(TapWatch { stop, handle, tap: tap.to_string() })
    }

    /// Stops; the tap's name and every frame the guest sent on it, oldest first.
    pub fn stop(self) -> (String, Vec<Frame>) {
        self.stop.store(true, Ordering::Relaxed);
        (self.tap, self.handle.join().unwrap_or_default())
    }
}

/// Appends the frames of a newer snapshot of a watch's ring (oldest first) that `acc` does
/// not have yet. Frames are in arrival order; several may share a timestamp.
pub fn merge(acc: &mut Vec<Frame>, snap: &[Frame]) {
    let Some(t) = acc.last().map(|f| f.at_us) else {
        acc.extend_from_slice(snap);
        return;
    };
    let have_at_t = acc.iter().rev().take_while(|f| f.at_us == t).count();
    let new: Vec<Frame> =
        snap.iter().filter(|f| f.at_us == t).skip(have_at_t).chain(snap.iter().filter(|f| f.at_us > t)).copied().collect();
    acc.extend(new);
}

/// The switchover as the taps saw it: the guest's first frame on the target (not a RARP),
/// its last frame on the source before that, and the target's first RARP (unix µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switchover {
    /// The guest's last frame on the source tap before its first on the target.
    pub src_last_us: Option<u64>,
    /// The guest's first frame on the target tap.
    pub dst_first_us: Option<u64>,
    /// The first RARP on the target tap.
    pub dst_rarp_us: Option<u64>,
}

/// Finds the switchover in the frames of both taps.
pub fn switchover(src: &[Frame], dst: &[Frame]) -> Switchover {
    let dst_first_us = dst.iter().find(|f| !f.is_rarp()).map(|f| f.at_us);
    let src_last_us = dst_first_us.and_then(|t| src.iter().rev().find(|f| !f.is_rarp() && f.at_us <= t).map(|f| f.at_us));
    let dst_rarp_us = dst.iter().find(|f| f.is_rarp()).map(|f| f.at_us);
    Switchover { src_last_us, dst_first_us, dst_rarp_us }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmove_host::frames::ETH_P_RARP;

    fn f(at_us: u64) -> Frame {
        Frame { at_us, ethertype: 0x0800 }
    }

    #[test]
    fn merging_overlapping_snapshots() {
        let mut acc = Vec::new();
        merge(&mut acc, &[f(1), f(2), f(2)]);
        merge(&mut acc, &[f(2), f(2), f(2), f(3)]);
        assert_eq!(acc.iter().map(|x| x.at_us).collect::<Vec<_>>(), [1, 2, 2, 2, 3]);
        // the ring dropped its oldest frames
        merge(&mut acc, &[f(3), f(4)]);
        merge(&mut acc, &[]);
        assert_eq!(acc.iter().map(|x| x.at_us).collect::<Vec<_>>(), [1, 2, 2, 2, 3, 4]);
    }

    #[test]
    fn switchover_from_both_taps() {
        let rarp = |at_us| Frame { at_us, ethertype: ETH_P_RARP };
        let src = [f(100), f(200), f(300), f(900)];
        let dst = [rarp(500), f(650), f(700)];
        assert_eq!(
            switchover(&src, &dst),
            Switchover { src_last_us: Some(300), dst_first_us: Some(650), dst_rarp_us: Some(500) }
        );
        assert_eq!(switchover(&src, &[rarp(5)]), Switchover { src_last_us: None, dst_first_us: None, dst_rarp_us: Some(5) });
        assert_eq!(switchover(&[], &dst).src_last_us, None);
    }
}
