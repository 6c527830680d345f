//! STOP_GUEST: the source stops the guest (ACPI power button; OFFLINEFORCE kills it, and
//! goes on without a source that does not answer). Undo: the source starts it again.
use std::time::Duration;

use async_trait::async_trait;
use vmove_api::{GuestStatus, Request};
use vmove_plan::Mode;

use super::{StepCx, StepWork, SKIPPED};
use crate::error::Result;
use crate::peer::call;

pub struct StopGuest;

#[async_trait]
impl StepWork for StopGuest {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        if !cx.was_running() {
            return Ok("guest was not running".into());
        }
        let force = cx.spec.mode == Mode::OfflineForce;
        let stop_s = cx.spec.params.stop_timeout_s;
        let req = Request::PeerStopGuest { name: cx.guest().into(), force, timeout_s: stop_s, job: Some(cx.claim()) };
        let timeout = Duration::from_secs(stop_s.saturating_add(30));
        Ok(match cx.src_call(req, timeout).await? {
            Some(_) if force => format!("guest killed on {}", cx.spec.source.name),
            Some(_) => format!("guest shut down on {} (ACPI)", cx.spec.source.name),
            None => SKIPPED.into(),
        })
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        if cx.record.was_running == Some(false) {
            return Ok("guest was not running: left stopped".into());
        }
        let st: GuestStatus = call(cx.peer, &Request::PeerStartGuest { name: cx.guest().into() }, Duration::from_secs(60)).await?;
        Ok(format!("guest running again on {} (pid {})", cx.spec.source.name, st.pid.unwrap_or(0)))
    }
}
