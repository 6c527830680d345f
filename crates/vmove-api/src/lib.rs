//! The agent API: wire types, the cluster PKI, and the mutual-TLS transport.
//!
//! # Protocol
//!
//! Every call is one TLS connection (TLS 1.3/1.2, client certificate required, both sides
//! verified against the cluster CA). The client writes one JSON object on one line
//! ([`Request`], tagged by `"op"`); the agent answers with one JSON line
//! ([`Reply`]): `{"ok":true,"result":...}` or `{"ok":false,"error":"one line"}`.
//! Streaming calls (job events) answer with several lines, the last one a `Reply`.
//!
//! Who may call what: the operator certificate (SAN `operator.vmove`) may make every call;
//! host certificates (SAN `host.vmove`) only the peer calls that a migration needs
//! ([`Request::allowed_for`]).
#![warn(missing_docs)]

pub mod client;
mod job;
pub mod operator;
pub mod pki;
pub mod tls;
mod wire;

pub use client::{AgentClient, CallError};
pub use operator::{operator_clients, OperatorError};
pub use job::*;
pub use wire::*;

/// The agent's default TCP port.
pub const DEFAULT_PORT: u16 = 7450;
