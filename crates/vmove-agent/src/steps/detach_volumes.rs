//! DETACH_VOLUMES.
//! - OFFLINE: the source releases its leases of the guest's volumes. Undo: it takes them back.
//! - LIVE (after the switchover): the leases pass from the source to the target, which
//!   held them as incoming; the source drops its copies of local volumes (deleted, or
//!   released with `--keep-source-volumes`). Undo: nothing (a live migration is not rolled back after its
//!   switchover; recovery goes forward).
use async_trait::async_trait;
use vmove_api::Request;

use super::{list_note, StepCx, StepWork, SKIPPED};
use crate::error::Result;
use crate::peer::PEER_TIMEOUT;

pub struct SourceReleasesLeases;
pub struct LeasesPassToTarget;

#[async_trait]
impl StepWork for SourceReleasesLeases {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        Ok(match cx.src_call(Request::PeerDetachVolumes { name: cx.guest().into() }, PEER_TIMEOUT).await? {
            Some(v) => format!("released on {}: {}", cx.spec.source.name, list_note(&v)),
            None => SKIPPED.into(),
        })
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        let v = cx.peer.call(&Request::PeerAttachVolumes { name: cx.guest().into() }, PEER_TIMEOUT).await?;
        Ok(format!("leases back on {}: {}", cx.spec.source.name, list_note(&v)))
    }
}

#[async_trait]
impl StepWork for LeasesPassToTarget {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let leases = cx.agent().take_incoming(&cx.spec.guest).await?;
        if leases.is_empty() {
            return Ok(format!("no volumes to detach from {}", cx.spec.source.name));
        }
        let names: Vec<String> = cx
            .spec
            .guest
            .disks
            .iter()
            .zip(&leases)
            .map(|(d, l)| format!("{}/{} (epoch {})", d.pool, d.volume, l.epoch))
            .collect();
        let mut note = format!("detached from {}, leased to {}: {}", cx.spec.source.name, cx.agent().name(), names.join(", "));
        if let Some(dropped) = crate::storage::dst::moved(cx).await? {
            note.push_str("; ");
            note.push_str(&dropped);
        }
        Ok(note)
    }

    async fn undo(&self, _cx: &StepCx<'_>) -> Result<String> {
        Ok("the guest runs on the target: its leases stay there".into())
    }
}
