//! `vmove oedacli`: Oracle Exadata's oedacli command language (docs/oedacli.md).
//!
//! - [`parse`]: one line to one [`parse::Command`] (pure);
//! - [`session`]: the interpreter (the loaded model, the actions, MERGE and DEPLOY);
//! - [`repl`]: the interactive prompt and the script driver.
//!
//! The user's guide is `docs/oedacli.md`.
pub mod parse;
pub mod repl;
pub mod session;

pub use repl::{run, Reported};
