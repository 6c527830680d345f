//! The cluster PKI: a CA, host certificates (server + client) and operator certificates.
//!
//! Host certificates carry the SAN `host.vmove` (their role), the host's name and its
//! management IP, so that they serve the agent API and QEMU's migration TLS alike.
//! Operator certificates carry `operator.vmove`.
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// SAN that marks a host (agent) certificate.
pub const HOST_ROLE_NAME: &str = "host.vmove";
/// SAN that marks an operator certificate.
pub const OPERATOR_ROLE_NAME: &str = "operator.vmove";

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
    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join(format!("{stem}.pem")), &self.cert_pem)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(format!("{stem}.key")))?;
        std::io::Write::write_all(&mut f, self.key_pem.as_bytes())?;
        Ok(())
    }

    /// Reads `<stem>.pem` and `<stem>.key` from `dir`.
    pub fn read(dir: &Path, stem: &str) -> Result<CertPair> {
        let read = |ext: &str| {
            let p = dir.join(format!("{stem}.{ext}"));
            std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
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
    pub fn generate(cluster: &str) -> Result<Ca> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, format!("vmove CA {cluster}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut p);
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(Ca { pair: CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() }, cert, key })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn load(pair: CertPair) -> Result<Ca> {
        let key = KeyPair::from_pem(&pair.key_pem).context("CA key")?;
        let params = CertificateParams::from_ca_cert_pem(&pair.cert_pem).context("CA certificate")?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { pair, cert, key })
    }

    /// The CA's own certificate and key.
    pub fn pair(&self) -> &CertPair {
        &self.pair
    }

    /// A host certificate: server and client auth, for `name` and its management IP.
    pub fn issue_host(&self, name: &str, ip: IpAddr) -> Result<CertPair> {
        let mut p = CertificateParams::new(vec![name.to_string(), HOST_ROLE_NAME.to_string()])?;
        p.subject_alt_names.push(SanType::IpAddress(ip));
        p.distinguished_name.push(DnType::CommonName, name);
        self.leaf(p)
    }

    /// An operator certificate.
    pub fn issue_operator(&self, name: &str) -> Result<CertPair> {
        let mut p = CertificateParams::new(vec![OPERATOR_ROLE_NAME.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        self.leaf(p)
    }

    fn leaf(&self, mut p: CertificateParams) -> Result<CertPair> {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut p);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}
