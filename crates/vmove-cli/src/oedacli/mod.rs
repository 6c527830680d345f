//! `vmove oedacli`: Oracle Exadata's oedacli command language (docs/oedacli.md).
//!
//! - [`parse`]: one line to one [`parse::Command`] (pure);
//! - [`session`]: the interpreter (the loaded model, the actions);
//! - [`merge`]: MERGE ACTIONS (prechecks against the model, the planned state);
//! - [`choose`]: the target of a `MIGRATE GUEST` without TGTHOST= (the drain's planner);
//! - [`deploy`]: DEPLOY ACTIONS (jobs on the agents, how to go on after a failure);
//! - [`repl`]: the interactive prompt and the script driver.
//!
//! The user's guide is `docs/oedacli.md`.
mod choose;
mod deploy;
mod merge;
pub mod parse;
pub mod repl;
pub mod session;

pub use repl::{run, Reported};
