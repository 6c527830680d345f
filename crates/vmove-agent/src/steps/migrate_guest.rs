//! MIGRATE_GUEST (OFFLINE, OFFLINEFORCE): the definition moves. The target defines the
//! guest, then the source undefines it and drops its copies of local volumes (a dead source drops it when it comes back: its
//! agent sees the volumes leased elsewhere). Undo: the target removes its definition.
use async_trait::async_trait;
use vmove_api::Request;

use super::{take_definition, StepCx, StepWork};
use crate::error::{fail, Result};
use crate::peer::PEER_TIMEOUT;

pub struct MoveDefinition;

#[async_trait]
impl StepWork for MoveDefinition {
    async fn run(&self, cx: &StepCx<'_>) -> Result<String> {
        let (agent, name) = (cx.agent(), cx.guest().to_string());
        take_definition(agent, cx.spec).await?;
        let mut note = match cx.src_call(Request::PeerUndefine { name: name.clone() }, PEER_TIMEOUT).await? {
            Some(_) => format!("{name} defined on {}, undefined on {}", cx.spec.target, cx.spec.source.name),
            None => format!("{name} defined on {}; {} unreachable (it drops the guest when it returns)", cx.spec.target, cx.spec.source.name),
        };
        if let Some(dropped) = crate::storage::dst::moved(cx).await? {
            note.push_str("; ");
            note.push_str(&dropped);
        }
        Ok(note)
    }

    async fn undo(&self, cx: &StepCx<'_>) -> Result<String> {
        let (agent, name) = (cx.agent(), cx.guest());
        if agent.spec(name).is_none() {
            return Ok("not defined on the target".into());
        }
        if agent.show(name)?.pid.is_some() {
            fail!(WrongState, "guest {name} runs on {}; recovery cannot roll it back", agent.name());
        }
        agent.forget(name).await?;
        Ok(format!("definition removed from {}", agent.name()))
    }
}
