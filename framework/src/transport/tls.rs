//! Mutual TLS on every QUIC connection: a node's or client's [`Identity`]
//! (its certificate chain and key, the CAs it trusts, their revocation
//! lists) and the rustls configurations made of it. Both sides present a
//! certificate signed by the cluster CA; there is no verifier that accepts
//! any certificate. The CA itself, and the identities certificates carry,
//! are [`crate::pki`]'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::pki::{check_name, PeerId, Role, TlsError, SERVER_NAME, URN_PREFIX};
use crate::pki::{pem_block, read, refuse_open_key, sign, CertFacts};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Certificates expiring sooner than this are warned about at start.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

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

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pki::*;

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
