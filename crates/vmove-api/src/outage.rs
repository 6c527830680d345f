//! The outage a live migration causes, in parts, as the network and both QEMUs saw it.
use serde::{Deserialize, Serialize};

/// When each part of the switchover happened (unix µs; kernel packet timestamps for
/// frames, QMP event timestamps for QEMU), recorded for every live move.
///
/// ```text
///  guest's last frame on the source ─ source vCPUs stop ─ target loaded ─ target vCPUs run ─ RARP ─ guest's first frame on the target
///  └──────────────────────────── blackout (what the network sees) ─────────────────────────────────────────┘
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    /// The guest's last frame on the source tap before its vCPUs stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_last_frame_us: Option<u64>,
    /// The source's vCPUs stopped (QEMU `STOP` on the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_stopped_us: Option<u64>,
    /// The target finished loading the last pages and device state (its `MIGRATION` completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_loaded_us: Option<u64>,
    /// The target's vCPUs run (QEMU `RESUME` on the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_resumed_us: Option<u64>,
    /// The announce's first RARP on the target tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_rarp_us: Option<u64>,
    /// The guest's own first frame on the target tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_first_frame_us: Option<u64>,
    /// QEMU's downtime figure, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_downtime_ms: Option<u64>,
    /// Frames for the guest that reached the source during the blackout and were handed to
    /// it on the target instead of being lost.
    #[serde(default)]
    pub carried_frames: u32,
}

fn ms(from: Option<u64>, to: Option<u64>) -> Option<f64> {
    match (from, to) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1000.0),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    }
}

impl Outage {
    /// From the guest's last frame on the source to its first on the target, ms: the part of
    /// the outage a client sees on the wire (before its own round trip).
    pub fn blackout_ms(&self) -> Option<f64> {
        ms(self.src_last_frame_us, self.dst_first_frame_us)
    }

    /// The parts, in order, as `(name, ms)`; a part whose ends were not both seen is left out.
    pub fn parts(&self) -> Vec<(&'static str, f64)> {
        let p = [
            ("last frame → vCPUs stop", ms(self.src_last_frame_us, self.src_stopped_us)),
            ("stop → target loaded", ms(self.src_stopped_us, self.dst_loaded_us)),
            ("loaded → target runs", ms(self.dst_loaded_us, self.dst_resumed_us)),
            ("runs → RARP", ms(self.dst_resumed_us, self.dst_rarp_us)),
            ("runs → guest's first frame", ms(self.dst_resumed_us, self.dst_first_frame_us)),
        ];
        p.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))).collect()
    }

    /// One line: `blackout 74.1 ms (last frame → vCPUs stop 3.2, ...); QEMU downtime 22 ms`.
    pub fn line(&self) -> String {
        let parts: Vec<String> = self.parts().iter().map(|(n, v)| format!("{n} {v:.1}")).collect();
        let blackout = self.blackout_ms().map_or("blackout not seen".to_string(), |b| format!("blackout {b:.1} ms"));
        let qemu = self.qemu_downtime_ms.map_or(String::new(), |d| format!("; QEMU downtime {d} ms"));
        let carried = if self.carried_frames > 0 { format!("; {} frame(s) carried to the target", self.carried_frames) } else { String::new() };
        format!("{blackout} ({}){qemu}{carried}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_blackout() {
        let o = Outage {
            src_last_frame_us: Some(1_000_000),
            src_stopped_us: Some(1_003_000),
            dst_loaded_us: Some(1_030_000),
            dst_resumed_us: Some(1_031_000),
            dst_rarp_us: Some(1_032_500),
            dst_first_frame_us: Some(1_101_000),
            qemu_downtime_ms: Some(28),
            carried_frames: 0,
        };
        assert_eq!(o.blackout_ms(), Some(101.0));
        assert_eq!(
            o.line(),
            "blackout 101.0 ms (last frame → vCPUs stop 3.0, stop → target loaded 27.0, loaded → target runs 1.0, runs → RARP 1.5, runs → guest's first frame 70.0); QEMU downtime 28 ms"
        );
        let partial = Outage { dst_resumed_us: Some(5), ..Default::default() };
        assert_eq!(partial.blackout_ms(), None);
        assert!(partial.parts().is_empty());
    }
}
