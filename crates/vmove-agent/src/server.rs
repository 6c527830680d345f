//! The mTLS API server of `vmoved`: the host certificate, a client certificate from the
//! cluster CA required of every caller, and [`vmove_api::server::serve`] with the agent's
//! [`crate::dispatch::Api`].
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use vmove_api::pki::CertPair;
use vmove_model::AgentConfig;

use crate::dispatch::Api;
use crate::error::{Result, ResultExt};

fn read(p: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(p).with_ctx(|| format!("read {}", p.display()))
}

/// This host's certificate and key, and the cluster CA.
pub fn tls_files(cfg: &AgentConfig) -> Result<(String, CertPair)> {
    Ok((read(&cfg.ca)?, CertPair { cert_pem: read(&cfg.cert)?, key_pem: read(&cfg.key)? }))
}

/// Serves the API until the process ends.
pub async fn serve(api: Arc<Api>, cfg: &AgentConfig) -> Result<()> {
    let (ca, me) = tls_files(cfg)?;
    let acceptor = TlsAcceptor::from(vmove_api::tls::server_config(&ca, &me).map_err(crate::error::AgentError::host)?);
    let listener = TcpListener::bind(&cfg.listen).await.with_ctx(|| format!("listen on {}", cfg.listen))?;
    tracing::info!(host = %cfg.name, listen = %cfg.listen, accel = %api.agent.accel, "vmoved serving");
    let stats = api.agent.stats.clone();
    vmove_api::server::serve(listener, acceptor, api, stats).await.ctx("accept")
}
