//! The cluster PKI: a CA, host certificates (server + client) and operator certificates.
//!
//! Host certificates carry the SAN `host.vmove` (their role), the host's name and its
//! management IP, so that they serve the agent API and QEMU's migration TLS alike.
//! Operator certificates carry `operator.vmove`.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// SAN that marks a host (agent) certificate.
pub const HOST_ROLE_NAME: &str = "host.vmove";
/// SAN that marks an operator certificate.
pub const OPERATOR_ROLE_NAME: &str = "operator.vmove";

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A certificate or key file could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        /// `read`, `write` or `create`.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused a certificate, a key or a PEM text.
    #[error("{what}")]
    Cert {
        /// What was being made or read.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
}

fn io(what: &'static str, path: PathBuf) -> impl FnOnce(std::io::Error) -> PkiError {
    move |source| PkiError::Io { what, path, source }
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

impl CertPair {
    /// Writes `<stem>.pem` and `<stem>.key` (0600) into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(io("create", dir.into()))?;
        let pem = dir.join(format!("{stem}.pem"));
        std::fs::write(&pem, &self.cert_pem).map_err(io("write", pem))?;
        let key = dir.join(format!("{stem}.key"));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .and_then(|mut f| std::io::Write::write_all(&mut f, self.key_pem.as_bytes()))
            .map_err(io("write", key))
    }

    /// Reads `<stem>.pem` and `<stem>.key` from `dir`.
    pub fn read(dir: &Path, stem: &str) -> Result<CertPair, PkiError> {
        let read = |ext: &str| {
            let p = dir.join(format!("{stem}.{ext}"));
            std::fs::read_to_string(&p).map_err(io("read", p))
        };
        Ok(CertPair { cert_pem: read("pem")?, key_pem: read("key")? })
    }
}

/// The cluster certificate authority.
pub struct Ca {
    pair: CertPair,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn validity(p: &mut CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
}

impl Ca {
    /// A new CA for a cluster.
    pub fn generate(cluster: &str) -> Result<Ca, PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("CA certificate"))?;
        p.distinguished_name.push(DnType::CommonName, format!("vmove CA {cluster}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut p);
        let key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
        let cert = p.self_signed(&key).map_err(rcgen_err("CA certificate"))?;
        Ok(Ca { pair: CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() }, cert, key })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn load(pair: CertPair) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(&pair.key_pem).map_err(rcgen_err("CA key"))?;
        let params = CertificateParams::from_ca_cert_pem(&pair.cert_pem).map_err(rcgen_err("CA certificate"))?;
        let cert = params.self_signed(&key).map_err(rcgen_err("CA certificate"))?;
        Ok(Ca { pair, cert, key })
    }

    /// The CA's own certificate and key.
    pub fn pair(&self) -> &CertPair {
        &self.pair
    }

    /// A host certificate: server and client auth, for `name` and its management IP.
    pub fn issue_host(&self, name: &str, ip: IpAddr) -> Result<CertPair, PkiError> {
        let mut p = CertificateParams::new(vec![name.to_string(), HOST_ROLE_NAME.to_string()])
            .map_err(rcgen_err("host certificate"))?;
        p.subject_alt_names.push(SanType::IpAddress(ip));
        p.distinguished_name.push(DnType::CommonName, name);
        self.leaf(p)
    }

    /// A server certificate for `name` and its IP (an etcd member: server and client auth,
    /// the latter for its peers), with no vmove role.
    pub fn issue_server(&self, name: &str, ip: IpAddr) -> Result<CertPair, PkiError> {
        let mut p = CertificateParams::new(vec![name.to_string()]).map_err(rcgen_err("server certificate"))?;
        p.subject_alt_names.push(SanType::IpAddress(ip));
        p.distinguished_name.push(DnType::CommonName, name);
        self.leaf(p)
    }

    /// An operator certificate.
    pub fn issue_operator(&self, name: &str) -> Result<CertPair, PkiError> {
        let mut p = CertificateParams::new(vec![OPERATOR_ROLE_NAME.to_string()]).map_err(rcgen_err("operator certificate"))?;
        p.distinguished_name.push(DnType::CommonName, name);
        self.leaf(p)
    }

    fn leaf(&self, mut p: CertificateParams) -> Result<CertPair, PkiError> {
        validity(&mut p);
        self.sign_leaf(p)
    }

    fn sign_leaf(&self, mut p: CertificateParams) -> Result<CertPair, PkiError> {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(rcgen_err("certificate key"))?;
        let cert = p.signed_by(&key, &self.cert, &self.key).map_err(rcgen_err("sign a certificate"))?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Certificates no production path issues, for the tests of refusals (feature `test-pki`,
/// turned on by the end-to-end tests only).
#[cfg(any(test, feature = "test-pki"))]
impl Ca {
    /// An operator certificate signed by this CA but valid only between two dates, given
    /// as (year, month, day): one that expired, or one not valid yet.
    pub fn issue_operator_valid_between(&self, name: &str, from: (i32, u8, u8), to: (i32, u8, u8)) -> Result<CertPair, PkiError> {
        let mut p = CertificateParams::new(vec![OPERATOR_ROLE_NAME.to_string()]).map_err(rcgen_err("operator certificate"))?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        self.sign_leaf(p)
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn an_expired_operator_certificate_carries_its_dates() {
        let ca = Ca::generate("t").unwrap();
        let old = ca.issue_operator_valid_between("old", (2020, 1, 1), (2021, 1, 1)).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(old.cert_pem.as_bytes()).unwrap();
        let params = CertificateParams::from_ca_cert_der(&der).unwrap();
        assert_eq!(params.not_after, rcgen::date_time_ymd(2021, 1, 1));
        assert_eq!(params.not_before, rcgen::date_time_ymd(2020, 1, 1));
        // Still an operator certificate of this CA: only its dates make it refused.
        assert_eq!(crate::tls::role_of(&der), Some(crate::Role::Operator));
    }
}
