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

/// Writes a private key readable by its owner only (0600), replacing any
/// file of that name.
fn write_key(path: &Path, pem: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| TlsError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // An existing file keeps its mode through open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    f.write_all(pem.as_bytes()).map_err(err)
}

/// Refuses a private key that others than its owner may read or write,
/// as ssh does: a copy that lost its mode is a key others can take.
fn refuse_open_key(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| TlsError::File {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!(
                "permissions {:04o} are too open: a private key must be readable by its owner \
                 only; run `chmod 600 {}`",
                mode & 0o7777,
                path.display()
            ),
        });
    }
    Ok(())
}

/// Creates `dir` (and its parents); a directory made here is 0700.
fn make_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::File {
            path: dir.to_path_buf(),
            source,
        })
}

impl Identity {
    /// Loads `<dir>/ca.pem`, `<dir>/<name>.pem` and `<dir>/<name>.key`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, TlsError> {
        if !dir.is_dir() {
            return Err(TlsError::Pem {
                path: dir.to_path_buf(),
                reason: format!(
                    "no such certificate directory: give --certs DIR (or RINGLEADER_CERTS) with \
                     the cluster's ca.pem, {name}.pem and {name}.key; `certs --out DIR` makes \
                     them for one machine, `certs init` and `certs issue` for a cluster"
                ),
            });
        }
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
        refuse_open_key(&key_path)?;
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

/// Writes a new cluster CA (`ca.pem`, and `ca.key` readable by its owner
/// only) into `dir`. Refuses to replace an existing CA.
pub fn make_ca(dir: &Path) -> Result<(), TlsError> {
    make_dir(dir)?;
    if dir.join("ca.key").exists() {
        return Err(TlsError::Pem {
            path: dir.join("ca.key"),
            reason: "a CA exists here already; every certificate it issued depends on it \
                     (remove it yourself to start a new cluster CA)"
                .into(),
        });
    }
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write(&dir.join("ca.pem"), &cert.pem())?;
    write_key(&dir.join("ca.key"), &key.serialize_pem())?;
    Ok(())
}

/// What an issued certificate is for: which file names it gets
/// (`node.pem`/`node.key` or `client.pem`/`client.key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A node: serves (as master) and dials (as worker).
    Node,
    /// A client: `submit`, `status`, the Rust `Client`.
    Client,
}

impl Role {
    fn file(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
        }
    }
}

/// Issues one identity signed by the CA in `ca_dir` into `out`: the CA's
/// certificate (`ca.pem`, never its key) and `<role>.pem` / `<role>.key`
/// (0600) with common name `name`. `out` is what one host needs.
pub fn issue_to(ca_dir: &Path, role: Role, name: &str, out: &Path) -> Result<(), TlsError> {
    make_dir(out)?;
    let ca = read(&ca_dir.join("ca.pem"))?;
    if ca_dir != out {
        write(&out.join("ca.pem"), &String::from_utf8_lossy(&ca))?;
    }
    sign(ca_dir, name, out, role.file())
}

/// Issues `<dir>/<name>.pem` and `<name>.key`, signed by the CA in `dir`,
/// usable both as server (name [`SERVER_NAME`]) and as client.
pub fn issue(dir: &Path, name: &str) -> Result<(), TlsError> {
    sign(dir, name, dir, name)
}

fn sign(ca_dir: &Path, name: &str, out: &Path, file: &str) -> Result<(), TlsError> {
    let ca_key_path = ca_dir.join("ca.key");
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
    write(&out.join(format!("{file}.pem")), &cert.pem())?;
    write_key(&out.join(format!("{file}.key")), &key.serialize_pem())?;
    Ok(())
}

/// A CA plus `node` and `client` certificates in `dir`: what `certs` and `local` make.
pub fn make_cluster_certs(dir: &Path) -> Result<(), TlsError> {
    make_ca(dir)?;
    issue(dir, "node")?;
    issue(dir, "client")?;
    Ok(())
}
