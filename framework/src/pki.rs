//! The cluster's public key infrastructure: its CA, the certificates it
//! issues and revokes, and the identities they carry. Every certificate
//! carries one identity: a URI among its subject alternative names,
//! `urn:ringleader:<role>:<name>` ([`PeerId`]), with role `node` (name: the
//! node id), `client` or `admin` (name: the client's). The subject's
//! common name is the same for every certificate of a role
//! (`ringleader-node`, ...), so that a ZooKeeper x509 ACL can name the
//! role. Node certificates may serve (server and client usage, DNS name
//! [`SERVER_NAME`]); client certificates may only dial.
//!
//! Files and names only: how connections use the certificates (mutual TLS
//! on every QUIC connection, revocation lists checked) is
//! [`crate::transport::tls`]'s, which knows this module and not the other
//! way round.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;

/// The name every node certificate carries and every dialer checks.
pub const SERVER_NAME: &str = "ringleader.cluster";
const CA_NAME: &str = "Ringleader cluster CA";

/// The prefix of the identity URI every certificate carries.
pub const URN_PREFIX: &str = "urn:ringleader:";

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
pub(crate) struct CertFacts {
    pub(crate) id: PeerId,
    pub(crate) serial: Vec<u8>,
    pub(crate) not_after: std::time::SystemTime,
}

impl CertFacts {
    pub(crate) fn parse(der: &[u8]) -> Result<CertFacts, String> {
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

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write(path: &Path, data: &str) -> Result<(), TlsError> {
    std::fs::write(path, data).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a private key readable by its owner only (0600), replacing any
/// file of that name.
pub(crate) fn write_key(path: &Path, pem: &str) -> Result<(), TlsError> {
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
pub(crate) fn refuse_open_key(path: &Path) -> Result<(), TlsError> {
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
pub(crate) fn make_dir(dir: &Path) -> Result<(), TlsError> {
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

/// DER as a PEM block of `label`.
pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
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
pub(crate) fn sign(ca_dir: &Path, id: &PeerId) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
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
