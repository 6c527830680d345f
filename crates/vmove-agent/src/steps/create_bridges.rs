//! CREATE_BRIDGES: the target creates the bridges of the guest's networks that it lacks.
//! LIVE also plugs the guest's taps now, so the incoming QEMU finds them. Undo: LIVE
//! removes the taps; bridges are kept (other guests may use them).
use async_trait::async_trait;

use super::{StepCx, StepWork};
use crate::error::Result;

/// Bridges only (OFFLINE, OFFLINEFORCE).
pub struct Bridges;
/// Bridges and the guest's taps (LIVE).
pub struct BridgesAndTaps;

async fn bridges(cx: &StepCx<'_>) -> Result<Vec<String>> {
    let agent = cx.agent();
    let mut notes = Vec::new();
    for n in &cx.spec.guest.nics {
        let bridge = agent.bridge_of(&n.network)?;
        let created = agent.ensure_bridge(&bridge).await?;
        notes.push(format!("{bridge} {}", if created { "created" } else { "present" }));
    }
    Ok(notes)
}

fn joined(notes: Vec<String>) -> String {
    if notes.is_empty() {
        "no networks".into()
    } else {
        notes.join("; ")
    }
}

#[async_trait]
impl StepWork for Bridges {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        Ok(joined(bridges(cx).await?))
    }

    async fn undo(&self, _cx: &StepCx<'_>) -> Result<String> {
        Ok("bridges kept".into())
    }
}

#[async_trait]
impl StepWork for BridgesAndTaps {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let mut notes = bridges(cx).await?;
        let taps = cx.agent().plug_taps(&cx.spec.guest).await?;
        notes.push(format!("taps {}", taps.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join(", ")));
        Ok(joined(notes))
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        cx.agent().unplug_taps(&cx.spec.guest).await;
        Ok("taps removed, bridges kept".into())
    }
}
