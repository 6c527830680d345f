//! ATTACH_VOLUMES.
//! - OFFLINE: the target takes the leases of the guest's volumes (OFFLINEFORCE takes them
//!   over from a dead source, bumping their epoch). Undo: it releases them.
//! - LIVE: the target claims the volumes as incoming while the source still runs them (a
//!   volume in a local pool is copied: the target leases its new copy in its own store).
//!   Undo: it drops the claim.
use async_trait::async_trait;
use vmove_plan::Mode;

use super::{StepCx, StepWork};
use crate::error::Result;
use crate::leases::Take;

pub struct TakeLeases;
pub struct ClaimIncoming;

async fn release(cx: &StepCx<'_>) -> Result<String> {
    let n = cx.agent().release_leases(&cx.spec.guest).await?;
    Ok(format!("{} lease(s) released on {}", n.len(), cx.agent().name()))
}

#[async_trait]
impl StepWork for TakeLeases {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let how = if cx.spec.mode == Mode::OfflineForce { Take::Takeover } else { Take::Exclusive };
        let notes = cx.agent().attach_volumes(&cx.spec.guest, how).await?;
        Ok(if notes.is_empty() { "no volumes".into() } else { format!("leased to {}: {}", cx.agent().name(), notes.join(", ")) })
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        release(cx).await
    }
}

#[async_trait]
impl StepWork for ClaimIncoming {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let leases = cx.agent().claim_incoming(&cx.spec.guest, &cx.spec.source.name).await?;
        let notes: Vec<String> = cx
            .spec
            .guest
            .disks
            .iter()
            .zip(&leases)
            .map(|(d, l)| match &l.incoming {
                Some(to) => format!("{}/{} (held by {}, incoming {to})", d.pool, d.volume, l.holder),
                None => format!("{}/{} (the new copy, leased to {})", d.pool, d.volume, l.holder),
            })
            .collect();
        Ok(if notes.is_empty() { "no volumes".into() } else { notes.join(", ") })
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        release(cx).await
    }
}
