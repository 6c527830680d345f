//! rustls configurations for the agent API, with the `ring` provider that rcgen uses too.
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::pki::{CertPair, HOST_ROLE_NAME, OPERATOR_ROLE_NAME};
use crate::Role;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM text does not parse.
    #[error("{what} PEM")]
    Pem {
        /// `CA certificate`, `certificate` or `private key`.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The CA PEM holds no certificate.
    #[error("no CA certificate found")]
    NoCa,
    /// rustls refused a certificate, a key or the protocol versions.
    #[error("{what}")]
    Rustls {
        /// What it refused.
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("client verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

fn pem(what: &'static str) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError {
    move |source| TlsError::Pem { what, source }
}

fn refused(what: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls { what, source }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(pem("CA certificate"))?).map_err(refused("CA certificate"))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa);
    }
    Ok(roots)
}

type ChainAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn chain_and_key(pair: &CertPair) -> Result<ChainAndKey, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(pem("private key"))?;
    Ok((certs, key))
}

/// The agent's server config: its host certificate, and a client certificate from the
/// cluster CA required of every caller.
pub fn server_config(ca_pem: &str, me: &CertPair) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
        .build()
        .map_err(TlsError::Verifier)?;
    let (certs, key) = chain_and_key(me)?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(refused("server certificate"))?;
    Ok(Arc::new(cfg))
}

/// A client config presenting `me` and trusting only the cluster CA.
pub fn client_config(ca_pem: &str, me: &CertPair) -> Result<Arc<ClientConfig>, TlsError> {
    let (certs, key) = chain_and_key(me)?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused("protocol versions"))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs, key)
        .map_err(refused("client certificate"))?;
    Ok(Arc::new(cfg))
}

/// A client config with no client certificate (used only to show that agents refuse it).
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(refused("protocol versions"))?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The caller's role from its (already CA-verified) end-entity certificate.
pub fn role_of(peer: &CertificateDer<'_>) -> Option<Role> {
    let cert = webpki::EndEntityCert::try_from(peer).ok()?;
    let is = |n: &str| {
        ServerName::try_from(n).map(|sn| cert.verify_is_valid_for_subject_name(&sn).is_ok()).unwrap_or(false)
    };
    if is(OPERATOR_ROLE_NAME) {
        Some(Role::Operator)
    } else if is(HOST_ROLE_NAME) {
        Some(Role::Host)
    } else {
        None
    }
}
