//! Test hooks: pause before a step, pause at the switchover, an injected fault, and
//! `job resume`. Compiled in only with the `fault-injection` feature (test builds), and
//! honoured only by agents whose configuration allows them (lab agents); everywhere else a
//! job that asks for them is refused.
use vmove_api::JobSpec;
use vmove_plan::Step;

use crate::error::{fail, Result};
use crate::guests::Agent;

/// Whether this agent honours test hooks.
pub fn enabled(agent: &Agent) -> bool {
    cfg!(any(test, feature = "fault-injection")) && agent.cfg.allow_fault_injection
}

/// Refuses a job that asks for hooks this agent does not honour.
pub fn check(agent: &Agent, spec: &JobSpec) -> Result<()> {
    let asks = spec.pause_before.is_some() || spec.pause_at_switchover || spec.inject_fault.is_some();
    if asks && !enabled(agent) {
        fail!(Disabled, "test hooks (pause, fault injection) are disabled on {}", agent.cfg.name);
    }
    Ok(())
}

/// The step to pause before, if any.
pub fn pause_before(agent: &Agent, spec: &JobSpec) -> Option<Step> {
    spec.pause_before.filter(|_| enabled(agent))
}

/// Whether `step` is to fail by injection.
pub fn inject_fault(agent: &Agent, spec: &JobSpec, step: Step) -> bool {
    spec.inject_fault == Some(step) && enabled(agent)
}

/// Whether the live migration holds at the switchover.
pub fn pause_at_switchover(agent: &Agent, spec: &JobSpec) -> bool {
    spec.pause_at_switchover && enabled(agent)
}
