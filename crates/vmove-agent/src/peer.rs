//! Calls from the target's agent to the source's, behind one trait: [`RemotePeer`] over
//! mutual TLS with the host certificate (connections kept and reused), and in unit tests an
//! in-process peer that hands the request to another agent's dispatcher.
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use vmove_api::{AgentClient, Request};

use crate::error::{AgentError, Result};

/// The usual timeout of a peer call.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// The source agent, as the target's steps see it.
#[async_trait]
pub trait Peer: Send + Sync {
    /// The peer's host name.
    fn name(&self) -> &str;
    /// One call; an unreachable peer is an error with code `unreachable`.
    async fn call(&self, req: &Request, timeout: Duration) -> Result<serde_json::Value>;
}

/// Makes a call and decodes its result.
pub async fn call<T: DeserializeOwned>(p: &dyn Peer, req: &Request, timeout: Duration) -> Result<T> {
    let v = p.call(req, timeout).await?;
    serde_json::from_value(v).map_err(|e| AgentError::internal(format!("{}: unexpected answer to {}: {e}", p.name(), req.op())))
}

/// A peer reached over the network.
pub struct RemotePeer {
    client: AgentClient,
}

impl RemotePeer {
    /// A peer through `client` (its connections are shared with every clone).
    pub fn new(client: AgentClient) -> RemotePeer {
        RemotePeer { client }
    }
}

#[async_trait]
impl Peer for RemotePeer {
    fn name(&self) -> &str {
        self.client.host()
    }

    async fn call(&self, req: &Request, timeout: Duration) -> Result<serde_json::Value> {
        Ok(self.client.clone().with_timeout(timeout).call_raw(req).await?)
    }
}
