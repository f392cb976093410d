//! The cluster CA and the certificates of nodes and clients. Every QUIC
//! connection is mutual TLS: both sides present a certificate signed by the
//! cluster CA. There is no verifier that accepts any certificate.
//!
//! Every certificate carries one identity: a URI among its subject
//! alternative names, `urn:ringleader:<role>:<name>` ([`PeerId`]), with
//! role `node` (name: the node id), `client` or `admin` (name: the
//! client's). The subject's common name is the same for every certificate
//! of a role (`ringleader-node`, ...), so that a ZooKeeper x509 ACL can
//! name the role. Node certificates may serve (server and client usage,
//! DNS name [`SERVER_NAME`]); client certificates may only dial.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The name every node certificate carries and every dialer checks.
pub const SERVER_NAME: &str = "ringleader.cluster";
const CA_NAME: &str = "Ringleader cluster CA";

/// The prefix of the identity URI every certificate carries.
pub const URN_PREFIX: &str = "urn:ringleader:";

/// Certificates expiring sooner than this are warned about at start.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

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
    id: PeerId,
    /// The revocation lists of `crl.pem` beside `ca.pem`, if any.
    crls: Arc<Vec<CertificateRevocationListDer<'static>>>,
    /// The serial numbers they revoke (to close live connections).
    revoked: Arc<std::collections::HashSet<Vec<u8>>>,
    /// `ca.pem` as read.
    ca_pem: Arc<str>,
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerId {
    /// What it may do.
    pub role: Role,
    /// The node id (role `node`) or the client's name.
    pub name: String,
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.name)
    }
}

/// Checks a node id or client name: 1-128 characters of letters, digits,
/// `.`, `_`, `-` and `@` (it names a znode and sits in a URI).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use 1-128 letters, digits, '.', '_', '-' or '@'"
        ))
    }
}

impl PeerId {
    /// An identity, its name checked.
    pub fn new(role: Role, name: &str) -> Result<PeerId, String> {
        check_name(name)?;
        Ok(PeerId {
            role,
            name: name.to_string(),
        })
    }

    /// `urn:ringleader:<role>:<name>`.
    pub fn uri(&self) -> String {
        format!("{URN_PREFIX}{}:{}", self.role.as_str(), self.name)
    }

    /// Reads an identity URI: `None` for a URI that is not Ringleader's,
    /// an error for one that is but does not parse.
    pub fn from_uri(uri: &str) -> Option<Result<PeerId, String>> {
        let rest = uri.strip_prefix(URN_PREFIX)?;
        Some(match rest.split_once(':') {
            Some((role, name)) => match Role::parse(role) {
                Some(role) => PeerId::new(role, name),
                None => Err(format!(
                    "unknown role {role:?} in {uri} (want node, client or admin)"
                )),
            },
            None => Err(format!("{uri}: want {URN_PREFIX}<role>:<name>")),
        })
    }

    /// The identity a DER certificate carries.
    pub fn of_cert(der: &[u8]) -> Result<PeerId, String> {
        Ok(CertFacts::parse(der)?.id)
    }

    /// The identity and serial number (big-endian bytes) of a DER
    /// certificate.
    pub fn with_serial(der: &[u8]) -> Result<(PeerId, Vec<u8>), String> {
        let facts = CertFacts::parse(der)?;
        Ok((facts.id, facts.serial))
    }

    /// Whether this is the node `id`.
    pub fn is_node(&self, id: &str) -> bool {
        self.role == Role::Node && self.name == id
    }

    /// Whom the jobs it submits belong to: `client:<name>` for a client
    /// or an admin (one person, whatever role their certificate gives),
    /// `node:<id>` for a node.
    pub fn principal(&self) -> String {
        match self.role {
            Role::Node => format!("node:{}", self.name),
            Role::Client | Role::Admin => format!("client:{}", self.name),
        }
    }

    /// Whether it may act on every client's jobs: admins, and nodes (the
    /// cluster's own members, which hold its data anyway).
    pub fn acts_for_all(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Node)
    }
}

/// What is read from a certificate: its identity, serial number and when
/// it expires.
struct CertFacts {
    id: PeerId,
    serial: Vec<u8>,
    not_after: std::time::SystemTime,
}

impl CertFacts {
    fn parse(der: &[u8]) -> Result<CertFacts, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("its subject alternative names do not parse: {e}"))?;
        let mut found = Vec::new();
        for name in san.iter().flat_map(|s| &s.value.general_names) {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = PeerId::from_uri(uri) {
                    found.push(id?);
                }
            }
        }
        let id = match found.len() {
            1 => found.remove(0),
            0 => {
                return Err(format!(
                    "the certificate carries no Ringleader identity (a URI \
                     {URN_PREFIX}<role>:<name> among its subject alternative names): issue it \
                     with `certs issue` (certificates made before identities must be issued again)"
                ))
            }
            n => {
                return Err(format!(
                    "the certificate carries {n} Ringleader identities, not one"
                ))
            }
        };
        let secs = cert.validity().not_after.timestamp().max(0) as u64;
        Ok(CertFacts {
            id,
            serial: cert.raw_serial().to_vec(),
            not_after: std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        })
    }
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

/// A verifier of peers' certificates (`$kind`: of clients, or of servers)
/// against the CAs of `$id`, checking the revocation lists it holds; a
/// certificate of a CA that has no list (that revoked nothing) is not
/// refused for that.
macro_rules! webpki_verifier {
    ($kind:ty, $id:expr) => {
        <$kind>::builder_with_provider($id.roots.clone(), provider())
            .with_crls($id.crls.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?
    };
}

impl Identity {
    /// A node's identity from `dir`: its own `node.pem`/`node.key` (made
    /// by `certs issue --node ID`), whose id must equal `want` if given;
    /// or, in a one-machine directory that holds the CA's key and no node
    /// certificate, a certificate issued here in memory for `want` (or
    /// `default_id()`).
    pub fn node(
        dir: &Path,
        want: Option<&str>,
        default_id: impl FnOnce() -> String,
    ) -> Result<Self, TlsError> {
        let pem_err = |path: PathBuf, reason: String| TlsError::Pem { path, reason };
        if dir.join("node.pem").exists() || !dir.join("ca.key").exists() {
            let identity = Self::load(dir, "node")?;
            let path = dir.join("node.pem");
            if identity.id.role != Role::Node {
                return Err(pem_err(
                    path,
                    format!(
                        "this is the certificate of {}, not of a node: issue one with \
                         `certs issue --node ID`",
                        identity.id
                    ),
                ));
            }
            if let Some(want) = want.filter(|w| *w != identity.id.name) {
                return Err(pem_err(
                    path,
                    format!(
                        "the certificate is node {}'s, but --node-id says {want}: leave \
                         --node-id out (the certificate names the node), or use node {want}'s \
                         certificate",
                        identity.id.name
                    ),
                ));
            }
            identity
                .check_own()
                .map_err(|reason| pem_err(path, reason))?;
            return Ok(identity);
        }
        let name = match want {
            Some(w) => w.to_string(),
            None => default_id(),
        };
        let id = PeerId::new(Role::Node, &name)
            .map_err(|reason| pem_err(dir.to_path_buf(), format!("node id: {reason}")))?;
        let (cert, key) = sign(dir, &id)?;
        let chain = vec![cert.der().clone()];
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| pem_err(dir.join("ca.key"), e.to_string()))?;
        let (crls, revoked) = load_crls(dir)?;
        let (roots, ca_pem) = load_roots(&dir.join("ca.pem"))?;
        Ok(Identity {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
            id,
            crls: Arc::new(crls),
            revoked: Arc::new(revoked),
            ca_pem,
        })
    }

    /// A client's identity: `<dir>/client.pem`, `client.key` (role client
    /// or admin), or a node's certificate where there is no client's.
    pub fn client(dir: &Path) -> Result<Self, TlsError> {
        if !dir.join("client.pem").exists() && dir.join("node.pem").exists() {
            return Self::load(dir, "node");
        }
        Self::load(dir, "client")
    }

    /// The identity the certificate carries.
    pub fn id(&self) -> &PeerId {
        &self.id
    }

    /// The certificate chain and the private key as PEM text, and the
    /// trusted CAs: what a ZooKeeper client over TLS presents and checks.
    pub fn pem(&self) -> (String, String, String) {
        let chain: String = self
            .chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c))
            .collect();
        let key = pem_block("PRIVATE KEY", self.key.secret_der());
        (chain, key, self.ca_pem.to_string())
    }

    /// The serial numbers the directory's `crl.pem` revokes.
    pub fn revoked(&self) -> Arc<std::collections::HashSet<Vec<u8>>> {
        self.revoked.clone()
    }

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
        let (roots, ca_pem) = load_roots(&ca_path)?;
        let chain = rustls_pemfile::certs(&mut &read(&cert_path)?[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(&cert_path, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(&cert_path, "no certificate found".into()));
        }
        let facts = CertFacts::parse(&chain[0]).map_err(|reason| pem_err(&cert_path, reason))?;
        let left = facts
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        if left.is_zero() {
            return Err(pem_err(
                &cert_path,
                format!(
                    "the certificate of {} has expired: issue a new one",
                    facts.id
                ),
            ));
        }
        if left < EXPIRY_WARNING {
            tracing::warn!(
                cert = %cert_path.display(),
                days = left.as_secs() / 86_400,
                "the certificate of {} expires in under 30 days: issue a new one",
                facts.id
            );
        }
        refuse_open_key(&key_path)?;
        let key = rustls_pemfile::private_key(&mut &read(&key_path)?[..])
            .map_err(|e| pem_err(&key_path, e.to_string()))?
            .ok_or_else(|| pem_err(&key_path, "no private key found".into()))?;
        let (crls, revoked) = load_crls(dir)?;
        Ok(Identity {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
            id: facts.id,
            crls: Arc::new(crls),
            revoked: Arc::new(revoked),
            ca_pem,
        })
    }

    /// Whether this identity's own certificate passes the checks its
    /// peers make with the same trust: signed by a CA of its `ca.pem`, not
    /// revoked by its `crl.pem`, not expired. A node whose certificate
    /// fails them would be refused by every peer, and, were it elected,
    /// lock every worker and client out: it does not start (and a reload
    /// that would leave it so is refused).
    pub fn check_own(&self) -> Result<(), String> {
        let verifier = (|| -> Result<_, TlsError> {
            Ok(webpki_verifier!(rustls::server::WebPkiClientVerifier, self))
        })()
        .map_err(|e| e.to_string())?;
        let Some((leaf, intermediates)) = self.chain.split_first() else {
            return Err("no certificate".into());
        };
        verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "the certificate of {} does not pass this node's own checks ({e}): it is \
                     signed by a CA its ca.pem does not hold, revoked by its crl.pem, or \
                     expired; every peer would refuse it. Issue a new one (`certs issue`), or \
                     put the CA that signed it in ca.pem",
                    self.id
                )
            })
    }

    pub(crate) fn quic_server_config(
        &self,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let verifier = webpki_verifier!(rustls::server::WebPkiClientVerifier, self);
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
        let verifier = webpki_verifier!(rustls::client::WebPkiServerVerifier, self);
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"ringleader/1".to_vec()];
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

/// The revocation lists of `<dir>/crl.pem` (none if there is no such
/// file), and the serial numbers they revoke.
#[allow(clippy::type_complexity)]
fn load_crls(
    dir: &Path,
) -> Result<
    (
        Vec<CertificateRevocationListDer<'static>>,
        std::collections::HashSet<Vec<u8>>,
    ),
    TlsError,
> {
    let path = dir.join("crl.pem");
    if !path.exists() {
        return Ok(Default::default());
    }
    let pem_err = |reason: String| TlsError::Pem {
        path: path.clone(),
        reason,
    };
    let crls = rustls_pemfile::crls(&mut &read(&path)?[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    let mut revoked = std::collections::HashSet::new();
    for crl in &crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl)
            .map_err(|e| pem_err(format!("not a revocation list: {e}")))?;
        revoked.extend(
            parsed
                .iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec()),
        );
    }
    Ok((crls, revoked))
}

/// DER as a PEM block of `label`.
fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Issues the certificate of a ZooKeeper server signed by the CA of
/// `ca_dir` into `out`: `zookeeper.pem` (its private key and certificate in
/// one file, ZooKeeper's PEM key store, 0600) and `ca.pem` (its trust
/// store). `hosts` are the names and IP addresses its clients dial; the
/// certificate's CN is `ringleader-zookeeper`.
pub fn issue_zookeeper(ca_dir: &Path, hosts: &[String], out: &Path) -> Result<(), TlsError> {
    if hosts.is_empty() {
        return Err(TlsError::Pem {
            path: out.to_path_buf(),
            reason: "name at least one host (or IP address) its clients dial".into(),
        });
    }
    make_dir(out)?;
    let issuer = ca_issuer(ca_dir)?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ringleader-zookeeper");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let ca = read(&ca_dir.join("ca.pem"))?;
    if ca_dir != out {
        write(&out.join("ca.pem"), &String::from_utf8_lossy(&ca))?;
    }
    write_key(
        &out.join("zookeeper.pem"),
        &format!("{}{}", key.serialize_pem(), cert.pem()),
    )
}

/// The CA certificates of a `ca.pem` (several during a CA rollover), and
/// the file's text.
fn load_roots(ca_path: &Path) -> Result<(RootCertStore, Arc<str>), TlsError> {
    let pem_err = |reason: String| TlsError::Pem {
        path: ca_path.to_path_buf(),
        reason,
    };
    let text = read(ca_path)?;
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &text[..]) {
        let c = c.map_err(|e| pem_err(e.to_string()))?;
        roots.add(c).map_err(|e| pem_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem_err("no CA certificate found".into()));
    }
    Ok((roots, String::from_utf8_lossy(&text).into()))
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
}

/// A new CA's parameters. Its name has a random part: during a rollover
/// two CAs are trusted together, and revocation lists are matched to
/// their CA by name.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{CA_NAME} {tag}"));
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

/// What a certificate's holder may do; also which file names an issued
/// certificate gets (`node.pem`/`node.key`, else `client.pem`/`client.key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A node: serves (as master) and dials (as worker).
    Node,
    /// A client: `submit`, `status`, the Rust `Client`.
    Client,
    /// A client that may also act on other clients' jobs.
    Admin,
}

impl Role {
    fn file(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client | Role::Admin => "client",
        }
    }

    /// `node`, `client` or `admin`: the word in the identity URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [Role::Node, Role::Client, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// The subject's common name, one per role.
    fn common_name(self) -> &'static str {
        match self {
            Role::Node => "ringleader-node",
            Role::Client => "ringleader-client",
            Role::Admin => "ringleader-admin",
        }
    }
}

/// Issues one identity signed by the CA in `ca_dir` into `out`: the CA's
/// certificate (`ca.pem`, never its key) and `<role>.pem` / `<role>.key`
/// (0600) carrying identity `role name`. `out` is what one host needs.
pub fn issue_to(ca_dir: &Path, role: Role, name: &str, out: &Path) -> Result<(), TlsError> {
    let id = PeerId::new(role, name).map_err(|reason| TlsError::Pem {
        path: out.to_path_buf(),
        reason,
    })?;
    make_dir(out)?;
    let ca = read(&ca_dir.join("ca.pem"))?;
    if ca_dir != out {
        write(&out.join("ca.pem"), &String::from_utf8_lossy(&ca))?;
    }
    let (cert, key) = sign(ca_dir, &id)?;
    write(&out.join(format!("{}.pem", role.file())), &cert.pem())?;
    write_key(
        &out.join(format!("{}.key", role.file())),
        &key.serialize_pem(),
    )?;
    Ok(())
}

/// A certificate for `id` signed by the CA in `ca_dir`, and its new key.
fn sign(ca_dir: &Path, id: &PeerId) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let issuer = ca_issuer(ca_dir)?;
    let mut params = if id.role == Role::Node {
        CertificateParams::new(vec![SERVER_NAME.to_string(), "localhost".to_string()])?
    } else {
        CertificateParams::default()
    };
    params
        .subject_alt_names
        .push(SanType::URI(id.uri().try_into()?));
    params
        .distinguished_name
        .push(DnType::CommonName, id.role.common_name());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match id.role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Client | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert, key))
}

/// The CA of `ca_dir` as an issuer: its name and key identifier from its
/// certificate (the first of `ca.pem`), its key from `ca.key`.
fn ca_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let ca_key_path = ca_dir.join("ca.key");
    refuse_open_key(&ca_key_path)?;
    let ca_key_pem = String::from_utf8_lossy(&read(&ca_key_path)?).into_owned();
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca_path = ca_dir.join("ca.pem");
    let ca_cert = rustls_pemfile::certs(&mut &read(&ca_path)?[..])
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::Pem {
            path: ca_path.clone(),
            reason: "no CA certificate found".into(),
        })?;
    Ok(Issuer::from_ca_cert_der(&ca_cert, ca_key)?)
}

/// Revokes the certificate in `cert_pem`, issued by the CA of `ca_dir`:
/// its serial number joins `ca_dir/revoked` (one hex serial per line), and
/// `ca_dir/crl.pem` is written again, signed by the CA, listing every
/// serial revoked so far. Copy `crl.pem` beside `ca.pem` on every host and
/// send the nodes SIGHUP: new connections with that certificate are
/// refused, and live ones are closed. Returns the identity revoked.
pub fn revoke(ca_dir: &Path, cert_pem: &Path) -> Result<PeerId, TlsError> {
    let pem_err = |path: &Path, reason: String| TlsError::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let cert = rustls_pemfile::certs(&mut &read(cert_pem)?[..])
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| pem_err(cert_pem, "no certificate found".into()))?;
    let facts = CertFacts::parse(&cert).map_err(|reason| pem_err(cert_pem, reason))?;
    let issuer = ca_issuer(ca_dir)?;
    let list = ca_dir.join("revoked");
    let mut serials: Vec<String> = match std::fs::read_to_string(&list) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(TlsError::File { path: list, source }),
    };
    let hex: String = facts.serial.iter().map(|b| format!("{b:02x}")).collect();
    if !serials.contains(&hex) {
        serials.push(hex);
    }
    let mut revoked_certs = Vec::new();
    let now = time::OffsetDateTime::now_utc();
    for s in &serials {
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| pem_err(&list, format!("not a hex serial number: {s}")))?;
        revoked_certs.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&bytes),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(3650),
        crl_number: rcgen::SerialNumber::from(serials.len() as u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    write(&list, &(serials.join("\n") + "\n"))?;
    write(&ca_dir.join("crl.pem"), &crl.pem()?)?;
    Ok(facts.id)
}

/// Adds the CA certificates of `extra` to `dir/ca.pem` (those it does not
/// hold yet): during a CA rollover a host trusts both CAs.
pub fn trust(dir: &Path, extra: &Path) -> Result<(), TlsError> {
    let ca_path = dir.join("ca.pem");
    let mut pem = String::from_utf8_lossy(&read(&ca_path)?).into_owned();
    let have: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let added = String::from_utf8_lossy(&read(extra)?).into_owned();
    let end = "-----END CERTIFICATE-----";
    let mut found = 0;
    for block in added.split_inclusive(end).filter(|b| b.contains(end)) {
        let block = block.trim_start();
        let c = rustls_pemfile::certs(&mut block.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| TlsError::Pem {
                path: extra.to_path_buf(),
                reason: "a certificate block does not parse".into(),
            })?;
        found += 1;
        if !have.contains(&c) {
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            pem.push_str(block);
            pem.push('\n');
        }
    }
    if found == 0 {
        return Err(TlsError::Pem {
            path: extra.to_path_buf(),
            reason: "no CA certificate found".into(),
        });
    }
    write(&ca_path, &pem)
}

/// The one-machine directory `certs --out` and `local` make: the CA (its
/// key too: nodes started with this directory issue their own certificate
/// for their node id) and a client certificate with the admin role.
pub fn make_cluster_certs(dir: &Path) -> Result<(), TlsError> {
    make_ca(dir)?;
    issue_to(dir, Role::Admin, "local", dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn identity_uris_parse_back_and_refuse_what_is_not_one() {
        for role in [Role::Node, Role::Client, Role::Admin] {
            let id = PeerId::new(role, "n-1.a_b@c").unwrap();
            assert_eq!(PeerId::from_uri(&id.uri()), Some(Ok(id)));
        }
        assert_eq!(PeerId::from_uri("https://example.com"), None);
        assert_eq!(PeerId::from_uri("urn:other:node:x"), None);
        for bad in [
            "urn:ringleader:node",
            "urn:ringleader:boss:x",
            "urn:ringleader:node:",
            "urn:ringleader:node:a/b",
            "urn:ringleader:node:..",
            "urn:ringleader:client:a b",
        ] {
            assert!(matches!(PeerId::from_uri(bad), Some(Err(_))), "{bad}");
        }
        assert!(check_name(&"x".repeat(128)).is_ok());
        assert!(check_name(&"x".repeat(129)).is_err());
    }

    #[test]
    fn issued_certificates_carry_their_identity_and_no_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        make_ca(&ca).unwrap();
        for (role, name, file) in [
            (Role::Node, "n1", "node"),
            (Role::Client, "alice", "client"),
            (Role::Admin, "ops", "client"),
        ] {
            let out = dir.path().join(name);
            issue_to(&ca, role, name, &out).unwrap();
            assert!(!out.join("ca.key").exists());
            let id = Identity::load(&out, file).unwrap();
            assert_eq!(id.id(), &PeerId::new(role, name).unwrap());
        }
        // A one-machine directory: a node issues its own certificate.
        let one = dir.path().join("one");
        make_cluster_certs(&one).unwrap();
        let node = Identity::node(&one, Some("n9"), || unreachable!()).unwrap();
        assert_eq!(node.id().to_string(), "node n9");
        let random = Identity::node(&one, None, || "r1".into()).unwrap();
        assert_eq!(random.id().to_string(), "node r1");
        assert_eq!(
            Identity::client(&one).unwrap().id().to_string(),
            "admin local"
        );
        assert!(issue_to(&ca, Role::Node, "a/b", &dir.path().join("bad")).is_err());
    }

    /// Issue 29, finding 3: a node started with another CA's certificate
    /// (or a revoked one) became master and locked every worker and client
    /// out. A node's own certificate must pass its own checks.
    #[test]
    fn a_node_whose_certificate_fails_its_own_checks_does_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (dir.path().join("ca"), dir.path().join("other"));
        make_ca(&ca).unwrap();
        make_ca(&other).unwrap();
        let n1 = dir.path().join("n1");
        issue_to(&ca, Role::Node, "n1", &n1).unwrap();
        assert!(Identity::node(&n1, None, || unreachable!()).is_ok());
        // Signed by another CA than its ca.pem holds.
        let foreign = dir.path().join("foreign");
        issue_to(&other, Role::Node, "n2", &foreign).unwrap();
        std::fs::copy(ca.join("ca.pem"), foreign.join("ca.pem")).unwrap();
        let err = Identity::node(&foreign, None, || unreachable!()).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not pass this node's own checks"),
            "{err}"
        );
        // Revoked by the crl.pem beside it.
        revoke(&ca, &n1.join("node.pem")).unwrap();
        std::fs::copy(ca.join("crl.pem"), n1.join("crl.pem")).unwrap();
        let err = Identity::node(&n1, None, || unreachable!()).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not pass this node's own checks"),
            "{err}"
        );
        // A new certificate of the same node passes with that crl.pem.
        let renewed = dir.path().join("renewed");
        issue_to(&ca, Role::Node, "n1", &renewed).unwrap();
        for f in ["node.pem", "node.key"] {
            std::fs::copy(renewed.join(f), n1.join(f)).unwrap();
        }
        assert!(Identity::node(&n1, None, || unreachable!()).is_ok());
    }
}
