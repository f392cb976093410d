//! The cluster CA and the certificates of nodes and clients. Every QUIC
//! connection is mutual TLS: both sides present a certificate signed by the
//! cluster CA. There is no verifier that accepts any certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The name every node certificate carries and every dialer checks.
pub const SERVER_NAME: &str = "ringleader.cluster";
const CA_NAME: &str = "Ringleader cluster CA";

/// Errors of certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and key, plus the CA to check peers against.
#[derive(Clone)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, data: &str) -> Result<(), TlsError> {
    std::fs::write(path, data).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

impl Identity {
    /// Loads `<dir>/ca.pem`, `<dir>/<name>.pem` and `<dir>/<name>.key`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let pem_err = |path: &Path, reason: String| TlsError::Pem {
            path: path.to_path_buf(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &read(&ca_path)?[..]) {
            let c = c.map_err(|e| pem_err(&ca_path, e.to_string()))?;
            roots.add(c).map_err(|e| pem_err(&ca_path, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(pem_err(&ca_path, "no CA certificate found".into()));
        }
        let chain = rustls_pemfile::certs(&mut &read(&cert_path)?[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(&cert_path, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(&cert_path, "no certificate found".into()));
        }
        let key = rustls_pemfile::private_key(&mut &read(&key_path)?[..])
            .map_err(|e| pem_err(&key_path, e.to_string()))?
            .ok_or_else(|| pem_err(&key_path, "no private key found".into()))?;
        Ok(Identity {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
        })
    }

    pub(crate) fn quic_server_config(
        &self,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"ringleader/1".to_vec()];
        quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    pub(crate) fn quic_client_config(
        &self,
    ) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"ringleader/1".to_vec()];
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    params
}

/// Writes a new cluster CA (`ca.pem`, `ca.key`) into `dir`.
pub fn make_ca(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::File {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write(&dir.join("ca.pem"), &cert.pem())?;
    write(&dir.join("ca.key"), &key.serialize_pem())?;
    Ok(())
}

/// Issues `<dir>/<name>.pem` and `<name>.key`, signed by the CA in `dir`,
/// usable both as server (name [`SERVER_NAME`]) and as client.
pub fn issue(dir: &Path, name: &str) -> Result<(), TlsError> {
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = String::from_utf8_lossy(&read(&ca_key_path)?).into_owned();
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // The issuer is rebuilt from the CA's fixed name and its key: the chain
    // checks the issuer name and key identifier, which both match.
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut params =
        CertificateParams::new(vec![SERVER_NAME.to_string(), "localhost".to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(&dir.join(format!("{name}.pem")), &cert.pem())?;
    write(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    Ok(())
}

/// A CA plus `node` and `client` certificates in `dir`: what `certs` and `local` make.
pub fn make_cluster_certs(dir: &Path) -> Result<(), TlsError> {
    make_ca(dir)?;
    issue(dir, "node")?;
    issue(dir, "client")?;
    Ok(())
}
