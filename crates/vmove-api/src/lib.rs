//! The agent API: wire types, the cluster PKI, and the mutual-TLS transport.
//!
//! # Protocol
//!
//! Calls travel over TLS connections (TLS 1.3/1.2, client certificate required, both sides
//! verified against the cluster CA) that stay open: the client writes one JSON object on
//! one line ([`Request`], tagged by `"op"`); the agent answers with one JSON line
//! ([`Reply`]): `{"ok":true,"result":...}` or
//! `{"ok":false,"error":{"code":"not_found","message":"one line"}}`; then the next request
//! may follow on the same connection ([`client`], [`server`]). The error's code decides
//! ([`ErrorCode`]), its message informs. Streaming calls (job events) answer with several
//! lines, the last one a `Reply`, and end the connection.
//!
//! The agent decodes a line with [`decode_request`]: JSON parsing, then [`Request::validate`],
//! which checks every number against its range in [`limits`] and every guest and volume
//! name (they become file names) with [`valid_name`].
//!
//! `guest_console` is the one call after which the connection changes shape: its reply
//! ([`ConsoleAttached`]) is followed by [`ConsoleLine`]s (console output with its offset in
//! the host's `serial.log`, then one final `end` saying why) from the agent, and by raw
//! keystrokes from the client, until either side closes.
//!
//! Who may call what: the operator certificate (SAN `operator.vmove`) may make every call;
//! host certificates (SAN `host.vmove`) only the peer calls that a migration needs
//! ([`Request::allowed_for`]).
#![warn(missing_docs)]

pub mod bootstrap;
pub mod client;
mod console;
pub mod server;
mod job;
pub mod operator;
mod outage;
pub mod pki;
mod storage;
pub mod tls;
mod validate;
#[cfg(test)]
mod fixtures;
mod replies;
mod wire;

pub use console::*;
pub use client::{one_line, AgentClient, ClientError};
pub use operator::{operator_clients, OperatorError};
pub use outage::Outage;
pub use job::*;
pub use storage::{LocalVolume, MirrorJob, MirrorReport, MirrorStarted, VolumeRef};
pub use validate::{decode_request, limits, valid_name, DecodeError, InvalidRequest, NAME_RULE};
pub use replies::*;
pub use wire::*;

/// The agent's default TCP port.
pub const DEFAULT_PORT: u16 = 7450;
