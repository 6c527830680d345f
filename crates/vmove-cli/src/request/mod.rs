//! Typed requests: what the operator asks for, whichever front end asked.
//!
//! `vmove migrate` and `vmove guest create` turn their clap arguments into these
//! ([`crate::args::MigrateArgs::into_command`], [`crate::args::CreateArgs::into_command`]);
//! oedacli's `MIGRATE GUEST` and the lab demo build them directly. The commands
//! (`cmd_migrate`, `cmd_guest`) take only these, never argument structs.
mod create;
mod migrate;

pub use create::{guest_mac, CreateCommand};
pub use migrate::MigrateCommand;
