//! STARTUP_GUEST: the target starts the guest if it ran before the migration.
//! Undo: nothing.
use async_trait::async_trait;

use super::{StepCx, StepWork};
use crate::error::Result;

pub struct StartupGuest;

#[async_trait]
impl StepWork for StartupGuest {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        if !cx.was_running() {
            return Ok("guest was stopped before the migration: left stopped".into());
        }
        let agent = cx.agent();
        if agent.show(cx.guest())?.pid.is_none() {
            agent.start(cx.guest()).await?;
        }
        Ok(format!("guest running on {}", agent.name()))
    }

    async fn undo(&self, _cx: &StepCx<'_>) -> Result<String> {
        Ok("nothing to undo".into())
    }
}
