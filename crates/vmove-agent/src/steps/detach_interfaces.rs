//! DETACH_INTERFACES: the source removes the stopped guest's taps. Undo: nothing (the taps
//! come back when the guest starts there again).
use async_trait::async_trait;
use vmove_api::Request;

use super::{StepCx, StepWork, SKIPPED};
use crate::error::Result;
use crate::peer::PEER_TIMEOUT;

pub struct DetachInterfaces;

#[async_trait]
impl StepWork for DetachInterfaces {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        Ok(match cx.src_call(Request::PeerDetachInterfaces { name: cx.guest().into() }, PEER_TIMEOUT).await? {
            Some(n) => format!("{n} interface(s) detached on {}", cx.spec.source.name),
            None => SKIPPED.into(),
        })
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        Ok(format!("the taps come back on {} when the guest starts", cx.spec.source.name))
    }
}
