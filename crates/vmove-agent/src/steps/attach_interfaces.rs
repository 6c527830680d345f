//! ATTACH_INTERFACES: the target creates the guest's taps on its networks' bridges.
//! Undo: nothing (they go with the definition).
use async_trait::async_trait;

use super::{StepCx, StepWork};
use crate::error::Result;

pub struct AttachInterfaces;

#[async_trait]
impl StepWork for AttachInterfaces {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let taps = cx.agent().plug_taps(&cx.spec.guest).await?;
        Ok(format!(
            "{} interface(s) on {}: {}",
            taps.len(),
            cx.agent().name(),
            taps.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join(", ")
        ))
    }

    async fn undo(&self, _cx: &StepCx<'_>) -> Result<String> {
        Ok("nothing to undo".into())
    }
}
